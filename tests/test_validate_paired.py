"""Tests of the paired shear estimator (shapepipe_validate --paired) on synthetic +g/-g tables with known m and c."""

import json

import numpy as np
import pytest

from shapepipe_modules.io.tables import write_fits_table
from shapepipe_modules.validate import cli
from shapepipe_modules.validate.paired import (BRANCH_ORDER, KEY_STRIDE, PairTerms, concatenate_pairs, join_pairs,
                                               member_table, paired_estimate, pairs_from_columns, read_pairs,
                                               write_pairs)
from shapepipe_modules.validate.shear import Selection

M_TRUE = np.array([0.03, -0.02])
C_TRUE = np.array([0.004, -0.003])
R_TRUE = np.array([[0.80, 0.02], [0.01, 0.75]])
STEP = 0.01
DELTAS = np.array([[0.0, 0.0], [STEP, 0.0], [-STEP, 0.0], [0.0, STEP], [0.0, -STEP]])
SHEARS = {"244.252": (0.02, 0.0), "245.252": (0.0, -0.02)}


def synthetic_members(rng, n=8000, snr_tilt=0.0, shared_noise=0.02, own_noise=0.003):
    """Plus and minus member tables of the same galaxies (two tiles, one shear each).

    Each branch measures ``e_int + R_k ((1 + m) g + c + delta) + noise``: the
    per-galaxy response R_k scatters (and depends on |e_int|), the noise has a
    part shared by the two members and a part of their own, and each
    sheared branch a little noise of its own. With ``snr_tilt`` the S/N
    grows with the branch's e1, so an S/N cut depends on the shear.
    """
    members = {"plus": [], "minus": []}
    for tile, shear in SHEARS.items():
        code = int(tile.replace(".", ""))
        e_int = rng.normal(0.0, 0.25, (n, 2))
        r_obj = R_TRUE * (1.0 - 0.5 * np.sum(e_int ** 2, axis=1))[:, None, None] + rng.normal(0.0, 0.08, (n, 2, 2))
        shared = rng.normal(0.0, shared_noise, (n, 2))
        snr0 = rng.uniform(5.0, 60.0, n)
        ids = rng.permutation(50000)[:n] + 1
        for sign, label in ((1.0, "plus"), (-1.0, "minus")):
            g = sign * np.asarray(shear)
            branches = []
            for b, delta in enumerate(DELTAS):
                own = rng.normal(0.0, own_noise if b == 0 else 3e-4, (n, 2))
                applied = (1.0 + M_TRUE) * g + C_TRUE + delta
                branches.append(e_int + np.einsum("nij,j->ni", r_obj, applied) + shared + own)
            e = np.stack(branches, axis=1)
            member = {
                "key": (code // 1000 * 1000 + code % 1000) * KEY_STRIDE + ids,
                "g_true": np.tile(g, (n, 1)), "truth_mag": rng.uniform(20, 25, n),
                "ring": np.full(n, -1, np.int64),
                "g": e, "s2n": snr0[:, None] * (1.0 + snr_tilt * e[:, :, 0]), "T": np.full((n, 5), 0.6),
                "Tpsf": np.full((n, 5), 0.4), "psf_T": np.full(n, 0.4), "mag": 30 - np.log10(snr0),
                "mcal_flags": np.zeros(n, np.int64), "no_shape": np.zeros(n, np.int64),
                "g_err": np.full((n, 2), 0.05), "psf_g": np.zeros((n, 2)), "xy": rng.uniform(0, 1000, (n, 2)),
            }
            members[label].append(member)
    return tuple({name: np.concatenate([m[name] for m in members[label]]) for name in members[label][0]}
                 for label in ("plus", "minus"))


def test_paired_estimator_recovers_m_and_c():
    rng = np.random.default_rng(11)
    plus, minus = synthetic_members(rng)
    pairs = join_pairs(plus, minus)
    assert pairs["key"].size == 16000
    result = paired_estimate(pairs, Selection(snr_min=10.0), n_boot=100, seed=3, n_bins=3)
    # Shared noise and intrinsic shapes cancel in d; the error left comes from the members' own noise
    # (0.003 / sqrt(2)) and the sheared branches' noise in R: ~ 0.0021 / (0.02 * 0.77 * sqrt(6500)) ~ 0.0017.
    assert np.all((result["m_err"] > 0.001) & (result["m_err"] < 0.004))
    assert np.all(np.abs(result["m"] - M_TRUE) < 3 * result["m_err"])
    # c keeps the shape noise: 0.25 / 0.77 / sqrt(13000) ~ 0.003.
    assert np.all((result["c_err"] > 0.002) & (result["c_err"] < 0.005))
    assert np.all(np.abs(result["c"] - C_TRUE) < 3 * result["c_err"])
    np.testing.assert_allclose(np.diag(result["R"]), np.diag(R_TRUE) * (1 - 0.25 ** 2), rtol=0.02)
    assert set(result["bins"]) == {"snr", "mag"}  # constant T/Tpsf and PSF size: no bins
    assert len(result["bins"]["snr"]) == 3
    for row in result["bins"]["snr"]:
        assert np.all(np.abs(np.array(row["m"]) - M_TRUE) < 4 * np.array(row["m_err"]))
    # Per component, only the galaxies with a non-zero applied shear measure m.
    assert np.all(result["n_m"] < result["n_selected"]) and result["n_m"].sum() == result["n_selected"]


def test_shear_dependent_selection_needs_no_selection_response():
    """An S/N that grows with e1 makes the cut shear-dependent: one run alone needs R_sel, the pair does not."""
    rng = np.random.default_rng(12)
    plus, minus = synthetic_members(rng, snr_tilt=4.0)
    pairs = join_pairs(plus, minus)
    result = paired_estimate(pairs, Selection(snr_min=25.0), n_boot=100, seed=4, bins=())
    assert np.all(np.abs(result["m"] - M_TRUE) < 3 * result["m_err"])
    # The single-run selection response (cut on the sheared branches of both members) is large ...
    assert abs(result["R_sel"][0, 0]) > 0.1
    # ... while its paired counterpart is zero within its error.
    assert abs(result["R_sel_pair"][0, 0]) < 3 * result["R_sel_pair_err"][0, 0]
    # The plus run alone, mean shear over its own selection with R only, is biased well beyond the error.
    terms = PairTerms(pairs, Selection(snr_min=25.0))
    alone = Selection(snr_min=25.0)({"g1": plus["g"][:, 0, 0], "g2": plus["g"][:, 0, 1], "s2n": plus["s2n"][:, 0],
                                     "T": plus["T"][:, 0], "Tpsf": plus["Tpsf"][:, 0],
                                     "mcal_flags": plus["mcal_flags"], "no_shape": plus["no_shape"]})
    tile1 = alone & (plus["g_true"][:, 0] != 0)
    m_alone = np.mean(plus["g"][tile1, 0, 0]) / (np.mean(terms.response[tile1, 0, 0]) * 0.02) - 1
    assert m_alone - M_TRUE[0] > 0.5


def test_join_drops_unmatched_and_one_sided_galaxies(tmp_path):
    """Final catalogues and truths: a galaxy missing from one run, or selected in one run only, is left out."""
    rng = np.random.default_rng(13)
    n = 300
    truth_ra = 244.0 + rng.uniform(0, 0.1, n)
    truth_dec = 52.0 + rng.uniform(0, 0.1, n)
    is_star = np.arange(n) >= 280
    ids = np.arange(1, n + 1) * 7

    def run(sign, drop, flagged):
        truth = {"ra": truth_ra, "dec": truth_dec, "is_star": is_star, "id": ids,
                 "g1": np.where(is_star, 0.0, 0.02 * sign), "g2": np.zeros(n), "mag": np.full(n, 22.0)}
        keep = np.setdiff1d(np.arange(n), drop)
        rows = rng.permutation(keep)  # the detection order differs between runs
        cat = {"XWIN_WORLD": truth_ra[rows] + 1e-5, "YWIN_WORLD": truth_dec[rows],
               "NGMIX_MCAL_FLAGS": np.isin(rows, flagged).astype(np.int32) * 16,
               "NGMIX_NO_SHAPE": np.zeros(rows.size, np.int16),
               "XWIN_IMAGE": 10.0 * rows, "YWIN_IMAGE": 5.0 * rows,
               "NGMIX_ELL_PSFo_NOSHEAR": np.column_stack([1e-3 * rows, -1e-3 * rows])}
        for key in ("NOSHEAR", "1P", "1M", "2P", "2M"):
            delta = {"1P": STEP, "1M": -STEP}.get(key, 0.0)
            delta2 = {"2P": STEP, "2M": -STEP}.get(key, 0.0)
            cat[f"NGMIX_ELL_{key}"] = np.column_stack([0.8 * (0.02 * sign + delta) + 0.01 * (rows % 5),
                                                       np.full(rows.size, 0.7 * delta2)])
            cat[f"NGMIX_SNR_{key}"] = np.full(rows.size, 30.0)
            cat[f"NGMIX_T_{key}"] = np.full(rows.size, 0.6)
            cat[f"NGMIX_Tpsf_{key}"] = np.full(rows.size, 0.4)
        cat["NGMIX_ELL_1P"][np.isin(rows, flagged)] = np.nan  # failed fits: no shape, out of every sum
        return cat, truth

    cat_p, truth_p = run(+1, drop=[3, 4], flagged=[10])
    cat_m, truth_m = run(-1, drop=[5], flagged=[11, 12])
    plus = member_table([("final_cat-244-252.fits", cat_p)], [truth_p])
    minus = member_table([("final_cat-244-252.fits", cat_m)], [truth_m])
    assert plus["key"].size == 278 and minus["key"].size == 279  # stars left out
    pairs = join_pairs(plus, minus)
    assert pairs["key"].size == 277
    np.testing.assert_array_equal(np.sort(pairs["key"] % KEY_STRIDE), np.setdiff1d(ids[:280], ids[[3, 4, 5]]))
    terms = PairTerms(pairs, Selection(snr_min=10.0))
    assert terms.selected.sum() == 274
    dropped = np.setdiff1d(ids[:280], pairs["key"][terms.selected] % KEY_STRIDE)
    np.testing.assert_array_equal(dropped, ids[[3, 4, 5, 10, 11, 12]])
    # Each member's row is the same galaxy: the difference is exactly the applied shear's.
    est = terms.estimate()
    assert est["m"][0] == pytest.approx(0.0, abs=1e-12)
    # Pair tables round-trip through FITS and pool over seeds.
    path = write_pairs(tmp_path / "pairs.fits", pairs, extra={"seed": np.full(pairs["key"].size, 5)})
    again = read_pairs(path)
    np.testing.assert_array_equal(again["plus"]["g"], pairs["plus"]["g"])
    # Diagnostic fields follow their galaxy: truth row r was catalogue row r in both runs' columns.
    truth_row = np.searchsorted(ids, pairs["key"] % KEY_STRIDE)
    for side in ("plus", "minus"):
        np.testing.assert_allclose(again[side]["xy"], np.column_stack([10.0 * truth_row, 5.0 * truth_row]))
        np.testing.assert_allclose(again[side]["psf_g"], np.column_stack([1e-3 * truth_row, -1e-3 * truth_row]))
    # A table written before these fields existed reads with NaN in their place.
    from astropy.io import fits
    with fits.open(path) as hdul:
        old_columns = {name: hdul[1].data[name] for name in hdul[1].columns.names
                       if not name.endswith(("_psf_g", "_xy"))}
    old = pairs_from_columns(old_columns)
    assert old["plus"]["psf_g"].shape == (277, 2) and np.isnan(old["minus"]["xy"]).all()
    pooled = concatenate_pairs([again, again])
    assert pooled["key"].size == 2 * 277 and pooled["minus"]["g"].shape == (554, len(BRANCH_ORDER), 2)
    # Runs that are not a sign flip are refused; two runs at the same shear are named as a rotation pair.
    with pytest.raises(ValueError, match="not a sign-flipped pair.*a rotation pair"):
        join_pairs(plus, member_table([("final_cat-244-252.fits", cat_p)], [truth_p]))


def test_paired_command(tmp_path, capsys):
    rng = np.random.default_rng(14)
    plus, minus = synthetic_members(rng, n=1500)
    for label, member in (("plus", plus), ("minus", minus)):
        for tile in SHEARS:
            xxx, yyy = tile.split(".")
            code = int(xxx) * 1000 + int(yyy)
            rows = np.flatnonzero(member["key"] // KEY_STRIDE == code)
            ra = 244.0 + (member["key"][rows] % KEY_STRIDE) * 1e-4
            cat = {"XWIN_WORLD": ra, "YWIN_WORLD": np.full(rows.size, 52.0),
                   "NGMIX_MCAL_FLAGS": member["mcal_flags"][rows], "NGMIX_NO_SHAPE": member["no_shape"][rows]}
            for b, key in enumerate(("NOSHEAR", "1P", "1M", "2P", "2M")):
                cat[f"NGMIX_ELL_{key}"] = member["g"][rows, b]
                cat[f"NGMIX_SNR_{key}"] = member["s2n"][rows, b]
                cat[f"NGMIX_T_{key}"] = member["T"][rows, b]
                cat[f"NGMIX_Tpsf_{key}"] = member["Tpsf"][rows, b]
            write_fits_table(tmp_path / label / "cats" / f"final_cat-{xxx}-{yyy}.fits", cat, extname="RESULTS")
            truth = {"id": member["key"][rows] % KEY_STRIDE, "ra": ra, "dec": np.full(rows.size, 52.0),
                     "is_star": np.zeros(rows.size, bool), "g1": member["g_true"][rows, 0],
                     "g2": member["g_true"][rows, 1], "mag": member["truth_mag"][rows]}
            write_fits_table(tmp_path / label / "sim" / "truth" / f"truth_tile-{xxx}-{yyy}.fits", truth,
                             extname="TRUTH")
    out = tmp_path / "val"
    status = cli.main(["--paired", str(tmp_path / "plus" / "cats"), str(tmp_path / "minus" / "cats"),
                       "-t", str(tmp_path / "plus" / "sim"), str(tmp_path / "minus" / "sim"), "-o", str(out),
                       "--n-boot", "30", "--n-bins", "2"])
    assert status == 0, capsys.readouterr().err
    report = json.loads((out / "validation_paired.json").read_text())
    assert report["n_pairs"] == 3000
    assert np.all(np.abs(np.array(report["m"]) - M_TRUE) < 4 * np.array(report["m_err"]))
    assert (out / "m_bins_paired.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "paired" in printed and "m1 = " in printed
    # Swapped truths: the shears of the runs are not opposite to their truth pairing -> refused, exit 1.
    status = cli.main(["--paired", str(tmp_path / "plus" / "cats"), str(tmp_path / "minus" / "cats"),
                       "-t", str(tmp_path / "plus" / "sim"), str(tmp_path / "plus" / "sim"), "-o", str(out)])
    assert status == 1 and "sign-flipped" in capsys.readouterr().err


def test_ring_units_are_per_seed():
    from shapepipe_modules.validate.paired import resampling_units

    pairs = {"ring": np.array([5, 5, -1, 7, 5, 5]), "seed": np.array([1, 1, 1, 1, 2, 2])}
    units = resampling_units(pairs, ring=True)
    assert units[0] == units[1] and units[4] == units[5] and units[0] != units[4]
    assert len(set(units.tolist())) == 4
    assert resampling_units(pairs, ring=False) is None


def test_seed_jackknife_sees_what_a_seed_shares():
    """A c offset common to all galaxies of a seed: the galaxy bootstrap misses it, the seed jackknife does not.

    Independent check: with one offset per seed of rms ``s`` and many galaxies
    per seed, the pooled c scatters by about ``s / sqrt(n_seeds)``.
    """
    from shapepipe_modules.validate.paired import group_jackknife_errors

    rng = np.random.default_rng(21)
    plus, minus = synthetic_members(rng, n=3000, shared_noise=0.0, own_noise=0.003)
    pairs = join_pairs(plus, minus)
    n = pairs["key"].size
    n_seeds = 12
    seed = rng.integers(0, n_seeds, n)
    offsets = rng.normal(0.0, 0.05, n_seeds)
    for side in ("plus", "minus"):
        pairs[side]["g"] = pairs[side]["g"] + offsets[seed][:, None, None] * np.array([1.0, 0.0])
    pairs["seed"] = seed
    terms = PairTerms(pairs, Selection(snr_min=0.0, size_ratio_min=0.0))
    jack = group_jackknife_errors(terms, seed)
    result = paired_estimate(pairs, Selection(snr_min=0.0, size_ratio_min=0.0), n_boot=30, bins=())
    np.testing.assert_allclose(result["c_err_seeds"], jack[2:4])
    # Seed offsets plus the galaxies' own scatter (shape noise: no ring here), which the bootstrap measures.
    per_seed = offsets.std(ddof=1) / np.sqrt(n_seeds) / terms.estimate()["R"][0, 0]
    assert jack[2] == pytest.approx(np.hypot(per_seed, result["c_err"][0]), rel=0.35)
    assert result["c_err"][0] < 0.5 * jack[2]
    assert jack[3] == pytest.approx(result["c_err"][1], rel=0.5)  # no offset on c2


def ring_members(rng, n_pairs=6000, drop_x_elongated=0.0, noise=0.01):
    """Plus and minus member tables of ring pairs (partners' intrinsic shapes opposite), one tile.

    Each galaxy measures ``R e_int + R ((1 + m) g + c) + noise``. With
    ``drop_x_elongated`` that fraction of the galaxies with ``e1_int > 0``
    get S/N 5 (below the cut): a selection that depends on orientation.
    """
    n = 2 * n_pairs
    half = rng.normal(0.0, 0.25, (n_pairs, 2))
    e_int = np.concatenate([half, -half])
    ring = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)]) + 1
    code = 244252
    ids = np.arange(1, n + 1)
    snr = rng.uniform(12.0, 60.0, n)
    lost = (e_int[:, 0] > 0) & (rng.uniform(size=n) < drop_x_elongated)
    snr[lost] = 5.0
    shared = rng.normal(0.0, noise, (n, 2))
    members = []
    for sign in (1.0, -1.0):
        g = sign * np.array([0.02, 0.0])
        branches = [np.einsum("ij,nj->ni", R_TRUE, e_int + (1.0 + M_TRUE) * g + C_TRUE + delta) + shared
                    for delta in DELTAS]
        members.append({
            "key": (code // 1000 * 1000 + code % 1000) * KEY_STRIDE + ids, "g_true": np.tile(g, (n, 1)),
            "truth_mag": np.full(n, 22.0), "ring": (code // 1000 * 1000 + code % 1000) * KEY_STRIDE + ring,
            "e_int": e_int, "g": np.stack(branches, axis=1), "s2n": np.repeat(snr[:, None], 5, axis=1),
            "T": np.full((n, 5), 0.6), "Tpsf": np.full((n, 5), 0.4), "psf_T": np.full(n, 0.4),
            "mag": np.full(n, 22.0), "mcal_flags": np.zeros(n, np.int64), "no_shape": np.zeros(n, np.int64),
            "g_err": np.full((n, 2), 0.05), "psf_g": np.zeros((n, 2)), "xy": rng.uniform(0, 1000, (n, 2)),
        })
    return members


def test_ring_c_uses_complete_ring_pairs_and_e_int_shows_selection():
    """c over complete ring pairs cancels shape noise; e_int_mean measures an orientation-dependent selection."""
    from shapepipe_modules.validate.paired import ring_complete

    rng = np.random.default_rng(5)
    plus, minus = ring_members(rng, drop_x_elongated=0.0)
    pairs = join_pairs(plus, minus)
    assert np.array_equal(pairs["e_int"], plus["e_int"])
    result = paired_estimate(pairs, Selection(snr_min=10.0), n_boot=60, seed=2, bins=(), ring=True)
    # No galaxy lost: every galaxy is in a complete pair, c = c_all, and the shapes cancel exactly.
    assert result["n_c"] == result["n_selected"] == pairs["key"].size
    np.testing.assert_allclose(result["c"], result["c_all"])
    np.testing.assert_allclose(result["c"], C_TRUE, atol=5e-4)
    np.testing.assert_allclose(result["e_int_mean"], 0.0, atol=1e-12)

    # A fifth of the x-elongated galaxies lost: their partners (e1_int < 0) stay without them.
    plus, minus = ring_members(rng, drop_x_elongated=0.2)
    pairs = join_pairs(plus, minus)
    result = paired_estimate(pairs, Selection(snr_min=10.0), n_boot=60, seed=2, bins=(), ring=True)
    selected = pairs["plus"]["s2n"][:, 0] > 10.0
    complete = ring_complete(pairs, selected)
    ring_key = pairs["ring"]
    # Independent count: a galaxy is complete when both galaxies of its ring key are selected.
    n_selected_in_ring = {k: int(np.sum(selected & (ring_key == k))) for k in np.unique(ring_key[:50])}
    for i in range(50):
        assert complete[i] == (selected[i] and n_selected_in_ring[ring_key[i]] == 2)
    assert result["n_c"] == int(complete.sum()) < result["n_selected"]
    # The complete pairs still give c; all selected galaxies carry the lost partners' shapes.
    assert np.all(np.abs(result["c"] - C_TRUE) < 3 * result["c_err"] + 1e-4)
    assert result["c_all"][0] - C_TRUE[0] < -5 * result["c_all_err"][0]
    # What the selection left of the intrinsic shapes, against a direct mean.
    np.testing.assert_allclose(result["e_int_mean"], pairs["e_int"][selected].mean(axis=0), rtol=1e-10)
    assert result["e_int_mean"][0] < -5 * result["e_int_mean_err"][0]
    assert abs(result["e_int_mean"][1]) < 4 * result["e_int_mean_err"][1]


def test_pair_tables_keep_e_int_and_pool_with_old_tables(tmp_path):
    rng = np.random.default_rng(8)
    plus, minus = ring_members(rng, n_pairs=50)
    pairs = join_pairs(plus, minus)
    write_pairs(tmp_path / "new.fits", pairs)
    back = read_pairs(tmp_path / "new.fits")
    np.testing.assert_array_equal(back["e_int"], pairs["e_int"])
    old = {k: v for k, v in back.items() if k != "e_int"}  # a table written before e_int existed
    pooled = concatenate_pairs([back, old])
    assert pooled["e_int"].shape == (200, 2)
    assert np.all(np.isnan(pooled["e_int"][100:])) and np.all(np.isfinite(pooled["e_int"][:100]))
    result = paired_estimate(pooled, Selection(snr_min=10.0), n_boot=10, bins=(), ring=True)
    assert np.all(np.isnan(result["e_int_mean"]))  # not every selected galaxy has its truth shape
