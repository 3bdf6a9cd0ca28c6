"""Module declaration of ``psfinterp`` (ShapePipe's ``psfex_interp_runner``).

Modes (``MODE``) and their inputs (``FILE_PATTERN`` order):

``CLASSIC``
    ``.psf`` model and a CCD catalogue: the PSF at every object, written to
    ``galaxy_psf<number>.fits`` (FITS-LDAC: ``NUMBER``, ``VIGNET``, HSM
    shape columns with ``GET_SHAPES``, ``PSF_FLAG``).
``VALIDATION``
    ``.psf`` model (``star_split_ratio_80``), the reserved stars
    (``star_split_ratio_20``) and PSFEx's output catalogue (``psfex_cat``,
    optional): HSM shapes of each star and of the model at its position,
    with position, magnitude, SNR and ``ACCEPTED`` (1 if the star was used
    by the fit), written to ``validation_psf<number>.fits``.
``MULTI-EPOCH``
    The tile catalogue with ``EPOCH_i`` HDUs: the PSF of every object in
    every exposure, from the models in ``ME_DOT_PSF_DIR`` and the WCS of
    the header store ``ME_LOG_WCS``, written to ``galaxy_psf<number>.sqlite``
    (a stamp store, see :mod:`.multi_epoch`) plus
    ``psf_ccd_status<number>.fits``.

A model with fewer accepted stars than ``STAR_THRESH`` or a chi2 above
``CHI2_THRESH`` is rejected: CLASSIC and VALIDATION rows then carry
``PSF_FLAG`` (1 too few stars, 2 chi2 too high) and NaN model values;
MULTI-EPOCH objects lose that epoch, and objects left with none are stored
with the reason.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

MODES = ("CLASSIC", "VALIDATION", "MULTI-EPOCH")
INPUT_COUNTS = {"CLASSIC": (2, 2), "VALIDATION": (2, 3), "MULTI-EPOCH": (1, 1)}

OPTIONS = (
    Option("MODE", "choice", "CLASSIC", "CLASSIC: PSF at every object of a CCD catalogue; VALIDATION: "
           "shapes of reserved stars and of the model; MULTI-EPOCH: PSF of every tile object in every epoch.",
           choices=MODES),
    Option("POSITION_PARAMS", "list", [], "The two position columns; empty: the model's POLNAME1/2 "
           "(CLASSIC, VALIDATION) or XWIN_WORLD, YWIN_WORLD (MULTI-EPOCH)."),
    Option("GET_SHAPES", "bool", True, "Measure HSM shapes of the PSF stamps (CLASSIC, MULTI-EPOCH)."),
    Option("STAR_THRESH", "int", 20, "A model with fewer accepted stars is rejected."),
    Option("CHI2_THRESH", "float", 2.0, "A model with a larger reduced chi2 is rejected."),
    Option("STAMP_SIZE", "int", 0, "Side of the PSF stamps in image pixels; 0: the model's grid size "
           "(VALIDATION uses the stars' VIGNET size)."),
    Option("CENTRE_ON_OBJECT", "bool", False, "Centre each PSF at the object's sub-pixel position "
           "(as in its VIGNET) instead of the stamp's central pixel (CLASSIC, MULTI-EPOCH)."),
    Option("ME_STAMPS_FROM_MODEL", "bool", False,
           "MULTI-EPOCH: store each CCD's PSF model once in galaxy_psf<number>.sqlite instead of every "
           "object-epoch's stamp (10 kB each at 51 x 51: 1.8 GB on a real tile); readers of the store "
           "(spread_model, ngmix, make_catalog) get the same float32 stamps, drawn from the model when "
           "read (about 0.05 ms per stamp)."),
    Option("ME_DOT_PSF_DIR", "dir", None, "MULTI-EPOCH: folder of the exposures' .psf models, e.g. last:psfex."),
    Option("ME_DOT_PSF_PATTERN", "name", "star_split_ratio_80",
           "MULTI-EPOCH: model file names are <pattern>-<exposure>-<ccd>.psf."),
    Option("ME_LOG_WCS", "store", None, "MULTI-EPOCH: header store of the exposures: the file, or a folder "
           "or reference holding log_exp_headers.sqlite (e.g. last:merge_headers).",
           file_name="log_exp_headers.sqlite"),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    params = options.get("POSITION_PARAMS") or []
    if params and len(params) != 2:
        problems.append(f"POSITION_PARAMS: expected two column names, got {len(params)}")
    if options.get("STAR_THRESH") is not None and options["STAR_THRESH"] < 0:
        problems.append("STAR_THRESH must be 0 or more")
    if options.get("STAMP_SIZE") and (options["STAMP_SIZE"] < 0 or options["STAMP_SIZE"] % 2 == 0):
        problems.append("STAMP_SIZE must be odd (or 0 for the model's size)")
    if options.get("MODE") == "MULTI-EPOCH":
        for key in ("ME_DOT_PSF_DIR", "ME_LOG_WCS"):
            if not options.get(key):
                problems.append(f"{key} is required with MODE = MULTI-EPOCH")
    return problems


PRODUCTS = (
    Product("validation_psf", "validation_psf{number}.fits", "ldac", ids=("exposure_ccd",),
            description="stars with the PSF model at their positions (VALIDATION)"),
    Product("galaxy_psf", "galaxy_psf{number}.sqlite", "stamp_store", ids=("tile",),
            description="PSF stamps of every object and epoch (MULTI-EPOCH)"),
    Product("galaxy_psf_classic", "galaxy_psf{number}.fits", "ldac", ids=("exposure_ccd", "tile"),
            description="PSF at every object of one image (CLASSIC)"),
    Product("psf_ccd_status", "psf_ccd_status{number}.fits", "fits_table", ids=("tile",),
            description="usable or rejected PSF model of each CCD epoch"),
)


@module(
    name="psfinterp",
    products=PRODUCTS,
    version="2.0",
    description="PSF from PSFEx models at object positions (CLASSIC, VALIDATION, MULTI-EPOCH).",
    aliases=("psfex_interp_runner", "psfex_interp"),
    input_module=("psfex", "setools"),
    file_pattern=("star_selection", "galaxy_selection"),
    file_ext=(".psf", ".fits"),
    numbering_scheme="-0000000-0",
    depends=("numpy", "astropy", "galsim", "scipy"),
    preload=(
             "astropy.io.fits",
             "astropy.wcs",  # (not galsim: its jobs measure moments with the compiled kernels)
             "shapepipe_modules.psfinterp.interpolate",
             "shapepipe_modules.psfinterp.multi_epoch",
             "shapepipe_modules.io.psfex_file:warm_up",  # ahead-of-time kernels: no numba
             "shapepipe_modules.io.moments:warm_up",
    ),
    options=OPTIONS,
    validate=validate,
)
def psfinterp(job):
    """Run one job of the configured MODE."""
    mode = job.options["MODE"]
    low, high = INPUT_COUNTS[mode]
    if not low <= len(job.inputs) <= high:
        raise JobError(f"MODE = {mode} takes {low}-{high} inputs (FILE_PATTERN), got {len(job.inputs)}: "
                       f"{', '.join(map(str, job.inputs))}")
    if mode == "MULTI-EPOCH":
        return _run_multi_epoch(job)
    return _run_single(job, mode)


def _read_catalogue(path):
    """Objects and image header of a catalogue (FITS-LDAC, or a plain FITS table)."""
    from astropy.io import fits

    from shapepipe_modules.io.ldac import LDACError, read_ldac
    from shapepipe_modules.io.tables import FitsTableError, read_fits_table

    try:
        return read_ldac(path)
    except LDACError as ldac_error:
        try:
            return read_fits_table(path), fits.Header()
        except FitsTableError:
            raise JobError(str(ldac_error)) from None


def _read_model(path):
    from shapepipe_modules.io.psfex_file import PSFFileError, read_psf

    try:
        return read_psf(path)
    except PSFFileError as error:
        raise JobError(str(error)) from None


def _run_single(job, mode):
    from shapepipe_modules.io.ldac import write_ldac

    from .interpolate import classic, model_status, validation

    psf_path, catalogue_path = job.inputs[0], job.inputs[1]
    options = job.options
    model = _read_model(psf_path)
    status = model_status(model, options["STAR_THRESH"], options["CHI2_THRESH"])
    if not status.usable:
        job.logger.info("%s rejected: %s; rows flagged with PSF_FLAG = %d", psf_path, status.reason, status.flag)
    table, header = _read_catalogue(catalogue_path)
    params = options["POSITION_PARAMS"] or list(model.names)
    try:
        if mode == "CLASSIC":
            columns = classic(model, status, table, params, catalogue_path, options["STAMP_SIZE"] or None,
                              options["CENTRE_ON_OBJECT"], options["GET_SHAPES"])
            name = f"galaxy_psf{job.number}.fits"
        else:
            fit_table = _read_catalogue(job.inputs[2])[0] if len(job.inputs) > 2 else None
            if fit_table is not None:
                missing = [c for c in ("X_IMAGE", "Y_IMAGE") if c not in fit_table.colnames]
                if missing or not {"ACCEPTED", "FLAGS_PSF"} & set(fit_table.colnames):
                    raise JobError(f"{job.inputs[2]}: not a PSFEx output catalogue (needs X_IMAGE, Y_IMAGE "
                                   "and ACCEPTED or FLAGS_PSF)")
            columns = validation(model, status, table, params, catalogue_path, fit_table)
            name = f"validation_psf{job.number}.fits"
    except KeyError as error:
        raise JobError(str(error.args[0])) from None
    from astropy.table import Table

    header = header.copy()
    header["PSF_FLAG"] = (status.flag, "psfinterp: 0 usable model, else rejected")
    write_ldac(job.output_path(name), Table(columns), header)
    return {"objects": len(table), "psf_flag": status.flag}


def _run_multi_epoch(job, psf_path=None):
    """MULTI-EPOCH job; ``psf_path(exposure, ccd)`` overrides the model file names (``mccd_interp``)."""
    from pathlib import Path

    from astropy.io import fits

    from shapepipe_modules.io.header_store import HeaderStore
    from shapepipe_modules.io.stamp_store import StampStore
    from shapepipe_modules.io.tables import write_fits_table

    from .multi_epoch import EpochCatalogueError, ccd_status_table, interpolate_tile, read_tile_catalogue

    options = job.options
    params = options["POSITION_PARAMS"] or ["XWIN_WORLD", "YWIN_WORLD"]
    psf_dir = Path(options["ME_DOT_PSF_DIR"] or ".")
    pattern = options["ME_DOT_PSF_PATTERN"]
    try:
        catalogue = read_tile_catalogue(job.inputs[0], params)
    except EpochCatalogueError as error:
        raise JobError(str(error)) from None
    job.logger.info("%s: %d objects, %d epoch HDUs, %d object-epochs", job.inputs[0], len(catalogue.number),
                    catalogue.n_epoch_hdus, len(catalogue.epochs.row))

    if psf_path is None:
        def psf_path(exposure, ccd):
            return psf_dir / f"{pattern}-{exposure}-{ccd}.psf"

    with HeaderStore(options["ME_LOG_WCS"]) as headers:
        with StampStore(job.output_path(f"galaxy_psf{job.number}.sqlite"), mode="w") as store:
            result = interpolate_tile(catalogue, psf_path, headers.wcs, store, options["STAR_THRESH"],
                                      options["CHI2_THRESH"], options["GET_SHAPES"],
                                      options["STAMP_SIZE"] or None, options["CENTRE_ON_OBJECT"], job.logger,
                                      stamps_from_model=options["ME_STAMPS_FROM_MODEL"])
    header = fits.Header()
    header["STARTHR"] = (options["STAR_THRESH"], "STAR_THRESH")
    header["CHI2THR"] = (options["CHI2_THRESH"], "CHI2_THRESH")
    write_fits_table(job.output_path(f"psf_ccd_status{job.number}.fits"), ccd_status_table(result.ccd_rows),
                     header, extname="PSF_CCD_STATUS")
    job.logger.info("%d/%d objects have no usable PSF", result.n_without_psf, result.n_objects)
    rejected = sum(1 for row in result.ccd_rows if row["PSF_FLAG"])
    return {"objects": result.n_objects, "object_epochs": result.n_object_epochs,
            "without_psf": result.n_without_psf, "ccds": len(result.ccd_rows), "ccds_rejected": rejected}
