"""The whole GOLD chain on a field of ShapePipe's timed shape, against ShapePipe's CPU and wall time.

Usage::

    python benchmarks/bench_chain.py [--data /tmp/spfield/data] [--run-root /tmp/spfield]
    python benchmarks/bench_chain.py --read        # table of the newest bench record, no run
    python benchmarks/bench_chain.py --compare OLD.json NEW.json   # CPU per module run, side by side

ShapePipe's whole CFIS chain took 575 s of wall time and 1081 s of CPU on
this machine type for 2 exposures of 4 CFHT-size CCDs and one 4000x4000
tile (78% of the CPU in ngmix). The ``sp_field`` simulator preset has that
shape at CFIS densities; it is simulated into ``--data`` when absent (ring
test, seed 1, as ``shapepipe_gold`` would) and the simulation is not counted.

Every configuration of ``example/GOLD`` runs as its own ``shapepipe_run``
process, as in ``shapepipe_gold``. This script makes itself a child
subreaper (Linux), so that the CPU time of every process of a stage --
the runner, its workers, the forked job processes and the external
programs they start, even those orphaned when their parent exits -- is
collected when they end (``RUSAGE_CHILDREN``); after each stage it waits (up
to 20 s) only for the processes that appeared during the stage, not for its
own long-lived helpers (multiprocessing resource trackers), so the wall
column is the stage's. The table shows, per module,
the jobs, the module's wall time and the summed CPU time of its jobs (a
job's forked process and everything it waited for), and per stage the
remaining CPU (interpreter start, imports and bookkeeping of the runner and
its worker pool). The validation (``shapepipe_validate``) and the summary
checks against truth are not part of ShapePipe's timed run: not counted.

The result is written to ``RUN_ROOT/output/bench_chain.json``; ``--read``
prints the newest one again.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import time
from pathlib import Path

SHAPEPIPE_CPU_S = 1081.0
SHAPEPIPE_WALL_S = 575.0
GOAL_FRACTION = 0.05  # issue 22: the whole chain at <= 0.05 of ShapePipe's CPU
SHAPEPIPE_NGMIX_MS = 186.0
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants our children, so that their CPU time is collected; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def child_pids() -> set[int]:
    """Our direct children (orphans adopted as subreaper included), from ``/proc/self/task/*/children``."""
    pids = set()
    for path in Path("/proc/self/task").glob("*/children"):
        try:
            pids.update(int(pid) for pid in path.read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def reap_orphans(wait_s: float = 20.0, keep=frozenset()) -> int:
    """Wait for descendants left running after a stage (worker pools shutting down); return how many were reaped.

    Children in ``keep`` (this process's own long-lived helpers, e.g. a
    multiprocessing resource tracker, running before the stage) are not
    waited for: the wait ends as soon as no other child remains, or after
    ``wait_s``.
    """
    reaped = 0
    deadline = time.monotonic() + wait_s
    while True:
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                reaped += 1
        except ChildProcessError:
            return reaped
        if not child_pids() - set(keep) or time.monotonic() > deadline:
            return reaped
        time.sleep(0.02)


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid} (ended)"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stages(data_dir: Path, run_root: Path, stage_names, log=print) -> dict:
    """Run the stages one by one; return the bench record (stages with their run folders, wall and CPU)."""
    from shapepipe_modules.gold.chain import gold_folder, run_chain

    subreaper = become_subreaper()
    config_dir = gold_folder()
    stages = []
    for name in stage_names:
        # Children already running (this process's own helpers) are not the stage's: not waited for.
        before = child_pids()
        cpu0, wall0 = children_cpu(), time.perf_counter()
        runs = run_chain(data_dir, run_root, config_dir, first=name, last=name, log=log)
        reaped = reap_orphans(keep=before)
        left = [_command_line(pid) for pid in sorted(child_pids() - before)]
        wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
        stages.append({"stage": name, "wall_s": wall, "cpu_all_s": cpu, "orphans_reaped": reaped,
                       "orphans_left": left, "run_dirs": [str(d) for run in runs for d in run.run_dirs]})
        log(f"  {name}: {wall:.1f} s wall, {cpu:.1f} s CPU (all processes)"
            + (f"; still running after the wait, not counted: {left}" if left else ""))
    return {"data": str(data_dir), "run_root": str(run_root), "subreaper": subreaper,
            "load_average": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": stages}


def module_rows(run_dirs) -> list[dict]:
    from shapepipe_modules.gold.summary import module_times

    return module_times([Path(d) for d in run_dirs])


def ngmix_object_epochs(run_dirs) -> int:
    """Object-epochs measured by the ngmix jobs of these run folders (their ``n_epochs`` results)."""
    total = 0
    for run_dir in run_dirs:
        jobs = json.loads((Path(run_dir) / "jobs.json").read_text())
        for job in jobs["jobs"] if isinstance(jobs, dict) else jobs:
            if job.get("module") == "ngmix" or job.get("module_run") == "ngmix":
                total += int((job.get("result") or {}).get("n_epochs", 0))
    return total


def format_table(record: dict) -> str:
    """The per-module table with stage totals and the comparison with ShapePipe."""
    header = f"{'stage':<13} {'module run':<20} {'jobs':>5} {'wall s':>8} {'CPU s':>8}"
    lines = [f"GOLD chain on {record['data']} ({record['when']}, load average at the end "
             f"{record['load_average'][0]:.1f})", "", header, "-" * len(header)]
    total_wall = total_cpu = ngmix_cpu = 0.0
    object_epochs = 0
    for stage in record["stages"]:
        rows = module_rows(stage["run_dirs"])
        jobs_cpu = 0.0
        for row in rows:
            lines.append(f"{stage['stage']:<13} {row['module_run']:<20} {row['done']:>5} "
                         f"{row['wall_s']:>8.1f} {row['cpu_s']:>8.1f}")
            jobs_cpu += row["cpu_s"]
            if row["module_run"] == "ngmix":
                ngmix_cpu += row["cpu_s"]
        object_epochs += ngmix_object_epochs(stage["run_dirs"])
        runner_cpu = stage["cpu_all_s"] - jobs_cpu
        lines.append(f"{stage['stage']:<13} {'(runner processes)':<20} {'':>5} {'':>8} {runner_cpu:>8.1f}")
        lines.append(f"{stage['stage']:<13} {'= stage':<20} {'':>5} {stage['wall_s']:>8.1f} "
                     f"{stage['cpu_all_s']:>8.1f}")
        total_wall += stage["wall_s"]
        total_cpu += stage["cpu_all_s"]
    lines += ["-" * len(header),
              f"{'chain':<13} {'all processes':<20} {'':>5} {total_wall:>8.1f} {total_cpu:>8.1f}",
              f"{'ShapePipe':<13} {'same field shape':<20} {'':>5} {SHAPEPIPE_WALL_S:>8.1f} {SHAPEPIPE_CPU_S:>8.1f}",
              "",
              f"CPU: {total_cpu:.1f} s = {total_cpu / SHAPEPIPE_CPU_S:.3f} of ShapePipe's "
              f"(goal <= {GOAL_FRACTION:g}: {GOAL_FRACTION * SHAPEPIPE_CPU_S:.0f} s) -> "
              f"{'goal met' if total_cpu <= GOAL_FRACTION * SHAPEPIPE_CPU_S else 'goal not met'}",
              f"wall: {total_wall:.1f} s = {total_wall / SHAPEPIPE_WALL_S:.3f} of ShapePipe's "
              "(2 shared cores: wall times depend on the other load, CPU seconds do not much)",
              (f"ngmix: {object_epochs} object-epochs, {1000 * ngmix_cpu / object_epochs:.1f} ms CPU each "
               f"(ShapePipe: {SHAPEPIPE_NGMIX_MS:g} ms)" if object_epochs else "ngmix: no object-epoch count"),
              "stages counted: " + ", ".join(s["stage"] for s in record["stages"])
              + " (exposure preparation, masks, detection, star selection, PSF model and interpolation, "
                "stamps, spread model, ngmix, catalogues); simulation and validation not counted"]
    if not record.get("subreaper"):
        lines.append("note: not a child subreaper here; CPU of processes orphaned before they ended is missing")
    return "\n".join(lines)


def compare_tables(old: dict, new: dict) -> str:
    """CPU per module run and per stage's runner processes of two records, side by side."""
    def cpu_by_row(record):
        table = {}
        for stage in record["stages"]:
            rows = module_rows(stage["run_dirs"])
            for row in rows:
                table[(stage["stage"], row["module_run"])] = table.get((stage["stage"], row["module_run"]), 0.0) \
                    + row["cpu_s"]
            table[(stage["stage"], "(runner processes)")] = stage["cpu_all_s"] - sum(r["cpu_s"] for r in rows)
            table[(stage["stage"], "= stage")] = stage["cpu_all_s"]
        return table

    before, after = cpu_by_row(old), cpu_by_row(new)
    header = f"{'stage':<13} {'module run':<20} {'old CPU s':>10} {'new CPU s':>10}"
    lines = [f"old: {old['run_root']} ({old['when']}, load {old['load_average'][0]:.1f}); "
             f"new: {new['run_root']} ({new['when']}, load {new['load_average'][0]:.1f})", header, "-" * len(header)]
    for key in dict.fromkeys([*before, *after]):
        lines.append(f"{key[0]:<13} {key[1]:<20} {before.get(key, float('nan')):>10.1f} {after.get(key, float('nan')):>10.1f}")
    total_old = sum(s["cpu_all_s"] for s in old["stages"])
    total_new = sum(s["cpu_all_s"] for s in new["stages"])
    lines += ["-" * len(header), f"{'chain':<13} {'all processes':<20} {total_old:>10.1f} {total_new:>10.1f}",
              f"fraction of ShapePipe's {SHAPEPIPE_CPU_S:g} s: {total_old / SHAPEPIPE_CPU_S:.3f} -> "
              f"{total_new / SHAPEPIPE_CPU_S:.3f}"]
    return "\n".join(lines)


def newest_record(run_root: Path) -> Path:
    records = sorted((run_root / "output").glob("bench_chain*.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise SystemExit(f"bench_chain: no bench_chain*.json in {run_root / 'output'}; run without --read first")
    return records[-1]


def main(argv=None) -> int:
    from shapepipe_modules.gold.chain import STAGES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/spfield/data"), help="simulated field")
    parser.add_argument("--run-root", type=Path, default=Path("/tmp/spfield"), help="runs go to RUN_ROOT/output")
    parser.add_argument("--preset", default="sp_field", help="preset simulated when --data is absent")
    parser.add_argument("--read", action="store_true", help="print the newest bench record, no run")
    parser.add_argument("--from", dest="first", choices=[s.name for s in STAGES], default=STAGES[0].name)
    parser.add_argument("--tag", default="", help="suffix of the record name (bench_chain<TAG>.json)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                        help="two bench records (bench_chain*.json): CPU per module run side by side, no run")
    args = parser.parse_args(argv)
    run_root = args.run_root.resolve()
    if args.compare:
        old, new = (json.loads(path.read_text()) for path in args.compare)
        print(compare_tables(old, new))
        return 0
    if args.read:
        print(format_table(json.loads(newest_record(run_root).read_text())))
        return 0
    data_dir = args.data.resolve()
    if not (data_dir / "simulation.json").is_file():
        from shapepipe_modules.simulate import simulate

        print(f"simulating preset {args.preset} into {data_dir} (not counted) ...")
        simulate(preset=args.preset, output_dir=data_dir, seed=1, n_workers=2, ring=True)
        # The simulation's reusable loky workers idle for minutes and, reaped during a stage, would
        # add the simulation's CPU to that stage: stop and reap them before the first stage.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)
        reap_orphans(wait_s=2.0)
    names = [s.name for s in STAGES]
    record = run_stages(data_dir, run_root, names[names.index(args.first):])
    from shapepipe.atomic import atomic_path

    path = run_root / "output" / f"bench_chain{args.tag}.json"
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
