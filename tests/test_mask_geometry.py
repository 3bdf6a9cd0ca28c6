"""Geometry of the mask module, checked against independent computations."""

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from matplotlib.path import Path as MplPath

from shapepipe_modules.mask.config import default_config_path
from shapepipe_modules.mask.geometry import (
    angular_separation_deg,
    discs_touching_rectangle,
    fill_border,
    fill_disc,
    fill_polygon,
    image_footprint,
    magnitude_scale,
    read_template,
)


def tan_wcs(shape, ra=150.0, dec=2.0, scale_arcsec=0.187, rotation_deg=0.0):
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    s = scale_arcsec / 3600.0
    c, t = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    wcs.wcs.cd = [[-s * c, s * t], [s * t, s * c]]
    return wcs


def reference_inside(shape, vertices):
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    points = np.column_stack([xx.ravel(), yy.ravel()])
    return MplPath(vertices).contains_points(points).reshape(shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_polygon_matches_matplotlib_on_random_polygons(seed):
    rng = np.random.default_rng(seed)
    shape = (90, 120)
    # Star-shaped (often concave) polygon, partly outside the image.
    angles = np.sort(rng.uniform(0, 2 * np.pi, 15))
    radii = rng.uniform(10, 60, 15)
    centre = rng.uniform([0, 0], [120, 90])
    vertices = centre + np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])
    flag = np.zeros(shape, np.int16)
    count = fill_polygon(flag, vertices, 8)
    expected = reference_inside(shape, vertices)
    assert expected.sum() > 50
    np.testing.assert_array_equal(flag == 8, expected)
    assert count == expected.sum()


def test_fill_polygon_spike_template_matches_matplotlib():
    template = read_template(default_config_path().parent / "spike.reg")
    (polygon,) = template.in_pixels(0.187)
    shape = (500, 480)
    vertices = polygon * 0.8 + (240.3, 250.7)
    flag = np.zeros(shape, np.int32)
    fill_polygon(flag, vertices, 128)
    np.testing.assert_array_equal(flag == 128, reference_inside(shape, vertices))


def test_fill_polygon_outside_image_sets_nothing():
    flag = np.zeros((20, 20), np.int16)
    assert fill_polygon(flag, np.array([[30.0, 30], [40, 30], [35, 40]]), 2) == 0
    assert not flag.any()


def test_fill_disc_matches_brute_force_and_keeps_other_bits():
    shape = (70, 50)
    flag = np.full(shape, 1, np.int16)
    count = fill_disc(flag, 45.3, -8.2, 21.7, 16)
    yy, xx = np.mgrid[0:70, 0:50]
    inside = (xx - 45.3) ** 2 + (yy + 8.2) ** 2 <= 21.7**2
    np.testing.assert_array_equal(flag, np.where(inside, 17, 1))
    assert count == inside.sum() > 0


def test_fill_border():
    flag = np.zeros((10, 12), np.int16)
    fill_border(flag, 2, 4)
    assert (flag[:2] == 4).all() and (flag[-2:] == 4).all()
    assert (flag[:, :2] == 4).all() and (flag[:, -2:] == 4).all()
    assert not flag[2:-2, 2:-2].any()


def test_disc_overlapping_an_edge_without_covering_any_corner():
    shape = (100, 200)
    # Centre 10 px beyond the right edge, radius 30: overlaps, covers no corner.
    x, y, r = 209.5 + 10.0, 50.0, 30.0
    corners = np.array([[-0.5, -0.5], [199.5, -0.5], [-0.5, 99.5], [199.5, 99.5]])
    assert np.all(np.hypot(corners[:, 0] - x, corners[:, 1] - y) > r)
    assert discs_touching_rectangle(np.array([x]), np.array([y]), np.array([r]), shape)[0]
    # Near a corner but outside it: the closest point (the corner) is beyond r.
    assert not discs_touching_rectangle(np.array([-20.0]), np.array([-20.0]), np.array([27.0]), shape)[0]
    assert discs_touching_rectangle(np.array([-20.0]), np.array([-20.0]), np.array([28.0]), shape)[0]


def test_angular_separation_matches_astropy():
    rng = np.random.default_rng(3)
    ra1, dec1 = rng.uniform(0, 360, 50), rng.uniform(-89, 89, 50)
    ra2, dec2 = rng.uniform(0, 360, 50), rng.uniform(-89, 89, 50)
    expected = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    np.testing.assert_allclose(angular_separation_deg(ra1, dec1, ra2, dec2), expected, atol=1e-9)


def test_image_footprint():
    shape = (4612, 2048)
    footprint = image_footprint(tan_wcs(shape, rotation_deg=30.0), shape)
    assert footprint.pixel_scale_arcsec == pytest.approx(0.187, rel=1e-6)
    half_diagonal = np.hypot(4612, 2048) / 2 * 0.187 / 3600
    assert footprint.radius_deg == pytest.approx(half_diagonal, rel=1e-3)
    assert footprint.centre_ra == pytest.approx(150.0, abs=1e-6)


def test_magnitude_scale():
    np.testing.assert_allclose(
        magnitude_scale([13.8, 12.8, 16.8, 30.0], 13.8, 0.3, 0.1), [1.0, 1.3, 0.1, 0.1]
    )


def test_read_template_forms(tmp_path):
    plain = tmp_path / "shapepipe.reg"
    plain.write_text(" 10.0  0.0\n0 10\n-10 0\n0 -10\n")
    template = read_template(plain)
    assert template.units == "pixel" and len(template.polygons) == 1
    assert template.extent() == pytest.approx(10.0)
    ds9 = tmp_path / "ds9.reg"
    ds9.write_text("# units: arcsec\nimage\npolygon(1,0,0,1,-1,0) # comment\npolygon(0,0,2,0,2,2)\n")
    template = read_template(ds9)
    assert template.units == "arcsec" and len(template.polygons) == 2
    np.testing.assert_allclose(template.in_pixels(0.5)[1], [[0, 0], [4, 0], [4, 4]])
    bad = tmp_path / "bad.reg"
    bad.write_text("10 0\ncircle(1,2,3)\n")
    with pytest.raises(ValueError, match=r"bad.reg:2"):
        read_template(bad)


def test_default_templates_cover_their_nominal_shapes():
    halo = read_template(default_config_path().parent / "halo.reg")
    assert halo.units == "arcsec"
    vertices = halo.polygons[0]
    edges = np.roll(vertices, -1, axis=0) - vertices
    # Distance from the star to every edge: the inscribed circle of the halo.
    t = np.clip(-np.sum(vertices * edges, axis=1) / np.sum(edges**2, axis=1), 0, 1)
    inscribed = np.hypot(*(vertices + t[:, None] * edges).T).min()
    assert 49.5 < inscribed and np.hypot(*vertices.T).max() < 50.01
    spike = read_template(default_config_path().parent / "spike.reg")
    assert spike.extent() == pytest.approx(np.hypot(38.0, 1.6))
