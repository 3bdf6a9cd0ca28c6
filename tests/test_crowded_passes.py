"""Dual-pass detection (sextractor PASSES) on the simulated cluster, both engines."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.table import Table

from conftest import run_module, simulate_cluster_tile
from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.passes import inside_ellipses, join_passes
from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor, validate

galsim = pytest.importorskip("galsim")

HOT = "BACK_TYPE=AUTO BACK_SIZE=64 DETECT_THRESH=3 DETECT_MINAREA=10 DEBLEND_MINCONT=0.01"
COLD = "BACK_TYPE=AUTO BACK_SIZE=24 DETECT_THRESH=1.2 DEBLEND_MINCONT=0.0005"
HOT_SMOOTH = ("BACK_TYPE=AUTO BACK_SIZE=64 DETECT_THRESH=5 DETECT_MINAREA=10 DEBLEND_MINCONT=0.005 "
              "FILTER_NAME=gauss_6.0_13x13.conv")


def _table(x, y, a, b, theta, kron):
    n = len(x)
    return Table({"NUMBER": np.arange(1, n + 1, dtype=np.int32), "X_IMAGE": np.asarray(x, float),
                  "Y_IMAGE": np.asarray(y, float), "A_IMAGE": np.full(n, a, float) if np.isscalar(a) else a,
                  "B_IMAGE": np.full(n, b, float) if np.isscalar(b) else b,
                  "THETA_IMAGE": np.full(n, theta, float) if np.isscalar(theta) else theta,
                  "KRON_RADIUS": np.full(n, kron, float)})


def test_join_keeps_first_pass_and_drops_centres_inside_scaled_ellipses():
    # One pass-1 object elongated along x (a = 10 px, b = 2 px after Kron 2 x (5, 1)).
    first = _table([100.0], [100.0], 5.0, 1.0, 0.0, 2.0)
    second = _table([108.0, 100.0, 100.0, 300.0], [100.0, 104.0, 101.0, 300.0], 1.0, 1.0, 0.0, 2.0)
    joined = join_passes([first, second], scale=1.0)
    # (108, 100) is inside along the major axis, (100, 104) outside across it, (100, 101) inside.
    assert list(joined["PASS"]) == [1, 2, 2]
    assert list(zip(joined["X_IMAGE"], joined["Y_IMAGE"])) == [(100.0, 100.0), (100.0, 104.0), (300.0, 300.0)]
    assert list(joined["NUMBER"]) == [1, 2, 3]
    # Scale 0.7: a = 7 px no longer reaches (108, 100).
    assert len(join_passes([first, second], scale=0.7)) == 4
    # Rotated by 90 degrees: now (100, 104) is inside and (108, 100) outside.
    rotated = join_passes([_table([100.0], [100.0], 5.0, 1.0, 90.0, 2.0), second])
    assert (100.0, 104.0) not in list(zip(rotated["X_IMAGE"], rotated["Y_IMAGE"]))
    assert (108.0, 100.0) in list(zip(rotated["X_IMAGE"], rotated["Y_IMAGE"]))


def test_join_adds_extended_neighbours_off_the_centre_only_with_neighbour_radius():
    # A large pass-1 object (ellipse 40 px, FLUX_RADIUS 10 px) at (100, 100).
    first = _table([100.0], [100.0], 10.0, 10.0, 0.0, 4.0)
    first["FLUX_RADIUS"] = [10.0]
    # Pass 2, all inside its ellipse: an extended neighbour 25 px off the centre, a compact knot 25 px off,
    # the object's own core re-detected 3 px off (extended), an extended one 8 px off (within FLUX_RADIUS).
    second = _table([125.0, 100.0, 103.0, 108.0], [100.0, 125.0, 100.0, 100.0], 2.0, 2.0, 0.0, 2.0)
    second["FLUX_RADIUS"] = [7.0, 2.5, 9.0, 6.5]
    assert list(join_passes([first, second], scale=1.0)["PASS"]) == [1]
    joined = join_passes([first, second], scale=1.0, neighbour_radius=6.0)
    assert list(joined["PASS"]) == [1, 2]
    assert (joined["X_IMAGE"][1], joined["Y_IMAGE"][1]) == (125.0, 100.0)
    # Threshold above the neighbour's FLUX_RADIUS: the ellipse rule alone again.
    assert len(join_passes([first, second], scale=1.0, neighbour_radius=7.5)) == 1
    # Inside two pass-1 ellipses: a fragment of either (within its FLUX_RADIUS) is dropped.
    two = _table([100.0, 140.0], [100.0, 100.0], 10.0, 10.0, 0.0, 4.0)
    two["FLUX_RADIUS"] = [10.0, 16.0]
    joined = join_passes([two, second[:1]], scale=1.0, neighbour_radius=6.0)
    assert list(joined["PASS"]) == [1, 1]


def test_join_matches_brute_force_over_three_passes():
    rng = np.random.default_rng(5)
    tables = []
    for n in (60, 200, 150):
        tables.append(_table(rng.uniform(0, 500, n), rng.uniform(0, 500, n), rng.uniform(1, 8, n),
                             rng.uniform(0.5, 1, n), rng.uniform(-90, 90, n), 2.5))
        tables[-1]["B_IMAGE"] *= tables[-1]["A_IMAGE"]
    joined = join_passes(tables, scale=1.3)
    # Brute force: every object against every kept object of earlier passes.
    kept = [tables[0]]
    for table in tables[1:]:
        earlier = Table(np.concatenate([np.asarray(k.as_array()) for k in kept]))
        a = 1.3 * 2.5 * np.asarray(earlier["A_IMAGE"])
        b = 1.3 * 2.5 * np.asarray(earlier["B_IMAGE"])
        inside = inside_ellipses(np.asarray(table["X_IMAGE"])[:, None], np.asarray(table["Y_IMAGE"])[:, None],
                                 np.asarray(earlier["X_IMAGE"])[None], np.asarray(earlier["Y_IMAGE"])[None],
                                 a[None], b[None], np.radians(np.asarray(earlier["THETA_IMAGE"]))[None])
        kept.append(table[~inside.any(axis=1)])
    assert [int((joined["PASS"] == i).sum()) for i in (1, 2, 3)] == [len(k) for k in kept]
    assert 0 < len(kept[1]) < 200 and 0 < len(kept[2]) < 150


def test_pass_options_are_checked():
    base = {"DOT_SEX_FILE": str(DATA_DIR / "default_tile.sex"), "DOT_PARAM_FILE": str(DATA_DIR / "default.param"),
            "DOT_CONV_FILE": str(DATA_DIR / "default.conv"), "FLAG_IMAGE": True}
    problems = validate(dict(base, PASSES=["HOT", "COLD"], PASS_SETTINGS=["DETECT_THRESH=3"]))
    assert any("PASS_SETTINGS has 1 entries for 2 PASSES" in p for p in problems)
    problems = validate(dict(base, PASSES=["HOT"], PASS_SETTINGS=["DETECT_THRESH"]))
    assert any("PASS_SETTINGS entry 1 (HOT)" in p for p in problems)
    problems = validate(dict(base, PASSES=["HOT"], PASS_SETTINGS=["DETECT_THRESH=abc"]))
    assert any("pass HOT" in p and "DETECT_THRESH" in p for p in problems)
    assert validate(dict(base, PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD])) == []
    # A pass's own detection filter: a file, or a name of the module's data folder.
    problems = validate(dict(base, PASSES=["HOT"], PASS_SETTINGS=["FILTER_NAME=no_such.conv"]))
    assert any("pass HOT" in p and "FILTER_NAME" in p and "no_such.conv" in p for p in problems)
    assert validate(dict(base, PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT_SMOOTH, COLD])) == []
    problems = validate(dict(base, PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD], PASS_NEIGHBOUR_RADIUS=-1.0))
    assert any("PASS_NEIGHBOUR_RADIUS must be >= 0" in p for p in problems)
    problems = validate(dict(base, PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD], PASS_MERGE_RADIUS=-1.0))
    assert any("PASS_MERGE_RADIUS must be >= 0" in p for p in problems)


@pytest.fixture(scope="module")
def cluster_tile(tmp_path_factory):
    return simulate_cluster_tile(tmp_path_factory.mktemp("cluster"), 1)


@pytest.fixture(scope="module")
def cluster_tile_seed3(tmp_path_factory):
    return simulate_cluster_tile(tmp_path_factory.mktemp("cluster"), 3)


def _extract(sim, out, engine, **options):
    inputs = [sim / "tiles" / "CFIS.244.252.r.fits", sim / "weight.fits", sim / "flag.fits"]
    summary = run_module(sextractor, inputs, out, "-244-252", ENGINE=engine, BKG_RESIDUAL=False,
                         DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), PASS_ELLIPSE_SCALE=1.0, **options)
    table, header = read_ldac(out / "sexcat-244-252.fits")
    return summary, table, header


@pytest.mark.parametrize("engine", ["sep", "sextractor"])
def test_dual_pass_on_the_cluster(cluster_tile, tmp_path, engine):
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate.crowded import cluster_scores

    if engine == "sextractor" and not (shutil.which("source-extractor") or shutil.which("sex")):
        pytest.skip("no SExtractor binary")
    truth = load_truth(cluster_tile, tile="244.252")
    centre = truth[truth["cluster_role"] == ROLE_ICL][0]
    scores = {}
    for name, options in (("hot", dict(PASSES=["HOT"], PASS_SETTINGS=[HOT])),
                          ("cold", dict(PASSES=["COLD"], PASS_SETTINGS=[COLD])),
                          ("dual", dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD]))):
        summary, table, header = _extract(cluster_tile, tmp_path / name, engine, **options)
        scores[name] = cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, (centre["x"], centre["y"]), 0.187,
                                      passes=table["PASS"])
        if name == "dual":
            single, _ = read_ldac(tmp_path / "hot" / "sexcat-244-252.fits")
            assert table.colnames == single.colnames and "KRON_RADIUS" not in table.colnames
            assert header["PASS1"] == "HOT" and header["PASS2"] == "COLD"
            n_hot = len(single)
            assert (table["PASS"] == 1).sum() == n_hot == header["NPASS1"]
            # Pass 1 kept whole and first; pass 2 adds objects; NUMBER runs 1..n.
            np.testing.assert_array_equal(table["X_IMAGE"][:n_hot], single["X_IMAGE"])
            assert len(table) > n_hot and list(table["NUMBER"]) == list(range(1, len(table) + 1))
            assert summary["n_objects"] == len(table)
    dual, hot, cold = scores["dual"], scores["hot"], scores["cold"]
    # The cold pass finds the faint background galaxies the hot pass cannot; the join keeps most of them.
    assert dual["background_found"] > hot["background_found"] + 0.1
    assert dual["background_found"] >= cold["background_found"] - 0.15
    assert dual["background_duplicated"] == 0
    assert dual["duplicated_across_passes"] == 0  # the join adds no second detection of any truth object
    # The cold pass shreds the knotty members; the hot pass keeps them whole, and so does the join.
    assert cold["members_shredded"] >= 3
    assert dual["members_shredded"] <= 1 and dual["members_whole"] >= 0.85
    assert dual["members_whole"] > cold["members_whole"]  # (seed-dependent margin: 0.10 on this tile, 0.2-0.3 in bench_crowded)


@pytest.mark.parametrize("engine", ["sep", "sextractor"])
def test_smoothed_hot_pass_deblends_members_without_shredding(cluster_tile_seed3, tmp_path, engine):
    # The hot pass's own detection filter (a Gaussian of 6 pixels FWHM) smooths the members' knots away:
    # it splits members the 3x3 filter leaves blended (seed 3: two members, 20.1 and 20.3 mag, 11 arcsec
    # from the centre), and shreds none (docs/crowded.md).
    cluster_tile = cluster_tile_seed3
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate.crowded import cluster_scores

    if engine == "sextractor" and not (shutil.which("source-extractor") or shutil.which("sex")):
        pytest.skip("no SExtractor binary")
    truth = load_truth(cluster_tile, tile="244.252")
    centre = truth[truth["cluster_role"] == ROLE_ICL][0]
    scores = {}
    for name, hot in (("3x3", HOT), ("smooth", HOT_SMOOTH)):
        _, table, _ = _extract(cluster_tile, tmp_path / name, engine, PASSES=["HOT", "COLD"], PASS_SETTINGS=[hot, COLD])
        scores[name] = cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, (centre["x"], centre["y"]), 0.187,
                                      passes=table["PASS"])
    assert scores["smooth"]["members_whole"] > scores["3x3"]["members_whole"]
    assert scores["smooth"]["members_shredded"] == 0
    assert scores["smooth"]["duplicated_across_passes"] == 0
    assert scores["smooth"]["background_found"] >= scores["3x3"]["background_found"] - 0.05


def _tan_wcs(scale):
    """A TAN WCS of ``scale`` arcsec per pixel, reference pixel (100, 100)."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix = [150.0, 2.0], [100.0, 100.0]
    wcs.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    return wcs


