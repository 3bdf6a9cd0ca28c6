"""Benchmark of the psfex module: built-in engine against the PSFEx binary, per CCD, on the demo data.

For every CCD of the first exposure of each tile of a ``demo`` simulation
(12 CCDs of 1024 x 2048 pixels, ~50 selected stars each) the script runs
sextractor (sep), selects the true, unsaturated, isolated stars with
SNR_WIN > 50 (as the acceptance tests do), and fits, with the module's
default ``.psfex`` configuration (PSF_SIZE 51, sampling 1, PSFVAR_DEGREES 2):

- ``builtin``: the built-in engine as the module runs it (degrees chosen
  from the stars' shapes, :func:`select_degrees`);
- ``builtin fixed``: the built-in engine with a quadratic in every pixel
  (``select_degree=False``), PSFEx's own model and the engine's behaviour
  before the degree guard;
- ``psfex``: the PSFEx binary.

Each model is compared with the true PSF on a 5 x 9 grid over its CCD,
corners included (galsim.hsm on model and truth stamps): mean size
residual, rms of the size residual, rms and maximum of the ellipticity
residual, maximum off the CCD border. The table shows the engines side by
side, marks CCDs where an acceptance threshold fails (``!``: |size| >=
0.3%, e rms >= 0.005, |de| >= 0.01) and where the built-in engine is worse
than 1.2 times PSFEx (``>``), then the fit times and the evaluation time per
object-epoch.

Run: ``python benchmarks/bench_psfex.py [--sim DIR] [--work DIR] [--exposures N]``
(default: the GOLD example data if present, else a fresh ``demo`` simulation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

DEMO = HERE.parent / "example" / "GOLD" / "data" / "demo"
LIMITS = {"size": 0.003, "e_rms": 0.005, "e_max": 0.01}
COLUMNS = ("size", "size_rms", "e_rms", "e_max", "e_max_inner")


def chosen_ccds(sim_dir, per_tile):
    """Exposures: the first ``per_tile`` of every tile (all if 0)."""
    info = json.loads((Path(sim_dir) / "simulation.json").read_text())
    if per_tile <= 0:
        return list(info["exposures"])
    return sorted(e for exposures in info["tile_exposures"].values() for e in sorted(exposures)[:per_tile])


def split_some(sim_dir, exposures, output_dir):
    """split_exp on the chosen exposures: ``{(exposure, ccd): {'image', 'weight', 'flag'}}``."""
    from shapepipe_modules.split_exp.split_exp import split_exposure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ccds = {}
    for exposure in exposures:
        base = Path(sim_dir) / "exposures" / f"{exposure}p"
        paths = [Path(f"{base}.fits"), Path(f"{base}.weight.fits.fz"), Path(f"{base}.flag.fits.fz")]
        result = split_exposure(paths, ["image", "weight", "flag"], f"-{exposure}", output_dir)
        for ccd in range(result.n_ccd):
            ccds[(exposure, ccd)] = {kind: output_dir / f"{kind}-{exposure}-{ccd}.fits"
                                     for kind in ("image", "weight", "flag")}
    return ccds


def fit_builtin(stars, settings, output, **overrides):
    """The built-in fit of one star catalogue, written as a .psf file; returns (path, seconds, info)."""
    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.io.psfex_file import write_psf
    from shapepipe_modules.psfex.model import FitOptions, fit_psf, load_stars

    start = time.perf_counter()
    table, header = read_ldac(stars)
    sample = load_stars(table, header, settings.center_keys, settings.var_keys, settings.flux_key)
    options = FitOptions(psf_size=settings.psf_size, sampling=settings.sampling, degree=settings.degree,
                         accuracy=settings.accuracy, recenter=settings.recenter, **overrides)
    result = fit_psf(sample, options, names=settings.var_keys)
    write_psf(output, result.model)
    return output, time.perf_counter() - start, result.info


def fit_binary(stars, config, work):
    """The PSFEx binary on one star catalogue; returns (path, seconds)."""
    from shapepipe_modules.psfex.binary import run_psfex

    def run_command(args):
        return subprocess.run(args, capture_output=True, text=True, check=True)

    start = time.perf_counter()
    psf = run_psfex(run_command, "psfex", stars, config, work, Path(work) / "psfex_cat.cat")
    return psf, time.perf_counter() - start


def table(summary, n_stars, degrees):
    """Side-by-side text table of the engines, per CCD."""
    engines = list(summary)
    labels = ("size", "s_rms", "e_rms", "e_max", "inner")
    head = f"{'CCD':11s} {'stars':>5s} {'deg e/s':>7s}  " + " | ".join(
        " ".join(f"{label:>8s}" for label in labels) + f"  {engine:<13s}" for engine in engines)
    lines = [head, "-" * len(head)]
    for key in summary[engines[0]]:
        name = "all" if key == "all" else f"{key[0]}-{key[1]}"
        count = "" if key == "all" else str(n_stars[key])
        degree = "" if key == "all" else "{}/{}".format(*degrees[key])
        cells = []
        for engine in engines:
            row = summary[engine][key]
            marks = "!" if (abs(row["size"]) >= LIMITS["size"] or row["e_rms"] >= LIMITS["e_rms"]
                            or row["e_max"] >= LIMITS["e_max"]) else " "
            if engine != "psfex" and "psfex" in summary:
                theirs = summary["psfex"][key]
                if (abs(row["size"]) > 1.2 * abs(theirs["size"]) or row["e_rms"] > 1.2 * theirs["e_rms"]
                        or row["e_max"] > 1.2 * theirs["e_max"]):
                    marks += ">"
            cells.append(" ".join(f"{row[c]:+8.5f}" if c == "size" else f"{row[c]:8.5f}" for c in COLUMNS)
                         + f"  {marks:<13s}")
        lines.append(f"{name:11s} {count:>5s} {degree:>7s}  " + " | ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    import test_accept_psfex as accept
    from conftest import extract_ccds

    from shapepipe_modules.psfex.config import PSFExSettings
    from shapepipe_modules.psfex.runner import DATA_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sim", help="simulation folder (default: the GOLD example demo data, else simulate)")
    parser.add_argument("--work", help="working folder (default: temporary)")
    parser.add_argument("--exposures", type=int, default=1, help="first N exposures of every tile (0: all)")
    parser.add_argument("--seed", type=int, default=1, help="seed when simulating")
    parser.add_argument("--no-binary", action="store_true", help="skip the PSFEx binary")
    args = parser.parse_args(argv)
    config = DATA_DIR / "default.psfex"
    settings = PSFExSettings.from_file(config)
    use_binary = not args.no_binary and shutil.which("psfex") is not None
    temporary = None if args.work else tempfile.mkdtemp(prefix="bench_psfex_")
    work = Path(args.work or temporary)
    try:
        if args.sim:
            sim = Path(args.sim)
        elif (DEMO / "simulation.json").exists():
            sim = DEMO
        else:
            from shapepipe_modules.simulate import simulate

            sim = Path(simulate(preset="demo", output_dir=work / "sim", seed=args.seed, n_workers=2, ring=True))
        print(f"simulation {sim}")
        ccds = split_some(sim, chosen_ccds(sim, args.exposures), work / "split")
        catalogues = extract_ccds(ccds, work / "sexcat", engine="sep")
        from astropy.table import Table

        models = {"builtin": {}, "builtin fixed": {}}
        if use_binary:
            models["psfex"] = {}
        times = {name: [] for name in models}
        n_stars, degrees = {}, {}
        for (exposure, ccd), catalogue in sorted(catalogues.items()):
            number = f"-{exposure}-{ccd}"
            truth = Table.read(sim / "truth" / f"truth_exp-{exposure}.fits")
            stars = work / "stars" / f"star_selection{number}.fits"
            n_stars[(exposure, ccd)] = accept.select_truth_stars(catalogue, truth[truth["ccd"] == ccd], stars)
            out = work / "models"
            out.mkdir(parents=True, exist_ok=True)
            path, seconds, info = fit_builtin(stars, settings, out / f"builtin{number}.psf")
            models["builtin"][(exposure, ccd)] = path
            times["builtin"].append(seconds)
            degrees[(exposure, ccd)] = (info["shear_degree"], info["size_degree"])
            path, seconds, _ = fit_builtin(stars, settings, out / f"fixed{number}.psf", select_degree=False)
            models["builtin fixed"][(exposure, ccd)] = path
            times["builtin fixed"].append(seconds)
            if use_binary:
                path, seconds = fit_binary(stars, config, work / "psfex" / number.strip("-"))
                models["psfex"][(exposure, ccd)] = path
                times["psfex"].append(seconds)
            print(f"{exposure}-{ccd}: {n_stars[(exposure, ccd)]} stars, "
                  + ", ".join(f"{name} {values[-1]:.2f} s" for name, values in times.items()), flush=True)
        summary = accept.residual_summary(sim, models)
        print()
        print("size = mean sigma_model/sigma_true - 1, s_rms its rms, e_rms / e_max / inner (off the border) of\n"
              "e_model - e_true over the 5 x 9 grid, corners included; deg e/s: degrees of the built-in\n"
              "ellipticity / size; '!' fails an acceptance threshold, '>' worse than 1.2 x PSFEx")
        print(table(summary, n_stars, degrees))
        print()
        for name, values in times.items():
            print(f"mean fit time {name:<14s} {np.mean(values):6.2f} s per CCD")
        if use_binary:
            print(f"speed-up built-in vs PSFEx: {np.mean(times['psfex']) / np.mean(times['builtin']):.1f}x")
        # Evaluation: many object-epochs at sub-pixel centres, 51x51 stamps.
        from shapepipe_modules.io.psfex_file import read_psf

        model = read_psf(next(iter(models["builtin"].values())))
        count = 20000
        rng = np.random.default_rng(1)
        x = rng.uniform(1, 1024, count)
        y = rng.uniform(1, 2048, count)
        model.evaluate(x[:100], y[:100], size=51)  # compile once
        start = time.perf_counter()
        model.evaluate(x, y, size=51, centre=(x % 1 - 0.5, y % 1 - 0.5), dtype=np.float32)
        elapsed = time.perf_counter() - start
        print(f"evaluation: {elapsed / count * 1e3:.4f} ms per object-epoch (51x51, {count} positions)")
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
