"""``shapepipe_calibrate``: a shear calibration campaign, N paired seeds of a preset, resumable.

::

    shapepipe_calibrate -o campaign --preset calib --seeds 1-20 -j 2            # SMP on this machine
    shapepipe_calibrate -o campaign --seeds 21-40                                # more seeds, same campaign
    shapepipe_calibrate -o campaign --merge-only --target-sigma-m 1e-3           # the table again
    shapepipe_calibrate -o campaign --seeds 1-200 --batch slurm --cpus 2 --time 01:00:00 --submit

The campaign folder holds ``campaign.json`` (preset and overrides: one
campaign, one preset), ``seeds/seed-NNNNNN.txt`` (the file numbers of the
``calibration_seed`` module = the seeds), ``config_seeds.ini`` (every seed
a job) and ``config_merge.ini`` (the serial merge over ``all:calibration_seed``),
``output/`` (run folders) and ``results/`` (``calibration.csv``: one table
with the per-seed, combined and binned m and c; ``calibration.json``,
``calibration.txt``, ``m_bins.png``, ``m_per_seed.png``).

A finished seed (its ``seed-NNNNNN.json`` published in a run folder) is never
redone: only the pending seeds are run (``pending.txt``), and the seed job
itself skips a seed another run finished. A seed killed half-way published
nothing and is redone from the start. Without ``--batch`` the seeds run
through ``shapepipe_run`` (SMP, ``-j`` seeds at once; ``--mode DASK`` or
``MPI`` as configured by hand), then the merge. With ``--batch`` the job
array and the dependent merge job are written by ``shapepipe_batch``
(``--submit`` submits them); ``--merge-only`` afterwards writes ``results/``.

Exit status: 0 every requested seed finished and the merge written; 1 some
seed failed or is pending (the merge covers the finished ones) or the batch
submission failed; 2 bad arguments or a campaign folder of another preset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shapepipe.arguments import ArgumentParser

PROGRAM = "shapepipe_calibrate"


class CampaignError(ValueError):
    """The campaign cannot be prepared (the message says why)."""


def parse_seeds(text: str) -> list[int]:
    """``1-20``, ``1,2,5`` or ``1-4,10-12`` to a sorted list of seeds."""
    seeds = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            low_value = int(low)
            high_value = int(high) if high else low_value
        except ValueError:
            raise CampaignError(f"--seeds: {part!r} is not N or N-M") from None
        if low_value < 0 or high_value < low_value or high_value > 999999:
            raise CampaignError(f"--seeds: {part!r} must be 0 <= N <= M <= 999999")
        seeds.update(range(low_value, high_value + 1))
    if not seeds:
        raise CampaignError("--seeds: no seed given")
    return sorted(seeds)


def _ini_value(value) -> str:
    return str(value).replace("\n", " ")


def seed_config(campaign: Path, spec: dict) -> str:
    """``config_seeds.ini``: every pending seed one job of ``calibration_seed``."""
    lines = [
        "# Written by shapepipe_calibrate: one calibration_seed job per seed (file numbers = seeds).",
        "[DEFAULT]", "VERBOSE = True", "RUN_NAME = run_calibration_seeds", "RUN_DATETIME = True", "",
        "[EXECUTION]", "MODULE = calibration_seed", f"MODE = {spec['mode']}", "",
        "[FILE]", "LOG_NAME = log_calibration", "RUN_LOG_NAME = log_run_calibration",
        f"INPUT_DIR = {campaign / 'seeds'}", f"OUTPUT_DIR = {campaign / 'output'}", "",
        "[JOB]",
    ]
    if spec.get("workers"):
        lines.append(f"SMP_BATCH_SIZE = {spec['workers']}")
    if spec.get("timeout"):
        lines.append(f"TIMEOUT = {spec['timeout']}")
    lines += [
        "", "[CALIBRATION_SEED]",
        f"PRESET = {spec['preset']}",
        f"OVERRIDES = {_ini_value(json.dumps(spec['overrides']))}",
        f"CONFIG_DIR = {spec['config_dir']}",
        f"CHAIN_WORKERS = {spec['chain_workers']}",
        f"NG_SPLITS = {spec['ng_splits']}",
        f"KEEP_WORK = {spec['keep_work']}",
        f"SNR_MIN = {spec['snr_min']}",
        f"SIZE_RATIO_MIN = {spec['size_ratio_min']}",
    ]
    lines.append(f"WORK_DIR = {spec.get('work_dir') or campaign / 'work'}")
    if spec.get("number_list"):
        lines.append(f"NUMBER_LIST = {spec['number_list']}")
    return "\n".join(lines) + "\n"


def merge_config(campaign: Path, spec: dict) -> str:
    """``config_merge.ini``: the serial merge over every run's seeds (batch campaigns)."""
    return "\n".join([
        "# Written by shapepipe_calibrate: pools every finished seed (all:calibration_seed).",
        "[DEFAULT]", "VERBOSE = True", "RUN_NAME = run_calibration_merge", "RUN_DATETIME = True", "",
        "[EXECUTION]", "MODULE = calibration_merge", "MODE = SMP", "",
        "[FILE]", "LOG_NAME = log_calibration", "RUN_LOG_NAME = log_run_calibration",
        f"OUTPUT_DIR = {campaign / 'output'}", "",
        "[CALIBRATION_MERGE]", "INPUT_DIR = all:calibration_seed",
        f"SNR_MIN = {spec['snr_min']}", f"SIZE_RATIO_MIN = {spec['size_ratio_min']}",
        f"WEIGHTS = {spec['weights']}", f"N_BOOT = {spec['n_boot']}", f"N_BINS = {spec['n_bins']}",
        f"TARGET_SIGMA_M = {spec['target_sigma_m']}",
    ]) + "\n"


