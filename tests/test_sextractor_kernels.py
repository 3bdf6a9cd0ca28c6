"""The sep engine's compiled per-object kernels against independent computations."""

import numpy as np
import pytest
import sep

from shapepipe_modules.sextractor import kernels


@pytest.fixture(scope="module")
def gaussians():
    """Isolated circular Gaussians of known sigma on a noiseless image."""
    rng = np.random.default_rng(11)
    size = 400
    yy, xx = np.mgrid[:size, :size]
    centres = np.array([(x, y) for y in range(40, size - 30, 60) for x in range(40, size - 30, 60)], float)
    centres += rng.uniform(-0.5, 0.5, centres.shape)
    sigmas = rng.uniform(1.2, 3.0, len(centres))
    image = np.zeros((size, size), np.float32)
    for (x0, y0), sigma in zip(centres, sigmas):
        image += (1000.0 / (2 * np.pi * sigma**2)
                  * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))).astype(np.float32)
    return image, centres, sigmas


def test_flux_radius_matches_sep_and_the_gaussian_half_light_radius(gaussians):
    image, centres, sigmas = gaussians
    bad = np.zeros(image.shape, bool)
    x, y = centres[:, 0], centres[:, 1]
    a = sigmas.copy()
    flux = np.full(len(x), 1000.0)
    fractions = np.array([0.25, 0.5, 0.8])
    radii, half_light = kernels.flux_radius(image, bad, x, y, a, fractions, flux, 0.0)
    # sep's flux_radius follows the same growth-curve definition (6 A, 64 bins, 5x5 sub-pixels).
    reference, _ = sep.flux_radius(image, x, y, kernels.KRON_NSIG * a, fractions, normflux=flux, subpix=5)
    assert np.max(np.abs(radii / reference - 1)) < 2e-3
    assert np.allclose(half_light, radii[:, 1])
    # Truth: a Gaussian encloses the fraction f within sigma * sqrt(-2 ln(1 - f)); the growth
    # curve spreads each pixel's value uniformly over the pixel, which adds 1/12 to sigma^2.
    truth = np.sqrt(sigmas**2 + 1 / 12)[:, None] * np.sqrt(-2 * np.log(1 - fractions))
    # Unbiased; single objects scatter with their sub-pixel position (most at small radii).
    assert np.all(np.abs(np.median(radii / truth - 1, axis=0)) < 0.003)
    assert np.max(np.abs(radii / truth - 1)) < 0.03


def test_flux_radius_replaces_bad_pixels_by_their_symmetric_pixel(gaussians):
    image, centres, sigmas = gaussians
    x, y = centres[:, 0], centres[:, 1]
    flux = np.full(len(x), 1000.0)
    fractions = np.array([0.5])
    clean, _ = kernels.flux_radius(image, np.zeros(image.shape, bool), x, y, sigmas, fractions, flux, 0.0)
    # Blank a pixel on one side of every object: the symmetric pixel restores it.
    damaged = image.copy()
    bad = np.zeros(image.shape, bool)
    cols, rows = np.rint(x).astype(int) + 2, np.rint(y).astype(int)
    bad[rows, cols] = True
    damaged[bad] = 0.0
    repaired, _ = kernels.flux_radius(damaged, bad, x, y, sigmas, fractions, flux, 0.0)
    lost, _ = kernels.flux_radius(damaged, np.zeros(image.shape, bool), x, y, sigmas, fractions, flux, 0.0)
    assert np.max(np.abs(repaired / clean - 1)) < 0.01
    assert np.median(np.abs(lost / clean - 1)) > np.median(np.abs(repaired / clean - 1))


def test_isophotal_measures_against_numpy_reductions(gaussians):
    image, centres, sigmas = gaussians
    rng = np.random.default_rng(3)
    noisy = image + rng.normal(0, 0.5, image.shape).astype(np.float32)
    var = rng.uniform(0.2, 0.3, image.shape).astype(np.float32)
    flags = np.where(rng.random(image.shape) < 0.02, rng.choice([1, 2, 4, 64], image.shape), 0).astype(np.int16)
    objects, seg = sep.extract(noisy, 5.0, err=0.5, segmentation_map=True)
    seg = seg.astype(np.int32)
    n = len(objects)
    x, y = objects["x"], objects["y"]
    a, b, peak = objects["a"].astype(float), objects["b"].astype(float), objects["peak"].astype(float)
    threshold, imaflags, nimaflags, fwhm = kernels.isophotal_measures(
        seg, objects["xmin"].astype(np.int64), objects["xmax"].astype(np.int64),
        objects["ymin"].astype(np.int64), objects["ymax"].astype(np.int64), noisy, var, True, flags, True,
        0.5, False, 1.5, 1e9, x, y, a, b, peak, np.zeros(n))
    # Independent reductions over the segmentation map.
    labels = seg.ravel()
    used = labels > 0
    index = labels[used] - 1
    lowest = np.full(n, np.inf)
    np.minimum.at(lowest, index, np.sqrt(var.ravel()[used].astype(float)))
    ored = np.zeros(n, np.int64)
    np.bitwise_or.at(ored, index, flags.ravel()[used].astype(np.int64))
    counted = np.bincount(index, flags.ravel()[used] > 0, n)
    assert np.allclose(threshold, 1.5 * lowest, rtol=1e-6)
    assert np.array_equal(imaflags, ored)
    assert np.array_equal(nimaflags, counted)
    # FWHM of the Gaussian cores: 2.355 sigma (SExtractor's estimate, within 5 %).
    matched = np.hypot(x[:, None] - centres[:, 0], y[:, None] - centres[:, 1]).argmin(axis=1)
    assert n == len(centres)
    assert np.median(np.abs(fwhm / (2.3548 * sigmas[matched]) - 1)) < 0.05
