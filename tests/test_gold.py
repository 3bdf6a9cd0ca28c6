"""The GOLD run (shapepipe_gold) on the simulated ``tiny`` survey, against the truth.

The fast tests run the exposure side of the chain (get_images ...
psf_validation) once on ``tiny``; the whole chain (tiles, ngmix, final
catalogues, shear validation) is the slow test.
"""

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe_modules.gold import chain
from shapepipe_modules.gold.cli import SimulationMismatch, ensure_simulation, main, simulation_mismatch
from shapepipe_modules.gold.truth_checks import LOSS_REASONS, _loss_reasons, classify, match_positions

simulate = pytest.importorskip("shapepipe_modules.simulate")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sim = tmp_path_factory.mktemp("gold_sim")
    # No star brighter than 17: the halo masks of such stars cover most of
    # tiny's small, crowded CCDs and leave too few PSF stars (demo has room).
    simulate.simulate(preset="tiny", output_dir=sim, seed=1, n_workers=2, star_mag_range=[17.0, 24.0])
    return sim


@pytest.fixture(scope="module")
def exposure_chain(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("gold_run")
    status = main(["--preset", "tiny", "--set", "star_mag_range=[17, 24]", "--data", str(tiny), "--run-root", str(root),
                   "--to", "MsPl"])
    summary = json.loads((root / "output" / "gold_summary.json").read_text())
    return root, status, summary


def test_exposure_chain_runs_every_job(exposure_chain, tiny):
    root, status, summary = exposure_chain
    assert status == 0
    rows = {row["module_run"]: row for row in summary["modules"]}
    expected = {"get_images_run_1": 1, "find_exposures": 1, "get_images_run_2": 1, "uncompress_fits": 1,
                "split_exp": 2, "merge_headers": 1, "mask_run_1": 1, "mask_run_2": 4, "sextractor_run_1": 1,
                "sextractor_run_2": 4, "setools": 4, "psfex": 4, "psfinterp": 4, "merge_starcat": 1,
                "psf_validation": 1}
    assert {name: rows[name]["jobs"] for name in expected} == expected
    assert all(rows[name]["done"] == rows[name]["jobs"] for name in expected)
    assert all(rows[name]["cpu_s"] > 0 for name in ("sextractor_run_2", "psfex"))
    text = (root / "output" / "gold_summary.txt").read_text()
    assert "dominant stage:" in text and "PSF residuals" in text


def test_star_selection_is_pure_and_complete(exposure_chain):
    """The GOLD setools selection against the exposure truth (18 < mag < 22)."""
    stars = exposure_chain[2]["star_selection"]
    assert stars["n_selected"] > 100
    assert stars["purity"] >= 0.99
    # tiny is crowded (40 stars per arcmin^2) and its CCDs are small, so many
    # stars are flagged (border, neighbours); over unflagged stars:
    assert stars["completeness_unflagged"] >= 0.7


def test_star_losses_account_for_every_missed_star(exposure_chain):
    """The loss breakdown of the summary covers exactly the true stars the selection missed."""
    stars = exposure_chain[2]["star_selection"]
    assert set(stars["losses"]) == set(LOSS_REASONS)
    assert sum(stars["losses"].values()) == stars["n_true_stars"] - stars["n_true_stars_found"]
    # A star whose centre pixel is flagged is either undetected or centre_masked (IMAFLAGS_ISO includes it).
    assert stars["losses"]["centre_masked"] <= stars["n_true_stars"] - stars["n_true_stars_unflagged"]


def test_loss_reasons_take_the_first_failed_cut():
    """One detection per case, each failing one cut (and the later ones), against the reason given."""
    catalogue = Table({"XWIN_IMAGE": [10.0, 30.0, 40.0, 50.0, 60.0, 70.0],
                       "YWIN_IMAGE": [10.0, 30.0, 40.0, 50.0, 60.0, 70.0],
                       "IMAFLAGS_ISO": [0, 4, 4, 0, 0, 0], "FLAGS": [0, 2, 0, 2, 0, 0],
                       "MAG_AUTO": [20.0, 23.0, 20.0, 23.0, 22.5, 21.0]})
    x = np.array([10.5, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    centre_flag = np.array([False, True, True, False, False, False, False])
    reasons = _loss_reasons(x, x, centre_flag, catalogue, 1.5, (18.0, 22.0), ("XWIN_IMAGE", "YWIN_IMAGE"))
    assert list(reasons) == ["size", "not_detected", "centre_masked", "isophote_masked", "flags", "magnitude",
                             "size"]


def test_star_selection_count_is_independent(exposure_chain, tiny):
    """Recount the selected true stars of one CCD directly from the files."""
    root = exposure_chain[0]
    run = chain.newest_run(root / "output", "run_sp_tile_Sx_exp_SxSePsf")
    selection = fits.getdata(chain.module_output(run, "setools") / "mask" / "star_selection-2100001-0.fits", 2)
    truth = Table.read(tiny / "truth" / "truth_exp-2100001.fits")
    truth = truth[truth["ccd"] == 0]
    distance = np.hypot(selection["XWIN_IMAGE"][:, None] - np.asarray(truth["x"])[None, :],
                        selection["YWIN_IMAGE"][:, None] - np.asarray(truth["y"])[None, :])
    nearest = distance.argmin(axis=1)
    assert np.all(distance[np.arange(len(selection)), nearest] < 1.5)
    assert np.all(truth["is_star"][nearest])
    np.testing.assert_array_equal(match_positions(selection["XWIN_IMAGE"], selection["YWIN_IMAGE"],
                                                  truth["x"], truth["y"], 1.5), nearest)


def test_psf_model_matches_the_true_psf(exposure_chain, tiny):
    """psfinterp VALIDATION: the model's HSM shape at the reserved stars follows the simulator's PSF."""
    from shapepipe_modules.simulate import TruePSF

    root, _, summary = exposure_chain
    psf = summary["psf"]
    assert psf["focal_plane_layout"] == "wcs"  # the CCD sizes travel in the header store
    assert abs(psf["e1_residual"]["mean"]) < 0.005 and abs(psf["e2_residual"]["mean"]) < 0.005
    run = chain.newest_run(root / "output", "run_sp_MsPl")
    stars = fits.getdata(chain.module_output(run, "merge_starcat") / "full_starcat-0000000.fits", 2)
    good = (stars["FLAG_PSF_HSM"] == 0) & (stars["PSF_FLAG"] == 0)
    assert good.sum() > 20
    true = TruePSF(tiny)
    rows = stars[good]
    e1_true = np.empty(len(rows))
    e2_true = np.empty(len(rows))
    for exposure in np.unique(rows["EXP_NAME"]):
        mine = rows["EXP_NAME"] == exposure
        _, e1_true[mine], e2_true[mine] = true.shape(int(exposure), rows["CCD_NB"][mine], rows["X"][mine],
                                                     rows["Y"][mine])
    # HSM's adaptive-moment distortion of the model against the true PSF's.
    assert np.median(np.abs(rows["E1_PSF_HSM"] - e1_true)) < 0.01
    assert np.median(np.abs(rows["E2_PSF_HSM"] - e2_true)) < 0.01
    assert np.corrcoef(rows["E1_PSF_HSM"], e1_true)[0, 1] > 0.5


def test_failed_stage_stops_the_chain(tiny, tmp_path, capsys):
    """A missing exposure fails get_images; the driver stops there and names the job and the file."""
    sim = tmp_path / "sim"
    shutil.copytree(tiny, sim)
    (sim / "exposures" / "2100002p.flag.fits.fz").unlink()
    root = tmp_path / "run"
    status = main(["--preset", "tiny", "--set", "star_mag_range=[17,24]", "--data", str(sim), "--run-root", str(root)])
    assert status == 1
    error = capsys.readouterr().err
    assert "config_GitFeGie.ini failed" in error
    assert "get_images_run_2" in error and "2100002p.flag.fits.fz" in error
    names = {p.name.rsplit("_", 2)[0] for p in (root / "output").iterdir() if p.is_dir()}
    assert names == {"run_sp_GitFeGie"}


def test_paired_cluster_simulation_matches_what_it_recorded(tmp_path, monkeypatch):
    """The - member of a paired cluster records nfw_sign = -1: the reuse check wants the same, not a new simulation."""
    import json

    from conftest import record_only_simulate
    from shapepipe_modules.simulate import core

    monkeypatch.setattr(core, "_simulate", record_only_simulate)
    plus, minus = core.simulate_paired("cluster", tmp_path / "pair", seed=2)
    assert json.loads((minus / "simulation.json").read_text())["parameters"]["nfw_sign"] == -1
    assert simulation_mismatch(plus, "cluster", 2) is None
    assert simulation_mismatch(minus, "cluster", 2, negate_shear=True) is None
    assert "nfw_sign 1 (wanted -1)" in simulation_mismatch(plus, "cluster", 2, negate_shear=True)


def test_simulation_is_reused_only_when_it_matches(tiny, tmp_path, capsys):
    """simulation.json decides: same preset, seed and resolved parameters reused; a named folder that differs is refused."""
    stars = {"star_mag_range": [17.0, 24.0]}
    assert simulation_mismatch(tiny, "tiny", 1, stars) is None
    assert simulation_mismatch(tiny, "tiny", 1, {**stars, "ring": True}) == "ring False (wanted True)"
    # Any parameter counts, not only preset, seed and ring: the override the fixture used, a shear.
    assert simulation_mismatch(tiny, "tiny", 1) == "star_mag_range [17.0, 24.0] (wanted [14.0, 24.0])"
    assert simulation_mismatch(tiny, "tiny", 1, {**stars, "shear": [[-0.02, 0.0]]}) == \
        "shear [[0.02, 0.0]] (wanted [[-0.02, 0.0]])"
    assert simulation_mismatch(tiny, "tiny", 1, stars, negate_shear=True) == "shear [[0.02, 0.0]] (wanted [[-0.02, 0.0]])"
    assert simulation_mismatch(tiny, "demo", 2, stars).startswith("preset 'tiny' (wanted 'demo'), seed 1 (wanted 2), ")
    assert ensure_simulation(tiny, "tiny", 1, 1, stars, log=lambda _: None) is None
    with pytest.raises(SimulationMismatch, match="ring False"):
        ensure_simulation(tiny, "tiny", 1, 1, {**stars, "ring": True}, replace_different=False)
    # Without the fixture's override, the folder named with --data is refused before any run, exit status 2.
    assert main(["--preset", "tiny", "--data", str(tiny), "--run-root", str(tmp_path)]) == 2
    assert "star_mag_range [17.0, 24.0] (wanted [14.0, 24.0])" in capsys.readouterr().err
    assert not (tmp_path / "output").exists()
    # A bad override is refused by name.
    assert main(["--preset", "tiny", "--set", "no_such=1", "--data", str(tmp_path / "x"), "--run-root",
                 str(tmp_path)]) == 2
    assert "no_such" in capsys.readouterr().err


def test_simulation_by_other_simulator_code_is_not_reused_silently(tiny, tmp_path, monkeypatch):
    """The simulator's source digest in simulation.json: the driver's folder is simulated again, a named one warned about."""
    import json

    import shapepipe_modules.simulate as simulate_package
    from shapepipe_modules.gold.cli import simulator_changed
    from shapepipe_modules.simulate.core import simulator_fingerprint

    stars = {"star_mag_range": [17.0, 24.0]}
    current = simulator_fingerprint()
    assert json.loads((tiny / "simulation.json").read_text())["simulator"] == current
    assert len(current) == 16 and int(current, 16) >= 0
    sim = tmp_path / "sim"
    sim.mkdir()
    record = json.loads((tiny / "simulation.json").read_text())
    record["simulator"] = "0123456789abcdef"
    (sim / "simulation.json").write_text(json.dumps(record))
    assert simulator_changed(tiny) is None
    assert simulator_changed(sim) == f"simulator 0123456789abcdef (this code: {current})"
    logs = []
    assert ensure_simulation(sim, "tiny", 1, 1, stars, log=logs.append, replace_different=False) is None
    assert "warning" in logs[0] and "0123456789abcdef" in logs[0]
    calls = []
    monkeypatch.setattr(simulate_package, "simulate", lambda **kwargs: calls.append(kwargs))
    assert ensure_simulation(sim, "tiny", 1, 1, stars, log=logs.append) is not None
    assert len(calls) == 1 and calls[0]["output_dir"] == sim and calls[0]["preset"] == "tiny"
    del record["simulator"]
    (sim / "simulation.json").write_text(json.dumps(record))
    assert simulator_changed(sim) == f"simulator not recorded (this code: {current})"


def test_demo_preset_is_a_ring_test():
    """The preset, shapepipe_gold and the docs agree: demo is a ring test, tiny is not."""
    from shapepipe_modules.simulate.presets import resolve_parameters

    assert resolve_parameters("demo")["ring"] is True
    assert resolve_parameters("tiny")["ring"] is False


def test_ring_partners_share_a_tile():
    """The GOLD ring test needs both galaxies of a pair under one tile's shear: they lie 30 arcsec apart."""
    from shapepipe_modules import cfis
    from shapepipe_modules.simulate.presets import resolve_parameters
    from shapepipe_modules.simulate.scene import make_scene

    params = resolve_parameters("demo", ring=True)
    ra0, dec0 = cfis.tile_centre(244, 252)
    scene = make_scene(params, 1, (ra0 - 0.1, ra0 + 0.1, dec0 - 0.08, dec0 + 0.08))
    galaxies = np.flatnonzero(~scene["is_star"] & ~scene["is_deep_sky"])
    order = galaxies[np.argsort(scene["pair_id"][galaxies], kind="stable")]
    first, second = order[0::2], order[1::2]
    np.testing.assert_array_equal(scene["pair_id"][first], scene["pair_id"][second])
    np.testing.assert_allclose(scene["e1_int"][first], -scene["e1_int"][second])
    separation = 3600 * np.hypot((scene["ra"][first] - scene["ra"][second]) * np.cos(np.radians(dec0)),
                                 scene["dec"][first] - scene["dec"][second])
    np.testing.assert_allclose(separation, 30.0, rtol=5e-3)  # flat-sky offsets


def test_classify_follows_shapepipe_rule():
    spread = np.array([0.0, 0.002, 0.009, 0.02, -0.01])
    error = np.array([0.001, 0.0005, 0.001, 0.001, 0.001])
    # s = 0.002, 0.003, 0.011, 0.022, -0.008
    np.testing.assert_array_equal(classify(spread, error), [0, 2, 1, 1, 2])


@pytest.mark.slow
def test_whole_chain_on_tiny(tiny, tmp_path):
    """Every stage, ngmix split in two by object id and merged back, then shapepipe_validate."""
    root = tmp_path / "run"
    assert main(["--preset", "tiny", "--set", "star_mag_range=[17,24]", "--data", str(tiny), "--run-root", str(root),
                 "--ng-splits", "2"]) == 0
    summary = json.loads((root / "output" / "gold_summary.json").read_text())
    rows = {row["module_run"]: row for row in summary["modules"]}
    for name in ("psfinterp", "vignetmaker_run_1", "spread_model", "vignetmaker_run_2", "ngmix",
                 "merge_sep_cats", "make_catalog"):
        assert rows[name]["done"] == rows[name]["jobs"] >= 1, name
    assert sum(row["module_run"] == "ngmix" for row in summary["modules"]) == 2
    final = Table.read(next((root / "output").glob("run_sp_Mc_*/make_catalog/output/final_cat-244-252.fits")))
    tile = Table.read(next((root / "output").glob("run_sp_tile_Sx_exp_SxSePsf_*/sextractor_run_1/output/"
                                                 "sexcat-244-252.fits")), hdu=2)
    assert len(final) == len(tile)
    assert "m1" in summary["shear"]
    bright = summary["spread_model"]["bright"]
    assert bright["star_completeness"] > 0.85
