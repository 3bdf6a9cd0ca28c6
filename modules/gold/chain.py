"""The GOLD chain: ShapePipe's CFIS configurations of ``example/GOLD``, run in order.

Each stage is one ``shapepipe_run`` configuration (run as a subprocess, so
that every stage starts from a clean interpreter, as in ShapePipe's job
script); stages find the outputs of earlier ones with ``last:`` references
in their configurations. The driver sets the variables the configurations
use:

``SP_DATA``
    the simulated survey (``shapepipe_simulate`` output);
``SP_RUN``
    the run root: every run folder goes to ``$SP_RUN/output``;
``SP_CONFIG``
    the configuration folder (``example/GOLD``);
``SP_CCD_SIZE``
    the CCD pixel range ``-0.5, nx - 0.5, -0.5, ny - 0.5`` of the simulated
    camera (SExtractor's multi-epoch bookkeeping; ShapePipe: MegaCam's);
``SP_NG_INDEX``, ``SP_NG_ID_MIN``, ``SP_NG_ID_MAX``, ``SP_NG_SPLITS``, ``SP_NG_SPLIT_DIRS``
    the object-id split of the ngmix stage (ShapePipe's Ng1u, Ng2u, ...) and
    the ngmix output folders of the splits, for merge_sep_cats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ChainError(RuntimeError):
    """A stage of the chain failed; the message names the stage, its configuration and the failed jobs."""


@dataclass(frozen=True)
class Stage:
    """One configuration of the chain."""

    name: str
    config: str
    description: str


STAGES = (
    Stage("GitFeGie", "config_GitFeGie.ini", "get_images (tiles), find_exposures, get_images (exposures)"),
    Stage("Uz", "config_tile_Uz.ini", "uncompress_fits (tile weights)"),
    Stage("SpMh", "config_exp_SpMh.ini", "split_exp, merge_headers"),
    Stage("MaMa", "config_MaMa.ini", "mask (tiles, exposure CCDs)"),
    Stage("Sx_exp_psfex", "config_tile_Sx_exp_psfex.ini",
          "sextractor (tiles, exposures), setools, psfex, psfinterp VALIDATION"),
    Stage("MsPl", "config_MsPl_psfex.ini", "merge_starcat, psf_validation"),
    Stage("PiViSmVi", "config_tile_PiViSmVi.ini",
          "psfinterp MULTI-EPOCH, vignetmaker CLASSIC, spread_model, vignetmaker MULTI-EPOCH"),
    Stage("Ng", "config_tile_Ng.ini", "ngmix (one run per object-id split)"),
    Stage("Ms", "config_merge_sep_cats.ini", "merge_sep_cats"),
    Stage("Mc", "config_make_cat_psfex.ini", "make_catalog"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES) + ("validate",)


@dataclass
class StageRun:
    """What one stage did: its run folders and its wall time."""

    stage: str
    run_dirs: list = field(default_factory=list)
    wall_s: float = 0.0


def gold_folder() -> Path:
    """``example/GOLD``: under the working directory (a repository checkout, as
    ``scripts/run_demo.sh`` runs), else beside the package source (editable install)."""
    candidates = [Path.cwd() / "example" / "GOLD", Path(__file__).resolve().parents[2] / "example" / "GOLD"]
    for candidate in candidates:
        if (candidate / STAGES[0].config).is_file():
            return candidate
    return candidates[0]


def ccd_size_from_simulation(sim_dir) -> str:
    """``SP_CCD_SIZE`` of a simulated survey: the whole CCD, 0-based pixel edges."""
    parameters = json.loads((Path(sim_dir) / "simulation.json").read_text())["parameters"]
    nx, ny = int(parameters["ccd_nx"]), int(parameters["ccd_ny"])
    return f"-0.5, {nx - 0.5}, -0.5, {ny - 0.5}"


def environment(sim_dir, run_root, config_dir) -> dict:
    """Variables of every stage (added to the current environment)."""
    return {
        "SP_DATA": str(Path(sim_dir).resolve()),
        "SP_RUN": str(Path(run_root).resolve()),
        "SP_CONFIG": str(Path(config_dir).resolve()),
        "SP_CCD_SIZE": ccd_size_from_simulation(sim_dir),
        "SP_NG_INDEX": "1",
        "SP_NG_ID_MIN": "-1",
        "SP_NG_ID_MAX": "-1",
        "SP_NG_SPLITS": "1",
        "SP_NG_SPLIT_DIRS": "last:ngmix_runner",
    }


def run_folders(output_dir) -> set:
    """Run folders (holding a run record) under ``output_dir``."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return set()
    return {path.parent for path in output_dir.glob("*/run.json")}