def prepare_campaign(campaign: Path, preset: str, overrides: dict, seeds) -> dict:
    """Create or check the campaign folder; write the seed files; return the campaign record.

    Raises
    ------
    CampaignError
        The folder holds a campaign of another preset or other parameters.
    """
    from shapepipe.atomic import write_text_atomic
    from shapepipe.errors import ConfigError

    from .seed import seed_parameters

    try:
        parameters = seed_parameters(preset, overrides)
    except ConfigError as error:
        raise CampaignError(str(error)) from None
    record = {"preset": preset, "overrides": overrides, "parameters": parameters}
    path = campaign / "campaign.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing.get("parameters") != parameters or existing.get("preset") != preset:
            raise CampaignError(f"{path} holds a campaign of preset {existing.get('preset')!r} with other parameters "
                                f"({json.dumps(existing.get('overrides', {}))}); one campaign folder per preset and "
                                "parameter set: use another -o")
    (campaign / "seeds").mkdir(parents=True, exist_ok=True)
    (campaign / "output").mkdir(exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    from .campaign import seed_number

    for seed in seeds:
        seed_file = campaign / "seeds" / f"seed{seed_number(seed)}.txt"
        if not seed_file.is_file():
            write_text_atomic(seed_file, f"{seed}\n")
    return record


def finished_seeds(campaign: Path) -> dict:
    """Finished seeds of the campaign (``{seed: (record, pairs)}``)."""
    from .campaign import find_seed_results

    return find_seed_results(sorted((campaign / "output").glob("*/calibration_seed/output")))


def build_parser():
    parser = ArgumentParser(prog=PROGRAM, description="Shear calibration campaign: N paired seeds of a preset "
                            "through the whole chain, pooled m and c, CPU hours, projection.")
    parser.add_argument("-o", "--campaign", type=Path, required=True, help="campaign folder (created)")
    parser.add_argument("--preset", default=None, help="simulation preset (default: the campaign's, else calib)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a preset parameter (JSON value); repeatable")
    parser.add_argument("--seeds", default=None, help="seeds to have finished: 1-20, 1,3,5 or 1-4,9 (default 1-4)")
    parser.add_argument("-j", "--workers", type=int, default=1, help="seeds run at once (SMP; default 1)")
    parser.add_argument("--chain-workers", type=int, default=None,
                        help="workers of each stage within a seed (default 1; with --batch: --cpus)")
    parser.add_argument("--mode", choices=("SMP", "DASK", "MPI"), default="SMP",
                        help="[EXECUTION] MODE of the seed runs (default SMP)")
    parser.add_argument("--timeout", default=None, metavar="HH:MM:SS", help="time limit of each seed job")
    parser.add_argument("--ng-splits", type=int, default=1, help="ngmix runs per tile (default 1)")
    parser.add_argument("--config-dir", type=Path, default=None, help="GOLD configurations (default example/GOLD)")
    parser.add_argument("--work-dir", default=None,
                        help="scratch folder of the seeds (default CAMPAIGN/work; a node-local disk on a cluster)")
    parser.add_argument("--keep-work", action="store_true", help="keep each seed's simulations and runs")
    parser.add_argument("--snr-min", type=float, default=10.0, help="S/N cut on both members (default 10)")
    parser.add_argument("--size-ratio-min", type=float, default=0.5, help="T/Tpsf cut on both members (default 0.5)")
    parser.add_argument("--weights", choices=("none", "ivar"), default="none", help="per-galaxy weights (default none)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap draws of the merge (default 200)")
    parser.add_argument("--n-bins", type=int, default=4, help="bins per quantity (default 4)")
    parser.add_argument("--target-sigma-m", type=float, default=1e-3, help="sigma_m of the projection (default 1e-3)")
    parser.add_argument("--merge-only", action="store_true", help="no seed run: merge the finished seeds")
    batch = parser.add_argument_group("cluster (job array through shapepipe_batch)")
    batch.add_argument("--batch", choices=("slurm", "pbs"), default=None, help="write the array and merge scripts")
    batch.add_argument("--cpus", type=int, default=1, help="CPUs per array task (one seed per task)")
    batch.add_argument("--time", default="02:00:00", help="wall time per task (default 02:00:00)")
    batch.add_argument("--mem", default=None, help="memory per task, e.g. 4G")
    batch.add_argument("--partition", default=None, help="partition or queue")
    batch.add_argument("--account", default=None, help="account")
    batch.add_argument("--throttle", type=int, default=None, help="at most M tasks at once")
    batch.add_argument("--env", action="append", default=None, help="environment line of the jobs (repeatable)")
    batch.add_argument("--submit", action="store_true", help="submit the scripts")
    return parser


def _overrides(parser, items) -> dict:
    from shapepipe_modules.simulate.cli import _parse_set

    result = {}
    for item in items:
        try:
            name, value = _parse_set(item)
        except Exception as error:  # argparse.ArgumentTypeError
            parser.error(str(error))
        result[name] = value
    return result


def run_merge(campaign: Path, args) -> dict | None:
    """Merge the finished seeds into ``results/``; print the report."""
    from shapepipe_modules.validate.shear import Selection

    from .campaign import format_campaign, merge_campaign

    results = finished_seeds(campaign)
    if not results:
        print(f"{PROGRAM}: no finished seed in {campaign / 'output'} to merge", file=sys.stderr)
        return None
    record = merge_campaign(results, campaign / "results", Selection(args.snr_min, size_ratio_min=args.size_ratio_min),
                            args.weights, args.n_boot, args.n_bins, args.target_sigma_m)
    print(format_campaign(record))
    print(f"results: {campaign / 'results' / 'calibration.csv'} (and calibration.json, calibration.txt, m_bins.png, "
          "m_per_seed.png)")
    return record


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    from shapepipe.atomic import write_text_atomic
    from shapepipe_modules.gold.chain import gold_folder

    parser = build_parser()
    args = parser.parse_args(argv)
    campaign = args.campaign.resolve()
    overrides = _overrides(parser, args.overrides)
    existing = campaign / "campaign.json"
    preset = args.preset
    if preset is None:
        if existing.is_file():
            record = json.loads(existing.read_text())
            preset = record["preset"]
            overrides = overrides or record.get("overrides", {})
        else:
            preset = "calib"
    if args.merge_only:
        if not existing.is_file():
            print(f"{PROGRAM}: {campaign} holds no campaign", file=sys.stderr)
            return 2
        return 0 if run_merge(campaign, args) else 1
    try:
        seeds = parse_seeds(args.seeds or "1-4")
        prepare_campaign(campaign, preset, overrides, seeds)
    except CampaignError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    done = finished_seeds(campaign)
    pending = [seed for seed in seeds if seed not in done]
    from .campaign import seed_number

    print(f"{PROGRAM}: campaign {campaign}, preset {preset}; {len(seeds)} seeds asked, "
          f"{len(seeds) - len(pending)} already finished, {len(pending)} to run")
    pending_file = campaign / "pending.txt"
    write_text_atomic(pending_file, "".join(f"{seed_number(seed)}\n" for seed in pending))
    config_dir = (args.config_dir or gold_folder()).resolve()
    if not (config_dir / "config_GitFeGie.ini").is_file():
        print(f"{PROGRAM}: no GOLD configurations in {config_dir} (--config-dir)", file=sys.stderr)
        return 2
    spec = {"preset": preset, "overrides": overrides, "config_dir": config_dir, "mode": args.mode,
            "workers": None if args.batch else args.workers, "timeout": args.timeout,
            "chain_workers": args.chain_workers or (args.cpus if args.batch else 1), "ng_splits": args.ng_splits,
            "keep_work": args.keep_work, "work_dir": args.work_dir, "snr_min": args.snr_min,
            "size_ratio_min": args.size_ratio_min, "weights": args.weights, "n_boot": args.n_boot,
            "n_bins": args.n_bins, "target_sigma_m": args.target_sigma_m,
            "number_list": None if args.batch else pending_file}
    write_text_atomic(campaign / "config_seeds.ini", seed_config(campaign, spec))
    write_text_atomic(campaign / "config_merge.ini", merge_config(campaign, spec))
    if args.batch:
        if not pending:
            print(f"{PROGRAM}: every seed is finished; nothing to submit")
            return 0 if run_merge(campaign, args) else 1
        # Task K of an array always means line K of its number list: every submission gets its own list
        # and scripts (named by their seeds), never rewritten while its tasks may still run or be resubmitted.
        import hashlib

        text = pending_file.read_text()
        tag = f"calibration_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
        (campaign / "batch").mkdir(exist_ok=True)
        numbers_file = campaign / "batch" / f"{tag}_seeds.txt"
        write_text_atomic(numbers_file, text)
        command = [sys.executable, "-m", "shapepipe.cluster.batch", "--scheduler", args.batch,
                   "-c", str(campaign / "config_seeds.ini"), "--numbers", str(numbers_file), "--per-task", "1",
                   "--cpus", str(args.cpus), "--time", args.time, "--merge-config", str(campaign / "config_merge.ini"),
                   "--merge-time", "00:30:00", "--job-name", tag, "-o", str(campaign / "batch"),
                   "--chdir", str(campaign)]
        for flag, value in (("--mem", args.mem), ("--partition", args.partition), ("--account", args.account),
                            ("--throttle", args.throttle)):
            if value is not None:
                command += [flag, str(value)]
        for line in args.env or []:
            command += ["--env", line]
        if args.submit:
            command.append("--submit")
        status = subprocess.run(command).returncode
        if status == 0:
            print(f"{PROGRAM}: when the array has run: {PROGRAM} -o {campaign} --merge-only "
                  f"(the merge job also writes the table into its run folder)")
        return status
    status = 0
    if pending:
        status = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(campaign / "config_seeds.ini")]).returncode
    record = run_merge(campaign, args)
    missing = [seed for seed in seeds if seed not in finished_seeds(campaign)]
    if missing:
        print(f"{PROGRAM}: seeds not finished: {', '.join(map(str, missing))} (run the same command again: "
              "finished seeds are kept, the others redone)", file=sys.stderr)
        return 1
    return 0 if record is not None and status in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
