"""Do the forced PSF fluxes of constant stars scatter as their errors predict? Measured against truth.

For each seed: the ``lightcurve`` preset, the exposure chain of the tests
(``tests/lightcurve_chain.py``: split, sextractor, star selection, psfex, the
tile catalogue), ``exposure_quality``, ``forced_phot`` and ``lightcurve``
with their defaults. Then, on the epochs of the constant unblended stars
(matched to the tile truth), the same forced fits again with the simulation's
TRUE PSF (``TruePSF.draw``) at the measured and at the true positions, and the
fluxes calibrated with the TRUE zero point, so that each source of scatter is
seen alone (stars with an undetected neighbour within 3 arcsec in the truth are left out: their
light curves are those of two objects):

``model``      the pipeline: PSFEx model, measured position, measured ZP_PSF;
``model/ZP``   PSFEx model, measured position, true zero point;
``true PSF``   true PSF, measured position, true zero point;
``true pos``   true PSF, true position, true zero point (photon noise only;
               the true-PSF refits subtract no neighbour).

Per magnitude bin (true magnitude of the star): number of stars, pooled
chi2/dof of the light curves about their weighted mean with the statistical
errors (``FLUXERR``), its uncertainty for a chi2 law (``sqrt(2 / dof)``) and
a bootstrap over the stars; then the same with the lightcurve module's error
models (:data:`VARIANTS`: the former fixed 4 mmag floor, the systematics per
exposure CCD with and without offsets, the default). Also the rms of
``ZP_PSF - ZP_true`` per seed (its mean, common to all epochs, does not enter
a light curve), the systematic and offset of each exposure CCD, and the
VARIABLE flags of each variant (false positives among isolated constant
stars, detectable variables flagged).

Usage::

    python benchmarks/lightcurve_errors.py --seeds 1 2 3 [--work /tmp/lc] [--tables-only] [--keep-neighbours]

The per-epoch table of every seed (``epochs-<seed>.fits`` in ``--work``) is
kept for a second look (``--tables-only`` re-reads them without rerunning).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BINS = (17, 18, 19, 20, 21, 22, 23, 24)


def run_seed(seed: int, work: Path, lightcurve_options: dict) -> Path:
    """Simulate and run the chain of one seed; the joined per-epoch table path."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from lightcurve_chain import (match_tile_truth, run_exposure_chain, run_forced_phot, run_lightcurve,
                                  run_quality, run_tile_catalogue)

    from shapepipe_modules.simulate import simulate

    root = work / f"seed{seed}"
    sim = root / "sim"
    if not (sim / "simulation.json").is_file():
        simulate(preset="lightcurve", output_dir=sim, seed=seed, n_workers=1)
    chain = run_exposure_chain(sim, root / "chain")
    chain["tile_catalogue"] = run_tile_catalogue(sim, chain["store"], root / "chain")
    run_quality(sim, chain, root / "quality")
    forced = run_forced_phot(chain, root / "quality", root / "forced")
    stats = run_lightcurve(forced, root / "forced", **lightcurve_options)
    number, index, truth = match_tile_truth(sim, chain["tile_catalogue"])
    return join_truth(sim, chain, forced, stats, number, index, truth, work / f"epochs-{seed}.fits")