def test_cluster_scores_count_member_pieces_and_background_against_a_hand_count():
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate.crowded import cluster_scores

    # Centre (ICL) at (500, 500); members at 100 px spacing; background galaxies 40 px from members;
    # one far galaxy beyond 30 arcsec (160 px at 0.187 arcsec per pixel).
    roles = [ROLE_ICL, ROLE_MEMBER, ROLE_MEMBER, ROLE_MEMBER, ROLE_FIELD, ROLE_FIELD, ROLE_FIELD]
    x = [500.0, 500.0, 600.0, 400.0, 540.0, 440.0, 900.0]
    y = [500.0, 560.0, 500.0, 500.0, 500.0, 460.0, 900.0]
    truth = Table({"x": x, "y": y, "hlr": [20.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3], "mag": [17.0, 19, 19, 19, 23, 23, 23],
                   "is_star": [False] * 7, "cluster_role": roles})
    # Member 1: 3 detections (2 pieces); member 2: 2 (1 piece); member 3: none; galaxy 4 found twice,
    # galaxy 5 not found, the far galaxy found (outside the radius: not counted).
    det_x = [500.0, 503.0, 497.0, 600.0, 604.0, 540.0, 541.5, 900.0]
    det_y = [560.0, 563.0, 557.0, 500.0, 500.0, 500.0, 500.0, 900.0]
    scores = cluster_scores(det_x, det_y, truth, (500.0, 500.0), 0.187, 30.0)
    assert scores["n_members"] == 3 and scores["member_pieces"] == 3 and scores["members_shredded"] == 2
    assert scores["members_whole"] == 0.0 and scores["members_missed"] == 1
    assert scores["n_background"] == 2 and scores["background_found"] == 0.5 and scores["background_duplicated"] == 1


