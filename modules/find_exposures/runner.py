"""Declaration of the ``find_exposures`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("COLNUM", "int", None,
           "Index of the exposure file name in HISTORY cards split on single spaces (ShapePipe's "
           "rule). Cards reading 'input image <file>' always give <file>, wherever it stands; "
           "COLNUM applies to other HISTORY cards, which are ignored when it is unset."),
    Option("EXP_PREFIX", "name", "",
           "Prefix removed from the start of each exposure name."),
)


def validate(options):
    """Cross-field checks before the run."""
    if options["COLNUM"] is not None and options["COLNUM"] < 0:
        return ["COLNUM must be 0 or more (or unset for automatic detection)"]
    return []


PRODUCTS = (
    Product("exp_numbers", "exp_numbers{number}.txt", "text", ids=("tile",),
            description="exposures contributing to a tile, one per line"),
)


@module(
    name="find_exposures",
    products=PRODUCTS,
    version="2.0",
    description="List the exposures stacked into each tile (HISTORY cards) in exp_numbers<number>.txt.",
    aliases=("find_exposures_runner",),
    input_module="get_images",
    file_pattern=("CFIS_image",),
    file_ext=(".fits",),
    numbering_scheme="-000-000",
    depends=("astropy",),
    preload=(
             "astropy.io.fits",
    ),
    options=OPTIONS,
    validate=validate,
)
def find_exposures(job):
    """Write exp_numbers<number>.txt with the exposures of the tile."""
    from .find_exposures import find_exposures as exposures_of_tile
    from .find_exposures import output_file_name, write_exposure_list

    names = exposures_of_tile(job.inputs[0], job.options["COLNUM"], job.options["EXP_PREFIX"])
    write_exposure_list(job.output_path(output_file_name(job.number)), names)
    job.logger.info("%d exposures in %s", len(names), job.inputs[0])
    return {"exposures": len(names)}
