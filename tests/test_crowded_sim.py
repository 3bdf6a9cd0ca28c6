"""The simulator's galaxy cluster (preset ``cluster``) against its own truth."""

from __future__ import annotations

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
from astropy.io import fits  # noqa: E402
from scipy import integrate  # noqa: E402

from shapepipe_modules.simulate import load_truth, resolve_parameters, simulate  # noqa: E402
from shapepipe_modules.simulate import cluster  # noqa: E402
from shapepipe_modules.simulate.scene import make_scene  # noqa: E402


@pytest.fixture(scope="module")
def cluster_sim(tmp_path_factory):
    return simulate("cluster_knotty", tmp_path_factory.mktemp("cluster") / "out", seed=3, n_workers=1)


def test_nfw_shear_is_mean_minus_local_convergence():
    # Mean convergence inside r by direct integration of kappa(r), independent of the closed form.
    kappa_s, r_s = 0.1, 60.0
    for r in (3.0, 30.0, 59.99, 60.0, 150.0):
        inside, _ = integrate.quad(lambda s: 2 * np.pi * s * cluster.nfw_convergence(s, kappa_s, r_s), 0, r,
                                   points=[min(r_s, r)], limit=200)
        mean = inside / (np.pi * r * r)
        assert cluster.nfw_mean_convergence(r, kappa_s, r_s) == pytest.approx(mean, rel=1e-5)
        kappa = cluster.nfw_convergence(r, kappa_s, r_s)
        assert cluster.nfw_reduced_tangential_shear(r, kappa_s, r_s) == pytest.approx((mean - kappa) / (1 - kappa), rel=1e-5)


def test_tangential_components_round_trip():
    rng = np.random.default_rng(1)
    dx, dy, g_t = rng.normal(size=50), rng.normal(size=50), rng.uniform(0, 0.2, 50)
    g1, g2 = cluster.tangential_components(dx, dy, g_t)
    t, x = cluster.tangential_shear(g1, g2, dx, dy)
    np.testing.assert_allclose(t, g_t, atol=1e-12)
    np.testing.assert_allclose(x, 0.0, atol=1e-12)
    # A galaxy on the +x axis is stretched along y: g1 < 0.
    assert cluster.tangential_components(1.0, 0.0, 0.1)[0] == pytest.approx(-0.1)


def test_cluster_objects_do_not_change_the_field():
    params = resolve_parameters("cluster", nfw_lensed_positions=False)
    box = (244.28, 244.36, 51.95, 52.05)
    with_cluster = make_scene(params, 3, box)
    without = make_scene(resolve_parameters("cluster", cluster=False), 3, box)
    field = with_cluster["cluster_role"] == cluster.ROLE_FIELD
    assert field.sum() == without["ra"].size and "cluster_role" not in without
    for name in ("ra", "dec", "mag", "e1_int", "e2_int", "hlr"):
        np.testing.assert_array_equal(with_cluster[name][field], without[name])


def test_nfw_sign_negates_the_background_shear_only():
    box = (244.28, 244.36, 51.95, 52.05)
    plus = make_scene(resolve_parameters("cluster", nfw_lensed_positions=False), 3, box)
    minus = make_scene(resolve_parameters("cluster", nfw_sign=-1, nfw_lensed_positions=False), 3, box)
    np.testing.assert_array_equal(minus["g1"], -plus["g1"])
    np.testing.assert_array_equal(minus["g2"], -plus["g2"])
    assert np.any(plus["g1"] != 0)
    for name in ("ra", "dec", "mag", "e1_int", "knot_seed"):
        np.testing.assert_array_equal(minus[name], plus[name])


def test_lens_mapping_shears_separations_by_the_reduced_shear():
    # Two sources 0.05 arcsec apart, tangentially then radially, at radius 20 arcsec: the lens mapping stretches
    # the tangential separation against the radial one by (1 + g) / (1 - g), g the reduced shear there, and
    # puts the image where beta = theta (1 - mean kappa(theta)).
    kappa_s, r_s, beta, step = 0.1, 60.0, 20.0, 0.05
    theta = cluster.nfw_image_radius(np.array([beta]), kappa_s, r_s)[0]
    assert theta * (1 - cluster.nfw_mean_convergence(theta, kappa_s, r_s)) == pytest.approx(beta, rel=1e-6)
    tangential = theta * step / beta  # a tangential step scales with theta / beta
    radial = cluster.nfw_image_radius(np.array([beta + step]), kappa_s, r_s)[0] - theta
    g = cluster.nfw_reduced_tangential_shear(theta, kappa_s, r_s)
    assert tangential / radial == pytest.approx((1 + g) / (1 - g), rel=2e-3)
    # The opposite lens (nfw_sign = -1): a source at the same place appears closer in, squeezed the other way.
    theta_minus = cluster.nfw_image_radius(np.array([beta]), kappa_s, r_s, sign=-1)[0]
    radial_minus = cluster.nfw_image_radius(np.array([beta + step]), kappa_s, r_s, sign=-1)[0] - theta_minus
    assert theta_minus < beta < theta and (theta_minus * step / beta) / radial_minus < 1


