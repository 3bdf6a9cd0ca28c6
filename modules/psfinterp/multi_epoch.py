"""``psfinterp`` MULTI-EPOCH: the PSF of every tile object in every exposure that saw it.

Input: the tile's SExtractor catalogue after multi-epoch post-processing.
``LDAC_OBJECTS`` holds ``NUMBER`` and the world positions
(``XWIN_WORLD``, ``YWIN_WORLD``); each ``EPOCH_i`` HDU holds, per object,
``NUMBER``, ``EXP_NAME`` (exposure name, e.g. ``'2113737'``) and ``CCD_N``
(the CCD, or -1 when the object is not on that exposure).

For every (exposure, CCD) met, the CCD's model
``<ME_DOT_PSF_DIR>/<ME_DOT_PSF_PATTERN>-<exposure>-<ccd>.psf`` is read once
and checked (``STAR_THRESH``, ``CHI2_THRESH``); the objects' positions on
the CCD come from the header store's WCS (1-based pixels, as the model's
``XWIN_IMAGE`` context); all their PSFs are drawn in one vectorised call.

Output: a :class:`~shapepipe_modules.io.stamp_store.StampStore` keyed by
object id and ``'<exposure>-<ccd>'`` with ``VIGNET`` (float32 stamp) and
meta ``E1_PSF_HSM``, ``E2_PSF_HSM``, ``SIGMA_PSF_HSM``, ``FLAG_PSF_HSM``
(with ``GET_SHAPES``), ``X``, ``Y`` (position on the CCD) and ``DX``,
``DY`` (PSF centre relative to the central pixel). With ``stamps_from_model`` the
store holds each CCD's model instead of the stamps, and its readers draw
the same stamps from it. An object with no usable
epoch is stored with the reason (every rejected epoch listed), never
dropped; and a table lists the status of every (exposure, CCD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .interpolate import (FLAG_NO_MODEL, FLAG_NO_WCS, ModelStatus, hsm_shapes, model_status, psf_stamps,
                          subpixel_offset)


class EpochCatalogueError(ValueError):
    """The tile catalogue lacks the multi-epoch layout (the message names the file)."""


@dataclass
class EpochTable:
    """Which exposure and CCD saw each object: one entry per (object, epoch) pair.

    Attributes
    ----------
    row : ndarray of int
        Row of the object in ``LDAC_OBJECTS``.
    exposure : ndarray of str
    ccd : ndarray of int
    """

    row: np.ndarray
    exposure: np.ndarray
    ccd: np.ndarray


@dataclass
class TileCatalogue:
    """Objects of a tile with their epochs."""

    number: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    epochs: EpochTable
    n_epoch_hdus: int


def read_tile_catalogue(path, position_params=("XWIN_WORLD", "YWIN_WORLD")) -> TileCatalogue:
    """Read a multi-epoch tile catalogue.

    Raises
    ------
    EpochCatalogueError
        If the file, a column or the ``EPOCH_i`` HDUs are missing or malformed.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        hdus = fits.open(path, memmap=False)
    except OSError as error:
        raise EpochCatalogueError(f"{path}: cannot read as FITS ({error})") from error
    with hdus:
        names = [hdu.name for hdu in hdus]
        if "LDAC_OBJECTS" not in names:
            raise EpochCatalogueError(f"{path}: no LDAC_OBJECTS HDU (HDUs {names})")
        objects = hdus["LDAC_OBJECTS"].data
        columns = objects.columns.names
        for name in ("NUMBER", *position_params):
            if name not in columns:
                raise EpochCatalogueError(f"{path}: LDAC_OBJECTS has no column {name}")
        number = np.asarray(objects["NUMBER"]).astype(np.int64)
        ra = np.asarray(objects[position_params[0]], dtype=float)
        dec = np.asarray(objects[position_params[1]], dtype=float)
        epoch_hdus = [hdu for hdu in hdus if hdu.name.startswith("EPOCH_")]
        if not epoch_hdus:
            raise EpochCatalogueError(
                f"{path}: no EPOCH_i HDU; run sextractor in multi-epoch mode before psfinterp MULTI-EPOCH")
        rows, exposures, ccds = [], [], []
        position = {value: index for index, value in enumerate(number.tolist())}
        for hdu in epoch_hdus:
            data = hdu.data
            for name in ("NUMBER", "EXP_NAME", "CCD_N"):
                if data is None or name not in data.columns.names:
                    raise EpochCatalogueError(f"{path}: {hdu.name} has no column {name}")
            ccd = np.asarray(data["CCD_N"]).astype(np.int64)
            seen = ccd >= 0
            ids = np.asarray(data["NUMBER"]).astype(np.int64)[seen]
            try:
                row = np.array([position[i] for i in ids.tolist()], dtype=np.int64)
            except KeyError as error:
                raise EpochCatalogueError(f"{path}: {hdu.name} lists object {error.args[0]} "
                                          "absent from LDAC_OBJECTS") from None
            names_ = np.char.lstrip(np.char.strip(np.asarray(data["EXP_NAME"]).astype(str)[seen]), "-")
            rows.append(row)
            exposures.append(names_)
            ccds.append(ccd[seen])
    epochs = EpochTable(np.concatenate(rows), np.concatenate(exposures), np.concatenate(ccds))
    return TileCatalogue(number, ra, dec, epochs, len(epoch_hdus))


@dataclass
class MultiEpochResult:
    """Summary of one tile: per-CCD status rows and counts."""

    ccd_rows: list = field(default_factory=list)
    n_objects: int = 0
    n_object_epochs: int = 0
    n_without_psf: int = 0


