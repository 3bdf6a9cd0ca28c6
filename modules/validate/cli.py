"""``shapepipe_validate``: shear bias of final catalogues against the simulator's truth.

::

    shapepipe_validate -i run/make_catalog/output -t sim/truth -o validation
    shapepipe_validate --paired PLUS MINUS -t SIM_PLUS SIM_MINUS -o validation

Reads every ``final_cat*.fits`` given (files or folders), the truth of each
tile (``truth_tile-XXX-YYY.fits`` in the truth folder or in
``<simulation>/truth``), and prints and writes (``validation.json``) m1,
m2, c1, c2 with bootstrap errors, the response matrices and the counts,
plus three figures: ``response.png``, ``g_vs_truth.png``,
``m_c_bins.png``. The computation and the selection are described in
:mod:`.shear`.

``--paired PLUS MINUS``: two runs of the chain on the same simulation with
opposite shears (``shapepipe_simulate --paired``); PLUS and MINUS are
folders of final catalogues, run folders of ``make_catalog`` or GOLD run
roots (the newest ``run_sp_Mc`` of their ``output/``); ``-t`` gives the two
simulation folders (or the one folder holding ``plus/`` and ``minus/``).
Galaxies are joined by truth id, the selection is required on both members,
and m, c come from the pair differences and sums (:mod:`.paired`); writes
``validation_paired.json`` and ``m_bins_paired.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from shapepipe.arguments import ArgumentParser

PROGRAM = "shapepipe_validate"


def catalogue_folder(folder: Path) -> Path:
    """The folder of final catalogues behind a folder given on the command line.

    A folder holding ``final_cat*.fits`` is used as it is; a run folder
    (``run.json``) gives its ``make_catalog`` output; a run root (GOLD's
    ``--run-root``, or its ``output/``) gives the output of its newest
    completed ``run_sp_Mc`` run.
    """
    if any(folder.glob("final_cat*.fits")):
        return folder
    if (folder / "run.json").is_file():
        record = json.loads((folder / "run.json").read_text())
        for module in record.get("modules", []):
            if module.get("module") == "make_catalog" or module.get("module_run") == "make_catalog":
                return Path(module["output_dir"])
        return folder
    for output in (folder / "output", folder):
        if any(output.glob("*/run.json")):
            from shapepipe_modules.gold.chain import ChainError, module_output, newest_run

            try:
                return module_output(newest_run(output, "run_sp_Mc"), "make_catalog")
            except ChainError:
                pass
    return folder


def find_final_catalogues(inputs) -> list[Path]:
    """``final_cat*.fits`` files of the given files and folders (see :func:`catalogue_folder`), sorted."""
    from .shear import ValidationError

    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            item = catalogue_folder(item)
            paths += sorted(p for p in item.glob("final_cat*.fits") if not p.name.startswith("."))
        elif item.is_file():
            paths.append(item)
        else:
            raise ValidationError(f"{item} does not exist")
    if not paths:
        raise ValidationError(f"no final_cat*.fits in {', '.join(map(str, inputs))}")
    return paths


def truth_for(catalogue: Path, truth_dir: Path) -> Path:
    """Truth file of the tile of a final catalogue."""
    from shapepipe_modules import cfis

    from .shear import ValidationError

    try:
        xxx, yyy = cfis.parse_tile_id(catalogue.name)
    except ValueError as error:
        raise ValidationError(f"{catalogue}: {error}") from None
    folder = truth_dir / "truth" if (truth_dir / "truth").is_dir() else truth_dir
    path = folder / f"truth_tile-{cfis.tile_id(xxx, yyy, sep='-')}.fits"
    if not path.is_file():
        raise ValidationError(f"no truth {path} for {catalogue}")
    return path


def read_truth(path) -> dict:
    from astropy.table import Table

    from .shear import ValidationError

    table = Table.read(path, format="fits")
    missing = [c for c in ("ra", "dec", "g1", "g2", "is_star") if c not in table.colnames]
    if missing:
        raise ValidationError(f"truth {path}: columns {missing} missing")
    names = ("ra", "dec", "g1", "g2", "is_star") + tuple(n for n in ("pair_id", "id", "mag", "e1_int", "e2_int")
                                                      if n in table.colnames)
    return {name: np.asarray(table[name]) for name in names}


def format_report(result) -> str:
    """The printed summary."""
    lines = [f"tiles: {len(result['tiles'])}; detections {result['n_detected']}, matched {result['n_matched']}, "
             f"used {result['n_used']}, selected {int(np.sum(result['n_selected']))}",
             f"selection: {result['selection']}",
             "R     = " + np.array2string(result["R"], precision=4).replace("\n", " "),
             "R_sel = " + np.array2string(result["R_sel"], precision=4).replace("\n", " ")]
    for i in range(2):
        lines.append(f"m{i + 1} = {result['m'][i]:+.4e} +- {result['m_err'][i]:.1e}    "
                     f"c{i + 1} = {result['c'][i]:+.4e} +- {result['c_err'][i]:.1e}")
    for name, true, est, n in zip(result["tiles"], result["g_true"], result["g_est"], result["n_selected"]):
        lines.append(f"  {name}: true ({true[0]:+.4f}, {true[1]:+.4f})  estimated ({est[0]:+.5f}, {est[1]:+.5f})"
                     f"  n = {int(n)}")
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "R_objects"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROGRAM, description="Shear bias (m, c) of final catalogues against "
                                     "the simulator's truth.")
    parser.add_argument("-i", "--input", nargs="+", help="final catalogues or folders of them")
    parser.add_argument("--paired", nargs=2, metavar=("PLUS", "MINUS"),
                        help="paired validation of two runs with opposite shears (final catalogues' folders, "
                             "run folders or run roots); -t then takes both simulation folders")
    parser.add_argument("-t", "--truth", nargs="+", required=True,
                        help="truth folder or simulation folder (with truth/); with --paired: the plus and "
                             "minus simulation folders, or one folder holding plus/ and minus/")
    parser.add_argument("--weights", choices=("none", "ivar"), default="none",
                        help="--paired: per-galaxy weights, the same in numerator and response (default none)")
    parser.add_argument("-o", "--output-dir", default="validation", help="folder of the report and figures")
    parser.add_argument("--snr-min", type=float, default=10.0, help="S/N lower bound (default 10)")
    parser.add_argument("--snr-max", type=float, default=np.inf, help="S/N upper bound (default none)")
    parser.add_argument("--size-ratio-min", type=float, default=0.5, help="T/Tpsf lower bound (default 0.5)")
    parser.add_argument("--max-sep", type=float, default=1.0, help="matching radius in arcsec (default 1)")
    parser.add_argument("--keep-stars", action="store_true", help="keep objects matched to truth stars")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap draws (default 200)")
    parser.add_argument("--n-bins", type=int, default=4, help="S/N and size bins (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed (default 1)")
    parser.add_argument("--ra-col", default="XWIN_WORLD")
    parser.add_argument("--dec-col", default="YWIN_WORLD")
    parser.add_argument("--ring", action="store_true",
                        help="ring test: keep only ring pairs (truth pair_id) whose two galaxies are both "
                             "selected in the same tile, and bootstrap over pairs (with --paired: m from every "
                             "selected galaxy, c from the complete ring pairs, bootstrap over ring pairs)")
    parser.add_argument("--no-plots", action="store_true", help="write no figure")
    return parser


def paired_truth_folders(truth_args):
    """Plus and minus simulation folders from ``-t`` (two folders, or one holding plus/ and minus/)."""
    from .shear import ValidationError

    if len(truth_args) == 2:
        return Path(truth_args[0]), Path(truth_args[1])
    if len(truth_args) == 1 and (Path(truth_args[0]) / "plus").is_dir() and (Path(truth_args[0]) / "minus").is_dir():
        return Path(truth_args[0]) / "plus", Path(truth_args[0]) / "minus"
    raise ValidationError("--paired needs the two simulation folders after -t (PLUS MINUS), or one folder "
                          "holding plus/ and minus/")


def read_member(inputs, truth_dir, args) -> dict:
    """Matched galaxies of one run of a pair (:func:`.paired.member_table`)."""
    from .paired import member_table
    from .shear import read_final_catalogue

    paths = find_final_catalogues(inputs)
    catalogues = [(path.name, read_final_catalogue(path)) for path in paths]
    truths = [read_truth(truth_for(path, Path(truth_dir))) for path in paths]
    return member_table(catalogues, truths, args.max_sep, args.keep_stars, args.ra_col, args.dec_col)


def format_paired_report(result) -> str:
    """The printed summary of a paired validation."""
    lines = [f"paired validation: {result['n_pairs']} galaxies in both runs "
             f"(plus {result.get('n_plus', '?')}, minus {result.get('n_minus', '?')} matched), "
             f"{result['n_selected']} selected on both; m1 from {result['n_m'][0]}, m2 from {result['n_m'][1]}",
             f"selection: {result['selection']}; weights: {result['weights']}",
             "R     = " + np.array2string(np.asarray(result["R"]), precision=4).replace("\n", " "),
             "R_sel (single run; cancels in the pair difference) = "
             + np.array2string(np.asarray(result["R_sel"]), precision=4).replace("\n", " ")]
    for i in range(2):
        lines.append(f"m{i + 1} = {result['m'][i]:+.4e} +- {result['m_err'][i]:.1e}    "
                     f"c{i + 1} = {result['c'][i]:+.4e} +- {result['c_err'][i]:.1e}")
    lines.extend(additive_lines(result, "{:+.4e} +- {:.1e}"))
    return "\n".join(lines)


def additive_lines(result, number="{:+.5f} +- {:.5f}") -> list:
    """What the additive bias is measured on (ring: complete pairs), and the selection's own part."""
    def pairs_of(values, errors):  # JSON records hold None for NaN
        return ", ".join(number.format(*(float("nan") if x is None else float(x) for x in (v, e)))
                         for v, e in zip(values, errors))

    lines = []
    if result.get("ring") and "c_all" in result:
        c_all = pairs_of(result["c_all"], result["c_all_err"])
        lines.append(f"c on the {result.get('n_c', '?')} galaxies of complete ring pairs (both selected: shapes "
                     f"cancel); over all selected galaxies c = ({c_all})")
    e_int = result.get("e_int_mean")
    if e_int is not None and np.all(np.isfinite(np.asarray(e_int, float))):
        text = pairs_of(e_int, result["e_int_mean_err"])
        lines.append(f"selection against orientation: mean true intrinsic shape of the selected galaxies ({text}), "
                     "zero unless the selection prefers an orientation")
    return lines


