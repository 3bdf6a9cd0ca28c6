"""Time and peak memory of ``shapepipe_simulate`` for the tiny, demo and one cfis exposure.

Usage: ``python benchmarks/bench_simulate.py [--workers 2] [--only tiny demo cfis-exposure]``.
Each case runs the command line in a subprocess; the peak memory is the
largest sum of resident memory over the process tree, sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import psutil

CASES = {
    "tiny": ["--preset", "tiny"],
    "demo": ["--preset", "demo"],
    # One full-geometry exposure (40 CCDs of 2048x4612); a small tile so the exposure dominates.
    "cfis-exposure": ["--preset", "cfis", "--tiles", "244.252", "--set", "exposures_per_tile=1", "--set", "tile_size=1000"],
}


def run(arguments, workers):
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "shapepipe_modules.simulate.cli", "-o", out, "-j", str(workers), "--no-progress"] + arguments
        start = time.perf_counter()
        process = psutil.Popen(command, stdout=subprocess.DEVNULL)
        peak = 0
        while process.poll() is None:
            try:
                tree = [process] + process.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            raise RuntimeError(f"simulation failed: {' '.join(command)}")
        return elapsed, peak / 2**30


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args(argv)
    print(f"{'case':<15} {'workers':>7} {'time [s]':>9} {'peak [GiB]':>10}")
    for name in args.only:
        elapsed, peak = run(CASES[name], args.workers)
        print(f"{name:<15} {args.workers:>7} {elapsed:>9.1f} {peak:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
