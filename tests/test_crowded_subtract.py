"""Later passes on the image minus the first pass's models, joined by the core rule (docs/crowded.md)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.table import Table

from conftest import pool_cluster_scores, run_module, simulate_cluster_tile
from shapepipe_modules.sextractor.passes import MIN_CORE_RADIUS, join_passes
from shapepipe_modules.sextractor.runner import DATA_DIR, validate
from shapepipe_modules.sextractor.subtract import ring_median_models, subtract_models

galsim = pytest.importorskip("galsim")

HOT = ("BACK_TYPE=AUTO BACK_SIZE=64 DETECT_THRESH=5 DETECT_MINAREA=10 DEBLEND_MINCONT=0.005 "
       "FILTER_NAME=gauss_6.0_13x13.conv")
COLD = "BACK_TYPE=AUTO BACK_SIZE=24 DETECT_THRESH=1.2 DEBLEND_MINCONT=0.0005"
SUBTRACTED = dict(PASSES=["HOT", "HOTRES", "COLD"], PASS_SETTINGS=[HOT, HOT, COLD], PASS_SUBTRACT_RADIUS=4.0,
                  PASS_CORE_SCALES=["-", "2", "3"], PASS_MIN_FLUX_RADII=["-", "5", "-"], PASS_MERGE_RADIUS=4.5)


def _table(x, y, radius):
    n = len(x)
    return Table({"X_IMAGE": np.asarray(x, float), "Y_IMAGE": np.asarray(y, float), "A_IMAGE": np.full(n, 3.0),
                  "B_IMAGE": np.full(n, 2.0), "THETA_IMAGE": np.zeros(n), "KRON_RADIUS": np.full(n, 3.5),
                  "FLUX_RADIUS": np.asarray(radius, float), "FLUX_AUTO": np.ones(n)})


def test_core_rule_against_brute_force_over_three_passes():
    rng = np.random.default_rng(11)
    tables = [_table(rng.uniform(0, 400, n), rng.uniform(0, 400, n), rng.uniform(0.5, 12, n)) for n in (40, 60, 300)]
    scales, min_radii = [0.0, 1.5, 3.0], [0.0, 5.0, 0.0]
    joined = join_passes(tables, core_scales=scales, min_radii=min_radii)
    # Brute force: each pass's rows (those large enough) against every centre kept before, one by one.
    kept = [tables[0]]
    for table, scale, min_radius in zip(tables[1:], scales[1:], min_radii[1:]):
        cx = np.concatenate([np.asarray(t["X_IMAGE"]) for t in kept])
        cy = np.concatenate([np.asarray(t["Y_IMAGE"]) for t in kept])
        core = np.maximum(scale * np.concatenate([np.asarray(t["FLUX_RADIUS"]) for t in kept]), MIN_CORE_RADIUS)
        rows = [i for i in range(len(table)) if table["FLUX_RADIUS"][i] >= min_radius
                and all(np.hypot(table["X_IMAGE"][i] - cx[j], table["Y_IMAGE"][i] - cy[j]) > core[j]
                        for j in range(cx.size))]
        kept.append(table[rows])
    assert [int((joined["PASS"] == p).sum()) for p in (1, 2, 3)] == [len(t) for t in kept]
    assert 0 < len(kept[1]) < len(tables[1]) and 0 < len(kept[2]) < len(tables[2])
    expected = np.concatenate([np.asarray(t["X_IMAGE"]) for t in kept])
    np.testing.assert_array_equal(joined["X_IMAGE"], expected)
    # A pass without a core scale keeps the ellipse rule: the same join as before.
    plain = join_passes(tables[:2], core_scales=[0.0, 0.0])
    assert len(plain) == len(join_passes(tables[:2]))


def _galaxy_field(seed=3, with_knots=True):
    """A bright elliptical (de Vaucouleurs, hlr 12 px) with point-like knots, a faint exponential galaxy on
    its wing, on Gaussian noise; returns the noisy image, the noise sigma and the pieces drawn alone."""
    rng = np.random.default_rng(seed)
    size, scale, sigma = 301, 1.0, 5.0
    psf = galsim.Moffat(beta=3.0, fwhm=3.7)
    big = galsim.DeVaucouleurs(half_light_radius=12.0, flux=4e5).shear(q=0.7, beta=30 * galsim.degrees)
    faint = galsim.Exponential(half_light_radius=2.5, flux=3e3)
    images = {}
    for name, profile, offset in (("big", big, (0.0, 0.0)), ("faint", faint, (38.0, -20.0))):
        images[name] = galsim.Convolve(profile, psf).drawImage(nx=size, ny=size, scale=scale,
                                                                offset=offset).array.astype(np.float32)
    knots = np.zeros((size, size), np.float32)
    if with_knots:
        positions = rng.normal(0.0, 15.0, size=(12, 2))
        for dx, dy in positions:
            knots += psf.withFlux(2e3).drawImage(nx=size, ny=size, scale=scale, offset=(dx, dy)).array
    noise = rng.normal(0.0, sigma, size=(size, size)).astype(np.float32)
    return images["big"] + images["faint"] + knots + noise, sigma, images, knots


def _catalogue_row(x, y, a, b, theta, kron, flux_radius, flux):
    return Table({"X_IMAGE": [x], "Y_IMAGE": [y], "A_IMAGE": [a], "B_IMAGE": [b], "THETA_IMAGE": [theta],
                  "KRON_RADIUS": [kron], "FLUX_RADIUS": [flux_radius], "FLUX_AUTO": [flux]})


def test_ring_median_model_removes_the_smooth_light_and_keeps_knots_and_faint_galaxies():
    table = _catalogue_row(151.0, 151.0, 10.0, 7.0, 30.0, 3.6, 10.0, 4e5)  # the big galaxy's catalogue row
    yy, xx = np.mgrid[:301, :301]
    r = np.hypot(xx - 150.0, yy - 150.0)
    # A smooth galaxy: from 1 to 4 half-light radii (2.5-12 sigma of light per pixel) the residual is noise.
    image, sigma, pieces, _ = _galaxy_field(with_knots=False)
    residual = image - ring_median_models(image, table, [0])
    clean = (r > 12) & (r < 48) & (pieces["faint"] < 0.05 * sigma)
    assert pieces["big"][clean].mean() > 3 * sigma
    assert abs(float(np.mean(residual[clean]))) < 0.1 * sigma
    assert float(np.std(residual[clean])) < 1.15 * sigma
    # The faint galaxy on its wing stays whole: its light in an aperture of the residual against it drawn alone
    # (without the model, a third more light in that aperture is the big galaxy's).
    aperture = pieces["faint"] > sigma
    assert 0.9 < float(np.sum(residual[aperture]) / np.sum(pieces["faint"][aperture])) < 1.1
    assert np.sum(image[aperture]) > 1.2 * np.sum(pieces["faint"][aperture])
    # With knots spread like the light (12 point sources, 1.5 % of the flux each): most of their light stays
    # in the residual (the medians take what fills half an annulus near the core), and the faint galaxy too.
    image, sigma, pieces, knots = _galaxy_field(with_knots=True)
    residual = image - ring_median_models(image, table, [0])
    for truth, least in ((knots, 0.7), (pieces["faint"], 0.9)):
        aperture = truth > sigma
        assert least < float(np.sum(residual[aperture]) / np.sum(truth[aperture])) < 1.1


def test_subtract_models_keeps_small_objects_and_zero_weight_pixels_out():
    image, sigma, pieces, _ = _galaxy_field(with_knots=False)
    table = _catalogue_row(151.0, 151.0, 10.0, 7.0, 30.0, 3.6, 10.0, 4e5)
    residual, n_models = subtract_models(image, table, min_flux_radius=4.0, back_size=64)
    assert n_models == 1 and residual.dtype == np.float32
    assert float(np.sum(residual)) < 0.3 * float(np.sum(image))  # the big galaxy's light is gone
    # Below the radius threshold nothing is modelled: the image comes back (background kept).
    same, n_models = subtract_models(image, table, min_flux_radius=20.0, back_size=64)
    assert n_models == 0 and np.array_equal(same, image)
    # A band of zero weight full of garbage does not enter the medians: same model as without it.
    bad, weight = image.copy(), np.ones_like(image)
    bad[140:160, :] = 1e5
    weight[140:160, :] = 0
    with_mask, _ = subtract_models(bad, table, 4.0, 64, weight)
    reference, _ = subtract_models(image, table, 4.0, 64, weight)
    good = weight > 0
    np.testing.assert_allclose(with_mask[good], reference[good], atol=1e-3)


def test_subtract_options_are_checked():
    base = {"DOT_SEX_FILE": str(DATA_DIR / "default_tile.sex"), "DOT_PARAM_FILE": str(DATA_DIR / "default.param"),
            "DOT_CONV_FILE": str(DATA_DIR / "default.conv"), "FLAG_IMAGE": True}
    assert validate(dict(base, **SUBTRACTED)) == []
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_CORE_SCALES=["-", "3"])))
    assert any("PASS_CORE_SCALES has 2 entries for 3 PASSES" in p for p in problems)
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_MIN_FLUX_RADII=["-", "five", "-"])))
    assert any("PASS_MIN_FLUX_RADII: pass HOTRES: 'five' is not a number" in p for p in problems)
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_CORE_SCALES=["2", "1.5", "3"])))
    assert any("PASS_CORE_SCALES: the first pass (HOT)" in p for p in problems)
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_CORE_SCALES=["-", "-1", "3"])))
    assert any("PASS_CORE_SCALES: pass HOTRES: '-1' must be >= 0" in p for p in problems)
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_SUBTRACT_RADIUS=-2.0)))
    assert any("PASS_SUBTRACT_RADIUS must be >= 0" in p for p in problems)
    # Without a later pass the options would do nothing: named, not ignored.
    problems = validate(dict(base, PASSES=["HOT"], PASS_SETTINGS=[HOT], PASS_SUBTRACT_RADIUS=4.0))
    assert any("PASS_SUBTRACT_RADIUS act on the passes after the first: PASSES names 1 pass(es)" in p
               for p in problems)
    problems = validate(dict(base, PASS_CORE_SCALES=["-", "3"]))
    assert any(p.startswith("PASS_CORE_SCALES act on the passes after the first") for p in problems)
    # PASS_RESIDUAL: yes/no per pass, only with the subtraction, never on the first pass.
    assert validate(dict(base, **dict(SUBTRACTED, PASS_RESIDUAL=["-", "yes", "no"]))) == []
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_RESIDUAL=["-", "maybe", "no"])))
    assert any("PASS_RESIDUAL: pass HOTRES: 'maybe' is not yes, no or '-'" in p for p in problems)
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_RESIDUAL=["yes", "yes", "no"])))
    assert any("PASS_RESIDUAL: the first pass (HOT) makes the models" in p for p in problems)
    problems = validate(dict(base, **dict(SUBTRACTED, PASS_SUBTRACT_RADIUS=0.0, PASS_RESIDUAL=["-", "yes", "no"])))
    assert any("PASS_RESIDUAL needs PASS_SUBTRACT_RADIUS > 0" in p for p in problems)


@pytest.fixture(scope="module")
def cluster_tiles(tmp_path_factory):
    return [simulate_cluster_tile(tmp_path_factory.mktemp("cluster"), seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def cluster_tile_seed4(tmp_path_factory):
    # Seed 4: the HOT pass merges a member into a neighbour that the HOT settings find again on the residual.
    return simulate_cluster_tile(tmp_path_factory.mktemp("cluster"), 4)


@pytest.mark.parametrize("engine", ["sep", "sextractor"])
def test_subtracted_passes_find_more_background_galaxies_and_keep_members_whole(cluster_tiles, tmp_path, engine):
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import sextractor
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate.crowded import cluster_scores

    if engine == "sextractor" and not (shutil.which("source-extractor") or shutil.which("sex")):
        pytest.skip("no SExtractor binary")
    configs = {"ellipse": dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD], PASS_NEIGHBOUR_RADIUS=6.0,
                               PASS_MERGE_RADIUS=4.5),
               "subtracted": SUBTRACTED}
    pooled = {name: {} for name in configs}
    for seed, sim in enumerate(cluster_tiles, start=1):
        truth = load_truth(sim, tile="244.252")
        centre = truth[truth["cluster_role"] == ROLE_ICL][0]
        inputs = [sim / "tiles" / "CFIS.244.252.r.fits", sim / "weight.fits", sim / "flag.fits"]
        tables = {}
        for name, options in configs.items():
            out = tmp_path / f"{name}{seed}"
            summary = run_module(sextractor, inputs, out, "-244-252", ENGINE=engine, BKG_RESIDUAL=False,
                                 DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), **options)
            table, header = read_ldac(out / "sexcat-244-252.fits")
            tables[name] = table
            # HOTRES finds first-pass objects: it counts with the first pass for the cross-pass duplicates.
            passes = np.where(table["PASS"] == len(options["PASSES"]), 2, 1)
            s = cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, (centre["x"], centre["y"]), 0.187,
                               passes=passes)
            pool_cluster_scores(pooled[name], s)
            if name == "subtracted":
                assert [header[f"PASS{i}"] for i in (1, 2, 3)] == ["HOT", "HOTRES", "COLD"]
                assert summary["n_subtracted_models"] > 20  # members, bright stars, galaxies of FLUX_RADIUS >= 4 px
        # The first pass is the same either way: the subtraction acts on the later passes only.
        first, sub = tables["ellipse"], tables["subtracted"]
        np.testing.assert_array_equal(sub["X_IMAGE"][sub["PASS"] == 1], first["X_IMAGE"][first["PASS"] == 1])
    sub, ell = pooled["subtracted"], pooled["ellipse"]
    # Seeds 1-3 (sep, bench_crowded_subtract.py): background galaxies within 30" 49 -> 54 of 115 found;
    # 0.413 -> 0.472 pooled over seeds 1-20.
    assert sub["found"] / sub["background"] >= ell["found"] / ell["background"] + 0.03
    assert sub["whole"] / sub["members"] >= 0.9 and sub["shredded"] <= 2
    assert sub["both"] <= 1


def test_pass_residual_chooses_each_pass_image_as_an_offline_join(cluster_tile_seed4, tmp_path):
    # HOTRES on the subtracted image, COLD on the tile itself by the ellipse rule: the module's catalogue
    # equals the raw passes extracted one by one (the residual rebuilt here) and joined offline.
    from astropy.io import fits

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import sextractor

    sim = cluster_tile_seed4
    tile = sim / "tiles" / "CFIS.244.252.r.fits"
    common = dict(ENGINE="sep", BKG_RESIDUAL=False, DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=False)
    options = dict(PASSES=["HOT", "HOTRES", "COLD"], PASS_SETTINGS=[HOT, HOT, COLD], PASS_SUBTRACT_RADIUS=4.0,
                   PASS_RESIDUAL=["-", "yes", "no"], PASS_CORE_SCALES=["-", "2", "-"],
                   PASS_MIN_FLUX_RADII=["-", "5", "-"], PASS_MERGE_RADIUS=4.5)
    run_module(sextractor, [tile, sim / "weight.fits"], tmp_path / "module", "-244-252", **common, **options)
    joined, header = read_ldac(tmp_path / "module" / "sexcat-244-252.fits")

    param = tmp_path / "with_kron.param"
    param.write_text((DATA_DIR / "default.param").read_text().rstrip("\n") + "\nKRON_RADIUS\n")

    def single(image, name, settings):
        out = tmp_path / f"single_{name}_{image.stem}"
        run_module(sextractor, [image, sim / "weight.fits"], out, "-244-252", **common, PASSES=[name],
                   PASS_SETTINGS=[settings], DOT_PARAM_FILE=str(param))
        return read_ldac(out / "sexcat-244-252.fits")[0]

    hot = single(tile, "HOT", HOT)
    residual, _ = subtract_models(fits.getdata(tile).astype(np.float32), hot, 4.0, 64,
                                  fits.getdata(sim / "weight.fits"))
    residual_path = tmp_path / "residual.fits"
    fits.PrimaryHDU(residual, header=fits.getheader(tile)).writeto(residual_path)
    offline = join_passes([hot, single(residual_path, "HOTRES", HOT), single(tile, "COLD", COLD)], 1.0,
                          merge_radius=4.5, core_scales=[0, 2, 0], min_radii=[0, 5, 0])
    assert header["NPASS2"] > 0 and header["NPASS3"] > 0
    assert list(joined["PASS"]) == list(offline["PASS"])
    np.testing.assert_array_equal(joined["X_IMAGE"], offline["X_IMAGE"])
    np.testing.assert_array_equal(joined["FLUX_AUTO"], offline["FLUX_AUTO"])
    # COLD on the tile itself: its rows are the tile's COLD detections, not the residual's.
    cold_tile = single(tile, "COLD", COLD)
    assert set(np.round(joined["X_IMAGE"][joined["PASS"] == 3], 6)) <= set(np.round(cold_tile["X_IMAGE"], 6))
