"""A campaign on a real SLURM cluster (scripts/ci/start_slurm.sh starts one on this machine).

shapepipe_batch writes and submits a job array over simulated exposures
(split_exp, one exposure per task, one exposure's image truncated) and the
dependent merge job (merge_headers over ``all:split_exp``). Then the input is
fixed and the failed task is resubmitted with the command shapepipe_status
prints. Skipped when no cluster answers, unless SHAPEPIPE_REQUIRE_SLURM=1.
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


def _write_campaign(root: Path, sim: Path) -> tuple[list[str], Path, Path, Path]:
    """Pipeline-named inputs, the number list and the two configurations."""
    data = root / "data"
    data.mkdir()
    exposures = (sim / "exposure_list.txt").read_text().split()
    for exposure in exposures:
        source = sim / "exposures" / f"{exposure}p"
        shutil.copy(f"{source}.fits", data / f"image-{exposure}.fits")
        shutil.copy(f"{source}.weight.fits.fz", data / f"weight-{exposure}.fits.fz")
        shutil.copy(f"{source}.flag.fits.fz", data / f"flag-{exposure}.fits.fz")
    numbers = [f"-{exposure}" for exposure in exposures]
    listing = root / "exposures.txt"
    listing.write_text("# one exposure per array task\n" + "\n".join(numbers) + "\n")
    common = f"[FILE]\nINPUT_DIR = {data}\nOUTPUT_DIR = {root / 'output'}\n\n"
    task = root / "split.ini"
    task.write_text("[DEFAULT]\nVERBOSE = False\nRUN_NAME = split\n\n[EXECUTION]\nMODULE = split_exp\n\n" + common
                    + "[SPLIT_EXP]\nFILE_EXT = .fits, .fits.fz, .fits.fz\nNUMBERING_SCHEME = -0000000\n")
    merge = root / "merge.ini"
    merge.write_text("[DEFAULT]\nVERBOSE = False\nRUN_NAME = merge\n\n[EXECUTION]\nMODULE = merge_headers\n\n"
                     + common + "[MERGE_HEADERS]\nINPUT_DIR = all:split_exp\nNUMBERING_SCHEME = -0000000\n")
    return numbers, listing, task, merge


def _task_runs(output: Path) -> dict[int, Path]:
    runs = {}
    for run_dir in output.glob("split_task*"):
        record = json.loads((run_dir / "run.json").read_text())
        runs[record["selection"]["array_index"]] = run_dir
    return runs


def _job_rows(run_dir: Path) -> list[tuple[str, str]]:
    return [(row["number"], row["status"]) for row in json.loads((run_dir / "jobs.json").read_text())]


def _merged_store(output: Path):
    """Newest merge run: (record, {exposure: {ccd: CRVAL1}}) read from its header store."""
    from shapepipe_modules.io.header_store import HeaderStore

    runs = sorted(output.glob("merge_*"), key=lambda p: json.loads((p / "run.json").read_text())["started"])
    record = json.loads((runs[-1] / "run.json").read_text())
    with HeaderStore(runs[-1] / "merge_headers" / "output" / "log_exp_headers.sqlite") as store:
        values = {e: {c: store.header(e, c)["CRVAL1"] for c in store.ccds(e)} for e in store.exposures()}
    return record, values


def _truth_crval(sim: Path, exposure: str) -> dict[int, float]:
    """CRVAL1 of every CCD of a simulated mosaic, read directly from its file."""
    from astropy.io import fits

    with fits.open(sim / "exposures" / f"{exposure}p.fits") as hdus:
        return {k: hdus[k + 1].header["CRVAL1"] for k in range(len(hdus) - 1)}


def test_array_merge_and_resubmission_on_slurm(slurm_cluster, tmp_path):
    from shapepipe_modules.simulate import simulate

    sim = Path(simulate(preset="tiny", output_dir=tmp_path / "sim", seed=11, n_workers=1, exposures_per_tile=4,
                        tile_size=300))
    numbers, listing, task_config, merge_config = _write_campaign(tmp_path, sim)
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
    runs = _task_runs(output)
    assert sorted(runs) == [0, 1, 2, 3]
    for index, run_dir in runs.items():
        expected = "failed" if index == bad_index else "done"
        assert _job_rows(run_dir) == [(numbers[index], expected)]
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
    record, merged = _merged_store(output)
    assert record["batch"]["SLURM_JOB_ID"] == merge_id
    finished = max(json.loads((r / "run.json").read_text())["finished"] for r in runs.values())
    assert record["started"] >= finished
    good = [n[1:] for i, n in enumerate(numbers) if i != bad_index]
    assert sorted(merged) == sorted(good)
    for exposure in good:
        assert merged[exposure] == _truth_crval(sim, exposure)

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

    runs_after = _task_runs(output)
    assert runs_after == runs  # the task resumed its own run
    assert _job_rows(runs[bad_index]) == [(numbers[bad_index], "done")]
    for index in (0, 1, 3):
        assert _job_rows(runs[index]) == [(numbers[index], "done")]  # not touched
    final = subprocess.run([sys.executable, "-m", "shapepipe.cluster.status", str(output), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout
    assert json.loads(final.stdout)["resubmit_commands"] == []

    # The merge job, submitted again, now holds every exposure.
    merge_again = subprocess.run(["sbatch", "--parsable", str(scripts / "split_merge.slurm")],
                                 capture_output=True, text=True, timeout=60)
    assert merge_again.returncode == 0, merge_again.stderr
    _wait(merge_again.stdout.strip().split(";")[0])
    _, merged = _merged_store(output)
    assert sorted(merged) == [n[1:] for n in numbers]
    assert merged[numbers[bad_index][1:]] == _truth_crval(sim, numbers[bad_index][1:])
