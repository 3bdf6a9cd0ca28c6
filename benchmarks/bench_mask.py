"""Speed of the mask module on a CFHT-size CCD.

A 2048 x 4612 CCD at 0.187"/pixel with saturated stars and bleed trails, an
input flag image, a bright-star catalogue over 4 deg^2 with realistic
number counts (about 400 stars per deg^2 brighter than 18), and a deep-sky
catalogue of 10,000 objects (a few of them on the CCD, one large galaxy
covering part of it without covering a corner). Prints the time of
``build_mask`` alone and of the whole job (reading the FITS inputs, masking,
writing the flag image), medians over a few repeats.

ShapePipe's reference: 12.4 s per CCD, almost all of it a Python loop over
the deep-sky catalogue.

Usage: ``python benchmarks/bench_mask.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.job import Job
from shapepipe_modules.mask.build import build_mask
from shapepipe_modules.mask.catalogues import read_deep_sky_catalogue, read_star_catalogue
from shapepipe_modules.mask.config import default_config_path, read_mask_config
from shapepipe_modules.mask.runner import OPTIONS, mask

NY, NX = 4612, 2048
SCALE = 0.187
RA0, DEC0 = 150.0, 2.0


def ccd_wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [RA0, DEC0]
    wcs.wcs.crpix = [NX / 2 + 0.5, NY / 2 + 0.5]
    wcs.wcs.cd = [[-SCALE / 3600, 0], [0, SCALE / 3600]]
    return wcs


def make_inputs(folder: Path, rng: np.random.Generator):
    wcs = ccd_wcs()
    header = wcs.to_header()
    header["SATURATE"] = 60000.0
    image = rng.normal(400.0, 8.0, (NY, NX)).astype(np.float32)
    for x, y, trail in ((500, 1000, 300), (1500, 3000, 150), (1000, 4300, 80)):
        image[y - 6 : y + 6, x - 6 : x + 6] = 65000.0
        image[y - trail : y + trail, x - 1 : x + 2] = 61000.0
    flag = np.zeros((NY, NX), np.int16)
    flag[:, rng.integers(0, NX, 5)] = 1
    paths = [folder / "image-0000000-1.fits", folder / "weight-0000000-1.fits", folder / "flag-0000000-1.fits"]
    fits.PrimaryHDU(image, header).writeto(paths[0])
    fits.PrimaryHDU(np.ones((NY, NX), np.float32), header).writeto(paths[1])
    fits.PrimaryHDU(flag, header).writeto(paths[2])

    # Bright stars over 2 x 2 deg: dN/dm proportional to 10**(0.3 m), 400 per deg^2 below 18.
    area, n18 = 4.0, 400.0
    m = np.linspace(8, 20, 4000)
    cdf = 10 ** (0.3 * m) - 10 ** (0.3 * 8)
    total = int(n18 * area * cdf[-1] / (10 ** (0.3 * 18) - 10 ** (0.3 * 8)))
    mag = np.interp(rng.uniform(0, cdf[-1], total), cdf, m)
    ra = RA0 + rng.uniform(-1, 1, total) / np.cos(np.radians(DEC0))
    dec = DEC0 + rng.uniform(-1, 1, total)
    stars = folder / "bright_stars.fits"
    Table({"ra": ra, "dec": dec, "mag": mag}).write(stars)

    # 10,000 deep-sky objects over the sky, a few on the CCD.
    n = 10_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    radius = rng.uniform(0.5, 10, n) / 60.0
    (ra[:4], dec[:4]) = wcs.all_pix2world([2400.0, 300, 1700, 1000], [2306.0, 600, 4000, 2300], 0)
    radius[:4] = np.array([700.0, 80, 120, 40]) * SCALE / 3600
    deep = folder / "deep_sky.fits"
    Table({"name": np.arange(n).astype(str), "ra": ra, "dec": dec, "radius": radius}).write(deep)
    return paths, stars, deep, wcs, header


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2024)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths, stars_path, deep_path, wcs, header = make_inputs(folder, rng)
        params = read_mask_config(default_config_path())
        stars = read_star_catalogue(stars_path)
        deep = read_deep_sky_catalogue(deep_path)
        image = fits.getdata(paths[0])
        weight = fits.getdata(paths[1])
        flag = fits.getdata(paths[2])

        build_time, result = median_time(
            lambda: build_mask(image, weight, wcs, header, stars, deep, params, external_flag=flag), args.repeats
        )

        options = {option.name: option.default for option in OPTIONS}
        options.update(STAR_CAT_PATH=str(stars_path), DEEP_SKY_CAT_PATH=str(deep_path))

        def run_job():
            output = Path(tempfile.mkdtemp(dir=tmp))
            job = Job(
                module="mask", module_run="mask", number="-0000000-1", inputs=paths, output_dir=output,
                log_dir=output, options=options, logger=logging.getLogger("bench_mask"), run_dir=output,
            )
            return mask(job)

        job_time, stats = median_time(run_job, max(args.repeats // 2, 1))

    print(f"mask on a {NX} x {NY} CCD; {len(stars.ra)} catalogue stars, {len(deep.ra)} deep-sky objects")
    print(f"  masked: {stats}")
    print(f"{'step':<40} {'seconds':>8}")
    print(f"{'build_mask (arrays in memory)':<40} {build_time:8.3f}")
    print(f"{'whole job (read, mask, write FITS)':<40} {job_time:8.3f}")
    print(f"{'ShapePipe mask_runner (reported)':<40} {12.4:8.3f}")
    print(f"planes: {result.planes}")


if __name__ == "__main__":
    main()
