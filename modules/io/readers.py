"""Readers of the pipeline's storage forms, for the data butler (``shapepipe.Repository``).

Each :class:`shapepipe.datasets.Reader` loads one storage form with the I/O
layer of this package and gives its metadata without reading pixels or
rows (``<dataset>_md``). They are registered in the ``shapepipe.readers``
entry-point group (``pyproject.toml``), so the core never imports astronomy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe.datasets import Reader


@dataclass
class FitsImage:
    """An image HDU read into memory.

    Attributes
    ----------
    array : ndarray
        The pixels (row ``y``, column ``x``; FITS pixel (1, 1) is ``array[0, 0]``).
    header : astropy.io.fits.Header
    """

    array: np.ndarray
    header: object

    @property
    def wcs(self):
        """The celestial WCS of the header."""
        from astropy.wcs import WCS

        return WCS(self.header)

    @property
    def shape(self) -> tuple:
        return self.array.shape


def _image_hdu(hdus):
    """First HDU holding pixels (a compressed image's data is in extension 1)."""
    for hdu in hdus:
        if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
            return hdu
    raise ValueError(f"{hdus.filename()}: no image HDU")


def read_image(path) -> FitsImage:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdus:
        hdu = _image_hdu(hdus)
        return FitsImage(np.array(hdu.data), hdu.header.copy())


def image_header(path):
    from astropy.io import fits

    # Headers are parsed lazily: pixel data is never read here.
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
        return _image_hdu(hdus).header.copy()


def read_image_hdus(path) -> list[FitsImage]:
    """Every image HDU of a multi-extension file (one per CCD)."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdus:
        return [FitsImage(np.array(hdu.data), hdu.header.copy()) for hdu in hdus
                if hdu.is_image and hdu.header.get("NAXIS", 0) > 0]


def primary_header(path):
    from astropy.io import fits

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
        return hdus[0].header.copy()


def read_ldac_objects(path):
    """The LDAC_OBJECTS table; the image header of LDAC_IMHEAD in ``meta['image_header']``."""
    from .ldac import read_ldac

    table, header = read_ldac(path)
    table.meta["image_header"] = header
    return table


def ldac_image_header(path):
    """The image header stored in LDAC_IMHEAD (the objects table is not read)."""
    from astropy.io import fits

    from .ldac import HEADER_COLUMN, IMHEAD_EXTNAME, LDACError, cards_to_header

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
        try:
            imhead = hdus[IMHEAD_EXTNAME]
        except KeyError:
            raise LDACError(f"{path}: not a FITS-LDAC catalogue (no {IMHEAD_EXTNAME})") from None
        return cards_to_header(imhead.data[HEADER_COLUMN][0])


def read_table(path):
    """The first table HDU, its header cards in ``meta``."""
    from .tables import read_fits_table

    return read_fits_table(path, hdu=1)


def table_header(path):
    from astropy.io import fits

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
        return hdus[1].header.copy()


def read_tables(path) -> dict:
    """Every table HDU by EXTNAME (ngmix: ``1M``, ``1P``, ..., ``NOSHEAR``)."""
    from astropy.io import fits

    from .tables import read_fits_table

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
        names = [hdu.name for hdu in hdus[1:]]
    return {name: read_fits_table(path, hdu=name) for name in names}


def read_psf(path):
    from .psfex_file import read_psf as read

    return read(path)


def psf_header(path):
    from astropy.io import fits

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
        return hdus["PSF_DATA"].header.copy()


def open_stamp_store(path):
    """The store opened read-only (close it, or use it as a context manager)."""
    from .stamp_store import StampStore

    return StampStore(path, mode="r")


def _sqlite_summary(path, table: str) -> dict:
    import sqlite3

    connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        count = connection.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    finally:
        connection.close()
    return {"table": table, "entries": int(count), "bytes": Path(path).stat().st_size}


def stamp_store_summary(path) -> dict:
    from .stamp_store import TABLE

    return _sqlite_summary(path, TABLE)


def open_header_store(path):
    from .header_store import HeaderStore

    return HeaderStore(path, mode="r")


def header_store_summary(path) -> dict:
    from .header_store import TABLE

    return _sqlite_summary(path, TABLE)


def read_hdf5_table(path, group="RESULTS") -> dict:
    """Every column of an HDF5 table written by :func:`~.tables.write_hdf5_table`: name to array."""
    import h5py

    with h5py.File(path, "r") as handle:
        return {name: dataset[()] for name, dataset in handle[group].items()}


def hdf5_table_summary(path, group="RESULTS") -> dict:
    """Attributes, columns and rows of an HDF5 table, without reading a column."""
    import h5py

    with h5py.File(path, "r") as handle:
        table = handle[group]
        columns = list(table)
        rows = table[columns[0]].shape[0] if columns else 0
        return {"attributes": {key: table.attrs[key] for key in table.attrs}, "columns": columns, "rows": rows}


def read_text(path) -> str:
    return Path(path).read_text()


def file_summary(path) -> dict:
    stat = Path(path).stat()
    return {"bytes": stat.st_size, "modified": stat.st_mtime}


def read_json(path):
    return json.loads(Path(path).read_text())


def read_npy(path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def npy_header(path) -> dict:
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
    return {"shape": tuple(shape), "dtype": str(dtype), "fortran_order": bool(fortran)}


def read_bytes(path) -> bytes:
    return Path(path).read_bytes()


def png_header(path) -> dict:
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return {"width": width, "height": height}


FITS_IMAGE = Reader("fits_image", read_image, image_header, "FITS image (first HDU with pixels)",
                    "shapepipe_modules.io.readers.FitsImage")
FITS_IMAGES = Reader("fits_images", read_image_hdus, primary_header,
                     "multi-extension FITS image, one HDU per CCD", "list")
LDAC = Reader("ldac", read_ldac_objects, ldac_image_header, "FITS-LDAC catalogue (md: the image header)",
              "astropy.table.Table")
FITS_TABLE = Reader("fits_table", read_table, table_header, "FITS binary table (HDU 1)", "astropy.table.Table")
FITS_TABLES = Reader("fits_tables", read_tables, primary_header, "FITS binary tables by EXTNAME", "dict")
PSFEX = Reader("psfex", read_psf, psf_header, "PSFEx .psf model (evaluate(x, y) gives stamps)",
               "shapepipe_modules.io.psfex_file.PSFModel")
STAMP_STORE = Reader("stamp_store", open_stamp_store, stamp_store_summary, "stamp store (SQLite)",
                     "shapepipe_modules.io.stamp_store.StampStore")
HEADER_STORE = Reader("header_store", open_header_store, header_store_summary, "header store (SQLite)",
                      "shapepipe_modules.io.header_store.HeaderStore")
HDF5_TABLE = Reader("hdf5_table", read_hdf5_table, hdf5_table_summary,
                     "HDF5 table, one dataset per column in group RESULTS (md: attributes, columns, rows)", "dict")
TEXT = Reader("text", read_text, file_summary, "text", "str")
JSON = Reader("json", read_json, file_summary, "JSON", "dict")
NPY = Reader("npy", read_npy, npy_header, "numpy .npy (no pickle)", "numpy.ndarray")
PNG = Reader("png", read_bytes, png_header, "PNG plot (bytes)", "bytes")


def read_healsparse(path):
    """A HealSparse map (needs the ``healsparse`` package)."""
    import healsparse

    return healsparse.HealSparseMap.read(str(path))


def healsparse_summary(path) -> dict:
    """nside, coverage nside and data type of a HealSparse map, from its header cards."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdus:
        header = hdus[1].header if len(hdus) > 1 else hdus[0].header
        cards = {key: header[key] for key in ("NSIDE", "NSIDE_COV", "SENTINEL") if key in header}
    return {"path": str(path), **cards}


HEALSPARSE = Reader("healsparse", read_healsparse, healsparse_summary, "HealSparse map (FITS)",
                    "healsparse.HealSparseMap")
