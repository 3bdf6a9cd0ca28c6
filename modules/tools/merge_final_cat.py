"""``merge_final_cat``: concatenate the final catalogues of many tiles.

Reads every ``<name_base>*.fits`` of a directory (``final_cat-244-252.fits``
from ``make_catalog``; HDU ``RESULTS``, ShapePipe's HDU 1), keeps the
columns listed in a param file (one name per line, ``#`` comments, as
ShapePipe's ``final_cat.param``; all columns without it), and writes them
into one file: FITS (HDU ``RESULTS``) or, for a ``.npy`` name, a numpy
structured array as ShapePipe wrote (readable with ``allow_pickle=False``).

Every file must hold the selected columns with the same type and shape;
otherwise the merge stops with a message naming the file and the columns.
Strings may differ in length (the longest is kept). ``-l`` restricts the
merge to the tiles of a list.

Python API: :func:`read_param_file`, :func:`find_catalogues`,
:func:`merge_catalogues`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shapepipe_modules import cfis

from ._common import ToolError, read_lines, run, warn
from shapepipe.arguments import ArgumentParser

PROGRAM = "merge_final_cat"
HDU_NAME = "RESULTS"


def read_param_file(path) -> list[str]:
    """Column names of a param file (one per line, ``#`` comments).

    Raises
    ------
    ToolError
        If a name is repeated (naming file and lines) or the file is empty.
    """
    names: dict[str, int] = {}
    for number, line in read_lines(path):
        if len(line.split()) != 1:
            raise ToolError(f"{path}:{number}: one column name per line expected, got {line!r}")
        if line in names:
            raise ToolError(f"{path}:{number}: column {line!r} already listed on line {names[line]}")
        names[line] = number
    if not names:
        raise ToolError(f"param file {path} lists no column")
    return list(names)


def find_catalogues(input_dir, name_base: str = "final_cat", tiles=None) -> list[Path]:
    """``<name_base>*.fits`` files of a directory, sorted, optionally only the tiles listed."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ToolError(f"input directory {input_dir} does not exist")
    paths = sorted(p for p in input_dir.glob(f"{name_base}*.fits") if not p.name.startswith("."))
    if tiles is not None:
        wanted = set(tiles)
        kept = []
        for path in paths:
            try:
                ident = cfis.parse_tile_id(path.name)
            except ValueError:
                continue
            if ident in wanted:
                kept.append(path)
        paths = kept
    return paths


def _column_signature(dtype: np.dtype) -> tuple:
    """Type kind and shape, with byte order and string length left out."""
    base = dtype.base if dtype.shape else dtype
    size = None if base.kind in "SU" else base.itemsize
    return base.kind, size, dtype.shape


def _read_columns(path: Path, hdu, columns):
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            data = hdul[hdu].data
            if data is None or not hasattr(data, "columns"):
                raise ToolError(f"{path}: HDU {hdu!r} is not a table")
            names = list(data.columns.names)
            selected = columns or names
            missing = [name for name in selected if name not in names]
            if missing:
                raise ToolError(f"{path}: columns {missing} missing (file has {len(names)} columns)")
            return {name: np.array(data[name]) for name in selected}, names
    except (KeyError, IndexError):
        raise ToolError(f"{path}: no HDU {hdu!r}") from None
    except OSError as error:
        raise ToolError(f"cannot read catalogue {path}: {error}") from error


def merge_catalogues(paths, columns=None, hdu=HDU_NAME, progress: bool = False) -> np.ndarray:
    """Concatenate the selected columns of several FITS tables.

    Parameters
    ----------
    paths : sequence of path-like
    columns : list of str, optional
        Columns to keep; all columns of the first file when ``None`` (the
        other files must then have exactly the same columns).
    hdu : int or str
    progress : bool
        Show a progress bar (tqdm).

    Returns
    -------
    numpy.ndarray
        Structured array, rows in file order.

    Raises
    ------
    ToolError
        On a missing column or a schema that differs from the first file.
    """
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    if not paths:
        raise ToolError("no catalogue to merge")
    parts = []
    reference = None
    for path in tqdm(paths, desc=PROGRAM, unit="file", disable=not progress):
        data, names = _read_columns(path, hdu, columns)
        if reference is None:
            reference_path, reference_names = path, names
            reference = {name: _column_signature(values.dtype) for name, values in data.items()}
        else:
            if columns is None and names != reference_names:
                extra = sorted(set(names) - set(reference_names))
                lacking = sorted(set(reference_names) - set(names))
                raise ToolError(f"{path}: columns differ from {reference_path.name} "
                                f"(extra: {extra}, missing: {lacking}); give a param file (-p) to select columns")
            different = [f"{name} ({reference[name]} vs {_column_signature(values.dtype)})"
                         for name, values in data.items() if _column_signature(values.dtype) != reference[name]]
            if different:
                raise ToolError(f"{path}: column types differ from {reference_path.name}: {', '.join(different)}")
        parts.append(data)
    dtype = []
    for name in parts[0]:
        arrays = [part[name] for part in parts]
        base = arrays[0].dtype
        if base.kind in "SU":
            base = np.dtype(f"{base.kind}{max(a.dtype.itemsize // (4 if base.kind == 'U' else 1) for a in arrays)}")
        dtype.append((name, base.newbyteorder("=") if base.kind not in "SU" else base, arrays[0].shape[1:]))
    merged = np.empty(sum(len(next(iter(part.values()))) for part in parts), dtype=dtype)
    for name in parts[0]:
        merged[name] = np.concatenate([part[name] for part in parts])
    return merged


def write_merged(path, merged: np.ndarray) -> Path:
    """Write the merged catalogue: ``.npy`` (structured array) or FITS (HDU ``RESULTS``), atomically."""
    from shapepipe.atomic import atomic_path
    from shapepipe_modules.io.tables import write_fits_table

    path = Path(path)
    if path.suffix == ".npy":
        with atomic_path(path) as temporary:
            np.save(temporary, merged, allow_pickle=False)
    else:
        write_fits_table(path, merged, extname=HDU_NAME)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM, description="Concatenate the final catalogues of many tiles into one file.")
    parser.add_argument("-i", "--input-dir", default=".", help="directory of the final catalogues (default .)")
    parser.add_argument("-n", "--name-base", default="final_cat", help="catalogue name start (default final_cat)")
    parser.add_argument("-p", "--param", help="param file: columns to keep, one per line")
    parser.add_argument("-l", "--tile-list", help="only the tiles in this list (tile IDs or names)")
    parser.add_argument("--hdu", default=HDU_NAME, help="HDU name or number (default RESULTS)")
    parser.add_argument("-o", "--output", default="final_cat.fits",
                        help="merged catalogue, .fits or .npy (default final_cat.fits)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _main(args) -> int:
    columns = read_param_file(args.param) if args.param else None
    tiles = None
    if args.tile_list:
        tiles = []
        for number, line in read_lines(args.tile_list):
            try:
                tiles.append(cfis.parse_tile_id(line.split()[0]))
            except ValueError as error:
                warn(PROGRAM, f"{args.tile_list}:{number}: {error}; line skipped")
    hdu = int(args.hdu) if str(args.hdu).isdigit() else args.hdu
    paths = find_catalogues(args.input_dir, args.name_base, tiles)
    if not paths:
        raise ToolError(f"no {args.name_base}*.fits in {args.input_dir}")
    merged = write_merged(args.output, merge_catalogues(paths, columns, hdu, progress=not args.quiet))
    print(f"{PROGRAM}: {len(paths)} catalogues merged into {merged}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
