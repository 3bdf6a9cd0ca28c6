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

- ``piff`` (``--engines``, needs ``pip install piff``): the same focal-plane
  role with Piff as the engine (:mod:`shapepipe_modules.mccd.piff_engine`:
  a PixelGrid whose pixels are a quadratic in focal-plane position, no
  per-CCD term), re-expanded per CCD into PSFEx models;
- ``psfex`` (``--images`` only, needs the ``psfex`` and ``source-extractor``
  binaries): PSFEx per CCD.

With ``--images`` the stars are not drawn as stamps: each CCD is drawn as
an image (Poisson noise of a 100 ADU sky and the stars), the stars are
extracted with ``source-extractor`` (VIGNET, windowed positions; true,
isolated stars kept), and every engine fits those catalogues, as the
pipeline does.

Each CCD model is compared with the truth on a 3 x 5 grid over the CCD,
corners included (HSM adaptive moments): rms of the relative size residual,
rms of the ellipticity residual (per component) and its maximum. The table
gives the mean over CCDs and realisations and the fit time per exposure
(CPU time of this process, or for psfex of the binary).

Run: ``python benchmarks/bench_focal_plane.py [--stars 10,20,40] [--realisations 4] [--seed 1]
[--engines per-CCD,focal,piff,psfex] [--images]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pathlib import Path

from shapepipe_modules.mccd.focal_plane import fit_exposure
from shapepipe_modules.psfex.config import PSFExSettings
from shapepipe_modules.psfex.runner import DATA_DIR as PSFEX_DATA
from shapepipe_modules.mccd.synthetic import Mosaic, draw_stars, shape_residuals
from shapepipe_modules.psfex.model import FitOptions, fit_psf


def draw_mosaic_ccd(field, mosaic, ccd, rng, n_stars, margin=20, sky=100.0, flux_range=(5e3, 2e5)):
    """A CCD image of the mosaic (sky-subtracted, Poisson noise) and its true stars (1-based x, y, flux)."""
    import galsim

    x = rng.uniform(margin, mosaic.ccd_nx - margin, n_stars)
    y = rng.uniform(margin, mosaic.ccd_ny - margin, n_stars)
    flux = np.exp(rng.uniform(*np.log(flux_range), n_stars))
    image = galsim.ImageD(mosaic.ccd_nx, mosaic.ccd_ny, scale=1.0)
    fx, fy = mosaic.to_focal(ccd)(x, y)
    for xs, ys, X, Y, fs in zip(x, y, fx, fy, flux):
        bounds = galsim.BoundsI(int(xs) - 25, int(xs) + 25, int(ys) - 25, int(ys) + 25) & image.bounds
        field.profile(X, Y).withFlux(fs).drawImage(image[bounds], center=galsim.PositionD(xs, ys),
                                                   add_to_image=True, method="auto")
    counts = rng.poisson(np.clip(image.array + sky, 0, None))
    return (counts - sky).astype(np.float32), {"x": x, "y": y, "flux": flux}


def image_samples(field, mosaic, rng, stars, work, settings):
    """Star samples (and catalogue paths) of every CCD from source-extractor on drawn images."""
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.psfex.model import load_stars
    from shapepipe_modules.psfex.synthetic import write_star_catalogue

    samples, catalogues = {}, {}
    for c in mosaic.ccds:
        image, truth = draw_mosaic_ccd(field, mosaic, c, rng, stars)
        catalogues[c] = write_star_catalogue(image, truth, work, name=f"star_selection-{c}")
        table, header = read_ldac(catalogues[c])
        header["NAXIS1"], header["NAXIS2"] = mosaic.ccd_nx, mosaic.ccd_ny
        samples[c] = load_stars(table, header, settings.center_keys, settings.var_keys, settings.flux_key)
    return samples, catalogues


