"""Benchmark: focal-plane PSF model (mccd_fit) against per-CCD models (psfex built-in), against the truth.

A synthetic exposure of 8 CCDs (4 x 2, 256 x 512 pixels each) whose true PSF
(Moffat, FWHM and distortion quadratic over the mosaic) is known everywhere
(:mod:`shapepipe_modules.mccd.synthetic`). For N stars per CCD and K noise
realisations (new PSF field and stars each), both engines fit the same
stamps, with PSF_SIZE 25, sampling 1, degree 2:

- ``per-CCD``: :func:`shapepipe_modules.psfex.model.fit_psf` on each CCD (the
  psfex module's engine, its degree guard included);
- ``focal``: :func:`shapepipe_modules.mccd.focal_plane.fit_exposure`, one fit
  per exposure (a constant image per CCD plus a quadratic in focal-plane
  position).

Each CCD model is compared with the truth on a 3 x 5 grid over the CCD,
corners included (HSM adaptive moments): rms of the relative size residual,
rms of the ellipticity residual (per component) and its maximum. The table
gives the mean over CCDs and realisations and the fit time per exposure.

Run: ``python benchmarks/bench_focal_plane.py [--stars 10,20,40] [--realisations 4] [--seed 1]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shapepipe_modules.mccd.focal_plane import fit_exposure
from shapepipe_modules.mccd.synthetic import Mosaic, draw_stars, shape_residuals
from shapepipe_modules.psfex.model import FitOptions, fit_psf


def run(stars: int, realisations: int, seed: int) -> dict:
    mosaic = Mosaic()
    options = FitOptions(psf_size=(25, 25), sampling=1.0, degree=2, min_stars=5)
    rows = {"per-CCD": [], "focal": []}
    times = {"per-CCD": 0.0, "focal": 0.0}
    for k in range(realisations):
        rng = np.random.default_rng([seed, stars, k])
        field = mosaic.field(rng)
        samples = {c: draw_stars(field, mosaic, c, rng, stars) for c in mosaic.ccds}
        start = time.perf_counter()
        fit = fit_exposure(samples, {c: mosaic.to_focal(c) for c in mosaic.ccds},
                           {c: (mosaic.ccd_nx, mosaic.ccd_ny) for c in mosaic.ccds}, options, 2)
        times["focal"] += time.perf_counter() - start
        start = time.perf_counter()
        per_ccd = {c: fit_psf(samples[c], options).model for c in mosaic.ccds}
        times["per-CCD"] += time.perf_counter() - start
        for name, models in (("per-CCD", per_ccd), ("focal", fit.models)):
            rows[name] += [shape_residuals(models[c], field, mosaic, c) for c in mosaic.ccds]
    out = {}
    for name, residuals in rows.items():
        out[name] = {key: float(np.mean([r[key] for r in residuals])) for key in residuals[0]}
        out[name]["seconds"] = times[name] / realisations
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stars", default="10,20,40", help="stars per CCD, comma list")
    parser.add_argument("--realisations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"{'stars/CCD':>9} {'engine':>8} {'size rms':>9} {'e rms':>8} {'e max':>8} {'s/exposure':>10}")
    for stars in (int(s) for s in args.stars.split(",")):
        result = run(stars, args.realisations, args.seed)
        for name, numbers in result.items():
            print(f"{stars:>9} {name:>8} {numbers['size_rms']:>9.5f} {numbers['e_rms']:>8.5f} "
                  f"{numbers['e_max']:>8.5f} {numbers['seconds']:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
