"""Assembling each tile object's epochs from the stamp stores, and the tile loop.

Inputs (ShapePipe's ``ngmix`` stage, in its ``FILE_PATTERN`` order): the
tile catalogue (``NUMBER``, the sky position, by default ``XWIN_WORLD``,
``YWIN_WORLD``, optionally ``VIGNET``), then the stamp stores of
``vignetmaker`` MULTI-EPOCH (image, background, weight, flag) and of
``psfinterp`` MULTI-EPOCH (PSF), all read with
:class:`~shapepipe_modules.io.stamp_store.StampStore`.

Per object (:func:`object_raw_epochs`), the epochs used are those present
in every store (sorted by exposure and CCD); each becomes a
:class:`~.engine.RawEpoch` with its image, background, weight and flag
stamps, its PSF stamp, the local WCS Jacobian (``JACOBIAN``, image store),
the object's position in the stamp (``CENTRE_ROW``, ``CENTRE_COL``) and the
exposure's flux scale ``FSCALE`` (:class:`FluxScales`: the stamp metadata
if it holds one, else the CCD header in the header store, as ShapePipe
read it). The engine then applies ShapePipe's per-epoch selection and
scaling (:func:`~.engine.assemble_epoch`).

:func:`measure_tile` measures every object of an id range in increasing id
order with the object's own generator, keyed by the run seed and the
object's sky cell (:func:`~.engine.sky_rng`), so a tile split into id ranges
gives the same rows as the whole tile, and the same galaxy gets the same
stream in runs whose detection numbers differ (opposite shears). Every
object of the range is returned; objects without usable epochs carry the
``NO_EPOCHS`` flag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe.errors import JobError

from .engine import (RNG_CELL_ARCSEC, EngineConfig, RawEpoch, measure_raw_object, rows_to_tables, sky_rng)
from .metacal import BRANCHES

#: Store kinds in ShapePipe's input order (after the tile catalogue).
STORE_KINDS = ("image", "background", "psf", "weight", "flag")
#: HDU names of the output, in ShapePipe's order.
HDU_ORDER = ("1m", "1p", "2m", "2p", "noshear")
#: Objects read from the stores per query.
READ_BATCH = 128


@dataclass
class TileObjects:
    """Objects of the tile catalogue.

    Attributes
    ----------
    ids : numpy.ndarray of int64
        ``NUMBER`` of every object, in catalogue order.
    ra, dec : numpy.ndarray of float64
        Sky position (degrees) of every object: keys its random stream.
    vignets : numpy.ndarray or None
        Tile stamps (``VIGNET``), used with ``TILE_VIGNET_MASK`` to flag the pixels SExtractor set to -1e30:
        a view of the memory-mapped file column (its own byte order and
        type), so that a job measuring an id range of a large tile reads the
        pages of its own objects only; :meth:`vignet` gives one as float64.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    vignets: np.ndarray | None

    def vignet(self, row: int) -> np.ndarray | None:
        """The tile stamp of one row as float64 (None without ``VIGNET``)."""
        return None if self.vignets is None else np.asarray(self.vignets[row], dtype=np.float64)


