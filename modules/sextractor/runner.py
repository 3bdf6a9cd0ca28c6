"""Module declaration of ``sextractor``: source extraction on a CCD or a tile.

Two engines read the same inputs and SExtractor configuration files and
write the same FITS-LDAC catalogue ``[PREFIX_]sexcat<number>.fits``:

- ``ENGINE = sep`` (default): :mod:`.sep_engine`, pure pip install;
- ``ENGINE = sextractor``: the SExtractor binary (``EXEC_PATH``,
  ``source-extractor`` or ``sex``).

Inputs, in ``FILE_PATTERN`` order: image, then the weight (if
``WEIGHT_IMAGE``), flag (``FLAG_IMAGE``), PSF model (``PSF_FILE``),
detection image (``DETECTION_IMAGE``) and detection weight
(``DETECTION_WEIGHT``), as in ShapePipe.

Outputs in the job's output directory:

- ``[PREFIX_]sexcat<number>.fits``: the catalogue (``SUFFIX`` renames the
  ``sexcat`` part);
- ``[PREFIX_]<checkimage type in lower case><number>.fits`` for each
  ``CHECKIMAGE`` (e.g. ``background-0000000-0.fits``);
- ``[PREFIX_]bkg_resid<number>.txt``: the background-residual statistics
  (:mod:`.background_residual`) unless ``BKG_RESIDUAL = False``, and
  ``.png``, their plot, with ``BKG_RESIDUAL_PLOT = True``.

Tiles, with ``MAKE_POST_PROCESS = True``: the catalogue also gets the
multi-epoch bookkeeping (:mod:`.multi_epoch`): ``EPOCH_0`` ...
``EPOCH_{n-1}`` tables (``NUMBER``, ``EXP_NAME``, ``CCD_N``), one per
exposure of the tile's HISTORY found in the header store ``LOG_WCS``, and
an ``N_EPOCH`` column; the file is rewritten atomically. ``LOG_WCS`` is a
``dir`` option so that ``last:merge_headers`` works; it may also name the
store file itself when the value is set programmatically (the config
check of a plain ``dir`` value wants an existing folder).

The job returns ``n_objects``, ``extraction_seconds`` and
``extraction_cpu_seconds`` (wall and CPU time from the input files to the
catalogue file), ``bkg_resid_mean`` and ``bkg_resid_sigma``, and with
``MAKE_POST_PROCESS`` ``n_epochs`` and ``n_exposures_unavailable``.

Crowded fields (docs/crowded.md): ``PASSES`` runs several detection passes
and joins them (:mod:`.passes`); ``SATURATION_REGIONS``, ``OBJECT_MASK``,
``LOCAL_SKY`` and ``REGIONS`` write saturated-star regions, the object mask,
local-sky columns and ds9 regions (:mod:`shapepipe_modules.crowded`). The
job then also returns ``seconds_pass_<name>``, ``seconds_subtract`` (PASS_SUBTRACT_RADIUS),
``seconds_split_merge`` (PASS_SPLIT_SIGMA, PASS_CONFIRM_SIGMA), ``seconds_join`` and
``seconds_<product>``, ``n_saturated_regions``, ``masked_fraction`` and
``local_sky_not_converged``.
"""

from __future__ import annotations

import os
from pathlib import Path

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

DATA_DIR = Path(__file__).resolve().parent / "data"
SEP_CHECK_IMAGES = ("BACKGROUND", "BACKGROUND_RMS", "SEGMENTATION", "-BACKGROUND")
BINARY_CHECK_IMAGES = SEP_CHECK_IMAGES + (
    "MINIBACKGROUND", "MINIBACK_RMS", "FILTERED", "OBJECTS", "-OBJECTS", "APERTURES",
)

