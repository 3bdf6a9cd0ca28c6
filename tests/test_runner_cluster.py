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


def _array_task(config, numbers_file, index, *extra, per_task=1):
    """One task of a SLURM array: the index comes from SLURM_ARRAY_TASK_ID."""
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(index), SLURM_CPUS_PER_TASK="1")
    return subprocess.Popen([sys.executable, "-m", "shapepipe.cli", "-c", str(config), "--numbers",
                             str(numbers_file), "--array-index", "--per-task", str(per_task), "--resume-if-any",
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_concurrent_array_tasks_share_one_output_dir(tmp_path):
    """Eight array tasks of one RUN_NAME start at once in one OUTPUT_DIR."""
    numbers = [f"-{i:03d}" for i in range(16)]
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", numbers)
    listing = tmp_path / "numbers.txt"
    listing.write_text("\n".join(numbers) + "\n")
    out = tmp_path / "out"
    config = write_config(tmp_path / "array.ini", "t_copy,t_chain", inputs, out, mods, run_name="array",
                          default="RUN_DATETIME = False", batch=4,
                          extra="[T_COPY]\nFAIL_ON = -005\n")
    tasks = [_array_task(config, listing, k, per_task=2) for k in range(8)]
    codes = [task.wait(timeout=300) for task in tasks]
    assert codes == [0, 0, 1, 0, 0, 0, 0, 0], [t.stderr.read() for t in tasks]
    records = {}
    for run_dir in sorted(out.glob("array_task*")):
        record = json.loads((run_dir / "run.json").read_text())  # every record is whole JSON
        records[record["selection"]["array_index"]] = record
    assert sorted(records) == list(range(8))
    for index, record in records.items():
        chosen = numbers[2 * index:2 * index + 2]
        assert record["selection"]["numbers"] == chosen
        table = json.loads((out / f"array_task{index}" / "jobs.json").read_text())
        assert sorted(r["number"] for r in table if r["module_run"] == "t_copy") == chosen
        for number in chosen:
            published = out / f"array_task{index}" / "t_chain" / "output" / f"up{number}.txt"
            assert published.exists() == (number != "-005")
            if number != "-005":
                assert published.read_text() == f"VALUE{number}"
        assert record["status"] == ("partial" if index == 2 else "done")
    # The SMP worker count came from the allocation (SLURM_CPUS_PER_TASK=1), not from the config's 4.
    assert "capped to the 1 CPU(s)" in (out / "array_task0" / "shapepipe.log").read_text()
    assert len((out / "shapepipe_runs.txt").read_text().splitlines()) == 8
    # Resubmitting the failed task after a fix continues its own run and redoes only the failure.
    fixed = write_config(tmp_path / "array.ini", "t_copy,t_chain", inputs, out, mods, run_name="array",
                         default="RUN_DATETIME = False", batch=4)
    again = _array_task(fixed, listing, 2, per_task=2)
    assert again.wait(timeout=120) == 0, again.stderr.read()
    table = json.loads((out / "array_task2" / "jobs.json").read_text())
    assert {(r["module_run"], r["number"], r["status"]) for r in table} == {
        ("t_copy", "-004", "done_previously"), ("t_copy", "-005", "done"),
        ("t_chain", "-004", "done_previously"), ("t_chain", "-005", "done")}
    assert len(list(out.glob("array_task*"))) == 8


def test_lost_worker_fails_its_job_only(tmp_path):
    """A job that kills its worker fails (after one retry); every other job runs."""
    numbers = ["-001", "-002", "-003", "-004"]
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", numbers)
    config = write_config(tmp_path / "die.ini", "t_copy", inputs, tmp_path / "out", mods, batch=2,
                          extra="[T_COPY]\nDIE_ON = -003\n")
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    run_dir = next((tmp_path / "out").glob("test_*"))
    table = {r["number"]: r for r in json.loads((run_dir / "jobs.json").read_text())}
    assert set(table) == set(numbers)
    assert table["-003"]["status"] == "failed"
    assert table["-003"]["error"] == "worker died (signal 9) (also after 1 retry)"
    # The lost worker costs its own job only: every other job ran.
    assert {n: r["status"] for n, r in table.items() if n != "-003"} == dict.fromkeys(["-001", "-002", "-004"], "done")
    status = json.loads((run_dir / "t_copy" / "logs" / "status" / "process-003.json").read_text())
    assert status["status"] == "failed"
    # Jobs that finished before the loss keep their results; none is left without a row.
    done = [n for n, r in table.items() if r["status"] == "done"]
    for number in done:
        assert (run_dir / "t_copy" / "output" / f"out{number}.txt").read_text() == f"value{number}"
