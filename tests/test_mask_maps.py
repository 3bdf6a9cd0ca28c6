"""mask_maps: the flag image as a healsparse map, the coverage map and the object mask columns."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import run_module
from shapepipe_modules.mask_maps.maps import coverage_counts, flag_map_pixels, object_mask_columns
from shapepipe_modules.mask_maps.runner import mask_maps, validate
from test_mask_geometry import tan_wcs

SHAPE = (300, 200)
NSIDE = 2**17  # 1.61 arcsec: about 8.6 x 8.6 pixels of 0.187 arcsec


def _flag_image(tmp_path):
    """A flag image with the mask's header cards: a disc (HALO), a column (EXTERNAL), a corner (BORDER)."""
    wcs = tan_wcs(SHAPE, ra=35.0, dec=-5.0)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    flag = np.zeros(SHAPE, np.int16)
    flag[(xx - 120.0) ** 2 + (yy - 150.0) ** 2 < 40.0**2] |= 2
    flag[:, 30] |= 1
    flag[:12, :] |= 4
    header = wcs.to_header()
    header["MP_HALO"] = 2
    header["HIERARCH MP_BORDER"] = 4
    header["HIERARCH MP_EXTERNAL"] = 1
    path = tmp_path / "pipeline_flag-244-252.fits"
    fits.PrimaryHDU(flag, header).writeto(path)
    return path, flag, wcs


def _cells(wcs, x, y):
    import hpgeom

    ra, dec = wcs.all_pix2world(x, y, 0)
    return hpgeom.angle_to_pixel(NSIDE, ra, dec, nest=True, lonlat=True, degrees=True)


def test_map_holds_the_or_of_the_pixels_of_each_healpix_pixel(tmp_path):
    import hpgeom

    _, flag, wcs = _flag_image(tmp_path)
    pixels, values = flag_map_pixels(flag, wcs, NSIDE)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    cells = _cells(wcs, xx.ravel(), yy.ravel())
    # Independent: a dictionary of OR-ed flags, one image pixel at a time.
    expected = {}
    for cell, value in zip(cells.tolist(), flag.ravel().tolist()):
        expected[cell] = expected.get(cell, 0) | value
    assert pixels.tolist() == sorted(expected)
    assert values.tolist() == [expected[p] for p in sorted(expected)]
    # Every image pixel's bits are in the map at its centre; where the whole HEALPix pixel is uniform, exactly.
    lookup = dict(zip(pixels.tolist(), values.tolist()))
    at_centres = np.array([lookup[c] for c in cells.tolist()]).reshape(SHAPE)
    assert np.all((at_centres & flag) == flag)
    assert 0.5 < np.mean(at_centres == flag) < 1.0
    # Geometry, independent of the image: HEALPix pixels whose centres lie a cell size inside the disc carry
    # HALO; those a cell size outside it (and away from the other planes) carry nothing.
    cell_pix = hpgeom.nside_to_resolution(NSIDE, units="arcseconds") / 0.187
    ra, dec = hpgeom.pixel_to_angle(NSIDE, pixels, nest=True, lonlat=True, degrees=True)
    x, y = wcs.all_world2pix(ra, dec, 0)
    r = np.hypot(x - 120.0, y - 150.0)
    inside = r < 40 - cell_pix
    outside = (r > 40 + cell_pix) & (np.abs(x - 30) > cell_pix) & (y > 11.5 + cell_pix)
    assert inside.sum() > 30 and outside.sum() > 300
    assert np.all(values[inside] & 2) and not np.any(values[outside])


def _ccd_wcs(crpix1):
    """The tile's tangent plane with the reference pixel moved: CCD x = tile x + crpix1 - 100.5."""
    wcs = tan_wcs(SHAPE, ra=35.0, dec=-5.0)
    wcs.wcs.crpix = [crpix1, 150.5]
    wcs.wcs.set()
    return wcs


