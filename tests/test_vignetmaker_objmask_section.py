"""vignetmaker MULTI-EPOCH neighbour mask read by section: the same pixels as the whole mask, and only the box
under a CCD's stamps is read."""

import tracemalloc

import astropy.io.fits.hdu.compressed.section as comp_section
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.errors import JobError
from shapepipe_modules.io.images import write_image
from shapepipe_modules.vignetmaker.multi_epoch import (MASK_BAND_ROWS, MASK_MARGIN, ObjectMask, image_dtype,
                                                       neighbour_stamp_pixels, read_object_mask)
from test_vignetmaker_stamps import sip_header

RA0, DEC0 = 150.0, 2.0
TILE_NX, TILE_NY = 900, 800
CCD_NX, CCD_NY = 300, 400
SIZE = 15


def tile_header(nx=TILE_NX, ny=TILE_NY):
    """TAN tile WCS, 0.2-arcsec pixels rotated by 0.7 degree."""
    header = fits.Header()
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, nx, ny
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = nx / 2 + 0.3, ny / 2 - 0.2
    header["CRVAL1"], header["CRVAL2"] = RA0, DEC0
    c, s, d = np.cos(np.deg2rad(0.7)), np.sin(np.deg2rad(0.7)), 0.2 / 3600
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -d * c, d * s, d * s, d * c
    return header


def exposure_wcs(dra_arcsec, ddec_arcsec, rotation=23.0):
    """A distorted (SIP) CCD WCS, 0.187-arcsec pixels, rotated and offset from the tile."""
    return WCS(sip_header(CCD_NX, CCD_NY, RA0 + dra_arcsec / 3600 / np.cos(np.deg2rad(DEC0)),
                          DEC0 + ddec_arcsec / 3600, scale=0.187, rotation_deg=rotation))


def random_mask(shape, seed=1):
    """Every pixel independent: 0 (sky, most), -1 (saturated) or an object NUMBER 1..40."""
    values = np.random.default_rng(seed).integers(-12, 41, shape).astype(np.int32)
    values[(values < 0) & (values > -12)] = 0
    values[values == -12] = -1
    return values


@pytest.fixture(scope="module")
def mask_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("objmask")
    pixels = random_mask((TILE_NY, TILE_NX))
    header = tile_header()
    write_image(folder / "plain.fits", pixels, header)
    write_image(folder / "compressed.fits", pixels, header, compress=True)  # RICE_1, 64-row tiles
    with fits.open(folder / "compressed.fits") as hdus:
        assert isinstance(hdus[1], fits.CompImageHDU)
    return {"plain": folder / "plain.fits", "compressed": folder / "compressed.fits", "pixels": pixels,
            "header": header}


def stamps(n=150, seed=2, margin=12):
    """Stamp centres on (and some beyond) a CCD, and NUMBERs."""
    rng = np.random.default_rng(seed)
    ix = rng.integers(-margin, CCD_NX + margin, n)
    iy = rng.integers(-margin, CCD_NY + margin, n)
    return ix, iy, rng.integers(1, 41, n)


