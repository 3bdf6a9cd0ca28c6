"""A galaxy cluster in the simulated sky (``cluster = True``; docs/crowded.md).

The cluster adds, around one position of the first tile: member galaxies
(de Vaucouleurs ellipticals, unsheared, the brightest at the centre), the
intracluster light (one large exponential profile at the centre), a few
bright saturated stars elsewhere in the tile, and an NFW tangential shear
applied to every other galaxy (the background). All its random quantities
come from the stream ``streams.CLUSTER``, so a simulation without the
cluster draws exactly what it drew before.

Truth columns (only when the cluster is on): ``cluster_role`` 0 field
object, 1 member, 2 intracluster light, 3 added bright star; ``knot_frac``,
``knot_n``, ``knot_seed``: the members' knots (``cluster_knot_fraction`` of
their flux in ``cluster_knots`` point-like knots, ``galsim.RandomKnots``;
:func:`.scene.galaxy_profile`).
"""

from __future__ import annotations

import numpy as np

from shapepipe_modules import cfis

from . import streams

ROLE_FIELD, ROLE_MEMBER, ROLE_ICL, ROLE_BRIGHT_STAR = 0, 1, 2, 3
BCG_HLR_ARCSEC = 3.0
BRIGHT_STAR_MIN_DISTANCE_ARCSEC = 40.0
#: The shear inside this radius is that at this radius (the halo centre would be strongly lensing).
NFW_MIN_RADIUS_ARCSEC = 2.0


def nfw_f(x):
    """The function F(x) of the projected NFW profile (Bartelmann 1996), vectorised."""
    x = np.asarray(x, float)
    out = np.ones_like(x)
    low, high = x < 1.0 - 1e-6, x > 1.0 + 1e-6
    out[low] = np.arccosh(1.0 / x[low]) / np.sqrt(1.0 - x[low] ** 2)
    out[high] = np.arccos(1.0 / x[high]) / np.sqrt(x[high] ** 2 - 1.0)
    return out


def nfw_convergence(r, kappa_s, r_s):
    """Convergence kappa(r) of an NFW halo: ``2 kappa_s (1 - F(x)) / (x^2 - 1)``, ``x = r / r_s``."""
    x = np.maximum(np.asarray(r, float) / r_s, 1e-8)
    near = np.abs(x - 1.0) < 1e-4
    safe = np.where(near, 2.0, x)
    return np.where(near, 2.0 * kappa_s / 3.0, 2.0 * kappa_s * (1.0 - nfw_f(safe)) / (safe**2 - 1.0))


def nfw_mean_convergence(r, kappa_s, r_s):
    """Mean convergence inside r: ``4 kappa_s (ln(x/2) + F(x)) / x^2``."""
    x = np.maximum(np.asarray(r, float) / r_s, 1e-8)
    return 4.0 * kappa_s * (np.log(x / 2.0) + nfw_f(x)) / x**2


def nfw_reduced_tangential_shear(r, kappa_s, r_s):
    """Reduced tangential shear ``(mean kappa - kappa) / (1 - kappa)`` at projected radius r."""
    kappa = nfw_convergence(r, kappa_s, r_s)
    return (nfw_mean_convergence(r, kappa_s, r_s) - kappa) / (1.0 - kappa)


def tangential_components(dx, dy, g_t):
    """Cartesian ``(g1, g2)`` of a tangential shear ``g_t`` at offsets ``(dx, dy)`` from the centre.

    Pixel (= shear) frame: a positive ``g_t`` stretches a galaxy
    perpendicular to its direction from the centre.
    """
    phi = np.arctan2(dy, dx)
    return -g_t * np.cos(2.0 * phi), -g_t * np.sin(2.0 * phi)


def tangential_shear(g1, g2, dx, dy):
    """Tangential and cross components of ``(g1, g2)`` about the centre (the inverse of the above)."""
    phi = np.arctan2(dy, dx)
    c, s = np.cos(2.0 * phi), np.sin(2.0 * phi)
    return -(g1 * c + g2 * s), g1 * s - g2 * c


