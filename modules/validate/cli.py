"""``shapepipe_validate``: shear bias of final catalogues against the simulator's truth.

::

    shapepipe_validate -i run/make_catalog/output -t sim/truth -o validation

Reads every ``final_cat*.fits`` given (files or folders), the truth of each
tile (``truth_tile-XXX-YYY.fits`` in the truth folder or in
``<simulation>/truth``), and prints and writes (``validation.json``) m1,
m2, c1, c2 with bootstrap errors, the response matrices and the counts,
plus three figures: ``response.png``, ``g_vs_truth.png``,
``m_c_bins.png``. The computation and the selection are described in
:mod:`.shear`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from shapepipe.arguments import ArgumentParser

PROGRAM = "shapepipe_validate"


def find_final_catalogues(inputs) -> list[Path]:
    """``final_cat*.fits`` files of the given files and folders, sorted."""
    from .shear import ValidationError

    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
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
    names = ("ra", "dec", "g1", "g2", "is_star") + (("pair_id",) if "pair_id" in table.colnames else ())
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
    parser.add_argument("-i", "--input", nargs="+", required=True, help="final catalogues or folders of them")
    parser.add_argument("-t", "--truth", required=True, help="truth folder or simulation folder (with truth/)")
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
                             "selected in the same tile, and bootstrap over pairs")
    parser.add_argument("--no-plots", action="store_true", help="write no figure")
    return parser


def run_validation(args) -> dict:
    """Validate, write ``validation.json`` and the figures; returns the result."""
    from shapepipe.atomic import write_text_atomic

    from . import plots
    from .shear import Selection, read_final_catalogue, validate_catalogues

    paths = find_final_catalogues(args.input)
    truth_dir = Path(args.truth)
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
    args = build_parser().parse_args(argv)
    try:
        run_validation(args)
    except (ValueError, OSError) as error:  # ValidationError is a ValueError; so is "nothing selected"
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
