"""Compare the products of two chain runs file by file (not a test: prints the differences).

Usage: ``python benchmarks/compare_chain_outputs.py RUN_ROOT_A/output RUN_ROOT_B/output``

Two ``bench_chain.py`` runs (old and new code) write the same products
under run folders whose names differ only by their date. Files are paired by
their path with the dates removed; logs, job tables, records and lock files
are skipped. A pair with the same bytes is identical; otherwise FITS files
(also ``.cat`` and ``.psf``) are compared HDU by HDU and column by column
(the largest absolute difference is printed), SQLite stores table by table.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from pathlib import Path

import numpy as np

SKIPPED_SUFFIXES = (".log", ".json", ".csv", ".ini")
SKIPPED_NAMES = (".lock", "log_run_sp.txt")
DATE = re.compile(r"_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def products(root: Path) -> dict:
    """Product files under ``root`` by their path without run dates."""
    found = {}
    for path in root.rglob("*"):
        text = path.as_posix()
        if (path.is_file() and path.suffix not in SKIPPED_SUFFIXES and path.name not in SKIPPED_NAMES
                and "/logs/" not in text and ".staging" not in text):
            found[DATE.sub("", path.relative_to(root).as_posix())] = path
    return found


def _largest_difference(a, b) -> str:
    if a.dtype.kind in "fiu" and b.dtype.kind in "fiu" and a.shape == b.shape:
        return f"{np.nanmax(np.abs(a.astype(float) - b.astype(float))):.3g}"
    return "?"


def fits_differences(a: Path, b: Path) -> list[str]:
    from astropy.io import fits

    problems = []
    with fits.open(a) as first, fits.open(b) as second:
        if len(first) != len(second):
            return [f"{len(first)} vs {len(second)} HDUs"]
        for index, (x, y) in enumerate(zip(first, second)):
            if x.data is None or y.data is None:
                if (x.data is None) != (y.data is None):
                    problems.append(f"HDU {index}: data in one file only")
                continue
            names = getattr(x.data.dtype, "names", None)
            pairs = [(name, x.data[name], y.data[name]) for name in names] if names else [("data", x.data, y.data)]
            for name, u, v in pairs:
                u, v = np.asarray(u), np.asarray(v)
                if not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
                    problems.append(f"HDU {index} {name}: max |difference| {_largest_difference(u, v)}")
    return problems


def sqlite_differences(a: Path, b: Path) -> list[str]:
    problems = []
    with sqlite3.connect(a) as first, sqlite3.connect(b) as second:
        query = "select name from sqlite_master where type = 'table' order by name"
        tables = [row[0] for row in first.execute(query)]
        if tables != [row[0] for row in second.execute(query)]:
            return ["different tables"]
        for table in tables:
            rows = [sorted(db.execute(f'select * from "{table}"').fetchall(), key=repr) for db in (first, second)]
            if rows[0] != rows[1]:
                problems.append(f"table {table}: {len(rows[0])} vs {len(rows[1])} rows, contents differ")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="output folder of the first run (RUN_ROOT/output)")
    parser.add_argument("second", type=Path, help="output folder of the second run")
    args = parser.parse_args(argv)
    first, second = products(args.first), products(args.second)
    identical = 0
    for key in sorted(set(first) & set(second)):
        a, b = first[key], second[key]
        if a.read_bytes() == b.read_bytes():
            identical += 1
            continue
        if a.suffix in (".fits", ".fz", ".cat", ".psf"):
            problems = fits_differences(a, b)
        elif a.suffix == ".sqlite":
            problems = sqlite_differences(a, b)
        else:
            problems = ["bytes differ"]
        print(f"{key}: " + ("same contents, other bytes" if not problems else "; ".join(problems[:6])))
    alone = sorted(set(first) ^ set(second))
    print(f"{len(set(first) & set(second))} products in both runs, {identical} byte-identical"
          + (f"; in one run only: {', '.join(alone)}" if alone else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
