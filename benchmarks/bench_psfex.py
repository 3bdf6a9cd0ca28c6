"""Benchmark of the psfex module: built-in engine against the PSFEx binary, per CCD.

For each simulated CCD (1024x2048 pixels, about 100 stars, Moffat PSF whose
size and ellipticity vary over the CCD) the script runs SExtractor, then
both engines with the same ``.psfex`` configuration (PSF_SIZE 51, sampling 1,
degree 2), and prints per engine: wall time, peak memory, and the errors of
the model against the true PSF on a 5x9 grid over the CCD (corners included):
mean and rms of the relative size error (hsm sigma), rms and max of the
ellipticity error. The built-in engine is also run with Lanczos-3 resampling
inside the fit and as a plain per-pixel fit, to show the size bias the
default removes. Last, the evaluation time per object-epoch (51x51 stamps at
sub-pixel centres).

Run: ``python benchmarks/bench_psfex.py [--ccds N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def truth_errors(model, field, size=51):
    import galsim

    x, y = np.meshgrid(np.linspace(1, field.nx, 5), np.linspace(1, field.ny, 9))
    stamps = model.evaluate(x.ravel(), y.ravel(), size=size)
    size_error, e_error = [], []
    for stamp, px, py in zip(stamps, x.ravel(), y.ravel()):
        ours = galsim.hsm.FindAdaptiveMom(galsim.Image(stamp))
        true = galsim.hsm.FindAdaptiveMom(galsim.Image(field.image(px, py, size)))
        size_error.append(ours.moments_sigma / true.moments_sigma - 1)
        e_error.append([ours.observed_shape.e1 - true.observed_shape.e1,
                        ours.observed_shape.e2 - true.observed_shape.e2])
    size_error, e_error = np.array(size_error), np.array(e_error)
    return size_error.mean(), size_error.std(), np.sqrt(np.mean(e_error**2)), np.abs(e_error).max()


def run_builtin(catalogue, settings, **overrides):
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.psfex.model import FitOptions, fit_psf, load_stars

    table, header = read_ldac(catalogue)
    tracemalloc.start()
    start = time.perf_counter()
    sample = load_stars(table, header, settings.center_keys, settings.var_keys, settings.flux_key)
    options = FitOptions(psf_size=settings.psf_size, sampling=settings.sampling, degree=settings.degree,
                         accuracy=settings.accuracy, recenter=settings.recenter, **overrides)
    result = fit_psf(sample, options)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result.model, elapsed, peak / 2**20, int(result.model.accepted)


def run_binary(catalogue, config, work):
    from shapepipe_modules.io.psfex_file import read_psf
    from shapepipe_modules.psfex.binary import run_psfex

    def run_command(args):
        return subprocess.run(args, capture_output=True, text=True, check=True)

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    psf = run_psfex(run_command, "psfex", catalogue, config, work, Path(work) / "psfex_cat.cat")
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    model = read_psf(psf)
    # ru_maxrss is the largest child so far (KiB): exact for the first run, a lower bound after.
    return model, elapsed, max(after, before) / 1024, int(model.accepted)


def main(argv=None):
    from shapepipe_modules.psfex.config import PSFExSettings
    from shapepipe_modules.psfex.runner import DATA_DIR
    from shapepipe_modules.psfex.synthetic import SmoothPSFField, draw_ccd, write_star_catalogue

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ccds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-binary", action="store_true", help="skip the PSFEx binary")
    args = parser.parse_args(argv)
    config = DATA_DIR / "default.psfex"
    settings = PSFExSettings.from_file(config)
    use_binary = not args.no_binary and shutil.which("psfex") is not None
    rng = np.random.default_rng(args.seed)
    header = (f"{'ccd':>3} {'engine':<22} {'stars':>5} {'time s':>7} {'mem MiB':>8} "
              f"{'dsize mean':>10} {'dsize rms':>9} {'de rms':>7} {'de max':>7}")
    print(header)
    print("-" * len(header))
    times = {}
    last_model = None
    with tempfile.TemporaryDirectory() as work:
        for ccd in range(args.ccds):
            field = SmoothPSFField.random(rng)
            image, stars = draw_ccd(field, rng, n_stars=100)
            catalogue = write_star_catalogue(image, stars, Path(work) / f"ccd{ccd}", name="star_selection")
            runs = {
                "builtin": lambda: run_builtin(catalogue, settings),
                "builtin lanczos3": lambda: run_builtin(catalogue, settings, interpolant_order=3),
                "builtin plain lanczos3": lambda: run_builtin(catalogue, settings, interpolant_order=3,
                                                              super_resolution=False),
            }
            if use_binary:
                runs["psfex binary"] = lambda: run_binary(catalogue, config, Path(work) / f"ccd{ccd}")
            for name, run in runs.items():
                model, elapsed, memory, accepted = run()
                times.setdefault(name, []).append(elapsed)
                mean, rms, e_rms, e_max = truth_errors(model, field)
                print(f"{ccd:>3} {name:<22} {accepted:>5} {elapsed:>7.2f} {memory:>8.1f} "
                      f"{mean:>+10.5f} {rms:>9.5f} {e_rms:>7.5f} {e_max:>7.5f}")
                if name == "builtin":
                    last_model = model
    print()
    for name, values in times.items():
        print(f"mean time {name:<22} {np.mean(values):6.2f} s per CCD")
    if use_binary:
        print(f"speed-up built-in vs PSFEx: {np.mean(times['psfex binary']) / np.mean(times['builtin']):.1f}x")
    # Evaluation: many object-epochs at sub-pixel centres, 51x51 stamps.
    count = 20000
    x = rng.uniform(1, 1024, count)
    y = rng.uniform(1, 2048, count)
    last_model.evaluate(x[:100], y[:100], size=51)  # compile once
    start = time.perf_counter()
    last_model.evaluate(x, y, size=51, centre=(x % 1 - 0.5, y % 1 - 0.5), dtype=np.float32)
    elapsed = time.perf_counter() - start
    print(f"evaluation: {elapsed / count * 1e3:.4f} ms per object-epoch (51x51, {count} positions)")


if __name__ == "__main__":
    main()
