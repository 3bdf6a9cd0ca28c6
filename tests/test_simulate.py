"""Tests of the CFIS-like simulator against its own truth (preset ``tiny``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
from astropy.io import fits  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from shapepipe.errors import ConfigError  # noqa: E402
from shapepipe_modules import cfis  # noqa: E402
from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters, simulate  # noqa: E402
from shapepipe_modules.simulate.cli import main as cli_main  # noqa: E402
from shapepipe_modules.simulate.render import background_variance  # noqa: E402
from shapepipe_modules.simulate.scene import galaxy_profile, make_scene  # noqa: E402


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate("tiny", tmp_path_factory.mktemp("sim1") / "out", seed=7, n_workers=1)


def _files(root):
    return sorted(p.relative_to(root) for p in Path(root).rglob("*") if p.is_file())


def test_contract_files_open(sim):
    record = json.loads((sim / "simulation.json").read_text())
    assert record["seed"] == 7 and record["tiles"] == ["244.252"]
    exposures = (sim / "exposure_list.txt").read_text().split()
    assert exposures == record["exposures"] and len(exposures) == 2
    assert (sim / "tile_list.txt").read_text().split() == ["244.252"]
    for number in exposures:
        for kind in ("image", "weight", "flag"):
            with fits.open(sim / "exposures" / cfis.exposure_file_name(number, kind)) as hdus:
                assert len(hdus) == 3  # primary + 2 CCDs
                header = hdus[1].header
                for key in ("EXTNAME", "GAIN", "SATURATE", "PHOTZP", "FSCALE", "EXPTIME", "MJD-OBS", "FILTER"):
                    assert key in header, key
                assert header["PHOTZP"] == 30.0
                assert hdus[1].data.shape == (1024, 512)
        weight = fits.getdata(sim / "exposures" / cfis.exposure_file_name(number, "weight"), 1)
        flag = fits.getdata(sim / "exposures" / cfis.exposure_file_name(number, "flag"), 1)
        assert np.all(weight[(flag & 1) > 0] == 0) and np.any(flag & 1)
    for kind in ("image", "weight"):
        with fits.open(sim / "tiles" / cfis.tile_file_name(244, 252, kind=kind)) as hdus:
            assert hdus[-1].data.shape == (900, 900)
    bright = fits.getdata(sim / "catalogues" / "bright_stars.fits", 1)
    assert set(bright.columns.names) == {"ra", "dec", "mag"} and len(bright) > 0
    deep = fits.getdata(sim / "catalogues" / "deep_sky.fits", 1)
    assert set(deep.columns.names) == {"name", "ra", "dec", "radius"}


def test_photometry_matches_zero_point(sim):
    """Aperture flux of bright isolated unsaturated stars equals 10^(-0.4 (mag - 30))."""
    ratios = []
    for number, ccd in [("2100001", 0), ("2100001", 1), ("2100002", 0), ("2100002", 1)]:
        truth = load_truth(sim, exposure=number)
        image = fits.getdata(sim / "exposures" / f"{number}p.fits", ccd + 1).astype(float)
        for star in _isolated_stars(truth[truth["ccd"] == ccd], 17.0, 19.5, image.shape):
            stamp = _stamp(image, star["x"], star["y"], 30)
            ratios.append((stamp.sum() - np.median(_stamp(image, star["x"], star["y"], 45)) * stamp.size) / star["flux"])
    assert len(ratios) >= 5
    assert abs(np.median(ratios) - 1.0) < 0.03


def _stamp(image, x, y, half):
    ix, iy = int(round(x)) - 1, int(round(y)) - 1
    return image[iy - half: iy + half + 1, ix - half: ix + half + 1]


def _isolated_stars(truth, mag_low, mag_high, shape, distance_pix=25):
    ny, nx = shape
    pick = truth["is_star"] & (truth["mag"] > mag_low) & (truth["mag"] < mag_high) & ~truth["saturated"] & (truth["flag"] == 0)
    pick &= (truth["x"] > 50) & (truth["x"] < nx - 50) & (truth["y"] > 50) & (truth["y"] < ny - 50)
    keep = []
    for i in np.flatnonzero(pick):
        d = np.hypot(truth["x"] - truth["x"][i], truth["y"] - truth["y"][i])
        near = (d > 0) & (d < distance_pix) & (truth["mag"] < truth["mag"][i] + 5)
        if not near.any():
            keep.append(i)
    return truth[keep]


def test_exposure_and_tile_wcs_agree(sim):
    """A star's truth position on a CCD and on the tile map to the same sky point (< 0.01 pixel)."""
    tile_truth = load_truth(sim, tile="244.252")
    tile_wcs = WCS(fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits", 0))
    checked = 0
    for number in ("2100001", "2100002"):
        truth = load_truth(sim, exposure=number)
        for ccd in (0, 1):
            ccd_wcs = WCS(fits.getheader(sim / "exposures" / f"{number}p.fits", ccd + 1))
            rows = truth[(truth["ccd"] == ccd) & truth["is_star"]]
            common, i_exp, i_tile = np.intersect1d(rows["id"], tile_truth["id"], return_indices=True)
            ra, dec = ccd_wcs.all_pix2world(rows["x"][i_exp], rows["y"][i_exp], 1)
            tx, ty = tile_wcs.all_world2pix(ra, dec, 1)
            offset = np.hypot(tx - tile_truth["x"][i_tile], ty - tile_truth["y"][i_tile])
            assert offset.max() < 0.01
            ra_t, dec_t = tile_wcs.all_pix2world(tile_truth["x"][i_tile], tile_truth["y"][i_tile], 1)
            assert np.allclose(ra_t, tile_truth["ra"][i_tile], atol=1e-9) and np.allclose(dec_t, tile_truth["dec"][i_tile], atol=1e-9)
            checked += common.size
    assert checked > 100


def test_star_shapes_match_true_psf(sim):
    """hsm FWHM proxy and ellipticity of bright isolated stars match the true PSF."""
    psf = TruePSF(sim)
    d_sigma, d_e1, d_e2 = [], [], []
    for number, ccd in [("2100001", 0), ("2100001", 1), ("2100002", 0), ("2100002", 1)]:
        truth = load_truth(sim, exposure=number)
        image = fits.getdata(sim / "exposures" / f"{number}p.fits", ccd + 1).astype(float)
        for star in _isolated_stars(truth[truth["ccd"] == ccd], 16.0, 18.0, image.shape):
            half = 16
            data = _stamp(image, star["x"], star["y"], half) - np.median(_stamp(image, star["x"], star["y"], 40))
            measured = galsim.hsm.FindAdaptiveMom(galsim.ImageF(data, scale=1.0))
            model = psf.draw(int(number), ccd, star["x"], star["y"], flux=star["flux"], size=2 * half + 1)
            expected = galsim.hsm.FindAdaptiveMom(model)
            fwhm, e1, e2 = psf.shape(int(number), ccd, star["x"], star["y"])
            d_sigma.append(measured.moments_sigma / expected.moments_sigma - 1.0)
            d_e1.append(measured.observed_shape.e1 - e1)
            d_e2.append(measured.observed_shape.e2 - e2)
    assert len(d_sigma) >= 10
    assert np.max(np.abs(d_sigma)) < 0.02
    # Star and sky photon noise of mag 16-18 stars gives per-star errors of
    # about 0.005: the ensemble mean must agree to 0.002 (no bias) and the
    # scatter stay at the noise level.
    for d_e in (np.array(d_e1), np.array(d_e2)):
        assert abs(np.mean(d_e)) < 0.002 + 2 * np.std(d_e) / np.sqrt(d_e.size) and np.std(d_e) < 0.008


def test_true_psf_api(sim):
    psf = TruePSF(sim)
    x = np.linspace(1, 512, 7)
    y = np.linspace(1, 1024, 7)
    fwhm, e1, e2 = psf.shape(2100001, 1, x, y)
    assert fwhm.shape == (7,) and np.all((fwhm > 0.6) & (fwhm < 0.85))
    single = psf.shape(2100001, 1, x[3], y[3])
    assert single == pytest.approx((fwhm[3], e1[3], e2[3]))
    profile = psf.galsim(2100001, 1, x[3], y[3])
    assert profile.calculateFWHM() == pytest.approx(fwhm[3], rel=0.02)  # sheared: geometric mean FWHM
    assert psf.tile_galsim("244.252").flux == pytest.approx(1.0)
    with pytest.raises(KeyError, match="psf.json"):
        psf.shape(999, 0, 1.0, 1.0)


def test_ring_pairs_recover_shear():
    """Noise-free, PSF-free ring pairs give back the applied shear to 1e-3."""
    from scipy.optimize import least_squares

    params = resolve_parameters("tiny", ring=True, shear=[[0.02, -0.01]], galaxy_density=40.0, star_density=1.0)
    ra0, dec0 = cfis.tile_centre(244, 252)
    scene = make_scene(params, 3, (ra0 - 0.02, ra0 + 0.02, dec0 - 0.02, dec0 + 0.02))
    galaxies = np.flatnonzero(~scene["is_star"])
    pairs = {}
    for i in galaxies:
        pairs.setdefault(int(scene["pair_id"][i]), []).append(i)
    pairs = [p for p in pairs.values() if len(p) == 2][:40]
    assert len(pairs) == 40

    def measured(i):
        profile = galaxy_profile(scene["disk_hlr"][i], scene["bulge_hlr"][i], scene["bulge_frac"][i],
                                 scene["e1_int"][i], scene["e2_int"][i], scene["g1"][i], scene["g2"][i])
        image = profile.drawImage(nx=256, ny=256, scale=scene["hlr"][i] / 8.0, method="no_pixel").array
        # Unweighted quadrupole moments: exact for profiles with elliptical isophotes.
        y, x = np.indices(image.shape, dtype=float)
        total = image.sum()
        xc, yc = (image * x).sum() / total, (image * y).sum() / total
        qxx = (image * (x - xc) ** 2).sum()
        qyy = (image * (y - yc) ** 2).sum()
        qxy = (image * (x - xc) * (y - yc)).sum()
        chi = complex(qxx - qyy, 2 * qxy) / (qxx + qyy)
        return chi / (1.0 + np.sqrt(1.0 - abs(chi) ** 2))

    observed = np.array([[measured(a), measured(b)] for a, b in pairs])

    def residual(g):
        g = complex(*g)
        intrinsic = (observed - g) / (1.0 - np.conj(g) * observed)
        total = intrinsic[:, 0] + intrinsic[:, 1]  # a ring pair's intrinsic shapes cancel
        return np.concatenate([total.real, total.imag])

    g1, g2 = least_squares(residual, [0.0, 0.0]).x
    assert abs(g1 - 0.02) < 1e-3 and abs(g2 + 0.01) < 1e-3
    # The first-order estimate (plain pair mean) is within the ring's cancellation too.
    assert abs(observed.mean().real - 0.02) < 5e-3


def test_same_seed_byte_identical_with_two_workers(sim, tmp_path):
    other = simulate("tiny", tmp_path / "out", seed=7, n_workers=2)
    files = _files(sim)
    assert files == _files(other)
    for name in files:
        assert (sim / name).read_bytes() == (other / name).read_bytes(), name


def test_enough_usable_stars_per_ccd(sim):
    """Every CCD has >= 40 unsaturated, isolated stars with S/N > 50 (the PSF stage needs them)."""
    params = json.loads((sim / "simulation.json").read_text())["parameters"]
    variance = background_variance(params)
    for number in ("2100001", "2100002"):
        truth = load_truth(sim, exposure=number)
        for ccd in (0, 1):
            rows = truth[truth["ccd"] == ccd]
            n_eff = 4 * np.pi * (rows["psf_fwhm"] / 2.355 / params["pixel_scale"]) ** 2
            snr = rows["flux"] / np.sqrt(n_eff * variance + rows["flux"] / params["gain"])
            usable = rows[rows["is_star"] & ~rows["saturated"] & (snr > 50) & (rows["flag"] == 0)]
            isolated = [
                i for i in range(len(usable))
                if np.sum(np.hypot(rows["x"] - usable["x"][i], rows["y"] - usable["y"][i]) < 3.0 / params["pixel_scale"]) == 1
            ]
            assert len(isolated) >= 40, (number, ccd, len(isolated))


@pytest.mark.external
def test_source_extractor_runs_on_a_ccd(sim, tmp_path):
    executable = shutil.which("source-extractor") or shutil.which("sex")
    if executable is None:
        pytest.skip("source-extractor not installed")
    (tmp_path / "cat.param").write_text("X_IMAGE\nY_IMAGE\nFLUX_AUTO\nFLAGS\n")
    image = str(sim / "exposures" / "2100001p.fits") + "[1]"
    catalogue = tmp_path / "cat.fits"
    subprocess.run(
        [executable, image, "-c", "/dev/null", "-CATALOG_NAME", str(catalogue), "-CATALOG_TYPE", "FITS_1.0",
         "-PARAMETERS_NAME", str(tmp_path / "cat.param"), "-FILTER", "N", "-DETECT_THRESH", "5",
         "-SATUR_KEY", "SATURATE", "-GAIN_KEY", "GAIN", "-VERBOSE_TYPE", "QUIET"],
        check=True, cwd=tmp_path, timeout=120,
    )
    detected = fits.getdata(catalogue, 1)
    truth = load_truth(sim, exposure="2100001")
    stars = _isolated_stars(truth[truth["ccd"] == 0], 16.0, 20.0, (1024, 512))
    matched = 0
    for star in stars:
        d = np.hypot(detected["X_IMAGE"] - star["x"], detected["Y_IMAGE"] - star["y"])
        matched += d.min() < 0.1  # same 1-based pixel convention
    assert len(detected) > 50 and matched >= 0.9 * len(stars)


def test_tile_history_lists_exactly_the_overlapping_exposures(tmp_path):
    out = tmp_path / "two"
    status = cli_main(["--preset", "tiny", "-o", str(out), "--seed", "3", "--no-progress", "--tiles", "244.252", "245.252",
                       "--set", "exposures_per_tile=1", "--set", "galaxy_density=2", "--set", "star_density=2",
                       "--set", "ccd_rows=[2, 2]", "--set", "tile_size=600"])
    assert status == 0
    exposures = (out / "exposure_list.txt").read_text().split()
    for tile in ("244.252", "245.252"):
        path = out / "tiles" / cfis.tile_file_name(*cfis.parse_tile_id(tile))
        header = fits.getheader(path, 0)
        listed = {str(h).split()[2].removesuffix("p.fits") for h in header["HISTORY"]}
        tile_wcs = WCS(header)
        overlapping = set()
        for number in exposures:
            with fits.open(out / "exposures" / f"{number}p.fits") as hdus:
                for hdu in hdus[1:]:
                    ny, nx = hdu.data.shape
                    gx, gy = np.meshgrid(np.linspace(1, nx, 60), np.linspace(1, ny, 120))
                    ra, dec = WCS(hdu.header).all_pix2world(gx.ravel(), gy.ravel(), 1)
                    tx, ty = tile_wcs.all_world2pix(ra, dec, 1)
                    if np.any((tx > 0.5) & (tx < 600.5) & (ty > 0.5) & (ty < 600.5)):
                        overlapping.add(number)
        assert listed == overlapping and listed
    assert cli_main(["--preset", "tiny", "-o", str(tmp_path / "bad"), "--set", "no_such_parameter=1"]) == 2


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="no_such"):
        resolve_parameters("tiny", no_such=1)
    with pytest.raises(ConfigError, match="distortion"):
        resolve_parameters("tiny", distortion="zpn")
    with pytest.raises(ConfigError, match="preset"):
        resolve_parameters("huge")


