"""Declarations of ``calibration_seed`` (one paired seed per file number) and ``calibration_merge``."""

from pathlib import Path

from shapepipe.module import module
from shapepipe.options import Option

SELECTION_OPTIONS = (
    Option("SNR_MIN", "float", 10.0, "Selection: S/N lower bound, required of both members of a pair."),
    Option("SIZE_RATIO_MIN", "float", 0.5, "Selection: T/Tpsf lower bound, required of both members."),
)


def _selection(options):
    from shapepipe_modules.validate.shear import Selection

    return Selection(snr_min=options["SNR_MIN"], size_ratio_min=options["SIZE_RATIO_MIN"])


def _check_seed(options):
    import json

    problems = []
    try:
        overrides = json.loads(options.get("OVERRIDES") or "{}")
        if not isinstance(overrides, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        return [f"OVERRIDES: {error} (give a JSON object, e.g. {{\"star_density\": 20}})"]
    from shapepipe.errors import ConfigError

    from .seed import seed_parameters

    try:
        seed_parameters(options["PRESET"], overrides)
    except ConfigError as error:
        problems.append(f"PRESET or OVERRIDES: {error}")
    if options.get("CHAIN_WORKERS", 1) < 1:
        problems.append("CHAIN_WORKERS must be at least 1")
    return problems


@module(
    name="calibration_seed",
    version="1.0",
    description="One paired calibration seed: simulate +g and -g, run the GOLD chain on both, join the galaxies.",
    file_pattern=("seed",),
    file_ext=(".txt",),
    numbering_scheme="-000000",
    depends=("galsim", "astropy", "scipy"),
    validate=_check_seed,
    options=(
        Option("PRESET", "str", "calib", "Simulation preset of every seed."),
        Option("OVERRIDES", "str", "", "Preset parameters changed by name, as a JSON object."),
        Option("CONFIG_DIR", "str", "", "Folder of the GOLD configurations (default: example/GOLD of the "
               "working directory or of the source tree)."),
        Option("WORK_DIR", "str", "", "Scratch folder of the seeds' simulations and runs (a node-local disk "
               "on a cluster); default: the run folder's work/."),
        Option("KEEP_WORK", "bool", False, "Keep a finished seed's simulations and runs."),
        Option("CHAIN_WORKERS", "int", 1, "Workers of each stage of a seed's chains."),
        Option("NG_SPLITS", "int", 1, "ngmix runs per tile (object-id ranges)."),
        Option("N_BOOT", "int", 100, "Bootstrap draws of the per-seed estimate."),
    ) + SELECTION_OPTIONS,
)
def calibration_seed(job):
    """Write ``seed-<number>.json`` and ``pairs-<number>.fits``; a seed finished by an earlier run is not redone."""
    import json

    from shapepipe.atomic import write_text_atomic
    from shapepipe.errors import JobError
    from shapepipe_modules.gold.chain import ChainError, gold_folder
    from shapepipe_modules.validate.paired import write_pairs

    from .campaign import find_seed_results
    from .seed import run_seed

    seed = int(job.number.lstrip("-"))
    output_dir = Path(job.run_dir).parent
    done = find_seed_results(sorted(output_dir.glob("*/calibration_seed/output")))
    if seed in done:
        job.logger.info("seed %d already finished: %s (not redone)", seed, done[seed][0])
        return {"seed": seed, "already_done": 1}
    options = job.options
    work_root = Path(options["WORK_DIR"]) if options["WORK_DIR"] else Path(job.run_dir) / "work"
    config_dir = Path(options["CONFIG_DIR"]) if options["CONFIG_DIR"] else gold_folder()
    try:
        pairs, info = run_seed(seed, options["PRESET"], work_root / f"seed{job.number}", config_dir,
                               overrides=json.loads(options["OVERRIDES"] or "{}"),
                               chain_workers=options["CHAIN_WORKERS"], ng_splits=options["NG_SPLITS"],
                               selection=_selection(options), n_boot=options["N_BOOT"],
                               keep_work=options["KEEP_WORK"], log=job.logger.info)
    except ChainError as error:
        raise JobError(f"seed {seed}: {error}") from None
    import numpy as np

    write_pairs(job.output_path(f"pairs{job.number}.fits"), pairs,
                extra={"seed": np.full(pairs["key"].size, seed, dtype=np.int64)})
    write_text_atomic(job.output_path(f"seed{job.number}.json"), json.dumps(info, indent=1) + "\n")
    return {"seed": seed, "n_selected": info["n_selected"], "cpu_seed_s": round(info["cpu_s"], 1)}


@module(
    name="calibration_merge",
    version="1.0",
    description="Pool the finished calibration seeds: m, c per seed, combined and in bins; CPU hours; figures.",
    input_module="calibration_seed",
    file_pattern=("seed", "pairs"),
    file_ext=(".json", ".fits"),
    numbering_scheme="-000000",
    run_method="serial",
    options=(
        Option("WEIGHTS", "choice", "none", "Per-galaxy weights (the same in numerator and response).",
               choices=("none", "ivar")),
        Option("N_BOOT", "int", 200, "Bootstrap draws over galaxies."),
        Option("N_BINS", "int", 4, "Bins of S/N, T/Tpsf, PSF size and magnitude."),
        Option("TARGET_SIGMA_M", "float", 1e-3, "sigma_m for which the CPU hours are projected."),
    ) + SELECTION_OPTIONS,
)
def calibration_merge(job):
    """Write ``calibration.csv``, ``calibration.json``, ``calibration.txt`` and the figures."""
    from .campaign import merge_campaign

    results = {int(number.lstrip("-")): (paths[0], paths[1]) for number, paths in job.input_table.items()}
    options = job.options
    record = merge_campaign(results, job.output_dir, _selection(options), options["WEIGHTS"], options["N_BOOT"],
                            options["N_BINS"], options["TARGET_SIGMA_M"])
    return {"seeds": record["n_seeds"], "m1": round(record["m"][0], 6), "m2": round(record["m"][1], 6),
            "cpu_hours": round(record["cpu_hours"], 4)}

