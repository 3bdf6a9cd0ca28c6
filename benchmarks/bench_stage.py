"""CPU of every process of one GOLD stage (not a test: prints a table).

Usage: ``python benchmarks/bench_stage.py STAGE SIM_DIR RUN_ROOT`` (run from the repository root;
the earlier stages' runs must be in ``RUN_ROOT/output``, e.g. from ``bench_chain.py``).

The stage's ``shapepipe_run`` runs as a child of this process, which makes
itself a child subreaper, so that the total CPU time of every descendant is
collected when it ends (``RUSAGE_CHILDREN``). Every descendant is also polled
with psutil (every 20 ms) to split that total by role: the runner (main
process), the process pool's fork server, its workers, the forked jobs and
the other processes. Two code versions run side by side (same load) give a
comparison of the runner's own CPU that load changes do not blur.
"""

from __future__ import annotations

import collections
import ctypes
import os
import subprocess
import sys
import time

import psutil


def main() -> int:
    stage, data, root = sys.argv[1:4]
    sys.path.insert(0, os.getcwd())
    from shapepipe_modules.gold.chain import STAGES, environment, gold_folder

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    env = {**os.environ, **environment(data, root, gold_folder())}
    config = gold_folder() / next(s.config for s in STAGES if s.name == stage)
    before = os.times()
    process = subprocess.Popen([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, me = {}, psutil.Process()
    while process.poll() is None:
        for child in me.children(recursive=True):
            try:
                with child.oneshot():
                    times = child.cpu_times()
                    seen[child.pid] = (times.user + times.system, " ".join(child.cmdline()), child.ppid())
            except psutil.Error:
                pass
        time.sleep(0.02)
    output = process.stdout.read()
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    after = os.times()
    total = after.children_user + after.children_system - before.children_user - before.children_system
    print(output[-2000:])
    groups = collections.defaultdict(lambda: [0, 0.0])
    for pid, (cpu, command, parent) in seen.items():
        if pid == process.pid:
            role = "runner (main process)"
        elif "forkserver" in command:
            role = "fork server"
        elif "resource_tracker" in command:
            role = "resource tracker"
        elif parent in seen and "forkserver" in seen[parent][1]:
            role = "pool workers"
        else:
            role = "jobs and other processes"
        groups[role][0] += 1
        groups[role][1] += cpu
    print(f"stage {stage}: {total:.2f} s CPU, all processes (load average {os.getloadavg()[0]:.1f})")
    for role, (count, cpu) in sorted(groups.items(), key=lambda item: -item[1][1]):
        print(f"  {role:28s} {count:4d} processes {cpu:7.2f} s (polled, own CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
