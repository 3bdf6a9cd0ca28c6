"""Batched adaptive moments against galsim.hsm.FindAdaptiveMom (the reference) and known truth."""

import numpy as np
import pytest

from shapepipe_modules.io.moments import FLAG_NOT_POSITIVE, adaptive_moments, decode_flag

galsim = pytest.importorskip("galsim")


def draw(profile, size=51, offset=(0.0, 0.0)):
    return profile.drawImage(nx=size, ny=size, scale=1.0, offset=offset).array


def reference(image, badpix=None):
    """HSM's moments through GalSim (x, y 0-based as ours)."""
    bad = None if badpix is None else galsim.Image(badpix.astype(np.int32), scale=1.0)
    result = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=1.0), badpix=bad)
    shape = result.observed_shape
    return {"sigma": result.moments_sigma, "e1": shape.e1, "e2": shape.e2, "g1": shape.g1, "g2": shape.g2,
            "x": result.moments_centroid.x - 1, "y": result.moments_centroid.y - 1,
            "amplitude": result.moments_amp / 2}


def stack_of_profiles(rng, count):
    """Gaussian and Moffat PSFs of various sizes, shapes and offsets, some with noise."""
    images = []
    for k in range(count):
        sigma = rng.uniform(1.2, 3.5)
        g1, g2 = rng.uniform(-0.12, 0.12, 2)
        if k % 2:
            profile = galsim.Gaussian(sigma=sigma)
        else:
            profile = galsim.Moffat(beta=rng.uniform(2.5, 4.5), fwhm=2.3548 * sigma)
        image = draw(profile.shear(g1=g1, g2=g2), offset=tuple(rng.uniform(-0.5, 0.5, 2)))
        if k % 3 == 0:
            image = image + rng.normal(0, 2e-4, image.shape)  # S/N of a bright star
        images.append(image)
    return np.array(images)


def test_matches_galsim_hsm_on_gaussian_moffat_and_noisy_stamps():
    rng = np.random.default_rng(12)
    images = stack_of_profiles(rng, 60)
    ours = adaptive_moments(images)
    assert (ours["flag"] == 0).all()
    refs = [reference(image) for image in images]
    for name, tolerance in (("sigma", 1e-5), ("e1", 1e-5), ("e2", 1e-5), ("g1", 1e-5), ("g2", 1e-5),
                            ("x", 1e-5), ("y", 1e-5)):
        expected = np.array([r[name] for r in refs])
        np.testing.assert_allclose(ours[name], expected, rtol=0, atol=tolerance * max(1.0, np.abs(expected).max()),
                                   err_msg=name)
    np.testing.assert_allclose(ours["amplitude"], [r["amplitude"] for r in refs], rtol=1e-5)


def test_truth_of_an_elliptical_gaussian():
    """For a well-sampled elliptical Gaussian the adaptive moments are its own: sigma = det^(1/4)."""
    sigma, g1, g2 = 2.5, 0.06, -0.03
    image = draw(galsim.Gaussian(sigma=sigma).shear(g1=g1, g2=g2), size=61, offset=(0.3, -0.2))
    ours = adaptive_moments(image)
    # Truth: the profile's covariance plus the pixel's (1/12 px^2 per axis, a Gaussian to ~1e-4 here).
    shear = galsim.Shear(g1=g1, g2=g2).getMatrix()
    moments = sigma ** 2 * shear @ shear.T + np.eye(2) / 12
    trace = np.trace(moments)
    assert ours["sigma"][0] == pytest.approx(np.linalg.det(moments) ** 0.25, rel=1e-4)
    assert ours["e1"][0] == pytest.approx((moments[0, 0] - moments[1, 1]) / trace, abs=1e-4)
    assert ours["e2"][0] == pytest.approx(2 * moments[0, 1] / trace, abs=1e-4)
    assert ours["x"][0] == pytest.approx(30.3, abs=1e-6) and ours["y"][0] == pytest.approx(29.8, abs=1e-6)
    # Distortion and reduced shear describe the same ellipse.
    e = np.hypot(ours["e1"][0], ours["e2"][0])
    assert np.hypot(ours["g1"][0], ours["g2"][0]) == pytest.approx(e / (1 + np.sqrt(1 - e ** 2)), rel=1e-12)


def test_starting_size_does_not_change_the_result():
    rng = np.random.default_rng(3)
    images = stack_of_profiles(rng, 12)
    default = adaptive_moments(images)
    warm = adaptive_moments(images, guess_sigma=default["sigma"])
    assert warm["n_iter"].mean() < default["n_iter"].mean()
    for name in ("sigma", "e1", "e2"):
        np.testing.assert_allclose(warm[name], default[name], rtol=0, atol=2e-6)


def test_masked_pixels_are_ignored_like_hsm_badpix():
    rng = np.random.default_rng(8)
    image = draw(galsim.Moffat(beta=3.0, fwhm=4.0).shear(g1=0.05, g2=0.02))
    bad = np.zeros(image.shape, bool)
    bad[20:23, 28:40] = True
    corrupted = np.where(bad, 1e3, image) + rng.normal(0, 1e-5, image.shape)
    ours = adaptive_moments(corrupted, mask=bad)
    ref = reference(corrupted, bad)
    for name in ("sigma", "e1", "e2", "x", "y"):
        assert ours[name][0] == pytest.approx(ref[name], abs=1e-5), name
    # Without the mask, the corrupted pixels dominate.
    assert abs(adaptive_moments(corrupted)["e1"][0] - ref["e1"]) > 0.01


def test_failures_are_flagged_with_nan():
    images = np.zeros((3, 21, 21))
    images[1, 10, 10] = -1.0  # negative flux
    images[2] = draw(galsim.Gaussian(sigma=2.0), size=21)
    ours = adaptive_moments(images)
    assert ours["flag"][0] == FLAG_NOT_POSITIVE and ours["flag"][1] != 0 and ours["flag"][2] == 0
    assert np.isnan(ours["sigma"][:2]).all() and np.isfinite(ours["sigma"][2])
    assert decode_flag(ours["flag"][0]) == ["weighted flux or moment matrix not positive"]
    with pytest.raises(ValueError, match="guess_sigma"):
        adaptive_moments(images, guess_sigma=0.0)
    with pytest.raises(ValueError, match="mask shape"):
        adaptive_moments(images, mask=np.zeros((2, 5), bool))
    assert adaptive_moments(np.zeros((0, 5, 5)))["sigma"].shape == (0,)