def interpolate_tile(catalogue: TileCatalogue, psf_path, wcs_of, store, star_thresh: int, chi2_thresh: float,
                     get_shapes: bool = True, size: int | None = None, centre_on_object: bool = False,
                     logger=None, stamps_from_model: bool = False) -> MultiEpochResult:
    """Draw the PSF of every object in every epoch into a stamp store.

    Parameters
    ----------
    catalogue : TileCatalogue
    psf_path : callable
        ``psf_path(exposure, ccd) -> Path`` of the CCD's ``.psf`` file.
    wcs_of : callable
        ``wcs_of(exposure, ccd) -> astropy WCS``; raises KeyError when the
        header store lacks the CCD.
    store : StampStore
        Open in write mode.
    star_thresh, chi2_thresh
        Model rejection thresholds (see :func:`.interpolate.model_status`).
    get_shapes : bool
        Measure HSM shapes of the PSF stamps.
    size : int, optional
        Stamp side (default: the model grid size).
    centre_on_object : bool
        Centre the PSF at the object's sub-pixel position (else on the
        central pixel).
    logger : logging.Logger, optional
    stamps_from_model : bool
        Store each CCD's model once (:meth:`StampStore.put_psf_model`)
        instead of the stamps: readers of the store get the same stamps,
        drawn from the model.

    Returns
    -------
    MultiEpochResult
    """
    from shapepipe_modules.io.psfex_file import PSFFileError, read_psf
    from shapepipe_modules.io.stamp_store import epoch_key

    epochs = catalogue.epochs
    result = MultiEpochResult(n_objects=len(catalogue.number))
    rejected: dict[int, list[str]] = {}
    has_epoch = np.zeros(len(catalogue.number), dtype=bool)
    # One group per (exposure, CCD): sort once, then walk the contiguous runs.
    order = np.lexsort((epochs.ccd, epochs.exposure))
    exposure_sorted = epochs.exposure[order]
    ccd_sorted = epochs.ccd[order]
    change = np.ones(len(order), dtype=bool)
    change[1:] = (exposure_sorted[1:] != exposure_sorted[:-1]) | (ccd_sorted[1:] != ccd_sorted[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(order))
    for start, end in zip(starts, ends):
        rows = epochs.row[order[start:end]]
        exposure, ccd = str(exposure_sorted[start]), int(ccd_sorted[start])
        key = epoch_key(exposure, ccd)
        path = Path(psf_path(exposure, ccd))
        model = None
        if path.is_file():
            try:
                model = read_psf(path)
            except PSFFileError as error:
                status = ModelStatus(FLAG_NO_MODEL, f"unreadable model {path.name}: {error}")
            else:
                status = model_status(model, star_thresh, chi2_thresh)
        else:
            status = ModelStatus(FLAG_NO_MODEL, f"model {path.name} not found")
        wcs = None
        if status.usable:
            try:
                wcs = wcs_of(exposure, ccd)
            except KeyError as error:
                status = ModelStatus(FLAG_NO_WCS, f"no WCS in the header store ({error.args[0]})")
        row_info = {"EXPOSURE": exposure, "CCD": ccd, "N_OBJECTS": len(rows), "PSF_FLAG": status.flag,
                    "ACCEPTED": model.accepted if model is not None else -1,
                    "CHI2": model.chi2 if model is not None else np.nan, "REASON": status.reason}
        result.ccd_rows.append(row_info)
        if not status.usable:
            if logger is not None:
                logger.info("%s: %s; %d objects lose this epoch", key, status.reason, len(rows))
            for row in rows.tolist():
                rejected.setdefault(row, []).append(f"{key}: {status.reason}")
            continue
        x, y = wcs.all_world2pix(catalogue.ra[rows], catalogue.dec[rows], 1)
        dx = dy = np.zeros(len(rows))
        if centre_on_object:
            dx, dy = subpixel_offset(x), subpixel_offset(y)
        stamps = psf_stamps(model, x, y, size, dx, dy)
        meta = {"X": x, "Y": y, "DX": dx, "DY": dy}
        if get_shapes:
            # One model per CCD: the stamps are alike, the first one's size starts the others.
            shapes = hsm_shapes(stamps, warm_start=True)
            meta.update(E1_PSF_HSM=shapes["e1"], E2_PSF_HSM=shapes["e2"], SIGMA_PSF_HSM=shapes["sigma"],
                        FLAG_PSF_HSM=shapes["flag"])
        if stamps_from_model:
            store.put_psf_model(key, model, size)
            store.put_many(catalogue.number[rows], key, {}, meta)
        else:
            store.put_many(catalogue.number[rows], key, {"VIGNET": stamps.astype(np.float32)}, meta)
        has_epoch[rows] = True
        result.n_object_epochs += len(rows)
    for row in np.flatnonzero(~has_epoch).tolist():
        reasons = rejected.get(row)
        reason = ("no usable PSF: " + "; ".join(reasons)) if reasons else "not on any exposure"
        store.mark_no_epoch(int(catalogue.number[row]), reason)
    result.n_without_psf = int((~has_epoch).sum())
    return result


def ccd_status_table(rows: list):
    """The per-(exposure, CCD) status rows as an astropy Table."""
    from astropy.table import Table

    names = ("EXPOSURE", "CCD", "N_OBJECTS", "PSF_FLAG", "ACCEPTED", "CHI2", "REASON")
    dtypes = ("U32", np.int32, np.int32, np.int16, np.int32, np.float64, "U200")
    if not rows:
        return Table(names=names, dtype=dtypes)
    return Table({name: np.array([row[name] for row in rows]).astype(dtype) for name, dtype in zip(names, dtypes)})
