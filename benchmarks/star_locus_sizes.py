"""The stellar locus of a GOLD run in three size measures, against the truth (not a test: prints a table).

Usage: ``python benchmarks/star_locus_sizes.py [--run-root example/GOLD] [--data example/GOLD/data/demo]``

Reads the newest exposure catalogues (``sextractor_run_2``) and pipeline
flags (``mask_run_2``) of a GOLD run. For the clean objects (FLAGS == 0,
IMAFLAGS_ISO == 0) matched to the truth within 1.5 pixels, per MAG_AUTO bin:
percentiles of each size measure minus its locus on the CCD (the histogram
mode of the measure among clean objects brighter than MAG_AUTO 21, as the
setools selection finds it) for the true stars, and the 0.5 and 2
percentiles for the true galaxies (how close the most compact galaxies come
to the locus). Measures: FWHM_IMAGE, FLUX_RADIUS and R_WIN =
sqrt(X2WIN_IMAGE + Y2WIN_IMAGE). Also MAG_AUTO minus the true magnitude of
the clean stars (docs/crowded.md, "Star selection on the windowed size").
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

BINS = ((18.0, 20.0), (20.0, 20.5), (20.5, 21.0), (21.0, 21.5), (21.5, 22.0), (22.0, 22.5))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-root", default="example/GOLD")
    parser.add_argument("--data", default="example/GOLD/data/demo")
    args = parser.parse_args(argv)

    from astropy.table import Table

    from shapepipe_modules.gold.chain import module_output, newest_run
    from shapepipe_modules.gold.truth_checks import match_positions
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.setools.language import histogram_mode

    output = Path(args.run_root) / "output"
    catalogues = module_output(newest_run(output, "run_sp_tile_Sx_exp_SxSePsf"), "sextractor_run_2")
    columns = {"is_star": [], "dmag": [], "mag": []}
    offsets = {"FWHM_IMAGE": [], "FLUX_RADIUS": [], "R_WIN": []}
    truths = {}
    for path in sorted(catalogues.glob("sexcat-*.fits")):
        exposure, ccd = re.search(r"-(\d+)-(\d+)\.fits$", path.name).groups()
        if exposure not in truths:
            truths[exposure] = Table.read(Path(args.data) / "truth" / f"truth_exp-{exposure}.fits")
        truth = truths[exposure][np.asarray(truths[exposure]["ccd"]) == int(ccd)]
        table, _ = read_ldac(path)
        index = match_positions(table["XWIN_IMAGE"], table["YWIN_IMAGE"], truth["x"], truth["y"], 1.5)
        clean = (np.asarray(table["FLAGS"]) == 0) & (np.asarray(table["IMAFLAGS_ISO"]) == 0) & (index >= 0)
        mag = np.asarray(table["MAG_AUTO"], float)
        sizes = {"FWHM_IMAGE": np.asarray(table["FWHM_IMAGE"], float),
                 "FLUX_RADIUS": np.asarray(table["FLUX_RADIUS"], float),
                 "R_WIN": np.sqrt(np.asarray(table["X2WIN_IMAGE"], float) + np.asarray(table["Y2WIN_IMAGE"], float))}
        bright = clean & (mag > 0) & (mag < 21)
        for name, size in sizes.items():
            offsets[name].append((size - histogram_mode(size[bright]))[clean])
        columns["is_star"].append(np.asarray(truth["is_star"], bool)[index[clean]])
        columns["dmag"].append(mag[clean] - np.asarray(truth["mag"], float)[index[clean]])
        columns["mag"].append(mag[clean])
    data = {key: np.concatenate(value) for key, value in columns.items()}
    offsets = {key: np.concatenate(value) for key, value in offsets.items()}
    star = data["is_star"]
    print(f"clean matched objects: {len(star)} ({star.sum()} stars) on {len(truths)} exposures")
    for name, offset in offsets.items():
        print(f"\n{name} minus its locus (pixels)")
        print(f"{'MAG_AUTO':>10s} {'stars':>6s} {'p2.5':>7s} {'p16':>7s} {'p50':>7s} {'p84':>7s} {'p97.5':>7s} "
              f"{'galaxies':>9s} {'gal p0.5':>9s} {'gal p2':>7s}")
        for low, high in BINS:
            in_bin = (data["mag"] > low) & (data["mag"] < high)
            s = np.percentile(offset[in_bin & star], [2.5, 16, 50, 84, 97.5]) if np.any(in_bin & star) else [np.nan] * 5
            g = np.percentile(offset[in_bin & ~star], [0.5, 2]) if np.any(in_bin & ~star) else [np.nan] * 2
            print(f"{low:4.1f}-{high:<5.1f} {np.sum(in_bin & star):6d} " + " ".join(f"{v:7.2f}" for v in s)
                  + f" {np.sum(in_bin & ~star):9d} {g[0]:9.2f} {g[1]:7.2f}")
    p = np.percentile(data["dmag"][star & (data["mag"] > 18) & (data["mag"] < 22)], [16, 50, 84])
    print(f"\nMAG_AUTO - true mag, clean stars 18-22: 16/50/84 % {p[0]:+.3f} {p[1]:+.3f} {p[2]:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