OPTIONS = (
    Option("ENGINE", "choice", "sep", "Extraction engine: sep (Python) or sextractor (the binary).",
           choices=("sep", "sextractor")),
    Option("EXEC_PATH", "str", "source-extractor",
           "SExtractor executable (ENGINE = sextractor); 'sex' and 'source-extractor' "
           "fall back to each other."),
    Option("DOT_SEX_FILE", "file", str(DATA_DIR / "default_exp.sex"), "SExtractor .sex configuration file."),
    Option("DOT_PARAM_FILE", "file", str(DATA_DIR / "default.param"), "Catalogue columns (.param)."),
    Option("DOT_CONV_FILE", "file", str(DATA_DIR / "default.conv"), "Detection filter kernel (.conv)."),
    Option("WEIGHT_IMAGE", "bool", True, "A weight image follows the image in the inputs."),
    Option("FLAG_IMAGE", "bool", True, "An integer flag image follows (OR-ed into IMAFLAGS_ISO)."),
    Option("PSF_FILE", "bool", False, "A PSFEx model follows (binary engine only)."),
    Option("DETECTION_IMAGE", "bool", False, "A separate detection image follows (binary engine only)."),
    Option("DETECTION_WEIGHT", "bool", False, "A weight of the detection image follows (binary engine only)."),
    Option("ZP_FROM_HEADER", "bool", False, "Read the magnitude zero-point from the image header (ZP_KEY)."),
    Option("ZP_KEY", "str", "", "Header key of the zero-point, e.g. PHOTZP."),
    Option("BKG_FROM_HEADER", "bool", False, "Use a constant background read from the image header (BKG_KEY)."),
    Option("BKG_KEY", "str", "", "Header key of the background value."),
    Option("CHECKIMAGE", "name_list", [], "Check images to write: BACKGROUND, BACKGROUND_RMS, SEGMENTATION, "
           "-BACKGROUND (both engines) and the other SExtractor types (binary engine)."),
    Option("BACKGROUND_MODEL_MAG", "float", None, "When set, the BACKGROUND check image (CHECKIMAGE) also holds "
           "a ring-median model (subtract.ring_median_models) of every object with MAG_AUTO brighter than this, "
           "measured on the image minus the background: the later modules that subtract BACKGROUND stamps "
           "(ngmix) then measure the galaxies beside a bright galaxy without its wing (cluster cores; "
           "docs/crowded.md). The objects modelled lose their own light from their stamps: choose a magnitude "
           "brighter than the shear sample. None: the background alone."),
    Option("CHECKIMAGE_COMPRESS", "bool", True, "sep engine: write the check images tile-compressed (fpack "
           "layout, after an empty primary HDU). Check images are off unless CHECKIMAGE asks for them: write "
           "only those a later module reads."),
    Option("CHECKIMAGE_QUANTIZE", "float", 0.0, "Step (ADU) to which compressed BACKGROUND and "
           "BACKGROUND_RMS check images are rounded: 0 (default) keeps every value (GZIP_2, 3x smaller); "
           "0.01 ADU (1/500 of a CFIS exposure's pixel noise) gives RICE_1 17x smaller and 5x cheaper "
           "(the GOLD exposure configuration: calib_highsnr m changed by <= 1e-4 per seed, the demo's m1 by 0.04 of "
           "its error). Other check images are lossless."),
    Option("VIGNET_ROWS", "list", [], "Store the VIGNET column only for the rows meeting all these "
           "conditions, 'COLUMN OP NUMBER' (OP ==, !=, <, <=, >, >=), e.g. FLAGS == 0, MAG_AUTO < 22: the "
           "stamps go to an LDAC_VIGNET table and the pipeline's readers (setools, psfex ENGINE = builtin) "
           "see the other rows as unusable pixels (-1e30); setools stops with an error if it would write a "
           "row without its stamp. For the exposure catalogues, whose stamps only the selected stars need: "
           "conditions that every star selection also makes keep its results identical. Empty (default): "
           "VIGNET for every row. The SExtractor and PSFEx binaries cannot read that layout."),
    Option("PREFIX", "name", "", "Prefix of the output names (followed by '_')."),
    Option("SUFFIX", "name", "sexcat", "Base name of the catalogue: <PREFIX_><SUFFIX><number>.fits."),
    Option("BKG_RESIDUAL", "bool", True, "Write the background-residual statistics (Gaussian fit to the "
           "histogram of undetected, usable pixels)."),
    Option("BKG_RESIDUAL_PLOT", "bool", False, "Also plot that histogram and fit as a PNG (imports "
           "matplotlib: about one second per job)."),
    Option("MAKE_POST_PROCESS", "bool", False, "Tiles: multi-epoch bookkeeping. Add EPOCH_i tables (NUMBER, "
           "EXP_NAME, CCD_N) and an N_EPOCH column: the CCD of every exposure in the tile's HISTORY that "
           "each object falls on (-1: none)."),
    Option("LOG_WCS", "store", "", "MAKE_POST_PROCESS: the header store of the exposures: the file, or "
           "a folder or reference holding log_exp_headers.sqlite (e.g. last:merge_headers).",
           file_name="log_exp_headers.sqlite"),
    Option("WORLD_POSITION", "list", ["XWIN_WORLD", "YWIN_WORLD"],
           "MAKE_POST_PROCESS: catalogue columns of RA and Dec (deg)."),
    Option("PASSES", "name_list", [], "Detection passes in one job (crowded fields; docs/crowded.md), e.g. "
           "HOT, COLD: each extracts with its own .sex settings (PASS_DOT_SEX_FILES, PASS_SETTINGS); every "
           "object of the first pass is kept, an object of a later pass only when its centre lies outside the "
           "scaled Kron ellipse of every object kept before (PASS_ELLIPSE_SCALE; or away from their cores, "
           "PASS_CORE_SCALES). The catalogue has the usual "
           "columns plus PASS (1-based index; header keys PASS1, PASS2... hold the names). Check images and "
           "background residuals are those of the first pass. Empty: one pass, as before."),
    Option("PASS_DOT_SEX_FILES", "list", [], "One .sex file per pass, in PASSES order ('-': DOT_SEX_FILE); "
           "empty: DOT_SEX_FILE for every pass."),
    Option("PASS_SETTINGS", "list", [], "One entry per pass, in PASSES order: space-separated KEY=VALUE .sex "
           "settings overriding that pass's file, e.g. DETECT_THRESH=5 DEBLEND_MINCONT=0.05 ('-': none; "
           "values with commas need their own .sex file). FILTER_NAME=<.conv file> gives the pass its own "
           "detection filter instead of DOT_CONV_FILE (a bare name is also looked up among the module's "
           "files: gauss_4.0_9x9.conv, gauss_6.0_13x13.conv, gauss_8.0_17x17.conv, Gaussians of that FWHM "
           "in pixels)."),
    Option("PASS_ELLIPSE_SCALE", "float", 1.0, "Join of the passes: factor on the ellipse KRON_RADIUS x "
           "(A_IMAGE, B_IMAGE) of each kept object inside which a later pass's object is a duplicate."),
    Option("PASS_NEIGHBOUR_RADIUS", "float", 0.0, "Join of the passes: a later pass's object inside a kept "
           "object's ellipse is still added, as a neighbour blended into it, when its FLUX_RADIUS is at least "
           "this many pixels and its centre lies beyond the FLUX_RADIUS of every kept object containing it "
           "(the fragments a fine deblending cuts out of a galaxy are compact); 0: the ellipse rule alone."),
    Option("PASS_MERGE_RADIUS", "float", 0.0, "Join of the passes: before the join, detections of a later pass "
           "closer than this many pixels to each other are one object split by the fine deblending (a faint "
           "galaxy in two pieces): only the one with the largest FLUX_AUTO is kept, its row unchanged (chains "
           "count as one group); the first pass is untouched; 0: off. It also merges true pairs that close."),
    Option("PASS_MERGE_FIRST", "bool", False, "With PASS_MERGE_RADIUS: merge the first pass's close detections "
           "too (a finely deblended first pass splits faint galaxies in two as a cold pass does)."),
    Option("PASS_SPLIT_SIGMA", "float", 0.0, "Every pass, before the join: two of its detections with "
           "FLUX_RADIUS below PASS_SPLIT_MAX_RADIUS, closer than twice that, are one object when the pass's "
           "filtered detection image (its background mesh and filter), followed from one centre to the other, "
           "has no valley deeper than this many sigma (a faint galaxy a fine deblending split at a noise dip): "
           "only the one with the largest FLUX_AUTO is kept; 0: off. It also merges faint true pairs that "
           "no significant saddle separates (docs/crowded.md)."),
    Option("PASS_SPLIT_MAX_RADIUS", "float", 6.0, "With PASS_SPLIT_SIGMA: only detections with FLUX_RADIUS "
           "below this many pixels are tested (a faint galaxy on a bright one's wing sits on a slope, not "
           "behind a saddle)."),
    Option("PASS_SPLIT_EXTENDED_RADIUS", "float", 0.0, "With PASS_SPLIT_SIGMA: two detections with FLUX_RADIUS "
           "from this many pixels to 10, closer than 1.25 times the sum of their FLUX_RADIUS, are tested too, on the detection "
           "image smoothed by a Gaussian of half the smaller FLUX_RADIUS (a diffuse disc cut in two by a fine "
           "deblending has noise valleys at the filter's scale, not at its own); 0: off."),
    Option("PASS_SUBTRACT_RADIUS", "float", 0.0, "Passes after the first detect and measure on the image minus "
           "smooth models of the first pass's objects with FLUX_RADIUS >= this many pixels (the median of the "
           "image in elliptical annuli of each object's centre, axis ratio and angle, out to 2.5 Kron radii: "
           "the bright galaxies' light goes, their knots and the faint galaxies on them stay); 0: off. Meant "
           "with PASS_CORE_SCALES (docs/crowded.md)."),
    Option("PASS_MODEL_BACK_SIZE", "int", 0, "With PASS_SUBTRACT_RADIUS: the background mesh (pixels) of the "
           "image the models are measured on; wider than the bright galaxies, or their wings go into the "
           "background instead of the models; 0: the first pass's BACK_SIZE."),
    Option("PASS_CONFIRM_SIGMA", "float", 0.0, "With PASS_SUBTRACT_RADIUS: a first-pass object smaller than the "
           "modelled ones (FLUX_RADIUS below PASS_SUBTRACT_RADIUS) whose centre lies inside a model's disc is kept "
           "only when the first pass on the residual image sees it there (its filtered detection image at least "
           "this many sigma at the object's centre): what a fine first pass cut out of a bright galaxy's wing "
           "goes with the galaxy's model, a galaxy on the wing stays; 0: off."),
    Option("PASS_CONFIRM_CONTRAST", "float", 0.0, "With PASS_CONFIRM_SIGMA: a first-pass object large enough to "
           "be modelled whose centre lies inside the model disc of an object at least this many times brighter "
           "(FLUX_AUTO) is confirmed too: the later pass's detection image of the residual without its own model "
           "must show it at PASS_CONFIRM_SIGMA, or it is dropped (a piece of a bright galaxy's wing as large as a "
           "faint galaxy); those shown are modelled with the others. 0: off, else > 1."),
    Option("PASS_RESIDUAL", "list", [], "With PASS_SUBTRACT_RADIUS: one entry per pass, in PASSES order (the "
           "first is '-'), yes or no: whether that pass detects on the model-subtracted image or on the image "
           "itself; empty: every pass after the first on the subtracted image."),
    Option("PASS_CORE_SCALES", "list", [], "One entry per pass, in PASSES order (the first is '-'): a number "
           "k > 0 joins that pass by the core rule, its object added when its centre lies farther than k x "
           "FLUX_RADIUS (and 3 pixels) from every object kept before, instead of outside their ellipses; '-' "
           "or 0: the ellipse rule (with PASS_NEIGHBOUR_RADIUS). Empty: the ellipse rule for every pass."),
    Option("PASS_MIN_FLUX_RADII", "list", [], "One entry per pass, in PASSES order (the first is '-'): that "
           "pass's objects with FLUX_RADIUS below this many pixels are not joined ('-' or 0: all), e.g. a hot "
           "pass on the model-subtracted image (PASS_SUBTRACT_RADIUS) that adds the members the first pass "
           "merged into a neighbour but not the knots the models leave (compact there). Empty: all."),
    Option("OBJECT_MASK", "bool", False, "Write objmask<number>.fits: int32 image with each object's ellipse "
           "(MASK_SCALE x KRON_RADIUS x (A, B) + MASK_OFFSET; KRON_RADIUS 3.5 when not a column) filled with "
           "its NUMBER, larger objects first, saturated-star regions -1 (SATURATION_REGIONS)."),
    Option("MASK_SCALE", "float", 1.0, "Object mask, local sky and regions: factor on KRON_RADIUS x (A, B)."),
    Option("MASK_OFFSET", "float", 2.0, "Object mask, local sky and regions: pixels added to both semi-axes."),
    Option("SATURATION_REGIONS", "bool", False, "Write satmask<number>.fits (uint8, 1 in a saturated star's "
           "box over its core and bleed trail and circle on its core) and satstars<number>.reg (ds9), from "
           "pixels at the saturation level (the SATUR_KEY header key, else SATUR_LEVEL), the flag bits "
           "SATURATION_FLAG_BITS and the catalogue (FLAGS bit 4 gives the centre)."),
    Option("SATURATION_FLAG_BITS", "int", 0, "Bits of the flag image marking saturated pixels (the simulator: "
           "4); 0: the saturation level only."),
    Option("SATURATION_RADIUS_SCALE", "float", 1.5, "Saturated regions: circle radius in half widths of the "
           "saturated core (its widest row)."),
    Option("SATURATION_PAD", "float", 3.0, "Saturated regions: pixels added around boxes and circles."),
    Option("LOCAL_SKY", "bool", False, "Add BKG_LOCAL, BKG_LOCAL_STD (rms of the sky pixels used) and "
           "BKG_METHOD (1 RING, 2 BOXES, 0 none converged: values NaN) to the catalogue, measured on the input "
           "image skipping every object's mask ellipse, saturated regions and zero weights."),
    Option("LOCAL_SKY_METHODS", "list", ["RING", "BOXES"], "Local-sky methods in the order tried: RING "
           "(elliptical rings growing until the mean stops falling), BOXES (random unmasked boxes)."),
    Option("LOCAL_SKY_RADIUS", "float", 150.0, "Local sky: farthest ring or box from the object, pixels."),
    Option("LOCAL_SKY_RING_WIDTH", "float", 3.0, "Local sky: ring width, pixels."),
    Option("LOCAL_SKY_BOX_SIZE", "int", 9, "Local sky: random box side, pixels."),
    Option("REGIONS", "bool", False, "Write <catalogue name>.reg: a ds9 ellipse per object (the mask "
           "ellipse), labelled with its NUMBER."),
    Option("REGIONS_SELECTION", "list", [], "REGIONS: SETools comparisons (AND-ed) choosing the objects, e.g. "
           "MAG_AUTO < 24, FLAGS == 0."),
    Option("REGIONS_COLOR_BY", "str", "", "REGIONS: integer column colouring the ellipses (e.g. PASS)."),
    Option("REGIONS_COLOR_MODE", "choice", "class", "REGIONS: class (one colour per value) or flag (red when "
           "non-zero).", choices=("class", "flag")),
    Option("FORCED_CAT_PATH", "file", "", "External detection catalogue (FITS table, FITS-LDAC or CSV; RA, Dec "
           "in deg): the sep engine measures at its positions instead of its own detections, so that several "
           "bands or a photo-z catalogue share the objects. Detection still runs, to mask neighbours; a "
           "detected blend of several given positions is split between them (nearest position). Rows off the "
           "image are left out. Empty: detect."),
    Option("FORCED_RA_COL", "str", "RA", "FORCED_CAT_PATH: column of the right ascension (deg; any case)."),
    Option("FORCED_DEC_COL", "str", "DEC", "FORCED_CAT_PATH: column of the declination (deg; any case)."),
    Option("FORCED_ID_COL", "str", "", "FORCED_CAT_PATH: integer column written as NUMBER (shared by every "
           "image measured with that catalogue); empty: the 1-based row number in the catalogue."),
    Option("CCD_SIZE", "float_list", [33.0, 2080.0, 1.0, 4612.0],
           "MAKE_POST_PROCESS: usable pixel range of a CCD, xmin, xmax, ymin, ymax (0-based pixel "
           "coordinates, bounds excluded, as ShapePipe)."),
)


