"""Single detection passes against the dual pass on the simulated cluster (prints a table; docs/crowded.md).

Usage: ``python benchmarks/bench_crowded_sweep.py [--seeds 1-10] [--workdir DIR]``

A single SExtractor configuration trades the completeness of the faint
background galaxies behind a cluster core against the integrity of the bright
members: a low threshold with fine deblending finds the galaxies and shreds
the members, a high threshold on a smoothed image keeps the members whole and
finds no galaxy. This sweep runs single passes over a grid of detection
threshold, deblending contrast and filter (sep engine, the tile of the
``cluster_knotty`` preset, ``--preset``), and the HOT+COLD dual pass of ``bench_crowded.py``, and
prints for each, pooled over the seeds and against the truth, the completeness
of the background galaxies within 30 arcsec of the centre and the fraction of
members detected exactly once. The last lines name, for several levels of
member integrity, the single pass that finds the most background galaxies
while keeping at least that fraction of members whole: the "best single
pass" at that level, to set beside the dual pass.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crowded import COLD, HOT, NEIGHBOUR_RADIUS, RADIUS_ARCSEC, _run, _seeds  # noqa: E402

THRESHOLDS = (1.0, 1.2, 2.0, 3.0, 5.0)
MINCONTS = (0.0005, 0.005, 0.05)
FILTERS = ("default.conv", "gauss_4.0_9x9.conv", "gauss_6.0_13x13.conv")
BACK_SIZES = (12, 24)
# Later (cold) passes of the dual pass tried beside bench_crowded's COLD: a finer background mesh follows the
# members' wings and the intracluster light, so that faint galaxies on them separate from the smooth light.
COLD_VARIANTS = {"COLD": COLD,
                 "COLD b12 t1.0": "BACK_TYPE=AUTO BACK_SIZE=12 DETECT_THRESH=1.0 DETECT_MINAREA=5 DEBLEND_MINCONT=0.0005",
                 "COLD b12 t1.2": "BACK_TYPE=AUTO BACK_SIZE=12 DETECT_THRESH=1.2 DETECT_MINAREA=5 DEBLEND_MINCONT=0.0005",
                 "COLD b16 t1.0": "BACK_TYPE=AUTO BACK_SIZE=16 DETECT_THRESH=1.0 DETECT_MINAREA=5 DEBLEND_MINCONT=0.0005"}
INTEGRITY_LEVELS = (0.90, 0.93, 0.95)
CONTAMINATION_LEVELS = (0.03, 0.1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--preset", default="cluster_knotty", help="cluster_knotty (members with knots), or cluster")
    parser.add_argument("--workdir", default=None, help="simulations are kept and reused here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from astropy.io import fits

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
    from shapepipe_modules.simulate import load_truth, resolve_parameters, simulate
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate import crowded

    scale = resolve_parameters(args.preset)["pixel_scale"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_crowded_sweep_"))
    configs = {}
    for back, thresh, mincont, kernel in itertools.product(BACK_SIZES, THRESHOLDS, MINCONTS, FILTERS):
        settings = (f"BACK_TYPE=AUTO BACK_SIZE={back} DETECT_THRESH={thresh} DETECT_MINAREA=5 "
                    f"DEBLEND_MINCONT={mincont} FILTER_NAME={kernel}")
        configs[f"single b={back} t={thresh} c={mincont} {kernel.split('_')[0].split('.')[0]}"
                f"{'' if kernel == 'default.conv' else kernel.split('_')[1]}"] = dict(PASSES=["ONE"],
                                                                                    PASS_SETTINGS=[settings])
    configs["HOT alone"] = dict(PASSES=["HOT"], PASS_SETTINGS=[HOT])
    for name, cold in COLD_VARIANTS.items():
        configs[f"{name} alone"] = dict(PASSES=["COLD"], PASS_SETTINGS=[cold])
        configs[f"HOT+{name} dual"] = dict(PASSES=["HOT", "COLD"], PASS_SETTINGS=[HOT, cold],
                                           PASS_NEIGHBOUR_RADIUS=NEIGHBOUR_RADIUS)
    # found, n_background, members once, n_members, extra detections of members, truth objects of two passes
    totals = {name: np.zeros(6) for name in configs}
    for seed in _seeds(args.seeds):
        sim = work / f"seed{seed}"
        if not (sim / "simulation.json").exists():
            simulate(args.preset, sim, seed=seed, n_workers=1)
        tile = sim / "tiles" / "CFIS.244.252.r.fits"
        weight_path = sim / "weight.fits"
        if not weight_path.exists():
            weight = fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1)
            fits.PrimaryHDU(weight, header=fits.getheader(tile)).writeto(weight_path, overwrite=True)
        truth = load_truth(sim, tile="244.252")
        centre = truth[truth["cluster_role"] == ROLE_ICL][0]
        for index, (name, options) in enumerate(configs.items()):
            out = sim / "sweep" / name.replace(" ", "_").replace("=", "")
            catalogue = out / "sexcat-244-252.fits"
            if not catalogue.exists():
                _run(sextractor, [tile, weight_path], out, "-244-252", ENGINE="sep",
                     DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=False, BKG_RESIDUAL=False,
                     **options)
            table, _ = read_ldac(catalogue)
            scores = crowded.cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, (centre["x"], centre["y"]),
                                            scale, RADIUS_ARCSEC, passes=table["PASS"])
            totals[name] += [scores["background_found"] * scores["n_background"], scores["n_background"],
                             scores["members_whole"] * scores["n_members"], scores["n_members"],
                             scores["member_pieces"], scores["duplicated_across_passes"]]
        print(f"seed {seed} done", file=sys.stderr)

    print(f"\nBackground galaxies within {RADIUS_ARCSEC:.0f} arcsec found, members detected exactly once "
          f"(sep, seeds {args.seeds})")
    print(f"{'configuration':40s} {'background':>11s} {'members 1x':>11s} {'member pieces':>14s} "
          f"{'pieces/found':>13s} {'in 2 passes':>12s}")
    rows = {name: (t[0] / t[1], t[2] / t[3]) for name, t in totals.items()}
    for name, t in totals.items():
        print(f"{name:40s} {t[0] / t[1]:11.3f} {t[2] / t[3]:11.3f} {int(t[4]):14d} {t[4] / max(t[0], 1):13.3f} "
              f"{int(t[5]):12d}")
    print("(member pieces: detections of members beyond their first, i.e. pieces of shredded members, which enter "
          "a background sample as unsheared objects; pieces/found: per background galaxy found)")
    single = {name: value for name, value in rows.items() if not name.endswith("dual")}
    for dual in (name for name in rows if name.endswith("dual")):
        dual_complete, dual_whole = rows[dual]
        print(f"\nBest single pass at the member integrity of {dual} (background {dual_complete:.3f}, "
              f"members 1x {dual_whole:.3f})")
        for level in INTEGRITY_LEVELS + (dual_whole,):
            eligible = {name: v for name, v in single.items() if v[1] >= level}
            if not eligible:
                print(f"  members 1x >= {level:.3f}: no single pass")
                continue
            best = max(eligible, key=lambda name: eligible[name][0])
            print(f"  members 1x >= {level:.3f}: {best} (background {eligible[best][0]:.3f}, members 1x "
                  f"{eligible[best][1]:.3f})")
    # The same, at equal contamination of the background sample by pieces of members (what biases a
    # tangential shear profile low: unsheared objects among the sources).
    contamination = {name: t[4] / max(t[0], 1) for name, t in totals.items()}
    for level in CONTAMINATION_LEVELS:
        eligible = {name: v for name, v in single.items() if contamination[name] <= level}
        duals = ", ".join(f"{name} {rows[name][0]:.3f} ({contamination[name]:.3f})" for name in rows
                          if name.endswith("dual") and contamination[name] <= level)
        if eligible:
            best = max(eligible, key=lambda name: eligible[name][0])
            print(f"\nMember pieces per background galaxy found <= {level}: best single pass {best} (background "
                  f"{eligible[best][0]:.3f}, pieces/found {contamination[best]:.3f}, members 1x {eligible[best][1]:.3f})"
                  f"; dual passes: {duals or 'none'}")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
