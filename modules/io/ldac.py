"""FITS-LDAC catalogues, the format SExtractor writes and PSFEx reads.

A FITS-LDAC file has three HDUs:

``PRIMARY``
    Empty.
``LDAC_IMHEAD``
    A binary table with one row and one column, ``Field Header Card``,
    holding the header of the image the catalogue was extracted from as a
    block of 80-character cards (``TDIM = (80, ncards)``), ending with
    ``END``. PSFEx reads the image size, the WCS and the ``SEXBKDEV`` /
    ``SEXGAIN`` keys from it.
``LDAC_OBJECTS``
    One row per object; vector columns (``FLUX_APER``, ``VIGNET``) keep
    their shape through ``TDIM``.

Multi-epoch catalogues may hold further HDUs (``EPOCH_i``) after these;
:func:`read_ldac` ignores them and :func:`append_hdus` adds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from shapepipe.atomic import atomic_path

IMHEAD_EXTNAME = "LDAC_IMHEAD"
OBJECTS_EXTNAME = "LDAC_OBJECTS"
HEADER_COLUMN = "Field Header Card"
CARD_LENGTH = 80


class LDACError(ValueError):
    """A file is not a readable FITS-LDAC catalogue (the message names it)."""


def header_to_cards(header: fits.Header) -> np.ndarray:
    """Encode a header as an ``(ncards,)`` array of 80-byte cards ending with END."""
    text = header.tostring(sep="", endcard=True, padding=False)
    ncards = len(text) // CARD_LENGTH
    return np.frombuffer(text.encode("ascii"), dtype=f"S{CARD_LENGTH}", count=ncards)


def cards_to_header(cards) -> fits.Header:
    """Decode the ``Field Header Card`` cell (array of cards or one string)."""
    cards = np.asarray(cards)
    if cards.dtype.kind == "S":
        text = b"".join(c.ljust(CARD_LENGTH) for c in cards.ravel()).decode("ascii", "replace")
    else:
        text = "".join(str(c).ljust(CARD_LENGTH) for c in cards.ravel())
    return fits.Header.fromstring(text)


def imhead_hdu(image_header: fits.Header) -> fits.BinTableHDU:
    """The ``LDAC_IMHEAD`` table holding ``image_header``."""
    cards = header_to_cards(image_header)
    ncards = len(cards)
    record = np.zeros(1, dtype=[(HEADER_COLUMN, f"S{ncards * CARD_LENGTH}")])
    record[HEADER_COLUMN][0] = b"".join(cards)
    hdu = fits.BinTableHDU(data=record)
    hdu.header["TDIM1"] = f"({CARD_LENGTH}, {ncards})"
    hdu.header["EXTNAME"] = IMHEAD_EXTNAME
    return hdu


def objects_hdu(table: Table) -> fits.BinTableHDU:
    """The ``LDAC_OBJECTS`` table of a catalogue."""
    hdu = fits.table_to_hdu(Table(table, copy=False))
    hdu.header["EXTNAME"] = OBJECTS_EXTNAME
    return hdu


def _write_hdus(path, hdus: fits.HDUList, imhead_bytes: bytes) -> None:
    """Write an LDAC HDU list atomically, with the LDAC_IMHEAD cell byte for byte."""
    with atomic_path(path) as temporary:
        hdus.writeto(temporary)
        # astropy writes string cells with trailing blanks turned into NULs;
        # PSFEx parses the cards byte for byte and needs the blanks back.
        with fits.open(temporary) as written:
            offset = written.fileinfo(1)["datLoc"]
        with open(temporary, "r+b") as handle:
            handle.seek(offset)
            handle.write(imhead_bytes)


# numpy kinds and sizes written as plain big-endian FITS binary-table
# fields (TFORM B, I, J, K, E, D) by the fast writer.
_FAST_DTYPES = {("u", 1), ("i", 2), ("i", 4), ("i", 8), ("f", 4), ("f", 8)}
_BLOCK = 2880


def _padded(data: bytes, fill: bytes = b"\0") -> bytes:
    return data + fill * (-len(data) % _BLOCK)


# Header text of LDAC_OBJECTS per column layout. astropy builds it in about
# 20 ms; a worker writes thousands of catalogues with the same layout.
_HEADER_CACHE: dict = {}
_HEADER_CACHE_SIZE = 32


def _objects_header_text(table: Table, columns) -> str:
    """``LDAC_OBJECTS`` header of a zero-row copy of ``table`` (astropy's formats, TDIM, units)."""
    key = tuple(
        (name, column.dtype.str, column.shape[1:], str(table[name].unit or ""), table[name].description or "")
        for name, column in zip(table.colnames, columns)
    )
    text = _HEADER_CACHE.get(key)
    if text is None:
        if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
            _HEADER_CACHE.clear()
        hdu = objects_hdu(table[:0])
        text = _HEADER_CACHE[key] = hdu.header.tostring()
    return text


def _fast_objects_rows(table: Table):
    """The ``LDAC_OBJECTS`` HDU as (header bytes, rows), without astropy's row-chunked writer.

    The header comes from astropy (a zero-row table, so the column formats,
    TDIM and units are astropy's); the rows are one big-endian structured
    array, which is the FITS layout, written as it is. Returns None when a
    column type needs astropy's conversions (strings, booleans, unsigned
    integers).
    """
    columns = [np.asarray(table[name]) for name in table.colnames]
    if any((column.dtype.kind, column.dtype.itemsize) not in _FAST_DTYPES for column in columns):
        return None
    header = fits.Header.fromstring(_objects_header_text(table, columns))
    header["NAXIS2"] = len(table)
    layout = np.dtype([(name, column.dtype.newbyteorder(">"), column.shape[1:])
                       for name, column in zip(table.colnames, columns)])
    if layout.itemsize != header["NAXIS1"]:
        return None
    rows = np.empty(len(table), dtype=layout)
    for name, column in zip(table.colnames, columns):
        rows[name] = column
    return header.tostring().encode("ascii"), rows


def write_ldac(path, table: Table, image_header: fits.Header, extra_hdus=()) -> None:
    """Write a FITS-LDAC catalogue atomically.

    Parameters
    ----------
    path : path-like
        Output file (``.fits``, usually ``sexcat<number>.fits``).
    table : astropy.table.Table
        Objects; units and column shapes are kept.
    image_header : astropy.io.fits.Header
        Header of the image (WCS, size, ``SEX*`` keys), stored in ``LDAC_IMHEAD``.
    extra_hdus : sequence of HDU
        Further HDUs appended after ``LDAC_OBJECTS``.
    """
    imhead = imhead_hdu(image_header)
    cards = b"".join(header_to_cards(image_header))
    objects = None if extra_hdus else _fast_objects_rows(table)
    if objects is None:
        hdus = fits.HDUList([fits.PrimaryHDU(), imhead, objects_hdu(table), *extra_hdus])
        _write_hdus(path, hdus, cards)
        return
    # Numeric tables (every SExtractor catalogue): the three HDUs as bytes,
    # the LDAC_IMHEAD cell with its blanks as PSFEx wants them. The rows go
    # to the file straight from their array (no copy of a catalogue that
    # VIGNET makes tens of MB).
    objects_header, rows = objects
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        handle.write(imhead.header.tostring().encode("ascii"))
        handle.write(_padded(cards))
        handle.write(objects_header)
        handle.write(memoryview(rows).cast("B") if rows.size else b"")
        handle.write(b"\0" * (-rows.nbytes % _BLOCK))


def read_ldac(path) -> tuple[Table, fits.Header]:
    """Read a FITS-LDAC catalogue.

    Returns
    -------
    table : astropy.table.Table
        The ``LDAC_OBJECTS`` rows.
    image_header : astropy.io.fits.Header
        The image header stored in ``LDAC_IMHEAD``.

    Raises
    ------
    LDACError
        If the file lacks one of the two LDAC tables.
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdus:
            names = [hdu.name for hdu in hdus]
            if IMHEAD_EXTNAME not in names or OBJECTS_EXTNAME not in names:
                raise LDACError(
                    f"{path}: not a FITS-LDAC catalogue (HDUs {names}; need "
                    f"{IMHEAD_EXTNAME} and {OBJECTS_EXTNAME})"
                )
            imhead = hdus[IMHEAD_EXTNAME]
            if HEADER_COLUMN not in imhead.columns.names:
                raise LDACError(f"{path}: {IMHEAD_EXTNAME} has no '{HEADER_COLUMN}' column")
            header = cards_to_header(imhead.data[HEADER_COLUMN][0])
            table = Table.read(hdus[OBJECTS_EXTNAME], format="fits", character_as_bytes=False)
    except OSError as error:
        raise LDACError(f"{path}: cannot read as FITS ({error})") from error
    # Keep the table free of the FITS structural keys astropy copies into meta.
    for key in ("EXTNAME",):
        table.meta.pop(key, None)
    return table, header


def append_hdus(path, hdus) -> None:
    """Append HDUs (e.g. ``EPOCH_i`` tables) to an existing catalogue, atomically."""
    update_ldac(path, hdus=hdus)


def update_ldac(path, columns=None, hdus=(), primary_cards=()) -> None:
    """Add columns to ``LDAC_OBJECTS``, HDUs and primary-header cards; rewrite the file atomically.

    The whole file is written under a temporary name and then renamed, so
    a reader never sees a half-updated catalogue. The ``LDAC_IMHEAD`` cell
    is kept byte for byte; the other HDUs are copied.

    Parameters
    ----------
    path : path-like
        An existing FITS-LDAC catalogue.
    columns : dict, optional
        ``{name: 1-d or n-d array with one row per object}``; a column of the
        same name is replaced.
    hdus : sequence of HDU
        Appended at the end; an existing HDU of the same EXTNAME is replaced.
    primary_cards : sequence of (key, value, comment)
        Set in the primary header.

    Raises
    ------
    LDACError
        If the file is not a FITS-LDAC catalogue or a column has the wrong
        number of rows.
    """
    path = Path(path)
    hdus = list(hdus)
    replaced = {hdu.name for hdu in hdus}
    try:
        with fits.open(path, memmap=False) as existing:
            names = [hdu.name for hdu in existing]
            if names[1:3] != [IMHEAD_EXTNAME, OBJECTS_EXTNAME]:
                raise LDACError(f"{path}: not a FITS-LDAC catalogue (HDUs {names})")
            imhead = existing[1]
            location = existing.fileinfo(1)
            with open(path, "rb") as handle:
                handle.seek(location["datLoc"])
                imhead_bytes = handle.read(imhead.header["NAXIS1"] * imhead.header["NAXIS2"])
            primary = existing[0].copy()
            for key, value, comment in primary_cards:
                primary.header[key] = (value, comment)
            objects = existing[2]
            n_rows = objects.header["NAXIS2"]
            if columns:
                for name, values in columns.items():
                    if len(values) != n_rows:
                        raise LDACError(f"{path}: column {name} has {len(values)} rows, "
                                        f"{OBJECTS_EXTNAME} has {n_rows}")
                added = fits.table_to_hdu(Table({name: np.asarray(v) for name, v in columns.items()})).columns
                kept = [column for column in objects.columns if column.name not in columns]
                header = objects.header.copy()
                objects = fits.BinTableHDU.from_columns(fits.ColDefs(kept) + added, header=header)
                objects.header["EXTNAME"] = OBJECTS_EXTNAME
            else:
                objects = objects.copy()
            others = [hdu.copy() for hdu in existing[3:] if hdu.name not in replaced]
            full = fits.HDUList([primary, imhead.copy(), objects, *others, *hdus])
            _write_hdus(path, full, imhead_bytes)
    except OSError as error:
        raise LDACError(f"{path}: cannot read as FITS ({error})") from error
