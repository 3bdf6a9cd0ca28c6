"""``shapepipe_campaign``: what a campaign over a tile list has done, stage by stage.

On top of :mod:`shapepipe.cluster.status` (the run records of every run
under the output folders, the newest outcome of each job):

- ``summary``: per stage (module run), how many of the expected tiles or
  exposures are done, failed, or not done yet (ShapePipe's ``summary_run``);
- ``missing``: the tile IDs (or exposure names) a stage has not done, one a
  line, ready to be given back as a tile list (``--numbers``: as file
  numbers for ``shapepipe_run --numbers``; ShapePipe's ``missing_unique``);
- ``duplicates``: jobs done by more than one run (ShapePipe's
  ``remove_duplicates`` lists them to delete; here ``last:``/``all:``
  references already pick the newest, so they are only reported).

Running a campaign (:mod:`.campaign_run`, :mod:`.final_cat`,
:mod:`.snakemake_workflow`; a campaign root holds ``tile_runs/XXX.YYY``):

- ``run``: tiles through every stage, one ``shapepipe_run`` per stage and
  tile, each tile in its own folder, resuming at the first stage not done
  (ShapePipe's ``job_sp``); ``run-stage`` runs one stage of one tile;
- ``final-cat``: the newest final catalogue of every tile joined, each object
  kept from the tile whose centre is nearest (``create_final_cat``,
  ``remove_duplicates`` across tile overlaps);
- ``snakefile``: the same campaign as a Snakemake workflow.

``summary``, ``missing`` and ``duplicates`` accept a campaign root in place
of output folders (its ``tile_runs/*/output``).

A stage's unit is read from its job numbers: ``-XXX-YYY`` are tiles,
``-NNNNNNN`` exposures, ``-NNNNNNN-C`` CCDs of an exposure (an exposure is
done at a stage when all its CCD jobs there are done). Expected exposures
come from ``--exposures`` or else from the ``exp_numbers-XXX-YYY.txt`` lists
that ``find_exposures`` wrote for the listed tiles.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from shapepipe.arguments import ArgumentParser

from ..cfis import parse_exposure_name, parse_tile_id, tile_id
from ._common import ToolError, read_lines

PROGRAM = "shapepipe_campaign"
_TILE = re.compile(r"^-?(\d{3})-(\d{3})$")
_EXPOSURE = re.compile(r"^-?(\d{6,8})$")
_CCD = re.compile(r"^-?(\d{6,8})-(\d+)$")
DONE = ("done", "done_previously")
FAILED = ("failed", "timeout")


def read_tiles(path) -> list[str]:
    """Tile IDs ``XXX.YYY`` of a tile list (any spelling ``parse_tile_id`` reads), in order, unique."""
    tiles = []
    for line_number, text in read_lines(path):
        try:
            tiles.append(tile_id(*parse_tile_id(text)))
        except ValueError as error:
            raise ToolError(f"{path}:{line_number}: {error}") from None
    return list(dict.fromkeys(tiles))


def read_exposures(path) -> list[str]:
    """Exposure names of an exposure list, unique."""
    names = []
    for line_number, text in read_lines(path):
        try:
            names.append(parse_exposure_name(text))
        except ValueError as error:
            raise ToolError(f"{path}:{line_number}: {error}") from None
    return list(dict.fromkeys(names))


def exposures_of_tiles(paths, tiles) -> list[str]:
    """Exposures listed by ``find_exposures`` (``exp_numbers-XXX-YYY.txt``) for the tiles, under ``paths``."""
    wanted = {t.replace(".", "-") for t in tiles}
    names = []
    for root in paths:
        for listing in sorted(Path(root).rglob("exp_numbers-*.txt")):
            match = re.search(r"exp_numbers-(\d{3}-\d{3})\.txt$", listing.name)
            if match and match.group(1) in wanted:
                names += read_exposures(listing)
    return list(dict.fromkeys(names))


def unit_of(number: str):
    """``('tile', 'XXX.YYY')``, ``('exposure', name)``, ``('ccd', name)`` or ``(None, number)``."""
    if (match := _TILE.match(number)):
        return "tile", f"{match.group(1)}.{match.group(2)}"
    if (match := _EXPOSURE.match(number)):
        return "exposure", match.group(1)
    if (match := _CCD.match(number)):
        return "ccd", match.group(1)
    return None, number


def stage_table(report, tiles, exposures) -> list[dict]:
    """One row per module run: unit, expected, done, failed, not done, and the IDs not done."""
    by_stage = defaultdict(list)
    for outcome in report.outcomes:
        by_stage[outcome.module_run].append(outcome)
    rows = []
    for module_run, module in report.module_runs:
        outcomes = by_stage.get(module_run, [])
        units = {unit_of(o.number)[0] for o in outcomes}
        if units <= {"tile"} and outcomes:
            unit, expected = "tile", list(tiles)
        elif units and units <= {"exposure", "ccd"}:
            unit, expected = "exposure", list(exposures)
        else:
            unit, expected = "job", sorted({o.number for o in outcomes})
        status = defaultdict(list)  # id -> statuses of its jobs
        for outcome in outcomes:
            kind, identifier = unit_of(outcome.number)
            status[identifier if unit != "job" else outcome.number].append(outcome.status)
        done = [i for i in expected if status.get(i) and all(s in DONE for s in status[i])]
        failed = [i for i in expected if any(s in FAILED for s in status.get(i, []))]
        not_done = [i for i in expected if i not in set(done)]
        extra = sorted(set(status) - set(expected)) if unit != "job" else []
        rows.append({"stage": module_run, "module": module, "unit": unit, "expected": len(expected),
                     "done": len(done), "failed": len(failed), "not_done": len(not_done),
                     "not_done_ids": not_done, "failed_ids": failed, "outside_list": extra})
    return rows


def duplicates(paths) -> list[dict]:
    """Jobs (module run, number) done in more than one run, with those runs (oldest first)."""
    from shapepipe.cluster.status import find_run_dirs, read_run

    seen = defaultdict(list)
    for root in paths:
        for folder in find_run_dirs(root):
            result = read_run(folder)
            if result is None:
                continue
            status, outcomes = result
            for outcome in outcomes:
                if outcome.status == "done":
                    seen[(outcome.module_run, outcome.number)].append((status.started, status.run_dir))
    return [{"stage": stage, "number": number, "runs": [run for _, run in sorted(runs)]}
            for (stage, number), runs in sorted(seen.items()) if len(runs) > 1]


def expand_paths(paths) -> list[Path]:
    """Output folders: a campaign root (holding ``tile_runs``) stands for every ``tile_runs/*/output`` with runs."""
    expanded = []
    for path in map(Path, paths):
        if (path / "tile_runs").is_dir():
            expanded += [out for out in sorted((path / "tile_runs").glob("*/output")) if any(out.glob("*/run.json"))]
        else:
            expanded.append(path)
    return expanded


