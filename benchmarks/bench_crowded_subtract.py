"""A cold pass on the image with the hot objects' models subtracted (prints a table; docs/crowded.md).

Usage: ``python benchmarks/bench_crowded_subtract.py [--seeds 1-20] [--held-out 21-30] [--smooth]
[--workdir DIR]``

Cluster-lensing work on deep images removes the bright cluster galaxies
before looking for the faint galaxies behind them (elliptical-isophote
models, IRAF ``ellipse``/``bmodel``; GALFIT). This script measures that
idea against the truth of the ``cluster_knotty`` preset (``--preset``), from the raw pass
catalogues: the HOT pass of ``bench_crowded.py`` is run on the tile; each HOT
object with ``FLUX_RADIUS >= --model-radius`` pixels gets a ring-median
model (the median of the tile minus a 64-pixel sep background in
elliptical annuli of the object's ``A_IMAGE/B_IMAGE/THETA_IMAGE``, out to
2.5 Kron radii; brightest first, each on the image minus the models
before it); the HOT and COLD passes are then run again on the tile minus
the models (``HOTres``, ``COLDres``). Printed, pooled over the seeds
against the truth (``validate.crowded.cluster_scores``): background
galaxies within 30 arcsec found, members detected exactly once, members
with no detection, shredded members, truth objects detected by both passes
and truth objects with two or more detections, for single passes (HOT,
COLD, the best single pass of ``bench_crowded_sweep.py``, COLDres) and
joins (``passes.join_passes``, as the module joins them; the FINE family also
with the saddle test of ``PASS_SPLIT_SIGMA`` on each pass and FINE's objects
in the models' discs confirmed on the residual, ``PASS_CONFIRM_SIGMA``): the ellipse rule
with and without blended neighbours, the core rule (``PASS_CORE_SCALES``)
at several scales, and HOT + HOTRES + COLDres, where HOTRES (the HOT pass
on the residual) adds the members HOT merged into a neighbour
(``PASS_MIN_FLUX_RADII``). HOTRES counts as the first pass for the
cross-pass duplicates (it finds first-pass objects).

``--smooth`` simulates the members without knots (``cluster_knot_fraction
= 0``: smooth de Vaucouleurs ellipticals) in its own work folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crowded import (COLD, CONFIRM_SIGMA, HOT, MERGE_RADIUS, NEIGHBOUR_RADIUS, RADIUS_ARCSEC,  # noqa: E402
                           SPLIT_MAX_RADIUS, SPLIT_SIGMA, _run, _seeds)

# The best single pass of bench_crowded_sweep.py (seeds 1-20, any member integrity).
BEST_SINGLE = "BACK_TYPE=AUTO BACK_SIZE=12 DETECT_THRESH=1.0 DETECT_MINAREA=5 DEBLEND_MINCONT=0.0005"
# The joins whose members are also counted by light (--light).
LIGHT_ROWS = ("HOT+COLD (before: ellipse, neighbours 6)", "HOT+COLD, ellipse rule",
              "HOT+HOTRES+COLDres, cores 2, 3, HOTRES >= 5 px", "HOT+HOTRES (core 2, >= 5 px)+COLD, ellipse",
              "HOT+HOTRES (core 2, >= 6 px)+COLD, ellipse", "best single pass", "FINE+FINERES, core 5",
              "FINE+FINERES, core 5, merged", "FINE+FINERES, core 5, merged, split test",
              "FINE+FINERES, core 5, merged, split test, confirmed (example/crowded)")
SCORE_KEYS = ("n_background", "n_members", "members_missed", "members_shredded", "duplicated_across_passes",
              "duplicated_truth", "member_pieces")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--preset", default="cluster_knotty", help="cluster_knotty (members with knots), or cluster")
    parser.add_argument("--held-out", default="", help="second seed set, scored separately (e.g. 21-30)")
    parser.add_argument("--smooth", action="store_true", help="members without knots (cluster_knot_fraction=0)")
    parser.add_argument("--model-radius", type=float, default=4.0,
                        help="HOT objects with FLUX_RADIUS >= this (pixels) are modelled and subtracted")
    parser.add_argument("--workdir", default=None, help="simulations and catalogues are kept and reused here")
    parser.add_argument("--light", action="store_true", help="also count the members detected once by their light "
                        "(validate.crowded.light_owners) for the joins of LIGHT_ROWS (slower)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from astropy.io import fits
    from astropy.wcs import WCS
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.config_files import read_dot_conv
    from shapepipe_modules.sextractor.passes import (confirmed_on_residual, filtered_detection_image, join_passes,
                                                      merge_shallow_splits)
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
    from shapepipe_modules.sextractor.subtract import model_discs, subtract_models
    from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters, simulate
    from shapepipe_modules.simulate.cluster import ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate import crowded

    params = resolve_parameters(args.preset)
    scale = params["pixel_scale"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_crowded_subtract_"))
    work.mkdir(parents=True, exist_ok=True)
    param = work / "with_kron.param"
    param.write_text((DATA_DIR / "default.param").read_text().rstrip("\n") + "\nKRON_RADIUS\n")
    overrides = {"cluster_knot_fraction": 0.0} if args.smooth else {}
    kernel = read_dot_conv(DATA_DIR / "default.conv")

    def extract(sim, image, name, settings, folder):
        out = sim / folder
        if not (out / "sexcat-244-252.fits").exists():
            _run(sextractor, [image, sim / "weight.fits"], out, "-244-252", ENGINE="sep",
                 DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=False, BKG_RESIDUAL=False,
                 PASSES=[name], PASS_SETTINGS=[settings], DOT_PARAM_FILE=str(param))
        return read_ldac(out / "sexcat-244-252.fits")[0]

    def catalogues(seed):
        sim = work / f"seed{seed}"
        if not (sim / "simulation.json").exists():
            simulate(args.preset, sim, seed=seed, n_workers=1, **overrides)
        tile = sim / "tiles" / "CFIS.244.252.r.fits"
        if not (sim / "weight.fits").exists():
            weight = fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1)
            fits.PrimaryHDU(weight, header=fits.getheader(tile)).writeto(sim / "weight.fits", overwrite=True)
        hot = extract(sim, tile, "HOT", HOT, "sex_sep_HOT")
        residual = sim / f"residual_r{args.model_radius:g}.fits"
        if not residual.exists():
            image = fits.getdata(tile).astype(np.float32)
            weight = fits.getdata(sim / "weight.fits")
            subtracted, _ = subtract_models(image, hot, args.model_radius, 64, weight)
            fits.PrimaryHDU(subtracted, header=fits.getheader(tile)).writeto(residual, overwrite=True)
        tag = f"r{args.model_radius:g}"
        tables = {"HOT": hot, "COLD": extract(sim, tile, "COLD", COLD, "sex_sep_COLD"),
                  "BEST": extract(sim, tile, "BEST", BEST_SINGLE, "sex_sep_BEST"),
                  "HOTres": extract(sim, residual, "HOT", HOT, f"sex_res_{tag}_HOT"),
                  "COLDres": extract(sim, residual, "COLD", COLD, f"sex_res_{tag}_COLD")}
        # The FINE family (example/crowded on the cluster preset): models of the best single pass's objects,
        # measured over 64-pixel meshes (PASS_MODEL_BACK_SIZE), and the same pass or COLD on that residual.
        fine_residual = sim / f"residual_fine_r{args.model_radius:g}.fits"
        if not fine_residual.exists():
            image = fits.getdata(tile).astype(np.float32)
            weight = fits.getdata(sim / "weight.fits")
            subtracted, _ = subtract_models(image, tables["BEST"], args.model_radius, 64, weight)
            fits.PrimaryHDU(subtracted, header=fits.getheader(tile)).writeto(fine_residual, overwrite=True)
        tables["FINEres"] = extract(sim, fine_residual, "FINE", BEST_SINGLE, f"sex_fineres_{tag}_FINE")
        tables["COLDfineres"] = extract(sim, fine_residual, "COLD", COLD, f"sex_fineres_{tag}_COLD")
        # The saddle test of each pass on its own detection image (PASS_SPLIT_SIGMA, example/crowded).
        weight = fits.getdata(sim / "weight.fits").astype(np.float32)
        for name, image in (("BEST", tile), ("FINEres", fine_residual)):
            filtered, noise = filtered_detection_image(fits.getdata(image).astype(np.float32), weight, kernel, (12, 12))
            tables[f"{name}_split"] = tables[name][merge_shallow_splits(tables[name], filtered, noise, SPLIT_SIGMA,
                                                                        SPLIT_MAX_RADIUS)]
        # FINE's small objects inside the models' discs checked on FINERES's detection image (PASS_CONFIRM_SIGMA).
        split = tables["BEST_split"]
        tables["BEST_confirmed"] = split[confirmed_on_residual(split, model_discs(tables["BEST"], args.model_radius),
                                                               filtered, noise, CONFIRM_SIGMA, args.model_radius)]
        truth = load_truth(sim, tile="244.252")
        centre = truth[truth["cluster_role"] == ROLE_ICL][0]
        return tables, truth, (float(centre["x"]), float(centre["y"]))

    def variants(t):
        hot, cold, cres, hres = t["HOT"], t["COLD"], t["COLDres"], t["HOTres"]
        rows = {"HOT alone": (hot, None), "COLD alone": (cold, None),
                "best single pass": (t["BEST"], None), "COLDres alone": (cres, None)}
        joins = {"HOT+COLD (before: ellipse, neighbours 6)": ([hot, cold], dict(neighbour_radius=NEIGHBOUR_RADIUS)),
                 "HOT+COLD, ellipse rule": ([hot, cold], {}),
                 "HOT+COLDres, ellipse rule": ([hot, cres], {}),
                 "HOT+COLDres, ellipse, neighbours 6": ([hot, cres], dict(neighbour_radius=NEIGHBOUR_RADIUS))}
        for k in (1.5, 2.0, 2.5, 3.0, 3.5):
            joins[f"HOT+COLDres, core {k:g}"] = ([hot, cres], dict(core_scales=[0, k]))
        # HOTRES (the HOT settings on the residual) adds the members HOT merged into a neighbour: extended
        # there, unlike the knots the models leave.
        for hot_core, min_radius, cold_core in ((1.5, 5.0, 3.0), (1.5, 4.5, 3.0), (1.5, 6.0, 3.0),
                                                (2.0, 5.0, 3.0), (1.5, 5.0, 2.5), (1.5, 5.0, 3.5)):
            joins[f"HOT+HOTRES+COLDres, cores {hot_core:g}, {cold_core:g}, HOTRES >= {min_radius:g} px"] = (
                [hot, hres, cres], dict(core_scales=[0, hot_core, cold_core], min_radii=[0, min_radius, 0]))
        # HOTRES instead of the blended-neighbour rule, COLD on the tile itself by the ellipse rule.
        for min_radius in (5.0, 6.0):
            joins[f"HOT+HOTRES (core 2, >= {min_radius:g} px)+COLD, ellipse"] = (
                [hot, hres, cold], dict(core_scales=[0, 2.0, 0], min_radii=[0, min_radius, 0]))
        # The best single pass first (FINE), then a pass on the tile minus its objects' models, by the core rule.
        rows["FINEres alone"] = (t["FINEres"], None)
        rows["FINE, close detections merged"] = (join_passes([t["BEST"]], merge_radius=MERGE_RADIUS, merge_first=True),
                                                 None)
        for k in (3.0, 4.0, 5.0):
            joins[f"FINE+FINERES, core {k:g}"] = ([t["BEST"], t["FINEres"]], dict(core_scales=[0, k]))
            joins[f"FINE+COLDres(fine models), core {k:g}"] = ([t["BEST"], t["COLDfineres"]], dict(core_scales=[0, k]))
        joins["FINE+FINERES, ellipse rule"] = ([t["BEST"], t["FINEres"]], {})
        # The first pass's close detections merged too (PASS_MERGE_FIRST); example/crowded also merges the small
        # detections of each pass that no significant valley separates (PASS_SPLIT_SIGMA).
        joins["FINE+FINERES, core 5, merged"] = ([t["BEST"], t["FINEres"]], dict(core_scales=[0, 5.0], merge_first=True))
        rows["FINE, split test"] = (t["BEST_split"], None)
        joins["FINE+FINERES, core 5, merged, split test"] = (
            [t["BEST_split"], t["FINEres_split"]], dict(core_scales=[0, 5.0], merge_first=True))
        joins["FINE+FINERES, core 5, merged, split test, confirmed (example/crowded)"] = (
            [t["BEST_confirmed"], t["FINEres_split"]], dict(core_scales=[0, 5.0], merge_first=True))
        for name, (tables, options) in joins.items():
            table = join_passes(tables, 1.0, merge_radius=MERGE_RADIUS, **options)
            # HOTRES finds first-pass objects: it counts as the first pass for the cross-pass duplicates.
            rows[name] = (table, np.where(table["PASS"] == len(tables), 2, 1))
        return rows

    seed_sets = [_seeds(args.seeds)] + ([_seeds(args.held_out)] if args.held_out else [])
    pools = []
    for seeds in seed_sets:
        pool = {}
        for seed in seeds:
            tables, truth, centre = catalogues(seed)
            for name, (table, passes) in variants(tables).items():
                s = crowded.cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, centre, scale,
                                           RADIUS_ARCSEC, passes=passes)
                p = pool.setdefault(name, dict.fromkeys(("found", "whole") + SCORE_KEYS, 0.0))
                p["found"] += s["background_found"] * s["n_background"]
                p["whole"] += s["members_whole"] * s["n_members"]
                for key in SCORE_KEYS:
                    p[key] += s.get(key, 0)
                if args.light and name in LIGHT_ROWS:
                    sim = work / f"seed{seed}"
                    objects = truth[truth["cluster_role"] != ROLE_ICL]
                    held = crowded.light_owners(objects, table["X_IMAGE"], table["Y_IMAGE"], table["FLUX_AUTO"],
                                                np.maximum(np.asarray(table["FLUX_RADIUS"], float), 2.0),
                                                WCS(fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits")),
                                                TruePSF(sim).tiles["244.252"], params)
                    counts = crowded.detections_per_truth(held, len(objects))
                    member = np.asarray(objects["cluster_role"]) == ROLE_MEMBER
                    p["light_once"] = p.get("light_once", 0) + int(np.sum(counts[member] == 1))
                    p["light_pieces"] = p.get("light_pieces", 0) + int(np.sum(np.maximum(counts[member] - 1, 0)))
        pools.append(pool)
    field = "smooth members (no knots)" if args.smooth else f"preset {args.preset}"
    print(f"Hot objects' ring-median models subtracted (FLUX_RADIUS >= {args.model_radius:g} px); {field}")
    header = " | ".join(f"seeds {s[0]}-{s[-1]}: bg 30in  1x  none shred both dup pieces/bg" for s in seed_sets)
    print(f"{'passes':62s} | {header}")
    for name in pools[0]:
        cells = []
        for pool in pools:
            p = pool[name]
            both = f"{p['duplicated_across_passes']:4.0f}" if "alone" not in name and "single" not in name else "   -"
            cells.append(f"{' ' * 9}{p['found'] / p['n_background']:.3f} {p['whole'] / p['n_members']:.3f} "
                         f"{p['members_missed']:4.0f} {p['members_shredded']:5.0f} {both} {p['duplicated_truth']:3.0f} "
                         f"{p['member_pieces'] / max(p['found'], 1):9.3f}")
        print(f"{name:62s} | " + " | ".join(cells))
    print("(bg 30in: background galaxies within 30 arcsec found; 1x: members detected exactly once; none: members "
          "with no detection; shred: with more than one; both: truth objects detected by both passes; dup: truth "
          "objects with two or more detections; pieces/bg: detections of members beyond their first per background "
          "galaxy found, within the whole tile)")
    if args.light:
        print("Counted by light (a detection holds a member's light when the member has half the truth light in its "
              "FLUX_RADIUS circle, a quarter of its FLUX_AUTO, and no rival as much): members detected exactly once; "
              "member pieces (detections beyond a member's first) per background galaxy found within 30 arcsec")
        for name in LIGHT_ROWS:
            print(f"{name:62s} | " + " | ".join(f"{pool[name]['light_once'] / pool[name]['n_members']:.3f} "
                                                 f"{pool[name]['light_pieces'] / max(pool[name]['found'], 1):.3f}"
                                                 for pool in pools))
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
