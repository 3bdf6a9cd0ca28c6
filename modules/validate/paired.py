"""Paired shear validation: the same galaxies simulated with shear +g and -g.

Two runs of the chain on simulations that differ only by the sign of the
shear (same seed, same galaxies, same noise) are joined galaxy by galaxy;
intrinsic shapes and most pixel noise cancel in the difference of the two
measurements, so m is measured with far fewer galaxies than from tile means
(:mod:`.shear`).

Steps:

1. **Members** (:func:`member_table`): each run's final catalogues are
   matched to the truth of their tile by position (:func:`.shear.match_to_truth`);
   every matched galaxy gets a key (tile, truth ``id``). Truth stars are left
   out unless ``keep_stars``.
2. **Join** (:func:`join_pairs`): inner join of the plus and minus members by
   key; a galaxy detected (or matched) in one run only is dropped. The true
   shears must be opposite.
3. **Selection** (:func:`pair_selection`): the cut (:class:`.shear.Selection`)
   must pass for *both* members, on the same metacal branch.
4. **Estimator** (:func:`paired_estimate`), per galaxy ``k`` with
   ``d = (e+ - e-) / 2``, ``s = (e+ + e-) / 2`` (noshear shapes) and
   ``R_k = (R+_k + R-_k) / 2`` (each member's ``(e[j+] - e[j-]) / 2 step``):

   - ``1 + m_i = sum w d_i / sum w (R_k g_k)_i`` over the selected galaxies
     whose applied shear component ``g_i`` is not zero (for one shear value:
     ``<d_i> / (g_i <R_ii>)``, plus the off-diagonal term ``R_ij g_j``);
   - ``c = <R>^-1 <s>`` over all selected galaxies; for ring simulations
     (``ring``) over the **complete ring pairs** only (both galaxies of the
     ring pair selected): ``s`` keeps each galaxy's intrinsic shape, which
     only its 90-degree partner cancels, so a galaxy without its partner
     brings its whole shape noise (docs/calibration.md, "Additive bias").
     ``c_all`` (all selected galaxies) is reported beside it;
   - ``e_int_mean``: with the truth intrinsic shapes in the table (``e_int``),
     their mean over the selected galaxies: zero unless the selection
     depends on orientation (an additive bias of the selection itself, which
     the complete-pair ``c`` cannot see);
   - the same weights ``w`` (one per galaxy, from both members alike;
     default 1) in numerators and responses.

   **Selection response.** The pair selection ``S(+g) & S(-g)`` is even in
   ``g`` and ``d`` is odd: a change of the selection with shear multiplies a
   ``d`` that vanishes at ``g = 0``, so the selection response of ``<d>`` is
   second order (``O(g step)``), and that of ``<s>`` (even in ``g``) vanishes
   at first order too. The estimator therefore needs no ``R_sel`` term. The
   selection response of docs/metacal.md (the cut applied to the sheared
   branches of both members, ``(<s>_{S(j+)} - <s>_{S(j-)}) / 2 step``, what a
   single run would need) is computed and reported as ``R_sel`` for
   comparison; ``R_sel_pair`` (the same with ``d``) checks that the paired
   one is zero within its error.
5. **Errors**: bootstrap over galaxies (over ring pairs when ``units`` is
   given), the whole estimate redone for every draw.

Pair tables (:func:`pairs_to_columns`, :func:`pairs_from_columns`) are flat
dicts of arrays written as FITS tables, so that a calibration campaign pools
galaxies over seeds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .shear import STEP, Selection, ValidationError, match_to_truth

#: Metacal branches in the order of the branch axis of the pair arrays.
BRANCH_ORDER = ("noshear", "1p", "1m", "2p", "2m")
_BRANCH_KEYS = {"noshear": "NOSHEAR", "1p": "1P", "1m": "1M", "2p": "2P", "2m": "2M"}
#: Per-member fields: name -> shape after the galaxy axis.
MEMBER_FIELDS = ("g", "s2n", "T", "Tpsf", "psf_T", "mag", "mcal_flags", "no_shape", "g_err", "psf_g", "xy")
#: Member fields added after the first campaigns: filled with NaN when a pair table lacks them.
OPTIONAL_FIELDS = {"psf_g": 2, "xy": 2}
#: Keys are ``tile_code * KEY_STRIDE + truth id`` (tile_code = XXX * 1000 + YYY).
KEY_STRIDE = 2 ** 36
#: Quantities of the bins (pair means of the members' noshear values).
BIN_QUANTITIES = ("snr", "size_ratio", "psf_size", "mag")


def _column(columns, name, n, fill=np.nan):
    return np.asarray(columns[name], dtype=float) if name in columns else np.full(n, fill)


def member_table(catalogues, truths, max_sep=1.0, keep_stars=False, ra_col="XWIN_WORLD", dec_col="YWIN_WORLD"):
    """Matched galaxies of one run (one sign of the shear), with their keys.

    Parameters
    ----------
    catalogues : list of (str, dict)
        Final-catalogue name (``final_cat-XXX-YYY.fits``) and columns.
    truths : list of dict
        Truth columns of each tile (``ra``, ``dec``, ``g1``, ``g2``,
        ``is_star``; ``id``, ``mag``, ``pair_id`` when present), same order.

    Returns
    -------
    dict
        ``key``, ``g_true`` (n, 2), ``truth_mag``, ``ring`` (ring key, -1: none),
        ``e_int`` (n, 2: truth intrinsic shape, NaN without) and the member fields (:data:`MEMBER_FIELDS`; ``g`` is (n, 5, 2),
        the branch quantities (n, 5)); ``n_detected``, ``n_matched``.
    """
    from shapepipe_modules import cfis

    parts = []
    n_detected = n_matched = 0
    for (name, columns), truth in zip(catalogues, truths):
        try:
            xxx, yyy = cfis.parse_tile_id(name)
        except ValueError as error:
            raise ValidationError(f"{name}: {error}") from None
        tile_code = xxx * 1000 + yyy
        index, keep, matched = match_to_truth(columns, truth, ra_col, dec_col, max_sep, keep_stars)
        n_detected += index.size
        n_matched += matched
        rows = np.flatnonzero(keep)
        truth_rows = index[rows]
        ids = np.asarray(truth["id"], dtype=np.int64) if "id" in truth else np.arange(len(truth["ra"]))
        if ids.size and ids.max() >= KEY_STRIDE:
            raise ValidationError(f"{name}: truth ids must be below {KEY_STRIDE}")
        n = rows.size
        part = {
            "key": tile_code * KEY_STRIDE + ids[truth_rows],
            "g_true": np.column_stack([np.asarray(truth["g1"], float)[truth_rows],
                                       np.asarray(truth["g2"], float)[truth_rows]]),
            "truth_mag": (np.asarray(truth["mag"], float)[truth_rows] if "mag" in truth else np.full(n, np.nan)),
            "ring": (np.where(np.asarray(truth["pair_id"])[truth_rows] > 0,
                              tile_code * KEY_STRIDE + np.asarray(truth["pair_id"], np.int64)[truth_rows], -1)
                     if "pair_id" in truth else np.full(n, -1, np.int64)),
            # Truth intrinsic shapes (shear convention), NaN when the truth has none.
            "e_int": (np.column_stack([np.asarray(truth["e1_int"], float)[truth_rows],
                                       np.asarray(truth["e2_int"], float)[truth_rows]])
                      if "e1_int" in truth and "e2_int" in truth else np.full((n, 2), np.nan)),
        }
        part["g"] = np.stack([np.asarray(columns[f"NGMIX_ELL_{_BRANCH_KEYS[b]}"], float)[rows]
                              for b in BRANCH_ORDER], axis=1)
        for field, prefix in (("s2n", "NGMIX_SNR_"), ("T", "NGMIX_T_"), ("Tpsf", "NGMIX_Tpsf_")):
            part[field] = np.stack([np.asarray(columns[prefix + _BRANCH_KEYS[b]], float)[rows]
                                    for b in BRANCH_ORDER], axis=1)
        total = index.size
        psf_name = "NGMIX_T_PSFo_NOSHEAR" if "NGMIX_T_PSFo_NOSHEAR" in columns else "NGMIX_Tpsf_NOSHEAR"
        part["psf_T"] = _column(columns, psf_name, total)[rows]
        part["mag"] = _column(columns, "NGMIX_MAG_NOSHEAR", total)[rows]
        part["mcal_flags"] = np.asarray(columns["NGMIX_MCAL_FLAGS"]).astype(np.int64)[rows]
        part["no_shape"] = np.asarray(columns["NGMIX_NO_SHAPE"]).astype(np.int64)[rows]
        part["g_err"] = (np.asarray(columns["NGMIX_ELL_ERR_NOSHEAR"], float)[rows]
                         if "NGMIX_ELL_ERR_NOSHEAR" in columns else np.full((n, 2), np.nan))
        # For additive-bias diagnostics: the original PSF's shape and the tile pixel position.
        part["psf_g"] = (np.asarray(columns["NGMIX_ELL_PSFo_NOSHEAR"], float).reshape(total, -1)[rows, :2]
                         if "NGMIX_ELL_PSFo_NOSHEAR" in columns else np.full((n, 2), np.nan))
        part["xy"] = np.column_stack([_column(columns, "XWIN_IMAGE", total)[rows],
                                      _column(columns, "YWIN_IMAGE", total)[rows]])
        parts.append(part)
    if not parts:
        raise ValidationError("no final catalogue given")
    table = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    table["n_detected"], table["n_matched"] = n_detected, n_matched
    return table


def join_pairs(plus, minus, tolerance=1e-9):
    """Galaxies present in both runs, one row each (inner join on ``key``).

    Parameters
    ----------
    plus, minus : dict
        :func:`member_table` of the +g and -g runs.

    Returns
    -------
    dict
        ``key``, ``g_true`` (the plus run's), ``truth_mag``, ``ring``, ``e_int``,
        ``plus`` and ``minus`` (member fields), ``n_plus``, ``n_minus``.

    Raises
    ------
    ValidationError
        If a key appears twice in a run or the true shears are not opposite.
    """
    for label, member in (("plus", plus), ("minus", minus)):
        if np.unique(member["key"]).size != member["key"].size:
            raise ValidationError(f"{label} run: a truth galaxy is matched twice in one tile")
    common, rows_p, rows_m = np.intersect1d(plus["key"], minus["key"], assume_unique=True, return_indices=True)
    if not np.allclose(plus["g_true"][rows_p], -minus["g_true"][rows_m], rtol=0.0, atol=tolerance):
        worst = int(np.argmax(np.abs(plus["g_true"][rows_p] + minus["g_true"][rows_m]).max(axis=1)))
        raise ValidationError(
            f"the two runs are not a sign-flipped pair: galaxy {common[worst] % KEY_STRIDE} has true shear "
            f"{plus['g_true'][rows_p][worst].tolist()} in PLUS and {minus['g_true'][rows_m][worst].tolist()} in MINUS"
            + (" (the same shear: a rotation pair, simulate_paired(pairing='rotate'), whose estimate is the mean of "
               "the two runs, as benchmarks/bench_cluster_shear.py forms it; this estimator needs opposite shears)"
               if np.allclose(plus["g_true"][rows_p], minus["g_true"][rows_m], rtol=0.0, atol=tolerance) else ""))
    return {
        "key": common, "g_true": plus["g_true"][rows_p], "truth_mag": plus["truth_mag"][rows_p],
        "ring": plus["ring"][rows_p],
        "e_int": (plus["e_int"][rows_p] if "e_int" in plus else np.full((common.size, 2), np.nan)),
        "plus": {name: plus[name][rows_p] for name in MEMBER_FIELDS},
        "minus": {name: minus[name][rows_m] for name in MEMBER_FIELDS},
        "n_plus": int(plus["key"].size), "n_minus": int(minus["key"].size),
    }


def branch_view(member, branch):
    """One branch of a member as the table :class:`.shear.Selection` reads."""
    b = BRANCH_ORDER.index(branch)
    return {"g1": member["g"][:, b, 0], "g2": member["g"][:, b, 1], "s2n": member["s2n"][:, b],
            "T": member["T"][:, b], "Tpsf": member["Tpsf"][:, b], "mcal_flags": member["mcal_flags"],
            "no_shape": member["no_shape"]}


def pair_selection(pairs, select, branch="noshear"):
    """Galaxies whose two members both pass ``select`` on ``branch``."""
    return (np.asarray(select(branch_view(pairs["plus"], branch)), dtype=bool)
            & np.asarray(select(branch_view(pairs["minus"], branch)), dtype=bool))


def pair_quantity(pairs, name):
    """Pair mean (symmetric in the sign of the shear) of a noshear quantity used for bins."""
    def value(member):
        with np.errstate(invalid="ignore", divide="ignore"):
            if name == "snr":
                return member["s2n"][:, 0]
            if name == "size_ratio":
                return member["T"][:, 0] / member["Tpsf"][:, 0]
            if name == "psf_size":
                return member["psf_T"]
            if name == "mag":
                return member["mag"]
        raise ValueError(f"unknown bin quantity {name!r}; choose one of {', '.join(BIN_QUANTITIES)}")
    return 0.5 * (value(pairs["plus"]) + value(pairs["minus"]))


def pair_weights(pairs, kind="none", shape_noise=0.26):
    """One weight per galaxy, computed identically from both members.

    Parameters
    ----------
    kind : {"none", "ivar"}
        ``none``: 1; ``ivar``: ``1 / (shape_noise^2 + sigma^2)`` with
        ``sigma^2`` the mean over both members and both components of the
        noshear ``NGMIX_ELL_ERR`` squared.
    """
    n = pairs["key"].size
    if kind == "none":
        return np.ones(n)
    if kind == "ivar":
        variance = 0.25 * (np.sum(pairs["plus"]["g_err"] ** 2, axis=1) + np.sum(pairs["minus"]["g_err"] ** 2, axis=1))
        weights = 1.0 / (shape_noise ** 2 + variance)
        return np.where(np.isfinite(weights), weights, 0.0)
    raise ValueError(f"unknown weights {kind!r}; choose none or ivar")


class PairTerms:
    """Per-galaxy terms of the paired estimator, computed once, summed per draw.

    Parameters
    ----------
    pairs : dict
        :func:`join_pairs` output.
    select : callable
        ``select(branch table) -> bool array``, required of both members.
    weights : numpy.ndarray, optional
    step : float
        Metacal shear step.
    ring : bool
        Measure ``c`` on the complete ring pairs only (:func:`ring_complete`).
    """

    def __init__(self, pairs, select, weights=None, step=STEP, ring=False):
        n = pairs["key"].size
        self.n = n
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        e_plus, e_minus = pairs["plus"]["g"], pairs["minus"]["g"]
        self.d = 0.5 * (e_plus[:, 0] - e_minus[:, 0])
        self.s = 0.5 * (e_plus[:, 0] + e_minus[:, 0])
        response = np.zeros((n, 2, 2))
        for j, (p, m) in enumerate(((1, 2), (3, 4))):
            response[:, :, j] = 0.25 * ((e_plus[:, p] - e_plus[:, m]) + (e_minus[:, p] - e_minus[:, m])) / step
        self.response = response
        self.g_true = np.asarray(pairs["g_true"], dtype=float)
        self.rg = np.einsum("nij,nj->ni", response, self.g_true)
        self.selected = pair_selection(pairs, select) & np.all(np.isfinite(self.d), axis=1) \
            & np.all(np.isfinite(response), axis=(1, 2))
        self.sheared = {branch: pair_selection(pairs, select, branch) & np.all(np.isfinite(self.s), axis=1)
                        for branch in BRANCH_ORDER[1:]}
        self.c_members = ring_complete(pairs, self.selected) if ring else self.selected
        e_int = np.asarray(pairs["e_int"], dtype=float) if "e_int" in pairs else np.full((n, 2), np.nan)
        self.has_e_int = bool(np.all(np.isfinite(e_int[self.selected]))) and bool(self.selected.any())
        self.e_int = np.nan_to_num(e_int)
        # Rows left out carry zero weight; zeros instead of NaN keep 0 * NaN out of the sums.
        self.d, self.s = np.nan_to_num(self.d), np.nan_to_num(self.s)
        self.response, self.rg = np.nan_to_num(self.response), np.nan_to_num(self.rg)
        self.step = step

    def estimate(self, counts=None, mask=None):
        """m, c and responses for galaxy multiplicities ``counts`` (default 1 each) within ``mask``.

        Returns
        -------
        dict
            ``m``, ``c`` (2,: over the complete ring pairs when the terms
            were made with ``ring``), ``c_all`` (2,: all selected),
            ``e_int_mean`` (2,: truth intrinsic shapes, NaN without),
            ``R`` (2x2 mean response), ``R_sel`` and
            ``R_sel_pair`` (2x2, diagnostics: see the module docstring),
            ``n`` (selected galaxies), ``n_m`` (per component, galaxies with
            a non-zero applied shear).
        """
        w = self.weights * (1.0 if counts is None else counts)
        if mask is not None:
            w = w * mask
        ws = np.where(self.selected, w, 0.0)
        total = ws.sum()
        if total <= 0:
            raise ValueError("no galaxy pair passes the selection")
        r_mean = np.einsum("n,nij->ij", ws, self.response) / total
        s_mean = ws @ self.s / total
        m = np.full(2, np.nan)
        n_m = np.zeros(2, dtype=np.int64)
        for i in range(2):
            use = np.where(self.g_true[:, i] != 0, ws, 0.0)
            n_m[i] = int(np.count_nonzero(use))
            denominator = use @ self.rg[:, i]
            if n_m[i] and denominator != 0:
                m[i] = (use @ self.d[:, i]) / denominator - 1.0
        wc = np.where(self.c_members, w, 0.0)
        try:
            c_all = np.linalg.solve(r_mean, s_mean)
            c = np.linalg.solve(r_mean, wc @ self.s / wc.sum()) if wc.sum() > 0 else np.full(2, np.nan)
        except np.linalg.LinAlgError:
            c = c_all = np.full(2, np.nan)  # no response on one axis
        e_int_mean = ws @ self.e_int / total if self.has_e_int else np.full(2, np.nan)
        r_sel = np.full((2, 2), np.nan)
        r_sel_pair = np.full((2, 2), np.nan)
        for j, (plus, minus) in enumerate((("1p", "1m"), ("2p", "2m"))):
            wp = np.where(self.sheared[plus], w, 0.0)
            wm = np.where(self.sheared[minus], w, 0.0)
            if wp.sum() > 0 and wm.sum() > 0:
                r_sel[:, j] = (wp @ self.s / wp.sum() - wm @ self.s / wm.sum()) / (2.0 * self.step)
                r_sel_pair[:, j] = (wp @ self.d / wp.sum() - wm @ self.d / wm.sum()) / (2.0 * self.step)
        return {"m": m, "c": c, "c_all": c_all, "e_int_mean": e_int_mean, "R": r_mean, "R_sel": r_sel,
                "R_sel_pair": r_sel_pair, "n": int(np.count_nonzero(ws)), "n_c": int(np.count_nonzero(wc)), "n_m": n_m}

    @staticmethod
    def vector(est):
        """The quantities the error estimates resample: m1, m2, c1, c2, c_all1, c_all2, e_int_mean1, e_int_mean2."""
        return np.concatenate([est["m"], est["c"], est["c_all"], est["e_int_mean"]])


#: Length of :meth:`PairTerms.vector`.
N_ERROR_TERMS = 8


def ring_complete(pairs, selected):
    """Selected galaxies whose ring partner (same ring key, same seed) is selected too.

    Parameters
    ----------
    pairs : dict
        Pair table with ``ring`` (ring key, -1: no partner) and, when pooled, ``seed``.
    selected : numpy.ndarray of bool

    Returns
    -------
    numpy.ndarray of bool
    """
    ring_key = np.asarray(pairs["ring"], dtype=np.int64)
    candidates = np.asarray(selected, dtype=bool) & (ring_key >= 0)
    groups = ring_key if "seed" not in pairs else np.column_stack([np.asarray(pairs["seed"]), ring_key])
    complete = np.zeros(ring_key.size, dtype=bool)
    if not candidates.any():
        return complete
    _, inverse, counts = np.unique(groups[candidates], axis=0, return_inverse=True, return_counts=True)
    complete[np.flatnonzero(candidates)] = counts[inverse.ravel()] == 2
    return complete


def bootstrap_draws(n, n_boot, rng, units=None):
    """Multiplicity of each galaxy in ``n_boot`` bootstrap draws (over units when given).

    Yields
    ------
    numpy.ndarray of float (n,)
    """
    if units is None:
        for _ in range(n_boot):
            yield np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        return
    codes, inverse = np.unique(units, return_inverse=True)
    for _ in range(n_boot):
        drawn = np.bincount(rng.integers(0, codes.size, codes.size), minlength=codes.size)
        yield drawn[inverse].astype(float)


def resampling_units(pairs, ring=False):
    """Bootstrap units: each galaxy, or (``ring``) each ring pair drawn whole."""
    if not ring:
        return None
    ring_key = np.asarray(pairs["ring"])
    units = np.where(ring_key >= 0, ring_key, -1 - np.arange(ring_key.size))
    if "seed" in pairs:  # pooled seeds: the same ring key in two seeds is two units
        _, units = np.unique(np.column_stack([np.asarray(pairs["seed"]), units]), axis=0, return_inverse=True)
    return units.ravel()


def bootstrap_errors(terms, n_boot, rng, units=None, mask=None):
    """Bootstrap standard deviations of :meth:`PairTerms.vector` (and the samples)."""
    samples = np.full((n_boot, N_ERROR_TERMS), np.nan)
    for b, counts in enumerate(bootstrap_draws(terms.n, n_boot, rng, units)):
        try:
            est = terms.estimate(counts, mask)
        except (ValueError, np.linalg.LinAlgError):
            continue
        samples[b] = terms.vector(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a component without data: NaN, said in the report
        spread = np.nanstd(samples, axis=0, ddof=1) if n_boot > 1 else np.full(N_ERROR_TERMS, np.nan)
    return spread, samples


def group_jackknife_errors(terms, groups):
    """Delete-one-group jackknife errors of :meth:`PairTerms.vector` (e.g. one group per seed).

    The bootstrap over galaxies (or ring pairs) misses what a whole seed
    shares: its PSF pattern, its exposures' noise, its bad columns. Leaving
    out one seed at a time measures the scatter of the pooled estimate
    itself.

    Returns
    -------
    numpy.ndarray (N_ERROR_TERMS,)
        NaN with fewer than 3 groups.
    """
    groups = np.asarray(groups)
    codes = np.unique(groups)
    if codes.size < 3:
        return np.full(N_ERROR_TERMS, np.nan)
    samples = []
    for code in codes:
        samples.append(terms.vector(terms.estimate(mask=(groups != code).astype(float))))
    samples = np.array(samples)
    n = codes.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.sqrt((n - 1) / n * np.nansum((samples - np.nanmean(samples, axis=0)) ** 2, axis=0))
    return np.where(np.all(np.isnan(samples), axis=0), np.nan, spread)


def bin_edges(values, n_bins):
    """Quantile edges of the finite values (last edge nudged up to include the maximum)."""
    values = values[np.isfinite(values)]
    if values.size < 2 * n_bins or np.unique(values).size < n_bins:
        return None  # too few values, or a constant quantity
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def paired_estimate(pairs, selection=None, weights="none", n_boot=200, seed=1, n_bins=4, ring=False, step=STEP,
                    bins=BIN_QUANTITIES, edges=None):
    """The paired estimate of m and c, with bootstrap errors and bins.

    Parameters
    ----------
    pairs : dict
        :func:`join_pairs` output (or pooled over seeds, :func:`concatenate_pairs`).
    selection : Selection, optional
    weights : {"none", "ivar"}
    n_boot : int
        Bootstrap draws over galaxies (over ring pairs if ``ring``).
    ring : bool
        Resample ring pairs whole (truth ``pair_id``) and measure ``c`` on the
        complete ring pairs (:func:`ring_complete`).
    bins : sequence of str
        Quantities of :data:`BIN_QUANTITIES` to bin in (quantiles of the
        selected pairs, or ``edges[name]``).

    Returns
    -------
    dict
        ``m``, ``c``, ``m_err``, ``c_err``, ``m_err_seeds``, ``c_err_seeds``
        (jackknife over the ``seed`` column of pooled tables, NaN without
        it), ``c_all`` (all selected galaxies, with ``c_all_err``,
        ``c_all_err_seeds``), ``e_int_mean`` (with ``e_int_mean_err``;
        NaN without truth shapes), ``n_c`` (galaxies in ``c``), ``R``, ``R_sel``, ``R_sel_pair``
        (with ``R_sel_pair_err``), ``n_pairs`` (joined), ``n_selected``,
        ``n_m``, ``bins`` (name -> list of ``low``, ``high``, ``n``, ``m``,
        ``m_err``, ``c``, ``c_err``), ``selection``, ``weights``.
    """
    selection = selection or Selection()
    rng = np.random.default_rng(seed)
    terms = PairTerms(pairs, selection, pair_weights(pairs, weights), step, ring=ring)
    units = resampling_units(pairs, ring)
    est = terms.estimate()
    spread, _ = bootstrap_errors(terms, n_boot, rng, units)
    seed_jackknife = (group_jackknife_errors(terms, pairs["seed"]) if "seed" in pairs
                      else np.full(N_ERROR_TERMS, np.nan))
    r_sel_pair = []
    for counts in bootstrap_draws(terms.n, max(n_boot // 4, 2), rng, units):
        try:
            r_sel_pair.append(terms.estimate(counts)["R_sel_pair"])
        except ValueError:
            pass
    result = {
        "m": est["m"], "c": est["c"], "m_err": spread[:2], "c_err": spread[2:4],
        "m_err_seeds": seed_jackknife[:2], "c_err_seeds": seed_jackknife[2:4],
        "c_all": est["c_all"], "c_all_err": spread[4:6], "c_all_err_seeds": seed_jackknife[4:6],
        "e_int_mean": est["e_int_mean"], "e_int_mean_err": spread[6:8], "n_c": est["n_c"], "R": est["R"],
        "R_sel": est["R_sel"], "R_sel_pair": est["R_sel_pair"],
        "R_sel_pair_err": np.nanstd(np.array(r_sel_pair), axis=0, ddof=1) if len(r_sel_pair) > 1 else None,
        "n_pairs": int(terms.n), "n_selected": est["n"], "n_m": est["n_m"],
        "selection": selection.describe() + "; both members of each pair",
        "weights": weights, "ring": bool(ring), "bins": {},
    }
    for name in bins:
        quantity = pair_quantity(pairs, name)
        these = (edges or {}).get(name)
        these = bin_edges(quantity[terms.selected], n_bins) if these is None else np.asarray(these, float)
        if these is None:
            continue
        rows = []
        for low, high in zip(these[:-1], these[1:]):
            mask = ((quantity >= low) & (quantity < high)).astype(float)
            try:
                bin_est = terms.estimate(mask=mask)
            except (ValueError, np.linalg.LinAlgError):
                continue
            bin_spread, _ = bootstrap_errors(terms, max(n_boot // 4, 2), rng, units, mask)
            rows.append({"low": float(low), "high": float(high), "n": bin_est["n"], "m": bin_est["m"].tolist(),
                         "m_err": bin_spread[:2].tolist(), "c": bin_est["c"].tolist(),
                         "c_err": bin_spread[2:4].tolist()})
        result["bins"][name] = rows
    return result


def pairs_to_columns(pairs, extra=None) -> dict:
    """Flat columns of a pair table (for a FITS table); ``extra`` adds per-galaxy columns (e.g. the seed)."""
    columns = {"key": pairs["key"], "g_true": pairs["g_true"], "truth_mag": pairs["truth_mag"],
               "ring": pairs["ring"]}
    if "e_int" in pairs:
        columns["e_int"] = pairs["e_int"]
    for side in ("plus", "minus"):
        for name in MEMBER_FIELDS:
            columns[f"{side}_{name}"] = pairs[side][name]
    columns.update(extra or {})
    return columns


def pairs_from_columns(columns) -> dict:
    """Inverse of :func:`pairs_to_columns` (extra columns kept at the top level)."""
    pairs = {name: np.asarray(value) for name, value in columns.items()
             if not name.startswith(("plus_", "minus_"))}
    n = np.asarray(columns["key"]).size
    for side in ("plus", "minus"):
        pairs[side] = {name: (np.asarray(columns[f"{side}_{name}"]) if f"{side}_{name}" in columns
                              else np.full((n, OPTIONAL_FIELDS[name]), np.nan))
                       for name in MEMBER_FIELDS}
    return pairs


def concatenate_pairs(tables) -> dict:
    """Pool pair tables (e.g. over seeds); keys need not be unique any more."""
    tables = list(tables)
    if not tables:
        raise ValidationError("no pair table to pool")
    pooled = {name: np.concatenate([t[name] for t in tables]) for name in tables[0]
              if name not in ("plus", "minus", "e_int") and isinstance(tables[0][name], np.ndarray)}
    if any("e_int" in t for t in tables):  # tables written before the truth shapes were kept: NaN
        pooled["e_int"] = np.concatenate([np.asarray(t["e_int"], float) if "e_int" in t
                                          else np.full((np.asarray(t["key"]).size, 2), np.nan) for t in tables])
    for side in ("plus", "minus"):
        pooled[side] = {name: np.concatenate([t[side][name] for t in tables]) for name in MEMBER_FIELDS}
    return pooled


def write_pairs(path, pairs, extra=None):
    """Write a pair table as a FITS binary table (atomically), HDU ``PAIRS``."""
    from shapepipe_modules.io.tables import write_fits_table

    write_fits_table(Path(path), pairs_to_columns(pairs, extra), extname="PAIRS")
    return Path(path)


def read_pairs(path) -> dict:
    """Read a table written by :func:`write_pairs`."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            data = hdus["PAIRS"].data
            columns = {name: np.array(data[name]) for name in hdus["PAIRS"].columns.names}
    except (OSError, KeyError) as error:
        raise ValidationError(f"cannot read pair table {path}: {error}") from error
    return pairs_from_columns(columns)
