"""Tests of the built-in metacalibration engine (shapepipe_modules.ngmix)."""

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from shapepipe_modules.ngmix import engine  # noqa: E402
from shapepipe_modules.ngmix import flags as fl  # noqa: E402
from shapepipe_modules.ngmix.gauss_fit import (  # noqa: E402
    FIT_OK, _normal_equations, fit_gauss, make_pixel_data)
from shapepipe_modules.ngmix.metacal import BRANCHES, EpochMetacal  # noqa: E402
from shapepipe_modules.ngmix.moments import T_to_r50, r50_to_T  # noqa: E402
from shapepipe_modules.ngmix.priors import ShapePipePrior  # noqa: E402
from shapepipe_modules.ngmix.response import shear_response  # noqa: E402

N = 51
STEP = 0.01
ACCURATE = galsim.GSParams(folding_threshold=1e-5, maxk_threshold=1e-7,
                           kvalue_accuracy=1e-8)


def raw_epoch(gal, psf, jac, sigma, rng=None, offset=(0.0, 0.0), name="e0"):
    """Stamps of one epoch drawn with GalSim (pixel response included)."""
    wcs = galsim.JacobianWCS(*np.ravel(jac))
    image = galsim.Convolve(gal, psf).drawImage(nx=N, ny=N, wcs=wcs, offset=offset).array
    if rng is not None:
        image = image + rng.normal(0.0, sigma, image.shape)
    psf_image = psf.drawImage(nx=N, ny=N, wcs=wcs).array
    background = np.full((N, N), 50.0)
    return engine.RawEpoch(
        image=image + background, background=background,
        weight=np.full((N, N), 1.0 / sigma ** 2), flag=np.zeros((N, N), dtype=np.int64),
        psf_image=psf_image, jacobian=np.asarray(jac, dtype=float), name=name,
        centre=(N // 2 + offset[1], N // 2 + offset[0]))


def response(rows):
    return np.array([
        [(rows["1p"]["g1"] - rows["1m"]["g1"]) / (2 * STEP),
         (rows["2p"]["g1"] - rows["2m"]["g1"]) / (2 * STEP)],
        [(rows["1p"]["g2"] - rows["1m"]["g2"]) / (2 * STEP),
         (rows["2p"]["g2"] - rows["2m"]["g2"]) / (2 * STEP)],
    ])


NOISELESS = engine.EngineConfig(fix_noise=False)


def load_bench():
    """The benchmark module benchmarks/bench_metacal.py (its simulation functions)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_metacal.py"
    spec = importlib.util.spec_from_file_location("bench_metacal", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


# ---------------------------------------------------------------- metacal images
def test_metacal_images_match_direct_rendering():
    """Each branch equals the sheared galaxy convolved with the target."""
    jac = np.array([[0.186, 0.004], [-0.003, 0.188]])
    wcs = galsim.JacobianWCS(*jac.ravel())
    gal = galsim.Exponential(half_light_radius=0.5, flux=1000, gsparams=ACCURATE)
    gal = gal.shear(g1=0.1, g2=-0.05).shift(0.03, -0.05)
    psf = galsim.Gaussian(fwhm=0.7).shear(g1=0.03, g2=0.02)
    image = galsim.Convolve(gal, psf).drawImage(nx=N, ny=N, wcs=wcs).array
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=wcs).array, jac, (N, N))
    out = op.make_images(image)
    target = galsim.Gaussian(sigma=op.target_sigma, gsparams=ACCURATE)
    refs = {}
    for name, (s1, s2) in BRANCHES.items():
        sheared = gal.shear(g1=STEP * s1, g2=STEP * s2)
        refs[name] = galsim.Convolve(sheared, target).drawImage(
            nx=N, ny=N, wcs=wcs, method="no_pixel").array
        assert np.abs(out[name] - refs[name]).max() < 1e-5 * refs[name].max()
    for name in ("1p", "1m", "2p", "2m"):
        signal = refs[name] - refs["noshear"]
        error = (out[name] - out["noshear"]) - signal
        assert np.abs(error).max() < 3e-4 * np.abs(signal).max()


def test_target_psf_is_larger_than_psf_and_shared():
    jac = np.diag([0.187, 0.187])
    wcs = galsim.JacobianWCS(*jac.ravel())
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=wcs).array, jac, (N, N))
    # Moffat FWHM 0.7 has sigma ~0.3; the target is wider and round.
    assert 0.7 / 2.3548 < op.target_sigma < 0.6
    image = op.target_psf_image()
    assert image.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(image, image.T)


def test_target_sigma_kernel_equals_numpy_rule():
    """The numba search for the PSF's 1e-2 level equals the numpy expression of the rule, bit for bit."""
    from shapepipe_modules.ngmix.metacal import (PSF_SMALL_KVAL, TARGET_SMALLER_KVAL, _frequency_grid,
                                                  _pixel_response)

    jac = 0.187 * np.array([[0.97, 0.1], [-0.04, 1.05]])
    psf = galsim.Moffat(beta=3.5, fwhm=0.75).shear(g1=0.03, g2=0.02)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array, jac, (N, N))
    qy, qx = _frequency_grid(op.in_size, True)
    for remove_pixel in (True, False):
        kval = op._psf_k.real / _pixel_response(op.in_size) if remove_pixel else op._psf_k.real
        ksq = op._sky_ksq(qy, qx)
        expected = np.sqrt(-2.0 * np.log(TARGET_SMALLER_KVAL) / ksq[kval < PSF_SMALL_KVAL].min())
        assert op._target_sigma(op._psf_k, remove_pixel) == expected


def test_gaussian_image_of_moments():
    """The moments' Gaussian against a direct evaluation at every pixel centre."""
    from shapepipe_modules.ngmix.moments import Moments, gaussian_image

    mom = Moments(row=24.3, col=26.1, sigma=3.2, e1=0.2, e2=-0.1, amplitude=800.0)
    image = gaussian_image(mom, (51, 49))
    root = np.sqrt(1 - 0.2 ** 2 - 0.1 ** 2)
    m = 3.2 ** 2 / root * np.array([[1 - 0.2, -0.1], [-0.1, 1 + 0.2]])  # (y, x) second moments
    inv = np.linalg.inv(m)
    y, x = np.mgrid[0:51, 0:49]
    d = np.stack([y - 24.3, x - 26.1], axis=-1)
    expected = 800.0 / (2 * np.pi * np.sqrt(np.linalg.det(m))) * np.exp(-0.5 * np.einsum("...i,ij,...j", d, inv, d))
    np.testing.assert_allclose(image, expected, rtol=1e-12)
    assert image.sum() == pytest.approx(800.0, rel=1e-6)


def test_padded_transform_equals_rfft2_of_the_padded_stamp():
    """The row-by-row input transform against rfft2 of the zero-padded stamp (odd and even PSF stamps too)."""
    from scipy import fft as sfft

    from shapepipe_modules.ngmix.metacal import _embed

    jac = np.diag([0.187, 0.187])
    psf = galsim.Gaussian(fwhm=0.7).drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array
    op = EpochMetacal(psf, jac, (N, N))
    rng = np.random.default_rng(4)
    for shape, centre in (((N, N), None), ((N, N), (3, 40)), ((32, 32), (16, 16)), ((5, 5), (0, 0))):
        stamps = rng.normal(size=(2,) + shape)
        got = op._padded_transform(stamps, centre)
        where = centre or op.centre
        for stamp, spectrum in zip(stamps, got):
            expected = sfft.rfft2(_embed(stamp, op.in_size, where))
            np.testing.assert_allclose(spectrum, expected, atol=1e-10 * np.abs(expected).max())


def test_noise_power_of_rotated_kernel_equals_transform_of_rotated_kernel():
    """The rotated kernel's power from permuted modes against the transform of the kernel rotated in real space."""
    from scipy import fft as sfft

    jac = 0.187 * np.array([[0.95, 0.12], [-0.05, 1.08]])
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.05, g2=-0.03)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array, jac, (N, N))
    full = np.zeros(op._out_shape, dtype=complex)
    full[op._keep] = op._noshear_scale()
    kernel = sfft.irfft2(full, s=(op.out_size, op.out_size))
    turned = kernel.T[(-np.arange(op.out_size)) % op.out_size, :]
    weight = np.full(op._out_shape[1], 2.0)
    weight[0] = weight[-1] = 1.0
    expected = (np.abs(full) ** 2 + np.abs(sfft.rfft2(turned)) ** 2) * weight / op.out_size ** 2
    got = op._noise_power(True)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * expected.max())
    assert not np.allclose(got, op._noise_power(False) * 2, rtol=1e-3)  # the rotated term is not the same power


def test_median_equals_numpy_median():
    """The MAD's median equals np.median (odd, even, one value, NaN present)."""
    from shapepipe_modules.ngmix.moments import _median, sigma_mad

    rng = np.random.default_rng(6)
    for n in (1, 2, 7, 2600, 2601):
        values = rng.normal(size=n) * 3.0 + 1.0
        assert _median(values.copy()) == np.median(values)
        assert sigma_mad(values) == 1.482602218505602 * np.median(np.abs(values - np.median(values)))
    with_nan = rng.normal(size=50)
    with_nan[17] = np.nan
    assert np.isnan(_median(with_nan)) and np.isnan(np.median(with_nan))


