"""The calibration campaign (shapepipe_calibrate): merge of synthetic seeds, and a real 2-seed campaign on tiny
run with SMP, killed half-way and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shapepipe_modules.calibrate import cli
from shapepipe_modules.calibrate.campaign import find_seed_results, merge_campaign
from shapepipe_modules.validate.paired import concatenate_pairs, join_pairs, paired_estimate, write_pairs
from shapepipe_modules.validate.shear import Selection

sys.path.insert(0, str(Path(__file__).parent))
from test_validate_paired import M_TRUE, synthetic_members  # noqa: E402

#: tiny with no star brighter than 17: no halo masks on its small CCDs, enough PSF stars (as tests/test_gold.py).
TINY_OVERRIDES = ["--set", "star_mag_range=[17,24]"]


def _fake_seed(folder, seed, rng, cpu_s, preset="calib"):
    plus, minus = synthetic_members(rng, n=1500)
    pairs = join_pairs(plus, minus)
    folder.mkdir(parents=True, exist_ok=True)
    write_pairs(folder / f"pairs-{seed:06d}.fits", pairs, extra={"seed": np.full(pairs["key"].size, seed)})
    record = {"seed": seed, "preset": preset, "parameters": {"p": preset}, "overrides": {}, "cpu_s": cpu_s,
              "wall_s": 2 * cpu_s}
    (folder / f"seed-{seed:06d}.json").write_text(json.dumps(record))
    return pairs


def test_merge_pools_galaxies_and_projects_cpu(tmp_path):
    rng = np.random.default_rng(21)
    tables = [_fake_seed(tmp_path / "output" / f"run{k}" / "calibration_seed" / "output", seed, rng, 600.0)
              for k, seed in enumerate((3, 7, 9))]
    # A staging folder of a running job and a record without its pair table are not finished seeds.
    _fake_seed(tmp_path / "output" / "run9" / "calibration_seed" / "output" / ".staging" / "x", 11, rng, 1.0)
    (tmp_path / "output" / "run0" / "calibration_seed" / "output" / "seed-000012.json").write_text("{}")
    results = find_seed_results([tmp_path / "output"])
    assert list(results) == [3, 7, 9]
    record = merge_campaign(results, tmp_path / "results", Selection(snr_min=10.0), n_boot=40, n_bins=2)
    # The combined value is the estimator on the pooled galaxies, not a mean of per-seed m.
    pooled = paired_estimate(concatenate_pairs(tables), Selection(snr_min=10.0), n_boot=2, bins=())
    np.testing.assert_allclose(record["m"], pooled["m"], rtol=1e-12)
    assert np.all(np.abs(np.array(record["m"]) - M_TRUE) < 3 * np.array(record["m_err"]))
    assert record["cpu_hours"] == pytest.approx(0.5)
    sigma = np.sqrt(np.mean(np.square(record["m_err"])))
    assert record["figure_of_merit"] == pytest.approx(sigma * np.sqrt(0.5))
    assert record["projected_cpu_hours"] == pytest.approx(0.5 * (sigma / 1e-3) ** 2)
    lines = (tmp_path / "results" / "calibration.csv").read_text().splitlines()
    kinds = [line.split(",")[0] for line in lines[1:]]
    assert kinds.count("seed") == 3 and kinds.count("combined") == 1 and kinds.count("bin") == 4  # S/N, mag x 2
    for name in ("calibration.json", "calibration.txt", "m_bins.png", "m_per_seed.png"):
        assert (tmp_path / "results" / name).stat().st_size > 100
    # Seeds of another preset are not pooled.
    _fake_seed(tmp_path / "output" / "run5" / "calibration_seed" / "output", 13, rng, 1.0, preset="demo")
    with pytest.raises(ValueError, match="different presets"):
        merge_campaign(find_seed_results([tmp_path / "output"]), tmp_path / "r2", plots=False)


def test_campaign_arguments(tmp_path, capsys):
    assert cli.parse_seeds("1-3,7, 5") == [1, 2, 3, 5, 7]
    with pytest.raises(cli.CampaignError):
        cli.parse_seeds("4-2")
    cli.prepare_campaign(tmp_path, "tiny", {"star_density": 20.0}, [1, 2])
    assert sorted(p.name for p in (tmp_path / "seeds").iterdir()) == ["seed-000001.txt", "seed-000002.txt"]
    # Another preset or other parameters in the same folder are refused (exit 2), nothing run.
    assert cli.main(["-o", str(tmp_path), "--preset", "demo", "--seeds", "1"]) == 2
    assert "use another -o" in capsys.readouterr().err
    assert cli.main(["-o", str(tmp_path / "x"), "--preset", "tiny", "--set", "no_such=3"]) == 2
    assert "no_such" in capsys.readouterr().err


def _calibrate(campaign, seeds, **popen):
    command = [sys.executable, "-m", "shapepipe_modules.calibrate.cli", "-o", str(campaign), "--preset", "tiny",
               *TINY_OVERRIDES, "--seeds", seeds, "-j", "1", "--n-boot", "20", "--n-bins", "2",
               "--config-dir", str(Path(__file__).parents[1] / "example" / "GOLD")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_campaign_smp_killed_and_resumed(tmp_path):
    """Seed 1 finishes, the campaign is killed (SIGKILL, whole group) during seed 2; the rerun redoes only seed 2."""
    campaign = tmp_path / "campaign"
    process = _calibrate(campaign, "1-2", start_new_session=True)
    deadline = time.monotonic() + 900
    while not (campaign / "work" / "seed-000002").is_dir():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = cli.finished_seeds(campaign)
    assert list(finished) == [1]
    first_record = finished[1][0].read_text()
    rerun = _calibrate(campaign, "1-2")
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output
    assert "2 seeds asked, 1 already finished, 1 to run" in output
    finished = cli.finished_seeds(campaign)
    assert list(finished) == [1, 2] and finished[1][0].read_text() == first_record
    # The rerun's run ran seed 2 only; the killed seed's scratch was redone and removed.
    jobs = json.loads((finished[2][0].parents[2] / "jobs.json").read_text())
    jobs = jobs["jobs"] if isinstance(jobs, dict) else jobs
    assert [row["number"] for row in jobs] == ["-000002"]
    assert not (campaign / "work" / "seed-000002").exists()
    record = json.loads((campaign / "results" / "calibration.json").read_text())
    assert record["seeds"] == [1, 2] and record["n_selected"] > 10
    # CPU time measured per seed (the simulation and both chains), summed.
    seeds = [json.loads(finished[s][0].read_text()) for s in (1, 2)]
    assert all(s["cpu_s"] > s["cpu_chain_s"]["plus"] > 1.0 for s in seeds)
    assert record["cpu_hours"] == pytest.approx(sum(s["cpu_s"] for s in seeds) / 3600)
    assert np.isfinite(record["m"][0]) and record["m_err"][0] > 0
    # Nothing left to run: the same command only merges.
    again = _calibrate(campaign, "1-2")
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "0 to run" in output
