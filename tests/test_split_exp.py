"""split_exp: mosaics to one file per CCD, headers and WCS kept, damaged inputs named."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.split_exp.fits_input import clean_header
from shapepipe_modules.split_exp.runner import OPTIONS, split_exp, validate
from shapepipe_modules.split_exp.split_exp import (
    as_flag_array,
    read_header_file,
    split_exposure,
    write_header_file,
)

SHAPE = (96, 64)  # (ny, nx): small CCDs keep the tests fast
PIXEL_DEG = 0.187 / 3600


def ccd_wcs_header(ccd: int, kind: str, ra0=150.0, dec0=2.0) -> fits.Header:
    """A CCD header with a TAN, TPV or SIP WCS, offset by CCD number on the sky."""
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = ra0, dec0
    # Each CCD sees a different patch: reference pixel moved off the CCD.
    header["CRPIX1"], header["CRPIX2"] = 32.5 - ccd * 70.0, 48.5 + ccd * 10.0
    header["CD1_1"], header["CD1_2"] = -PIXEL_DEG, 1e-8
    header["CD2_1"], header["CD2_2"] = 2e-8, PIXEL_DEG
    header["CUNIT1"] = header["CUNIT2"] = "deg"
    if kind == "tpv":
        header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
        for key, value in {"PV1_0": 1e-5, "PV1_1": 1.0, "PV1_2": 3e-4, "PV1_4": 2e-3, "PV1_7": 5e-2,
                           "PV2_0": -1e-5, "PV2_1": 1.0, "PV2_2": -2e-4, "PV2_5": 1e-3, "PV2_7": 3e-2}.items():
            header[key] = value
    elif kind == "sip":
        header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
        header["A_ORDER"] = header["B_ORDER"] = 2
        header["A_2_0"], header["A_1_1"], header["A_0_2"] = 2e-5, -1e-5, 3e-6
        header["B_2_0"], header["B_1_1"], header["B_0_2"] = -1e-5, 2e-5, 1e-5
    return header


KINDS = ("tan", "tpv", "sip")


def make_exposure(folder, exposure="2113737", n_ccd=3, compressed_image=False, seed=0):
    """Image mosaic (plain or .fz), compressed weight and flag mosaics; returns paths and data."""
    rng = np.random.default_rng(seed)
    primary = fits.Header()
    primary["EXPNUM"] = int(exposure)
    primary["OBJECT"] = "synthetic"
    primary["AIRMASS"] = 1.21
    primary["NEXTEND"] = n_ccd
    images, weights, flags = [fits.PrimaryHDU(header=primary)], [fits.PrimaryHDU()], [fits.PrimaryHDU()]
    truth = {"image": [], "weight": [], "flag": [], "header": []}
    image_class = fits.CompImageHDU if compressed_image else fits.ImageHDU
    for ccd in range(n_ccd):
        header = ccd_wcs_header(ccd, KINDS[ccd % 3])
        header["EXTNAME"] = f"ccd{ccd:02d}"
        header["GAIN"] = 1.5 + 0.1 * ccd
        header["SATURATE"] = 60000.0
        header["PHOTZP"] = 30.0
        header["EXPTIME"] = 200.0
        header["INHERIT"] = True
        image = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
        weight = np.ones(SHAPE, np.float32) * (ccd + 1)
        flag = np.zeros(SHAPE, np.int16)
        flag[ccd, :] = 2 ** ccd
        images.append(image_class(image, header=header))
        weights.append(fits.CompImageHDU(weight, header=header))
        flags.append(fits.CompImageHDU(flag, header=header))
        truth["image"].append(image)
        truth["weight"].append(weight)
        truth["flag"].append(flag)
        truth["header"].append(header)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".fits.fz" if compressed_image else ".fits"
    paths = [folder / f"image-{exposure}{ext}", folder / f"weight-{exposure}.fits.fz",
             folder / f"flag-{exposure}.fits.fz"]
    for hdus, path in zip((images, weights, flags), paths):
        fits.HDUList(hdus).writeto(path, overwrite=True)
    return paths, truth


def truncate(path, keep_fraction=0.8):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def test_split_writes_every_ccd_with_data_and_header(tmp_path):
    paths, truth = make_exposure(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    result = split_exposure(paths, ["image", "weight", "flag"], "-2113737", out)
    assert result.n_ccd == 3
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"{kind}-2113737-{ccd}.fits" for kind in ("image", "weight", "flag") for ccd in range(3)]
                      + ["headers-2113737.npy"])
    assert names == expected
    for ccd in range(3):
        with fits.open(out / f"image-2113737-{ccd}.fits") as hdul:
            assert len(hdul) == 1
            assert hdul[0].data.dtype.newbyteorder("=") == np.float32
            np.testing.assert_array_equal(hdul[0].data, truth["image"][ccd])
            header = hdul[0].header
            assert header["GAIN"] == pytest.approx(1.5 + 0.1 * ccd)
            assert header["EXTNAME"] == f"ccd{ccd:02d}"
            # INHERIT = T: primary keys missing from the CCD are carried over.
            assert header["AIRMASS"] == pytest.approx(1.21)
            assert header["OBJECT"] == "synthetic"
            assert "INHERIT" not in header and "NEXTEND" not in header and "XTENSION" not in header
        with fits.open(out / f"weight-2113737-{ccd}.fits") as hdul:
            np.testing.assert_array_equal(hdul[0].data, truth["weight"][ccd])
        with fits.open(out / f"flag-2113737-{ccd}.fits") as hdul:
            assert hdul[0].data.dtype.kind == "i"
            np.testing.assert_array_equal(hdul[0].data, truth["flag"][ccd])


@pytest.mark.parametrize("ccd", [0, 1, 2])
def test_split_keeps_tan_tpv_sip_wcs(tmp_path, ccd):
    """The WCS of the split file (and of the saved header) equals the mosaic's, distortion included."""
    paths, truth = make_exposure(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    split_exposure(paths, ["image", "weight", "flag"], "-2113737", out)
    reference = WCS(truth["header"][ccd])
    x, y = np.meshgrid(np.linspace(1, SHAPE[1], 5), np.linspace(1, SHAPE[0], 5))
    ra, dec = reference.all_pix2world(x.ravel(), y.ravel(), 1)
    split_wcs = WCS(fits.getheader(out / f"image-2113737-{ccd}.fits"))
    stored_wcs = WCS(fits.Header.fromstring(read_header_file(out / "headers-2113737.npy")[ccd]))
    for wcs in (split_wcs, stored_wcs):
        assert wcs.wcs.ctype[0] == reference.wcs.ctype[0]
        x_back, y_back = wcs.all_world2pix(ra, dec, 1)
        np.testing.assert_allclose(x_back, x.ravel(), atol=1e-6)
        np.testing.assert_allclose(y_back, y.ravel(), atol=1e-6)
    # The distortion is really there: without it positions move by > 0.01 pixel.
    if KINDS[ccd] != "tan":
        plain = fits.Header(truth["header"][ccd])
        plain["CTYPE1"], plain["CTYPE2"] = "RA---TAN", "DEC--TAN"
        for key in list(plain):
            if key.startswith(("PV", "A_", "B_")):
                del plain[key]
        x_plain, _ = WCS(plain).all_world2pix(ra, dec, 1)
        assert np.max(np.abs(x_plain - x.ravel())) > 0.01


def test_split_compressed_image_mosaic(tmp_path):
    paths, truth = make_exposure(tmp_path / "in", compressed_image=True)
    out = tmp_path / "out"
    out.mkdir()
    split_exposure(paths, ["image", "weight", "flag"], "-2113737", out)
    data = fits.getdata(out / "image-2113737-1.fits")
    # Lossy float compression: quantised to a fraction of the noise (5).
    assert np.max(np.abs(data - truth["image"][1])) < 1.0
    assert np.std(data - truth["image"][1]) < 0.5


def test_n_hdu_limits_and_checks(tmp_path):
    paths, _ = make_exposure(tmp_path / "in", n_ccd=3)
    out = tmp_path / "out"
    out.mkdir()
    result = split_exposure(paths, ["image", "weight", "flag"], "-2113737", out, n_hdu=2)
    assert result.n_ccd == 2
    assert not (out / "image-2113737-2.fits").exists()
    with pytest.raises(JobError, match="N_HDU = 40"):
        split_exposure(paths, ["image", "weight", "flag"], "-2113737", tmp_path / "out2", n_hdu=40)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_truncated_mosaic_fails_naming_the_file(tmp_path, which):
    paths, _ = make_exposure(tmp_path / "in")
    truncate(paths[which])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(JobError) as error:
        split_exposure(paths, ["image", "weight", "flag"], "-2113737", out)
    assert str(paths[which]) in str(error.value)


def test_mosaics_with_different_ccd_counts_fail(tmp_path):
    paths, _ = make_exposure(tmp_path / "in", n_ccd=3)
    other, _ = make_exposure(tmp_path / "other", n_ccd=2)
    with pytest.raises(JobError, match="different numbers of CCDs"):
        split_exposure([paths[0], paths[1], other[2]], ["image", "weight", "flag"], "-2113737", tmp_path)


def test_missing_and_broken_link_inputs(tmp_path):
    paths, _ = make_exposure(tmp_path / "in")
    link = tmp_path / "flag-link.fits.fz"
    link.symlink_to(tmp_path / "nowhere.fits.fz")
    with pytest.raises(JobError, match="broken symbolic link"):
        split_exposure([paths[0], paths[1], link], ["image", "weight", "flag"], "-2113737", tmp_path)


def test_invalid_wcs_fails(tmp_path):
    header = ccd_wcs_header(0, "tan")
    header["CTYPE1"] = "RA---XYZ"
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros(SHAPE, np.float32), header=header)])
    path = tmp_path / "image-0000001.fits"
    hdus.writeto(path)
    with pytest.raises(JobError, match="image-0000001.fits.*WCS"):
        split_exposure([path], ["image"], "-0000001", tmp_path / "out")