def test_noise_sigma_outside_object_equals_numpy_steps():
    """The compiled noise level against its numpy steps: MAD of the usable pixels, then of those below 1.2x it."""
    from shapepipe_modules.ngmix.moments import Moments, gaussian_image, noise_sigma_outside_object, sigma_mad

    rng = np.random.default_rng(8)
    image = rng.normal(0.0, 2.0, (51, 49))
    mom = Moments(row=24.3, col=25.6, sigma=2.5, e1=0.2, e2=-0.1, amplitude=4000.0)
    image += gaussian_image(mom, image.shape)
    usable = np.ones(image.shape, dtype=bool)
    usable[:, 30] = False
    first = sigma_mad(image[usable])
    background = usable & (gaussian_image(mom, image.shape) < 1.2 * first)
    assert 10 <= background.sum() < usable.sum()
    assert noise_sigma_outside_object(image, usable, mom) == sigma_mad(image[background])
    assert noise_sigma_outside_object(image, usable) == first
    # Fewer than 10 background pixels: the first estimate.
    huge = Moments(row=24.3, col=25.6, sigma=200.0, e1=0.0, e2=0.0, amplitude=1e12)
    assert noise_sigma_outside_object(image, usable, huge) == first


def test_branch_positions_equal_numpy_matrix_products():
    """The sample points of the sheared branches (numba) against the numpy products M q."""
    jac = 0.187 * np.array([[0.95, 0.12], [-0.05, 1.08]])
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.05, g2=-0.03)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array, jac, (N, N))
    for name, (s1, s2) in BRANCHES.items():
        if (s1, s2) == (0.0, 0.0):
            continue
        ref_y, ref_x = op._positions(s1 * op.step, s2 * op.step)
        got_y, got_x = op._sheared_positions[name]
        np.testing.assert_allclose(got_y, ref_y, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(got_x, ref_x, rtol=1e-13, atol=1e-12)
        # The 6x6 taps (floor(p) - 2 to floor(p) + 3) stay inside the window of the extended transform.
        assert np.floor(got_y.min()) - 2 >= op._fy_low
        assert np.floor(got_x.min()) - 2 >= op._fx_low
        assert np.floor(got_y.max()) + 3 < op._fy_low + op._window[0]
        assert np.floor(got_x.max()) + 3 < op._fx_low + op._window[1]


def test_fixnoise_adds_rotated_processed_noise():
    """With a zero image, every branch is the processed rotated noise."""
    jac = np.diag([0.187, 0.187])
    wcs = galsim.JacobianWCS(*jac.ravel())
    psf = galsim.Gaussian(fwhm=0.7)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=wcs).array, jac, (N, N))
    noise = np.random.default_rng(3).normal(size=(N, N))
    with_noise = op.make_images(np.zeros((N, N)), noise)
    rotated = op.make_images(np.rot90(noise, 1))
    for name in BRANCHES:
        assert np.allclose(with_noise[name], np.rot90(rotated[name], -1), atol=1e-12)
    # A rotated, sheared Jacobian and an elliptical PSF (kept modes not symmetric under a
    # 90-degree rotation), a galaxy and noise: the sum of the two processed separately.
    jac = 0.187 * np.array([[0.95, 0.12], [-0.05, 1.08]])
    wcs = galsim.JacobianWCS(*jac.ravel())
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.05, g2=-0.03)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=wcs).array, jac, (N, N))
    target, _, _ = op._rotation_map()
    assert not np.isin(target, op._keep_flat).all()
    image = galsim.Convolve(galsim.Exponential(half_light_radius=0.4, flux=500.0).shear(g1=0.2, g2=0.1),
                            psf).drawImage(nx=N, ny=N, wcs=wcs).array
    both = op.make_images(image, noise)
    alone = op.make_images(image)
    turned = op.make_images(np.rot90(noise, 1))
    for name in BRANCHES:
        expected = alone[name] + np.rot90(turned[name], -1)
        np.testing.assert_allclose(both[name], expected, atol=1e-12 * np.abs(expected).max())


# ---------------------------------------------------------------- fitter
def test_gauss_fit_gradient_matches_finite_differences():
    jac = np.diag([0.187, 0.19])
    rng = np.random.default_rng(1)
    image = rng.normal(size=(N, N)) + 5.0
    pixels = make_pixel_data([image], [np.ones((N, N))], [jac], [(25, 25)],
                             [(0.1, 0.01, 0.12)])
    pars = np.array([0.01, 0.02, 0.1, 0.05, 0.4, 900.0])
    args = (pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch,
            pixels.psf_cov, pixels.area)
    hess, grad = np.empty((6, 6)), np.empty(6)
    _normal_equations(pars, *args, hess, grad, False)
    for k in range(6):
        step = np.zeros(6)
        step[k] = 1e-6 * max(1.0, abs(pars[k]))
        h2, g2 = np.empty((6, 6)), np.empty(6)
        up = _normal_equations(pars + step, *args, h2, g2, False)
        down = _normal_equations(pars - step, *args, h2, g2, False)
        assert (up - down) / (4 * step[k]) == pytest.approx(grad[k], rel=1e-5)


def _model_numpy(pars, du, dv, epoch, psf_cov, area):
    """The joint Gaussian model, written independently of the numba kernel."""
    u0, v0, g1, g2, T, flux = pars
    gsq = g1 * g1 + g2 * g2
    e1, e2 = 2 * g1 / (1 + gsq), 2 * g2 / (1 + gsq)
    gal = 0.5 * T * np.array([[1 + e1, e2], [e2, 1 - e1]])
    model = np.empty(du.size)
    for e in range(psf_cov.shape[0]):
        cov = gal + np.array([[psf_cov[e, 0], psf_cov[e, 1]], [psf_cov[e, 1], psf_cov[e, 2]]])
        inv = np.linalg.inv(cov)
        sel = epoch == e
        d = np.stack([du[sel] - u0, dv[sel] - v0])
        rho = np.einsum("ip,ij,jp->p", d, inv, d)
        model[sel] = flux * area[e] / (2 * np.pi * np.sqrt(np.linalg.det(cov))) * np.exp(-0.5 * rho)
    return model


def test_gauss_fit_hessian_is_gauss_newton_of_an_independent_model():
    """Two epochs (other Jacobian and PSF): chi^2, gradient and Hessian equal J^T W r and J^T W J of a numpy model."""
    rng = np.random.default_rng(4)
    jacs = [np.diag([0.187, 0.19]), np.array([[0.18, 0.02], [-0.01, 0.188]])]
    images = [rng.normal(size=(N, N)) + 3.0 for _ in jacs]
    weights = [rng.uniform(0.5, 2.0, size=(N, N)) for _ in jacs]
    pixels = make_pixel_data(images, weights, jacs, [(25, 25), (24.6, 25.3)],
                             [(0.1, 0.01, 0.12), (0.13, -0.02, 0.11)])
    pars = np.array([0.03, -0.02, 0.15, -0.1, 0.5, 700.0])
    args = (pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch, pixels.psf_cov, pixels.area)
    hess, grad = np.empty((6, 6)), np.empty(6)
    chi2 = _normal_equations(pars, *args, hess, grad, False)
    geometry = (pixels.du, pixels.dv, pixels.epoch, pixels.psf_cov, pixels.area)
    model = _model_numpy(pars, *geometry)
    jac_model = np.empty((pixels.n_pixels, 6))
    for k in range(6):
        step = np.zeros(6)
        step[k] = 1e-6 * max(1.0, abs(pars[k]))
        jac_model[:, k] = (_model_numpy(pars + step, *geometry) - _model_numpy(pars - step, *geometry)) / (2 * step[k])
    resid = model - pixels.data
    assert chi2 == pytest.approx(np.sum(pixels.weight * resid ** 2), rel=1e-10)
    assert np.allclose(grad, jac_model.T @ (pixels.weight * resid), rtol=1e-5, atol=1e-6 * np.abs(grad).max())
    expected = jac_model.T @ (pixels.weight[:, None] * jac_model)
    assert np.allclose(hess, hess.T)
    assert np.allclose(hess, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())


def test_gauss_fit_recovers_noiseless_gaussian():
    jac = np.array([[0.186, 0.004], [-0.003, 0.188]])
    wcs = galsim.JacobianWCS(*jac.ravel())
    sigma_t = 0.35
    g1, g2, sigma, flux = 0.2, -0.1, 0.4, 1000.0
    gal = galsim.Gaussian(sigma=sigma, flux=flux).shear(g1=g1, g2=g2).shift(0.02, -0.03)
    image = galsim.Convolve(gal, galsim.Gaussian(sigma=sigma_t)).drawImage(
        nx=N, ny=N, wcs=wcs, method="no_pixel").array
    pixels = make_pixel_data([image], [np.full((N, N), 1e6)], [jac], [(25, 25)],
                             [(sigma_t ** 2, 0.0, sigma_t ** 2)])
    result = fit_gauss(pixels, [0, 0, 0, 0, 0.2, 500.0])
    assert result.status == FIT_OK
    # ngmix convention: T = Iuu + Ivv; GalSim's shear keeps the area, so
    # T = 2 sigma^2 / sqrt(1 - e^2) with e = 2g / (1 + g^2).
    gsq = g1 ** 2 + g2 ** 2
    e_sq = 4 * gsq / (1 + gsq) ** 2
    expected = [0.02, -0.03, g1, g2, 2 * sigma ** 2 / np.sqrt(1 - e_sq), flux]
    assert np.allclose(result.pars, expected, rtol=1e-5, atol=1e-6)