def join_truth(sim, chain, forced_path, stats_path, number, index, truth, output):
    """Per-epoch rows of the constant unblended stars with truth and the true-PSF fits."""
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.forced_phot.photometry import forced_photometry
    from shapepipe_modules.simulate.psf import TruePSF

    forced = Table.read(forced_path, hdu="FORCED_PHOT")
    stats = Table.read(stats_path)
    of_number = dict(zip(number.tolist(), index.tolist()))
    row = np.array([of_number.get(int(n), -1) for n in forced["NUMBER"]])
    matched = row >= 0
    safe = np.where(matched, row, 0)
    is_star = matched & np.asarray(truth["is_star"])[safe]
    constant = is_star & (np.asarray(truth["var_type"])[safe] == 0)
    keep = constant & ((np.asarray(forced["FLAGS"]) & 16) == 0) & (np.asarray(truth["mag"])[safe] < 24)
    conditions = Table.read(Path(sim) / "truth" / "exposures.fits")
    true_zp = {f"{int(e):07d}": float(z) for e, z in zip(conditions["exposure"], conditions["zero_point"])}
    psf = TruePSF(sim)
    columns = {name: np.asarray(forced[name])[keep] for name in
               ("NUMBER", "EXP_NAME", "CCD_N", "MJD", "X_CCD", "Y_CCD", "FLUX_PSF", "FLUXERR_PSF", "CHI2_PSF",
                "ZP_PSF", "FLUX_PSF_CAL", "FLUXERR_PSF_CAL", "FLAGS", "BKG_PSF")}
    columns["EXP_NAME"] = columns["EXP_NAME"].astype(str)
    columns["TRUE_ID"] = np.asarray(truth["id"])[safe][keep]
    columns["TRUE_MAG"] = np.asarray(truth["mag"])[safe][keep]
    columns["TRUE_ZP"] = np.array([true_zp[e] for e in columns["EXP_NAME"]])
    n = keep.sum()
    for name in ("FLUX_TPSF", "FLUXERR_TPSF", "FLUX_TPOS", "FLUXERR_TPOS", "X_TRUE", "Y_TRUE", "SIGNED_EDGE"):
        columns[name] = np.full(n, np.nan)
    stamp = 21
    for exposure, ccd in sorted(set(zip(columns["EXP_NAME"].tolist(), columns["CCD_N"].tolist()))):
        rows = np.flatnonzero((columns["EXP_NAME"] == exposure) & (columns["CCD_N"] == ccd))
        exp_truth = Table.read(Path(sim) / "truth" / f"truth_exp-{exposure}.fits")
        exp_truth = exp_truth[exp_truth["ccd"] == ccd]
        where = {int(i): k for k, i in enumerate(exp_truth["id"])}
        k = np.array([where[int(i)] for i in columns["TRUE_ID"][rows]])
        columns["X_TRUE"][rows] = exp_truth["x"][k]
        columns["Y_TRUE"][rows] = exp_truth["y"][k]
        files = chain["ccds"][(exposure, int(ccd))]
        with fits.open(files["image"]) as hdus:
            image, header = hdus[0].data.astype(np.float64), hdus[0].header
        weight = fits.getdata(files["weight"]).astype(np.float64)
        flag = fits.getdata(files["flag"])
        gain = float(header["GAIN"])
        for x_name, y_name, flux_name in (("X_CCD", "Y_CCD", "TPSF"), ("X_TRUE", "Y_TRUE", "TPOS")):
            x, y = columns[x_name][rows], columns[y_name][rows]
            stamps = np.stack([psf.draw(int(exposure), int(ccd), xi, yi, size=stamp).array for xi, yi in zip(x, y)])
            # Neighbours are left in (the stars kept are unblended); no deblending of the others.
            phot = forced_photometry(image, weight, None, x, y, gain, stamp, 5.0, flag, deblend_iterations=0,
                                     psf=stamps)
            columns[f"FLUX_{flux_name}"][rows] = phot["FLUX_PSF"]
            columns[f"FLUXERR_{flux_name}"][rows] = phot["FLUXERR_PSF"]
    table = Table(columns)
    stat_of = dict(zip(stats["NUMBER"].tolist(), range(len(stats))))
    table["CHI2_RED_MODULE"] = [float(stats["CHI2_RED"][stat_of[n]]) for n in table["NUMBER"]]
    table["N_EPOCHS_MODULE"] = [int(stats["N_EPOCHS"][stat_of[n]]) for n in table["NUMBER"]]
    table.write(output, overwrite=True)
    return output


def light_curve_chi2(number, flux, error):
    """Per object: chi2 about the weighted mean and its dof (objects with >= 2 epochs)."""
    order = np.argsort(number, kind="stable")
    number, flux, error = number[order], flux[order], error[order]
    starts = np.flatnonzero(np.r_[True, number[1:] != number[:-1]])
    w = 1.0 / error**2
    total = lambda v: np.add.reduceat(v, starts)  # noqa: E731
    mean = total(w * flux) / total(w)
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, number.size]))
    chi2 = total(w * (flux - mean[group]) ** 2)
    return number[starts], chi2, total(np.ones_like(flux)) - 1


VARIANTS = {
    "fixed 4mmag": dict(error_floor=0.004, scale_by_fit_chi2=True, exposure_systematics_on=False),
    "syst only": dict(relative_calibration=False, scale_by_fit_chi2=False),
    "offset+syst": dict(scale_by_fit_chi2=False),
    "default": dict(),
}


