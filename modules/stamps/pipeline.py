"""Making an archive: assignment, resumable parallel extraction, status bookkeeping.

:func:`prepare` reads and checks the target table (every row, before any
extraction), assigns tiles and batches and writes the status table;
:func:`extract` cuts the batches not yet done, in parallel through the
project's executors (:mod:`shapepipe.cluster.executor`), and rewrites the status
table atomically each time a batch file is complete.

Restarts: a batch file appears only when complete (atomic rename), and the
status table is rewritten after it. A run killed at any point leaves
complete batch files, a status table and possibly a temporary file; the next
run removes temporaries, marks the targets of every batch file done (or
failed, as recorded in the file) whatever the status table says, and cuts
only the rest. So no target is cut twice, and the archive is the same as
that of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from shapepipe.atomic import write_text_atomic

from .archive import SETTINGS_NAME, STATUS_NAME, batch_file_name, batch_files, file_outcome
from .assign import OUTSIDE, assign_tiles, batches_of
from .extract import Settings, write_batch
from .targets import (FAILED_PREFIX, STATUS_DONE, STATUS_NEW, new_status_table, read_status_table,
                      read_targets, write_status_table)

LOCK_NAME = ".lock"


class ArchiveBusy(RuntimeError):
    """Another process is extracting into the same archive."""


def prepare(targets_path, archive_dir, layout, settings: Settings, columns=("id", "ra", "dec"),
            rule: str = "footprint", batch_size: int = 10, logger=None):
    """Read the target table, assign tiles and batches, write the status table.

    An archive folder that already has a status table is resumed as it is
    (the target table is not read again).

    Returns
    -------
    StatusTable
    """
    logger = logger or logging.getLogger(__name__)
    archive_dir = Path(archive_dir)
    status_path = archive_dir / STATUS_NAME
    if status_path.is_file():
        table = read_status_table(status_path)
        logger.info("%s: resuming (%s)", archive_dir, table.counts())
        return table
    targets = read_targets(targets_path, *columns)
    tiles, run_tiles = assign_tiles(targets.ra, targets.dec, layout, rule)
    if not run_tiles:
        raise FileNotFoundError(f"no tile image {layout.bands[0].image}-XXX-YYY{layout.ext} in "
                                f"{', '.join(str(d) for d in layout.tile_dirs)}")
    batch = batches_of(tiles, batch_size)
    status = np.where(tiles == "", FAILED_PREFIX + OUTSIDE, STATUS_NEW).astype(object)
    table = new_status_table(targets, tiles, batch, status)
    archive_dir.mkdir(parents=True, exist_ok=True)
    record = {"targets": str(Path(targets_path).resolve()), "columns": list(columns), "rule": rule,
              "batch_size": int(batch_size), "run_tiles": run_tiles, "settings": asdict(settings),
              "layout": {k: str(v) for k, v in asdict(layout).items()}}
    write_text_atomic(archive_dir / SETTINGS_NAME, json.dumps(record, indent=1) + "\n")
    write_status_table(status_path, table)
    logger.info("%s: %d targets, %d on %d tiles in %d batches, %d outside every tile", archive_dir,
                len(table), int((tiles != "").sum()), len({t for t in tiles if t}), int(batch.max(initial=-1) + 1),
                int((tiles == "").sum()))
    return table


def reconcile(archive_dir, table) -> int:
    """Set the status of the targets of every batch file from the file; remove stale temporaries.

    Returns
    -------
    int
        Targets whose status changed.
    """
    archive_dir = Path(archive_dir)
    for stale in archive_dir.glob(".stamps-b*.tmp.h5"):
        stale.unlink()
    row_of = {target: i for i, target in enumerate(table.ids.tolist())}
    changed = 0
    for path in batch_files(archive_dir):
        done, failed = file_outcome(path)
        for target in done:
            i = row_of.get(target)
            if i is not None and table.status[i] != STATUS_DONE:
                table.status[i] = STATUS_DONE
                changed += 1
        for target, reason in failed.items():
            i = row_of.get(target)
            if i is not None and table.status[i] == STATUS_NEW:
                table.status[i] = FAILED_PREFIX + reason
                changed += 1
    return changed


def _lock(archive_dir):
    from shapepipe.records import process_alive

    path = Path(archive_dir) / LOCK_NAME
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and process_alive(pid):
                raise ArchiveBusy(f"{archive_dir}: process {pid} is extracting into this archive "
                                  f"(remove {path} if it is gone)") from None
            path.unlink(missing_ok=True)
            continue
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        return path
    raise ArchiveBusy(f"{archive_dir}: cannot take the lock {path}")


def _batch_task(task) -> dict:
    """Executor function: one batch file (runs in a worker)."""
    extra = task.extra
    logger = logging.getLogger(f"shapepipe_stamps.batch{extra['batch']}")
    row = {"module_run": task.module_run, "number": task.number, "batch": extra["batch"]}
    try:
        summary = write_batch(extra["path"], extra["tiles"], extra["layout"], extra["settings"],
                              extra["batch"], logger)
    except Exception as error:  # a batch must report, never lose the others
        row.update(status="failed", error=f"{type(error).__name__}: {error}")
        return row
    row.update(status="done", **summary)
    return row


def _next_part(archive_dir, batch) -> int:
    parts = [int(p.name.split("-p")[1].split(".")[0]) for p in batch_files(archive_dir)
             if p.name.startswith(f"stamps-b{int(batch):05d}-")]
    return max(parts, default=-1) + 1


def extract(archive_dir, layout, settings: Settings, workers: int = 1, retry_failed: bool = False,
            logger=None, progress=None) -> dict:
    """Cut every batch with targets left to do; update the status table as batches finish.

    Parameters
    ----------
    archive_dir : path-like
        Folder prepared by :func:`prepare`.
    layout : Layout
    settings : Settings
    workers : int
        Batches cut in parallel (joblib processes).
    retry_failed : bool
        Also cut again the failed targets that have a tile.
    progress : callable, optional
        Called with each finished batch's row.

    Returns
    -------
    dict
        Counts (``done``, ``failed``, ``new``), ``batches`` cut, ``stamps``, ``bytes`` written,
        ``seconds`` (wall) and ``batch_cpu_seconds`` (CPU of the batches, over every worker).
    """
    from shapepipe.cluster.executor import JoblibExecutor, run_all
    from shapepipe.jobs import Task

    logger = logger or logging.getLogger(__name__)
    archive_dir = Path(archive_dir)
    start = time.perf_counter()
    lock = _lock(archive_dir)
    try:
        status_path = archive_dir / STATUS_NAME
        table = read_status_table(status_path)
        if reconcile(archive_dir, table):
            write_status_table(status_path, table)
        todo = table.status == STATUS_NEW
        if retry_failed:
            todo |= table.failed() & (table.tile != "")
        tasks = []
        for batch in np.unique(table.batch[todo & (table.batch >= 0)]).tolist():
            members = np.flatnonzero(todo & (table.batch == batch))
            tiles = []
            for tile in sorted(set(table.tile[members].tolist())):
                rows = members[table.tile[members] == tile]
                tiles.append((tile, table.ids[rows].astype(str), table.ra[rows], table.dec[rows]))
            path = archive_dir / batch_file_name(batch, _next_part(archive_dir, batch))
            tasks.append(Task(module="stamps", module_run="stamps", number=f"-b{batch:05d}", inputs=[],
                              input_table={}, options={}, function=(__name__, "_batch_task"), module_dirs=(),
                              output_dir=str(archive_dir), log_dir=str(archive_dir / "logs"),
                              run_dir=str(archive_dir),
                              extra={"batch": batch, "path": str(path), "tiles": tiles, "layout": layout,
                                     "settings": settings}))
        row_of = {target: i for i, target in enumerate(table.ids.tolist())}
        stamps = written = 0
        cpu = 0.0
        executor = JoblibExecutor(workers)
        logger.info("%s: %d batch(es) to cut with %s", archive_dir, len(tasks), executor.describe())
        for task, row in run_all(executor, _batch_task, tasks):
            if row.get("status") == "done":
                for target in row["done"]:
                    table.status[row_of[target]] = STATUS_DONE
                for target, reason in row["failed"].items():
                    table.status[row_of[target]] = FAILED_PREFIX + reason
                stamps += row["stamps"]
                written += row["bytes"]
                cpu += row["cpu_seconds"]
            else:
                reason = f"batch {task.extra['batch']}: {row.get('error', 'lost')}"
                logger.error("%s", reason)
                for _, ids, _, _ in task.extra["tiles"]:
                    for target in ids.tolist():
                        table.status[row_of[target]] = FAILED_PREFIX + reason
            write_status_table(status_path, table)
            if progress is not None:
                progress(row)
    finally:
        lock.unlink(missing_ok=True)
    result = table.counts()
    result.update(batches=len(tasks), stamps=stamps, bytes=written, seconds=time.perf_counter() - start,
                  batch_cpu_seconds=cpu)
    return result