def test_faint_small_galaxies_converge_to_the_minimum():
    """Low-S/N, barely resolved galaxies: the fits converge (they hit the
    200-iteration limit before the line search), to the true minimum of the cost."""
    jac = np.array([[0.187, 0.0], [0.0, 0.187]])
    wcs = galsim.JacobianWCS(*jac.ravel())
    psf = galsim.Moffat(beta=4.8, fwhm=0.7)
    psf_sigma2 = 0.5 * r50_to_T(psf.calculateHLR())
    prior = ShapePipePrior()
    rng = np.random.default_rng(17)
    iterations, checked = [], 0
    for _ in range(40):
        gal = galsim.Exponential(half_light_radius=rng.uniform(0.15, 0.3), flux=rng.uniform(300, 600))
        gal = gal.shear(g1=rng.normal(0, 0.25), g2=rng.normal(0, 0.25)).shift(*rng.normal(0, 0.1, 2))
        image = galsim.Convolve(gal, psf).drawImage(nx=N, ny=N, wcs=wcs).array
        image += rng.normal(0.0, 8.0, image.shape)
        pixels = make_pixel_data([image], [np.full((N, N), 1 / 64.0)], [jac], [(25, 25)],
                                 [(psf_sigma2, 0.0, psf_sigma2)], radius=12)
        result = fit_gauss(pixels, [0, 0, 0, 0, 0.1, 400.0], prior=prior)
        if result.status != FIT_OK:
            continue
        iterations.append(result.niter)
        # Independent check of the minimum: no coordinate step of 0.01 sigma lowers the cost.
        errors = result.errors
        cost = _cost(pixels, result.pars, prior)
        for a in range(6):
            for sign in (-1, 1):
                moved = result.pars.copy()
                moved[a] += sign * 0.01 * errors[a]
                assert _cost(pixels, moved, prior) >= cost - 1e-9
        checked += 1
    assert checked >= 36
    assert np.median(iterations) < 30 and max(iterations) < 200


def _cost(pixels, pars, prior):
    """0.5 chi^2 - ln prior, from an independent numpy model of the Gaussian fit."""
    model = _model_numpy(pars, pixels.du, pixels.dv, pixels.epoch, pixels.psf_cov, pixels.area)
    chi2 = np.sum(pixels.weight * (pixels.data - model) ** 2)
    g2 = pars[2] ** 2 + pars[3] ** 2
    return (0.5 * chi2 + 0.5 * (pars[0] ** 2 + pars[1] ** 2) / prior.cen_sigma ** 2
            - 2.0 * np.log(1.0 - g2) + 0.5 * g2 / prior.g_sigma ** 2)


def test_size_conventions():
    sigma = 0.3
    r50 = galsim.Gaussian(sigma=sigma).half_light_radius
    assert T_to_r50(2 * sigma ** 2) == pytest.approx(r50, rel=1e-10)
    assert r50_to_T(r50) == pytest.approx(2 * sigma ** 2, rel=1e-10)
    assert T_to_r50(-0.02) < 0


def test_prior_terms_match_numerical_derivatives():
    prior = ShapePipePrior(cen_sigma=0.187)
    pars = np.array([0.05, -0.02, 0.3, -0.2, 0.5, 100.0])
    grad, hess = np.zeros(6), np.zeros((6, 6))
    prior.add_terms(pars, grad, hess)
    for k in range(4):
        step = np.zeros(6)
        step[k] = 1e-6
        num = (prior.neg_log_prob(pars + step) - prior.neg_log_prob(pars - step)) / 2e-6
        assert num == pytest.approx(grad[k], rel=1e-6)
    assert np.isinf(prior.neg_log_prob(np.array([0, 0, 0.8, 0.7, 1, 1])))


# ---------------------------------------------------------------- engine
def test_noiseless_round_galaxy_zero_shape_and_unit_response():
    """Round Gaussian galaxy: g = 0 and R = 1 (the exact, analytic value)."""
    jac = np.diag([0.187, 0.187])
    gal = galsim.Gaussian(half_light_radius=0.5, flux=1000)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    raws = [raw_epoch(gal, psf, jac, 1e-3)]
    rows = engine.measure_raw_object(raws, 7, engine.sky_rng(1, 244.0, 0.001 * 7), NOISELESS)
    assert abs(rows["noshear"]["g1"]) < 1e-6 and abs(rows["noshear"]["g2"]) < 1e-6
    assert np.allclose(response(rows), np.eye(2), atol=1e-4)
    for row in rows.values():
        assert row["flags"] == 0
        # T of a round Gaussian of half-light radius 0.5 arcsec.
        assert row["T"] == pytest.approx(0.5, rel=1e-3)


def test_response_matches_direct_rendering_of_sheared_galaxy():
    """Exponential galaxy: metacal R equals R from drawing the galaxy sheared
    by +-step with the target PSF directly (independent of the image
    operations) and fitting it with the same fitter."""
    jac = np.array([[0.186, 0.003], [-0.002, 0.188]])
    wcs = galsim.JacobianWCS(*jac.ravel())
    gal = galsim.Exponential(half_light_radius=0.6, flux=1000, gsparams=ACCURATE).shear(
        g1=0.15, g2=-0.1)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.02, g2=-0.01)
    raws = [raw_epoch(gal, psf, jac, 1e-3)]
    rows = engine.measure_raw_object(raws, 1, engine.sky_rng(1, 244.0, 0.001 * 1), NOISELESS)
    op = EpochMetacal(raws[0].psf_image, jac, (N, N))
    target = galsim.Gaussian(sigma=op.target_sigma, gsparams=ACCURATE)
    direct = {}
    for name, (s1, s2) in BRANCHES.items():
        image = galsim.Convolve(gal.shear(g1=STEP * s1, g2=STEP * s2), target).drawImage(
            nx=N, ny=N, wcs=wcs, method="no_pixel").array
        pixels = make_pixel_data([image], [np.full((N, N), 1e6)], [jac], [(25, 25)],
                                 [(op.target_sigma ** 2, 0, op.target_sigma ** 2)])
        direct[name] = {"g1": 0, "g2": 0}
        result = fit_gauss(pixels, [0, 0, 0, 0, 0.3, 1000.0])
        direct[name] = {"g1": result.pars[2], "g2": result.pars[3]}
    R_direct = response(direct)
    assert np.allclose(response(rows), R_direct, atol=2e-4)
    assert rows["noshear"]["g1"] == pytest.approx(direct["noshear"]["g1"], abs=2e-5)


def test_noiseless_sheared_galaxy_recovers_shear():
    """Round exponential, sheared, two epochs: R^-1 g equals the shear."""
    shear = np.array([0.02, -0.01])
    gal = galsim.Exponential(half_light_radius=0.5, flux=2000, gsparams=ACCURATE).shear(
        g1=shear[0], g2=shear[1])
    epochs = [
        raw_epoch(gal, galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.03, g2=0.0),
                  np.array([[0.187, 0.002], [-0.001, 0.186]]), 1e-3, offset=(0.2, -0.3)),
        raw_epoch(gal, galsim.Moffat(beta=3.0, fwhm=0.65).shear(g1=-0.01, g2=0.02),
                  np.array([[0.0, 0.188], [-0.187, 0.0]]), 1e-3, offset=(-0.4, 0.1),
                  name="e1"),
    ]
    rows = engine.measure_raw_object(epochs, 3, engine.sky_rng(2, 244.0, 0.001 * 3), NOISELESS)
    g = np.array([rows["noshear"]["g1"], rows["noshear"]["g2"]])
    estimate = np.linalg.solve(response(rows), g)
    assert np.allclose(estimate, shear, atol=1e-4)
    assert rows["noshear"]["n_epoch_model"] == 2


def test_results_do_not_depend_on_processing_order():
    rng = np.random.default_rng(11)
    jac = np.diag([0.187, 0.187])
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    objects = {oid: [raw_epoch(galsim.Exponential(half_light_radius=0.4, flux=800)
                               .shear(g1=0.1 * oid, g2=0.0), psf, jac, 1.0, rng)]
               for oid in (1, 2)}

    def run(order):
        return {oid: engine.measure_raw_object(objects[oid], oid,
                                               engine.sky_rng(5, 244.0, 0.001 * oid))
                for oid in order}

    forward, backward = run([1, 2]), run([2, 1])
    for oid in (1, 2):
        for name in BRANCHES:
            assert forward[oid][name]["g1"] == backward[oid][name]["g1"]
    assert forward[1]["noshear"]["g1"] != forward[2]["noshear"]["g1"]