def cluster_centre(params):
    """RA, Dec (deg) of the cluster centre."""
    ra_c, dec_c = cfis.tile_centre(*cfis.parse_tile_id(params["tiles"][0]))
    east, north = params["cluster_offset"]
    return (ra_c + east / 3600.0 / np.cos(np.radians(dec_c))) % 360.0, dec_c + north / 3600.0


def offsets_arcsec(ra, dec, ra_c, dec_c):
    """Offsets ``(dx, dy)`` in arcsec along the pixel axes (x west, y north) from the centre."""
    dra = (np.mod(np.asarray(ra) - ra_c + 180.0, 360.0) - 180.0) * np.cos(np.radians(dec_c))
    return -dra * 3600.0, (np.asarray(dec) - dec_c) * 3600.0


def _member_positions(rng, n, sigma, min_sep, max_tries=2000):
    """Member offsets (arcsec): the first at the centre, the others Gaussian, ``min_sep`` apart."""
    xs, ys = [0.0], [0.0]
    for _ in range(n - 1):
        for _ in range(max_tries):
            x, y = rng.normal(0.0, sigma, 2)
            if np.min(np.hypot(np.array(xs) - x, np.array(ys) - y)) >= min_sep:
                break
        else:
            raise ValueError("simulate: no room for the cluster members; lower cluster_members or "
                             "cluster_min_separation, or raise cluster_radius")
        xs.append(x)
        ys.append(y)
    return np.array(xs), np.array(ys)


def cluster_objects(params, seed):
    """The added objects (members, intracluster light, bright stars) as columns of the scene.

    Returns
    -------
    dict
        ``ra, dec, mag, is_star, is_deep_sky, disk_hlr, bulge_frac, e1_int,
        e2_int, pair_id, cluster_role, knot_frac, knot_n, knot_seed`` (the
        scene derives the rest).
    """
    from .scene import BULGE_TO_DISK_SIZE, _intrinsic_ellipticities

    rng = streams.stream(seed, streams.CLUSTER)
    ra_c, dec_c = cluster_centre(params)
    n = int(params["cluster_members"])
    dx, dy = _member_positions(rng, n, params["cluster_radius"], params["cluster_min_separation"])
    mag = np.concatenate([[params["cluster_bcg_mag"]], rng.uniform(*params["cluster_mag_range"], n - 1)])
    low, high = np.log(params["cluster_hlr_range"])
    hlr = np.concatenate([[BCG_HLR_ARCSEC], np.exp(rng.uniform(low, high, n - 1))])
    e1, e2 = _intrinsic_ellipticities(rng, n, params["cluster_e_sigma"])
    # Pure de Vaucouleurs: its GalSim radius is BULGE_TO_DISK_SIZE * disk_hlr.
    columns = {"dx": dx, "dy": dy, "mag": mag, "is_star": np.zeros(n, bool), "disk_hlr": hlr / BULGE_TO_DISK_SIZE,
               "bulge_frac": np.ones(n), "e1_int": e1, "e2_int": e2, "cluster_role": np.full(n, ROLE_MEMBER)}
    extra = []
    if params["icl_mag"] > 0:
        extra.append({"dx": 0.0, "dy": 0.0, "mag": params["icl_mag"], "is_star": False, "disk_hlr": params["icl_hlr"],
                      "bulge_frac": 0.0, "e1_int": 0.1, "e2_int": 0.0, "cluster_role": ROLE_ICL})
    half = 0.45 * params["tile_size"] * params["pixel_scale"]
    for _ in range(int(params["cluster_bright_stars"])):
        while True:
            x, y = rng.uniform(-half, half, 2)
            if np.hypot(x, y) >= BRIGHT_STAR_MIN_DISTANCE_ARCSEC:
                break
        extra.append({"dx": x, "dy": y, "mag": rng.uniform(*params["cluster_bright_mag_range"]), "is_star": True,
                      "disk_hlr": 0.0, "bulge_frac": 0.0, "e1_int": 0.0, "e2_int": 0.0,
                      "cluster_role": ROLE_BRIGHT_STAR})
    # Knots (star-forming regions, globular clusters) on the members: what shreds them in a cold pass.
    columns["knot_frac"] = np.full(n, float(params["cluster_knot_fraction"]))
    columns["knot_n"] = np.full(n, int(params["cluster_knots"]))
    columns["knot_seed"] = rng.integers(1, 2**31 - 1, n)
    for row in extra:
        row.update(knot_frac=0.0, knot_n=0, knot_seed=0)
        for name, value in row.items():
            columns[name] = np.append(columns[name], value)
    m = columns["mag"].size
    columns["ra"] = (ra_c - columns["dx"] / 3600.0 / np.cos(np.radians(dec_c))) % 360.0
    columns["dec"] = dec_c + columns["dy"] / 3600.0
    del columns["dx"], columns["dy"]
    columns["is_deep_sky"] = np.zeros(m, bool)
    columns["pair_id"] = np.zeros(m, int)
    return columns


