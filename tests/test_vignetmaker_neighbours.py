"""vignetmaker NEIGHBOUR_MASK in MULTI-EPOCH mode: the tile's object mask carried to the exposure stamps."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.errors import JobError
from shapepipe_modules.crowded.masks import object_mask
from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.io.stamp_store import StampStore, split_epoch_key
from shapepipe_modules.vignetmaker.classic import make_classic_stamps
from shapepipe_modules.io.images import write_image
from shapepipe_modules.vignetmaker.multi_epoch import ObjectMask, make_multi_epoch_stamps, make_sources
from shapepipe_modules.vignetmaker.runner import OPTIONS, validate, vignetmaker
from test_vignetmaker_me import (DEC0, NX, NY, PATTERNS, RA0, SIZE, build_tile, ccd_header, make_job)

TILE_NX, TILE_NY = 700, 560


def tile_header():
    """A TAN tile WCS, rotated by 0.7 degree and with 0.2-arcsec pixels: not any CCD's grid."""
    header = fits.Header()
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, TILE_NX, TILE_NY
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = TILE_NX / 2 + 0.3, TILE_NY / 2 - 0.2
    header["CRVAL1"], header["CRVAL2"] = RA0, DEC0
    c, s, d = np.cos(np.deg2rad(0.7)), np.sin(np.deg2rad(0.7)), 0.2 / 3600
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -d * c, d * s, d * s, d * c
    return header


def write_mask(path, tile, header, seed=3):
    """Object mask of the catalogue objects on ``header``'s grid, with one saturated disc (-1)."""
    rng = np.random.default_rng(seed)
    x, y = WCS(header).all_world2pix(tile["ra"], tile["dec"], 1)
    n = x.size
    a = rng.uniform(1.0, 4.0, n)
    table = Table({"NUMBER": tile["ids"], "X_IMAGE": x, "Y_IMAGE": y, "A_IMAGE": a,
                   "B_IMAGE": a * rng.uniform(0.4, 1.0, n), "THETA_IMAGE": rng.uniform(-90, 90, n)})
    shape = (header["NAXIS2"], header["NAXIS1"])
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    saturated = np.hypot(cols - x[10] + 1 + 6, rows - y[10] + 1) < 5  # beside object 11
    mask = object_mask(shape, table, 1.0, 2.0, saturated)
    fits.PrimaryHDU(mask, header).writeto(path)
    return mask


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return build_tile(tmp_path_factory.mktemp("tile_nb"))


@pytest.fixture(scope="module")
def masked(tile, tmp_path_factory):
    folder = tmp_path_factory.mktemp("masked")
    mask = write_mask(folder / "objmask-244-252.fits", tile, tile_header())
    sources = make_sources([tile["ccd_dir"]], PATTERNS)
    plain, with_mask = folder / "plain", folder / "with_mask"
    plain.mkdir()
    with_mask.mkdir()
    make_multi_epoch_stamps(tile["catalogue"], tile["store"], sources, plain, "-244-252", SIZE)
    summary = make_multi_epoch_stamps(tile["catalogue"], tile["store"], sources, with_mask, "-244-252", SIZE,
                                      object_mask=folder / "objmask-244-252.fits")
    return mask, plain, with_mask, summary


def brute_force_values(mask, header, exposure, ccd, x, y):
    """Mask value at the nearest tile pixel of every stamp pixel, one pixel at a time."""
    ccd_wcs, tile_wcs = WCS(ccd_header(exposure, ccd)), WCS(header)
    ix, iy = int(np.floor(x - 0.5)), int(np.floor(y - 0.5))
    half = SIZE // 2
    values = np.zeros((SIZE, SIZE), np.int64)
    for r in range(SIZE):
        for c in range(SIZE):
            ra, dec = ccd_wcs.all_pix2world([[ix - half + c + 1.0, iy - half + r + 1.0]], 1)[0]
            tx, ty = tile_wcs.all_world2pix([[ra, dec]], 1)[0]
            col, row = int(round(tx)) - 1, int(round(ty)) - 1
            if 0 <= col < mask.shape[1] and 0 <= row < mask.shape[0]:
                values[r, c] = mask[row, col]
    return values


