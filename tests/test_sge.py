"""A campaign on a real Grid Engine cluster (scripts/ci/start_sge.sh starts one on this machine).

shapepipe_batch writes and submits a job array over three simulated exposures
(split_exp, one exposure per task, one exposure's image truncated) and the
merge job held until the array ends (merge_headers over ``all:split_exp``,
two slots of the ``smp`` parallel environment). Then the input is fixed and
the failed task is resubmitted with the command shapepipe_status prints.
Skipped when no Grid Engine queue answers, unless SHAPEPIPE_REQUIRE_SGE=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from campaign_helpers import job_rows, merged_store, task_runs, truth_crval, write_campaign

pytestmark = pytest.mark.sge

#: Longest wait for submitted jobs, seconds.
JOB_TIMEOUT = 180


def _environment() -> dict:
    """This environment with Grid Engine's default root and cell where unset."""
    return {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default", **os.environ}


def _cluster_problem() -> str | None:
    """Why no Grid Engine queue can take jobs here, or None if one answers."""
    if shutil.which("qsub") is None or shutil.which("qstat") is None:
        return "qsub/qstat not installed"
    environment = _environment()
    act_qmaster = Path(environment["SGE_ROOT"]) / environment["SGE_CELL"] / "common" / "act_qmaster"
    if not act_qmaster.is_file():
        return f"no Grid Engine cell ({act_qmaster} missing)"
    try:
        result = subprocess.run(["qstat", "-f"], capture_output=True, text=True, timeout=20, env=environment)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"qstat: {error}"
    # Queue instance lines: name@host, type, used/total slots, load, arch[, states]; no state = usable.
    usable = [line for line in result.stdout.splitlines() if "@" in line.split(" ", 1)[0] and len(line.split()) == 5]
    if result.returncode != 0 or not usable:
        return f"no usable Grid Engine queue (qstat -f: {result.stdout.strip() or result.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def sge_cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("SHAPEPIPE_REQUIRE_SGE") == "1":
            pytest.fail(f"SHAPEPIPE_REQUIRE_SGE=1 but {problem} (start one with scripts/ci/start_sge.sh)")
        pytest.skip(problem)
    return _environment()


def _listed(job_id: str, environment: dict) -> bool:
    """True while qstat lists the job (any of its tasks)."""
    listing = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, timeout=20, env=environment)
    return any(line.split()[0] == job_id for line in listing.stdout.splitlines()[2:] if line.split())


def _wait(job_id: str, environment: dict, timeout: float = JOB_TIMEOUT) -> None:
    """Wait until qstat no longer lists the job; fail (and delete it) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _listed(job_id, environment):
            return
        time.sleep(0.5)
    queue = subprocess.run(["qstat", "-f", "-u", "*"], capture_output=True, text=True, env=environment).stdout
    subprocess.run(["qdel", job_id], capture_output=True, env=environment)
    pytest.fail(f"Grid Engine job {job_id} still listed after {timeout} s:\n{queue}")


def _status(output: Path, environment: dict) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "shapepipe.cluster.status", str(output), "--json"],
                            capture_output=True, text=True, timeout=120, env=environment)
    return result.returncode, json.loads(result.stdout)


def test_array_merge_and_resubmission_on_grid_engine(sge_cluster, tmp_path):
    from shapepipe_modules.simulate import simulate

    environment = sge_cluster
    sim = Path(simulate(preset="tiny", output_dir=tmp_path / "sim", seed=12, n_workers=1, exposures_per_tile=3,
                        tile_size=300))
    numbers, listing, task_config, merge_config = write_campaign(tmp_path, sim)
    assert len(numbers) == 3
    bad_index = 1
    bad_image = tmp_path / "data" / f"image{numbers[bad_index]}.fits"
    good_bytes = bad_image.read_bytes()
    bad_image.write_bytes(good_bytes[:len(good_bytes) // 5])  # truncated mid-file

    scripts = tmp_path / "scripts"
    result = subprocess.run(
        [sys.executable, "-m", "shapepipe.cluster.batch", "--scheduler", "sge", "-c", str(task_config),
         "--numbers", str(listing), "--per-task", "1", "--throttle", "2", "--time", "00:05:00", "--mem", "3G",
         "--merge-config", str(merge_config), "--merge-cpus", "2", "-o", str(scripts), "--submit"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr
    ids = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith(("array job", "merge job")))
    array_id, merge_id = ids["array job"], ids["merge job"].split()[0]
    assert array_id.isdigit() and merge_id.isdigit()
    assert ids["merge job"] == f"{merge_id} (afterany:{array_id})"
    array_script = scripts / "split_array.sge"
    assert "#$ -t 1-3\n#$ -tc 2\n" in array_script.read_text()
    _wait(array_id, environment)
    _wait(merge_id, environment)

    output = tmp_path / "output"
    runs = task_runs(output)
    assert sorted(runs) == [0, 1, 2]
    for index, run_dir in runs.items():
        expected = "failed" if index == bad_index else "done"
        assert job_rows(run_dir) == [(numbers[index], expected)]
        record = json.loads((run_dir / "run.json").read_text())
        assert record["batch"]["JOB_ID"] == array_id
        assert record["batch"]["SGE_TASK_ID"] == str(index + 1)  # Grid Engine counts tasks from 1
        assert record["batch"]["SHAPEPIPE_BATCH_SCRIPT"] == str(array_script)
        assert (scripts / "logs" / f"split.{array_id}.{index + 1}.out").is_file()
    failed = json.loads((runs[bad_index] / "jobs.json").read_text())[0]
    assert str(bad_image) in failed["error"] and "truncated" in failed["error"]

    # The merge job waited for the whole array, ran with the two slots of its
    # parallel environment, and merged the two good exposures.
    record, merged = merged_store(output)
    assert record["batch"]["JOB_ID"] == merge_id
    merge_run = max(output.glob("merge_*"), key=lambda p: json.loads((p / "run.json").read_text())["started"])
    assert "2 worker(s) from NSLOTS" in (merge_run / "shapepipe.log").read_text()
    finished = max(json.loads((r / "run.json").read_text())["finished"] for r in runs.values())
    assert record["started"] >= finished
    good = [n[1:] for i, n in enumerate(numbers) if i != bad_index]
    assert sorted(merged) == sorted(good)
    for exposure in good:
        assert merged[exposure] == truth_crval(sim, exposure)

    # Fix the input; shapepipe_status names exactly the failed task (Grid Engine's number); resubmit it.
    bad_image.write_bytes(good_bytes)
    code, report = _status(output, environment)
    assert code == 1
    assert report["resubmit_commands"] == [["qsub", "-t", f"{bad_index + 1}-{bad_index + 1}", str(array_script)]]
    again = subprocess.run(report["resubmit_commands"][0], capture_output=True, text=True, timeout=60,
                           env=environment)
    assert again.returncode == 0, again.stderr
    _wait(again.stdout.split()[2].split(".")[0], environment)  # "Your job-array N.2-2:1 (...) has been submitted"

    assert task_runs(output) == runs  # the task resumed its own run
    assert job_rows(runs[bad_index]) == [(numbers[bad_index], "done")]
    for index in (0, 2):
        assert job_rows(runs[index]) == [(numbers[index], "done")]  # not touched
    code, report = _status(output, environment)
    assert code == 0 and report["resubmit_commands"] == []
