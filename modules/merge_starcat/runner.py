"""Module declaration of ``merge_starcat`` (ShapePipe's ``merge_starcat_runner``).

Serial: merges every psfinterp VALIDATION catalogue (``validation_psf``;
``PSF_MODEL = setools``: star selections, any columns)
into ``full_starcat-0000000.fits`` (FITS-LDAC, objects in HDU 2 as in
ShapePipe), adding ``EXP_NAME`` and ``CCD_NB`` from each file number.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option
from shapepipe_modules.shapepipe_compat import MCCD_CONFIG_PATH, MCCD_MODE, MCCD_VERBOSE

OPTIONS = (
    Option("PSF_MODEL", "choice", "psfex", "Kind of catalogues merged: psfex and mccd, PSF validation "
           "catalogues (psfinterp VALIDATION columns, whatever the PSF model); setools, star selections "
           "(any columns, kept when every catalogue has them).", choices=("psfex", "mccd", "setools")),
    Option("HDU", "int", None, "HDU of the rows in every input; unset: the FITS-LDAC objects table "
           "(HDU 2 of ShapePipe's catalogues)."),
    MCCD_VERBOSE,
    MCCD_MODE,
    MCCD_CONFIG_PATH,
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

    from .merge import REQUIRED, MergeError, merge_validation

    try:
        required = () if job.options["PSF_MODEL"] == "setools" else REQUIRED
        merged = merge_validation(job.input_table, job.logger, required=required, hdu=job.options.get("HDU"))
    except MergeError as error:
        raise JobError(str(error)) from None
    header = fits.Header()
    header["NCATS"] = (len(job.input_table), "Number of merged validation catalogues")
    write_ldac(job.output_path("full_starcat-0000000.fits"), merged, header)
    exposures = len(set(merged["EXP_NAME"].tolist()))
    job.logger.info("merged %d stars from %d catalogues (%d exposures)", len(merged), len(job.input_table),
                    exposures)
    return {"stars": len(merged), "catalogues": len(job.input_table), "exposures": exposures}
