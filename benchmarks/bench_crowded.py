"""Crowded fields on the simulated cluster (not a test: prints tables; docs/crowded.md).

Usage: ``python benchmarks/bench_crowded.py [--seeds 1-3] [--engine sep] [--scale 0.3] [--workdir DIR]``

For each seed, the ``cluster_knotty`` preset (``--preset``) is simulated and its tile extracted
by the sextractor module five ways: the HOT pass alone, the COLD pass
alone, the earlier hot pass (3x3 filter) with COLD, both joined by the
ellipse rule alone (PASSES = HOT, COLD, joined at PASS_ELLIPSE_SCALE), and
both joined with blended neighbours added (PASS_NEIGHBOUR_RADIUS) and the
cold pass's close pieces merged (PASS_MERGE_RADIUS), the last one with the saturated regions, object mask and local sky. Printed:

1. against the truth (:mod:`shapepipe_modules.validate.crowded`), pooled
   over the seeds: completeness of the background galaxies within 30 arcsec
   of the cluster centre, duplicated background galaxies, members detected
   exactly once, all duplicated truth objects;
2. the local sky of the dual-pass catalogue against the true diffuse light
   (sky + intracluster light) at each object;
3. a direct check of the tangential shear: REGAUSS shapes (GalSim HSM,
   neighbours masked with the object mask) of the detected background
   galaxies, binned by radius, against the input NFW shear of the same
   galaxies, and the fitted amplitude (1 when recovered);
4. why the dual pass finds fewer background galaxies than the COLD pass
   alone: the galaxies COLD finds and HOT+COLD does not, and where they
   lie (inside a HOT ellipse, of a member or not); and the COLD
   detections inside HOT ellipses, off the HOT objects' cores (beyond
   their FLUX_RADIUS), that belong to a member (its pieces) or to a
   background galaxy, with their FLUX_RADIUS;
5. the cost per image (wall seconds of each step, from the job summary):
   tile and one exposure CCD (1024 x 1024), second pass and join, masks and
   local sky.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

# The hot pass detects on the image smoothed by a Gaussian of 6 pixels FWHM (1.1 arcsec, about a member's
# half-light radius): the members' point-like knots are smoothed away, so it deblends neighbouring members
# (DEBLEND_MINCONT 0.005) without shredding them. HOT_3X3 is the earlier hot pass (the 3x3 default filter).
HOT = ("BACK_TYPE=AUTO BACK_SIZE=64 DETECT_THRESH=5 DETECT_MINAREA=10 DEBLEND_MINCONT=0.005 "
       "FILTER_NAME=gauss_6.0_13x13.conv")
HOT_3X3 = "BACK_TYPE=AUTO BACK_SIZE=64 DETECT_THRESH=3 DETECT_MINAREA=10 DEBLEND_MINCONT=0.01"
COLD = "BACK_TYPE=AUTO BACK_SIZE=24 DETECT_THRESH=1.2 DEBLEND_MINCONT=0.0005"
RADIUS_ARCSEC = 30.0
# A COLD object inside a HOT ellipse is kept when FLUX_RADIUS >= 6 pixels (1.1 arcsec) and it lies beyond the HOT
# object's FLUX_RADIUS from its centre: a member the hot pass merged into a neighbour (cold FLUX_RADIUS 6-11
# pixels), not a knot clump (2-5.4).
NEIGHBOUR_RADIUS = 6.0
# COLD detections closer than 4.5 pixels (1.15 PSF FWHM) to each other are one faint galaxy split by the fine
# deblending: only the brightest is joined (PASS_MERGE_RADIUS; bench_crowded_duplicates.py --tables 4).
MERGE_RADIUS = 4.5
# The later passes on the tile minus the HOT objects' ring-median models (FLUX_RADIUS >= 4 px; an option, not
# example/crowded's choice: more background galaxies, more of the members' knots),
# HOTRES (the HOT settings) adding the members HOT merged into a neighbour, COLD joined by the core rule
# (benchmarks/bench_crowded_subtract.py).
SUBTRACTED = dict(PASSES=["HOT", "HOTRES", "COLD"], PASS_SETTINGS=[HOT, HOT, COLD], PASS_SUBTRACT_RADIUS=4.0,
                  PASS_CORE_SCALES=["-", "2", "3"], PASS_MIN_FLUX_RADII=["-", "5", "-"], PASS_MERGE_RADIUS=MERGE_RADIUS)

# The smooth members of the cluster preset (example/crowded): FINE, one finely deblended pass (the best single
# pass of bench_crowded_sweep.py), keeps them whole; FINERES, the same pass on the tile minus the ring-median
# models of FINE's objects with FLUX_RADIUS >= 4 px (measured over 64-pixel meshes), is joined by the core rule
# at 5 FLUX_RADIUS; close detections of both passes are merged, and so are small detections of a pass that no
# valley deeper than 3 sigma separates (PASS_SPLIT_SIGMA), extended ones (FLUX_RADIUS 3-10 px) at their own
# scale (PASS_SPLIT_EXTENDED_RADIUS), and FINE's small objects inside the models' discs must show at 3 sigma on
# FINERES's detection image (PASS_CONFIRM_SIGMA; benchmarks/bench_crowded_subtract.py), as must those as large
# as the modelled ones inside the disc of one 10 times brighter, which get no model (PASS_CONFIRM_CONTRAST).
FINE = "BACK_TYPE=AUTO BACK_SIZE=12 DETECT_THRESH=1.0 DETECT_MINAREA=5 DEBLEND_MINCONT=0.0005"
SPLIT_SIGMA, SPLIT_MAX_RADIUS, SPLIT_EXTENDED_RADIUS, CONFIRM_SIGMA, CONFIRM_CONTRAST = 3.0, 6.0, 3.0, 3.0, 10.0
# FINE + FINERES merges closer pieces than HOT + COLD: 5 pixels (1.3 PSF FWHM; with the extended test, no
# galaxy held twice by light in five noise realisations of the 30 tiles, for 0.003-0.005 of the background).
FINE_MERGE_RADIUS = 5.0
FINE_DUAL = dict(PASSES=["FINE", "FINERES"], PASS_SETTINGS=[FINE, FINE], PASS_SUBTRACT_RADIUS=4.0,
                 PASS_MODEL_BACK_SIZE=64, PASS_CORE_SCALES=["-", "5"], PASS_MERGE_RADIUS=FINE_MERGE_RADIUS,
                 PASS_MERGE_FIRST=True, PASS_SPLIT_SIGMA=SPLIT_SIGMA, PASS_SPLIT_MAX_RADIUS=SPLIT_MAX_RADIUS,
                 PASS_SPLIT_EXTENDED_RADIUS=SPLIT_EXTENDED_RADIUS, PASS_CONFIRM_SIGMA=CONFIRM_SIGMA,
                 PASS_CONFIRM_CONTRAST=CONFIRM_CONTRAST)


def _seeds(text):
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def _run(function, inputs, output_dir, number, **options):
    """One module job in-process, as the runner would (option defaults + overrides)."""
    import logging

    from shapepipe.job import Job

    values = {option.name: option.default for option in function.spec.options}
    values.update(options)
    output_dir.mkdir(parents=True, exist_ok=True)
    job = Job(module=function.spec.name, module_run=function.spec.name, number=number,
              inputs=[Path(p) for p in inputs], output_dir=output_dir, log_dir=output_dir, options=values,
              logger=logging.getLogger("bench_crowded"), run_dir=output_dir)
    return function(job) or {}


def _join_losses(hot, cold, dual, truth, centre, scale, ellipse_scale, pool):
    """Background galaxies COLD finds and the join drops, and the COLD detections inside HOT ellipses."""
    from shapepipe_modules.sextractor.passes import ellipse_axes, inside_ellipses
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate import crowded

    truth = truth[truth["cluster_role"] != ROLE_ICL]
    role = np.asarray(truth["cluster_role"])
    galaxy = (role == ROLE_FIELD) & ~np.asarray(truth["is_star"], bool)
    r = np.hypot(np.asarray(truth["x"]) - centre[0], np.asarray(truth["y"]) - centre[1]) * scale
    owners = {name: crowded.assign_detections(t["X_IMAGE"], t["Y_IMAGE"], truth, scale)
              for name, t in (("hot", hot), ("cold", cold), ("dual", dual))}
    count = {name: crowded.detections_per_truth(o, len(truth)) for name, o in owners.items()}
    a, b, theta = ellipse_axes(hot, ellipse_scale)
    hx, hy = np.asarray(hot["X_IMAGE"], float), np.asarray(hot["Y_IMAGE"], float)
    hot_radius = np.asarray(hot["FLUX_RADIUS"], float)
    for j, owner in enumerate(owners["cold"]):
        x, y = float(cold["X_IMAGE"][j]), float(cold["Y_IMAGE"][j])
        inside = np.flatnonzero(inside_ellipses(x, y, hx, hy, a, b, theta))
        if owner < 0:
            continue
        lost = galaxy[owner] and r[owner] < RADIUS_ARCSEC and count["dual"][owner] == 0
        if lost and j == np.flatnonzero(owners["cold"] == owner)[0]:
            pool["lost"] = pool.get("lost", 0) + 1
            if inside.size:
                pool["lost_inside"] = pool.get("lost_inside", 0) + 1
                hosts = owners["hot"][inside]
                if np.any((hosts >= 0) & (role[np.maximum(hosts, 0)] == ROLE_MEMBER)):
                    pool["lost_in_member"] = pool.get("lost_in_member", 0) + 1
        if inside.size and np.all(np.hypot(hx[inside] - x, hy[inside] - y) > hot_radius[inside]):
            kind = "pieces" if role[owner] == ROLE_MEMBER else "galaxies" if galaxy[owner] else None
            if kind:
                pool.setdefault(kind, []).append(float(cold["FLUX_RADIUS"][j]))


def _parse_set(text):
    from shapepipe_modules.simulate.cli import _parse_set as parse

    return parse(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--preset", default="cluster_knotty", help="cluster_knotty (members with knots), or cluster")
    parser.add_argument("--engine", default="sep", choices=("sep", "sextractor"))
    parser.add_argument("--dual", default=None, choices=("HOT+COLD", "FINE+FINERES"),
                        help="the configuration whose local sky, shear and cost are printed (default: FINE+FINERES "
                             "on the cluster preset, HOT+COLD on cluster_knotty)")
    parser.add_argument("--scale", type=float, default=1.0, help="PASS_ELLIPSE_SCALE")
    parser.add_argument("--neighbour-radius", type=float, default=NEIGHBOUR_RADIUS,
                        help="PASS_NEIGHBOUR_RADIUS of the HOT+COLD join (pixels; 0: the ellipse rule alone)")
    parser.add_argument("--merge-radius", type=float, default=MERGE_RADIUS,
                        help="PASS_MERGE_RADIUS of the HOT+COLD join (pixels; 0: no merge of the COLD pieces)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--shear-local-sky", action="store_true",
                        help="subtract BKG_LOCAL from the stamps before measuring shapes")
    parser.add_argument("--set", type=_parse_set, action="append", default=[], metavar="NAME=VALUE",
                        help="simulation parameter override for the simulations it makes (as shapepipe_simulate "
                             "--set), e.g. nfw_lensed_positions=False")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from astropy.io import fits

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
    from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters, simulate
    from shapepipe_modules.simulate.cluster import ROLE_FIELD, ROLE_ICL, nfw_reduced_tangential_shear, NFW_MIN_RADIUS_ARCSEC
    from shapepipe_modules.validate import crowded

    params = resolve_parameters(args.preset)
    scale = params["pixel_scale"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_crowded_"))
    # The single passes also write KRON_RADIUS (their join ellipses, for the join-loss table).
    param = work / "with_kron.param"
    work.mkdir(parents=True, exist_ok=True)
    param.write_text((DATA_DIR / "default.param").read_text().rstrip("\n") + "\nKRON_RADIUS\n")
    configs = {"HOT": dict(PASSES=["HOT"], PASS_SETTINGS=[HOT], DOT_PARAM_FILE=str(param)),
               "COLD": dict(PASSES=["COLD"], PASS_SETTINGS=[COLD], DOT_PARAM_FILE=str(param)),
               "HOT3x3+COLD": dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT_3X3, COLD]),
               "HOT+COLD_ell": dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD]),
               "HOT+COLD": dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD], OBJECT_MASK=True,
                                SATURATION_REGIONS=True, LOCAL_SKY=True,
                                PASS_NEIGHBOUR_RADIUS=args.neighbour_radius, PASS_MERGE_RADIUS=args.merge_radius),
               "SUBTRACTED": SUBTRACTED, "FINE": dict(PASSES=["FINE"], PASS_SETTINGS=[FINE]),
               "FINE+FINERES": dict(FINE_DUAL, OBJECT_MASK=True, SATURATION_REGIONS=True, LOCAL_SKY=True)}
    dual = args.dual or ("FINE+FINERES" if args.preset == "cluster" else "HOT+COLD")
    totals = {name: {} for name in configs}
    join_pool = {}
    sky_rows, costs, shear = [], [], {"g1": [], "g2": [], "dx": [], "dy": [], "true": [], "mag": []}
    for seed in _seeds(args.seeds):
        sim = work / f"seed{seed}"
        if not (sim / "simulation.json").exists():
            clock = time.perf_counter()
            simulate(args.preset, sim, seed=seed, n_workers=1, **dict(args.set))
            print(f"seed {seed}: simulated in {time.perf_counter() - clock:.1f} s", file=sys.stderr)
        tile = sim / "tiles" / "CFIS.244.252.r.fits"
        header = fits.getheader(tile)
        weight = fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1)
        fits.PrimaryHDU(weight, header=header).writeto(sim / "weight.fits", overwrite=True)
        fits.PrimaryHDU(np.zeros(weight.shape, np.int16), header=header).writeto(sim / "flag.fits", overwrite=True)
        truth = load_truth(sim, tile="244.252")
        centre = truth[truth["cluster_role"] == ROLE_ICL][0]
        inputs = [tile, sim / "weight.fits"] + ([sim / "flag.fits"] if args.engine == "sextractor" else [])
        for name, options in configs.items():
            out = sim / f"sex_{args.engine}_{name}"
            summary = _run(sextractor, inputs, out, "-244-252", ENGINE=args.engine,
                           DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=args.engine == "sextractor",
                           BKG_RESIDUAL=False, PASS_ELLIPSE_SCALE=args.scale, **options)
            table, _ = read_ldac(out / "sexcat-244-252.fits")
            scores = crowded.cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, (centre["x"], centre["y"]),
                                            scale, RADIUS_ARCSEC, passes=table["PASS"])
            pool = totals[name]
            pool["found"] = pool.get("found", 0) + scores["background_found"] * scores["n_background"]
            for key in ("n_background", "background_duplicated", "n_members", "members_shredded",
                        "duplicated_truth", "duplicated_across_passes", "n_detections", "members_missed",
                        "members_star_blended", "n_members_no_star"):
                pool[key] = pool.get(key, 0) + scores[key]
            pool["members_whole"] = pool.get("members_whole", 0) + scores["members_whole"] * scores["n_members"]
            pool["whole_no_star"] = (pool.get("whole_no_star", 0)
                                     + scores["members_whole_no_star"] * scores["n_members_no_star"])
            if name in ("SUBTRACTED", "FINE+FINERES", "HOT+COLD"):
                costs.append((f"tile {name}", seed, summary, options["PASSES"]))
            if name == dual:
                sky_rows.append((seed, crowded.local_sky_scores(table, crowded.diffuse_light(sim))))
                # Direct shear check: background galaxies detected once, shapes with neighbours masked.
                truth_no_icl = truth[truth["cluster_role"] != ROLE_ICL]
                owner = crowded.assign_detections(table["X_IMAGE"], table["Y_IMAGE"], truth_no_icl, scale)
                counts = crowded.detections_per_truth(owner, len(truth_no_icl))
                good = owner >= 0
                good[good] = (truth_no_icl["cluster_role"][owner[good]] == ROLE_FIELD) & \
                    ~np.asarray(truth_no_icl["is_star"])[owner[good]] & (counts[owner[good]] == 1)
                psf = TruePSF(sim).tile_galsim("244.252").drawImage(nx=41, ny=41, scale=scale, method="no_pixel").array
                mask = fits.getdata(out / "objmask-244-252.fits", 1)
                measured = crowded.hsm_shears(fits.getdata(tile).astype(np.float32), mask, table[good], psf, scale,
                                              local_sky=args.shear_local_sky)
                rows = truth_no_icl[owner[good]][measured["ok"]]
                dx = (np.asarray(rows["x"]) - centre["x"]) * scale
                dy = (np.asarray(rows["y"]) - centre["y"]) * scale
                shear["g1"].append(measured["g1"][measured["ok"]])
                shear["g2"].append(measured["g2"][measured["ok"]])
                shear["mag"].append(np.asarray(rows["mag"]))
                shear["dx"].append(dx)
                shear["dy"].append(dy)
                shear["true"].append(nfw_reduced_tangential_shear(np.maximum(np.hypot(dx, dy), NFW_MIN_RADIUS_ARCSEC),
                                                                  params["nfw_kappa_s"], params["nfw_rs"]))
        catalogues = {name: read_ldac(sim / f"sex_{args.engine}_{name}" / "sexcat-244-252.fits")[0]
                      for name in ("HOT", "COLD", "HOT+COLD")}
        _join_losses(catalogues["HOT"], catalogues["COLD"], catalogues["HOT+COLD"], truth, (centre["x"], centre["y"]),
                     scale, args.scale, join_pool)
        # One exposure CCD (1024 x 1024, with sky, flags): cost of the second pass and of the masks.
        exposure = sim / "exposures" / "2100001p.fits"
        out = sim / f"sex_{args.engine}_exposure"
        if args.engine == "sep":
            passes = (FINE_DUAL if dual == "FINE+FINERES" else
                      dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, COLD], PASS_ELLIPSE_SCALE=args.scale,
                           PASS_NEIGHBOUR_RADIUS=args.neighbour_radius, PASS_MERGE_RADIUS=args.merge_radius))
            summary = _run(sextractor, [exposure, sim / "exposures" / "2100001p.weight.fits.fz",
                                        sim / "exposures" / "2100001p.flag.fits.fz"], out, "-2100001-0",
                           OBJECT_MASK=True, SATURATION_REGIONS=True, SATURATION_FLAG_BITS=4, LOCAL_SKY=True,
                           BKG_RESIDUAL=False, **passes)
            costs.append((f"CCD {dual}", seed, summary, passes["PASSES"]))

    print(f"\nBackground galaxies within {RADIUS_ARCSEC:.0f} arcsec of the cluster centre, {len(sky_rows)} seed(s), "
          f"engine {args.engine}, PASS_ELLIPSE_SCALE {args.scale}, HOT+COLD: PASS_NEIGHBOUR_RADIUS "
          f"{args.neighbour_radius}, PASS_MERGE_RADIUS {args.merge_radius} (HOT+COLD_ell: the ellipse rule alone)")
    print(f"{'passes':12s} {'found':>12s} {'complete':>9s} {'dup bg':>7s} {'members 1x':>11s} {'shredded':>9s} "
          f"{'missed':>7s} {'by a star':>10s} {'1x, no star':>12s} {'dup truth':>10s} {'across passes':>14s} "
          f"{'detections':>11s}")
    for name, pool in totals.items():
        print(f"{name:12s} {int(round(pool['found'])):5d} / {pool['n_background']:4d} "
              f"{pool['found'] / pool['n_background']:9.3f} {pool['background_duplicated']:7d} "
              f"{pool['members_whole'] / pool['n_members']:11.3f} {pool['members_shredded']:9d} "
              f"{pool['members_missed']:7d} {pool['members_star_blended']:10d} "
              f"{pool['whole_no_star'] / pool['n_members_no_star']:12.3f} "
              f"{pool['duplicated_truth']:10d} {pool['duplicated_across_passes']:14d} {pool['n_detections']:11d}")
    print("(missed: members with no detection of their own, blended into a neighbour; by a star: of those, with a "
          "brighter star within 3 arcsec; 1x, no star: detected exactly once among the members without such a star)")

    print(f"\nBackground galaxies within {RADIUS_ARCSEC:.0f} arcsec found by COLD alone and not by HOT+COLD: "
          f"{join_pool.get('lost', 0)}; inside a HOT ellipse: {join_pool.get('lost_inside', 0)}, of a member: "
          f"{join_pool.get('lost_in_member', 0)}")
    for kind in ("pieces", "galaxies"):
        radius = np.asarray(join_pool.get(kind, []))
        label = "member pieces" if kind == "pieces" else "background galaxies"
        if radius.size:
            p10, p50, p90 = np.percentile(radius, [10, 50, 90])
            print(f"  COLD detections inside HOT ellipses, off the cores: {label} {radius.size}, FLUX_RADIUS "
                  f"10/50/90 % {p10:.1f}/{p50:.1f}/{p90:.1f} px")

    print(f"\nLocal sky ({dual} catalogue) against the true sky + intracluster light at each object")
    print(f"{'seed':>4s} {'objects':>8s} {'converged':>10s} {'|d|<1 sigma':>12s} {'median d':>9s} {'sigma':>6s} "
          f"{'ICL > sigma: n':>15s} {'|d|<1 sigma':>12s}")
    for seed, s in sky_rows:
        print(f"{seed:4d} {s['n']:8d} {s['converged']:10.3f} {s['within_1_sigma']:12.3f} {s['median_offset']:9.3f} "
              f"{s['median_std']:6.2f} {s['n_icl']:15d} {s['within_1_sigma_icl']:12.3f}")

    data = {key: np.concatenate(values) for key, values in shear.items()}
    rows, fit = crowded.tangential_profile(data["g1"], data["g2"], data["dx"], data["dy"], data["true"],
                                           np.array([0.0, 20.0, 35.0, 50.0, 65.0, 90.0]))
    print("\nTangential shear of the detected background galaxies (HSM REGAUSS, neighbours masked) vs input")
    print(f"{'r (arcsec)':>12s} {'n':>5s} {'g_t':>8s} {'error':>7s} {'input':>7s} {'g_x':>8s}")
    for r in rows:
        print(f"{r['r_min']:5.0f}-{r['r_max']:<5.0f} {r['n']:6d} {r['g_t']:8.4f} {r['error']:7.4f} {r['true']:7.4f} "
              f"{r['g_x']:8.4f}")
    print(f"amplitude g_t / input: {fit['A']:.3f} +- {fit['A_error']:.3f} ({fit['n']} galaxies); "
          f"mean cross shear {fit['cross_mean']:.4f} +- {fit['cross_error']:.4f}")
    for limit in (23.0, 22.0):
        bright = data["mag"] < limit
        _, fit = crowded.tangential_profile(data["g1"][bright], data["g2"][bright], data["dx"][bright],
                                            data["dy"][bright], data["true"][bright], np.array([0.0, 90.0]))
        print(f"  galaxies brighter than {limit:.0f}: amplitude {fit['A']:.3f} +- {fit['A_error']:.3f} "
              f"({fit['n']} galaxies)")

    print("\nCost per image (wall seconds, sep on the shared machine)")
    steps = ("first pass", "subtract", "later passes", "split_merge", "join", "saturation", "object_mask",
             "local_sky")
    print(f"{'image':22s} {'seed':>4s} {'objects':>8s} " + " ".join(f"{s:>12s}" for s in steps)
          + f" {'later %':>10s} {'masks %':>8s}")
    for label, seed, summary, passes in costs:
        first = summary.get(f"seconds_pass_{passes[0]}", 0.0)
        later = sum(summary.get(f"seconds_pass_{name}", 0.0) for name in passes[1:])
        values = [first, summary.get("seconds_subtract", 0.0), later] + [
            summary.get(f"seconds_{s}", 0.0) for s in steps[3:]]
        second = values[1] + values[2] + values[3] + values[4]
        mask_cost = values[5] + values[6]
        print(f"{label:22s} {seed:4d} {summary['n_objects']:8d} " + " ".join(f"{v:12.3f}" for v in values)
              + f" {100 * second / first:10.0f} {100 * mask_cost / first:8.0f}")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
