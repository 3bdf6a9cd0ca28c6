"""``shapepipe_gold``: simulate the ``demo`` survey if needed, run the whole CFIS-like chain, report.

The ``demo`` preset is a ring test (galaxies in pairs rotated by 90
degrees; ``shapepipe_validate --ring`` keeps pairs whose two galaxies are
selected), which cancels most of the shape noise in m and c; ``--ring`` and
``--no-ring`` override the preset. Existing data are reused only if their
``simulation.json`` records the same preset, seed and resolved parameters
(shears, ring, every ``--set`` override): the driver's own folder
(``example/GOLD/data/<preset>``) is simulated again otherwise, a ``--data``
folder is refused. Data made by other simulator code (its source digest in
``simulation.json``) are simulated again in the driver's own folder and
reused with a warning from a ``--data`` folder.

``--paired`` simulates the survey with the preset's shears and with their
opposite (same seed: same galaxies, same noise), runs the chain on both
(``RUN_ROOT/plus``, ``RUN_ROOT/minus``) and prints the paired m and c
(``shapepipe_validate --paired``), where shape noise and most pixel noise
cancel.

Examples::

    shapepipe_gold                              # from the repository root: demo data in example/GOLD/data/demo,
                                                # runs in example/GOLD/output
    shapepipe_gold --preset tiny --data /tmp/sim_tiny --run-root /tmp/gold
    shapepipe_gold --no-ring                    # independent galaxy shapes (demo's default: a ring test)
    shapepipe_gold --paired                     # +g and -g simulations, paired shear bias
    shapepipe_gold --preset tiny --set star_mag_range=[17,24] --data /tmp/t  # any preset parameter
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
                    run_paired_validation, run_validation)
from .summary import format_summary, module_times, psf_residuals
from .truth_checks import spread_model_quality, star_light_coverage, star_selection_quality
from shapepipe.arguments import ArgumentParser

RUN_NAMES = ("run_sp_GitFeGie", "run_sp_Uz", "run_sp_exp_SpMh", "run_sp_MaMa", "run_sp_tile_Sx_exp_SxSePsf",
             "run_sp_MsPl", "run_sp_tile_PsViSmVi", "run_sp_Ms", "run_sp_Mc")


def parse_args(argv):
    from shapepipe_modules.simulate.cli import _parse_set

    gold = gold_folder()
    parser = ArgumentParser(prog="shapepipe_gold", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="simulation preset when the data are absent (default demo)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument("--set", type=_parse_set, action="append", default=[], metavar="NAME=VALUE",
                        help="override a preset parameter (as shapepipe_simulate --set); repeatable")
    parser.add_argument("--data", type=Path, default=None,
                        help="simulated survey folder (default example/GOLD/data/<preset>, with --paired "
                             "example/GOLD/data/<preset>-paired); simulated if absent")
    parser.add_argument("--run-root", type=Path, default=gold,
                        help="SP_RUN: runs go to RUN_ROOT/output (with --paired RUN_ROOT/plus/output and "
                             "RUN_ROOT/minus/output; default example/GOLD)")
    parser.add_argument("--config-dir", type=Path, default=gold, help="SP_CONFIG (default example/GOLD)")
    ring = parser.add_mutually_exclusive_group()
    ring.add_argument("--ring", dest="ring", action="store_true", default=None,
                      help="galaxies in 90-degree rotated pairs (default: the preset's choice; demo is a ring test)")
    ring.add_argument("--no-ring", dest="ring", action="store_false",
                      help="galaxies with independent shapes")
    parser.add_argument("--paired", action="store_true",
                        help="simulate the survey twice, with the shear and with its opposite (same seed, same "
                             "galaxies and noise), run the chain on both and validate the pair "
                             "(shapepipe_validate --paired)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="simulation workers (default 2)")
    parser.add_argument("--ng-splits", type=int, default=1,
                        help="ngmix runs per tile by object-id range, merged by merge_sep_cats (default 1)")
    parser.add_argument("--from", dest="first", choices=STAGE_NAMES, default=None, help="first stage to run")
    parser.add_argument("--to", dest="last", choices=STAGE_NAMES, default=None, help="last stage to run")
    parser.add_argument("--summary-only", action="store_true", help="no run: report the newest runs")
    parser.add_argument("--star-light-fraction", type=float, default=0.1, metavar="F",
                        help="per-CCD mask report: compare the halo and spike masks with the area where the true "
                             "light of the bright stars exceeds F times the pixel noise (default 0.1)")
    parser.add_argument("--keep", choices=("all", "final"), default="all",
                        help="after a successful chain and its summary: keep every output (all, default) or only "
                             "the final catalogues and the PSF validation products (final: the KEEP policy of a "
                             "campaign; the summary records the bytes freed)")
    args = parser.parse_args(argv)
    args.overrides = dict(args.set)
    if args.ring is not None:
        args.overrides["ring"] = args.ring
    args.default_data = args.data is None
    if args.data is None:
        args.data = gold / "data" / (f"{args.preset}-paired" if args.paired else args.preset)
    if args.ng_splits < 1:
        parser.error("--ng-splits must be at least 1")
    return args


class SimulationMismatch(ValueError):
    """A named data folder holds a simulation other than the one asked for."""


def _normalised(value):
    """JSON round trip: tuples become lists, numbers compare as they were written."""
    return json.loads(json.dumps(value))


def wanted_parameters(preset: str, overrides=None, negate_shear=False) -> dict:
    """The full parameter dict a simulation of ``preset`` with ``overrides`` records.

    Raises
    ------
    shapepipe.errors.ConfigError
        Unknown preset or parameter, wrong value.
    """
    from shapepipe_modules.simulate.presets import resolve_parameters

    params = resolve_parameters(preset, **(overrides or {}))
    if negate_shear:
        # 0.0, not -0.0, as simulate_paired records it; a cluster's NFW shear flips with the tiles' shear.
        params["shear"] = [[-g if g != 0 else 0.0 for g in pair] for pair in params["shear"]]
        if params.get("cluster"):
            params["nfw_sign"] = -1
    return _normalised(params)


def simulation_mismatch(data_dir: Path, preset: str, seed: int, overrides=None, negate_shear=False):
    """How the simulation in ``data_dir`` differs from the one asked for (None: it matches).

    The preset, the seed and the whole resolved parameter dict (shears,
    ring, every override) are compared with the ``simulation.json`` record,
    so that data simulated differently are never reused silently.
    """
    record = json.loads((Path(data_dir) / "simulation.json").read_text())
    differences = []
    if record.get("preset") != preset:
        differences.append(f"preset {record.get('preset')!r} (wanted {preset!r})")
    if record.get("seed") != int(seed):
        differences.append(f"seed {record.get('seed')!r} (wanted {int(seed)!r})")
    found = _normalised(record.get("parameters", {}))
    wanted = wanted_parameters(preset, overrides, negate_shear)
    for key in sorted(set(found) | set(wanted)):
        if found.get(key) != wanted.get(key):
            differences.append(f"{key} {found.get(key)!r} (wanted {wanted.get(key)!r})")
    return ", ".join(differences) or None


def simulator_changed(data_dir: Path):
    """How the simulator that made ``data_dir`` differs from this one (None: the same source).

    Compares the ``simulator`` digest of ``simulation.json``
    (:func:`~shapepipe_modules.simulate.core.simulator_fingerprint`); a
    record without one was made before the digest was recorded.
    """
    from shapepipe_modules.simulate.core import simulator_fingerprint

    record = json.loads((Path(data_dir) / "simulation.json").read_text())
    current = simulator_fingerprint()
    found = record.get("simulator")
    if found == current:
        return None
    return f"simulator {found or 'not recorded'} (this code: {current})"


def simulated_ring(data_dir) -> bool:
    """Whether the simulation in ``data_dir`` is a ring test (its ``simulation.json``)."""
    record = json.loads((Path(data_dir) / "simulation.json").read_text())
    return bool(record.get("parameters", {}).get("ring", False))


def simulate_pair(preset, data_dir, seed, workers, overrides=None):
    """Simulate ``data_dir/plus`` (the preset's shears) and ``data_dir/minus`` (every shear negated).

    Same seed, so the same scene, PSFs and noise streams
    (:func:`shapepipe_modules.simulate.simulate_paired`).

    Returns
    -------
    (pathlib.Path, pathlib.Path)
    """
    from shapepipe_modules.simulate import simulate_paired

    plus, minus = simulate_paired(preset=preset, output_dir=data_dir, seed=seed, n_workers=workers,
                                  **dict(overrides or {}))
    return Path(plus), Path(minus)


def ensure_simulation(data_dir: Path, preset: str, seed: int, workers: int, overrides=None, log=print,
                      replace_different=True, paired=False):
    """Simulate into ``data_dir`` unless it holds the same simulation; return the time taken (None: reused).

    Parameters
    ----------
    overrides : dict, optional
        Preset parameters changed by name (``ring``, ``shear``, ...).
    replace_different : bool
        What to do with a simulation of other parameters in ``data_dir``:
        simulate again (the driver's own data folder), or raise (a folder
        the user named).
    paired : bool
        ``data_dir/plus`` and ``data_dir/minus``, the second with every
        shear negated.

    Raises
    ------
    SimulationMismatch
        If ``data_dir`` holds a different simulation and ``replace_different`` is False.
    """
    data_dir = Path(data_dir)
    folders = [(data_dir / "plus", False), (data_dir / "minus", True)] if paired else [(data_dir, False)]
    wanted_parameters(preset, overrides)  # a bad override fails here, before anything is compared or written
    present = [(folder / "simulation.json").is_file() for folder, _ in folders]
    if any(present):
        mismatches = [(folder, simulation_mismatch(folder, preset, seed, overrides, negate))
                      if ok else (folder, "no simulation.json") for (folder, negate), ok in zip(folders, present)]
        mismatches = [(folder, text) for folder, text in mismatches if text]
        # Same parameters but other simulator code: other pixels (a changed star profile, noise model).
        # The driver's own folder is simulated again; a named folder is the user's data: reused, with a warning.
        changed = [(folder, simulator_changed(folder)) for folder, _ in folders] if not mismatches else []
        changed = [(folder, text) for folder, text in changed if text]
        if changed and replace_different:
            mismatches = changed
        elif changed:
            log("warning: " + "; ".join(f"{folder / 'simulation.json'} records {text}" for folder, text in changed)
                + ": reused as named; its pixels may differ from what this simulator draws")
        if not mismatches:
            log(f"simulated data: {data_dir} (reused: preset {preset}, seed {seed}, same parameters)")
            return None
        detail = "; ".join(f"{folder / 'simulation.json'} records {text}" for folder, text in mismatches)
        if not replace_different:
            raise SimulationMismatch(f"{detail}; pass the matching --preset, --seed, --set and --ring/--no-ring "
                                     "options, or another --data folder")
        log(f"simulated data in {data_dir} differ: {detail}; simulating again")
    from shapepipe_modules.simulate import simulate

    log(f"simulating preset {preset!r} (seed {seed}{', +g and -g' if paired else ''}"
        f"{', ' + ', '.join(f'{k}={v!r}' for k, v in (overrides or {}).items()) if overrides else ''}) "
        f"into {data_dir} ...")
    started = time.perf_counter()
    if paired:
        simulate_pair(preset, data_dir, seed, workers, overrides)
    else:
        simulate(preset=preset, output_dir=data_dir, seed=seed, n_workers=workers, **(overrides or {}))
    elapsed = time.perf_counter() - started
    log(f"  {elapsed:.1f} s")
    return elapsed


def _newest(output_dir, run_name):
    try:
        return newest_run(output_dir, run_name)
    except ChainError:
        return None


def build_summary(data_dir, run_root, stage_runs=(), chain_wall_s=None, simulation_s=None,
                  star_light_fraction=0.1) -> dict:
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
        # The loss breakdown needs every exposure catalogue (absent when --keep final removed them).
        catalogues = module_output(exposure_run, "sextractor_run_2")
        have_catalogues = all((catalogues / Path(p).name.replace("star_selection-", "sexcat-")).is_file()
                              for p in selections)
        quality = star_selection_quality(selections, truth_dir, module_output(mask_run, "mask_run_2"),
                                         catalogue_dir=catalogues if have_catalogues else None)
        summary["star_selection"] = quality.as_dict()
    if mask_run:
        flags = sorted(module_output(mask_run, "mask_run_2").glob("pipeline_flag-*.fits"))
        if flags:
            summary["star_masks"] = {"noise_fraction": star_light_fraction,
                                     "ccds": star_light_coverage(flags, data_dir, star_light_fraction)}
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


def _run_one_chain(args, data_dir, run_root, validate=True):
    """The chain (and, unless paired, shapepipe_validate) on one simulation; returns (stage runs, wall s)."""
    started = time.perf_counter()
    chain_last = None if args.last == "validate" else args.last
    stage_runs = []
    if args.first != "validate":
        stage_runs = run_chain(data_dir, run_root, args.config_dir, first=args.first, last=chain_last,
                               ng_splits=args.ng_splits)
    if validate and args.last in (None, "validate"):
        print("[validate] shapepipe_validate: shear bias against the truth")
        t0 = time.perf_counter()
        ring = ("--ring",) if simulated_ring(data_dir) else ()
        run_validation(data_dir, run_root, extra_args=ring)
        stage_runs.append(StageRun("validate", [], time.perf_counter() - t0))
    return stage_runs, time.perf_counter() - started


def paired_summary(data_dir, run_root, report_dir) -> dict:
    """The paired result and the CPU time of both chains, for the summary."""
    values = json.loads((Path(report_dir) / "validation_paired.json").read_text())
    paired = {key: values.get(key) for key in ("m", "m_err", "c", "c_err", "R", "R_sel", "n_pairs", "n_selected",
                                                "n_m", "n_plus", "n_minus", "selection", "weights")}
    cpu = {}
    for sign in ("plus", "minus"):
        output_dir = Path(run_root).resolve() / sign / "output"
        runs = [d for d in (_newest(output_dir, name) for name in RUN_NAMES) if d is not None]
        newest_ng = _newest(output_dir, "run_sp_tile_ngmix_Ng1u")
        runs += [newest_ng] if newest_ng else []
        cpu[sign] = sum(row["cpu_s"] for row in module_times(runs))
    paired["chain_cpu_s"] = cpu
    paired["report"] = str(report_dir)
    return paired


def main(argv=None) -> int:
    """Entry point; returns 0 on success, 1 if a stage failed, 2 on bad arguments."""
    from shapepipe.errors import ConfigError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    for stage in STAGES:
        if not (args.config_dir / stage.config).is_file():
            print(f"shapepipe_gold: configuration {args.config_dir / stage.config} not found", file=sys.stderr)
            return 2
    signs = ("plus", "minus") if args.paired else (None,)
    data_dirs = {sign: args.data / sign if sign else args.data for sign in signs}
    run_roots = {sign: args.run_root / sign if sign else args.run_root for sign in signs}
    simulation_s = None
    if not args.summary_only:
        try:
            simulation_s = ensure_simulation(args.data, args.preset, args.seed, args.workers, args.overrides,
                                             replace_different=args.default_data, paired=args.paired)
        except (SimulationMismatch, ConfigError) as error:
            print(f"shapepipe_gold: {error}", file=sys.stderr)
            return 2
        except (OSError, ValueError) as error:
            print(f"shapepipe_gold: cannot simulate into {args.data}: {error}", file=sys.stderr)
            return 1
    elif not all((d / "simulation.json").is_file() for d in data_dirs.values()):
        print(f"shapepipe_gold: no simulation in {args.data}", file=sys.stderr)
        return 2
    stage_runs, chain_wall_s = {sign: [] for sign in signs}, {sign: None for sign in signs}
    report_dir = args.run_root.resolve() / "validation_paired"
    if not args.summary_only:
        try:
            for sign in signs:
                if sign:
                    print(f"== chain on the {sign} simulation ({data_dirs[sign]})")
                stage_runs[sign], chain_wall_s[sign] = _run_one_chain(args, data_dirs[sign], run_roots[sign],
                                                                      validate=not args.paired)
            if args.paired and args.last in (None, "validate"):
                print("[validate] shapepipe_validate --paired: shear bias from the +g/-g pairs")
                run_paired_validation(data_dirs["plus"], data_dirs["minus"], run_roots["plus"], run_roots["minus"],
                                      report_dir, ring=simulated_ring(data_dirs["plus"]))
        except ChainError as error:
            print(f"shapepipe_gold: stopped: {error}", file=sys.stderr)
            return 1
    first = signs[0]
    summary = build_summary(data_dirs[first], run_roots[first], stage_runs[first], chain_wall_s[first], simulation_s,
                            star_light_fraction=args.star_light_fraction)
    if args.paired:
        summary["data"] = str(args.data)
        if chain_wall_s["minus"] is not None:
            summary["chain_wall_s"] = chain_wall_s["plus"] + chain_wall_s["minus"]
        if (report_dir / "validation_paired.json").is_file():
            summary["paired"] = paired_summary(args.data, args.run_root, report_dir)
    if args.keep == "final" and not args.summary_only and args.last in (None, "validate"):
        from .chain import delete_intermediates

        run_dirs = sorted({d for sign in signs for s in stage_runs[sign] for d in s.run_dirs})
        freed, kept = delete_intermediates(run_dirs)
        summary["disk_after_keep"] = {"freed_bytes": freed, "kept_bytes": kept}
    json_path, text_path = write_summary(summary, run_roots[first])
    print(format_summary(summary))
    print(f"summary: {text_path} and {json_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
