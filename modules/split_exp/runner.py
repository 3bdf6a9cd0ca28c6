"""Declaration of the ``split_exp`` module."""

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("OUTPUT_SUFFIX", "name_list", ["image", "weight", "flag"],
           "Output name prefix of each input mosaic, in FILE_PATTERN order (ShapePipe's name for "
           "it). A prefix containing 'flag' stores integer data; the one containing 'image' gives "
           "the per-CCD headers written to headers-NNNNNNN.npy for merge_headers."),
    Option("COMPRESS", "name_list", ["weight", "flag"],
           "Prefixes (of OUTPUT_SUFFIX) whose CCD files are tile-compressed without loss (fpack layout: "
           "a float CCD tile-compressed in the input keeps its compressed tiles, copied byte for byte: the "
           "same values at the input's size; else RICE_1 for flags, 60-90x, nearly free; unquantised GZIP_2 "
           "for floats: weights 3x, images 1.5x, at about 0.1 s CPU per million pixels to write and 0.025 s "
           "per read); 'none' for none. The pipeline's readers and astropy read them (SExtractor's binary "
           "through a plain copy)."),
    Option("N_HDU", "int", 0,
           "Number of CCDs (HDUs 1 to N_HDU) to split; 0 splits every image extension. A mosaic "
           "with fewer extensions fails its job."),
)


def validate(options):
    """Cross-field checks before the run."""
    problems = []
    if options["N_HDU"] < 0:
        problems.append("N_HDU must be 0 (every CCD) or a positive number of CCDs")
    prefixes = options["OUTPUT_SUFFIX"]
    if len(set(prefixes)) != len(prefixes):
        problems.append(f"OUTPUT_SUFFIX has repeated prefixes: {', '.join(prefixes)}")
    return problems


PRODUCTS = (
    Product("exposure", "image{number}.fits", "fits_image", ids=("exposure_ccd",),
            description="one CCD of a single exposure"),
    Product("exposure_weight", "weight{number}.fits", "fits_image", ids=("exposure_ccd",),
            description="weight of one CCD"),
    Product("exposure_flag", "flag{number}.fits", "fits_image", ids=("exposure_ccd",),
            description="flag of one CCD"),
    Product("exposure_headers", "headers{number}.npy", "npy", ids=("exposure",),
            description="CCD headers of an exposure (text, one per CCD)"),
)


@module(
    name="split_exp",
    products=PRODUCTS,
    version="2.0",
    description="Split exposure mosaics (image, weight, flag) into one FITS file per CCD, "
                "keeping each CCD's header and WCS.",
    aliases=("split_exp_runner",),
    input_module="get_images",
    file_pattern=("image", "weight", "flag"),
    file_ext=(".fits.fz", ".fits.fz", ".fits.fz"),
    numbering_scheme="-0000000",
    depends=("numpy", "astropy"),
    preload=(
             "astropy.io.fits",
             "astropy.wcs",
             "shapepipe_modules.split_exp.split_exp",
    ),
    options=OPTIONS,
    validate=validate,
)
def split_exp(job):
    """Write <prefix><number>-<ccd>.fits for every mosaic and CCD, and headers<number>.npy."""
    from .split_exp import split_exposure

    prefixes = job.options["OUTPUT_SUFFIX"]
    if len(prefixes) != len(job.inputs):
        from shapepipe.errors import JobError

        raise JobError(
            f"OUTPUT_SUFFIX gives {len(prefixes)} prefixes but the job has {len(job.inputs)} input "
            f"files ({', '.join(p.name for p in job.inputs)}): give one prefix per FILE_PATTERN"
        )
    compress = {name for name in job.options["COMPRESS"] if name.lower() != "none"}
    result = split_exposure(
        job.inputs, prefixes, job.number, job.output_dir, n_hdu=job.options["N_HDU"], logger=job.logger,
        compress=compress,
    )
    job.logger.info("split %d mosaics of %d CCDs", len(job.inputs), result.n_ccd)
    return {"ccds": result.n_ccd, "files": len(result.files)}
