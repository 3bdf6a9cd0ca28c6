"""Difference of the cluster tangential shear between two configurations on the same simulations.

Usage::

    python benchmarks/compare_cluster_shear.py WORKDIR_A WORKDIR_B [--seeds 1-5] [--n-boot 500]

Both work folders are ``bench_cluster_shear.py`` folders whose simulations
are the same (the same seeds; copy the ``seedN`` folders to reuse them).
The paired profile (``(g_t(+) - g_t(-)) / 2``, as in the benchmark) of
each configuration and their difference ``B - A`` are printed per radial
bin and for the amplitude, with errors from one bootstrap that draws the
same galaxies (truth objects, within each seed) for both configurations:
the shape and pixel noise common to both cancel in the difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster_shear import EDGES, _seeds, final_catalogue  # noqa: E402


def load(work: Path, seeds):
    """Pooled background galaxies of the + and - runs of every seed of one work folder."""
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.cluster import cluster_centre
    from shapepipe_modules.validate import crowded
    from shapepipe_modules.validate.shear import read_final_catalogue

    parts = {"tables": [], "dx": [], "dy": [], "g_t_true": [], "group": [], "sign": [], "unit": []}
    for seed in seeds:
        for member, sign in (("plus", 1), ("minus", -1)):
            sim, run_root = work / f"seed{seed}" / member, work / f"chain{seed}" / member
            catalogue = final_catalogue(run_root)
            if catalogue is None:
                raise SystemExit(f"{run_root}: no final catalogue (run bench_cluster_shear.py first)")
            params = json.loads((sim / "simulation.json").read_text())["parameters"]
            data = crowded.background_shapes(read_final_catalogue(catalogue), load_truth(sim, tile="244.252"),
                                             cluster_centre(params))
            for key in ("tables", "dx", "dy", "g_t_true"):
                parts[key].append(data[key])
            parts["group"].append(np.full(len(data["dx"]), seed))
            parts["sign"].append(np.full(len(data["dx"]), sign))
            parts["unit"].append(data["truth_index"])
    tables = {branch: {key: np.concatenate([t[branch][key] for t in parts["tables"]])
                       for key in parts["tables"][0][branch]} for branch in parts["tables"][0]}
    rest = {key: np.concatenate(parts[key]) for key in ("dx", "dy", "g_t_true", "group", "sign", "unit")}
    return tables, rest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_a", type=Path)
    parser.add_argument("work_b", type=Path)
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--n-boot", type=int, default=500)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from shapepipe_modules.validate.crowded import _metacal_profile
    from shapepipe_modules.validate.shear import STEP, Selection, _subset

    seeds = _seeds(args.seeds)
    data = [load(work, seeds) for work in (args.work_a, args.work_b)]
    edges = np.array(EDGES)
    select = Selection()

    def profile(tables, rest, rows=None):
        if rows is not None:
            tables = _subset(tables, rows)
            rest = {key: value[rows] for key, value in rest.items()}
        return _metacal_profile(tables, rest["dx"], rest["dy"], rest["g_t_true"], edges, select, STEP, rest["sign"])

    best = [profile(*d) for d in data]
    # Units: (seed, truth object); rows of each configuration per unit.
    keys = [d[1]["group"].astype(np.int64) * 10**7 + d[1]["unit"].astype(np.int64) for d in data]
    units = np.unique(np.concatenate(keys))
    unit_seed = units // 10**7
    rows_of = []
    for key in keys:
        order = np.argsort(key, kind="stable")
        lo = np.searchsorted(key[order], units, side="left")
        hi = np.searchsorted(key[order], units, side="right")
        rows_of.append([order[a:b] for a, b in zip(lo, hi)])
    rng = np.random.default_rng(1)
    draws = {"A": [], "g_t": []}
    for _ in range(args.n_boot):
        drawn = np.concatenate([rng.choice(np.flatnonzero(unit_seed == s), np.sum(unit_seed == s)) for s in seeds])
        try:
            one = [profile(*d, np.concatenate([rows[k] for k in drawn])) for d, rows in zip(data, rows_of)]
        except (ValueError, np.linalg.LinAlgError):
            continue
        draws["A"].append([o["A"] for o in one] + [one[1]["A"] - one[0]["A"]])
        draws["g_t"].append(np.stack([one[0]["g_t"], one[1]["g_t"], one[1]["g_t"] - one[0]["g_t"]]))
    spread = {key: 0.5 * np.diff(np.nanpercentile(np.array(v), [15.87, 84.13], axis=0), axis=0)[0]
              for key, v in draws.items()}
    print(f"A = {args.work_a}\nB = {args.work_b}\nseeds {args.seeds}, paired (g_t(+) - g_t(-)) / 2, "
          f"{len(draws['A'])} joint bootstrap draws of the truth galaxies within seeds")
    print(f"{'r (arcsec)':>12s} {'n A':>5s} {'n B':>5s} {'g_t A':>15s} {'g_t B':>15s} {'B - A':>16s} {'input':>7s}")
    for i in range(len(edges) - 1):
        print(f"{edges[i]:5.0f}-{edges[i + 1]:<5.0f} {best[0]['n'][i]:5d} {best[1]['n'][i]:5d} "
              f"{best[0]['g_t'][i]:7.4f} +- {spread['g_t'][0][i]:.4f} {best[1]['g_t'][i]:7.4f} +- {spread['g_t'][1][i]:.4f} "
              f"{best[1]['g_t'][i] - best[0]['g_t'][i]:+8.4f} +- {spread['g_t'][2][i]:.4f} {best[0]['true'][i]:7.4f}")
    print(f"amplitude: A {best[0]['A']:.3f} +- {spread['A'][0]:.3f} ({best[0]['n'].sum()}), "
          f"B {best[1]['A']:.3f} +- {spread['A'][1]:.3f} ({best[1]['n'].sum()}), "
          f"B - A {best[1]['A'] - best[0]['A']:+.3f} +- {spread['A'][2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
