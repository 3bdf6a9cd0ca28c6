"""A 4-tile campaign end to end with shapepipe_campaign: one tile fails, is re-run, final catalogue vs truth.

Usage::

    python benchmarks/bench_campaign.py --work /tmp/campaign [--snakemake] [--fail-tile 245.252]

Steps (each a ``shapepipe_campaign`` process, timed: wall, and CPU of it and
of every process it started):

1. simulate the ``campaign`` preset (four overlapping tiles of one row, two
   exposures each) into ``WORK/sim`` unless present (not timed);
2. corrupt the tile image of ``--fail-tile`` (its first 2880 bytes zeroed);
3. ``run --tiles`` (or, with ``--snakemake``, ``snakefile`` then
   ``snakemake --cores 2 --keep-going``): every stage of every tile; the
   corrupt tile stops at its first stage;
4. ``summary`` and ``missing --stage make_catalog`` over the campaign root;
5. repair the image, re-run the missing list only (or Snakemake again);
6. ``final-cat`` (and ``--keep-duplicates``), checked against the truth ids
   (:func:`shapepipe_modules.gold.truth_checks.overlap_duplicates`).

Prints a table and writes ``WORK/bench_campaign.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command, log_path, env=None) -> tuple[int, float, float]:
    """Run a command, output to a log; (exit status, wall s, CPU s of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log_path, "w") as handle:
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return status, time.perf_counter() - started, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="work folder (sim/, root/, logs)")
    parser.add_argument("--fail-tile", default="245.252")
    parser.add_argument("--snakemake", action="store_true", help="run through the generated Snakemake workflow")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--match-radius", type=float, default=4.0,
                        help="final-cat radius, arcsec (default 2 pixels of the campaign preset: the positions of "
                             "one object in two tiles differ by up to ~2 arcsec there)")
    args = parser.parse_args(argv)
    try:  # a subreaper collects the CPU of orphaned grandchildren too (Linux)
        import ctypes

        ctypes.CDLL(None).prctl(36, 1)
    except (OSError, AttributeError):
        pass
    work = Path(args.work).resolve()
    sim, root = work / "sim", work / ("root_snakemake" if args.snakemake else "root")
    work.mkdir(parents=True, exist_ok=True)
    campaign = [sys.executable, "-m", "shapepipe_modules.tools.campaign"]
    if not (sim / "simulation.json").is_file():
        from shapepipe_modules.simulate import simulate

        simulate(preset="campaign", output_dir=sim, seed=args.seed, n_workers=2)
    tiles = json.loads((sim / "simulation.json").read_text())["parameters"]["tiles"]
    tile_list = work / "tiles.txt"
    tile_list.write_text("".join(f"{t}\n" for t in tiles))
    if root.exists():
        shutil.rmtree(root)
    common = ["--root", str(root), "--data", str(sim), "--config-dir", str(REPO / "example" / "GOLD")]
    image = sim / "tiles" / f"CFIS.{args.fail_tile}.r.fits"
    good = image.read_bytes()
    rows = []
    try:
        image.write_bytes(bytes(2880) + good[2880:])
        if args.snakemake:
            snakemake = shutil.which("snakemake", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                                        f"{os.environ.get('PATH', '')}")
            subprocess.run([*campaign, "snakefile", "--tiles", str(tile_list), *common, "--match-radius",
                            str(args.match_radius)], check=True,
                           stdout=subprocess.DEVNULL)
            first = [snakemake, "-s", str(root / "Snakefile"), "-d", str(root), "--cores", "2", "--keep-going"]
        else:
            first = [*campaign, "run", "--tiles", str(tile_list), *common]
        rows.append(("first run (one tile corrupt)", *timed(first, work / "first.log")))
        summary = subprocess.run([*campaign, "summary", str(root), "--tiles", str(tile_list)], capture_output=True,
                                 text=True).stdout
        missing = work / "missing.txt"
        subprocess.run([*campaign, "missing", str(root), "--tiles", str(tile_list), "--stage", "make_catalog",
                        "-o", str(missing)], capture_output=True)
        missing_tiles = missing.read_text().split()
    finally:
        image.write_bytes(good)
    again = first if args.snakemake else [*campaign, "run", "--tiles", str(missing), *common]
    rows.append((f"re-run ({', '.join(missing_tiles)})", *timed(again, work / "rerun.log")))
    joined, final = work / "joined.fits", root / "final_cat.fits"
    if not args.snakemake:
        rows.append(("final-cat", *timed([*campaign, "final-cat", "--tiles", str(tile_list), "--root", str(root),
                                          "-o", str(final), "--match-radius", str(args.match_radius)],
                                         work / "final.log")))
    subprocess.run([*campaign, "final-cat", "--tiles", str(tile_list), "--root", str(root), "-o", str(joined),
                    "--keep-duplicates", "--match-radius", str(args.match_radius)], check=True,
                   stdout=subprocess.DEVNULL)
    from astropy.table import Table

    from shapepipe_modules.gold.truth_checks import overlap_duplicates

    check = overlap_duplicates(Table.read(joined, hdu="RESULTS"), Table.read(final, hdu="RESULTS"), sim / "truth")
    per_tile = {t: len(list((root / "tile_runs" / t / "output").glob("*/run.json"))) for t in tiles}
    print(f"campaign: {len(tiles)} tiles {', '.join(tiles)}; corrupt tile {args.fail_tile}; match radius "
          f"{args.match_radius} arcsec; "
          f"{'Snakemake' if args.snakemake else 'shapepipe_campaign run'}")
    print(f"{'step':<36} {'status':>6} {'wall s':>8} {'CPU s':>8}")
    for name, status, wall, cpu in rows:
        print(f"{name:<36} {status:>6} {wall:>8.1f} {cpu:>8.1f}")
    print("summary after the first run:\n" + summary)
    print(f"missing at make_catalog after the first run: {missing_tiles}")
    print(f"run folders per tile: {per_tile}")
    print("final catalogue against the truth: " + ", ".join(f"{k} {v}" for k, v in check.items()))
    record = {"tiles": tiles, "fail_tile": args.fail_tile, "snakemake": args.snakemake, "missing": missing_tiles,
              "steps": [dict(zip(("step", "status", "wall_s", "cpu_s"), r)) for r in rows], "runs_per_tile": per_tile,
              "truth": check, "summary": summary}
    (work / "bench_campaign.json").write_text(json.dumps(record, indent=1) + "\n")
    ok = (rows[0][1] != 0 and rows[1][1] == 0 and missing_tiles == [args.fail_tile]
          and check["final_in_several_tiles"] == 0 and check["lost"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
