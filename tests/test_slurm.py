"""A campaign on a real SLURM cluster (scripts/ci/start_slurm.sh starts one on this machine).

shapepipe_batch writes and submits a job array over simulated exposures
(split_exp, one exposure per task, one exposure's image truncated) and the
dependent merge job (merge_headers over ``all:split_exp``). Then the input is
fixed and the failed task is resubmitted with the command shapepipe_status
prints. ``MODE = DASK`` with ``CLUSTER = slurm`` runs a module's jobs on Dask
workers that dask-jobqueue submits as SLURM jobs. Skipped when no cluster
answers, unless SHAPEPIPE_REQUIRE_SLURM=1.
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

pytestmark = pytest.mark.slurm

#: Longest wait for submitted jobs, seconds.
JOB_TIMEOUT = 180


def _cluster_problem() -> str | None:
    """Why no SLURM cluster can take jobs here, or None if one answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo/sbatch not installed"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not os.path.isfile(conf):
        return f"no SLURM configuration {conf}"  # sinfo would spend long seconds on DNS look-ups
    try:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo: {error}"
    states = result.stdout.split()
    if result.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
                                         for s in states):
        return f"no usable SLURM node (sinfo: {result.stdout.strip() or result.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("SHAPEPIPE_REQUIRE_SLURM") == "1":
            pytest.fail(f"SHAPEPIPE_REQUIRE_SLURM=1 but {problem} (start one with scripts/ci/start_slurm.sh)")
        pytest.skip(problem)


def _wait(job_id: str, timeout: float = JOB_TIMEOUT) -> None:
    """Wait until squeue no longer lists the job (every task of an array)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=20)
        if not listed.stdout.strip():
            return
        time.sleep(0.5)
    queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    subprocess.run(["scancel", job_id], capture_output=True)
    pytest.fail(f"SLURM job {job_id} still queued after {timeout} s:\n{queue}")


def test_array_merge_and_resubmission_on_slurm(slurm_cluster, tmp_path):
    from shapepipe_modules.simulate import simulate

    sim = Path(simulate(preset="tiny", output_dir=tmp_path / "sim", seed=11, n_workers=1, exposures_per_tile=4,
                        tile_size=300))
    numbers, listing, task_config, merge_config = write_campaign(tmp_path, sim)
    assert len(numbers) == 4
    bad_index = 2
    bad_image = tmp_path / "data" / f"image{numbers[bad_index]}.fits"
    good_bytes = bad_image.read_bytes()
    bad_image.write_bytes(good_bytes[:len(good_bytes) // 5])  # truncated mid-file

    scripts = tmp_path / "scripts"
    result = subprocess.run(
        [sys.executable, "-m", "shapepipe.cluster.batch", "--scheduler", "slurm", "-c", str(task_config),
         "--numbers", str(listing), "--per-task", "1", "--throttle", "2", "--time", "00:05:00", "--mem", "700M",
         "--cpus", "1", "--merge-config", str(merge_config), "--merge-mem", "500M", "-o", str(scripts),
         "--submit"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ids = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith(("array job", "merge job")))
    array_id, merge_id = ids["array job"], ids["merge job"].split()[0]
    assert ids["merge job"] == f"{merge_id} (afterany:{array_id})"
    array_script = scripts / "split_array.slurm"
    assert "#SBATCH --array=0-3%2" in array_script.read_text()
    _wait(array_id)
    _wait(merge_id)

    output = tmp_path / "output"
    runs = task_runs(output)
    assert sorted(runs) == [0, 1, 2, 3]
    for index, run_dir in runs.items():
        expected = "failed" if index == bad_index else "done"
        assert job_rows(run_dir) == [(numbers[index], expected)]
        record = json.loads((run_dir / "run.json").read_text())
        assert record["batch"]["SLURM_ARRAY_JOB_ID"] == array_id
        assert record["batch"]["SLURM_ARRAY_TASK_ID"] == str(index)
        assert record["batch"]["SHAPEPIPE_BATCH_SCRIPT"] == str(array_script)
        assert (scripts / "logs" / f"split_{array_id}_{index}.out").is_file()
        published = sorted(p.name for p in (run_dir / "split_exp" / "output").glob("image-*.fits"))
        if index == bad_index:
            assert published == []
        else:
            exposure = numbers[index][1:]
            assert published == [f"image-{exposure}-0.fits", f"image-{exposure}-1.fits"]
    failed = json.loads((runs[bad_index] / "jobs.json").read_text())[0]
    assert str(bad_image) in failed["error"] and "truncated" in failed["error"]

    # The merge job waited for the whole array and merged the three good exposures.
    record, merged = merged_store(output)
    assert record["batch"]["SLURM_JOB_ID"] == merge_id
    finished = max(json.loads((r / "run.json").read_text())["finished"] for r in runs.values())
    assert record["started"] >= finished
    good = [n[1:] for i, n in enumerate(numbers) if i != bad_index]
    assert sorted(merged) == sorted(good)
    for exposure in good:
        assert merged[exposure] == truth_crval(sim, exposure)

    # Fix the input; shapepipe_status names exactly the failed task; resubmit it as printed.
    bad_image.write_bytes(good_bytes)
    status = subprocess.run([sys.executable, "-m", "shapepipe.cluster.status", str(output), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 1, status.stderr
    report = json.loads(status.stdout)
    assert report["resubmit_commands"] == [["sbatch", f"--array={bad_index}", str(array_script)]]
    assert [c[-1] for c in report["rerun_commands"]] == [str(runs[bad_index])]
    again = subprocess.run(report["resubmit_commands"][0], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    _wait(again.stdout.split()[-1])  # "Submitted batch job N"

    runs_after = task_runs(output)
    assert runs_after == runs  # the task resumed its own run
    assert job_rows(runs[bad_index]) == [(numbers[bad_index], "done")]
    for index in (0, 1, 3):
        assert job_rows(runs[index]) == [(numbers[index], "done")]  # not touched
    final = subprocess.run([sys.executable, "-m", "shapepipe.cluster.status", str(output), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout
    assert json.loads(final.stdout)["resubmit_commands"] == []

    # The merge job, submitted again, now holds every exposure.
    merge_again = subprocess.run(["sbatch", "--parsable", str(scripts / "split_merge.slurm")],
                                 capture_output=True, text=True, timeout=60)
    assert merge_again.returncode == 0, merge_again.stderr
    _wait(merge_again.stdout.strip().split(";")[0])
    _, merged = merged_store(output)
    assert sorted(merged) == [n[1:] for n in numbers]
    assert merged[numbers[bad_index][1:]] == truth_crval(sim, numbers[bad_index][1:])


WHERE_MODULE = """
import os
import socket
from pathlib import Path

