"""shapepipe_status over real array-task runs of the test modules, and over synthetic run folders."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shapepipe.cluster.status import StatusReport, collect, main, rerun_commands, resubmit_commands
from test_runner_helpers import make_inputs, make_modules, write_config

NUMBERS = [f"-{i:03d}" for i in range(6)]


def _campaign_config(tmp_path, inputs, out, mods, fail_on=""):
    extra = f"[T_COPY]\nFAIL_ON = {fail_on}\n" if fail_on else ""
    return write_config(tmp_path / "array.ini", "t_copy,t_chain", inputs, out, mods, run_name="array",
                        default="RUN_DATETIME = False", batch=1, extra=extra)


def _array_task(config, listing, index, script):
    """Task ``index`` of SLURM array job 777 (two numbers per task)."""
    env = dict(os.environ, SLURM_ARRAY_JOB_ID="777", SLURM_ARRAY_TASK_ID=str(index), SLURM_JOB_ID=str(800 + index),
               SLURM_CPUS_PER_TASK="1", SHAPEPIPE_BATCH_SCRIPT=str(script))
    return subprocess.Popen([sys.executable, "-m", "shapepipe.cli", "-c", str(config), "--numbers", str(listing),
                             "--array-index", str(index), "--per-task", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _executable(argv):
    """A printed command with its program taken from this environment's bin folder."""
    program = Path(sys.executable).parent / argv[0]
    assert program.is_file(), f"{program} is not installed"
    return [str(program), *argv[1:]]


@pytest.fixture
def campaign(tmp_path):
    """Three array tasks over six numbers, run at once; -003 fails in t_copy (task 1)."""
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)
    listing = tmp_path / "numbers.txt"
    listing.write_text("\n".join(NUMBERS) + "\n")
    out = tmp_path / "out"
    config = _campaign_config(tmp_path, inputs, out, mods, fail_on="-003")
    script = tmp_path / "array.sh"
    tasks = [_array_task(config, listing, k, script) for k in range(3)]
    codes = [task.wait(timeout=120) for task in tasks]
    assert codes == [0, 1, 0], [t.stderr.read() for t in tasks]
    return dict(tmp=tmp_path, mods=mods, inputs=inputs, out=out, config=config, script=script, listing=listing)


