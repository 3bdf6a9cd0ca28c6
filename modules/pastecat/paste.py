"""Put one table HDU of each of several catalogues into one file, checked.

The catalogues describe the same objects (e.g. measurements of one tile by
different modules): with a check column (``NUMBER``), every table must hold
it with the same values in the same order as the first, so that row ``i``
of every HDU is the same object.
"""

from __future__ import annotations

import numpy as np


class PasteError(ValueError):
    """The inputs cannot be pasted (the message names the file)."""


def paste_tables(paths, hdus, ext_names, check_column=None):
    """Read and check the tables.

    Parameters
    ----------
    paths : sequence of path
    hdus : sequence of int
        HDU of each input's table.
    ext_names : sequence of str
        EXTNAME of each output HDU.
    check_column : str, optional
        Column that must be equal, row by row, in every table.

    Returns
    -------
    list of (str, astropy.table.Table, None)
        Ready for :func:`shapepipe_modules.io.tables.write_fits_tables`.
    """
    from shapepipe_modules.io.tables import FitsTableError, read_fits_table

    if not (len(paths) == len(hdus) == len(ext_names)):
        raise PasteError(f"{len(paths)} inputs but {len(hdus)} HDUs and {len(ext_names)} extension names")
    if len(set(ext_names)) != len(ext_names):
        raise PasteError(f"extension names repeat: {', '.join(ext_names)}")
    tables, reference = [], None
    for path, hdu, name in zip(paths, hdus, ext_names):
        try:
            table = read_fits_table(path, hdu)
        except FitsTableError as error:
            raise PasteError(str(error)) from None
        if check_column:
            if check_column not in table.colnames:
                raise PasteError(f"{path} (HDU {hdu}): no column {check_column} (CHECK_COL_NAME)")
            values = np.asarray(table[check_column])
            if reference is None:
                reference = (path, values)
            elif len(values) != len(reference[1]) or not np.array_equal(values, reference[1]):
                rows = min(len(values), len(reference[1]))
                first = np.flatnonzero(values[:rows] != reference[1][:rows])
                where = f"first difference at row {first[0]}" if first.size else "different lengths"
                raise PasteError(f"{path} (HDU {hdu}): column {check_column} differs from {reference[0]} "
                                 f"({len(values)} vs {len(reference[1])} rows; {where})")
        table.meta.clear()
        tables.append((name, table, None))
    return tables
