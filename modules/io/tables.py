"""Generic FITS binary tables: atomic writing, reading with errors that name the file.

:func:`write_fits_table` writes one table (an empty primary HDU then one
``BINTABLE`` named ``extname``); :func:`write_fits_tables` writes several.
Both write to a temporary file beside the target and rename it, so a
reader never sees a half-written file. :func:`read_fits_table` returns an
:class:`astropy.table.Table` and raises :class:`FitsTableError` (naming the
file and HDU) when the file cannot be read. FITS-LDAC catalogues have their
own module, :mod:`shapepipe_modules.io.ldac`.
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.atomic import atomic_path
from shapepipe.errors import ShapePipeError

# Keywords that describe the table layout; a user header must not override them.
_STRUCTURAL = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME", "END")
_COLUMN_PREFIXES = ("TTYPE", "TFORM", "TUNIT", "TDIM", "TNULL", "TSCAL", "TZERO", "TDISP")


class FitsTableError(ShapePipeError, OSError):
    """A FITS table cannot be read or written; the message names the file."""


def _is_structural(keyword: str) -> bool:
    keyword = keyword.upper()
    if keyword.startswith(_STRUCTURAL):
        return True
    return any(keyword.startswith(prefix) and keyword[len(prefix):].isdigit() for prefix in _COLUMN_PREFIXES)


def table_hdu(table_or_dict, header=None, extname: str | None = None):
    """A ``BinTableHDU`` from an astropy Table, a dict of columns or a numpy record array.

    Cards of ``header`` are copied, except structural ones (``NAXIS``,
    ``TTYPEn``...).
    """
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    if isinstance(table_or_dict, Table):
        table = table_or_dict
    elif isinstance(table_or_dict, np.ndarray) and table_or_dict.dtype.names:
        table = Table(table_or_dict)
    else:
        table = Table(dict(table_or_dict))
    hdu = fits.table_to_hdu(table)
    if header is not None:
        for card in header.cards:
            if card.keyword == "COMMENT":
                hdu.header.add_comment(card.value)
            elif card.keyword == "HISTORY":
                hdu.header.add_history(card.value)
            elif card.keyword and not _is_structural(card.keyword):
                hdu.header[card.keyword] = (card.value, card.comment)
    if extname:
        hdu.name = extname
    return hdu


def write_fits_tables(path, tables, primary_header=None, overwrite: bool = True) -> Path:
    """Write several tables into one FITS file atomically.

    Parameters
    ----------
    path : path-like
        Output file.
    tables : sequence of (extname, table_or_dict, header or None)
        One binary-table HDU each, in order.
    primary_header : astropy.io.fits.Header, optional
        Cards of the (empty) primary HDU.
    overwrite : bool
        Replace an existing file (default); otherwise raise.

    Returns
    -------
    pathlib.Path
    """
    from astropy.io import fits

    path = Path(path)
    if path.exists() and not overwrite:
        raise FitsTableError(f"{path} exists and overwrite is off")
    hdus = [fits.PrimaryHDU(header=primary_header)]
    hdus += [table_hdu(table, header, extname) for extname, table, header in tables]
    try:
        with atomic_path(path) as temporary:
            fits.HDUList(hdus).writeto(temporary)
    except (OSError, ValueError, TypeError) as error:
        raise FitsTableError(f"cannot write FITS table {path}: {error}") from error
    return path


def write_fits_table(path, table_or_dict, header=None, extname: str = "DATA", overwrite: bool = True) -> Path:
    """Write one table (HDU 1, named ``extname``) into a FITS file atomically.

    Parameters
    ----------
    path : path-like
        Output file.
    table_or_dict : astropy.table.Table, dict of array_like or numpy record array
        The columns.
    header : astropy.io.fits.Header, optional
        Extra cards for the table HDU.
    extname : str
        Name of the table HDU.
    overwrite : bool
        Replace an existing file (default); otherwise raise.

    Returns
    -------
    pathlib.Path
    """
    return write_fits_tables(path, [(extname, table_or_dict, header)], overwrite=overwrite)


def read_fits_table(path, hdu=1, columns=None):
    """Read a FITS binary table.

    Parameters
    ----------
    path : path-like
        FITS file.
    hdu : int or str
        HDU index or name (default 1, the first extension).
    columns : sequence of str, optional
        Keep only these columns (in this order).

    Returns
    -------
    astropy.table.Table
        With the HDU header cards in ``meta``.

    Raises
    ------
    FitsTableError
        If the file is missing or unreadable, the HDU absent or not a table,
        or a requested column missing; the message names the file.
    """
    from astropy.io import fits
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise FitsTableError(f"FITS table {path} does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            try:
                table_hdu_ = hdul[hdu]
            except (KeyError, IndexError):
                names = [h.name for h in hdul]
                raise FitsTableError(f"{path}: no HDU {hdu!r} (HDUs: {names})") from None
            if not isinstance(table_hdu_, (fits.BinTableHDU, fits.TableHDU)):
                raise FitsTableError(f"{path}: HDU {hdu!r} is a {type(table_hdu_).__name__}, not a table")
            # NaN stays NaN (astropy would mask it by default).
            table = Table.read(table_hdu_, mask_invalid=False)
    except FitsTableError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as error:
        raise FitsTableError(f"cannot read FITS table {path} (HDU {hdu!r}): {error}") from error
    if columns is not None:
        missing = [name for name in columns if name not in table.colnames]
        if missing:
            raise FitsTableError(f"{path} (HDU {hdu!r}): missing columns {missing}")
        table = table[list(columns)]
    return table


def write_hdf5_table(path, columns: dict, group: str = "RESULTS", attributes: dict | None = None):
    """Write columns as one HDF5 dataset each (gzip level 4 with byte shuffle), atomically.

    Column-oriented: a reader loads only the columns it needs (a survey's
    final catalogue is tens of GB as one FITS table). Text columns are
    stored as fixed-length ASCII bytes.

    Parameters
    ----------
    path : path-like
        Output file (``.h5``).
    columns : dict
        Column name to array (first axis: rows; extra axes kept).
    group : str
        Group holding the datasets.
    attributes : dict, optional
        Attributes of the group (numbers or text).
    """
    import h5py
    import numpy as np

    with atomic_path(path) as temporary:
        with h5py.File(temporary, "w") as handle:
            table = handle.create_group(group)
            for key, value in (attributes or {}).items():
                table.attrs[key] = value
            for name, values in columns.items():
                values = np.asarray(values)
                if values.dtype.kind == "U":
                    values = np.char.encode(values, "ascii")
                options = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if values.size else {}
                table.create_dataset(name, data=values, **options)
    return Path(path)
