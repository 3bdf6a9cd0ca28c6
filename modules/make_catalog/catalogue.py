"""Building the final catalogue of one tile: every input joined by object id.

Columns, in order (ShapePipe's ``make_cat`` names):

- every column of the tile detection catalogue except ``VIGNET``;
- ``TILE_ID`` (``244.252`` as a float, ShapePipe's value);
- ``SPREAD_MODEL``, ``SPREADERR_MODEL`` (``SPREAD_FLAGS`` when the input has
  it) and, with classification on, ``SPREAD_CLASS`` (0 star, 1 galaxy,
  2 other; ``c = SPREAD_MODEL + 2 SPREADERR_MODEL``, star if
  ``|c| < SM_STAR_THRESH``, galaxy if ``c > SM_GAL_THRESH``);
- for ``K`` in ``1M, 1P, 2M, 2P, NOSHEAR``: ``NGMIX_ELL_K`` and
  ``NGMIX_ELL_ERR_K`` (g1, g2), ``NGMIX_T_K``, ``NGMIX_T_ERR_K``,
  ``NGMIX_Tpsf_K`` (ShapePipe's ``T``: half-light radius, arcsec),
  ``NGMIX_SNR_K``, ``NGMIX_FLUX_K``, ``NGMIX_FLUX_ERR_K``, ``NGMIX_MAG_K``,
  ``NGMIX_MAG_ERR_K``, ``NGMIX_FLAGS_K``, ``NGMIX_ELL_PSFo_K``,
  ``NGMIX_T_PSFo_K`` (the original PSF at the object, PSF model fitted per
  epoch and averaged), ``NGMIX_ELL_PSFr_K``, ``NGMIX_T_PSFr_K`` (the
  reconvolved, i.e. metacal target, PSF; ``NGMIX_T_PSFr_K`` equals
  ``NGMIX_Tpsf_K``, ShapePipe's name), and, when the ngmix catalogue has
  them, the explicit sizes ``NGMIX_T_GAUSS_K``, ``NGMIX_T_GAUSS_ERR_K``,
  ``NGMIX_Tpsf_GAUSS_K``, ``NGMIX_T_PSFo_GAUSS_K``, ``NGMIX_T_PSFr_GAUSS_K``
  (``T = 2 sigma^2`` in arcsec^2);
- ``NGMIX_MCAL_FLAGS``, ``NGMIX_N_EPOCH``, ``NGMIX_MOM_FAIL``;
- ``NGMIX_NO_SHAPE``: 0 when the object has a usable shape, bit 1 when it
  is absent from the ngmix catalogue, bit 2 when its ``NGMIX_MCAL_FLAGS``
  holds a fatal flag (:data:`shapepipe_modules.ngmix.flags.FATAL`);
- per epoch ``i = 1 .. N`` (epochs of the PSF store sorted by exposure and
  CCD): ``PSF_ELL_i`` (HSM e1, e2), ``PSF_FWHM_i`` (``2.355 SIGMA_PSF_HSM``,
  pixels), ``PSF_FLAG_i`` (HSM flag; 1 when no epoch), ``PSF_EXP_i``
  (exposure name) and ``PSF_CCD_i`` (-1 when no epoch).

Objects absent from an input keep ShapePipe's fill values (``-10`` for
ellipticities, 0 for sizes and fluxes, -1 for flux and magnitude errors,
``1e30`` for ``T`` errors) and the flag above says why. Joins use sorted
ids and :func:`numpy.searchsorted` (``O(n log n)``; ShapePipe's were
``O(n^2)``).
"""

from __future__ import annotations

import re

import numpy as np

from shapepipe.errors import JobError