def run_paired_validation(args) -> dict:
    """Paired validation: write ``validation_paired.json`` and the figure; returns the result."""
    from shapepipe.atomic import write_text_atomic

    from . import plots
    from .paired import join_pairs, paired_estimate
    from .shear import Selection

    truth_plus, truth_minus = paired_truth_folders(args.truth)
    plus = read_member([args.paired[0]], truth_plus, args)
    minus = read_member([args.paired[1]], truth_minus, args)
    pairs = join_pairs(plus, minus)
    selection = Selection(args.snr_min, args.snr_max, args.size_ratio_min)
    result = paired_estimate(pairs, selection, args.weights, args.n_boot, args.seed, args.n_bins, ring=args.ring)
    result.update(n_plus=pairs["n_plus"], n_minus=pairs["n_minus"])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "validation_paired.json", json.dumps(_jsonable(result), indent=1) + "\n")
    if not args.no_plots:
        plots.plot_paired_bins(result, out / "m_bins_paired.png")
    print(format_paired_report(result))
    return result


def run_validation(args) -> dict:
    """Validate, write ``validation.json`` and the figures; returns the result."""
    from shapepipe.atomic import write_text_atomic

    from . import plots
    from .shear import Selection, read_final_catalogue, validate_catalogues

    paths = find_final_catalogues(args.input)
    truth_dir = Path(args.truth[0])
    catalogues = [(path.name, read_final_catalogue(path)) for path in paths]
    truths = [read_truth(truth_for(path, truth_dir)) for path in paths]
    selection = Selection(args.snr_min, args.snr_max, args.size_ratio_min)
    result = validate_catalogues(catalogues, truths, selection, args.max_sep, args.keep_stars, args.n_boot,
                                 args.seed, args.n_bins, ra_col=args.ra_col, dec_col=args.dec_col,
                                 ring=args.ring)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "validation.json", json.dumps(_jsonable(result), indent=1) + "\n")
    if not args.no_plots:
        plots.plot_response(result, out / "response.png")
        plots.plot_g_vs_truth(result, out / "g_vs_truth.png")
        plots.plot_bins(result, out / "m_c_bins.png")
    print(format_report(result))
    return result


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.paired and args.input:
        parser.error("give either -i (one run) or --paired PLUS MINUS")
    if not args.paired and not args.input:
        parser.error("-i/--input is required (or --paired PLUS MINUS)")
    if not args.paired and len(args.truth) != 1:
        parser.error("-t takes one folder (two with --paired)")
    try:
        run_paired_validation(args) if args.paired else run_validation(args)
    except (ValueError, OSError) as error:  # ValidationError is a ValueError; so is "nothing selected"
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
