"""Declaration of the ``match_external`` module (ShapePipe's ``match_external_runner``).

Input: a catalogue (FITS table in HDU ``HDU``, e.g. a SExtractor or final
catalogue). Output: ``<PREFIX><number>.fits``, HDU ``MATCHED``: the rows
of the catalogue whose nearest external object (``EXTERNAL_CAT_PATH``) lies
within ``TOLERANCE`` arcsec, with the ``EXTERNAL_COL_COPY`` columns copied
(every row with ``MARK_NON_MATCHED``); ``MODE = MULTI-EPOCH`` also copies
the same rows of every ``EPOCH`` HDU of the input. No match: no output,
and the job ends 'unprocessable' (as ShapePipe writes nothing).
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option
from shapepipe_modules.shapepipe_compat import NO_EFFECT

OPTIONS = (
    Option("TOLERANCE", "float", help="Largest matching distance, arcsec."),
    Option("COL_MATCH", "list", help="RA and Dec columns (degrees) of the catalogue."),
    Option("HDU", "int", 2, "HDU of the catalogue table (2: FITS-LDAC objects)."),
    Option("MODE", "choice", "CLASSIC", "CLASSIC: the table only; MULTI-EPOCH: also the EPOCH HDUs.",
           choices=("CLASSIC", "MULTI-EPOCH")),
    Option("EXTERNAL_CAT_PATH", "file", help="External catalogue (FITS)."),
    Option("EXTERNAL_COL_MATCH", "list", help="RA and Dec columns (degrees) of the external catalogue."),
    Option("EXTERNAL_COL_COPY", "list", [], "External columns copied into the output."),
    Option("EXTERNAL_HDU", "int", 1, "HDU of the external table."),
    Option("PREFIX", "name", "cat_matched", "Output name before the number."),
    Option("MARK_NON_MATCHED", "float", None, "Keep every object; copied columns of unmatched ones hold this "
           "value."),
    Option("OUTPUT_DISTANCE", "bool", False, "Add the column distance (arcsec) to the nearest external object."),
    Option("OUTPUT_FILE_PATTERN", "name", None, "Written in ShapePipe's example config, but ShapePipe names the "
           "output with PREFIX." + NO_EFFECT, ignored=True),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    for key in ("COL_MATCH", "EXTERNAL_COL_MATCH"):
        if options.get(key) is not None and len(options[key]) != 2:
            problems.append(f"{key}: expected two column names (RA, Dec), got {len(options[key])}")
    if options.get("TOLERANCE") is not None and options["TOLERANCE"] <= 0:
        problems.append(f"TOLERANCE must be positive, got {options['TOLERANCE']}")
    return problems


PRODUCTS = (
    Product("cat_matched", "cat_matched{number}.fits", "fits_tables", ids=("tile",),
            description="catalogue rows matched to the external catalogue, with its columns"),
)


@module(
    name="match_external",
    products=PRODUCTS,
    version="1.0",
    description="Match a catalogue to an external one on the sky and copy chosen external columns.",
    aliases=("match_external_runner",),
    input_module="sextractor",
    file_pattern="tile_sexcat",
    file_ext=".fits",
    numbering_scheme="-000-000",
    depends=("numpy", "scipy", "astropy"),
    options=OPTIONS,
    validate=validate,
)
def match_external(job):
    """Write the matched catalogue of one input."""
    from astropy.io import fits

    from shapepipe.errors import JobError, JobUnprocessable
    from shapepipe_modules.io.tables import FitsTableError, read_fits_table, write_fits_tables

    from .match import MatchError, match_columns

    options = job.options
    path = job.inputs[0]
    try:
        table = read_fits_table(path, options["HDU"])
        external = read_fits_table(options["EXTERNAL_CAT_PATH"], options["EXTERNAL_HDU"])
        matched, keep, n_matched = match_columns(
            table, external, options["COL_MATCH"], options["EXTERNAL_COL_MATCH"], options["EXTERNAL_COL_COPY"],
            options["TOLERANCE"], options["MARK_NON_MATCHED"], options["OUTPUT_DISTANCE"])
    except (FitsTableError, MatchError) as error:
        raise JobError(f"{path}: {error}") from None
    job.logger.info("%s: %d of %d objects matched within %g arcsec", path, n_matched, len(table),
                    options["TOLERANCE"])
    if n_matched == 0:
        raise JobUnprocessable(f"{path}: no object within {options['TOLERANCE']} arcsec of "
                            f"{options['EXTERNAL_CAT_PATH']}")
    tables = [("MATCHED", matched, None)]
    if options["MODE"] == "MULTI-EPOCH":
        with fits.open(path, memmap=False) as hdus:
            epochs = [(index, hdu.name) for index, hdu in enumerate(hdus) if "EPOCH" in hdu.name]
        for index, name in epochs:
            epoch = read_fits_table(path, index)
            if len(epoch) != len(table):
                raise JobError(f"{path}: HDU {name} has {len(epoch)} rows but HDU {options['HDU']} has {len(table)}")
            tables.append((name, {column: epoch[column][keep] for column in epoch.colnames}, None))
    write_fits_tables(job.output_path(f"{options['PREFIX']}{job.number}.fits"), tables)
    return {"objects": len(table), "matched": n_matched, "written": int(len(keep))}