def test_truth_light_in_circles_against_the_moffat_enclosed_flux_and_symmetry():
    from shapepipe_modules.validate.crowded import truth_light_in_circles

    scale, beta, fwhm = 0.187, 3.0, 0.7
    wcs = _tan_wcs(scale)
    # Two equal faint stars 10 px apart (PSF only) and an exponential galaxy with 30 % of its flux in knots.
    n = 3
    truth = Table({"x": [50.0, 60.0, 140.0], "y": [50.0, 50.0, 140.0], "flux": [1e4, 1e4, 5e4],
                   "mag": [20.0, 20.0, 19.0], "is_star": [True, True, False],
                   "disk_hlr": [0.0, 0.0, 1.0], "bulge_hlr": [0.0, 0.0, 1.0], "bulge_frac": [0.0, 0.0, 0.0],
                   "e1_int": np.zeros(n), "e2_int": np.zeros(n), "g1": np.zeros(n), "g2": np.zeros(n),
                   "knot_frac": [0.0, 0.0, 0.3], "knot_n": [0, 0, 30], "knot_seed": [0, 0, 7]})
    psf_model = {"beta": beta, "fwhm": fwhm, "e1": 0.0, "e2": 0.0}
    params = {"psf_beta": beta, "halo_mag": 17.0}
    owner, share, own, runner_up = truth_light_in_circles(truth, [50.0, 55.0, 140.0, 400.0], [50.0, 50.0, 140.0, 400.0],
                                               [6.0, 1.0, 60.0, 3.0], wcs, psf_model, params, reach=100.0)
    # Star 0 within 6 px: the untruncated Moffat's enclosed flux 1 - (1 + (r / rd)^2)^(1 - beta).
    rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    enclosed = 1.0 - (1.0 + (6.0 * scale / rd) ** 2) ** (1.0 - beta)
    assert owner[0] == 0 and 0.9 < share[0] < 1.0  # the other star's wing, 4 px beyond the circle
    assert abs(own[0] - enclosed) < 0.003  # pixel centres within the circle: 3e-4 here
    # Half way between the stars the pixels are symmetric: each holds half the light.
    assert owner[1] in (0, 1) and abs(share[1] - 0.5) < 1e-3
    assert abs(runner_up[1] / 1e4 - own[1]) < 1e-6  # the other star: the same light
    # The galaxy's flux, knots included, lies within 60 px (11"); nothing within reach of (400, 400).
    assert owner[2] == 2 and share[2] > 0.9999 and abs(own[2] - 1.0) < 0.01
    assert owner[3] == -1 and share[3] == 0.0