def _campaign_options(parser, data_required=True):
    """Options shared by the commands that run stages: root, data, configurations, stages."""
    parser.add_argument("--root", required=True, help="campaign root (tile_runs/XXX.YYY under it)")
    parser.add_argument("--data", required=data_required, help="input data folder (SP_DATA; e.g. a simulation)")
    parser.add_argument("--config-dir", help="configuration folder (SP_CONFIG; default example/GOLD)")
    parser.add_argument("--stages", help="NAME=CONFIG, ... in order (default: the GOLD chain's stages)")


def _parser():
    parser = ArgumentParser(prog=PROGRAM, description="Run a campaign over a tile list (one shapepipe_run per "
                                                      "stage and tile, or a Snakemake workflow), follow it, and "
                                                      "make its final catalogue.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="tiles through every stage (job_sp), resuming at the first stage not done")
    run.add_argument("tile_ids", nargs="*", metavar="TILE", help="tile IDs (XXX.YYY)")
    run.add_argument("--tiles", help="tile list, one ID a line")
    _campaign_options(run)
    run.add_argument("--from", dest="first", help="first stage")
    run.add_argument("--to", dest="last", help="last stage")
    run.add_argument("--force", action="store_true", help="run the stages again even if done")
    one = sub.add_parser("run-stage", help="one stage of one tile (a Snakemake job)")
    one.add_argument("tile", metavar="TILE")
    one.add_argument("stage", metavar="STAGE")
    _campaign_options(one)
    final = sub.add_parser("final-cat", help="final catalogue of the tiles, duplicates across overlaps removed")
    final.add_argument("--tiles", required=True, help="tile list, one ID a line")
    _campaign_options(final, data_required=False)
    final.add_argument("-o", "--output", required=True, help="output FITS file")
    final.add_argument("-p", "--param", help="columns to keep, one a line (as merge_final_cat)")
    final.add_argument("--module-run", default="make_catalog", help="module run writing the tile catalogues")
    final.add_argument("--prefix", default="final_cat", help="tile catalogue name start")
    final.add_argument("--ra-column", default="XWIN_WORLD")
    final.add_argument("--dec-column", default="YWIN_WORLD")
    final.add_argument("--match-radius", type=float, default=1.0,
                       help="arcsec: detections of two tiles closer than this are one object")
    final.add_argument("--keep-duplicates", action="store_true", help="write every row with a KEEP column")
    snake = sub.add_parser("snakefile", help="write the campaign as a Snakemake workflow")
    snake.add_argument("--tiles", required=True, help="tile list, one ID a line")
    _campaign_options(snake)
    snake.add_argument("-o", "--output", help="Snakefile path (default ROOT/Snakefile)")
    snake.add_argument("--match-radius", type=float, default=1.0, help="passed to final-cat")
    snake.add_argument("--module-run", default="make_catalog", help="passed to final-cat")
    for name, help_text in (("summary", "done / failed / not done per stage"),
                            ("missing", "IDs a stage has not done, one a line"),
                            ("duplicates", "jobs done by more than one run")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("paths", nargs="+", metavar="OUTPUT_DIR", help="output folders (or run folders)")
        if name != "duplicates":
            command.add_argument("--tiles", required=True, help="tile list, one ID a line")
            command.add_argument("--exposures", help="exposure list (default: find_exposures outputs)")
        command.add_argument("--run-name", help="only the runs of this RUN_NAME")
    sub.choices["summary"].add_argument("--json", action="store_true", help="print JSON")
    sub.choices["missing"].add_argument("--stage", required=True, help="module run, e.g. sextractor_run_2")
    sub.choices["missing"].add_argument("--numbers", action="store_true",
                                        help="write file numbers (-244-252) instead of IDs (244.252)")
    sub.choices["missing"].add_argument("-o", "--output", help="write the list to this file")
    return parser


def main(argv=None) -> int:
    """Entry point; 0 when everything asked for is done, 1 when something is not, 2 on bad input."""
    from shapepipe.cluster.status import StatusError, collect

    args = _parser().parse_args(argv)
    if args.command in ("run", "run-stage", "final-cat", "snakefile"):
        return _run_commands(args)
    args.paths = expand_paths(args.paths)
    try:
        if args.command == "duplicates":
            rows = duplicates(args.paths)
            for row in rows:
                print(f"{row['stage']} {row['number']}: {len(row['runs'])} runs: {', '.join(row['runs'])}")
            print(f"{len(rows)} job(s) done by more than one run")
            return 0
        report = collect(args.paths, run_name=args.run_name)
        tiles = read_tiles(args.tiles)
        exposures = read_exposures(args.exposures) if args.exposures else exposures_of_tiles(args.paths, tiles)
        rows = stage_table(report, tiles, exposures)
    except (ToolError, StatusError) as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    if args.command == "summary":
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"{'stage':<28} {'unit':<9} {'expected':>8} {'done':>6} {'failed':>6} {'not done':>8} {'done %':>7}")
            for row in rows:
                share = 100.0 * row["done"] / row["expected"] if row["expected"] else 0.0
                print(f"{row['stage']:<28} {row['unit']:<9} {row['expected']:>8} {row['done']:>6} {row['failed']:>6} "
                      f"{row['not_done']:>8} {share:>6.1f}%")
                if row["outside_list"]:
                    print(f"  ({len(row['outside_list'])} {row['unit']}(s) outside the list: "
                          f"{', '.join(row['outside_list'][:5])})")
        return 0 if all(r["not_done"] == 0 for r in rows) else 1
    chosen = [r for r in rows if r["stage"] == args.stage.lower()]
    if not chosen:
        print(f"{PROGRAM}: no stage {args.stage!r} in the runs (stages: "
              f"{', '.join(r['stage'] for r in rows)})", file=sys.stderr)
        return 2
    row = chosen[0]
    ids = row["not_done_ids"]
    if args.numbers:
        ids = ["-" + i.replace(".", "-") for i in ids]
    text = "".join(f"{i}\n" for i in ids)
    if args.output:
        from shapepipe.atomic import write_text_atomic

        write_text_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    print(f"{row['stage']}: {len(ids)} of {row['expected']} {row['unit']}(s) not done", file=sys.stderr)
    return 0 if not ids else 1


def _stages_and_configs(args):
    from ..gold.chain import gold_folder
    from .campaign_run import gold_stages, parse_stages

    stages = parse_stages(args.stages) if args.stages else gold_stages()
    return stages, Path(args.config_dir) if args.config_dir else gold_folder()


def _run_commands(args) -> int:
    """``run``, ``run-stage``, ``final-cat``, ``snakefile``: 0 done, 1 a tile or stage failed, 2 bad input."""
    from ..gold.chain import ChainError
    from ..io.tables import FitsTableError
    from . import campaign_run

    try:
        stages, config_dir = _stages_and_configs(args)
        if args.command == "final-cat":
            return _final_cat(args)
        if args.command == "snakefile":
            from .snakemake_workflow import write_snakefile

            tiles = read_tiles(args.tiles)
            extra = ("--match-radius", str(args.match_radius), "--module-run", args.module_run)
            path = write_snakefile(args.output or Path(args.root) / "Snakefile", args.root, tiles, stages, args.data,
                                   config_dir, final_args=extra)
            print(f"wrote {path}: {len(stages)} stage rules over {len(tiles)} tiles, then final_cat; run "
                  f"snakemake -s {path} -d {Path(args.root).resolve()} --cores N --keep-going")
            return 0
        if args.command == "run-stage":
            chosen = [s for s in stages if s.name == args.stage]
            if not chosen:
                raise ToolError(f"no stage {args.stage!r}; stages: {', '.join(s.name for s in stages)}")
            # A process of its own (a Snakemake job): shapepipe_run runs here, not in a second interpreter.
            campaign_run.run_stage(args.root, args.tile, chosen[0], args.data, config_dir, in_process=True)
            return 0
        tiles = list(dict.fromkeys([campaign_run.canonical_tile(t) for t in args.tile_ids]
                                   + (read_tiles(args.tiles) if args.tiles else [])))
        if not tiles:
            raise ToolError("no tile given (TILE arguments or --tiles)")
    except (ToolError, FitsTableError) as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    except ChainError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    failed = []
    for tile in tiles:
        try:
            campaign_run.run_tile(args.root, tile, stages, args.data, config_dir, args.first, args.last, args.force)
        except ToolError as error:
            print(f"{PROGRAM}: {error}", file=sys.stderr)
            return 2
        except ChainError as error:
            # As job_sp: the tile stops at its failing stage; the other tiles go on.
            print(f"{PROGRAM}: tile {tile}: {error}", file=sys.stderr)
            failed.append(tile)
    print(f"{len(tiles) - len(failed)} of {len(tiles)} tile(s) done" + (f"; failed: {', '.join(failed)}"
                                                                         if failed else ""))
    return 1 if failed else 0


def _final_cat(args) -> int:
    from .final_cat import create_final_catalogue
    from .merge_final_cat import read_param_file

    columns = read_param_file(args.param) if args.param else None
    counts = create_final_catalogue(args.root, read_tiles(args.tiles), args.output, columns, args.module_run,
                                    args.prefix, args.ra_column, args.dec_column, args.match_radius,
                                    args.keep_duplicates)
    for tile, (rows, kept) in counts["tiles"].items():
        print(f"{tile}: {rows} rows, {kept} kept")
    print(f"{counts['rows']} rows from {len(counts['tiles'])} tile(s); {counts['removed']} duplicate(s) removed "
          f"in {counts['groups']} overlap group(s); {counts['kept']} written to {args.output}")
    if counts["missing_tiles"]:
        print(f"tiles without a final catalogue: {', '.join(counts['missing_tiles'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
