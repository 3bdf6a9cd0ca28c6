"""Command line: ``shapepipe_simulate [--preset demo] [-o DIR] [--seed N] [--paired] ...``."""

from __future__ import annotations

import argparse
import json
import sys

from shapepipe.errors import ShapePipeError

from .presets import PARAMETER_HELP, PRESETS
from shapepipe.arguments import ArgumentParser


def _parse_set(text):
    """``NAME=VALUE``; VALUE is JSON when it parses as JSON, else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def _parse_shear(text):
    try:
        g1, g2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shear expects G1,G2, got {text!r}") from None
    return [g1, g2]


def build_parser():
    parser = ArgumentParser(
        prog="shapepipe_simulate",
        description="Simulate a CFIS/UNIONS-like survey (exposures, tiles) with its truth.",
        epilog="Parameters for --set: " + "; ".join(f"{k}: {v}" for k, v in PARAMETER_HELP.items()),
    )
    parser.add_argument("--preset", choices=PRESETS, default="demo", help="base parameters (default demo)")
    parser.add_argument("-o", "--output-dir", default="simulation", help="output directory")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("-j", "--n-workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--tiles", nargs="+", help="tile ids XXX.YYY")
    parser.add_argument("--shear", type=_parse_shear, action="append", help="G1,G2 for one tile; repeat in tile order")
    parser.add_argument("--ring", action="store_true", default=None, help="galaxies in 90-degree rotated pairs")
    parser.add_argument("--set", type=_parse_set, action="append", default=[], metavar="NAME=VALUE", help="override any preset parameter")
    parser.add_argument("--paired", action="store_true",
                        help="write DIR/plus and DIR/minus: the same simulation with every tile's shear negated in minus")
    parser.add_argument("--pairing", choices=("shear", "rotate"), default="shear",
                        help="with --paired: minus has the shear negated (shear) or every field galaxy's intrinsic "
                             "ellipticity negated at the same shear (rotate)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    overrides = dict(args.set)
    if args.tiles:
        overrides["tiles"] = args.tiles
    if args.shear:
        overrides["shear"] = args.shear
    if args.ring:
        overrides["ring"] = True
    from .core import simulate, simulate_paired

    if args.paired:
        overrides["pairing"] = args.pairing
    run = simulate_paired if args.paired else simulate
    try:
        paths = run(preset=args.preset, output_dir=args.output_dir, seed=args.seed, n_workers=args.n_workers,
                    progress=not args.no_progress, **overrides)
    except (ShapePipeError, ValueError, OSError) as error:
        print(f"shapepipe_simulate: error: {error}", file=sys.stderr)
        return 2
    for path in paths if args.paired else [paths]:
        print(f"shapepipe_simulate: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
