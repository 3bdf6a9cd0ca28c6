"""The mask module through its declaration: inputs, outputs, failures."""

import logging

import numpy as np
import pytest
from astropy.io import fits

from shapepipe_modules.io.images import image_hdu
from astropy.table import Table

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe.module import default_registry
from shapepipe_modules.mask import mask_bits
from shapepipe_modules.mask.runner import OPTIONS, mask, validate
from test_mask_geometry import tan_wcs

SHAPE = (240, 160)


def write_ccd(folder, number="-0000001-3", weight_value=1.0):
    wcs = tan_wcs(SHAPE, ra=35.0, dec=-5.0)
    header = wcs.to_header()
    header["SATURATE"] = 50000.0
    header["GAIN"] = 1.6
    image = np.random.default_rng(1).normal(100.0, 3.0, SHAPE).astype(np.float32)
    image[120:126, 80:86] = 60000.0
    paths = {
        "image": folder / f"image{number}.fits",
        "weight": folder / f"weight{number}.fits",
        "flag": folder / f"flag{number}.fits",
    }
    fits.PrimaryHDU(image, header).writeto(paths["image"])
    fits.PrimaryHDU(np.full(SHAPE, weight_value, np.float32), header).writeto(paths["weight"])
    flag = np.zeros(SHAPE, np.int16)
    flag[:, 30] = 1  # a bad column
    fits.PrimaryHDU(flag, header).writeto(paths["flag"])
    stars = folder / "bright_stars.fits"
    # A halo star off the left edge (default halo radius 465 px at mag 12.95
    # reaches 29 px in), a spike-only star inside (fainter than HALO_MAG_LIM),
    # a bright star far away.
    ra, dec = wcs.all_pix2world([-436.0, 140.0, 3000.0], [120.0, 30.0, 30.0], 0)
    Table({"ra": ra, "dec": dec, "mag": [12.95, 17.5, 10.0]}).write(stars, overwrite=True)
    deep = folder / "deep_sky.fits"
    ra, dec = wcs.all_pix2world([200.0, 5000.0], [200.0, 10.0], 0)
    Table({"name": ["G1", "far"], "ra": ra, "dec": dec, "radius": [60 * 0.187 / 3600, 0.01]}).write(deep)
    return paths, stars, deep


def make_job(tmp_path, inputs, number="-0000001-3", **options):
    values = {option.name: option.default for option in OPTIONS}
    values.update(options)
    output = tmp_path / "output"
    output.mkdir(exist_ok=True)
    return Job(
        module="mask",
        module_run="mask",
        number=number,
        inputs=list(inputs),
        output_dir=output,
        log_dir=tmp_path,
        options=values,
        logger=logging.getLogger("test_mask"),
        run_dir=tmp_path,
    )


def test_declaration_is_registered():
    registry = default_registry()
    spec = registry.get("mask_runner")
    assert spec.name == "mask" and spec.file_patterns == ("image", "weight", "flag")
    assert spec.validate is validate


def test_ccd_flag_image_written_with_planes_and_wcs(tmp_path):
    paths, stars, deep = write_ccd(tmp_path)
    job = make_job(
        tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep), REG_FILE=True
    )
    stats = mask(job)
    out = tmp_path / "output" / "pipeline_flag-0000001-3.fits"
    with fits.open(out) as hdus:  # tile-compressed without loss (COMPRESS = True, the default)
        assert isinstance(hdus[1], fits.CompImageHDU)
        flag, header = image_hdu(hdus).data, image_hdu(hdus).header
    assert flag.dtype.kind == "i" and flag.dtype.itemsize == 2 and flag.shape == SHAPE
    assert header["CRVAL1"] == pytest.approx(35.0) and header["CTYPE2"] == "DEC--TAN"
    planes = {"BORDER": 4, "HALO": 2, "SPIKE": 128, "MESSIER": 16, "SATUR": 8, "EXTERNAL": 1}
    for name, bits in planes.items():
        assert mask_bits(out, name) == bits
        assert (flag & bits).any(), name
    assert np.all(flag[:, 30] & 1)  # input bits kept
    assert flag[120, 20] & 2 and not flag[120, 35] & 2 and flag[120, 80] & 8 and flag[150, 100] == 0
    # The halo star's spikes (255 px) stop short of the image: one spike star.
    assert stats["n_halo"] == 1 and stats["n_spike"] == 1 and stats["n_messier"] == 1
    regions = (tmp_path / "output" / "pipeline_flag-0000001-3.reg").read_text()
    assert "text={G1}" in regions and "far" not in regions
    assert not [p for p in (tmp_path / "output").iterdir() if p.name.startswith(".")]


