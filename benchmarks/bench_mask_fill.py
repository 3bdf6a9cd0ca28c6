"""Shear bias from masked pixels near a galaxy, with each ``MASK_FILL`` of the metacal engine.

The stamps of ``bench_metacal.py`` (galaxy quadruples: {0, 90 deg} x {+g,
-g}, the same noise) get, in every epoch, one masked column (a bad column)
at a random offset of -10..+10 pixels from the stamp centre; the same
column in the four members, as a bad column stays on the pixel grid when
the sky rotates. Each object is measured three times on the same pixels:
without the mask, with masked pixels filled with noise only, and with the
fitted Gaussian plus noise (the default). m and c with jackknife errors.

Usage::

    python benchmarks/bench_mask_fill.py --n-quads 1500 --noise 1.5 --seed 7
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_metacal  # noqa: E402

from shapepipe_modules.ngmix import engine  # noqa: E402
from shapepipe_modules.ngmix.metacal import BRANCHES  # noqa: E402


def mask_columns(stamps, n_epoch, rng, half_width=10, kind="column"):
    """Flag one column (``kind="column"``) or row per epoch, the same in every member of the quadruple."""
    centre = bench_metacal.STAMP // 2
    lines = rng.integers(centre - half_width, centre + half_width + 1, n_epoch)
    for raws in stamps.values():
        for raw, line in zip(raws, lines):
            if kind == "column":
                raw.flag[:, line] = 1
            else:
                raw.flag[line, :] = 1


def run(n_quads, seed, noise, kind="column"):
    """m, c per case: 'unmasked', 'noise' fill, 'model' fill."""
    rng = np.random.default_rng(seed)
    mask_rng = np.random.default_rng(seed + 1)
    prior = engine.ShapePipePrior(cen_sigma=0.187)
    cases = {"unmasked": None, "noise": "noise", "model": "model"}
    results = {case: {key: [] for key in ((0, 1), (0, -1), (90, 1), (90, -1))} for case in cases}
    cpu = {case: 0.0 for case in cases}
    shears = []
    for index in range(n_quads):
        stamps, shear, n_epoch = bench_metacal.simulate_quad(rng, index, noise)
        unmasked = {key: [engine.RawEpoch(**{**raw.__dict__, "flag": raw.flag.copy()}) for raw in raws]
                    for key, raws in stamps.items()}
        mask_columns(stamps, n_epoch, mask_rng, kind=kind)
        for case, fill in cases.items():
            config = engine.EngineConfig(prior=prior, mask_fill=fill or "model")
            source = unmasked if fill is None else stamps
            for key, raws in source.items():
                object_id = 2 * index + (key[0] == 90)
                start = time.process_time()
                res = engine.measure_raw_object(raws, object_id, engine.sky_rng(seed, 244.0, 0.001 * object_id),
                                                config)
                cpu[case] += time.process_time() - start
                results[case][key].append(res)
        shears.append(shear)
    shears = np.array(shears)
    all_shears = np.concatenate([shears, shears])
    groups = np.concatenate([np.arange(n_quads), np.arange(n_quads)])
    out, functions = {}, {}
    for case in cases:
        tables = {}
        for sign in (1, -1):
            per_rot = {rot: engine.rows_to_tables(results[case][(rot, sign)]) for rot in (0, 90)}
            tables[sign] = {b: {k: np.concatenate([per_rot[0][b][k], per_rot[90][b][k]]) for k in per_rot[0][b]}
                            for b in BRANCHES}
        out[case] = bench_metacal.estimate_bias(tables[1], tables[-1], all_shears, groups)
        out[case]["cpu_s"] = cpu[case]
        functions[case] = bench_metacal.bias_function(tables[1], tables[-1], all_shears)
    # Differences from the unmasked measurement of the same objects, jackknifed together.
    for case in ("noise", "model"):
        both = functions[case][1] & functions["unmasked"][1]

        def difference(keep, case=case):
            return functions[case][0](keep & both) - functions["unmasked"][0](keep & both)

        values, errors = bench_metacal._jackknife(difference, groups)
        out[f"{case} - unmasked"] = {name: float(v) for name, v in zip(("m1", "m2", "c1", "c2"), values)}
        out[f"{case} - unmasked"].update({f"{name}_err": float(e) for name, e in zip(("m1", "m2", "c1", "c2"), errors)})
        out[f"{case} - unmasked"]["cpu_s"] = float("nan")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-quads", type=int, default=1500)
    parser.add_argument("--noise", type=float, default=1.5, help="pixel noise sigma (flux 600-2000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kind", choices=("column", "row"), default="column")
    args = parser.parse_args(argv)
    out = run(args.n_quads, args.seed, args.noise, args.kind)
    print(f"masked {args.kind} within 10 pixels of the centre in every epoch; {args.n_quads} quadruples, "
          f"noise {args.noise}, seed {args.seed}")
    print(f"{'case':>18} {'m1':>18} {'m2':>18} {'c1':>18} {'c2':>18} {'CPU s':>7}")
    for case, r in out.items():
        cells = [f"{r[k]:+.4f} +- {r[k + '_err']:.4f}" for k in ("m1", "m2", "c1", "c2")]
        print(f"{case:>18} " + " ".join(f"{c:>18}" for c in cells) + f" {r['cpu_s']:7.1f}")


if __name__ == "__main__":
    main()