def read_tile_objects(path, position_params=("XWIN_WORLD", "YWIN_WORLD")) -> TileObjects:
    """Read ``NUMBER``, the sky position (and ``VIGNET`` if present) from a tile catalogue.

    The objects table is ``LDAC_OBJECTS`` when present, else HDU 1.

    Parameters
    ----------
    path : path-like
    position_params : sequence of str, optional
        Columns of RA and Dec (degrees).

    Raises
    ------
    JobError
        If the file cannot be read, lacks ``NUMBER`` or a position column, or
        a position is not finite.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        # memmap: VIGNET is ~98% of a detection catalogue (a full tile: GBs as float64); only the rows
        # of the objects measured are read, when they are measured.
        with fits.open(path, memmap=True) as hdus:
            names = [hdu.name for hdu in hdus]
            index = names.index("LDAC_OBJECTS") if "LDAC_OBJECTS" in names else 1
            if index >= len(hdus) or not isinstance(hdus[index], fits.BinTableHDU):
                raise JobError(f"tile catalogue {path}: no objects table (HDUs {names})")
            data = hdus[index].data
            columns = data.columns.names if data is not None else []
            if "NUMBER" not in columns:
                raise JobError(f"tile catalogue {path}: no NUMBER column")
            ids = np.asarray(data["NUMBER"]).astype(np.int64)
            for name in position_params:
                if name not in columns:
                    raise JobError(f"tile catalogue {path}: no {name} column (the sky position that keys "
                                   "each object's random stream; see [NGMIX_RUNNER] POSITION_PARAMS)")
            ra = np.asarray(data[position_params[0]], dtype=np.float64)
            dec = np.asarray(data[position_params[1]], dtype=np.float64)
            vignets = data["VIGNET"] if "VIGNET" in columns else None
    except OSError as error:
        raise JobError(f"tile catalogue {path}: cannot read ({error})") from error
    if np.unique(ids).size != ids.size:
        raise JobError(f"tile catalogue {path}: NUMBER values are not unique")
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise JobError(f"tile catalogue {path}: {bad.sum()} object(s) without a finite "
                       f"{'/'.join(position_params)} (e.g. NUMBER {ids[bad][0]})")
    return TileObjects(ids, ra, dec, vignets)


def select_id_range(ids, id_min=-1, id_max=-1) -> np.ndarray:
    """Indices of the ids in ``[id_min, id_max]``, sorted by id.

    A bound that is not positive is not applied (ShapePipe's ``-1``).
    """
    ids = np.asarray(ids)
    keep = np.ones(ids.size, dtype=bool)
    if id_min > 0:
        keep &= ids >= id_min
    if id_max > 0:
        keep &= ids <= id_max
    rows = np.flatnonzero(keep)
    return rows[np.argsort(ids[rows], kind="stable")]


class FluxScales:
    """``FSCALE`` of each epoch: from the stamp metadata, else the header store.

    Parameters
    ----------
    header_store_path : path-like or None
        ``log_exp_headers.sqlite``; None when the stamps carry ``FSCALE``.
    key : str
        Header keyword of the flux scale.
    """

    def __init__(self, header_store_path=None, key: str = "FSCALE"):
        self.key = key
        self.path = Path(header_store_path) if header_store_path else None
        self._store = None
        self._cache: dict[str, float] = {}

    def _header_store(self):
        if self._store is None:
            from shapepipe_modules.io.arrays import StoreError
            from shapepipe_modules.io.header_store import HeaderStore

            try:
                self._store = HeaderStore(self.path)
            except StoreError as error:
                raise JobError(f"header store (LOG_WCS): {error}") from error
        return self._store

    def get(self, epoch_key: str, meta: dict) -> float:
        """Flux scale of one epoch.

        Raises
        ------
        JobError
            If neither the stamp metadata nor the header store gives it.
        """
        if self.key in meta:
            return float(meta[self.key])
        value = self._cache.get(epoch_key)
        if value is not None:
            return value
        from shapepipe_modules.io.stamp_store import split_epoch_key

        if self.path is None:
            raise JobError(f"epoch {epoch_key}: no {self.key} in the stamp metadata and no header "
                           "store given (set LOG_WCS)")
        exposure, ccd = split_epoch_key(epoch_key)
        try:
            header = self._header_store().header(exposure, ccd)
        except KeyError as error:
            raise JobError(f"header store {self.path}: {error.args[0]}") from None
        if self.key not in header:
            raise JobError(f"header store {self.path}: exposure {exposure} CCD {ccd} has no {self.key}")
        value = float(header[self.key])
        self._cache[epoch_key] = value
        return value

    def close(self):
        """Close the header store if it was opened."""
        if self._store is not None:
            self._store.close()
            self._store = None


def _epoch_order(key):
    from shapepipe_modules.io.stamp_store import split_epoch_key

    exposure, ccd = split_epoch_key(key)
    return exposure, ccd


def object_raw_epochs(object_id, records: dict, flux_scales: FluxScales, tile_stamp=None):
    """The stored epochs of one object as :class:`~.engine.RawEpoch` objects.

    Parameters
    ----------
    object_id : int
    records : dict
        Store kind (:data:`STORE_KINDS`) to the object's
        :class:`~shapepipe_modules.io.stamp_store.ObjectRecord`.
    flux_scales : FluxScales
    tile_stamp : numpy.ndarray, optional
        The object's tile ``VIGNET`` (pixels at -1e30 are flagged).

    Returns
    -------
    epochs : list of RawEpoch
        Sorted by exposure and CCD.
    n_incomplete : int
        Epochs left out because some store lacks them.
    reason : str or None
        Why the object has no epoch at all, from the stores.
    """
    reasons = [f"{kind}: {rec.reason}" for kind, rec in records.items() if rec.reason is not None]
    if reasons:
        return [], 0, "; ".join(reasons)
    key_sets = [set(rec) for rec in records.values()]
    common = set.intersection(*key_sets)
    n_incomplete = len(set.union(*key_sets) - common)
    epochs = []
    for key in sorted(common, key=_epoch_order):
        image = records["image"][key]
        psf = records["psf"][key]
        if abs(float(psf.meta.get("DX", 0.0))) > 1e-9 or abs(float(psf.meta.get("DY", 0.0))) > 1e-9:
            raise JobError(f"object {object_id}, epoch {key}: the PSF stamp is centred on the object's "
                           "sub-pixel position; the metacal engine needs PSF stamps centred on their "
                           "central pixel (psfinterp CENTRE_ON_OBJECT = False)")
        jacobian = None
        for kind in ("image", "weight", "flag", "background"):
            if "JACOBIAN" in records[kind][key].arrays:
                jacobian = records[kind][key].arrays["JACOBIAN"]
                break
        if jacobian is None:
            raise JobError(f"object {object_id}, epoch {key}: no JACOBIAN in the stamp stores")
        centre = None
        if "CENTRE_ROW" in image.meta and "CENTRE_COL" in image.meta:
            centre = (float(image.meta["CENTRE_ROW"]), float(image.meta["CENTRE_COL"]))
        _, ccd = _epoch_order(key)
        epochs.append(RawEpoch(
            image=image.arrays["VIGNET"],
            background=records["background"][key].arrays["VIGNET"],
            weight=records["weight"][key].arrays["VIGNET"],
            flag=records["flag"][key].arrays["VIGNET"],
            psf_image=psf.arrays["VIGNET"],
            jacobian=np.asarray(jacobian, dtype=float),
            flux_scale=flux_scales.get(key, image.meta),
            name=key,
            centre=centre,
            tile_stamp=tile_stamp if tile_stamp is not None and tile_stamp.shape == image.arrays["VIGNET"].shape
            else None,
            ccd=ccd,
        ))
    return epochs, n_incomplete, None


def open_stores(store_paths: dict) -> dict:
    """Open the stamp stores read-only.

    Raises
    ------
    JobError
        Naming the kind and the file, if a store is missing or unreadable.
    """
    from shapepipe_modules.io.arrays import StoreError
    from shapepipe_modules.io.stamp_store import StampStore

    stores = {}
    try:
        for kind in STORE_KINDS:
            if kind not in store_paths:
                raise JobError(f"no {kind} stamp store given")
            try:
                stores[kind] = StampStore(store_paths[kind])
            except StoreError as error:
                raise JobError(f"{kind} stamp store: {error}") from error
    except JobError:
        for store in stores.values():
            store.close()
        raise
    return stores


def measure_tile(catalogue_path, store_paths: dict, tile_number: str, seed: int, config=None,
                 header_store_path=None, id_min: int = -1, id_max: int = -1, logger=None, measure=None,
                 position_params=("XWIN_WORLD", "YWIN_WORLD"), rng_cell_arcsec=RNG_CELL_ARCSEC,
                 tile_vignet_mask=False):
    """Measure every object of a tile (or of an id range of it).

    Parameters
    ----------
    catalogue_path : path-like
        Tile catalogue (``NUMBER``; ``VIGNET`` used with ``tile_vignet_mask``).
    store_paths : dict
        Store kind (:data:`STORE_KINDS`) to its path.
    tile_number : str
        File number of the tile (``-244-252``).
    seed : int
        Run seed: with the object's sky cell, seeds its generator.
    config : EngineConfig, optional
    header_store_path : path-like, optional
        Header store giving ``FSCALE`` (ShapePipe's ``LOG_WCS``).
    id_min, id_max : int
        Id range (bounds <= 0 not applied).
    logger : logging.Logger, optional
    measure : callable, optional
        ``measure(raw_epochs, object_id, rng, config)`` measuring one object
        (default: the built-in :func:`~.engine.measure_raw_object`; the
        ngmix engine's has the same signature and result).
    position_params : sequence of str, optional
        Tile catalogue columns of RA and Dec (degrees).
    rng_cell_arcsec : float, optional
        Side of the sky cells keying the object generators
        (:func:`~.engine.sky_rng`).
    tile_vignet_mask : bool, optional
        Flag the epoch pixels where the tile ``VIGNET`` is -1e30 (ShapePipe's
        mask of neighbours and missing tile pixels; ``TILE_VIGNET_MASK``).

    Returns
    -------
    tables : dict
        Branch name to a dict of column arrays (:data:`~.engine.COLUMNS`),
        rows in increasing id order.
    summary : dict
        Counts: ``n_tile``, ``n_objects``, ``n_no_epoch``, ``n_flagged``,
        ``n_epochs``, ``n_epochs_incomplete``; ``id_tile_min``,
        ``id_tile_max`` (the tile's smallest and largest ``NUMBER``).

    Raises
    ------
    JobError
        If an input is missing or inconsistent (names the file).
    """
    logger = logger or logging.getLogger(__name__)
    config = config or EngineConfig()
    measure = measure or measure_raw_object
    tile = read_tile_objects(catalogue_path, position_params)
    rows = select_id_range(tile.ids, id_min, id_max)
    stores = open_stores(store_paths)
    flux_scales = FluxScales(header_store_path)
    results = []
    summary = {"n_tile": int(tile.ids.size), "n_objects": int(rows.size), "n_no_epoch": 0, "n_flagged": 0,
               "n_epochs": 0, "n_epochs_incomplete": 0,
               "id_tile_min": int(tile.ids.min()) if tile.ids.size else 0,
               "id_tile_max": int(tile.ids.max()) if tile.ids.size else 0}
    if tile_vignet_mask and tile.vignets is None:
        logger.info("%s has no VIGNET: pixels missing from the tile are not flagged", catalogue_path)
    try:
        for start in range(0, rows.size, READ_BATCH):
            batch = rows[start:start + READ_BATCH]
            ids = tile.ids[batch]
            found = {kind: store.get_many(ids) for kind, store in stores.items()}
            for row, object_id in zip(batch.tolist(), ids.tolist()):
                records = {}
                for kind in STORE_KINDS:
                    record = found[kind].get(object_id)
                    if record is None:
                        raise JobError(f"object {object_id} of {catalogue_path} is not in the {kind} stamp "
                                       f"store {stores[kind].path}")
                    records[kind] = record
                tile_stamp = tile.vignet(row) if tile_vignet_mask else None
                raw, n_incomplete, reason = object_raw_epochs(object_id, records, flux_scales, tile_stamp)
                summary["n_epochs_incomplete"] += n_incomplete
                summary["n_epochs"] += len(raw)
                if reason is not None:
                    logger.debug("object %d has no epoch: %s", object_id, reason)
                try:
                    rng = sky_rng(seed, tile.ra[row], tile.dec[row], rng_cell_arcsec)
                    result = measure(raw, object_id, rng, config)
                except ValueError as error:
                    raise JobError(f"object {object_id} of {catalogue_path}: {error}") from error
                flags = result["noshear"]["mcal_flags"]
                summary["n_no_epoch"] += int(result["noshear"]["n_epoch_model"] == 0)
                summary["n_flagged"] += int(flags != 0)
                results.append(result)
    finally:
        for store in stores.values():
            store.close()
        flux_scales.close()
    return rows_to_tables(results), summary


def ngmix_header(tile: str, id_min: int, id_max: int, summary: dict):
    """Primary-header cards that let ``merge_sep_cats`` check the id ranges."""
    from astropy.io import fits

    header = fits.Header()
    header["TILENUM"] = (tile, "file number of the tile")
    header["ID_MIN"] = (int(id_min), "ID_OBJ_MIN of this job (<= 0: none)")
    header["ID_MAX"] = (int(id_max), "ID_OBJ_MAX of this job (<= 0: none)")
    header["NOBJTILE"] = (int(summary["n_tile"]), "objects in the tile catalogue")
    header["IDTILEMN"] = (int(summary["id_tile_min"]), "smallest NUMBER of the tile")
    header["IDTILEMX"] = (int(summary["id_tile_max"]), "largest NUMBER of the tile")
    header["ENGINE"] = ("builtin", "metacal engine (shapepipe_modules.ngmix)")
    return header


def write_ngmix_catalogue(path, tables: dict, header=None):
    """Write the five branches (HDUs ``1M``, ``1P``, ``2M``, ``2P``, ``NOSHEAR``) atomically."""
    from shapepipe_modules.io.tables import write_fits_tables

    missing = [name for name in BRANCHES if name not in tables]
    if missing:
        raise ValueError(f"branches {missing} missing from the ngmix tables")
    return write_fits_tables(path, [(name.upper(), tables[name], None) for name in HDU_ORDER],
                             primary_header=header)
