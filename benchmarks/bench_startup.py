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

A second table measures an SMP worker as ``shapepipe_run`` starts it: the
process pool's fork server runs the module's preloads once, and the worker,
forked from it, runs the job (its CPU before the job is its start-up).
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


def pool_probe(item: dict) -> dict:
    """Run in an SMP pool worker: its CPU before this call (start-up), then the sextractor job twice."""
    startup = _cpu()
    from shapepipe.job import Job
    from shapepipe_modules.sextractor.runner import OPTIONS, sextractor

    options = {o.name: o.default for o in OPTIONS}
    options["ENGINE"] = "sep"
    times = []
    for k in range(2):
        folder = Path(item["output"]) / f"pool{k}"
        folder.mkdir(parents=True)
        job = Job(module="sextractor", module_run="sextractor", number="-0000000-0",
                  inputs=[Path(p) for p in item["inputs"]], output_dir=folder, log_dir=folder, options=options,
                  logger=logging.getLogger("bench"), run_dir=folder)
        start = _cpu()
        sextractor(job)
        times.append(_cpu() - start)
    return {"module_run": "probe", "number": "", "worker start-up": startup,
            "first-job excess": times[0] - times[1], "second job": times[1]}


def pool_child(inputs: list[str], output: str) -> None:
    """A runner's process pool whose fork server ran the sextractor preloads; print one worker's phases."""
    sys.path.insert(0, str(HERE))
    import bench_startup
    from shapepipe.cluster.pool import PoolExecutor
    from shapepipe_modules.sextractor.runner import sextractor

    start = _cpu()
    executor = PoolExecutor(1, preload=sextractor.spec.preload)
    try:
        ((_, row),) = list(executor.run(bench_startup.pool_probe, [{"inputs": inputs, "output": output}]))
    finally:
        executor.close()
    print(json.dumps(row))


def measure(inputs: list[str], output: str, mode: str = "--child") -> dict:
    command = [sys.executable, __file__, mode, output, *inputs]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured child processes (best is kept)")
    parser.add_argument("--size", type=int, default=1024, help="CCD width in pixels (height is twice)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--pool-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        output, *inputs = args.child
        child(inputs, output)
        return
    if args.pool_child:
        output, *inputs = args.pool_child
        pool_child(inputs, output)
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    import numpy as np
    from test_sextractor_sim import make_ccd, write_ccd

    with tempfile.TemporaryDirectory() as directory:
        ccd = make_ccd(np.random.default_rng(5), nx=args.size, ny=2 * args.size, n_stars=150, n_galaxies=450)
        inputs = [str(p) for p in write_ccd(ccd, directory)]
        measure(inputs, f"{directory}/warmup")
        runs = [measure(inputs, f"{directory}/run{k}") for k in range(args.repeat)]
        pools = [measure(inputs, f"{directory}/pool{k}", "--pool-child") for k in range(args.repeat)]
    best = {name: min(run[name] for run in runs) for name in (*PHASES, "second job")}
    total = min(sum(run[name] for name in PHASES) for run in runs)
    print(f"fresh process, sextractor job (sep engine, {args.size} x {2 * args.size} CCD); CPU seconds, "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f}")
    for name in PHASES:
        print(f"{name:32s} {best[name]:6.3f}")
    print(f"{'start-up before the first job':32s} {total:6.3f}")
    print(f"{'(the job itself, warm)':32s} {best['second job']:6.3f}")
    worker = {name: min(run[name] for run in pools) for name in ("worker start-up", "first-job excess", "second job")}
    total = min(run["worker start-up"] + run["first-job excess"] for run in pools)
    print("SMP worker of shapepipe_run, forked from the process pool's fork server, which ran the "
          "module's preloads once for all workers")
    print(f"{'worker start-up':32s} {worker['worker start-up']:6.3f}")
    print(f"{'first-job excess':32s} {worker['first-job excess']:6.3f}")
    print(f"{'start-up before the first job':32s} {total:6.3f}")
    print(f"{'(the job itself, warm)':32s} {worker['second job']:6.3f}")


if __name__ == "__main__":
    main()
