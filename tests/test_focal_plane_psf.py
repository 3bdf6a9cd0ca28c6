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