def test_weights_match_a_per_pixel_lookup(tile, masked):
    mask, plain, with_mask, summary = masked
    header = tile_header()
    weights = StampStore(with_mask / "weight_vignet-244-252.sqlite")
    raw = StampStore(plain / "weight_vignet-244-252.sqlite")
    checked = own_seen = other_seen = saturated_seen = 0
    fractions = []
    for object_id in tile["ids"][:40]:
        record = weights[int(object_id)]
        for key, epoch in record.items():
            exposure, ccd = split_epoch_key(key)
            meta = epoch.meta
            values = brute_force_values(mask, header, exposure, ccd, meta["X_CCD"], meta["Y_CCD"])
            other = (values != 0) & (values != object_id)
            expected = np.where(other, 0, raw[int(object_id)][key].arrays["VIGNET"])
            np.testing.assert_array_equal(epoch.arrays["VIGNET"], expected)
            assert meta["NEIGHBOUR_FRACTION"] == pytest.approx(other.mean(), abs=1e-12)
            # The object's own pixels keep their weight (the CCD weights are > 0 on the CCD).
            own = values == object_id
            assert np.all(epoch.arrays["VIGNET"][own & (expected > 0)] > 0)
            own_seen += int(own.sum())
            other_seen += int(other.sum())
            saturated_seen += int((values == -1).sum())
            fractions.append(other.mean())
            checked += 1
    assert checked > 40 and own_seen > 1000 and other_seen > 200 and saturated_seen > 20
    assert summary["neighbour_fraction"] > 0


def test_other_stores_unchanged_and_masked_fraction_grows(tile, masked):
    mask, plain, with_mask, _ = masked
    for pattern in ("image", "flag", "background"):
        a = StampStore(plain / f"{pattern}_vignet-244-252.sqlite")
        b = StampStore(with_mask / f"{pattern}_vignet-244-252.sqlite")
        for object_id in tile["ids"][:30]:
            for key, epoch in a[int(object_id)].items():
                np.testing.assert_array_equal(b[int(object_id)][key].arrays["VIGNET"], epoch.arrays["VIGNET"])
    a = StampStore(plain / "weight_vignet-244-252.sqlite")
    b = StampStore(with_mask / "weight_vignet-244-252.sqlite")
    grew = 0
    for object_id in tile["ids"]:
        for key, epoch in b[int(object_id)].items():
            before = a[int(object_id)][key]
            zero_now = epoch.arrays["VIGNET"] <= 0
            flag = StampStore(plain / "flag_vignet-244-252.sqlite")[int(object_id)][key].arrays["VIGNET"]
            assert epoch.meta["MASKED_FRACTION"] == pytest.approx(np.mean(zero_now | (flag != 0)), abs=1e-12)
            assert epoch.meta["MASKED_FRACTION"] >= before.meta["MASKED_FRACTION"]
            grew += epoch.meta["MASKED_FRACTION"] > before.meta["MASKED_FRACTION"]
    assert grew > 20


@pytest.mark.parametrize("form", ["compressed file", "in memory"])
def test_compressed_or_in_memory_mask_gives_the_same_stores(tile, masked, tmp_path, form):
    """A tile-compressed mask file (read by section) or an in-memory ObjectMask: the same weight stamps."""
    mask, _, with_mask, summary = masked
    if form == "compressed file":
        object_mask = tmp_path / "objmask-244-252.fits"
        write_image(object_mask, mask, tile_header(), compress=True)
    else:
        object_mask = ObjectMask.from_array(mask, WCS(tile_header()))
    sources = make_sources([tile["ccd_dir"]], PATTERNS)
    out = tmp_path / "out"
    out.mkdir()
    again = make_multi_epoch_stamps(tile["catalogue"], tile["store"], sources, out, "-244-252", SIZE,
                                    object_mask=object_mask)
    assert again["neighbour_fraction"] == summary["neighbour_fraction"]
    a = StampStore(with_mask / "weight_vignet-244-252.sqlite")
    b = StampStore(out / "weight_vignet-244-252.sqlite")
    for object_id in tile["ids"]:
        for key, epoch in a[int(object_id)].items():
            np.testing.assert_array_equal(b[int(object_id)][key].arrays["VIGNET"], epoch.arrays["VIGNET"])
            assert b[int(object_id)][key].meta["NEIGHBOUR_FRACTION"] == epoch.meta["NEIGHBOUR_FRACTION"]