def test_failures_are_flagged_not_dropped():
    rows = engine.measure_object([], 42, engine.sky_rng(1, 244.0, 0.001 * 42))
    for row in rows.values():
        assert row["id"] == 42
        assert fl.flags_to_names(row["flags"]) == ["NO_EPOCHS"]
        assert np.isnan(row["g1"])
    # An epoch crossing the chip edge (pixels exactly 0) is dropped.
    jac = np.diag([0.187, 0.187])
    raw = raw_epoch(galsim.Exponential(half_light_radius=0.4, flux=800),
                    galsim.Moffat(beta=3.5, fwhm=0.7), jac, 1.0, np.random.default_rng(1))
    raw.image[:, :10] = 0.0
    rows = engine.measure_raw_object([raw], 43, engine.sky_rng(1, 244.0, 0.001 * 43))
    assert rows["1p"]["flags"] & fl.NO_EPOCHS and rows["1p"]["id"] == 43
    tables = engine.rows_to_tables([rows])
    assert tables["noshear"]["flags"].dtype == np.int64


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan])
def test_psf_stamp_without_positive_sum_drops_its_epoch_with_a_flag(scale):
    """An epoch whose PSF stamp sums to <= 0 (or NaN) is dropped and flagged, the others are measured."""
    import warnings

    jac = np.diag([0.187, 0.187])
    gal = galsim.Exponential(half_light_radius=0.4, flux=800)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    good = raw_epoch(gal, psf, jac, 1.0, np.random.default_rng(1), name="e0")
    bad = raw_epoch(gal, psf, jac, 1.0, np.random.default_rng(2), name="e1")
    bad.psf_image = bad.psf_image * scale if np.isfinite(scale) else np.full_like(bad.psf_image, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flag, not a warning
        rows = engine.measure_raw_object([good, bad], 44, engine.sky_rng(1, 244.0, 0.044))
        alone = engine.measure_raw_object([bad], 45, engine.sky_rng(1, 244.0, 0.045))
    for row in rows.values():
        assert fl.flags_to_names(row["flags"]) == ["BAD_PSF_STAMP"]
        assert row["mcal_flags"] == fl.BAD_PSF_STAMP and row["n_epoch_model"] == 1
        assert np.isfinite(row["g1"])
    single = engine.measure_raw_object([good], 44, engine.sky_rng(1, 244.0, 0.044))
    assert rows["noshear"]["g1"] == single["noshear"]["g1"]
    for row in alone.values():
        assert fl.flags_to_names(row["flags"]) == ["NO_EPOCHS", "BAD_PSF_STAMP"]
    with pytest.raises(ValueError, match="positive sum"):
        engine.fit_psf_image(bad.psf_image, jac, 0.2)


def test_flags_to_names():
    value = fl.FIT_FAIL | fl.MOMENTS_FAIL | (1 << 20)
    assert fl.flags_to_names(value) == ["MOMENTS_FAIL", "FIT_FAIL", "BIT20"]
    assert fl.flags_to_names(0) == []
    with pytest.raises(ValueError):
        fl.flags_to_names(-1)


def test_assemble_epoch_follows_shapepipe_steps():
    rng = np.random.default_rng(2)
    image = rng.normal(100.0, 1.0, (N, N))
    raw = engine.RawEpoch(image=image, background=np.full((N, N), 100.0),
                          weight=np.full((N, N), 4.0), flag=np.zeros((N, N), dtype=int),
                          psf_image=np.ones((N, N)), jacobian=np.eye(2) * 0.187,
                          flux_scale=2.0, name="1234-5")
    out = engine.assemble_epoch(raw)
    assert np.allclose(out["image"], (image - 100.0) * 2.0)
    assert np.allclose(out["weight"], 1.0)
    # Tile pixels at -1e30, flipped for CCD 5 (upside down), are flagged: float64, the float32 of a
    # SExtractor VIGNET column, and that float32 read as float64 (TileObjects.vignet), where it is
    # -1.0000000150e30, not -1e30.
    for tile_dtype, as_float64 in ((np.float64, False), (np.float32, False), (np.float32, True)):
        tile = np.zeros((N, N), dtype=tile_dtype)
        tile[0, :] = -1e30
        tile[1, 3] = -1e30
        raw.tile_stamp, raw.ccd = (tile.astype(np.float64) if as_float64 else tile), 5
        out = engine.assemble_epoch(raw)
        assert np.all(out["flag"][-1, :] == 2 ** 10) and out["flag"][-2, -4] == 2 ** 10  # rotated by 180 degrees
        assert np.count_nonzero(out["flag"]) == N + 1
    # More than a third of the pixels flagged: dropped.
    raw.flag = np.zeros((N, N), dtype=int)
    raw.flag[: N // 2 + 1] = 1
    assert engine.assemble_epoch(raw) is None
    raw.flag = np.zeros((N, N + 1), dtype=int)
    with pytest.raises(ValueError, match="1234-5"):
        engine.assemble_epoch(raw)


def test_sky_rng_same_galaxy_same_stream():
    """+g and -g detections of one galaxy, centroids jittered, draw the same numbers.

    20,000 galaxies over 0.3 deg^2; the -g detection is moved by a Gaussian
    0.05 pixel (0.187 arcsec) per axis, 50 times the mean shift measured
    between +-0.02 shear on a simulated tile. Expected fraction changing cell:
    2 E|d| / cell = 2 sqrt(2/pi) 0.00935 / 1 = 1.49%; measured 1.5%.
    """
    rng = np.random.default_rng(12)
    n = 20000
    dec = rng.uniform(51.8, 52.3, n)
    ra = rng.uniform(244.0, 244.0 + 0.5 / np.cos(np.radians(52.0)), n)
    sigma_arcsec = 0.05 * 0.187
    dra = rng.normal(0.0, sigma_arcsec, n) / 3600 / np.cos(np.radians(dec))
    ddec = rng.normal(0.0, sigma_arcsec, n) / 3600
    same_cell = np.array([engine.sky_cell(a, d) == engine.sky_cell(a + da, d + dd)
                          for a, d, da, dd in zip(ra, dec, dra, ddec)])
    fraction = same_cell.mean()
    expected = 1.0 - 2.0 * np.sqrt(2.0 / np.pi) * sigma_arcsec / engine.RNG_CELL_ARCSEC
    assert abs(fraction - expected) < 4.0 * np.sqrt(expected * (1 - expected) / n)
    assert fraction > 0.98
    # The streams themselves: equal when the cell is kept, different otherwise.
    for k in range(500):
        a = engine.sky_rng(7, ra[k], dec[k]).normal(size=4)
        b = engine.sky_rng(7, ra[k] + dra[k], dec[k] + ddec[k]).normal(size=4)
        assert np.array_equal(a, b) == same_cell[k]
    # Another seed, or a galaxy 1.5 arcsec away, gives another stream.
    assert not np.array_equal(engine.sky_rng(8, ra[0], dec[0]).normal(size=4),
                              engine.sky_rng(7, ra[0], dec[0]).normal(size=4))
    assert not np.array_equal(engine.sky_rng(7, ra[0], dec[0] + 1.5 / 3600).normal(size=4),
                              engine.sky_rng(7, ra[0], dec[0]).normal(size=4))


def test_sky_cell_edges():
    # Square cells on the sky: the RA width grows as 1 / cos(Dec).
    ra_a, dec_a = engine.sky_cell(10.0, 60.0)
    assert engine.sky_cell(10.0 + 1.9 / 3600, 60.0)[0] - ra_a in (0, 1)
    assert engine.sky_cell(10.0 + 2.1 / 3600, 60.0)[0] - ra_a == 1
    assert engine.sky_cell(10.0, 60.0 + 1.0 / 3600)[1] == dec_a + 1
    # RA wraps; negative Dec and the poles give valid (non-negative) keys.
    assert engine.sky_cell(360.0 + 1e-7, -30.0) == engine.sky_cell(1e-7, -30.0)
    for dec in (-90.0, 90.0, -45.0):
        assert min(engine.sky_cell(123.0, dec)) >= 0
    ras, decs = engine.sky_cell(np.array([1.0, 2.0]), np.array([3.0, -3.0]))
    assert (ras[0], decs[0]) == engine.sky_cell(1.0, 3.0)
    with pytest.raises(ValueError, match="finite"):
        engine.sky_rng(1, np.nan, 0.0)


# ---------------------------------------------------------------- response
def test_shear_response_with_selection():
    rng = np.random.default_rng(4)
    n = 200000
    e = rng.normal(0, 0.2, (n, 2))
    R_true = np.array([[0.8, 0.02], [-0.01, 0.7]])
    shear = np.array([0.03, -0.02])
    tables = {}
    for name, (s1, s2) in BRANCHES.items():
        g = e + (R_true @ (shear + STEP * np.array([s1, s2])))
        tables[name] = {"g1": g[:, 0], "g2": g[:, 1], "mcal_flags": np.zeros(n, int),
                        "s2n": 20 + 100 * g[:, 0]}
    out = shear_response(tables)
    assert np.allclose(out["R"], R_true, atol=1e-10)
    assert np.allclose(out["R_sel"], 0)
    assert np.allclose(out["shear"], shear + np.linalg.solve(R_true, e.mean(axis=0)))
    # A cut on |g| (through a branch quantity): R alone leaves the shear
    # 4 times too small; R + R_sel recovers it.
    for table in tables.values():
        table["s2n"] = 20 + 100 * np.hypot(table["g1"], table["g2"])
    sel = shear_response(tables, select=lambda t: t["s2n"] < 40)
    naive = np.linalg.solve(sel["R"], sel["g_mean"])
    assert abs(naive[0] - shear[0]) > 0.02
    assert sel["R_sel"][0, 0] < -0.3 and sel["R_sel"][1, 1] < -0.3
    assert np.allclose(sel["shear"], shear, atol=6e-3)


# ---------------------------------------------------------------- shear bias
def test_bench_baseline_comparison_plumbing(tmp_path):
    """bench_metacal --baseline: one engine against itself gives equal m and shapes; a wrong directory is named."""
    bench = load_bench()
    out = bench.compare_engines(4, 4, engine)
    assert out["n_object_epochs"] > 0 and set(out["timing"]) == {"new", "baseline"}
    assert out["max_dg"] < 1e-7 and out["max_rel_err"] < 1e-6
    for name, (value, error) in out["diff"].items():
        assert abs(value) < 1e-6, name
    assert out["bias"]["new"]["m1"] == pytest.approx(out["bias"]["baseline"]["m1"], abs=1e-6)
    with pytest.raises(SystemExit, match="__init__.py"):
        bench.load_engine(tmp_path)


def test_shear_bias_small_simulation():
    """A few hundred objects in +g/-g and 90-degree pairs: m and c near 0.

    The full validation (40,000 objects, |m| < 2e-3) is
    benchmarks/bench_metacal.py; here the bound is loose but still catches a
    wrong response or sign (m would be ~0.1 or worse).
    """
    bias, timing, _ = load_bench().run(n_quads=50, seed=7)
    assert bias["n_failed"] == 0
    for key in ("m1", "m2"):
        assert abs(bias[key]) < max(0.04, 4 * bias[key + "_err"])
    for key in ("c1", "c2"):
        assert abs(bias[key]) < max(0.01, 4 * bias[key + "_err"])


def test_unresolved_blend_is_calibrated_only_when_lensing_moves_the_neighbour():
    """Two galaxies 1 arcsec apart measured as one object (bench_metacal --blend).

    Metacal shears the whole stamp, separation included. When the applied
    shear moves the neighbour too (as lensing does), the blend is one sheared
    image and m is ~0 (1,500 quadruples: +0.0005 +- 0.0016); when each galaxy
    is sheared about its own centre and their separation is not (a
    simulation that shears shapes only), the separation's share of the
    blend's shape does not respond and m ~ -0.4 (-0.395 +- 0.003).
    """
    bench = load_bench()
    lensed, _, _ = bench.run(n_quads=30, seed=5, noise_sigma=0.2, shear=0.05, blend=(1.0, True))
    fixed, _, _ = bench.run(n_quads=30, seed=5, noise_sigma=0.2, shear=0.05, blend=(1.0, False))
    for key in ("m1", "m2"):
        assert abs(lensed[key]) < max(0.03, 4 * lensed[key + "_err"]), (key, lensed[key])
        assert -0.6 < fixed[key] < -0.2, (key, fixed[key])


# ---------------------------------------------------------------- errors
def test_noshear_adjoint_is_the_transpose():
    jac = np.array([[0.18, 0.03], [-0.02, 0.19]])
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.05, g2=0.03).shift(0.02, 0.01)
    op = EpochMetacal(psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array, jac, (N, N))
    rng = np.random.default_rng(1)
    x, v = rng.normal(size=(2, N, N))
    forward = op.make_images(x, branches=["noshear"])["noshear"]
    assert np.sum(forward * v) == pytest.approx(np.sum(x * op.noshear_adjoint(v)), rel=1e-10)
    stack = op.noshear_adjoint(np.stack([v, 2 * v]))
    np.testing.assert_allclose(stack[1], 2 * stack[0])


def test_model_derivatives_and_full_hessian():
    from shapepipe_modules.ngmix.gauss_fit import cost_hessian, model_derivatives

    rng = np.random.default_rng(2)
    jacs = [np.array([[0.187, 0.01], [-0.005, 0.185]]), np.array([[0.0, 0.186], [-0.188, 0.0]])]
    images = [rng.normal(size=(N, N)) for _ in jacs]
    pixels = make_pixel_data(images, [np.full((N, N), 0.5)] * 2, jacs, [(25.2, 24.7), (25.0, 25.0)],
                             [(0.08, 0.005, 0.09), (0.1, 0.0, 0.1)], radius=15)
    pars = np.array([0.02, -0.03, 0.2, -0.1, 0.3, 500.0])
    derivs = model_derivatives(pars, pixels)

    def model(p):
        hess, grad = np.empty((6, 6)), np.empty(6)
        # chi2 of data 0 with unit weights is sum(model^2): differentiate the model itself instead.
        out = np.empty(pixels.n_pixels)
        for i in range(pixels.n_pixels):
            sub = type(pixels)(du=pixels.du[i:i + 1], dv=pixels.dv[i:i + 1], data=np.zeros(1),
                               weight=np.ones(1), epoch=pixels.epoch[i:i + 1], psf_cov=pixels.psf_cov,
                               area=pixels.area)
            out[i] = np.sqrt(_normal_equations(p, sub.du, sub.dv, sub.data, sub.weight, sub.epoch,
                                               sub.psf_cov, sub.area, hess, grad, False))
        return out

    picks = rng.choice(pixels.n_pixels, 40, replace=False)
    for k, step in enumerate([1e-5, 1e-5, 1e-6, 1e-6, 1e-6, 1e-3]):
        up, down = pars.copy(), pars.copy()
        up[k] += step
        down[k] -= step
        numeric = (model(up) - model(down)) / (2 * step)
        np.testing.assert_allclose(derivs[picks, k], numeric[picks], rtol=1e-4, atol=1e-6 * np.abs(numeric).max())
    # Data equal to the model: the full Hessian is the Gauss-Newton one, sum w D D^T.
    exact = pixels.with_images([np.zeros((N, N))] * 2)
    exact.data = model(pars)
    gn = derivs.T @ (pixels.weight[:, None] * derivs)
    errors = np.sqrt(np.diag(np.linalg.inv(gn)))
    norm = np.outer(errors, errors)  # compared in units of the errors: one-sided steps of 1e-3 of them
    np.testing.assert_allclose(cost_hessian(pars, exact, scale=errors) * norm, gn * norm, atol=2e-3)
    # With residuals (model mismatch) the full Hessian differs from it.
    assert np.abs((cost_hessian(pars, pixels, scale=errors) - gn) * norm).max() > 0.05


def test_reported_ellipticity_errors_match_the_scatter():
    """One exponential galaxy, 2 epochs, S/N ~ 40, over 60 noise realisations (and object streams)."""
    bench = load_bench()
    rng = np.random.default_rng(3)
    clean, _ = bench.simulate_galaxy(rng)
    while len(clean) != 2:
        clean, _ = bench.simulate_galaxy(rng)
    sigma = 2.5
    config = engine.EngineConfig(prior=ShapePipePrior(cen_sigma=0.187))
    g, err, s2n = [], [], []
    for k in range(60):
        row = engine.measure_raw_object(bench.noisy_epochs(clean, sigma, rng), 1, engine.sky_rng(4, 10.0, 0.01 * k),
                                        config)["noshear"]
        assert row["mcal_flags"] == 0
        g.append((row["g1"], row["g2"]))
        err.append((row["g1_err"], row["g2_err"]))
        s2n.append(row["s2n"])
    scatter = np.std(g, axis=0, ddof=1)
    ratio = np.median(err, axis=0) / scatter
    # Scatter known to 9% per component (60 realisations); before the fix the ratio was 0.4.
    assert 20 < np.median(s2n) < 80
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio
    assert 0.85 < np.sqrt(np.prod(ratio)) < 1.2, ratio


# ---------------------------------------------------------------- calibration checks on stamps
def test_stars_have_no_shear_response():
    """PSF-only stamps (point sources, S/N ~ 170): the metacal response is consistent with zero.

    Galaxies of the same simulation have R11 = R22 = 0.93; the per-star
    response scatters by about 1 (the shape of a point source is undefined),
    so 200 stars give the mean to about +-0.1.
    """
    bench = load_bench()
    tables, _, _, _, _ = bench.measure_quads(100, 4, star=True, minus=False)  # -g would be the same stars
    ok = (tables["noshear"]["mcal_flags"] & fl.FATAL) == 0
    assert ok.sum() >= 190
    for i, j in ((1, 1), (2, 2), (1, 2), (2, 1)):
        r = (tables[f"{j}p"][f"g{i}"] - tables[f"{j}m"][f"g{i}"])[ok] / (2 * STEP)
        error = r.std(ddof=1) / np.sqrt(r.size)
        assert error < 0.15, (i, j, error)
        assert abs(r.mean()) < 3.0 * error, (i, j, r.mean(), error)


def test_weighted_and_unweighted_shear_bias_agree():
    """S/N ~ 20 galaxies in +g/-g pairs: m with inverse-variance weights (shape noise plus each
    branch's own shape error, the weights' response in R_sel) equals the unweighted m."""
    from shapepipe_modules.ngmix.response import shape_weight

    bench = load_bench()
    plus, minus, shears, groups, _ = bench.measure_quads(50, 5, noise_sigma=5.0)
    ok = ((plus["noshear"]["mcal_flags"] | minus["noshear"]["mcal_flags"]) & fl.FATAL) == 0
    weights = shape_weight(plus["noshear"])
    assert weights.max() / weights.min() > 1.5  # the weights do vary

    def both(keep):
        unweighted = bench.paired_shear_bias(plus, minus, shears, None, keep & ok)
        weighted = bench.paired_shear_bias(plus, minus, shears, shape_weight, keep & ok)
        return np.concatenate([unweighted, weighted - unweighted])

    values, errors = bench._jackknife(both, groups)
    assert np.all(np.abs(values[:2]) < np.maximum(0.05, 3 * errors[:2])), (values, errors)
    assert np.all(np.abs(values[4:]) < 3 * errors[4:] + 1e-4), (values[4:], errors[4:])


def test_rotated_sheared_pixels_calibrate_like_square_ones():
    """The same galaxies, PSFs and noise on a diagonal square pixel grid and on a grid rotated by
    35 degrees with non-square, sheared pixels (Jacobian 0.187 R(35) [[1.1, 0.15], [0.05, 0.92]]):
    m and c agree within their errors (a frame error would rotate the shear: m ~ -0.7)."""
    bench = load_bench()
    angle = np.radians(35.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    skew = 0.187 * rotation @ np.array([[1.1, 0.15], [0.05, 0.92]])
    square = bench.measure_quads(50, 5, jacobian=np.diag([0.187, 0.187]))
    sheared = bench.measure_quads(50, 5, jacobian=skew)
    shears, groups = square[2], square[3]

    def both(keep):
        a = bench.paired_shear_bias(square[0], square[1], shears, None, keep)
        b = bench.paired_shear_bias(sheared[0], sheared[1], shears, None, keep)
        return np.concatenate([a, b, b - a])

    values, errors = bench._jackknife(both, groups)
    assert np.all(errors[8:] < 0.04)
    assert np.all(np.abs(values[8:]) < 3 * errors[8:]), (values[8:], errors[8:])
    assert np.all(np.abs(values[4:6]) < np.maximum(0.03, 3 * errors[4:6])), (values[4:6], errors[4:6])


@pytest.mark.parametrize("column", [20, 29])
def test_masked_column_filled_with_the_model_keeps_a_round_galaxy_round(column):
    """A masked column beside a round galaxy: noise fill makes it look elongated, the model fill does not.

    The noise is tiny, so the noshear shape of the unmasked galaxy is 0; with
    the column masked, whatever the fill puts there enters the metacal images
    (deconvolution and reconvolution spread it) although the fit itself
    gives those pixels no weight.
    """
    jac = np.diag([0.187, 0.187])
    gal = galsim.Exponential(half_light_radius=0.5, flux=1000)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    g1 = {}
    for fill in engine.MASK_FILLS:
        raw = raw_epoch(gal, psf, jac, 1e-3, rng=np.random.default_rng(3))
        raw.flag[:, column] = 1
        config = engine.EngineConfig(fix_noise=False, mask_fill=fill)
        rows = engine.measure_raw_object([raw], 7, engine.sky_rng(1, 244.0, 0.007), config)
        assert rows["noshear"]["flags"] == 0
        g1[fill] = rows["noshear"]["g1"]
    # Measured: noise fill |g1| ~ 1e-2 (a vertical hole reads as an e1 < 0
    # elongation after reconvolution), model fill ~ 1e-3.
    assert abs(g1["noise"]) > 3e-3
    assert abs(g1["model"]) < 0.25 * abs(g1["noise"])


def test_mask_fill_values():
    """Masked pixels: the moments' Gaussian plus noise (model), noise only (noise); others untouched."""
    jac = np.diag([0.187, 0.187])
    gal = galsim.Gaussian(half_light_radius=0.6, flux=1000)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    raw = raw_epoch(gal, psf, jac, 1.0, rng=np.random.default_rng(5))
    clean = raw_epoch(gal, psf, jac, 1.0).image - 50.0
    raw.flag[:, 27] = 1
    assembled = engine.assemble_epoch(raw)
    psf_fit = engine.fit_psf_image(raw.psf_image, jac, 0.3)
    filled = {}
    for fill in engine.MASK_FILLS:
        epoch, reason = engine.epoch_from_pixels(assembled, psf_fit, np.random.default_rng(9), fill)
        assert reason == ""
        filled[fill] = epoch.image
        usable = ~epoch.mask
        assert np.array_equal(epoch.image[usable], assembled["image"][usable])
        assert np.all(epoch.weight[epoch.mask] == 0)
    column = (slice(None), 27)
    # The same noise in both: their difference is the model alone, close to the true profile.
    model = filled["model"][column] - filled["noise"][column]
    truth = clean[column]
    assert np.abs(model - truth).max() < 0.1 * truth.max()
    assert abs(model.sum() - truth.sum()) < 0.05 * truth.sum()
    with pytest.raises(ValueError, match="mask_fill"):
        engine.epoch_from_pixels(assembled, psf_fit, np.random.default_rng(9), "zero")


# ------------------------------------------------- fast paths against slow references
def _two_epoch_fit():
    """A noisy galaxy in two epochs, its metacal operators, noshear fit and pixels."""
    rng = np.random.default_rng(11)
    gal = galsim.Exponential(half_light_radius=0.5, flux=900.0).shear(g1=0.2, g2=-0.1)
    jacs = [np.array([[0.187, 0.004], [-0.003, 0.186]]), np.array([[0.0, 0.188], [-0.186, 0.002]])]
    psfs = [galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.02, g2=0.01), galsim.Moffat(beta=3.5, fwhm=0.65)]
    raws = [raw_epoch(gal, psf, jac, 1.0, rng, name=f"e{k}") for k, (psf, jac) in enumerate(zip(psfs, jacs))]
    epochs = [engine.prepare_epoch(engine.assemble_epoch(raw), rng)[0] for raw in raws]
    ops = [EpochMetacal(ep.psf_image, ep.jacobian, ep.image.shape) for ep in epochs]
    images = [op.make_images(ep.image, rng.normal(0.0, ep.noise_sigma, ep.image.shape)) for op, ep in zip(ops, epochs)]
    covs = [(op.target_sigma ** 2, 0.0, op.target_sigma ** 2) for op in ops]
    pixels = make_pixel_data([im["noshear"] for im in images], [0.5 * ep.weight for ep in epochs],
                             [ep.jacobian for ep in epochs], [ep.centre for ep in epochs], covs, radius=14)
    guess, _ = engine._initial_guess(epochs, ops)
    prior = ShapePipePrior(cen_sigma=0.187)
    fits = {"noshear": fit_gauss(pixels, guess, prior=prior)}
    pixel_sets = {"noshear": pixels}
    for name in ("1p", "2m"):
        pixel_sets[name] = pixels.with_images([im[name] for im in images])
        fits[name] = fit_gauss(pixel_sets[name], guess, prior=prior)
    assert all(f.status == FIT_OK for f in fits.values())
    return epochs, ops, fits, pixel_sets, prior


def test_fast_error_terms_match_slow_references():
    """Numba derivatives, batched Gram matrices and batched covariances against direct computations."""
    from scipy import fft as sfft

    from shapepipe_modules.ngmix.gauss_fit import model_derivatives, weighted_model_derivatives

    epochs, ops, fits, pixel_sets, prior = _two_epoch_fit()
    pixels, fit = pixel_sets["noshear"], fits["noshear"]
    slow = (model_derivatives(fit.pars, pixels) * pixels.weight[:, None]).T
    fast = weighted_model_derivatives(fit.pars, pixels)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-14 * np.abs(slow).max())
    # Gram matrices of several stacks at once against rfft2 of each padded stack (Parseval, Fourier-space weights).
    op = ops[0]
    rows, cols = pixels.pixel_index[0]
    rng = np.random.default_rng(5)
    values = rng.normal(size=(3, 6, rows.size))
    batched = op.noshear_grams(values, (rows, cols), rotated_noise=True)
    size = op.out_size
    for rotated in (True, False):
        power = op._noise_power(rotated)
        for b in range(3):
            padded = np.zeros((6, size, size))
            padded[:, (rows - op.centre[0]) % size, (cols - op.centre[1]) % size] = values[b]
            spectra = sfft.rfft2(padded, axes=(1, 2)).reshape(6, -1)
            reference = np.real((spectra * power.ravel()) @ spectra.conj().T)
            got = batched[b] if rotated else op.noshear_grams(values[b:b + 1], (rows, cols), rotated_noise=False)[0]
            # Single-precision transforms (metacal.EpochMetacal.noshear_grams): ~1e-6 relative.
            np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max())
    # Covariances of the branches in one call equal those computed one by one.
    names = list(fits)
    sigmas = [ep.noise_sigma for ep in epochs]
    together = engine.metacal_covariances([fits[n] for n in names], [pixel_sets[n] for n in names], ops, sigmas,
                                          True, prior)
    for name, cov in zip(names, together):
        h_inv = np.linalg.inv(engine.cost_hessian(fits[name].pars, pixel_sets[name], prior, scale=fits[name].errors))
        derivs = model_derivatives(fits[name].pars, pixel_sets[name]) * pixel_sets[name].weight[:, None]
        middle, start = np.zeros((6, 6)), 0
        for o, (r, c), sigma in zip(ops, pixel_sets[name].pixel_index, sigmas):
            middle += sigma ** 2 * o.noshear_gram(derivs[start:start + r.size].T, True, pixels=(r, c))
            start += r.size
        np.testing.assert_allclose(cov, h_inv @ middle @ h_inv.T, rtol=1e-9, atol=1e-14)
    assert not np.allclose(together[0], together[1], rtol=1e-3)  # the branches do differ