def run(stars: int, realisations: int, seed: int, engines=("per-CCD", "focal"), images=False) -> dict:
    import tempfile

    mosaic = Mosaic()
    options = FitOptions(psf_size=(25, 25), sampling=1.0, degree=2, min_stars=5)
    rows = {name: [] for name in engines}
    times = {name: 0.0 for name in engines}
    shapes = {c: (mosaic.ccd_nx, mosaic.ccd_ny) for c in mosaic.ccds}
    to_focal = {c: mosaic.to_focal(c) for c in mosaic.ccds}
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "bench.psfex"
        config.write_text((PSFEX_DATA / "default.psfex").read_text().replace("PSF_SIZE        51,51",
                                                                               "PSF_SIZE        25,25"))
        settings = PSFExSettings.from_file(config)
        for k in range(realisations):
            rng = np.random.default_rng([seed, stars, k])
            field = mosaic.field(rng)
            if images:
                samples, catalogues = image_samples(field, mosaic, rng, stars, Path(work) / f"r{k}", settings)
            else:
                samples = {c: draw_stars(field, mosaic, c, rng, stars) for c in mosaic.ccds}
            for name in engines:
                start = time.process_time()
                if name == "focal":
                    models = fit_exposure(samples, to_focal, shapes, options, 2).models
                elif name == "per-CCD":
                    models = {c: fit_psf(samples[c], options).model for c in mosaic.ccds}
                elif name == "piff":
                    import galsim

                    from shapepipe_modules.mccd.piff_engine import fit_exposure_piff

                    models = fit_exposure_piff(samples, {c: galsim.PixelScale(1.0) for c in mosaic.ccds}, to_focal,
                                               shapes, 25, 1.0, 1.0, 2, min_stars=5)
                elif name == "psfex":
                    models, binary_cpu = fit_psfex_binary(catalogues, config, Path(work) / f"psfex{k}")
                    start -= binary_cpu
                times[name] += time.process_time() - start
                rows[name] += [shape_residuals(models[c], field, mosaic, c) for c in mosaic.ccds]
    out = {}
    for name, residuals in rows.items():
        out[name] = {key: float(np.mean([r[key] for r in residuals])) for key in residuals[0]}
        out[name]["seconds"] = times[name] / realisations
    return out


def fit_psfex_binary(catalogues, config, work):
    """The PSFEx binary on each CCD's catalogue: ``({ccd: PSFModel}, CPU seconds of the binary runs)``."""
    import resource
    import subprocess

    from shapepipe_modules.io.psfex_file import read_psf
    from shapepipe_modules.psfex.binary import run_psfex

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    models = {}
    for c, catalogue in catalogues.items():
        path = run_psfex(lambda args: subprocess.run(args, capture_output=True, text=True, check=True), "psfex",
                         catalogue, config, work / str(c), work / str(c) / "psfex_cat.cat")
        models[c] = read_psf(path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return models, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stars", default="10,20,40", help="stars per CCD, comma list")
    parser.add_argument("--realisations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engines", default="per-CCD,focal", help="comma list of per-CCD, focal, piff, psfex")
    parser.add_argument("--images", action="store_true", help="fit source-extractor catalogues of drawn CCD "
                        "images (needed for psfex)")
    args = parser.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(","))
    unknown = set(engines) - {"per-CCD", "focal", "piff", "psfex"}
    if unknown or ("psfex" in engines and not args.images):
        parser.error(f"engines are per-CCD, focal, piff, psfex (psfex with --images); got {args.engines}")
    print(f"{'stars/CCD':>9} {'engine':>8} {'size rms':>9} {'e rms':>8} {'e max':>8} {'CPU s/exp':>10}")
    for stars in (int(s) for s in args.stars.split(",")):
        result = run(stars, args.realisations, args.seed, engines, args.images)
        for name, numbers in result.items():
            print(f"{stars:>9} {name:>8} {numbers['size_rms']:>9.5f} {numbers['e_rms']:>8.5f} "
                  f"{numbers['e_max']:>8.5f} {numbers['seconds']:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
