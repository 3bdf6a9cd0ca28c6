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
   half-light radius, over the reconvolution PSF's).
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
6. **Errors**: bootstrap over objects, resampled within each tile; the
   whole chain (response, selection response, shear, fit) is redone for
   every draw.
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


def bootstrap_m_c(tables, tile_index, g_true, select, n_boot, rng, step=STEP):
    """Bootstrap standard deviations of m, c (objects resampled within each tile).

    Returns
    -------
    m_err, c_err : numpy.ndarray (2,)
    samples : numpy.ndarray (n_boot, 4)
        m1, m2, c1, c2 of each draw.
    """
    members = [np.flatnonzero(tile_index == t) for t in range(len(g_true))]
    samples = np.full((n_boot, 4), np.nan)
    for b in range(n_boot):
        rows = np.concatenate([rng.choice(idx, size=idx.size, replace=True) for idx in members if idx.size])
        try:
            _, m, c = _estimate(_subset(tables, rows), tile_index[rows], g_true, select, step)
        except (ValueError, np.linalg.LinAlgError):
            continue  # a draw with no selected object
        samples[b] = [m[0], m[1], c[0], c[1]]
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(samples, axis=0, ddof=1) if n_boot > 1 else np.full(4, np.nan)
    return spread[:2], spread[2:], samples


def validate_catalogues(catalogues, truths, selection=None, max_sep=1.0, keep_stars=False, n_boot=200,
                        seed=1, n_bins=4, step=STEP, ra_col="XWIN_WORLD", dec_col="YWIN_WORLD"):
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

    Returns
    -------
    dict
        ``m``, ``c``, ``m_err``, ``c_err`` (2,), ``R``, ``R_sel``, per-tile
        ``tiles``, ``g_true``, ``g_est``, ``n_selected``; ``bins`` (per S/N
        and size bin: edges, m, c, errors); ``R_objects`` (per-object R11,
        R22 of the selection); counts.
    """
    selection = selection or Selection()
    rng = np.random.default_rng(seed)
    parts, tile_index, g_true, names = [], [], [], []
    n_detected = n_matched = 0
    for t, ((name, columns), truth) in enumerate(zip(catalogues, truths)):
        ra = np.asarray(columns[ra_col], dtype=float)
        dec = np.asarray(columns[dec_col], dtype=float)
        index = match_positions(ra, dec, truth["ra"], truth["dec"], max_sep)
        keep = index >= 0
        n_detected += ra.size
        n_matched += int(keep.sum())
        if not keep_stars:
            keep &= ~np.asarray(truth["is_star"], dtype=bool)[np.maximum(index, 0)]
        galaxies = ~np.asarray(truth["is_star"], dtype=bool)
        if not galaxies.any():
            raise ValidationError(f"tile {name}: the truth holds no galaxy")
        shear = np.column_stack([np.asarray(truth["g1"], float)[galaxies], np.asarray(truth["g2"], float)[galaxies]])
        if np.ptp(shear, axis=0).max() > 1e-9:
            raise ValidationError(f"tile {name}: the true shear is not constant over the tile")
        rows = np.flatnonzero(keep)
        parts.append(_subset(branch_tables(columns), rows))
        tile_index.append(np.full(rows.size, t, dtype=np.int64))
        g_true.append(shear[0])
        names.append(name)
    if not parts:
        raise ValidationError("no final catalogue given")
    tables = {branch: {key: np.concatenate([p[branch][key] for p in parts]) for key in parts[0][branch]}
              for branch in BRANCHES}
    tile_index = np.concatenate(tile_index)
    g_true = np.array(g_true)
    est, m, c = _estimate(tables, tile_index, g_true, selection, step)
    m_err, c_err, _ = bootstrap_m_c(tables, tile_index, g_true, selection, n_boot, rng, step)

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
            def in_bin(table, low=low, high=high):
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = quantity(table)
                return selection(table) & (value >= low) & (value < high)
            try:
                _, bm, bc = _estimate(tables, tile_index, g_true, in_bin, step)
                bm_err, bc_err, _ = bootstrap_m_c(tables, tile_index, g_true, in_bin, max(n_boot // 4, 2), rng,
                                                  step)
            except (ValueError, np.linalg.LinAlgError):
                continue
            rows.append({"low": float(low), "high": float(high), "m": bm.tolist(), "c": bc.tolist(),
                         "m_err": bm_err.tolist(), "c_err": bc_err.tolist()})
        bins[label] = rows

    return {
        "m": m, "c": c, "m_err": m_err, "c_err": c_err, "R": est["R"], "R_sel": est["R_sel"],
        "tiles": names, "g_true": g_true, "g_est": est["shear"], "n_selected": est["n"],
        "n_detected": n_detected, "n_matched": n_matched, "n_used": int(tile_index.size),
        "bins": bins, "R_objects": response_objects, "selection": selection.describe(),
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
