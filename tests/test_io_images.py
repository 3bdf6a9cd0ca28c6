"""Single-image FITS files, plain or tile-compressed (modules/io/images.py)."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_copy_compressed_keeps_quantised_values_and_size(tmp_path):
    """A quantised (dithered RICE) HDU copied tile for tile reads back bit for bit, with the new header."""
    from shapepipe_modules.io.images import copy_compressed

    rng = np.random.default_rng(3)
    data = rng.normal(1.0, 0.05, (150, 90)).astype(np.float32)
    source = tmp_path / "mosaic.fits.fz"
    header = fits.Header({"EXTNAME": "ccd01", "GAIN": 1.5})
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((4, 4), np.float32)),
                  fits.CompImageHDU(data, header=header, compression_type="RICE_1", quantize_level=4.0,
                                    quantize_method=2, dither_seed=7)]).writeto(source)
    with fits.open(source) as hdus:
        expected = hdus[2].data.copy()
    # Quantised: the values read are not the ones written, and a lossless recompression would be larger.
    assert not np.array_equal(expected, data)
    target = tmp_path / "ccd.fits"
    copy_compressed(source, 2, target, fits.Header({"GAIN": 1.5, "CTYPE1": "RA---TAN", "NAXIS1": 3}))
    with fits.open(target) as hdus:
        image = image_hdu(hdus)
        assert isinstance(image, fits.CompImageHDU)
        np.testing.assert_array_equal(image.data, expected)
        assert image.header["GAIN"] == 1.5 and image.header["CTYPE1"] == "RA---TAN"
        assert image.header["NAXIS1"] == 90 and image.header.get("EXTNAME") != "ccd01"
    write_image(tmp_path / "lossless.fits", expected, compress=True)
    assert target.stat().st_size < (tmp_path / "lossless.fits").stat().st_size
    with pytest.raises(ValueError, match="not a tile-compressed image"):
        copy_compressed(tmp_path / "lossless.fits", 0, tmp_path / "x.fits")


def test_gzip_tiles_deflated_by_isal_decode_to_the_same_values(tmp_path):
    from astropy.io.fits.hdu.compressed import _codecs

    from shapepipe_modules.io.images import compressed_hdu

    original = _codecs.gzip_compress
    rng = np.random.default_rng(11)
    data = rng.normal(170.0, 5.0, (300, 200)).astype(np.float32)
    header = fits.Header({"PHOTZP": 30.0})
    ours, astropys = tmp_path / "isal.fits", tmp_path / "zlib.fits"
    write_image(ours, data, header, compress=True)
    assert _codecs.gzip_compress is original  # astropy's compressor is back after the write
    fits.HDUList([fits.PrimaryHDU(), compressed_hdu(data, header)]).writeto(astropys)
    np.testing.assert_array_equal(_read(ours)[0], data)
    np.testing.assert_array_equal(_read(astropys)[0], data)
    # Another deflate stream (ISA-L wrote it), about as small as zlib's level 9.
    assert ours.read_bytes() != astropys.read_bytes()
    assert abs(ours.stat().st_size / astropys.stat().st_size - 1.0) < 0.05
    again = tmp_path / "again.fits"
    write_image(again, data, header, compress=True)
    assert again.read_bytes() == ours.read_bytes()


def test_reading_through_isal_gives_astropys_values(tmp_path):
    """A GZIP_2 file written by astropy alone reads the same through ISA-L (:func:`fast_inflate`) as through gzip."""
    import gzip

    from astropy.io.fits.hdu.compressed import _codecs

    from shapepipe_modules.io.images import compressed_hdu, fast_inflate

    data = np.random.default_rng(4).normal(0.0, 1.0, (130, 70)).astype(np.float32)
    path = tmp_path / "astropy.fits"
    fits.HDUList([fits.PrimaryHDU(), compressed_hdu(data)]).writeto(path)
    before = _codecs.gzip_decompress
    try:
        _codecs.gzip_decompress = gzip.decompress
        with fits.open(path) as hdus:
            by_gzip = np.array(hdus[1].data)
        fast_inflate()
        assert _codecs.gzip_decompress is not gzip.decompress  # ISA-L inflates from now on
        with fits.open(path) as hdus:
            by_isal = np.array(hdus[1].data)
    finally:
        _codecs.gzip_decompress = before
    np.testing.assert_array_equal(by_gzip, data)
    np.testing.assert_array_equal(by_isal, data)
