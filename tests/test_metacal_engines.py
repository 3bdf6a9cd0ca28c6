"""Agreement of the metacal engines: fit starts and tolerances, retries, target-PSF rules.

The tests that run the ngmix package skip without it; the others check the
same logic with the built-in fitter and scipy's least squares.
"""

import numpy as np
import pytest
from scipy.optimize import leastsq

galsim = pytest.importorskip("galsim")

from shapepipe_modules.ngmix import engine  # noqa: E402
from shapepipe_modules.ngmix.gauss_fit import (  # noqa: E402
    FIT_OK, fit_gauss, make_pixel_data, perturb_guess)
from shapepipe_modules.ngmix.metacal import TARGET_RULES, EpochMetacal  # noqa: E402
from test_metacal import ACCURATE, N, STEP, raw_epoch, response  # noqa: E402

JAC = np.array([[0.187, 0.002], [-0.001, 0.186]])
PSF = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.03, g2=0.0)


def _branch_pixels(sigma=1.0, seed=3, hlr=0.4, flux=900.0, names=("noshear", "1p")):
    """Pixel data of the noshear and 1p branches (or ``names``) of one noisy galaxy (fix-noise on)."""
    rng = np.random.default_rng(seed)
    gal = galsim.Exponential(half_light_radius=hlr, flux=flux).shear(g1=0.2, g2=-0.1)
    raw = raw_epoch(gal, PSF, JAC, sigma, rng, offset=(0.2, -0.3))
    epoch, _ = engine.prepare_epoch(engine.assemble_epoch(raw), rng)
    op = EpochMetacal(epoch.psf_image, epoch.jacobian, epoch.image.shape, step=STEP)
    images = op.make_images(epoch.image, rng.normal(0.0, epoch.noise_sigma, epoch.image.shape))
    cov = (op.target_sigma ** 2, 0.0, op.target_sigma ** 2)
    pixels = {name: make_pixel_data([images[name]], [0.5 * epoch.weight], [JAC], [epoch.centre], [cov])
              for name in names}
    guess, _ = engine._initial_guess([epoch], [op])
    return pixels, guess


def _model(pars, pixels):
    """Gaussian model at the pixels, written independently of gauss_fit's kernel."""
    u0, v0, g1, g2, T, flux = pars
    gsq = g1 * g1 + g2 * g2
    e1, e2 = 2 * g1 / (1 + gsq), 2 * g2 / (1 + gsq)
    cov = 0.5 * T * np.array([[1 + e1, e2], [e2, 1 - e1]])
    psf = pixels.psf_cov[0]
    cov = cov + np.array([[psf[0], psf[1]], [psf[1], psf[2]]])
    inv = np.linalg.inv(cov)
    x, y = pixels.du - u0, pixels.dv - v0
    rho = inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y
    return flux * pixels.area[0] / (2 * np.pi * np.sqrt(np.linalg.det(cov))) * np.exp(-0.5 * rho)


def _leastsq_fit(pixels, start, tol):
    """scipy's LM (MINPACK, as ngmix's fitter) with ngmix-style tolerances."""
    sqrt_w = np.sqrt(pixels.weight)

    def residuals(p):
        return (_model(p, pixels) - pixels.data) * sqrt_w

    pars, _ = leastsq(residuals, np.array(start, dtype=float), ftol=tol, xtol=tol, maxfev=4000)
    return pars


