"""Target tables: reading and checking a list of targets, and the status table of an archive.

A target table is a CSV file (a header line, then one target per line) or
a FITS binary table (first table HDU) with at least an identifier, a right
ascension and a declination in degrees; the column names are options.
Every row is checked before any extraction: a missing column, a row with
the wrong number of fields, an empty id, a coordinate that is not a finite
number (or a declination outside [-90, 90]) and a duplicated id are
errors naming the file, the line (FITS: the row) and the column.

Identifiers are kept as text (stripped), so integer and string ids work
alike and an id is written back exactly as read.

The status table (``targets.csv`` in the archive folder) holds one row per
target: ``id, ra, dec, line, tile, batch, status`` where ``line`` is the
target's line in the input table, ``tile`` its tile (empty outside every
tile), ``batch`` the batch of tiles it belongs to (-1: none) and
``status`` one of ``new``, ``done`` or ``failed: <reason>``. It is
rewritten atomically (:func:`write_status_table`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path

STATUS_NEW = "new"
STATUS_DONE = "done"
FAILED_PREFIX = "failed: "
STATUS_COLUMNS = ("id", "ra", "dec", "line", "tile", "batch", "status")


class TargetTableError(ValueError):
    """A target or status table is unusable; the message names the file, the line and the column."""


@dataclass
class Targets:
    """Targets read from a table.

    Attributes
    ----------
    ids : ndarray of str
    ra, dec : ndarray of float
        Degrees; RA wrapped to [0, 360).
    line : ndarray of int
        Line of each target in a CSV file (the header is line 1), or its
        1-based row in a FITS table.
    path : Path
        The table read.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    line: np.ndarray
    path: Path

    def __len__(self) -> int:
        return int(self.ids.size)


def _find_column(names, wanted: str, path, kind: str, where: str) -> int:
    """Index of a column: exact name first, else a unique case-insensitive match."""
    if wanted in names:
        return names.index(wanted)
    folded = [i for i, name in enumerate(names) if name.strip().lower() == wanted.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    raise TargetTableError(f"{path}: {where}: no column {wanted!r} ({kind} column; columns: "
                           f"{', '.join(names) or 'none'})")


def _number(text, path, line, column, place="line"):
    try:
        value = float(str(text).strip())
    except ValueError:
        raise TargetTableError(f"{path}: {place} {line}, column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TargetTableError(f"{path}: {place} {line}, column {column!r}: {text!r} is not a finite number")
    return value


def _check_rows(path, ids, ra, dec, lines, columns, place):
    """Shared checks of ids, RA and Dec; raise on the first bad row."""
    id_col, ra_col, dec_col = columns
    seen = {}
    for target, line, declination in zip(ids, lines, dec):
        if not target:
            raise TargetTableError(f"{path}: {place} {line}, column {id_col!r}: empty id")
        first = seen.setdefault(target, line)
        if first != line:
            raise TargetTableError(f"{path}: {place} {line}, column {id_col!r}: id {target!r} "
                                   f"duplicates {place} {first}")
        if not -90.0 <= declination <= 90.0:
            raise TargetTableError(f"{path}: {place} {line}, column {dec_col!r}: declination "
                                   f"{declination!r} outside [-90, 90]")


def read_csv_targets(path, id_column="id", ra_column="ra", dec_column="dec") -> Targets:
    """Read and check a CSV target table (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TargetTableError(f"{path}: cannot read the target table ({error})") from error
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise TargetTableError(f"{path}: line 1: empty file, expected a header line naming the columns") from None
    header = [name.strip() for name in header]
    where = "line 1 (header)"
    index = [_find_column(header, name, path, kind, where)
             for name, kind in ((id_column, "id"), (ra_column, "RA"), (dec_column, "Dec"))]
    names = [header[i] for i in index]
    ids, ra, dec, lines = [], [], [], []
    last_line = 1
    for row in reader:
        line = last_line + 1
        last_line = reader.line_num
        if not row or all(not field.strip() for field in row):
            continue  # blank lines are allowed (e.g. a trailing newline)
        if len(row) != len(header):
            column = header[len(row)] if len(row) < len(header) else f"#{len(header) + 1}"
            raise TargetTableError(f"{path}: line {line}, column {column!r}: {len(row)} fields, "
                                   f"the header has {len(header)}")
        ids.append(row[index[0]].strip())
        ra.append(_number(row[index[1]], path, line, names[1]))
        dec.append(_number(row[index[2]], path, line, names[2]))
        lines.append(line)
    ra_array = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec_array = np.asarray(dec, dtype=float)
    _check_rows(path, ids, ra_array, dec_array, lines, names, "line")
    return Targets(np.asarray(ids, dtype=object).astype(str), ra_array, dec_array,
                   np.asarray(lines, dtype=np.int64), path)


def read_fits_targets(path, id_column="id", ra_column="ra", dec_column="dec") -> Targets:
    """Read and check the first table HDU of a FITS target table (rows are 1-based)."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdus:
            tables = [hdu for hdu in hdus if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))]
            if not tables:
                raise TargetTableError(f"{path}: no table HDU")
            data = tables[0].data
            names = list(tables[0].columns.names)
            where = f"HDU {tables[0].name or 1}"
            index = [_find_column(names, name, path, kind, where)
                     for name, kind in ((id_column, "id"), (ra_column, "RA"), (dec_column, "Dec"))]
            columns = [names[i] for i in index]
            raw_ids = np.asarray(data[columns[0]]) if data is not None else np.zeros(0)
            raw_ra = np.asarray(data[columns[1]]) if data is not None else np.zeros(0)
            raw_dec = np.asarray(data[columns[2]]) if data is not None else np.zeros(0)
    except OSError as error:
        raise TargetTableError(f"{path}: cannot read as FITS ({error})") from error
    if raw_ids.dtype.kind == "f":
        if not np.all(np.isfinite(raw_ids)) or np.any(raw_ids != np.round(raw_ids)):
            bad = int(np.flatnonzero(~np.isfinite(raw_ids) | (raw_ids != np.round(raw_ids)))[0])
            raise TargetTableError(f"{path}: row {bad + 1}, column {columns[0]!r}: id {raw_ids[bad]!r} "
                                   "is not an integer")
        raw_ids = raw_ids.astype(np.int64)
    ids = np.char.strip(raw_ids.astype(str)) if raw_ids.size else np.zeros(0, dtype=str)
    rows = np.arange(1, raw_ids.size + 1)
    values = []
    for raw, column in ((raw_ra, columns[1]), (raw_dec, columns[2])):
        if raw.dtype.kind not in "iuf":
            for row, item in zip(rows, raw):
                _number(item, path, row, column, place="row")
        number = raw.astype(float)
        bad = np.flatnonzero(~np.isfinite(number))
        if bad.size:
            raise TargetTableError(f"{path}: row {bad[0] + 1}, column {column!r}: {raw[bad[0]]!r} "
                                   "is not a finite number")
        values.append(number)
    ra = np.mod(values[0], 360.0)
    _check_rows(path, ids.tolist(), ra, values[1], rows.tolist(), columns, "row")
    return Targets(ids.astype(str), ra, values[1], rows.astype(np.int64), path)


