"""ShapePipe's MCCD chain: ``mccd_preprocessing``, ``mccd_fit``,
``mccd_fit_val``, ``mccd_val`` and ``mccd_interp`` (``*_runner`` too).

MCCD (Liaudat et al. 2021) fits one PSF model per exposure over all its
CCDs. Here ``mccd_fit`` runs this project's focal-plane model
(:mod:`.focal_plane`: a constant image per CCD plus a polynomial of the
focal-plane position, fitted with every star of the exposure) on the
per-CCD star selections (``setools``), and writes one PSFEx model per CCD
(``<input name>.psf``) that ``psfinterp`` (ShapePipe's ``psfex_interp``),
``merge_starcat`` and ``psf_validation`` use as they use ``psfex``'s.

The other steps map onto the same model and existing modules
(:mod:`.steps`): ``mccd_preprocessing`` prepares setools' train/test star
splits (``train_star_selection``, ``test_star_selection``); ``mccd_val``
runs ``psfinterp`` VALIDATION of each CCD's model on its test stars
(``validation_psf<number>.fits``, the catalogue ``psf_validation`` reads)
and returns ``psf_validation``'s residual statistics; ``mccd_fit_val`` fits
(``fitted_model<number>.psf``) then validates in one job; ``mccd_interp``
runs ``psfinterp`` CLASSIC or MULTI-EPOCH on the models named
``<PSF_MODEL_DIR>/<PSF_MODEL_PATTERN><SEP><exposure><SEP><ccd>.psf``.
The MCCD configuration file is read and checked; its settings are not used.
See ``docs/shapepipe.md``.
"""

from __future__ import annotations

import configparser
import dataclasses

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

from ..psfex.runner import DATA_DIR as _PSFEX_DATA

_PSFEX_DEFAULT = _PSFEX_DATA / "default.psfex"

#: Sections ShapePipe's config_MCCD.ini holds.
MCCD_SECTIONS = ("INPUTS", "INSTANCE", "FIT", "VALIDATION")

MCCD_OPTIONS = (
    Option("CONFIG_PATH", "file", help="MCCD configuration file (ShapePipe's config_MCCD.ini: [INPUTS], "
           "[INSTANCE], [FIT], [VALIDATION])."),
    Option("MODE", "choice", "FIT_VALIDATION", "What the MCCD chain does: FIT, FIT_VALIDATION or VALIDATION.",
           choices=("FIT", "FIT_VALIDATION", "VALIDATION")),
    Option("VERBOSE", "bool", False, "Verbose MCCD messages (in the job log)."),
)

INTERP_OPTIONS = (
    Option("MODE", "choice", "CLASSIC", "CLASSIC: PSF at every object of a CCD catalogue (psfinterp CLASSIC, "
           "galaxy_psf<number>.fits); MULTI-EPOCH: at every epoch of tile objects (psfinterp MULTI-EPOCH, "
           "galaxy_psf<number>.sqlite); VALIDATION: psfinterp VALIDATION of the model on a star catalogue.",
           choices=("CLASSIC", "MULTI-EPOCH", "VALIDATION")),
    Option("POSITION_PARAMS", "list", [], "The two position columns; empty: the model's (XWIN_IMAGE, "
           "YWIN_IMAGE) or, MULTI-EPOCH, XWIN_WORLD, YWIN_WORLD."),
    Option("GET_SHAPES", "bool", True, "Measure the interpolated PSF shapes (HSM)."),
    Option("PSF_MODEL_DIR", "dir", help="Folder (or run reference, e.g. last:mccd_fit_val) of the per-CCD "
           "models."),
    Option("PSF_MODEL_PATTERN", "name", "fitted_model", "Model file names: <pattern><sep><exposure><sep><ccd>.psf "
           "(fitted_model from mccd_fit_val, star_selection or train_star_selection from mccd_fit)."),
    Option("PSF_MODEL_SEPARATOR", "str", "-", "Separator <sep> of the model file names."),
    Option("ME_LOG_WCS", "store", "", "MULTI-EPOCH: header store of the exposures: the file, or a folder or "
           "reference holding log_exp_headers.sqlite (e.g. last:merge_headers).",
           file_name="log_exp_headers.sqlite"),
)


