"""MODE = MPI against a real MPI (Open MPI's mpirun) and mpi4py.futures.

The MPI tests skip when ``mpirun`` or mpi4py is absent, unless
``SHAPEPIPE_REQUIRE_MPI=1`` (CI), where a missing MPI is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from shapepipe.cli import main
from shapepipe.cluster.mpi_executor import MPI_LAUNCHER_VARIABLES

from test_runner_helpers import make_inputs, make_modules, write_config

NUMBERS = [f"-{i:03d}" for i in range(8)]
MPI_TIMEOUT = 90  # seconds: a hung MPI job fails the test instead of blocking the suite


def _mpirun_prefix(processes: int) -> list[str]:
    """``mpirun -np N`` (with Open MPI's flags for root and for more ranks than cores)."""
    mpirun = shutil.which("mpirun")
    missing = [name for name, absent in (("mpirun", mpirun is None),
                                         ("mpi4py", importlib.util.find_spec("mpi4py") is None)) if absent]
    if missing:
        if os.environ.get("SHAPEPIPE_REQUIRE_MPI") == "1":
            pytest.fail(f"SHAPEPIPE_REQUIRE_MPI=1 but {' and '.join(missing)} not found")
        pytest.skip(f"{' and '.join(missing)} not found")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    flags = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else []
    return [mpirun, *flags, "-np", str(processes)]


def _clean_env() -> dict:
    """This process's environment without any MPI launcher variable."""
    return {k: v for k, v in os.environ.items()
            if k not in MPI_LAUNCHER_VARIABLES and not k.startswith(("OMPI_", "PMIX_", "PMI_"))}


def _mpi_run(config: Path, *extra, processes: int = 3, futures: bool = True):
    command = [*_mpirun_prefix(processes), sys.executable]
    if futures:
        command += ["-m", "mpi4py.futures"]
    command += ["-m", "shapepipe.cli", "-c", str(config), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=MPI_TIMEOUT,
                          cwd=config.parent, env=_clean_env())


def _config(tmp_path: Path, name: str, modules: str, mode: str, extra: str = "", job: str = "") -> Path:
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", NUMBERS)
    path = write_config(tmp_path / f"{name}.ini", modules, inputs, tmp_path / name, mods, run_name=name,
                        default="RUN_DATETIME = False", extra=extra, job=job)
    path.write_text(path.read_text().replace("[EXECUTION]\n", f"[EXECUTION]\nMODE = {mode}\n", 1))
    return path


def _table(run_dir: Path) -> dict:
    return {(r["module_run"], r["number"]): r for r in json.loads((run_dir / "jobs.json").read_text())}


def _outputs(run_dir: Path) -> dict:
    """Every published file of the run, relative path -> text."""
    return {str(p.relative_to(run_dir)): p.read_text() for p in sorted(run_dir.glob("*/output/**/*"))
            if p.is_file()}


def test_mpi_run_matches_smp_run(tmp_path):
    smp = _config(tmp_path, "smp", "t_copy,t_chain", "SMP", job="SEED = 5")
    assert main(["-c", str(smp)]) == 0
    mpi = _config(tmp_path, "mpi", "t_copy,t_chain", "MPI", job="SEED = 5")
    result = _mpi_run(mpi)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "mpi" / "mpi"
    expected = _outputs(tmp_path / "smp" / "smp")
    assert len(expected) == 3 * len(NUMBERS)  # out, sub/side and up files
    assert _outputs(run_dir) == expected
    table, reference = _table(run_dir), _table(tmp_path / "smp" / "smp")
    assert sorted(table) == sorted(reference)
    for key, row in table.items():
        assert row["status"] == reference[key]["status"] == "done"
        assert row["outputs"] == reference[key]["outputs"]
        assert row["result"] == reference[key]["result"]
    assert json.loads((run_dir / "run.json").read_text())["executor"].startswith("MPI")
    log = "".join(p.read_text() for p in run_dir.glob("*.log"))
    assert "executor: MPI (mpi4py.futures, 2 worker ranks)" in log
    # Dynamic load balancing over both worker ranks, none of them the runner (rank 0).
    pids = {row["worker_pid"] for row in table.values()}
    assert len(pids) >= 2


def test_mpi_failing_job_fails_alone(tmp_path):
    config = _config(tmp_path, "fail", "t_copy,t_chain", "MPI", extra="[T_COPY]\nFAIL_ON = -003\n")
    start = time.monotonic()
    result = _mpi_run(config)
    assert time.monotonic() - start < MPI_TIMEOUT
    assert result.returncode == 1, result.stderr
    table = _table(tmp_path / "fail" / "fail")
    assert table[("t_copy", "-003")]["status"] == "failed"
    assert "refusing" in table[("t_copy", "-003")]["error"]
    assert table[("t_chain", "-003")]["status"] == "skipped_upstream"
    others = {key: row["status"] for key, row in table.items() if key[1] != "-003"}
    assert len(others) == 2 * (len(NUMBERS) - 1)
    assert set(others.values()) == {"done"}


def test_mpi_timeout_stops_the_external_program(tmp_path):
    seconds = "29.3137"  # a sleep length no other test uses, to find leftovers
    config = _config(tmp_path, "slow", "t_sleep_cmd", "MPI", job="TIMEOUT = 1",
                     extra=f"[T_SLEEP_CMD]\nSECONDS = {seconds}\nNUMBER_LIST = -001,-002\n")
    start = time.monotonic()
    result = _mpi_run(config)
    assert time.monotonic() - start < 20
    assert result.returncode == 1, result.stderr
    # A run that ends with failed jobs leaves MPI cleanly, not through mpi4py's MPI_Abort (whose help
    # message Open MPI's mpirun was seen to crash or hang on in CI).
    assert "MPI_ABORT" not in result.stderr, result.stderr
    table = _table(tmp_path / "slow" / "slow")
    assert {key: row["status"] for key, row in table.items()} == {("t_sleep_cmd", "-001"): "timeout",
                                                                  ("t_sleep_cmd", "-002"): "timeout"}
    time.sleep(0.2)
    sleepers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]
    assert sleepers == []