def _input_layout(options) -> list[str]:
    """Role of each input file, in FILE_PATTERN order."""
    roles = ["image"]
    for key, role in (
        ("WEIGHT_IMAGE", "weight"),
        ("FLAG_IMAGE", "flag"),
        ("PSF_FILE", "psf"),
        ("DETECTION_IMAGE", "detection_image"),
        ("DETECTION_WEIGHT", "detection_weight"),
    ):
        if options.get(key, False):
            roles.append(role)
    return roles


def _requirements(options):
    from .binary_engine import resolve_executable

    if options.get("ENGINE", "sep") == "sextractor":
        return (), (resolve_executable(options.get("EXEC_PATH", "source-extractor")),)
    return ("sep", "numba"), ()


def validate(options) -> list[str]:
    """Cross-field checks, run before any job starts.

    Reads the .sex, .param and .conv files; with the sep engine, every
    .param column must be one the engine computes.
    """
    from .columns import unsupported_parameters
    from .config_files import ConfigFileError, ExtractionSettings, read_dot_conv, read_dot_param, read_dot_sex

    problems = []
    engine = options.get("ENGINE", "sep")
    if options.get("DETECTION_WEIGHT") and not options.get("DETECTION_IMAGE"):
        problems.append("DETECTION_WEIGHT = True needs DETECTION_IMAGE = True")
    if options.get("DETECTION_WEIGHT") and not options.get("WEIGHT_IMAGE"):
        problems.append("DETECTION_WEIGHT = True needs WEIGHT_IMAGE = True")
    for flag, key in (("ZP_FROM_HEADER", "ZP_KEY"), ("BKG_FROM_HEADER", "BKG_KEY")):
        if options.get(flag) and not str(options.get(key, "")).strip():
            problems.append(f"{flag} = True needs {key} (the header key to read)")
    check_images = [c.strip().upper() for c in options.get("CHECKIMAGE", []) or []]
    allowed = SEP_CHECK_IMAGES if engine == "sep" else BINARY_CHECK_IMAGES
    for check in check_images:
        if check not in allowed:
            problems.append(f"CHECKIMAGE {check} is not available with ENGINE = {engine} "
                            f"(one of {', '.join(allowed)})")
    if options.get("BACKGROUND_MODEL_MAG") is not None and "BACKGROUND" not in check_images:
        problems.append("BACKGROUND_MODEL_MAG adds the bright objects' models to the BACKGROUND check image: "
                        "give CHECKIMAGE = BACKGROUND")
    if engine == "sep":
        for key in ("PSF_FILE", "DETECTION_IMAGE"):
            if options.get(key):
                problems.append(f"{key} = True needs ENGINE = sextractor (the sep engine has no "
                                f"{'PSF model fitting' if key == 'PSF_FILE' else 'dual-image mode'})")
    try:
        settings = ExtractionSettings.from_dot_sex(read_dot_sex(options["DOT_SEX_FILE"]), options["DOT_SEX_FILE"])
    except (ConfigFileError, KeyError) as error:
        problems.append(f"DOT_SEX_FILE: {error}")
        settings = None
    try:
        parameters = read_dot_param(options["DOT_PARAM_FILE"])
    except (ConfigFileError, KeyError) as error:
        problems.append(f"DOT_PARAM_FILE: {error}")
        parameters = []
    try:
        read_dot_conv(options["DOT_CONV_FILE"])
    except (ConfigFileError, KeyError) as error:
        problems.append(f"DOT_CONV_FILE: {error}")
    if options.get("MAKE_POST_PROCESS"):
        if not str(options.get("LOG_WCS") or "").strip():
            problems.append("MAKE_POST_PROCESS = True needs LOG_WCS (the header store, e.g. last:merge_headers)")
        world = options.get("WORLD_POSITION") or []
        if len(world) != 2:
            problems.append(f"WORLD_POSITION needs two column names (RA, Dec), got {', '.join(world) or 'none'}")
        elif parameters and not {w.upper() for w in world} <= {p.name for p in parameters}:
            problems.append(f"WORLD_POSITION {', '.join(world)}: not all in DOT_PARAM_FILE "
                            f"{options.get('DOT_PARAM_FILE')}")
        size = options.get("CCD_SIZE") or []
        if len(size) != 4 or not (size[0] < size[1] and size[2] < size[3]):
            problems.append(f"CCD_SIZE needs xmin, xmax, ymin, ymax with xmin < xmax and ymin < ymax, "
                            f"got {', '.join(map(str, size)) or 'nothing'}")
    if options.get("VIGNET_ROWS"):
        from .columns import parse_conditions

        try:
            conditions = parse_conditions(options["VIGNET_ROWS"])
        except ValueError as error:
            problems.append(f"VIGNET_ROWS: {error}")
            conditions = []
        names = {p.name for p in parameters}
        if parameters and "VIGNET" not in names:
            problems.append(f"VIGNET_ROWS needs a VIGNET column in DOT_PARAM_FILE {options.get('DOT_PARAM_FILE')}")
        missing = sorted({name for name, _, _ in conditions} - names) if parameters else []
        if missing:
            problems.append(f"VIGNET_ROWS: {', '.join(missing)} not in DOT_PARAM_FILE {options.get('DOT_PARAM_FILE')}")
    if options.get("PASSES"):
        problems += _validate_passes(options, engine)
    if options.get("PASS_SPLIT_SIGMA") and not options.get("PASSES"):
        problems.append("PASS_SPLIT_SIGMA acts on the detections of each of PASSES: give PASSES (one pass is enough)")
    if len(options.get("PASSES") or []) < 2:
        # Options that act on the passes after the first mean nothing without them: a config mistake.
        given = [key for key in ("PASS_SUBTRACT_RADIUS", "PASS_MODEL_BACK_SIZE", "PASS_CONFIRM_SIGMA",
                                 "PASS_CONFIRM_CONTRAST", "PASS_RESIDUAL", "PASS_CORE_SCALES", "PASS_MIN_FLUX_RADII")
                 if options.get(key)]
        if given:
            problems.append(f"{', '.join(given)} act on the passes after the first: PASSES names "
                            f"{len(options.get('PASSES') or [])} pass(es)")
    if options.get("FORCED_CAT_PATH"):
        if engine != "sep":
            problems.append("FORCED_CAT_PATH needs ENGINE = sep (forced positions are measured by the sep engine)")
        if options.get("PASSES"):
            problems.append("FORCED_CAT_PATH and PASSES exclude each other: the external catalogue gives the objects")
        try:
            read_forced_catalogue(options)
        except ValueError as error:
            problems.append(str(error))
    for method in options.get("LOCAL_SKY_METHODS") or []:
        if method.strip().upper() not in ("RING", "BOXES"):
            problems.append(f"LOCAL_SKY_METHODS: unknown method {method!r} (RING, BOXES)")
    if options.get("LOCAL_SKY") and not options.get("LOCAL_SKY_METHODS"):
        problems.append("LOCAL_SKY = True needs at least one LOCAL_SKY_METHODS entry")
    if options.get("REGIONS"):
        from shapepipe_modules.setools.language import SetoolsError, parse

        for line in options.get("REGIONS_SELECTION") or []:
            try:
                parse(line, allow_compare=True)
            except SetoolsError as error:
                problems.append(f"REGIONS_SELECTION {line!r}: {error}")
    if engine == "sep" and parameters:
        unsupported = unsupported_parameters(parameters)
        if unsupported:
            problems.append(
                f"DOT_PARAM_FILE {options['DOT_PARAM_FILE']}: the sep engine cannot compute "
                f"{', '.join(unsupported)}; remove them or use ENGINE = sextractor"
            )
        names = {p.name for p in parameters}
        if "IMAFLAGS_ISO" in names and not options.get("FLAG_IMAGE", False):
            problems.append("IMAFLAGS_ISO in DOT_PARAM_FILE needs FLAG_IMAGE = True")
        if settings is not None and names & {"FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER"}:
            if not settings.phot_apertures:
                problems.append(f"DOT_SEX_FILE {options['DOT_SEX_FILE']}: PHOT_APERTURES is empty")
    return problems