def test_light_owners_need_the_light_to_explain_the_flux_and_no_rival():
    from shapepipe_modules.validate.crowded import light_owners

    wcs = _tan_wcs(0.187)
    n = 2
    truth = Table({"x": [50.0, 56.0], "y": [50.0, 50.0], "flux": [1e4, 1e4], "mag": [20.0, 20.0],
                   "is_star": [True, True], "disk_hlr": np.zeros(n), "bulge_hlr": np.zeros(n),
                   "bulge_frac": np.zeros(n), "e1_int": np.zeros(n), "e2_int": np.zeros(n), "g1": np.zeros(n),
                   "g2": np.zeros(n), "knot_frac": np.zeros(n), "knot_n": [0, 0], "knot_seed": [0, 0]})
    psf_model = {"beta": 3.0, "fwhm": 0.7, "e1": 0.0, "e2": 0.0}
    params = {"psf_beta": 3.0, "halo_mag": 17.0}
    # On star 0 with its flux: held. The same circle measured 10 times brighter: the light explains too little.
    # Half way between the stars: each holds half, a rival of the other's size. Far out: nothing.
    owner = light_owners(truth, [50.0, 50.0, 53.0, 200.0], [50.0, 50.0, 50.0, 200.0], [1e4, 1e5, 2e3, 100.0],
                         [2.0, 2.0, 2.0, 2.0], wcs, psf_model, params)
    assert list(owner) == [0, -1, -1, -1]


