"""Data by name: query, get and butler-ingest times (not a test: prints a table).

Usage: ``python benchmarks/bench_butler.py [--tiles 1000] [--workers 2] [--no-butler]``

A campaign of ``--tiles`` tiles is made by the real runner: one run of a
module (loaded from a MODULE_DIR) that writes a small FITS table (100 rows)
per tile number ``-XXX-YYY`` and declares it as the dataset ``bench_cat``.
Two layouts are timed:

- one run folder holding every tile (the runner's own ``run.json`` and
  ``jobs.json``);
- one run folder per tile, as a cluster campaign leaves them (``run.json``
  written by the runner's record writer ``shapepipe.records.write_record``,
  ``jobs.json`` the runner's rows of that tile), pointing at the same files.

For each: the time to build the index and query every data id (a fresh
``Repository``, so the run records are read), the time per thousand
``get("bench_cat_filename")`` (lookup only) and ``get("bench_cat")`` (lookup
and FITS read), and the ingest of every file into a fresh SQLite butler
(``shapepipe_modules.butler.ingest``) per thousand files. The goals of the
issue: a 1,000-tile query under 1 s, ingest under 10 s per 1,000 files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

MODULE = '''
from shapepipe.datasets import Product
from shapepipe.module import module


@module(name="bench_cat", version="1.0", file_pattern="in", file_ext=".txt", numbering_scheme="-000-000",
        products=(Product("bench_cat", "bench_cat{number}.fits", "fits_table", ids=("tile",)),))
def bench_cat(job):
    """A 100-row FITS table per tile."""
    import numpy as np
    from astropy.table import Table

    rng = job.rng()
    Table({"RA": rng.uniform(0, 1, 100), "DEC": rng.uniform(0, 1, 100)}).write(
        job.output_path(f"bench_cat{job.number}.fits"))
'''


def tiles(count: int) -> list[str]:
    return [f"{100 + i // 300:03d}.{i % 300:03d}" for i in range(count)]


def make_campaign(root: Path, count: int, workers: int) -> Path:
    """One real run over ``count`` tiles; returns its OUTPUT_DIR."""
    from shapepipe.plan import build_plan
    from shapepipe.runner import Runner

    (root / "mods").mkdir()
    (root / "mods" / "bench_cat.py").write_text(MODULE)
    (root / "data").mkdir()
    for tile in tiles(count):
        (root / "data" / f"in-{tile.replace('.', '-')}.txt").write_text(tile)
    config = root / "config.ini"
    config.write_text(
        "[DEFAULT]\nVERBOSE = False\nRUN_NAME = bench_one\n"
        f"[EXECUTION]\nMODULE = bench_cat\nMODULE_DIR = {root / 'mods'}\n"
        f"[FILE]\nINPUT_DIR = {root / 'data'}\nOUTPUT_DIR = {root / 'one'}\n"
        f"[JOB]\nSMP_BATCH_SIZE = {workers}\n")
    runner = Runner(build_plan(config))
    if runner.run() != 0:
        raise RuntimeError("benchmark campaign run failed")
    return root / "one"


def split_per_tile(one: Path, root: Path) -> Path:
    """One run folder per tile, records by the runner's writer, files shared with ``one``."""
    from shapepipe.records import write_record

    run_dir = next(one.glob("bench_one_*"))
    record = json.loads((run_dir / "run.json").read_text())
    rows = json.loads((run_dir / "jobs.json").read_text())
    entry = record["modules"][0]
    output = root / "per_tile"
    output.mkdir()
    for index, row in enumerate(rows):
        folder = output / f"bench_tile_{index:05d}"
        folder.mkdir()
        write_record({**record, "run_name": "bench_tile", "run_dir": str(folder),
                      "started": f"2024-01-01T00:00:{index % 60:02d}.{index:06d}",
                      "modules": [{**entry, "output_dir": entry["output_dir"], "counts": {"done": 1}}]})
        (folder / "jobs.json").write_text(json.dumps([row]))
    return output


def time_queries(output: Path, module_dirs) -> dict:
    from shapepipe import Repository

    start = time.perf_counter()
    repo = Repository(output, module_dirs=module_dirs)
    created = time.perf_counter() - start
    start = time.perf_counter()
    ids = repo.query("bench_cat")
    first_query = time.perf_counter() - start
    start = time.perf_counter()
    again = repo.query("bench_cat", tile=ids[-1]["tile"])
    filtered = time.perf_counter() - start
    start = time.perf_counter()
    paths = [repo.get("bench_cat_filename", **data_id) for data_id in ids]
    filename = time.perf_counter() - start
    sample = ids[: min(len(ids), 300)]
    repo.get("bench_cat", **ids[-1])  # imports and first-read costs out of the timing
    start = time.perf_counter()
    rows = sum(len(repo.get("bench_cat", **data_id)) for data_id in sample)
    read = time.perf_counter() - start
    assert len(paths) == len(ids) and again == [ids[-1]] and rows == 100 * len(sample)
    return {"products": len(ids), "runs": len(repo.runs()), "query_s": created + first_query,
            "filtered_ms": filtered * 1e3, "filename_per_1000_s": filename / len(ids) * 1000,
            "get_per_1000_s": read / len(sample) * 1000}


def time_ingest(output: Path, root: Path, module_dirs) -> dict:
    from shapepipe_modules.butler.ingest import create_repository, ingest

    butler_root = root / f"butler_{output.name}"
    start = time.perf_counter()
    create_repository(butler_root)
    created = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    report = ingest(output, butler_root, module_dirs=module_dirs, log=lambda *args: None)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"files": report.files, "create_s": created, "ingest_per_1000_s": seconds / report.files * 1000,
            "ingest_cpu_per_1000_s": cpu / report.files * 1000}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-butler", action="store_true", help="skip the butler ingest")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_butler_"))
    try:
        start = time.perf_counter()
        one = make_campaign(root, args.tiles, args.workers)
        print(f"campaign of {args.tiles} tiles made by the runner in {time.perf_counter() - start:.1f} s")
        layouts = {"one run folder": one, "one run per tile": split_per_tile(one, root)}
        print(f"{'layout':<18} {'products':>8} {'runs':>6} {'query all (s)':>13} {'query 1 (ms)':>12} "
              f"{'_filename/1000 (s)':>18} {'get/1000 (s)':>12} {'ingest/1000 (s)':>15} {'(CPU s)':>8}")
        for name, output in layouts.items():
            result = time_queries(output, [root / "mods"])
            ingest = {"ingest_per_1000_s": float("nan"), "ingest_cpu_per_1000_s": float("nan")}
            if not args.no_butler:
                ingest = time_ingest(output, root, [root / "mods"])
            print(f"{name:<18} {result['products']:>8} {result['runs']:>6} {result['query_s']:>13.3f} "
                  f"{result['filtered_ms']:>12.2f} {result['filename_per_1000_s']:>18.3f} "
                  f"{result['get_per_1000_s']:>12.3f} {ingest['ingest_per_1000_s']:>15.2f} "
                  f"{ingest['ingest_cpu_per_1000_s']:>8.2f}")
        print("query all: a fresh Repository reading the run records, then query() of every data id; "
              "query 1: one more query on the built index; get: lookup and FITS read (300 products timed); "
              "ingest: butler.ingest of every file into a fresh SQLite butler (its creation not counted), "
              "wall and CPU time of this process")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
