"""Speed and memory of vignetmaker MULTI-EPOCH and spread_model.

MULTI-EPOCH: a block of a CFIS-size tile seen by ``--exposures`` exposures,
one CFIS-size CCD each (2048 x 4612 pixels), ``--objects`` objects on it;
all four stamp kinds (image, weight, flag, background) of 51 x 51 pixels
plus the Jacobian, written to the four stores. Prints time per
object-epoch, bytes written per object and peak memory.

spread_model: the module on ``--objects`` objects (catalogue VIGNET, weight
stamps, PSF store with one stamp per epoch). Prints time per object.

Usage: ``python benchmarks/bench_stamps.py [--objects 4000] [--exposures 3]``
(writes about 130 MB per exposure in a temporary folder).
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.job import Job
from shapepipe_modules.io.header_store import write_header_store
from shapepipe_modules.io.ldac import write_ldac
from shapepipe_modules.io.stamp_store import StampStore
from shapepipe_modules.spread_model.runner import OPTIONS as SM_OPTIONS
from shapepipe_modules.spread_model.runner import spread_model_module
from shapepipe_modules.vignetmaker.multi_epoch import make_multi_epoch_stamps, make_sources

NX, NY = 2048, 4612
SIZE = 51
PATTERNS = ["image", "weight", "flag", "background"]


def _cpu() -> float:
    """CPU seconds of this process (all threads): on a loaded machine, steadier than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def header(exposure_index):
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, NX, NY
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = NX / 2 + 7 * exposure_index, NY / 2 - 5 * exposure_index
    h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
    h["CD1_1"], h["CD2_2"] = -0.187 / 3600, 0.187 / 3600
    h["CD1_2"], h["CD2_1"] = 0.0, 0.0
    return h


def build(folder: Path, n_objects: int, n_exposures: int, rng):
    ccd_dir = folder / "ccds"
    ccd_dir.mkdir()
    exposures = [str(2100001 + i) for i in range(n_exposures)]
    for i, exposure in enumerate(exposures):
        h = header(i)
        data = {
            "image": rng.normal(100, 10, (NY, NX)).astype(np.float32),
            "weight": np.ones((NY, NX), np.float32),
            "flag": np.zeros((NY, NX), np.int16),
            "background": np.full((NY, NX), 100.0, np.float32),
        }
        for name in PATTERNS:
            fits.PrimaryHDU(data[name], h).writeto(ccd_dir / f"{name}-{exposure}-0.fits")
    store = folder / "log_exp_headers.sqlite"
    write_header_store(store, {e: [header(i)] for i, e in enumerate(exposures)})
    x = rng.uniform(10, NX - 10, n_objects)
    y = rng.uniform(10, NY - 10, n_objects)
    ra, dec = WCS(header(0)).all_pix2world(x, y, 1)
    ids = np.arange(1, n_objects + 1)
    epochs = []
    for i, exposure in enumerate(exposures):
        hdu = fits.BinTableHDU(Table({"NUMBER": ids, "EXP_NAME": [exposure] * n_objects,
                                      "CCD_N": np.zeros(n_objects, np.int32)}))
        hdu.name = f"EPOCH_{i}"
        epochs.append(hdu)
    catalogue = folder / "sexcat-244-252.fits"
    write_ldac(catalogue, Table({"NUMBER": ids, "XWIN_WORLD": ra, "YWIN_WORLD": dec}), header(0), epochs)
    return catalogue, store, ccd_dir


def bench_multi_epoch(folder, n_objects, n_exposures, rng):
    catalogue, store, ccd_dir = build(folder, n_objects, n_exposures, rng)
    out = folder / "out"
    out.mkdir()
    sources = make_sources([ccd_dir], PATTERNS)
    start = time.perf_counter()
    cpu = _cpu()
    summary = make_multi_epoch_stamps(catalogue, store, sources, out, "-244-252", SIZE,
                                      logger=logging.getLogger("bench"))
    elapsed = time.perf_counter() - start
    cpu = _cpu() - cpu
    n_epochs = summary["n_epochs"]
    print(f"vignetmaker MULTI-EPOCH: {n_objects} objects x {n_exposures} epochs, stamps {SIZE}x{SIZE}, 4 kinds")
    print(f"  total {elapsed:.2f} s; {1e3 * elapsed / n_epochs:.3f} ms per object-epoch "
          f"(goal < 0.2; ShapePipe ~1.9 ms per object); CPU (all threads) {1e3 * cpu / n_epochs:.3f} ms")
    print(f"  written {summary['bytes_written'] / n_objects / 1e3:.1f} kB per object "
          f"({summary['bytes_written'] / n_epochs / 1e3:.1f} kB per object-epoch; ShapePipe ~140 kB per object)")


def bench_spread_model(folder, n_objects, n_epochs, rng):
    size = SIZE
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    psf = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 1.7 ** 2)
    psf /= psf.sum()
    stamps = (1000 * psf[None] + rng.normal(0, 2.6, (n_objects, size, size))).astype(np.float32)
    ids = np.arange(1, n_objects + 1)
    centre = np.full(n_objects, 100.0)
    catalogue = folder / "sm_sexcat-244-252.fits"
    write_ldac(catalogue, Table({"NUMBER": ids, "MAG_AUTO": np.full(n_objects, 22.0), "X_IMAGE": centre,
                                 "Y_IMAGE": centre, "XWIN_IMAGE": centre + 0.2, "YWIN_IMAGE": centre - 0.1,
                                 "VIGNET": stamps}), fits.Header())
    weight = folder / "weight_vignet-244-252.fits"
    write_ldac(weight, Table({"NUMBER": ids, "VIGNET": np.full(stamps.shape, 0.15, np.float32)}), fits.Header())
    psf_store = folder / "galaxy_psf-244-252.sqlite"
    with StampStore(psf_store, mode="w") as store:
        for object_id in ids:
            for e in range(n_epochs):
                store.put(object_id, f"{2100001 + e}-0", {"VIGNET": psf.astype(np.float32)},
                          {"SIGMA_PSF_HSM": 1.7, "E1_PSF_HSM": 0.0, "E2_PSF_HSM": 0.0, "FLAG_PSF_HSM": 0})
    # The first run (untimed) pays the one-off imports of the module's libraries.
    for model in ("warm-up", "gaussian", "stamp"):
        out = folder / f"sm_out_{model}"
        out.mkdir()
        options = {o.name: o.default for o in SM_OPTIONS} | {"PSF_MODEL": model.replace("warm-up", "gaussian")}
        job = Job(module="spread_model", module_run="spread_model", number="-244-252",
                  inputs=[catalogue, psf_store, weight], output_dir=out, log_dir=folder, options=options,
                  logger=logging.getLogger("bench"), run_dir=folder)
        start = time.perf_counter()
        cpu = _cpu()
        spread_model_module(job)
        elapsed = time.perf_counter() - start
        cpu = _cpu() - cpu
        if model == "warm-up":
            continue
        print(f"spread_model PSF_MODEL={model}: {n_objects} objects, {n_epochs} PSF epochs each: "
              f"{1e3 * elapsed / n_objects:.3f} ms per object (goal < 0.5; ShapePipe ~2.0 ms); "
              f"CPU {1e3 * cpu / n_objects:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=4000)
    parser.add_argument("--exposures", type=int, default=3)
    parser.add_argument("--sm-objects", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        bench_multi_epoch(Path(tmp), args.objects, args.exposures, rng)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak memory so far {peak:.0f} MB (one CCD file: {NX * NY * 4 / 2**20:.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_spread_model(Path(tmp), args.sm_objects, args.exposures, rng)


if __name__ == "__main__":
    main()
