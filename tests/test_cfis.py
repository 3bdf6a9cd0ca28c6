"""Tests of the CFIS tile rule and names (shapepipe_modules.cfis)."""

import numpy as np
import pytest

from shapepipe_modules import cfis


def all_tiles(rows=range(361)):
    xxx, yyy = [], []
    for row in rows:
        count = cfis.tile_row_count(row)
        xxx.append(np.arange(count))
        yyy.append(np.full(count, row))
    return np.concatenate(xxx), np.concatenate(yyy)


def sky_grid():
    ra = np.concatenate([np.linspace(0, 360, 181)[:-1], [1e-6, 0.05, 0.26, 359.74, 359.95, 359.999999]])
    dec = np.concatenate([np.linspace(-89, 89, 179), [-89.99, -89.8, -89.5, 89.5, 89.8, 89.99, 0.0, 0.26, -0.24]])
    ra, dec = np.meshgrid(ra, dec)
    return ra.ravel(), dec.ravel()


def test_rule_values_and_inverse_on_known_tile():
    assert cfis.tile_number(255.66, 34.05) == (424, 248)
    ra, dec = cfis.tile_centre(424, 248)
    assert dec == 34.0 and ra == pytest.approx(424 / 2 / np.cos(np.radians(34.0)))
    assert cfis.tile_number(359.9999, 0.0) == (0, 180)  # 720 wraps to 0


def test_every_tile_centre_maps_back_to_its_tile():
    xxx, yyy = all_tiles()
    assert len(xxx) > 100_000
    ra, dec = cfis.tile_centre(xxx, yyy)
    assert np.all((ra >= 0) & (ra < 360))
    back_x, back_y = cfis.tile_number(ra, dec)
    np.testing.assert_array_equal(back_x, xxx)
    np.testing.assert_array_equal(back_y, yyy)
    near_x, near_y = cfis.nearest_tile(ra, dec)
    np.testing.assert_array_equal(near_x, xxx)
    np.testing.assert_array_equal(near_y, yyy)


def test_coordinate_tile_centre_tile_round_trip_over_the_sky():
    ra, dec = sky_grid()
    xxx, yyy = cfis.tile_number(ra, dec)
    canonical = xxx < cfis.tile_row_count(yyy)
    # Only the last column before RA 360 can fall outside the canonical range
    # (its centre wraps to RA 0): cos(dec) of the point is not that of the row.
    assert np.all((ra[~canonical] > 300) | (np.abs(dec[~canonical]) > 80))
    back = cfis.tile_number(*cfis.tile_centre(xxx[canonical], yyy[canonical]))
    np.testing.assert_array_equal(back[0], xxx[canonical])
    np.testing.assert_array_equal(back[1], yyy[canonical])
    # The nearest tile round-trips everywhere and its centre is within half a
    # tile diagonal (0.354 deg) of the coordinate.
    near = cfis.nearest_tile(ra, dec)
    centre = cfis.tile_centre(*near)
    np.testing.assert_array_equal(cfis.nearest_tile(*centre)[0], near[0])
    distance = cfis.angular_separation(ra, dec, *centre)
    assert distance.max() < 0.36


def test_nearest_tile_is_the_brute_force_nearest_centre():
    rng = np.random.default_rng(11)
    ra = np.concatenate([rng.uniform(0, 360, 300), rng.uniform(359.5, 360, 50), rng.uniform(0, 0.5, 50)])
    dec = np.concatenate([rng.uniform(-89.9, 89.9, 300), rng.uniform(-89.9, 89.9, 100)])
    near_x, near_y = cfis.nearest_tile(ra, dec)
    xxx, yyy = all_tiles()
    centre_ra, centre_dec = cfis.tile_centre(xxx, yyy)
    for index in range(len(ra)):
        band = np.abs(centre_dec - dec[index]) < 1.6
        distance = cfis.angular_separation(ra[index], dec[index], centre_ra[band], centre_dec[band])
        best = np.argmin(distance)
        mine = cfis.angular_separation(ra[index], dec[index], *cfis.tile_centre(near_x[index], near_y[index]))
        assert mine == pytest.approx(distance[best], abs=1e-12)


def test_rule_tile_can_differ_from_the_nearest_near_boundaries():
    # The rule takes cos(dec) at the coordinate, not at the row centre.
    ra, dec = 300.0, 45.2
    rule = cfis.tile_number(ra, dec)
    near = cfis.nearest_tile(ra, dec)
    assert rule != near
    assert cfis.angular_separation(ra, dec, *cfis.tile_centre(*near)) < cfis.angular_separation(
        ra, dec, *cfis.tile_centre(*rule))


def test_ra_range_wraps_both_conventions():
    ra = np.array([355.0, 359.0, 0.0, 5.0, 11.0, 180.0])
    expected = [False, True, True, True, False, False]
    np.testing.assert_array_equal(cfis.ra_in_range(ra, 358, 10), expected)
    np.testing.assert_array_equal(cfis.ra_in_range(ra, 358, 370), expected)
    np.testing.assert_array_equal(cfis.ra_in_range(ra, 4, 12), [False, False, False, True, True, False])
    assert cfis.ra_in_range(ra, 0, 360).all()


def test_tiles_in_area_equals_brute_force():
    xxx, yyy = all_tiles(range(150, 220))
    ra, dec = cfis.tile_centre(xxx, yyy)
    for area in [(358.0, -2.0, 3.0, 2.0), (100.2, 10.0, 105.7, 13.4), (350.0, 0.0, 370.0, 0.5)]:
        ra0, dec0, ra1, dec1 = area
        inside = cfis.ra_in_range(ra, ra0, ra1) & (dec >= dec0) & (dec <= dec1)
        found_x, found_y = cfis.tiles_in_area(*area)
        assert set(zip(found_x, found_y)) == set(zip(xxx[inside], yyy[inside]))
        assert len(found_x) == inside.sum() > 0


def test_names_and_parsing():
    assert cfis.cfis_file_name((244, 252), "tile") == "CFIS.244.252.r.fits"
    assert cfis.cfis_file_name((1, 2), "weight") == "CFIS.001.002.r.weight.fits"
    assert cfis.cfis_file_name((1, 2), "weight.fz") == "CFIS.001.002.r.weight.fits.fz"
    assert cfis.cfis_file_name("2113737", "exposure") == "2113737p.fits"
    assert cfis.cfis_file_name("2113737", "exposure_weight.fz") == "2113737p.weight.fits.fz"
    assert cfis.cfis_file_name("-2113737", "exposure_flag") == "2113737p.flag.fits"
    with pytest.raises(ValueError, match="unknown image type"):
        cfis.cfis_file_name("1", "cat")
    assert cfis.parse_tile_id("CFIS.244.252.r.fits") == (244, 252)
    assert cfis.parse_exposure_name("/data/2113737p.weight.fits.fz") == "2113737"
    assert cfis.parse_exposure_name("image-2113737-3.fits") == "2113737"
    with pytest.raises(ValueError):
        cfis.parse_exposure_name("CFIS.244.252.r.fits")
    assert cfis.tile_file_name(244, 252, kind="weight") == "CFIS.244.252.r.weight.fits.fz"
    assert cfis.exposure_file_name(2113737, "flag") == "2113737p.flag.fits.fz"
