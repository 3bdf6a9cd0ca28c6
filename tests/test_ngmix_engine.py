"""Tests of the optional ngmix-package engine of the ngmix module (ENGINE = ngmix).

The tests that measure with ngmix skip when the package is not installed (it
is not on the registry of this environment); the runner test checks that
asking for it without it stops the run before any job starts.
"""

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

galsim = pytest.importorskip("galsim")

from shapepipe.errors import DependencyError  # noqa: E402
from shapepipe.plan import build_plan  # noqa: E402
from shapepipe_modules.make_catalog.runner import run_make_catalog  # noqa: E402
from shapepipe_modules.ngmix import engine  # noqa: E402
from shapepipe_modules.ngmix import flags as fl  # noqa: E402
from shapepipe_modules.ngmix.runner import requirements, run_ngmix  # noqa: E402
from test_metacal import ACCURATE, raw_epoch, response  # noqa: E402
from test_ngmix_module_data import NUMBER, make_tile  # noqa: E402

LOG = logging.getLogger("test")
# Without the correlated-noise correction both engines measure exactly the
# same pixels, so their differences are those of the methods alone.
SAME_PIXELS = engine.EngineConfig(fix_noise=False)


@pytest.fixture(scope="module")
def ngmix_engine():
    pytest.importorskip("ngmix")
    from shapepipe_modules.ngmix import ngmix_engine

    return ngmix_engine


def two_epochs(gal, sigma, rng=None):
    """Two epochs with different PSFs, sub-pixel offsets and a rotated Jacobian."""
    return [
        raw_epoch(gal, galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.03, g2=0.0),
                  np.array([[0.187, 0.002], [-0.001, 0.186]]), sigma, rng, offset=(0.2, -0.3)),
        raw_epoch(gal, galsim.Moffat(beta=3.0, fwhm=0.65).shear(g1=-0.01, g2=0.02),
                  np.array([[0.0, 0.188], [-0.187, 0.0]]), sigma, rng, offset=(-0.4, 0.1), name="e1"),
    ]


def shear_estimate(rows):
    return np.linalg.solve(response(rows), [rows["noshear"]["g1"], rows["noshear"]["g2"]])


def test_noiseless_round_galaxy(ngmix_engine):
    """Round Gaussian galaxy: g = 0, R = 1, the built-in engine's size and flux."""
    jac = np.diag([0.187, 0.187])
    raws = [raw_epoch(galsim.Gaussian(half_light_radius=0.5, flux=1000),
                      galsim.Moffat(beta=3.5, fwhm=0.7), jac, 1e-3)]
    rows = ngmix_engine.measure_raw_object(raws, 7, engine.sky_rng(1, 244.0, 0.001 * 7), SAME_PIXELS)
    builtin = engine.measure_raw_object(raws, 7, engine.sky_rng(1, 244.0, 0.001 * 7), SAME_PIXELS)
    assert set(rows) == set(builtin)
    assert abs(rows["noshear"]["g1"]) < 1e-5 and abs(rows["noshear"]["g2"]) < 1e-5
    assert np.allclose(response(rows), np.eye(2), atol=1e-3)
    for name, row in rows.items():
        assert list(row) == list(builtin[name]) and row["id"] == 7
        assert row["flags"] == 0 and row["mcal_flags"] == 0 and row["n_epoch_model"] == 1
        assert row["T"] == pytest.approx(0.5, rel=2e-3)
        assert row["flux"] == pytest.approx(builtin[name]["flux"], rel=1e-3)
        # The original PSF fits agree. The reconvolution PSFs follow the same
        # rule, up to whether ngmix takes the pixel out first (version-dependent).
        assert row["T_psfo_gauss_arcsec2"] == pytest.approx(builtin[name]["T_psfo_gauss_arcsec2"], rel=1e-3)
        assert row["Tpsf_gauss_arcsec2"] == pytest.approx(builtin[name]["Tpsf_gauss_arcsec2"], rel=0.1)
        assert row["mag"] == pytest.approx(30.0 - 2.5 * np.log10(row["flux"]), rel=1e-12)


