"""Reliability 2, 3 and 6: signals to a real shapepipe_run, the runner killed, numbers beginning with '-'.

SIGTERM or SIGINT stops the run: exit 128+N, finished jobs recorded in the job
table, no staging folder and no process left, record ``interrupted``, a
message saying how to resume; ``--resume`` then gives the outputs of an
uninterrupted run. After ``kill -9`` of the runner no worker or external
program survives more than a few seconds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from test_runner_helpers import make_inputs, make_modules, write_config

NUMBERS = [f"-{i:03d}" for i in range(1, 9)]
RUN = [sys.executable, "-m", "shapepipe.cli"]


def _outputs(run_dir: Path) -> dict:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.glob("*/output/**/*")) if p.is_file()}


def _wait_for(predicate, timeout=60.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def _all_gone(processes, timeout=5.0) -> list:
    """Processes of the list still alive (zombies count as gone) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    return alive


def _descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture
def chain(tmp_path):
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)

    def config(name, sleep=0.4, modules="t_copy, t_chain, t_sum", extra=""):
        return write_config(tmp_path / f"{name}.ini", modules, inputs, tmp_path / name, mods,
                            extra=f"[T_COPY]\nSLEEP = {sleep}\n{extra}", job="SEED = 3")
    return tmp_path, config


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_resume_gives_identical_outputs(chain, signum):
    tmp_path, config = chain
    cfg = config("sig")
    process = subprocess.Popen(RUN + ["-c", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    out = tmp_path / "sig"
    _wait_for(lambda: len(list(out.glob("test_*/t_copy/logs/status/*.json"))) >= 2)
    helpers = _descendants(process.pid)
    assert helpers  # workers are running
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    (run_dir,) = out.glob("test_*")
    assert f"resume with: shapepipe_run -c {cfg} --resume {run_dir}" in stderr
    assert _all_gone(helpers) == []  # workers and their jobs stopped
    assert not list(run_dir.rglob(".staging*"))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_by"] == signal.Signals(signum).name
    entry = {m["module_run"]: m for m in record["modules"]}
    assert entry["t_copy"]["status"] == "interrupted" and entry["t_sum"]["status"] == "pending"
    # Every job whose status file says done is in the job table, and its outputs are published.
    done = {json.loads(p.read_text())["number"] for p in run_dir.glob("t_copy/logs/status/*.json")
            if json.loads(p.read_text())["status"] == "done"}
    assert 2 <= len(done) < len(NUMBERS)
    with open(run_dir / "jobs.csv") as handle:
        table = {r["number"]: r["status"] for r in csv.DictReader(handle) if r["module_run"] == "t_copy"}
    assert {n for n, s in table.items() if s == "done"} == done
    for number in done:
        assert (run_dir / "t_copy" / "output" / f"out{number}.txt").read_text() == f"value{number}"
    # Resume, then compare with an uninterrupted run.
    resumed = subprocess.run(RUN + ["-c", str(cfg), "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    rows = json.loads((run_dir / "jobs.json").read_text())
    statuses = {r["number"]: r["status"] for r in rows if r["module_run"] == "t_copy"}
    assert {n for n, s in statuses.items() if s == "done_previously"} == done
    reference = subprocess.run(RUN + ["-c", str(config("ref", sleep=0))], cwd=tmp_path, capture_output=True,
                               text=True)
    assert reference.returncode == 0, reference.stderr
    (reference_dir,) = (tmp_path / "ref").glob("test_*")
    assert _outputs(run_dir) == _outputs(reference_dir)
    assert len(_outputs(run_dir)) == 3 * len(NUMBERS) + 1


def test_sigterm_kills_external_programs_of_running_jobs(chain):
    """Jobs running source-extractor-like programs: the programs die with the run."""
    tmp_path, config = chain
    cfg = write_config(tmp_path / "ext.ini", "t_sleep_cmd", tmp_path / "data", tmp_path / "ext",
                       tmp_path / "mods", extra="[T_SLEEP_CMD]\nSECONDS = 60\n")
    process = subprocess.Popen(RUN + ["-c", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    sleepers = _wait_for(lambda: [p for p in _descendants(process.pid) if p.name() == "sleep"]
                         if len([p for p in _descendants(process.pid) if p.name() == "sleep"]) >= 2 else None)
    helpers = _descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert _all_gone(helpers) == [] and _all_gone(sleepers) == []
    (run_dir,) = (tmp_path / "ext").glob("test_*")
    assert not list(run_dir.rglob(".staging*")) and not list(run_dir.rglob("never.txt"))


def test_second_ctrl_c_kills_at_once(chain):
    tmp_path, config = chain
    cfg = config("twice", sleep=30)
    process = subprocess.Popen(RUN + ["-c", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(list((tmp_path / "twice").glob("test_*/t_copy/logs/process*.log"))) >= 2)
    helpers = _descendants(process.pid)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 130
    assert _all_gone(helpers) == []


@pytest.mark.parametrize("program", [False, True], ids=["python-jobs", "external-programs"])
def test_workers_never_outlive_a_killed_runner(chain, program):
    tmp_path, config = chain
    if program:
        cfg = write_config(tmp_path / "k.ini", "t_sleep_cmd", tmp_path / "data", tmp_path / "k9",
                           tmp_path / "mods", extra="[T_SLEEP_CMD]\nSECONDS = 60\n")
    else:
        cfg = config("k9", sleep=60)
    process = subprocess.Popen(RUN + ["-c", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for(lambda: len(list((tmp_path / "k9").glob("test_*/*/logs/process*.log"))) >= 2)
    if program:
        _wait_for(lambda: sum(p.name() == "sleep" for p in _descendants(process.pid)) >= 2)
    helpers = _descendants(process.pid)
    assert len(helpers) >= 3
    process.kill()
    process.wait()
    assert _all_gone(helpers, timeout=5.0) == []


def test_command_line_numbers_beginning_with_minus(chain):
    """shapepipe_run -e -003 (both spellings) processes that number only."""
    tmp_path, config = chain
    cfg = config("minus", sleep=0, modules="t_copy")
    for index, form in enumerate((["-e", "-003"], ["-e=-005"], ["--numbers", "-002,-004"])):
        result = subprocess.run(RUN + ["-c", str(cfg)] + form, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "minus").glob("test_*"), key=lambda p: json.loads((p / "run.json").read_text())["started"])
    done = [sorted(r["number"] for r in json.loads((d / "jobs.json").read_text())) for d in runs]
    assert done == [["-003"], ["-005"], ["-002", "-004"]]


def test_interrupted_run_records_jobs_that_finished_after_the_last_collected_result(tmp_path):
    """A signal between a job's status file (outputs published) and the runner's receipt of its row:
    the job is recorded as done, not lost; a job with a done status file but missing outputs is not."""
    from shapepipe.jobs import Task
    from shapepipe.runner import Runner

    def task(number):
        return Task(module="t", module_run="t", number=number, inputs=[], input_table={}, options={},
                    function=("m", "f"), module_dirs=(), output_dir=str(tmp_path / "output"),
                    log_dir=str(tmp_path / "logs"), run_dir=str(tmp_path))

    collected, unreported, unpublished, running = (task(n) for n in ("-001", "-002", "-003", "-004"))
    (tmp_path / "output").mkdir()
    (tmp_path / "logs" / "status").mkdir(parents=True)
    for t in (collected, unreported, unpublished):
        row = {"module_run": "t", "number": t.number, "status": "done", "outputs": [f"out{t.number}.txt"]}
        t.status_path.write_text(json.dumps(row))
    for t in (collected, unreported):
        (tmp_path / "output" / f"out{t.number}.txt").write_text("x")
    runner = object.__new__(Runner)
    runner._module_todo = ([collected, unreported, unpublished, running], tmp_path / "output")
    rows = [{"module_run": "t", "number": "-001", "status": "done"}]
    found = runner._finished_unreported(rows)
    assert [(r["number"], r["status"]) for r in found] == [("-002", "done")]
