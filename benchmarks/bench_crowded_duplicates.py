"""What the dual pass's cross-pass duplicates are, and which join rules remove them (prints tables; docs/crowded.md).

Usage: ``python benchmarks/bench_crowded_duplicates.py [--seeds 1-20] [--held-out 21-30] [--workdir DIR]
[--neighbour-radius 6] [--no-light] [--tables 1,2,3,4,5] [--light-rules] [--merge-rules 0,4,7] [--ring 6,9,2]``

For each seed the ``cluster_knotty`` preset (``--preset``) is simulated (or reused from the work
folder, e.g. ``bench_crowded.py``'s) and its tile extracted by the HOT and the
COLD pass of ``bench_crowded.py``, each alone (reused when present); the two
catalogues are joined here as the sextractor module joins them
(``passes.join_passes``, ``PASS_NEIGHBOUR_RADIUS`` of example/crowded or
``--neighbour-radius``). Printed:

1. every truth object detected by both passes (``validate.crowded``: a
   detection belongs to the nearest truth object in units of ``hlr + 0.3
   arcsec``, within 2): each of its detections with its pass, offset,
   FLUX_AUTO, FLUX_RADIUS, and whose noise-free light fills its FLUX_RADIUS
   circle (``crowded.truth_light_in_circles``: the object with most light
   there, its share of that light and the fraction of its own flux);
2. the members counted by light (``crowded.light_owners``: a detection
   holds an object's light when that object has half the truth light in
   its FLUX_RADIUS circle, making a quarter of its FLUX_AUTO, and no other
   object as much) beside the matcher's counts: detected exactly once, none,
   more than once, pieces, in both passes; and the stars whose light both
   passes detect (pieces of bright stars' halos and spikes);
3. join rules tried on the same catalogues (an offline variant of the join:
   the fragment distance in units of the earlier object's FLUX_RADIUS, a
   minimum join ellipse of ``m x FLUX_RADIUS``, a minimum flux ratio of a
   neighbour to the earlier object, the neighbour radius), with the
   background completeness within 30 arcsec, the members detected exactly
   once, the member pieces and the cross-pass duplicates, per seed set;
4. (``--tables 4``) within-pass merges: pairs of COLD detections closer than
   ``--merge-distance`` pixels merged before the join when the lowest value of
   the COLD detection image (rebuilt here: 24-pixel sep background, 3x3
   filter) on the segment joining their peaks is at least a fraction of the
   fainter peak (``saddle``), or the dip below the fainter peak is less than
   a number of sigma of the filtered image (``dip``), or their distance is
   below a fraction of the sum of their FLUX_RADIUS (``radius``); the merged
   object keeps the brightest piece's row, FLUX_AUTO summed, position
   flux-weighted. Counted: the truth objects with two or more detections all
   from the COLD pass (``split``), and the truth objects whose every COLD
   detection the merge gave to another (``lost``: close pairs merged);
   ``--light-rules`` adds both counted by light and the members detected once
   by light;
5. (``--tables 5``) resolved COLD objects inside HOT ellipses: the sizes of
   the objects the join drops (beyond the FLUX_RADIUS of every HOT object
   containing them), on the ring-median residual (Secker 1995: each pixel
   minus the median of an annulus around it, ``--ring`` inner, outer radius
   and the Gaussian window of the second moment, pixels) and as R_WIN =
   sqrt(X2WIN_IMAGE + Y2WIN_IMAGE), over the star locus (median of the COLD
   detections of 18-22 mag truth stars), by the truth object the matcher gives
   them; then the join with those above a size accepted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crowded import COLD, HOT, MERGE_RADIUS, NEIGHBOUR_RADIUS, RADIUS_ARCSEC, _run, _seeds  # noqa: E402

# (label, neighbour radius, fragment distance in earlier FLUX_RADIUS, minimum ellipse in earlier FLUX_RADIUS,
# minimum flux ratio of a neighbour to the earlier object)
RULES = (("ellipse rule alone", 0.0, 1.0, 0.0, 0.0),
         ("neighbours >= 6 px (no merge)", NEIGHBOUR_RADIUS, 1.0, 0.0, 0.0),
         ("fragment within 1.5 FLUX_RADIUS", NEIGHBOUR_RADIUS, 1.5, 0.0, 0.0),
         ("fragment within 2 FLUX_RADIUS", NEIGHBOUR_RADIUS, 2.0, 0.0, 0.0),
         ("fragment within 2.5 FLUX_RADIUS", NEIGHBOUR_RADIUS, 2.5, 0.0, 0.0),
         ("ellipse >= 3 FLUX_RADIUS", NEIGHBOUR_RADIUS, 1.0, 3.0, 0.0),
         ("ellipse alone, >= 3 FLUX_RADIUS", 0.0, 1.0, 3.0, 0.0),
         ("fragment 2.5 FR + ellipse >= 3 FR", NEIGHBOUR_RADIUS, 2.5, 3.0, 0.0),
         ("neighbour flux >= 0.04 earlier", NEIGHBOUR_RADIUS, 1.0, 0.0, 0.04),
         ("neighbour flux >= 0.06 earlier", NEIGHBOUR_RADIUS, 1.0, 0.0, 0.06),
         ("neighbours >= 7 px", 7.0, 1.0, 0.0, 0.0))


def variant_join(hot, cold, neighbour_radius, core_scale=1.0, min_ellipse=0.0, min_flux_ratio=0.0, accept=None):
    """The two-pass join with the rules tried (with 1, 0, 0 it is ``passes.join_passes``); ``accept``: COLD rows
    kept even inside HOT ellipses (table 5)."""
    from astropy.table import vstack
    from scipy.spatial import cKDTree

    from shapepipe_modules.sextractor.passes import ellipse_axes, inside_ellipses

    hx, hy = np.asarray(hot["X_IMAGE"], float), np.asarray(hot["Y_IMAGE"], float)
    a, b, theta = ellipse_axes(hot, 1.0)
    h_radius, h_flux = np.asarray(hot["FLUX_RADIUS"], float), np.asarray(hot["FLUX_AUTO"], float)
    if min_ellipse > 0:
        a, b = np.maximum(a, min_ellipse * h_radius), np.maximum(b, min_ellipse * h_radius)
    x, y = np.asarray(cold["X_IMAGE"], float), np.asarray(cold["Y_IMAGE"], float)
    radius, flux = np.asarray(cold["FLUX_RADIUS"], float), np.asarray(cold["FLUX_AUTO"], float)
    keep = np.ones(len(cold), bool)
    for i, near in enumerate(cKDTree(np.column_stack([hx, hy])).query_ball_point(np.column_stack([x, y]),
                                                                                   r=float(a.max()))):
        near = np.asarray(near, int)
        near = near[inside_ellipses(x[i], y[i], hx[near], hy[near], a[near], b[near], theta[near])]
        if not near.size:
            continue
        distance = np.hypot(hx[near] - x[i], hy[near] - y[i])
        keep[i] = (neighbour_radius > 0 and radius[i] >= neighbour_radius
                   and bool(np.all(distance > core_scale * h_radius[near]))
                   and bool(np.all(flux[i] >= min_flux_ratio * h_flux[near])))
        if accept is not None and accept[i]:
            keep[i] = True
    first, second = hot.copy(), cold[keep]
    first["PASS"], second["PASS"] = np.ones(len(first), np.int16), np.full(len(second), 2, np.int16)
    return vstack([first, second], metadata_conflicts="silent")


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Within-pass merges (faint galaxies split by the COLD pass) and resolved objects inside HOT ellipses.

def detection_image(sim, back_size=24, back_filtersize=3, conv="default.conv"):
    """The COLD pass's detection image, rebuilt here: the tile minus a sep background on ``back_size`` meshes,
    convolved with the normalised 3x3 ``default.conv``; with the noise of that filtered image (pixel rms map times
    the kernel's noise gain) and the background-subtracted image itself."""
    import sep
    from astropy.io import fits
    from scipy import ndimage

    from shapepipe_modules.sextractor.runner import DATA_DIR

    image = fits.getdata(sim / "tiles" / "CFIS.244.252.r.fits").astype(np.float32)
    weight = fits.getdata(sim / "weight.fits").astype(np.float32)
    bad = ~(weight > 0)
    mesh = sep.Background(image, mask=bad, bw=back_size, bh=back_size, fw=back_filtersize, fh=back_filtersize)
    sub = np.where(bad, 0.0, image - mesh.back()).astype(np.float64)
    kernel = np.loadtxt(DATA_DIR / conv, comments="#", skiprows=1)
    kernel = kernel / kernel.sum()
    filtered = ndimage.convolve(sub, kernel, mode="constant")
    noise = mesh.rms() * np.sqrt(np.sum(kernel**2))
    return filtered, noise, sub


def _peak(filtered, x, y, radius=1.5):
    """Highest filtered pixel within ``radius`` of each 1-based centre, and its 0-based position."""
    ny, nx = filtered.shape
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if dx * dx + dy * dy <= radius * radius]
    ix, iy = np.rint(np.asarray(x) - 1).astype(int), np.rint(np.asarray(y) - 1).astype(int)
    best = np.full(len(ix), -np.inf)
    px, py = ix.astype(float), iy.astype(float)
    for dy, dx in offsets:
        jx, jy = np.clip(ix + dx, 0, nx - 1), np.clip(iy + dy, 0, ny - 1)
        value = filtered[jy, jx]
        better = value > best
        best[better], px[better], py[better] = value[better], jx[better], jy[better]
    return best, px, py