def test_header_file_round_trip_and_no_pickle(tmp_path):
    texts = [fits.Header({"A": 1}).tostring(), None, fits.Header({"B": "x"}).tostring()]
    path = write_header_file(tmp_path / "headers-1.npy", texts)
    assert read_header_file(path) == texts
    # ShapePipe's format (pickled dicts) is refused, not loaded.
    pickled = tmp_path / "headers-2.npy"
    np.save(pickled, np.array([{"header": "x"}], dtype=object), allow_pickle=True)
    with pytest.raises(JobError, match="pickled"):
        read_header_file(pickled)


def test_as_flag_array():
    assert as_flag_array(np.array([0, 1, 4], np.uint8), "f").dtype == np.int16
    assert as_flag_array(np.array([0, 70000]), "f").dtype == np.int32
    np.testing.assert_array_equal(as_flag_array(np.array([0.0, 2.0]), "f"), [0, 2])
    with pytest.raises(JobError, match="not integers"):
        as_flag_array(np.array([0.5]), "f")


def test_clean_header_without_inherit_keeps_primary_out():
    header = fits.Header({"XTENSION": "IMAGE", "GAIN": 2.0, "ZTILE1": 64, "ZP": 30.1})
    primary = fits.Header({"AIRMASS": 1.3})
    cleaned = clean_header(header, primary)
    assert list(cleaned) == ["GAIN", "ZP"]