#: Per variant: false positives, constant stars, variables flagged, detectable variables (all seeds).
FLAG_COUNTS = {}


def module_chi2(work: Path, seed: int, table):
    """CHI2_RED of the lightcurve statistics of each variant's options, on each row of ``table``."""
    from astropy.table import Table

    from shapepipe_modules.lightcurve.curves import variability
    from shapepipe_modules.lightcurve.runner import read_forced

    from lightcurve_chain import isolated_in_truth, match_tile_truth

    root = work / f"seed{seed}"
    forced = read_forced(root / "forced" / "forced_phot-244-252.fits")
    # Truth of every object, for the flags: constant isolated stars and detectable variables.
    number, index, truth = match_tile_truth(root / "sim", root / "chain" / "tile" / "sexcat-244-252.fits")
    of_number = dict(zip(number.tolist(), index.tolist()))
    exposures = sorted(set(np.char.strip(np.asarray(forced["EXP_NAME"]).astype(str)).tolist()))
    mags = {}
    for exposure in exposures:
        exp_truth = Table.read(root / "sim" / "truth" / f"truth_exp-{exposure}.fits")
        for object_id, mag in zip(exp_truth["id"], exp_truth["mag"]):
            mags.setdefault(int(object_id), []).append(float(mag))
    out = {}
    for name, options in VARIANTS.items():
        stats = variability(forced, **options)
        row = np.array([of_number.get(int(n), -1) for n in stats["NUMBER"]])
        safe = np.where(row >= 0, row, 0)
        star = (row >= 0) & np.asarray(truth["is_star"])[safe]
        kind = np.asarray(truth["var_type"])[safe]
        ids = np.asarray(truth["id"])[safe]
        usable = star & ~stats["BLENDED"] & (stats["N_EPOCHS"] >= 4)
        constant = usable & (kind == 0) & isolated_in_truth(root / "sim", ids)
        spread = np.array([np.ptp(mags.get(int(i), [0.0])) for i in ids])
        detectable = usable & (kind > 0) & (np.asarray(truth["mag"])[safe] < 22) & (spread >= 0.1)
        FLAG_COUNTS.setdefault(name, np.zeros(4, int))
        FLAG_COUNTS[name] += [stats["VARIABLE"][constant].sum(), constant.sum(), stats["VARIABLE"][detectable].sum(),
                              detectable.sum()]
        of = dict(zip(stats["NUMBER"].tolist(), stats["CHI2_RED"].tolist()))
        out[name] = np.array([of.get(int(n), np.nan) for n in table["NUMBER"]])
        systematic = stats["SYSTEMATICS"]
        if systematic["SYSTEMATIC"].size:
            print(f"seed {seed} {name}: per exposure CCD, offset / systematic (mmag) "
                  + " ".join(f"{1e3 * o:+.1f}/{1e3 * v:.1f}" for o, v in zip(systematic["OFFSET"],
                                                                           systematic["SYSTEMATIC"])))
    return out


