"""Multi-epoch bookkeeping of a tile catalogue: which CCD of each exposure saw each object.

For every object of a tile catalogue and every exposure stacked into the
tile, the CCD the object falls on (``-1`` when on none), found by
projecting all objects at once through each CCD's WCS from the header
store (:class:`shapepipe_modules.io.header_store.HeaderStore`).

Conventions (ShapePipe's ``MAKE_POST_PROCESS``):

- the exposures of a tile are named by its ``HISTORY input image
  2113737p.fits ...`` cards; those missing from the header store are
  reported as unavailable and get no epoch;
- a position is on a CCD when its 0-based pixel coordinates satisfy
  ``xmin < x < xmax`` and ``ymin < y < ymax`` (``CCD_SIZE = xmin, xmax,
  ymin, ymax``, e.g. ``33, 2080, 1, 4612`` for MegaCam's data section);
- an object on two CCDs of one exposure (overlapping footprints) goes to
  the CCD where it lies farthest from the nearest edge of that range
  (ShapePipe kept the last CCD tried, its issue #92);
- ``N_EPOCH`` counts the exposures where the object is on a CCD.

The catalogue gains ``EPOCH_0`` ... ``EPOCH_{n-1}`` tables (``NUMBER``,
``EXP_NAME``, ``CCD_N``), one per available exposure in HISTORY order, and
an ``N_EPOCH`` column in ``LDAC_OBJECTS``; see :func:`add_epochs`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EPOCH_PREFIX = "EPOCH_"
# Objects farther than this factor times the CCD's corner radius from its
# centre are not projected: distorted WCSs can fail to invert far off the CCD.
_FOOTPRINT_SLACK = 1.05


class MultiEpochError(ValueError):
    """The inputs of the bookkeeping are unusable (the message names the file)."""


@dataclass
class EpochTable:
    """CCD of every object in every available exposure.

    Attributes
    ----------
    exposures : list of str
        Available exposures (header-store names), in epoch order.
    ccd : numpy.ndarray
        ``(n_exposures, n_objects)`` int32: 0-based CCD number, -1 when the
        object is on no CCD of that exposure.
    unavailable : list of str
        Exposures named by the tile's HISTORY but absent from the header store.
    """

    exposures: list
    ccd: np.ndarray
    unavailable: list = field(default_factory=list)

    @property
    def n_epoch(self) -> np.ndarray:
        """Number of exposures in which each object lies on a CCD."""
        return (self.ccd >= 0).sum(axis=0).astype(np.int32)


def history_exposures(header) -> list[str]:
    """Exposure names (digits, e.g. ``'2113737'``) from a tile header's HISTORY cards.

    Only ``input image <file> ...`` cards count (as written by the CFIS
    stacking and by the simulator); each name appears once, in card order.
    """
    from shapepipe_modules.cfis import parse_exposure_name
    from shapepipe_modules.find_exposures.find_exposures import exposures_from_history

    cards = list(header["HISTORY"]) if "HISTORY" in header else []
    return list(dict.fromkeys(parse_exposure_name(name) for name in exposures_from_history(cards)))


def _unit_vectors(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def _footprint_filter(wcs, ccd_size, positions):
    """Objects near a CCD: within the circle through its corners (with slack)."""
    xmin, xmax, ymin, ymax = ccd_size
    corners_x = np.array([xmin, xmax, xmax, xmin, 0.5 * (xmin + xmax)])
    corners_y = np.array([ymin, ymin, ymax, ymax, 0.5 * (ymin + ymax)])
    ra, dec = wcs.all_pix2world(corners_x, corners_y, 0)
    vectors = _unit_vectors(ra, dec)
    centre = vectors[-1]
    radius = np.max(np.arccos(np.clip(vectors[:-1] @ centre, -1.0, 1.0)))
    limit = np.cos(min(radius * _FOOTPRINT_SLACK + 1e-6, np.pi))
    return positions @ centre >= limit


def assign_ccds(ra, dec, store, exposures, ccd_size) -> np.ndarray:
    """CCD of each position in each exposure.

    Parameters
    ----------
    ra, dec : 1-d arrays
        Object positions (deg).
    store : HeaderStore
        Open header store holding the exposures.
    exposures : sequence of str
        Exposure names present in ``store``.
    ccd_size : sequence of 4 numbers
        ``xmin, xmax, ymin, ymax``: usable 0-based pixel range (exclusive).

    Returns
    -------
    numpy.ndarray
        ``(len(exposures), len(ra))`` int32; -1 off every CCD. Among
        overlapping CCDs, the one with the largest distance from the
        position to the nearest edge of ``ccd_size`` wins (the lower CCD
        number on an exact tie).
    """
    from astropy.wcs import NoConvergence

    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    xmin, xmax, ymin, ymax = (float(v) for v in ccd_size)
    positions = _unit_vectors(ra, dec)
    result = np.full((len(exposures), ra.size), -1, dtype=np.int32)
    for row, exposure in enumerate(exposures):
        best_margin = np.full(ra.size, -np.inf)
        for ccd in store.ccds(exposure):
            wcs = store.wcs(exposure, ccd)
            near = np.flatnonzero(_footprint_filter(wcs, (xmin, xmax, ymin, ymax), positions))
            if near.size == 0:
                continue
            try:
                x, y = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
            except NoConvergence as error:  # quiet=True still raises on divergence
                x, y = error.best_solution.T
            with np.errstate(invalid="ignore"):
                margin = np.minimum.reduce([x - xmin, xmax - x, y - ymin, ymax - y])
                better = np.isfinite(margin) & (margin > 0) & (margin > best_margin[near])
            chosen = near[better]
            result[row, chosen] = ccd
            best_margin[chosen] = margin[better]
    return result


def epoch_table(ra, dec, history, store, ccd_size) -> EpochTable:
    """Assign CCDs in the HISTORY exposures found in the store.

    Parameters
    ----------
    ra, dec : 1-d arrays
        Object positions (deg).
    history : sequence of str
        Exposure names from the tile's HISTORY (:func:`history_exposures`).
    store : HeaderStore
        Open header store.
    ccd_size : sequence of 4 numbers
        ``xmin, xmax, ymin, ymax``.
    """
    available = [exposure for exposure in history if exposure in store]
    unavailable = [exposure for exposure in history if exposure not in store]
    return EpochTable(available, assign_ccds(ra, dec, store, available, ccd_size), unavailable)


def resolve_store_path(location) -> Path:
    """Header-store file from ``LOG_WCS``: the file itself, or a folder holding ``log_exp_headers.sqlite``.

    Raises
    ------
    MultiEpochError
        If neither exists.
    """
    from shapepipe_modules.io.header_store import DEFAULT_NAME

    path = Path(location)
    if path.is_dir():
        path = path / DEFAULT_NAME
    if not path.is_file():
        raise MultiEpochError(f"header store {path} does not exist (LOG_WCS = {location})")
    return path


def add_epochs(catalogue, store_path, world_position, ccd_size, logger=None) -> EpochTable:
    """Add the ``EPOCH_i`` tables and ``N_EPOCH`` to a tile catalogue, atomically.

    Parameters
    ----------
    catalogue : path-like
        FITS-LDAC tile catalogue; its ``LDAC_IMHEAD`` header (the tile's)
        supplies the HISTORY cards.
    store_path : path-like
        Header store (``log_exp_headers.sqlite``) or a folder holding it.
    world_position : sequence of 2 str
        Catalogue columns of RA and Dec (e.g. ``XWIN_WORLD, YWIN_WORLD``).
    ccd_size : sequence of 4 numbers
        ``xmin, xmax, ymin, ymax``.
    logger : logging.Logger, optional
        Receives a warning per unavailable exposure.

    Returns
    -------
    EpochTable

    Raises
    ------
    MultiEpochError
        Naming the file, if the catalogue lacks the position columns, its
        header has no exposure, or the store is missing or unreadable.
    """
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.arrays import StoreError
    from shapepipe_modules.io.header_store import HeaderStore
    from shapepipe_modules.io.ldac import LDACError, cards_to_header, update_ldac

    catalogue = Path(catalogue)
    store_path = resolve_store_path(store_path)
    try:
        with fits.open(catalogue, memmap=False) as hdus:
            header = cards_to_header(hdus["LDAC_IMHEAD"].data["Field Header Card"][0])
            objects = hdus["LDAC_OBJECTS"].data
            missing = [name for name in (*world_position, "NUMBER") if name not in objects.columns.names]
            if missing:
                raise MultiEpochError(f"{catalogue}: LDAC_OBJECTS has no column {', '.join(missing)} "
                                      f"(WORLD_POSITION = {', '.join(world_position)})")
            ra = np.array(objects[world_position[0]], dtype=np.float64)
            dec = np.array(objects[world_position[1]], dtype=np.float64)
            number = np.array(objects["NUMBER"])
    except (OSError, KeyError) as error:
        raise MultiEpochError(f"{catalogue}: cannot read as a FITS-LDAC catalogue ({error})") from error
    history = history_exposures(header)
    if not history:
        raise MultiEpochError(f"{catalogue}: the tile header has no 'HISTORY input image ...' card, "
                              "so the exposures of the tile are unknown")
    try:
        with warnings.catch_warnings(), HeaderStore(store_path) as store:
            warnings.simplefilter("ignore", RuntimeWarning)
            table = epoch_table(ra, dec, history, store, ccd_size)
    except (StoreError, OSError) as error:
        raise MultiEpochError(f"header store {store_path}: {error}") from error
    for exposure in table.unavailable:
        if logger is not None:
            logger.warning("%s: exposure %s of the tile's HISTORY is not in header store %s; no epoch for it",
                           catalogue.name, exposure, store_path)
    epoch_hdus = []
    for index, exposure in enumerate(table.exposures):
        columns = Table({
            "NUMBER": number,
            "EXP_NAME": np.full(number.size, exposure, dtype=f"S{max(len(exposure), 1)}"),
            "CCD_N": table.ccd[index],
        })
        hdu = fits.table_to_hdu(columns)
        hdu.header["EXTNAME"] = f"{EPOCH_PREFIX}{index}"
        hdu.header["EXPNAME"] = (exposure, "exposure of this epoch")
        epoch_hdus.append(hdu)
    cards = [("NEPOCH", len(table.exposures), "exposures with an EPOCH_i table"),
             ("NEXPMISS", len(table.unavailable), "HISTORY exposures missing from the header store")]
    if table.unavailable:
        cards.append(("EXPMISS", ",".join(table.unavailable)[:68], "missing exposures"))
    try:
        update_ldac(catalogue, columns={"N_EPOCH": table.n_epoch}, hdus=epoch_hdus, primary_cards=cards)
    except LDACError as error:
        raise MultiEpochError(str(error)) from error
    return table
