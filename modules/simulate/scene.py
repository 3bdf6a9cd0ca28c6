"""The simulated sky: stars and galaxies with their true properties.

Objects are drawn uniformly over a sky box covering all exposures and tiles;
every property comes from one random stream per object class derived from the
seed, so the scene does not depend on how the rendering is split into work.
Galaxy ellipticities ``e1_int, e2_int`` and shears ``g1, g2`` use the shear
convention (``|e| = (a - b) / (a + b)``; the lensed ellipticity is
``(e + g) / (1 + g* e)``), in GalSim's sky frame (= pixel frame).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from shapepipe_modules import cfis

from . import streams

ZERO_POINT = 30.0
BULGE_TRUNCATION = 5.0  # bulge truncated at this many of its half-light radii
BULGE_TO_DISK_SIZE = 0.4
E_MAX = 0.8


def mag_to_flux(mag):
    """Flux (image units) of a magnitude at the zero point PHOTZP = 30."""
    return 10.0 ** (-0.4 * (np.asarray(mag, float) - ZERO_POINT))


def _power_law_mags(rng, n, low, high, slope):
    """Magnitudes with dN/dm proportional to 10^(slope m) on [low, high]."""
    a, b = 10.0 ** (slope * low), 10.0 ** (slope * high)
    return np.log10(a + rng.uniform(size=n) * (b - a)) / slope


#: Distance between the two galaxies of a ring pair (arcsec).
RING_SEPARATION_ARCSEC = 30.0


def _uniform_sky(rng, n, box):
    ra_min, ra_max, dec_min, dec_max = box
    sin_dec = rng.uniform(np.sin(np.radians(dec_min)), np.sin(np.radians(dec_max)), n)
    ra = np.mod(rng.uniform(ra_min, ra_max, n), 360.0)
    return ra, np.degrees(np.arcsin(sin_dec))


def separate_positions(ra, dec, units, min_separation, box, rng, max_tries=1000):
    """Move objects so that no two are closer than ``min_separation``.

    Random sequential placement: units (an object, or the two galaxies of a
    ring pair, which move together) are placed in order at their drawn
    position; a unit with a point closer than ``min_separation`` to a point
    already placed is shifted as a whole to a new uniform position of the box
    (``rng``) until it fits. Objects keep every other property, so a
    calibration scene differs from a Poisson one only by its lack of close
    pairs (blends), which the paired estimator cannot calibrate while the
    simulator shears the galaxies but not their positions.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        Drawn positions, degrees.
    units : list of numpy.ndarray
        Indices of the objects of each unit, in placement order.
    min_separation : float
        Arcsec.
    box : tuple
        ``(ra_min, ra_max, dec_min, dec_max)``, degrees.
    rng : numpy.random.Generator
        Source of the new positions.

    Returns
    -------
    ra, dec : numpy.ndarray
        New arrays.

    Raises
    ------
    ValueError
        A unit that finds no free place in ``max_tries`` draws (the box is
        too crowded for ``min_separation``).
    """
    ra, dec = np.array(ra, dtype=float), np.array(dec, dtype=float)
    ra_min, dec_c = box[0], 0.5 * (box[2] + box[3])
    cos_dec = np.cos(np.radians(dec_c))
    cell = float(min_separation)
    grid = {}  # (cell x, cell y) -> list of placed points (x, y), arcsec on the tangent plane

    def plane(r, d):
        # Signed RA offset: a ring partner may lie just outside the box.
        return (np.mod(r - ra_min + 180.0, 360.0) - 180.0) * cos_dec * 3600.0, d * 3600.0

    def fits(xs, ys):
        for x, y in zip(xs, ys):
            cx, cy = int(np.floor(x / cell)), int(np.floor(y / cell))
            for i in (cx - 1, cx, cx + 1):
                for j in (cy - 1, cy, cy + 1):
                    for px, py in grid.get((i, j), ()):
                        if (px - x) ** 2 + (py - y) ** 2 < cell * cell:
                            return False
        return True

    for members in units:
        offsets_ra = ra[members] - ra[members[0]]
        offsets_dec = dec[members] - dec[members[0]]
        xs, ys = plane(ra[members], dec[members])
        for _ in range(max_tries):
            if fits(xs, ys):
                break
            new_ra, new_dec = _uniform_sky(rng, 1, box)
            ra[members] = np.mod(new_ra[0] + offsets_ra, 360.0)
            dec[members] = new_dec[0] + offsets_dec
            xs, ys = plane(ra[members], dec[members])
        else:
            raise ValueError(f"simulate: no free position {min_separation} arcsec from every other object after "
                             f"{max_tries} draws; lower min_separation or the densities")
        for x, y in zip(xs, ys):
            grid.setdefault((int(np.floor(x / cell)), int(np.floor(y / cell))), []).append((x, y))
    return ra, dec


def box_area_arcmin2(box):
    """Area of an RA/Dec box in arcmin^2."""
    ra_min, ra_max, dec_min, dec_max = box
    steradian = np.radians(ra_max - ra_min) * (np.sin(np.radians(dec_max)) - np.sin(np.radians(dec_min)))
    return steradian * (180.0 / np.pi * 60.0) ** 2


def _sersic_enclosed(r_over_hlr, n, trunc_over_hlr=None):
    """Fraction of flux within r of a Sersic profile (radius in hlr units)."""
    b = special.gammaincinv(2 * n, 0.5)
    enclosed = special.gammainc(2 * n, b * np.asarray(r_over_hlr) ** (1.0 / n))
    if trunc_over_hlr is None:
        return enclosed
    return np.minimum(enclosed, 1.0)


def composite_hlr(disk_hlr, bulge_hlr, bulge_frac):
    """Half-light radius of disk (n=1) plus bulge (n=4, truncated) with the given radii.

    Both radii are those of the GalSim profiles (the bulge radius refers to the
    truncated profile), so the enclosed flux of each is known analytically
    up to the truncation, handled by solving on the truncated cumulative.
    """
    disk_hlr = np.asarray(disk_hlr, float)
    bulge_hlr = np.asarray(bulge_hlr, float)
    bulge_frac = np.asarray(bulge_frac, float)
    # Untruncated n=4 half-light radius that gives the truncated profile's hlr.
    b4 = special.gammaincinv(8, 0.5)
    def truncated_cdf(x_over_untrunc):
        return special.gammainc(8, b4 * x_over_untrunc ** 0.25)
    # Solve once for the ratio hlr_truncated / hlr_untruncated at fixed truncation.
    def ratio_equation(rho):
        trunc = BULGE_TRUNCATION * rho
        return truncated_cdf(rho) / truncated_cdf(trunc) - 0.5
    rho = optimize.brentq(ratio_equation, 0.05, 1.0)
    untrunc = bulge_hlr / rho
    full = truncated_cdf(BULGE_TRUNCATION * bulge_hlr / untrunc)

    def enclosed(r):
        disk = _sersic_enclosed(r / disk_hlr, 1.0)
        bulge = np.where(r < BULGE_TRUNCATION * bulge_hlr, truncated_cdf(r / untrunc) / full, 1.0)
        return (1 - bulge_frac) * disk + bulge_frac * bulge

    low = np.minimum(disk_hlr, bulge_hlr) * 0.5
    high = np.maximum(disk_hlr, bulge_hlr) * 2.0
    for _ in range(60):  # vectorised bisection
        mid = 0.5 * (low + high)
        inside = enclosed(mid) > 0.5
        high = np.where(inside, mid, high)
        low = np.where(inside, low, mid)
    return 0.5 * (low + high)


def _intrinsic_ellipticities(rng, n, sigma):
    e1 = rng.normal(0.0, sigma, n)
    e2 = rng.normal(0.0, sigma, n)
    bad = np.hypot(e1, e2) >= E_MAX
    while np.any(bad):
        e1[bad] = rng.normal(0.0, sigma, bad.sum())
        e2[bad] = rng.normal(0.0, sigma, bad.sum())
        bad = np.hypot(e1, e2) >= E_MAX
    return e1, e2


def make_scene(params, seed: int, box) -> dict:
    """All objects of the simulation, as a dict of equal-length arrays.

    Parameters
    ----------
    params : dict
        Simulation parameters.
    seed : int
        Simulation seed.
    box : tuple
        ``(ra_min, ra_max, dec_min, dec_max)`` in degrees (``ra_max`` may
        exceed 360 when the box crosses RA 0).

    Returns
    -------
    dict
        Columns ``id, ra, dec, mag, flux, is_star, is_deep_sky, hlr,
        disk_hlr, bulge_hlr, bulge_frac, bulge_n, disk_n, e1_int, e2_int, g1,
        g2, pair_id``; ids start at 1 and are unique.
    """
    area = box_area_arcmin2(box)
    star_rng = streams.stream(seed, streams.STAR_SCENE)
    n_star = star_rng.poisson(params["star_density"] * area)
    star_ra, star_dec = _uniform_sky(star_rng, n_star, box)
    star_mag = _power_law_mags(star_rng, n_star, *params["star_mag_range"], params["star_count_slope"])

    gal_rng = streams.stream(seed, streams.GALAXY_SCENE)
    n_gal = gal_rng.poisson(params["galaxy_density"] * area)
    ring = bool(params["ring"])
    n_draw = (n_gal + 1) // 2 if ring else n_gal
    gal_mag = _power_law_mags(gal_rng, n_draw, *params["galaxy_mag_range"], params["galaxy_count_slope"])
    log_hlr = np.log10(params["hlr_at_22"]) + params["hlr_slope"] * (gal_mag - 22.0) + gal_rng.normal(0.0, params["hlr_scatter"], n_draw)
    disk_hlr = np.clip(10.0**log_hlr, 0.1, 3.0)
    bulge_frac = gal_rng.uniform(0.0, 0.6, n_draw) * (gal_rng.uniform(size=n_draw) < 0.7)
    e1, e2 = _intrinsic_ellipticities(gal_rng, n_draw, params["e_sigma"])
    pair_id = np.arange(1, n_draw + 1)
    if ring:
        # Partner of each galaxy: same properties, shape rotated by 90 degrees.
        gal_mag, disk_hlr, bulge_frac, pair_id = (np.concatenate([a, a]) for a in (gal_mag, disk_hlr, bulge_frac, pair_id))
        e1, e2 = np.concatenate([e1, -e1]), np.concatenate([e2, -e2])
    else:
        pair_id = np.zeros(n_draw, dtype=int)
    n_gal = gal_mag.size
    if ring:
        # Partners RING_SEPARATION_ARCSEC apart in a random direction: nearly
        # every pair lies in one tile (one shear), so its shapes cancel in the
        # tile's mean, yet the two never blend.
        ra_1, dec_1 = _uniform_sky(gal_rng, n_draw, box)
        angle = gal_rng.uniform(0.0, 2.0 * np.pi, n_draw)
        step = RING_SEPARATION_ARCSEC / 3600.0
        ra_2 = np.mod(ra_1 + step * np.cos(angle) / np.cos(np.radians(dec_1)), 360.0)
        dec_2 = dec_1 + step * np.sin(angle)
        gal_ra, gal_dec = np.concatenate([ra_1, ra_2]), np.concatenate([dec_1, dec_2])
    else:
        gal_ra, gal_dec = _uniform_sky(gal_rng, n_gal, box)

    if params.get("min_separation", 0.0) > 0:
        units = [np.array([i]) for i in range(n_star)]
        if ring:  # a ring pair moves as one unit, keeping its separation
            units += [n_star + np.array([i, i + n_draw]) for i in range(n_draw)]
        else:
            units += [np.array([n_star + i]) for i in range(n_gal)]
        all_ra, all_dec = separate_positions(np.concatenate([star_ra, gal_ra]), np.concatenate([star_dec, gal_dec]),
                                             units, float(params["min_separation"]), box,
                                             streams.stream(seed, streams.PLACEMENT))
        star_ra, star_dec, gal_ra, gal_dec = all_ra[:n_star], all_dec[:n_star], all_ra[n_star:], all_dec[n_star:]

    columns = {
        "ra": np.concatenate([star_ra, gal_ra]),
        "dec": np.concatenate([star_dec, gal_dec]),
        "mag": np.concatenate([star_mag, gal_mag]),
        "is_star": np.concatenate([np.ones(n_star, bool), np.zeros(n_gal, bool)]),
        "is_deep_sky": np.zeros(n_star + n_gal, bool),
        "disk_hlr": np.concatenate([np.zeros(n_star), disk_hlr]),
        "bulge_frac": np.concatenate([np.zeros(n_star), bulge_frac]),
        "e1_int": np.concatenate([np.zeros(n_star), e1]),
        "e2_int": np.concatenate([np.zeros(n_star), e2]),
        "pair_id": np.concatenate([np.zeros(n_star, int), pair_id]),
    }
    if params["deep_sky"]:
        # One large bright galaxy near the first tile centre, for masking tests.
        ra_c, dec_c = cfis.tile_centre(*cfis.parse_tile_id(params["tiles"][0]))
        extra = {
            "ra": (ra_c - 80.0 / 3600.0 / np.cos(np.radians(dec_c))) % 360.0,
            "dec": dec_c + 60.0 / 3600.0,
            "mag": 13.0,
            "is_star": False,
            "is_deep_sky": True,
            "disk_hlr": 12.0,
            "bulge_frac": 0.3,
            "e1_int": 0.25,
            "e2_int": 0.1,
            "pair_id": 0,
        }
        for name, value in extra.items():
            columns[name] = np.append(columns[name], value)

    if params.get("cluster", False):
        from . import cluster

        columns["cluster_role"] = np.zeros(columns["ra"].size, np.int16)
        columns["knot_frac"] = np.zeros(columns["ra"].size)
        columns["knot_n"] = np.zeros(columns["ra"].size, np.int16)
        columns["knot_seed"] = np.zeros(columns["ra"].size, np.int64)
        for name, value in cluster.cluster_objects(params, seed).items():
            columns[name] = np.append(columns[name], value).astype(columns[name].dtype)

    n = columns["ra"].size
    columns["id"] = np.arange(1, n + 1, dtype=np.int64)
    columns["flux"] = mag_to_flux(columns["mag"])
    galaxy = ~columns["is_star"]
    columns["bulge_hlr"] = np.where(galaxy, BULGE_TO_DISK_SIZE * columns["disk_hlr"], 0.0)
    columns["hlr"] = np.zeros(n)
    if galaxy.any():
        columns["hlr"][galaxy] = composite_hlr(columns["disk_hlr"][galaxy], columns["bulge_hlr"][galaxy], columns["bulge_frac"][galaxy])
    columns["bulge_n"] = np.where(galaxy, 4.0, 0.0)
    columns["disk_n"] = np.where(galaxy, 1.0, 0.0)

    # Constant reduced shear per CFIS tile (zero outside the simulated tiles).
    shear_of_tile = {cfis.parse_tile_id(tile): g for tile, g in zip(params["tiles"], params["shear"])}
    xxx, yyy = cfis.tile_number(columns["ra"], columns["dec"])
    g1 = np.zeros(n)
    g2 = np.zeros(n)
    for (tx, ty), (s1, s2) in shear_of_tile.items():
        inside = galaxy & (xxx == tx) & (yyy == ty)
        g1[inside], g2[inside] = s1, s2
    if params.get("cluster", False):
        # Every galaxy but the cluster's own lies behind it (docs/crowded.md): the NFW shear adds to the tile's.
        behind = galaxy & (columns["cluster_role"] == cluster.ROLE_FIELD)
        if params.get("nfw_lensed_positions", False):
            # The drawn positions are the sources': a blend's separation is sheared with its galaxies.
            columns["ra"][behind], columns["dec"][behind] = cluster.lensed_positions(
                params, columns["ra"][behind], columns["dec"][behind])
        n1, n2 = cluster.background_shear(params, columns["ra"][behind], columns["dec"][behind])
        g1[behind] += n1
        g2[behind] += n2
    columns["g1"], columns["g2"] = g1, g2
    if params.get("intrinsic_rotated", False):
        # The other member of a pair at the same shear: each shape noise cancels in the pair's mean.
        rotated = galaxy & ~columns["is_deep_sky"]
        if "cluster_role" in columns:
            from .cluster import ROLE_FIELD

            rotated &= columns["cluster_role"] == ROLE_FIELD
        columns["e1_int"] = np.where(rotated, -columns["e1_int"], columns["e1_int"])
        columns["e2_int"] = np.where(rotated, -columns["e2_int"], columns["e2_int"])
    return columns


def galaxy_profile(disk_hlr, bulge_hlr, bulge_frac, e1_int, e2_int, g1, g2, flux=1.0, gsparams=None, knots=None):
    """GalSim profile of a simulated galaxy, sheared, without PSF (arcsec, sky frame).

    ``knots``: optional ``(fraction, number, seed)``: that fraction of the
    flux in ``number`` point-like knots (``galsim.RandomKnots``, distributed
    like an exponential of the galaxy's half-light radius; seeded), the rest
    in the smooth profile (cluster members, docs/crowded.md).
    """
    import galsim

    parts = []
    if bulge_frac < 1.0:
        parts.append(galsim.Exponential(half_light_radius=disk_hlr, flux=1.0 - bulge_frac, gsparams=gsparams))
    if bulge_frac > 0.0:
        parts.append(
            galsim.DeVaucouleurs(half_light_radius=bulge_hlr, trunc=BULGE_TRUNCATION * bulge_hlr, flux=bulge_frac, gsparams=gsparams)
        )
    profile = parts[0] if len(parts) == 1 else galsim.Add(parts, gsparams=gsparams)
    if knots is not None and knots[0] > 0:
        fraction, number, seed = knots
        hlr = float(composite_hlr(disk_hlr, bulge_hlr, bulge_frac))
        spots = galsim.RandomKnots(int(number), half_light_radius=hlr, flux=fraction,
                                   rng=galsim.BaseDeviate(int(seed)), gsparams=gsparams)
        profile = galsim.Add([profile.withFlux(1.0 - fraction), spots], gsparams=gsparams)
    return profile.shear(g1=e1_int, g2=e2_int).shear(g1=g1, g2=g2).withFlux(flux)


def truth_galaxy_profile(row, gsparams=None):
    """:func:`galaxy_profile` of one truth-table row (exposure or tile truth)."""
    return galaxy_profile(
        float(row["disk_hlr"]), float(row["bulge_hlr"]), float(row["bulge_frac"]),
        float(row["e1_int"]), float(row["e2_int"]), float(row["g1"]), float(row["g2"]),
        flux=float(row["flux"]), gsparams=gsparams, knots=knots_of(row),
    )


def knots_of(row, index=None):
    """``(fraction, number, seed)`` of an object's knots from a truth row or scene columns (None: none)."""
    names = ("knot_frac", "knot_n", "knot_seed")
    try:
        values = [row[name] if index is None else row[name][index] for name in names]
    except (KeyError, ValueError):
        return None
    return (float(values[0]), int(values[1]), int(values[2])) if float(values[0]) > 0 else None