def read_forced_catalogue(options):
    """``(ra, dec, number)`` of the FORCED_CAT_PATH catalogue; ValueError naming the file and the key."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    path = Path(options["FORCED_CAT_PATH"])
    try:
        if path.suffix.lower() == ".csv":
            table = Table.read(path, format="ascii.csv")
        else:
            with fits.open(path) as hdus:
                chosen = next((h for h in hdus if h.name == "LDAC_OBJECTS"), None) or next(
                    (h for h in hdus if isinstance(h, fits.BinTableHDU)), None)
                if chosen is None:
                    raise ValueError("no FITS table in it")
                table = Table(chosen.data)
    except (OSError, ValueError, IndexError) as error:
        raise ValueError(f"FORCED_CAT_PATH {path}: cannot read the catalogue ({error})") from None
    lower = {name.lower(): name for name in table.colnames}
    columns = []
    for key in ("FORCED_RA_COL", "FORCED_DEC_COL") + (("FORCED_ID_COL",) if options.get("FORCED_ID_COL") else ()):
        name = str(options[key]).strip()
        if name.lower() not in lower:
            raise ValueError(f"FORCED_CAT_PATH {path} has no column {name!r} ({key}; columns: "
                             f"{', '.join(table.colnames)})")
        columns.append(np.asarray(table[lower[name.lower()]]))
    ra, dec = (np.asarray(c, dtype=np.float64) for c in columns[:2])
    if len(columns) == 3:
        number = columns[2]
        if number.dtype.kind not in "iu" or (number.size and (number.min() < -2**31 or number.max() >= 2**31)):
            raise ValueError(f"FORCED_CAT_PATH {path}: FORCED_ID_COL {options['FORCED_ID_COL']} must hold 32-bit "
                             "integers (it becomes NUMBER)")
    else:
        number = np.arange(1, ra.size + 1)
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise ValueError(f"FORCED_CAT_PATH {path}: {int(bad.sum())} rows without a finite RA/Dec")
    return ra, dec, number.astype(np.int64)


def forced_pixels(options, header, shape):
    """``(x, y, number)`` (0-based pixels) of the forced objects on an image of ``shape``."""
    import warnings

    import numpy as np
    from astropy.wcs import WCS, FITSFixedWarning

    ra, dec, number = read_forced_catalogue(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial:
        raise ValueError("FORCED_CAT_PATH needs an image with a celestial WCS")
    x, y = wcs.all_world2pix(ra, dec, 0, quiet=True)
    ny, nx = shape
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    return x[inside], y[inside], number[inside]


def pass_sex_settings(options) -> list[tuple[str, str, dict]]:
    """``(name, .sex file, overrides)`` of each pass of ``PASSES``.

    Raises
    ------
    ConfigFileError
        Lists of the wrong length or a bad PASS_SETTINGS entry (named).
    """
    from .config_files import ConfigFileError
    from .passes import parse_pass_settings

    names = [str(n) for n in options.get("PASSES") or []]
    files = list(options.get("PASS_DOT_SEX_FILES") or [])
    settings = list(options.get("PASS_SETTINGS") or [])
    for key, values in (("PASS_DOT_SEX_FILES", files), ("PASS_SETTINGS", settings)):
        if values and len(values) != len(names):
            raise ConfigFileError(f"{key} has {len(values)} entries for {len(names)} PASSES ({', '.join(names)})")
    out = []
    for i, name in enumerate(names):
        path = files[i] if files and files[i].strip() not in ("", "-") else options["DOT_SEX_FILE"]
        overrides = parse_pass_settings(settings[i] if settings else "", f"PASS_SETTINGS entry {i + 1} ({name})")
        out.append((name, str(path), overrides))
    return out


def pass_numbers(options, key) -> list[float] | None:
    """A per-pass list option (PASS_CORE_SCALES, PASS_MIN_FLUX_RADII) as numbers (``-``: 0), or None when empty.

    Raises
    ------
    ConfigFileError
        A list of the wrong length, a value that is not a number >= 0, or a value on the first pass.
    """
    from .config_files import ConfigFileError

    names = [str(n) for n in options.get("PASSES") or []]
    entries = [str(e).strip() for e in options.get(key) or []]
    if not entries:
        return None
    if len(entries) != len(names):
        raise ConfigFileError(f"{key} has {len(entries)} entries for {len(names)} PASSES ({', '.join(names)})")
    values = []
    for name, entry in zip(names, entries):
        try:
            value = 0.0 if entry in ("", "-") else float(entry)
        except ValueError:
            raise ConfigFileError(f"{key}: pass {name}: {entry!r} is not a number or '-'") from None
        if not value >= 0:
            raise ConfigFileError(f"{key}: pass {name}: {entry!r} must be >= 0")
        values.append(value)
    if values[0] > 0:
        raise ConfigFileError(f"{key}: the first pass ({names[0]}) keeps every object; give '-'")
    return values


def passes_on_residual(options) -> list[bool]:
    """Whether each pass of PASSES detects on the model-subtracted image (PASS_SUBTRACT_RADIUS, PASS_RESIDUAL).

    Raises
    ------
    ConfigFileError
        PASS_RESIDUAL of the wrong length, not yes/no, yes on the first pass, or given without
        PASS_SUBTRACT_RADIUS.
    """
    from shapepipe.options import OptionError, parse_bool

    from .config_files import ConfigFileError

    names = [str(n) for n in options.get("PASSES") or []]
    subtract = float(options.get("PASS_SUBTRACT_RADIUS") or 0.0) > 0
    entries = [str(e).strip() for e in options.get("PASS_RESIDUAL") or []]
    if not entries:
        return [False] + [subtract] * (len(names) - 1) if names else []
    if not subtract:
        raise ConfigFileError("PASS_RESIDUAL needs PASS_SUBTRACT_RADIUS > 0 (no subtracted image without it)")
    if len(entries) != len(names):
        raise ConfigFileError(f"PASS_RESIDUAL has {len(entries)} entries for {len(names)} PASSES ({', '.join(names)})")
    flags = []
    for name, entry in zip(names, entries):
        try:
            flags.append(False if entry in ("", "-") else parse_bool(entry))
        except OptionError:
            raise ConfigFileError(f"PASS_RESIDUAL: pass {name}: {entry!r} is not yes, no or '-'") from None
    if flags[0]:
        raise ConfigFileError(f"PASS_RESIDUAL: the first pass ({names[0]}) makes the models; give '-'")
    return flags


def pass_filter_file(overrides) -> Path | None:
    """The detection filter a pass names with ``FILTER_NAME`` in PASS_SETTINGS (None: DOT_CONV_FILE).

    A name that is not an existing file is looked up in the module's data
    folder (e.g. ``gauss_6.0_13x13.conv``).
    """
    value = overrides.get("FILTER_NAME")
    if not value:
        return None
    path = Path(os.path.expandvars(str(value)))
    if not path.is_file() and (DATA_DIR / path.name).is_file() and path.name == str(value):
        return DATA_DIR / path.name
    return path


def _validate_passes(options, engine) -> list[str]:
    from pathlib import Path

    from .config_files import ConfigFileError, ExtractionSettings, read_dot_conv, read_dot_sex

    problems = []
    names = [str(n).upper() for n in options.get("PASSES") or []]
    if len(set(names)) != len(names):
        problems.append(f"PASSES: names must differ, got {', '.join(names)}")
    if not options.get("PASS_ELLIPSE_SCALE", 1.0) > 0:
        problems.append(f"PASS_ELLIPSE_SCALE must be positive, got {options.get('PASS_ELLIPSE_SCALE')}")
    declared = {option.name: option.default for option in OPTIONS}

    def value(key):  # as given, else as declared (validate may see options without their defaults)
        return options.get(key, declared[key])

    negative = set()
    for key in ("PASS_NEIGHBOUR_RADIUS", "PASS_MERGE_RADIUS", "PASS_SUBTRACT_RADIUS", "PASS_SPLIT_SIGMA",
                "PASS_SPLIT_EXTENDED_RADIUS", "PASS_CONFIRM_SIGMA", "PASS_MODEL_BACK_SIZE"):
        if not value(key) >= 0:
            problems.append(f"{key} must be >= 0, got {value(key)}")
            negative.add(key)
    # An option that means nothing without another one: a config mistake, named.
    for key, needed, why in (("PASS_MERGE_FIRST", "PASS_MERGE_RADIUS", "the merging distance"),
                             ("PASS_SPLIT_SIGMA", "PASS_SPLIT_MAX_RADIUS", "the largest FLUX_RADIUS tested"),
                             ("PASS_SPLIT_EXTENDED_RADIUS", "PASS_SPLIT_SIGMA", "the valley's depth in sigma"),
                             ("PASS_CONFIRM_SIGMA", "PASS_SUBTRACT_RADIUS", "no residual image without it"),
                             ("PASS_MODEL_BACK_SIZE", "PASS_SUBTRACT_RADIUS", "no models without it"),
                             ("PASS_CONFIRM_CONTRAST", "PASS_CONFIRM_SIGMA", "the satellites are confirmed by it")):
        if value(key) and key not in negative and not value(needed) > 0:
            problems.append(f"{key} needs {needed} > 0 ({why}), got {value(needed)}")
    if value("PASS_CONFIRM_CONTRAST") and not value("PASS_CONFIRM_CONTRAST") > 1:
        problems.append(f"PASS_CONFIRM_CONTRAST must be 0 (off) or > 1 (a flux ratio), "
                        f"got {value('PASS_CONFIRM_CONTRAST')}")
    for key in ("PASS_CORE_SCALES", "PASS_MIN_FLUX_RADII"):
        try:
            pass_numbers(options, key)
        except ConfigFileError as error:
            problems.append(str(error))
    try:
        passes_on_residual(options)
    except ConfigFileError as error:
        problems.append(str(error))
    try:
        passes = pass_sex_settings(options)
    except ConfigFileError as error:
        return problems + [str(error)]
    for name, path, overrides in passes:
        if not Path(path).is_file():
            problems.append(f"PASS_DOT_SEX_FILES: pass {name}: no file {path}")
            continue
        conv = pass_filter_file(overrides)
        if conv is not None:
            try:
                read_dot_conv(conv)
            except ConfigFileError as error:
                problems.append(f"PASS_SETTINGS of pass {name}: FILTER_NAME: {error}")
        try:
            settings = read_dot_sex(path)
            settings.update(overrides)
            ExtractionSettings.from_dot_sex(settings, f"{path} with PASS_SETTINGS of pass {name}")
        except ConfigFileError as error:
            problems.append(f"pass {name}: {error}")
    return problems


def _run_passes(job, run, paths, settings_files, zero_point, background_value, check_images, report=None):
    """Extract every pass of PASSES, join them (:func:`.passes.join_passes`), write the catalogue.

    Returns what the engine functions return: the residual pixels, check
    images and the report are those of the first pass; the timings add up
    the passes and the join (``join``), with ``pass_<name>`` per pass.
    """
    import tempfile
    import time

    import numpy as np

    from shapepipe_modules.io.ldac import read_ldac, write_ldac

    from .config_files import ConfigFileError, read_dot_param
    from .passes import confirmed_on_residual, join_passes, merge_shallow_splits, with_join_columns, write_pass_sex
    from .subtract import model_discs

    dot_sex, dot_param, dot_conv = settings_files
    try:
        passes = pass_sex_settings(job.options)
        core_scales = pass_numbers(job.options, "PASS_CORE_SCALES")
        min_radii = pass_numbers(job.options, "PASS_MIN_FLUX_RADII")
        on_residual = passes_on_residual(job.options)
        parameters, added = with_join_columns(read_dot_param(dot_param))
    except ConfigFileError as error:
        raise JobError(str(error)) from error
    timings: dict = {}
    tables, residual, header, first_raw = [], None, None, None
    split_sigma, split_merged = float(job.options.get("PASS_SPLIT_SIGMA") or 0.0), []
    confirm_sigma = float(job.options.get("PASS_CONFIRM_SIGMA") or 0.0)
    contrast = float(job.options.get("PASS_CONFIRM_CONTRAST") or 0.0)
    # The first pass's rows modelled (None: all large enough) and its satellites not seen without their models.
    modelled, rejected, first_rows = None, None, None
    # The image and weight arrays, read once for the models and the saddle tests when these use them.
    pixels = {} if split_sigma > 0 or confirm_sigma > 0 else None
    confirm_done, n_unconfirmed = False, None
    with tempfile.TemporaryDirectory(prefix="sextractor_passes_") as scratch:
        scratch = Path(scratch)
        param_path = scratch / "passes.param"
        param_path.write_text("".join(f"{p}\n" for p in parameters))
        subtracted_paths = None
        for index, (name, sex_path, overrides) in enumerate(passes):
            pass_sex = scratch / f"pass{index + 1}.sex"
            write_pass_sex(sex_path, overrides, pass_sex)
            first = index == 0
            # A pass's own detection filter (FILTER_NAME in its settings), else DOT_CONV_FILE.
            pass_conv = pass_filter_file(overrides) or dot_conv
            if on_residual[index] and subtracted_paths is None:
                clock = time.perf_counter()
                subtract_radius = float(job.options["PASS_SUBTRACT_RADIUS"])
                model_back = int(job.options.get("PASS_MODEL_BACK_SIZE") or 0)
                check = None
                if contrast > 1 and confirm_sigma > 0:
                    check = (contrast, _satellite_check(paths, first_raw, subtract_radius, confirm_sigma, pass_sex,
                                                        pass_conv, scratch, pixels))
                subtracted_paths, modelled, rejected = _subtracted_image(
                    paths, first_raw, subtract_radius, scratch / "pass1.sex", scratch, report, model_back, pixels,
                    check)
                timings["subtract"] = time.perf_counter() - clock
                if pixels is not None:  # the later passes detect on the residual (re-read if one does not)
                    pixels.pop(str(paths["image"]), None)
            pass_paths = subtracted_paths if on_residual[index] else paths
            catalogue, pass_residual, _, pass_timings = run(
                job, pass_paths, (pass_sex, param_path, pass_conv), zero_point, background_value,
                check_images if first else [], report=report if first else None,
                catalogue=scratch / f"pass{index + 1}_cat.fits", residual=first)
            if first:
                residual = pass_residual
            for step, seconds in pass_timings.items():
                timings[step] = timings.get(step, 0.0) + seconds
            timings[f"pass_{name}"] = sum(v for k, v in pass_timings.items() if k != "extraction_cpu")
            table, pass_header = read_ldac(catalogue)
            header = header if header is not None else pass_header
            # The models are of the first pass's detections as extracted (its close pieces are merged in the
            # join, its shallow splits here).
            first_raw = table if first else first_raw
            detection = None
            if split_sigma > 0 or (confirm_sigma > 0 and on_residual[index] and not confirm_done):
                clock = time.perf_counter()
                detection = _pass_detection_image(pass_paths, pass_sex, pass_conv, pixels)
                timings["split_merge"] = timings.get("split_merge", 0.0) + time.perf_counter() - clock
            if split_sigma > 0:
                clock = time.perf_counter()
                extended_radius = float(job.options.get("PASS_SPLIT_EXTENDED_RADIUS") or 0.0)
                keep = merge_shallow_splits(table, *detection, split_sigma,
                                            float(job.options.get("PASS_SPLIT_MAX_RADIUS", 6.0)), extended_radius,
                                            _pass_kernel(pass_sex, pass_conv) if extended_radius > 0 else None)
                split_merged.append(int((~keep).sum()))
                table = table[keep]
                if first:
                    first_rows = np.flatnonzero(keep)
                timings["split_merge"] = timings.get("split_merge", 0.0) + time.perf_counter() - clock
            if on_residual[index] and not confirm_done and confirm_sigma > 0:
                # The first pass's objects inside the models' discs, checked on this pass's residual image.
                confirm_done = True
                clock = time.perf_counter()
                subtract_radius = float(job.options["PASS_SUBTRACT_RADIUS"])
                keep = confirmed_on_residual(tables[0], model_discs(first_raw, subtract_radius, rows=modelled),
                                             *detection, confirm_sigma, subtract_radius)
                if rejected is not None:
                    keep &= ~(rejected if first_rows is None else rejected[first_rows])
                n_unconfirmed = int((~keep).sum())
                tables[0] = tables[0][keep]
                timings["split_merge"] = timings.get("split_merge", 0.0) + time.perf_counter() - clock
            detection = None
            tables.append(table)
        clock, cpu = time.perf_counter(), time.process_time()
        joined = join_passes(tables, float(job.options.get("PASS_ELLIPSE_SCALE", 1.0)),
                             float(job.options.get("PASS_NEIGHBOUR_RADIUS", 0.0)),
                             float(job.options.get("PASS_MERGE_RADIUS", 0.0)), core_scales, min_radii,
                             merge_first=bool(job.options.get("PASS_MERGE_FIRST", False)))
        joined.remove_columns(added)
        header["NPASS"] = (len(passes), "detection passes joined (sextractor PASSES)")
        if n_unconfirmed is not None:
            header["NUNCONF"] = (n_unconfirmed, "pass 1 objects not on the residual")
        for index, (name, _, _) in enumerate(passes, start=1):
            header[f"PASS{index}"] = (name, f"name of pass {index} (PASS column)")
            header[f"NPASS{index}"] = (int((joined["PASS"] == index).sum()), f"objects kept from pass {index}")
            if split_merged:
                header[f"NSPLIT{index}"] = (split_merged[index - 1], f"pass {index} detections merged (saddle)")
        output = job.output_path(job_names(job)["catalogue"])
        write_ldac(output, joined, header)
        timings["join"] = time.perf_counter() - clock
        timings["extraction_cpu"] = timings.get("extraction_cpu", 0.0) + time.process_time() - cpu
    return output, residual, len(joined), timings


def _pixels(paths, key, cache=None):
    """``paths[key]`` as float32 pixels with its header (None when absent), read once per ``cache`` dict."""
    import numpy as np

    if key not in paths:
        return None, None
    name = str(paths[key])
    if cache is None or name not in cache:
        data = _read_image(paths[key], np.float32)
        if cache is None:
            return data
        cache[name] = data
    return cache[name]


def _pass_detection_image(paths, pass_sex, pass_conv, cache=None):
    """A pass's filtered detection image and its noise (:func:`.passes.filtered_detection_image`).

    The image is the one the pass detected on (the tile or the model-subtracted image), with the pass's
    BACK_SIZE, BACK_FILTERSIZE (or BACK_VALUE for BACK_TYPE MANUAL) and detection filter (none with FILTER N).
    """
    import numpy as np

    from .config_files import ExtractionSettings, read_dot_sex
    from .passes import filtered_detection_image

    settings = ExtractionSettings.from_dot_sex(read_dot_sex(pass_sex), str(pass_sex))
    image, weight = _pixels(paths, "image", cache)[0], _pixels(paths, "weight", cache)[0]
    bad = ~np.isfinite(image)
    if bad.any():
        image = np.where(bad, 0.0, image).astype(np.float32)
        weight = np.where(bad, 0.0, 1.0 if weight is None else weight).astype(np.float32)
    kernel = _pass_kernel(pass_sex, pass_conv, settings)
    back_value = settings.back_value if settings.back_type == "MANUAL" else None
    return filtered_detection_image(image, weight, kernel, settings.back_size, settings.back_filtersize, back_value)


def _pass_kernel(pass_sex, pass_conv, settings=None):
    """A pass's detection filter (``[[1]]`` with FILTER N)."""
    import numpy as np

    from .config_files import ExtractionSettings, read_dot_conv, read_dot_sex

    if settings is None:
        settings = ExtractionSettings.from_dot_sex(read_dot_sex(pass_sex), str(pass_sex))
    return read_dot_conv(pass_conv) if settings.filter else np.ones((1, 1))


