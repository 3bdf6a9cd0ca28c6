"""MODE = DASK against real Dask clusters: a LocalCluster of two worker
processes started by the run or by the test, a killed worker, time-outs, a
scheduler without workers, and the dask-jobqueue job scripts (never submitted)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

distributed = pytest.importorskip("distributed")

from test_runner_helpers import make_inputs, make_modules, write_config  # noqa: E402
from shapepipe.cluster import dask_executor as executor_dask  # noqa: E402
from shapepipe.cli import main  # noqa: E402
from shapepipe.jobs import Task  # noqa: E402

NUMBERS = ["-001", "-002", "-003", "-004"]
COMPARED = ("module_run", "number", "status", "error", "outputs", "result")


def _config(path, modules, inputs, out, mods, mode="DASK", dask="", **kwargs):
    """A test-module configuration run with ``[EXECUTION] MODE = mode`` and a ``[DASK]`` section."""
    kwargs["extra"] = f"[DASK]\n{dask}\n" + kwargs.get("extra", "")
    write_config(path, modules, inputs, out, mods, **kwargs)
    path.write_text(path.read_text().replace("[EXECUTION]\n", f"[EXECUTION]\nMODE = {mode}\n", 1))
    return path


def _run(config, timeout=120):
    """shapepipe_run in its own process (a hang fails the test instead of blocking it)."""
    return subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], capture_output=True,
                          text=True, timeout=timeout)


def _run_dir(out):
    dirs = sorted(Path(out).glob("test_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def _table(run_dir):
    return {(r["module_run"], r["number"]): r for r in json.loads((run_dir / "jobs.json").read_text())}


def _outputs(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.glob("*/output/**/*")) if p.is_file()}


def _starts(run_dir, module_run, number):
    """How many times a job started (lines of its log)."""
    log = run_dir / module_run / "logs" / f"process{number}.log"
    return sum(": start (inputs:" in line for line in log.read_text().splitlines())


@pytest.fixture
def setup(tmp_path):
    return tmp_path, make_modules(tmp_path), make_inputs(tmp_path / "data", NUMBERS)


def test_local_cluster_gives_the_smp_results(setup):
    tmp_path, mods, inputs = setup
    extra = "[T_COPY]\nFAIL_ON = -002\nTAG = t:\n"
    results = {}
    for mode in ("SMP", "DASK"):
        config = _config(tmp_path / f"{mode}.ini", "t_copy, t_chain, t_sum", inputs, tmp_path / mode, mods,
                         mode=mode, dask="CLUSTER = local\nN_WORKERS = 2", job="SEED = 11", extra=extra)
        result = _run(config)
        assert result.returncode == 1, result.stderr  # -002 fails in both
        results[mode] = _run_dir(tmp_path / mode)
    smp, dask = results["SMP"], results["DASK"]
    smp_table, dask_table = _table(smp), _table(dask)
    assert list(dask_table) == list(smp_table)
    for key, row in smp_table.items():
        assert {c: dask_table[key][c] for c in COMPARED} == {c: row[c] for c in COMPARED}, key
    assert dask_table[("t_copy", "-002")]["status"] == "failed"
    assert dask_table[("t_chain", "-002")]["status"] == "skipped_upstream"
    assert dask_table[("t_sum", "")]["status"] == "done"  # the serial job, on a Dask worker too
    outputs = _outputs(dask)
    assert outputs == _outputs(smp)
    assert outputs["t_copy/output/out-003.txt"] == b"t:value-003"
    assert outputs["t_chain/output/up-004.txt"] == b"T:VALUE-004"
    assert outputs["t_sum/output/all.txt"] == b"t:value-001t:value-003t:value-004"
    record = json.loads((dask / "run.json").read_text())
    assert "DASK (local cluster, 2 worker processes)" in (dask / "shapepipe.log").read_text()
    assert record["status"] == "partial"
    # The jobs ran in the two worker processes, not in the runner.
    pids = {r["worker_pid"] for r in dask_table.values() if r["status"] == "done"}
    assert len(pids) == 2 and record.get("pid", 0) not in pids
    assert not list(dask.glob(f"*/logs/{executor_dask.MARKER_FOLDER}"))


def test_killed_worker_fails_only_its_job(setup):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = _config(tmp_path / "die.ini", "t_copy, t_chain", inputs, out, mods, dask="N_WORKERS = 2",
                     extra="[T_COPY]\nDIE_ON = -003\n")
    start = time.monotonic()
    result = _run(config, timeout=120)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - start < 60
    run_dir = _run_dir(out)
    table = _table(run_dir)
    lost = table[("t_copy", "-003")]
    assert lost["status"] == "failed"
    assert lost["error"].startswith("worker lost: Dask worker tcp://127.0.0.1:")
    assert lost["error"].endswith("died while running the job")
    status = json.loads((run_dir / "t_copy" / "logs" / "status" / "process-003.json").read_text())
    assert status["status"] == "failed" and status["error"] == lost["error"]
    assert table[("t_chain", "-003")]["status"] == "skipped_upstream"
    for number in ("-001", "-002", "-004"):
        assert table[("t_copy", number)]["status"] == "done"
        assert table[("t_chain", number)]["status"] == "done"
        assert (run_dir / "t_chain" / "output" / f"up{number}.txt").read_text() == f"VALUE{number}"
        # A result lost with the dead worker is not recomputed: every job ran once.
        assert _starts(run_dir, "t_copy", number) == 1
    assert not (run_dir / "t_copy" / "output" / "out-003.txt").exists()


def test_job_queued_on_the_dead_worker_runs_again(setup, monkeypatch):
    """One worker holds both jobs (Dask sends a group this small to the workers at
    once, and the worker runs them in submission order): -001 kills it while
    -002 waits in its queue; -002 is submitted again, not failed."""
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = _config(tmp_path / "queued.ini", "t_copy", inputs, out, mods, dask="N_WORKERS = 1",
                     extra="[T_COPY]\nDIE_ON = -001\nNUMBER_LIST = -001, -002\n")
    seen = []
    row_of = executor_dask._row_of

    def spy(task, future, result, marker):
        row = row_of(task, future, result, marker)
        seen.append((task.number, future.status, marker if isinstance(marker, str) else type(marker).__name__,
                     row and row["status"]))
        return row

    monkeypatch.setattr(executor_dask, "_row_of", spy)
    assert main(["-c", str(config)]) == 1
    run_dir = _run_dir(out)
    table = _table(run_dir)
    assert table[("t_copy", "-001")]["error"].startswith("worker lost: Dask worker tcp://")
    assert table[("t_copy", "-002")]["status"] == "done"
    assert _starts(run_dir, "t_copy", "-002") == 1
    assert ("-002", "error", "NoneType", None) in seen  # lost with the worker before it started
    assert seen[-1][0] == "-002" and seen[-1][1:] == ("finished", "NoneType", "done")


@pytest.mark.parametrize("raw", [False, True])
def test_timeout_stops_the_external_program(setup, raw):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    seconds = "23.4567" if raw else "21.9876"
    config = _config(tmp_path / "t.ini", "t_sleep_cmd", inputs, out, mods, dask="N_WORKERS = 2",
                     job="TIMEOUT = 1",
                     extra=f"[T_SLEEP_CMD]\nSECONDS = {seconds}\nRAW = {raw}\nNUMBER_LIST = -001, -002\n")
    start = time.monotonic()
    result = _run(config)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - start < 20
    table = _table(_run_dir(out))
    for number in ("-001", "-002"):
        assert table[("t_sleep_cmd", number)]["status"] == "timeout"
        assert "TIMEOUT of 1 s" in table[("t_sleep_cmd", number)]["error"]
    time.sleep(0.2)
    sleepers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]
    assert sleepers == []


@pytest.fixture
def external_cluster():
    """A LocalCluster started by the test, as a user's running scheduler."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    yield cluster
    cluster.close()


