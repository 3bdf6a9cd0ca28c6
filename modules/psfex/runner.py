"""Module declaration of ``psfex``: a PSF model per CCD from its selected stars.

Two engines read the same FITS-LDAC star catalogue (from ``setools``) and
the same ``.psfex`` configuration file, and write the same outputs:

- ``ENGINE = builtin`` (default): :mod:`.model`, a PSFEx-equivalent pixel
  basis fitted with numpy;
- ``ENGINE = psfex``: the PSFEx executable (``EXEC_PATH``), run without
  check-plots or XML.

Outputs in the job's output directory:

- ``<OUTPUT_FILE_PATTERN or input name><number>.psf``: the model in PSFEx's
  FITS layout (read it with :func:`shapepipe_modules.io.psfex_file.read_psf`);
  by default the name of the input catalogue with ``.psf``, as PSFEx does;
- ``psfex_cat<number>.cat``: FITS-LDAC catalogue of per-star diagnostics
  (flags, normalisation, chi2, residual, model FWHM and ellipticity).

The job returns the numbers of loaded and accepted stars and the chi2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from shapepipe.datasets import Product
from shapepipe.errors import JobError, JobUnprocessable
from shapepipe.module import module
from shapepipe.options import Option

DATA_DIR = Path(__file__).resolve().parent / "data"

OPTIONS = (
    Option("ENGINE", "choice", "builtin", "PSF engine: builtin (numpy) or psfex (the binary).",
           choices=("builtin", "psfex")),
    Option("EXEC_PATH", "str", "psfex", "PSFEx executable (ENGINE = psfex)."),
    Option("DOT_PSFEX_FILE", "file", str(DATA_DIR / "default.psfex"), "PSFEx configuration file (.psfex)."),
    Option("OUTPUT_FILE_PATTERN", "name", "",
           "Name of the model before the file number; empty: the input catalogue's name (as PSFEx)."),
    Option("CHECKIMAGE", "name_list", [], "PSFEx check images (ENGINE = psfex), e.g. RESIDUALS, SNAPSHOTS."),
    Option("MIN_STARS", "int", 10, "Fewer usable or accepted stars than this ends the job 'unprocessable' (the CCD is dropped downstream)."),
    Option("INTERPOLANT_ORDER", "int", 7, "Lanczos order of the resampling inside the built-in fit."),
    Option("SHAPE_CLIP", "float", 5.0,
           "Stars whose moments size or ellipticity is off a smooth fit over the CCD by more than this many "
           "robust sigmas (each star weighted by its S/N) are left out before the fit, with either engine: "
           "compact galaxies and blends that pass the star selection and the chi2 clip (a few in 50 stars "
           "made the model ~1% too large and m ~ +0.01); 0 keeps every star (ShapePipe)."),
)


def _requirements(options):
    if options.get("ENGINE", "builtin") == "psfex":
        return (), (options.get("EXEC_PATH", "psfex"),)
    return ("numpy", "astropy"), ()


def validate(options) -> list[str]:
    """Check the ``.psfex`` file before any job starts."""
    from .config import PSFExConfigError, PSFExSettings

    problems = []
    path = options.get("DOT_PSFEX_FILE")
    if path:
        try:
            settings = PSFExSettings.from_file(path)
        except PSFExConfigError as error:
            problems.append(f"DOT_PSFEX_FILE: {error}")
        else:
            if options.get("ENGINE", "builtin") == "builtin" and settings.psf_size[0] != settings.psf_size[1]:
                problems.append(f"DOT_PSFEX_FILE: {path}: the built-in engine needs a square PSF_SIZE")
    if options.get("SHAPE_CLIP", 5.0) < 0:
        problems.append("SHAPE_CLIP must be >= 0 (0: off)")
    if options.get("MIN_STARS", 10) < 1:
        problems.append("MIN_STARS must be at least 1")
    if not 2 <= options.get("INTERPOLANT_ORDER", 7) <= 10:
        problems.append("INTERPOLANT_ORDER must be in 2..10")
    return problems


PRODUCTS = (
    Product("psf", "*{number}.psf", "psfex", ids=("exposure_ccd",),
            description="PSFEx model of a CCD: psf.evaluate(x, y) gives PSF stamps"),
    Product("psfex_cat", "psfex_cat{number}.cat", "ldac", ids=("exposure_ccd",),
            description="PSFEx output catalogue of the fitted stars"),
)


@module(
    name="psfex",
    products=PRODUCTS,
    version="2.0",
    description="PSF model per CCD (built-in PSFEx-equivalent engine or the PSFEx binary).",
    aliases=("psfex_runner",),
    input_module="setools",
    file_pattern="star_selection",
    file_ext=".fits",
    numbering_scheme="-0000000-0",
    options=OPTIONS,
    requirements=_requirements,
    validate=validate,
    preload=(
             "astropy.io.fits",
             "shapepipe_modules.psfex.model",
             "shapepipe_modules.io.ldac",
             "shapepipe_modules.io.psfex_file:warm_up",  # ahead-of-time kernels: no numba
             "shapepipe_modules.io.moments:warm_up",
    ),
)
def psfex(job):
    """Fit the PSF of one CCD; write ``<name><number>.psf`` and ``psfex_cat<number>.cat``."""
    catalogue = Path(job.inputs[0])
    options = job.options
    stem = catalogue.name.split(".")[0]
    pattern = options["OUTPUT_FILE_PATTERN"]
    psf_name = f"{pattern}{job.number}.psf" if pattern else f"{stem}.psf"
    outcat = job.output_path(f"psfex_cat{job.number}.cat")
    if options["ENGINE"] == "psfex":
        return _run_binary(job, catalogue, psf_name, outcat)
    return _run_builtin(job, catalogue, psf_name, outcat)


def _run_binary(job, catalogue, psf_name, outcat):
    import os

    from astropy.io import fits

    from shapepipe_modules.io.ldac import VIGNET_EXTNAME
    from shapepipe_modules.io.psfex_file import PSFFileError, read_psf

    from .binary import run_psfex

    with fits.open(catalogue, memmap=False) as hdus:
        if VIGNET_EXTNAME in [hdu.name for hdu in hdus]:
            raise JobError(f"{catalogue}: VIGNET stored by rows ({VIGNET_EXTNAME}, sextractor VIGNET_ROWS), "
                           "which the PSFEx binary cannot read: give it a star selection (setools) of that "
                           "catalogue, or ENGINE = builtin")
    work = job.output_dir / ".psfex_work"
    stars = job.output_dir / ".psfex_stars"
    if job.options["SHAPE_CLIP"] > 0:
        catalogue = _without_shape_outliers(job, catalogue, stars)
    try:
        psf = run_psfex(job.run_command, job.options["EXEC_PATH"], catalogue, job.options["DOT_PSFEX_FILE"],
                        work, outcat, job.options["CHECKIMAGE"])
    except RuntimeError as error:
        raise JobError(str(error)) from None
    finally:
        if stars.is_dir():
            shutil.rmtree(stars)
    os.replace(psf, job.output_path(psf_name))
    for extra in work.iterdir():
        os.replace(extra, job.output_path(extra.name))
    work.rmdir()
    try:
        model = read_psf(job.output_path(psf_name))
    except PSFFileError as error:
        raise JobError(f"{catalogue}: PSFEx output unreadable: {error}") from None
    if model.accepted < job.options["MIN_STARS"]:
        raise JobUnprocessable(f"{catalogue}: PSFEx accepted {model.accepted} stars, fewer than MIN_STARS")
    return {"loaded": model.loaded, "accepted": model.accepted, "chi2": model.chi2}


def _without_shape_outliers(job, catalogue, work):
    """The star catalogue without :func:`~.model.sample_shape_outliers` (a copy in ``work``), for PSFEx."""
    from shapepipe_modules.io.ldac import LDACError, read_ldac, write_ldac

    from .config import PSFExConfigError, PSFExSettings
    from .model import load_stars, sample_shape_outliers

    try:
        settings = PSFExSettings.from_file(job.options["DOT_PSFEX_FILE"])
        table, header = read_ldac(catalogue)
        sample = load_stars(table, header, settings.center_keys, settings.var_keys, settings.flux_key)
    except (PSFExConfigError, LDACError, KeyError) as error:
        raise JobError(f"{catalogue}: SHAPE_CLIP cannot read the stars: {error}") from None
    outlier = sample_shape_outliers(sample, settings.degree, job.options["SHAPE_CLIP"])
    job.logger.info("%s: %d of %d stars left out for outlying shapes (SHAPE_CLIP)", catalogue.name,
                    int(outlier.sum()), len(sample))
    work.mkdir(parents=True, exist_ok=True)
    filtered = work / catalogue.name
    write_ldac(filtered, table[~outlier], header)
    return filtered


def _run_builtin(job, catalogue, psf_name, outcat):
    from shapepipe_modules.io.ldac import LDACError, missing_vignets, read_ldac, write_ldac
    from shapepipe_modules.io.psfex_file import write_psf

    from .config import PSFExConfigError, PSFExSettings
    from .model import FitOptions, PSFFitError, fit_psf, load_stars, residual_table

    try:
        settings = PSFExSettings.from_file(job.options["DOT_PSFEX_FILE"])
    except PSFExConfigError as error:
        raise JobError(f"DOT_PSFEX_FILE: {error}") from None
    try:
        table, header = read_ldac(catalogue)
    except LDACError as error:
        raise JobError(str(error)) from None
    missing, stored = missing_vignets(table)
    if missing:
        raise JobError(f"{catalogue}: {missing} objects have no stored VIGNET (kept only for {stored!r}, "
                       "sextractor VIGNET_ROWS); give PSFEx a star selection (setools) of that catalogue")
    try:
        sample = load_stars(table, header, settings.center_keys, settings.var_keys, settings.flux_key)
    except KeyError as error:
        raise JobError(f"{catalogue}: missing or bad column {error.args[0]} "
                       f"(see CENTER_KEYS, PSFVAR_KEYS, PHOTFLUX_KEY in {job.options['DOT_PSFEX_FILE']})") from None
    options = FitOptions(psf_size=settings.psf_size, sampling=settings.sampling, degree=settings.degree,
                         accuracy=settings.accuracy, recenter=settings.recenter,
                         min_stars=job.options["MIN_STARS"], interpolant_order=job.options["INTERPOLANT_ORDER"],
                         shape_clip=job.options["SHAPE_CLIP"])
    try:
        result = fit_psf(sample, options, names=settings.var_keys)
    except PSFFitError as error:  # too few stars: the CCD cannot give a PSF model
        raise JobUnprocessable(f"{catalogue}: {error}") from None
    job.logger.info("%s: %d/%d stars accepted, chi2 %.3f, degree %d (ellipticity %d, size %d), sampling %.3f, "
                    "%d CG iterations", catalogue.name, result.model.accepted, result.model.loaded,
                    result.model.chi2, result.info["degree"], result.info["shear_degree"],
                    result.info["size_degree"], result.info["sampling"], result.info["cg_iterations"])
    write_psf(job.output_path(psf_name), result.model)
    write_ldac(outcat, residual_table(result, sample), header)
    return {"loaded": result.model.loaded, "accepted": result.model.accepted, "chi2": result.model.chi2}
