"""Which duplicated truth objects are the noise's: the cluster tile in several noise realisations (docs/crowded.md).

Usage: ``python benchmarks/bench_crowded_realisations.py [--seeds 1-30] [--realisations 0-3] [--engine sep]
[--workdir DIR]``

Each seed of the ``cluster`` preset is simulated once per noise realisation
(``noise_realisation``: the same scene, truth, PSF and weights; every noise
stream drawn anew) and its tile extracted by the sextractor module with
example/crowded's passes (``bench_crowded.FINE_DUAL``) and with FINE, the
best single pass, alone (its close detections merged, ``PASS_MERGE_RADIUS``
with ``PASS_MERGE_FIRST``). Printed, against the truth
(:mod:`shapepipe_modules.validate.crowded`):

1. per realisation: background galaxies within 30 arcsec found, members
   detected exactly once, truth objects with two or more detections (the
   nearest-object matcher; and one to one first, the detections left over
   going to the nearest object: ``assign_detections(one_to_one=True)``),
   the truth objects whose light two or more of those detections hold
   (``crowded.duplicated_by_light``: at least 10 % and 5 % of its flux
   within each detection's FLUX_RADIUS circle, the object having the most
   light there), truth objects detected by both passes, and the false
   detections per tile (no truth object within the matcher's reach), whose
   S/N is printed beside that of the extra detections: a false detection
   that lands within the reach of a detected object is counted as its
   second detection;
2. how often each duplicated truth object is duplicated: in exactly 1, 2,
   ... of the realisations. A duplicate the noise makes (a noise peak on a
   galaxy's wing, a split its noise opens) lands on other objects in other
   realisations; one the method makes (a member's wing cut the same way)
   recurs;
3. the extra detections by kind (the member's extra detection by pass and
   size, a galaxy's second detection by the passes of its two detections
   and their separation, thin detections of spikes and trails), and the
   objects duplicated in more than one realisation, one line each.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crowded import FINE, FINE_DUAL, MERGE_RADIUS, RADIUS_ARCSEC, _parse_set, _run, _seeds  # noqa: E402


def _digest(options):
    """Eight hex digits naming a dict of module options."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _kind(table, main, extra, role):
    """A short name for the kind of an extra detection (``extra``) of a truth object detected by ``main``."""
    fr = float(table["FLUX_RADIUS"][extra])
    thin = table["B_IMAGE"][extra] < 1.2 and table["A_IMAGE"][extra] > 5 * table["B_IMAGE"][extra]
    if role == "member":
        return f"member, extra detection from pass {table['PASS'][extra]}, FLUX_RADIUS {'>=' if fr >= 4 else '<'} 4"
    if thin:
        return "thin (a spike or a trail)"
    separation = np.hypot(table["X_IMAGE"][extra] - table["X_IMAGE"][main],
                          table["Y_IMAGE"][extra] - table["Y_IMAGE"][main])
    return (f"{role}, passes {table['PASS'][main]}+{table['PASS'][extra]}, "
            f"{'< 12' if separation < 12 else '>= 12'} px apart")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-30")
    parser.add_argument("--realisations", default="0-3", help="noise realisations (0: the seed's own noise)")
    parser.add_argument("--engine", default="sep", choices=("sep", "sextractor"))
    parser.add_argument("--workdir", default=None, help="simulations and catalogues are kept and reused here")
    parser.add_argument("--set", type=_parse_set, action="append", default=[], metavar="NAME=VALUE",
                        help="simulation parameter override for the simulations it makes (as shapepipe_simulate "
                             "--set), e.g. nfw_lensed_positions=False")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from astropy.io import fits
    from astropy.wcs import WCS

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
    from shapepipe_modules.simulate import TruePSF, load_truth, resolve_parameters, simulate
    from shapepipe_modules.simulate.cluster import ROLE_ICL, ROLE_MEMBER
    from shapepipe_modules.validate import crowded

    params = resolve_parameters("cluster")
    scale = params["pixel_scale"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_crowded_realisations_"))
    realisations = _seeds(args.realisations)
    configs = {"FINE+FINERES": FINE_DUAL,
               "FINE": dict(PASSES=["FINE"], PASS_SETTINGS=[FINE], PASS_MERGE_RADIUS=MERGE_RADIUS,
                            PASS_MERGE_FIRST=True)}
    pools = {(name, r): collections.Counter() for name in configs for r in realisations}
    duplicated = {name: collections.defaultdict(list) for name in configs}
    kinds = collections.Counter()
    false_snr, extra_snr = collections.defaultdict(list), collections.defaultdict(list)
    for seed in _seeds(args.seeds):
        for r in realisations:
            sim = work / f"seed{seed}" / f"noise{r}"
            if not (sim / "simulation.json").exists():
                simulate("cluster", sim, seed=seed, n_workers=1, noise_realisation=r, **dict(args.set))
            tile = sim / "tiles" / "CFIS.244.252.r.fits"
            header = fits.getheader(tile)
            if not (sim / "weight.fits").exists():
                weight = fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1)
                fits.PrimaryHDU(weight, header=header).writeto(sim / "weight.fits", overwrite=True)
                fits.PrimaryHDU(np.zeros(weight.shape, np.int16), header=header).writeto(sim / "flag.fits",
                                                                                           overwrite=True)
            inputs = [tile, sim / "weight.fits"] + ([sim / "flag.fits"] if args.engine == "sextractor" else [])
            truth = load_truth(sim, tile="244.252")
            icl = truth[truth["cluster_role"] == ROLE_ICL][0]
            centre = (float(icl["x"]), float(icl["y"]))
            objects = truth[np.asarray(truth["cluster_role"]) != ROLE_ICL]
            wcs, psf_model = WCS(header), TruePSF(sim).tiles["244.252"]
            for name, options in configs.items():
                # Named by its options too: a catalogue kept from other options is never read as this one's.
                out = sim / f"sex_{args.engine}_{name}_{_digest(options)}"
                if not (out / "sexcat-244-252.fits").exists():
                    _run(sextractor, inputs, out, "-244-252", ENGINE=args.engine,
                         DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"), FLAG_IMAGE=args.engine == "sextractor",
                         BKG_RESIDUAL=False, **options)
                table = read_ldac(out / "sexcat-244-252.fits")[0]
                s = crowded.cluster_scores(table["X_IMAGE"], table["Y_IMAGE"], truth, centre, scale, RADIUS_ARCSEC,
                                           passes=table["PASS"] if "PASS" in table.colnames else None)
                pool = pools[(name, r)]
                pool["found"] += s["background_found"] * s["n_background"]
                pool["background"] += s["n_background"]
                pool["once"] += s["members_whole"] * s["n_members"]
                pool["members"] += s["n_members"]
                pool["dup"] += s["duplicated_truth"]
                pool["both"] += s.get("duplicated_across_passes", 0)
                owner = crowded.assign_detections(table["X_IMAGE"], table["Y_IMAGE"], objects, scale, one_to_one=True)
                pool["dup_one_to_one"] += int(np.sum(crowded.detections_per_truth(owner, len(objects)) > 1))
                # Detections with no truth object within the matcher's reach: the catalogue's false detections.
                snr = np.asarray(table["FLUX_AUTO"], float) / np.asarray(table["FLUXERR_AUTO"], float)
                pool["false"] += int(np.sum(owner < 0))
                pool["tiles"] += 1
                false_snr[name].extend(snr[owner < 0])
                radius = np.maximum(np.nan_to_num(np.asarray(table["FLUX_RADIUS"], float)), 2.0)
                for percent in (10, 5):
                    pool[f"light{percent}"] += crowded.duplicated_by_light(
                        owner, objects, table["X_IMAGE"], table["Y_IMAGE"], radius, wcs, psf_model, params,
                        min_own=percent / 100.0).size
                owner = crowded.assign_detections(table["X_IMAGE"], table["Y_IMAGE"], objects, scale)
                counts = crowded.detections_per_truth(owner, len(objects))
                for k in np.flatnonzero(counts > 1):
                    dets = np.flatnonzero(owner == k)
                    distance = np.hypot(table["X_IMAGE"][dets] - objects["x"][k], table["Y_IMAGE"][dets] - objects["y"][k])
                    main_det = dets[np.argmin(distance)]
                    extra_snr[name].extend(snr[dets[dets != main_det]])
                    role = ("member" if objects["cluster_role"][k] == ROLE_MEMBER
                            else "star" if objects["is_star"][k] else "galaxy")
                    extras = [d for d in dets if d != main_det]
                    if name == "FINE+FINERES":
                        for d in extras:
                            kinds[_kind(table, main_det, d, role)] += 1
                    d = extras[0]
                    duplicated[name][(seed, int(k))].append(
                        (r, role, float(objects["mag"][k]), int(table["PASS"][d]) if "PASS" in table.colnames else 1,
                         float(table["FLUX_RADIUS"][d]), float(table["FLUX_AUTO"][d] / table["FLUXERR_AUTO"][d]),
                         float(distance.max() / ((objects["hlr"][k] + crowded.SIZE_FLOOR_ARCSEC) / scale))))

    print(f"The cluster tile in {len(realisations)} noise realisations ({', '.join(map(str, realisations))}), "
          f"seeds {args.seeds}, engine {args.engine}")
    print(f"{'catalogue':14s} {'noise':>5s} {'bg 30in':>8s} {'members 1x':>10s} {'dup':>4s} {'1to1':>5s} "
          f"{'light 10%':>9s} {'light 5%':>8s} {'both':>5s} {'false/tile':>10s}")
    for (name, r), p in pools.items():
        print(f"{name:14s} {r:5d} {p['found'] / p['background']:8.3f} {p['once'] / p['members']:10.3f} "
              f"{p['dup']:4d} {p['dup_one_to_one']:5d} {p['light10']:9d} {p['light5']:8d} "
              f"{p['both'] if name != 'FINE' else '-':>5} {p['false'] / p['tiles']:10.1f}")
    print("(bg 30in: background galaxies within 30 arcsec found; members 1x: detected exactly once; dup: truth objects "
          "with two or more detections, nearest-object matcher; 1to1: matched one to one first; light 10%, 5%: of "
          "these, the objects whose light two or more detections hold, each at least that share of its flux; both: "
          "detected by both passes; false/tile: detections with no truth object within the matcher's reach, "
          "per tile)")
    for name in configs:
        quartiles = {kind: np.percentile(values[name], [25, 50, 75]) if values[name] else [np.nan] * 3
                     for kind, values in (("false", false_snr), ("extra", extra_snr))}
        print(f"{name}: S/N (FLUX_AUTO / FLUXERR_AUTO) quartiles of the false detections "
              f"{' '.join(f'{v:.1f}' for v in quartiles['false'])} ({len(false_snr[name])}), of the extra "
              f"detections of the objects with two or more {' '.join(f'{v:.1f}' for v in quartiles['extra'])} "
              f"({len(extra_snr[name])})")
    for name in configs:
        recurrence = collections.Counter(len({row[0] for row in rows}) for rows in duplicated[name].values())
        instances = sum(len(rows) for rows in duplicated[name].values())
        once = recurrence.get(1, 0)
        print(f"{name}: {len(duplicated[name])} truth objects duplicated in at least one realisation "
              f"({instances} times); in exactly 1..{len(realisations)} realisations: "
              f"{[recurrence.get(n, 0) for n in range(1, len(realisations) + 1)]}; "
              f"{once / max(instances, 1):.2f} of the duplicates are of objects duplicated in one realisation only")
    print("FINE+FINERES, the extra detections by kind (all realisations):")
    for kind, n in kinds.most_common():
        print(f"{n:5d}  {kind}")
    print("FINE+FINERES, objects duplicated in more than one realisation (realisation: pass, FLUX_RADIUS, S/N and "
          "distance in matcher sizes of the farthest detection):")
    for (seed, k), rows in sorted(duplicated["FINE+FINERES"].items()):
        if len({row[0] for row in rows}) > 1:
            detail = "; ".join(f"{row[0]}: pass {row[3]}, {row[4]:.1f} px, S/N {row[5]:.1f}, {row[6]:.2f}"
                               for row in rows)
            print(f"  seed {seed:3d} truth {k:5d} {rows[0][1]:7s} {rows[0][2]:5.2f} mag | {detail}")
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