def failed_jobs(run_dir, limit=5) -> list[str]:
    """``module_run number: error`` of the failed or timed-out jobs of a run."""
    path = Path(run_dir) / "jobs.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    rows = rows["jobs"] if isinstance(rows, dict) else rows
    bad = [r for r in rows if r.get("status") in ("failed", "timeout")]
    lines = [f"{r['module_run']} {r['number']}: {r['status']}: {(r.get('error') or '').strip()}" for r in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return lines


def run_config(config_path, env, output_dir, log=print) -> Path:
    """Run one configuration with ``shapepipe_run``; return its run folder.

    Raises
    ------
    ChainError
        If the run exits with a non-zero status (the message lists the
        failed jobs and the run folder).
    """
    before = run_folders(output_dir)
    command = [sys.executable, "-m", "shapepipe.cli", "-c", str(config_path)]
    # PYTHONSAFEPATH (Python >= 3.11; ignored before): the runner and its fork server import the
    # installed package, not a source checkout in the working directory (which, where bytecode is not
    # written, every process compiled again: 0.03 to 0.05 s of CPU each).
    completed = subprocess.run(command, env={**os.environ, "PYTHONSAFEPATH": "1", **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    new = sorted(run_folders(output_dir) - before)
    run_dir = new[-1] if new else None
    if completed.returncode != 0:
        detail = "\n  ".join(failed_jobs(run_dir)) if run_dir else ""
        tail = "\n".join(completed.stdout.strip().splitlines()[-15:])
        raise ChainError(
            f"{config_path} failed (shapepipe_run exit status {completed.returncode}"
            f"{', run folder ' + str(run_dir) if run_dir else ''})"
            + (f"\n  {detail}" if detail else "") + f"\nlast output:\n{tail}"
        )
    if run_dir is None:
        raise ChainError(f"{config_path}: shapepipe_run exited with 0 but wrote no run folder in {output_dir}")
    summary = [line for line in completed.stdout.splitlines() if line.strip()]
    for line in summary[-30:]:
        if line.startswith(("module run", "---")) or "  done " in line or "  partial " in line:
            log("    " + line)
    return run_dir


def tile_object_ranges(run_dir, n_splits) -> list[tuple[int, int]]:
    """Object-id ranges splitting the largest tile catalogue of the tile sextractor run into ``n_splits``."""
    from astropy.io import fits

    record = json.loads((Path(run_dir) / "run.json").read_text())
    outputs = [Path(m["output_dir"]) for m in record["modules"] if m["module_run"] == "sextractor_run_1"]
    largest = 0
    for catalogue in sorted(outputs[0].glob("sexcat-*.fits")) if outputs else []:
        with fits.open(catalogue) as hdus:
            largest = max(largest, int(hdus["LDAC_OBJECTS"].header["NAXIS2"]))
    if largest == 0:
        raise ChainError(f"{run_dir}: no tile catalogue sexcat-*.fits in sextractor_run_1 to split for ngmix")
    edges = [1 + (largest * k) // n_splits for k in range(n_splits + 1)]
    return [(edges[k], edges[k + 1] - 1) for k in range(n_splits) if edges[k + 1] > edges[k]]


def run_chain(sim_dir, run_root, config_dir, first=None, last=None, ng_splits=1, log=print,
              extra_env=None) -> list[StageRun]:
    """Run the stages from ``first`` to ``last`` (names of :data:`STAGES`), in order.

    ``extra_env`` adds variables to every stage's environment (e.g.
    ``SLURM_CPUS_PER_TASK=1``, which caps each stage's workers to one).

    Returns
    -------
    list of StageRun

    Raises
    ------
    ChainError
        At the first failing stage.
    """
    names = [stage.name for stage in STAGES]
    start = names.index(first) if first else 0
    stop = names.index(last) + 1 if last else len(names)
    env = {**environment(sim_dir, run_root, config_dir), **(extra_env or {})}
    env["SP_NG_SPLITS"] = str(int(ng_splits))
    output_dir = Path(env["SP_RUN"]) / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    done = []
    sextractor_run = None
    for stage in STAGES[start:stop]:
        config = Path(env["SP_CONFIG"]) / stage.config
        log(f"[{stage.name}] {stage.description}")
        started = time.perf_counter()
        record = StageRun(stage.name)
        if stage.name == "Ng":
            if sextractor_run is None:
                sextractor_run = newest_run(output_dir, "run_sp_tile_Sx_exp_SxSePsf")
            ranges = tile_object_ranges(sextractor_run, ng_splits) if ng_splits > 1 else [(-1, -1)]
            for index, (low, high) in enumerate(ranges, start=1):
                split_env = {**env, "SP_NG_INDEX": str(index), "SP_NG_ID_MIN": str(low), "SP_NG_ID_MAX": str(high)}
                if ng_splits > 1:
                    log(f"  split {index}: objects {low}-{high}")
                record.run_dirs.append(run_config(config, split_env, output_dir, log))
            env["SP_NG_SPLITS"] = str(len(ranges))
            env["SP_NG_SPLIT_DIRS"] = ", ".join(str(module_output(d, "ngmix")) for d in record.run_dirs)
        else:
            record.run_dirs.append(run_config(config, env, output_dir, log))
        if stage.name == "Sx_exp_psfex":
            sextractor_run = record.run_dirs[-1]
        record.wall_s = time.perf_counter() - started
        log(f"  {record.wall_s:.1f} s, run folder {record.run_dirs[-1]}")
        done.append(record)
    return done


def newest_run(output_dir, run_name) -> Path:
    """Newest completed run folder of ``run_name`` (by its record's start time)."""
    candidates = []
    for folder in run_folders(output_dir):
        record = json.loads((folder / "run.json").read_text())
        if record.get("run_name") == run_name and record.get("status") == "done":
            candidates.append((record.get("started", ""), folder))
    if not candidates:
        raise ChainError(f"no completed run {run_name} in {output_dir}; run the earlier stages first")
    return max(candidates)[1]


def module_output(run_dir, module_run) -> Path:
    """Output folder of one module run of a run folder."""
    record = json.loads((Path(run_dir) / "run.json").read_text())
    for module in record["modules"]:
        if module["module_run"] == module_run:
            return Path(module["output_dir"])
    raise ChainError(f"{run_dir}: no module run {module_run}")


def run_validation(sim_dir, run_root, log=print, extra_args=()) -> Path:
    """Run ``shapepipe_validate`` on the newest final catalogues; return its report folder.

    Raises
    ------
    ChainError
        If the validation fails.
    """
    output_dir = Path(run_root).resolve() / "output"
    catalogues = module_output(newest_run(output_dir, "run_sp_Mc"), "make_catalog")
    report_dir = output_dir / "validation"
    command = [sys.executable, "-m", "shapepipe_modules.validate.cli", "-i", str(catalogues),
               "-t", str(Path(sim_dir).resolve()), "-o", str(report_dir), *extra_args]
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if completed.returncode != 0:
        raise ChainError(f"shapepipe_validate failed (exit status {completed.returncode}):\n"
                         + "\n".join(completed.stdout.strip().splitlines()[-15:]))
    for line in completed.stdout.splitlines():
        if line.startswith(("m1", "m2", "R ", "tiles")):
            log("    " + line)
    return report_dir


def run_paired_validation(sim_plus, sim_minus, run_root_plus, run_root_minus, report_dir, log=print,
                          ring=False, extra_args=()) -> Path:
    """Run ``shapepipe_validate --paired`` on the newest final catalogues of two runs; return its report folder.

    Raises
    ------
    ChainError
        If the validation fails.
    """
    catalogues = [module_output(newest_run(Path(root).resolve() / "output", "run_sp_Mc"), "make_catalog")
                  for root in (run_root_plus, run_root_minus)]
    command = [sys.executable, "-m", "shapepipe_modules.validate.cli", "--paired", *map(str, catalogues),
               "-t", str(Path(sim_plus).resolve()), str(Path(sim_minus).resolve()), "-o", str(report_dir),
               *(("--ring",) if ring else ()), *extra_args]
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if completed.returncode != 0:
        raise ChainError(f"shapepipe_validate --paired failed (exit status {completed.returncode}):\n"
                         + "\n".join(completed.stdout.strip().splitlines()[-15:]))
    for line in completed.stdout.splitlines():
        if line.startswith(("m1", "m2", "R ", "paired")):
            log("    " + line)
    return Path(report_dir)
#: Module runs whose outputs a campaign keeps (``shapepipe_gold --keep final``): the final catalogues
#: and the PSF validation products; everything else is scratch once the chain has succeeded.
KEPT_MODULE_RUNS = ("make_catalog", "merge_starcat", "psf_validation")


def delete_intermediates(run_dirs, keep=KEPT_MODULE_RUNS, log=print) -> tuple[int, int]:
    """Delete the outputs of every module run of these run folders except ``keep`` (KEEP = False applied
    to a whole chain once it succeeded); return (bytes freed, bytes kept).

    Each record marks the deleted module runs (``outputs_deleted``), so that later ``last:``
    references do not resolve to them.
    """
    from shapepipe.records import write_record
    from shapepipe.runner import delete_outputs

    from .summary import folder_bytes

    freed = kept = 0
    for run_dir in run_dirs:
        record = json.loads((Path(run_dir) / "run.json").read_text())
        for entry in record["modules"]:
            if entry["module_run"] in keep or entry.get("outputs_deleted") is not None:
                kept += folder_bytes(entry.get("output_dir")) if entry["module_run"] in keep else 0
                continue
            entry["outputs_deleted"] = delete_outputs(Path(entry["output_dir"]))
            entry["keep"] = False
            freed += entry["outputs_deleted"]
        write_record(record)
    log(f"intermediate outputs deleted: {freed / 1e6:.1f} MB; kept: {kept / 1e6:.1f} MB "
        f"({', '.join(keep)})")
    return freed, kept
