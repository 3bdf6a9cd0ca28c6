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

A catalogue written with ``vignet_rows`` keeps ``VIGNET`` only for those
rows, in a fourth table ``LDAC_VIGNET`` (columns ``ROW``, 0-based row of
``LDAC_OBJECTS``, and ``VIGNET``). :func:`read_ldac` puts the column back in
place, the other rows filled with -1e30 (SExtractor's unusable pixel), and
records which rows hold real stamps (:func:`missing_vignets`). SExtractor and
PSFEx binaries cannot read that layout: it is for the pipeline's readers.
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
VIGNET_EXTNAME = "LDAC_VIGNET"
VIGNET_FILL = np.float32(-1e30)  # SExtractor's value of an unusable VIGNET pixel
# Table.meta key of (rows holding a stored VIGNET, the selection's text) after read_ldac.
STORED_VIGNETS = "LDAC_VIGNET_ROWS"


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


def vignet_hdu(table: Table, rows, selection: str = "") -> fits.BinTableHDU:
    """The ``LDAC_VIGNET`` table: ``ROW`` and ``VIGNET`` of the rows where ``rows`` is True."""
    rows = np.asarray(rows, dtype=bool)
    if rows.shape != (len(table),):
        raise LDACError(f"vignet_rows has shape {rows.shape}, the table {len(table)} rows")
    index = np.flatnonzero(rows)
    column = table["VIGNET"]
    kept = Table({"ROW": index.astype(np.int32), "VIGNET": np.asarray(column)[index]})
    kept["VIGNET"].unit = column.unit
    kept["VIGNET"].description = column.description
    hdu = fits.table_to_hdu(kept)
    hdu.header["EXTNAME"] = VIGNET_EXTNAME
    hdu.header["VIGNCOL"] = (table.colnames.index("VIGNET"), "0-based position of VIGNET in LDAC_OBJECTS")
    hdu.header["VIGNNROW"] = (len(table), "rows of LDAC_OBJECTS")
    hdu.header["VIGNSEL"] = selection  # the rows whose VIGNET is stored (CONTINUE cards when long)
    return hdu


def _without_stored_vignets(table: Table) -> Table:
    """``table`` without the read-side record of stored vignets (not a header value)."""
    if STORED_VIGNETS not in table.meta:
        return table
    table = Table(table, copy=False)
    table.meta = {key: value for key, value in table.meta.items() if key != STORED_VIGNETS}
    return table


def missing_vignets(table: Table, selected=None) -> tuple[int, str]:
    """Rows of ``table`` (or of its ``selected`` rows) read without a stored VIGNET.

    Returns
    -------
    count : int
        0 when every (selected) row has its stamp, or the catalogue stores all of them.
    selection : str
        The rows the catalogue stores (its ``VIGNSEL`` text), for messages.
    """
    stored = table.meta.get(STORED_VIGNETS)
    if stored is None:
        return 0, ""
    rows, selection = stored
    missing = ~rows if selected is None else np.asarray(selected) & ~rows
    return int(np.count_nonzero(missing)), selection


def write_ldac(path, table: Table, image_header: fits.Header, extra_hdus=(), vignet_rows=None,
               vignet_selection: str = "") -> None:
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
    vignet_rows : array of bool, optional
        Store ``VIGNET`` only for these rows (``LDAC_VIGNET``, see the module
        docstring); None keeps the column in ``LDAC_OBJECTS``.
    vignet_selection : str
        Text saying which rows those are (``VIGNSEL``), for messages.
    """
    table = _without_stored_vignets(table)
    if vignet_rows is not None and "VIGNET" in table.colnames:
        extra_hdus = (vignet_hdu(table, vignet_rows, vignet_selection), *extra_hdus)
        table = Table(table, copy=False)
        table.remove_column("VIGNET")
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
            if VIGNET_EXTNAME in names:
                _restore_vignets(table, hdus[VIGNET_EXTNAME], path)
    except OSError as error:
        raise LDACError(f"{path}: cannot read as FITS ({error})") from error
    # Keep the table free of the FITS structural keys astropy copies into meta.
    for key in ("EXTNAME",):
        table.meta.pop(key, None)
    return table, header


def _restore_vignets(table: Table, hdu, path) -> None:
    """Put the ``LDAC_VIGNET`` stamps back as the ``VIGNET`` column, -1e30 elsewhere."""
    header = hdu.header
    if header.get("VIGNNROW") != len(table) or "ROW" not in hdu.columns.names:
        raise LDACError(f"{path}: {VIGNET_EXTNAME} does not match {OBJECTS_EXTNAME} "
                        f"({header.get('VIGNNROW')} rows recorded, {len(table)} present)")
    stamps = Table.read(hdu, format="fits")
    index = np.asarray(stamps["ROW"], dtype=np.int64)
    values = np.asarray(stamps["VIGNET"])
    full = np.full((len(table), *values.shape[1:]), VIGNET_FILL, dtype=values.dtype.newbyteorder("="))
    full[index] = values
    rows = np.zeros(len(table), dtype=bool)
    rows[index] = True
    position = min(int(header.get("VIGNCOL", len(table.colnames))), len(table.colnames))
    table.add_column(full, name="VIGNET", index=position)
    table["VIGNET"].unit = stamps["VIGNET"].unit
    table["VIGNET"].description = stamps["VIGNET"].description
    table.meta[STORED_VIGNETS] = (rows, str(header.get("VIGNSEL", "")))


def _ldac_layout(path, existing):
    """HDU names of an open FITS-LDAC catalogue and its ``LDAC_IMHEAD`` cell, byte for byte.

    Raises LDACError when the second and third HDUs are not ``LDAC_IMHEAD``, ``LDAC_OBJECTS``.
    """
    names = [hdu.name for hdu in existing]
    if names[1:3] != [IMHEAD_EXTNAME, OBJECTS_EXTNAME]:
        raise LDACError(f"{path}: not a FITS-LDAC catalogue (HDUs {names})")
    header = existing[1].header
    with open(path, "rb") as handle:
        handle.seek(existing.fileinfo(1)["datLoc"])
        return names, handle.read(header["NAXIS1"] * header["NAXIS2"])


def store_vignets_for(path, select, selection: str = "") -> tuple[int, int]:
    """Rewrite a catalogue, atomically, keeping ``VIGNET`` only for some rows (``LDAC_VIGNET``).

    Parameters
    ----------
    path : path-like
        A FITS-LDAC catalogue with a ``VIGNET`` column in ``LDAC_OBJECTS``.
    select : callable
        ``select(table)`` -> array of bool, the rows whose stamps are kept,
        from the ``LDAC_OBJECTS`` table.
    selection : str
        Text saying which rows those are (``VIGNSEL``), for messages.

    Returns
    -------
    kept, total : int
        Rows whose stamp is kept, rows of the catalogue; (0, 0) when the
        catalogue has no ``VIGNET`` column or already stores it by rows.
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as existing:
            names, imhead_bytes = _ldac_layout(path, existing)
            objects = existing[2]
            if VIGNET_EXTNAME in names or "VIGNET" not in objects.columns.names:
                return 0, 0
            table = Table.read(objects, format="fits", character_as_bytes=False)
            rows = np.asarray(select(table), dtype=bool)
            stamps = vignet_hdu(table, rows, selection)
            kept = [column for column in objects.columns if column.name != "VIGNET"]
            reduced = fits.BinTableHDU.from_columns(fits.ColDefs(kept), header=objects.header.copy())
            reduced.header["EXTNAME"] = OBJECTS_EXTNAME
            full = fits.HDUList([existing[0].copy(), existing[1].copy(), reduced, stamps,
                                 *(hdu.copy() for hdu in existing[3:])])
            _write_hdus(path, full, imhead_bytes)
    except OSError as error:
        raise LDACError(f"{path}: cannot read as FITS ({error})") from error
    return int(rows.sum()), len(rows)


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
            _, imhead_bytes = _ldac_layout(path, existing)
            imhead = existing[1]
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
