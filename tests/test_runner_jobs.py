"""Runner: job execution, failures, time-outs, atomic outputs, resume, command line."""

from __future__ import annotations

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
from shapepipe.cli import main

NUMBERS = ["-001", "-002", "-003", "-004"]


@pytest.fixture
def setup(tmp_path):
    return tmp_path, make_modules(tmp_path), make_inputs(tmp_path / "data", NUMBERS)


def _run_dir(out, name="test"):
    dirs = sorted(out.glob(f"{name}_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def _table(run_dir):
    return {(r["module_run"], r["number"]): r for r in json.loads((run_dir / "jobs.json").read_text())}


def _tree(folder: Path) -> dict:
    """Relative path -> content of every file below folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(run_dir: Path) -> dict:
    found = {}
    for output in sorted(run_dir.glob("*/output")):
        for name, data in _tree(output).items():
            found[f"{output.parent.name}/{name}"] = data
    return found


def test_failure_isolation_downstream_skip_and_exit_status(setup):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy, t_chain, t_sum", inputs, out, mods,
                          extra="[T_COPY]\nFAIL_ON = -002\nTAG = t:\n")
    assert main(["-c", str(config)]) == 1
    run_dir = _run_dir(out)
    table = _table(run_dir)
    assert table[("t_copy", "-002")]["status"] == "failed"
    assert "JobError: refusing" in table[("t_copy", "-002")]["error"]
    assert "Traceback" in table[("t_copy", "-002")]["traceback"]
    assert [table[("t_copy", n)]["status"] for n in ("-001", "-003", "-004")] == ["done"] * 3
    assert table[("t_chain", "-002")]["status"] == "skipped_upstream"
    assert [table[("t_chain", n)]["status"] for n in ("-001", "-003", "-004")] == ["done"] * 3
    assert table[("t_sum", "-002")]["status"] == "skipped_upstream"
    # Atomic outputs: the failed job published nothing, not even the files it wrote first.
    outputs = _outputs(run_dir)
    assert "t_copy/out-002.txt" not in outputs and "t_copy/sub/side-002.txt" not in outputs
    assert outputs["t_copy/out-001.txt"] == b"t:value-001"
    assert outputs["t_chain/up-004.txt"] == b"T:VALUE-004"
    assert outputs["t_sum/all.txt"] == b"t:value-001t:value-003t:value-004"
    assert not list(run_dir.rglob(".staging"))
    # The failed job's own log holds the traceback.
    log = (run_dir / "t_copy" / "logs" / "process-002.log").read_text()
    assert "Traceback" in log and "refusing" in log
    record = json.loads((run_dir / "run.json").read_text())
    assert [m["status"] for m in record["modules"]] == ["partial", "partial", "partial"]
    assert record["status"] == "partial" and record["run_dir"] == str(run_dir)
    csv_lines = (run_dir / "jobs.csv").read_text().splitlines()
    assert csv_lines[0].startswith("module_run,module,number,status,duration_s,cpu_s,peak_memory_mb,error")
    assert len(csv_lines) == 1 + 4 + 4 + 2  # t_sum: one serial job and one skipped number


def test_seeded_outputs_do_not_depend_on_backend_or_batch(setup):
    tmp_path, mods, inputs = setup
    results = []
    for backend, batch in (("loky", 2), ("threading", 1)):
        out = tmp_path / f"out_{backend}"
        config = write_config(tmp_path / "c.ini", "t_copy", inputs, out, mods,
                              job=f"SMP_BACKEND = {backend}\nSEED = 7", batch=batch)
        assert main(["-c", str(config)]) == 0
        results.append(_outputs(_run_dir(out)))
    assert results[0] == results[1]
    sides = {v for k, v in results[0].items() if "side" in k}
    assert len(sides) == 4  # independent streams per number


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_timeout_of_a_sleeping_job(setup, backend):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy, t_copy", inputs, out, mods,
                          job=f"SMP_BACKEND = {backend}\nTIMEOUT = 00:00:01",
                          extra="[T_COPY_RUN_1]\nSLEEP = 30\nNUMBER_LIST = -001, -002\n")
    start = time.monotonic()
    assert main(["-c", str(config)]) == 1
    assert time.monotonic() - start < 15
    run_dir = _run_dir(out)
    table = _table(run_dir)
    assert [table[("t_copy_run_1", n)]["status"] for n in ("-001", "-002")] == ["timeout", "timeout"]
    assert "TIMEOUT of 1 s" in table[("t_copy_run_1", "-001")]["error"]
    # The other module run is untouched by the time-outs.
    assert [table[("t_copy_run_2", n)]["status"] for n in NUMBERS] == ["done"] * 4
    assert not any(k.startswith("t_copy_run_1/") for k in _outputs(run_dir))


@pytest.mark.parametrize("raw", [False, True])
def test_timeout_stops_external_programs(setup, raw):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    seconds = "31.4159" if raw else "27.1828"
    config = write_config(tmp_path / "c.ini", "t_sleep_cmd", inputs, out, mods, job="TIMEOUT = 1",
                          extra=f"[T_SLEEP_CMD]\nSECONDS = {seconds}\nRAW = {raw}\nNUMBER_LIST = -001\n")
    start = time.monotonic()
    assert main(["-c", str(config)]) == 1
    assert time.monotonic() - start < 15
    table = _table(_run_dir(out))
    assert table[("t_sleep_cmd", "-001")]["status"] == "timeout"
    time.sleep(0.2)
    sleepers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]
    assert sleepers == []


def test_resume_after_kill_gives_identical_outputs(setup):
    tmp_path, mods, _ = setup
    numbers = [f"-{i:03d}" for i in range(1, 9)]
    inputs = make_inputs(tmp_path / "data8", numbers)
    extra = "[T_COPY]\nSLEEP = 0.4\n"
    reference_out, killed_out = tmp_path / "ref", tmp_path / "killed"
    reference = write_config(tmp_path / "ref.ini", "t_copy, t_chain, t_sum", inputs, reference_out, mods,
                             extra=extra, job="SEED = 3")
    config = write_config(tmp_path / "kill.ini", "t_copy, t_chain, t_sum", inputs, killed_out, mods,
                          extra=extra, job="SEED = 3")
    command = [sys.executable, "-m", "shapepipe.cli", "-c", str(config)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = list(killed_out.glob("test_*/t_copy/logs/status/*.json"))
        if len(done) >= 2:
            break
        time.sleep(0.02)
    helpers = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    run_dir = _run_dir(killed_out)
    finished = len(list(run_dir.glob("t_copy/logs/status/*.json")))
    assert 2 <= finished < len(numbers)
    time.sleep(0.6)  # let orphaned workers notice their parent is gone
    result = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = _table(run_dir)
    statuses = [table[("t_copy", n)]["status"] for n in numbers]
    assert statuses.count("done_previously") >= 2 and set(statuses) <= {"done", "done_previously"}
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and len(record["resumed"]) == 1
    for helper in helpers:  # orphaned joblib workers of the killed run would idle for minutes
        try:
            helper.kill()
        except psutil.NoSuchProcess:
            pass
    assert main(["-c", str(reference)]) == 0
    assert _outputs(run_dir) == _outputs(_run_dir(reference_out))
    assert len(_outputs(run_dir)) == 2 * 8 + 8 + 1


def test_cli_list_describe_dry_run_exclusive(setup, capsys):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy, t_chain", inputs, out, mods)
    assert main(["-l", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "t_copy" in listing and "python_example" in listing and "1.1" in listing
    assert main(["--describe", "t_copy_runner", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert "FAIL_ON (list; default: [])" in text and "numbers that fail" in text
    assert main(["-c", str(config), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("planned") == 5 and not out.exists()
    assert main(["-c", str(config), "-e", "-003"]) == 0
    table = _table(_run_dir(out))
    assert sorted(table) == [("t_chain", "-003"), ("t_copy", "-003")]


def test_missing_dependencies_exit_3(setup):
    tmp_path, mods, inputs = setup
    config = write_config(tmp_path / "c.ini", "t_copy, t_needs", inputs, tmp_path / "out", mods)
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 3
    assert "no_such_package_xyz is not installed (install it with: pip install no_such_package_xyz)" in result.stderr
    assert "executable no-such-program-xyz not found" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_example_config_from_repository_root(tmp_path):
    root = Path(__file__).resolve().parents[1]
    text = (root / "example" / "config.ini").read_text()
    text = text.replace("./example/output", str(tmp_path / "out")).replace("./example/", f"{root}/example/")
    config = tmp_path / "config.ini"
    config.write_text(text.replace("VERBOSE = True", "VERBOSE = False"))
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "out").glob("example_run_*"))
    outputs = _outputs(run_dir)
    assert outputs["python_example_run_1/pyex_output_4.cat"] == b"The obtained value is:4 and d"
    assert outputs["execute_example_run_1/head_output_1.txt"] == b"The obtained value is:1 and a"
    assert outputs["python_example_run_2/pyex_output_2.cat"] == (
        b"The new obtained value is:The obtained value is:2 and b and The obtained value is:2 and b")
    assert outputs["serial_example/serial_outputfile_number_string.cat"] == (
        b"1aThe obtained value is:1 and a2bThe obtained value is:2 and b4dThe obtained value is:4 and d")
    assert "2 number(s) lack an input type, e.g. _3, _5" in result.stdout
    table = _table(run_dir)
    assert table[("python_example_run_1", "_3")]["status"] == "missing_input"


def test_preload_runs_once_per_worker_and_never_fails_a_job(tmp_path, monkeypatch):
    """ModuleSpec.preload: imported (and called) once per process; a bad entry is only logged."""
    import logging

    from shapepipe import jobs

    (tmp_path / "warm_probe.py").write_text("CALLS = []\ndef warm():\n    CALLS.append(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(jobs, "_PRELOADED", set())
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("preload-test")
    logger.addHandler(handler)
    for _ in range(3):
        jobs._preload(("warm_probe:warm", "no_such_module_xyz"), logger)
    import warm_probe

    assert warm_probe.CALLS == [1]
    assert [r.getMessage().split(":")[0] for r in records] == ["preload of no_such_module_xyz failed"]


def test_forked_job_and_preloads_leave_inherited_objects_to_a_frozen_generation(tmp_path, monkeypatch):
    """Preloaded modules are frozen (gc.freeze) and a forked job freezes what it inherits:
    the job's full collections then skip them; the collector stays enabled."""
    import gc
    import logging

    from shapepipe import jobs

    (tmp_path / "gc_probe.py").write_text(
        "import gc\n"
        "def probe(job):\n"
        "    return {'frozen': gc.get_freeze_count(), 'enabled': gc.isenabled()}\n"
        "def warm():\n"
        "    global KEPT\n"
        "    KEPT = [[i] for i in range(20000)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(jobs, "_PRELOADED", set())
    try:
        before = gc.get_freeze_count()
        jobs._preload(("gc_probe:warm",), logging.getLogger("gc-test"))
        import gc_probe

        # The preload's own objects are in the permanent generation, the collector is on again.
        assert gc.get_freeze_count() >= before + 20000
        assert gc.isenabled()
        assert len(gc_probe.KEPT) == 20000
        gc.unfreeze()
        task = jobs.Task(module="t", module_run="t", number="-001", inputs=[], input_table={}, options={},
                         function=("gc_probe", "probe"), module_dirs=(str(tmp_path),),
                         output_dir=str(tmp_path / "output"), log_dir=str(tmp_path / "logs"),
                         run_dir=str(tmp_path), timeout=60)
        row = jobs.run_task(task)
        assert row["status"] == "done", row
        # Nothing frozen in this process now; the forked job froze everything it inherited.
        assert gc.get_freeze_count() == 0
        assert row["result"]["frozen"] > 20000 and row["result"]["enabled"] is True
    finally:
        gc.unfreeze()
