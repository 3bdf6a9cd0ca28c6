"""``shapepipe_lightcurve ID --forced forced_phot-244-252.fits [-o ID.png] [--stats STATS]``.

Prints the light curve of one tile object (``NUMBER`` = ID) over MJD, with
its variability statistics, and writes its plot.
"""

from __future__ import annotations

import sys

from shapepipe.arguments import ArgumentParser

PRINTED = ("MJD", "EXP_NAME", "CCD_N", "MAG_PSF", "MAGERR_PSF", "MAG_APER", "MAGERR_APER", "FLUX_PSF_CAL",
           "FLUXERR_PSF_CAL", "FLAGS")


def build_parser():
    parser = ArgumentParser(prog="shapepipe_lightcurve",
                            description="Light curve of one tile object from a forced_phot table.")
    parser.add_argument("id", type=int, help="object NUMBER in the tile catalogue")
    parser.add_argument("--forced", required=True, help="forced_phot<number>.fits")
    parser.add_argument("--stats", help="lightcurve_stats<number>.fits (default: computed here with the module defaults)")
    parser.add_argument("-o", "--output", help="plot file (default lightcurve-<ID>.png)")
    parser.add_argument("--no-plot", action="store_true", help="print only")
    return parser


def main(argv=None):
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    import numpy as np

    from shapepipe.errors import JobError
    from shapepipe_modules.io.tables import FitsTableError, read_fits_table

    from .curves import STAT_COLUMNS, light_curve, plot_light_curve, variability
    from .runner import OPTIONS, read_forced, variability_options

    try:
        table = read_forced(args.forced)
        rows = light_curve(table, args.id)
        if len(rows) == 0:
            print(f"shapepipe_lightcurve: error: object {args.id} has no epoch in {args.forced}", file=sys.stderr)
            return 2
        if args.stats:
            stats_table = read_fits_table(args.stats)
            chosen = np.asarray(stats_table["NUMBER"]) == args.id
            stats = {name: stats_table[name][chosen][0] for name, _ in STAT_COLUMNS} if chosen.any() else None
        else:
            # The whole table: the systematics of each exposure CCD come from all its objects.
            computed = variability(table, **variability_options({option.name: option.default for option in OPTIONS}))
            chosen = np.asarray(computed["NUMBER"]) == args.id
            stats = {name: computed[name][chosen][0] for name, _ in STAT_COLUMNS} if chosen.any() else None
    except (JobError, FitsTableError, OSError) as error:
        print(f"shapepipe_lightcurve: error: {error}", file=sys.stderr)
        return 2
    print(f"object {args.id}: {len(rows)} epochs")
    print("  ".join(f"{name:>13s}" for name in PRINTED))
    for row in rows:
        print("  ".join(f"{row[name]:>13.5f}" if isinstance(row[name], (float, np.floating)) else f"{row[name]!s:>13s}"
                        for name in PRINTED))
    if stats is not None:
        print(f"chi2_red {stats['CHI2_RED']:.3f}  P_constant {stats['P_CONSTANT']:.3g}  excess_var "
              f"{stats['EXCESS_VAR']:.3g}  amplitude {stats['AMPLITUDE']:.3f} mag  variable {bool(stats['VARIABLE'])}")
    if not args.no_plot:
        output = args.output or f"lightcurve-{args.id}.png"
        plot_light_curve(rows, output, f"object {args.id}", stats=stats)
        print(f"shapepipe_lightcurve: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
