"""Declaration of the ``uncompress_fits`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("HDU_DATA", "int", None,
           "HDU holding the image. Unset: the first HDU with a 2-D image (HDU 1 of a .fits.fz "
           "file, HDU 0 of a plain file); ShapePipe's default was 0."),
    Option("KEEP_COMPRESSION", "bool", False,
           "Write a tile-compressed input HDU as its compressed tiles, copied byte for byte (fpack "
           "layout: the same values for the pipeline's readers, which take both layouts, at the "
           "input's size) instead of a plain image; for SExtractor's binary, which needs plain "
           "files, leave False."),
    Option("OUTPUT_PATTERN", "name_list", [],
           "Output name prefix of each input, in FILE_PATTERN order; the output is "
           "<prefix><number>.fits. Empty: each input keeps its own prefix."),
)


PRODUCTS = (
    Product("tile_weight", "CFIS_weight{number}.fits", "fits_image", ids=("tile",),
            description="tile weight: plain, or its compressed tiles with KEEP_COMPRESSION"),
    Product("uncompressed_image", "{prefix}{number}.fits", "fits_image", ids=("tile", "exposure_ccd", "exposure"),
            description="any other uncompressed image (key: its file prefix)"),
)


@module(
    name="uncompress_fits",
    products=PRODUCTS,
    version="2.0",
    description="Uncompress tile-compressed .fits.fz images into plain single-HDU FITS files.",
    aliases=("uncompress_fits_runner",),
    file_pattern=("image",),
    file_ext=(".fits.fz",),
    numbering_scheme="_0",
    depends=("numpy", "astropy"),
    preload=(
             "astropy.io.fits",
    ),
    options=OPTIONS,
)
def uncompress_fits(job):
    """Write <OUTPUT_PATTERN><number>.fits for every input file of the job."""
    from shapepipe.errors import JobError

    from .uncompress_fits import output_name, uncompress

    patterns = job.options["OUTPUT_PATTERN"]
    if patterns and len(patterns) != len(job.inputs):
        raise JobError(
            f"OUTPUT_PATTERN gives {len(patterns)} prefixes but the job has {len(job.inputs)} input "
            f"files ({', '.join(p.name for p in job.inputs)}): give one per FILE_PATTERN"
        )
    names = [output_name(path, job.number, patterns[i] if patterns else None) for i, path in enumerate(job.inputs)]
    if len(set(names)) != len(names):
        raise JobError(f"two inputs would be written to the same file: {', '.join(names)}; set OUTPUT_PATTERN")
    for path, name in zip(job.inputs, names):
        info = uncompress(path, job.output_path(name), job.options["HDU_DATA"],
                          keep_compressed=job.options["KEEP_COMPRESSION"])
        job.logger.info("%s HDU %d -> %s", path, info["hdu"], name)
    return {"files": len(names)}
