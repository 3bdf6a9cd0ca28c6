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
    hdus = fits.HDUList([fits.PrimaryHDU(), imhead, objects_hdu(table), *extra_hdus])
    cards = b"".join(header_to_cards(image_header))
    with atomic_path(path) as temporary:
        hdus.writeto(temporary)
        # astropy writes string cells with trailing blanks turned into NULs;
        # PSFEx parses the cards byte for byte and needs the blanks back.
        with fits.open(temporary) as written:
            offset = written.fileinfo(1)["datLoc"]
        with open(temporary, "r+b") as handle:
            handle.seek(offset)
            handle.write(cards)


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
    path = Path(path)
    with fits.open(path, memmap=False) as existing:
        full = fits.HDUList([hdu.copy() for hdu in existing] + list(hdus))
    with atomic_path(path) as temporary:
        full.writeto(temporary)