def _satellite_check(paths, first_table, min_flux_radius, sigma, pass_sex, pass_conv, scratch, cache):
    """``seen(residual, rows)`` for :func:`.subtract.subtract_models_confirming`: the later pass's eyes.

    The pass's detection image of the residual (its background, filter and noise,
    :func:`_pass_detection_image`) must show each row at ``sigma`` at its centre
    (:func:`.passes.confirmed_on_residual`, as the smaller first-pass objects are confirmed).
    """
    import numpy as np

    from .passes import confirmed_on_residual
    from .subtract import model_discs

    def seen(residual, rows):
        key = str(scratch / "satellites_probe.fits")  # held in memory only, under a name of its own
        probe_cache = {} if cache is None else cache
        probe_cache[key] = (residual, None)
        try:
            detection = _pass_detection_image(dict(paths, image=key), pass_sex, pass_conv, probe_cache)
        finally:
            probe_cache.pop(key, None)
        tested = np.zeros(len(first_table), bool)
        tested[rows] = True
        return confirmed_on_residual(first_table, model_discs(first_table, min_flux_radius), *detection, sigma,
                                     min_flux_radius, also=tested)[rows]

    return seen


def _subtracted_image(paths, first_table, min_flux_radius, first_sex, scratch, report=None, back_size=0, cache=None,
                      check=None):
    """``paths`` with the image replaced by the image minus the first pass's models (:mod:`.subtract`).

    The models' background mesh is ``back_size`` (0: the first pass's BACK_SIZE); pixels of zero weight
    stay out of them. With ``check`` (contrast, seen) the satellites are modelled only when seen
    (:func:`.subtract.subtract_models_confirming`). Returns the paths, the rows of ``first_table`` modelled
    (None: all with FLUX_RADIUS >= ``min_flux_radius``) and the satellites rejected (None without ``check``).
    """
    import numpy as np
    from astropy.io import fits

    from .config_files import ExtractionSettings, read_dot_sex
    from .subtract import subtract_models, subtract_models_confirming

    image, header = _pixels(paths, "image", cache)
    weight = _pixels(paths, "weight", cache)[0]
    if not back_size:
        back_size = ExtractionSettings.from_dot_sex(read_dot_sex(first_sex), str(first_sex)).back_size[0]
    modelled = rejected = None
    if check is None:
        residual, n_models = subtract_models(image, first_table, min_flux_radius, back_size, weight)
    else:
        residual, modelled, rejected = subtract_models_confirming(image, first_table, min_flux_radius, check[0],
                                                                  check[1], back_size, weight)
        n_models = int(modelled.size)
    target = scratch / "subtracted.fits"
    header = header.copy()
    for key in ("XTENSION", "PCOUNT", "GCOUNT", "EXTNAME"):  # a compressed input's extension keys
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(residual, header=header).writeto(target, output_verify="silentfix")
    if cache is not None:
        cache[str(target)] = (residual, header)
    if report is not None:
        report["n_subtracted_models"] = n_models
    return dict(paths, image=target), modelled, rejected