def test_tile_without_flag_and_with_star_input(tmp_path):
    paths, stars, deep = write_ccd(tmp_path, number="-244-252")
    job = make_job(
        tmp_path,
        [paths["image"], paths["weight"], stars],
        number="-244-252",
        USE_EXT_FLAG=False,
        USE_EXT_STAR=True,
        DEEP_SKY_CAT_PATH=str(deep),
        PREFIX="none",
        MASK_DEFAULTS="tile",
    )
    mask(job)
    out = tmp_path / "output" / "flag-244-252.fits"
    with fits.open(out) as hdus:
        header = image_hdu(hdus).header
    assert header["MASKCONF"] == "config_tile.mask"
    assert "MP_EXTERNAL" not in header and "MP_BORDER" not in header and header["MP_HALO"] == 2


def test_wrong_number_of_inputs(tmp_path):
    paths, stars, deep = write_ccd(tmp_path)
    job = make_job(tmp_path, [paths["image"], paths["weight"]], STAR_CAT_PATH=str(stars),
                   DEEP_SKY_CAT_PATH=str(deep))
    with pytest.raises(JobError, match="expects 3 inputs"):
        mask(job)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_image_fails_naming_the_file(tmp_path, damage):
    paths, stars, deep = write_ccd(tmp_path)
    raw = paths["image"].read_bytes()
    paths["image"].write_bytes(b"not a FITS file at all" * 10 if damage == "garbage" else raw[: len(raw) // 2])
    job = make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep))
    with pytest.raises(JobError, match=str(paths["image"])):
        mask(job)
    assert not list((tmp_path / "output").iterdir())


def test_zero_weight_fails_naming_the_file(tmp_path):
    paths, stars, deep = write_ccd(tmp_path, weight_value=0.0)
    job = make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep))
    with pytest.raises(JobError, match=f"{paths['weight']} is zero everywhere"):
        mask(job)


def test_bad_star_catalogue_fails_naming_the_file(tmp_path):
    paths, stars, deep = write_ccd(tmp_path)
    Table({"ra": [1.0], "dec": [2.0]}).write(stars, overwrite=True)
    job = make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep))
    with pytest.raises(JobError, match=f"{stars} has no column mag"):
        mask(job)


def test_validate_needs_catalogues():
    defaults = {option.name: option.default for option in OPTIONS}
    problems = validate(defaults)
    assert any("STAR_CAT_PATH, LOCAL_STAR_CAT or USE_EXT_STAR" in p for p in problems)
    assert any("DEEP_SKY_CAT_PATH" in p for p in problems)
    both = dict(defaults, USE_EXT_STAR=True, STAR_CAT_PATH="/x.fits", DEEP_SKY_CAT_PATH="/d.fits")
    assert validate(both) == ["USE_EXT_STAR and STAR_CAT_PATH both set: give the star catalogue one way"]
    assert validate(dict(defaults, USE_EXT_STAR=True, DEEP_SKY_CAT_PATH="/d.fits")) == []


def _onthefly_config(tmp_path):
    """The shipped config.mask with ShapePipe's network star query named (its 'onthefly' form)."""
    from shapepipe_modules.mask.config import default_config_path

    import shutil

    shipped = default_config_path("exposure")
    text = shipped.read_text()
    assert "[PROGRAM_PATH]" not in text
    folder = tmp_path / "mask_config"
    shutil.copytree(shipped.parent, folder)  # with the .reg files it names
    path = folder / "onthefly.mask"
    path.write_text("[PROGRAM_PATH]\nCDSCLIENT_PATH = findgsc2.2\n" + text)
    return path


def test_onthefly_form_validates_and_its_job_fails_clearly(tmp_path):
    paths, _, deep = write_ccd(tmp_path)
    config = _onthefly_config(tmp_path)
    defaults = {option.name: option.default for option in OPTIONS}
    options = dict(defaults, MASK_CONFIG_PATH=str(config), DEEP_SKY_CAT_PATH=str(deep))
    assert validate(options) == []
    job = make_job(tmp_path, paths.values(), MASK_CONFIG_PATH=str(config), DEEP_SKY_CAT_PATH=str(deep))
    with pytest.raises(JobError, match=r"on-the-fly star query .*not available here: give a local bright-star "
                                       r"catalogue with STAR_CAT_PATH"):
        mask(job)


def test_check_existing_dir_reuses_an_earlier_flag_image(tmp_path):
    paths, stars, deep = write_ccd(tmp_path)
    first = make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep))
    mask(first)
    earlier = tmp_path / "earlier"
    (tmp_path / "output").rename(earlier)
    made = earlier / "pipeline_flag-0000001-3.fits"
    job = make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep),
                   CHECK_EXISTING_DIR=str(earlier))
    assert mask(job) == {"reused": 1}
    out = tmp_path / "output" / "pipeline_flag-0000001-3.fits"
    assert out.is_symlink() and out.resolve() == made.resolve()
    # Not there: the flag image is made.
    job = make_job(tmp_path, paths.values(), number="-0000001-3", STAR_CAT_PATH=str(stars),
                   DEEP_SKY_CAT_PATH=str(deep), CHECK_EXISTING_DIR=str(tmp_path / "nowhere"))
    out.unlink()
    assert "n_halo" in mask(job) and not out.is_symlink() and out.is_file()


