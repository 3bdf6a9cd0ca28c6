"""Module declaration of ``psf_validation`` (also ShapePipe's ``mccd_plots_runner`` keys).

Serial, after ``merge_starcat``: reads ``full_starcat-0000000.fits`` and
writes, in the output folder,

- ``focal_plane_e1.png``, ``focal_plane_e2.png``, ``focal_plane_size.png``:
  binned mean of stars, model and residuals, each CCD at its place in the
  focal plane (from ``HEADER_STORE`` WCSs; MegaCam's layout otherwise);
  ``focal_plane_nstar.png``: stars per bin;
- ``histograms.png``: stars, model and residuals;
- ``rho_stats.png`` and ``rho_stats.fits``: rho0 to rho5 (treecorr);
- ``psf_validation_stats.json`` and ``.txt``: the summary numbers.

Only reserved stars (``ACCEPTED == 0``: not used by the PSF fit) enter by
default, and rows of rejected models (``PSF_FLAG``) or failed HSM never do.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option
from shapepipe_modules.shapepipe_compat import MCCD_CONFIG_PATH, MCCD_MODE, MCCD_VERBOSE, NO_EFFECT

OPTIONS = (
    Option("HEADER_STORE", "store", None, "Header store whose CCD WCSs place the CCDs in the focal plane: the "
           "file, or a folder or reference holding log_exp_headers.sqlite (e.g. last:merge_headers); "
           "without it, MegaCam's layout (or a grid) is used.", file_name="log_exp_headers.sqlite"),
    Option("HDU", "int", 2, "HDU of the star table in the merged catalogue."),
    Option("PSF", "choice", "psfex", "PSF model of the merged catalogue (ShapePipe key): psfex or mccd; "
           "merge_starcat writes the same columns for both, so the value is only logged.",
           choices=("psfex", "mccd")),
    Option("X_GRID", "int", 5, "Bins per CCD along x."),
    Option("Y_GRID", "int", 10, "Bins per CCD along y."),
    Option("RESERVED_ONLY", "bool", True, "Use only stars not used by the PSF fit (ACCEPTED = 0)."),
    Option("REMOVE_OUTLIERS", "bool", False, "Drop stars more than 5 sigma above the mean size."),
    Option("PLOT_MEANSHAPES", "bool", True, "Draw the focal-plane maps."),
    Option("PLOT_HISTOGRAMS", "bool", True, "Draw the histograms."),
    Option("PLOT_RHO_STATS", "bool", True, "Compute and draw the rho statistics."),
    Option("RHO_STATS_STYLE", "choice", "HSC", "HSC: |xi+|; DES: theta |xi+|; UNIONS: signed xi+ "
           "(symmetric-log axis).", choices=("HSC", "DES", "UNIONS")),
    Option("RHO_STATS_YLIM_L", "float_list", [], "y range of the left rho panel (two numbers)."),
    Option("RHO_STATS_YLIM_R", "float_list", [], "y range of the right rho panel (two numbers)."),
    Option("RHO_MIN_SEP", "float", 0.1, "Smallest separation of the rho statistics, arcmin."),
    Option("RHO_MAX_SEP", "float", 100.0, "Largest separation of the rho statistics, arcmin."),
    Option("RHO_NBINS", "int", 20, "Logarithmic separation bins."),
    Option("RHO_BIN_SLOP", "float", 0.1, "treecorr bin_slop (0: exact binning, slower)."),
    Option("MAX_E", "float", None, "Colour range (+-) of the star and model e1, e2 maps."),
    Option("MAX_DE", "float", None, "Colour range (+-) of the residual e1, e2 maps."),
    Option("MIN_R2", "float", None, "Lower colour limit of the size maps (T, pixel^2)."),
    Option("MAX_R2", "float", None, "Upper colour limit of the size maps (T, pixel^2)."),
    Option("MAX_DR2", "float", None, "Colour range (+-) of the relative size residual map."),
    Option("EHO_STATS_YLIM_R", "str", None, "ShapePipe's misspelling of RHO_STATS_YLIM_R in its example "
           "configs, which ShapePipe never reads." + NO_EFFECT, ignored=True),
    MCCD_VERBOSE,
    MCCD_MODE,
    MCCD_CONFIG_PATH,
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    for key in ("RHO_STATS_YLIM_L", "RHO_STATS_YLIM_R"):
        if options.get(key) and len(options[key]) != 2:
            problems.append(f"{key}: expected two numbers, got {len(options[key])}")
    if options.get("X_GRID", 1) < 1 or options.get("Y_GRID", 1) < 1:
        problems.append("X_GRID and Y_GRID must be at least 1")
    if options.get("RHO_MIN_SEP", 1) <= 0 or options.get("RHO_MAX_SEP", 2) <= options.get("RHO_MIN_SEP", 1):
        problems.append("need 0 < RHO_MIN_SEP < RHO_MAX_SEP")
    if (options.get("MIN_R2") is None) != (options.get("MAX_R2") is None):
        problems.append("MIN_R2 and MAX_R2 go together")
    return problems


PRODUCTS = (
    Product("psf_validation_stats", "psf_validation_stats.json", "json", description="PSF residual statistics"),
    Product("psf_validation_report", "psf_validation_stats.txt", "text", description="the statistics as text"),
    Product("rho_stats", "rho_stats.fits", "fits_table", description="rho statistics"),
    Product("psf_validation_plot", "{plot}.png", "png", description="focal-plane maps, histograms, rho plot"),
)


@module(
    name="psf_validation",
    products=PRODUCTS,
    version="1.0",
    description="PSF validation: focal-plane maps, rho statistics, histograms and summary numbers.",
    aliases=("mccd_plots_runner",),
    input_module="merge_starcat",
    file_pattern="full_starcat",
    file_ext=".fits",
    numbering_scheme="-0000000",
    run_method="serial",
    depends=("numpy", "astropy", "matplotlib", "treecorr"),
    preload=(
        "astropy.table",
        "astropy.wcs",
        "treecorr",
        "shapepipe_modules.io.warmup:matplotlib_agg",
        "shapepipe_modules.io.header_store",
        "shapepipe_modules.io.tables",
        "shapepipe_modules.psf_validation.report",
        "shapepipe_modules.psf_validation.plots",
    ),
    options=OPTIONS,
    validate=validate,
)
def psf_validation(job):
    """Write the PSF validation report of the merged star catalogue."""
    from astropy.table import Table

    from shapepipe_modules.io.header_store import HeaderStore

    from .report import ReportSettings, make_report

    paths = [paths[0] for _, paths in sorted(job.input_table.items())] or list(job.inputs[:1])
    if len(paths) != 1:
        raise JobError(f"expected one merged star catalogue, got {len(paths)}: {', '.join(map(str, paths))}")
    path = paths[0]
    options = job.options
    try:
        table = Table.read(path, hdu=options["HDU"], character_as_bytes=False)
    except (OSError, IndexError, ValueError) as error:
        raise JobError(f"{path}: cannot read HDU {options['HDU']} ({error})") from None
    settings = ReportSettings(
        nbins=(options["X_GRID"], options["Y_GRID"]), reserved_only=options["RESERVED_ONLY"],
        remove_outliers=options["REMOVE_OUTLIERS"], plot_maps=options["PLOT_MEANSHAPES"],
        plot_histograms=options["PLOT_HISTOGRAMS"], rho=options["PLOT_RHO_STATS"],
        rho_min_sep=options["RHO_MIN_SEP"], rho_max_sep=options["RHO_MAX_SEP"], rho_nbins=options["RHO_NBINS"],
        rho_bin_slop=options["RHO_BIN_SLOP"], rho_style=options["RHO_STATS_STYLE"],
        rho_ylim_left=tuple(options["RHO_STATS_YLIM_L"]) or None,
        rho_ylim_right=tuple(options["RHO_STATS_YLIM_R"]) or None,
        e_limit=options["MAX_E"], de_limit=options["MAX_DE"],
        size_limits=(options["MIN_R2"], options["MAX_R2"]) if options["MIN_R2"] is not None else None,
        dsize_limit=options["MAX_DR2"],
    )
    job.logger.info("%s: PSF model %s", path, options["PSF"])
    store = HeaderStore(options["HEADER_STORE"]) if options["HEADER_STORE"] else None
    try:
        stats = make_report(table, job.output_dir, settings, store, job.logger)
    except KeyError as error:
        raise JobError(f"{path}: missing column {error.args[0]}") from None
    except ValueError as error:
        raise JobError(f"{path}: {error}") from None
    finally:
        if store is not None:
            store.close()
    return {"stars": stats["n_stars"], "e1_residual_rms": stats["e1_residual"]["rms"],
            "rho1_max": stats.get("rho", {}).get("rho1", {}).get("max_abs_xip")}