def _read_image(path, dtype=None):
    """Data and header of the first 2-d image HDU of a FITS file.

    With ``dtype``, the data come as a C-contiguous array of that type in
    native byte order, converted in one pass from the memory-mapped file
    (FITS is big-endian; sep and numba want native order).
    """
    import numpy as np
    from astropy.io import fits

    from shapepipe_modules.io.images import fast_inflate, image_data

    fast_inflate()
    try:
        with fits.open(path, memmap=dtype is not None) as hdus:
            for hdu in hdus:
                if hdu.header.get("NAXIS", 0) == 2 or isinstance(hdu, fits.CompImageHDU):
                    data = image_data(hdu)
                    if data is None or data.ndim != 2:
                        continue
                    if dtype is not None:
                        # A decompressed image is already this process's own array: no second copy.
                        own = isinstance(hdu, fits.CompImageHDU)
                        data = (np.ascontiguousarray if own else np.array)(
                            data, dtype=np.dtype(dtype).newbyteorder("="))
                    return data, hdu.header.copy()
    except (OSError, ValueError, TypeError, IndexError, EOFError) as error:
        # A truncated file raises TypeError ("buffer is too small") in astropy.
        raise JobError(f"{path}: cannot read as FITS ({type(error).__name__}: {error})") from error
    raise JobError(f"{path}: no 2-d image HDU")


def mask_bad_pixels(image, weight, image_path, weight_path, logger=None) -> dict:
    """Give non-finite image or weight pixels weight 0 (in place); count them.

    Returns ``{"bad_pixels_image": n, "bad_pixels_weight": m}``; the job logs
    the files and counts. Detection in the valid part is that of the same
    data with those pixels at weight 0.

    Raises
    ------
    JobUnprocessable
        If no usable pixel is left (the CCD is dropped downstream).
    """
    import numpy as np

    from shapepipe.errors import JobUnprocessable

    bad_image = ~np.isfinite(image)
    counts = {"bad_pixels_image": int(bad_image.sum()), "bad_pixels_weight": 0}
    bad = bad_image
    if weight is not None:
        bad_weight = ~np.isfinite(weight)
        counts["bad_pixels_weight"] = int(bad_weight.sum())
        bad = bad_image | bad_weight
        weight[bad] = 0.0
        usable = int(np.count_nonzero(weight > 0))
    else:
        usable = int(bad.size - bad.sum())
    image[bad] = 0.0
    if logger is not None:
        if counts["bad_pixels_image"]:
            logger.warning("%s: %d non-finite pixel(s) (NaN or inf) masked (weight 0)", image_path,
                           counts["bad_pixels_image"])
        if counts["bad_pixels_weight"]:
            logger.warning("%s: %d non-finite weight pixel(s) masked (weight 0)", weight_path,
                           counts["bad_pixels_weight"])
    if usable == 0:
        raise JobUnprocessable(f"{image_path}: no usable pixel ({counts['bad_pixels_image']} non-finite image "
                               f"pixels, {counts['bad_pixels_weight']} non-finite weight pixels, the rest at "
                               "weight 0): the image is entirely masked")
    return counts


def _header_float(header, key, path, option):
    if key not in header:
        raise JobError(f"{path}: header has no key {key!r} (asked for by {option})")
    try:
        return float(header[key])
    except (TypeError, ValueError):
        raise JobError(f"{path}: header key {key!r} = {header[key]!r} is not a number ({option})") from None


def _check_name(prefix, kind, number):
    return f"{prefix}{kind.lower()}{number}.fits"


def _write_image(path, data, header, compress=False, quantize=0.0):
    from shapepipe_modules.io.images import write_image

    write_image(path, data, header, compress=compress, output_verify="exception", quantize=quantize)


def _read_native(path):
    """Pixels of an image file in native byte order, swapped in place (no second copy)."""
    data, _ = _read_image(path)
    if not data.dtype.isnative:
        if data.flags.writeable and data.flags.owndata:
            data = data.byteswap(inplace=True).view(data.dtype.newbyteorder())
        else:
            data = data.astype(data.dtype.newbyteorder("="))
    return data


def _plain_copies(paths: dict, scratch: Path) -> dict:
    """``paths`` with each tile-compressed image replaced by a plain copy in ``scratch``.

    SExtractor's binary cannot read unquantised GZIP_2 tiles ("Unknown TFORM").
    """
    from astropy.io import fits

    from shapepipe_modules.io.images import is_compressed

    plain = dict(paths)
    for kind, path in paths.items():
        if kind == "psf" or path is None or not str(path).endswith(".fits") or not is_compressed(path):
            continue
        data, header = _read_image(path)
        target = scratch / f"plain_{kind}.fits"
        fits.PrimaryHDU(data, header=header).writeto(target)
        plain[kind] = target
    return plain


def _run_sep(job, paths, settings_files, zero_point, background_value, check_images, report=None,
             catalogue=None, residual=True):
    """Run the sep engine; return (catalogue path, residual pixels, number of objects, timings).

    ``catalogue``: output path (default: the job's catalogue name).
    """
    import time

    import functools

    import numpy as np

    from shapepipe_modules.io.ldac import write_ldac

    from . import sep_engine
    from .config_files import ConfigFileError, ExtractionSettings, read_dot_conv, read_dot_param, read_dot_sex

    clock, cpu = time.perf_counter(), time.process_time()
    dot_sex, dot_param, dot_conv = settings_files
    try:
        sex_settings = read_dot_sex(dot_sex)
        settings = ExtractionSettings.from_dot_sex(sex_settings, dot_sex)
        parameters = read_dot_param(dot_param)
        kernel = read_dot_conv(dot_conv)
    except ConfigFileError as error:
        raise JobError(str(error)) from error
    # Native float32 copies owned here and handed over to the engine as work
    # space (overwrite_input): the image becomes the background-subtracted
    # image and the weight the variance map, without further copies.
    image, header = _read_image(paths["image"], np.float32)
    weight = flags = None
    if "weight" in paths:
        weight, _ = _read_image(paths["weight"], np.float32)
    counts = mask_bad_pixels(image, weight, paths["image"], paths.get("weight"), job.logger)
    if report is not None:
        report.update(counts)
    if weight is not None:
        weight_type = sex_settings.get("WEIGHT_TYPE", "MAP_WEIGHT").split(",")[-1].strip().upper()
        if weight_type in ("MAP_VAR", "MAP_RMS"):
            positive = weight > 0
            if weight_type == "MAP_RMS":
                np.square(weight, out=weight)
            np.divide(np.float32(1.0), weight, out=weight, where=positive)
            weight[~positive] = 0.0
    if "flag" in paths:
        # Read after detection, when the engine has freed the background map (full tile: 400 MB).
        flags = functools.partial(_read_native, paths["flag"])
    forced = None
    if job.options.get("FORCED_CAT_PATH"):
        try:
            forced = forced_pixels(job.options, header, image.shape)
        except ValueError as error:
            raise JobError(f"{paths['image']}: [{job.module_run.upper()}_RUNNER] {error}") from None
        job.logger.info("forced positions: %d of %s on the image", forced[0].size, job.options["FORCED_CAT_PATH"])
    timings = {"read": time.perf_counter() - clock}
    try:
        result = sep_engine.extract(image, header, settings, parameters, kernel, weight=weight,
                                    flag_image=flags, zero_point=zero_point,
                                    background_value=background_value, overwrite_input=True,
                                    keep_background="BACKGROUND" in check_images, forced=forced)
    except sep_engine.ExtractionError as error:
        raise JobError(f"{paths['image']}: {error}") from error
    del image, weight, flags
    timings.update(result.timings)
    clock = time.perf_counter()
    image_header = header.copy()
    for key, (value, comment) in result.header_keys.items():
        # Keep each card within 80 characters: long float values leave less room
        # for the comment, and astropy would warn and truncate it anyway.
        room = max(0, 80 - 33 - max(0, len(str(value)) - 20))
        image_header[key] = (value, comment[:room])
    vignet_rows, selection = None, ""
    if catalogue is None and _vignet_rows_when_written(job.options):
        # VIGNET_ROWS applied to the table before the one write, instead of a rewrite of the written file
        # (the same file: the rows are selected on the same column values).
        vignet_rows, selection = _selected_vignet_rows(job, result.table)
        if report is not None and vignet_rows is not None and len(vignet_rows):
            report["n_vignets_stored"] = int(vignet_rows.sum())
    catalogue = job.output_path(job_names(job)["catalogue"]) if catalogue is None else catalogue
    write_ldac(catalogue, result.table, image_header, vignet_rows=vignet_rows, vignet_selection=selection)
    check_data = {
        "BACKGROUND": lambda: result.background,
        "BACKGROUND_RMS": result.background_rms,
        "SEGMENTATION": lambda: result.segmentation,
        # Unusable pixels (zero weight, non-finite) are 0 in this image.
        "-BACKGROUND": lambda: result.subtracted,
    }
    for kind in check_images:
        _write_image(job.output_path(_check_name(job_names(job)["prefix"], kind, job.number)),
                     check_data[kind](), header, compress=job.options.get("CHECKIMAGE_COMPRESS", True),
                     quantize=job.options.get("CHECKIMAGE_QUANTIZE", 0.0) if kind.startswith("BACKGROUND") else 0.0)
    timings["write"] = time.perf_counter() - clock
    timings["extraction_cpu"] = time.process_time() - cpu
    return catalogue, result.residual, len(result.table), timings


