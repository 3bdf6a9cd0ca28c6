"""Measured bright-star profile against the simulator's, and the masks sized by it (issue 19, item 6).

Simulates a small survey (``tiny`` preset, ``--exposures`` exposures of two
512 x 1024 CCDs; its bright stars, mag < 17, are drawn as flux x (PSF core
+ Moffat halo + two Gaussian spikes), docs/simulation.md "Bright stars"),
splits the exposures into CCDs as split_exp does, measures the profile with
:func:`shapepipe_modules.mask.measure_profile.measure_files` (what
``shapepipe_star_profile`` runs) and prints it against the truth: fractions,
beta and the spike length are the simulator's constants; the PSF FWHM is the
median truth ``psf_fwhm`` of the stacked stars, the halo FWHM 8 and the
spike width 0.25 times it.

Then the mask module (``STAR_MASK_SIZING = profile``, 0.1 sigma, no input
flag) runs on every CCD twice: with ``STAR_PROFILE_FILE`` = the measured
profile, and with the true profile given as ``STAR_PROFILE_*`` options. Per
CCD: the halo + spike masked fraction, the area where the true star light
exceeds 0.1 sigma (``truth_checks.star_light_coverage``, every pixel) and
the share of it masked.

Usage: ``python benchmarks/bench_star_profile.py [--exposures 4] [--seed 3] [--sim DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from shapepipe.job import Job
from shapepipe_modules.gold.truth_checks import star_light_coverage
from shapepipe_modules.mask.catalogues import read_star_catalogue
from shapepipe_modules.mask.measure_profile import PROFILE_KEYS, measure_files, write_profile_file
from shapepipe_modules.mask.runner import mask
from shapepipe_modules.simulate.render import (HALO_BETA, HALO_FRACTION, HALO_FWHM_FACTOR, SPIKE_FRACTION,
                                               SPIKE_LENGTH_ARCSEC, SPIKE_WIDTH_FACTOR)
from shapepipe_modules.split_exp.split_exp import split_exposure


def split(sim: Path, out: Path):
    pairs = []
    for exposure in (sim / "exposure_list.txt").read_text().split():
        base = sim / "exposures" / f"{exposure}p"
        result = split_exposure([Path(f"{base}.fits"), Path(f"{base}.weight.fits.fz")], ["image", "weight"],
                                f"-{exposure}", out)
        pairs += [(out / f"image-{exposure}-{ccd}.fits", out / f"weight-{exposure}-{ccd}.fits")
                  for ccd in range(result.n_ccd)]
    return pairs


def true_profile(sim: Path, max_mag=17.0):
    """The simulator's profile at the median PSF FWHM of the bright stars of all exposures."""
    fwhm = []
    for path in sorted((sim / "truth").glob("truth_exp-*.fits")):
        truth = Table.read(path)
        bright = (np.asarray(truth["is_star"]) == 1) & (np.asarray(truth["mag"]) < max_mag)
        fwhm += list(np.asarray(truth["psf_fwhm"])[bright])
    fwhm = float(np.median(fwhm))
    params = json.loads((sim / "simulation.json").read_text())["parameters"]
    return {"STAR_PROFILE_PSF_FWHM": fwhm, "STAR_PROFILE_PSF_BETA": params["psf_beta"],
            "STAR_PROFILE_HALO_FRACTION": HALO_FRACTION, "STAR_PROFILE_HALO_FWHM": HALO_FWHM_FACTOR * fwhm,
            "STAR_PROFILE_HALO_BETA": HALO_BETA, "STAR_PROFILE_SPIKE_FRACTION": SPIKE_FRACTION,
            "STAR_PROFILE_SPIKE_LENGTH": SPIKE_LENGTH_ARCSEC,
            "STAR_PROFILE_SPIKE_WIDTH": SPIKE_WIDTH_FACTOR * fwhm}


