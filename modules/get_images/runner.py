"""Declaration of the ``get_images`` module."""

import os
import re

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option
from shapepipe_modules.shapepipe_compat import NO_EFFECT

OFFLINE = ("RETRIEVE = vos (download from VOSpace) is not available: this pipeline works on local "
           "files only; copy the data to a local folder and use RETRIEVE = symlink or copy")

OPTIONS = (
    Option("INPUT_PATH", "list", help="Folder of each file type (one for all types, or one per "
           "INPUT_FILE_PATTERN); local folders only."),
    Option("INPUT_FILE_PATTERN", "name_list", help="Input name of each file type with a dummy ID matched "
           "by INPUT_NUMBERING (CFIS.000.000.r, 000000.flag); '*' is a wildcard."),
    Option("INPUT_FILE_EXT", "name_list", help="Extension of each file type (.fits, .fits.fz; ShapePipe's "
           ".fitsfz is read as .fits.fz); one for all types, or one per pattern."),
    Option("OUTPUT_FILE_PATTERN", "name_list", help="Output name prefix of each file type (CFIS_image-, "
           "flag-); the output is <prefix><ID with dots as dashes, letters removed><ext>. '*' keeps "
           "the input names."),
    Option("INPUT_NUMBERING", "str", help=r"Regular expression matching the dummy ID in "
           r"INPUT_FILE_PATTERN (\d{3}\.\d{3} for tiles, \d{6} for exposures)."),
    Option("RETRIEVE", "choice", "symlink", "How files are brought in: symlink (a link to the "
           "input) or copy. ShapePipe's vos (with vos: INPUT_PATHs) validates, and its jobs fail "
           "saying that VOSpace is not available here (offline).",
           choices=("symlink", "copy", "vos")),
    Option("RETRIEVE_OPTIONS", "str", "", "Options of ShapePipe's vcp download." + NO_EFFECT, ignored=True),
    Option("N_TRY", "int", 3, "Attempts per file when copying."),
    Option("OUTPUT_PATH", "str", "", "ShapePipe's output folder: files go into the module run's output "
           "folder." + NO_EFFECT, ignored=True),
    Option("CHECK_EXISTING_DIR", "str", "", "If set, a file whose output or input name is found "
           "N_EXPECTED times anywhere below this folder is not retrieved again."),
    Option("N_EXPECTED", "int", 1, "Number of copies of a file under CHECK_EXISTING_DIR that count as "
           "already retrieved."),
)


def validate(options):
    """Check the option lists before the run (offline, lengths, regex, folders)."""
    from .get_images import file_types

    problems = []
    paths = options["INPUT_PATH"]
    if any(path.lower().startswith("vos:") for path in paths):
        # ShapePipe's VOSpace form validates; its jobs fail with OFFLINE (no network here).
        if options["RETRIEVE"] != "vos":
            problems.append(f"INPUT_PATH {', '.join(paths)}: VOSpace paths need RETRIEVE = vos, which is "
                            "not available here (offline); copy the data to a local folder and give it here")
    try:
        numbering = re.compile(options["INPUT_NUMBERING"])
    except re.error as error:
        problems.append(f"INPUT_NUMBERING {options['INPUT_NUMBERING']!r} is not a valid regular expression: {error}")
        numbering = None
    try:
        file_types(paths, options["INPUT_FILE_PATTERN"], options["INPUT_FILE_EXT"], options["OUTPUT_FILE_PATTERN"])
    except ValueError as error:
        problems.append(str(error))
    if numbering is not None:
        for pattern in options["INPUT_FILE_PATTERN"]:
            if not numbering.search(pattern) and "*" not in pattern:
                problems.append(f"INPUT_FILE_PATTERN {pattern!r} holds no match of INPUT_NUMBERING "
                                f"{options['INPUT_NUMBERING']!r}: the ID would not appear in the file name")
    for path in paths:
        if not path.lower().startswith("vos:") and not os.path.isdir(os.path.expanduser(path)):
            problems.append(f"INPUT_PATH: directory {path} does not exist")
    if options["N_TRY"] < 1:
        problems.append("N_TRY must be at least 1")
    if options["N_EXPECTED"] < 1:
        problems.append("N_EXPECTED must be at least 1")
    existing = options["CHECK_EXISTING_DIR"]
    if existing and not os.path.isdir(os.path.expanduser(existing)):
        problems.append(f"CHECK_EXISTING_DIR: directory {existing} does not exist")
    return problems


PRODUCTS = (
    Product("tile_image", "CFIS_image{number}.fits", "fits_image", ids=("tile",),
            description="stacked tile image (a link to the retrieved file)"),
    Product("tile_weight_fz", "CFIS_weight{number}.fits.fz", "fits_image", ids=("tile",),
            description="tile weight, tile-compressed"),
    Product("raw", "image{number}.fits", "fits_images", ids=("exposure",),
            description="single exposure, one HDU per CCD"),
    Product("raw_weight", "weight{number}.fits.fz", "fits_images", ids=("exposure",),
            description="single-exposure weight, one HDU per CCD"),
    Product("raw_flag", "flag{number}.fits.fz", "fits_images", ids=("exposure",),
            description="single-exposure flag, one HDU per CCD"),
)


@module(
    name="get_images",
    products=PRODUCTS,
    version="2.0",
    description="Bring tiles or exposures listed by ID into the run (symlink or copy), renamed "
                "to pipeline names.",
    aliases=("get_images_runner",),
    file_pattern=("tile_numbers",),
    file_ext=(".txt",),
    numbering_scheme="",
    run_method="serial",
    options=OPTIONS,
    validate=validate,
)
def get_images(job):
    """Retrieve every file type for every ID of the input ID lists."""
    from shapepipe.errors import JobError

    from .get_images import existing_names, file_types, plan_transfers, read_id_lists, retrieve

    options = job.options
    if options["RETRIEVE"] == "vos":
        raise JobError(OFFLINE)
    for key in ("RETRIEVE_OPTIONS", "OUTPUT_PATH"):
        if options[key]:
            job.logger.info("%s = %s is ignored (see --describe get_images)", key, options[key])
    lists = [path for paths in job.input_table.values() for path in paths] or list(job.inputs)
    identifiers = read_id_lists(lists)
    if not identifiers:
        raise JobError(f"no image ID in {', '.join(map(str, lists))}")
    job.logger.info("%d unique IDs from %d list(s)", len(identifiers), len(lists))
    types = file_types(options["INPUT_PATH"], options["INPUT_FILE_PATTERN"], options["INPUT_FILE_EXT"],
                       options["OUTPUT_FILE_PATTERN"])
    transfers = plan_transfers(identifiers, types, options["INPUT_NUMBERING"])
    existing = None
    if options["CHECK_EXISTING_DIR"]:
        folder = os.path.abspath(os.path.expanduser(options["CHECK_EXISTING_DIR"]))
        existing = existing_names(folder, exclude=(job.output_dir,))
    counts = retrieve(transfers, job.output_dir, options["RETRIEVE"], options["N_TRY"], existing,
                      options["N_EXPECTED"], job.logger)
    return {"ids": len(identifiers), **counts}