def _check_mccd_config(options) -> list[str]:
    path = options.get("CONFIG_PATH")
    if not path:
        return []
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (configparser.Error, OSError, UnicodeDecodeError) as error:
        return [f"CONFIG_PATH {path}: cannot read the MCCD configuration: {' '.join(str(error).split())}"]
    missing = [s for s in MCCD_SECTIONS if s not in parser.sections()]
    if missing:
        return [f"CONFIG_PATH {path}: not an MCCD configuration (missing section(s) {', '.join(missing)})"]
    return []


def _job_error(error):
    return JobError(str(error))


@module(name="mccd_preprocessing", version="1.0", aliases=("mccd_preprocessing_runner",),
        description="Star catalogues for the focal-plane fit: setools' train/test splits of one CCD, checked, "
                    "with EXP_NAME and CCD_NB.",
        input_module="setools", file_pattern=("star_split_ratio_80", "star_split_ratio_20"),
        file_ext=(".fits", ".fits"), numbering_scheme="-0000000-0",
        products=(Product("mccd_train_stars", "train_star_selection{number}.fits", "ldac", ids=("exposure_ccd",),
                          description="stars of one CCD for the focal-plane fit"),
                  Product("mccd_test_stars", "test_star_selection{number}.fits", "ldac", ids=("exposure_ccd",),
                          description="reserved stars of one CCD for the validation")),
        depends=("numpy", "astropy"), options=MCCD_OPTIONS, validate=_check_mccd_config)
def mccd_preprocessing(job):
    """Write ``train_star_selection<number>.fits`` and ``test_star_selection<number>.fits``."""
    from shapepipe_modules.io.ldac import write_ldac

    from .steps import StepError, prepare_stars

    counts = {}
    for kind, path in zip(("train", "test"), job.inputs):
        try:
            table, header = prepare_stars(path, job.number)
        except StepError as error:
            raise _job_error(error) from None
        write_ldac(job.output_path(f"{kind}_star_selection{job.number}.fits"), table, header)
        counts[f"{kind}_stars"] = len(table)
    return counts


FIT_OPTIONS = (
    Option("CONFIG_PATH", "file", "", "ShapePipe's MCCD configuration file: read and checked, its settings are "
           "not used (the model's are GLOBAL_DEGREE and DOT_PSFEX_FILE)."),
    Option("MODE", "choice", "FIT", "ShapePipe's MCCD mode; FIT and FIT_VALIDATION both fit (reserved stars are "
           "validated downstream with mccd_val or psfinterp VALIDATION).", choices=("FIT", "FIT_VALIDATION", "VALIDATION")),
    Option("VERBOSE", "bool", False, "Verbose MCCD messages (in the job log)."),
    Option("ENGINE", "choice", "builtin", "builtin: this project's focal-plane model (a constant image per CCD "
           "plus a polynomial of the focal-plane position); piff: Piff (pip install piff) with a PixelGrid "
           "model whose pixels are a polynomial of the focal-plane position (no per-CCD term), re-expanded "
           "per CCD; slower (benchmarks/bench_focal_plane.py).", choices=("builtin", "piff")),
    Option("GLOBAL_DEGREE", "int", 2, "Degree of the polynomial of the focal-plane position."),
    Option("DOT_PSFEX_FILE", "file", str(_PSFEX_DEFAULT), "PSFEx configuration (.psfex) giving PSF_SIZE, "
           "PSF_SAMPLING, PSF_ACCURACY, CENTER_KEYS, PSFVAR_KEYS and PHOTFLUX_KEY."),
    Option("MIN_STARS", "int", 20, "Fewer usable stars in an exposure than this: no model for it (logged)."),
    Option("INTERPOLANT_ORDER", "int", 7, "Lanczos order of the resampling inside the fit."),
)


