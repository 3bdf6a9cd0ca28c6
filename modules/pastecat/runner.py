"""Declaration of the ``pastecat`` module (ShapePipe's ``pastecat_runner``).

Inputs: one catalogue per ``FILE_PATTERN``. Output: ``<PREFIX><number>.fits``
with, for each input in order, its table HDU (``HDU``, one per input; 2 =
FITS-LDAC objects by default) as an HDU named by ``EXT_NAME`` (default: the
input file name). ``CHECK_COL_NAME`` makes every table prove it holds the
same objects in the same order.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("HDU", "int_list", [], "HDU of each input's table, one per input; empty: 2 for every input."),
    Option("EXT_NAME", "name_list", [], "EXTNAME of each output HDU, one per input; empty: the input file names."),
    Option("CHECK_COL_NAME", "name", "", "Column that must hold the same values in every table (e.g. NUMBER)."),
    Option("PREFIX", "name", "cat_pasted", "Output name before the number."),
)

PRODUCTS = (
    Product("cat_pasted", "cat_pasted{number}.fits", "fits_tables", ids=("tile",),
            description="tables of several catalogues of the same objects, one HDU each"),
)


@module(
    name="pastecat",
    products=PRODUCTS,
    version="1.0",
    description="Paste one table of each of several catalogues into one file, checking they hold the same objects.",
    aliases=("pastecat_runner",),
    input_module="sextractor",
    file_pattern="tile_sexcat",
    file_ext=".fits",
    numbering_scheme="-000-000",
    depends=("numpy", "astropy"),
    options=OPTIONS,
)
def pastecat(job):
    """Write the pasted catalogue of one file number."""
    from pathlib import Path

    from shapepipe.errors import JobError
    from shapepipe_modules.io.tables import write_fits_tables

    from .paste import PasteError, paste_tables

    options = job.options
    paths = [Path(p) for p in job.inputs]
    hdus = list(options["HDU"]) or [2] * len(paths)
    names = list(options["EXT_NAME"]) or [p.name for p in paths]
    try:
        tables = paste_tables(paths, hdus, names, options["CHECK_COL_NAME"] or None)
    except PasteError as error:
        raise JobError(str(error)) from None
    write_fits_tables(job.output_path(f"{options['PREFIX']}{job.number}.fits"), tables)
    return {"tables": len(tables), "rows": len(tables[0][1])}
