"""Declaration of the ``forced_phot`` module: PSF and aperture fluxes of every tile object per epoch.

Input: the tile's multi-epoch catalogue (``sextractor`` with
``MAKE_POST_PROCESS``: ``LDAC_OBJECTS`` and ``EPOCH_i`` HDUs). For every
object and every exposure CCD that saw it, the CCD's split files
(``<ME_IMAGE_DIR>/<pattern>-<exposure>-<ccd>.fits``, patterns
``ME_IMAGE_PATTERN``: image, weight, flag) and PSF model
(``<ME_DOT_PSF_DIR>/<ME_DOT_PSF_PATTERN>-<exposure>-<ccd>.psf``) give a
forced PSF-fit flux and an aperture flux, calibrated with the zero points
of ``QUALITY_TABLE`` (``exposure_quality``) or the headers' ``PHOTZP``;
exposures of ``EXCLUDE_LIST`` are left out. See :mod:`.forced` and
:mod:`.photometry`.

Output ``forced_phot<number>.fits`` (e.g. ``forced_phot-244-252.fits``):
HDU ``FORCED_PHOT``, one row per (object, epoch), joinable with the final
catalogue on ``NUMBER``; HDU ``EPOCHS``, one row per exposure CCD with its
date, zero points and whether (or why not) it was used.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("ME_IMAGE_DIR", "dir", None, "Folder (or last:split_exp) of the split single-exposure files."),
    Option("ME_IMAGE_PATTERN", "name_list", ["image", "weight", "flag"],
           "Patterns of the CCD image, weight and flag files (<pattern>-<exposure>-<ccd>.fits)."),
    Option("ME_DOT_PSF_DIR", "dir", None, "Folder (or last:psfex) of the CCDs' .psf models."),
    Option("ME_DOT_PSF_PATTERN", "name", "star_selection", "Model file names are <pattern>-<exposure>-<ccd>.psf."),
    Option("QUALITY_TABLE", "store", "", "exposure_quality table (file, folder or last:exposure_quality) "
           "giving the zero points; empty: each CCD header's PHOTZP.", file_name="exposure_quality-0000000.fits"),
    Option("EXCLUDE_LIST", "store", "", "Exposures to leave out (file, folder or last:exposure_quality), "
           "one 'EXPOSURE REASON' line each.", file_name="exposure_exclude-0000000.txt"),
    Option("POSITION_PARAMS", "list", ["XWIN_WORLD", "YWIN_WORLD"], "World position columns of the tile objects."),
    Option("STAMP_SIZE", "int", 21, "Side of the PSF-fit stamps, pixels (odd)."),
    Option("APER_RADIUS", "float", 1.0, "Radius of the aperture fluxes, arcsec."),
    Option("BLEND_RADIUS", "float", 3.0, "Objects with another tile object within this radius (arcsec) "
           "are flagged BLENDED (16) in every epoch; 0: never."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    size = options.get("STAMP_SIZE")
    if size is not None and (size < 3 or size % 2 == 0):
        problems.append("STAMP_SIZE must be odd and at least 3")
    if options.get("APER_RADIUS") is not None and options["APER_RADIUS"] <= 0:
        problems.append("APER_RADIUS must be positive")
    if len(options.get("ME_IMAGE_PATTERN") or []) != 3:
        problems.append("ME_IMAGE_PATTERN needs three patterns: image, weight, flag")
    if len(options.get("POSITION_PARAMS") or []) != 2:
        problems.append("POSITION_PARAMS needs two column names")
    for key in ("ME_IMAGE_DIR", "ME_DOT_PSF_DIR"):
        if not options.get(key):
            problems.append(f"{key} is required")
    return problems


PRODUCTS = (
    Product("forced_phot", "forced_phot{number}.fits", "fits_table", ids=("tile",),
            description="forced PSF and aperture photometry of every tile object in every epoch"),
)


def read_quality_table(path):
    """The exposure_quality table, or JobError naming the file and the key."""
    from shapepipe_modules.io.tables import FitsTableError, read_fits_table

    try:
        table = read_fits_table(path)
    except FitsTableError as error:
        raise JobError(f"[FORCED_PHOT] QUALITY_TABLE: {error}") from None
    missing = [name for name in ("EXPOSURE", "CCD", "ZP", "ZP_PSF") if name not in table.colnames]
    if missing:
        raise JobError(f"[FORCED_PHOT] QUALITY_TABLE {path}: no column {', '.join(missing)}")
    return table


@module(
    name="forced_phot",
    products=PRODUCTS,
    version="1.0",
    description="Forced PSF-fit and aperture photometry of every tile object on every exposure CCD, calibrated.",
    input_module="sextractor",
    file_pattern="sexcat",
    file_ext=".fits",
    numbering_scheme="-000-000",
    depends=("numpy", "astropy"),
    preload=("astropy.io.fits", "astropy.wcs", "shapepipe_modules.io.psfex_file",
             "shapepipe_modules.forced_phot.forced"),
    options=OPTIONS,
    validate=validate,
)
def forced_phot(job):
    """Write ``forced_phot<number>.fits``."""
    from pathlib import Path

    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.exposure_quality.quality import read_exclusion_list
    from shapepipe_modules.io.tables import write_fits_tables
    from shapepipe_modules.psfinterp.multi_epoch import EpochCatalogueError, read_tile_catalogue

    from .forced import ROW_COLUMNS, Calibration, epoch_table, measure_tile

    options = job.options
    try:
        catalogue = read_tile_catalogue(job.inputs[0], options["POSITION_PARAMS"])
    except EpochCatalogueError as error:
        raise JobError(str(error)) from None
    calibration = Calibration.from_quality_table(read_quality_table(options["QUALITY_TABLE"])) \
        if options["QUALITY_TABLE"] else None
    try:
        excluded = read_exclusion_list(options["EXCLUDE_LIST"]) if options["EXCLUDE_LIST"] else {}
    except OSError as error:
        raise JobError(f"[FORCED_PHOT] EXCLUDE_LIST: {error}") from None
    image_dir, psf_dir = Path(options["ME_IMAGE_DIR"]), Path(options["ME_DOT_PSF_DIR"])
    patterns = options["ME_IMAGE_PATTERN"]

    def ccd_paths(exposure, ccd):
        return [image_dir / f"{pattern}-{exposure}-{ccd}.fits" for pattern in patterns]

    def psf_path(exposure, ccd):
        return psf_dir / f"{options['ME_DOT_PSF_PATTERN']}-{exposure}-{ccd}.psf"

    result = measure_tile(catalogue, ccd_paths, psf_path, calibration, excluded, options["STAMP_SIZE"],
                          options["APER_RADIUS"], options["BLEND_RADIUS"], job.logger)
    header = fits.Header()
    header["STAMPSZ"] = (options["STAMP_SIZE"], "STAMP_SIZE, pixels")
    header["APERRAD"] = (options["APER_RADIUS"], "APER_RADIUS, arcsec")
    header["BLENDRAD"] = (options["BLEND_RADIUS"], "BLEND_RADIUS, arcsec")
    header["ZPSOURCE"] = ("quality" if calibration is not None else "header", "zero points from")
    rows = Table({name: result.rows[name] for name, _ in ROW_COLUMNS})
    write_fits_tables(job.output_path(f"forced_phot{job.number}.fits"),
                      [("FORCED_PHOT", rows, header), ("EPOCHS", epoch_table(result.epochs), None)])
    used = sum(1 for row in result.epochs if row["USED"])
    job.logger.info("%s: %d object-epochs of %d objects on %d/%d exposure CCDs", job.inputs[0], len(rows),
                    result.n_objects_measured, used, len(result.epochs))
    return {"objects": len(catalogue.number), "object_epochs": len(rows), "ccds_used": used,
            "ccds_left_out": len(result.epochs) - used}
