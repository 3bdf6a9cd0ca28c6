"""Runner overhead for many trivial jobs (not a test: prints a table).

Usage: ``python benchmarks/bench_runner.py [--jobs 1000] [--workers 2]``

A trivial module writes one small file per job. For each mode (jobs run in
the worker, or in a supervised child process because TIMEOUT is set) and
each backend, the script reports:

- plan: time to validate the configuration and find the input files;
- wall/job: wall-clock time of the module run divided by the number of jobs;
- overhead/job: wall time x workers / jobs, i.e. the worker time spent per
  job (the job itself does almost nothing, so this is runner overhead);
- median job: median of the per-job durations of the job table (logger,
  staging folder, module call, publication, status file; no dispatch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODULE = '''
from shapepipe.module import module


@module(name="bench_trivial", version="1.0", file_pattern="in", file_ext=".txt", numbering_scheme="-0000")
def bench_trivial(job):
    """Write one small file."""
    job.output_path(f"out{job.number}.txt").write_text(job.number)
'''


def run_once(root: Path, jobs: int, workers: int, backend: str, timeout: str | None) -> dict:
    from shapepipe.plan import build_plan
    from shapepipe.runner import Runner

    tag = f"{backend}_{'fork' if timeout else 'direct'}"
    config = root / f"{tag}.ini"
    config.write_text(
        "[DEFAULT]\nVERBOSE = False\nRUN_NAME = bench\n"
        f"[EXECUTION]\nMODULE = bench_trivial\nMODULE_DIR = {root / 'mods'}\n"
        f"[FILE]\nINPUT_DIR = {root / 'data'}\nOUTPUT_DIR = {root / 'out' / tag}\n"
        f"[JOB]\nSMP_BATCH_SIZE = {workers}\nSMP_BACKEND = {backend}\n"
        + (f"TIMEOUT = {timeout}\n" if timeout else "")
    )
    start = time.perf_counter()
    plan = build_plan(config)
    planned = time.perf_counter() - start
    runner = Runner(plan)
    status = runner.run()
    entry = runner.record["modules"][0]
    durations = [row["duration_s"] for row in runner.rows if row["status"] == "done"]
    if status != 0 or len(durations) != jobs:
        raise RuntimeError(f"benchmark run failed: status {status}, {len(durations)} jobs done")
    wall = entry["wall_s"]
    return {
        "mode": tag,
        "plan_s": planned,
        "wall_s": wall,
        "wall_per_job_ms": 1e3 * wall / jobs,
        "overhead_per_job_ms": 1e3 * wall * workers / jobs,
        "median_job_ms": 1e3 * statistics.median(durations),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "mods").mkdir()
        (root / "mods" / "bench_trivial_module.py").write_text(MODULE)
        (root / "data").mkdir()
        for i in range(args.jobs):
            (root / "data" / f"in-{i:04d}.txt").write_text("x")
        # Start the worker pool once so that its start-up is not charged to the first mode.
        (root / "warm").mkdir()
        (root / "warm" / "mods").symlink_to(root / "mods")
        (root / "warm" / "data").mkdir()
        for i in range(4):
            (root / "warm" / "data" / f"in-{i:04d}.txt").write_text("x")
        run_once(root / "warm", 4, args.workers, "loky", None)
        rows = []
        for backend in ("loky", "threading"):
            for timeout in (None, "01:00:00"):
                rows.append(run_once(root, args.jobs, args.workers, backend, timeout))
    header = ("mode", "plan s", "wall s", "wall/job ms", "overhead/job ms", "median job ms")
    print(f"runner overhead: {args.jobs} trivial jobs, SMP_BATCH_SIZE = {args.workers}")
    print("  ".join(f"{h:>16}" for h in header))
    for row in rows:
        print("  ".join(f"{v:>16.3f}" if isinstance(v, float) else f"{v:>16}" for v in row.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
