"""Nearest-neighbour sky matching of a catalogue to an external one.

Each object of the catalogue is paired with its nearest external object
(great-circle distance, a k-d tree on unit vectors); the pair counts as a
match when the distance is below the tolerance. Several objects may match the
same external object, as in ShapePipe.
"""

from __future__ import annotations

import numpy as np


class MatchError(ValueError):
    """An input cannot be matched (the message names the file and column)."""


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """Cartesian unit vectors, shape (n, 3), of sky positions in degrees."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def nearest(ra, dec, ext_ra, ext_dec) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest external object of every object, and the distance (arcsec)."""
    from scipy.spatial import cKDTree

    if len(ext_ra) == 0:
        return np.full(len(ra), -1), np.full(len(ra), np.inf)
    tree = cKDTree(unit_vectors(ext_ra, ext_dec))
    chord, index = tree.query(unit_vectors(ra, dec), k=1)
    distance = np.degrees(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))) * 3600.0
    return index, distance


def match_columns(table, external, col_match, ext_col_match, ext_col_copy, tolerance_arcsec,
                  mark_non_matched=None, output_distance=False):
    """The matched catalogue: the object rows with the copied external columns.

    Parameters
    ----------
    table, external : astropy.table.Table
    col_match, ext_col_match : sequence of two str
        RA and Dec columns (degrees) of the catalogue and of the external one.
    ext_col_copy : sequence of str
        External columns copied into the output.
    tolerance_arcsec : float
    mark_non_matched : float, optional
        If given, every object is kept and the copied columns of unmatched
        ones hold this value; otherwise only matched objects are kept.
    output_distance : bool
        Add ``distance`` (arcsec) to the nearest external object.

    Returns
    -------
    matched : dict of numpy.ndarray
        Columns of the output, catalogue columns first.
    keep : numpy.ndarray of int
        Rows of ``table`` in the output.
    n_matched : int
    """
    for name in col_match:
        if name not in table.colnames:
            raise MatchError(f"column {name} (COL_MATCH) is not in the catalogue (columns: {', '.join(table.colnames)})")
    for name in (*ext_col_match, *ext_col_copy):
        if name not in external.colnames:
            raise MatchError(f"column {name} is not in the external catalogue "
                             f"(columns: {', '.join(external.colnames)})")
    index, distance = nearest(table[col_match[0]], table[col_match[1]], external[ext_col_match[0]],
                              external[ext_col_match[1]])
    close = distance < tolerance_arcsec
    keep = np.arange(len(table)) if mark_non_matched is not None else np.flatnonzero(close)
    matched = {name: np.asarray(table[name])[keep] for name in table.colnames}
    for name in ext_col_copy:
        if name in matched:
            raise MatchError(f"external column {name} (EXTERNAL_COL_COPY) has the name of a catalogue column")
        source = np.asarray(external[name])
        values = source[np.where(index[keep] >= 0, index[keep], 0)] if len(source) else np.zeros(len(keep))
        if mark_non_matched is not None:
            values = values.astype(np.result_type(values.dtype, np.float64)) if values.dtype.kind in "iub" else values
            if values.dtype.kind in "fc":
                values = np.where(close[keep], values, mark_non_matched)
            else:
                raise MatchError(f"MARK_NON_MATCHED needs numeric columns; external column {name} is "
                                 f"{values.dtype}")
        matched[name] = values
    if output_distance:
        matched["distance"] = distance[keep]
    return matched, keep, int(np.count_nonzero(close))
