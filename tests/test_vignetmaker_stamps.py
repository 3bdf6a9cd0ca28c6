"""Stamp cutting, centre convention and local Jacobians of vignetmaker."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe_modules.vignetmaker.stamps import central_pixels, check_stamp_size, cut_stamps, local_jacobians


def sip_header(nx=300, ny=500, ra=150.0, dec=2.0, scale=0.187, rotation_deg=0.0):
    """A TAN-SIP CCD header with a visible quadratic distortion."""
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    header["CTYPE1"] = "RA---TAN-SIP"
    header["CTYPE2"] = "DEC--TAN-SIP"
    header["CRPIX1"] = nx / 2 + 10.3
    header["CRPIX2"] = ny / 2 - 7.1
    header["CRVAL1"] = ra
    header["CRVAL2"] = dec
    c, s = np.cos(np.deg2rad(rotation_deg)), np.sin(np.deg2rad(rotation_deg))
    d = scale / 3600.0
    header["CD1_1"] = -d * c
    header["CD1_2"] = d * s
    header["CD2_1"] = d * s
    header["CD2_2"] = d * c
    header["A_ORDER"] = 2
    header["B_ORDER"] = 2
    header["A_2_0"] = 2e-5
    header["A_0_2"] = -1e-5
    header["B_1_1"] = 3e-5
    header["A_1_1"] = 0.0
    header["B_2_0"] = 0.0
    header["B_0_2"] = 1e-5
    return header


def naive_stamp(image, ix, iy, size, fill):
    half = size // 2
    pad = 2 * size
    padded = np.pad(image, pad, constant_values=fill)
    return padded[iy + pad - half:iy + pad + half + 1, ix + pad - half:ix + pad + half + 1]


def test_central_pixels_convention():
    x = np.array([1.0, 1.49, 1.5, 10.2, 0.6, -3.7])
    ix, iy, dx, dy = central_pixels(x, x)
    # FITS x = 1 is the centre of pixel 0; pixel i covers [i + 0.5, i + 1.5).
    assert ix.tolist() == [0, 0, 1, 9, 0, -5]
    assert np.allclose(ix + 1 + dx, x)
    assert np.all((dx >= -0.5) & (dx < 0.5))


@pytest.mark.parametrize("size", [1, 5, 51])
def test_cut_stamps_match_naive(size):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(60, 45)).astype(np.float32)
    ix = rng.integers(-size, 45 + size, 200)
    iy = rng.integers(-size, 60 + size, 200)
    stamps, missing = cut_stamps(image, ix, iy, size, fill=-7)
    assert stamps.dtype == np.float32
    for k in range(ix.size):
        expected = naive_stamp(image, ix[k], iy[k], size, -7)
        np.testing.assert_array_equal(stamps[k], expected)
        outside = naive_stamp(np.zeros(image.shape, bool), ix[k], iy[k], size, True)
        np.testing.assert_array_equal(missing[k], outside)


def test_cut_stamps_image_smaller_than_stamp():
    image = np.arange(12, dtype=np.int16).reshape(3, 4)
    stamps, missing = cut_stamps(image, [1], [1], 5, fill=0)
    assert stamps[0, 2, 2] == image[1, 1]
    assert missing[0].sum() == 25 - 12


def test_stamp_size_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        check_stamp_size(50)
    with pytest.raises(ValueError):
        cut_stamps(np.zeros((10, 10)), [5], [5], 4)


def test_jacobian_matches_galsim():
    galsim = pytest.importorskip("galsim")
    header = sip_header(rotation_deg=25.0)
    wcs = WCS(header)
    gwcs = galsim.FitsWCS(header=dict(header))
    x = np.array([12.0, 150.5, 290.0])
    y = np.array([480.0, 250.0, 5.5])
    jac = local_jacobians(wcs, x, y)
    for k in range(x.size):
        local = gwcs.jacobian(image_pos=galsim.PositionD(x[k], y[k]))
        expected = np.array([[local.dudx, local.dudy], [local.dvdx, local.dvdy]])
        np.testing.assert_allclose(jac[k], expected, atol=2e-6)
    # The distortion makes the Jacobian vary across the CCD by more than the tolerance.
    assert np.abs(jac[0] - jac[2]).max() > 1e-4


@pytest.mark.parametrize("array", [
    np.arange(2601, dtype=np.float32).reshape(51, 51),
    np.arange(12, dtype=">i2").reshape(3, 4),
    np.eye(2),
    np.array(3.5),
    np.zeros((0, 5), np.int32),
    np.array([True, False]),
    np.array(["ab", "c"]),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    np.arange(20.0).reshape(4, 5)[:, ::2],
])
def test_store_encoding_is_npy(array):
    """The stores' fast array encoding writes exactly what numpy.save writes."""
    import io

    from shapepipe_modules.io.arrays import decode_array, encode_array

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    if array.flags.c_contiguous:
        assert encode_array(array) == buffer.getvalue()
    decoded = decode_array(encode_array(array))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)
