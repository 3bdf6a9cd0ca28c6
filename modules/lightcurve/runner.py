"""Declaration of the ``lightcurve`` module: variability statistics of every tile object.

Input: ``forced_phot<number>.fits`` (``forced_phot``). Outputs:
``lightcurve_stats<number>.fits`` (one row per object, joinable on
``NUMBER``; columns in :mod:`.curves`; HDU ``SYSTEMATICS``: the systematic error of
each exposure CCD) and ``lightcurve_summary<number>.png``
(variability against magnitude). One object's light curve:
``shapepipe_lightcurve ID --forced forced_phot-244-252.fits``.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("FLAG_MASK", "int", 15, "forced_phot FLAGS bits that drop an epoch (1 edge, 2 masked, "
           "4 no fit, 8 negative flux; 16 blended never drops one: blended objects are never flagged variable)."),
    Option("EXPOSURE_SYSTEMATICS", "bool", True, "Add to every epoch the systematic error of its exposure CCD "
           "(PSF model and zero point), measured on the scatter of the bright objects' light curves "
           "(docs/lightcurves.md)."),
    Option("RELATIVE_CALIBRATION", "bool", True, "With EXPOSURE_SYSTEMATICS: correct each exposure CCD's "
           "fluxes by the mean offset of its bright objects from their other epochs (zero-point and PSF-model "
           "normalisation errors; ensemble relative photometry)."),
    Option("SYSTEMATIC_MAX_ERROR", "float", 0.01, "Objects whose statistical error is below this (mag) "
           "measure the systematics (unblended, MIN_EPOCHS epochs or more)."),
    Option("SYSTEMATIC_MIN_STARS", "int", 5, "An exposure CCD with fewer such epochs takes the median "
           "systematic of the others."),
    Option("ERROR_FLOOR", "float", 0.0, "A fixed systematic error added in quadrature to every epoch, mag of "
           "the mean flux (on top of EXPOSURE_SYSTEMATICS)."),
    Option("SCALE_BY_FIT_CHI2", "bool", True, "Multiply an epoch's flux error by sqrt(CHI2_PSF) when its PSF "
           "fit is worse than its noise (the PSF model's error at that star; EXPOSURE_SYSTEMATICS measures "
           "what is left per exposure CCD)."),
    Option("MIN_EPOCHS", "int", 4, "Fewer usable epochs: never flagged variable."),
    Option("FALSE_ALARM", "float", 1e-3, "Flag VARIABLE when the probability of the chi2 for a constant "
           "source is below this."),
    Option("PLOT", "bool", True, "Write the summary plot."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    if options.get("SYSTEMATIC_MAX_ERROR") is not None and options["SYSTEMATIC_MAX_ERROR"] <= 0:
        problems.append("SYSTEMATIC_MAX_ERROR must be positive")
    if options.get("ERROR_FLOOR") is not None and options["ERROR_FLOOR"] < 0:
        problems.append("ERROR_FLOOR must be 0 or more")
    if options.get("FALSE_ALARM") is not None and not 0 < options["FALSE_ALARM"] < 1:
        problems.append("FALSE_ALARM must be between 0 and 1")
    if options.get("MIN_EPOCHS") is not None and options["MIN_EPOCHS"] < 2:
        problems.append("MIN_EPOCHS must be at least 2")
    return problems


PRODUCTS = (
    Product("lightcurve_stats", "lightcurve_stats{number}.fits", "fits_table", ids=("tile",),
            description="variability statistics of every tile object"),
)


def read_forced(path):
    """The FORCED_PHOT table of a forced_phot file, or JobError naming it."""
    from shapepipe_modules.io.tables import FitsTableError, read_fits_table

    try:
        table = read_fits_table(path, hdu="FORCED_PHOT")
    except (FitsTableError, KeyError) as error:
        raise JobError(f"{path}: not a forced_phot table ({error})") from None
    missing = [name for name in ("NUMBER", "MJD", "FLUX_PSF_CAL", "FLUXERR_PSF_CAL", "FLAGS")
               if name not in table.colnames]
    if missing:
        raise JobError(f"{path}: FORCED_PHOT has no column {', '.join(missing)}")
    return table


def variability_options(options) -> dict:
    """Keyword arguments of :func:`.curves.variability` from the module's options."""
    return {"flag_mask": options["FLAG_MASK"], "error_floor": options["ERROR_FLOOR"],
            "min_epochs": options["MIN_EPOCHS"], "false_alarm": options["FALSE_ALARM"],
            "scale_by_fit_chi2": options["SCALE_BY_FIT_CHI2"],
            "exposure_systematics_on": options["EXPOSURE_SYSTEMATICS"],
            "relative_calibration": options["RELATIVE_CALIBRATION"],
            "systematic_max_error": options["SYSTEMATIC_MAX_ERROR"],
            "systematic_min_stars": options["SYSTEMATIC_MIN_STARS"]}


@module(
    name="lightcurve",
    products=PRODUCTS,
    version="1.0",
    description="Variability statistics (chi2, excess variance, amplitude) and flags from forced photometry.",
    input_module="forced_phot",
    file_pattern="forced_phot",
    file_ext=".fits",
    numbering_scheme="-000-000",
    depends=("numpy", "astropy", "scipy", "matplotlib"),
    options=OPTIONS,
    validate=validate,
)
def lightcurve(job):
    """Write ``lightcurve_stats<number>.fits`` and the summary plot."""
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.tables import write_fits_tables

    import numpy as np

    from .curves import STAT_COLUMNS, plot_summary, variability

    options = job.options
    table = read_forced(job.inputs[0])
    stats = variability(table, **variability_options(options))
    header = fits.Header()
    for key, name in (("FLAGMASK", "FLAG_MASK"), ("ERRFLOOR", "ERROR_FLOOR"), ("MINEPOCH", "MIN_EPOCHS"),
                      ("FALSEALM", "FALSE_ALARM")):
        header[key] = (options[name], name)
    header["EXPSYST"] = (options["EXPOSURE_SYSTEMATICS"], "EXPOSURE_SYSTEMATICS")
    write_fits_tables(job.output_path(f"lightcurve_stats{job.number}.fits"),
                      [("LIGHTCURVE_STATS", Table({name: stats[name] for name, _ in STAT_COLUMNS}), header),
                       ("SYSTEMATICS", Table(stats["SYSTEMATICS"]), None)])
    systematic = stats["SYSTEMATICS"]["SYSTEMATIC"]
    if systematic.size:
        job.logger.info("systematic error per exposure CCD: median %.4f mag, %.4f to %.4f",
                        np.median(systematic), systematic.min(), systematic.max())
    n_variable = int(stats["VARIABLE"].sum())
    if options["PLOT"]:
        plot_summary(stats, job.output_path(f"lightcurve_summary{job.number}.png"),
                     f"{job.number.strip('-')}: {n_variable} variables among {len(stats['NUMBER'])} objects")
    job.logger.info("%d objects, %d flagged variable", len(stats["NUMBER"]), n_variable)
    return {"objects": int(len(stats["NUMBER"])), "variables": n_variable}