def _run_binary(job, paths, settings_files, zero_point, background_value, check_images, report=None,
                catalogue=None, residual=True):
    """Run the SExtractor binary; return (catalogue path, residual pixels, number of objects, timings).

    ``catalogue``: output path (default: the job's catalogue name); ``residual``: compute the residual pixels.
    """
    import tempfile
    import time

    import numpy as np
    from astropy.io import fits

    from .binary_engine import command_line, resolve_executable
    from .config_files import read_dot_sex

    dot_sex, dot_param, dot_conv = settings_files
    names = job_names(job)
    catalogue = job.output_path(names["catalogue"]) if catalogue is None else catalogue
    weight_type = None
    if "weight" in paths:
        declared = read_dot_sex(dot_sex).get("WEIGHT_TYPE", "NONE").split(",")[0].strip().upper()
        if declared in ("", "NONE"):
            weight_type = "MAP_WEIGHT"
    with tempfile.TemporaryDirectory(prefix="sextractor_") as scratch:
        paths = _plain_copies(paths, Path(scratch))
        wanted = {kind: job.output_path(_check_name(names["prefix"], kind, job.number)) for kind in check_images}
        want_residual = job.options.get("BKG_RESIDUAL", True) and residual
        if want_residual:
            for kind in ("BACKGROUND", "SEGMENTATION"):
                wanted.setdefault(kind, Path(scratch) / f"{kind.lower()}.fits")
        args = command_line(
            resolve_executable(job.options.get("EXEC_PATH", "source-extractor")),
            paths["image"], catalogue, dot_sex, dot_param, dot_conv,
            weight=paths.get("weight"), flag=paths.get("flag"), psf=paths.get("psf"),
            detection_image=paths.get("detection_image"), detection_weight=paths.get("detection_weight"),
            weight_type=weight_type, zero_point=zero_point, background_value=background_value,
            check_images=wanted,
        )
        clock, cpu = time.perf_counter(), _children_cpu()
        completed = job.run_command(args)
        timings = {"extraction": time.perf_counter() - clock, "extraction_cpu": _children_cpu() - cpu}
        if not catalogue.exists():
            raise JobError(f"{paths['image']}: SExtractor wrote no catalogue; output:\n{completed.stderr[-2000:]}")
        residual = None
        if want_residual:
            clock = time.perf_counter()
            image, _ = _read_image(paths["image"], np.float32)
            image -= fits.getdata(wanted["BACKGROUND"])
            usable = fits.getdata(wanted["SEGMENTATION"]) == 0
            if "weight" in paths:
                usable &= _read_image(paths["weight"])[0] > 0
            residual = image[usable]
            timings["residual_pixels"] = time.perf_counter() - clock
    with fits.open(catalogue, memmap=False) as hdus:
        n_objects = len(hdus["LDAC_OBJECTS"].data)
    return catalogue, residual, n_objects, timings


def _children_cpu() -> float:
    """CPU seconds of the finished child processes of this process (the binary)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _vignet_rows_when_written(options) -> bool:
    """Whether VIGNET_ROWS is applied as the catalogue is written: no later step of the job reads the
    catalogue back and rewrites it (post-processing, crowded-field products)."""
    crowded = ("OBJECT_MASK", "SATURATION_REGIONS", "LOCAL_SKY", "REGIONS")
    return bool(options.get("VIGNET_ROWS")) and not options.get("MAKE_POST_PROCESS", False) \
        and not any(options.get(key) for key in crowded)


def _selected_vignet_rows(job, table):
    """Rows of ``table`` meeting VIGNET_ROWS and the text saying so (JobError naming the option)."""
    import numpy as np

    from .columns import rows_meeting

    conditions = job.options["VIGNET_ROWS"]
    if "VIGNET" not in table.colnames:
        return None, ""
    try:
        return np.asarray(rows_meeting(table, conditions), dtype=bool), ", ".join(conditions)
    except ValueError as error:
        raise JobError(f"{job.inputs[0]}: [{job.module_run.upper()}] VIGNET_ROWS: {error}") from None


def _store_selected_vignets(job, catalogue) -> dict:
    """Keep the catalogue's VIGNET only for the rows meeting VIGNET_ROWS (a rewrite of the file)."""
    import functools

    from shapepipe_modules.io.ldac import LDACError, store_vignets_for

    from .columns import rows_meeting

    conditions = job.options["VIGNET_ROWS"]
    text = ", ".join(conditions)
    try:
        kept, total = store_vignets_for(catalogue, functools.partial(rows_meeting, conditions=conditions), text)
    except (LDACError, ValueError) as error:
        raise JobError(f"{catalogue}: [{job.module_run.upper()}] VIGNET_ROWS: {error}") from None
    return {"n_vignets_stored": kept} if total else {}


def job_names(job) -> dict:
    """Output names of a job: ``prefix`` (with its '_'), ``catalogue``, residual stats and plot."""
    prefix = str(job.options.get("PREFIX", "") or "").strip()
    prefix = f"{prefix}_" if prefix else ""
    suffix = str(job.options.get("SUFFIX", "sexcat") or "sexcat").strip()
    return {
        "prefix": prefix,
        "catalogue": f"{prefix}{suffix}{job.number}.fits",
        "residual_stats": f"{prefix}bkg_resid{job.number}.txt",
        "residual_plot": f"{prefix}bkg_resid{job.number}.png",
    }


def write_catalogue(job, report=None):
    """Extract the sources of one image with the configured engine.

    Returns
    -------
    tuple
        ``(catalogue path, residual pixels or None, number of objects,
        timings)``; ``timings`` maps steps to seconds.
    """
    import time

    options = job.options
    roles = _input_layout(options)
    if len(job.inputs) != len(roles):
        raise JobError(
            f"{job.inputs[0] if job.inputs else 'job'}: {len(job.inputs)} input files but the options "
            f"(WEIGHT_IMAGE, FLAG_IMAGE, PSF_FILE, DETECTION_IMAGE, DETECTION_WEIGHT) describe "
            f"{len(roles)}: {', '.join(roles)}"
        )
    paths = {role: Path(path) for role, path in zip(roles, job.inputs)}
    from astropy.io import fits

    from shapepipe_modules.io.images import image_hdu

    try:
        with fits.open(paths["image"]) as hdus:  # a tile-compressed image: its header, not decompressed
            header = image_hdu(hdus, 0).header.copy()
    except OSError as error:
        raise JobError(f"{paths['image']}: cannot read as FITS ({error})") from error
    if header.get("NAXIS", 0) < 2:
        _, header = _read_image(paths["image"])
    zero_point = background_value = None
    if options.get("ZP_FROM_HEADER"):
        zero_point = _header_float(header, options["ZP_KEY"], paths["image"], "ZP_KEY")
    if options.get("BKG_FROM_HEADER"):
        background_value = _header_float(header, options["BKG_KEY"], paths["image"], "BKG_KEY")
    check_images = [c.strip().upper() for c in options.get("CHECKIMAGE", []) or [] if c.strip()]
    settings_files = (options["DOT_SEX_FILE"], options["DOT_PARAM_FILE"], options["DOT_CONV_FILE"])
    run = _run_binary if options.get("ENGINE", "sep") == "sextractor" else _run_sep
    if options.get("PASSES"):
        written = _run_passes(job, run, paths, settings_files, zero_point, background_value, check_images, report)
    else:
        written = run(job, paths, settings_files, zero_point, background_value, check_images, report=report)
    if options.get("BACKGROUND_MODEL_MAG") is not None:
        clock = time.perf_counter()
        n_models = _add_bright_models(job, paths, written[0], float(options["BACKGROUND_MODEL_MAG"]))
        written[3]["background_models"] = time.perf_counter() - clock
        if report is not None:
            report["n_background_models"] = n_models
    return written


#: The catalogue columns the models of BACKGROUND_MODEL_MAG are made from (KRON_RADIUS: 3.5 when absent).
BACKGROUND_MODEL_COLUMNS = ("MAG_AUTO", "FLUX_AUTO", "FLUX_RADIUS", "X_IMAGE", "Y_IMAGE", "A_IMAGE", "B_IMAGE",
                            "THETA_IMAGE")


def _add_bright_models(job, paths, catalogue, magnitude):
    """Add ring-median models of the catalogue's objects brighter than ``magnitude`` to the BACKGROUND check image.

    The models are measured on the image minus that background (pixels of
    positive weight only) and the file is rewritten in place, atomically,
    as it was written (compressed or not). Returns the number of models.
    """
    import numpy as np
    from astropy.io import fits

    from shapepipe_modules.io.ldac import read_ldac

    from .subtract import ring_median_models

    path = job.output_path(_check_name(job_names(job)["prefix"], "BACKGROUND", job.number))
    table = read_ldac(catalogue)[0]
    missing = [name for name in BACKGROUND_MODEL_COLUMNS if name not in table.colnames]
    if missing:
        raise JobError(f"{catalogue}: [{job.module_run.upper()}] BACKGROUND_MODEL_MAG needs "
                       f"{', '.join(missing)} in the catalogue (add them to DOT_PARAM_FILE)")
    magnitudes = np.asarray(table["MAG_AUTO"], float)
    rows = np.flatnonzero(np.isfinite(magnitudes) & (magnitudes < magnitude))
    if not rows.size:
        return 0
    background, header = _read_image(path, np.float32)
    image, _ = _read_image(paths["image"], np.float32)
    valid = (_read_image(paths["weight"])[0] > 0) if "weight" in paths else None
    models = ring_median_models(image - background, table, rows, valid)
    del image
    with fits.open(path) as hdus:
        compressed = any(isinstance(hdu, fits.CompImageHDU) for hdu in hdus)
    _write_image(path, background + models, header, compress=compressed,
                 quantize=job.options.get("CHECKIMAGE_QUANTIZE", 0.0) if compressed else 0.0)
    return int(rows.size)


