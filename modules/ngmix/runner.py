"""Declaration of the ``ngmix`` module (ShapePipe's ``ngmix_runner``).

Inputs, in ``FILE_PATTERN`` order (ShapePipe's): the tile catalogue
(``sexcat``), then the stamp stores ``image_vignet``, ``background_vignet``
(``vignetmaker`` MULTI-EPOCH), ``galaxy_psf`` (``psfinterp`` MULTI-EPOCH),
``weight_vignet`` and ``flag_vignet``.

Output: ``ngmix<number>.fits`` with HDUs ``1M``, ``1P``, ``2M``, ``2P``,
``NOSHEAR`` (one row per object of the id range, failures flagged, see
``docs/metacal.md``); the primary header records the id range and the
tile's object count for ``merge_sep_cats``.

``ID_OBJ_MIN`` / ``ID_OBJ_MAX`` split a tile over several jobs (module
runs); every object draws its random numbers from its own generator,
seeded by ``[JOB] SEED`` and the object's sky cell (``POSITION_PARAMS``
rounded to ``RNG_CELL_ARCSEC``; see ``docs/metacal.md``), so the merged
splits equal the single job and the same galaxy gets the same stream in runs
whose detection numbers differ (e.g. opposite shears).

``ENGINE`` chooses the measurement: ``builtin`` (default, :mod:`.engine`)
or ``ngmix`` (:mod:`.ngmix_engine`, the ngmix 2.x package, which must be
installed; the runner reports it missing before any job starts). Both write
the same columns and flags.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option
from shapepipe_modules.shapepipe_compat import CHECK_EXISTING_DIR, NO_EFFECT

OPTIONS = (
    Option("LOG_WCS", "path", "", "Header store of the exposures (log_exp_headers.sqlite), read for each "
           "epoch's flux scale FSCALE; may be empty if the stamps carry FSCALE."),
    Option("MAG_ZP", "float", 30.0, "Magnitude zero point: mag = MAG_ZP - 2.5 log10(flux)."),
    Option("PIXEL_SCALE", "float", 0.186, "Pixel scale (arcsec): width of the Gaussian prior on the centre."),
    Option("ID_OBJ_MIN", "int", -1, "First object id (NUMBER) to process; <= 0: from the first."),
    Option("ID_OBJ_MAX", "int", -1, "Last object id (NUMBER) to process; <= 0: to the last."),
    Option("POSITION_PARAMS", "list", ["XWIN_WORLD", "YWIN_WORLD"], "Tile catalogue columns of RA and Dec "
           "(degrees): each object's random stream is keyed by the run seed and its sky cell."),
    Option("RNG_CELL_ARCSEC", "float", 1.0, "Side (arcsec) of the sky cells keying the per-object random "
           "streams: a galaxy whose detection moves across a cell edge between two runs gets another stream; "
           "objects in one cell share one."),
    Option("ENGINE", "choice", "builtin", "Metacal engine: builtin (this package) or ngmix (the ngmix 2.x "
           "package, which must be installed); same output columns and flags.", choices=("builtin", "ngmix")),
    Option("TARGET_PSF", "choice", "gauss_nopix", "Metacal reconvolution PSF, used by both engines: gauss_nopix "
           "(round Gaussian from the PSF with its pixel removed: the built-in rule, ngmix 2.0-2.2 psf='gauss'), "
           "gauss_pix (the same rule on the PSF with its pixel, 5-10% larger: ngmix 2.3+ psf='gauss') or "
           "shapepipe (the gauss_nopix Gaussian convolved with the pixel: ngmix 1.3 as called by ShapePipe "
           "1.3.6).", choices=("gauss_nopix", "gauss_pix", "shapepipe")),
    Option("MASK_FILL", "choice", "model", "What masked pixels (flags, zero weight, off the chip) hold before "
           "the metacal images are made; they never enter a fit. model: an elliptical Gaussian fitted to the "
           "usable pixels, plus noise; noise: noise only (ShapePipe), which biases galaxies near a masked "
           "column (c1 -0.005, m1 +0.025 with one within 10 pixels; docs/metacal.md).", choices=("model", "noise")),
    Option("EPOCH_LOCAL_SKY_WIDTH", "int", 0, "When > 0, each epoch stamp, after its background stamp is "
           "subtracted, also loses the median of its outer EPOCH_LOCAL_SKY_WIDTH rows and columns (pixels of "
           "positive weight and no flag; with vignetmaker NEIGHBOUR_MASK the neighbours' pixels are out): the "
           "wings of bright neighbours and diffuse light finer than the background mesh (crowded fields; "
           "docs/crowded.md). 0: none, as ShapePipe."),
    Option("TILE_VIGNET_MASK", "bool", False, "Flag (TILE_MISSING, 2**10) every epoch pixel where the tile "
           "catalogue's VIGNET holds SExtractor's -1e30 (pixels of neighbouring objects in the tile segmentation, "
           "of zero tile weight or off the tile), as ShapePipe does. Off by default: the neighbours' segmentation "
           "follows the applied shear, so the mask does too, which metacalibration does not correct; on the "
           "calib_highsnr campaign (seeds 105-108, +g/-g paired) it moved m2 from +0.0009 +- 0.0014 to "
           "+0.0058 +- 0.0026 and doubled the per-seed scatter of m (docs/metacal.md). Each epoch's own flag "
           "and weight stamps mask its bad pixels either way."),
    CHECK_EXISTING_DIR,
    Option("SAVE_BATCH", "int", None, "ShapePipe writes its ngmix catalogue every SAVE_BATCH objects and appends "
           "to it on a rerun (with CHECK_EXISTING_DIR); here a job writes its catalogue once and --resume "
           "reruns only unfinished jobs." + NO_EFFECT, ignored=True),
)


def requirements(options):
    """The ngmix package is needed only with ENGINE = ngmix."""
    if options.get("ENGINE", "builtin") == "ngmix":
        return ("ngmix",), ()
    return (), ()


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    low, high = options.get("ID_OBJ_MIN", -1), options.get("ID_OBJ_MAX", -1)
    if low is not None and high is not None and low > 0 and high > 0 and high < low:
        problems.append(f"ID_OBJ_MAX ({high}) is smaller than ID_OBJ_MIN ({low})")
    cell = options.get("RNG_CELL_ARCSEC")
    if cell is not None and not cell > 0:
        problems.append(f"RNG_CELL_ARCSEC must be positive, got {cell}")
    position = options.get("POSITION_PARAMS")
    if position is not None and len(position) != 2:
        problems.append(f"POSITION_PARAMS must name 2 columns (RA, Dec), got {len(position)}: {position}")
    scale = options.get("PIXEL_SCALE")
    if scale is not None and scale <= 0:
        problems.append(f"PIXEL_SCALE must be positive, got {scale}")
    width = options.get("EPOCH_LOCAL_SKY_WIDTH")
    if width is not None and width < 0:
        problems.append(f"EPOCH_LOCAL_SKY_WIDTH must be >= 0, got {width}")
    return problems


def run_ngmix(inputs, output_dir, number, seed, options, logger):
    """Measure one tile (or id range) and write ``ngmix<number>.fits``.

    Parameters
    ----------
    inputs : sequence of path-like
        Tile catalogue, image, background, PSF, weight and flag stores.
    output_dir : path-like
    number : str
        Tile file number (``-244-252``).
    seed : int
        Run seed.
    options : mapping
        ``LOG_WCS``, ``MAG_ZP``, ``PIXEL_SCALE``, ``ID_OBJ_MIN``, ``ID_OBJ_MAX``,
        ``ENGINE`` (optional, default ``builtin``), ``TARGET_PSF`` (optional,
        default ``gauss_nopix``), ``POSITION_PARAMS``, ``RNG_CELL_ARCSEC``, ``TILE_VIGNET_MASK`` (optional).
    logger : logging.Logger

    Returns
    -------
    (pathlib.Path, dict)
        Output file and summary counts.
    """
    from pathlib import Path

    from .engine import RNG_CELL_ARCSEC, EngineConfig
    from .epochs import STORE_KINDS, measure_tile, ngmix_header, write_ngmix_catalogue
    from .priors import ShapePipePrior

    inputs = [Path(p) for p in inputs]
    if len(inputs) != 6:
        raise JobError(f"ngmix needs 6 inputs (tile catalogue and 5 stores: image, background, galaxy_psf, "
                       f"weight, flag), got {len(inputs)}: {', '.join(p.name for p in inputs)}")
    for path in inputs:
        if not path.is_file():
            raise JobError(f"ngmix input {path} does not exist")
    catalogue = inputs[0]
    store_paths = dict(zip(STORE_KINDS, inputs[1:]))
    config = EngineConfig(prior=ShapePipePrior(cen_sigma=float(options["PIXEL_SCALE"])),
                          zero_point=float(options["MAG_ZP"]),
                          target_psf=options.get("TARGET_PSF", "gauss_nopix"),
                          mask_fill=options.get("MASK_FILL", "model"),
                          epoch_local_sky_width=int(options.get("EPOCH_LOCAL_SKY_WIDTH", 0)))
    id_min, id_max = int(options["ID_OBJ_MIN"]), int(options["ID_OBJ_MAX"])
    engine = options.get("ENGINE", "builtin")
    measure = None
    if engine == "ngmix":
        from .ngmix_engine import import_ngmix, measure_raw_object

        try:
            import_ngmix()
        except ImportError as error:
            raise JobError(str(error)) from error
        measure = measure_raw_object
    tables, summary = measure_tile(catalogue, store_paths, number, seed, config,
                                   header_store_path=options["LOG_WCS"] or None,
                                   id_min=id_min, id_max=id_max, logger=logger, measure=measure,
                                   position_params=tuple(options.get("POSITION_PARAMS")
                                                         or ("XWIN_WORLD", "YWIN_WORLD")),
                                   rng_cell_arcsec=float(options.get("RNG_CELL_ARCSEC", RNG_CELL_ARCSEC)),
                                   tile_vignet_mask=bool(options.get("TILE_VIGNET_MASK", False)))
    header = ngmix_header(number, id_min, id_max, summary)
    header["ENGINE"] = engine
    path = write_ngmix_catalogue(Path(output_dir) / f"ngmix{number}.fits", tables, header)
    ids = tables["noshear"]["id"]
    logger.info("ngmix %s: %d of %d tile objects (ids %s-%s), %d without epoch, %d flagged",
                catalogue.name, summary["n_objects"], summary["n_tile"],
                ids.min() if ids.size else "-", ids.max() if ids.size else "-",
                summary["n_no_epoch"], summary["n_flagged"])
    return path, summary


PRODUCTS = (
    Product("ngmix", "ngmix{number}.fits", "fits_tables", ids=("tile",),
            description="metacalibration shapes, one table per shear branch"),
)


@module(
    name="ngmix",
    products=PRODUCTS,
    version="2.0",
    description="Multi-epoch metacalibration shapes of every tile object (built-in or ngmix engine).",
    aliases=("ngmix_runner",),
    input_module=("sextractor", "psfinterp", "vignetmaker"),
    file_pattern=("tile_sexcat", "image_vignet", "background_vignet", "galaxy_psf", "weight_vignet",
                  "flag_vignet"),
    file_ext=(".fits", ".sqlite", ".sqlite", ".sqlite", ".sqlite", ".sqlite"),
    numbering_scheme="-000-000",
    depends=("numpy", "scipy", "numba", "galsim", "astropy"),
    preload=(
             "astropy.io.fits",
             "galsim",  # (not scipy.optimize: only ENGINE = ngmix's fitter uses it)
             "shapepipe_modules.io.warmup:numba",
             "shapepipe_modules.ngmix.engine",
             "shapepipe_modules.ngmix.metacal",
             "shapepipe_modules.ngmix.gauss_fit",
    ),
    options=OPTIONS,
    requirements=requirements,
    validate=validate,
)
def ngmix(job):
    """Metacalibration shape measurement of one tile (or one id range of it)."""
    _, summary = run_ngmix(job.inputs, job.output_dir, job.number, job.seed, job.options, job.logger)
    return summary