def test_merge_close_pieces_matches_brute_force_groups():
    from shapepipe_modules.sextractor.passes import merge_close_pieces

    rng = np.random.default_rng(11)
    table = _table(rng.uniform(0, 60, 150), rng.uniform(0, 60, 150), 1.0, 1.0, 0.0, 2.0)
    table["FLUX_AUTO"] = rng.uniform(1, 100, 150)
    keep = merge_close_pieces(table, 4.5)
    # Brute force: grow each group by breadth-first search over all pairs closer than 4.5 px.
    x, y, flux = np.asarray(table["X_IMAGE"]), np.asarray(table["Y_IMAGE"]), np.asarray(table["FLUX_AUTO"])
    close = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) < 4.5
    group = np.full(150, -1)
    for start in range(150):
        if group[start] >= 0:
            continue
        group[start], todo = start, [start]
        while todo:
            for j in np.flatnonzero(close[todo.pop()] & (group < 0)):
                group[j] = start
                todo.append(j)
    expected = np.zeros(150, bool)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        expected[members[np.argmax(flux[members])]] = True
    np.testing.assert_array_equal(keep, expected)
    assert 10 < np.sum(~keep) < 140  # groups of several pieces and lone detections both present
    # Exactly 4.5 px apart is not closer than 4.5 px; 0 turns the merge off.
    pair = _table([0.0, 4.5], [0.0, 0.0], 1.0, 1.0, 0.0, 2.0)
    pair["FLUX_AUTO"] = [1.0, 2.0]
    assert list(merge_close_pieces(pair, 4.5)) == [True, True]
    assert list(merge_close_pieces(pair, 4.6)) == [False, True]
    assert merge_close_pieces(table, 0.0).all()
    # In the join the first pass is untouched, later passes are merged before the ellipse test.
    first = _table([5.0, 7.0], [5.0, 5.0], 0.2, 0.2, 0.0, 1.0)
    first["FLUX_AUTO"] = [1.0, 2.0]
    second = _table([30.0, 32.0, 50.0], [30.0, 30.0, 50.0], 0.2, 0.2, 0.0, 1.0)
    second["FLUX_AUTO"] = [5.0, 3.0, 1.0]
    joined = join_passes([first, second], merge_radius=4.5)
    assert list(joined["X_IMAGE"]) == [5.0, 7.0, 30.0, 50.0] and list(joined["PASS"]) == [1, 1, 2, 2]


