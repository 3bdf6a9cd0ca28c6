"""Start-up of a fresh worker process before its first job (not a test: prints a table).

Usage: ``python benchmarks/bench_startup.py [--repeat 3] [--size 1024]``

A fresh Python process (as an array task's runner or a new SMP worker)
imports the command-line path, the module's runner, runs the module's
``preload`` entries (astropy, numba's start-up, ...), then runs the same
``sextractor`` job (sep engine, one simulated ``--size`` x 2 ``--size`` CCD)
twice. The CPU time (user + system) of every phase is read in the process
itself with ``getrusage``; the first job's excess over the second is the
start-up that the first job pays (numba loading its compiled kernels from
the on-disk cache, first-call set-up). Start-up before the first job =
interpreter + command line + module import + preload + first-job excess.
One warm-up child runs first so that numba's cache is in place (a fresh
install compiles once). Best of ``--repeat`` children per phase.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PHASES = ("interpreter", "command line", "module import", "preload", "first-job excess")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(inputs: list[str], output: str) -> None:
    """Measure the phases in this fresh process; print them as JSON."""
    marks = {"interpreter": _cpu()}
    import shapepipe.cli  # noqa: F401  the command-line path (shapepipe_run)

    marks["command line"] = _cpu()
    from shapepipe.jobs import _preload
    from shapepipe.job import Job
    from shapepipe_modules.sextractor.runner import OPTIONS, sextractor

    marks["module import"] = _cpu()
    logger = logging.getLogger("bench")
    _preload(sextractor.spec.preload, logger)
    marks["preload"] = _cpu()
    options = {o.name: o.default for o in OPTIONS}
    options["ENGINE"] = "sep"
    jobs = []
    for k in range(2):
        folder = Path(output) / f"job{k}"
        folder.mkdir(parents=True)
        job = Job(module="sextractor", module_run="sextractor", number="-0000000-0",
                  inputs=[Path(p) for p in inputs], output_dir=folder, log_dir=folder, options=options,
                  logger=logger, run_dir=folder)
        start = _cpu()
        sextractor(job)
        jobs.append(_cpu() - start)
    previous, phases = 0.0, {}
    for name in ("interpreter", "command line", "module import", "preload"):
        phases[name] = marks[name] - previous
        previous = marks[name]
    phases["first-job excess"] = jobs[0] - jobs[1]
    phases["second job"] = jobs[1]
    print(json.dumps(phases))


def measure(inputs: list[str], output: str) -> dict:
    command = [sys.executable, __file__, "--child", output, *inputs]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured child processes (best is kept)")
    parser.add_argument("--size", type=int, default=1024, help="CCD width in pixels (height is twice)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        output, *inputs = args.child
        child(inputs, output)
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    import numpy as np
    from test_sextractor_sim import make_ccd, write_ccd

    with tempfile.TemporaryDirectory() as directory:
        ccd = make_ccd(np.random.default_rng(5), nx=args.size, ny=2 * args.size, n_stars=150, n_galaxies=450)
        inputs = [str(p) for p in write_ccd(ccd, directory)]
        measure(inputs, f"{directory}/warmup")
        runs = [measure(inputs, f"{directory}/run{k}") for k in range(args.repeat)]
    best = {name: min(run[name] for run in runs) for name in (*PHASES, "second job")}
    total = min(sum(run[name] for name in PHASES) for run in runs)
    print(f"fresh process, sextractor job (sep engine, {args.size} x {2 * args.size} CCD); CPU seconds, "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f}")
    for name in PHASES:
        print(f"{name:32s} {best[name]:6.3f}")
    print(f"{'start-up before the first job':32s} {total:6.3f}")
    print(f"{'(the job itself, warm)':32s} {best['second job']:6.3f}")


if __name__ == "__main__":
    main()