PRODUCTS = (
    Product("sexcat", "*sexcat{number}.fits", "ldac", ids=("tile", "exposure_ccd"),
            description="SExtractor catalogue (FITS-LDAC)"),
    Product("bkg_resid", "*bkg_resid{number}.txt", "text", ids=("tile", "exposure_ccd"),
            description="background residual statistics"),
    Product("bkg_resid_plot", "*bkg_resid{number}.png", "png", ids=("tile", "exposure_ccd"),
            description="background residual plot"),
    Product("check_image", "*{check}{number}.fits", "fits_image", ids=("tile", "exposure_ccd"),
            description="SExtractor check image (key: its kind, e.g. background)"),
)


@module(
    name="sextractor",
    products=PRODUCTS,
    version="2.0",
    description="Source extraction on a CCD or tile (sep engine or the SExtractor binary), FITS-LDAC output.",
    aliases=("sextractor_runner",),
    input_module="mask",
    file_pattern=("image", "weight", "flag"),
    file_ext=(".fits", ".fits", ".fits"),
    numbering_scheme="_0",
    depends=("numpy", "astropy"),
    preload=(
             "astropy.io.fits",
             "shapepipe_modules.io.images:fast_inflate",
             "astropy.wcs",
             "astropy.table",
             "sep",
             "shapepipe_modules.sextractor.sep_engine:warm_up",  # the kernels' ahead-of-time build: no numba
             "shapepipe_modules.sextractor.background_residual",
             "shapepipe_modules.sextractor.multi_epoch",
             "shapepipe_modules.io.ldac",
    ),
    options=OPTIONS,
    requirements=_requirements,
    validate=validate,
)
def sextractor(job):
    """Extract sources of one image and write the diagnostics."""
    from . import background_residual

    report: dict = {}
    catalogue, residual, n_objects, timings = write_catalogue(job, report)
    if any(job.options.get(key) for key in ("OBJECT_MASK", "SATURATION_REGIONS", "LOCAL_SKY", "REGIONS")):
        report.update(_crowded_products(job, catalogue, timings))
    epochs = None
    if job.options.get("MAKE_POST_PROCESS", False):
        epochs = _post_process(job, catalogue)
    if job.options.get("VIGNET_ROWS") and "n_vignets_stored" not in report:
        report.update(_store_selected_vignets(job, catalogue))
    job.logger.info("%s: %d objects; seconds per step: %s", catalogue.name, n_objects,
                    ", ".join(f"{step} {seconds:.2f}" for step, seconds in timings.items()))
    # From the input files to the catalogue file, for both engines.
    steps = ("read", "background", "detection", "measurement", "table", "write", "extraction", "subtract", "join",
             "saturation", "object_mask", "local_sky", "regions")
    summary = {"n_objects": int(n_objects),
               "extraction_seconds": round(sum(timings.get(step, 0.0) for step in steps), 4),
               "extraction_cpu_seconds": round(timings.get("extraction_cpu", 0.0), 4)}
    if job.options.get("BKG_RESIDUAL", True) and residual is not None:
        names = job_names(job)
        try:
            result = background_residual.fit_residuals(residual)
        except (ValueError, RuntimeError) as error:
            raise JobError(f"{job.inputs[0]}: background-residual fit failed: {error}") from error
        background_residual.write_stats(job.output_path(names["residual_stats"]), result)
        if job.options.get("BKG_RESIDUAL_PLOT", False):
            background_residual.plot(job.output_path(names["residual_plot"]), result,
                                     title=f"background residuals {job.number}")
        summary["bkg_resid_mean"] = result["mean"]
        summary["bkg_resid_sigma"] = result["sigma"]
    summary.update(report)  # non-finite pixels masked (sep engine)
    for step, seconds in timings.items():  # passes and crowded-field products (docs/crowded.md)
        if step.startswith("pass_") or step in ("subtract", "split_merge", "join", "saturation", "object_mask",
                                                 "local_sky", "regions"):
            summary[f"seconds_{step}"] = round(seconds, 4)
    if epochs is not None:
        summary["n_epochs"] = len(epochs.exposures)
        summary["n_exposures_unavailable"] = len(epochs.unavailable)
    return summary


def _crowded_products(job, catalogue, timings) -> dict:
    """Saturated regions, object mask, local sky and ds9 regions of one catalogue (docs/crowded.md)."""
    import time

    import numpy as np

    from shapepipe_modules.crowded import localsky, masks, regions
    from shapepipe_modules.io.ldac import read_ldac, update_ldac

    from .config_files import ExtractionSettings, read_dot_sex

    options = job.options
    paths = {role: Path(path) for role, path in zip(_input_layout(options), job.inputs)}
    names = job_names(job)
    table, _ = read_ldac(catalogue)
    image, header = _read_image(paths["image"], np.float32)
    shape = image.shape
    summary = {}
    scale, offset = float(options.get("MASK_SCALE", 1.0)), float(options.get("MASK_OFFSET", 2.0))
    clock = time.perf_counter()
    saturated = None
    if options.get("SATURATION_REGIONS"):
        settings = ExtractionSettings.from_dot_sex(read_dot_sex(options["DOT_SEX_FILE"]), options["DOT_SEX_FILE"])
        level = float(header.get(settings.satur_key, settings.satur_level)) if settings.satur_key else settings.satur_level
        flag = _read_native(paths["flag"]) if "flag" in paths else None
        found = masks.saturated_regions(image, level, flag, int(options.get("SATURATION_FLAG_BITS", 0)), table,
                                        float(options.get("SATURATION_RADIUS_SCALE", 1.5)),
                                        float(options.get("SATURATION_PAD", 3.0)))
        saturated = masks.regions_plane(shape, found)
        _write_image(job.output_path(f"{names['prefix']}satmask{job.number}.fits"), saturated.astype(np.uint8),
                     header, compress=options.get("CHECKIMAGE_COMPRESS", True))
        regions.write_regions(job.output_path(f"{names['prefix']}satstars{job.number}.reg"),
                              regions.saturated_star_regions(found))
        summary.update(n_saturated_regions=len(found), saturated_fraction=round(float(saturated.mean()), 6))
        timings["saturation"] = time.perf_counter() - clock
    mask = None
    if options.get("OBJECT_MASK") or options.get("LOCAL_SKY"):
        clock = time.perf_counter()
        mask = masks.object_mask(shape, table, scale, offset, saturated)
        summary["masked_fraction"] = round(float(np.mean(mask != 0)), 6)
        if options.get("OBJECT_MASK"):
            _write_image(job.output_path(f"{names['prefix']}objmask{job.number}.fits"), mask, header,
                         compress=options.get("CHECKIMAGE_COMPRESS", True))
        timings["object_mask"] = time.perf_counter() - clock
    if options.get("LOCAL_SKY"):
        clock = time.perf_counter()
        weight = _read_image(paths["weight"], np.float32)[0] if "weight" in paths else None
        methods = [m.strip().upper() for m in options.get("LOCAL_SKY_METHODS") or []]
        columns = localsky.local_sky(image, mask, table, methods, weight=weight, scale=scale, offset=offset,
                                     ring_width=float(options.get("LOCAL_SKY_RING_WIDTH", 3.0)),
                                     max_radius=float(options.get("LOCAL_SKY_RADIUS", 150.0)),
                                     box_size=int(options.get("LOCAL_SKY_BOX_SIZE", 9)),
                                     seed=_number_seed(job.number))
        update_ldac(catalogue, columns=columns)
        table = read_ldac(catalogue)[0]
        summary["local_sky_not_converged"] = int(np.sum(columns["BKG_METHOD"] == localsky.NOT_CONVERGED))
        timings["local_sky"] = time.perf_counter() - clock
    if options.get("REGIONS"):
        clock = time.perf_counter()
        from shapepipe_modules.setools.language import SetoolsError

        try:
            text = regions.catalogue_regions(table, options.get("REGIONS_SELECTION") or [],
                                             str(options.get("REGIONS_COLOR_BY") or "").strip() or None,
                                             options.get("REGIONS_COLOR_MODE", "class"), scale, offset)
        except (SetoolsError, KeyError) as error:
            raise JobError(f"{catalogue}: [SEXTRACTOR] REGIONS_SELECTION or REGIONS_COLOR_BY: {error}") from error
        regions.write_regions(catalogue.with_suffix(".reg"), text)
        timings["regions"] = time.perf_counter() - clock
    return summary


def _number_seed(number: str) -> int:
    """A stable seed from a file number (the random boxes of the local sky)."""
    import zlib

    return zlib.crc32(str(number).encode())


def _post_process(job, catalogue):
    """Multi-epoch bookkeeping of a tile catalogue (MAKE_POST_PROCESS)."""
    from .multi_epoch import MultiEpochError, add_epochs

    options = job.options
    try:
        epochs = add_epochs(catalogue, options["LOG_WCS"], [w.upper() for w in options["WORLD_POSITION"]],
                            options["CCD_SIZE"], logger=job.logger)
    except MultiEpochError as error:
        raise JobError(f"{job.inputs[0]}: multi-epoch bookkeeping failed: {error}") from error
    job.logger.info("%s: %d epochs (%s); %d HISTORY exposures not in the header store%s", catalogue.name,
                    len(epochs.exposures), ", ".join(epochs.exposures), len(epochs.unavailable),
                    f" ({', '.join(epochs.unavailable)})" if epochs.unavailable else "")
    return epochs