def test_coverage_counts_exposures_not_ccds():
    """Exposure e1: two CCDs of 90 columns with a 10-column gap; e2: one CCD over everything, listed twice."""
    import hpgeom

    tile = tan_wcs(SHAPE, ra=35.0, dec=-5.0)
    ra0, dec0 = tile.all_pix2world([100.0], [150.0], 0)
    cells = hpgeom.query_circle(NSIDE, ra0[0], dec0[0], 60 * 0.187 / 3600, nest=True, lonlat=True, degrees=True)
    ccds = [("e1", _ccd_wcs(5.5), 90, 300),     # tile x in [94.5, 184.5)
            ("e1", _ccd_wcs(105.5), 90, 300),   # tile x in [-5.5, 84.5)
            ("e2", _ccd_wcs(100.5), 200, 300),
            ("e2", _ccd_wcs(100.5), 200, 300)]
    counts = coverage_counts(cells, NSIDE, ccds)
    ra, dec = hpgeom.pixel_to_angle(NSIDE, cells, nest=True, lonlat=True, degrees=True)
    x, _ = tile.all_world2pix(ra, dec, 0)
    expected = 1 + (((x >= 94.5) & (x < 184.5)) | ((x >= -5.5) & (x < 84.5)))
    clear = (np.abs(x - 94.5) > 1e-3) & (np.abs(x - 84.5) > 1e-3)
    assert set(np.unique(expected)) == {1, 2} and clear.sum() > 0.99 * cells.size
    np.testing.assert_array_equal(counts[clear], expected[clear])


def test_object_columns_are_the_flag_at_each_object():
    flag = np.zeros((50, 40), np.int32)
    flag[10, 20] = 2 | 8
    flag[30, 5] = 1
    wcs = tan_wcs(flag.shape, ra=35.0, dec=-5.0)
    ra, dec = wcs.all_pix2world([20.3, 4.6, 12.0, 100.0], [9.7, 30.4, 12.0, 10.0], 0)
    columns = object_mask_columns(flag, wcs, ra, dec, {"MP_HALO": 2, "MP_SATUR": 8, "MP_EXTERNAL": 1})
    assert columns["MASK_FLAGS"].tolist() == [10, 1, 0, -1]  # -1: off the image
    assert columns["MASK_HALO"].tolist() == [True, False, False, False]
    assert columns["MASK_SATUR"].tolist() == [True, False, False, False]
    assert columns["MASK_EXTERNAL"].tolist() == [False, True, False, False]


def test_validate():
    good = {"NSIDE": 4096, "NSIDE_COVERAGE": 32}
    assert validate(good) == []
    assert validate(dict(good, NSIDE=1000)) == ["NSIDE must be a power of 2 up to 2**29, got 1000"]
    assert validate(dict(good, NSIDE_COVERAGE=8192)) == ["NSIDE_COVERAGE (8192) must not exceed NSIDE (4096)"]