def make_job(tmp_path, inputs, number, **options):
    values = {option.name: option.default for option in OPTIONS}
    values.update(options)
    out = tmp_path / "job_out"
    out.mkdir(exist_ok=True)
    return Job(module="split_exp", module_run="split_exp", number=number, inputs=list(inputs), output_dir=out,
               log_dir=tmp_path, options=values, logger=logging.getLogger("test_split_exp"), run_dir=tmp_path)


def test_runner_function_and_validation(tmp_path):
    paths, _ = make_exposure(tmp_path / "in", n_ccd=2)
    job = make_job(tmp_path, paths, "-2113737")
    assert split_exp(job) == {"ccds": 2, "files": 6}
    job = make_job(tmp_path, paths, "-2113737", OUTPUT_SUFFIX=["image", "weight"])
    with pytest.raises(JobError, match="OUTPUT_SUFFIX"):
        split_exp(job)
    assert validate({"N_HDU": -1, "OUTPUT_SUFFIX": ["a", "a"]}) == [
        "N_HDU must be 0 (every CCD) or a positive number of CCDs",
        "OUTPUT_SUFFIX has repeated prefixes: a, a",
    ]


def test_compressed_float_ccds_keep_their_tiles(tmp_path):
    """COMPRESS on a quantised float mosaic: each CCD's tiles are copied (the values read are the mosaic's,
    bit for bit, and the file is as small as the input's HDU); integer flags are recompressed losslessly."""
    from shapepipe_modules.io.images import image_hdu

    paths, truth = make_exposure(tmp_path / "in", compressed_image=True)
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    split_exposure(paths, ["image", "weight", "flag"], "-2113737", plain)
    split_exposure(paths, ["image", "weight", "flag"], "-2113737", packed, compress={"image", "weight", "flag"})
    with fits.open(paths[0], disable_image_compression=True) as mosaic:
        input_bytes = mosaic[2].fileinfo()["datSpan"]
    for ccd in range(3):
        for prefix in ("image", "weight", "flag"):
            with fits.open(plain / f"{prefix}-2113737-{ccd}.fits") as a, \
                    fits.open(packed / f"{prefix}-2113737-{ccd}.fits") as b:
                assert isinstance(image_hdu(b), fits.CompImageHDU)
                np.testing.assert_array_equal(image_hdu(b).data, a[0].data)
                structural = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                              "EXTEND", "EXTNAME"}
                cards = [{(c.keyword, str(c.value)) for c in h.cards if c.keyword not in structural}
                         for h in (a[0].header, image_hdu(b).header)]
                assert cards[0] == cards[1] and ("GAIN", str(truth["header"][ccd]["GAIN"])) in cards[1]
    with fits.open(packed / "image-2113737-1.fits", disable_image_compression=True) as copied:
        assert copied[1].fileinfo()["datSpan"] == input_bytes