def test_noiseless_sheared_galaxy_recovers_the_shear(ngmix_engine):
    """Two epochs of a sheared round exponential: R^-1 g is the shear, as with the built-in engine."""
    shear = np.array([0.02, -0.01])
    gal = galsim.Exponential(half_light_radius=0.5, flux=2000, gsparams=ACCURATE).shear(g1=shear[0], g2=shear[1])
    raws = two_epochs(gal, 1e-3)
    rows = ngmix_engine.measure_raw_object(raws, 3, engine.sky_rng(2, 244.0, 0.001 * 3), SAME_PIXELS)
    builtin = engine.measure_raw_object(raws, 3, engine.sky_rng(2, 244.0, 0.001 * 3), SAME_PIXELS)
    assert rows["noshear"]["n_epoch_model"] == 2 and rows["noshear"]["mcal_flags"] == 0
    assert np.allclose(shear_estimate(rows), shear, atol=2e-4)
    assert np.allclose(shear_estimate(rows), shear_estimate(builtin), atol=1e-4)


def test_noisy_sheared_galaxies_agree_with_the_builtin_engine(ngmix_engine):
    """Elliptical sheared exponentials at S/N ~ 100: both engines agree within the errors."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        e_int = rng.normal(0.0, 0.2, 2)
        gal = (galsim.Exponential(half_light_radius=rng.uniform(0.4, 0.7), flux=2000, gsparams=ACCURATE)
               .shear(g1=e_int[0], g2=e_int[1]).shear(g1=0.02, g2=-0.01))
        raws = two_epochs(gal, 2.0, rng)
        rows = ngmix_engine.measure_raw_object(raws, seed, engine.sky_rng(seed, 244.0, 0.001 * seed), SAME_PIXELS)
        builtin = engine.measure_raw_object(raws, seed, engine.sky_rng(seed, 244.0, 0.001 * seed), SAME_PIXELS)
        for name in rows:
            ours, ref = rows[name], builtin[name]
            assert ours["flags"] == ref["flags"] == 0
            for key in ("g1", "g2", "flux"):
                assert abs(ours[key] - ref[key]) < ref[f"{key}_err"], (seed, name, key)
            assert abs(ours["T_gauss_arcsec2"] - ref["T_gauss_arcsec2"]) < 2 * ref["T_gauss_arcsec2_err"]
            assert ours["s2n"] == pytest.approx(ref["s2n"], rel=0.1)
        assert np.allclose(response(rows), response(builtin), atol=0.03)


def test_failures_are_flagged_as_by_the_builtin_engine(ngmix_engine):
    rows = ngmix_engine.measure_object([], 42, engine.sky_rng(1, 244.0, 0.001 * 42))
    for row in rows.values():
        assert row["id"] == 42 and fl.flags_to_names(row["flags"]) == ["NO_EPOCHS"]
        assert np.isnan(row["g1"]) and row["n_epoch_model"] == 0
    # An epoch whose PSF stamp is empty (sum 0) is dropped with BAD_PSF_STAMP; the other one is measured.
    gal = galsim.Exponential(half_light_radius=0.5, flux=2000)
    raws = two_epochs(gal, 1.0, np.random.default_rng(4))
    raws[1].psf_image = np.zeros_like(raws[1].psf_image)
    ours = ngmix_engine.measure_raw_object(raws, 5, engine.sky_rng(1, 244.0, 0.001 * 5))
    builtin = engine.measure_raw_object(raws, 5, engine.sky_rng(1, 244.0, 0.001 * 5))
    for name, row in ours.items():
        assert row["flags"] == builtin[name]["flags"] == fl.BAD_PSF_STAMP
        assert row["n_epoch_model"] == 1 and np.isfinite(row["g1"])
    tables = engine.rows_to_tables([ours])
    assert tables["noshear"]["flags"].dtype == np.int64 and tables["1p"]["g1"].dtype == np.float64


def test_tile_with_the_ngmix_engine(ngmix_engine, tmp_path):
    """run_ngmix with ENGINE = ngmix: the shear of round galaxies, the same
    catalogue layout and flags as the built-in engine, and make_catalog unchanged."""
    tile = make_tile(tmp_path / "in", ids=range(1, 9), e_sigma=0.0, noise=0.3, masked_ids=(4,), no_epoch_ids=(6,))
    tables, headers = {}, {}
    for name in ("builtin", "ngmix"):
        out = tmp_path / name
        out.mkdir()
        options = {"LOG_WCS": str(tile.header_store), "MAG_ZP": 30.0, "PIXEL_SCALE": 0.186,
                   "ID_OBJ_MIN": -1, "ID_OBJ_MAX": -1, "ENGINE": name}
        path, _ = run_ngmix(tile.inputs, out, NUMBER, 3, options, LOG)
        with fits.open(path) as hdus:
            tables[name] = {h.name: np.array(h.data) for h in hdus[1:]}
            headers[name] = hdus[0].header.copy()
        final, _ = run_make_catalog([tile.inputs[0], tile.sm_path, tile.psf_path, path], out, NUMBER,
                                    {"SM_DO_CLASSIFICATION": True, "SM_STAR_THRESH": 0.003, "SM_GAL_THRESH": 0.01,
                                     "SAVE_PSF_DATA": True, "PSF_N_EPOCH_MAX": 0}, LOG)
        with fits.open(final) as hdus:
            headers[name + "_final"] = hdus[1].columns.names
    assert headers["ngmix"]["ENGINE"] == "ngmix" and headers["builtin"]["ENGINE"] == "builtin"
    assert headers["ngmix_final"] == headers["builtin_final"]
    ours, ref = tables["ngmix"], tables["builtin"]
    assert list(ours) == list(ref) == ["1M", "1P", "2M", "2P", "NOSHEAR"]
    for branch in ours:
        assert ours[branch].dtype == ref[branch].dtype
        np.testing.assert_array_equal(ours[branch]["id"], np.arange(1, 9))
        np.testing.assert_array_equal(ours[branch]["flags"], ref[branch]["flags"])
        assert ours[branch]["flags"][3] == ours[branch]["flags"][5] == fl.NO_EPOCHS
    ns = ours["NOSHEAR"]
    good = ns["mcal_flags"] == 0
    assert good.sum() == 6
    r11 = (ours["1P"]["g1"] - ours["1M"]["g1"])[good] / 0.02
    r22 = (ours["2P"]["g2"] - ours["2M"]["g2"])[good] / 0.02
    assert abs(np.mean(ns["g1"][good]) / np.mean(r11) - 0.04) < 0.004
    assert abs(np.mean(ns["g2"][good]) / np.mean(r22) + 0.02) < 0.004


# ---------------------------------------------------------------- without ngmix
def test_requirements_name_ngmix_only_for_its_engine():
    assert requirements({"ENGINE": "ngmix"}) == (("ngmix",), ())
    assert requirements({"ENGINE": "builtin"}) == ((), ())


def _write_config(path, input_dir, output_dir, engine_name):
    path.write_text(f"""[DEFAULT]