def read_targets(path, id_column="id", ra_column="ra", dec_column="dec") -> Targets:
    """Read a target table: FITS for ``.fits``/``.fit``/``.fits.gz`` names, CSV otherwise.

    Raises
    ------
    TargetTableError
        Naming the file, the line (or row) and the column of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise TargetTableError(f"{path}: the target table does not exist")
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        return read_fits_targets(path, id_column, ra_column, dec_column)
    return read_csv_targets(path, id_column, ra_column, dec_column)


# ---------------------------------------------------------------------------
# The status table.


@dataclass
class StatusTable:
    """One row per target of an archive (see the module docstring)."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    line: np.ndarray
    tile: np.ndarray
    batch: np.ndarray
    status: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.size)

    def done(self) -> np.ndarray:
        return self.status == STATUS_DONE

    def failed(self) -> np.ndarray:
        return np.char.startswith(self.status.astype(str), FAILED_PREFIX)

    def counts(self) -> dict:
        """Numbers of new, done and failed targets."""
        failed = self.failed()
        done = self.done()
        return {"targets": len(self), "done": int(done.sum()), "failed": int(failed.sum()),
                "new": int((~done & ~failed).sum())}


def new_status_table(targets: Targets, tile, batch, status) -> StatusTable:
    """Status table of freshly assigned targets."""
    return StatusTable(targets.ids.astype(object), targets.ra, targets.dec, targets.line,
                       np.asarray(tile, dtype=object), np.asarray(batch, dtype=np.int64),
                       np.asarray(status, dtype=object))


def write_status_table(path, table: StatusTable) -> None:
    """Write the status table atomically (a complete file or the previous one)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATUS_COLUMNS)
    for row in zip(table.ids, table.ra.tolist(), table.dec.tolist(), table.line.tolist(), table.tile,
                   table.batch.tolist(), table.status):
        target, ra, dec, line, tile, batch, status = row
        writer.writerow((target, repr(ra), repr(dec), line, tile, batch, status))
    with atomic_path(path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")


def read_status_table(path) -> StatusTable:
    """Read a status table written by :func:`write_status_table`.

    Raises
    ------
    TargetTableError
        If the file is missing, lacks a column or holds a malformed line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TargetTableError(f"{path}: cannot read the status table ({error})") from error
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    missing = [name for name in STATUS_COLUMNS if name not in header]
    if missing:
        raise TargetTableError(f"{path}: line 1 (header): no column {', '.join(missing)}")
    index = [header.index(name) for name in STATUS_COLUMNS]
    columns = {name: [] for name in STATUS_COLUMNS}
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise TargetTableError(f"{path}: line {reader.line_num}, column 'status': {len(row)} fields, "
                                   f"the header has {len(header)}")
        for name, i in zip(STATUS_COLUMNS, index):
            columns[name].append(row[i])
    try:
        return StatusTable(
            np.asarray(columns["id"], dtype=object), np.asarray(columns["ra"], dtype=float),
            np.asarray(columns["dec"], dtype=float), np.asarray(columns["line"], dtype=np.int64),
            np.asarray(columns["tile"], dtype=object), np.asarray(columns["batch"], dtype=np.int64),
            np.asarray(columns["status"], dtype=object))
    except ValueError as error:
        raise TargetTableError(f"{path}: a number column holds text ({error})") from error