def nfw_image_radius(source_radius, kappa_s, r_s, sign=1):
    """Image-plane radius of a source at ``source_radius`` (arcsec) behind an NFW lens.

    Solves the lens equation ``beta = theta (1 - sign x mean kappa(theta))``
    (axisymmetric: the deflection is radial, of size ``theta x mean
    kappa``); ``sign = -1`` is the opposite lens of a paired simulation.
    Inside :data:`NFW_MIN_RADIUS_ARCSEC` the mean convergence is held at its
    value there, as the shear is (the mapping stays one to one there).
    """
    source_radius = np.asarray(source_radius, float)
    top = max(float(source_radius.max(initial=0.0)), NFW_MIN_RADIUS_ARCSEC) * 2.0 + 10.0
    theta = np.concatenate([[0.0], np.geomspace(1e-3, top, 8192)])
    mean_kappa = nfw_mean_convergence(np.maximum(theta, NFW_MIN_RADIUS_ARCSEC), kappa_s, r_s)
    beta = theta * (1.0 - sign * mean_kappa)
    return np.interp(source_radius, beta, theta)


def lensed_positions(params, ra, dec):
    """Image-plane ``(ra, dec)`` of background sources at ``(ra, dec)``: moved radially by the NFW deflection."""
    ra_c, dec_c = cluster_centre(params)
    dx, dy = offsets_arcsec(ra, dec, ra_c, dec_c)
    beta = np.hypot(dx, dy)
    theta = nfw_image_radius(beta, params["nfw_kappa_s"], params["nfw_rs"], params.get("nfw_sign", 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        stretch = np.where(beta > 0, theta / beta, 1.0)
    dx, dy = dx * stretch, dy * stretch
    return (ra_c - dx / 3600.0 / np.cos(np.radians(dec_c))) % 360.0, dec_c + dy / 3600.0


def source_positions(params, ra, dec):
    """Source-plane ``(ra, dec)`` of background galaxies seen at ``(ra, dec)``: the inverse of :func:`lensed_positions`.

    Distances between sources do not depend on the shear, unlike those
    between images: a blend found by its sources' separation is not
    selected by its orientation to the lens.
    """
    ra_c, dec_c = cluster_centre(params)
    dx, dy = offsets_arcsec(ra, dec, ra_c, dec_c)
    theta = np.hypot(dx, dy)
    mean_kappa = nfw_mean_convergence(np.maximum(theta, NFW_MIN_RADIUS_ARCSEC), params["nfw_kappa_s"],
                                      params["nfw_rs"])
    shrink = 1.0 - params.get("nfw_sign", 1) * mean_kappa
    dx, dy = dx * shrink, dy * shrink
    return (ra_c - dx / 3600.0 / np.cos(np.radians(dec_c))) % 360.0, dec_c + dy / 3600.0


def background_shear(params, ra, dec):
    """NFW reduced shear ``(g1, g2)`` at the given positions (pixel frame)."""
    ra_c, dec_c = cluster_centre(params)
    dx, dy = offsets_arcsec(ra, dec, ra_c, dec_c)
    r = np.maximum(np.hypot(dx, dy), NFW_MIN_RADIUS_ARCSEC)
    g_t = params.get("nfw_sign", 1) * nfw_reduced_tangential_shear(r, params["nfw_kappa_s"], params["nfw_rs"])
    return tangential_components(dx, dy, g_t)
