"""Multiplicative and additive shear bias from final catalogues and truth.

Steps (:func:`validate_catalogues`):

1. **Match** each final-catalogue object to the nearest truth object of its
   tile within ``max_sep`` arcsec (KD-tree on unit vectors); a truth object
   claimed by several detections keeps the nearest. Truth stars are left
   out unless ``keep_stars`` (so that m measures the shear calibration,
   not star contamination).
2. **Select** (:class:`Selection`), applied on each metacal branch's own
   quantities: ``NGMIX_NO_SHAPE == 0``, no fatal bit
   (:data:`shapepipe_modules.ngmix.flags.FATAL`) in ``NGMIX_MCAL_FLAGS``,
   finite shapes, ``snr_min < NGMIX_SNR_K < snr_max`` and
   ``NGMIX_T_K / NGMIX_Tpsf_K > size_ratio_min`` (ShapePipe's ``T``, a
   half-light radius, over the reconvolution PSF's). In a ring test
   (``ring=True``: the simulator's galaxies come in pairs rotated by 90
   degrees, truth column ``pair_id``), an object is kept only when both
   galaxies of its pair are in the same tile and pass the selection on the
   same branch (:class:`PairSelection`), so that their intrinsic shapes
   cancel in the tile's mean; pairs broken by the selection on a sheared
   branch enter the selection response like any other selection.
3. **Response**: ``R`` (mean of ``(g_i[j+] - g_i[j-]) / 2 step``) and the
   selection response ``R_sel`` over all selected objects of all tiles
   (:func:`shapepipe_modules.ngmix.response.shear_response`).
4. **Shear per tile**: ``(R + R_sel)^-1 <g>`` over the tile's selected
   objects (the simulator applies one shear per tile).
5. **m, c** per component from the tiles' (true, estimated) shears
   (:func:`fit_m_c`): least squares of ``g_est = (1 + m) g_true + c`` when
   the true values differ between tiles; with a single true value, ``m``
   assumes ``c = 0`` (true value non-zero) or ``c`` is the mean estimate
   (true value zero), and the other is NaN.
6. **Errors**: bootstrap over objects (over ring pairs in a ring test),
   resampled within each tile; the whole chain (response, selection
   response, shear, fit) is redone for every draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe_modules.ngmix.flags import FATAL
from shapepipe_modules.ngmix.response import shear_response

BRANCHES = {"noshear": "NOSHEAR", "1p": "1P", "1m": "1M", "2p": "2P", "2m": "2M"}
STEP = 0.01


class ValidationError(ValueError):
    """The inputs cannot be validated (the message names the file)."""


@dataclass
class Selection:
    """The documented selection, applied to one branch table.

    Attributes
    ----------
    snr_min, snr_max : float
        Bounds on ``NGMIX_SNR_K`` (exclusive).
    size_ratio_min : float
        Lower bound on ``NGMIX_T_K / NGMIX_Tpsf_K``.
    """

    snr_min: float = 10.0
    snr_max: float = np.inf
    size_ratio_min: float = 0.5

    def __call__(self, table) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = table["T"] / table["Tpsf"]
            return ((table["no_shape"] == 0) & ((table["mcal_flags"] & FATAL) == 0)
                    & np.isfinite(table["g1"]) & np.isfinite(table["g2"])
                    & (table["s2n"] > self.snr_min) & (table["s2n"] < self.snr_max)
                    & (ratio > self.size_ratio_min))

    def describe(self) -> str:
        return (f"NGMIX_NO_SHAPE == 0, NGMIX_MCAL_FLAGS & {FATAL} == 0, finite g, "
                f"{self.snr_min} < S/N < {self.snr_max}, T/Tpsf > {self.size_ratio_min} (per branch)")


class PairSelection:
    """A selection kept only for ring pairs whose two galaxies both pass it.

    Parameters
    ----------
    base : callable
        ``base(table) -> bool array``, applied to one branch table.

    Notes
    -----
    Branch tables carry ``pair`` (the pair's key, unique over the tiles;
    -1: no partner in the tile) and ``member`` (0 or 1, which galaxy of the
    pair). A bootstrap draw may repeat a pair; the test is on keys, so it
    still needs both members.
    """

    def __init__(self, base):
        self.base = base

    def __call__(self, table) -> np.ndarray:
        selected = np.asarray(self.base(table), dtype=bool)
        pair, member = np.asarray(table["pair"]), np.asarray(table["member"])
        paired = selected & (pair >= 0)
        both = np.intersect1d(pair[paired & (member == 0)], pair[paired & (member == 1)])
        return paired & np.isin(pair, both)

    def describe(self) -> str:
        inner = self.base.describe() if hasattr(self.base, "describe") else "selection"
        return f"{inner}; ring pairs with both galaxies selected in the same tile"


#: Pair keys are ``tile_number * PAIR_KEY_STRIDE + pair_id``: unique over the tiles.
PAIR_KEY_STRIDE = 2 ** 32


def pair_keys(pair_id, truth_index, tile_number):
    """``pair`` and ``member`` columns of the matched objects of one tile.

    Parameters
    ----------
    pair_id : numpy.ndarray
        Truth ``pair_id`` of the tile (0: not in a pair).
    truth_index : numpy.ndarray of int
        Truth row of each kept object.
    tile_number : int
        Position of the tile in the list (makes the keys unique over tiles).

    Returns
    -------
    pair, member : numpy.ndarray of int64
        ``pair`` is -1 for objects whose partner is not a kept object of
        the tile; ``member`` is 0 for the truth row listed first.
    """
    pair_id = np.asarray(pair_id, dtype=np.int64)
    ids = pair_id[truth_index]
    unique_ids, first_rows = np.unique(pair_id, return_index=True)
    first_row = first_rows[np.searchsorted(unique_ids, ids)]
    member = (np.asarray(truth_index) != first_row).astype(np.int64)
    counts = np.bincount(ids[ids > 0], minlength=int(ids.max(initial=0)) + 1)
    complete = (ids > 0) & (counts[np.maximum(ids, 0)] == 2)
    if ids.max(initial=0) >= PAIR_KEY_STRIDE:
        raise ValidationError(f"pair_id values must be below {PAIR_KEY_STRIDE}")
    pair = np.where(complete, tile_number * PAIR_KEY_STRIDE + ids, -1).astype(np.int64)
    return pair, member


def branch_tables(columns: dict) -> dict:
    """Per-branch tables (``g1, g2, s2n, T, Tpsf, mcal_flags, no_shape``) from final-catalogue columns."""
    tables = {}
    for branch, key in BRANCHES.items():
        ell = np.asarray(columns[f"NGMIX_ELL_{key}"], dtype=float)
        tables[branch] = {
            "g1": ell[:, 0], "g2": ell[:, 1],
            "s2n": np.asarray(columns[f"NGMIX_SNR_{key}"], dtype=float),
            "T": np.asarray(columns[f"NGMIX_T_{key}"], dtype=float),
            "Tpsf": np.asarray(columns[f"NGMIX_Tpsf_{key}"], dtype=float),
            "mcal_flags": np.asarray(columns["NGMIX_MCAL_FLAGS"]).astype(np.int64),
            "no_shape": np.asarray(columns["NGMIX_NO_SHAPE"]).astype(np.int64),
        }
    return tables


def _unit_vectors(ra, dec):
    ra = np.deg2rad(np.asarray(ra, dtype=float))
    dec = np.deg2rad(np.asarray(dec, dtype=float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def match_positions(ra, dec, truth_ra, truth_dec, max_sep_arcsec=1.0):
    """Nearest truth object of each position, one detection per truth object.

    Returns
    -------
    numpy.ndarray of int
        Row in the truth table, -1 when nothing lies within ``max_sep_arcsec``
        (or a nearer detection took the truth object).
    """
    from scipy.spatial import cKDTree

    n = np.size(ra)
    if n == 0 or np.size(truth_ra) == 0:
        return np.full(n, -1, dtype=np.int64)
    chord = 2.0 * np.sin(np.deg2rad(max_sep_arcsec / 3600.0) / 2.0)
    distance, index = cKDTree(_unit_vectors(truth_ra, truth_dec)).query(
        _unit_vectors(ra, dec), distance_upper_bound=chord)
    matched = np.isfinite(distance)
    index = np.where(matched, index, -1).astype(np.int64)
    # One detection per truth object: the nearest keeps it.
    rows = np.flatnonzero(matched)
    order = rows[np.lexsort((distance[rows], index[rows]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = index[order][1:] != index[order][:-1]
    index[order[~first]] = -1
    return index


def match_to_truth(columns, truth, ra_col, dec_col, max_sep, keep_stars=False):
    """Truth row of every detection and which detections are kept.

    Returns
    -------
    index : numpy.ndarray
        Truth row of each detection (-1: unmatched), from :func:`match_positions`.
    keep : numpy.ndarray
        Matched detections, true stars removed unless ``keep_stars``.
    n_matched : int
        Matched detections, stars included.
    """
    ra = np.asarray(columns[ra_col], dtype=float)
    dec = np.asarray(columns[dec_col], dtype=float)
    index = match_positions(ra, dec, truth["ra"], truth["dec"], max_sep)
    keep = index >= 0
    n_matched = int(keep.sum())
    if not keep_stars:
        keep &= ~np.asarray(truth["is_star"], dtype=bool)[np.maximum(index, 0)]
    return index, keep, n_matched


def fit_m_c(g_true, g_est, weights=None):
    """m and c per component from per-tile true and estimated shears.

    Parameters
    ----------
    g_true, g_est : array_like (n_tile, 2)
    weights : array_like (n_tile,), optional

    Returns
    -------
    m, c : numpy.ndarray (2,)
        NaN where the tiles do not constrain them (see the module docstring).
    """
    g_true = np.atleast_2d(np.asarray(g_true, dtype=float))
    g_est = np.atleast_2d(np.asarray(g_est, dtype=float))
    w = np.ones(len(g_true)) if weights is None else np.asarray(weights, dtype=float)
    m = np.full(2, np.nan)
    c = np.full(2, np.nan)
    for i in range(2):
        x, y = g_true[:, i], g_est[:, i]
        if np.unique(x).size >= 2:
            design = np.column_stack([x, np.ones_like(x)]) * np.sqrt(w)[:, None]
            slope, intercept = np.linalg.lstsq(design, y * np.sqrt(w), rcond=None)[0]
            m[i], c[i] = slope - 1.0, intercept
        elif x[0] != 0:
            m[i] = np.sum(w * y) / np.sum(w) / x[0] - 1.0
        else:
            c[i] = np.sum(w * y) / np.sum(w)
    return m, c


def _subset(tables, rows):
    return {name: {key: value[rows] for key, value in table.items()} for name, table in tables.items()}


def shear_per_tile(tables, tile_index, n_tiles, select, step=STEP):
    """Global response and per-tile shear estimates.

    Returns
    -------
    dict
        ``R``, ``R_sel``, ``g_mean`` (n_tiles, 2), ``shear`` (n_tiles, 2),
        ``n`` (selected objects per tile).
    """
    result = shear_response(tables, step=step, select=select)
    selected = select(tables["noshear"])
    matrix = result["R"] + result["R_sel"]
    g_mean = np.full((n_tiles, 2), np.nan)
    counts = np.bincount(tile_index[selected], minlength=n_tiles)
    for i, name in enumerate(("g1", "g2")):
        sums = np.bincount(tile_index[selected], weights=tables["noshear"][name][selected], minlength=n_tiles)
        with np.errstate(invalid="ignore", divide="ignore"):
            g_mean[:, i] = sums / counts
    shear = np.linalg.solve(matrix, g_mean.T).T
    return {"R": result["R"], "R_sel": result["R_sel"], "g_mean": g_mean, "shear": shear, "n": counts}


def _estimate(tables, tile_index, g_true, select, step):
    est = shear_per_tile(tables, tile_index, len(g_true), select, step)
    usable = est["n"] > 0
    m, c = fit_m_c(g_true[usable], est["shear"][usable])
    return est, m, c


def _resample_rows(tile_index, units, rng):
    """Rows of one bootstrap draw: units (objects, or ring pairs) drawn with replacement within each tile."""
    rows = []
    for t in np.unique(tile_index):
        members = np.flatnonzero(tile_index == t)
        codes, inverse = np.unique(units[members], return_inverse=True)
        order = members[np.argsort(inverse, kind="stable")]
        counts = np.bincount(inverse, minlength=codes.size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        drawn = rng.integers(0, codes.size, codes.size)
        lengths = counts[drawn]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows.append(order[np.repeat(starts[drawn], lengths) + offsets])
    return np.concatenate(rows)


def bootstrap_m_c(tables, tile_index, g_true, select, n_boot, rng, step=STEP, units=None):
    """Bootstrap standard deviations of m, c (units resampled within each tile).

    Parameters
    ----------
    units : numpy.ndarray of int, optional
        Resampling unit of each object (default: each object its own; a
        ring test passes the pair keys, so that pairs are drawn whole).

    Returns
    -------
    m_err, c_err : numpy.ndarray (2,)
    samples : numpy.ndarray (n_boot, 4)
        m1, m2, c1, c2 of each draw.
    """
    tile_index = np.asarray(tile_index)
    units = np.arange(tile_index.size) if units is None else np.asarray(units)
    samples = np.full((n_boot, 4), np.nan)
    for b in range(n_boot):
        rows = _resample_rows(tile_index, units, rng)
        try:
            _, m, c = _estimate(_subset(tables, rows), tile_index[rows], g_true, select, step)
        except (ValueError, np.linalg.LinAlgError):
            continue  # a draw with no selected object
        samples[b] = [m[0], m[1], c[0], c[1]]
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(samples, axis=0, ddof=1) if n_boot > 1 else np.full(4, np.nan)
    return spread[:2], spread[2:], samples


def validate_catalogues(catalogues, truths, selection=None, max_sep=1.0, keep_stars=False, n_boot=200,
                        seed=1, n_bins=4, step=STEP, ra_col="XWIN_WORLD", dec_col="YWIN_WORLD", ring=False):
    """The whole validation.

    Parameters
    ----------
    catalogues : list of (str, dict)
        Tile name and final-catalogue columns.
    truths : list of dict
        Truth columns of each tile (``ra``, ``dec``, ``g1``, ``g2``,
        ``is_star``), same order.
    selection : Selection, optional
    max_sep : float
        Matching radius (arcsec).
    keep_stars : bool
        Keep objects matched to truth stars.
    n_boot : int
        Bootstrap draws.
    seed : int
        Seed of the bootstrap generator.
    n_bins : int
        S/N and size-ratio bins (quantiles of the selected noshear values).
    step : float
        Metacal shear step.
    ring : bool
        Ring test: keep only pairs whose two galaxies are selected (truth
        ``pair_id`` needed), and bootstrap over pairs.

    Returns
    -------
    dict
        ``m``, ``c``, ``m_err``, ``c_err`` (2,), ``R``, ``R_sel``, per-tile
        ``tiles``, ``g_true``, ``g_est``, ``n_selected``; ``bins`` (per S/N
        and size bin: edges, m, c, errors); ``R_objects`` (per-object R11,
        R22 of the selection); counts.
    """
    base_selection = selection or Selection()
    selection = PairSelection(base_selection) if ring else base_selection
    rng = np.random.default_rng(seed)
    parts, tile_index, g_true, names = [], [], [], []
    n_detected = n_matched = 0
    for t, ((name, columns), truth) in enumerate(zip(catalogues, truths)):
        index, keep, matched = match_to_truth(columns, truth, ra_col, dec_col, max_sep, keep_stars)
        n_detected += index.size
        n_matched += matched
        galaxies = ~np.asarray(truth["is_star"], dtype=bool)
        if not galaxies.any():
            raise ValidationError(f"tile {name}: the truth holds no galaxy")
        shear = np.column_stack([np.asarray(truth["g1"], float)[galaxies], np.asarray(truth["g2"], float)[galaxies]])
        if np.ptp(shear, axis=0).max() > 1e-9:
            raise ValidationError(f"tile {name}: the true shear is not constant over the tile")
        rows = np.flatnonzero(keep)
        part = _subset(branch_tables(columns), rows)
        if ring:
            if "pair_id" not in truth:
                raise ValidationError(f"tile {name}: ring test asked but the truth has no pair_id column")
            pair, member = pair_keys(truth["pair_id"], index[rows], t)
        else:
            pair = member = np.full(rows.size, -1, dtype=np.int64)
        for table in part.values():
            table["pair"], table["member"] = pair, member
        parts.append(part)
        tile_index.append(np.full(rows.size, t, dtype=np.int64))
        g_true.append(shear[0])
        names.append(name)
    if not parts:
        raise ValidationError("no final catalogue given")
    tables = {branch: {key: np.concatenate([p[branch][key] for p in parts]) for key in parts[0][branch]}
              for branch in BRANCHES}
    tile_index = np.concatenate(tile_index)
    g_true = np.array(g_true)
    # Bootstrap units: ring pairs drawn whole (objects outside complete pairs are never selected).
    units = np.where(tables["noshear"]["pair"] >= 0, tables["noshear"]["pair"],
                     -1 - np.arange(tile_index.size)) if ring else None
    est, m, c = _estimate(tables, tile_index, g_true, selection, step)
    m_err, c_err, _ = bootstrap_m_c(tables, tile_index, g_true, selection, n_boot, rng, step, units)

    selected = selection(tables["noshear"])
    response_objects = np.column_stack([
        (tables["1p"]["g1"][selected] - tables["1m"]["g1"][selected]) / (2 * step),
        (tables["2p"]["g2"][selected] - tables["2m"]["g2"][selected]) / (2 * step)])

    bins = {}
    ns = tables["noshear"]
    with np.errstate(invalid="ignore", divide="ignore"):
        quantities = {"snr": lambda tab: tab["s2n"], "size_ratio": lambda tab: tab["T"] / tab["Tpsf"]}
    for label, quantity in quantities.items():
        values = quantity(ns)[selected]
        if values.size < 2 * n_bins:
            continue
        edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1))
        edges[-1] = np.nextafter(edges[-1], np.inf)
        rows = []
        for low, high in zip(edges[:-1], edges[1:]):
            def in_bin_base(table, low=low, high=high):
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = quantity(table)
                return base_selection(table) & (value >= low) & (value < high)
            in_bin = PairSelection(in_bin_base) if ring else in_bin_base
            try:
                _, bm, bc = _estimate(tables, tile_index, g_true, in_bin, step)
                bm_err, bc_err, _ = bootstrap_m_c(tables, tile_index, g_true, in_bin, max(n_boot // 4, 2), rng,
                                                  step, units)
            except (ValueError, np.linalg.LinAlgError):
                continue
            rows.append({"low": float(low), "high": float(high), "m": bm.tolist(), "c": bc.tolist(),
                         "m_err": bm_err.tolist(), "c_err": bc_err.tolist()})
        bins[label] = rows

    return {
        "m": m, "c": c, "m_err": m_err, "c_err": c_err, "R": est["R"], "R_sel": est["R_sel"],
        "tiles": names, "g_true": g_true, "g_est": est["shear"], "n_selected": est["n"],
        "n_detected": n_detected, "n_matched": n_matched, "n_used": int(tile_index.size),
        "bins": bins, "R_objects": response_objects, "selection": selection.describe(), "ring": bool(ring),
    }


def read_final_catalogue(path, hdu="RESULTS") -> dict:
    """Columns of a final catalogue (HDU ``RESULTS``)."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdus:
            if hdu not in hdus:
                raise ValidationError(f"{path}: no HDU {hdu}")
            data = hdus[hdu].data
            names = hdus[hdu].columns.names
            return {name: (np.array(data[name]) if data is not None else
                           np.zeros((0,) + hdus[hdu].columns[name].dtype.shape, hdus[hdu].columns[name].dtype.base))
                    for name in names}
    except OSError as error:
        raise ValidationError(f"cannot read final catalogue {path}: {error}") from error