@pytest.mark.parametrize("engine", ["sep", "sextractor"])
def test_merge_radius_mends_a_galaxy_split_by_the_cold_pass(cluster_tile, tmp_path, engine):
    # PASS_MERGE_RADIUS = 4.5 px: the cold pass's pieces of one faint galaxy become one detection; what it
    # removes is checked by light (the truth object whose noise-free light fills the detection), not by the rule.
    from astropy.io import fits
    from astropy.wcs import WCS

    from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate import crowded

    if engine == "sextractor" and not (shutil.which("source-extractor") or shutil.which("sex")):
        pytest.skip("no SExtractor binary")
    truth = load_truth(cluster_tile, tile="244.252")
    centre = truth[truth["cluster_role"] == ROLE_ICL][0]
    objects = truth[truth["cluster_role"] != ROLE_ICL]
    options = dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT_SMOOTH, COLD], PASS_NEIGHBOUR_RADIUS=6.0)
    _, plain, _ = _extract(cluster_tile, tmp_path / "plain", engine, **options)
    _, merged, _ = _extract(cluster_tile, tmp_path / "merged", engine, PASS_MERGE_RADIUS=4.5, **options)
    _, cold, _ = _extract(cluster_tile, tmp_path / "cold", engine, PASSES=["COLD"], PASS_SETTINGS=[COLD])

    def split(table):
        owner = crowded.assign_detections(table["X_IMAGE"], table["Y_IMAGE"], objects, 0.187)
        counts = crowded.detections_per_truth(owner, len(objects))
        in_cold = crowded.detections_per_truth(owner[np.asarray(table["PASS"]) == 2], len(objects))
        return int(np.sum((in_cold > 1) & (in_cold == counts)))

    scores = [crowded.cluster_scores(t["X_IMAGE"], t["Y_IMAGE"], truth, (centre["x"], centre["y"]), 0.187,
                                     passes=t["PASS"]) for t in (plain, merged)]
    assert split(merged) < split(plain)
    for key in ("background_found", "members_whole", "duplicated_across_passes"):
        assert scores[1][key] == scores[0][key], key
    np.testing.assert_array_equal(merged["X_IMAGE"][merged["PASS"] == 1], plain["X_IMAGE"][plain["PASS"] == 1])
    # Each detection the merge removed holds the light of the same truth object as the brighter cold
    # detection within 4.5 px that replaced it.
    kept = set(zip(np.asarray(merged["X_IMAGE"]), np.asarray(merged["Y_IMAGE"])))
    removed = [i for i in np.flatnonzero(plain["PASS"] == 2)
               if (plain["X_IMAGE"][i], plain["Y_IMAGE"][i]) not in kept]
    assert removed
    params = resolve_parameters("cluster")
    wcs = WCS(fits.getheader(cluster_tile / "tiles" / "CFIS.244.252.r.fits"))
    held = crowded.light_owners(objects, cold["X_IMAGE"], cold["Y_IMAGE"], cold["FLUX_AUTO"],
                                np.maximum(np.asarray(cold["FLUX_RADIUS"], float), 2.0), wcs,
                                TruePSF(cluster_tile).tiles["244.252"], params)
    cx, cy, flux = (np.asarray(cold[c], float) for c in ("X_IMAGE", "Y_IMAGE", "FLUX_AUTO"))
    for i in removed:
        d = np.hypot(cx - plain["X_IMAGE"][i], cy - plain["Y_IMAGE"][i])
        piece = int(np.argmin(d))
        brighter = np.flatnonzero((d < 4.5) & (flux > flux[piece]))
        assert brighter.size and held[piece] >= 0
        assert held[piece] in set(held[brighter])


