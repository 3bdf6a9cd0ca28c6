"""ShapePipe's MCCD chain: ``mccd_preprocessing``, ``mccd_fit``,
``mccd_fit_val``, ``mccd_val`` and ``mccd_interp`` (``*_runner`` too).

MCCD (Liaudat et al. 2021) fits one PSF model per exposure over all its
CCDs. Here ``mccd_fit`` runs this project's focal-plane model
(:mod:`.focal_plane`: a constant image per CCD plus a polynomial of the
focal-plane position, fitted with every star of the exposure) on the
per-CCD star selections (``setools``), and writes one PSFEx model per CCD
(``<input name>.psf``) that ``psfinterp`` (ShapePipe's ``psfex_interp``),
``merge_starcat`` and ``psf_validation`` use as they use ``psfex``'s.

The other MCCD modules are declared with ShapePipe's options, so that
configurations using them validate (the MCCD configuration file is read and
checked), but they do not run here: their jobs fail with a message naming
what to use instead (``mccd_fit`` then ``psfinterp``). See ``docs/shapepipe.md``.
"""

from __future__ import annotations

import configparser

from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

from ..psfex.runner import DATA_DIR as _PSFEX_DATA

_PSFEX_DEFAULT = _PSFEX_DATA / "default.psfex"

NOT_AVAILABLE = ("this MCCD step is not available here; fit the focal-plane model with mccd_fit on the "
                 "setools star selections (or per CCD with psfex), interpolate it with psfinterp (ShapePipe's "
                 "psfex_interp) and validate it with merge_starcat + psf_validation (docs/shapepipe.md)")

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
    Option("MODE", "choice", "CLASSIC", "CLASSIC (PSF at catalogue positions), MULTI-EPOCH (at every epoch of "
           "tile objects) or VALIDATION.", choices=("CLASSIC", "MULTI-EPOCH", "VALIDATION")),
    Option("POSITION_PARAMS", "list", help="Catalogue columns of the positions (pixel or world)."),
    Option("GET_SHAPES", "bool", True, "Measure the interpolated PSF shapes (HSM)."),
    Option("PSF_MODEL_DIR", "dir", help="Folder (or run reference) of the fitted MCCD models."),
    Option("PSF_MODEL_PATTERN", "name", "fitted_model", "File name of the models before the number."),
    Option("PSF_MODEL_SEPARATOR", "str", "-", "Separator of the model file numbers."),
    Option("ME_LOG_WCS", "path", "", "Header store of the exposures (MULTI-EPOCH)."),
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


def _refuse(job):
    raise JobError(f"{job.module}: {NOT_AVAILABLE}")


@module(name="mccd_preprocessing", version="0.1", aliases=("mccd_preprocessing_runner",),
        description="ShapePipe's MCCD star preprocessing (validates; focal-plane model not available yet).",
        input_module="setools", file_pattern=("star_split_ratio_80", "star_split_ratio_20"),
        file_ext=(".fits", ".fits"), numbering_scheme="-0000000-0", run_method="serial",
        options=MCCD_OPTIONS, validate=_check_mccd_config)
def mccd_preprocessing(job):
    """Refuse with a clear message (see the module docstring)."""
    _refuse(job)


FIT_OPTIONS = (
    Option("CONFIG_PATH", "file", "", "ShapePipe's MCCD configuration file: read and checked, its settings are "
           "not used (the model's are GLOBAL_DEGREE and DOT_PSFEX_FILE)."),
    Option("MODE", "choice", "FIT", "ShapePipe's MCCD mode; FIT and FIT_VALIDATION both fit (reserved stars are "
           "validated downstream with psfinterp VALIDATION).", choices=("FIT", "FIT_VALIDATION", "VALIDATION")),
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
                        "use FIT (validate with psfinterp VALIDATION)")
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


@module(name="mccd_fit_val", version="0.1", aliases=("mccd_fit_val_runner",),
        description="ShapePipe's MCCD fit and validation (validates; focal-plane model not available yet).",
        input_module="mccd_preprocessing", file_pattern=("train_star_selection", "test_star_selection"),
        file_ext=(".fits", ".fits"), numbering_scheme="-0000000", options=MCCD_OPTIONS,
        validate=_check_mccd_config)
def mccd_fit_val(job):
    """Refuse with a clear message (see the module docstring)."""
    _refuse(job)


@module(name="mccd_val", version="0.1", aliases=("mccd_val_runner",),
        description="ShapePipe's MCCD validation (validates; focal-plane model not available yet).",
        input_module="mccd_preprocessing", file_pattern=("fitted_model", "test_star_selection"),
        file_ext=(".npy", ".fits"), numbering_scheme="-0000000", options=MCCD_OPTIONS,
        validate=_check_mccd_config)
def mccd_val(job):
    """Refuse with a clear message (see the module docstring)."""
    _refuse(job)


@module(name="mccd_interp", version="0.1", aliases=("mccd_interp_runner",),
        description="ShapePipe's MCCD PSF interpolation (validates; focal-plane model not available yet).",
        input_module="setools", file_pattern="galaxy_selection", file_ext=".npy", options=INTERP_OPTIONS)
def mccd_interp(job):
    """Refuse with a clear message (see the module docstring)."""
    _refuse(job)