def test_lensed_positions_move_the_background_only():
    box = (244.28, 244.36, 51.95, 52.05)
    drawn = make_scene(resolve_parameters("cluster", nfw_lensed_positions=False), 3, box)
    lensed = make_scene(resolve_parameters("cluster", nfw_lensed_positions=True), 3, box)
    field = (drawn["cluster_role"] == cluster.ROLE_FIELD) & ~drawn["is_star"]
    params = resolve_parameters("cluster")
    ra_c, dec_c = cluster.cluster_centre(params)
    before = np.hypot(*cluster.offsets_arcsec(drawn["ra"], drawn["dec"], ra_c, dec_c))
    after = np.hypot(*cluster.offsets_arcsec(lensed["ra"], lensed["dec"], ra_c, dec_c))
    np.testing.assert_allclose(after[field], cluster.nfw_image_radius(before[field], 0.1, 60.0), rtol=1e-6, atol=1e-6)
    assert np.all(after[field] > before[field])
    np.testing.assert_array_equal(lensed["ra"][~field], drawn["ra"][~field])
    for name in ("mag", "e1_int", "hlr"):
        np.testing.assert_array_equal(lensed[name], drawn[name])
    # source_positions undoes the mapping, for either lens.
    ra_back, dec_back = cluster.source_positions(params, lensed["ra"][field], lensed["dec"][field])
    np.testing.assert_allclose(cluster.offsets_arcsec(ra_back, dec_back, ra_c, dec_c),
                               cluster.offsets_arcsec(drawn["ra"][field], drawn["dec"][field], ra_c, dec_c), atol=2e-4)
    minus_params = resolve_parameters("cluster", nfw_sign=-1)
    ra_m, dec_m = cluster.lensed_positions(minus_params, drawn["ra"][field], drawn["dec"][field])
    ra_back, dec_back = cluster.source_positions(minus_params, ra_m, dec_m)
    np.testing.assert_allclose(cluster.offsets_arcsec(ra_back, dec_back, ra_c, dec_c),
                               cluster.offsets_arcsec(drawn["ra"][field], drawn["dec"][field], ra_c, dec_c), atol=2e-4)
    # Truth shear at the lensed position.
    g_t, _ = cluster.tangential_shear(lensed["g1"][field], lensed["g2"][field],
                                      *cluster.offsets_arcsec(lensed["ra"][field], lensed["dec"][field], ra_c, dec_c))
    expected = cluster.nfw_reduced_tangential_shear(np.maximum(after[field], 2.0), 0.1, 60.0)
    np.testing.assert_allclose(g_t, expected, rtol=1e-6, atol=1e-9)


def test_rotated_pair_negates_background_shapes_only():
    # The rotate pairing's minus member: the same lensed positions and shears, every field galaxy's intrinsic
    # ellipticity negated, members, intracluster light and stars untouched; so the pair's mean shape is the shear.
    box = (244.28, 244.36, 51.95, 52.05)
    plus = make_scene(resolve_parameters("cluster", nfw_lensed_positions=True), 3, box)
    minus = make_scene(resolve_parameters("cluster", nfw_lensed_positions=True, intrinsic_rotated=True), 3, box)
    field = (plus["cluster_role"] == cluster.ROLE_FIELD) & ~plus["is_star"]
    assert field.sum() > 100 and (~field).sum() > 10
    for name in ("ra", "dec", "g1", "g2", "mag", "hlr", "cluster_role"):
        np.testing.assert_array_equal(minus[name], plus[name])
    for name in ("e1_int", "e2_int"):
        np.testing.assert_array_equal(minus[name][field], -plus[name][field])
        np.testing.assert_array_equal(minus[name][~field], plus[name][~field])
    assert np.abs(plus["e1_int"][field]).mean() > 0.1


def test_rotate_pairing_records(tmp_path, monkeypatch):
    # What simulate_paired asks the simulator for and records: the same shear and lens in both members,
    # intrinsic_rotated in minus only; a shear of sign +1 for both; an unknown pairing is refused.
    import json

    from conftest import record_only_simulate
    from shapepipe_modules.simulate import core

    monkeypatch.setattr(core, "_simulate", record_only_simulate)
    plus, minus = (json.loads((d / "simulation.json").read_text()) for d in core.simulate_paired(
        "cluster", tmp_path, seed=2, pairing="rotate", nfw_lensed_positions=True))
    assert plus["pair"] == {"member": "plus", "shear_sign": 1, "pairing": "rotate", "partner": "minus"}
    assert minus["pair"] == {"member": "minus", "shear_sign": 1, "pairing": "rotate", "partner": "plus"}
    differing = {k for k in plus["parameters"] if plus["parameters"][k] != minus["parameters"][k]}
    assert differing == {"intrinsic_rotated"} and minus["parameters"]["intrinsic_rotated"] is True
    assert plus["parameters"]["nfw_sign"] == 1 and plus["parameters"]["nfw_lensed_positions"] is True
    with pytest.raises(ValueError, match="pairing"):
        core.simulate_paired("cluster", tmp_path / "bad", pairing="flip")


