"""Tests of the shear validation (shapepipe_validate) on catalogues with a known m and c."""

import json

import numpy as np
import pytest

from shapepipe_modules.io.tables import write_fits_table
from shapepipe_modules.validate import cli
from shapepipe_modules.validate.shear import (PairSelection, Selection, fit_m_c, match_positions, pair_keys,
                                              validate_catalogues)

SHEARS = [(0.04, 0.0), (0.0, -0.04), (-0.03, 0.025)]
M_TRUE = np.array([0.05, -0.03])
C_TRUE = np.array([0.002, -0.001])
R_TRUE = np.array([[0.8, 0.02], [0.01, 0.75]])
STEP = 0.01


def synthetic_tile(rng, shear, n_pairs=2000, snr_tilt=0.0, n_stars=50, n_spurious=30, e_sigma=0.05):
    """Final-catalogue columns and truth of one tile with the injected m and c.

    Galaxies come in pairs of opposite intrinsic ellipticity; each branch
    measures ``e + R ((1 + m) g + c + delta_K)``. With ``snr_tilt`` the S/N
    depends on the branch's |g|^2, so an S/N cut causes a (multiplicative) selection bias.
    """
    e = rng.normal(0.0, e_sigma, (n_pairs, 2))
    e = np.concatenate([e, -e])
    n = e.shape[0]
    r_obj = R_TRUE + rng.normal(0.0, 0.05, (n, 2, 2))
    applied = (1.0 + M_TRUE) * np.asarray(shear) + C_TRUE
    noise = rng.normal(0.0, 0.002, (n, 2))
    snr_base = rng.uniform(5.0, 40.0, n)
    deltas = {"NOSHEAR": (0.0, 0.0), "1P": (STEP, 0.0), "1M": (-STEP, 0.0), "2P": (0.0, STEP), "2M": (0.0, -STEP)}
    columns = {}
    for key, delta in deltas.items():
        g = e + np.einsum("nij,j->ni", r_obj, applied + np.asarray(delta)) + noise
        columns[f"NGMIX_ELL_{key}"] = g
        columns[f"NGMIX_SNR_{key}"] = snr_base * (1.0 + snr_tilt * np.sum(g ** 2, axis=1))
        columns[f"NGMIX_T_{key}"] = np.full(n, 0.6)
        columns[f"NGMIX_Tpsf_{key}"] = np.full(n, 0.4)
    columns["NGMIX_MCAL_FLAGS"] = np.zeros(n, np.int32)
    columns["NGMIX_NO_SHAPE"] = np.zeros(n, np.int16)
    # Truth: the galaxies, plus stars (detected, with a shape) and spurious detections.
    ra = 244.0 + rng.uniform(0, 0.2, n + n_stars)
    dec = 52.0 + rng.uniform(0, 0.2, n + n_stars)
    truth = {"ra": ra, "dec": dec, "is_star": np.arange(n + n_stars) >= n,
             "g1": np.where(np.arange(n + n_stars) < n, shear[0], 0.0),
             "g2": np.where(np.arange(n + n_stars) < n, shear[1], 0.0),
             "pair_id": np.concatenate([np.tile(np.arange(1, n_pairs + 1), 2), np.zeros(n_stars, int)])}
    star_cols = {name: np.concatenate([v, np.full((n_stars,) + v.shape[1:], 0.3, v.dtype)]) for name, v in
                 columns.items()}
    star_cols["NGMIX_MCAL_FLAGS"][n:] = 0
    star_cols["NGMIX_NO_SHAPE"][n:] = 0
    for key in deltas:
        star_cols[f"NGMIX_SNR_{key}"][n:] = 50.0
        star_cols[f"NGMIX_T_{key}"][n:] = 0.6
        star_cols[f"NGMIX_Tpsf_{key}"][n:] = 0.4
    det_ra = ra + rng.normal(0, 0.1 / 3600, ra.size)
    det_dec = dec + rng.normal(0, 0.1 / 3600, dec.size)
    spurious = {name: v[:n_spurious].copy() for name, v in star_cols.items()}
    cat = {name: np.concatenate([star_cols[name], spurious[name]]) for name in star_cols}
    cat["XWIN_WORLD"] = np.concatenate([det_ra, 250.0 + rng.uniform(0, 0.1, n_spurious)])
    cat["YWIN_WORLD"] = np.concatenate([det_dec, 52.0 + rng.uniform(0, 0.1, n_spurious)])
    order = rng.permutation(cat["XWIN_WORLD"].size)
    return {name: v[order] for name, v in cat.items()}, truth


