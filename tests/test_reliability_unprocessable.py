"""Reliability 7: jobs whose data cannot give the product end ``unprocessable``, not ``failed``.

Downstream jobs of that number are skipped with the reason, a serial
(multi-epoch) consumer drops the number, the run exits 0 and the summary
counts them; MAX_UNPROCESSABLE_FRACTION turns too much loss into a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_runner_helpers import make_inputs, make_modules, write_config

NUMBERS = ["-001", "-002", "-003", "-004"]
RUN = [sys.executable, "-m", "shapepipe.cli"]


def _run(tmp_path, name, extra, job=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)
    config = write_config(tmp_path / f"{name}.ini", "t_copy, t_chain, t_sum", inputs, tmp_path / name, mods,
                          extra=extra, job=job)
    result = subprocess.run(RUN + ["-c", str(config)], cwd=tmp_path, capture_output=True, text=True)
    (run_dir,) = (tmp_path / name).glob("test_*")
    table = {(r["module_run"], r["number"]): r for r in json.loads((run_dir / "jobs.json").read_text())}
    return result, run_dir, table


def test_unprocessable_number_is_dropped_downstream_and_the_run_succeeds(tmp_path):
    result, run_dir, table = _run(tmp_path, "lost", "[T_COPY]\nUNPROCESSABLE_ON = -002\n")
    assert result.returncode == 0, result.stderr
    assert table[("t_copy", "-002")]["status"] == "unprocessable"
    assert table[("t_copy", "-002")]["error"] == f"JobUnprocessable: {tmp_path / 'data' / 'in-002.txt'}: too few stars"
    assert table[("t_chain", "-002")]["status"] == "skipped_unprocessable"
    assert table[("t_chain", "-002")]["error"] == "input unprocessable in t_copy"
    assert all(table[(m, n)]["status"] == "done" for m in ("t_copy", "t_chain") for n in NUMBERS if n != "-002")
    # The serial consumer drops that number and keeps the others, in order.
    assert (run_dir / "t_sum" / "output" / "all.txt").read_text() == "value-001value-003value-004"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    counts = {m["module_run"]: m["counts"] for m in record["modules"]}
    assert counts["t_copy"] == {"done": 3, "unprocessable": 1}
    assert counts["t_chain"] == {"done": 3, "skipped_unprocessable": 1}
    lines = result.stdout.splitlines()
    assert lines[0].split()[8] == "unproc"
    assert next(l for l in lines if l.startswith("t_copy ")).split()[7] == "1"  # "module run" is two words
    assert "unprocessable data (not failures): t_copy: 1 unprocessable, 0 skipped as their input was, e.g. -002" \
        in result.stdout
    log = (run_dir / "t_copy" / "logs" / "process-002.log").read_text()
    assert "job unprocessable:" in log and "Traceback" not in log


def test_too_many_unprocessable_jobs_fail_the_run(tmp_path):
    result, run_dir, table = _run(tmp_path, "toomany", "[T_COPY]\nUNPROCESSABLE_ON = -002, -003\n",
                                  job="MAX_UNPROCESSABLE_FRACTION = 0.25")
    assert result.returncode == 1
    record = json.loads((run_dir / "run.json").read_text())
    entry = {m["module_run"]: m for m in record["modules"]}["t_copy"]
    assert entry["status"] == "partial"
    assert entry["error"] == "2 of 4 jobs unprocessable, more than MAX_UNPROCESSABLE_FRACTION = 0.25"
    # At the limit the run still succeeds.
    result, _, _ = _run(tmp_path / "b", "limit", "[T_COPY]\nUNPROCESSABLE_ON = -002, -003\n",
                        job="MAX_UNPROCESSABLE_FRACTION = 0.5")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_gold_tiny_runs_to_the_end_counting_unprocessable_ccds(tmp_path):
    """shapepipe_gold --preset tiny: CCDs with too few stars are dropped, the chain reaches validation."""
    result = subprocess.run([sys.executable, "-m", "shapepipe_modules.gold.cli", "--preset", "tiny",
                             "--data", str(tmp_path / "data"), "--run-root", str(tmp_path / "run"), "-j", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "output" / "gold_summary.json").read_text())
    lost = {r["module_run"]: r["unprocessable"] for r in summary["modules"] if r["unprocessable"]}
    assert lost.get("setools", 0) >= 1 and lost.get("psfex", 0) == lost["setools"]
    assert "shear" in summary and "unprocessable data (dropped, not failures" in result.stdout
