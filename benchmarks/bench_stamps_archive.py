"""Acceptance and speed of stamp archives (``shapepipe_stamps``) on a GOLD run of the demo survey.

Needs a demo run up to the PSF models::

    shapepipe_gold --data DATA --run-root RUN --to Sx_exp_psfex

Targets: ``--targets`` truth objects (default 2,000): truth objects of the
tiles (all those within 25 pixels of a tile edge, the rest at random) and
objects of the exposures' truth that lie on no tile. Prints

- the malformed-table checks (row, duplicated id, missing column): the
  message, and that no archive was started;
- exactness: every tile and exposure stamp against an independent cut of
  the source file at the truth position (tile truth, exposure truth with its
  CCD), the stamp WCS against the truth position, padding at borders;
- a kill and restart (SIGKILL when the first batch file appears, and in the
  middle of the first batch) against an uninterrupted archive;
- the FITS export round trip of ``--export`` targets;
- stamps per second and MB per thousand stamps for 1 and 2 workers (best of
  ``--repeats``, page cache warm, then cold: the input files evicted first)
  and the I/O floor: the time to read once every file the extraction opened
  (raw bytes, and as FITS pixels read into memory), warm and cold, best of
  ``--repeats`` too; the ratios of both wall and CPU times, and the load
  average (run it on a quiet machine, or compare CPU times).

Usage: ``python benchmarks/bench_stamps_archive.py --data DATA --run-output RUN/output``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe_modules.stamps.archive import Archive, batch_files, stamp_bytes
from shapepipe_modules.stamps.cli import main as stamps_main
from shapepipe_modules.stamps.cli import options_from_args
from shapepipe_modules.stamps.extract import PADDED_FLAG
from shapepipe_modules.stamps.targets import read_status_table

SIZE = 51


def build_targets(data: Path, tile_dir: Path, count: int, rng) -> tuple[Table, dict]:
    """Truth targets: border objects of the tiles, random tile objects, objects on no tile."""
    tiles = (data / "tile_list.txt").read_text().split()
    rows = []
    for tile in tiles:
        truth = Table.read(data / "truth" / f"truth_tile-{tile.replace('.', '-')}.fits")
        nx = fits.getheader(tile_dir / f"CFIS_image-{tile.replace('.', '-')}.fits")["NAXIS1"]
        truth["tile"] = tile
        truth["edge"] = np.minimum.reduce([truth["x"] - 0.5, nx + 0.5 - truth["x"], truth["y"] - 0.5,
                                           nx + 0.5 - truth["y"]])
        rows.append(truth["id", "ra", "dec", "x", "y", "tile", "edge"])
    from astropy.table import vstack

    tile_truth = vstack(rows)
    on_tile = set(tile_truth["id"].tolist())
    off = []
    for exposure in (data / "exposure_list.txt").read_text().split():
        truth = Table.read(data / "truth" / f"truth_exp-{exposure}.fits")
        keep = np.array([i not in on_tile for i in truth["id"].tolist()]) & (truth["ccd"] >= 0)
        off.append(truth["id", "ra", "dec"][keep])
    off = vstack(off)
    _, first = np.unique(off["id"], return_index=True)
    off = off[np.sort(first)]
    n_off = min(len(off), count // 20)
    border = np.flatnonzero(tile_truth["edge"] < 25)[: count // 20]
    rest = np.setdiff1d(np.arange(len(tile_truth)), border)
    chosen = np.concatenate([border, rng.choice(rest, size=count - n_off - border.size, replace=False)])
    targets = tile_truth[np.sort(chosen)]
    off = off[rng.choice(len(off), size=n_off, replace=False)]
    info = {"border": int(border.size), "off": n_off, "on": len(targets)}
    return targets, off, info


def write_table(path, targets, off):
    lines = ["id,ra,dec"] + [f"{i},{r!r},{d!r}" for i, r, d in zip(targets["id"].tolist(), targets["ra"].tolist(),
                                                                    targets["dec"].tolist())]
    lines += [f"{i},{r!r},{d!r}" for i, r, d in zip(off["id"].tolist(), off["ra"].tolist(), off["dec"].tolist())]
    Path(path).write_text("\n".join(lines) + "\n")
    return lines


def run_cli(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = stamps_main(args)
    return code, err.getvalue().strip()


def malformed_checks(lines, folder, common):
    print("\nMalformed target tables (each must fail before any extraction)")
    cases = {
        "malformed row": lines[:10] + [lines[10].rsplit(",", 1)[0] + ",12.3.4"] + lines[11:],
        "duplicated id": lines[:500] + [lines[3].split(",")[0] + "," + ",".join(lines[500].split(",")[1:])]
        + lines[501:],
        "missing column": ["id,ra,declination"] + lines[1:],
    }
    for name, body in cases.items():
        path = folder / f"{name.replace(' ', '_')}.csv"
        path.write_text("\n".join(body) + "\n")
        out = folder / f"archive_{name.replace(' ', '_')}"
        code, message = run_cli(["run", str(path), "-o", str(out), *common])
        print(f"  {name:15s} exit {code}, archive started: {out.exists()}; {message}")


def timed_run(table, out, options, workers, compression="gzip") -> dict:
    """One archive, in this process (workers in joblib processes); the summary with ``wall``."""
    from shapepipe_modules.stamps.runner import make_archive

    options = dict(options, N_WORKERS=workers, COMPRESSION=compression)
    start = time.perf_counter()
    summary = make_archive(table, out, options)
    summary["wall"] = time.perf_counter() - start
    return summary


def files_opened(out):
    """Every file the extraction reads, for the I/O floor: recomputed from the archive's slots."""
    files = set()
    with Archive(out) as archive:
        for target in archive.order:
            group, row = archive.group(target)
            tile = group.name.strip("/")
            files.add(("tile", tile))
            ccd = group["ccd"][row]
            for exposure, c in zip(group.attrs["exposures"], ccd.tolist()):
                if c >= 0:
                    files.add((exposure, c))
    return files