def test_tile_wcs_on_the_ccd_gives_the_classic_stamps(tile, tmp_path):
    """With the mask on the CCD's own grid (same WCS), each epoch's weight is CLASSIC's neighbour-masked stamp."""
    exposure, ccd = "2100001", 0
    header = ccd_header(exposure, ccd)
    mask_path = tmp_path / "objmask-244-252.fits"
    write_mask(mask_path, tile, header)
    sources = make_sources([tile["ccd_dir"]], PATTERNS)
    me = tmp_path / "me"
    me.mkdir()
    make_multi_epoch_stamps(tile["catalogue"], tile["store"], sources, me, "-244-252", SIZE, object_mask=mask_path)
    classic = tmp_path / "classic"
    classic.mkdir()
    make_classic_stamps(tile["catalogue"], [tile["ccd_dir"] / f"weight-{exposure}-{ccd}.fits"], ["weight"],
                        classic, "-244-252", SIZE, coord="SPHE", position_params=("XWIN_WORLD", "YWIN_WORLD"),
                        neighbour_mask=mask_path, masked_prefixes=("weight",))
    table, _ = read_ldac(classic / "weight_vignet-244-252.fits")
    store = StampStore(me / "weight_vignet-244-252.sqlite")
    key = f"{exposure}-{ccd}"
    compared = masked_seen = 0
    for row, object_id in enumerate(tile["ids"]):
        record = store[int(object_id)]
        if key not in record:
            continue
        np.testing.assert_array_equal(record[key].arrays["VIGNET"], table["VIGNET"][row])
        assert record[key].meta["NEIGHBOUR_FRACTION"] == pytest.approx(table["MASKED_FRACTION"][row], abs=1e-6)
        masked_seen += table["MASKED_FRACTION"][row] > 0
        compared += 1
    assert compared > 20 and masked_seen > 5


def test_runner_and_validation(tile, tmp_path):
    mask_path = tmp_path / "objmask-244-252.fits"
    write_mask(mask_path, tile, tile_header())
    options = dict(MODE="MULTI-EPOCH", COORD="SPHE", POSITION_PARAMS=["XWIN_WORLD", "YWIN_WORLD"],
                   STAMP_SIZE=SIZE, ME_IMAGE_DIR=[str(tile["ccd_dir"])], ME_IMAGE_PATTERN=PATTERNS,
                   ME_LOG_WCS=str(tile["store"]), NEIGHBOUR_MASK=True)
    defaults = {o.name: o.default for o in OPTIONS}
    assert validate(defaults | options) == []
    problems = validate(defaults | options | {"ME_IMAGE_PATTERN": ["image", "flag"]})
    assert any("NEIGHBOUR_MASK" in p and "weight" in p for p in problems)
    assert any("NEIGHBOUR_MASK" in p and "MASKING" in p
               for p in validate(defaults | {"NEIGHBOUR_MASK": True, "MASKING": True}))
    result = vignetmaker(make_job(tmp_path, [tile["catalogue"], mask_path], **options))
    assert 0 < result["neighbour_fraction"] < 0.5
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    with pytest.raises(JobError, match=r"\[VIGNETMAKER\] NEIGHBOUR_MASK"):
        vignetmaker(make_job(tmp_path / "x", [tile["catalogue"]], **options))
    float_mask = tmp_path / "float_mask.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32), tile_header()).writeto(float_mask)
    with pytest.raises(JobError, match="float_mask.fits.*integers"):
        vignetmaker(make_job(tmp_path / "y", [tile["catalogue"], float_mask], **options))
