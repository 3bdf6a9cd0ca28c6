"""Merge psfinterp VALIDATION catalogues (``validation_psf<number>.fits``) into one.

Every row keeps its catalogue's columns; ``EXP_NAME`` (exposure name, e.g.
``'2113737'``) and ``CCD_NB`` (CCD number) are added from the file number
``-<exposure>-<ccd>``, so each star can be placed in the focal plane.
"""

from __future__ import annotations

import re

import numpy as np

# Columns psfinterp VALIDATION writes (ShapePipe's, plus PSF_FLAG).
REQUIRED = ("NUMBER", "X", "Y", "RA", "DEC", "E1_PSF_HSM", "E2_PSF_HSM", "SIGMA_PSF_HSM", "FLAG_PSF_HSM",
            "E1_STAR_HSM", "E2_STAR_HSM", "SIGMA_STAR_HSM", "FLAG_STAR_HSM", "MAG", "SNR", "ACCEPTED")
_NUMBER_RE = re.compile(r"^-?([^-\s]+)-(\d+)$")


class MergeError(ValueError):
    """An input cannot be merged (the message names the file)."""


def split_number(number: str) -> tuple[str, int]:
    """``'-2113737-12'`` -> ``('2113737', 12)``.

    Raises
    ------
    MergeError
        If the number is not ``-<exposure>-<ccd>``.
    """
    match = _NUMBER_RE.match(str(number).strip())
    if not match:
        raise MergeError(f"file number {number!r} is not -<exposure>-<ccd>")
    return match.group(1), int(match.group(2))


def _read(path, hdu):
    """Rows of HDU ``hdu`` of a catalogue (``None``: the LDAC objects table)."""
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import LDACError, read_ldac

    if hdu is None:
        try:
            return read_ldac(path)[0]
        except LDACError as error:
            raise MergeError(str(error)) from None
    try:
        with fits.open(path, memmap=False) as hdus:
            if hdu >= len(hdus) or not isinstance(hdus[hdu], fits.BinTableHDU):
                raise MergeError(f"{path}: HDU {hdu} is not a table (the file has {len(hdus)} HDUs)")
            return Table(hdus[hdu].data)
    except OSError as error:
        raise MergeError(f"{path}: cannot read the catalogue: {error}") from None


def merge_validation(input_table: dict, logger=None, required=REQUIRED, hdu=None):
    """Concatenate the validation catalogues of every file number.

    Parameters
    ----------
    input_table : dict
        ``{number: [path]}`` (a serial job's ``input_table``).
    logger : logging.Logger, optional
    required : tuple of str
        Columns every catalogue must hold (psfinterp VALIDATION's by default;
        empty for star selections).
    hdu : int, optional
        HDU of the rows; ``None``: the FITS-LDAC objects table.

    Returns
    -------
    astropy.table.Table
        All rows, ordered by file number, with ``EXP_NAME`` and ``CCD_NB``.

    Raises
    ------
    MergeError
        Naming the file that is unreadable or lacks a column.
    """
    from astropy.table import Table, vstack

    tables = []
    for number in sorted(input_table):
        path = input_table[number][0]
        exposure, ccd = split_number(number)
        table = _read(path, hdu)
        missing = [name for name in required if name not in table.colnames]
        if missing:
            raise MergeError(f"{path}: missing column(s) {', '.join(missing)}; is it a psfinterp VALIDATION "
                             "catalogue?")
        table = Table(table, masked=False, copy=False)
        table["EXP_NAME"] = np.full(len(table), exposure, dtype=f"U{max(len(exposure), 1)}")
        table["CCD_NB"] = np.full(len(table), ccd, dtype=np.int32)
        if required and "PSF_FLAG" not in table.colnames:
            table["PSF_FLAG"] = np.zeros(len(table), dtype=np.int16)
        tables.append(table)
        if logger is not None:
            logger.info("%s: %d stars (exposure %s, CCD %d)", path, len(table), exposure, ccd)
    if not tables:
        raise MergeError("no validation catalogue to merge")
    merged = vstack(tables, join_type="inner", metadata_conflicts="silent")
    for name in merged.colnames:
        column = merged[name]
        if hasattr(column, "filled"):
            merged[name] = column.filled(np.nan if column.dtype.kind == "f" else 0)
    return merged
