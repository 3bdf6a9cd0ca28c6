"""What the dual pass's cross-pass duplicates are, and which join rules remove them (prints tables; docs/crowded.md).

Usage: ``python benchmarks/bench_crowded_duplicates.py [--seeds 1-20] [--held-out 21-30] [--workdir DIR]
[--neighbour-radius 6] [--no-light]``

For each seed the ``cluster`` preset is simulated (or reused from the work
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
   once, the member pieces and the cross-pass duplicates, per seed set.
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
from bench_crowded import COLD, HOT, NEIGHBOUR_RADIUS, RADIUS_ARCSEC, _run, _seeds  # noqa: E402

# (label, neighbour radius, fragment distance in earlier FLUX_RADIUS, minimum ellipse in earlier FLUX_RADIUS,
# minimum flux ratio of a neighbour to the earlier object)
RULES = (("ellipse rule alone", 0.0, 1.0, 0.0, 0.0),
         ("example/crowded (neighbours >= 6 px)", NEIGHBOUR_RADIUS, 1.0, 0.0, 0.0),
         ("fragment within 1.5 FLUX_RADIUS", NEIGHBOUR_RADIUS, 1.5, 0.0, 0.0),
         ("fragment within 2 FLUX_RADIUS", NEIGHBOUR_RADIUS, 2.0, 0.0, 0.0),
         ("fragment within 2.5 FLUX_RADIUS", NEIGHBOUR_RADIUS, 2.5, 0.0, 0.0),
         ("ellipse >= 3 FLUX_RADIUS", NEIGHBOUR_RADIUS, 1.0, 3.0, 0.0),
         ("ellipse alone, >= 3 FLUX_RADIUS", 0.0, 1.0, 3.0, 0.0),
         ("fragment 2.5 FR + ellipse >= 3 FR", NEIGHBOUR_RADIUS, 2.5, 3.0, 0.0),
         ("neighbour flux >= 0.04 earlier", NEIGHBOUR_RADIUS, 1.0, 0.0, 0.04),
         ("neighbour flux >= 0.06 earlier", NEIGHBOUR_RADIUS, 1.0, 0.0, 0.06),
         ("neighbours >= 7 px", 7.0, 1.0, 0.0, 0.0))


def variant_join(hot, cold, neighbour_radius, core_scale=1.0, min_ellipse=0.0, min_flux_ratio=0.0):
    """The two-pass join with the rules tried (with 1, 0, 0 it is ``passes.join_passes``)."""
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
    first, second = hot.copy(), cold[keep]
    first["PASS"], second["PASS"] = np.ones(len(first), np.int16), np.full(len(second), 2, np.int16)
    return vstack([first, second], metadata_conflicts="silent")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--workdir", default=None, help="simulations and pass catalogues are kept and reused here")
    parser.add_argument("--held-out", default="", help="second seed set, scored separately in table 3 (e.g. 21-30)")
    parser.add_argument("--no-light", action="store_true", help="skip the noise-free light (tables 1-2)")
    parser.add_argument("--neighbour-radius", type=float, default=NEIGHBOUR_RADIUS,
                        help="PASS_NEIGHBOUR_RADIUS of the join of tables 1-2 (0: the ellipse rule alone)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from astropy.io import fits
    from astropy.wcs import WCS

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.passes import join_passes
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
    from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters, simulate
    from shapepipe_modules.simulate.cluster import ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate import crowded

    params = resolve_parameters("cluster")
    scale = params["pixel_scale"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_crowded_duplicates_"))
    work.mkdir(parents=True, exist_ok=True)
    param = work / "with_kron.param"
    param.write_text((DATA_DIR / "default.param").read_text().rstrip("\n") + "\nKRON_RADIUS\n")

    def passes_of(seed):
        sim = work / f"seed{seed}"
        if not (sim / "simulation.json").exists():
            clock = time.perf_counter()
            simulate("cluster", sim, seed=seed, n_workers=1)
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
        print(f"1. Truth objects detected by both passes (HOT+COLD, PASS_NEIGHBOUR_RADIUS {args.neighbour_radius}), "
              "with whose light each detection's FLUX_RADIUS circle holds")
        pools = []
        for seeds in seed_sets:
            pool = dict.fromkeys(("members", "once", "none", "multi", "pieces", "both", "stars_both", "star_pieces",
                                  "m_once", "m_shredded", "m_pieces", "m_both"), 0)
            for seed in seeds:
                sim, hot, cold, truth, centre = data[seed]
                joined = join_passes([hot, cold], 1.0, args.neighbour_radius)
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
