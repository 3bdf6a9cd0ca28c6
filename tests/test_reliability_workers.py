"""Reliability 4 and 8: a worker killed by PID costs one job at most; run-folder lock; read-only output.

A worker is killed with SIGKILL while it holds a job (its PID read from the
job's staging folder ``<label>.<pid>.<n>``): with RETRIES = 1 (the default)
the job runs again on a new worker and the run succeeds; with RETRIES = 0 it
fails with ``worker died (signal 9)`` and every other job still runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_runner_helpers import make_inputs, make_modules, write_config

NUMBERS = [f"-{i:03d}" for i in range(1, 7)]
RUN = [sys.executable, "-m", "shapepipe.cli"]


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _staged_job(out: Path):
    """(label, worker pid) of a job being run now, from its staging folder name."""
    for folder in out.glob("test_*/t_copy/output/.staging/*"):
        label, pid, _ = folder.name.rsplit(".", 2)
        return label, int(pid)
    return None


@pytest.mark.parametrize("retries", [1, 0])
def test_killed_worker_costs_one_job_at_most(tmp_path, retries):
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy, t_chain", inputs, out, mods,
                          extra="[T_COPY]\nSLEEP = 1.0\n", job=f"RETRIES = {retries}")
    process = subprocess.Popen(RUN + ["-c", str(config)], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    label, pid = _wait_for(lambda: _staged_job(out))
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=120)
    (run_dir,) = out.glob("test_*")
    rows = json.loads((run_dir / "jobs.json").read_text())
    table = {(r["module_run"], r["number"]): r for r in rows}
    number = label[len("process"):]
    log = (run_dir / "shapepipe.log").read_text()
    assert f"t_copy {number}: worker died (signal 9) (pid {pid})" in log
    others = [n for n in NUMBERS if n != number]
    assert all(table[("t_copy", n)]["status"] == "done" for n in others)
    assert all(table[("t_chain", n)]["status"] == "done" for n in others)
    assert not list(run_dir.rglob(".staging*"))
    if retries:
        assert process.returncode == 0, stderr
        assert table[("t_copy", number)]["status"] == "done"
        assert "job run again on a new worker" in log
        assert (run_dir / "t_copy" / "output" / f"out{number}.txt").read_text() == f"value{number}"
    else:
        assert process.returncode == 1
        assert table[("t_copy", number)]["status"] == "failed"
        assert table[("t_copy", number)]["error"] == "worker died (signal 9)"
        assert table[("t_chain", number)]["status"] == "skipped_upstream"
        status = json.loads((run_dir / "t_copy" / "logs" / "status" / f"{label}.json").read_text())
        assert status["status"] == "failed"  # a resume redoes it


def test_two_resumes_of_one_run_cannot_both_run(tmp_path):
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS[:4])
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy", inputs, out, mods, extra="[T_COPY]\nFAIL_ON = -002\n")
    assert subprocess.run(RUN + ["-c", str(config)], cwd=tmp_path, capture_output=True).returncode == 1
    (run_dir,) = out.glob("test_*")
    # Make the failed job slow, then resume twice at the same time.
    config.write_text(config.read_text().replace("FAIL_ON = -002", "SLEEP = 3"))
    first = subprocess.Popen(RUN + ["-c", str(config), "--resume", str(run_dir)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: "process" in (run_dir / ".lock").read_text() and
              json.loads((run_dir / "run.json").read_text()).get("pid") == first.pid)
    second = subprocess.run(RUN + ["-c", str(config), "--resume", str(run_dir)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert second.returncode == 2
    assert f"run folder {run_dir} is in use by another shapepipe_run (process {first.pid}" in second.stderr
    assert first.wait(timeout=60) == 0, first.stderr.read()
    rows = json.loads((run_dir / "jobs.json").read_text())
    assert sorted(r["status"] for r in rows) == ["done", "done_previously", "done_previously", "done_previously"]
    # The lock dies with its process: a resume after kill -9 is never blocked.
    third = subprocess.run(RUN + ["-c", str(config), "--resume", str(run_dir)], cwd=tmp_path,
                           capture_output=True, text=True)
    assert third.returncode == 0, third.stderr


def test_read_only_output_folder_fails_before_any_job(tmp_path):
    """A folder refusing writes stops the run at validation (exit 2), before any job.

    An ordinary user gets a chmod 555 folder; root writes through permissions,
    so it gets a sysfs folder, which refuses new entries even to root.
    """
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS[:2])
    if os.geteuid() != 0:
        out = tmp_path / "out"
        out.mkdir()
        out.chmod(0o555)
        refused = out
    else:
        refused = Path("/sys/kernel")
        out = refused / "shapepipe_output"
        try:
            os.mkdir(out)
            os.rmdir(out)
            pytest.skip("no folder refuses writes to root here")
        except OSError:
            pass
    config = write_config(tmp_path / "c.ini", "t_copy", inputs, out, mods)
    result = subprocess.run(RUN + ["-c", str(config)], cwd=tmp_path, capture_output=True, text=True)
    out.chmod(0o755) if out.exists() and os.geteuid() != 0 else None
    assert result.returncode == 2, result.stderr
    assert f"c.ini: [FILE] OUTPUT_DIR: cannot write in {refused} (" in result.stderr
    assert "nothing was run" in result.stderr
    assert not (out.exists() and list(out.iterdir()))
