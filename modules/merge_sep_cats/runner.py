"""Declaration of the ``merge_sep_cats`` module (ShapePipe's ``merge_sep_cats_runner``).

Input: one split catalogue per file pattern (``ngmix<number>.fits`` by
default), the one found in the module's input folders. The other splits of
the same tile are ``<dir>/<name>`` for every folder of ``SPLIT_INPUT_DIR``
(folders or run references such as ``last:ngmix_run_2``) or, when that is
empty, ShapePipe's rule: the first ``1`` of the input path replaced by
``2 ... N_SPLIT_MAX``.

Output: ``<name>`` (the input's file name, e.g. ``ngmix-244-252.fits``)
with every HDU merged, rows sorted by ``id``; see :mod:`.merge` for the
checks (doubled or missing id ranges are errors). A split file that does
not exist is an error with ``WARNING = error`` (ShapePipe's default), a
logged warning otherwise.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("N_SPLIT_MAX", "int", 1, "Number of split catalogues per tile, found with ShapePipe's rule "
           "(first '1' of the input path replaced by 2..N) when SPLIT_INPUT_DIR is empty. 0 (the literal of "
           "ShapePipe's cfis_simu template, with which ShapePipe reads nothing) means 1: the input alone."),
    Option("SPLIT_INPUT_DIR", "dir_list", [], "Folders (or run references) holding the split catalogues; "
           "the input's own folder is included automatically."),
    Option("WARNING", "choice", "error", "What a missing split catalogue does: error (the job fails) or a "
           "logged warning (always, default, once, module, ignore).",
           choices=("error", "always", "default", "once", "module", "ignore")),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    if (options.get("N_SPLIT_MAX") or 0) < 0:
        problems.append(f"N_SPLIT_MAX must be at least 0, got {options.get('N_SPLIT_MAX')}")
    return problems


def split_candidates(first, options) -> list:
    """Paths of the split catalogues of one input file (existing or not)."""
    from pathlib import Path

    from .merge import shapepipe_split_paths

    first = Path(first)
    folders = options.get("SPLIT_INPUT_DIR") or []
    if folders:
        candidates = [first] + [Path(folder) / first.name for folder in folders]
    else:
        candidates = shapepipe_split_paths(first, max(1, int(options["N_SPLIT_MAX"])))
    unique, seen = [], set()
    for path in candidates:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def merge_tile(inputs, output_dir, options, logger):
    """Merge the splits of every input catalogue of one tile.

    Returns
    -------
    dict
        ``n_files`` (merged outputs), ``n_splits`` and ``n_rows`` (of the
        first HDU of the last output).
    """
    from pathlib import Path

    from .merge import merge_split_catalogues, write_merged

    summary = {"n_files": 0, "n_splits": 0, "n_rows": 0}
    for first in inputs:
        candidates = split_candidates(first, options)
        found = [path for path in candidates if path.is_file()]
        missing = [path for path in candidates if not path.is_file()]
        for path in missing:
            message = f"split catalogue {path} not found"
            if options["WARNING"] == "error":
                raise JobError(message + " (set WARNING = always to merge the others)")
            if options["WARNING"] != "ignore":
                logger.warning(message)
        header, tables = merge_split_catalogues(found, logger)
        write_merged(Path(output_dir) / Path(first).name, header, tables)
        logger.info("merged %d split catalogues into %s: %s", len(found), Path(first).name,
                    ", ".join(str(p) for p in found))
        summary["n_files"] += 1
        summary["n_splits"] += len(found)
        summary["n_rows"] = len(next(iter(tables.values()))) if tables else 0
    return summary


PRODUCTS = (
    Product("ngmix_merged", "*{number}.fits", "fits_tables", ids=("tile",),
            description="ngmix catalogues of the object-id splits merged"),
)


@module(
    name="merge_sep_cats",
    products=PRODUCTS,
    version="2.0",
    description="Merge the id-range splits of a tile's catalogues (e.g. ngmix) into one file, checked.",
    aliases=("merge_sep_cats_runner",),
    input_module="ngmix",
    file_pattern=("ngmix",),
    file_ext=(".fits",),
    numbering_scheme="-000-000",
    depends=("numpy", "astropy"),
    options=OPTIONS,
    validate=validate,
)
def merge_sep_cats(job):
    """Merge the split catalogues of one tile."""
    return merge_tile(job.inputs, job.output_dir, job.options, job.logger)