def reference(path, wcs, ix, iy, size, numbers):
    """Whole mask read by astropy; each stamp pixel: CCD -> sky -> nearest tile pixel, looked up alone.

    Returns the neighbour pixels and the 0-based tile (row, col) of every stamp pixel (-1 off the tile).
    """
    mask = fits.getdata(path)
    tile_wcs = WCS(fits.getheader(path, 1 if "compressed" in str(path) else 0))
    half = size // 2
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    x = (ix[:, None, None] + dx + 1.0).ravel()
    y = (iy[:, None, None] + dy + 1.0).ravel()
    ra, dec = wcs.all_pix2world(x, y, 1)
    tx, ty = tile_wcs.all_world2pix(ra, dec, 1)
    col = np.floor(tx + 0.5).astype(np.int64) - 1  # the tile pixel whose centre is nearest
    row = np.floor(ty + 0.5).astype(np.int64) - 1
    on = (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
    values = np.zeros(x.size, np.int64)
    for k in np.flatnonzero(on):
        values[k] = mask[row[k], col[k]]
    values = values.reshape(-1, size, size)
    expected = (values != 0) & (values != numbers[:, None, None])
    return expected, np.where(on, row, -1).reshape(values.shape), np.where(on, col, -1).reshape(values.shape)


@pytest.fixture
def recorded_reads(monkeypatch):
    """Boxes passed to ObjectMask.read, and tile rows astropy decompresses."""
    boxes, tile_rows = [], []
    read = ObjectMask.read

    def recording_read(self, y1, y2, x1, x2):
        boxes.append((y1, y2, x1, x2))
        return read(self, y1, y2, x1, x2)

    decompress = comp_section.decompress_image_data_section

    def recording_decompress(*args):
        first, last = args[-2], args[-1]
        tile_rows.append((int(first[0]), int(last[0])))
        return decompress(*args)

    monkeypatch.setattr(ObjectMask, "read", recording_read)
    monkeypatch.setattr(comp_section, "decompress_image_data_section", recording_decompress)
    return boxes, tile_rows


@pytest.mark.parametrize("kind", ["plain", "compressed"])
def test_section_matches_whole_mask_lookup(mask_files, kind):
    """Rotated, distorted, offset exposure: the same pixels as a per-pixel lookup in the whole mask."""
    wcs = exposure_wcs(-20.0, 15.0)
    ix, iy, numbers = stamps()
    expected, rows, _ = reference(mask_files[kind], wcs, ix, iy, SIZE, numbers)
    mask = read_object_mask(mask_files[kind])
    assert mask.pixels is None and mask.shape == (TILE_NY, TILE_NX) and mask.dtype == np.int32
    got = neighbour_stamp_pixels(mask, wcs, ix, iy, SIZE, numbers, chunk=17)
    np.testing.assert_array_equal(got, expected)
    whole = ObjectMask.from_array(mask_files["pixels"], WCS(mask_files["header"]))
    np.testing.assert_array_equal(neighbour_stamp_pixels(whole, wcs, ix, iy, SIZE, numbers), expected)
    assert expected.sum() > 5000 and (rows >= 0).all()  # a real comparison: every pixel on the tile


@pytest.mark.parametrize("kind", ["plain", "compressed"])
def test_stamps_partly_and_wholly_off_the_tile(mask_files, kind, recorded_reads):
    # The CCD overhangs the tile's east edge (the tile spans +-90 arcsec).
    wcs = exposure_wcs(75.0, -40.0, rotation=-11.0)
    ix, iy, numbers = stamps(n=300, seed=4, margin=20)
    expected, rows, _ = reference(mask_files[kind], wcs, ix, iy, SIZE, numbers)
    on = (rows >= 0).reshape(len(ix), -1)
    partly = on.any(axis=1) & ~on.all(axis=1)
    assert partly.sum() >= 5 and (~on.any(axis=1)).sum() >= 5 and on.all(axis=1).sum() >= 5
    got = neighbour_stamp_pixels(read_object_mask(mask_files[kind]), wcs, ix, iy, SIZE, numbers, chunk=50)
    np.testing.assert_array_equal(got, expected)
    assert not got[rows < 0].any()
    boxes, _ = recorded_reads
    assert len(boxes) == 1
    # Stamps wholly off the tile: nothing is read.
    off = ~on.any(axis=1)
    boxes.clear()
    got = neighbour_stamp_pixels(read_object_mask(mask_files[kind]), wcs, ix[off], iy[off], SIZE, numbers[off])
    assert not got.any() and boxes == []


@pytest.mark.parametrize("kind", ["plain", "compressed"])
def test_read_is_bounded_by_the_stamps_footprint(mask_files, kind, recorded_reads):
    """One read per call, of the stamps' tile footprint plus the margin: not the tile."""
    boxes, tile_rows = recorded_reads
    wcs = exposure_wcs(-30.0, 10.0, rotation=35.0)
    ix, iy, numbers = stamps(n=60, seed=7, margin=0)
    keep = (ix < 120) & (iy < 200)  # a corner of the CCD: a footprint well inside the tile
    ix, iy, numbers = ix[keep], iy[keep], numbers[keep]
    expected, rows, cols = reference(mask_files[kind], wcs, ix, iy, SIZE, numbers)
    tile_rows.clear()  # the reference decompressed the whole mask
    got = neighbour_stamp_pixels(read_object_mask(mask_files[kind]), wcs, ix, iy, SIZE, numbers, chunk=8)
    np.testing.assert_array_equal(got, expected)
    assert len(boxes) == 1
    y1, y2, x1, x2 = boxes[0]
    on = rows >= 0
    footprint = rows[on].min(), rows[on].max() + 1, cols[on].min(), cols[on].max() + 1
    # Every stamp pixel inside the box, and the box no larger than the footprint plus the margin.
    assert y1 <= footprint[0] and footprint[1] <= y2 and x1 <= footprint[2] and footprint[3] <= x2
    assert footprint[0] - y1 <= MASK_MARGIN and y2 - footprint[1] <= MASK_MARGIN
    assert footprint[2] - x1 <= MASK_MARGIN and x2 - footprint[3] <= MASK_MARGIN
    area = (y2 - y1) * (x2 - x1)
    assert area < 0.25 * TILE_NX * TILE_NY
    if kind == "compressed":
        # Only the 64-row tiles under the box are decompressed, each once, in bands.
        decoded = sorted(r for first, last in tile_rows for r in range(first, last + 1))
        assert decoded == list(range(y1 // 64, (y2 - 1) // 64 + 1))
        assert all((last - first + 1) * 64 <= MASK_BAND_ROWS for first, last in tile_rows)
        assert len(decoded) * 64 < 0.6 * TILE_NY


def test_header_read_does_not_read_the_pixels(tmp_path):
    path = tmp_path / "big.fits"
    pixels = random_mask((1500, 1500), seed=3)  # 9 MB decompressed
    write_image(path, pixels, tile_header(1500, 1500), compress=True)
    del pixels
    tracemalloc.start()
    try:
        mask = read_object_mask(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask.pixels is None and mask.shape == (1500, 1500) and mask.hdu == 1
    assert peak < 2 * 2**20, peak
    np.testing.assert_array_equal(mask.read(700, 705, 3, 9), fits.getdata(path)[700:705, 3:9])
    assert mask.read(0, 1, 0, 2).dtype.isnative


@pytest.mark.parametrize("bitpix, bzero, bscale, blank", [
    (32, 0, 1, None), (16, 0, 1, None), (8, 0, 1, None), (64, 0, 1, None), (16, 32768, 1, None),
    (32, 2147483648, 1, None), (8, -128, 1, None), (16, 0, 2, None), (32, 5, 1, None), (32, 0, 1, -99),
    (-32, 0, 1, None)])
def test_header_dtype_is_astropys(tmp_path, bitpix, bzero, bscale, blank):
    header = fits.Header()
    raw = {8: np.uint8, 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4"}[bitpix]
    hdu = fits.PrimaryHDU(np.arange(12).reshape(3, 4).astype(raw), header)
    hdu.header["BZERO"], hdu.header["BSCALE"] = bzero, bscale
    if blank is not None:
        hdu.header["BLANK"] = blank
    hdu.writeto(tmp_path / "x.fits", output_verify="silentfix")
    with fits.open(tmp_path / "x.fits") as hdus:
        assert image_dtype(hdus[0].header) == hdus[0].data.dtype.newbyteorder("=")


def test_errors_name_the_file(tmp_path):
    float_mask = tmp_path / "float_mask.fits"
    write_image(float_mask, np.zeros((70, 80), np.float32), tile_header(80, 70), compress=True)
    with pytest.raises(JobError, match="float_mask.fits.*float32.*integers"):
        read_object_mask(float_mask)
    no_wcs = tmp_path / "no_wcs.fits"
    write_image(no_wcs, np.zeros((70, 80), np.int32), compress=True)
    with pytest.raises(JobError, match="no_wcs.fits.*celestial WCS"):
        read_object_mask(no_wcs)
    with pytest.raises(JobError, match="absent.fits"):
        read_object_mask(tmp_path / "absent.fits")
    gone = tmp_path / "gone.fits"
    write_image(gone, np.zeros((70, 80), np.int32), tile_header(80, 70))
    mask = read_object_mask(gone)
    gone.unlink()
    with pytest.raises(JobError, match="gone.fits"):
        mask.read(0, 5, 0, 5)
    with pytest.raises(ValueError, match="integer"):
        ObjectMask.from_array(np.zeros((4, 4)), WCS(tile_header()))


@pytest.mark.parametrize("first_box", [None, (300, 310, 400, 420)])
def test_a_box_too_small_is_widened(mask_files, monkeypatch, recorded_reads, first_box):
    """Should the border estimate ever miss stamp pixels, the box is widened: still the same pixels."""
    from shapepipe_modules.vignetmaker import multi_epoch

    monkeypatch.setattr(multi_epoch, "stamps_tile_box", lambda *args: first_box)
    boxes, _ = recorded_reads
    wcs = exposure_wcs(-20.0, 15.0)
    ix, iy, numbers = stamps(n=40, seed=9)
    expected, _, _ = reference(mask_files["compressed"], wcs, ix, iy, SIZE, numbers)
    got = neighbour_stamp_pixels(read_object_mask(mask_files["compressed"]), wcs, ix, iy, SIZE, numbers, chunk=10)
    np.testing.assert_array_equal(got, expected)
    assert len(boxes) >= 2 if first_box else len(boxes) >= 1