def test_dead_worker_rank_aborts_the_mpi_job_and_the_run_resumes(tmp_path):
    config = _config(tmp_path, "die", "t_copy", "MPI", extra="[T_COPY]\nDIE_ON = -003\n")
    result = _mpi_run(config)
    # mpirun stops every rank when one dies: the run ends (no hang), not successfully.
    assert result.returncode not in (0, 1), result.stderr
    run_dir = tmp_path / "die" / "die"
    status_dir = run_dir / "t_copy" / "logs" / "status"
    assert not (status_dir / "process-003.json").exists()
    # The resubmitted run (its cause fixed) redoes only what is not done.
    config.write_text(config.read_text().replace("DIE_ON = -003\n", ""))
    again = _mpi_run(config, "--resume", str(run_dir))
    assert again.returncode == 0, again.stderr
    table = _table(run_dir)
    assert table[("t_copy", "-003")]["status"] == "done"
    assert {row["status"] for row in table.values()} <= {"done", "done_previously"}
    assert len(table) == len(NUMBERS)
    assert (run_dir / "t_copy" / "output" / "out-003.txt").read_text() == "value-003"


def test_mpirun_without_mpi4py_futures_is_a_config_error(tmp_path):
    config = _config(tmp_path, "plain", "t_copy", "MPI")
    result = _mpi_run(config, processes=2, futures=False)
    assert result.returncode != 0
    assert "-m mpi4py.futures" in result.stderr and "[EXECUTION] MODE" in result.stderr
    assert not (tmp_path / "plain").exists()  # nothing written by either rank


def test_smp_under_mpirun_single_process(tmp_path):
    config = _config(tmp_path, "one", "t_copy,t_chain", "SMP")
    probe = ("import sys; from shapepipe.cli import main; status = main(sys.argv[1:]); "
             "print('mpi4py imported:', 'mpi4py' in sys.modules); sys.exit(status)")
    command = [*_mpirun_prefix(1), sys.executable, "-c", probe, "-c", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=MPI_TIMEOUT, env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert "mpi4py imported: False" in result.stdout
    table = _table(tmp_path / "one" / "one")
    assert len(table) == 2 * len(NUMBERS)
    assert {row["status"] for row in table.values()} == {"done"}


def test_mode_mpi_without_launcher_runs_smp_and_never_imports_mpi4py(tmp_path):
    config = _config(tmp_path, "nolaunch", "t_copy,t_chain", "MPI")
    probe = ("import sys; from shapepipe.cli import main; status = main(sys.argv[1:]); "
             "print('mpi4py imported:', 'mpi4py' in sys.modules); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", probe, "-c", str(config)], capture_output=True, text=True,
                            timeout=MPI_TIMEOUT, env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert "mpi4py imported: False" in result.stdout
    run_dir = tmp_path / "nolaunch" / "nolaunch"
    log = "".join(p.read_text() for p in run_dir.glob("*.log"))
    assert "MODE = MPI but no MPI launcher started this process" in log
    assert "executor: SMP (process pool" in log
    table = _table(run_dir)
    assert len(table) == 2 * len(NUMBERS)
    assert {row["status"] for row in table.values()} == {"done"}
    runner_pid = json.loads((run_dir / "run.json").read_text())["pid"]
    assert runner_pid not in {row["worker_pid"] for row in table.values()}  # pool workers ran them
