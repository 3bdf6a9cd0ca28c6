"""Single-image FITS files, plain or tile-compressed (modules/io/images.py)."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from shapepipe_modules.io.images import image_hdu, is_compressed, write_image


def _read(path):
    with fits.open(path) as hdus:
        hdu = image_hdu(hdus)
        return np.array(hdu.data), hdu.header.copy()


def test_lossless_and_quantised_round_trips(tmp_path):
    rng = np.random.default_rng(5)
    header = fits.Header({"PHOTZP": 30.0, "EXTNAME": "ccd03"})
    noisy = rng.normal(170.0, 5.0, (300, 200)).astype(np.float32)
    flags = (rng.random((300, 200)) < 0.01).astype(np.int16) * 8
    smooth = (170.0 + np.linspace(0, 3, 200)[None, :] + np.linspace(0, 2, 300)[:, None]).astype(np.float32)
    sizes = {}
    for name, data, quantize in (("noisy", noisy, 0.0), ("flags", flags, 0.0), ("smooth", smooth, 0.01)):
        plain, packed = tmp_path / f"{name}_p.fits", tmp_path / f"{name}_c.fits"
        write_image(plain, data, header)
        write_image(packed, data, header, compress=True, quantize=quantize)
        assert not is_compressed(plain) and is_compressed(packed)
        back, back_header = _read(packed)
        assert back_header["PHOTZP"] == 30.0 and back_header["EXTNAME"] == "ccd03"
        if quantize:
            assert np.abs(back - data).max() <= quantize / 2 + 1e-4  # rounded to the step (float32 values)
            assert np.abs(back - data).max() > 0
        else:
            np.testing.assert_array_equal(back, data)
            assert back.dtype.kind == data.dtype.kind
        np.testing.assert_array_equal(_read(plain)[0], data)
        sizes[name] = plain.stat().st_size / packed.stat().st_size
    # Noise barely compresses without loss; sparse flags and a quantised smooth map do a lot.
    assert 1.0 < sizes["noisy"] < 2.0 and sizes["flags"] > 8 and sizes["smooth"] > 5
    # Writing twice gives the same bytes (no dither seeded by the clock).
    again = tmp_path / "again.fits"
    write_image(again, smooth, header, compress=True, quantize=0.01)
    assert again.read_bytes() == (tmp_path / "smooth_c.fits").read_bytes()
