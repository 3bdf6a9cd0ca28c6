"""Acceptance measurements of issues 4, 5, 6 and 8 on a simulated survey.

Usage::

    python benchmarks/report_acceptance.py                    # simulate demo, measure
    python benchmarks/report_acceptance.py --preset tiny
    python benchmarks/report_acceptance.py --sim SIM_DIR      # an existing simulation
    python benchmarks/report_acceptance.py --psf-exposures 0  # PSF models on every exposure

Runs the same measurements as tests/test_accept_*.py (their functions are
imported from there) on a larger simulation and prints the tables:

1. mask: coverage of the truth halo/spike and deep-sky discs (CCDs, tiles);
2. sextractor: sep against the SExtractor binary, completeness per bin;
3. psfex: built-in and PSFEx binary models against the true PSF, per CCD,
   for truth-selected stars and for the setools default selection (default
   PSF_SIZE 51; the first ``--psf-exposures`` exposures of every tile), and
   the DES_PSFEx reader against our evaluation;
4. vignetmaker MULTI-EPOCH: stamp centres, pixels and epochs against truth;
5. spread_model: star/galaxy separation per magnitude bin.

Everything is written under ``--work`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import conftest  # noqa: E402
import test_accept_mask as accept_mask  # noqa: E402
import test_accept_psfex as accept_psfex  # noqa: E402
import test_accept_sextractor as accept_sextractor  # noqa: E402
import test_accept_spread_model as accept_spread  # noqa: E402
import test_accept_vignetmaker as accept_vignet  # noqa: E402


def _section(title):
    print(f"\n== {title} ==", flush=True)


def _psf_keys(sim_dir, catalogues, per_tile):
    """CCDs of the first ``per_tile`` exposures of every tile (all if 0)."""
    if per_tile <= 0:
        return sorted(catalogues)
    tile_exposures = json.loads((Path(sim_dir) / "simulation.json").read_text())["tile_exposures"]
    chosen = set()
    for exposures in tile_exposures.values():
        chosen.update(str(e) for e in sorted(exposures)[:per_tile])
    return sorted(k for k in catalogues if k[0] in chosen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", help="simulation preset (default demo)")
    parser.add_argument("--seed", type=int, default=conftest.TINY_SEED, help="simulation seed")
    parser.add_argument("--sim", help="use this existing simulation folder instead of simulating")
    parser.add_argument("--work", help="working folder (default: a temporary folder, removed at the end)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="simulation workers")
    parser.add_argument("--psf-exposures", type=int, default=1,
                        help="PSF models on the first N exposures of every tile (0: all)")
    parser.add_argument("--psf-size", type=int, default=51, help="PSF_SIZE of the psfex runs (default 51)")
    args = parser.parse_args(argv)

    temporary = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        temporary = tempfile.mkdtemp(prefix="acceptance_")
        work = Path(temporary)
    has_sex = shutil.which("source-extractor") or shutil.which("sex")
    has_psfex = shutil.which("psfex")
    try:
        start = time.monotonic()
        if args.sim:
            sim = Path(args.sim)
        else:
            from shapepipe_modules.simulate import simulate

            sim = Path(simulate(preset=args.preset, output_dir=work / "sim", seed=args.seed, n_workers=args.workers))
        params = json.loads((sim / "simulation.json").read_text())
        print(f"simulation {sim} (preset {params['preset']}, seed {params['seed']}) "
              f"ready after {time.monotonic() - start:.0f} s")
        ccds, store = conftest.split_exposures(sim, work / "split")
        ccd_dir = next(iter(ccds.values()))["image"].parent

        _section("1. mask: truth halo/spike discs (x1.1) and deep-sky discs not covered")
        flags = accept_mask.mask_simulation(sim, work / "mask", ccds)
        rows = {name: accept_mask.coverage_of_image(path, sim) for name, path in flags.items()}
        print(accept_mask.coverage_table(rows))
        total = {key: sum(r[key] for r in rows.values()) for key in
                 ("n_stars", "star_uncovered", "star_pixels", "n_deep_sky", "deep_sky_uncovered", "deep_sky_pixels")}
        ccd_masked = np.mean([r["masked_fraction"] for name, r in rows.items() if not name.startswith("tile")])
        print(f"total: {total}; mean masked fraction (halo+spike+deep-sky) of the CCDs {ccd_masked:.3f}")

        _section("2. sextractor: sep against the SExtractor binary")
        sep = conftest.extract_ccds(ccds, work / "sexcat", engine="sep")
        rows = {"sep": accept_sextractor.completeness(sim, sep)}
        if has_sex:
            binary = conftest.extract_ccds(ccds, work / "sexcat", engine="sextractor")
            result = accept_sextractor.compare_engines(sim, sep, binary)
            rows["sextractor"] = accept_sextractor.completeness(sim, binary)
            print("CCD          SNR>10  matched  median dMAG_AUTO  FLAGS agree  FWHM ratio  stars")
            for r in result["per_ccd"]:
                print(f"{r['ccd']:11s}  {r['n_bright']:6d}  {r['matched_fraction']:7.4f}  {r['median_dmag']:16.5f}  "
                      f"{r['flags_agree']:11.4f}  {r['fwhm_ratio']:10.4f}  {r['n_stars']:5d}")
            print(f"all          {result['n_bright']:6d}  {result['matched_fraction']:7.4f}  "
                  f"{result['median_dmag']:16.5f}  {result['flags_agree']:11.4f}  {result['fwhm_ratio']:10.4f}  "
                  f"{result['n_stars']:5d}")
            print(f"binary FWHM_IMAGE / true FWHM of those stars (median): {result['fwhm_truth']:.4f}")
        else:
            print("SExtractor binary not installed: sep completeness only")
        print("completeness (truth objects with a detection within 1.5 pixel):")
        print(accept_sextractor.completeness_table(rows))

        _section(f"3. psfex: models against the true PSF (PSF_SIZE {args.psf_size})")
        keys = _psf_keys(sim, sep, args.psf_exposures)
        engines = ("builtin", "psfex") if has_psfex else ("builtin",)
        chosen = {k: sep[k] for k in keys}
        for label, sim_for_selection in (("truth-selected stars", sim), ("setools default selection", None)):
            models = accept_psfex.build_models(chosen, work / "psf" / label.split()[0], engines=engines,
                                               psf_size=args.psf_size, sim_dir=sim_for_selection)
            summary = accept_psfex.residual_summary(sim, models)
            print(f"{label}: size = mean sigma_model/sigma_true - 1; e_rms, e_max over the 5 x 9 grid; "
                  "inner = max |de| off the CCD border")
            print(accept_psfex.residual_table(summary, models["n_stars"]))
            if "psfex" in summary:
                worse = [k for k in keys if summary["builtin"][k]["e_rms"] > 1.2 * summary["psfex"][k]["e_rms"]
                         or abs(summary["builtin"][k]["size"]) > max(1.2 * abs(summary["psfex"][k]["size"]), 5e-4)]
                print(f"CCDs where the built-in engine is worse than 1.2 x PSFEx (e_rms or |size|): "
                      f"{[f'{e}-{c}' for e, c in worse] or 'none'}")
            positions = [(100.5, 200.2, 0.2, -0.4), (300.0, 800.0, -0.3, 0.35)]
            for engine in engines:
                worst = max(accept_psfex.des_reader_difference(path, positions) for path in models[engine].values())
                print(f"DES_PSFEx reader vs our evaluation, {engine} files: max |diff| / peak = {worst:.2e}")

        _section("4. vignetmaker MULTI-EPOCH against truth")
        nx_ny = conftest.ccd_shape(sim)
        tiles = (sim / "tile_list.txt").read_text().split()
        catalogues = {}
        for tile in tiles:
            catalogues[tile] = conftest.extract_tile(sim, tile, store, work / "tile" / tile, nx_ny)
            results = accept_vignet.measure_multi_epoch(sim, catalogues[tile], ccd_dir, store,
                                                        work / "vignet" / tile)
            print(f"tile {tile}")
            print(accept_vignet.multi_epoch_table(results))

        _section("5. spread_model star/galaxy separation (true tile PSF, ShapePipe's rule)")
        for psf_model in ("gaussian", "stamp"):
            pooled = []
            for tile in tiles:
                pooled.append(accept_spread.classify_tile(sim, tile, catalogues[tile], work / "sm" / tile,
                                                          psf_model=psf_model))
            from astropy.table import vstack

            print(f"PSF_MODEL = {psf_model}, all tiles")
            print(accept_spread.separation_table(accept_spread.separation_rows(vstack(pooled))))
        print(f"\ntotal time {time.monotonic() - start:.0f} s")
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
