"""The cluster preset's smooth members: a fine pass, then the same pass on the tile minus its models (docs/crowded.md)."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from conftest import pool_cluster_scores, run_module, simulate_cluster_tile
from shapepipe_modules.sextractor.config_files import read_dot_conv
from shapepipe_modules.sextractor.passes import (confirmed_on_residual, filtered_detection_image, join_passes,
                                                  merge_shallow_splits)
from shapepipe_modules.sextractor.runner import DATA_DIR, validate
from shapepipe_modules.sextractor.subtract import (MODEL_EXTENT, TAPER_FROM, model_discs, modelled_rows,
                                                   ring_median_models, satellites, subtract_models,
                                                   subtract_models_confirming)

galsim = pytest.importorskip("galsim")

FINE = "BACK_TYPE=AUTO BACK_SIZE=12 DETECT_THRESH=1.0 DETECT_MINAREA=5 DEBLEND_MINCONT=0.0005"
FINE_DUAL = dict(PASSES=["FINE", "FINERES"], PASS_SETTINGS=[FINE, FINE], PASS_SUBTRACT_RADIUS=4.0,
                 PASS_MODEL_BACK_SIZE=64, PASS_CORE_SCALES=["-", "5"], PASS_MERGE_RADIUS=5.0, PASS_MERGE_FIRST=True,
                 PASS_SPLIT_SIGMA=3.0, PASS_SPLIT_MAX_RADIUS=6.0, PASS_SPLIT_EXTENDED_RADIUS=3.0,
                 PASS_CONFIRM_SIGMA=3.0, PASS_CONFIRM_CONTRAST=10.0)
EXAMPLE = Path(__file__).resolve().parents[1] / "example" / "crowded" / "config_tile_Sx_exp_psfex.ini"


def test_example_crowded_detects_the_tile_as_measured_here():
    config = configparser.ConfigParser()
    config.read(EXAMPLE)
    section = config["SEXTRACTOR_RUNNER_RUN_1"]
    assert [p.strip() for p in section["PASSES"].split(",")] == FINE_DUAL["PASSES"]
    assert [" ".join(s.split()) for s in section["PASS_SETTINGS"].split(",")] == FINE_DUAL["PASS_SETTINGS"]
    assert float(section["PASS_SUBTRACT_RADIUS"]) == FINE_DUAL["PASS_SUBTRACT_RADIUS"]
    assert int(section["PASS_MODEL_BACK_SIZE"]) == FINE_DUAL["PASS_MODEL_BACK_SIZE"]
    assert [p.strip() for p in section["PASS_CORE_SCALES"].split(",")] == FINE_DUAL["PASS_CORE_SCALES"]
    assert float(section["PASS_MERGE_RADIUS"]) == FINE_DUAL["PASS_MERGE_RADIUS"]
    assert section.getboolean("PASS_MERGE_FIRST") is FINE_DUAL["PASS_MERGE_FIRST"]
    assert float(section["PASS_SPLIT_SIGMA"]) == FINE_DUAL["PASS_SPLIT_SIGMA"]
    assert float(section["PASS_SPLIT_MAX_RADIUS"]) == FINE_DUAL["PASS_SPLIT_MAX_RADIUS"]
    assert float(section["PASS_SPLIT_EXTENDED_RADIUS"]) == FINE_DUAL["PASS_SPLIT_EXTENDED_RADIUS"]
    assert float(section["PASS_CONFIRM_SIGMA"]) == FINE_DUAL["PASS_CONFIRM_SIGMA"]
    assert float(section["PASS_CONFIRM_CONTRAST"]) == FINE_DUAL["PASS_CONFIRM_CONTRAST"]


def test_models_taper_to_zero_at_their_edge():
    # A galaxy on a wide pedestal (the intracluster light): without the taper the model would stop on the
    # pedestal's level, a step the later passes detect as a ring of objects.
    size, pedestal = 241, 10.0
    y, x = np.mgrid[:size, :size] - size // 2
    r = np.hypot(x, y)
    data = (pedestal + 400.0 * np.exp(-r / 6.0)).astype(np.float32)
    table = Table({"X_IMAGE": [size // 2 + 1.0], "Y_IMAGE": [size // 2 + 1.0], "A_IMAGE": [10.0],
                   "B_IMAGE": [10.0], "THETA_IMAGE": [0.0], "KRON_RADIUS": [3.5], "FLUX_AUTO": [1e5]})
    model = ring_median_models(data, table, [0])
    outer = MODEL_EXTENT * 3.5 * 10.0
    inside = r < 0.9 * TAPER_FROM * outer
    np.testing.assert_allclose(model[inside], data[inside], rtol=0.03)
    edge = (r > 0.97 * outer) & (r <= outer)
    assert edge.any() and model[edge].max() < 0.02 * pedestal
    assert np.all(model[r > outer] == 0)
    # Monotonic through the taper: no ring anywhere.
    ring = (r > TAPER_FROM * outer) & (r < outer)
    order = np.argsort(r[ring])
    assert np.all(np.diff(model[ring][order]) <= 0.3)


def test_models_are_centred_on_the_light_not_on_the_catalogue_position():
    # A Sersic n=4 galaxy drawn by GalSim at a known sub-pixel centre, given to the models with the catalogue
    # centre a pixel off: the refined (windowed) centre removes the dipole a wrong centre leaves at the core.
    size, centre = 151, (75.3, 74.6)
    profile = galsim.Convolve([galsim.Sersic(n=4, half_light_radius=8.0, flux=2e5).shear(e1=0.1, e2=0.05),
                               galsim.Moffat(beta=3.5, fwhm=3.7)])
    image = profile.drawImage(nx=size, ny=size, scale=1.0, offset=(centre[0] - size // 2, centre[1] - size // 2))
    data = image.array.astype(np.float32)
    core = np.hypot(*(np.mgrid[:size, :size][::-1] - np.reshape(centre, (2, 1, 1)))) < 6

    def core_residual(offset, refine):
        # X_IMAGE, Y_IMAGE are 1-based; without FLUX_RADIUS the catalogue centre is used as given.
        columns = {"X_IMAGE": [centre[0] + 1 + offset[0]], "Y_IMAGE": [centre[1] + 1 + offset[1]], "A_IMAGE": [9.0],
                   "B_IMAGE": [8.0], "THETA_IMAGE": [13.0], "KRON_RADIUS": [3.5], "FLUX_AUTO": [2e5]}
        table = Table(dict(columns, FLUX_RADIUS=[6.0]) if refine else columns)
        return np.abs(data - ring_median_models(data, table, [0]))[core].max()

    exact = core_residual((0.0, 0.0), refine=False)
    assert core_residual((0.8, -0.6), refine=False) > 3 * exact
    assert core_residual((0.8, -0.6), refine=True) < 1.2 * exact


def test_merge_first_merges_the_first_pass_too():
    first = Table({"X_IMAGE": [10.0, 13.0, 50.0], "Y_IMAGE": [10.0, 10.0, 50.0], "FLUX_AUTO": [5.0, 9.0, 1.0],
                   "A_IMAGE": [1.0, 1.0, 1.0], "B_IMAGE": [1.0, 1.0, 1.0], "THETA_IMAGE": [0.0, 0.0, 0.0],
                   "KRON_RADIUS": [3.5, 3.5, 3.5], "FLUX_RADIUS": [1.0, 1.0, 1.0]})
    second = Table({"X_IMAGE": [100.0], "Y_IMAGE": [100.0], "FLUX_AUTO": [1.0], "A_IMAGE": [1.0], "B_IMAGE": [1.0],
                    "THETA_IMAGE": [0.0], "KRON_RADIUS": [3.5], "FLUX_RADIUS": [1.0]})
    kept = join_passes([first, second], merge_radius=4.5, core_scales=[0, 5])
    assert list(kept["X_IMAGE"]) == [10.0, 13.0, 50.0, 100.0]
    merged = join_passes([first, second], merge_radius=4.5, core_scales=[0, 5], merge_first=True)
    assert list(merged["X_IMAGE"]) == [13.0, 50.0, 100.0]  # the brighter of the close pair
    assert list(merged["PASS"]) == [1, 1, 2]


def _gaussian(shape, x0, y0, flux, sigma, q=1.0):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return flux / (2 * np.pi * sigma ** 2 * q) * np.exp(-0.5 * ((x - x0) ** 2 + ((y - y0) / q) ** 2) / sigma ** 2)


def test_filtered_detection_image_noise_is_the_filtered_pixels_scatter():
    # Pure noise of a known sigma, weights given only up to a factor (as MAP_WEIGHT): the noise map must be
    # the scatter of the filtered pixels, which for a normalised kernel k is sigma * sqrt(sum k^2).
    rng = np.random.default_rng(5)
    sigma = 4.0
    image = rng.normal(100.0, sigma, (300, 300)).astype(np.float32)
    weight = np.full(image.shape, 37.0, np.float32)
    kernel = read_dot_conv(DATA_DIR / "default.conv")
    filtered, noise = filtered_detection_image(image, weight, kernel, (32, 32))
    inner = (slice(20, -20), slice(20, -20))
    k = kernel / kernel.sum()
    np.testing.assert_allclose(np.median(noise[inner]), sigma * np.sqrt((k ** 2).sum()), rtol=0.03)
    np.testing.assert_allclose(filtered[inner].std(), np.median(noise[inner]), rtol=0.05)
    assert abs(filtered[inner].mean()) < 0.05 * sigma
    weight[:10] = 0
    assert np.isinf(filtered_detection_image(image, weight, kernel, (32, 32))[1][:10]).all()


def test_shallow_splits_are_merged_and_separated_galaxies_kept():
    rng = np.random.default_rng(11)
    shape, sigma = (80, 160), 2.0
    truth = (_gaussian(shape, 40, 40, 3000.0, 3.0, 0.6)  # one faint elongated galaxy...
             + _gaussian(shape, 110, 30, 3000.0, 2.0) + _gaussian(shape, 120, 30, 3000.0, 2.0))  # ...a resolved pair
    image = (truth + rng.normal(0, sigma, shape)).astype(np.float32)
    weight = np.full(shape, 1 / sigma ** 2, np.float32)
    filtered, noise = filtered_detection_image(image, weight, read_dot_conv(DATA_DIR / "default.conv"), (64, 64))
    # The galaxy cut in two along its major axis (5 px apart), and the pair's two members 10 px apart.
    table = Table(dict(X_IMAGE=[38.5, 43.5, 111.0, 121.0], Y_IMAGE=[41.0, 41.0, 31.0, 31.0],
                       FLUX_AUTO=[1400.0, 1500.0, 3000.0, 2900.0], FLUX_RADIUS=[2.5, 2.5, 2.4, 2.4]))
    keep = merge_shallow_splits(table, filtered, noise, 3.0, 6.0)
    assert list(keep) == [False, True, True, True]  # the split's brighter half stays; the pair stays two
    # The same pair as one faint blend (S/N at the saddle within noise of the peaks) is merged at a high sigma,
    # and nothing is tested beyond PASS_SPLIT_MAX_RADIUS.
    assert list(merge_shallow_splits(table, filtered, noise, 1e4, 6.0)) == [False, True, True, False]
    assert merge_shallow_splits(table, filtered, noise, 1e4, 2.0).all()
    assert merge_shallow_splits(table, filtered, noise, 0.0, 6.0).all()


def test_extended_splits_are_tested_at_their_own_scale():
    from scipy.ndimage import convolve, gaussian_filter

    from shapepipe_modules.sextractor.passes import _smoothing_noise_factor

    # The noise factor against white noise filtered by the kernel, then smoothed (measured, not computed).
    rng = np.random.default_rng(2)
    kernel = read_dot_conv(DATA_DIR / "default.conv")
    k = kernel / kernel.sum()
    white = rng.normal(0.0, 1.0, (600, 600))
    filtered_white = convolve(white, k, mode="wrap")
    inner = (slice(30, -30), slice(30, -30))
    for width in (1.5, 3.0):
        measured = gaussian_filter(filtered_white, width, mode="wrap")[inner].std() / filtered_white[inner].std()
        np.testing.assert_allclose(_smoothing_noise_factor(kernel, width), measured, rtol=0.03)

    # A diffuse disc elongated along x, cut in two 8 px apart (FLUX_RADIUS 4.5), a resolved pair of compact
    # galaxies 6 px apart with catalogue radii 3.5 (a deep valley at any scale), and two extended galaxies
    # farther apart than their radii' sum.
    shape, sigma = (100, 240), 1.0
    truth = (_gaussian(shape, 40, 50, 4000.0, 6.0, 0.4)
             + _gaussian(shape, 117, 50, 3000.0, 1.2) + _gaussian(shape, 123, 50, 3000.0, 1.2)
             + _gaussian(shape, 180, 50, 3000.0, 3.0) + _gaussian(shape, 195, 50, 3000.0, 3.0))
    image = (truth + rng.normal(0, sigma, shape)).astype(np.float32)
    weight = np.full(shape, 1 / sigma ** 2, np.float32)
    filtered, noise = filtered_detection_image(image, weight, kernel, (240, 240))
    table = Table(dict(X_IMAGE=[37.0, 45.0, 118.0, 124.0, 181.0, 196.0], Y_IMAGE=[51.0] * 6,
                       FLUX_AUTO=[1900.0, 2000.0, 3000.0, 2900.0, 3000.0, 2900.0],
                       FLUX_RADIUS=[4.5, 4.5, 3.5, 3.5, 3.5, 3.5]))
    # Off (and the small-object test limited to radii below 3): nothing merged.
    assert merge_shallow_splits(table, filtered, noise, 3.0, 3.0).all()
    keep = merge_shallow_splits(table, filtered, noise, 3.0, 3.0, extended_radius=3.0, kernel=kernel)
    assert list(keep) == [False, True, True, True, True, True]
    # Below the extended radius nothing is tested.
    assert merge_shallow_splits(table, filtered, noise, 3.0, 3.0, extended_radius=5.0, kernel=kernel).all()


def test_first_pass_objects_in_a_model_disc_must_be_on_the_residual():
    # A model disc centred at (100, 100) (FITS), 40 x 20 pixels along x; the residual shows a galaxy at (120, 104)
    # and nothing at (90, 95); an object outside the disc and a modelled-size object inside it are not tested.
    rng = np.random.default_rng(3)
    shape, sigma = (200, 200), 2.0
    residual = (_gaussian(shape, 119, 103, 800.0, 1.5) + rng.normal(0, sigma, shape)).astype(np.float32)
    weight = np.full(shape, 1 / sigma ** 2, np.float32)
    filtered, noise = filtered_detection_image(residual, weight, read_dot_conv(DATA_DIR / "default.conv"), (64, 64))
    big = Table(dict(X_IMAGE=[100.0], Y_IMAGE=[100.0], A_IMAGE=[8.0], B_IMAGE=[4.0], THETA_IMAGE=[0.0],
                     KRON_RADIUS=[2.0], FLUX_RADIUS=[6.0], FLUX_AUTO=[1e5]))
    cx, cy, a, b, theta = model_discs(big, 4.0)
    assert (a[0], b[0]) == (MODEL_EXTENT * 2.0 * 8.0, MODEL_EXTENT * 2.0 * 4.0)
    first = Table(dict(X_IMAGE=[100.0, 120.0, 90.0, 160.0, 95.0], Y_IMAGE=[100.0, 104.0, 95.0, 160.0, 100.0],
                       FLUX_RADIUS=[6.0, 2.0, 2.0, 2.0, 4.5]))
    keep = confirmed_on_residual(first, (cx, cy, a, b, theta), filtered, noise, 3.0, 4.0)
    assert list(keep) == [True, True, False, True, True]
    assert confirmed_on_residual(first, (cx, cy, a, b, theta), filtered, noise, 0.0, 4.0).all()


def test_satellites_of_a_much_brighter_galaxy_are_confirmed_instead_of_modelled():
    # A bright galaxy at (100, 100) with a model disc 40 x 20 pixels along x. Inside the disc: a faint galaxy
    # (FLUX_RADIUS 4.5) at (120, 104) and a piece of the wing as large (at (85, 98)) that the residual does not
    # show; a neighbour 5 times fainter at (80, 102); outside the disc, a faint galaxy at (160, 160).
    rng = np.random.default_rng(4)
    shape, sigma = (200, 200), 2.0
    yy, xx = np.mgrid[:shape[0], :shape[1]] + 1.0
    bright = 3000.0 * np.exp(-np.hypot((xx - 100) / 2.0, yy - 100) / 4.0)
    faint = _gaussian(shape, 119, 103, 1500.0, 3.0)
    image = (bright + faint + rng.normal(0, sigma, shape)).astype(np.float32)
    weight = np.full(shape, 1 / sigma ** 2, np.float32)
    table = Table(dict(X_IMAGE=[100.0, 120.0, 85.0, 80.0, 160.0], Y_IMAGE=[100.0, 104.0, 98.0, 102.0, 160.0],
                       A_IMAGE=[8.0, 4.0, 3.0, 5.0, 3.0], B_IMAGE=[4.0, 3.5, 2.0, 4.0, 3.0],
                       THETA_IMAGE=[0.0] * 5, KRON_RADIUS=[2.0, 3.5, 3.5, 3.5, 3.5],
                       FLUX_RADIUS=[6.0, 4.5, 4.5, 5.0, 4.5], FLUX_AUTO=[2e5, 1500.0, 400.0, 4e4, 1000.0]))
    assert list(satellites(table, 4.0, 10.0)) == [False, True, True, False, False]
    assert not satellites(table, 4.0, 0.0).any()
    # Unmodelled, the faint galaxy keeps its light in the residual; modelled, the ring medians take most of it.
    assert list(modelled_rows(table, 4.0, 10.0)) == [0, 3, 4]
    kept, _ = subtract_models(image, table, 4.0, 64, weight, contrast=10.0)
    modelled, _ = subtract_models(image, table, 4.0, 64, weight)
    peak = (slice(100, 106), slice(116, 122))
    assert np.abs(kept - modelled)[peak].max() > 0.7 * faint.max()
    # Satellites modelled only when seen: asked on the residual without them (the faint galaxy still there), the
    # galaxy seen is modelled afterwards, the wing piece neither modelled nor kept.
    asked = {}

    def seen(residual, rows):
        asked["rows"], asked["peak"] = list(rows), float(residual[peak].max())
        return np.asarray(rows) == 1

    confirmed, modelled_now, rejected = subtract_models_confirming(image, table, 4.0, 10.0, seen, 64, weight)
    assert asked["rows"] == [1, 2]
    assert asked["peak"] == pytest.approx(float(kept[peak].max()), rel=1e-5)  # the residual without satellites
    assert list(modelled_now) == [0, 1, 3, 4] and list(np.flatnonzero(rejected)) == [2]
    np.testing.assert_allclose(confirmed[peak], modelled[peak], atol=0.1 * faint.max())
    # The satellites are tested on the residual as the small objects are (here the residual a perfect model of
    # the bright galaxy would leave): the galaxy stays, the wing piece goes.
    residual = (faint + rng.normal(0, sigma, shape)).astype(np.float32)
    filtered, noise = filtered_detection_image(residual, weight, read_dot_conv(DATA_DIR / "default.conv"), (64, 64))
    discs = model_discs(table, 4.0, 10.0)
    assert list(discs[0]) == [100.0, 80.0, 160.0]
    keep = confirmed_on_residual(table, discs, filtered, noise, 3.0, 4.0, satellites(table, 4.0, 10.0))
    assert list(keep) == [True, True, False, True, True]
    assert confirmed_on_residual(table, discs, filtered, noise, 3.0, 4.0).all()
    base = dict(DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), ENGINE="sep")
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_CONFIRM_CONTRAST=0.5)))
    assert any("PASS_CONFIRM_CONTRAST must be 0 (off) or > 1" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_CONFIRM_SIGMA=0.0, PASS_CONFIRM_CONTRAST=10.0)))
    assert any("PASS_CONFIRM_CONTRAST needs PASS_CONFIRM_SIGMA > 0" in p for p in problems)


def test_model_back_size_errors_are_named():
    base = dict(DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), ENGINE="sep")
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_MODEL_BACK_SIZE=-1)))
    assert any("PASS_MODEL_BACK_SIZE must be >= 0, got -1" in p for p in problems)
    problems = validate(dict(base, PASSES=["FINE"], PASS_SETTINGS=[FINE], PASS_MODEL_BACK_SIZE=64))
    assert any("PASS_MODEL_BACK_SIZE" in p and "1 pass(es)" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_SUBTRACT_RADIUS=0.0)))
    assert any("PASS_MODEL_BACK_SIZE needs PASS_SUBTRACT_RADIUS > 0" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_MERGE_RADIUS=0.0)))
    assert any("PASS_MERGE_FIRST needs PASS_MERGE_RADIUS > 0" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_CONFIRM_SIGMA=-1.0)))
    assert any("PASS_CONFIRM_SIGMA must be >= 0, got -1" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_SUBTRACT_RADIUS=0.0, PASS_MODEL_BACK_SIZE=0)))
    assert any("PASS_CONFIRM_SIGMA needs PASS_SUBTRACT_RADIUS > 0" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_SPLIT_SIGMA=-1.0)))
    assert any("PASS_SPLIT_SIGMA must be >= 0, got -1" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_SPLIT_MAX_RADIUS=0.0)))
    assert any("PASS_SPLIT_SIGMA needs PASS_SPLIT_MAX_RADIUS > 0" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_SPLIT_EXTENDED_RADIUS=-1.0)))
    assert any("PASS_SPLIT_EXTENDED_RADIUS must be >= 0, got -1" in p for p in problems)
    problems = validate(dict(base, **dict(FINE_DUAL, PASS_SPLIT_SIGMA=0.0)))
    assert any("PASS_SPLIT_EXTENDED_RADIUS needs PASS_SPLIT_SIGMA > 0" in p for p in problems)
    files = dict(DOT_PARAM_FILE=str(DATA_DIR / "default.param"), DOT_CONV_FILE=str(DATA_DIR / "default.conv"),
                 FLAG_IMAGE=True)
    assert not validate(dict(base, **files, **FINE_DUAL))
    assert not validate(dict(base, **files, PASSES=["FINE"], PASS_SETTINGS=[FINE], PASS_SPLIT_SIGMA=3.0))
    assert any("PASS_SPLIT_SIGMA acts on" in p for p in validate(dict(base, PASS_SPLIT_SIGMA=3.0)))
    problems = validate(dict(base, PASSES=["FINE"], PASS_SETTINGS=[FINE], PASS_CONFIRM_SIGMA=3.0))
    assert any("PASS_CONFIRM_SIGMA act on the passes after the first" in p for p in problems)


@pytest.fixture(scope="module")
def smooth_tiles(tmp_path_factory):
    return [simulate_cluster_tile(tmp_path_factory.mktemp("smooth"), seed, preset="cluster") for seed in (1, 2, 3)]


@pytest.mark.parametrize("engine", ["sep", "sextractor"])
def test_fine_pass_on_the_residual_adds_background_galaxies_without_touching_the_members(smooth_tiles, tmp_path,
                                                                                        engine):
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import sextractor
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate.crowded import cluster_scores

    if engine == "sextractor" and not (shutil.which("source-extractor") or shutil.which("sex")):
        pytest.skip("no SExtractor binary")
    unsplit = {k: v for k, v in FINE_DUAL.items() if not k.startswith("PASS_SPLIT")}  # the confirmation kept
    configs = {"single": dict(PASSES=["FINE"], PASS_SETTINGS=[FINE]), "dual": FINE_DUAL, "unsplit": unsplit}
    pooled = {name: {} for name in configs}
    for seed, sim in enumerate(smooth_tiles, start=1):
        truth = load_truth(sim, tile="244.252")
        centre = truth[truth["cluster_role"] == ROLE_ICL][0]
        inputs = [sim / "tiles" / "CFIS.244.252.r.fits", sim / "weight.fits", sim / "flag.fits"]
        for name, options in configs.items():
            out = tmp_path / f"{name}{seed}"
            run_module(sextractor, inputs, out, "-244-252", ENGINE=engine, BKG_RESIDUAL=False,
                       DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), **options)
            table, _ = read_ldac(out / "sexcat-244-252.fits")
            s = cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, (centre["x"], centre["y"]), 0.187,
                               passes=table["PASS"])
            pool_cluster_scores(pooled[name], s)
    single, dual, unsplit = pooled["single"], pooled["dual"], pooled["unsplit"]
    # Seeds 1-3, either engine: background galaxies within 30" 67 -> 70 of 115 (72 without the saddle test),
    # the 60 members detected once either way; truth objects with two or more detections: sep 15 for FINE
    # alone, 2 joined without the saddle test, 0 with it (SExtractor 16, 2, 1; session 18, with
    # PASS_CONFIRM_CONTRAST, which changes neither engine's 0 and 1 here). Seeds 1-20 (sep,
    # bench_crowded_subtract.py --preset cluster, and the module): 0.604 -> 0.633, members 0.998, 137 -> 4
    # duplicated (0.636 and 6 without the extended saddle test, 58 without any saddle test or the confirmation).
    assert dual["found"] >= single["found"] + 2
    assert dual["whole"] == single["whole"] and dual["whole"] / dual["members"] >= 0.95
    assert dual["both"] == 0
    assert 2 * dual["dup"] <= unsplit["dup"] and 5 * dual["dup"] <= single["dup"]


def test_the_models_are_measured_over_pass_model_back_size(smooth_tiles, tmp_path):
    # The module's catalogue equals the two raw passes joined offline, the second run on the tile minus the
    # models measured over 64-pixel meshes; over FINE's own 12-pixel meshes the models are different.
    from astropy.io import fits

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import sextractor

    sim = smooth_tiles[0]
    tile = sim / "tiles" / "CFIS.244.252.r.fits"
    common = dict(ENGINE="sep", BKG_RESIDUAL=False, DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=False)
    run_module(sextractor, [tile, sim / "weight.fits"], tmp_path / "module", "-244-252", **common, **FINE_DUAL)
    joined, header = read_ldac(tmp_path / "module" / "sexcat-244-252.fits")
    param = tmp_path / "with_kron.param"
    param.write_text((DATA_DIR / "default.param").read_text().rstrip("\n") + "\nKRON_RADIUS\n")

    def single(image, name):
        out = tmp_path / f"single_{name}_{image.stem}"
        run_module(sextractor, [image, sim / "weight.fits"], out, "-244-252", **common, PASSES=[name],
                   PASS_SETTINGS=[FINE], DOT_PARAM_FILE=str(param))
        return read_ldac(out / "sexcat-244-252.fits")[0]

    fine = single(tile, "FINE")
    image, weight = fits.getdata(tile).astype(np.float32), fits.getdata(sim / "weight.fits")
    kernel = read_dot_conv(DATA_DIR / "default.conv")
    # FINE's satellites of 10 times brighter objects, tested on the residual without their own models; those it
    # shows are modelled on what the others left, the others dropped.
    def seen(probe, rows):
        tested = np.zeros(len(fine), bool)
        tested[rows] = True
        return confirmed_on_residual(fine, model_discs(fine, 4.0), *filtered_detection_image(probe, weight, kernel,
                                                                                               (12, 12)),
                                     3.0, 4.0, also=tested)[rows]

    residual, modelled, rejected = subtract_models_confirming(image, fine, 4.0, 10.0, seen, 64, weight)
    flagged = satellites(fine, 4.0, 10.0) & (np.asarray(fine["FLUX_RADIUS"]) >= 4.0)
    assert flagged.sum() > rejected.sum() and not (rejected & ~flagged).any()
    residual_12, _ = subtract_models(image, fine, 4.0, 12, weight)
    assert np.abs(residual - residual_12).max() > 10.0
    path = tmp_path / "residual.fits"
    fits.PrimaryHDU(residual, header=fits.getheader(tile)).writeto(path)
    # The saddle test of each pass on its own detection image: the tile, then the residual.
    fineres = single(path, "FINERES")
    kept, kept_rows = [], []
    for table, image in ((fine, image), (fineres, residual)):
        filtered, noise = filtered_detection_image(image, weight, kernel, (12, 12))
        kept_rows.append(np.flatnonzero(merge_shallow_splits(table, filtered, noise, 3.0, 6.0, 3.0, kernel)))
        kept.append(table[kept_rows[-1]])
    split = [len(kept[0]), len(kept[1])]
    # The first pass's small objects inside the models' discs, checked on FINERES's detection image; the
    # satellites not seen, dropped.
    confirmed = confirmed_on_residual(kept[0], model_discs(fine, 4.0, rows=modelled), filtered, noise, 3.0, 4.0)
    kept[0] = kept[0][confirmed & ~rejected[kept_rows[0]]]
    offline = join_passes(kept, 1.0, merge_radius=5.0, core_scales=[0, 5], merge_first=True)
    assert header["NPASS2"] > 0
    assert header["NSPLIT1"] == len(fine) - split[0] > 0 and header["NSPLIT2"] == len(fineres) - split[1]
    assert header["NUNCONF"] == split[0] - len(kept[0])
    assert list(joined["PASS"]) == list(offline["PASS"])
    np.testing.assert_array_equal(joined["X_IMAGE"], offline["X_IMAGE"])
    np.testing.assert_array_equal(joined["FLUX_AUTO"], offline["FLUX_AUTO"])


def test_pass_detection_image_takes_bad_pixels_out(tmp_path):
    # Non-finite pixels (a bad column) get zero weight: the filtered image stays finite and their noise infinite,
    # so the saddle test and the confirmation never read them as light.
    from astropy.io import fits

    from shapepipe_modules.sextractor.runner import _pass_detection_image

    rng = np.random.default_rng(8)
    image = (100.0 + rng.normal(0, 3.0, (120, 120))).astype(np.float32)
    image[:, 60] = np.nan
    weight = np.full(image.shape, 1 / 9.0, np.float32)
    paths = {"image": tmp_path / "image.fits", "weight": tmp_path / "weight.fits"}
    fits.PrimaryHDU(image).writeto(paths["image"])
    fits.PrimaryHDU(weight).writeto(paths["weight"])
    sex = tmp_path / "pass.sex"
    sex.write_text("BACK_SIZE 32\nBACK_FILTERSIZE 3\nFILTER Y\n")
    filtered, noise = _pass_detection_image(paths, sex, DATA_DIR / "default.conv")
    assert np.isfinite(filtered).all()
    assert np.isinf(noise[:, 60]).all() and np.isfinite(noise[:, :59]).all()
    k = read_dot_conv(DATA_DIR / "default.conv")
    np.testing.assert_allclose(np.median(noise[:, :50]), 3.0 * np.sqrt((k ** 2).sum() / k.sum() ** 2), rtol=0.05)


@pytest.mark.parametrize("engine", ["sep", "sextractor"])
def test_background_model_mag_puts_a_bright_galaxy_into_the_background(tmp_path, engine):
    """BACKGROUND_MODEL_MAG: the BACKGROUND check image holds the bright galaxy, not its faint neighbour."""
    galsim = pytest.importorskip("galsim")
    from astropy.io import fits

    from conftest import run_module
    from shapepipe_modules.sextractor.runner import sextractor

    if engine == "sextractor" and shutil.which("source-extractor") is None:
        pytest.skip("source-extractor is not installed")
    size, sky_sigma = 400, 5.0
    bright = galsim.DeVaucouleurs(half_light_radius=1.5, flux=10 ** (0.4 * (30 - 17.0))).shear(e1=0.2, e2=0.1)
    faint = galsim.Exponential(half_light_radius=0.4, flux=10 ** (0.4 * (30 - 22.0)))
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    centre, offset = (200.0, 200.0), (25.0, 12.0)  # the faint galaxy 28 pixels (3.5 half-light radii) away
    image = galsim.ImageF(size, size, scale=0.187)
    galsim.Convolve(bright, psf).drawImage(image=image, offset=(centre[0] - 200.5, centre[1] - 200.5))
    light = image.array.copy()  # the bright galaxy alone, noise-free
    galsim.Convolve(faint, psf).drawImage(image=image, add_to_image=True,
                                          offset=(centre[0] + offset[0] - 200.5, centre[1] + offset[1] - 200.5))
    pixels = image.array + np.random.default_rng(3).normal(0.0, sky_sigma, (size, size)).astype(np.float32)
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 200.0, "CRPIX2": 200.0,
                          "CRVAL1": 150.0, "CRVAL2": 2.0, "CD1_1": -0.187 / 3600, "CD2_2": 0.187 / 3600,
                          "CD1_2": 0.0, "CD2_1": 0.0})
    fits.PrimaryHDU(pixels, header=header).writeto(tmp_path / "image.fits")
    fits.PrimaryHDU(np.full((size, size), sky_sigma ** -2, np.float32), header=header).writeto(tmp_path / "weight.fits")
    fits.PrimaryHDU(np.zeros((size, size), np.int16), header=header).writeto(tmp_path / "flag.fits")
    backgrounds = {}
    for label, magnitude in (("plain", None), ("models", 20.0)):
        out = tmp_path / label
        run_module(sextractor, [tmp_path / "image.fits", tmp_path / "weight.fits", tmp_path / "flag.fits"], out, "-1",
                   ENGINE=engine, CHECKIMAGE=["BACKGROUND"], CHECKIMAGE_COMPRESS=False,
                   BACKGROUND_MODEL_MAG=magnitude)
        backgrounds[label] = fits.getdata(next(out.glob("*background*.fits"))).astype(float)
    models = backgrounds["models"] - backgrounds["plain"]
    yy, xx = np.mgrid[0:size, 0:size]
    # Around the faint galaxy (a ring 3-6 pixels from it, off its core), the models carry the bright one's wing.
    fx, fy = centre[0] + offset[0] - 1, centre[1] + offset[1] - 1
    ring = (np.hypot(xx - fx, yy - fy) > 3) & (np.hypot(xx - fx, yy - fy) < 6)
    wing = light - (backgrounds["plain"] - np.median(backgrounds["plain"]))  # what the plain mesh left of the wing
    assert abs(np.mean(models[ring]) / np.mean(wing[ring]) - 1.0) < 0.3, (np.mean(models[ring]), np.mean(wing[ring]))
    # The faint galaxy stays out of the models: its flux is there after both are subtracted.
    core = np.hypot(xx - fx, yy - fy) < 5
    kept = (pixels - backgrounds["models"])[core].sum()
    faint_only = (image.array - light)[core].sum()
    assert abs(kept / faint_only - 1.0) < 0.2, (kept, faint_only)
    # Far from the bright galaxy nothing changes.
    far = np.hypot(xx - centre[0] + 1, yy - centre[1] + 1) > 150
    assert np.max(np.abs(models[far])) == 0.0
    assert "BACKGROUND_MODEL_MAG adds" in validate({"BACKGROUND_MODEL_MAG": 20.0, "CHECKIMAGE": []})[0]
    # A catalogue without the columns the models need: the job fails naming them and the option.
    from shapepipe.errors import JobError

    param = tmp_path / "no_radius.param"
    param.write_text("".join(line for line in (DATA_DIR / "default.param").read_text().splitlines(keepends=True)
                             if line.strip() != "FLUX_RADIUS"))
    with pytest.raises(JobError, match="BACKGROUND_MODEL_MAG needs FLUX_RADIUS"):
        run_module(sextractor, [tmp_path / "image.fits", tmp_path / "weight.fits", tmp_path / "flag.fits"],
                   tmp_path / "no_radius", "-1", ENGINE=engine, CHECKIMAGE=["BACKGROUND"], CHECKIMAGE_COMPRESS=False,
                   BACKGROUND_MODEL_MAG=20.0, DOT_PARAM_FILE=str(param))
