"""Tangential shear profile of metacal shapes around the simulated cluster (validate.crowded)."""

from __future__ import annotations

import numpy as np
import pytest

from shapepipe_modules.simulate import cluster
from shapepipe_modules.validate import crowded

EDGES = np.array([0.0, 20.0, 40.0, 60.0, 90.0])


def _tables(g1, g2, response, rng, sigma_e=0.0):
    """Metacal branches of galaxies whose measured shape responds to shear with the 2x2 ``response``."""
    n = g1.size
    e = rng.normal(0.0, sigma_e, (2, n))
    base = e + response @ np.stack([g1, g2])
    tables = {}
    for name, step in (("noshear", (0, 0)), ("1p", (0.01, 0)), ("1m", (-0.01, 0)), ("2p", (0, 0.01)), ("2m", (0, -0.01))):
        g = base + response @ np.array(step, float)[:, None]
        tables[name] = {"g1": g[0], "g2": g[1], "s2n": np.full(n, 50.0), "T": np.ones(n), "Tpsf": np.ones(n),
                        "mcal_flags": np.zeros(n, np.int64), "no_shape": np.zeros(n, np.int64)}
    return tables


def _field(n, rng):
    r = 90.0 * np.sqrt(rng.uniform(0.0, 1.0, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    dx, dy = r * np.cos(phi), r * np.sin(phi)
    g_t = cluster.nfw_reduced_tangential_shear(np.maximum(r, 2.0), 0.1, 60.0)
    return dx, dy, g_t


def test_noiseless_profile_is_the_input_after_the_response():
    rng = np.random.default_rng(2)
    dx, dy, g_t = _field(400, rng)
    g1, g2 = cluster.tangential_components(dx, dy, g_t)
    response = np.array([[0.7, 0.02], [-0.01, 0.65]])
    result = crowded.metacal_tangential_profile(_tables(g1, g2, response, rng), dx, dy, g_t, EDGES, n_boot=5)
    np.testing.assert_allclose(result["R"], response, atol=1e-12)
    assert result["A"] == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(result["g_t"], result["true"], atol=1e-10)
    np.testing.assert_allclose(result["g_x"], 0.0, atol=1e-10)
    # The mean input per bin is that of the galaxies in the bin.
    r = np.hypot(dx, dy)
    inner = r < 20.0
    assert result["true"][0] == pytest.approx(g_t[inner].mean())
    assert result["n"].sum() == 400


def test_noisy_profile_recovers_the_input_within_its_bootstrap_errors():
    rng = np.random.default_rng(5)
    n = 6000
    dx, dy, g_t = _field(n, rng)
    g1, g2 = cluster.tangential_components(dx, dy, g_t)
    response = np.diag([0.6, 0.6])
    tables = _tables(g1, g2, response, rng, sigma_e=0.2)
    group = rng.integers(0, 3, n)
    result = crowded.metacal_tangential_profile(tables, dx, dy, g_t, EDGES, group=group, n_boot=100,
                                                rng=np.random.default_rng(1))
    # Bootstrap error of A against its expected value: shape noise sigma_e / R per component.
    expected = 0.2 / 0.6 / np.sqrt(np.sum(g_t**2))
    assert result["A_error"] == pytest.approx(expected, rel=0.25)
    assert abs(result["A"] - 1.0) < 3 * result["A_error"]
    assert np.all(np.abs(result["g_t"] - result["true"]) < 3.5 * result["g_t_error"])
    assert abs(result["cross"]) < 3 * result["cross_error"]
    # Uncalibrated shapes would be 0.6 of the input: far outside the errors.
    raw = _tables(g1, g2, response, np.random.default_rng(5), sigma_e=0.2)
    t, _ = cluster.tangential_shear(raw["noshear"]["g1"], raw["noshear"]["g2"], dx, dy)
    assert abs(np.sum(t * g_t) / np.sum(g_t**2) - 1.0) > 5 * result["A_error"]


def test_background_shapes_match_truth_and_keep_only_background_galaxies():
    from astropy.table import Table

    rng = np.random.default_rng(3)
    ra_c, dec_c = 150.0, 2.0
    n = 30
    dx, dy = rng.uniform(-80, 80, n), rng.uniform(-80, 80, n)
    ra = ra_c - dx / 3600.0 / np.cos(np.radians(dec_c))
    dec = dec_c + dy / 3600.0
    g_t = rng.uniform(0.01, 0.1, n)
    g1, g2 = cluster.tangential_components(dx, dy, g_t)
    role = np.zeros(n, int)
    role[:3] = cluster.ROLE_MEMBER
    is_star = np.zeros(n, bool)
    is_star[3] = True
    truth = Table({"ra": ra, "dec": dec, "g1": g1, "g2": g2, "cluster_role": role, "is_star": is_star})
    # Catalogue: every truth object 0.1 arcsec off, in another order, plus one object matching nothing.
    order = rng.permutation(n)
    columns = {"XWIN_WORLD": np.append(ra[order] + 0.1 / 3600.0, ra_c + 0.02),
               "YWIN_WORLD": np.append(dec[order], dec_c), "NGMIX_MCAL_FLAGS": np.zeros(n + 1, int),
               "NGMIX_NO_SHAPE": np.zeros(n + 1, int)}
    for key in ("NOSHEAR", "1P", "1M", "2P", "2M"):
        columns[f"NGMIX_ELL_{key}"] = np.zeros((n + 1, 2))
        for name in ("SNR", "T", "Tpsf"):
            columns[f"NGMIX_{name}_{key}"] = np.ones(n + 1)
    got = crowded.background_shapes(columns, truth, (ra_c, dec_c))
    assert sorted(got["truth_index"]) == list(range(4, n))
    np.testing.assert_array_equal(got["truth_id"], got["truth_index"])  # no id column: the row
    truth["id"] = np.arange(n) * 7 + 100
    np.testing.assert_array_equal(crowded.background_shapes(columns, truth, (ra_c, dec_c))["truth_id"],
                                  got["truth_index"] * 7 + 100)
    np.testing.assert_allclose(got["g_t_true"], g_t[got["truth_index"]], atol=1e-12)
    np.testing.assert_allclose(got["dy"], dy[got["truth_index"]], atol=1e-6)
    np.testing.assert_allclose(got["dx"], dx[got["truth_index"]] - 0.1 * np.cos(np.radians(dec_c)), atol=1e-3)


def test_paired_profile_cancels_the_shape_noise():
    rng = np.random.default_rng(8)
    n = 500
    dx, dy, g_t = _field(n, rng)
    g1, g2 = cluster.tangential_components(dx, dy, g_t)
    response = np.diag([0.6, 0.6])
    plus = _tables(g1, g2, response, np.random.default_rng(4), sigma_e=0.25)
    minus = _tables(-g1, -g2, response, np.random.default_rng(4), sigma_e=0.25)  # same intrinsic shapes
    tables = {b: {k: np.concatenate([plus[b][k], minus[b][k]]) for k in plus[b]} for b in plus}
    both = np.concatenate
    result = crowded.metacal_tangential_profile(tables, both([dx, dx]), both([dy, dy]), both([g_t, -g_t]), EDGES,
                                                sign=both([np.ones(n), -np.ones(n)]), unit=both([np.arange(n)] * 2),
                                                n_boot=20)
    np.testing.assert_allclose(result["g_t"], result["true"], atol=1e-10)
    assert result["A"] == pytest.approx(1.0, abs=1e-10)
    assert result["A_error"] < 1e-8
    # Unpaired (the plus member alone): the shape noise is there.
    alone = crowded.metacal_tangential_profile(plus, dx, dy, g_t, EDGES, n_boot=50)
    assert alone["A_error"] > 0.05


def test_bin_response_follows_a_response_anisotropic_about_the_centre():
    # Galaxies within 20 arcsec respond to the tangential shear with 0.45 and to the cross shear with 0.75
    # (each its own matrix in the pixel frame); those outside with 0.7 to both. The sample's mean response
    # leaves the inner bin low; each bin's response in the tangential frame recovers every bin.
    rng = np.random.default_rng(12)
    n = 3000
    dx, dy, g_t = _field(n, rng)
    g1, g2 = cluster.tangential_components(dx, dy, g_t)
    inner = np.hypot(dx, dy) < 20.0
    r_tt, r_xx = np.where(inner, 0.45, 0.7), np.where(inner, 0.75, 0.7)
    phi = np.arctan2(dy, dx)
    t = np.stack([-np.cos(2 * phi), -np.sin(2 * phi)])  # the tangential direction in (g1, g2)
    x = np.stack([np.sin(2 * phi), -np.cos(2 * phi)])
    matrices = (r_tt[:, None, None] * np.einsum("in,jn->nij", t, t)
                + r_xx[:, None, None] * np.einsum("in,jn->nij", x, x))
    tables = {}
    for name, step in (("noshear", (0, 0)), ("1p", (0.01, 0)), ("1m", (-0.01, 0)), ("2p", (0, 0.01)),
                       ("2m", (0, -0.01))):
        g = np.einsum("nij,jn->in", matrices, np.stack([g1 + step[0], g2 + step[1]]))
        tables[name] = {"g1": g[0], "g2": g[1], "s2n": np.full(n, 50.0), "T": np.ones(n), "Tpsf": np.ones(n),
                        "mcal_flags": np.zeros(n, np.int64), "no_shape": np.zeros(n, np.int64)}
    sample = crowded.metacal_tangential_profile(tables, dx, dy, g_t, EDGES, n_boot=3)
    by_bin = crowded.metacal_tangential_profile(tables, dx, dy, g_t, EDGES, n_boot=3, bin_response=True)
    assert sample["g_t"][0] < 0.8 * sample["true"][0]
    np.testing.assert_allclose(by_bin["g_t"], by_bin["true"], rtol=1e-10)
    np.testing.assert_allclose(by_bin["g_x"], 0.0, atol=1e-10)
    assert by_bin["A"] == pytest.approx(1.0, abs=1e-10)
    assert by_bin["R_t"][0] == pytest.approx(0.45) and by_bin["R_x"][0] == pytest.approx(0.75)
    np.testing.assert_allclose(by_bin["R_t"][1:], 0.7)


def test_selected_in_both_runs_of_a_pair():
    # Galaxies 0-3 of seed 1 and galaxy 0 of seed 2 (the same truth index in another simulation).
    group = np.array([1, 1, 1, 1, 1, 1, 1, 2, 2])
    unit = np.array([0, 0, 1, 1, 2, 3, 3, 0, 0])
    sign = np.array([1, -1, 1, -1, 1, 1, -1, 1, -1])
    selected = np.array([True, True, True, False, True, False, True, True, True])
    got = crowded.selected_in_both(selected, sign, unit, group)
    # 0: both runs; 1: the - run fails the cuts; 2: no - run; 3: the + run fails; seed 2's galaxy 0: both.
    assert got.tolist() == [True, True, False, False, False, False, False, True, True]
    # Without groups seed 2's galaxy 0 is seed 1's.
    assert crowded.selected_in_both(selected, sign, unit).tolist() == got.tolist()
    unit[7:] = 5
    assert crowded.selected_in_both(selected, sign, unit).tolist() == got.tolist()


@pytest.mark.parametrize("name", ["cluster_exposure.mask", "cluster_tile.mask"])
def test_cluster_chain_halo_masks_end_where_the_simulated_star_light_reaches_a_tenth_of_the_noise(tmp_path, name):
    # example/crowded sizes the halo masks from the simulator's star profile (docs/crowded.md): at the mask
    # radius the azimuthal mean of a drawn star (core, 3% halo; spikes excluded) is at most 0.1 sigma of an
    # exposure's pixel noise, and at 0.6 of the radius it is still above it (the mask is not oversized).
    import shutil
    from pathlib import Path

    galsim = pytest.importorskip("galsim")
    from shapepipe_modules.mask.config import read_mask_config
    from shapepipe_modules.mask.geometry import magnitude_scale
    from shapepipe_modules.simulate import render, resolve_parameters

    repo = Path(__file__).resolve().parents[1]
    data = Path(crowded.__file__).resolve().parents[1] / "mask" / "data"
    shutil.copy(repo / "example" / "crowded" / name, tmp_path / name)
    for template in ("halo.reg", "spike.reg"):
        shutil.copy(data / template, tmp_path / template)
    halo = read_mask_config(tmp_path / name).halo
    params = resolve_parameters("cluster")
    sigma = np.sqrt(render.background_variance(params))
    scale = params["pixel_scale"]
    for mag in (13.0, 14.0, 15.0, 16.0):
        radius = 49.7 * float(magnitude_scale(mag, halo.mag_pivot, halo.scale_factor, halo.min_scale))  # arcsec
        flux = 10.0 ** (-0.4 * (mag - 30.0))
        star = render.star_profile(flux, mag, 0.7, 0.0, 0.0, dict(params, halo_mag=17.0))
        # Without the spikes (thin lines along the axes, masked by the spike template): core + halo only.
        core_halo = galsim.Add(list(star.obj_list[:2]))
        n = int(2.2 * radius / scale) | 1
        image = core_halo.drawImage(nx=n, ny=n, scale=scale).array
        y, x = np.indices(image.shape) - n // 2
        r = np.hypot(x, y) * scale

        def ring(at):
            return image[np.abs(r - at) < 0.5].mean()

        assert ring(radius) <= 0.1 * sigma * 1.05, (mag, radius, ring(radius) / sigma)
        assert ring(0.6 * radius) > 0.1 * sigma, (mag, radius, ring(0.6 * radius) / sigma)


def test_cluster_chain_configuration_folder(tmp_path):
    # The benchmark's configuration folder: GOLD's stages, the cluster's files on top, the mask templates.
    import importlib.util
    from pathlib import Path

    from shapepipe_modules.gold.chain import STAGES

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cluster_shear.py"
    spec = importlib.util.spec_from_file_location("bench_cluster_shear", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = bench.cluster_config_dir(tmp_path / "cfg")
    for stage in STAGES:
        assert (folder / stage.config).is_file()
    text = (folder / "config_tile_Sx_exp_psfex.ini").read_text()
    assert "PASSES = HOT, COLD" in text and "gauss_6.0_13x13.conv" in text
    assert "MASK_CONFIG_PATH = $SP_CONFIG/cluster_tile.mask" in (folder / "config_MaMa.ini").read_text()
    assert (folder / "halo.reg").is_file() and (folder / "cluster_exposure.mask").is_file()
    # The exposure CCDs: the module's default_exp.sex with 24-pixel background meshes, otherwise equal.
    assert "PASS_NEIGHBOUR_RADIUS = 6" in text and "DOT_SEX_FILE = $SP_CONFIG/cluster_exp.sex" in text
    from shapepipe_modules.sextractor.config_files import read_dot_sex
    from shapepipe_modules.sextractor.runner import DATA_DIR

    cluster, default = read_dot_sex(folder / "cluster_exp.sex"), read_dot_sex(DATA_DIR / "default_exp.sex")
    assert cluster.pop("BACK_SIZE") == "24" and default.pop("BACK_SIZE") == "64"
    assert cluster == default

    # The neighbour mask of the exposure stamps: the cluster's stage-7 file is GOLD's but for three options of
    # the MULTI-EPOCH vignetmaker; neighbour_mask_config(off) gives GOLD's settings back.
    import configparser

    def options(path):
        parser = configparser.RawConfigParser()
        parser.optionxform = str
        parser.read(path)
        return {section: dict(parser[section]) for section in parser.sections()}

    gold = Path(__file__).resolve().parents[1] / "example" / "GOLD"
    mine, theirs = options(folder / "config_tile_PiViSmVi.ini"), options(gold / "config_tile_PiViSmVi.ini")
    changed = {"FILE_PATTERN": "sexcat, objmask", "FILE_EXT": ".fits, .fits", "NEIGHBOUR_MASK": "True"}
    assert {k: mine["VIGNETMAKER_RUNNER_RUN_2"].pop(k) for k in changed} == changed
    theirs["VIGNETMAKER_RUNNER_RUN_2"].pop("FILE_PATTERN"), theirs["VIGNETMAKER_RUNNER_RUN_2"].pop("FILE_EXT")
    assert mine == theirs
    assert options(folder / "config_tile_Sx_exp_psfex.ini")["SEXTRACTOR_RUNNER_RUN_1"]["OBJECT_MASK"] == "True"
    # The epochs' local sky: the cluster's ngmix file is GOLD's but for EPOCH_LOCAL_SKY_WIDTH.
    mine, theirs = options(folder / "config_tile_Ng.ini"), options(gold / "config_tile_Ng.ini")
    assert mine["NGMIX_RUNNER"].pop("EPOCH_LOCAL_SKY_WIDTH") == "4"
    assert mine == theirs
    bench.neighbour_mask_config(folder, on=False)
    stage7 = options(folder / "config_tile_PiViSmVi.ini")
    assert stage7["VIGNETMAKER_RUNNER_RUN_2"].pop("NEIGHBOUR_MASK") == "False"
    assert stage7 == options(gold / "config_tile_PiViSmVi.ini")
    assert options(folder / "config_tile_Sx_exp_psfex.ini")["SEXTRACTOR_RUNNER_RUN_1"]["OBJECT_MASK"] == "False"