def test_tiny_tile_maps_against_the_simulation(tiny_sim, tiny_split, tmp_path):
    """On the tiny tile: the mask map, the coverage map against the simulator's exposure count of every
    object (truth n_exposures), and the mask columns against the flag image at the true pixel positions."""
    import healsparse

    from shapepipe_modules.mask.runner import mask
    from shapepipe_modules.simulate import load_truth

    _, store = tiny_split
    tile = (tiny_sim / "tile_list.txt").read_text().split()[0]
    number = "-" + tile.replace(".", "-")
    image = tiny_sim / "tiles" / f"CFIS.{tile}.r.fits"
    weight = tiny_sim / "tiles" / f"CFIS.{tile}.r.weight.fits.fz"
    run_module(mask, [image, weight], tmp_path / "mask", number, USE_EXT_FLAG=False, MASK_DEFAULTS="tile",
               STAR_CAT_PATH=str(tiny_sim / "catalogues" / "bright_stars.fits"),
               DEEP_SKY_CAT_PATH=str(tiny_sim / "catalogues" / "deep_sky.fits"))
    flag_path = tmp_path / "mask" / f"pipeline_flag{number}.fits"
    truth = load_truth(tiny_sim, tile=tile)
    catalogue = tmp_path / f"truth{number}.fits"
    Table({"ID": truth["id"], "RA": truth["ra"], "DEC": truth["dec"]}).write(catalogue)
    summary = run_module(mask_maps, [flag_path, catalogue], tmp_path / "maps", number, LOG_WCS=str(store),
                         OBJECT_COLUMNS=True)

    with fits.open(flag_path) as hdus:
        from shapepipe_modules.io.images import image_hdu

        flag = image_hdu(hdus).data.astype(np.int64)
    masked = healsparse.HealSparseMap.read(str(tmp_path / "maps" / f"mask_map{number}.hsp"))
    assert masked.metadata["MP_HALO"] == 2 and masked.metadata["MP_SPIKE"] == 128
    i = np.floor(truth["x"] - 0.5).astype(int)  # truth x, y are FITS 1-based: pixel i covers [i + 0.5, i + 1.5)
    j = np.floor(truth["y"] - 0.5).astype(int)
    at_objects = masked.get_values_pos(truth["ra"], truth["dec"], lonlat=True)
    assert np.all((at_objects & flag[j, i]) == flag[j, i])

    columns = Table.read(tmp_path / "maps" / f"mask_cat{number}.fits")
    assert columns["ID"].tolist() == truth["id"].tolist()
    away = (np.abs(np.mod(truth["x"], 1) - 0.5) > 1e-4) & (np.abs(np.mod(truth["y"], 1) - 0.5) > 1e-4)
    np.testing.assert_array_equal(columns["MASK_FLAGS"][away], flag[j, i][away])
    assert np.array_equal(columns["MASK_HALO"], (np.asarray(columns["MASK_FLAGS"]) & 2) != 0)
    assert (np.asarray(columns["MASK_FLAGS"]) > 0).sum() > 0

    coverage = healsparse.HealSparseMap.read(str(tmp_path / "maps" / f"coverage{number}.hsp"))
    counts = coverage.get_values_pos(truth["ra"], truth["dec"], lonlat=True)
    n_true = np.asarray(truth["n_exposures"])
    agree = counts == n_true
    print(f"coverage = truth n_exposures for {agree.sum()} of {agree.size} objects; values {np.unique(n_true)}; "
          f"summary {summary}")
    assert len(np.unique(n_true)) >= 2
    assert agree.mean() > 0.97
    # The others are within a HEALPix pixel (and the simulator's 4-pixel coverage grid) of a CCD edge.
    edge = _ccd_edge_distance(store, truth["ra"][~agree], truth["dec"][~agree])
    cell_pix = 1.61 / 0.187
    assert np.all(edge < cell_pix + 4), edge


def _ccd_edge_distance(store_path, ra, dec):
    """Distance (pixels) from each position to the nearest CCD edge of any exposure of the store."""
    from shapepipe_modules.io.header_store import HeaderStore

    distance = np.full(len(ra), np.inf)
    with HeaderStore(store_path) as store:
        for exposure in store.exposures():
            for ccd in store.ccds(exposure):
                header = store.header(exposure, ccd)
                x, y = store.wcs(exposure, ccd).all_world2pix(ra, dec, 0)
                low, high_x, high_y = -0.5, header["NAXIS1"] - 0.5, header["NAXIS2"] - 0.5
                inside = (x >= low) & (x < high_x) & (y >= low) & (y < high_y)
                d_in = np.minimum.reduce([x - low, high_x - x, y - low, high_y - y])
                d_out = np.hypot(np.maximum.reduce([low - x, x - high_x, np.zeros_like(x)]),
                                 np.maximum.reduce([low - y, y - high_y, np.zeros_like(y)]))
                distance = np.minimum(distance, np.where(inside, d_in, d_out))
    return distance
