"""Speed of the preparation steps on CFHT-size CCDs: get_images, find_exposures, split_exp, merge_headers, uncompress_fits.

A synthetic exposure of ``--ccds`` CCDs of 2048 x 4612 pixels (the
MegaCam CCD size) is written the way CFIS delivers it: a plain float32 image
mosaic, RICE tile-compressed weight (float32, quantised) and flag (int16)
mosaics, every CCD with a TPV WCS and a CFIS-like header (about 90 cards).
The script then times:

- ``split_exp`` on the exposure (open each mosaic once, decompress, write
  one file per CCD and type, check every WCS, save the header file);
- ``merge_headers`` on ``--exposures`` header files of 40 CCDs each;
- ``uncompress_fits`` on one compressed weight CCD;
- ``get_images`` bringing the exposure's three files in (symlink and copy),
  given per CCD;
- ``find_exposures`` on a tile whose header lists ``--tile-exposures``
  exposures in HISTORY cards (a 2800 x 2800 tile: only the header is read).

Wall and CPU seconds (this process) are medians over ``--repeats`` runs.
ShapePipe's reference for split_exp: 1.05 s CPU per CCD.

Usage: ``python benchmarks/bench_prepare.py [--ccds 4] [--exposures 50] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from shapepipe_modules.find_exposures.find_exposures import find_exposures
from shapepipe_modules.get_images.get_images import Transfer, retrieve
from shapepipe_modules.merge_headers.merge_headers import merge_header_files
from shapepipe_modules.split_exp.split_exp import split_exposure, write_header_file
from shapepipe_modules.uncompress_fits.uncompress_fits import uncompress

NY, NX = 4612, 2048
SCALE_DEG = 0.187 / 3600
SHAPEPIPE_SPLIT_CPU_PER_CCD = 1.05


def ccd_header(ccd: int, exposure: int) -> fits.Header:
    """A CFIS-like CCD header with a TPV WCS (third-order PV terms)."""
    header = fits.Header()
    header["EXTNAME"] = f"ccd{ccd:02d}"
    header["CCDNUM"] = ccd
    header["EXPNUM"] = exposure
    for key, value in (("GAIN", 1.6), ("RDNOISE", 5.0), ("SATURATE", 60000.0), ("PHOTZP", 30.0),
                       ("FSCALE", 1.0), ("EXPTIME", 200.0), ("MJD-OBS", 58800.0), ("FILTER", "r.MP9602"),
                       ("AIRMASS", 1.2), ("DETSIZE", "[1:23219,1:19354]"), ("DATASEC", "[33:2080,1:4612]")):
        header[key] = value
    for index in range(30):  # instrument and processing keys present in real headers
        header[f"PROC{index:03d}"] = (float(index), "processing bookkeeping")
    header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
    header["CUNIT1"] = header["CUNIT2"] = "deg"
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    row, column = divmod(ccd, 10)
    header["CRPIX1"] = 5 * NX - column * (NX + 70)
    header["CRPIX2"] = 2 * NY - row * (NY + 400)
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -SCALE_DEG, 0.0, 0.0, SCALE_DEG
    header["EQUINOX"], header["RADESYS"] = 2000.0, "ICRS"
    for axis in (1, 2):
        for term in range(11):
            header[f"PV{axis}_{term}"] = {1: 1.0, 7: 5.0, 9: 5.0}.get(term, 1e-4 * term)
    return header


def make_exposure(folder: Path, n_ccd: int, rng: np.random.Generator, exposure=2113737):
    primary = fits.Header({"EXPNUM": exposure, "NEXTEND": n_ccd, "OBJECT": "benchmark"})
    images, weights, flags = [fits.PrimaryHDU(header=primary)], [fits.PrimaryHDU()], [fits.PrimaryHDU()]
    for ccd in range(n_ccd):
        header = ccd_header(ccd, exposure)
        images.append(fits.ImageHDU(rng.normal(400.0, 8.0, (NY, NX)).astype(np.float32), header=header))
        weight = np.full((NY, NX), 0.015, np.float32) * rng.uniform(0.9, 1.1, (NY, 1)).astype(np.float32)
        weights.append(fits.CompImageHDU(weight, header=header, compression_type="RICE_1"))
        flag = np.zeros((NY, NX), np.int16)
        flag[:, rng.integers(0, NX, 4)] = 1
        flag[rng.integers(0, NY, 2000), rng.integers(0, NX, 2000)] = 2
        flags.append(fits.CompImageHDU(flag, header=header, compression_type="RICE_1"))
    paths = [folder / f"image-{exposure}.fits", folder / f"weight-{exposure}.fits.fz",
             folder / f"flag-{exposure}.fits.fz"]
    for hdus, path in zip((images, weights, flags), paths):
        fits.HDUList(hdus).writeto(path, overwrite=True)
    return paths


def timed(function, repeats: int):
    """Median wall and CPU seconds of ``function()`` over repeats."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ccds", type=int, default=4, help="CCDs in the synthetic exposure (CFIS: 40)")
    parser.add_argument("--exposures", type=int, default=50, help="exposures merged by merge_headers")
    parser.add_argument("--tile-exposures", type=int, default=40, help="exposures in the tile's HISTORY")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        inputs = work / "in"
        inputs.mkdir()
        paths = make_exposure(inputs, args.ccds, rng)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in paths)
        print(f"exposure of {args.ccds} CCDs of {NX} x {NY}: {sizes}")

        def split():
            out = work / "split"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            split_exposure(paths, ["image", "weight", "flag"], "-2113737", out)

        split_wall, split_cpu = timed(split, args.repeats)

        headers_dir = work / "headers"
        headers_dir.mkdir()
        texts = [ccd_header(ccd, 0).tostring() for ccd in range(40)]
        files = []
        for index in range(args.exposures):
            files.append(write_header_file(headers_dir / f"headers-{2100000 + index}.npy", texts))

        def merge():
            merge_header_files(files, work / "log_exp_headers.sqlite")

        merge_wall, merge_cpu = timed(merge, args.repeats)

        def uncompress_one():
            uncompress(paths[1], work / "weight-uncompressed.fits", hdu=1)

        uz_wall, uz_cpu = timed(uncompress_one, args.repeats)

        transfers = [Transfer("2113737", path, path.name.replace("-2113737", "-2113737p")) for path in paths]

        def get_images(method):
            out = work / f"get_{method}"
            shutil.rmtree(out, ignore_errors=True)
            retrieve(transfers, out, method=method)

        link_wall, link_cpu = timed(lambda: get_images("symlink"), args.repeats)
        copy_wall, copy_cpu = timed(lambda: get_images("copy"), args.repeats)

        tile = fits.PrimaryHDU(np.zeros((2800, 2800), np.float32))
        for index in range(args.tile_exposures):
            tile.header.add_history(f"input image {2100000 + index}p.fits.fz 4 extension(s)")
        tile_path = work / "CFIS_image-244-252.fits"
        tile.writeto(tile_path)

        def find():
            names = find_exposures(tile_path)
            assert len(names) == args.tile_exposures

        find_wall, find_cpu = timed(find, args.repeats)

    print(f"{'step':<44} {'wall s':>8} {'cpu s':>8}")
    print(f"{'split_exp, per exposure':<44} {split_wall:8.3f} {split_cpu:8.3f}")
    print(f"{'split_exp, per CCD (image + weight + flag)':<44} {split_wall / args.ccds:8.3f} "
          f"{split_cpu / args.ccds:8.3f}")
    print(f"{'ShapePipe split_exp, per CCD (reported)':<44} {'':>8} {SHAPEPIPE_SPLIT_CPU_PER_CCD:8.3f}")
    print(f"{'merge_headers, per exposure of 40 CCDs':<44} {merge_wall / args.exposures:8.4f} "
          f"{merge_cpu / args.exposures:8.4f}")
    print(f"{'uncompress_fits, per CCD (weight)':<44} {uz_wall:8.3f} {uz_cpu:8.3f}")
    print(f"{'get_images symlink, per CCD (3 files)':<44} {link_wall / args.ccds:8.4f} {link_cpu / args.ccds:8.4f}")
    print(f"{'get_images copy, per CCD (3 files)':<44} {copy_wall / args.ccds:8.3f} {copy_cpu / args.ccds:8.3f}")
    print(f"{'find_exposures, per tile':<44} {find_wall:8.4f} {find_cpu:8.4f}")


if __name__ == "__main__":
    main()
