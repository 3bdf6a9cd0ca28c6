"""Difference of m and c between two calibration campaigns of the same seeds (two chain configurations).

Usage::

    python benchmarks/compare_calibration.py CAMPAIGN_A CAMPAIGN_B [--n-boot 500]

Both campaigns (``shapepipe_calibrate`` folders) must hold the same preset
and seeds: the simulations are then the same, and the difference ``B - A``
of the paired estimate (docs/calibration.md) is bootstrapped with the same
galaxies drawn for both (ring pairs whole, within each seed), so the
noise common to both cancels. Printed: m and c of each, their difference
with its error, and the number of galaxies selected in each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(campaign: Path, seeds=None):
    """Pooled pair table of a campaign's seeds, with a (seed, galaxy) key and a (seed, unit) resampling key."""
    from shapepipe_modules.calibrate.campaign import find_seed_results
    from shapepipe_modules.validate.paired import concatenate_pairs, read_pairs

    results = find_seed_results(sorted((campaign / "output").glob("*/calibration_seed/output")))
    if seeds is not None:
        results = {s: v for s, v in results.items() if s in seeds}
    tables, galaxy, unit = [], [], []
    for seed, (_, pairs_path) in sorted(results.items()):
        table = read_pairs(pairs_path)
        tables.append(table)
        key = np.asarray(table["key"], np.int64)
        ring = np.asarray(table["ring"], np.int64)
        galaxy.append([(seed, k) for k in key])
        # A ring pair is one resampling unit (as the campaign's bootstrap); -k keeps galaxy keys apart from ring keys.
        unit.append([(seed, r if r >= 0 else -k - 1) for r, k in zip(ring, key)])
    pooled = concatenate_pairs(tables)
    record = json.loads((campaign / "campaign.json").read_text())
    return pooled, sum(galaxy, []), sum(unit, []), sorted(results), record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign_a", type=Path)
    parser.add_argument("campaign_b", type=Path)
    parser.add_argument("--n-boot", type=int, default=500)
    args = parser.parse_args(argv)

    from shapepipe_modules.validate.paired import PairTerms
    from shapepipe_modules.validate.shear import Selection

    a = load(args.campaign_a)
    b = load(args.campaign_b, set(a[3]))
    if a[3] != b[3]:
        raise SystemExit(f"the campaigns hold different seeds: {a[3]} and {b[3]}")
    if a[4].get("parameters") != b[4].get("parameters"):
        raise SystemExit("the campaigns were simulated with different parameters")
    select = Selection()
    terms = [PairTerms(d[0], select, ring=True) for d in (a, b)]
    units = sorted(set(a[2]) | set(b[2]))
    index = {u: i for i, u in enumerate(units)}
    unit_rows = [np.array([index[u] for u in d[2]]) for d in (a, b)]
    unit_seed = np.array([u[0] for u in units])
    best = [t.estimate() for t in terms]
    rng = np.random.default_rng(1)
    draws = []
    for _ in range(args.n_boot):
        counts = np.zeros(len(units))
        for seed in a[3]:
            members = np.flatnonzero(unit_seed == seed)
            counts += np.bincount(rng.choice(members, members.size), minlength=len(units))
        one = [t.estimate(counts[rows]) for t, rows in zip(terms, unit_rows)]
        draws.append(np.concatenate([one[0]["m"], one[0]["c"], one[1]["m"], one[1]["c"],
                                     one[1]["m"] - one[0]["m"], one[1]["c"] - one[0]["c"]]))
    error = 0.5 * np.diff(np.nanpercentile(np.array(draws), [15.87, 84.13], axis=0), axis=0)[0]
    values = np.concatenate([best[0]["m"], best[0]["c"], best[1]["m"], best[1]["c"],
                             best[1]["m"] - best[0]["m"], best[1]["c"] - best[0]["c"]])
    print(f"A = {args.campaign_a}\nB = {args.campaign_b}\nseeds {a[3]}, {args.n_boot} joint bootstrap draws "
          "(ring pairs whole, within seeds); selected pairs A "
          f"{best[0]['n']}, B {best[1]['n']}")
    print(f"{'':>6s} {'m1':>18s} {'m2':>18s} {'c1':>18s} {'c2':>18s}")
    for label, offset in (("A", 0), ("B", 4), ("B - A", 8)):
        print(f"{label:>6s} " + " ".join(f"{values[offset + k]:+.4f} +- {error[offset + k]:.4f}" for k in range(4)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