def _flag_of(tmp_path, job):
    mask(job)
    with fits.open(tmp_path / "output" / "pipeline_flag-0000001-3.fits") as hdus:
        return image_hdu(hdus).data.copy()


def test_onthefly_form_with_local_star_catalogues(tmp_path):
    """The on-the-fly form reads LOCAL_STAR_CAT offline: create_star_cat's per-image folder or a CSV reference."""
    from shapepipe_modules.tools.create_star_cat import create_star_catalogues

    paths, stars, deep = write_ccd(tmp_path)
    config = _onthefly_config(tmp_path)
    reference = tmp_path / "reference.csv"
    Table.read(stars).write(reference, format="ascii.csv")
    common = dict(DEEP_SKY_CAT_PATH=str(deep))
    direct = _flag_of(tmp_path, make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), **common))
    assert direct[120, 20] & 2 and not direct[120, 35] & 2  # the halo of the star off the left edge
    defaults = {option.name: option.default for option in OPTIONS}
    assert validate(dict(defaults, MASK_CONFIG_PATH=str(config), LOCAL_STAR_CAT=str(reference), **common)) == []

    # A folder of per-image catalogues, as create_star_cat writes them from the CSV reference.
    per_image = tmp_path / "star_cats"
    images = tmp_path / "images"
    images.mkdir()
    (images / "image-0000001-3.fits").symlink_to(paths["image"])
    counts = create_star_catalogues(images, per_image, reference, margin_arcsec=600.0, kind="image")
    assert counts["written"] == 1 and (per_image / "star_cat-0000001-3.fits").is_file()
    for source in (per_image, reference):
        (tmp_path / "output" / "pipeline_flag-0000001-3.fits").unlink()
        job = make_job(tmp_path, paths.values(), MASK_CONFIG_PATH=str(config), LOCAL_STAR_CAT=str(source), **common)
        np.testing.assert_array_equal(_flag_of(tmp_path, job), direct)

    # A folder without this image's catalogue: the job fails naming the folder, the section and the key.
    (tmp_path / "output" / "pipeline_flag-0000001-3.fits").unlink()
    empty = tmp_path / "no_cats"
    empty.mkdir()
    job = make_job(tmp_path, paths.values(), MASK_CONFIG_PATH=str(config), LOCAL_STAR_CAT=str(empty), **common)
    with pytest.raises(JobError, match=r"\[MASK_RUNNER\] LOCAL_STAR_CAT: .*no_cats holds no star_cat-0000001-3"):
        mask(job)


def test_border_width_option_and_profile_sizing_through_the_runner(tmp_path):
    paths, stars, deep = write_ccd(tmp_path)
    with fits.open(paths["image"], mode="update") as hdus:
        hdus[0].header["PHOTZP"] = 30.0
    job = make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), DEEP_SKY_CAT_PATH=str(deep),
                   BORDER_WIDTH=7, STAR_MASK_SIZING="profile")
    stats = mask(job)
    out = tmp_path / "output" / "pipeline_flag-0000001-3.fits"
    with fits.open(out) as hdus:
        flag = image_hdu(hdus).data
    border = (flag & 4) != 0
    assert border[:, :7].all() and border[:7, :].all() and not border[7:-7, 7:-7].any()
    # Weight 1: noise 1 ADU. The mag 17.5 star (x 140, y 30) gets spikes only (HALO_MAG_LIM 17):
    # arms where 0.005 F / (2 pi 10" 0.18") per arcsec^2 falls to 0.1 ADU per pixel.
    assert stats["noise_sigma"] == pytest.approx(1.0)
    assert stats["n_halo"] == 0 and stats["n_spike"] == 1
    flux = 10 ** (-0.4 * (17.5 - 30.0))
    peak = 0.005 * flux / (2 * np.pi * 10.0 * 0.18) * 0.187**2
    arm = 10.0 * np.sqrt(2 * np.log(peak / 0.1)) / 0.187
    spike_rows = np.flatnonzero((flag[:, 140] & 128) != 0)
    assert spike_rows.max() == pytest.approx(min(30 + arm, SHAPE[0] - 1), abs=1.5)
    # The mag 12.95 star 436 px off the left edge: its profile halo (about 30") does not reach in.
    assert not (flag[:, :40] & 2).any()
    # Without PHOTZP the profile sizing fails naming the keyword.
    with fits.open(paths["image"], mode="update") as hdus:
        del hdus[0].header["PHOTZP"]
    out.unlink()
    with pytest.raises(JobError, match="PHOTZP"):
        mask(make_job(tmp_path, paths.values(), STAR_CAT_PATH=str(stars), STAR_MASK_SIZING="profile"))