def test_fixed_hessian_steps_reach_the_same_minimum_in_fewer_steps():
    """Sheared fits steered by the noshear solution's full Hessian (the engine's way) against Gauss-Newton steps."""
    from shapepipe_modules.ngmix.gauss_fit import cost_hessian

    epochs, ops, fits, pixel_sets, prior = _two_epoch_fit()
    start = fits["noshear"].pars
    fixed = cost_hessian(start, pixel_sets["noshear"], prior)
    for name in ("1p", "2m"):
        pixels = pixel_sets[name]
        gauss_newton = fit_gauss(pixels, start, prior=prior)
        steered = fit_gauss(pixels, start, prior=prior, hessian=fixed)
        assert gauss_newton.status == FIT_OK and steered.status == FIT_OK
        assert steered.niter < gauss_newton.niter
        errors = np.sqrt(np.diag(np.linalg.inv(cost_hessian(gauss_newton.pars, pixels, prior))))
        # Both stop within 1e-6 errors of the minimum (d^T H d < 1e-12).
        assert np.all(np.abs(steered.pars - gauss_newton.pars) < 2e-6 * errors)
        # The independent numpy cost has its minimum there: no step of 1e-3 errors lowers it.
        cost = _cost(pixels, steered.pars, prior)
        for a in range(6):
            for sign in (-1, 1):
                moved = steered.pars.copy()
                moved[a] += sign * 1e-3 * errors[a]
                assert _cost(pixels, moved, prior) > cost
        # The returned covariance is still the Gauss-Newton one of the solution.
        np.testing.assert_allclose(steered.cov, gauss_newton.cov, rtol=1e-4)