def input_paths(files, layout) -> list:
    """Paths of the tile files, CCD files and PSF models behind the slots of an archive."""
    paths = []
    for key in sorted(files):
        if key[0] == "tile":
            band = layout.bands[0]
            paths += [layout.tile_file(band, kind, key[1]) for kind in ("image", "weight", "flag")]
        else:
            paths += [layout.exposure_file(kind, key[0], key[1]) for kind in ("image", "weight", "flag")]
            paths.append(layout.psf_file(key[0], key[1]))
    return [Path(os.path.realpath(p)) for p in paths if p is not None]


def evict(paths):
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED; these files only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def io_floor(paths, cold: bool, repeats: int = 1):
    """Seconds to read every file once: raw bytes, and FITS pixels (astropy, memmap off: every pixel
    read into memory, nothing computed on it; and fitsio, cfitsio's readers, which decompress
    tile-compressed images faster). Best of ``repeats`` (wall), as for the extraction.

    ``cold``: the files are evicted from the page cache before each read.
    Returns ``(raw wall, pixels wall, pixels CPU, bytes, raw CPU, fitsio wall, fitsio CPU)``.
    """
    import fitsio

    def read_raw(path):
        # Every byte into memory, no parsing: the least a reader of these pixels can do.
        with open(path, "rb") as handle:
            buffer = np.empty(os.fstat(handle.fileno()).st_size, dtype=np.uint8)
            handle.readinto(buffer)

    def timed(read):
        """Wall and CPU seconds of ``read`` over every file (evicted first when ``cold``)."""
        if cold:
            evict(paths)
        start, cpu0 = time.perf_counter(), time.process_time()
        for path in paths:
            read(path)
        return time.perf_counter() - start, time.process_time() - cpu0

    size = sum(os.path.getsize(p) for p in paths)
    best = None
    for _ in range(max(1, repeats)):
        raw, raw_cpu = timed(read_raw)
        pixels, pixels_cpu = timed(lambda path: fits.getdata(path, memmap=False))
        fio, fio_cpu = timed(lambda path: fitsio.read(str(path)))  # the first HDU with data, as fits.getdata
        result = (raw, pixels, pixels_cpu, size, raw_cpu, fio, fio_cpu)
        best = result if best is None or result[1] < best[1] else best
    return best


