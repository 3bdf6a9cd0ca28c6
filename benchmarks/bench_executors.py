"""Per-job overhead of the executors: loky (SMP), Dask (local cluster) and MPI.

Usage: ``python benchmarks/bench_executors.py [--jobs 400] [--ccds 12] [--workers 2]``

Two workloads run through ``shapepipe_run`` with each executor, ``--workers``
workers in every case (MPI: ``mpirun -np workers+1``, rank 0 runs the
runner):

- trivial: ``--jobs`` jobs that copy a small text file (the cost is the
  runner's and the executor's: staging, status files, logs, dispatch);
- real: the ``sextractor`` module (sep engine) on ``--ccds`` simulated CCDs
  of 1024 x 2048 pixels.

Reported per executor: the module run's wall time (from its run record),
wall per job, the jobs' summed CPU and the whole command's wall time
(including start-up: the Dask cluster, mpirun). Executors whose packages
(distributed, mpi4py, mpirun) are absent are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TRIVIAL_MODULE = '''
from pathlib import Path
from shapepipe.module import module


@module(name="bench_copy", version="1.0", file_pattern=("in",), file_ext=".txt", numbering_scheme="-0000")
def bench_copy(job):
    """Copy the input into out<number>.txt."""
    job.output_path(f"out{job.number}.txt").write_text(Path(job.inputs[0]).read_text())
'''


def _available(mode: str) -> str:
    """Empty when the executor can run here, else why not."""
    import importlib.util

    if mode == "DASK" and importlib.util.find_spec("distributed") is None:
        return "distributed not installed"
    if mode == "MPI":
        if shutil.which("mpirun") is None:
            return "mpirun not found"
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py not installed"
    return ""


def _config(path: Path, module: str, inputs: Path, output: Path, mode: str, workers: int, extra="",
            module_dir: Path | None = None) -> Path:
    lines = ["[DEFAULT]", "VERBOSE = False", f"RUN_NAME = {mode.lower()}", "",
             "[EXECUTION]", f"MODULE = {module}", f"MODE = {mode}"]
    if module_dir is not None:
        lines.append(f"MODULE_DIR = {module_dir}")
    lines += ["", "[FILE]", f"INPUT_DIR = {inputs}", f"OUTPUT_DIR = {output}", "",
              "[JOB]", f"SMP_BATCH_SIZE = {workers}", "",
              "[DASK]", "CLUSTER = local", f"N_WORKERS = {workers}", ""]
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(extra))
    return path


def _run(config: Path, mode: str, workers: int) -> tuple[float, dict]:
    command = [sys.executable, "-m", "shapepipe.cli", "-c", str(config)]
    if mode == "MPI":
        command = ["mpirun", "--oversubscribe", "-np", str(workers + 1),
                   *(["--allow-run-as-root"] if os.geteuid() == 0 else []),
                   sys.executable, "-m", "mpi4py.futures", "-m", "shapepipe.cli", "-c", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{mode} run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    record_path = max(config.parent.glob(f"out_{mode.lower()}*/{mode.lower()}*/run.json"),
                      key=lambda p: p.stat().st_mtime)
    return wall, json.loads(record_path.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="trivial jobs")
    parser.add_argument("--ccds", type=int, default=12, help="CCDs of the real workload")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    from test_sextractor_sim import make_ccd, write_ccd

    modes = ("SMP", "DASK", "MPI")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        mods = work / "mods"
        mods.mkdir()
        (mods / "bench_modules.py").write_text(TRIVIAL_MODULE)
        trivial_in = work / "trivial_in"
        trivial_in.mkdir()
        for index in range(args.jobs):
            (trivial_in / f"in-{index:04d}.txt").write_text(f"value {index}\n")
        ccd_in = work / "ccd_in"
        ccd_in.mkdir()
        rng = np.random.default_rng(7)
        for index in range(args.ccds):
            ccd = make_ccd(rng, nx=1024, ny=2048, n_stars=150, n_galaxies=450)
            write_ccd(ccd, ccd_in, number=f"-{2100000 + index:07d}-0")
        sextractor_section = ("[SEXTRACTOR]\nFILE_PATTERN = image, weight, pipeline_flag\n"
                              "FILE_EXT = .fits, .fits, .fits\nNUMBERING_SCHEME = -0000000-0\n"
                              "ENGINE = sep\nWEIGHT_IMAGE = True\nFLAG_IMAGE = True\n")
        for workload, module, inputs, module_dir, n_jobs, extra in (
                ("trivial", "bench_copy", trivial_in, mods, args.jobs, ""),
                ("real (sextractor, sep)", "sextractor", ccd_in, None, args.ccds, sextractor_section)):
            for mode in modes:
                why = _available(mode)
                if why:
                    rows.append((workload, mode, None, why))
                    continue
                config = _config(work / f"{mode}_{module}.ini", module, inputs,
                                 work / f"out_{mode.lower()}_{module}", mode, args.workers, extra=extra,
                                 module_dir=module_dir)
                command_wall, record = _run(config, mode, args.workers)
                entry = record["modules"][0]
                rows.append((workload, mode, {"jobs": n_jobs, "module_wall": entry["wall_s"],
                                              "cpu": entry.get("cpu_s", 0.0), "command_wall": command_wall,
                                              "executor": record.get("executor", mode)}, ""))

    print(f"{args.workers} workers per executor; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'workload':<24} {'executor':<44} {'jobs':>5} {'module wall s':>13} {'ms/job':>8} "
          f"{'job CPU s':>9} {'command s':>9}")
    for workload, mode, values, why in rows:
        if values is None:
            print(f"{workload:<24} {mode:<44} skipped: {why}")
            continue
        per_job = 1000.0 * values["module_wall"] / values["jobs"]
        print(f"{workload:<24} {values['executor'][:44]:<44} {values['jobs']:>5} {values['module_wall']:>13.2f} "
              f"{per_job:>8.2f} {values['cpu']:>9.2f} {values['command_wall']:>9.2f}")


if __name__ == "__main__":
    main()
