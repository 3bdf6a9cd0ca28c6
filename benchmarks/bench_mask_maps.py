"""CPU time of the mask_maps pixel pass (flag image -> healsparse mask map).

A synthetic TAN flag image (0.187"/pixel, a few planes) of SIZE x SIZE pixels
goes through :func:`flag_map_pixels` at NSIDE; prints the CPU (process) time
and the time per megapixel, from which a full 10,000 x 10,000 CFIS tile is
extrapolated (the pass is linear in the number of pixels, in blocks).

Usage: ``python benchmarks/bench_mask_maps.py [--size 4000] [--nside 131072]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from astropy.wcs import WCS

from shapepipe_modules.mask_maps.maps import flag_map_pixels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--nside", type=int, default=2**17)
    args = parser.parse_args()
    n = args.size
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    wcs.wcs.cd = [[-0.187 / 3600, 0], [0, 0.187 / 3600]]
    flag = np.zeros((n, n), np.int16)
    flag[: n // 3, :] |= 2
    flag[:, ::97] |= 1
    clock = time.process_time()
    pixels, values = flag_map_pixels(flag, wcs, args.nside)
    cpu = time.process_time() - clock
    per_mpix = cpu / (n * n / 1e6)
    print("| image | nside | HEALPix pixels | CPU s | CPU s per Mpixel | CFIS tile (1e8 pixels), extrapolated |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {n} x {n} | {args.nside} | {pixels.size} | {cpu:.2f} | {per_mpix:.3f} | {per_mpix * 100:.0f} s |")


if __name__ == "__main__":
    main()
