"""Time psfinterp MULTI-EPOCH per object-epoch (ShapePipe: about 1.8 ms per object).

Builds a synthetic tile catalogue whose objects fall on the CCDs of a few
exposures, writes PSFEx models (degree 2, 51 x 51 grid) and a header store,
then runs :func:`shapepipe_modules.psfinterp.multi_epoch.interpolate_tile`
with and without HSM shapes, stamp store writing included.

Usage::

    python benchmarks/bench_psfinterp.py [--objects 3000] [--exposures 3]
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def build(directory: Path, n_objects: int, n_exposures: int, rng):
    from astropy.wcs import WCS

    from shapepipe_modules.io.header_store import HeaderStore, write_header_store
    from shapepipe_modules.io.psfex_file import PSFModel, write_psf
    from shapepipe_modules.psfinterp.synthetic import ccd_header, gaussian_grid, tile_catalogue

    n_ccd, nx, ny = 4, 2048, 4612
    exposures = [str(2113737 + k) for k in range(n_exposures)]
    centres = {e: (150.0 + 0.002 * k, 2.0 + 0.001 * k) for k, e in enumerate(exposures)}
    headers = {e: [ccd_header(c, centres[e], nx=nx, ny=ny) for c in range(n_ccd)] for e in exposures}
    write_header_store(directory / "log_exp_headers.sqlite", headers)
    psf_dir = directory / "psf"
    psf_dir.mkdir()
    for e in exposures:
        for c in range(n_ccd):
            base = gaussian_grid(2.0 + 0.05 * c, 0.02, -0.01, 51, 1.0)
            basis = np.stack([base] + [rng.normal(0, 1e-4, base.shape) for _ in range(5)])
            write_psf(psf_dir / f"star_split_ratio_80-{e}-{c}.psf",
                      PSFModel(basis=basis, degree=2, zero=(nx / 2, ny / 2), scale=(nx, ny), accepted=80, chi2=1.1))
    # Objects spread over the first exposure's CCDs; their CCD on every exposure from the WCS.
    ccd0 = rng.integers(0, n_ccd, n_objects)
    x, y = rng.uniform(10, nx - 10, n_objects), rng.uniform(10, ny - 10, n_objects)
    ra, dec = np.empty(n_objects), np.empty(n_objects)
    for c in range(n_ccd):
        sel = ccd0 == c
        ra[sel], dec[sel] = WCS(headers[exposures[0]][c]).all_pix2world(x[sel], y[sel], 1)
    epochs = []
    for e in exposures:
        ccds = np.full(n_objects, -1)
        for c in range(n_ccd):
            px, py = WCS(headers[e][c]).all_world2pix(ra, dec, 1)
            ccds[(px >= 0.5) & (px <= nx + 0.5) & (py >= 0.5) & (py <= ny + 0.5)] = c
        epochs.append((e, ccds))
    tile = directory / "sexcat-244-252.fits"
    tile_catalogue(tile, ra, dec, epochs)
    return tile, psf_dir, HeaderStore(directory / "log_exp_headers.sqlite")


def run(directory, tile, psf_dir, headers, get_shapes):
    from shapepipe_modules.io.stamp_store import StampStore
    from shapepipe_modules.psfinterp.multi_epoch import interpolate_tile, read_tile_catalogue

    path = directory / f"galaxy_psf_{int(get_shapes)}.sqlite"
    start = time.perf_counter()
    cpu = _cpu()
    catalogue = read_tile_catalogue(tile)
    with StampStore(path, mode="w") as store:
        result = interpolate_tile(catalogue, lambda e, c: psf_dir / f"star_split_ratio_80-{e}-{c}.psf",
                                  headers.wcs, store, 20, 2.0, get_shapes, logger=logging.getLogger("bench"))
    return time.perf_counter() - start, _cpu() - cpu, result, path.stat().st_size


def _cpu() -> float:
    """CPU seconds of this process (all threads): on a loaded machine, steadier than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--exposures", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tile, psf_dir, headers = build(work, args.objects, args.exposures, rng)
        # Warm-up: numba compilation (or loading from its cache), imports and the WCS cache
        # are one-off costs per process.
        run(work, tile, psf_dir, headers, True)
        print(f"{'shapes':<8}{'objects':>9}{'obj-epochs':>12}{'seconds':>10}{'ms/obj-epoch':>14}{'CPU ms':>8}"
              f"{'ms/object':>11}{'store MB':>10}")
        for shapes in (False, True):
            seconds, cpu, result, size = run(work, tile, psf_dir, headers, shapes)
            pairs = result.n_object_epochs
            print(f"{str(shapes):<8}{result.n_objects:>9}{pairs:>12}{seconds:>10.2f}"
                  f"{1e3 * seconds / pairs:>14.3f}{1e3 * cpu / pairs:>8.3f}{1e3 * seconds / result.n_objects:>11.3f}"
                  f"{size / 2**20:>10.1f}")
        print("(ms/obj-epoch: wall time; CPU ms: CPU time of all threads per object-epoch)")
        headers.close()


if __name__ == "__main__":
    main()