def test_one_to_one_assignment_gives_each_galaxy_of_a_blend_its_detection():
    from shapepipe_modules.validate.crowded import assign_detections

    # A large galaxy (size (0.8 + 0.3) / 0.187 = 5.88 px) with a compact one (2.14 px) 4 px from its centre.
    # The second detection, 2.5 px from the large galaxy (0.43 sizes) and 1.5 px from the compact one
    # (0.70 sizes), is the large galaxy's by the nearest rule; one to one it is the compact galaxy's,
    # the large one having its own detection at 0.17 sizes. A third detection near the large galaxy only
    # is left over and goes to it (a duplicate either way).
    truth = Table({"x": [100.0, 104.0], "y": [100.0, 100.0], "hlr": [0.8, 0.1]})
    det_x, det_y = [101.0, 102.5, 95.0], [100.0, 100.0, 100.0]
    assert list(assign_detections(det_x, det_y, truth, 0.187)) == [0, 0, 0]
    assert list(assign_detections(det_x, det_y, truth, 0.187, one_to_one=True)) == [0, 1, 0]
    # Nothing within two sizes: no owner either way.
    assert list(assign_detections([300.0], [300.0], truth, 0.187, one_to_one=True)) == [-1]


def test_duplicated_by_light_counts_two_detections_holding_the_light_not_a_peak_on_the_wing():
    from shapepipe_modules.validate.crowded import duplicated_by_light, truth_light_in_circles

    wcs = _tan_wcs(0.187)
    n = 3
    # Galaxies 0 and 1: exponential discs of 1 arcsec; 2: a star 5 times brighter 4 px from galaxy 1's centre.
    truth = Table({"x": [60.0, 140.0, 144.0], "y": [60.0, 140.0, 140.0], "flux": [5e4, 5e4, 2.5e5],
                   "mag": [19.0, 19.0, 17.3], "is_star": [False, False, True], "disk_hlr": [1.0, 1.0, 0.0],
                   "bulge_hlr": [1.0, 1.0, 0.0], "bulge_frac": np.zeros(n), "e1_int": np.zeros(n),
                   "e2_int": np.zeros(n), "g1": np.zeros(n), "g2": np.zeros(n), "knot_frac": np.zeros(n),
                   "knot_n": [0, 0, 0], "knot_seed": [0, 0, 0]})
    psf_model = {"beta": 3.0, "fwhm": 0.7, "e1": 0.0, "e2": 0.0}
    params = {"psf_beta": 3.0, "halo_mag": 15.0}
    # Galaxy 0: one detection on the centre, one split off 4 px away, one noise peak 15 px out (2.8 hlr);
    # galaxy 1: one on the centre and one on the star, both given to the galaxy by position.
    x = np.array([60.0, 64.0, 75.0, 140.0, 144.0])
    y = np.array([60.0, 60.0, 60.0, 140.0, 140.0])
    radius = np.array([6.0, 4.0, 2.0, 6.0, 2.0])
    owner = np.array([0, 0, 0, 1, 1])
    # The independent numbers: each circle's share of galaxy 0's flux.
    _, _, own, _ = truth_light_in_circles(truth[[0]], x[:3], y[:3], radius[:3], wcs, psf_model, params)
    assert own[0] > 0.3 and own[1] > 0.1 and own[2] < 0.01
    assert list(duplicated_by_light(owner, truth, x, y, radius, wcs, psf_model, params)) == [0]
    # Without the split the noise peak alone does not make galaxy 0 a duplicate.
    keep = np.array([0, 2, 3, 4])
    assert list(duplicated_by_light(owner[keep], truth, x[keep], y[keep], radius[keep], wcs, psf_model,
                                    params)) == []
    # Requiring more of the light than the split holds: no duplicate.
    assert list(duplicated_by_light(owner, truth, x, y, radius, wcs, psf_model, params,
                                    min_own=float(own[1]) + 0.01)) == []
