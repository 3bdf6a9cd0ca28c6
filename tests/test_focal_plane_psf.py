"""Focal-plane PSF model (the mccd modules' engine) against the true PSF, beside per-CCD models."""

import numpy as np
import pytest

from shapepipe_modules.io.psfex_file import read_psf, write_psf
from shapepipe_modules.mccd.focal_plane import fit_exposure
from shapepipe_modules.mccd.synthetic import Mosaic, draw_stars, shape_residuals
from shapepipe_modules.psfex.model import FitOptions, PSFFitError, fit_psf

OPTIONS = FitOptions(psf_size=(25, 25), sampling=1.0, degree=2, min_stars=5)


@pytest.fixture(scope="module")
def exposure():
    rng = np.random.default_rng(7)
    mosaic = Mosaic()
    field = mosaic.field(rng)
    counts = {c: 15 for c in mosaic.ccds}
    counts[5] = 3  # too few stars for a model of its own
    samples = {c: draw_stars(field, mosaic, c, rng, n) for c, n in counts.items()}
    fit = fit_exposure(samples, {c: mosaic.to_focal(c) for c in mosaic.ccds},
                       {c: (mosaic.ccd_nx, mosaic.ccd_ny) for c in mosaic.ccds}, OPTIONS, 2)
    return mosaic, field, samples, fit


def test_focal_plane_model_beats_per_ccd_models_against_truth(exposure):
    mosaic, field, samples, fit = exposure
    ccds = [c for c in mosaic.ccds if c != 5]
    focal = [shape_residuals(fit.models[c], field, mosaic, c) for c in ccds]
    per_ccd = [shape_residuals(fit_psf(samples[c], OPTIONS).model, field, mosaic, c) for c in ccds]
    mean = {name: {k: np.mean([r[k] for r in rows]) for k in rows[0]}
            for name, rows in (("focal", focal), ("per_ccd", per_ccd))}
    assert mean["focal"]["e_rms"] < 0.0015 and mean["focal"]["size_rms"] < 0.0015, mean
    assert mean["focal"]["e_rms"] < mean["per_ccd"]["e_rms"], mean
    assert mean["focal"]["size_rms"] < mean["per_ccd"]["size_rms"], mean


def test_a_ccd_with_few_stars_borrows_the_variation(exposure):
    mosaic, field, samples, fit = exposure
    with pytest.raises(PSFFitError):
        fit_psf(samples[5], OPTIONS)
    residual = shape_residuals(fit.models[5], field, mosaic, 5)
    assert residual["e_rms"] < 0.003 and residual["size_rms"] < 0.003, residual
    assert fit.models[5].loaded == 3


def test_ccd_models_are_plain_psfex_files(exposure, tmp_path):
    mosaic, _, _, fit = exposure
    model = fit.models[2]
    write_psf(tmp_path / "m.psf", model)
    again = read_psf(tmp_path / "m.psf")
    x, y = np.array([10.0, 128.0, 250.0]), np.array([20.0, 256.0, 500.0])
    # PSF_MASK is stored in single precision.
    np.testing.assert_allclose(again.evaluate(x, y, size=25), model.evaluate(x, y, size=25), rtol=1e-5, atol=1e-8)
    assert again.degree == 2 and again.zero == (128.5, 256.5)
    # Unit flux at the CCD centre, as the per-CCD engine writes it.
    assert model.evaluate(128.5, 256.5, size=25)[0].sum() == pytest.approx(1.0, abs=0.01)


def _ldac_selections(folder, mosaic, field, rng, stars=15, exposure="2113737"):
    """Per-CCD star selections as setools writes them (FITS-LDAC, VIGNET, image header with a TAN WCS)."""
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import write_ldac

    scale = 0.187 / 3600
    centre_x, centre_y = mosaic.columns * mosaic.ccd_nx / 2 + 0.5, mosaic.rows * mosaic.ccd_ny / 2 + 0.5
    paths = {}
    for ccd in mosaic.ccds:
        sample = draw_stars(field, mosaic, ccd, rng, stars)
        x0, y0 = mosaic.origin(ccd)
        header = fits.Header()
        header.update(NAXIS1=mosaic.ccd_nx, NAXIS2=mosaic.ccd_ny, CTYPE1="RA---TAN", CTYPE2="DEC--TAN",
                      CRVAL1=150.0, CRVAL2=2.0, CRPIX1=centre_x - x0, CRPIX2=centre_y - y0, CD1_1=-scale,
                      CD1_2=0.0, CD2_1=0.0, CD2_2=scale)
        table = Table({"NUMBER": np.arange(1, stars + 1, dtype=np.int32), "XWIN_IMAGE": sample.centre_x,
                       "YWIN_IMAGE": sample.centre_y, "X_IMAGE": sample.centre_x, "Y_IMAGE": sample.centre_y,
                       "FLUX_AUTO": sample.flux, "VIGNET": sample.stamps.astype(np.float32)})
        paths[f"-{exposure}-{ccd}"] = folder / f"star_selection-{exposure}-{ccd}.fits"
        write_ldac(paths[f"-{exposure}-{ccd}"], table, header)
    return paths


