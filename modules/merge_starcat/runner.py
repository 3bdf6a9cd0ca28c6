"""Module declaration of ``merge_starcat`` (ShapePipe's ``merge_starcat_runner``).

Serial: merges every psfinterp VALIDATION catalogue (``validation_psf``)
into ``full_starcat-0000000.fits`` (FITS-LDAC, objects in HDU 2 as in
ShapePipe), adding ``EXP_NAME`` and ``CCD_NB`` from each file number.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("PSF_MODEL", "choice", "psfex", "Kind of validation catalogues; psfinterp VALIDATION outputs "
           "(ShapePipe's psfex). ShapePipe's mccd and setools variants are not supported.",
           choices=("psfex",)),
)


PRODUCTS = (
    Product("full_starcat", "full_starcat-0000000.fits", "ldac",
            description="every validation star of the run (FITS-LDAC)"),
)


@module(
    name="merge_starcat",
    products=PRODUCTS,
    version="2.0",
    description="Merge psfinterp VALIDATION star catalogues into one (with exposure and CCD columns).",
    aliases=("merge_starcat_runner",),
    input_module="psfinterp",
    file_pattern="validation_psf",
    file_ext=".fits",
    numbering_scheme="-0000000-0",
    run_method="serial",
    depends=("numpy", "astropy"),
    options=OPTIONS,
)
def merge_starcat(job):
    """Write ``full_starcat-0000000.fits``."""
    from astropy.io import fits

    from shapepipe_modules.io.ldac import write_ldac

    from .merge import MergeError, merge_validation

    try:
        merged = merge_validation(job.input_table, job.logger)
    except MergeError as error:
        raise JobError(str(error)) from None
    header = fits.Header()
    header["NCATS"] = (len(job.input_table), "Number of merged validation catalogues")
    write_ldac(job.output_path("full_starcat-0000000.fits"), merged, header)
    exposures = len(set(merged["EXP_NAME"].tolist()))
    job.logger.info("merged %d stars from %d catalogues (%d exposures)", len(merged), len(job.input_table),
                    exposures)
    return {"stars": len(merged), "catalogues": len(job.input_table), "exposures": exposures}
