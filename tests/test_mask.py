"""build_mask on synthetic CCDs whose truth is known."""

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from shapepipe_modules.mask import mask_bits
from shapepipe_modules.mask.build import MaskInputError, build_mask, region_text
from shapepipe_modules.mask.catalogues import DeepSkyCatalogue, StarCatalogue
from shapepipe_modules.mask.config import (
    BorderParams,
    DeepSkyParams,
    MaskParameters,
    MissingDataParams,
    SaturParams,
    StarMaskParams,
    default_config_path,
    read_mask_config,
)
from shapepipe_modules.mask.planes import overlapping_planes, planes_to_cards
from shapepipe_modules.mask.saturation import saturation_mask
from test_mask_geometry import tan_wcs

SHAPE = (300, 200)  # ny, nx
SCALE = 0.187
DATA = default_config_path().parent


def star_params(kind):
    if kind == "halo":
        return StarMaskParams(DATA / "halo.reg", mag_lim=13.0, scale_factor=0.05, mag_pivot=13.8, bit=2)
    return StarMaskParams(DATA / "spike.reg", mag_lim=18.0, scale_factor=0.3, mag_pivot=13.8, bit=128)


def pixel_grid(shape=SHAPE):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return xx, yy


def sky_of(wcs, x, y):
    ra, dec = wcs.all_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
    return ra, dec


def test_halos_and_spikes_cover_every_truth_star_region():
    wcs = tan_wcs(SHAPE, rotation_deg=20.0)
    # Stars inside the image, and one beyond each edge whose halo reaches in.
    xs = np.array([60.0, 150.3, 100.0, -120.0, 260.0])
    ys = np.array([80.0, 210.6, 150.0, 150.0, 40.0])
    mags = np.array([12.0, 12.9, 16.5, 11.0, 12.5])
    ra, dec = sky_of(wcs, xs, ys)
    stars = StarCatalogue(ra, dec, mags)
    params = MaskParameters(halo=star_params("halo"), spike=star_params("spike"))
    result = build_mask(np.zeros(SHAPE), np.ones(SHAPE), wcs, {}, stars, None, params)
    flag = result.flag
    xx, yy = pixel_grid()
    for x, y, mag in zip(xs, ys, mags):
        dx, dy = xx - x, yy - y
        if mag < 13.0:
            # Truth halo: disc of 49.5" (the template's inscribed circle) times the scaling.
            halo_px = 49.5 * (1 - 0.05 * (mag - 13.8)) / SCALE
            inside = np.hypot(dx, dy) <= halo_px
            assert inside.any()
            assert np.all(flag[inside] & 2)
        # Truth spikes: arms along the detector axes, 38" x 3.2" times the scaling.
        s = max(1 - 0.3 * (mag - 13.8), 0.1)
        arm_length, arm_half_width = 37.9 * s / SCALE, 1.59 * s / SCALE
        arms = ((np.abs(dx) <= arm_length) & (np.abs(dy) <= arm_half_width)) | (
            (np.abs(dy) <= arm_length) & (np.abs(dx) <= arm_half_width)
        )
        if arms.any():
            assert np.all(flag[arms] & 128)
    # Nothing flagged far from every star: pixels beyond the largest reach.
    reach = np.full(xx.shape, np.inf)
    for x, y, mag in zip(xs, ys, mags):
        halo = 50.01 * (1 - 0.05 * (mag - 13.8)) / SCALE if mag < 13 else 0
        spike = np.hypot(38, 1.6) * max(1 - 0.3 * (mag - 13.8), 0.1) / SCALE
        far = np.hypot(xx - x, yy - y) > max(halo, spike)
        reach = np.where(far, reach, 0)
    assert not flag[np.isinf(reach)].any()
    assert result.stats["n_halo"] == 4 and result.stats["n_spike"] == 5


def test_faint_and_distant_stars_are_ignored():
    wcs = tan_wcs(SHAPE)
    ra, dec = sky_of(wcs, np.array([100.0, 100.0, 5000.0]), np.array([150.0, 150.0, 150.0]))
    stars = StarCatalogue(ra, dec, np.array([18.5, 13.5, 8.0]))  # too faint for spikes; no halo; far away
    params = MaskParameters(halo=star_params("halo"), spike=star_params("spike"))
    result = build_mask(np.zeros(SHAPE), None, wcs, {}, stars, None, params)
    assert result.stats == {"n_halo": 0, "n_spike": 1, "masked_fraction": pytest.approx(result.stats["masked_fraction"])}
    assert not (result.flag & 2).any()


