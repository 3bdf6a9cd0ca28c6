"""Memory and time of the MULTI-EPOCH neighbour mask: whole object mask in memory against a section per CCD.

A tile-compressed int32 object mask (``--tile`` pixels a side, sextractor's
layout: RICE_1, 64-row tiles, objects painted by
:func:`shapepipe_modules.crowded.masks.object_mask`) and one exposure CCD
(``--ccd-nx`` x ``--ccd-ny``, same pixel scale, rotated by 2 degrees) inside
it with ``--objects`` stamps of 51 pixels. Each way runs in its own process
and prints: seconds for :func:`neighbour_stamp_pixels` (mask read included),
tracemalloc peak during it (a second run; the stamps' WCS arrays, ``chunk *
51**2`` positions, are most of it), tracemalloc peak of the mask read
alone, the process's peak RSS, and the mask pixels read.

``whole``: the mask read whole (``fits.getdata``), as before; ``section``:
:func:`read_object_mask` (header only) and one box under the CCD's stamps.

Usage: ``python benchmarks/bench_objmask_section.py [--tile 4000] [--objects 1000] [--chunks 1024,256]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

SIZE = 51
SCALE = 0.187 / 3600


def tile_header(n):
    from astropy.io import fits

    header = fits.Header()
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, n, n
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"] = header["CRPIX2"] = n / 2 + 0.5
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    header["CD1_1"], header["CD2_2"] = -SCALE, SCALE
    return header


def ccd_wcs(nx, ny):
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    c, s = np.cos(np.deg2rad(2.0)), np.sin(np.deg2rad(2.0))
    wcs.wcs.cd = [[-SCALE * c, SCALE * s], [SCALE * s, SCALE * c]]
    return wcs


def write_mask(path, n, seed=1):
    from astropy.table import Table

    from shapepipe_modules.crowded.masks import object_mask
    from shapepipe_modules.io.images import write_image

    rng = np.random.default_rng(seed)
    count = n * n // 800  # a crowded tile: about a third of the pixels masked
    a = rng.uniform(1.0, 4.0, count)
    table = Table({"NUMBER": np.arange(1, count + 1), "X_IMAGE": rng.uniform(1, n, count),
                   "Y_IMAGE": rng.uniform(1, n, count), "A_IMAGE": a, "B_IMAGE": a * rng.uniform(0.4, 1, count),
                   "THETA_IMAGE": rng.uniform(-90, 90, count)})
    mask = object_mask((n, n), table, 1.0, 2.0)
    write_image(path, mask, tile_header(n), compress=True)
    return float(np.mean(mask != 0))


def run(way, path, args):
    from astropy.io import fits

    from shapepipe_modules.vignetmaker import multi_epoch
    from shapepipe_modules.vignetmaker.multi_epoch import ObjectMask, neighbour_stamp_pixels, read_object_mask

    rng = np.random.default_rng(2)
    wcs = ccd_wcs(args.ccd_nx, args.ccd_ny)
    ix = rng.integers(0, args.ccd_nx, args.objects)
    iy = rng.integers(0, args.ccd_ny, args.objects)
    numbers = rng.integers(1, 1000, args.objects)
    read_pixels = []
    original = ObjectMask.read

    def counting(self, *box):
        read_pixels.append((box[1] - box[0]) * (box[3] - box[2]))
        return original(self, *box)

    if way == "section":
        multi_epoch.ObjectMask.read = counting

    def once():
        if way == "whole":
            pixels = fits.getdata(path)
            read_pixels.append(pixels.size)
            # As the former read_object_mask: whole, in native order (no copy if already native).
            pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
            mask = ObjectMask.from_array(pixels, read_object_mask(path).wcs)
        else:
            mask = read_object_mask(path)
        return neighbour_stamp_pixels(mask, wcs, ix, iy, SIZE, numbers, chunk=args.chunk)

    clock = time.perf_counter()
    result = once()
    seconds = time.perf_counter() - clock
    pixels_read = read_pixels[-1]
    tracemalloc.start()
    once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    # The mask read alone (without the stamps' WCS arrays, which dominate the peak above).
    if way == "whole":
        pixels = fits.getdata(path)
        pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    else:
        mask = read_object_mask(path)
        pixels = original(mask, *multi_epoch.stamps_tile_box(mask, wcs, ix, iy, SIZE))
    read_peak = tracemalloc.get_traced_memory()[1]
    del pixels
    tracemalloc.stop()
    print(json.dumps({"way": way, "seconds": seconds, "tracemalloc_mb": peak / 2**20, "read_mb": read_peak / 2**20,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "pixels_read": int(pixels_read), "masked": float(result.mean())}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=4000)
    parser.add_argument("--ccd-nx", type=int, default=2048)
    parser.add_argument("--ccd-ny", type=int, default=2048)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--chunks", default="1024,256",
                        help="objects converted at once (neighbour_stamp_pixels chunk), one section row each")
    parser.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=["whole", "section"], help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        run(args.way, args.mask, args)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "objmask.fits"
        fraction = write_mask(path, args.tile)
        print(f"tile {args.tile}^2 int32 ({args.tile**2 * 4 / 2**20:.0f} MB decompressed, "
              f"{path.stat().st_size / 2**20:.1f} MB compressed, {fraction:.0%} masked); CCD "
              f"{args.ccd_nx} x {args.ccd_ny}, {args.objects} stamps of {SIZE}")
        print(f"{'way':8s} {'chunk':>6s} {'seconds':>8s} {'tracemalloc MB':>15s} {'mask read MB':>13s} {'peak RSS MB':>12s} "
              f"{'pixels read':>12s} {'masked':>7s}")
        chunks = [int(c) for c in args.chunks.split(",")]
        for way, chunk in [("whole", chunks[0])] + [("section", c) for c in chunks]:
            out = subprocess.run([sys.executable, __file__, "--way", way, "--mask", str(path), "--tile",
                                  str(args.tile), "--ccd-nx", str(args.ccd_nx), "--ccd-ny", str(args.ccd_ny),
                                  "--objects", str(args.objects), "--chunk", str(chunk)],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{way:8s} {chunk:6d} {r['seconds']:8.2f} {r['tracemalloc_mb']:15.1f} {r['read_mb']:13.1f} {r['rss_mb']:12.0f} "
                  f"{r['pixels_read']:12d} {r['masked']:7.4f}")


if __name__ == "__main__":
    main()