def table_rows(tables):
    """Per bin: stars, and pooled chi2/dof of each variant with its uncertainty."""
    from astropy.table import vstack

    table = vstack(tables)
    # Usable epochs as the module takes them; a star needs 4 or more.
    usable = (table["FLAGS"] & 15) == 0
    table = table[usable]
    key = np.array([f"{s}:{n}" for s, n in zip(table["SEED"], table["NUMBER"])])
    _, star = np.unique(key, return_inverse=True)
    to_true = 10.0 ** (-0.4 * (table["TRUE_ZP"] - 30.0))
    variants = {
        "model": (table["FLUX_PSF_CAL"], table["FLUXERR_PSF_CAL"]),
        "model/ZP": (table["FLUX_PSF"] * to_true, table["FLUXERR_PSF"] * to_true),
        "true PSF": (table["FLUX_TPSF"] * to_true, table["FLUXERR_TPSF"] * to_true),
        "true pos": (table["FLUX_TPOS"] * to_true, table["FLUXERR_TPOS"] * to_true),
    }
    star_mag = np.zeros(star.max() + 1)
    star_mag[star] = table["TRUE_MAG"]
    results = []
    for name, (flux, error) in variants.items():
        ok = np.isfinite(flux) & np.isfinite(error) & (error > 0)
        ids, chi2, dof = light_curve_chi2(star[ok], np.asarray(flux)[ok], np.asarray(error)[ok])
        results.append((name, ids, chi2, dof))
    ids, _, dof = results[0][1:]
    for name in VARIANTS:
        per_star = np.zeros(star.max() + 1)
        per_star[star] = table[f"CHI2_{name}"]
        results.append((name, ids, per_star[ids] * dof, dof))
    lines = []
    for low, high in zip(BINS[:-1], BINS[1:]):
        cells = []
        for name, ids, chi2, dof in results:
            chosen = (star_mag[ids] >= low) & (star_mag[ids] < high) & (dof >= 3)
            total_dof = dof[chosen].sum()
            value = chi2[chosen].sum() / max(total_dof, 1)
            # Bootstrap over the stars (heavy tails make sqrt(2 / dof) optimistic).
            pick = np.random.default_rng(1).integers(0, max(chosen.sum(), 1), (300, chosen.sum()))
            boot = chi2[chosen][pick].sum(axis=1) / np.maximum(dof[chosen][pick].sum(axis=1), 1)
            cells.append((name, int(chosen.sum()), value, np.sqrt(2.0 / max(total_dof, 1)), np.std(boot)))
        lines.append((low, high, cells))
    return lines


def main(argv=None):
    sys.path.insert(0, str(HERE.parent / "tests"))
    from lightcurve_chain import isolated_in_truth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--work", default="/tmp/lightcurve_errors")
    parser.add_argument("--tables-only", action="store_true", help="re-read the per-epoch tables")
    parser.add_argument("--keep-neighbours", action="store_true",
                        help="keep the stars with an undetected simulated neighbour within 3 arcsec")
    args = parser.parse_args(argv)

    from astropy.table import Table

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    options = {}
    tables = []
    for seed in args.seeds:
        path = work / f"epochs-{seed}.fits"
        if not args.tables_only:
            start = time.process_time()
            run_seed(seed, work, options)
            print(f"seed {seed}: {time.process_time() - start:.0f} CPU s", file=sys.stderr)
        table = Table.read(path)
        table["SEED"] = seed
        alone = isolated_in_truth(work / f"seed{seed}" / "sim", table["TRUE_ID"])
        print(f"seed {seed}: {len(set(table['NUMBER'][~alone]))} of {len(set(table['NUMBER']))} constant stars "
              "unflagged but with a simulated neighbour within 3 arcsec: left out")
        if not args.keep_neighbours:
            table = table[alone]
        for name, values in module_chi2(work, seed, table).items():
            table[f"CHI2_{name}"] = values
        tables.append(table)
        ok = (table["FLAGS"] & 15) == 0
        dzp = {}
        for e, zp, zt in zip(table["EXP_NAME"][ok], table["ZP_PSF"][ok], table["TRUE_ZP"][ok]):
            dzp[e] = zp - zt
        values = np.array(list(dzp.values()))
        print(f"seed {seed}: ZP_PSF - true per exposure (mmag): "
              f"{' '.join(f'{1e3 * v:+.1f}' for v in values)}; rms about their mean {1e3 * values.std():.1f}")
    print(f"pooled chi2/dof of constant unblended stars (seeds {' '.join(map(str, args.seeds))}): "
          "value, sqrt(2/dof), bootstrap sigma over the stars")
    header = f"{'mag':>6s} {'stars':>6s}"
    lines = table_rows(tables)
    for name, *_ in lines[0][2]:
        header += f" {name:>15s}"
    print(header)
    for low, high, cells in lines:
        text = f"{low:>3d}-{high:<2d} {cells[0][1]:>6d}"
        for _, _, value, sigma, boot in cells:
            text += f" {value:>5.2f} {sigma:4.2f} {boot:4.2f}"
        print(text)
    print("VARIABLE flags (isolated unblended constant stars; unblended variables brighter than 22 with a true "
          "range >= 0.1 mag over the used epochs)")
    for name, (false, constant, found, detectable) in FLAG_COUNTS.items():
        print(f"{name:>18s}: false positives {false} of {constant} ({100 * false / max(constant, 1):.2f}%), "
              f"variables flagged {found} of {detectable}")


if __name__ == "__main__":
    main()
