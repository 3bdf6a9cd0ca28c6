"""Benchmark: sep engine vs SExtractor binary on one CFIS-size CCD (2048 x 4612).

Usage: python benchmarks/bench_sextractor.py [--repeat N] [--objects N] [--plot]

Both engines run the same ``sextractor`` module job (default options:
catalogue plus background-residual statistics; ``--plot`` adds the PNG)
on the same simulated CCD, each in a fresh child process, after one
warm-up run per engine (so numba's compiled cache is in place). In every
child the job runs twice:

- cold: the first job of a fresh process (imports, numba loading, ...),
  as a job forked with a TIMEOUT or a one-job process pays;
- warm: the same job again in that process, as in a joblib worker that
  has already run one job;
- forked: in another fresh process, the module's ``preload`` list is run
  (as a worker does once) and the job then runs in a forked child, as a
  job with a TIMEOUT does.

Reported per engine (best of ``--repeat`` children): whole-job wall and
CPU time (user + system, including the SExtractor process), the
extraction step alone, wall and CPU (input files to catalogue file:
reading, background, detection, measurement, writing; for the binary, its
own run), and the peak resident memory of the child (``os.wait4``,
covering the binary), with the sep/binary ratio of each, all measured in
this one run.
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the binary)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_job(engine: str, inputs: list[str], output: str, plot: bool = False) -> dict:
    """Run one sextractor job; return its summary plus wall and CPU seconds."""
    from shapepipe.job import Job
    from shapepipe_modules.sextractor.runner import OPTIONS, sextractor

    wall, cpu = time.perf_counter(), _cpu_seconds()
    options = {o.name: o.default for o in OPTIONS}
    options["ENGINE"] = engine
    options["BKG_RESIDUAL_PLOT"] = plot
    output_dir = Path(output)
    output_dir.mkdir(parents=True, exist_ok=True)
    job = Job(module="sextractor", module_run="sextractor", number="-0000000-0", inputs=[Path(p) for p in inputs],
              output_dir=output_dir, log_dir=output_dir, options=options,
              logger=logging.getLogger("bench"), run_dir=output_dir)
    summary = sextractor(job)
    summary["wall"] = time.perf_counter() - wall
    summary["cpu"] = _cpu_seconds() - cpu
    return summary


def forked_job(engine: str, inputs: list[str], output: str, plot: bool) -> dict:
    """Preload the module as a worker does, then run the job in a forked child."""
    from shapepipe.jobs import _preload
    from shapepipe_modules.sextractor.runner import sextractor

    _preload(sextractor.spec.preload, logging.getLogger("bench"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        summary = run_job(engine, inputs, output, plot)
        os.write(write_end, json.dumps(summary).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        text = stream.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def child(engine: str, output: str, plot: bool, inputs: list[str]) -> None:
    """Cold job then warm job in this process, or a forked job; print the summaries as JSON."""
    if engine.endswith(":forked"):
        print(json.dumps({"forked": forked_job(engine.split(":")[0], inputs, f"{output}/forked", plot)}))
        return
    cold = run_job(engine, inputs, f"{output}/cold", plot)
    warm = run_job(engine, inputs, f"{output}/warm", plot)
    print(json.dumps({"cold": cold, "warm": warm}))


def measure(engine, inputs, output, plot):
    """Run one child process; return its job summaries and peak RSS."""
    command = [sys.executable, __file__, "--child", engine, output, str(int(plot)), *inputs]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    text = process.stdout.read()
    if status != 0:
        raise RuntimeError(f"{engine} child failed with status {status}")
    result = json.loads(text.strip().splitlines()[-1])
    # ru_maxrss is in kilobytes on Linux; it covers the child and its own children.
    result["rss_mb"] = usage.ru_maxrss / 1024
    return result


def best(runs, phase, key):
    return min(run[phase][key] for run in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="child processes per engine (best is kept)")
    parser.add_argument("--objects", type=int, default=3000, help="simulated objects on the CCD")
    parser.add_argument("--plot", action="store_true", help="also write the background-residual PNG")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, output, plot, *inputs = args.child
        child(engine, output, plot == "1", inputs)
        return
    from test_sextractor_sim import make_ccd, write_ccd

    with tempfile.TemporaryDirectory() as directory:
        stars = args.objects // 4
        ccd = make_ccd(np.random.default_rng(2024), nx=2048, ny=4612, n_stars=stars,
                       n_galaxies=args.objects - stars)
        inputs = [str(p) for p in write_ccd(ccd, directory)]
        results = {}
        for engine in ("sep", "sextractor"):
            measure(engine, inputs, f"{directory}/warmup_{engine}", args.plot)
            results[engine] = [measure(engine, inputs, f"{directory}/{engine}_{k}", args.plot)
                               for k in range(args.repeat)]
            for k, run in enumerate(results[engine]):
                forked = measure(f"{engine}:forked", inputs, f"{directory}/{engine}_f{k}", args.plot)
                run["forked"] = forked["forked"]
    print(f"CCD 2048 x 4612, {args.objects} simulated objects, best of {args.repeat} child processes per engine"
          f"{', with the PNG plot' if args.plot else ''}")
    metrics = [
        ("objects", lambda runs: runs[0]["cold"]["n_objects"], "d"),
        ("cold job wall [s]", lambda runs: best(runs, "cold", "wall"), ".2f"),
        ("cold job CPU [s]", lambda runs: best(runs, "cold", "cpu"), ".2f"),
        ("warm job wall [s]", lambda runs: best(runs, "warm", "wall"), ".2f"),
        ("warm job CPU [s]", lambda runs: best(runs, "warm", "cpu"), ".2f"),
        ("forked job wall [s]", lambda runs: best(runs, "forked", "wall"), ".2f"),
        ("forked job CPU [s]", lambda runs: best(runs, "forked", "cpu"), ".2f"),
        ("extraction wall, cold [s]", lambda runs: best(runs, "cold", "extraction_seconds"), ".2f"),
        ("extraction CPU, cold [s]", lambda runs: best(runs, "cold", "extraction_cpu_seconds"), ".2f"),
        ("extraction wall, warm [s]", lambda runs: best(runs, "warm", "extraction_seconds"), ".2f"),
        ("extraction CPU, warm [s]", lambda runs: best(runs, "warm", "extraction_cpu_seconds"), ".2f"),
        ("peak RSS [MB]", lambda runs: min(run["rss_mb"] for run in runs), ".0f"),
    ]
    print(f"{'':28s} {'sep':>8s} {'binary':>8s} {'sep/binary':>10s}")
    for label, value, style in metrics:
        sep, sex = value(results["sep"]), value(results["sextractor"])
        print(f"{label:28s} {sep:8{style}} {sex:8{style}} {sep / sex:10.2f}")


if __name__ == "__main__":
    main()