BRANCH_KEYS = ("1M", "1P", "2M", "2P", "NOSHEAR")
#: Final name -> (ngmix column(s), fill value, dtype) per branch.
NGMIX_BRANCH_COLUMNS = (
    ("NGMIX_ELL_{}", ("g1", "g2"), -10.0, np.float64),
    ("NGMIX_ELL_ERR_{}", ("g1_err", "g2_err"), -10.0, np.float64),
    ("NGMIX_T_{}", "T", 0.0, np.float64),
    ("NGMIX_T_ERR_{}", "T_err", 1e30, np.float64),
    ("NGMIX_Tpsf_{}", "Tpsf", 0.0, np.float64),
    ("NGMIX_SNR_{}", "s2n", 0.0, np.float64),
    ("NGMIX_FLUX_{}", "flux", 0.0, np.float64),
    ("NGMIX_FLUX_ERR_{}", "flux_err", -1.0, np.float64),
    ("NGMIX_MAG_{}", "mag", 0.0, np.float64),
    ("NGMIX_MAG_ERR_{}", "mag_err", -1.0, np.float64),
    ("NGMIX_FLAGS_{}", "flags", 0, np.int32),
    ("NGMIX_ELL_PSFo_{}", ("g1_psfo_ngmix", "g2_psfo_ngmix"), -10.0, np.float64),
    ("NGMIX_T_PSFo_{}", "T_psfo_ngmix", 0.0, np.float64),
    ("NGMIX_ELL_PSFr_{}", ("g1_psf", "g2_psf"), -10.0, np.float64),
    ("NGMIX_T_PSFr_{}", "Tpsf", 0.0, np.float64),
)
#: Explicit sizes, written when the ngmix catalogue has them.
NGMIX_SIZE_COLUMNS = (
    ("NGMIX_T_GAUSS_{}", "T_gauss_arcsec2", 0.0, np.float64),
    ("NGMIX_T_GAUSS_ERR_{}", "T_gauss_arcsec2_err", 1e30, np.float64),
    ("NGMIX_Tpsf_GAUSS_{}", "Tpsf_gauss_arcsec2", 0.0, np.float64),
    ("NGMIX_T_PSFo_GAUSS_{}", "T_psfo_gauss_arcsec2", 0.0, np.float64),
    ("NGMIX_T_PSFr_GAUSS_{}", "Tpsf_gauss_arcsec2", 0.0, np.float64),
)
NO_SHAPE_ABSENT = 1
NO_SHAPE_FAILED = 2
SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def join_index(left_ids, right_ids, right_name="catalogue"):
    """Row of ``right_ids`` holding each of ``left_ids`` (-1 when absent).

    Raises
    ------
    JobError
        If ``right_ids`` has duplicates (``right_name`` names the file).
    """
    left_ids = np.asarray(left_ids)
    right_ids = np.asarray(right_ids)
    order = np.argsort(right_ids, kind="stable")
    sorted_ids = right_ids[order]
    if sorted_ids.size and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        doubled = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        raise JobError(f"{right_name}: {doubled.size} duplicated id(s), e.g. {doubled[:5].tolist()}")
    if not sorted_ids.size:
        return np.full(left_ids.size, -1, dtype=np.int64)
    position = np.searchsorted(sorted_ids, left_ids)
    position = np.clip(position, 0, sorted_ids.size - 1)
    found = sorted_ids[position] == left_ids
    return np.where(found, order[position], -1).astype(np.int64)


def read_objects_table(path, what):
    """Columns of a catalogue's objects table (``LDAC_OBJECTS``, else HDU 1).

    Returns
    -------
    dict of str to numpy.ndarray
        In file order, native byte order.
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            names = [hdu.name for hdu in hdus]
            index = names.index("LDAC_OBJECTS") if "LDAC_OBJECTS" in names else 1
            if index >= len(hdus) or not isinstance(hdus[index], fits.BinTableHDU):
                raise JobError(f"{what} {path}: no objects table (HDUs {names})")
            hdu = hdus[index]
            data = hdu.data
            columns = {}
            for name in hdu.columns.names:
                values = np.asarray(data[name]) if data is not None else np.zeros(
                    0, dtype=hdu.columns[name].dtype)
                columns[name] = values.astype(values.dtype.newbyteorder("="), copy=False)
            return columns
    except OSError as error:
        raise JobError(f"{what} {path}: cannot read ({error})") from error


def tile_id_value(number: str) -> float:
    """ShapePipe's ``TILE_ID``: ``'-244-252'`` -> ``244.252``."""
    parts = re.findall(r"\d+", str(number))
    if not parts:
        raise JobError(f"file number {number!r} holds no tile id")
    return float(".".join(parts))