def test_sheared_fits_do_not_depend_on_start_with_tight_tolerance():
    """The built-in fitter and MINPACK at the ngmix engine's tolerances reach the same sheared minimum
    from the noshear solution and from the moments guess; at ngmix's default 1e-5 the noshear start
    leaves the sheared fit short of its minimum, towards the noshear shape."""
    from shapepipe_modules.ngmix.ngmix_engine import LM_PARS, NGMIX_DEFAULT_LM_PARS

    pixels, guess = _branch_pixels()
    noshear = fit_gauss(pixels["noshear"], guess)
    assert noshear.status == FIT_OK
    from_noshear = fit_gauss(pixels["1p"], noshear.pars)
    from_guess = fit_gauss(pixels["1p"], guess)
    assert from_noshear.status == FIT_OK and from_guess.status == FIT_OK
    assert np.abs(from_noshear.pars[2:4] - from_guess.pars[2:4]).max() < 1e-6
    shift = from_guess.pars[2] - noshear.pars[2]
    assert 0.005 < shift < 0.015  # the response of one branch
    tight = [_leastsq_fit(pixels["1p"], start, LM_PARS["ftol"]) for start in (noshear.pars, guess)]
    for pars in tight:
        assert abs(pars[2] - from_guess.pars[2]) < 1e-6
    loose = _leastsq_fit(pixels["1p"], noshear.pars, NGMIX_DEFAULT_LM_PARS["ftol"])
    # Stopped short: a fraction of the 0.01 branch shift is missing.
    assert abs(loose[2] - from_guess.pars[2]) > 20 * abs(tight[0][2] - from_guess.pars[2])
    assert abs(loose[2] - noshear.pars[2]) < abs(shift)


def test_mirrored_start_of_the_second_sheared_fit():
    """The engine starts 1m (2m) from 2 noshear - 1p (2p): nearer the minimum than the noshear solution,
    and the same minimum as from the moments guess (to 1e-6 in g) for faint and bright galaxies."""
    prior = engine.ShapePipePrior(cen_sigma=0.187)
    for sigma in (1.0, 3.0):
        pixels, guess = _branch_pixels(sigma=sigma, names=("noshear", "1p", "1m"))
        fits = {name: fit_gauss(pixels[name], guess, prior=prior) for name in pixels}
        assert all(f.status == FIT_OK for f in fits.values())
        mirrored = 2 * fits["noshear"].pars - fits["1p"].pars
        from_mirror = fit_gauss(pixels["1m"], mirrored, prior=prior)
        from_noshear = fit_gauss(pixels["1m"], fits["noshear"].pars, prior=prior)
        assert from_mirror.status == FIT_OK
        assert np.abs(from_mirror.pars[2:4] - fits["1m"].pars[2:4]).max() < 1e-6
        # The mirrored start is much nearer the 1m minimum and takes fewer iterations.
        assert (np.abs(mirrored[2:4] - fits["1m"].pars[2:4]).max()
                < 0.1 * np.abs(fits["noshear"].pars[2:4] - fits["1m"].pars[2:4]).max())
        assert from_mirror.niter < from_noshear.niter


def test_retry_guesses_are_relative_in_size_and_flux():
    rng = np.random.default_rng(1)
    guess = np.array([0.01, -0.02, 0.3, -0.2, 0.004, 250.0])
    trials = np.array([perturb_guess(guess, rng, 0.1) for _ in range(2000)])
    assert np.all(trials[:, 4] > 0)  # a 0.004 arcsec^2 galaxy keeps a positive size
    assert np.allclose(trials[:, 4] / guess[4], 1, atol=0.1 + 1e-12)
    assert np.allclose(trials[:, 5] / guess[5], 1, atol=0.1 + 1e-12)
    assert np.all(np.abs(trials[:, :4] - guess[:4]) <= 0.1 + 1e-12)
    assert trials[:, 4].std() / guess[4] == pytest.approx(0.2 / np.sqrt(12), rel=0.1)
    big = perturb_guess(np.array([0, 0, 0.95, 0.3, 1.0, 1.0]), rng, 0.1)
    assert np.hypot(*big[2:4]) <= 0.9 + 1e-12


def _psf_image(psf=PSF, jac=JAC):
    return psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array


def test_target_rules():
    """gauss_pix is larger than gauss_nopix; shapepipe is gauss_nopix convolved with the pixel."""
    ops = {rule: EpochMetacal(_psf_image(), JAC, (N, N), target_rule=rule) for rule in TARGET_RULES}
    ratio = ops["gauss_pix"].target_sigma / ops["gauss_nopix"].target_sigma
    assert 1.02 < ratio < 1.1
    assert ops["shapepipe"].target_sigma == ops["gauss_nopix"].target_sigma
    assert ops["gauss_nopix"].target_is_gaussian and not ops["shapepipe"].target_is_gaussian
    wcs = galsim.JacobianWCS(*JAC.ravel())
    kernel = galsim.Convolve(galsim.Gaussian(sigma=ops["shapepipe"].target_sigma, gsparams=ACCURATE),
                             wcs.toWorld(galsim.Pixel(scale=1.0)))
    expected = kernel.drawImage(nx=N, ny=N, wcs=wcs, method="no_pixel").array
    image = ops["shapepipe"].target_psf_image()
    assert np.abs(image - expected).max() < 1e-5 * expected.max()
    with pytest.raises(ValueError, match="target_rule"):
        EpochMetacal(_psf_image(), JAC, (N, N), target_rule="fitgauss")