def test_deep_sky_objects_match_per_pixel_sky_distances():
    """Every object whose disc overlaps the image is masked, compared with
    angular distances computed by astropy for every pixel."""
    shape = (120, 90)
    wcs = tan_wcs(shape, ra=10.0, dec=-30.0, rotation_deg=35.0)
    rng = np.random.default_rng(7)
    n = 10_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    radius = rng.uniform(0.5, 5.0, n) / 3600.0 * 60  # 0.5 to 5 arcmin
    # Object 0: centre off the right edge, disc covers part of the image but no corner.
    # Corners are 84.9 px from its centre, its radius (with SIZE_PLUS) 75 px.
    (ra[0],), (dec[0],) = sky_of(wcs, 89.5 + 60.0, 59.5)
    radius[0] = 75.0 / 1.1 * SCALE / 3600.0
    # Object 1: small, entirely inside; object 2: near but not touching.
    (ra[1],), (dec[1],) = sky_of(wcs, 40.0, 30.0)
    radius[1] = 8.0 * SCALE / 3600.0
    (ra[2],), (dec[2],) = sky_of(wcs, -30.0, -30.0)
    radius[2] = 20.0 * SCALE / 3600.0
    catalogue = DeepSkyCatalogue(ra, dec, radius, np.arange(n).astype(str))
    params = MaskParameters(messier=DeepSkyParams(None, size_plus=0.1, bit=16))
    result = build_mask(np.zeros(shape), None, wcs, {}, None, catalogue, params)

    xx, yy = pixel_grid(shape)
    pix_ra, pix_dec = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    pixels = SkyCoord(pix_ra, pix_dec, unit="deg")
    centre = SkyCoord(*wcs.all_pix2world([44.5], [59.5], 0), unit="deg")
    near = np.flatnonzero(centre.separation(SkyCoord(ra, dec, unit="deg")).deg < radius * 1.1 + 0.01)
    distance = np.full(xx.size, np.inf)  # distance to the nearest disc edge, in pixels
    for index in near:
        sep = pixels.separation(SkyCoord(ra[index], dec[index], unit="deg")).deg
        distance = np.minimum(distance, (sep - radius[index] * 1.1) * 3600 / SCALE)
    inside = distance.reshape(shape) <= 0
    masked = (result.flag & 16) != 0
    ambiguous = np.abs(distance.reshape(shape)) < 0.01  # on a disc edge to a hundredth of a pixel
    assert np.array_equal(masked[~ambiguous], inside[~ambiguous])
    assert masked[:, -1].any() and masked[30, 40]
    assert {s.label for s in result.shapes} == {"0", "1"}
    assert result.stats["n_messier"] == 2


def test_or_keeps_input_flag_bits_with_overlapping_masks():
    shape = (200, 160)
    wcs = tan_wcs(shape)
    ra, dec = sky_of(wcs, 12.0, 15.0)  # star near a corner: halo overlaps the border
    stars = StarCatalogue(ra, dec, np.array([12.0]))
    ra_d, dec_d = sky_of(wcs, 20.0, 20.0)
    deep = DeepSkyCatalogue(ra_d, dec_d, np.array([40 * SCALE / 3600]), np.array(["G"]))
    params = MaskParameters(
        border=BorderParams(10, 4), halo=star_params("halo"), spike=star_params("spike"),
        messier=DeepSkyParams(None, 0.0, 16),
    )
    rng = np.random.default_rng(0)
    # External bits: 1 and 4096 of its own, and 2 and 4 shared with HALO and BORDER.
    external = rng.choice(np.array([0, 1, 2, 4, 4096, 4096 | 1]), size=shape).astype(np.int16)
    internal = build_mask(np.zeros(shape), None, wcs, {}, stars, deep, params).flag
    result = build_mask(np.zeros(shape), None, wcs, {}, stars, deep, params, external_flag=external)
    np.testing.assert_array_equal(result.flag, internal | external)
    assert np.all((result.flag & external) == external)
    # Overlapping masks keep their own bits (a sum would carry 2 + 2 into 4).
    overlap = (internal & 2 != 0) & (internal & 4 != 0) & (internal & 16 != 0) & (external == 2)
    assert overlap.any() and np.all(result.flag[overlap] == (2 | 4 | 16 | 128 * (internal[overlap] >> 7 & 1)))
    assert result.planes["MP_EXTERNAL"] == 1 | 2 | 4 | 4096
    assert ("MP_BORDER", "MP_EXTERNAL", 4) in overlapping_planes(result.planes)
    assert result.flag.dtype == np.int16


