"""``shapepipe_gold``: simulate the ``demo`` survey if needed, run the whole CFIS-like chain, report.

The simulation is a ring test by default (galaxies in pairs rotated by 90
degrees; ``shapepipe_validate --ring`` keeps pairs whose two galaxies are
selected), which cancels most of the shape noise in m and c. Existing data
are reused only if their ``simulation.json`` records the same preset, seed
and ring option: the driver's own folder (``example/GOLD/data/<preset>``)
is simulated again otherwise, a ``--data`` folder is refused.

Examples::

    shapepipe_gold                              # from the repository root: demo data in example/GOLD/data/demo,
                                                # runs in example/GOLD/output
    shapepipe_gold --preset tiny --data /tmp/sim_tiny --run-root /tmp/gold
    shapepipe_gold --no-ring                    # independent galaxy shapes (default: a ring test)
    shapepipe_gold --from PiViSmVi              # rerun from a stage (earlier runs found with last:)
    shapepipe_gold --summary-only               # the report of the newest runs
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

from .chain import (STAGE_NAMES, STAGES, ChainError, StageRun, gold_folder, module_output, newest_run, run_chain,
                    run_validation)
from .summary import format_summary, module_times, psf_residuals
from .truth_checks import spread_model_quality, star_selection_quality
from shapepipe.arguments import ArgumentParser

RUN_NAMES = ("run_sp_GitFeGie", "run_sp_Uz", "run_sp_exp_SpMh", "run_sp_MaMa", "run_sp_tile_Sx_exp_SxSePsf",
             "run_sp_MsPl", "run_sp_tile_PsViSmVi", "run_sp_Ms", "run_sp_Mc")


def parse_args(argv):
    gold = gold_folder()
    parser = ArgumentParser(prog="shapepipe_gold", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="simulation preset when the data are absent (default demo)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument("--data", type=Path, default=None,
                        help="simulated survey folder (default example/GOLD/data/<preset>); simulated if absent")
    parser.add_argument("--run-root", type=Path, default=gold,
                        help="SP_RUN: runs go to RUN_ROOT/output (default example/GOLD)")
    parser.add_argument("--config-dir", type=Path, default=gold, help="SP_CONFIG (default example/GOLD)")
    parser.add_argument("--no-ring", dest="ring", action="store_false",
                        help="simulate galaxies with independent shapes (default: ring test, galaxies in "
                             "90-degree rotated pairs, which cancels most shape noise in the shear bias)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="simulation workers (default 2)")
    parser.add_argument("--ng-splits", type=int, default=1,
                        help="ngmix runs per tile by object-id range, merged by merge_sep_cats (default 1)")
    parser.add_argument("--from", dest="first", choices=STAGE_NAMES, default=None, help="first stage to run")
    parser.add_argument("--to", dest="last", choices=STAGE_NAMES, default=None, help="last stage to run")
    parser.add_argument("--summary-only", action="store_true", help="no run: report the newest runs")
    parser.add_argument("--keep", choices=("all", "final"), default="all",
                        help="after a successful chain and its summary: keep every output (all, default) or only "
                             "the final catalogues and the PSF validation products (final: the KEEP policy of a "
                             "campaign; the summary records the bytes freed)")
    args = parser.parse_args(argv)
    args.default_data = args.data is None
    if args.data is None:
        args.data = gold / "data" / args.preset
    if args.ng_splits < 1:
        parser.error("--ng-splits must be at least 1")
    return args


class SimulationMismatch(ValueError):
    """A named data folder holds a simulation other than the one asked for."""


def simulation_mismatch(data_dir: Path, preset: str, seed: int, ring: bool):
    """How the simulation in ``data_dir`` differs from the one asked for (None: it matches).

    The preset, the seed and the ring option are compared with the
    ``simulation.json`` record, so that data simulated differently are
    never reused silently.
    """
    record = json.loads((data_dir / "simulation.json").read_text())
    parameters = record.get("parameters", {})
    found = {"preset": record.get("preset"), "seed": record.get("seed"),
             "ring": bool(parameters.get("ring", False))}
    wanted = {"preset": preset, "seed": int(seed), "ring": bool(ring)}
    differences = [f"{key} {found[key]!r} (wanted {wanted[key]!r})" for key in wanted if found[key] != wanted[key]]
    return ", ".join(differences) or None


def simulated_ring(data_dir) -> bool:
    """Whether the simulation in ``data_dir`` is a ring test (its ``simulation.json``)."""
    record = json.loads((Path(data_dir) / "simulation.json").read_text())
    return bool(record.get("parameters", {}).get("ring", False))


def ensure_simulation(data_dir: Path, preset: str, seed: int, workers: int, ring: bool = True, log=print,
                      replace_different=True):
    """Simulate into ``data_dir`` unless it holds the same simulation; return the time taken (None: reused).

    Parameters
    ----------
    replace_different : bool
        What to do with a simulation of another preset, seed or ring option
        in ``data_dir``: simulate again (the driver's own data folder), or
        raise (a folder the user named).

    Raises
    ------
    SimulationMismatch
        If ``data_dir`` holds a different simulation and ``replace_different`` is False.
    """
    if (data_dir / "simulation.json").is_file():
        mismatch = simulation_mismatch(data_dir, preset, seed, ring)
        if mismatch is None:
            log(f"simulated data: {data_dir} (reused: preset {preset}, seed {seed}, ring {ring})")
            return None
        if not replace_different:
            raise SimulationMismatch(f"{data_dir / 'simulation.json'} records {mismatch}; pass the matching --preset, "
                             "--seed and --no-ring options, or another --data folder")
        log(f"simulated data in {data_dir} differ: {mismatch}; simulating again")
    from shapepipe_modules.simulate import simulate

    log(f"simulating preset {preset!r} (seed {seed}, ring {ring}) into {data_dir} ...")
    started = time.perf_counter()
    simulate(preset=preset, output_dir=data_dir, seed=seed, n_workers=workers, ring=ring)
    elapsed = time.perf_counter() - started
    log(f"  {elapsed:.1f} s")
    return elapsed


def _newest(output_dir, run_name):
    try:
        return newest_run(output_dir, run_name)
    except ChainError:
        return None


def build_summary(data_dir, run_root, stage_runs=(), chain_wall_s=None, simulation_s=None) -> dict:
    """Everything the report shows, from the newest run folder of each stage."""
    output_dir = Path(run_root).resolve() / "output"
    parameters = json.loads((Path(data_dir) / "simulation.json").read_text())
    run_dirs = [d for d in (_newest(output_dir, name) for name in RUN_NAMES) if d is not None]
    ngmix_runs = [d for s in stage_runs if s.stage == "Ng" for d in s.run_dirs]
    if not ngmix_runs:
        newest = _newest(output_dir, "run_sp_tile_ngmix_Ng1u")
        ngmix_runs = [newest] if newest else []
    run_dirs += ngmix_runs
    order = {name: k for k, name in enumerate(RUN_NAMES[:7] + ("run_sp_tile_ngmix",) + RUN_NAMES[7:])}
    run_dirs.sort(key=lambda d: order.get(json.loads((d / "run.json").read_text())["run_name"].rsplit("_Ng", 1)[0], 99))
    modules = module_times(run_dirs)
    summary = {
        "data": str(data_dir), "preset": parameters.get("preset"), "simulation_s": simulation_s,
        "chain_wall_s": chain_wall_s if chain_wall_s is not None else sum(r["wall_s"] for r in modules),
        "stages": [{"stage": s.stage, "wall_s": s.wall_s} for s in stage_runs],
        "modules": modules,
    }
    truth_dir = Path(data_dir) / "truth"
    psf_run = _newest(output_dir, "run_sp_MsPl")
    if psf_run:
        summary["psf"] = psf_residuals(module_output(psf_run, "psf_validation") / "psf_validation_stats.json")
    exposure_run = _newest(output_dir, "run_sp_tile_Sx_exp_SxSePsf")
    mask_run = _newest(output_dir, "run_sp_MaMa")
    if exposure_run and mask_run:
        selections = sorted(glob.glob(str(module_output(exposure_run, "setools") / "**" / "star_selection-*.fits"),
                                      recursive=True))
        quality = star_selection_quality(selections, truth_dir, module_output(mask_run, "mask_run_2"))
        summary["star_selection"] = quality.as_dict()
    tile_run = _newest(output_dir, "run_sp_tile_PsViSmVi")
    if exposure_run and tile_run:
        detections = module_output(exposure_run, "sextractor_run_1")
        spread = module_output(tile_run, "spread_model")
        pairs = [(path, spread / path.name.replace("sexcat-", "sexcat_sm-"))
                 for path in sorted(detections.glob("sexcat-*.fits"))]
        summary["spread_model"] = spread_model_quality(pairs, truth_dir)
    report = output_dir / "validation" / "validation.json"
    if report.is_file() and _newest(output_dir, "run_sp_Mc") is not None:
        values = json.loads(report.read_text())
        summary["shear"] = {}
        for k in (0, 1):
            for name in ("m", "c"):
                value, error = values[name][k], values[f"{name}_err"][k]
                if value is not None and error is not None:
                    summary["shear"][f"{name}{k + 1}"] = (float(value), float(error))
        summary["shear"]["n_selected"] = values.get("n_selected")
        summary["shear"]["ring"] = bool(values.get("ring", False))
        summary["shear"]["selection"] = values.get("selection")
        summary["shear"]["R"], summary["shear"]["R_sel"] = values.get("R"), values.get("R_sel")
        summary["shear"]["counts"] = {key: values.get(key) for key in ("n_detected", "n_matched", "n_used")}
    else:
        summary["shear_note"] = "shear bias: no shapepipe_validate report (run the chain to the end)"
    return summary


def write_summary(summary: dict, run_root) -> tuple[Path, Path]:
    """Write ``gold_summary.json`` and ``gold_summary.txt`` into RUN_ROOT/output."""
    from shapepipe.atomic import atomic_path

    output_dir = Path(run_root).resolve() / "output"
    json_path, text_path = output_dir / "gold_summary.json", output_dir / "gold_summary.txt"
    with atomic_path(json_path) as temporary:
        Path(temporary).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    with atomic_path(text_path) as temporary:
        Path(temporary).write_text(format_summary(summary))
    return json_path, text_path


def main(argv=None) -> int:
    """Entry point; returns 0 on success, 1 if a stage failed, 2 on bad arguments."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for stage in STAGES:
        if not (args.config_dir / stage.config).is_file():
            print(f"shapepipe_gold: configuration {args.config_dir / stage.config} not found", file=sys.stderr)
            return 2
    simulation_s = None
    if not args.summary_only:
        try:
            simulation_s = ensure_simulation(args.data, args.preset, args.seed, args.workers, args.ring,
                                             replace_different=args.default_data)
        except SimulationMismatch as error:
            print(f"shapepipe_gold: {error}", file=sys.stderr)
            return 2
        except (OSError, ValueError) as error:
            print(f"shapepipe_gold: cannot simulate into {args.data}: {error}", file=sys.stderr)
            return 1
    elif not (args.data / "simulation.json").is_file():
        print(f"shapepipe_gold: no simulation in {args.data}", file=sys.stderr)
        return 2
    stage_runs, chain_wall_s = [], None
    if not args.summary_only:
        started = time.perf_counter()
        try:
            chain_last = None if args.last == "validate" else args.last
            if args.first != "validate":
                stage_runs = run_chain(args.data, args.run_root, args.config_dir, first=args.first,
                                       last=chain_last, ng_splits=args.ng_splits)
            if args.last in (None, "validate"):
                print("[validate] shapepipe_validate: shear bias against the truth")
                t0 = time.perf_counter()
                ring = ("--ring",) if simulated_ring(args.data) else ()
                run_validation(args.data, args.run_root, extra_args=ring)
                stage_runs.append(StageRun("validate", [], time.perf_counter() - t0))
        except ChainError as error:
            print(f"shapepipe_gold: stopped: {error}", file=sys.stderr)
            return 1
        chain_wall_s = time.perf_counter() - started
    summary = build_summary(args.data, args.run_root, stage_runs, chain_wall_s, simulation_s)
    if args.keep == "final" and not args.summary_only and args.last in (None, "validate"):
        from .chain import delete_intermediates

        run_dirs = sorted({d for s in stage_runs for d in s.run_dirs})
        freed, kept = delete_intermediates(run_dirs)
        summary["disk_after_keep"] = {"freed_bytes": freed, "kept_bytes": kept}
    json_path, text_path = write_summary(summary, args.run_root)
    print(format_summary(summary))
    print(f"summary: {text_path} and {json_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
