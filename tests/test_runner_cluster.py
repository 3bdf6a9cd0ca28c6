"""The batch-system pattern: one shapepipe_run per file number (job-array
tasks, run at the same time), each resubmittable, then a stage over all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_runner_helpers import make_inputs, make_modules, write_config

NUMBERS = ["-001", "-002", "-003", "-004"]


def _task(config, number, *extra):
    """Start one array task as its own process (SP_NUMBER names its run)."""
    env = dict(os.environ, SP_NUMBER=number)
    return subprocess.Popen([sys.executable, "-m", "shapepipe.cli", "-c", str(config), "-e", number,
                             "--resume-if-any", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_array_tasks_resubmission_and_union(tmp_path):
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)
    out = tmp_path / "out"
    per_task = write_config(tmp_path / "task.ini", "t_copy", inputs, out, mods,
                            run_name="task${SP_NUMBER}", default="RUN_DATETIME = False")
    # All tasks at once, as the batch system starts them.
    tasks = [_task(per_task, number) for number in NUMBERS]
    for task in tasks:
        assert task.wait(timeout=120) == 0, task.stderr.read()
    run_dirs = sorted(out.glob("task-*"))
    assert [d.name for d in run_dirs] == [f"task{n}" for n in NUMBERS]
    for number, run_dir in zip(NUMBERS, run_dirs):
        table = json.loads((run_dir / "jobs.json").read_text())
        assert [(r["number"], r["status"]) for r in table] == [(number, "done")]
    # A resubmitted task resumes its own run: nothing is redone.
    again = _task(per_task, "-002")
    assert again.wait(timeout=120) == 0, again.stderr.read()
    table = json.loads((out / "task-002" / "jobs.json").read_text())
    assert [(r["number"], r["status"]) for r in table] == [("-002", "done_previously")]
    assert len(list(out.glob("task-*"))) == len(NUMBERS)
    # The next stage reads every task's output through all:.
    union = write_config(tmp_path / "union.ini", "t_sum", tmp_path, out, mods, run_name="union",
                         extra="[T_SUM]\nINPUT_DIR = all:t_copy\n")
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(union)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    total = next(out.glob("union_*")) / "t_sum" / "output" / "all.txt"
    assert total.read_text() == "".join(f"value{n}" for n in NUMBERS)
