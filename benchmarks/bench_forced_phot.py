"""Time forced photometry per object-epoch (goal: under 0.1 ms, like psfinterp).

A synthetic CCD of the CFIS size (2048 x 4612) with sky noise and Gaussian
stars, a PSFEx model of degree 2 (41 x 41 grid, as the exposure models),
and ``--objects`` positions (the tile objects falling on that CCD); times
:func:`shapepipe_modules.forced_phot.photometry.forced_photometry` (PSF
model at every position, linear fits, the neighbour-subtracted refits,
aperture fluxes), best of ``--repeat`` runs, for a few stamp sizes and
numbers of deblending iterations. The reading of the CCD files (once per
CCD, shared by all its objects) is timed apart.

Usage::

    python benchmarks/bench_forced_phot.py [--objects 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_ccd(rng, n_objects: int, nx: int = 2048, ny: int = 4612, sigma: float = 1.6):
    """Image, weight, PSF model (degree 2) and object positions of one synthetic CCD."""
    from shapepipe_modules.io.psfex_file import PSFModel
    from shapepipe_modules.psfinterp.synthetic import gaussian_grid

    base = gaussian_grid(sigma, 0.02, -0.01, 41, 1.0)
    derivative = (gaussian_grid(sigma + 1e-3, 0.02, -0.01, 41, 1.0) - gaussian_grid(sigma - 1e-3, 0.02, -0.01, 41, 1.0)) / 2e-3
    basis = np.stack([base, 0.1 * derivative, 0.05 * derivative, 0.02 * derivative, 0.01 * derivative, 0.02 * derivative])
    model = PSFModel(basis=basis, degree=2, zero=((nx + 1) / 2.0, (ny + 1) / 2.0), scale=(float(nx), float(ny)),
                     loaded=80, accepted=80, chi2=1.0, fwhm=2.3548 * sigma)
    x = rng.uniform(20, nx - 20, n_objects)
    y = rng.uniform(20, ny - 20, n_objects)
    flux = 10 ** rng.uniform(2.5, 5.0, n_objects)
    image = rng.normal(170.0, 5.5, (ny, nx))
    stamps = model.evaluate(x, y, size=21, centre=(x - np.rint(x), y - np.rint(y)))
    ix, iy = np.rint(x).astype(int) - 1, np.rint(y).astype(int) - 1
    offsets = np.arange(-10, 11)
    np.add.at(image, ((iy[:, None] + offsets)[:, :, None], (ix[:, None] + offsets)[:, None, :]),
              flux[:, None, None] * stamps)
    weight = np.full((ny, nx), 1.0 / 5.5**2)
    return image, weight, model, x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000, help="objects on the CCD")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting (best kept)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from astropy.io import fits

    from shapepipe_modules.forced_phot.photometry import forced_photometry

    rng = np.random.default_rng(args.seed)
    image, weight, model, x, y = synthetic_ccd(rng, args.objects)
    forced_photometry(image, weight, model, x[:10], y[:10], 6.0)  # warm-up (numba resampling)
    print(f"forced photometry, {args.objects} objects on one 2048 x 4612 CCD, best of {args.repeat}")
    print(f"{'stamp':>6s} {'deblend':>8s} {'total s':>9s} {'ms/object-epoch':>16s}")
    for size in (15, 21, 25):
        for iterations in (0, 2):
            best = np.inf
            for _ in range(args.repeat):
                start = time.perf_counter()
                forced_photometry(image, weight, model, x, y, 6.0, stamp_size=size, deblend_iterations=iterations)
                best = min(best, time.perf_counter() - start)
            print(f"{size:>6d} {iterations:>8d} {best:>9.3f} {1e3 * best / args.objects:>16.4f}")
    with tempfile.TemporaryDirectory() as folder:
        for name, array in (("image", image.astype(np.float32)), ("weight", weight.astype(np.float32))):
            fits.PrimaryHDU(array).writeto(Path(folder) / f"{name}.fits")
        start = time.perf_counter()
        for name in ("image", "weight"):
            fits.getdata(Path(folder) / f"{name}.fits").astype(np.float64)
        read = time.perf_counter() - start
    print(f"reading one CCD's image and weight: {read:.3f} s ({1e3 * read / args.objects:.4f} ms per object "
          f"at {args.objects} objects per CCD)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