def test_mccd_fit_module_writes_a_psfex_model_per_ccd(tmp_path):
    import logging

    from shapepipe.job import Job
    from shapepipe_modules.mccd.runner import FIT_OPTIONS, mccd_fit
    from shapepipe_modules.psfex.runner import DATA_DIR

    rng = np.random.default_rng(3)
    mosaic = Mosaic()
    field = mosaic.field(rng)
    paths = _ldac_selections(tmp_path, mosaic, field, rng)
    dot_psfex = tmp_path / "small.psfex"
    dot_psfex.write_text((DATA_DIR / "default.psfex").read_text().replace("PSF_SIZE        51,51", "PSF_SIZE 25,25"))
    options = {o.name: o.default for o in FIT_OPTIONS}
    options.update(DOT_PSFEX_FILE=str(dot_psfex))
    output = tmp_path / "out"
    output.mkdir()
    job = Job(module="mccd_fit", module_run="mccd_fit", number="", inputs=list(paths.values()),
              input_table={n: [p] for n, p in paths.items()}, output_dir=output, log_dir=tmp_path, options=options,
              logger=logging.getLogger("test_mccd_fit"), run_dir=tmp_path)
    summary = mccd_fit(job)
    assert summary == {"exposures": 1, "ccd_models": 8, "stars": 120, "exposures_without_model": 0}
    # The CCDs are placed by their WCS: the models match the truth of the mosaic.
    residuals = [shape_residuals(read_psf(output / f"star_selection-2113737-{c}.psf"), field, mosaic, c)
                 for c in mosaic.ccds]
    assert np.mean([r["e_rms"] for r in residuals]) < 0.0015
    assert np.mean([r["size_rms"] for r in residuals]) < 0.0015


def test_mccd_fit_piff_engine_against_truth(tmp_path):
    """ENGINE = piff: Piff's focal-plane fit (through GalSim's reading of each CCD's WCS), re-expanded per CCD
    into PSFEx files, matches the true PSF as the built-in engine does (2 x 2 CCDs, 15 stars each)."""
    pytest.importorskip("piff")
    import logging

    from shapepipe.job import Job
    from shapepipe_modules.mccd.runner import FIT_OPTIONS, mccd_fit
    from shapepipe_modules.psfex.runner import DATA_DIR

    rng = np.random.default_rng(5)
    mosaic = Mosaic(columns=2, rows=2)
    field = mosaic.field(rng)
    paths = _ldac_selections(tmp_path, mosaic, field, rng)
    dot_psfex = tmp_path / "small.psfex"
    dot_psfex.write_text((DATA_DIR / "default.psfex").read_text().replace("PSF_SIZE        51,51", "PSF_SIZE 15,15"))
    results = {}
    for engine in ("builtin", "piff"):
        options = {o.name: o.default for o in FIT_OPTIONS}
        options.update(DOT_PSFEX_FILE=str(dot_psfex), ENGINE=engine)
        output = tmp_path / engine
        output.mkdir()
        job = Job(module="mccd_fit", module_run="mccd_fit", number="", inputs=list(paths.values()),
                  input_table={n: [p] for n, p in paths.items()}, output_dir=output, log_dir=tmp_path,
                  options=options, logger=logging.getLogger("test_mccd_fit"), run_dir=tmp_path)
        summary = mccd_fit(job)
        assert summary["ccd_models"] == 4 and summary["exposures_without_model"] == 0 and summary["stars"] >= 58
        models = {c: read_psf(output / f"star_selection-2113737-{c}.psf") for c in mosaic.ccds}
        residuals = [shape_residuals(models[c], field, mosaic, c) for c in mosaic.ccds]
        results[engine] = {key: np.mean([r[key] for r in residuals]) for key in ("e_rms", "size_rms", "e_max")}
        if engine == "piff":
            assert all(m.header.get("PSFENGIN") == "piff" for m in models.values())
    print(results)
    assert results["piff"]["e_rms"] < 0.0015 and results["piff"]["size_rms"] < 0.0015
    assert results["piff"]["e_max"] < 0.005