def test_high_external_bit_gives_int32():
    shape = (20, 30)
    external = np.zeros(shape, np.int32)
    external[1, 4] = 1 << 20
    params = MaskParameters(border=BorderParams(2, 4))
    result = build_mask(np.zeros(shape), None, tan_wcs(shape), {}, None, None, params, external_flag=external)
    assert result.flag.dtype == np.int32 and result.flag[1, 4] == (1 << 20) | 4 and result.flag[5, 5] == 0


def test_saturation_and_bleed_trail():
    shape = (200, 100)
    level = 50_000.0
    image = np.full(shape, 100.0)
    image[95:105, 45:55] = 60_000  # saturated core
    image[40:95, 50] = 52_000  # bleed trail at saturation
    image[30:40, 50] = 30_000  # fading end, above half the level
    image[20:30, 50] = 20_000  # below half the level: not a trail
    image[150:160, 10] = 30_000  # bright column without a saturated seed
    mask = saturation_mask(image, level, bleed_fraction=0.5, grow=2)
    expected = np.zeros(shape, bool)
    expected[93:107, 43:57] = True
    expected[28:95, 48:53] = True
    np.testing.assert_array_equal(mask, expected)
    params = MaskParameters(satur=SaturParams(None, "SATURATE", 0.5, 2, 8))
    result = build_mask(image, None, tan_wcs(shape), {"SATURATE": level}, None, None, params)
    np.testing.assert_array_equal(result.flag == 8, expected)
    with pytest.raises(MaskInputError, match="SATURATE"):
        build_mask(image, None, tan_wcs(shape), {}, None, None, params)


def test_zero_weight_and_missing_data_are_refused():
    params = MaskParameters(border=BorderParams(2, 4))
    with pytest.raises(MaskInputError, match="zero everywhere"):
        build_mask(np.ones(SHAPE), np.zeros(SHAPE), tan_wcs(SHAPE), {}, None, None, params)
    image = np.ones(SHAPE)
    image[:200] = 0.0  # two thirds missing
    md = MaskParameters(missing_data=MissingDataParams(0.3, 0.6, remove=True))
    with pytest.raises(MaskInputError, match="image removed"):
        build_mask(image, None, tan_wcs(SHAPE), {}, None, None, md)
    md = MaskParameters(missing_data=MissingDataParams(0.3, 0.9, remove=True))
    result = build_mask(image, None, tan_wcs(SHAPE), {}, None, None, md)
    cards = {key: value for key, value, _ in result.header_cards}
    assert cards["MRATIO"] == pytest.approx(2 / 3) and cards["MFLAG"] is True


def test_mask_bits_from_header_and_file(tmp_path):
    header = fits.Header()
    for key, bits, comment in planes_to_cards({"MP_HALO": 2, "MP_SPIKE": 128, "MP_EXTERNAL": 3}):
        header[key] = (bits, comment)
    assert header.comments["MP_HALO"] == "mask plane: bright-star halo"
    assert header["MP_EXTERNAL"] == 3 and repr(header).count("HIERARCH MP_EXTERNAL") == 1
    assert mask_bits(header, ["MP_HALO", "spike"]) == 130
    assert mask_bits(header, "external") == 3
    path = tmp_path / "flag.fits"
    fits.PrimaryHDU(np.zeros((2, 2), np.int16), header).writeto(path)
    assert mask_bits(path, ["halo", "MP_EXTERNAL"]) == 3
    with pytest.raises(KeyError, match="MP_BORDER.*MP_EXTERNAL, MP_HALO, MP_SPIKE"):
        mask_bits(path, ["MP_BORDER"])


def test_default_config_masks_a_ccd_and_writes_regions():
    params = read_mask_config(default_config_path())
    wcs = tan_wcs(SHAPE)
    ra, dec = sky_of(wcs, 100.0, 100.0)
    stars = StarCatalogue(ra, dec, np.array([12.0]))
    deep = DeepSkyCatalogue(*sky_of(wcs, 0.0, 290.0), np.array([0.002]), np.array(["NGC 1"]))
    image = np.zeros(SHAPE)
    image[100, 100] = 1e6
    result = build_mask(image, np.ones(SHAPE), wcs, {"SATURATE": 6e4}, stars, deep, params)
    assert set(result.planes) == {"MP_BORDER", "MP_HALO", "MP_SPIKE", "MP_MESSIER", "MP_SATUR"}
    for bits in result.planes.values():
        assert (result.flag & bits).any()
    text = region_text(result.shapes)
    assert text.count("polygon(") == 2 and text.count("circle(") == 1 and "tag={MP_SATUR}" in text
    assert "text={NGC 1}" in text and text.count("tag={MP_BORDER}") == 4