def run_mask(pairs, sim, out, **options):
    values = {option.name: option.default for option in mask.spec.options}
    values.update(STAR_CAT_PATH=str(sim / "catalogues" / "bright_stars.fits"), USE_EXT_FLAG=False,
                  DEEP_SKY_CAT_PATH=str(sim / "catalogues" / "deep_sky.fits"), STAR_MASK_SIZING="profile",
                  STAR_MASK_NOISE_FRACTION=0.1, **options)
    out.mkdir(parents=True, exist_ok=True)
    flags = []
    for image, weight in pairs:
        number = image.name[len("image"):-len(".fits")]
        job = Job(module="mask", module_run="mask", number=number, inputs=[image, weight], output_dir=out,
                  log_dir=out, options=values, logger=logging.getLogger("bench.mask"), run_dir=out)
        mask(job)
        flags.append(out / f"pipeline_flag{number}.fits")
    return flags


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=4, help="exposures of the tiny survey (default 4)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--sim", type=Path, help="an existing simulation folder instead of a new one")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim = args.sim
        if sim is None:
            from shapepipe_modules.simulate import simulate

            sim = Path(simulate(preset="tiny", output_dir=tmp / "sim", seed=args.seed, n_workers=1,
                                exposures_per_tile=args.exposures))
        pairs = split(sim, tmp / "split")
        stars = read_star_catalogue(sim / "catalogues" / "bright_stars.fits")
        start = time.process_time()
        measured = measure_files(pairs, stars)
        cpu = time.process_time() - start
        profile_file = tmp / "star_profile.json"
        write_profile_file(profile_file, measured)
        truth = true_profile(sim)

        print(f"{measured.n_stars} star images on {measured.n_images} CCDs; measurement {cpu:.1f} s CPU; "
              f"reduced chi2 halo {measured.chi2['halo']:.2f}, spikes {measured.chi2['spikes']:.2f}")
        print(f"{'parameter':30s} {'measured':>10s} {'error':>9s} {'true':>9s} {'(m-t)/err':>9s} {'m/t-1':>7s}")
        for key, value in measured.options().items():
            error = measured.errors[PROFILE_KEYS[key]]
            pull = (value - truth[key]) / error if error > 0 else float("nan")
            print(f"{key:30s} {value:10.5g} {error:9.2g} {truth[key]:9.5g} {pull:9.1f} "
                  f"{value / truth[key] - 1:+7.3f}")

        rows = {}
        for name, options in (("measured", {"STAR_PROFILE_FILE": str(profile_file)}), ("true", truth)):
            flags = run_mask(pairs, sim, tmp / f"mask_{name}", **options)
            rows[name] = star_light_coverage(flags, sim, noise_fraction=0.1, step=1)
        print("\nper CCD (fractions of the CCD; light: true star light > 0.1 sigma)")
        print(f"{'CCD':12s} {'light':>7s} | {'halo+spike masked':>17s} | {'light masked':>13s} | "
              f"{'mask where dark':>15s}")
        print(f"{'':12s} {'':>7s} | {'measured':>8s} {'true':>8s} | {'measured':>6s} {'true':>6s} | "
              f"{'measured':>7s} {'true':>7s}")
        for m, t in zip(rows["measured"], rows["true"]):
            print(f"{m['ccd']:12s} {m['light']:7.4f} | {m['star_masked']:8.4f} {t['star_masked']:8.4f} | "
                  f"{m['light_masked']:6.3f} {t['light_masked']:6.3f} | {m['star_masked_dark']:7.3f} "
                  f"{t['star_masked_dark']:7.3f}")
        for name in ("measured", "true"):
            r = rows[name]
            light = sum(x["light"] for x in r)
            covered = sum(x["light"] * x["light_masked"] for x in r if x["light"] > 0)
            print(f"{name:9s}: mean halo+spike masked fraction {np.mean([x['star_masked'] for x in r]):.4f}, "
                  f"light area {np.mean([x['light'] for x in r]):.4f}, of it masked {covered / light:.4f}")


if __name__ == "__main__":
    main()
