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


@pytest.mark.parametrize("kind", ["gzip_float", "rice_int16", "rice_uint8", "rice_int32", "dither1", "dither2",
                                  "no_dither", "row_tiles", "nan_blank", "zero_rows", "odd_rows"])
def test_image_data_decodes_tiles_as_astropy_does(tmp_path, kind):
    """:func:`image_data`'s own tile loop gives astropy's array, byte for byte; other layouts go to astropy."""
    from shapepipe_modules.io.images import _decode_tiles, compressed_hdu, image_data

    rng = np.random.default_rng(21)
    shape = (200, 96) if kind != "odd_rows" else (133, 70)
    floats = rng.normal(170.0, 5.0, shape).astype(np.float32)
    header = fits.Header({"EXTNAME": "ccd01"})
    if kind in ("gzip_float", "odd_rows"):
        hdu = compressed_hdu(floats, header)
    elif kind.startswith("rice_"):
        dtype = {"rice_int16": np.int16, "rice_uint8": np.uint8, "rice_int32": np.int32}[kind]
        hdu = compressed_hdu((rng.random(shape) < 0.05).astype(dtype) * 7, header)
    else:
        method = {"dither1": "SUBTRACTIVE_DITHER_1", "dither2": "SUBTRACTIVE_DITHER_2", "no_dither": "NO_DITHER",
                  "row_tiles": "SUBTRACTIVE_DITHER_2", "nan_blank": "SUBTRACTIVE_DITHER_1",
                  "zero_rows": "SUBTRACTIVE_DITHER_2"}[kind]
        data = floats.copy()
        if kind in ("dither2", "row_tiles"):
            data[:5, :40] = 0.0  # exact zeros (SUBTRACTIVE_DITHER_2 keeps them)
        if kind == "zero_rows":
            data[:5] = 0.0  # constant one-row tiles do not quantise: GZIP_COMPRESSED_DATA, astropy's decoder
        if kind == "nan_blank":
            data[3, 4] = np.nan  # blank pixels: astropy's decoder
        tile = (1, shape[1]) if kind in ("row_tiles", "zero_rows") else (16, shape[1])
        hdu = fits.CompImageHDU(data=data, header=header, compression_type="RICE_1", quantize_level=16.0,
                                quantize_method={"NO_DITHER": -1, "SUBTRACTIVE_DITHER_1": 1,
                                                 "SUBTRACTIVE_DITHER_2": 2}[method], tile_shape=tile,
                                dither_seed=7)
    path = tmp_path / f"{kind}.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path) as hdus:
        expected = np.array(hdus[1].data)
    with fits.open(path) as hdus:
        fast = _decode_tiles(hdus[1])
        data = image_data(hdus[1])
    if kind in ("nan_blank", "zero_rows"):
        assert fast is None  # blank values, tiles in another column: decoded by astropy
    else:
        assert fast is not None and fast.dtype == expected.dtype and fast.tobytes() == expected.tobytes()
    assert data.dtype == expected.dtype and data.tobytes() == expected.tobytes()