def test_fit_m_c_and_matching():
    g_true = np.array([[0.02, 0.0], [0.0, -0.02], [-0.01, 0.01]])
    m, c = fit_m_c(g_true, 1.1 * g_true + [0.001, -0.002])
    np.testing.assert_allclose(m, [0.1, 0.1], atol=1e-12)
    np.testing.assert_allclose(c, [0.001, -0.002], atol=1e-12)
    m, c = fit_m_c([[0.02, 0.0]], [[0.021, 0.0005]])  # one tile: m1 with c1 = 0, c2 with m2 unknown
    assert m[0] == pytest.approx(0.05) and np.isnan(c[0]) and np.isnan(m[1]) and c[1] == pytest.approx(0.0005)
    ra = np.array([10.0, 10.0 + 0.2 / 3600, 10.01, 11.0])
    dec = np.array([0.0, 0.0, 0.0, 0.0])
    index = match_positions(ra, dec, np.array([10.0, 10.01]), np.array([0.0, 0.0 + 0.5 / 3600]), 1.0)
    np.testing.assert_array_equal(index, [0, -1, 1, -1])  # the nearer detection keeps truth 0


def test_injected_m_and_c_are_recovered():
    rng = np.random.default_rng(4)
    tiles = [synthetic_tile(rng, shear) for shear in SHEARS]
    result = validate_catalogues([(f"t{i}", cat) for i, (cat, _) in enumerate(tiles)], [t for _, t in tiles],
                                 Selection(snr_min=0.0, size_ratio_min=0.5), n_boot=60, seed=2, n_bins=3)
    np.testing.assert_allclose(result["R"], R_TRUE, atol=0.01)
    # The pairs cancel shape noise in the estimate, not in the bootstrap
    # (which breaks them): expected m errors ~ 0.05 / sqrt(4000) / 0.04 = 0.02.
    assert np.all(np.abs(result["m"] - M_TRUE) < 3e-3) and np.all(np.abs(result["c"] - C_TRUE) < 1e-4)
    assert np.all((result["m_err"] > 0.008) & (result["m_err"] < 0.05))
    assert np.all((result["c_err"] > 2e-4) & (result["c_err"] < 2e-3))
    # Stars and spurious detections left out (a few close pairs swap or lose their match).
    assert 3 * 4000 - 20 <= result["n_used"] <= 3 * 4000
    assert len(result["bins"]["snr"]) == 3


def test_selection_response_corrects_a_selection_bias():
    rng = np.random.default_rng(5)
    tiles = [synthetic_tile(rng, shear, snr_tilt=100.0) for shear in SHEARS]
    catalogues = [(f"t{i}", cat) for i, (cat, _) in enumerate(tiles)]
    truths = [t for _, t in tiles]
    result = validate_catalogues(catalogues, truths, Selection(snr_min=15.0), n_boot=60, seed=2, n_bins=2)
    assert result["R_sel"][0, 0] > 0.04
    assert np.all(np.abs(result["m"] - M_TRUE) < 3 * result["m_err"])
    assert np.all(np.abs(result["c"] - C_TRUE) < 4 * result["c_err"])
    # Ignoring the selection response biases m1 well beyond its error.
    g_biased = result["g_est"] @ (result["R"] + result["R_sel"]).T @ np.linalg.inv(result["R"]).T
    m_biased, _ = fit_m_c(result["g_true"], g_biased)
    assert m_biased[0] - M_TRUE[0] > 3 * result["m_err"][0]