from shapepipe.module import module


@module(name="t_where", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000")
def t_where(job):
    \"\"\"Write the input and where the job ran: SLURM job id, process id, host.\"\"\"
    where = {"SLURM_JOB_ID": os.environ.get("SLURM_JOB_ID", ""), "pid": os.getpid(), "host": socket.gethostname()}
    job.output_path(f"where{job.number}.json").write_text(json.dumps(where))
    job.output_path(f"copy{job.number}.txt").write_text(Path(job.inputs[0]).read_text())
""".replace("import os", "import json\nimport os", 1)


def test_dask_jobqueue_workers_run_as_slurm_jobs(slurm_cluster, tmp_path):
    pytest.importorskip("dask_jobqueue")
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "where_module.py").write_text(WHERE_MODULE)
    data = tmp_path / "data"
    data.mkdir()
    numbers = ["-001", "-002", "-003"]
    for number in numbers:
        (data / f"in{number}.txt").write_text(f"value{number}")
    output = tmp_path / "output"
    config = tmp_path / "dask.ini"
    config.write_text(
        f"[DEFAULT]\nVERBOSE = False\nRUN_NAME = dask\n\n[EXECUTION]\nMODULE = t_where\nMODE = DASK\n"
        f"MODULE_DIR = {mods}\n\n[FILE]\nINPUT_DIR = {data}\nOUTPUT_DIR = {output}\n\n"
        "[DASK]\nCLUSTER = slurm\nN_JOBS = 1\nCORES = 1\nPROCESSES = 1\nMEMORY = 1GB\nWALLTIME = 00:05:00\n"
        "WORKER_WAIT = 90\n")
    before = set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                timeout=20).stdout.split())
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], capture_output=True,
                            text=True, timeout=JOB_TIMEOUT, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = next(output.glob("dask_*"))
    log = (run_dir / "shapepipe.log").read_text()
    assert "DASK (slurm cluster through dask-jobqueue, 1 job(s) x 1 worker process(es)" in log
    rows = json.loads((run_dir / "jobs.json").read_text())
    assert sorted((r["number"], r["status"]) for r in rows) == [(n, "done") for n in numbers]
    published = run_dir / "t_where" / "output"
    where = [json.loads((published / f"where{n}.json").read_text()) for n in numbers]
    for number in numbers:
        assert (published / f"copy{number}.txt").read_text() == f"value{number}"
    # Every job ran in the one Dask worker, a process of a SLURM job that the runner submitted.
    job_ids = {w["SLURM_JOB_ID"] for w in where}
    assert len(job_ids) == 1 and job_ids.pop().isdigit()
    assert len({w["pid"] for w in where}) == 1
    assert where[0]["pid"] != json.loads((run_dir / "run.json").read_text())["pid"]
    assert {r["worker_pid"] for r in rows} == {where[0]["pid"]}
    # The runner cancelled its worker job at the end.
    worker_job = where[0]["SLURM_JOB_ID"]
    assert worker_job not in before
    _wait(worker_job, timeout=60)