def test_campaign_failure_report_rerun_and_json(campaign, capsys):
    out, inputs = campaign["out"], campaign["inputs"]
    report = collect(out)
    assert sorted(Path(r.run_dir).name for r in report.runs) == ["array_task0", "array_task1", "array_task2"]
    assert [(o.module_run, o.number, o.status) for o in report.failures()] == [("t_copy", "-003", "failed")]
    failure = report.failures()[0]
    assert failure.error == f"JobError: refusing {inputs / 'in-003.txt'}"
    assert Path(failure.log) == out / "array_task1" / "t_copy" / "logs" / "process-003.log"
    assert "refusing" in Path(failure.log).read_text()
    counts = report.counts()
    assert (counts["t_copy"]["done"], counts["t_copy"]["failed"]) == (5, 1)
    assert (counts["t_chain"]["done"], counts["t_chain"]["skipped"]) == (5, 1)
    assert sum(counts["t_copy"].values()) == sum(counts["t_chain"].values()) == len(NUMBERS)

    task1 = out / "array_task1"
    expected = ["shapepipe_run", "-c", str(task1 / "array.ini"), "--resume", str(task1)]
    assert rerun_commands(report) == [expected]
    assert resubmit_commands(report) == [["sbatch", "--array=1", str(campaign["script"])]]

    assert main([str(out)]) == 1
    text = capsys.readouterr().out
    failure_lines = [line for line in text.splitlines() if "refusing" in line]
    assert len(failure_lines) == 1
    assert "array_task1" in failure_lines[0] and "-003" in failure_lines[0] and failure.log in failure_lines[0]
    after = text.split("to re-run exactly the failures:\n", 1)[1].splitlines()
    assert after[0].strip() == shlex.join(expected)
    assert f"sbatch --array=1 {campaign['script']}" in text

    # --json round-trips into the same report and carries the commands.
    assert main([str(out), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert StatusReport.from_dict(data) == report
    assert data["rerun_commands"] == [expected] and data["exit_status"] == 1

    # Fix the configuration, then run the printed command (argv, no shell) with the edited file.
    _campaign_config(campaign["tmp"], inputs, out, campaign["mods"])
    assert main([str(out)]) == 1
    assert "--original-config" in capsys.readouterr().out  # the edited file is noticed
    command = rerun_commands(collect(out), original_config=True)
    assert command == [["shapepipe_run", "-c", str(campaign["config"]), "--resume", str(task1)]]
    result = subprocess.run(_executable(command[0]), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    assert main([str(out), "--detail"]) == 0
    text = capsys.readouterr().out
    assert "failures" not in text and "to re-run" not in text
    line = next(line for line in text.splitlines() if line.startswith("t_copy") and "-003" in line)
    assert "done (after 1 failed attempt)" in line
    assert main([str(out), "--failed-only"]) == 0
    text = capsys.readouterr().out
    assert "module t_copy" not in text and "every job is done" in text
    final = collect(out)
    assert final.exit_status() == 0
    assert {(o.module_run, o.number): o.status for o in final.outcomes} == {
        (m, n): "done" for m in ("t_copy", "t_chain") for n in NUMBERS}
    assert (task1 / "t_chain" / "output" / "up-003.txt").read_text() == "VALUE-003"


def test_newer_run_hides_an_older_failure(campaign, capsys):
    """A separate, later run of the failed number in its own folder supersedes the failure."""
    out = campaign["out"]
    _campaign_config(campaign["tmp"], campaign["inputs"], out, campaign["mods"])  # fixed
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(campaign["config"]),
                             "--numbers", "-003"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = collect(out)
    assert len(report.runs) == 4
    winner = next(o for o in report.outcomes if o.key == ("t_copy", "-003"))
    assert winner.status == "done" and Path(winner.run_dir).parent == out
    assert Path(winner.run_dir).name != "array_task1" and winner.failed_before == 1
    assert report.failures() == [] and rerun_commands(report) == []
    assert main([str(out), "--detail"]) == 0
    assert "done (after 1 failed attempt)" in capsys.readouterr().out
    # Only the array runs: the failure is back, and only task 1 is to redo.
    only_tasks = collect([out / f"array_task{k}" for k in range(3)])
    assert [(o.number, o.status) for o in only_tasks.failures()] == [("-003", "failed")]
    assert main([str(out), "--run-name", "nothing_of_that_name"]) == 2
    assert "nothing_of_that_name" in capsys.readouterr().err


def test_killed_run_is_interrupted_with_its_unfinished_numbers_missing(tmp_path, capsys):
    numbers = ["-001", "-002", "-003", "-004"]
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", numbers)
    listing = tmp_path / "numbers.txt"
    listing.write_text("\n".join(numbers) + "\n")
    out = tmp_path / "out"
    config = write_config(tmp_path / "slow.ini", "t_copy,t_chain", inputs, out, mods, run_name="slow", batch=1,
                          extra="[T_COPY]\nSLEEP = 0.4\n")
    process = subprocess.Popen([sys.executable, "-m", "shapepipe.cli", "-c", str(config), "--numbers", str(listing)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    status_files = []
    while not status_files and time.monotonic() < deadline:
        status_files = list(out.glob("slow_*/t_copy/logs/status/process*.json"))
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert status_files, "the run never finished a job"
    run_dir = next(out.glob("slow_*"))
    finished = sorted(json.loads(p.read_text())["number"] for p in (run_dir / "t_copy/logs/status").glob("*.json"))
    assert 1 <= len(finished) < len(numbers)

    report = collect(out)
    (run,) = report.runs
    assert run.status == "interrupted"
    assert not (run_dir / "jobs.json").exists()  # only the status files tell what was done
    got = {(o.module_run, o.number): o.status for o in report.outcomes}
    assert got == {**{("t_copy", n): ("done" if n in finished else "missing") for n in numbers},
                   **{("t_chain", n): "missing" for n in numbers}}
    assert run.missing == {"t_copy": [n for n in numbers if n not in finished], "t_chain": numbers}
    assert main([str(out)]) == 1
    text = capsys.readouterr().out
    assert f"{run_dir}: interrupted" in text and "in t_copy" in text
    assert rerun_commands(report) == [["shapepipe_run", "-c", str(run_dir / "slow.ini"), "--resume", str(run_dir)]]
    # Resuming redoes only the missing jobs.
    result = subprocess.run(_executable(rerun_commands(report)[0]), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = json.loads((run_dir / "jobs.json").read_text())
    assert sorted(r["number"] for r in table if r["module_run"] == "t_copy" and r["status"] == "done_previously") \
        == finished
    assert main([str(run_dir)]) == 0


def test_bad_paths_exit_2_naming_them(tmp_path, capsys):
    missing = tmp_path / "no_such_output"
    assert main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "shapepipe.cluster.status", str(missing)], capture_output=True, text=True)
    assert result.returncode == 2 and str(missing) in result.stderr
    # A record that cannot be read is named, and the campaign is not called done.
    broken = empty / "broken_run"
    broken.mkdir()
    (broken / "run.json").write_text("{")
    assert main([str(empty)]) == 1
    assert f"{broken}: run.json cannot be read" in capsys.readouterr().out


# -- synthetic run folders: known truth, any scheduler, many runs ------------------------------
def make_run(output_dir: Path, name: str, numbers, statuses: dict, started: str, batch=None, run_status=None):
    """A finished run folder written by hand: ``statuses`` maps (module run, number) to a job status."""
    run_dir = output_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "c.ini").write_text("[DEFAULT]\n")
    module_runs = list(dict.fromkeys(m for m, _ in statuses))
    rows = []
    base = time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S"))
    for i, ((module_run, number), status) in enumerate(statuses.items()):
        rows.append({"module": module_run, "module_run": module_run, "number": number, "status": status,
                     "error": "ValueError: bad pixel\ntraceback" if status == "failed" else "",
                     "started": base + i, "log": str(run_dir / module_run / "logs" / f"process{number}.log")})
    bad = any(s != "done" for s in statuses.values())
    record = {"format": 1, "run_name": name.split("_")[0], "run_dir": str(run_dir),
              "status": run_status or ("partial" if bad else "done"), "started": started, "finished": started,
              "host": "elsewhere", "pid": 1, "config_file": str(output_dir / "c.ini"), "config_copy": "c.ini",
              "config_sha256": "0", "selection": {"numbers": list(numbers)}, "batch": batch or {},
              "modules": [{"module_run": m, "module": m, "status": "partial" if bad else "done"} for m in module_runs]}
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "jobs.json").write_text(json.dumps(rows))
    return run_dir


def test_resubmission_commands_per_scheduler(tmp_path):
    out = tmp_path / "out"
    for k in range(6):
        failed = k in (1, 2, 4)
        make_run(out, f"slurm_task{k}", [f"-{k}"], {("a", f"-{k}"): "failed" if failed else "done"},
                 "2024-01-01T10:00:00", batch={"SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": str(k),
                                               "SHAPEPIPE_BATCH_SCRIPT": "jobs/array.sh",
                                               "SLURM_SUBMIT_DIR": "/home/me/campaign"})
        make_run(out, f"torque_task{k}", [f"-{k}"], {("b", f"-{k}"): "timeout" if failed else "done"},
                 "2024-01-01T10:00:00", batch={"PBS_ARRAYID": str(k), "SHAPEPIPE_BATCH_SCRIPT": "/s/torque.sh"})
        make_run(out, f"pbspro_task{k}", [f"-{k}"], {("c", f"-{k}"): "failed" if failed else "done"},
                 "2024-01-01T10:00:00", batch={"PBS_ARRAY_INDEX": str(k), "SHAPEPIPE_BATCH_SCRIPT": "/s/pro.sh"})
        make_run(out, f"sge_task{k}", [f"-{k}"], {("d", f"-{k}"): "failed" if failed else "done"},
                 "2024-01-01T10:00:00", batch={"JOB_ID": "9", "SGE_TASK_ID": str(k + 1),
                                               "SHAPEPIPE_BATCH_SCRIPT": "/s/array.sge"})
    make_run(out, "sge_plain", ["-9"], {("e", "-9"): "failed"}, "2024-01-01T10:00:00",
             batch={"JOB_ID": "10", "SGE_TASK_ID": "undefined", "SHAPEPIPE_BATCH_SCRIPT": "/s/plain.sge"})
    report = collect(out)
    commands = resubmit_commands(report)
    assert ["sbatch", "--array=1-2,4", "/home/me/campaign/jobs/array.sh"] in commands
    assert ["qsub", "-t", "1-2,4", "/s/torque.sh"] in commands
    # PBS Pro takes ranges of two or more: the lone 4 is paired with task 5, which redoes nothing.
    assert ["qsub", "-J", "1-2", "/s/pro.sh"] in commands and ["qsub", "-J", "4-5", "/s/pro.sh"] in commands
    # Grid Engine: its own task numbers (from 1), one range per qsub; a plain job is no array task.
    assert ["qsub", "-t", "2-3", "/s/array.sge"] in commands and ["qsub", "-t", "5-5", "/s/array.sge"] in commands
    assert len(commands) == 6
    assert len(rerun_commands(report)) == 13
    assert {o.error for o in report.failures() if o.status == "failed"} == {"ValueError: bad pixel"}
    assert sorted(o.status for o in report.failures()) == ["failed"] * 10 + ["timeout"] * 3


def test_newest_outcome_wins_and_absence_never_hides(tmp_path):
    out = tmp_path / "out"
    make_run(out, "x_1", ["-1", "-2", "-3"], {("m", "-1"): "failed", ("m", "-2"): "done", ("m", "-3"): "failed"},
             "2024-01-01T10:00:00")
    make_run(out, "x_2", ["-1"], {("m", "-1"): "failed"}, "2024-01-02T10:00:00")
    make_run(out, "x_3", ["-1", "-2"], {("m", "-1"): "done", ("m", "-2"): "missing_input"}, "2024-01-03T10:00:00")
    report = collect(out)
    got = {o.number: (o.status, Path(o.run_dir).name, o.failed_before) for o in report.outcomes}
    assert got == {"-1": ("done", "x_3", 2), "-2": ("done", "x_1", 0), "-3": ("failed", "x_1", 0)}
    assert rerun_commands(report) == [["shapepipe_run", "-c", str(out / "x_1" / "c.ini"), "--resume",
                                       str(out / "x_1")]]
    assert collect(out, run_name="nothing").runs == []


def test_many_runs_are_read_once_each(tmp_path):
    """300 runs of a campaign: counts over the newest outcomes, in well under a second per 100 runs."""
    out = tmp_path / "out"
    for k in range(300):
        numbers = [f"-{k:04d}"]
        status = "failed" if k % 50 == 7 else "done"
        make_run(out, f"big_task{k}", numbers, {("a", numbers[0]): status, ("b", numbers[0]): "done"},
                 "2024-01-01T10:00:00", batch={"SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": str(k),
                                               "SHAPEPIPE_BATCH_SCRIPT": "/s/a.sh"})
    start = time.perf_counter()
    report = collect(out)
    elapsed = time.perf_counter() - start
    counts = report.counts()
    assert (counts["a"]["done"], counts["a"]["failed"], counts["b"]["done"]) == (294, 6, 300)
    assert resubmit_commands(report) == [["sbatch", "--array=7,57,107,157,207,257", "/s/a.sh"]]
    assert elapsed < 3.0, elapsed