def test_command_writes_report_and_figures(tmp_path, capsys):
    rng = np.random.default_rng(6)
    cats = tmp_path / "cats"
    truth_dir = tmp_path / "sim" / "truth"
    truth_dir.mkdir(parents=True)
    for shear, tile in zip(SHEARS[:2], ("244-252", "245-252")):
        cat, truth = synthetic_tile(rng, shear, n_pairs=500)
        write_fits_table(cats / f"final_cat-{tile}.fits", cat, extname="RESULTS")
        write_fits_table(truth_dir / f"truth_tile-{tile}.fits", truth, extname="TRUTH")
    out = tmp_path / "val"
    status = cli.main(["-i", str(cats), "-t", str(tmp_path / "sim"), "-o", str(out), "--n-boot", "20",
                       "--snr-min", "0", "--n-bins", "2"])
    assert status == 0
    report = json.loads((out / "validation.json").read_text())
    assert len(report["m"]) == 2 and report["tiles"] == ["final_cat-244-252.fits", "final_cat-245-252.fits"]
    for name in ("response.png", "g_vs_truth.png", "m_c_bins.png"):
        assert (out / name).stat().st_size > 1000
    assert "m1 = " in capsys.readouterr().out
    # A tile without truth fails with the file named.
    write_fits_table(cats / "final_cat-246-252.fits", cat, extname="RESULTS")
    assert cli.main(["-i", str(cats), "-t", str(truth_dir), "-o", str(out), "--no-plots"]) == 1
    assert "truth_tile-246-252.fits" in capsys.readouterr().err


def test_pair_keys_and_pair_selection():
    # Truth rows: pairs 7 (rows 0, 3), 9 (rows 1, 4), 5 (row 2 only in the tile), a star (row 5).
    pair_id = np.array([7, 9, 5, 7, 9, 0])
    kept = np.array([3, 0, 1, 2])  # pair 9 lost its second galaxy (row 4 not detected)
    pair, member = pair_keys(pair_id, kept, tile_number=2)
    np.testing.assert_array_equal(pair, [2 * 2**32 + 7, 2 * 2**32 + 7, -1, -1])
    np.testing.assert_array_equal(member, [1, 0, 0, 0])
    table = {"pair": np.array([27, 27, 28, 28, 29, -1]), "member": np.array([0, 1, 0, 1, 0, 0]),
             "ok": np.array([True, True, True, False, True, True])}
    select = PairSelection(lambda t: t["ok"])
    np.testing.assert_array_equal(select(table), [True, True, False, False, False, False])


def test_ring_pairs_cancel_shape_noise():
    """Large intrinsic shapes and an S/N cut breaking pairs: the ring selection recovers m with a small error."""
    rng = np.random.default_rng(7)
    tiles = [synthetic_tile(rng, shear, n_pairs=1500, e_sigma=0.3, n_spurious=0) for shear in SHEARS]
    catalogues = [(f"t{i}", cat) for i, (cat, _) in enumerate(tiles)]
    truths = [t for _, t in tiles]
    selection = Selection(snr_min=15.0)
    plain = validate_catalogues(catalogues, truths, selection, n_boot=40, seed=3, n_bins=2)
    ring = validate_catalogues(catalogues, truths, selection, n_boot=40, seed=3, n_bins=2, ring=True)
    # Both galaxies of a pair pass S/N > 15 with probability (25/35)^2 = 0.51.
    assert np.all(np.abs(ring["n_selected"] / 3000 - 0.51) < 0.04)
    assert np.all(ring["n_selected"] % 2 == 0) and np.all(ring["n_selected"] < plain["n_selected"])
    # Shape noise of the broken pairs: sigma_m ~ 0.3 sqrt(0.2 * 3000) / 2100 / 0.8 / 0.04 ~ 0.1 in the
    # plain estimate; the ring's is left with the measurement noise and the response scatter.
    assert np.all(plain["m_err"] > 0.05)
    assert np.all(ring["m_err"] < plain["m_err"] / 4)
    assert np.all(np.abs(ring["m"] - M_TRUE) < 3 * ring["m_err"] + 1e-3)
    assert "ring pairs" in ring["selection"] and ring["ring"]
    # Without pair ids the ring test is refused, naming the tile.
    with pytest.raises(ValueError, match="t0: ring test asked"):
        validate_catalogues(catalogues[:1], [{k: v for k, v in truths[0].items() if k != "pair_id"}], selection,
                            n_boot=2, ring=True)