VERBOSE = False
RUN_NAME = engine

[EXECUTION]
MODULE = ngmix_runner

[FILE]
INPUT_DIR = {input_dir}
OUTPUT_DIR = {output_dir}

[NGMIX_RUNNER]
LOG_WCS = {input_dir}/log_exp_headers.sqlite
ENGINE = {engine_name}
""")
    return path


@pytest.mark.skipif(importlib.util.find_spec("ngmix") is not None, reason="ngmix is installed")
def test_ngmix_engine_without_ngmix_stops_before_any_job(tmp_path):
    """ENGINE = ngmix without the package: exit status 3, naming it, nothing run."""
    data = tmp_path / "data"
    data.mkdir()
    # The dependency check comes before any input is read: names suffice.
    for pattern, ext in zip(("tile_sexcat", "image_vignet", "background_vignet", "galaxy_psf", "weight_vignet",
                             "flag_vignet"), (".fits",) + (".sqlite",) * 5):
        (data / f"{pattern}{NUMBER}{ext}").write_bytes(b"")
    out = tmp_path / "out"
    # The same configuration with the built-in engine passes the check.
    plan = build_plan(_write_config(tmp_path / "builtin.ini", data, out, "builtin"))
    assert [run.spec.name for run in plan.module_runs] == ["ngmix"]
    config = _write_config(tmp_path / "ngmix.ini", data, out, "ngmix")
    with pytest.raises(DependencyError, match="ngmix"):
        build_plan(config)
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert "module ngmix: Python package ngmix is not installed (install it with: pip install ngmix)" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
