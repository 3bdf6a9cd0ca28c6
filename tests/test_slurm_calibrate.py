"""A calibration campaign as a SLURM job array (scripts/ci/start_slurm.sh starts a one-node cluster here).

shapepipe_calibrate --batch slurm --submit writes and submits the array (one seed of tiny per task) and the
dependent merge job; the task of seed 2 is cancelled while it runs (a killed task); the same command run
again submits only seed 2, which is redone from the start, and the merge then pools both seeds. Skipped
when no cluster answers, unless SHAPEPIPE_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_slurm import _cluster_problem, _wait  # noqa: E402

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("SHAPEPIPE_REQUIRE_SLURM") == "1":
            pytest.fail(f"SHAPEPIPE_REQUIRE_SLURM=1 but {problem} (start one with scripts/ci/start_slurm.sh)")
        pytest.skip(problem)


def _submit(campaign: Path) -> tuple[str, str, str]:
    command = [sys.executable, "-m", "shapepipe_modules.calibrate.cli", "-o", str(campaign), "--preset", "tiny",
               "--set", "star_mag_range=[17,24]", "--seeds", "1-2", "--batch", "slurm", "--cpus", "1",
               "--time", "00:20:00", "--mem", "1500M", "--n-boot", "20", "--n-bins", "2",
               "--config-dir", str(Path(__file__).parents[1] / "example" / "GOLD"), "--submit"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith(("array job", "merge job")))
    return ids["array job"], ids["merge job"].split()[0], result.stdout


def _merged(campaign: Path) -> dict:
    """calibration.json of the newest merge run."""
    runs = sorted(campaign.glob("output/run_calibration_merge_*"),
                  key=lambda p: json.loads((p / "run.json").read_text())["started"])
    return json.loads((runs[-1] / "calibration_merge" / "output" / "calibration.json").read_text())


def test_campaign_array_killed_task_and_resume(slurm_cluster, tmp_path):
    from shapepipe_modules.calibrate.cli import finished_seeds

    campaign = tmp_path / "campaign"
    array_id, merge_id, _ = _submit(campaign)
    deadline = time.monotonic() + 600
    while not (campaign / "work" / "seed-000002" / "run").is_dir():  # seed 2's chains have started
        assert time.monotonic() < deadline, subprocess.run(["squeue"], capture_output=True, text=True).stdout
        time.sleep(1)
    order = (campaign / "batch").glob("calibration_*_seeds.txt")
    lines = next(order).read_text().split()
    subprocess.run(["scancel", f"{array_id}_{lines.index('-000002')}"], check=True, timeout=30)
    _wait(array_id, timeout=900)
    _wait(merge_id, timeout=300)
    assert list(finished_seeds(campaign)) == [1]
    assert _merged(campaign)["seeds"] == [1]  # the merge job pooled what finished

    # The same command again: only the killed seed is submitted, redone from the start, then both merged.
    array_id, merge_id, output = _submit(campaign)
    assert "2 seeds asked, 1 already finished, 1 to run" in output
    _wait(array_id, timeout=900)
    _wait(merge_id, timeout=300)
    finished = finished_seeds(campaign)
    assert list(finished) == [1, 2]
    record = _merged(campaign)
    assert record["seeds"] == [1, 2] and record["cpu_hours"] > 0
    seed2 = json.loads(finished[2][0].read_text())
    assert seed2["n_pairs"] > 10
    # shapepipe_calibrate --merge-only writes the campaign's table from the same seeds.
    merge = subprocess.run([sys.executable, "-m", "shapepipe_modules.calibrate.cli", "-o", str(campaign),
                            "--merge-only", "--n-boot", "20", "--n-bins", "2"], capture_output=True, text=True,
                           timeout=300)
    assert merge.returncode == 0, merge.stderr
    local = json.loads((campaign / "results" / "calibration.json").read_text())
    assert local["m"] == pytest.approx(record["m"]) and local["seeds"] == [1, 2]