def test_cluster_truth(cluster_sim):
    params = resolve_parameters("cluster")
    truth = load_truth(cluster_sim, tile="244.252")
    role = np.asarray(truth["cluster_role"])
    assert (role == cluster.ROLE_MEMBER).sum() == params["cluster_members"]
    assert (role == cluster.ROLE_ICL).sum() == 1
    assert (role == cluster.ROLE_BRIGHT_STAR).sum() == params["cluster_bright_stars"]
    members = role == cluster.ROLE_MEMBER
    assert np.all(truth["g1"][members] == 0) and np.all(truth["g2"][members] == 0)
    # Background galaxies: tangential shear from the NFW profile of their pixel offset, no cross shear.
    background = (role == cluster.ROLE_FIELD) & ~np.asarray(truth["is_star"])
    centre = truth[role == cluster.ROLE_ICL][0]
    dx = (truth["x"][background] - centre["x"]) * params["pixel_scale"]
    dy = (truth["y"][background] - centre["y"]) * params["pixel_scale"]
    g_t, g_x = cluster.tangential_shear(truth["g1"][background], truth["g2"][background], dx, dy)
    r = np.maximum(np.hypot(dx, dy), cluster.NFW_MIN_RADIUS_ARCSEC)
    expected = cluster.nfw_reduced_tangential_shear(r, params["nfw_kappa_s"], params["nfw_rs"])
    np.testing.assert_allclose(g_t, expected, rtol=0.02, atol=2e-3)  # pixel frame vs RA/Dec offsets
    assert np.max(np.abs(g_x)) < 0.01
    assert 0.05 < np.median(g_t[np.hypot(dx, dy) < 30]) < 0.3


def test_bright_stars_saturate_with_bleed_trails(cluster_sim):
    truth = load_truth(cluster_sim, exposure="2100001")
    stars = truth[np.asarray(truth["cluster_role"]) == cluster.ROLE_BRIGHT_STAR]
    assert len(stars) >= 1 and np.all(stars["saturated"])
    with fits.open(cluster_sim / "exposures" / "2100001p.flag.fits.fz") as hdus:
        flag = hdus[1].data
    for star in stars:
        ix, iy = int(round(star["x"])) - 1, int(round(star["y"])) - 1
        saturated_rows = np.flatnonzero(flag[:, ix] & 4)
        saturated_columns = np.flatnonzero(flag[iy, max(ix - 50, 0):ix + 50] & 4)
        # The bleed trail runs along the column beyond the star's saturated core.
        assert saturated_rows.size > 0 and np.ptp(saturated_rows) > 1.5 * np.ptp(saturated_columns)


def test_member_knots_keep_the_flux_and_are_reproducible(cluster_sim):
    from shapepipe_modules.simulate.scene import galaxy_profile, knots_of, truth_galaxy_profile

    truth = load_truth(cluster_sim, tile="244.252")
    members = truth[np.asarray(truth["cluster_role"]) == cluster.ROLE_MEMBER]
    assert resolve_parameters("cluster")["cluster_knot_fraction"] == 0  # smooth ellipticals
    fraction = resolve_parameters("cluster_knotty")["cluster_knot_fraction"]
    assert fraction > 0 and np.all(members["knot_frac"] == fraction)
    assert len(set(members["knot_seed"])) == len(members)
    assert knots_of(truth[np.asarray(truth["cluster_role"]) == cluster.ROLE_FIELD][0]) is None
    row = members[1]
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)

    def draw(profile):
        return galsim.Convolve(profile, psf).drawImage(nx=129, ny=129, scale=0.187, method="no_pixel").array

    with_knots, again = draw(truth_galaxy_profile(row)), draw(truth_galaxy_profile(row))
    smooth = draw(galaxy_profile(row["disk_hlr"], row["bulge_hlr"], row["bulge_frac"], row["e1_int"], row["e2_int"],
                                 0.0, 0.0, flux=row["flux"]))
    np.testing.assert_array_equal(with_knots, again)
    assert with_knots.sum() == pytest.approx(smooth.sum(), rel=0.02)
    # Beyond the smooth part, the light is point-like knots: many separate local maxima.
    from scipy import ndimage

    knots = with_knots - (1 - fraction) * smooth
    assert knots.sum() == pytest.approx(fraction * smooth.sum(), rel=0.03)
    maxima = (knots == ndimage.maximum_filter(knots, 3)) & (knots > 0.02 * knots.max())
    assert maxima.sum() >= 3
    smooth_maxima = (smooth == ndimage.maximum_filter(smooth, 3)) & (smooth > 0.02 * smooth.max())
    assert smooth_maxima.sum() == 1