def _flat_valley_pixels(flatness=0.99):
    """Pixels whose cost has its minimum at a known point where Gauss-Newton steps converge at ``flatness`` per step.

    The data are the model at ``true`` plus an image orthogonal (in the
    weighted sense) to every first derivative of the model there, so
    ``true`` stays a stationary point of the cost, scaled so that the
    residuals' curvature cancels ``flatness`` of the Gauss-Newton Hessian
    along one direction: the full Hessian stays positive definite (a
    minimum) but nearly flat, the case of faint, barely resolved galaxies on
    real metacal images (a demo galaxy's fit needed 281 iterations, at a
    rate of 0.97 per step).
    """
    from shapepipe_modules.ngmix.gauss_fit import cost_hessian, model_derivatives

    n = 31
    jac = np.array([[0.187, 0.0], [0.0, 0.187]])
    psf = (0.133, 0.0, 0.133)
    true = np.array([0.01, -0.02, 0.1, -0.05, 0.05, 400.0])

    def pixels_of(data):
        return make_pixel_data([data.reshape(n, n)], [np.full((n, n), 1 / 64.0)], [jac], [(n // 2, n // 2)], [psf])

    blank = pixels_of(np.zeros(n * n))
    derivs = model_derivatives(true, blank)
    weight = blank.weight
    model = true[5] * derivs[:, 5]
    step = np.array([0, 0, 0, 0, 1e-4, 0])
    second = (model_derivatives(true + step, blank)[:, 4] - model_derivatives(true - step, blank)[:, 4]) / 2e-4
    weighted = derivs * weight[:, None]
    gauss_newton = derivs.T @ weighted
    perp = second - derivs @ np.linalg.solve(gauss_newton, weighted.T @ second)
    # The full Hessian is linear in the added image's amplitude: gauss_newton - amplitude * curvature.
    curvature = gauss_newton - cost_hessian(true, pixels_of(model + perp))
    amplitude = flatness / np.linalg.eigvals(np.linalg.solve(gauss_newton, curvature)).real.max()
    return pixels_of(model + amplitude * perp), true


def test_fits_in_a_flat_valley_converge_with_full_hessian_steps():
    """A fit that ran to the 200-iteration limit with Gauss-Newton steps converges to the true minimum
    (issue 22), where scipy's MINPACK least squares on an independent numpy model also ends."""
    from scipy import optimize

    from shapepipe_modules.ngmix.gauss_fit import FIT_NOT_CONVERGED, cost_hessian, model_derivatives

    pixels, true = _flat_valley_pixels()
    full = cost_hessian(true, pixels)
    assert np.all(np.linalg.eigvalsh(full) > 0)  # a minimum
    errors = np.sqrt(np.diag(np.linalg.inv(full)))
    guess = true * [1, 1, 1, 1, 1.5, 0.9] + [0.02, 0.01, 0.03, 0.02, 0.0, 0.0]
    # Gauss-Newton steps only (the fitter before): still far from converged at the limit.
    assert fit_gauss(pixels, guess, rescue_after=10 ** 9).status == FIT_NOT_CONVERGED
    result = fit_gauss(pixels, guess)
    assert result.status == FIT_OK and result.niter < 60
    assert np.all(np.abs(result.pars - true) < 1e-6 * errors)

    def residuals(pars):
        return np.sqrt(pixels.weight) * (pars[5] * model_derivatives(pars, pixels)[:, 5] - pixels.data)

    reference = optimize.least_squares(residuals, guess, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                                       max_nfev=20000)
    assert np.all(np.abs(reference.x - true) < 1e-3 * errors)
    assert np.all(np.abs(result.pars - reference.x) < 1e-3 * errors)
    assert 0.5 * np.sum(residuals(result.pars) ** 2) <= 0.5 * np.sum(residuals(reference.x) ** 2) + 1e-9


def test_normal_equations_skip_only_negligible_pixels():
    """Chi^2, gradient and Hessian of a PSF-stamp fit (far pixels skipped) against numpy on every pixel."""
    from shapepipe_modules.ngmix.gauss_fit import model_derivatives

    jac = np.array([[0.187, 0.01], [-0.005, 0.185]])
    psf = galsim.Moffat(beta=3.5, fwhm=0.7).shear(g1=0.03, g2=-0.02)
    image = psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array
    pixels = make_pixel_data([image], [np.ones_like(image)], [jac], [(N // 2, N // 2)], [(0.0, 0.0, 0.0)])
    pars = np.array([0.003, -0.002, 0.02, -0.01, 0.2, 0.98])
    hess, grad = np.empty((6, 6)), np.empty(6)
    chi2 = _normal_equations(pars, pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch,
                             pixels.psf_cov, pixels.area, hess, grad, False)
    derivs = model_derivatives(pars, pixels)
    model = pars[5] * derivs[:, 5]
    resid = model - pixels.data
    assert chi2 == pytest.approx(np.sum(resid ** 2), rel=1e-13)
    np.testing.assert_allclose(grad, derivs.T @ resid, rtol=1e-11, atol=1e-13 * np.abs(derivs.T @ resid).max())
    np.testing.assert_allclose(hess, derivs.T @ derivs, rtol=1e-11, atol=1e-13 * np.abs(hess).max())
    # Most of the stamp is beyond the cut, so the test exercises it.
    x = pixels.du - pars[0]
    y = pixels.dv - pars[1]
    assert np.mean((x * x + y * y) / (0.5 * pars[4]) > 80) > 0.5


def test_make_pixel_data_against_numpy_selection():
    """Pixels of two epochs (masked pixels, an aperture) against a numpy selection of the same pixels."""
    rng = np.random.default_rng(12)
    images = [rng.normal(size=(N, N)), rng.normal(size=(31, 29))]
    weights = [np.full((N, N), 2.0), np.full((31, 29), 0.5)]
    weights[0][rng.random((N, N)) < 0.1] = 0.0
    weights[1][:, 3] = 0.0
    jacs = [np.array([[0.187, 0.01], [-0.02, 0.19]]), np.array([[0.0, 0.186], [-0.188, 0.001]])]
    centres = [(25.3, 24.6), (15.0, 13.8)]
    for radius in (None, 9.5):
        pixels = make_pixel_data(images, weights, jacs, centres, [(0.1, 0.0, 0.1), (0.2, 0.01, 0.2)], radius=radius)
        start = 0
        for k, (image, weight, jac, (cy, cx)) in enumerate(zip(images, weights, jacs, centres)):
            yy, xx = np.mgrid[0:weight.shape[0], 0:weight.shape[1]]
            usable = weight > 0
            if radius is not None:
                usable &= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
            rows, cols = np.nonzero(usable)
            n = rows.size
            sl = slice(start, start + n)
            start += n
            np.testing.assert_array_equal(pixels.pixel_index[k][0], rows)
            np.testing.assert_array_equal(pixels.pixel_index[k][1], cols)
            np.testing.assert_array_equal(pixels.du[sl], jac[0, 0] * (cols - cx) + jac[0, 1] * (rows - cy))
            np.testing.assert_array_equal(pixels.dv[sl], jac[1, 0] * (cols - cx) + jac[1, 1] * (rows - cy))
            np.testing.assert_array_equal(pixels.data[sl], image[rows, cols])
            np.testing.assert_array_equal(pixels.weight[sl], weight[rows, cols])
            assert np.all(pixels.epoch[sl] == k)
            assert pixels.area[k] == pytest.approx(abs(np.linalg.det(jac)), rel=1e-15)
        assert start == pixels.n_pixels


def test_exact_cost_hessian_equals_central_differences():
    """The analytic full Hessian (two epochs, priors) against central differences of the analytic gradient."""
    from shapepipe_modules.ngmix.gauss_fit import _cost_grad_nb, _cost_nb, cost_hessian

    epochs, ops, fits, pixel_sets, prior = _two_epoch_fit()
    prior_pars = np.array([prior.cen_sigma, prior.g_sigma, *prior.T_bounds, *prior.flux_bounds], dtype=float)
    for name in ("noshear", "2m"):
        pixels, fit = pixel_sets[name], fits[name]
        args = (pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch, pixels.psf_cov, pixels.area)
        norm = np.outer(fit.errors, fit.errors)
        for pars in (fit.pars, fit.pars * np.array([1.0, 1.0, 1.3, 0.7, 1.2, 0.9]) + np.array([0.02, -0.01, 0, 0, 0, 0])):
            exact = cost_hessian(pars, pixels, prior)
            central = np.empty((6, 6))
            for j in range(6):
                step = 1e-4 * fit.errors[j]
                grads = []
                for sign in (1.0, -1.0):
                    point = pars.copy()
                    point[j] += sign * step
                    grad = np.empty(6)
                    _cost_grad_nb(point, *args, True, prior_pars, np.empty((6, 6)), grad)
                    grads.append(grad)
                central[:, j] = (grads[0] - grads[1]) / (2 * step)
            np.testing.assert_allclose(exact * norm, 0.5 * (central + central.T) * norm, atol=1e-8)
            assert np.array_equal(exact, exact.T)
            # The residual term is there: the Gauss-Newton Hessian differs.
            gauss_newton = np.empty((6, 6))
            _cost_nb(pars, *args, True, prior_pars, gauss_newton, np.empty(6))
            assert np.abs((exact - gauss_newton) * norm).max() > 1e-3
            # Forward differences (the former method) agree to their own ~1e-3.
            forward = cost_hessian(pars, pixels, prior, scale=fit.errors, method="fd")
            np.testing.assert_allclose(forward * norm, exact * norm, atol=2e-3)
    with pytest.raises(ValueError, match="method"):
        cost_hessian(fits["noshear"].pars, pixel_sets["noshear"], prior, method="central")


def test_gradient_only_sums_equal_the_full_sums():
    """The gradient-only pass (finite-difference Hessian) returns the chi^2 and gradient of the full pass."""
    from shapepipe_modules.ngmix.gauss_fit import _pixel_sums

    epochs, ops, fits, pixel_sets, prior = _two_epoch_fit()
    pixels = pixel_sets["1p"]
    pars = fits["1p"].pars * np.array([1.0, 1.0, 1.02, 0.97, 1.01, 0.99]) + np.array([0.01, -0.02, 0, 0, 0, 0])
    args = (pars, pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch, pixels.psf_cov, pixels.area)
    hess, grad = np.empty((6, 6)), np.empty(6)
    chi2 = _normal_equations(*args, hess, grad, False)
    untouched, grad_only = np.full((6, 6), 7.0), np.empty(6)
    chi2_only = _pixel_sums(*args, untouched, grad_only, False, False)
    assert chi2_only == pytest.approx(chi2, rel=1e-13)
    np.testing.assert_allclose(grad_only, grad, rtol=1e-12, atol=1e-12 * np.abs(grad).max())
    assert np.all(untouched == 7.0)
    assert np.abs(grad).min() > 0  # away from the minimum: a real gradient


def test_gaussian_target_fit_shortcut_equals_the_fit():
    """The parameters given for a Gaussian reconvolution PSF are those the fitter finds on its image."""
    jac = np.array([[0.186, 0.012], [-0.008, 0.189]])
    psf = galsim.Moffat(beta=3.5, fwhm=0.75).shear(g1=0.03, g2=0.02)
    image = psf.drawImage(nx=N, ny=N, wcs=galsim.JacobianWCS(*jac.ravel())).array
    for rule in ("gauss_nopix", "gauss_pix"):
        op = EpochMetacal(image, jac, (N, N), target_rule=rule)
        given = engine.fit_target_psf(op)
        fitted = engine.fit_psf_image(op.target_psf_image(), jac, 1.1 * 2 * op.target_sigma ** 2)
        assert given.status == fitted.status == FIT_OK
        np.testing.assert_allclose(given.pars, fitted.pars, rtol=1e-9, atol=1e-10)


def _resample_reference(spectra, offset_y, offset_x, pos_y, pos_x, target):
    """Quintic interpolation with GalSim's kernel values, one sample at a time."""
    quintic = galsim.Quintic()
    out = []
    for py, px, t in zip(pos_y, pos_x, target):
        rows = np.floor(py) + np.arange(-2, 4)
        cols = np.floor(px) + np.arange(-2, 4)
        wy = np.array([quintic.xval(py - r) for r in rows])
        wx = np.array([quintic.xval(px - c) for c in cols])
        taps = spectra[(rows + offset_y).astype(int)][:, (cols + offset_x).astype(int)]
        values = np.einsum("a,b,abs->s", wy, wx, taps)
        out.append(t * values[1:] / values[0])
    return np.array(out).T


def test_resample_image_pair_path_equals_general_path():
    """Both numba paths (two images, any number) against a GalSim-kernel reference."""
    from shapepipe_modules.ngmix.metacal import _resample

    rng = np.random.default_rng(8)
    spectra = rng.normal(size=(30, 20, 3)) + 1j * rng.normal(size=(30, 20, 3))
    pos_y = rng.uniform(-10.0, 10.0, 50)
    pos_x = rng.uniform(-5.0, 8.0, 50)
    target = rng.uniform(0.0, 1.0, 50)
    pair = np.empty((2, 50), dtype=complex)
    _resample(spectra.view(np.float64), 15, 6, pos_y, pos_x, target, pair)
    # Three images (the third a copy of the second) take the general loop.
    general = np.empty((3, 50), dtype=complex)
    three = np.ascontiguousarray(np.concatenate([spectra, spectra[:, :, 2:]], axis=2))
    _resample(three.view(np.float64), 15, 6, pos_y, pos_x, target, general)
    np.testing.assert_allclose(pair, general[:2], rtol=1e-12)
    np.testing.assert_allclose(general[2], general[1], rtol=1e-12)
    np.testing.assert_allclose(pair, _resample_reference(spectra, 15, 6, pos_y, pos_x, target), rtol=1e-11)


def test_warm_up_measures_its_round_galaxy_as_round():
    rows = engine.warm_up()
    noshear = rows["noshear"]
    assert noshear["flags"] == 0
    assert abs(noshear["g1"]) < 5 * noshear["g1_err"] and abs(noshear["g2"]) < 5 * noshear["g2_err"]
    assert noshear["g1_err"] < 0.02
    # The sheared branches respond to the applied shear as a resolved galaxy should.
    R11 = (rows["1p"]["g1"] - rows["1m"]["g1"]) / (2 * STEP)
    assert 0.9 < R11 < 1.05  # a deconvolved Gaussian fit of a Gaussian galaxy: R = 1 - O(e^2)


def test_epoch_local_sky_removes_an_offset_left_by_the_background_stamp():
    # A galaxy on a residual sky of 7 ADU plus a gradient that the background stamp missed: the border
    # median takes the level at the stamp's centre (the gradient is odd about it); pixels of zero
    # weight (a masked neighbour) and flagged pixels in the border are not used.
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    galaxy = 500.0 * np.exp(-0.5 * (xx**2 + yy**2) / 2.0**2)
    noise = rng.normal(0.0, 1.0, (N, N))
    image = 100.0 + 7.0 + 0.3 * xx + galaxy + noise
    weight = np.ones((N, N))
    weight[:3, :6] = 0.0
    image[:3, :6] = 1e4  # a neighbour's light under its zero weight
    flag = np.zeros((N, N), dtype=int)
    flag[-2:, -5:] = 4
    image[-2:, -5:] = -1e4
    raw = engine.RawEpoch(image=image, background=np.full((N, N), 100.0), weight=weight, flag=flag,
                          psf_image=np.ones((N, N)), jacobian=np.eye(2) * 0.187, name="1-2")
    border = np.ones((N, N), bool)
    border[4:-4, 4:-4] = False
    usable = border & (weight > 0) & (flag == 0)
    expected = np.median((image - 100.0)[usable])  # independent of the function: the plain definition
    assert abs(expected - 7.0) < 0.5
    out = engine.assemble_epoch(raw, local_sky_width=4)
    assert np.allclose(out["image"], image - 100.0 - expected)
    assert np.allclose(engine.assemble_epoch(raw)["image"], image - 100.0)  # off by default
    # Too few usable border pixels: nothing subtracted.
    raw.weight = np.zeros((N, N))
    raw.weight[N // 2, N // 2] = 1.0
    assert np.allclose(engine.assemble_epoch(raw, local_sky_width=4)["image"], image - 100.0)


def test_epoch_local_sky_width_is_checked_before_any_job():
    from shapepipe_modules.ngmix.runner import validate

    assert validate({"EPOCH_LOCAL_SKY_WIDTH": 4}) == []
    assert validate({"EPOCH_LOCAL_SKY_WIDTH": -1}) == ["EPOCH_LOCAL_SKY_WIDTH must be >= 0, got -1"]
