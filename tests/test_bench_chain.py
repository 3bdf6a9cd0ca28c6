"""benchmarks/bench_chain.py: CPU of orphaned processes, the table's arithmetic; the sp_field preset."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shapepipe_modules.simulate.presets import PRESETS, _BASE, _PRESET_OVERRIDES, preset_parameters

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_chain.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_chain", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper is Linux only")
def test_subreaper_collects_the_cpu_of_orphaned_grandchildren():
    """A child starts a CPU-burning grandchild and exits: its CPU is lost unless we are a subreaper."""
    script = textwrap.dedent(f"""
        import importlib.util, subprocess, sys
        spec = importlib.util.spec_from_file_location("bench_chain", {str(BENCH)!r})
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        if sys.argv[1] == "on":
            assert bench.become_subreaper()
        burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
        child = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', " + repr(burn) + "])")
        before = bench.children_cpu()
        subprocess.run([sys.executable, "-c", child], check=True)
        reaped = bench.reap_orphans(wait_s=10.0)
        print(reaped, bench.children_cpu() - before)
    """)
    results = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", script, mode], check=True, capture_output=True, text=True)
        reaped, cpu = out.stdout.split()
        results[mode] = (int(reaped), float(cpu))
    assert results["on"][0] == 1 and results["on"][1] >= 0.4
    assert results["off"][0] == 0 and results["off"][1] < 0.4


def write_run(root: Path, name: str, modules: dict) -> Path:
    """A run folder with run.json and jobs.json: {module_run: (wall_s, [job cpu_s, ...])}."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record = {"run_name": name, "status": "done",
              "modules": [{"module_run": m, "status": "done", "wall_s": wall} for m, (wall, _) in modules.items()]}
    jobs = [{"module": m.split("_run_")[0], "module_run": m, "status": "done", "cpu_s": cpu, "duration_s": cpu,
             "peak_memory_mb": 10.0, "result": {"n_epochs": 10} if m == "ngmix" else {}}
            for m, (_, cpus) in modules.items() for cpu in cpus]
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    return run_dir


def test_table_rows_stage_residual_totals_and_verdict(tmp_path):
    bench = load_bench()
    first = write_run(tmp_path, "run_a", {"mask_run_1": (2.0, [1.0, 2.0]), "mask_run_2": (1.0, [0.5])})
    second = write_run(tmp_path, "run_b", {"ngmix": (30.0, [25.0])})
    record = {"data": "sim", "when": "now", "load_average": [1.0, 1.0, 1.0], "subreaper": True,
              "stages": [{"stage": "MaMa", "wall_s": 4.0, "cpu_all_s": 5.0, "run_dirs": [str(first)]},
                         {"stage": "Ng", "wall_s": 31.0, "cpu_all_s": 26.5, "run_dirs": [str(second)]}]}
    text = bench.format_table(record)
    rows = {tuple(line.split()[:2]): line.split() for line in text.splitlines() if line.split()}
    assert rows[("MaMa", "mask_run_1")][2:] == ["2", "2.0", "3.0"]
    # Runner processes: stage CPU minus the jobs' CPU.
    mama_runner = [line for line in text.splitlines() if line.startswith("MaMa") and "(runner processes)" in line]
    assert mama_runner[0].split()[-1] == "1.5"
    chain = [line for line in text.splitlines() if line.startswith("chain")][0].split()
    assert chain[-2:] == ["35.0", "31.5"]
    assert "31.5 s = 0.029 of ShapePipe's" in text and "goal met" in text
    assert "ngmix: 10 object-epochs, 2500.0 ms CPU each" in text
    record["stages"][1]["cpu_all_s"] = 200.0
    assert "goal not met" in bench.format_table(record)


def test_sp_field_preset_has_the_shape_of_shapepipes_timed_field():
    params = preset_parameters("sp_field")
    assert "sp_field" in PRESETS
    assert len(params["tiles"]) == 1 and params["tile_size"] == 4000
    assert params["exposures_per_tile"] == 2
    assert sum(params["ccd_rows"]) == 4 and (params["ccd_nx"], params["ccd_ny"]) == (2048, 4612)
    assert params["star_density"] == preset_parameters("cfis")["star_density"]


def test_other_presets_are_the_defaults_with_their_own_overrides_only():
    for preset in ("demo", "tiny", "cfis"):
        params = preset_parameters(preset)
        overrides = _PRESET_OVERRIDES[preset]
        for name, (default, _) in _BASE.items():
            assert params[name] == overrides.get(name, default), (preset, name)


def test_compare_puts_old_and_new_cpu_side_by_side(tmp_path):
    bench = load_bench()
    old_run = write_run(tmp_path, "run_old", {"mask_run_1": (2.0, [1.0, 2.0])})
    new_run = write_run(tmp_path, "run_new", {"mask_run_1": (2.0, [1.0, 1.5])})
    old = {"run_root": "a", "when": "t0", "load_average": [2.0], "stages":
           [{"stage": "MaMa", "wall_s": 4.0, "cpu_all_s": 5.0, "run_dirs": [str(old_run)]}]}
    new = {"run_root": "b", "when": "t1", "load_average": [3.0], "stages":
           [{"stage": "MaMa", "wall_s": 3.0, "cpu_all_s": 3.0, "run_dirs": [str(new_run)]}]}
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in bench.compare_tables(old, new).splitlines()}
    assert rows[("MaMa", "mask_run_1")] == ["3.0", "2.5"]
    assert rows[("MaMa", "(runner")] == ["processes)", "2.0", "0.5"]
    assert rows[("chain", "all")] == ["processes", "5.0", "3.0"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc children lists are Linux only")
def test_reap_does_not_wait_for_children_running_before_the_stage():
    """A long-lived child present before the stage (as a resource tracker) does not hold the wait."""
    script = textwrap.dedent(f"""
        import importlib.util, subprocess, sys, time
        spec = importlib.util.spec_from_file_location("bench_chain", {str(BENCH)!r})
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        assert bench.become_subreaper()
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        before = bench.child_pids()
        assert helper.pid in before
        child = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.5)'])")
        subprocess.run([sys.executable, "-c", child], check=True)
        start = time.monotonic()
        reaped = bench.reap_orphans(wait_s=20.0, keep=before)
        waited = time.monotonic() - start
        left = bench.child_pids() - before
        helper.kill(); helper.wait()
        print(reaped, waited, len(left))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    reaped, waited, left = out.stdout.split()
    # The orphaned grandchild (0.5 s) is waited for and reaped; the helper (30 s) is not waited for.
    assert int(reaped) == 1 and int(left) == 0
    assert 0.3 < float(waited) < 10.0
