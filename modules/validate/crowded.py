"""Scores of a detection catalogue of the simulated cluster against its truth (docs/crowded.md).

Each detection is given to the truth object nearest to it in units of that
object's size, ``distance / (hlr + 0.3 arcsec)`` (stars: hlr 0), when that
ratio is below ``max_ratio``: a fragment of a large member a few arcsec from
its centre belongs to the member, a faint galaxy on the member's wing to
itself. A member is whole when exactly one detection belongs to it; a truth
object is duplicated when more than one does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE_FLOOR_ARCSEC = 0.3
#: A member with a brighter truth star closer than this is star-blended (cluster_scores).
STAR_BLEND_ARCSEC = 3.0


def assign_detections(det_x, det_y, truth, pixel_scale, max_ratio=2.0, one_to_one=False):
    """Index of the truth row each detection belongs to (-1: none).

    With ``one_to_one`` the detections are first paired with the truth
    objects one to one, greedily by increasing size-scaled distance (each
    object takes at most one detection in this step); only the detections
    left over go to the object nearest in size units. Two detections of a
    blend of two galaxies are then one detection of each, where the nearest
    rule may give both to the larger galaxy.

    Parameters
    ----------
    det_x, det_y : array
        Detection positions (pixels, same frame as ``truth['x'], truth['y']``).
    truth : table-like
        Columns ``x, y, hlr`` (hlr in arcsec).
    pixel_scale : float
        Arcsec per pixel.
    """
    from scipy.spatial import cKDTree

    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    size = (np.asarray(truth["hlr"], float) + SIZE_FLOOR_ARCSEC) / pixel_scale
    det = np.column_stack([np.asarray(det_x, float), np.asarray(det_y, float)])
    owner = np.full(len(det), -1)
    if not len(det) or not tx.size:
        return owner
    # Candidates within the largest reach; then the smallest size-scaled distance.
    reach = max_ratio * size.max()
    neighbours = cKDTree(np.column_stack([tx, ty])).query_ball_point(det, r=reach)
    pairs = []
    for i, candidates in enumerate(neighbours):
        if not candidates:
            continue
        c = np.asarray(candidates)
        ratio = np.hypot(tx[c] - det[i, 0], ty[c] - det[i, 1]) / size[c]
        best = np.argmin(ratio)
        if ratio[best] < max_ratio:
            owner[i] = c[best]
        if one_to_one:
            close = ratio < max_ratio
            pairs.extend(zip(ratio[close], np.full(int(close.sum()), i), c[close]))
    if one_to_one and pairs:
        nearest = owner.copy()
        owner[:] = -1
        taken = np.zeros(tx.size, bool)
        for _, i, k in sorted(pairs):
            if owner[i] < 0 and not taken[k]:
                owner[i], taken[k] = k, True
        owner = np.where(owner >= 0, owner, nearest)
    return owner


def detections_per_truth(owner, n_truth):
    """Number of detections belonging to each truth row."""
    return np.bincount(owner[owner >= 0], minlength=n_truth)


def truth_light_in_circles(truth, x, y, radius, wcs, psf_model, params, reach=100.0):
    """Noise-free light of the truth objects inside circles (e.g. each detection's FLUX_RADIUS circle).

    Says whose light a detection holds, where :func:`assign_detections`
    knows only positions: a star blended with a galaxy may be given to the
    galaxy, and a knot clump of a member to a faint neighbour. Each object
    is drawn as the simulator draws it (its truth profile, knots included,
    convolved with the PSF; stars with halo and spikes when bright; local
    Jacobian of ``wcs`` at the object; no pixel convolution) on the pixels
    of the circle's bounding box, and the pixels whose centre lies within
    the radius are summed. Each object is drawn once, on the pixels of all
    the circles within its reach.

    Parameters
    ----------
    truth : table-like
        The rows to draw (e.g. without the intracluster light): ``x, y``
        (FITS pixels), ``flux, mag, is_star`` and the galaxy profile columns
        of the truth tables.
    x, y, radius : array
        Circle centres (FITS pixels) and radii (pixels).
    wcs : astropy.wcs.WCS
        The image's WCS.
    psf_model : dict
        ``beta, fwhm, e1, e2`` of the PSF (``TruePSF(sim).tiles[tile]``).
    params : dict
        Simulation parameters (``psf_beta``, ``halo_mag`` and the bright-star profile).
    reach : float
        Objects farther than this (pixels) from a circle's centre are not drawn.

    Returns
    -------
    owner : ndarray of int
        Row of ``truth`` with the most light in each circle (-1: none drawn).
    share : ndarray
        That object's share of all the drawn light in the circle.
    own_fraction : ndarray
        That object's light in the circle over its total flux.
    runner_up : ndarray
        The light in the circle (image units) of the object with the second most.
    """
    import galsim
    from scipy.spatial import cKDTree

    from shapepipe_modules.simulate.geometry import local_jacobians
    from shapepipe_modules.simulate.psf import moffat
    from shapepipe_modules.simulate.render import gsparams, star_profile
    from shapepipe_modules.simulate.scene import truth_galaxy_profile

    x, y, radius = (np.atleast_1d(np.asarray(v, float)) for v in (x, y, radius))
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    owner, share, own, runner_up = np.full(x.size, -1), np.zeros(x.size), np.zeros(x.size), np.zeros(x.size)
    if not tx.size or not x.size:
        return owner, share, own, runner_up
    # Each circle's pixels (centres within the radius) in its bounding box, 1-based like the truth.
    r = np.ceil(radius).astype(int)
    x0, y0 = np.rint(x).astype(int) - r, np.rint(y).astype(int) - r
    masks = []
    for i in range(x.size):
        yy, xx = np.mgrid[y0[i]:y0[i] + 2 * r[i] + 1, x0[i]:x0[i] + 2 * r[i] + 1]
        masks.append(np.hypot(xx - x[i], yy - y[i]) <= radius[i])
    jacobians = local_jacobians(wcs, tx, ty)
    psf = moffat(psf_model["beta"], psf_model["fwhm"], psf_model["e1"], psf_model["e2"], gsparams=gsparams())
    light = [dict() for _ in range(x.size)]
    circles = cKDTree(np.column_stack([x, y]))
    # One drawing per object, on the union of the boxes of the circles within its reach.
    for k, near in enumerate(circles.query_ball_point(np.column_stack([tx, ty]), r=reach + radius.max())):
        near = [i for i in near if np.hypot(tx[k] - x[i], ty[k] - y[i]) < reach + radius[i]]
        if not near:
            continue
        row = truth[k]
        if bool(row["is_star"]):
            profile = star_profile(float(row["flux"]), float(row["mag"]), psf_model["fwhm"], psf_model["e1"],
                                   psf_model["e2"], params)
        else:
            profile = galsim.Convolve([truth_galaxy_profile(row, gsparams=gsparams()), psf], gsparams=gsparams())
        bounds = galsim.BoundsI(int(min(x0[i] for i in near)), int(max(x0[i] + 2 * r[i] for i in near)),
                                int(min(y0[i] for i in near)), int(max(y0[i] + 2 * r[i] for i in near)))
        stamp = galsim.ImageF(bounds)
        profile.drawImage(image=stamp, wcs=galsim.JacobianWCS(*jacobians[k]), method="no_pixel",
                          offset=(tx[k] - stamp.true_center.x, ty[k] - stamp.true_center.y))
        for i in near:
            cut = stamp.array[y0[i] - bounds.ymin:y0[i] - bounds.ymin + 2 * r[i] + 1,
                              x0[i] - bounds.xmin:x0[i] - bounds.xmin + 2 * r[i] + 1]
            light[i][k] = float(cut[masks[i]].sum())
    for i, held in enumerate(light):
        if not held:
            continue
        best = max(held, key=held.get)
        total = sum(held.values())
        owner[i] = best
        share[i] = held[best] / total if total > 0 else 0.0
        own[i] = held[best] / float(truth["flux"][best])
        runner_up[i] = max((v for k, v in held.items() if k != best), default=0.0)
    return owner, share, own, runner_up


def light_owners(truth, x, y, flux, radius, wcs, psf_model, params, reach=100.0, min_share=0.5, min_fraction=0.25):
    """Truth row whose light each detection holds (-1: none), from :func:`truth_light_in_circles`.

    A detection holds an object's light when, within its circle (FLUX_RADIUS:
    half its flux), that object has at least ``min_share`` of the truth
    light, its light makes at least ``min_fraction`` of the detection's
    ``flux`` (the detection is of that light, not of noise or of diffuse
    light missing from ``truth``) and no other object's light makes as much
    (not a faint object on a bright one's wing).
    """
    owner, share, own, runner_up = truth_light_in_circles(truth, x, y, radius, wcs, psf_model, params, reach)
    flux = np.atleast_1d(np.asarray(flux, float))
    light = own * np.asarray(truth["flux"], float)[np.maximum(owner, 0)] if len(truth) else np.zeros(flux.size)
    held = (owner >= 0) & (share >= min_share) & (light >= min_fraction * flux) & (runner_up < min_fraction * flux)
    return np.where(held, owner, -1)


def duplicated_by_light(owner, truth, x, y, radius, wcs, psf_model, params, min_own=0.1, reach=100.0):
    """Truth rows whose light two or more detections hold: one object catalogued twice.

    :func:`assign_detections` counts every detection near an object as its
    own, and a 1-sigma pass finds noise peaks near faint galaxies and lumps
    of a member's far wing; those hold almost none of the object's light. A
    detection holds object ``k`` here when ``k`` has the most truth light
    in the detection's circle (``radius``: e.g. FLUX_RADIUS, at least 2
    pixels) and that light is at least ``min_own`` of ``k``'s flux
    (:func:`truth_light_in_circles`, drawn only for the objects ``owner``
    gives two or more detections).

    Parameters
    ----------
    owner : array of int
        Truth row of each detection (:func:`assign_detections`).
    truth, wcs, psf_model, params, reach
        As :func:`truth_light_in_circles`.
    x, y, radius : array
        Detection centres and circle radii (pixels).
    min_own : float
        Least fraction of the object's flux a detection must hold.

    Returns
    -------
    numpy.ndarray of int
        The truth rows held by two or more detections.
    """
    owner = np.asarray(owner)
    x, y, radius = (np.atleast_1d(np.asarray(v, float)) for v in (x, y, radius))
    counts = detections_per_truth(owner, len(truth))
    candidates = np.flatnonzero(counts > 1)
    if not candidates.size:
        return candidates
    dets = np.flatnonzero(np.isin(owner, candidates))
    # Who has the most light in each circle, and that object's share of its own flux there.
    top, _, own, _ = truth_light_in_circles(truth, x[dets], y[dets], radius[dets], wcs, psf_model, params, reach)
    held = (top == owner[dets]) & (own >= min_own)
    return candidates[detections_per_truth(owner[dets][held], len(truth))[candidates] >= 2]


def cluster_scores(det_x, det_y, truth, centre_xy, pixel_scale, radius_arcsec=30.0, passes=None):
    """Completeness, duplicates and shredding of one catalogue on the cluster tile.

    Returns
    -------
    dict
        ``n_background`` (background galaxies within ``radius_arcsec`` of
        the centre), ``background_found`` (fraction with >= 1 detection),
        ``background_duplicated`` (number with > 1), ``n_members``,
        ``members_whole`` (fraction with exactly 1), ``members_shredded``
        (number with > 1), ``member_pieces`` (detections of members beyond
        their first: the pieces of shredded members, unsheared objects in a
        background sample), ``duplicated_truth`` (any truth row with > 1),
        ``n_detections``, ``unassigned``; with ``passes`` (the PASS of each
        detection) ``duplicated_across_passes``: truth rows detected by more
        than one pass (what the join must prevent). Members not detected
        exactly once are split in ``members_missed`` (no detection of
        their own: blended into a neighbour) and ``members_shredded``;
        ``members_star_blended`` counts the missed members with a truth
        star brighter than themselves within ``STAR_BLEND_ARCSEC`` (a
        superposition no detection pass separates; the simulated star
        density is boosted), and ``members_whole_no_star`` is the
        fraction detected exactly once among the members without such a
        star.
    """
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, ROLE_ICL, ROLE_MEMBER

    # The intracluster light is no object to detect: its size would claim every fragment near the centre.
    truth = truth[np.asarray(truth["cluster_role"]) != ROLE_ICL]
    owner = assign_detections(det_x, det_y, truth, pixel_scale)
    counts = detections_per_truth(owner, len(truth))
    role = np.asarray(truth["cluster_role"])
    r = np.hypot(np.asarray(truth["x"]) - centre_xy[0], np.asarray(truth["y"]) - centre_xy[1]) * pixel_scale
    background = (role == ROLE_FIELD) & ~np.asarray(truth["is_star"], bool) & (r < radius_arcsec)
    members = role == ROLE_MEMBER
    scores = {}
    if passes is not None:
        passes = np.asarray(passes)
        assigned = owner >= 0
        pairs = np.unique(np.column_stack([owner[assigned], passes[assigned]]), axis=0)
        scores["duplicated_across_passes"] = int(np.sum(np.bincount(pairs[:, 0], minlength=len(truth)) > 1))
    # Members with a brighter star close by: a superposition, not a crowding failure of the passes.
    stars = np.flatnonzero(np.asarray(truth["is_star"], bool))
    star_near = np.zeros(len(truth), bool)
    if stars.size:
        tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
        for i in np.flatnonzero(members):
            d = np.hypot(tx[stars] - tx[i], ty[stars] - ty[i]) * pixel_scale
            star_near[i] = np.any((d < STAR_BLEND_ARCSEC) & (np.asarray(truth["mag"])[stars] < truth["mag"][i]))
    clear = members & ~star_near
    return scores | {
        "members_missed": int(np.sum(counts[members] == 0)),
        "members_star_blended": int(np.sum(counts[members & star_near] == 0)),
        "n_members_no_star": int(clear.sum()),
        "members_whole_no_star": float(np.mean(counts[clear] == 1)) if clear.any() else float("nan"),
        "n_background": int(background.sum()),
        "background_found": float(np.mean(counts[background] >= 1)) if background.any() else float("nan"),
        "background_duplicated": int(np.sum(counts[background] > 1)),
        "n_members": int(members.sum()),
        "members_whole": float(np.mean(counts[members] == 1)),
        "members_shredded": int(np.sum(counts[members] > 1)),
        "member_pieces": int(np.sum(np.maximum(counts[members] - 1, 0))),
        "duplicated_truth": int(np.sum(counts > 1)),
        "n_detections": int(len(owner)),
        "unassigned": int(np.sum(owner < 0)),
    }


def diffuse_light(sim_dir, tile="244.252"):
    """Noise-free image of the simulated intracluster light on a tile (the tile's sky is 0).

    Drawn like the simulator draws it: the truth profile convolved with the
    tile's mean PSF, on the tile's WCS, without pixel convolution.
    """
    import galsim
    from astropy.io import fits

    from shapepipe_modules import cfis
    from shapepipe_modules.simulate import TruePSF, load_truth
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.simulate.scene import truth_galaxy_profile

    path = Path(sim_dir) / "tiles" / cfis.tile_file_name(*cfis.parse_tile_id(tile), kind="image")
    header = fits.getheader(path)
    image = galsim.ImageF(header["NAXIS1"], header["NAXIS2"], wcs=galsim.FitsWCS(header=header))
    truth = load_truth(sim_dir, tile=tile)
    psf = TruePSF(sim_dir).tile_galsim(cfis.tile_id(*cfis.parse_tile_id(tile)))
    for row in truth[np.asarray(truth["cluster_role"]) == ROLE_ICL]:
        profile = galsim.Convolve([truth_galaxy_profile(row), psf])
        profile.drawImage(image=image, center=galsim.PositionD(float(row["x"]), float(row["y"])),
                          method="no_pixel", add_to_image=True)
    return image.array


def local_sky_scores(table, true_sky):
    """How the local sky of each object compares with the true diffuse light at its position.

    Returns
    -------
    dict
        ``n``, ``converged`` (fraction with BKG_METHOD > 0),
        ``within_1_sigma`` (fraction of the converged with
        ``|BKG_LOCAL - true| < BKG_LOCAL_STD``), ``median_offset`` and
        ``median_std``; ``within_1_sigma_icl`` for objects where the true
        diffuse light exceeds the median BKG_LOCAL_STD.
    """
    x = np.clip(np.rint(np.asarray(table["X_IMAGE"], float)).astype(int) - 1, 0, true_sky.shape[1] - 1)
    y = np.clip(np.rint(np.asarray(table["Y_IMAGE"], float)).astype(int) - 1, 0, true_sky.shape[0] - 1)
    truth = true_sky[y, x]
    ok = np.asarray(table["BKG_METHOD"]) > 0
    sky = np.asarray(table["BKG_LOCAL"], float)
    std = np.asarray(table["BKG_LOCAL_STD"], float)
    within = np.abs(sky - truth) < std
    strong = ok & (truth > np.nanmedian(std[ok]))
    return {
        "n": int(len(table)),
        "converged": float(np.mean(ok)),
        "within_1_sigma": float(np.mean(within[ok])),
        "median_offset": float(np.median((sky - truth)[ok])),
        "median_std": float(np.median(std[ok])),
        "n_icl": int(strong.sum()),
        "within_1_sigma_icl": float(np.mean(within[strong])) if strong.any() else float("nan"),
    }


def hsm_shears(image, object_mask, table, psf_image, pixel_scale, stamp_size=41, responsivity=None,
               local_sky=False):
    """PSF-corrected shear estimates of catalogue objects (GalSim HSM REGAUSS) with neighbours masked.

    Each object's stamp ignores the pixels of other objects and saturated
    regions in the object mask; with ``local_sky``, the catalogue's
    BKG_LOCAL (where measured) is subtracted from it first. REGAUSS returns distortions ``e``; the shear
    estimate is ``e / (2 R)`` with the responsivity ``R = 1 - <e^2>/2``
    of the measured sample (unless given).

    Returns
    -------
    dict
        ``ok`` (bool per row), ``g1``, ``g2`` (NaN where HSM failed),
        ``responsivity``.
    """
    import galsim

    n = len(table)
    e1, e2 = np.full(n, np.nan), np.full(n, np.nan)
    half = stamp_size // 2
    psf = galsim.ImageF(np.asarray(psf_image, np.float32), scale=pixel_scale)
    ny, nx = image.shape
    for i, row in enumerate(table):
        ix, iy = int(round(row["X_IMAGE"])) - 1, int(round(row["Y_IMAGE"])) - 1
        if not (half <= ix < nx - half and half <= iy < ny - half):
            continue
        window = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        local = object_mask[window]
        bad = ((local != 0) & (local != row["NUMBER"])).astype(np.int32)
        pixels = np.array(image[window], np.float32)
        if local_sky and np.isfinite(row["BKG_LOCAL"]):
            pixels -= np.float32(row["BKG_LOCAL"])
        stamp = galsim.ImageF(pixels, scale=pixel_scale)
        try:
            result = galsim.hsm.EstimateShear(stamp, psf, badpix=galsim.ImageI(bad, scale=pixel_scale),
                                              shear_est="REGAUSS", strict=True)
        except (galsim.GalSimHSMError, galsim.GalSimError):
            continue
        if result.correction_status == 0 and np.hypot(result.corrected_e1, result.corrected_e2) < 1.5:
            e1[i], e2[i] = result.corrected_e1, result.corrected_e2
    ok = np.isfinite(e1)
    if responsivity is None:
        responsivity = 1.0 - 0.5 * float(np.mean(e1[ok] ** 2 + e2[ok] ** 2)) if ok.any() else 1.0
    return {"ok": ok, "g1": e1 / (2 * responsivity), "g2": e2 / (2 * responsivity), "responsivity": responsivity}


def tangential_profile(g1, g2, dx, dy, true_g_t, edges):
    """Binned tangential shear of measured galaxies against the input.

    Returns
    -------
    rows : list of dict
        Per radial bin (``edges``, same unit as ``dx, dy``): ``r_min, r_max,
        n, g_t`` (mean measured), ``error`` (its standard error), ``g_x``
        (mean cross shear), ``true`` (mean input tangential shear of the
        same galaxies).
    fit : dict
        ``A``, ``A_error``: least-squares amplitude of ``g_t = A * true``
        (error from the scatter of ``g_t - true`` and ``g_x``); ``n``;
        ``cross_mean``, ``cross_error``.
    """
    from shapepipe_modules.simulate.cluster import tangential_shear

    g_t, g_x = tangential_shear(np.asarray(g1), np.asarray(g2), np.asarray(dx), np.asarray(dy))
    r = np.hypot(dx, dy)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (r >= low) & (r < high)
        m = int(inside.sum())
        rows.append({"r_min": float(low), "r_max": float(high), "n": m,
                     "g_t": float(np.mean(g_t[inside])) if m else float("nan"),
                     "error": float(np.std(g_t[inside]) / np.sqrt(m)) if m > 1 else float("nan"),
                     "g_x": float(np.mean(g_x[inside])) if m else float("nan"),
                     "true": float(np.mean(true_g_t[inside])) if m else float("nan")})
    sigma = np.std(np.concatenate([g_t - true_g_t, g_x]))
    amplitude = float(np.sum(g_t * true_g_t) / np.sum(true_g_t**2))
    error = float(sigma / np.sqrt(np.sum(true_g_t**2)))
    return rows, {"A": amplitude, "A_error": error, "n": int(r.size),
                  "cross_mean": float(np.mean(g_x)), "cross_error": float(np.std(g_x) / np.sqrt(r.size))}


def background_shapes(columns, truth, centre_radec, max_sep=1.0, ra_col="XWIN_WORLD", dec_col="YWIN_WORLD"):
    """Metacal branch tables of the background galaxies of a final catalogue, with their input shear.

    Each final-catalogue object is matched to the truth of its tile
    (:func:`shapepipe_modules.validate.shear.match_to_truth`); kept are the
    objects matched to a background galaxy (truth ``cluster_role`` 0, not a
    star): a real survey would select them by colour or photometric
    redshift, here the truth does it, so that the profile tests the shear
    chain and not the background selection.

    Returns
    -------
    dict
        ``tables`` (per branch, as :func:`.shear.branch_tables`), ``dx, dy``
        (arcsec from the cluster centre along the pixel axes, catalogue
        positions), ``g_t_true`` (input tangential shear at the galaxy's true
        position, from its truth ``g1, g2``), ``truth_index`` (row of the
        truth table) and ``truth_id`` (its ``id``, the same galaxy in both runs
        of a pair even when the tile's truth holds other rows; the row when
        the truth has no ``id``).
    """
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, offsets_arcsec, tangential_shear

    from .shear import _subset, branch_tables, match_to_truth

    index, keep, _ = match_to_truth(columns, truth, ra_col, dec_col, max_sep)
    keep &= np.asarray(truth["cluster_role"])[np.maximum(index, 0)] == ROLE_FIELD
    rows = np.flatnonzero(keep)
    tables = _subset(branch_tables(columns), rows)
    ra_c, dec_c = centre_radec
    dx, dy = offsets_arcsec(np.asarray(columns[ra_col], float)[rows], np.asarray(columns[dec_col], float)[rows],
                            ra_c, dec_c)
    t = truth[index[rows]]
    tdx, tdy = offsets_arcsec(np.asarray(t["ra"], float), np.asarray(t["dec"], float), ra_c, dec_c)
    g_t_true, _ = tangential_shear(np.asarray(t["g1"], float), np.asarray(t["g2"], float), tdx, tdy)
    truth_id = np.asarray(truth["id"])[index[rows]] if "id" in truth.colnames else index[rows]
    return {"tables": tables, "dx": dx, "dy": dy, "g_t_true": g_t_true, "truth_index": index[rows],
            "truth_id": truth_id}


def _galaxy_responses(tables, step):
    """Per-object 2x2 shear response ``R[k, i, j] = d g_i / d g_j`` from the sheared branches (NaN if not finite)."""
    responses = np.empty((len(tables["noshear"]["g1"]), 2, 2))
    for j, (plus, minus) in enumerate((("1p", "1m"), ("2p", "2m"))):
        for i, key in enumerate(("g1", "g2")):
            responses[:, i, j] = (np.asarray(tables[plus][key], float)
                                  - np.asarray(tables[minus][key], float)) / (2.0 * step)
    return responses


def _metacal_profile(tables, dx, dy, g_t_true, edges, select, step, sign, bin_response=False):
    """Binned tangential shear of metacal shapes calibrated by the sample's response (one estimate)."""
    from shapepipe_modules.ngmix.response import shear_response
    from shapepipe_modules.simulate.cluster import tangential_shear

    response = shear_response(tables, step=step, select=select)
    total = response["R"] + response["R_sel"]
    selected = np.asarray(select(tables["noshear"]), bool)
    r = np.hypot(dx[selected], dy[selected])
    which = np.digitize(r, edges) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    n_bins = len(edges) - 1

    def binned(values, rows=None):
        rows = inside if rows is None else inside & rows
        sums = np.bincount(which[rows], weights=values[rows], minlength=n_bins)
        counts = np.bincount(which[rows], minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts, counts

    if bin_response:
        # The shear response of each bin in the tangential frame of its galaxies (blending with objects
        # arranged around the centre can make it anisotropic), plus the isotropic part of the sample's
        # selection response (too noisy per bin).
        e_t, e_x = tangential_shear(tables["noshear"]["g1"][selected], tables["noshear"]["g2"][selected],
                                    dx[selected], dy[selected])
        phi = np.arctan2(dy[selected], dx[selected])
        c, s = np.cos(2.0 * phi), np.sin(2.0 * phi)
        per = _galaxy_responses(tables, step)[selected]
        mixed = per[:, 0, 1] + per[:, 1, 0]
        r_tt = c * c * per[:, 0, 0] + c * s * mixed + s * s * per[:, 1, 1]
        r_xx = s * s * per[:, 0, 0] - c * s * mixed + c * c * per[:, 1, 1]
        finite = np.isfinite(r_tt) & np.isfinite(r_xx)
        sel_iso = 0.5 * np.trace(response["R_sel"])
        bin_tt = binned(np.where(finite, r_tt, 0.0), finite)[0] + sel_iso
        bin_xx = binned(np.where(finite, r_xx, 0.0), finite)[0] + sel_iso
        index = np.clip(which, 0, n_bins - 1)
        g_t, g_x = e_t / bin_tt[index], e_x / bin_xx[index]
        response_t, response_x = bin_tt, bin_xx
    else:
        response_t = response_x = np.full(n_bins, 0.5 * np.trace(total))
        g = np.linalg.solve(total, np.stack([tables["noshear"]["g1"][selected], tables["noshear"]["g2"][selected]]))
        g_t, g_x = tangential_shear(g[0], g[1], dx[selected], dy[selected])
    g_t, g_x = g_t * sign[selected], g_x * sign[selected]
    true = g_t_true[selected] * sign[selected]
    mean_t, counts = binned(g_t)
    mean_x, _ = binned(g_x)
    mean_true, _ = binned(true)
    use = inside
    amplitude = float(np.sum(g_t[use] * true[use]) / np.sum(true[use] ** 2))
    return {"g_t": mean_t, "g_x": mean_x, "true": mean_true, "n": counts, "A": amplitude,
            "cross": float(np.mean(g_x[use])), "R": total, "R_t": response_t, "R_x": response_x}


def metacal_tangential_profile(tables, dx, dy, g_t_true, edges, select=None, group=None, n_boot=200, rng=None,
                               step=0.01, sign=None, unit=None, bin_response=False):
    """Tangential shear profile of metacal shapes against the input, with bootstrap errors.

    The shapes are calibrated by the 2x2 response ``R + R_sel`` of the whole
    selected sample (:func:`shapepipe_modules.ngmix.response.shear_response`;
    the response is isotropic, so one matrix serves every position angle),
    projected on the direction to the centre and averaged in radial bins
    (``edges``, the unit of ``dx, dy``). ``A`` is the least-squares
    amplitude of ``g_t = A x input`` over the galaxies in the bins (1 when
    the input is recovered). Errors: half the central 68 % interval of each
    number over ``n_boot`` bootstrap draws of the galaxies (within each ``group``,
    e.g. the simulation seed), the response and the selection redone for
    every draw.

    ``bin_response=True`` calibrates each bin by its own shear response
    instead, taken in the tangential frame of its galaxies: ``g_t = <e_t> /
    (<R_tt> + R_sel)``, ``g_x = <e_x> / (<R_xx> + R_sel)``, with ``R_tt, R_xx``
    each galaxy's response matrix rotated to the direction of the centre and
    ``R_sel`` the isotropic part of the whole sample's selection response
    (per bin it is mostly noise). Where the galaxies blend with objects
    arranged around the centre, the response to the tangential shear can
    differ from the sample's mean one.

    Paired simulations (the same galaxies sheared by the input and by its
    opposite, ``nfw_sign = -1``): pass the galaxies of both with ``sign``
    +1 / -1 (their ``g_t_true`` as measured: opposite) and ``unit`` the same
    for the two measurements of one galaxy. The measured shears are
    multiplied by ``sign``, so each bin holds ``(g_t(+) - g_t(-)) / 2``
    where both were selected, in which the galaxy's own shape cancels; the
    bootstrap draws units (both measurements together) and the profile is
    compared with the input of the ``+`` member.

    Returns
    -------
    dict
        ``r_min, r_max, n, g_t, g_t_error, g_x, g_x_error, true`` (arrays per
        bin), ``A``, ``A_error``, ``cross``, ``cross_error``, ``R`` (the sample's ``R + R_sel``),
        ``R_t, R_x`` (per bin: its ``R_tt + R_sel``, ``R_xx + R_sel`` with ``bin_response``, else
        the isotropic part of ``R``), ``n_total``.
    """
    from .shear import STEP, Selection, _subset

    select = select or Selection()
    step = step or STEP
    rng = rng if rng is not None else np.random.default_rng(0)
    edges = np.asarray(edges, float)
    dx, dy, g_t_true = (np.asarray(v, float) for v in (dx, dy, g_t_true))
    group = np.zeros(dx.size, int) if group is None else np.asarray(group)
    sign = np.ones(dx.size) if sign is None else np.asarray(sign, float)
    unit = np.arange(dx.size) if unit is None else np.asarray(unit)
    best = _metacal_profile(tables, dx, dy, g_t_true, edges, select, step, sign, bin_response)
    draws = {"g_t": [], "g_x": [], "A": [], "cross": []}
    # Rows of each unit, and the units of each group.
    _, unit_index = np.unique(np.column_stack([group, unit]), axis=0, return_inverse=True)
    unit_index = unit_index.ravel()
    order = np.argsort(unit_index, kind="stable")
    starts = np.searchsorted(unit_index[order], np.arange(unit_index.max() + 2))
    rows_of = [order[starts[k]:starts[k + 1]] for k in range(unit_index.max() + 1)]
    unit_group = np.array([group[r[0]] for r in rows_of])
    groups = [np.flatnonzero(unit_group == g) for g in np.unique(unit_group)]
    for _ in range(n_boot):
        drawn = np.concatenate([rng.choice(units, units.size) for units in groups])
        rows = np.concatenate([rows_of[k] for k in drawn])
        try:
            draw = _metacal_profile(_subset(tables, rows), dx[rows], dy[rows], g_t_true[rows], edges, select, step,
                                    sign[rows], bin_response)
        except (ValueError, np.linalg.LinAlgError):
            continue
        for key in draws:
            draws[key].append(draw[key])
    # Half the central 68 % interval: robust to the few draws whose response matrix is nearly singular
    # (small samples), which would dominate a standard deviation.
    spread = {key: 0.5 * np.diff(np.nanpercentile(np.array(values), [15.87, 84.13], axis=0), axis=0)[0]
              for key, values in draws.items()}
    return {"r_min": edges[:-1], "r_max": edges[1:], "n": best["n"], "g_t": best["g_t"], "g_t_error": spread["g_t"],
            "g_x": best["g_x"], "g_x_error": spread["g_x"], "true": best["true"], "A": best["A"],
            "A_error": float(spread["A"]), "cross": best["cross"], "cross_error": float(spread["cross"]),
            "R": best["R"], "R_t": best["R_t"], "R_x": best["R_x"], "n_total": int(best["n"].sum())}


def selected_in_both(selected, sign, unit, group=None):
    """Rows of paired measurements whose galaxy is selected in both the ``+`` and the ``-`` run.

    In a paired profile (:func:`metacal_tangential_profile` with ``sign``)
    such a galaxy's own shape cancels; a galaxy selected in one run only
    (detected, matched or passing the cuts under one sign of the shear)
    brings its whole intrinsic shape, and with it any selection that
    depends on the shear which metacal's ``R_sel`` does not see (detection,
    blending). Splitting a bin's sample by this mask tells the two apart.

    Parameters
    ----------
    selected : numpy.ndarray
        Boolean per row: the measurement passes the selection.
    sign : numpy.ndarray
        +1 / -1 per row: the run of the pair it comes from.
    unit, group : numpy.ndarray
        The galaxy (truth id) and its simulation (seed) per row.

    Returns
    -------
    numpy.ndarray
        Boolean per row: selected, and its galaxy selected in the other run too.
    """
    selected = np.asarray(selected, bool)
    sign = np.asarray(sign)
    group = np.zeros(sign.size, int) if group is None else np.asarray(group)
    _, galaxy = np.unique(np.column_stack([group, np.asarray(unit)]), axis=0, return_inverse=True)
    galaxy = galaxy.ravel()
    n = galaxy.max() + 1 if galaxy.size else 0
    in_plus = np.bincount(galaxy[selected & (sign > 0)], minlength=n) > 0
    in_minus = np.bincount(galaxy[selected & (sign < 0)], minlength=n) > 0
    return selected & in_plus[galaxy] & in_minus[galaxy]