def exactness(out, targets, off, data, layout):
    """Stamps against independent cuts at the truth positions; WCS against the truth."""
    half = SIZE // 2
    truth_exp = {}
    for exposure in (data / "exposure_list.txt").read_text().split():
        t = Table.read(data / "truth" / f"truth_exp-{exposure}.fits")
        truth_exp[exposure] = {i: (c, x, y) for i, c, x, y in zip(t["id"].tolist(), t["ccd"].tolist(),
                                                                  t["x"].tolist(), t["y"].tolist())}
    images = {}

    def image(key):
        if key not in images:
            if key[0] == "tile":
                path = layout.tile_file(layout.bands[0], "image", key[1])
            else:
                path = layout.exposure_file("image", key[0], key[1])
            images[key] = fits.getdata(path)
        return images[key]

    stats = {"stamps": 0, "equal": 0, "unequal": 0, "partial": 0, "padded_ok": 0, "ccd_mismatch": 0,
             "wcs_max": 0.0, "centre_max": 0.0, "absent_seen": 0}
    truth_xy = {int(i): (x, y, t) for i, x, y, t in zip(targets["id"], targets["x"], targets["y"], targets["tile"])}
    with Archive(out) as archive:
        for target in archive.order:
            record = archive.target(target)
            tid = int(target)
            for slot, name in enumerate(record["images"]):
                words = name.split()
                if words[0] == "tile":
                    x, y, tile = truth_xy[tid]
                    key = ("tile", tile)
                else:
                    entry = truth_exp[words[1]].get(tid)
                    seen = entry is not None and entry[0] >= 0
                    if not record["present"][slot]:
                        stats["absent_seen"] += int(seen)
                        continue
                    if not seen or entry[0] != record["ccd"][slot]:
                        stats["ccd_mismatch"] += 1
                        continue
                    _, x, y = entry
                    key = (words[1], int(record["ccd"][slot]))
                stats["stamps"] += 1
                pixels = image(key)
                ix, iy = int(np.floor(x - 0.5)), int(np.floor(y - 0.5))
                rows = np.arange(iy - half, iy + half + 1)
                cols = np.arange(ix - half, ix + half + 1)
                row_ok = (rows >= 0) & (rows < pixels.shape[0])
                col_ok = (cols >= 0) & (cols < pixels.shape[1])
                inside = row_ok[:, None] & col_ok[None, :]
                expected = np.zeros((SIZE, SIZE), dtype=pixels.dtype)
                expected[np.ix_(row_ok, col_ok)] = pixels[np.ix_(rows[row_ok], cols[col_ok])]
                same = np.array_equal(record["data"][slot], expected)
                stats["equal" if same else "unequal"] += 1
                if not inside.all():
                    stats["partial"] += 1
                    padded = (record["flag"][slot] & PADDED_FLAG) != 0
                    stats["padded_ok"] += int(np.array_equal(padded, ~inside)
                                              and np.all(record["weight"][slot][~inside] == 0))
                wcs = WCS(fits.Header.fromstring(record["headers"][slot]))
                px, py = wcs.all_world2pix(record["ra"], record["dec"], 1)
                truth_pos = (x - (ix - half), y - (iy - half))
                stats["wcs_max"] = max(stats["wcs_max"], abs(float(px) - truth_pos[0]), abs(float(py) - truth_pos[1]))
                stats["centre_max"] = max(stats["centre_max"], abs(float(px) - (half + 1)), abs(float(py) - (half + 1)))
    return stats