def test_existing_scheduler_is_used_and_left_running(setup, external_cluster):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    address = external_cluster.scheduler_address
    config = _config(tmp_path / "ext.ini", "t_copy, t_chain", inputs, out, mods,
                     dask=f"SCHEDULER_ADDRESS = {address}")
    result = _run(config)
    assert result.returncode == 0, result.stderr
    run_dir = _run_dir(out)
    assert {r["status"] for r in _table(run_dir).values()} == {"done"}
    for number in NUMBERS:
        assert (run_dir / "t_chain" / "output" / f"up{number}.txt").read_text() == f"VALUE{number}"
    assert f"DASK (scheduler {address})" in (run_dir / "shapepipe.log").read_text()
    # The run closed only its client: the cluster still has both workers and computes.
    with distributed.Client(external_cluster) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        # The jobs ran in the cluster's worker processes.
        assert {r["worker_pid"] for r in _table(run_dir).values()} <= set(client.run(os.getpid).values())
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6


def test_no_worker_fails_the_jobs_after_worker_wait(setup):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    cluster = distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        address = cluster.scheduler_address
        config = _config(tmp_path / "wait.ini", "t_copy", inputs, out, mods,
                         dask=f"SCHEDULER_ADDRESS = {address}\nWORKER_WAIT = 3")
        start = time.monotonic()
        result = _run(config, timeout=60)
        elapsed = time.monotonic() - start
        assert result.returncode == 1, result.stderr
        assert 3 <= elapsed < 20
        table = _table(_run_dir(out))
        assert len(table) == 4
        for row in table.values():
            assert row["status"] == "failed"
            assert row["error"] == f"no Dask worker for 3 s: no worker joined the scheduler at {address}"
        # The abandoned jobs were cancelled: nothing is left to run on a late worker.
        deadline = time.monotonic() + 10
        while cluster.scheduler.tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not cluster.scheduler.tasks
    finally:
        cluster.close()