def _check_fit(options) -> list[str]:
    problems = _check_mccd_config(options)
    if options.get("MODE") == "VALIDATION":
        problems.append("MODE = VALIDATION validates an existing MCCD model, which is not available here; "
                        "use FIT (validate with mccd_val or psfinterp VALIDATION)")
    if (options.get("GLOBAL_DEGREE") or 0) < 0:
        problems.append("GLOBAL_DEGREE must be at least 0")
    return problems


def _fit_requirements(options):
    """Piff only for ENGINE = piff."""
    return (("piff", "galsim") if options.get("ENGINE") == "piff" else ()), ()


@module(name="mccd_fit", version="1.0", aliases=("mccd_fit_runner",),
        description="PSF model per exposure over all its CCDs (focal-plane polynomial + per-CCD terms), "
                    "written per CCD as PSFEx models.",
        input_module="setools", file_pattern="star_selection", file_ext=".fits", numbering_scheme="-0000000-0",
        run_method="serial", depends=("numpy", "astropy"), options=FIT_OPTIONS, validate=_check_fit,
        requirements=_fit_requirements)
def mccd_fit(job):
    """Fit every exposure of the star selections; write one ``.psf`` per CCD."""
    from .fit_job import fit_star_selections

    return fit_star_selections(job)


def _validation_summary(job, paths):
    from .steps import residual_summary

    result = residual_summary(paths)
    job.logger.info("%d test stars: e1 residual rms %.5f, e2 %.5f, relative size %.5f", result["n_stars"],
                    result["e1_residual"]["rms"], result["e2_residual"]["rms"],
                    result["size_relative_residual"]["rms"])
    return {"test_stars": result["n_stars"], "e1_residual_rms": result["e1_residual"]["rms"],
            "e2_residual_rms": result["e2_residual"]["rms"],
            "size_relative_residual_rms": result["size_relative_residual"]["rms"]}


FIT_VAL_OPTIONS = tuple(o for o in FIT_OPTIONS if o.name not in ("MODE",)) + (
    Option("MODE", "choice", "FIT_VALIDATION", "FIT: fit only; FIT_VALIDATION: fit, then validate on the test "
           "stars.", choices=("FIT", "FIT_VALIDATION")),
)


@module(name="mccd_fit_val", version="1.0", aliases=("mccd_fit_val_runner",),
        description="mccd_fit on the train stars (fitted_model<number>.psf), then mccd_val on the test stars "
                    "(validation_psf<number>.fits), in one job.",
        input_module="mccd_preprocessing", file_pattern=("train_star_selection", "test_star_selection"),
        file_ext=(".fits", ".fits"), numbering_scheme="-0000000-0", run_method="serial",
        products=(Product("mccd_fitted_model", "fitted_model{number}.psf", "psfex", ids=("exposure_ccd",),
                          description="focal-plane model of one CCD as a PSFEx model"),
                  Product("mccd_fit_validation", "validation_psf{number}.fits", "ldac", ids=("exposure_ccd",),
                          description="test stars with the model at their positions (psfinterp VALIDATION)")),
        depends=("numpy", "astropy", "galsim"), options=FIT_VAL_OPTIONS, validate=_check_fit,
        requirements=_fit_requirements)
def mccd_fit_val(job):
    """Fit every exposure on the train stars, then validate each CCD's model on its test stars."""
    from .fit_job import fit_star_selections
    from .steps import validate_ccd

    result = fit_star_selections(job, model_name=lambda number, path: f"fitted_model{number}.psf")
    if job.options["MODE"] == "FIT":
        return result
    written = []
    for number, paths in sorted(job.input_table.items()):
        model = job.output_path(f"fitted_model{number}.psf")
        if not model.exists():  # exposure without a model (logged by the fit)
            continue
        written.append(validate_ccd(job, model, paths[1], number))
    return {**result, **_validation_summary(job, written)}