def compare_archives(a, b) -> tuple[int, int, int]:
    """(targets compared, targets differing, ids present more than once across b's files)."""
    differing = 0
    with Archive(a) as first, Archive(b) as second:  # Archive raises on an id in two files
        if set(first.order) != set(second.order):
            return len(first.order), abs(len(first.order) - len(second.order)), 0
        for target in first.order:
            x, y = first.target(target), second.target(target)
            for name in ("data", "weight", "flag", "psf", "masked", "present", "psf_present", "ccd", "x", "y"):
                if not np.array_equal(x[name], y[name], equal_nan=name in ("x", "y")):
                    differing += 1
                    break
            else:
                differing += int(x["headers"] != y["headers"])
        return len(first.order), differing, 0


def kill_restart(table, out, common, reference, when):
    """Kill the extraction (SIGKILL) when the first batch file appears (``first file``) or 0.5 s after the
    first batch began writing (``mid batch``), restart, compare with the reference archive."""
    command = [sys.executable, "-m", "shapepipe_modules.stamps.cli", "run", str(table), "-o", str(out), *common,
               "--n-workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen_writing = None
    killed_with = None
    while process.poll() is None:
        files = batch_files(out) if out.is_dir() else []
        writing = list(out.glob(".stamps-b*.tmp.h5")) if out.is_dir() else []
        if writing and seen_writing is None:
            seen_writing = time.perf_counter()
        if (when == "first file" and files) or (when == "mid batch" and not files and seen_writing is not None
                                                and time.perf_counter() - seen_writing > 0.5):
            killed_with = [p.name for p in files]
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    before = {p.name: p.stat().st_mtime_ns for p in batch_files(out)} if out.is_dir() else {}
    temporaries = len(list(out.glob(".stamps-*"))) if out.is_dir() else 0
    status_before = read_status_table(out / "targets.csv").counts() if (out / "targets.csv").is_file() else None
    code, message = run_cli(["run", str(table), "-o", str(out), *common, "--n-workers", "1"])
    after = {p.name: p.stat().st_mtime_ns for p in batch_files(out)}
    rewritten = [name for name, mtime in before.items() if after.get(name) != mtime]
    compared, differing, _ = compare_archives(reference, out)
    same_status = (read_status_table(out / "targets.csv").status.tolist()
                   == read_status_table(reference / "targets.csv").status.tolist())
    print(f"  kill at {when!s:>10}: batch files at the kill {killed_with}, temporaries {temporaries}, "
          f"status then {status_before}; restart exit {code}; files rewritten {rewritten or 'none'}; "
          f"{compared} targets compared, {differing} differ; status table identical: {same_status}; "
          f"files after {sorted(after)}")


def export_check(out, folder, count):
    with Archive(out) as archive:
        ids = archive.order[:: max(1, len(archive.order) // count)][:count]
    start = time.perf_counter()
    code, message = run_cli(["export", str(out), str(folder), *ids])
    wall = time.perf_counter() - start
    files = bad = 0
    with Archive(out) as archive:
        for target in ids:
            record = archive.target(target)
            for path in folder.glob(f"{target}.*.fits"):
                files += 1
                with fits.open(path) as hdus:
                    slot = record["images"].index(hdus[0].header["SLOT"])
                    ok = (np.array_equal(hdus[0].data, record["data"][slot])
                          and np.array_equal(hdus["WEIGHT"].data, record["weight"][slot])
                          and np.array_equal(hdus["FLAG"].data, record["flag"][slot])
                          and (not record["psf_present"][slot] or np.array_equal(hdus["PSF"].data, record["psf"][slot])))
                    a = WCS(hdus[0].header).all_pix2world([[1.0, 1.0], [51.0, 51.0]], 1)
                    b = WCS(fits.Header.fromstring(record["headers"][slot])).all_pix2world([[1.0, 1.0], [51.0, 51.0]], 1)
                    ok = ok and np.allclose(a, b, rtol=0, atol=1e-11)
                    bad += int(not ok)
    expected = 0
    with Archive(out) as archive:
        expected = sum(int(archive.target(t)["present"].sum()) for t in ids)
    print(f"\nFITS export: exit {code}, {len(ids)} targets, {files} files (expected {expected}), "
          f"{bad} differ from the archive (pixels of image, weight, flag, PSF; WCS at two corners); {wall:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the simulated demo survey")
    parser.add_argument("--run-output", type=Path, required=True, help="OUTPUT_DIR of the GOLD run ($SP_RUN/output)")
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--export", type=int, default=50, help="targets exported to FITS")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per worker count (best kept)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: kill, speed, exact, lzf")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    rng = np.random.default_rng(18)
    common = ["--run-output", str(args.run_output), "--batch-size", "1", "--stamp-size", str(SIZE),
              "--quicklook", "0"]
    ns = argparse.Namespace(run_output=args.run_output)
    from shapepipe_modules.stamps.layout import layout_from_options
    from shapepipe_modules.stamps.runner import OPTIONS

    for option in OPTIONS:
        setattr(ns, option.name, None)
    ns.STAMP_SIZE = str(SIZE)
    options = options_from_args(ns)
    options.update(BATCH_SIZE=1, QUICKLOOK=0)
    layout = layout_from_options(options)

    with tempfile.TemporaryDirectory(prefix="bench_stamps_") as tmp:
        tmp = Path(tmp)
        targets, off, info = build_targets(args.data, layout.tile_dirs[0], args.targets, rng)
        table = tmp / "targets.csv"
        lines = write_table(table, targets, off)
        print(f"{len(lines) - 1} truth targets: {info['on']} on the tiles ({info['border']} within 25 px of an "
              f"edge), {info['off']} on no tile; stamps {SIZE} x {SIZE}, one batch file per tile")
        malformed_checks(lines, tmp, common)

        print("\nSpeed (stamps = tile and exposure stamps written; CPU = CPU seconds of the batches over all "
              "workers; cold: the input files evicted from the page cache first)")
        print(f"  {'workers':>7}  {'compression':>11}  {'cache':>5}  {'wall s':>7}  {'CPU s':>6}  {'stamps':>6}  "
              f"{'stamps/s':>8}  {'stamps/CPU s':>12}  {'MB':>6}  {'MB/1000 stamps':>14}")
        references, results = {}, {}
        warmup = tmp / "archive_warmup"
        timed_run(table, warmup, options, 1, "gzip")  # imports, numba cache, page cache
        # The 2-worker pool (kept by joblib between runs) starts and imports here, as it would once for a
        # long target list; its start is timed apart.
        start = time.perf_counter()
        timed_run(table, tmp / "archive_warmup2", options, 2, "gzip")
        print(f"  (start of a 2-worker pool and a first archive: {time.perf_counter() - start:.1f} s wall, not counted)")
        load_before = os.getloadavg()
        inputs = input_paths(files_opened(warmup), layout)
        variants = [(1, "gzip", "warm"), (2, "gzip", "warm"), (1, "gzip", "cold"), (2, "gzip", "cold")]
        variants += [] if "lzf" in skip else [(1, "lzf", "warm"), (1, "none", "warm")]
        for workers, compression, cache in variants:
            best = None
            for repeat in range(args.repeats):
                out = tmp / f"archive_w{workers}_{compression}_{cache}_{repeat}"
                if cache == "cold":
                    evict(inputs)
                result = timed_run(table, out, options, workers, compression)
                best = result if best is None or result["wall"] < best["wall"] else best
            references[(workers, compression, cache)] = out
            results[(workers, compression, cache)] = best
            stamps, size = best["stamps"], stamp_bytes(out) / 1e6
            print(f"  {workers:>7}  {compression:>11}  {cache:>5}  {best['wall']:7.2f}  {best['batch_cpu_seconds']:6.2f}  "
                  f"{stamps:6d}  {stamps / best['wall']:8.0f}  {stamps / best['batch_cpu_seconds']:12.0f}  {size:6.1f}  "
                  f"{size / stamps * 1000:14.2f}   (done {best['done']}, failed {best['failed']})")
        reference = references[(1, "gzip", "warm")]
        for cache in ("warm", "cold"):
            raw, pixels, pixels_cpu, size, raw_cpu, fio, fio_cpu = io_floor(inputs, cache == "cold", args.repeats)
            ratio = "; ".join(f"{w} worker(s) {c}: wall {results[(w, c, cache)]['wall'] / pixels:.1f}x, "
                              f"CPU {results[(w, c, cache)]['batch_cpu_seconds'] / pixels_cpu:.1f}x"
                              for w, c, k in results if k == cache)
            raw_ratio = "; ".join(f"{w} worker(s) {c}: wall {results[(w, c, cache)]['wall'] / raw:.1f}x, "
                                  f"CPU {results[(w, c, cache)]['batch_cpu_seconds'] / raw_cpu:.1f}x"
                                  for w, c, k in results if k == cache)
            print(f"  I/O floor ({cache}): {len(inputs)} files, {size / 1e6:.0f} MB read once: raw bytes {raw:.2f} s "
                  f"wall, {raw_cpu:.2f} s CPU; as FITS pixels (astropy) {pixels:.2f} s wall, {pixels_cpu:.2f} s CPU")
            fio_ratio = "; ".join(f"{w} worker(s) {c}: wall {results[(w, c, cache)]['wall'] / fio:.1f}x, "
                                  f"CPU {results[(w, c, cache)]['batch_cpu_seconds'] / fio_cpu:.1f}x"
                                  for w, c, k in results if k == cache)
            print(f"    as FITS pixels (fitsio) {fio:.2f} s wall, {fio_cpu:.2f} s CPU")
            print(f"    extraction / FITS-pixel floor (astropy): {ratio}")
            print(f"    extraction / FITS-pixel floor (fitsio): {fio_ratio}")
            print(f"    extraction / raw-byte floor: {raw_ratio}")
        load_after = os.getloadavg()
        print(f"  load average (1, 5, 15 min) before the timed runs {load_before[0]:.1f} {load_before[1]:.1f} "
              f"{load_before[2]:.1f}, after {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}; "
              f"{os.cpu_count()} cores")

        table_status = read_status_table(reference / "targets.csv")
        reasons = {}
        for text in table_status.status[table_status.failed()].tolist():
            reasons[text.split("(")[0]] = reasons.get(text.split("(")[0], 0) + 1
        print(f"  failure reasons: {reasons}")
        compared, differing, _ = compare_archives(reference, references[(2, "gzip", "warm")])
        print(f"  1 vs 2 workers: {compared} targets, {differing} differ")

        if "exact" not in skip:
            stats = exactness(reference, targets, off, args.data, layout)
            print("\nExactness against independent cuts at the truth positions")
            print(f"  stamps checked {stats['stamps']}: pixel-equal {stats['equal']}, unequal {stats['unequal']}; "
                  f"crossing a border {stats['partial']} (padding zero weight + flag: {stats['padded_ok']}); "
                  f"exposure CCD differing from the truth {stats['ccd_mismatch']}; exposure slots absent although "
                  f"the truth has the object on a CCD {stats['absent_seen']}")
            print(f"  stamp WCS vs truth position: max |d| = {stats['wcs_max']:.4f} px; target to stamp centre: "
                  f"max |d| = {stats['centre_max']:.3f} px (central pixel contains the target: <= 0.5)")

        if "kill" not in skip:
            print("\nKill (SIGKILL) and restart, 1 worker, against the uninterrupted archive")
            kill_restart(table, tmp / "killed_first_file", common, reference, "first file")
            kill_restart(table, tmp / "killed_mid_batch", common, reference, "mid batch")

        export_check(reference, tmp / "fits", args.export)


if __name__ == "__main__":
    main()
