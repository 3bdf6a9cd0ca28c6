"""Time and memory of the later passes' image steps on a large image: the models and the saddle test.

A synthetic ``--size`` x ``--size`` float32 image (Gaussian noise of
sigma 5 on a sky of 100, ``--objects`` round Gaussian galaxies of 1-8
pixels) with a constant weight map. Printed per step, in this process:
wall seconds and the tracemalloc peak in units of one float32 image (the
image and its weight, made before, are not counted):

- ``subtract_models``: ring-median models of the objects with FLUX_RADIUS
  >= 4 pixels over 64-pixel background meshes (PASS_SUBTRACT_RADIUS,
  PASS_MODEL_BACK_SIZE);
- the saddle test (PASS_SPLIT_SIGMA): ``filtered_detection_image`` (12-pixel
  meshes, the module's default 3x3 filter) and ``merge_shallow_splits`` at
  3 sigma and 6 pixels over ``--detections`` random positions.

Usage: ``python benchmarks/bench_pass_memory.py [--size 4000] [--objects 400] [--detections 20000]``
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def synthetic_scene(size, n_objects, rng):
    """Image, weight and catalogue of round Gaussian galaxies on noise."""
    from astropy.table import Table

    image = rng.normal(100.0, 5.0, (size, size)).astype(np.float32)
    x = rng.uniform(50, size - 50, n_objects)
    y = rng.uniform(50, size - 50, n_objects)
    sigma = rng.uniform(1.0, 8.0, n_objects)
    flux = rng.uniform(1e3, 1e5, n_objects)
    for xi, yi, si, fi in zip(x, y, sigma, flux):
        half = int(5 * si) + 1
        x1, y1 = int(xi) - half, int(yi) - half
        yy, xx = np.mgrid[y1:y1 + 2 * half + 1, x1:x1 + 2 * half + 1]
        image[y1:y1 + 2 * half + 1, x1:x1 + 2 * half + 1] += (
            fi / (2 * np.pi * si ** 2) * np.exp(-0.5 * ((xx - xi) ** 2 + (yy - yi) ** 2) / si ** 2))
    # FITS (1-based) positions; FLUX_RADIUS of a Gaussian is 1.18 sigma; Kron radius about 2.5 sigma / A.
    table = Table(dict(X_IMAGE=x + 1, Y_IMAGE=y + 1, A_IMAGE=sigma, B_IMAGE=sigma, THETA_IMAGE=np.zeros(n_objects),
                       KRON_RADIUS=np.full(n_objects, 3.5), FLUX_AUTO=flux, FLUX_RADIUS=1.18 * sigma))
    return image, np.full(image.shape, 0.04, np.float32), table


def measured(step):
    """(seconds, tracemalloc peak in bytes, result) of ``step()``."""
    tracemalloc.start()
    clock = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - clock
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--detections", type=int, default=20000)
    args = parser.parse_args(argv)

    from astropy.table import Table

    from shapepipe_modules.sextractor.config_files import read_dot_conv
    from shapepipe_modules.sextractor.passes import filtered_detection_image, merge_shallow_splits
    from shapepipe_modules.sextractor.runner import DATA_DIR
    from shapepipe_modules.sextractor.subtract import subtract_models

    rng = np.random.default_rng(1)
    image, weight, table = synthetic_scene(args.size, args.objects, rng)
    kernel = read_dot_conv(DATA_DIR / "default.conv")
    n = args.detections
    detections = Table(dict(X_IMAGE=rng.uniform(1, args.size, n), Y_IMAGE=rng.uniform(1, args.size, n),
                            FLUX_AUTO=rng.uniform(10, 1000, n), FLUX_RADIUS=rng.uniform(1, 8, n)))

    def saddle():
        filtered, noise = filtered_detection_image(image, weight, kernel, (12, 12))
        return merge_shallow_splits(detections, filtered, noise, 3.0, 6.0)

    steps = {"subtract_models (FLUX_RADIUS >= 4, 64-px meshes)": lambda: subtract_models(image, table, 4.0, 64, weight),
             f"saddle test ({n} detections, 3 sigma, 6 px)": saddle}
    print(f"{args.size} x {args.size} float32 image ({image.nbytes / 1e6:.0f} MB), {args.objects} objects")
    print(f"{'step':52s} {'seconds':>8s} {'peak (image copies)':>20s}")
    for name, step in steps.items():
        seconds, peak, _ = measured(step)
        print(f"{name:52s} {seconds:8.2f} {peak / image.nbytes:20.2f}")


if __name__ == "__main__":
    main()