@pytest.mark.parametrize("rule", ["gauss_pix", "shapepipe"])
def test_builtin_engine_recovers_shear_with_each_target_rule(rule):
    shear = np.array([0.02, -0.01])
    gal = galsim.Exponential(half_light_radius=0.5, flux=1000, gsparams=ACCURATE).shear(g1=shear[0], g2=shear[1])
    raws = [raw_epoch(gal, PSF, JAC, 1e-3)]
    config = engine.EngineConfig(fix_noise=False, target_psf=rule)
    rows = engine.measure_raw_object(raws, 1, np.random.default_rng([1, 1]), config)
    assert rows["noshear"]["flags"] == 0
    g = np.array([rows["noshear"]["g1"], rows["noshear"]["g2"]])
    # The pixel-convolved kernel is fitted with a Gaussian: calibrated to 1%.
    tol = 2e-4 if rule == "shapepipe" else 2e-5
    assert np.allclose(np.linalg.solve(response(rows), g), shear, atol=tol)


# ------------------------------------------------------------ with the ngmix package
@pytest.fixture(scope="module")
def ngmix_engine():
    pytest.importorskip("ngmix")
    from shapepipe_modules.ngmix import ngmix_engine

    return ngmix_engine


def _noisy_objects(n, seed=7):
    rng = np.random.default_rng(seed)
    for index in range(n):
        gal = galsim.Exponential(half_light_radius=rng.uniform(0.3, 0.7), flux=rng.uniform(600, 1500))
        gal = gal.shear(g1=rng.normal(0, 0.2), g2=rng.normal(0, 0.2))
        yield index, [raw_epoch(gal, PSF, JAC, 1.0, rng, offset=tuple(rng.uniform(-0.5, 0.5, 2)))]


@pytest.mark.parametrize("rule", TARGET_RULES)
def test_ngmix_engine_equals_builtin_per_object(ngmix_engine, rule):
    """Same kernel, same correlated-noise image, converged fits: the engines agree per object."""
    config = engine.EngineConfig(target_psf=rule, aperture_sigmas=None)
    for index, raws in _noisy_objects(3):
        built = engine.measure_raw_object(raws, index, np.random.default_rng([1, index]), config)
        other = ngmix_engine.measure_raw_object(raws, index, np.random.default_rng([1, index]), config)
        for name in built:
            assert built[name]["flags"] == 0 and other[name]["flags"] == 0
            for key in ("g1", "g2"):
                assert other[name][key] == pytest.approx(built[name][key], abs=2e-5)
        assert np.allclose(response(other), response(built), atol=2e-3)


def test_ngmix_sheared_fits_converge_from_either_start(ngmix_engine):
    """At the engine's tolerances the response does not depend on the start of the sheared fits (the
    built-in one to 2e-3: ngmix's approximate exponential limits its minimum to ~1e-5 in g); at
    ngmix's defaults from the noshear solution it comes out low (issue 23)."""
    shortfall = []
    config = engine.EngineConfig(aperture_sigmas=None)
    for index, raws in _noisy_objects(3, seed=11):
        def measure(module, **options):
            return response(module.measure_raw_object(raws, index, np.random.default_rng([1, index]),
                                                      config, **options))

        built = measure(engine)
        for start in ("guess", "noshear"):
            assert np.allclose(measure(ngmix_engine, start=start), built, atol=2e-3)
        loose = measure(ngmix_engine, start="noshear", lm_pars=ngmix_engine.NGMIX_DEFAULT_LM_PARS)
        shortfall.append(np.diag(loose - built).mean())
    assert np.mean(shortfall) < -1e-3
