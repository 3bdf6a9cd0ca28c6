"""Reading the tile catalogue: object positions and the multi-epoch table.

The tile catalogue is SExtractor's FITS-LDAC (``LDAC_OBJECTS``) or any FITS
table in HDU 1. Multi-epoch catalogues carry, after the objects, one
``EPOCH_i`` HDU per exposure with one row per object: ``NUMBER``,
``EXP_NAME`` (exposure name) and ``CCD_N`` (0-based CCD, ``-1`` when the
exposure did not see the object), as ShapePipe's SExtractor post-processing
writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe.errors import JobError


@dataclass
class EpochTable:
    """Every (object, exposure, CCD) triple of a multi-epoch tile catalogue.

    Attributes
    ----------
    row : numpy.ndarray of int
        Index of the object in the catalogue.
    exposure : numpy.ndarray of str
        Exposure name (no leading dash).
    ccd : numpy.ndarray of int
        CCD number (>= 0; absent epochs are dropped).
    """

    row: np.ndarray
    exposure: np.ndarray
    ccd: np.ndarray


def objects_hdu_index(hdus) -> int:
    """Index of the objects table: ``LDAC_OBJECTS`` if present, else HDU 1."""
    names = [hdu.name for hdu in hdus]
    if "LDAC_OBJECTS" in names:
        return names.index("LDAC_OBJECTS")
    return 1


def read_objects(path, columns):
    """Read columns of the objects table.

    Parameters
    ----------
    path : path-like
        Catalogue file.
    columns : sequence of str
        Column names (case-insensitive).

    Returns
    -------
    dict of str to numpy.ndarray
        Keyed by the names as given.

    Raises
    ------
    JobError
        If the file cannot be read or a column is missing (names the file).
    """
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdus:
            index = objects_hdu_index(hdus)
            if index >= len(hdus) or not isinstance(hdus[index], fits.BinTableHDU):
                raise JobError(f"{path}: no objects table (HDU {index})")
            data = hdus[index].data
            available = {name.upper(): name for name in data.columns.names}
            missing = [c for c in columns if c.upper() not in available]
            if missing:
                raise JobError(f"{path}: column(s) {', '.join(missing)} not in the objects table "
                               f"(columns: {', '.join(data.columns.names)})")
            return {c: np.array(data[available[c.upper()]]) for c in columns}
    except OSError as error:
        raise JobError(f"{path}: cannot read the catalogue ({error})") from error


def read_epochs(path, n_objects: int) -> EpochTable:
    """Read the ``EPOCH_i`` HDUs of a multi-epoch tile catalogue.

    Raises
    ------
    JobError
        If the file has no ``EPOCH_i`` HDU, or one lacks ``EXP_NAME`` or
        ``CCD_N`` or has the wrong number of rows.
    """
    from astropy.io import fits

    path = Path(path)
    rows, exposures, ccds = [], [], []
    try:
        with fits.open(path, memmap=False) as hdus:
            epoch_hdus = [hdu for hdu in hdus if hdu.name.upper().startswith("EPOCH")]
            if not epoch_hdus:
                raise JobError(f"{path}: no EPOCH_i HDU; MULTI-EPOCH mode needs the tile catalogue "
                               "written by sextractor's multi-epoch post-processing")
            for hdu in epoch_hdus:
                names = {n.upper(): n for n in hdu.columns.names}
                for needed in ("EXP_NAME", "CCD_N"):
                    if needed not in names:
                        raise JobError(f"{path}: HDU {hdu.name} has no column {needed}")
                ccd = np.asarray(hdu.data[names["CCD_N"]]).astype(np.int64)
                if ccd.size != n_objects:
                    raise JobError(f"{path}: HDU {hdu.name} has {ccd.size} rows for {n_objects} objects")
                exp = np.char.strip(np.asarray(hdu.data[names["EXP_NAME"]]).astype(str))
                exp = np.char.lstrip(exp, "-")
                seen = np.flatnonzero(ccd >= 0)
                rows.append(seen)
                exposures.append(exp[seen])
                ccds.append(ccd[seen])
    except OSError as error:
        raise JobError(f"{path}: cannot read the catalogue ({error})") from error
    return EpochTable(
        row=np.concatenate(rows).astype(np.int64),
        exposure=np.concatenate(exposures).astype(str),
        ccd=np.concatenate(ccds).astype(np.int64),
    )