def test_every_worker_gone_fails_the_remaining_jobs(tmp_path):
    """Workers that leave and do not come back: the run ends after WORKER_WAIT."""
    numbers = [f"-{i:03d}" for i in range(1, 7)]
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", numbers)
    out = tmp_path / "out"
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.CRITICAL)
    try:
        config = _config(tmp_path / "gone.ini", "t_copy", inputs, out, mods,
                         dask=f"SCHEDULER_ADDRESS = {cluster.scheduler_address}\nWORKER_WAIT = 2",
                         extra="[T_COPY]\nSLEEP = 0.5\n")
        process = subprocess.Popen([sys.executable, "-m", "shapepipe.cli", "-c", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(out.glob("test_*/t_copy/logs/status/process-*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.scale(0)  # the only worker leaves (as at the end of a batch job's wall time)
        assert process.wait(timeout=60) == 1, process.stderr.read()
    finally:
        cluster.close()
    table = _table(_run_dir(out))
    statuses = [row["status"] for row in table.values()]
    assert len(table) == 6 and "done" in statuses and "failed" in statuses
    for row in table.values():
        if row["status"] == "failed":
            assert row["error"].startswith("no Dask worker for 2 s: every worker of tcp://")


def test_worker_watch_names_a_worker_that_ran_a_job_and_left():
    """A worker that ran a job and left between two looks at the scheduler was there: the reason says so."""
    client = SimpleNamespace(scheduler_info=lambda n_workers=0: {"n_workers": 0})
    watch = executor_dask._WorkerWatch(client, 0.0, "tcp://x:1")
    assert watch.problem(lambda: False) == "no Dask worker for 0 s: no worker joined the scheduler at tcp://x:1"
    assert watch.problem(lambda: True) == ("no Dask worker for 0 s: every worker of tcp://x:1 died or left and "
                                           "none came back")
    # Once seen, always seen; the evidence is not asked again.
    assert watch.problem(lambda: pytest.fail("asked again")).endswith("died or left and none came back")


def _task(tmp_path, number="-001"):
    return Task(module="t", module_run="t", number=number, inputs=[], input_table={}, options={},
                function=("m", "f"), module_dirs=(), output_dir=str(tmp_path / "output"),
                log_dir=str(tmp_path / "logs"), run_dir=str(tmp_path))


def test_lost_worker_rows_follow_the_job_markers(tmp_path):
    """A job whose worker died: failed if it was running, kept if it had finished,
    submitted again if it was only queued there."""
    from distributed.scheduler import KilledWorker

    task = _task(tmp_path)
    future = SimpleNamespace(status="error", cancelled=lambda: False)
    error = KilledWorker("key", SimpleNamespace(address="tcp://10.0.0.7:4000"), 0)
    result = (KilledWorker, error, None)
    finished_row = {"module_run": "t", "number": "-001", "status": "done"}
    assert executor_dask._row_of(task, future, result, finished_row) is finished_row
    assert executor_dask._row_of(task, future, result, None) is None
    row = executor_dask._row_of(task, future, result, executor_dask.STARTED)
    assert row["status"] == "failed"
    assert row["error"] == "worker lost: Dask worker tcp://10.0.0.7:4000 died while running the job"
    assert json.loads((tmp_path / "logs" / "status" / "process-001.json").read_text())["error"] == row["error"]
    retried = KilledWorker("key", SimpleNamespace(address="tcp://10.0.0.8:4000"), 2)
    row = executor_dask._row_of(task, future, (KilledWorker, retried, None), executor_dask.STARTED)
    assert row["error"].endswith("(the job was tried on 3 workers, all died)")


def test_marker_of_a_finished_job_is_returned_instead_of_rerunning(tmp_path):
    task = _task(tmp_path)
    calls = []

    def function(job):
        calls.append(job.number)
        return {"number": job.number, "status": "done"}

    first = executor_dask._run_on_worker(task, function, "elsewhere", "tok1")
    again = executor_dask._run_on_worker(task, function, "elsewhere", "tok1")
    other = executor_dask._run_on_worker(task, function, "elsewhere", "tok2")
    assert first == again == other == {"number": "-001", "status": "done"}
    assert calls == ["-001", "-001"]  # once per submission token


def test_abandoned_jobs_keep_the_rows_of_finished_markers(tmp_path):
    """No worker left: a job that finished before its worker went keeps its row; the others fail."""
    done, running, queued = (_task(tmp_path, n) for n in ("-001", "-002", "-003"))
    executor_dask._run_on_worker(done, lambda job: {"number": job.number, "status": "done"}, "elsewhere", "tok")
    marker = executor_dask.job_marker(running, "tok")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(executor_dask.STARTED)
    cancelled = []
    executor = object.__new__(executor_dask.DaskExecutor)
    executor.client = SimpleNamespace(cancel=lambda futures, force: cancelled.extend(futures))
    pending = {t.number: (t, f"future{t.number}", "tok", 1) for t in (done, running, queued)}
    rows = dict((task.number, row) for task, row in executor._abandon(pending, "no Dask worker for 2 s: gone"))
    assert not pending and len(cancelled) == 3
    assert rows["-001"] == {"number": "-001", "status": "done"}
    assert rows["-002"]["status"] == rows["-003"]["status"] == "failed"
    assert rows["-003"]["error"] == "no Dask worker for 2 s: gone"


def test_status_file_written_after_the_marker_counts_as_finished(tmp_path):
    """The worker left between the job's status file and the marker's row."""
    task = _task(tmp_path)
    marker = executor_dask.job_marker(task, "tok")
    marker.parent.mkdir(parents=True, exist_ok=True)
    task.status_path.parent.mkdir(parents=True, exist_ok=True)
    task.status_path.write_text(json.dumps({"number": "-001", "status": "failed", "error": "old run"}))
    marker.write_text(executor_dask.STARTED)
    os.utime(task.status_path, ns=(marker.stat().st_mtime_ns - 10**9,) * 2)
    assert executor_dask.read_marker(task, "tok") == executor_dask.STARTED  # an earlier run's file
    task.status_path.write_text(json.dumps({"number": "-001", "status": "done"}))
    os.utime(task.status_path, ns=(marker.stat().st_mtime_ns + 10**6,) * 2)
    assert executor_dask.read_marker(task, "tok") == {"number": "-001", "status": "done"}


def _jobqueue_options(**changes):
    options = dict(CORES=4, PROCESSES=2, MEMORY="8GB", WALLTIME="02:30:00", QUEUE="long", ACCOUNT="lensing",
                   JOB_EXTRA_DIRECTIVES=["--constraint=skylake"],
                   JOB_SCRIPT_PROLOGUE=["module load python/3.11", "source /opt/sp/venv/bin/activate"])
    options.update(changes)
    return options


def test_slurm_job_script_from_dask_options():
    pytest.importorskip("dask_jobqueue")
    cluster = executor_dask.make_jobqueue_cluster("slurm", _jobqueue_options())
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for expected in ("#SBATCH -p long", "#SBATCH -A lensing", "#SBATCH -n 1", "#SBATCH --cpus-per-task=4",
                     "#SBATCH --mem=8G", "#SBATCH -t 02:30:00", "#SBATCH --constraint=skylake",
                     "module load python/3.11", "source /opt/sp/venv/bin/activate"):
        assert expected in lines, (expected, script)
    # The prologue comes before the worker command, which runs this Python with 2 x 2 threads.
    command = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert lines.index("source /opt/sp/venv/bin/activate") < lines.index(command)
    assert command.startswith(sys.executable + " -m distributed.cli.dask_worker tcp://")
    assert "--nworkers 2" in command and "--nthreads 2" in command
    assert "--memory-limit 3.73GiB" in command  # 8 GB shared by 2 worker processes


def test_pbs_job_script_from_dask_options():
    pytest.importorskip("dask_jobqueue")
    options = _jobqueue_options(JOB_EXTRA_DIRECTIVES=["-m abe"], ACCOUNT=None)
    cluster = executor_dask.make_jobqueue_cluster("pbs", options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for expected in ("#PBS -q long", "#PBS -l select=1:ncpus=4:mem=7630MB", "#PBS -l walltime=02:30:00",
                     "#PBS -m abe", "module load python/3.11", "source /opt/sp/venv/bin/activate"):
        assert expected in lines, (expected, script)
    assert not any(line.startswith("#PBS -A") for line in lines)  # no account given
    assert executor_dask.jobqueue_cluster_kwargs({"ACCOUNT": "lensing"})["account"] == "lensing"


def test_missing_dask_packages_stop_the_run_before_any_job(setup, monkeypatch, capsys):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = _config(tmp_path / "slurm.ini", "t_copy", inputs, out, mods, dask="CLUSTER = slurm")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "dask_jobqueue" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["-c", str(config)]) == 3
    message = capsys.readouterr().err
    assert "[DASK] CLUSTER = slurm: Python package dask_jobqueue is not installed" in message
    assert "pip install dask-jobqueue" in message
    assert not out.exists() or not list(out.glob("test_*/t_copy/logs/status/*.json"))
    # A local cluster does not need dask-jobqueue; without distributed nothing runs.
    assert executor_dask.missing_packages({"CLUSTER": "local"}) == []
    assert executor_dask.missing_packages({"CLUSTER": "slurm", "SCHEDULER_ADDRESS": "tcp://h:8786"}) == []
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "distributed" else real_find_spec(name, *a, **k))
    assert "pip install dask distributed" in executor_dask.missing_packages({})[0]
