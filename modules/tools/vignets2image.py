"""``vignets2image``: the postage stamps of a catalogue or stamp store as one mosaic image.

For a look at the stamps (ds9, a plot): every stamp is laid out, in order,
on a square grid of ``n_side = ceil(sqrt(n))`` stamps per row, row after row
(stamp ``i`` at grid row ``i // n_side``, column ``i % n_side``; row 0 at the
bottom of the image in FITS viewers, numpy row 0), and the mosaic is written
as the primary image of a FITS file, with a ``STAMPS`` table saying which
object (and epoch) each grid cell holds and where its first pixel lies.

Inputs:

- a FITS catalogue with a ``VIGNET`` column (SExtractor's, vignetmaker
  CLASSIC's ``<prefix>_vignet<number>.fits``): one stamp per row; the
  ``LDAC_OBJECTS`` table of a FITS-LDAC file (stamps kept by rows in
  ``LDAC_VIGNET`` put back in place), else HDU ``--hdu``;
- a stamp store (``.sqlite``, vignetmaker or psfinterp MULTI-EPOCH): one
  stamp per object and epoch, objects in id order, epochs in key order
  (``--array`` chooses ``VIGNET``, ``WEIGHT``, ``FLAG``...).

SExtractor's unusable pixels (``<= -1e29``) and empty grid cells take the
fill value (default 0).

Python API: :func:`mosaic`, :func:`read_stamps`, :func:`write_mosaic`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shapepipe.arguments import ArgumentParser

from ._common import ToolError, run

PROGRAM = "vignets2image"
UNUSABLE = -1e29  # SExtractor writes -1e30 in VIGNET pixels outside the image


def grid_side(count: int) -> int:
    """Stamps per grid row: the smallest ``n`` with ``n * n >= count`` (1 for none)."""
    side = int(np.sqrt(count))
    while side * side < count:
        side += 1
    return max(side, 1)


def mosaic(stamps, fill: float = 0.0, dtype=np.float32):
    """Lay stamps out on a square grid.

    Parameters
    ----------
    stamps : array_like (n, ny, nx)
        Stamps of one shape.
    fill : float
        Value of unusable pixels (``<= -1e29``) and of empty cells.
    dtype : numpy dtype
        Of the mosaic.

    Returns
    -------
    image : numpy.ndarray (side * ny, side * nx)
        Stamp ``i`` at ``image[r*ny:(r+1)*ny, c*nx:(c+1)*nx]`` with
        ``r, c = divmod(i, side)``.
    side : int
        Stamps per grid row (:func:`grid_side`).
    """
    stamps = np.asarray(stamps)
    if stamps.ndim != 3:
        raise ValueError(f"stamps must be (n, ny, nx), got shape {stamps.shape}")
    count, ny, nx = stamps.shape
    side = grid_side(count)
    cells = np.full((side * side, ny, nx), fill, dtype=dtype)
    cells[:count] = np.where(stamps <= UNUSABLE, fill, stamps) if stamps.dtype.kind == "f" else stamps
    # (row, col, y, x) -> (row, y, col, x): each grid row becomes ny image rows.
    image = cells.reshape(side, side, ny, nx).transpose(0, 2, 1, 3).reshape(side * ny, side * nx)
    return image, side


def _read_catalogue(path: Path, hdu, column: str):
    from astropy.io import fits

    from shapepipe_modules.io.ldac import OBJECTS_EXTNAME, LDACError, read_ldac

    try:
        with fits.open(path) as hdus:
            is_ldac = OBJECTS_EXTNAME in hdus
        if is_ldac and hdu is None:
            table, _ = read_ldac(path)
        else:
            from astropy.table import Table

            table = Table.read(path, hdu=1 if hdu is None else hdu)
    except (OSError, LDACError, KeyError, IndexError, ValueError) as error:
        raise ToolError(f"cannot read catalogue {path}: {error}") from error
    if column not in table.colnames:
        raise ToolError(f"{path}: no column {column!r} (columns: {table.colnames})")
    stamps = np.asarray(table[column])
    if stamps.ndim != 3:
        raise ToolError(f"{path}: column {column!r} does not hold 2-d stamps (shape {stamps.shape[1:]})")
    ids = np.asarray(table["NUMBER"], dtype=np.int64) if "NUMBER" in table.colnames else np.arange(1, len(table) + 1)
    return stamps, ids, np.full(len(ids), "")


def _read_store(path: Path, array: str, max_stamps=None):
    from shapepipe_modules.io.arrays import StoreError
    from shapepipe_modules.io.stamp_store import StampStore

    # Only the chosen array of each record is kept: a tile's store holds several GB of other kinds.
    found = []
    try:
        with StampStore(path) as store:
            for object_id, record in store.items():
                for key, epoch in record.items():
                    if array in epoch.arrays:
                        found.append((object_id, key, np.asarray(epoch.arrays[array])))
    except (StoreError, OSError) as error:
        raise ToolError(f"cannot read stamp store {path}: {error}") from error
    if not found:
        raise ToolError(f"{path}: no {array!r} stamp in the store")
    found.sort(key=lambda item: (item[0], item[1]))
    found = found[:max_stamps]
    shapes = sorted({stamp.shape for _, _, stamp in found})
    if len(shapes) > 1:
        raise ToolError(f"{path}: {array} stamps of several shapes {shapes}")
    return (np.stack([stamp for _, _, stamp in found]), np.array([i for i, _, _ in found], dtype=np.int64),
            np.array([key for _, key, _ in found]))


def read_stamps(path, column: str = "VIGNET", hdu=None, max_stamps: int | None = None):
    """Stamps of a catalogue or stamp store, with the object id (and epoch) of each.

    Parameters
    ----------
    path : path-like
        FITS catalogue or ``.sqlite`` stamp store.
    column : str
        Catalogue column, or array name in the store.
    hdu : int or str, optional
        Catalogue HDU (default: ``LDAC_OBJECTS`` of a FITS-LDAC file, else 1).
    max_stamps : int, optional
        Keep the first ``max_stamps`` stamps only.

    Returns
    -------
    stamps : numpy.ndarray (n, ny, nx)
    ids : numpy.ndarray (n,)
        ``NUMBER`` (row number from 1 when absent), or the store's object id.
    epochs : numpy.ndarray of str (n,)
        Epoch key (``'2113737-12'``) for stores, ``''`` for catalogues.

    Raises
    ------
    ToolError
        Naming the file: unreadable, no such column, no stamp.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"input {path} does not exist")
    if max_stamps is not None and max_stamps < 1:
        raise ToolError(f"max_stamps must be 1 or more, got {max_stamps}")
    if path.suffix == ".sqlite":
        return _read_store(path, column, max_stamps)
    stamps, ids, epochs = _read_catalogue(path, hdu, column)
    return stamps[:max_stamps], ids[:max_stamps], epochs[:max_stamps]


