"""Shear calibration of the whole chain: a paired campaign, its m, c, CPU hours and figure of merit.

Runs (or continues: finished seeds are kept) ``shapepipe_calibrate`` on N
seeds of a preset, each seed the survey simulated with +g and -g and the
whole GOLD chain run on both, then prints the campaign's table: per-seed
and pooled m1, m2, c1, c2, the measured CPU hours, the figure of merit
``sigma_m * sqrt(CPU hours)`` (goal <= 0.006) and the CPU hours projected for
``--target-sigma-m``.

Usage::

    python benchmarks/bench_calibration.py --seeds 1-20 -j 2             # calib preset, SMP
    python benchmarks/bench_calibration.py --preset demo --seeds 1-3 --campaign /tmp/demo_campaign
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="calib", help="simulation preset (default calib)")
    parser.add_argument("--seeds", default="1-20", help="seeds (default 1-20)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="seeds at once (default 2)")
    parser.add_argument("--campaign", type=Path, default=None,
                        help="campaign folder (default output/calibration_<preset> under the working directory)")
    parser.add_argument("--target-sigma-m", type=float, default=1e-3)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="preset override")
    args = parser.parse_args(argv)
    campaign = args.campaign or Path("output") / f"calibration_{args.preset}"
    command = [sys.executable, "-m", "shapepipe_modules.calibrate.cli", "-o", str(campaign), "--preset", args.preset,
               "--seeds", args.seeds, "-j", str(args.workers), "--target-sigma-m", str(args.target_sigma_m),
               "--config-dir", str(HERE.parent / "example" / "GOLD")]
    for item in args.set:
        command += ["--set", item]
    status = subprocess.run(command).returncode
    record_path = campaign / "results" / "calibration.json"
    if not record_path.is_file():
        print("no merged result", file=sys.stderr)
        return 1
    record = json.loads(record_path.read_text())
    print()
    print(f"| preset | seeds | selected pairs | m1 | m2 | c1 | c2 | CPU h | sigma_m | sigma_m sqrt(CPU h) | "
          f"CPU h for sigma_m = {record['target_sigma_m']:g} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    m, e, c, ce = record["m"], record["m_err"], record["c"], record["c_err"]
    print(f"| {record['preset']} | {record['n_seeds']} | {record['n_selected']} | {m[0]:+.4f} +- {e[0]:.4f} | "
          f"{m[1]:+.4f} +- {e[1]:.4f} | {c[0]:+.5f} +- {ce[0]:.5f} | {c[1]:+.5f} +- {ce[1]:.5f} | "
          f"{record['cpu_hours']:.3f} | {record['sigma_m']:.4f} | {record['figure_of_merit']:.4f} | "
          f"{record['projected_cpu_hours']:.0f} |")
    return status


if __name__ == "__main__":
    sys.exit(main())
