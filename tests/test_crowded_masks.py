"""Object masks, saturated-star regions, local sky, ds9 regions and neighbour-masked stamps (docs/crowded.md)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import run_module
from shapepipe_modules.crowded import localsky, masks, regions
from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor

galsim = pytest.importorskip("galsim")

HOT = "BACK_TYPE=AUTO BACK_SIZE=64 DETECT_THRESH=3 DETECT_MINAREA=10 DEBLEND_MINCONT=0.01"
COLD = "BACK_TYPE=AUTO BACK_SIZE=24 DETECT_THRESH=1.2 DEBLEND_MINCONT=0.0005"


def _catalogue(rows):
    names = ("NUMBER", "X_IMAGE", "Y_IMAGE", "A_IMAGE", "B_IMAGE", "THETA_IMAGE", "KRON_RADIUS")
    return Table(rows=rows, names=names)


def _brute_force_mask(shape, table, scale, offset):
    """Pixel by pixel: the object of smallest area whose ellipse holds the pixel centre."""
    out = np.zeros(shape, np.int32)
    area = np.inf * np.ones(shape)
    for row in table:
        a = scale * row["KRON_RADIUS"] * row["A_IMAGE"] + offset
        b = scale * row["KRON_RADIUS"] * row["B_IMAGE"] + offset
        t = np.radians(row["THETA_IMAGE"])
        for j in range(shape[0]):
            for i in range(shape[1]):
                dx, dy = i + 1 - row["X_IMAGE"], j + 1 - row["Y_IMAGE"]
                u = (dx * np.cos(t) + dy * np.sin(t)) / a
                v = (-dx * np.sin(t) + dy * np.cos(t)) / b
                if u * u + v * v <= 1 and a * b < area[j, i]:
                    out[j, i], area[j, i] = row["NUMBER"], a * b
    return out


def test_object_mask_matches_pixel_by_pixel_painting():
    table = _catalogue([(1, 30.0, 30.0, 6.0, 3.0, 30.0, 3.0), (2, 40.0, 33.0, 1.5, 1.0, -60.0, 3.5),
                        (3, 5.0, 58.0, 2.0, 2.0, 0.0, 3.5), (4, 31.0, 28.0, 1.0, 0.8, 10.0, 3.5)])
    mask = masks.object_mask((60, 70), table, scale=1.0, offset=1.0)
    np.testing.assert_array_equal(mask, _brute_force_mask((60, 70), table, 1.0, 1.0))
    # Smaller objects on top of the large one keep their own pixels; object 3 is clipped at the edge.
    assert {1, 2, 3, 4} <= set(np.unique(mask))
    assert abs((mask == 1).sum() + (mask == 2).sum() + (mask == 4).sum() - np.pi * 19 * 10) < 0.1 * np.pi * 190
    saturated = np.zeros((60, 70), bool)
    saturated[0:5, 60:62] = True
    assert np.all(masks.object_mask((60, 70), table, 1.0, 1.0, saturated)[saturated] == masks.SATURATED_VALUE)
    # Removing object 1 frees its own pixels only.
    freed = masks.unmask_object(mask, table, 1, 1.0, 1.0)
    assert not np.any(freed == 1)
    np.testing.assert_array_equal(freed[mask != 1], mask[mask != 1])
    with pytest.raises(ValueError, match="NUMBER 9"):
        masks.unmask_object(mask, table, 9)


def test_ring_sky_finds_the_level_under_a_gradient_and_a_neighbour():
    rng = np.random.default_rng(3)
    ny, nx = 301, 301
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = 100.0 + 0.02 * (xx - 150)  # gradient: the mean of a ring around the centre is the centre's value
    galaxy = 5000.0 * np.exp(-0.5 * ((xx - 150) ** 2 + (yy - 150) ** 2) / 6.0**2) / (2 * np.pi * 36)
    neighbour = 800.0 * np.exp(-0.5 * ((xx - 175) ** 2 + (yy - 150) ** 2) / 2.0**2)
    image = sky + galaxy + neighbour + rng.normal(0, 2.0, (ny, nx))
    table = _catalogue([(1, 151.0, 151.0, 6.0, 6.0, 0.0, 1.0), (2, 176.0, 151.0, 2.0, 2.0, 0.0, 3.5)])
    mask = masks.object_mask(image.shape, table, 1.0, 2.0)
    result = localsky.local_sky(image, mask, table, ("RING",), scale=1.0, offset=2.0)
    assert result["BKG_METHOD"][0] == localsky.METHOD_CODES["RING"]
    assert abs(result["BKG_LOCAL"][0] - 100.0) < result["BKG_LOCAL_STD"][0]
    assert result["BKG_LOCAL_STD"][0] == pytest.approx(2.0, rel=0.3)
    boxes = localsky.local_sky(image, mask, table, ("BOXES",), scale=1.0, offset=2.0)
    assert boxes["BKG_METHOD"][0] == 2 and abs(boxes["BKG_LOCAL"][0] - 100.0) < 1.0
    # Everything masked: no method converges, the values are NaN.
    none = localsky.local_sky(image, np.ones(image.shape, np.int32), table, ("RING", "BOXES"))
    assert np.all(none["BKG_METHOD"] == localsky.NOT_CONVERGED) and np.all(np.isnan(none["BKG_LOCAL"]))


def test_plane_boxes_cover_exactly_the_plane():
    rng = np.random.default_rng(1)
    plane = rng.uniform(size=(40, 50)) < 0.3
    plane[5:20, 10:30] = True
    painted = np.zeros(plane.shape, int)
    for x0, y0, x1, y1 in regions.plane_boxes(plane):
        painted[y0:y1 + 1, x0:x1 + 1] += 1
    np.testing.assert_array_equal(painted, plane.astype(int))  # covered once, nothing else


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    from shapepipe_modules.simulate import simulate

    sim = simulate("cluster_knotty", tmp_path_factory.mktemp("cluster") / "sim", seed=2, n_workers=1)
    header = fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits")
    fits.PrimaryHDU(fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1), header=header).writeto(
        sim / "weight.fits")
    out = sim.parent / "sex"
    summary = run_module(
        sextractor, [sim / "tiles" / "CFIS.244.252.r.fits", sim / "weight.fits"], out, "-244-252",
        DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=False, PASSES=["HOT", "COLD"],
        PASS_SETTINGS=[HOT, COLD], PASS_ELLIPSE_SCALE=1.0, OBJECT_MASK=True, SATURATION_REGIONS=True,
        LOCAL_SKY=True, REGIONS=True, REGIONS_COLOR_BY="PASS", REGIONS_SELECTION=["MAG_AUTO < 23", "FLAGS < 4"])
    return sim, out, summary


def test_saturated_regions_cover_the_bright_stars_and_their_trails(cluster_run):
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.cluster import ROLE_BRIGHT_STAR

    sim, out, summary = cluster_run
    plane = fits.getdata(out / "satmask-244-252.fits", 1).astype(bool)
    image = fits.getdata(sim / "tiles" / "CFIS.244.252.r.fits")
    saturated = image >= fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits")["SATURATE"]
    assert saturated.any() and np.all(plane[saturated])  # every saturated (and bled) pixel is inside
    assert plane.mean() < 0.02
    truth = load_truth(sim, tile="244.252")
    for star in truth[truth["cluster_role"] == ROLE_BRIGHT_STAR]:
        assert plane[int(round(star["y"])) - 1, int(round(star["x"])) - 1]
    mask = fits.getdata(out / "objmask-244-252.fits", 1)
    assert np.all(mask[plane] == masks.SATURATED_VALUE)
    assert summary["n_saturated_regions"] >= 3
    text = (out / "satstars-244-252.reg").read_text()
    assert text.count("box(") == text.count("circle(") == summary["n_saturated_regions"]


def test_object_mask_of_the_cluster(cluster_run):
    sim, out, summary = cluster_run
    table, _ = read_ldac(out / "sexcat-244-252.fits")
    mask = fits.getdata(out / "objmask-244-252.fits", 1)
    assert mask.dtype == np.int32
    numbers = set(np.unique(mask)) - {0, masks.SATURATED_VALUE}
    # Nearly every object owns pixels (a tiny one may sit wholly inside a saturated region).
    assert len(numbers) >= 0.97 * len(table) and numbers <= set(table["NUMBER"])
    # The centre pixel of every object not covered by a smaller one or a saturated region holds its NUMBER.
    ix = np.rint(table["X_IMAGE"]).astype(int) - 1
    iy = np.rint(table["Y_IMAGE"]).astype(int) - 1
    assert np.mean(mask[iy, ix] == table["NUMBER"]) > 0.9


def test_local_sky_of_the_cluster_against_the_true_diffuse_light(cluster_run):
    from shapepipe_modules.validate.crowded import diffuse_light, local_sky_scores

    sim, out, summary = cluster_run
    table, _ = read_ldac(out / "sexcat-244-252.fits")
    assert {"BKG_LOCAL", "BKG_LOCAL_STD", "BKG_METHOD"} <= set(table.colnames)
    scores = local_sky_scores(table, diffuse_light(sim))
    assert scores["converged"] > 0.95
    assert scores["within_1_sigma"] >= 0.9
    assert abs(scores["median_offset"]) < 0.2 * scores["median_std"]


def test_catalogue_regions_read_back(cluster_run):
    import regions as ds9

    sim, out, summary = cluster_run
    table, _ = read_ldac(out / "sexcat-244-252.fits")
    shapes = ds9.Regions.read(str(out / "sexcat-244-252.reg"), format="ds9")
    selected = table[(table["MAG_AUTO"] < 23) & (table["FLAGS"] < 4)]
    assert len(shapes) == len(selected) > 10
    x, y, a, b, theta = masks.object_ellipses(selected, 1.0, 2.0)
    for i, shape in enumerate(shapes):
        # regions uses 0-based pixel centres, full axis lengths.
        assert shape.center.x == pytest.approx(x[i] - 1, abs=1e-3)
        assert shape.center.y == pytest.approx(y[i] - 1, abs=1e-3)
        assert shape.width == pytest.approx(2 * a[i], abs=2e-3) and shape.height == pytest.approx(2 * b[i], abs=2e-3)
        assert shape.angle.to_value("deg") == pytest.approx(np.degrees(theta[i]), abs=1e-3)
        assert str(shape.meta["text"]) == str(selected["NUMBER"][i])
        assert shape.visual["edgecolor"] == regions.CLASS_COLOURS[selected["PASS"][i]]


def test_mask_plane_regions_read_back(cluster_run):
    import regions as ds9

    sim, out, summary = cluster_run
    plane = fits.getdata(out / "satmask-244-252.fits", 1).astype(bool)
    path = out / "satmask.reg"
    regions.write_regions(path, regions.plane_regions(plane))
    painted = np.zeros(plane.shape, bool)
    for shape in ds9.Regions.read(str(path), format="ds9"):
        painted |= shape.to_mask(mode="center").to_image(plane.shape).astype(bool)
    np.testing.assert_array_equal(painted, plane)


def test_vignetmaker_gives_neighbours_zero_weight(cluster_run):
    from shapepipe_modules.vignetmaker.runner import vignetmaker

    sim, out, summary = cluster_run
    catalogue = out / "sexcat-244-252.fits"
    run_module(vignetmaker, [catalogue, sim / "weight.fits", sim / "tiles" / "CFIS.244.252.r.fits",
                             out / "objmask-244-252.fits"], out / "vig", "-244-252",
               NEIGHBOUR_MASK=True, PREFIX=["weight", "image"], POSITION_PARAMS=["X_IMAGE", "Y_IMAGE"])
    weight, _ = read_ldac(out / "vig" / "weight_vignet-244-252.fits")
    image, _ = read_ldac(out / "vig" / "image_vignet-244-252.fits")
    assert "MASKED_FRACTION" in weight.colnames and "MASKED_FRACTION" not in image.colnames
    table, _ = read_ldac(catalogue)
    mask = fits.getdata(out / "objmask-244-252.fits", 1)
    half = 25
    checked = 0
    for row, stamp, fraction in zip(table, weight["VIGNET"], weight["MASKED_FRACTION"]):
        ix, iy = int(np.floor(row["X_IMAGE"] - 0.5)), int(np.floor(row["Y_IMAGE"] - 0.5))
        if not (half <= ix < mask.shape[1] - half and half <= iy < mask.shape[0] - half):
            continue
        window = mask[iy - half:iy + half + 1, ix - half:ix + half + 1]
        other = (window != 0) & (window != row["NUMBER"])
        assert fraction == pytest.approx(other.mean(), abs=1e-6)
        assert np.all(stamp[other] == 0) and np.all(stamp[~other] > 0)
        checked += 1
    assert checked > 100 and np.max(weight["MASKED_FRACTION"]) > 0.3