def write_mosaic(path, image, side: int, stamp_shape, ids, epochs, source) -> Path:
    """Write the mosaic (primary image) and its ``STAMPS`` table, atomically.

    ``STAMPS`` holds per stamp ``NUMBER``, ``EPOCH``, the grid ``ROW`` and
    ``COL`` (0-based) and ``X0``, ``Y0``, the FITS pixel (1-based) of the
    stamp's first pixel in the mosaic.
    """
    from astropy.io import fits

    from shapepipe.atomic import atomic_path
    from shapepipe_modules.io.tables import table_hdu

    ny, nx = stamp_shape
    rows, cols = np.divmod(np.arange(len(ids)), side)
    primary = fits.PrimaryHDU(image)
    primary.header["NSTAMP"] = (len(ids), "number of stamps")
    primary.header["GRIDSIDE"] = (side, "stamps per grid row and column")
    primary.header["STAMPNX"] = (nx, "stamp width in pixels")
    primary.header["STAMPNY"] = (ny, "stamp height in pixels")
    primary.header["SOURCE"] = (Path(source).name[:68], "catalogue or stamp store")
    table = {"NUMBER": np.asarray(ids, dtype=np.int64), "EPOCH": np.asarray(epochs).astype(str),
             "ROW": rows.astype(np.int32), "COL": cols.astype(np.int32),
             "X0": (cols * nx + 1).astype(np.int32), "Y0": (rows * ny + 1).astype(np.int32)}
    path = Path(path)
    with atomic_path(path) as temporary:
        fits.HDUList([primary, table_hdu(table, extname="STAMPS")]).writeto(temporary)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Lay the postage stamps of catalogues (VIGNET column) or stamp stores (.sqlite) out as one "
                    "FITS mosaic image each, img_<name>.fits.")
    parser.add_argument("inputs", nargs="+", help="FITS catalogues with VIGNET, or stamp stores (.sqlite)")
    parser.add_argument("-o", "--output-dir", default=".", help="folder of the mosaics (default .)")
    parser.add_argument("-p", "--prefix", default="img_", help="output name prefix (default img_)")
    parser.add_argument("-c", "--column", default="VIGNET",
                        help="catalogue column or store array (default VIGNET)")
    parser.add_argument("--hdu", help="catalogue HDU (default LDAC_OBJECTS of FITS-LDAC, else 1)")
    parser.add_argument("-n", "--max-stamps", type=int, help="the first N stamps only (default all)")
    parser.add_argument("--fill", type=float, default=0.0,
                        help="value of unusable pixels and empty cells (default 0)")
    return parser


def _main(args) -> int:
    hdu = None if args.hdu is None else (int(args.hdu) if str(args.hdu).isdigit() else args.hdu)
    for item in args.inputs:
        stamps, ids, epochs = read_stamps(item, args.column, hdu, args.max_stamps)
        image, side = mosaic(stamps, args.fill)
        name = Path(item).name
        stem = name[: -len(".sqlite")] + ".fits" if name.endswith(".sqlite") else name
        output = write_mosaic(Path(args.output_dir) / f"{args.prefix}{stem}", image, side, stamps.shape[1:],
                              ids, epochs, item)
        print(f"{PROGRAM}: {item}: {len(ids)} stamps, {side} x {side} grid -> {output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