def pair_saddles(table, filtered, max_distance):
    """Pairs of detections closer than ``max_distance`` pixels, with the lowest filtered value on the segment
    joining their peaks (bilinear) and both peaks."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    x, y = np.asarray(table["X_IMAGE"], float), np.asarray(table["Y_IMAGE"], float)
    pairs = np.array(sorted(cKDTree(np.column_stack([x, y])).query_pairs(max_distance)), int).reshape(-1, 2)
    peak, px, py = _peak(filtered, x, y)
    if not len(pairs):
        return pairs, np.empty(0), peak
    t = np.linspace(0.0, 1.0, 4 * int(np.ceil(max_distance)) + 1)
    i, j = pairs[:, 0], pairs[:, 1]
    sx = px[i, None] + (px[j] - px[i])[:, None] * t
    sy = py[i, None] + (py[j] - py[i])[:, None] * t
    samples = ndimage.map_coordinates(filtered, [sy.ravel(), sx.ravel()], order=1, mode="nearest")
    return pairs, samples.reshape(sx.shape).min(axis=1), peak


def merge_groups(n, pairs, merge):
    """Connected groups of the pairs to merge (union-find): a group label per row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    chosen = pairs[merge]
    graph = coo_matrix((np.ones(len(chosen)), (chosen[:, 0], chosen[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def merged_catalogue(table, labels, combine=True):
    """One row per group: the brightest piece's row, FLUX_AUTO summed, X/Y_IMAGE flux-weighted (``combine``; else
    the brightest piece's row unchanged)."""
    flux = np.asarray(table["FLUX_AUTO"], float)
    weight = np.maximum(flux, 1e-3)
    order = np.lexsort((-flux, labels))
    first = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    out = table[first]
    if not combine:
        return out
    group = labels[first]
    total_w = np.bincount(labels, weight)
    out["X_IMAGE"] = np.bincount(labels, weight * np.asarray(table["X_IMAGE"], float))[group] / total_w[group]
    out["Y_IMAGE"] = np.bincount(labels, weight * np.asarray(table["Y_IMAGE"], float))[group] / total_w[group]
    out["FLUX_AUTO"] = np.bincount(labels, flux)[group]
    return out


def merge_rule(table, filtered, noise, kind, value, max_distance=8.0):
    """The COLD catalogue after merging the pairs a rule calls one object.

    ``saddle``: saddle / fainter peak >= value; ``dip``: (fainter peak - saddle) / noise of the filtered image at
    the saddle < value; ``radius``: centre distance < value x (FLUX_RADIUS_1 + FLUX_RADIUS_2); ``pixels``: centre
    distance < value pixels; ``pixels+dip``: both, value = (pixels, sigma); ``drop``: as ``pixels``, the brightest
    piece's row kept unchanged (the sextractor module's ``PASS_MERGE_RADIUS``, checked here).
    """
    if kind == "none":
        return table
    pairs, saddle, peak = pair_saddles(table, filtered, max_distance)
    if not len(pairs):
        return table
    i, j = pairs[:, 0], pairs[:, 1]
    fainter = np.minimum(peak[i], peak[j])
    if kind == "saddle":
        merge = saddle >= value * fainter
    elif kind == "dip":
        xm = np.clip(np.rint((table["X_IMAGE"][i] + table["X_IMAGE"][j]) / 2 - 1).astype(int), 0, noise.shape[1] - 1)
        ym = np.clip(np.rint((table["Y_IMAGE"][i] + table["Y_IMAGE"][j]) / 2 - 1).astype(int), 0, noise.shape[0] - 1)
        merge = (fainter - saddle) < value * noise[ym, xm]
    elif kind in ("pixels", "pixels+dip", "drop"):
        distance = np.hypot(table["X_IMAGE"][i] - table["X_IMAGE"][j], table["Y_IMAGE"][i] - table["Y_IMAGE"][j])
        if kind == "drop":
            # The module's PASS_MERGE_RADIUS (the same groups, the brightest row kept unchanged).
            from shapepipe_modules.sextractor.passes import merge_close_pieces

            kept = merged_catalogue(table, merge_groups(len(table), pairs, distance < value), combine=False)
            module = table[merge_close_pieces(table, value)]
            assert sorted(np.asarray(module["X_IMAGE"])) == sorted(np.asarray(kept["X_IMAGE"]))
            return module
        if kind == "pixels":
            merge = distance < value
        else:
            xm = np.clip(np.rint((table["X_IMAGE"][i] + table["X_IMAGE"][j]) / 2 - 1).astype(int), 0,
                         noise.shape[1] - 1)
            ym = np.clip(np.rint((table["Y_IMAGE"][i] + table["Y_IMAGE"][j]) / 2 - 1).astype(int), 0,
                         noise.shape[0] - 1)
            merge = (distance < value[0]) & ((fainter - saddle) < value[1] * noise[ym, xm])
    elif kind == "radius":
        radius = np.asarray(table["FLUX_RADIUS"], float)
        distance = np.hypot(table["X_IMAGE"][i] - table["X_IMAGE"][j], table["Y_IMAGE"][i] - table["Y_IMAGE"][j])
        merge = distance < value * (radius[i] + radius[j])
    else:
        raise ValueError(kind)
    return merged_catalogue(table, merge_groups(len(table), pairs, merge))


def ring_residual_sizes(sub, x, y, inner=8.0, outer=11.0, half=5, window=2.0):
    """Windowed size of each object on the ring-median residual (Secker 1995).

    Each pixel of a ``2 half + 1`` stamp around the object loses the median of the background-subtracted image
    in an annulus ``inner <= r <= outer`` pixels around that pixel (the smooth light of a host); on the residual,
    ``T = sum(w I r^2) / sum(w I)`` with a round Gaussian window of ``window`` pixels about the catalogue centre,
    and the flux within 3 pixels. Point sources give the PSF's T; resolved galaxies more.
    """
    ny, nx = sub.shape
    pad = int(np.ceil(outer)) + half + 1
    padded = np.pad(sub, pad, mode="reflect")
    oy, ox = np.mgrid[-int(outer):int(outer) + 1, -int(outer):int(outer) + 1]
    ring = (np.hypot(ox, oy) >= inner) & (np.hypot(ox, oy) <= outer)
    oy, ox = oy[ring], ox[ring]
    sy, sx = np.mgrid[-half:half + 1, -half:half + 1]
    sy, sx = sy.ravel(), sx.ravel()
    x0, y0 = np.asarray(x, float) - 1, np.asarray(y, float) - 1
    ix, iy = np.rint(x0).astype(int), np.rint(y0).astype(int)
    sizes, fluxes = np.full(len(ix), np.nan), np.full(len(ix), np.nan)
    for start in range(0, len(ix), 200):
        b = slice(start, start + 200)
        py = iy[b, None] + sy[None, :] + pad
        px = ix[b, None] + sx[None, :] + pad
        stamp = padded[py, px]
        median = np.median(padded[py[..., None] + oy, px[..., None] + ox], axis=-1)
        residual = stamp - median
        r2 = (iy[b, None] + sy - y0[b, None]) ** 2 + (ix[b, None] + sx - x0[b, None]) ** 2
        w = np.exp(-r2 / (2 * window**2))
        norm = np.sum(w * residual, axis=1)
        sizes[b] = np.sum(w * residual * r2, axis=1) / np.where(norm > 0, norm, np.nan)
        fluxes[b] = np.sum(residual * (r2 <= 9), axis=1)
    return sizes, fluxes


# (label, kind, value) of the within-pass merges tried on the COLD catalogue before the join (table 4).
MERGE_RULES = (("no merge (PASS_MERGE_RADIUS 0)", "none", 0.0),
               ("saddle >= 0.5 fainter peak", "saddle", 0.5),
               ("saddle >= 0.6 fainter peak", "saddle", 0.6),
               ("saddle >= 0.7 fainter peak", "saddle", 0.7),
               ("saddle >= 0.8 fainter peak", "saddle", 0.8),
               ("saddle >= 0.9 fainter peak", "saddle", 0.9),
               ("dip < 0.5 sigma", "dip", 0.5),
               ("dip < 1 sigma", "dip", 1.0),
               ("dip < 1.5 sigma", "dip", 1.5),
               ("dip < 2 sigma", "dip", 2.0),
               ("dip < 3 sigma", "dip", 3.0),
               ("distance < 0.5 (FR1 + FR2)", "radius", 0.5),
               ("distance < 0.75 (FR1 + FR2)", "radius", 0.75),
               ("distance < 4 px", "pixels", 4.0),
               ("distance < 4.5 px", "pixels", 4.5),
               ("distance < 4.5 px and dip < 1.5 sigma", "pixels+dip", (4.5, 1.5)),
               ("drop fainter within 4.5 px", "drop", 4.5),
               ("drop fainter within 4 px", "drop", 4.0),
               ("drop fainter within 5 px", "drop", 5.0))


def rule_scores(joined, truth, centre, scale, cold_before=None, cold_after=None):
    """Matcher counts of one joined catalogue (and, given the COLD catalogue before and after a merge, the truth
    objects the merge took the last COLD detection from)."""
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, ROLE_ICL
    from shapepipe_modules.validate import crowded

    s = crowded.cluster_scores(joined["X_IMAGE"], joined["Y_IMAGE"], truth, centre, scale, RADIUS_ARCSEC,
                               passes=joined["PASS"])
    objects = truth[truth["cluster_role"] != ROLE_ICL]
    owner = crowded.assign_detections(joined["X_IMAGE"], joined["Y_IMAGE"], objects, scale)
    pas = np.asarray(joined["PASS"])
    counts = crowded.detections_per_truth(owner, len(objects))
    cold_counts = crowded.detections_per_truth(owner[pas == 2], len(objects))
    out = {"found": s["background_found"] * s["n_background"], "n_background": s["n_background"],
           "whole": s["members_whole"] * s["n_members"], "n_members": s["n_members"], "pieces": s["member_pieces"],
           "dup": s["duplicated_across_passes"], "split": int(np.sum((cold_counts > 1) & (counts == cold_counts))),
           "multi": s["duplicated_truth"], "lost": 0, "lost_galaxies": 0}
    if cold_before is not None:
        before = crowded.detections_per_truth(
            crowded.assign_detections(cold_before["X_IMAGE"], cold_before["Y_IMAGE"], objects, scale), len(objects))
        after = crowded.detections_per_truth(
            crowded.assign_detections(cold_after["X_IMAGE"], cold_after["Y_IMAGE"], objects, scale), len(objects))
        lost = (before > 0) & (after == 0)
        out["lost"] = int(lost.sum())
        out["lost_galaxies"] = int(np.sum(lost & (np.asarray(objects["cluster_role"]) == ROLE_FIELD)
                                          & ~np.asarray(objects["is_star"], bool)))
    return out


# (label, size measure, minimum size over the star locus) of the resolved COLD objects accepted inside HOT ellipses.
RESOLVED_RULES = (("none (neighbours >= 6 px, no merge)", None, 0.0),
                  ("ring T >= 1.1 locus", "ring", 1.1),
                  ("ring T >= 1.2 locus", "ring", 1.2),
                  ("ring T >= 1.3 locus", "ring", 1.3),
                  ("ring T >= 1.5 locus", "ring", 1.5),
                  ("R_WIN >= 1.2 locus", "rwin", 1.2),
                  ("R_WIN >= 1.4 locus", "rwin", 1.4),
                  ("R_WIN >= 1.7 locus", "rwin", 1.7))


def resolved_rows(data, seed_sets, scale, print_rules, args):
    """Table 5: sizes of the COLD objects the join drops inside HOT ellipses, and rules accepting resolved ones."""
    from shapepipe_modules.sextractor.passes import ellipse_axes, inside_ellipses, join_passes
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate import crowded

    measures = {}
    for seeds in seed_sets:
        for seed in seeds:
            sim, hot, cold, truth, centre = data[seed]
            _, _, sub = detection_image(sim)
            x, y = np.asarray(cold["X_IMAGE"], float), np.asarray(cold["Y_IMAGE"], float)
            inner, outer, window = (float(v) for v in args.ring.split(","))
            ring, _ = ring_residual_sizes(sub, x, y, inner, outer, window=window)
            rwin = np.sqrt(np.asarray(cold["X2WIN_IMAGE"], float) + np.asarray(cold["Y2WIN_IMAGE"], float))
            a, b, theta = ellipse_axes(hot, 1.0)
            hx, hy = np.asarray(hot["X_IMAGE"], float), np.asarray(hot["Y_IMAGE"], float)
            h_radius = np.asarray(hot["FLUX_RADIUS"], float)
            offcore = np.ones(len(cold), bool)
            for i in range(len(cold)):
                near = inside_ellipses(x[i], y[i], hx, hy, a, b, theta)
                offcore[i] = bool(np.all(np.hypot(hx[near] - x[i], hy[near] - y[i]) > h_radius[near]))
            joined = join_passes([hot, cold], 1.0, NEIGHBOUR_RADIUS)
            kept = set(zip(np.asarray(joined["X_IMAGE"], float)[joined["PASS"] == 2],
                           np.asarray(joined["Y_IMAGE"], float)[joined["PASS"] == 2]))
            dropped = np.array([(x[i], y[i]) not in kept for i in range(len(cold))])
            objects = truth[truth["cluster_role"] != ROLE_ICL]
            owner = crowded.assign_detections(x, y, objects, scale)
            star = np.asarray(objects["is_star"], bool)
            mag = np.asarray(objects["mag"], float)
            is_star = (owner >= 0) & star[np.maximum(owner, 0)] & (mag[np.maximum(owner, 0)] > 18) & \
                (mag[np.maximum(owner, 0)] < 22)
            snr = np.asarray(cold["SNR_WIN"], float)
            locus = {"ring": np.nanmedian(ring[is_star]), "rwin": np.nanmedian(rwin[is_star])}
            role = np.asarray(objects["cluster_role"])
            kind = np.where(owner < 0, "none", np.where(star[np.maximum(owner, 0)], "star",
                            np.where(role[np.maximum(owner, 0)] == ROLE_MEMBER, "member",
                                     np.where(role[np.maximum(owner, 0)] == ROLE_FIELD, "galaxy", "other"))))
            measures[seed] = {"ring": ring / locus["ring"], "rwin": rwin / locus["rwin"], "dropped": dropped & offcore,
                              "kind": kind, "locus": locus, "n_star": int(is_star.sum()), "snr": snr}
    print("\n5a. COLD objects the join drops (inside HOT ellipses), by the truth object the matcher gives them: size "
          "over the star locus (median of COLD detections of 18-22 mag truth stars, per seed), 10/50/90 %; "
          "only those beyond the FLUX_RADIUS of every HOT object containing them (not a HOT core found again)")
    for seeds in seed_sets:
        loci = np.array([[measures[s]["locus"]["ring"], measures[s]["locus"]["rwin"]] for s in seeds])
        print(f"  seeds {seeds[0]}-{seeds[-1]}: locus ring T {np.min(loci[:, 0]):.2f}-{np.max(loci[:, 0]):.2f} px^2, "
              f"R_WIN {np.min(loci[:, 1]):.2f}-{np.max(loci[:, 1]):.2f} px "
              f"({min(measures[s]['n_star'] for s in seeds)}-{max(measures[s]['n_star'] for s in seeds)} stars)")
        for k in ("galaxy", "member", "none", "star", "other"):
            pick = [(measures[s][m][measures[s]["dropped"] & (measures[s]["kind"] == k)]) for s in seeds
                    for m in ("ring",)]
            ring = np.concatenate(pick)
            rw = np.concatenate([measures[s]["rwin"][measures[s]["dropped"] & (measures[s]["kind"] == k)]
                                 for s in seeds])
            if not ring.size:
                continue
            pr = np.nanpercentile(ring, [10, 50, 90])
            pw = np.nanpercentile(rw, [10, 50, 90])
            print(f"    {k:7s} {ring.size:5d}  ring T {pr[0]:5.2f} {pr[1]:5.2f} {pr[2]:5.2f}  "
                  f"R_WIN {pw[0]:5.2f} {pw[1]:5.2f} {pw[2]:5.2f}")

    def evaluate(seed, row):
        _, hot, cold, truth, centre = data[seed]
        m = measures[seed]
        accept = None if row[1] is None else m["dropped"] & (np.nan_to_num(m[row[1]]) >= row[2])
        joined = variant_join(hot, cold, NEIGHBOUR_RADIUS, accept=accept)
        return joined, rule_scores(joined, truth, centre, scale)

    print_rules("\n5b. Resolved COLD objects accepted inside HOT ellipses", RESOLVED_RULES, evaluate)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--preset", default="cluster_knotty", help="cluster_knotty (members with knots), or cluster")
    parser.add_argument("--workdir", default=None, help="simulations and pass catalogues are kept and reused here")
    parser.add_argument("--held-out", default="", help="second seed set, scored separately in table 3 (e.g. 21-30)")
    parser.add_argument("--no-light", action="store_true", help="skip the noise-free light (tables 1-2)")
    parser.add_argument("--neighbour-radius", type=float, default=NEIGHBOUR_RADIUS,
                        help="PASS_NEIGHBOUR_RADIUS of the join of tables 1-2 (0: the ellipse rule alone)")
    parser.add_argument("--merge-radius", type=float, default=0.0,
                        help=f"PASS_MERGE_RADIUS of the join of tables 1-2 (example/crowded: {MERGE_RADIUS:g})")
    parser.add_argument("--tables", default="1,2,3", help="tables to print (4: within-pass merges of the COLD "
                        "catalogue; 5: resolved COLD objects accepted inside HOT ellipses)")
    parser.add_argument("--light-rules", action="store_true",
                        help="tables 4-5 also count the members detected once by light (slower)")
    parser.add_argument("--ring", default="6,9,2", help="table 5: ring-median annulus inner, outer radius and "
                        "the Gaussian window of the size, pixels")
    parser.add_argument("--merge-rules", default="", help="table 4: the rules to run, 0-based indices of "
                        "MERGE_RULES (default all)")
    parser.add_argument("--saddle-filter", default="default.conv", help="table 4: the filter of the image the "
                        "saddle is measured on (a .conv of the module's data; default: the COLD pass's)")
    parser.add_argument("--merge-distance", type=float, default=8.0, help="largest pair distance of table 4 (pixels)")
    args = parser.parse_args(argv)
    tables = {int(t) for t in args.tables.split(",")}
    if not tables & {1, 2}:
        args.no_light = True
    warnings.simplefilter("ignore")

    from astropy.io import fits
    from astropy.wcs import WCS

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.passes import join_passes
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
    from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters, simulate
    from shapepipe_modules.simulate.cluster import ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate import crowded

    params = resolve_parameters(args.preset)
    scale = params["pixel_scale"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_crowded_duplicates_"))
    work.mkdir(parents=True, exist_ok=True)
    param = work / "with_kron.param"
    param.write_text((DATA_DIR / "default.param").read_text().rstrip("\n") + "\nKRON_RADIUS\n")

    def passes_of(seed):
        sim = work / f"seed{seed}"
        if not (sim / "simulation.json").exists():
            clock = time.perf_counter()
            simulate(args.preset, sim, seed=seed, n_workers=1)
            print(f"seed {seed}: simulated in {time.perf_counter() - clock:.1f} s", file=sys.stderr)
        tile = sim / "tiles" / "CFIS.244.252.r.fits"
        if not (sim / "weight.fits").exists():
            weight = fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1)
            fits.PrimaryHDU(weight, header=fits.getheader(tile)).writeto(sim / "weight.fits", overwrite=True)
        tables = []
        for name, settings in (("HOT", HOT), ("COLD", COLD)):
            out = sim / f"sex_sep_{name}"
            if not (out / "sexcat-244-252.fits").exists():
                _run(sextractor, [tile, sim / "weight.fits"], out, "-244-252", ENGINE="sep",
                     DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=False, BKG_RESIDUAL=False,
                     PASSES=[name], PASS_SETTINGS=[settings], DOT_PARAM_FILE=str(param))
            tables.append(read_ldac(out / "sexcat-244-252.fits")[0])
        truth = load_truth(sim, tile="244.252")
        centre = truth[truth["cluster_role"] == ROLE_ICL][0]
        return sim, tables[0], tables[1], truth, (float(centre["x"]), float(centre["y"]))

    seed_sets = [_seeds(args.seeds)] + ([_seeds(args.held_out)] if args.held_out else [])
    data = {seed: passes_of(seed) for seeds in seed_sets for seed in seeds}

    def seed_label(seeds):
        contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
        return f"{seeds[0]}-{seeds[-1]}" if contiguous else ",".join(map(str, seeds))

    def kind(row):
        return "star" if row["is_star"] else "member" if row["cluster_role"] == ROLE_MEMBER else "galaxy"

    if not args.no_light:
        print(f"1. Truth objects detected by both passes (HOT+COLD, PASS_NEIGHBOUR_RADIUS {args.neighbour_radius}, "
              f"PASS_MERGE_RADIUS {args.merge_radius}), "
              "with whose light each detection's FLUX_RADIUS circle holds")
        pools = []
        for seeds in seed_sets:
            pool = dict.fromkeys(("members", "once", "none", "multi", "pieces", "both", "stars_both", "star_pieces",
                                  "m_once", "m_shredded", "m_pieces", "m_both"), 0)
            for seed in seeds:
                sim, hot, cold, truth, centre = data[seed]
                joined = join_passes([hot, cold], 1.0, args.neighbour_radius, args.merge_radius)
                jx, jy = np.asarray(joined["X_IMAGE"], float), np.asarray(joined["Y_IMAGE"], float)
                radius = np.maximum(np.asarray(joined["FLUX_RADIUS"], float), 2.0)
                pas = np.asarray(joined["PASS"])
                matcher = crowded.cluster_scores(jx, jy, truth, centre, scale, RADIUS_ARCSEC, passes=pas)
                truth = truth[truth["cluster_role"] != ROLE_ICL]
                owner = crowded.assign_detections(jx, jy, truth, scale)
                both = [k for k in np.unique(owner[owner >= 0]) if len(set(pas[owner == k])) > 1]
                wcs = WCS(fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits"))
                psf_model = TruePSF(sim).tiles["244.252"]
                light_owner, light_share, light_own, _ = crowded.truth_light_in_circles(truth, jx, jy, radius, wcs,
                                                                                      psf_model, params)
                held = crowded.light_owners(truth, jx, jy, joined["FLUX_AUTO"], radius, wcs, psf_model, params)
                for k in both:
                    row = truth[k]
                    size = (row["hlr"] + 0.3) / scale
                    print(f"  seed {seed}: truth {k}, {kind(row)} of mag {row['mag']:.2f}, "
                          f"hlr {row['hlr'] / scale:.1f} px, at ({row['x']:.1f}, {row['y']:.1f})")
                    hot_rows = [q for q in np.flatnonzero(owner == k) if pas[q] == 1]
                    hot_r = float(joined["FLUX_RADIUS"][hot_rows[0]])
                    for q in np.flatnonzero(owner == k):
                        lk = light_owner[q]
                        offset = np.hypot(jx[q] - row["x"], jy[q] - row["y"])
                        line = (f"    PASS {pas[q]} offset {offset:5.1f} px ({offset / size:.2f} sizes), FLUX_AUTO "
                                f"{joined['FLUX_AUTO'][q]:9.0f}, FLUX_RADIUS {joined['FLUX_RADIUS'][q]:5.1f}")
                        if pas[q] == 2:
                            gap = min(np.hypot(jx[q] - jx[h], jy[q] - jy[h]) for h in hot_rows)
                            line += f", {gap:5.1f} px = {gap / hot_r:.2f} FLUX_RADIUS of the PASS 1 object"
                        print(line + f"; light: truth {lk} ({kind(truth[lk])} {truth['mag'][lk]:.2f}) share "
                                     f"{light_share[q]:.2f}, {light_own[q]:.3f} of its flux")
                counts = crowded.detections_per_truth(held, len(truth))
                members = np.asarray(truth["cluster_role"]) == ROLE_MEMBER
                stars = np.asarray(truth["is_star"], bool)
                in_both = np.array([len(set(pas[held == k])) > 1 for k in range(len(truth))], bool)
                pool["members"] += int(members.sum())
                pool["once"] += int(np.sum(counts[members] == 1))
                pool["none"] += int(np.sum(counts[members] == 0))
                pool["multi"] += int(np.sum(counts[members] > 1))
                pool["pieces"] += int(np.sum(np.maximum(counts[members] - 1, 0)))
                pool["both"] += int(np.sum(in_both & members))
                pool["stars_both"] += int(np.sum(in_both & stars))
                pool["star_pieces"] += int(np.sum(np.maximum(counts[stars] - 1, 0)))
                pool["m_once"] += round(matcher["members_whole"] * matcher["n_members"])
                pool["m_shredded"] += matcher["members_shredded"]
                pool["m_pieces"] += matcher["member_pieces"]
                pool["m_both"] += matcher["duplicated_across_passes"]
            pools.append((seeds, pool))
        print("\n2. By light (a detection holds an object's light: >= 0.5 of the truth light in its FLUX_RADIUS "
              "circle, making >= 0.25 of its FLUX_AUTO, no other object's as much), against the nearest-truth matcher")
        print(f"{'seeds':>6s} {'members':>8s} {'1x light':>9s} {'(matcher)':>9s} {'none':>5s} {'>1':>4s} "
              f"{'(matcher)':>9s} {'pieces':>7s} {'(matcher)':>9s} {'in both passes':>15s} {'(matcher)':>9s} "
              f"{'stars in both':>14s} {'star pieces':>12s}")
        for seeds, p in pools:
            print(f"{seed_label(seeds):>6s} {p['members']:8d} {p['once'] / p['members']:9.3f} "
                  f"{p['m_once'] / p['members']:9.3f} {p['none']:5d} {p['multi']:4d} {p['m_shredded']:9d} "
                  f"{p['pieces']:7d} {p['m_pieces']:9d} {p['both']:15d} {p['m_both']:9d} {p['stars_both']:14d} "
                  f"{p['star_pieces']:12d}")

    def light_held(seed, table):
        sim, _, _, truth, _ = data[seed]
        objects = truth[truth["cluster_role"] != ROLE_ICL]
        wcs = WCS(fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits"))
        radius = np.maximum(np.asarray(table["FLUX_RADIUS"], float), 2.0)
        held = crowded.light_owners(objects, table["X_IMAGE"], table["Y_IMAGE"], table["FLUX_AUTO"], radius, wcs,
                                    TruePSF(sim).tiles["244.252"], params)
        return held, objects

    def light_once(seed, joined):
        held, objects = light_held(seed, joined)
        counts = crowded.detections_per_truth(held, len(objects))
        cold = crowded.detections_per_truth(held[np.asarray(joined["PASS"]) == 2], len(objects))
        return {"light": int(np.sum(counts[np.asarray(objects["cluster_role"]) == ROLE_MEMBER] == 1)),
                "split_light": int(np.sum((cold > 1) & (counts == cold)))}

    def print_rules(title, rows, evaluate):
        print(title)
        print(f"{'rule':34s}" + "".join(f" | {'seeds':>6s} {'bg 30in':>7s} {'1x':>6s} {'1xlight':>7s} {'pieces':>6s} "
                                        f"{'dupX':>4s} {'split':>5s} {'(light)':>7s} {'multi':>5s} {'lost':>4s} {'lostgal':>7s} {'(light)':>7s}"
                                        for _ in seed_sets))
        for row in rows:
            line = f"{row[0]:34s}"
            for seeds in seed_sets:
                pool = {}
                for seed in seeds:
                    joined, scores = evaluate(seed, row)
                    if args.light_rules:
                        scores.update(light_once(seed, joined))
                    for key, value in scores.items():
                        pool[key] = pool.get(key, 0) + value
                light = f"{pool['light'] / pool['n_members']:7.3f}" if args.light_rules else f"{'-':>7s}"
                split_light = f"{pool.get('split_light', '-'):>7}"
                lost_light = f"{pool.get('lost_light', '-'):>7}"
                line += (f" | {seed_label(seeds):>6s} {pool['found'] / pool['n_background']:7.3f} "
                         f"{pool['whole'] / pool['n_members']:6.3f} {light} {pool['pieces']:6d} {pool['dup']:4d} "
                         f"{pool['split']:5d} {split_light} {pool['multi']:5d} {pool['lost']:4d} {pool['lost_galaxies']:7d} "
                         f"{lost_light}")
            print(line, flush=True)
        print("(bg 30in: background galaxies within 30 arcsec found; 1x: members detected exactly once, by the "
              "matcher; 1xlight: by light; pieces: member detections beyond the first; dupX: truth objects detected "
              "by both passes; split: truth objects with two or more detections, all COLD; multi: truth objects with "
              "two or more detections; lost: truth objects whose every COLD detection the merge gave away (lostgal: "
              "field galaxies among them); (light): the same counted by light, crowded.light_owners)")

    if 4 in tables:
        images = {}

        def merged(seed, row):
            if seed not in images:
                images[seed] = detection_image(data[seed][0], conv=args.saddle_filter)
            _, hot, cold, truth, centre = data[seed]
            filtered, noise, _ = images[seed]
            after = merge_rule(cold, filtered, noise, row[1], row[2], args.merge_distance)
            joined = join_passes([hot, after], 1.0, NEIGHBOUR_RADIUS)
            scores = rule_scores(joined, truth, centre, scale, cold, after)
            if args.light_rules:
                if ("held", seed) not in images:
                    images["held", seed] = light_held(seed, cold)[0]
                held, objects = light_held(seed, after)
                n = len(objects)
                lost = (crowded.detections_per_truth(images["held", seed], n) > 0) & \
                    (crowded.detections_per_truth(held, n) == 0)
                scores["lost_light"] = int(lost.sum())
            return joined, scores

        print_rules(f"\n4. Within-pass merges of the COLD catalogue before the join (pairs closer than "
                    f"{args.merge_distance:g} px; saddle: lowest value of the filtered detection image on the segment "
                    "joining the peaks)", [MERGE_RULES[int(i)] for i in args.merge_rules.split(",")]
                    if args.merge_rules else MERGE_RULES, merged)

    if 5 in tables:
        resolved_rows(data, seed_sets, scale, print_rules, args)

    if 3 not in tables:
        print(f"\n(work folder: {work})")
        return 0
    print("\n3. Join rules on the raw HOT and COLD catalogues (pooled per seed set)")
    head = (f"{'rule':38s}" + "".join(f" | {'seeds':>6s} {'bg 30in':>7s} {'1x':>6s} {'pieces':>6s} {'dupX':>4s}"
                                      for _ in seed_sets))
    print(head)
    for label, neighbour_radius, core_scale, min_ellipse, min_flux_ratio in RULES:
        line = f"{label:38s}"
        for seeds in seed_sets:
            pool = {"found": 0.0, "n_background": 0, "whole": 0.0, "n_members": 0, "pieces": 0, "dup": 0}
            for seed in seeds:
                _, hot, cold, truth, centre = data[seed]
                joined = variant_join(hot, cold, neighbour_radius, core_scale, min_ellipse, min_flux_ratio)
                if (core_scale, min_ellipse, min_flux_ratio) == (1.0, 0.0, 0.0):
                    # The variant with the module's rules is the module's join.
                    module = join_passes([hot, cold], 1.0, neighbour_radius)
                    assert np.array_equal(np.asarray(module["X_IMAGE"]), np.asarray(joined["X_IMAGE"]))
                s = crowded.cluster_scores(joined["X_IMAGE"], joined["Y_IMAGE"], truth, centre, scale, RADIUS_ARCSEC,
                                           passes=joined["PASS"])
                pool["found"] += s["background_found"] * s["n_background"]
                pool["n_background"] += s["n_background"]
                pool["whole"] += s["members_whole"] * s["n_members"]
                pool["n_members"] += s["n_members"]
                pool["pieces"] += s["member_pieces"]
                pool["dup"] += s["duplicated_across_passes"]
            line += (f" | {seed_label(seeds):>6s} {pool['found'] / pool['n_background']:7.3f} "
                     f"{pool['whole'] / pool['n_members']:6.3f} {pool['pieces']:6d} {pool['dup']:4d}")
        print(line, flush=True)
    print("(bg 30in: background galaxies within 30 arcsec found; 1x: members detected exactly once; pieces: "
          "detections of members beyond their first; dupX: truth objects detected by both passes)")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
