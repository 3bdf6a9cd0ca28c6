"""Joining the split outputs of one tile back into one catalogue.

A tile measured in several jobs (``ngmix`` with ``ID_OBJ_MIN`` /
``ID_OBJ_MAX``) gives one file per id range, each with the same HDUs and
columns. :func:`merge_split_catalogues` concatenates every table HDU over
the files and sorts its rows by ``id``; it refuses to merge when

- two files hold the same id, or their declared id ranges overlap
  (a range doubled);
- the files' headers give the tile's object count (``NOBJTILE``, written
  by ``ngmix``) and the merged rows are fewer (a range missing; the message
  lists the gaps between the declared ranges);
- HDU names or columns differ between files.

Files without these header cards (ShapePipe's ngmix output) are checked for
doubled ids only.

Where the split files are: ShapePipe derived them from the first one by
replacing the first ``1`` of its path with ``2 ... N_SPLIT_MAX``
(:func:`shapepipe_split_paths`); the module also accepts the folders
explicitly (``SPLIT_INPUT_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shapepipe.errors import JobError


class MergeError(JobError):
    """The split catalogues cannot be merged safely (the message names the files)."""


ID_COLUMN = "id"


def shapepipe_split_paths(first_path, n_split_max: int) -> list[Path]:
    """ShapePipe's split file names: the first ``1`` of the path replaced by 2..N.

    The rule is applied to the path relative to the working directory when
    the file lies below it (as in ShapePipe's configurations, e.g.
    ``./output/run_sp_tile_ngmix_Ng1u/ngmix_runner/output/ngmix-244-252.fits``).

    Returns
    -------
    list of pathlib.Path
        The first path, then one candidate per split (not checked for existence).
    """
    first = Path(first_path)
    text = str(first)
    relative = os.path.relpath(first)
    if not relative.startswith(".."):
        text = relative
    if "1" not in text and n_split_max > 1:
        raise MergeError(f"{first}: no '1' in the path to replace by the split number (N_SPLIT_MAX = "
                         f"{n_split_max}); give the split folders with SPLIT_INPUT_DIR")
    return [first] + [Path(text.replace("1", str(n), 1)) for n in range(2, n_split_max + 1)]


def _read(path: Path):
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            header = hdus[0].header.copy()
            tables = {}
            for hdu in hdus[1:]:
                if not isinstance(hdu, fits.BinTableHDU):
                    raise MergeError(f"{path}: HDU {hdu.name} is not a binary table")
                # An empty table has no data; keep its columns.
                tables[hdu.name] = (np.array(hdu.data) if hdu.data is not None
                                    else np.zeros(0, dtype=hdu.columns.dtype))
    except OSError as error:
        raise MergeError(f"cannot read split catalogue {path}: {error}") from error
    return header, tables


def _declared_range(header, path):
    if "ID_MIN" not in header or "ID_MAX" not in header:
        return None
    low, high = int(header["ID_MIN"]), int(header["ID_MAX"])
    low = low if low > 0 else -np.inf
    high = high if high > 0 else np.inf
    if high < low:
        raise MergeError(f"{path}: ID_MAX {header['ID_MAX']} < ID_MIN {header['ID_MIN']}")
    return low, high


def _gaps(ranges, id_low, id_high) -> list[str]:
    """Id intervals of [id_low, id_high] not covered by the (sorted) ranges."""
    gaps = []
    cursor = id_low
    for low, high in sorted(ranges):
        if low > cursor:
            gaps.append(f"{int(cursor)}-{int(low) - 1}")
        cursor = max(cursor, high + 1)
    if cursor <= id_high:
        gaps.append(f"{int(cursor)}-{int(id_high)}")
    return gaps


def merge_split_catalogues(paths, logger=None):
    """Merge the split catalogues of one tile.

    Parameters
    ----------
    paths : sequence of path-like
        The split files (existing), in any order.
    logger : logging.Logger, optional

    Returns
    -------
    header : astropy.io.fits.Header
        Primary header of the first file with ``ID_MIN``/``ID_MAX`` set to
        the union of the ranges and ``NSPLIT`` added.
    tables : dict
        HDU name to the merged structured array (rows sorted by ``id``).

    Raises
    ------
    MergeError
        On doubled ids or ranges, missing objects, or files that differ in
        layout.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise MergeError("no split catalogue to merge")
    parts = [(path, *_read(path)) for path in paths]
    first_path, first_header, first_tables = parts[0]
    names = list(first_tables)
    for path, _, tables in parts[1:]:
        if list(tables) != names:
            raise MergeError(f"{path}: HDUs {list(tables)} differ from {first_path.name}'s {names}")
        for name in names:
            a, b = first_tables[name], tables[name]
            if a.dtype.names != b.dtype.names:
                raise MergeError(f"{path}: columns of HDU {name} differ from {first_path.name}")

    # Declared ranges: overlaps mean a range was measured twice.
    ranges = []
    for path, header, _ in parts:
        declared = _declared_range(header, path)
        if declared is not None:
            ranges.append((declared, path))
    ranges.sort(key=lambda item: item[0])
    for (range_a, path_a), (range_b, path_b) in zip(ranges, ranges[1:]):
        if range_b[0] <= range_a[1]:
            raise MergeError(f"id ranges overlap: {path_a} (ID_MIN/ID_MAX {range_a}) and {path_b} "
                             f"(ID_MIN/ID_MAX {range_b}); each id range must be merged once")

    merged = {}
    for name in names:
        data = np.concatenate([tables[name] for _, _, tables in parts])
        if data.dtype.names and ID_COLUMN in data.dtype.names:
            ids = data[ID_COLUMN]
            order = np.argsort(ids, kind="stable")
            data = data[order]
            doubled = np.flatnonzero(data[ID_COLUMN][1:] == data[ID_COLUMN][:-1])
            if doubled.size:
                example = data[ID_COLUMN][doubled[:5]].tolist()
                owners = [str(path) for path, _, tables in parts if np.isin(tables[name][ID_COLUMN], example).any()]
                raise MergeError(f"HDU {name}: {doubled.size} id(s) appear in several split catalogues "
                                 f"(e.g. {example}) in {', '.join(owners)}")
        merged[name] = data

    # Completeness: every tile object must be somewhere.
    counts = {int(header["NOBJTILE"]) for _, header, _ in parts if "NOBJTILE" in header}
    if len(counts) > 1:
        raise MergeError(f"split catalogues {', '.join(map(str, paths))} come from different tile catalogues "
                         f"(NOBJTILE {sorted(counts)})")
    if counts and names:
        expected = counts.pop()
        found = len(merged[names[0]])
        if found != expected:
            id_low = int(first_header.get("IDTILEMN", 0))
            id_high = int(first_header.get("IDTILEMX", 0))
            gaps = _gaps([r for r, _ in ranges], id_low, id_high)
            raise MergeError(f"{found} objects in the split catalogues {', '.join(map(str, paths))} but the tile "
                             f"has {expected}: id range(s) missing ({', '.join(gaps) or 'none declared'})")
    elif logger is not None:
        logger.warning("split catalogues lack NOBJTILE: completeness cannot be checked")

    header = first_header.copy()
    if ranges:
        lows = [r[0] for r, _ in ranges]
        highs = [r[1] for r, _ in ranges]
        header["ID_MIN"] = int(min(lows)) if np.isfinite(min(lows)) else -1
        header["ID_MAX"] = int(max(highs)) if np.isfinite(max(highs)) else -1
    header["NSPLIT"] = (len(paths), "split catalogues merged")
    return header, merged


def write_merged(path, header, tables) -> Path:
    """Write the merged HDUs (same names and order) atomically."""
    from shapepipe_modules.io.tables import write_fits_tables

    return write_fits_tables(path, [(name, data, None) for name, data in tables.items()],
                             primary_header=header)