def test_saturation_patches_match_a_full_image_dilation():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    shape = (400, 300)
    image = rng.normal(1000.0, 10.0, shape)
    level = 40_000.0
    # Saturated cores, some close enough for their grown regions to merge.
    for x, y in [(20, 30), (24, 36), (150, 200), (290, 395), (0, 0), (200, 10)]:
        image[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = 45_000.0
        image[max(y - 40, 0) : y + 40, x] = 30_000.0  # trail above half the level
    seeds = image >= level
    low = image >= 0.5 * level
    runs, _ = ndimage.label(low, structure=[[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    trail = np.isin(runs, np.unique(runs[seeds])[1:])
    expected = ndimage.binary_dilation(trail, structure=np.ones((7, 7), bool))
    np.testing.assert_array_equal(saturation_mask(image, level, 0.5, 3), expected)


def test_top_bit_of_a_signed_input_flag_is_kept():
    shape = (10, 12)
    external = np.zeros(shape, ">i2")
    external[5, 6] = -32768  # bit 15 of a big-endian int16, as read from FITS
    external[5, 7] = 3
    result = build_mask(np.zeros(shape), None, tan_wcs(shape), {}, None, None, MaskParameters(), external_flag=external)
    assert result.flag.dtype == np.int32 and result.planes == {"MP_EXTERNAL": 32768 | 3}
    assert result.flag[5, 6] == 32768 and result.flag[5, 7] == 3 and result.flag.sum() == 32771


def test_profile_sizing_masks_where_the_light_exceeds_the_level():
    # One star of mag 15 at zero point 30 on a 0.187" image of noise 5 ADU; masks at 0.1 sigma.
    from shapepipe_modules.mask.profile import StarProfile

    shape = (700, 700)
    wcs = tan_wcs(shape)
    x0, y0 = 350.3, 349.6
    ra, dec = sky_of(wcs, x0, y0)
    profile = StarProfile(psf_fwhm=0.7, halo_fwhm=5.6, spike_width=0.175, noise_fraction=0.1)
    params = MaskParameters(halo=StarMaskParams(DATA / "halo.reg", mag_lim=17.0, scale_factor=0.05,
                                                mag_pivot=13.8, bit=2), spike=star_params("spike"))
    weight = np.full(shape, 1.0 / 25.0)
    result = build_mask(np.zeros(shape), weight, wcs, {}, StarCatalogue(ra, dec, np.array([15.0])), None, params,
                        star_profile=profile, zero_point=30.0)
    assert result.stats["noise_sigma"] == pytest.approx(5.0)
    # Independent light: the simulator's profile of the same star, per pixel.
    from shapepipe_modules.simulate.render import star_surface_brightness

    xx, yy = pixel_grid(shape)
    scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    sim = {"psf_beta": 3.5, "pixel_scale": scale}
    light = star_surface_brightness((xx - x0) * scale, (yy - y0) * scale, 1e6, 0.7, True, sim)
    halo = (result.flag & 2) != 0
    spike = (result.flag & 128) != 0
    masked = halo | spike
    # Halo and spikes are sized apart: where the spike's wing crosses the halo's edge their sum is
    # above the level just outside both masks. Every pixel above twice the level is masked.
    lit = light > 0.5
    # Measured: 99.7 % of the pixels above the level masked, none above 1.42 times it left, the mask
    # 1.05 times the area above the level.
    assert masked[light > 1.0].all()
    assert masked[lit].mean() > 0.99
    assert light[~masked].max() < 0.75
    assert masked.sum() < 1.1 * lit.sum()
    # The halo disc: radius where core + halo falls to 0.5 ADU (9.6" for this star).
    r = np.hypot(xx - x0, yy - y0) * scale
    assert r[halo].max() == pytest.approx(9.6, abs=0.25)
    # The spikes: along x out to where the spike alone falls to the level (26").
    assert np.abs(xx[spike] - x0).max() * scale == pytest.approx(10.0 * np.sqrt(2 * np.log(
        0.005e6 / (2 * np.pi * 10.0 * 0.175) * scale**2 / 0.5)), abs=0.3)