@module(name="mccd_val", version="1.0", aliases=("mccd_val_runner",),
        description="Validation of a CCD's focal-plane model on its test stars: psfinterp VALIDATION "
                    "(validation_psf<number>.fits) and psf_validation's residual statistics.",
        input_module=("mccd_fit_val", "mccd_preprocessing"), file_pattern=("fitted_model", "test_star_selection"),
        file_ext=(".psf", ".fits"), numbering_scheme="-0000000-0",
        products=(Product("mccd_validation", "validation_psf{number}.fits", "ldac", ids=("exposure_ccd",),
                          description="test stars with the model at their positions (psfinterp VALIDATION)"),),
        depends=("numpy", "astropy", "galsim"), options=MCCD_OPTIONS, validate=_check_mccd_config)
def mccd_val(job):
    """Validate one CCD's model on its test stars."""
    from .steps import validate_ccd

    return _validation_summary(job, [validate_ccd(job, job.inputs[0], job.inputs[1], job.number)])


def _check_interp(options) -> list[str]:
    problems = []
    params = options.get("POSITION_PARAMS") or []
    if params and len(params) != 2:
        problems.append(f"POSITION_PARAMS: expected two column names, got {len(params)}")
    if options.get("MODE") == "MULTI-EPOCH" and not options.get("ME_LOG_WCS"):
        problems.append("ME_LOG_WCS is required with MODE = MULTI-EPOCH")
    return problems


@module(name="mccd_interp", version="1.0", aliases=("mccd_interp_runner",),
        description="PSF of the per-CCD focal-plane models at object positions: psfinterp CLASSIC, "
                    "MULTI-EPOCH or VALIDATION on the models in PSF_MODEL_DIR.",
        input_module="setools", file_pattern="galaxy_selection", file_ext=".fits",
        numbering_scheme="-0000000-0", depends=("numpy", "astropy", "galsim"), options=INTERP_OPTIONS,
        products=(Product("mccd_galaxy_psf_classic", "galaxy_psf{number}.fits", "ldac", ids=("exposure_ccd",),
                          description="PSF at every object of one CCD (CLASSIC)"),
                  Product("mccd_galaxy_psf", "galaxy_psf{number}.sqlite", "stamp_store", ids=("tile",),
                          description="PSF stamps of every object and epoch (MULTI-EPOCH)"),
                  Product("mccd_psf_ccd_status", "psf_ccd_status{number}.fits", "fits_table", ids=("tile",),
                          description="usable or missing model of each CCD epoch (MULTI-EPOCH)"),
                  Product("mccd_interp_validation", "validation_psf{number}.fits", "ldac", ids=("exposure_ccd",),
                          description="stars with the model at their positions (VALIDATION)")),
        validate=_check_interp)
def mccd_interp(job):
    """Run psfinterp's job of the MODE on the model named by PSF_MODEL_DIR/PATTERN/SEPARATOR."""
    from shapepipe_modules.merge_starcat.merge import MergeError, split_number
    from shapepipe_modules.psfinterp.runner import _run_multi_epoch, _run_single

    from .steps import interp_model_path, psfinterp_options

    options = psfinterp_options(job.options)
    if options["MODE"] == "MULTI-EPOCH":
        shim = dataclasses.replace(job, options=options)
        return _run_multi_epoch(shim, psf_path=lambda exposure, ccd: interp_model_path(job.options, exposure, ccd))
    try:
        exposure, ccd = split_number(job.number)
    except MergeError as error:
        raise JobError(f"{job.inputs[0]}: {error} (MODE = {options['MODE']} reads one CCD's catalogue)") from None
    model = interp_model_path(job.options, exposure, ccd)
    if not model.exists():
        raise JobError(f"{job.inputs[0]}: no model {model} ([{job.module_run.upper()}] PSF_MODEL_DIR, "
                       "PSF_MODEL_PATTERN, PSF_MODEL_SEPARATOR)")
    shim = dataclasses.replace(job, inputs=[model, job.inputs[0]], options=options)
    return _run_single(shim, options["MODE"])
