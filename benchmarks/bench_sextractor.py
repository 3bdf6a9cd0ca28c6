"""Benchmark: sep engine vs SExtractor binary on one CFIS-size CCD (2048 x 4612).

Usage: python benchmarks/bench_sextractor.py [--repeat N] [--objects N]

Each engine runs the sextractor module job in a fresh child process (after
one warm-up run, so numba's compiled cache is in place); wall time, CPU
time (user + system, including SExtractor itself) and peak resident memory
come from ``os.wait4`` on that child. Prints a table and the sep/binary
ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def run_job(engine: str, inputs: list[str], output: str) -> None:
    """Run one sextractor job (called in the child process)."""
    from shapepipe.job import Job
    from shapepipe_modules.sextractor.runner import OPTIONS, sextractor

    options = {o.name: o.default for o in OPTIONS}
    options["ENGINE"] = engine
    output_dir = Path(output)
    output_dir.mkdir(parents=True, exist_ok=True)
    job = Job(module="sextractor", module_run="sextractor", number="-0000000-0", inputs=[Path(p) for p in inputs],
              output_dir=output_dir, log_dir=output_dir, options=options,
              logger=logging.getLogger("bench"), run_dir=output_dir)
    summary = sextractor(job)
    print(summary["n_objects"])


def measure(engine, inputs, output):
    """Wall, CPU and peak RSS of one child process running the job."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", engine, output, *inputs],
                               stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    n_objects = int(process.stdout.read().strip().splitlines()[-1])
    if status != 0:
        raise RuntimeError(f"{engine} child failed with status {status}")
    # ru_maxrss is in kilobytes on Linux; it covers the child and its own children.
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "n": n_objects}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        engine, output, *inputs = args.child
        run_job(engine, inputs, output)
        return
    from test_sextractor_sim import make_ccd, write_ccd

    with tempfile.TemporaryDirectory() as directory:
        stars = args.objects // 4
        ccd = make_ccd(np.random.default_rng(2024), nx=2048, ny=4612, n_stars=stars,
                       n_galaxies=args.objects - stars)
        inputs = [str(p) for p in write_ccd(ccd, directory)]
        results = {}
        for engine in ("sep", "sextractor"):
            measure(engine, inputs, f"{directory}/warm_{engine}")
            runs = [measure(engine, inputs, f"{directory}/{engine}_{k}") for k in range(args.repeat)]
            results[engine] = {key: min(r[key] for r in runs) if key != "n" else runs[0][key] for key in runs[0]}
    print(f"CCD 2048 x 4612, {args.objects} simulated objects, best of {args.repeat} runs per engine")
    print(f"{'engine':12s} {'objects':>8s} {'wall [s]':>9s} {'CPU [s]':>8s} {'peak RSS [MB]':>14s}")
    for engine, r in results.items():
        print(f"{engine:12s} {r['n']:8d} {r['wall']:9.2f} {r['cpu']:8.2f} {r['rss_mb']:14.0f}")
    sep, sex = results["sep"], results["sextractor"]
    print(f"ratio sep/sextractor: wall {sep['wall'] / sex['wall']:.2f}, CPU {sep['cpu'] / sex['cpu']:.2f}, "
          f"memory {sep['rss_mb'] / sex['rss_mb']:.2f}")


if __name__ == "__main__":
    main()