def spread_model_columns(ids, sm_path, do_classification=True, star_thresh=0.003, gal_thresh=0.01):
    """``SPREAD_MODEL``, ``SPREADERR_MODEL`` (+ flags, class) joined by ``NUMBER``."""
    from shapepipe_modules.spread_model.spread_model import classify

    table = read_objects_table(sm_path, "spread-model catalogue")
    for name in ("SPREAD_MODEL", "SPREADERR_MODEL"):
        if name not in table:
            raise JobError(f"spread-model catalogue {sm_path}: no {name} column")
    if "NUMBER" in table:
        rows = join_index(ids, table["NUMBER"], f"spread-model catalogue {sm_path}")
    elif len(table["SPREAD_MODEL"]) == len(ids):
        rows = np.arange(len(ids))  # ShapePipe's files: same rows as the tile catalogue
    else:
        raise JobError(f"spread-model catalogue {sm_path}: no NUMBER column and {len(table['SPREAD_MODEL'])} "
                       f"rows for {len(ids)} tile objects")
    found = rows >= 0
    out = {}
    for name in ("SPREAD_MODEL", "SPREADERR_MODEL"):
        column = np.full(len(ids), np.nan)
        column[found] = table[name][rows[found]]
        out[name] = column
    if "SPREAD_FLAGS" in table:
        flags = np.full(len(ids), -1, dtype=np.int32)
        flags[found] = table["SPREAD_FLAGS"][rows[found]]
        out["SPREAD_FLAGS"] = flags
    if do_classification:
        out["SPREAD_CLASS"] = classify(out["SPREAD_MODEL"], out["SPREADERR_MODEL"], star_thresh, gal_thresh)
    return out