@pytest.mark.parametrize("ring", [False, True])
def test_min_separation_moves_only_close_objects(ring):
    """min_separation: no two objects closer (ring partners kept 30 arcsec apart), every property but the position kept."""
    from scipy.spatial import cKDTree

    from shapepipe_modules.simulate.scene import RING_SEPARATION_ARCSEC

    ra0, dec0 = cfis.tile_centre(244, 252)
    box = (ra0 - 0.05, ra0 + 0.05, dec0 - 0.05, dec0 + 0.05)
    base = resolve_parameters("calib", ring=ring, min_separation=0.0)  # the calib preset separates by default
    poisson = make_scene(base, 5, box)
    separated = make_scene(resolve_parameters("calib", ring=ring, min_separation=7.0), 5, box)

    def plane(scene):
        return np.column_stack([(scene["ra"] - ra0) * np.cos(np.radians(scene["dec"])) * 3600.0, scene["dec"] * 3600.0])

    def nearest(scene):
        xy = plane(scene)
        return cKDTree(xy).query(xy, k=2)[0][:, 1]

    assert nearest(poisson).min() < 2.0  # the Poisson scene has blends to remove
    assert nearest(separated).min() > 7.0 * (1 - 2e-3)  # tangent-plane approximation of the placement
    moved = (poisson["ra"] != separated["ra"]) | (poisson["dec"] != separated["dec"])
    assert 0.05 < moved.mean() < 0.8  # ring pairs need both points free: more of them move
    # Objects stay in the box (ring partners up to 30 arcsec outside, as in the Poisson scene).
    margin = RING_SEPARATION_ARCSEC / 3600.0 * 1.01 if ring else 0.0
    assert np.all(np.abs(separated["dec"] - dec0) <= 0.05 + margin)
    for name in ("id", "mag", "hlr", "e1_int", "e2_int", "is_star", "pair_id"):
        np.testing.assert_array_equal(poisson[name], separated[name])
    if ring:
        xy = plane(separated)
        galaxy = np.flatnonzero(~separated["is_star"])
        order = galaxy[np.argsort(separated["pair_id"][galaxy], kind="stable")]
        first, second = order[0::2], order[1::2]
        np.testing.assert_array_equal(separated["pair_id"][first], separated["pair_id"][second])
        np.testing.assert_allclose(np.hypot(*(xy[first] - xy[second]).T), RING_SEPARATION_ARCSEC, rtol=3e-3)
    # Placement is a pure function of the seed.
    again = make_scene(resolve_parameters("calib", ring=ring, min_separation=7.0), 5, box)
    np.testing.assert_array_equal(again["ra"], separated["ra"])


def test_calib_highsnr_is_calib_with_ten_times_less_noise():
    """The high-S/N calibration preset changes only the pixel noise: same scene, noise rms / 10."""
    calib, bright = resolve_parameters("calib"), resolve_parameters("calib_highsnr")
    assert {name for name in calib if calib[name] != bright[name]} == {"gain"}
    ratio = background_variance(calib) / background_variance(bright)
    assert 100.0 <= ratio < 105.0  # sky photon noise / 10; read noise (e-) / 100, and it is small
    ra0, dec0 = cfis.tile_centre(244, 252)
    box = (ra0 - 0.02, ra0 + 0.02, dec0 - 0.02, dec0 + 0.02)
    scene, same = make_scene(calib, 3, box), make_scene(bright, 3, box)
    for name in ("ra", "dec", "flux", "e1_int", "g1", "disk_hlr"):
        np.testing.assert_array_equal(scene[name], same[name])
