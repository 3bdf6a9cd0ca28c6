"""uncompress_fits: .fits.fz to plain single-HDU FITS, exact for integer and lossless data."""

import logging

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.uncompress_fits.runner import OPTIONS, uncompress_fits
from shapepipe_modules.uncompress_fits.uncompress_fits import output_name, uncompress


def write_compressed(path, data, **keys):
    header = fits.Header(keys)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type="GZIP_1", quantize_level=0.0)]).writeto(path)


def test_uncompress_is_exact_and_keeps_keys(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(1.0, 0.1, (50, 40)).astype(np.float32)
    source = tmp_path / "CFIS_weight-244-252.fits.fz"
    write_compressed(source, data, CTYPE1="RA---TAN", GAIN=1.7)
    info = uncompress(source, tmp_path / "CFIS_weight-244-252.fits")
    assert info == {"hdu": 1, "shape": [50, 40]}
    with fits.open(tmp_path / "CFIS_weight-244-252.fits") as hdul:
        assert len(hdul) == 1 and not isinstance(hdul[0], fits.CompImageHDU)
        np.testing.assert_array_equal(hdul[0].data, data)  # GZIP with quantize_level 0: lossless
        assert hdul[0].header["GAIN"] == 1.7
        assert "ZIMAGE" not in hdul[0].header and "XTENSION" not in hdul[0].header


def test_hdu_choice(tmp_path):
    source = tmp_path / "a.fits.fz"
    write_compressed(source, np.arange(12, dtype=np.int16).reshape(3, 4))
    assert uncompress(source, tmp_path / "b.fits", hdu=1)["hdu"] == 1
    np.testing.assert_array_equal(fits.getdata(tmp_path / "b.fits"), np.arange(12).reshape(3, 4))
    with pytest.raises(JobError, match="HDU 0 of FITS file .*a.fits.fz is not a 2-D image \\(images are in HDU 1\\)"):
        uncompress(source, tmp_path / "c.fits", hdu=0)
    with pytest.raises(JobError, match="HDU_DATA = 5 does not exist"):
        uncompress(source, tmp_path / "c.fits", hdu=5)


def test_truncated_file_fails_naming_it(tmp_path):
    source = tmp_path / "CFIS_weight-244-252.fits.fz"
    write_compressed(source, np.ones((200, 200), np.float32))
    source.write_bytes(source.read_bytes()[:4000])
    with pytest.raises(JobError, match="CFIS_weight-244-252.fits.fz"):
        uncompress(source, tmp_path / "out.fits")
    assert not (tmp_path / "out.fits").exists()


def test_output_names():
    assert output_name("/x/CFIS_weight-244-252.fits.fz", "-244-252", None) == "CFIS_weight-244-252.fits"
    assert output_name("/x/CFIS_weight-244-252.fits.fz", "-244-252", "weight") == "weight-244-252.fits"


def test_runner_function(tmp_path):
    for name in ("CFIS_image-244-252.fits.fz", "CFIS_weight-244-252.fits.fz"):
        write_compressed(tmp_path / name, np.full((5, 6), 2, np.int16))
    inputs = [tmp_path / "CFIS_image-244-252.fits.fz", tmp_path / "CFIS_weight-244-252.fits.fz"]
    out = tmp_path / "out"
    out.mkdir()

    def job(**changes):
        options = {option.name: option.default for option in OPTIONS}
        options.update(changes)
        return Job(module="uncompress_fits", module_run="uncompress_fits", number="-244-252", inputs=inputs,
                   output_dir=out, log_dir=tmp_path, options=options, logger=logging.getLogger("test_uz"),
                   run_dir=tmp_path)

    assert uncompress_fits(job()) == {"files": 2}
    assert sorted(p.name for p in out.iterdir()) == ["CFIS_image-244-252.fits", "CFIS_weight-244-252.fits"]
    with pytest.raises(JobError, match="OUTPUT_PATTERN gives 1"):
        uncompress_fits(job(OUTPUT_PATTERN=["w"]))
    with pytest.raises(JobError, match="same file"):
        uncompress_fits(job(OUTPUT_PATTERN=["w", "w"]))


def test_keep_compression_copies_the_tiles(tmp_path):
    """KEEP_COMPRESSION: a quantised input is written as its own tiles (same values, same size), a plain one plain."""
    from shapepipe_modules.io.images import image_hdu

    rng = np.random.default_rng(5)
    data = rng.normal(1.0, 0.1, (64, 48)).astype(np.float32)
    source = tmp_path / "CFIS_weight-244-252.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=fits.Header({"GAIN": 1.7}),
                                                       compression_type="RICE_1", quantize_level=4.0)]).writeto(source)
    plain, kept = tmp_path / "plain.fits", tmp_path / "kept.fits"
    uncompress(source, plain)
    uncompress(source, kept, keep_compressed=True)
    assert kept.stat().st_size == source.stat().st_size < plain.stat().st_size
    with fits.open(plain) as a, fits.open(kept) as b:
        np.testing.assert_array_equal(image_hdu(b).data, a[0].data)
        assert image_hdu(b).header["GAIN"] == 1.7
    fits.PrimaryHDU(data).writeto(tmp_path / "p.fits")
    uncompress(tmp_path / "p.fits", tmp_path / "p_out.fits", keep_compressed=True)
    with fits.open(tmp_path / "p_out.fits") as hdus:
        assert len(hdus) == 1 and np.array_equal(hdus[0].data, data)