def read_ngmix_catalogue(path):
    """Branch key (``1M`` ... ``NOSHEAR``) to its columns."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            names = [hdu.name for hdu in hdus]
            missing = [key for key in BRANCH_KEYS if key not in names]
            if missing:
                raise JobError(f"ngmix catalogue {path}: HDU(s) {missing} missing (HDUs {names})")
            tables = {}
            for key in BRANCH_KEYS:
                hdu = hdus[key]
                tables[key] = {name: (np.asarray(hdu.data[name]) if hdu.data is not None
                                      else np.zeros(0, dtype=hdu.columns[name].dtype))
                               for name in hdu.columns.names}
    except OSError as error:
        raise JobError(f"ngmix catalogue {path}: cannot read ({error})") from error
    for key, table in tables.items():
        if "id" not in table:
            raise JobError(f"ngmix catalogue {path}: HDU {key} has no id column")
        if not np.array_equal(table["id"], tables["NOSHEAR"]["id"]):
            raise JobError(f"ngmix catalogue {path}: HDU {key} does not list the same ids as NOSHEAR")
    return tables


def ngmix_columns(ids, ngmix_path):
    """The metacal columns of the tile objects, joined by id."""
    from shapepipe_modules.ngmix.flags import FATAL

    tables = read_ngmix_catalogue(ngmix_path)
    noshear = tables["NOSHEAR"]
    rows = join_index(ids, noshear["id"], f"ngmix catalogue {ngmix_path}")
    extra = noshear["id"][join_index(noshear["id"], ids, "tile catalogue") < 0]
    if extra.size:
        raise JobError(f"ngmix catalogue {ngmix_path}: {extra.size} id(s) not in the tile catalogue, e.g. "
                       f"{extra[:5].tolist()} (wrong tile?)")
    found = rows >= 0
    src = rows[found]
    n = len(ids)
    out = {}
    specs = NGMIX_BRANCH_COLUMNS + tuple(s for s in NGMIX_SIZE_COLUMNS if s[1] in noshear)
    for key in BRANCH_KEYS:
        table = tables[key]
        for template, source, fill, dtype in specs:
            if isinstance(source, tuple):
                column = np.full((n, 2), fill, dtype=dtype)
                for k, name in enumerate(source):
                    column[found, k] = table[name][src]
            else:
                column = np.full(n, fill, dtype=dtype)
                column[found] = table[source][src]
            out[template.format(key)] = column
    mcal = np.zeros(n, dtype=np.int32)
    mcal[found] = noshear["mcal_flags"][src]
    n_epoch = np.zeros(n, dtype=np.int16)
    n_epoch[found] = noshear["n_epoch_model"][src]
    mom_fail = np.zeros(n, dtype=np.int16)
    mom_fail[found] = noshear["moments_fail"][src]
    no_shape = np.where(found, 0, NO_SHAPE_ABSENT).astype(np.int16)
    no_shape[found & ((mcal & FATAL) != 0)] |= NO_SHAPE_FAILED
    out.update(NGMIX_MCAL_FLAGS=mcal, NGMIX_N_EPOCH=n_epoch, NGMIX_MOM_FAIL=mom_fail, NGMIX_NO_SHAPE=no_shape)
    return out


def psf_columns(ids, psf_store_path, n_epoch_max=0, batch=2000):
    """Per-epoch PSF columns from the ``psfinterp`` MULTI-EPOCH store.

    Parameters
    ----------
    ids : array_like of int
    psf_store_path : path-like
    n_epoch_max : int
        Number of epoch columns; 0: the largest number of epochs of an
        object of this tile (ShapePipe's choice; tiles then differ).

    Raises
    ------
    JobError
        If the store is missing, lacks a tile object, or an object has more
        epochs than ``n_epoch_max``.
    """
    from shapepipe_modules.io.arrays import StoreError
    from shapepipe_modules.io.stamp_store import StampStore, split_epoch_key

    ids = np.asarray(ids, dtype=np.int64)
    rows, slots, e1, e2, sigma, flag, exposure, ccd = ([] for _ in range(8))
    try:
        store = StampStore(psf_store_path)
    except StoreError as error:
        raise JobError(f"PSF store: {error}") from error
    with store:
        for start in range(0, ids.size, batch):
            chunk = ids[start:start + batch]
            records = store.get_many(chunk, arrays=False)
            for offset, object_id in enumerate(chunk.tolist()):
                record = records.get(object_id)
                if record is None:
                    raise JobError(f"PSF store {psf_store_path}: object {object_id} of the tile is missing")
                keys = sorted(record, key=split_epoch_key)
                for slot, key in enumerate(keys):
                    meta = record[key].meta
                    exp_name, ccd_number = split_epoch_key(key)
                    rows.append(start + offset)
                    slots.append(slot)
                    e1.append(meta.get("E1_PSF_HSM", np.nan))
                    e2.append(meta.get("E2_PSF_HSM", np.nan))
                    sigma.append(meta.get("SIGMA_PSF_HSM", np.nan))
                    flag.append(meta.get("FLAG_PSF_HSM", 1))
                    exposure.append(exp_name)
                    ccd.append(ccd_number)
    rows = np.asarray(rows, dtype=np.int64)
    slots = np.asarray(slots, dtype=np.int64)
    largest = int(slots.max()) + 1 if slots.size else 0
    if n_epoch_max > 0 and largest > n_epoch_max:
        worst = ids[rows[np.argmax(slots)]]
        raise JobError(f"PSF store {psf_store_path}: object {worst} has {largest} epochs, more than "
                       f"PSF_N_EPOCH_MAX = {n_epoch_max}")
    n_columns = n_epoch_max if n_epoch_max > 0 else largest
    e1, e2, sigma = (np.asarray(v, dtype=float) for v in (e1, e2, sigma))
    flag = np.asarray(flag, dtype=np.int16)
    ok = flag == 0
    exposure = np.asarray(exposure, dtype=str) if exposure else np.zeros(0, "U1")
    ccd = np.asarray(ccd, dtype=np.int16)
    out = {}
    n = ids.size
    width = max(exposure.dtype.itemsize // 4, 1)
    for slot in range(n_columns):
        here = slots == slot
        target = rows[here]
        good = here & ok
        ell = np.full((n, 2), -10.0)
        ell[rows[good], 0] = e1[good]
        ell[rows[good], 1] = e2[good]
        fwhm = np.zeros(n)
        fwhm[rows[good]] = SIGMA_TO_FWHM * sigma[good]
        flags = np.ones(n, dtype=np.int16)
        flags[target] = flag[here]
        exp_col = np.full(n, "", dtype=f"U{width}")
        exp_col[target] = exposure[here]
        ccd_col = np.full(n, -1, dtype=np.int16)
        ccd_col[target] = ccd[here]
        i = slot + 1
        out.update({f"PSF_ELL_{i}": ell, f"PSF_FWHM_{i}": fwhm, f"PSF_FLAG_{i}": flags,
                    f"PSF_EXP_{i}": exp_col, f"PSF_CCD_{i}": ccd_col})
    return out


def make_final_catalogue(tile_path, sm_path, psf_path, ngmix_path, number, do_classification=True,
                         star_thresh=0.003, gal_thresh=0.01, save_psf=True, n_epoch_max=0):
    """Columns of the final catalogue of one tile (see the module docstring).

    Returns
    -------
    dict of str to numpy.ndarray
        One row per tile object, in tile-catalogue order.
    """
    columns = read_objects_table(tile_path, "tile catalogue")
    if "NUMBER" not in columns:
        raise JobError(f"tile catalogue {tile_path}: no NUMBER column")
    columns.pop("VIGNET", None)
    ids = columns["NUMBER"].astype(np.int64)
    if np.unique(ids).size != ids.size:
        raise JobError(f"tile catalogue {tile_path}: NUMBER values are not unique")
    columns["TILE_ID"] = np.full(ids.size, tile_id_value(number))
    for name, values in spread_model_columns(ids, sm_path, do_classification, star_thresh, gal_thresh).items():
        columns[name] = values
    columns.update(ngmix_columns(ids, ngmix_path))
    if save_psf:
        columns.update(psf_columns(ids, psf_path, n_epoch_max))
    return columns
