"""A parent that times ``shapepipe_run`` (RUSAGE_CHILDREN, as shapepipe_calibrate does) sees the
CPU time of the jobs run by the runner's worker pool: the pool's fork server is reaped at exit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from test_runner_helpers import make_inputs, write_config

BURN_MODULE = '''
import time

from shapepipe.module import module


@module(name="t_burn", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000")
def t_burn(job):
    """Spend about one second of CPU, then write out<number>.txt."""
    start = time.process_time()
    total = 0
    while time.process_time() - start < 1.0:
        total += sum(range(1000))
    job.output_path(f"out{job.number}.txt").write_text(str(total))
'''


def test_parent_sees_the_cpu_of_pool_jobs(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "burn_module.py").write_text(BURN_MODULE)
    inputs = make_inputs(tmp_path / "data", ["-001", "-002", "-003"])
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_burn", inputs, out, mods, default="", job="SMP_BACKEND = loky")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], cwd=tmp_path,
                               capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    measured = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rows = json.loads(next(out.glob("test_*/jobs.json")).read_text())
    rows = rows["jobs"] if isinstance(rows, dict) else rows
    jobs_cpu = sum(float(row.get("cpu_s") or 0.0) for row in rows)
    assert jobs_cpu > 2.5, rows
    # The runner's own CPU comes on top of the jobs'; without the reaping the parent saw ~0 of them.
    assert measured >= 0.95 * jobs_cpu, (measured, jobs_cpu)
