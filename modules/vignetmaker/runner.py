"""Declaration of the ``vignetmaker`` module (ShapePipe's ``vignetmaker_runner``).

Modes
-----
CLASSIC
    Inputs: the catalogue, then one or more images (e.g. the tile weight).
    Writes ``<PREFIX>_vignet<number>.fits`` per image (FITS-LDAC, column
    ``VIGNET``), see :mod:`.classic`.
CLASSIC with ``MASKING = True``
    Input: a SExtractor catalogue with ``VIGNET``; writes
    ``<PREFIX or cat>_vignet<number>.fits`` with masked pixels set to
    ``MASK_VALUE``.
MULTI-EPOCH
    Input: the multi-epoch tile catalogue (``EPOCH_i`` HDUs), then, with
    ``NEIGHBOUR_MASK = True``, the tile's object mask. Writes one
    stamp store per ``ME_IMAGE_PATTERN``, ``<pattern>_vignet<number>.sqlite``
    (e.g. ``image_vignet-244-252.sqlite``), see :mod:`.multi_epoch` for the
    record layout and :class:`shapepipe_modules.io.stamp_store.StampStore`
    to read them.

Stamp centre: the central pixel of every stamp contains the object's
position; the sub-pixel offset is stored (see :mod:`.stamps`).

Differences from ShapePipe: ``COORD = SPHE`` works in CLASSIC mode;
``ME_IMAGE_DIR`` entries are folders or run references and need the
``last:`` prefix (ShapePipe also took bare module names); stores hold
``.npy``-encoded arrays, not pickles; an object seen by no usable epoch is
recorded with the reason instead of the string ``'empty'``.
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("MODE", "choice", "CLASSIC", "CLASSIC: stamps of the input images; MULTI-EPOCH: single-exposure "
           "stamps of every object in every epoch.", choices=("CLASSIC", "MULTI-EPOCH")),
    Option("MASKING", "bool", False, "CLASSIC only: rewrite the catalogue's own VIGNET with SExtractor's masked "
           "pixels (< -1e29) set to MASK_VALUE, instead of cutting images."),
    Option("MASK_VALUE", "float", 0.0, "Value given to masked VIGNET pixels when MASKING = True."),
    Option("STAMP_SIZE", "int", 51, "Stamp side in pixels (odd)."),
    Option("COORD", "choice", "PIX", "Position columns are pixels (PIX, FITS 1-based) or RA/Dec in degrees (SPHE). "
           "MULTI-EPOCH needs SPHE.", choices=("PIX", "SPHE")),
    Option("POSITION_PARAMS", "list", ["XWIN_IMAGE", "YWIN_IMAGE"], "The two catalogue columns of the positions "
           "(x, y or RA, Dec)."),
    Option("PREFIX", "name_list", [], "CLASSIC: output prefix per input image (<PREFIX>_vignet<number>.fits); "
           "MASKING: one prefix (default cat). Ignored in MULTI-EPOCH mode (the stores are named after "
           "ME_IMAGE_PATTERN)."),
    Option("NEIGHBOUR_MASK", "bool", False, "The last file of FILE_PATTERN is the tile's object mask "
           "(sextractor OBJECT_MASK: each object's ellipse holds its NUMBER, saturated regions -1). CLASSIC: in "
           "the stamps of the images whose PREFIX is in NEIGHBOUR_MASK_PREFIXES, pixels of other objects and "
           "saturated regions are set to 0 (zero weight), and a MASKED_FRACTION column gives the fraction of "
           "each stamp so set. MULTI-EPOCH: each exposure stamp pixel is looked up in the mask at its sky "
           "position (nearest tile pixel, through the exposure's and the mask's WCS); the weight stamp is 0 "
           "where it holds another object or -1, and each epoch record gets NEIGHBOUR_FRACTION. Needs NUMBER "
           "in the catalogue. Measured effects: docs/crowded.md."),
    Option("NEIGHBOUR_MASK_PREFIXES", "name_list", ["weight"], "NEIGHBOUR_MASK in CLASSIC mode: PREFIX entries "
           "of the images whose stamps get the neighbours zeroed (MULTI-EPOCH: the weight stamps)."),
    Option("ME_IMAGE_DIR", "dir_list", [], "MULTI-EPOCH: folders (or last:MODULE references) of the "
           "single-exposure files, one for all patterns or one per pattern."),
    Option("ME_IMAGE_PATTERN", "name_list", [], "MULTI-EPOCH: single-exposure file patterns "
           "(<pattern>-<exposure>-<ccd><ext>), e.g. flag, image, weight, background."),
    Option("ME_IMAGE_KIND", "list", [], "MULTI-EPOCH: kind of each pattern (image, weight, flag, background); "
           "empty: guessed from the pattern names (weight*, *flag*, background/bkg, else image)."),
    Option("ME_IMAGE_EXT", "name", ".fits", "MULTI-EPOCH: extension of the single-exposure files."),
    Option("ME_LOG_WCS", "store", "", "MULTI-EPOCH: header store of the exposures: the file, or a folder "
           "or reference holding log_exp_headers.sqlite (e.g. last:merge_headers).",
           file_name="log_exp_headers.sqlite"),
    Option("ME_COMPRESS", "bool", True, "MULTI-EPOCH: zlib-compress the stamp-store records without loss "
           "(flag stamps 35x, weight and background 2x, image 1.3x smaller; readers detect it)."),
    Option("ME_OFF_CCD_FLAG", "int", 512, "MULTI-EPOCH: flag value set on stamp pixels outside the CCD "
           "(their weight is 0)."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    size = options.get("STAMP_SIZE")
    if size is not None and (size < 1 or size % 2 == 0):
        problems.append(f"STAMP_SIZE must be a positive odd integer, got {size}")
    positions = options.get("POSITION_PARAMS") or []
    if len(positions) != 2 and not options.get("MASKING"):
        problems.append(f"POSITION_PARAMS needs two column names, got {positions}")
    if options.get("NEIGHBOUR_MASK") and options.get("MASKING"):
        problems.append("NEIGHBOUR_MASK = True does not work with MASKING = True")
    if options.get("MODE") == "MULTI-EPOCH":
        if options.get("MASKING"):
            problems.append("MASKING = True works in CLASSIC mode only")
        if options.get("COORD") != "SPHE":
            problems.append("MODE = MULTI-EPOCH needs COORD = SPHE (RA/Dec positions)")
        patterns = options.get("ME_IMAGE_PATTERN") or []
        dirs = options.get("ME_IMAGE_DIR") or []
        if not patterns:
            problems.append("MODE = MULTI-EPOCH needs ME_IMAGE_PATTERN")
        if not dirs:
            problems.append("MODE = MULTI-EPOCH needs ME_IMAGE_DIR")
        elif len(dirs) not in (1, len(patterns)):
            problems.append(f"ME_IMAGE_DIR has {len(dirs)} entries for {len(patterns)} ME_IMAGE_PATTERN "
                            "entries (give one, or one per pattern)")
        kinds = options.get("ME_IMAGE_KIND") or []
        if kinds and len(kinds) != len(patterns):
            problems.append(f"ME_IMAGE_KIND has {len(kinds)} entries for {len(patterns)} patterns")
        elif options.get("NEIGHBOUR_MASK") and patterns:
            from .multi_epoch import infer_kind

            if "weight" not in (kinds or [infer_kind(p) for p in patterns]):
                problems.append("NEIGHBOUR_MASK = True in MULTI-EPOCH mode needs a weight pattern in "
                                "ME_IMAGE_PATTERN (its stamps get zero weight on the neighbours)")
        if not options.get("ME_LOG_WCS"):
            problems.append("MODE = MULTI-EPOCH needs ME_LOG_WCS (the header store)")
        flag = options.get("ME_OFF_CCD_FLAG")
        if flag is not None and (flag <= 0 or flag >= 2**31):
            problems.append(f"ME_OFF_CCD_FLAG must be a positive int32 bit value, got {flag}")
    return problems


PRODUCTS = (
    Product("image_vignet", "image_vignet{number}.sqlite", "stamp_store", ids=("tile",),
            description="image stamps of every object and epoch (MULTI-EPOCH)"),
    Product("weight_vignet", "weight_vignet{number}.sqlite", "stamp_store", ids=("tile",),
            description="weight stamps (MULTI-EPOCH)"),
    Product("flag_vignet", "flag_vignet{number}.sqlite", "stamp_store", ids=("tile",),
            description="flag stamps (MULTI-EPOCH)"),
    Product("background_vignet", "background_vignet{number}.sqlite", "stamp_store", ids=("tile",),
            description="background stamps (MULTI-EPOCH)"),
    Product("vignet_store", "{pattern}_vignet{number}.sqlite", "stamp_store", ids=("tile",),
            description="stamps of another ME_IMAGE_PATTERN (key: the pattern)"),
    Product("vignet", "{prefix}_vignet{number}.fits", "ldac", ids=("tile", "exposure_ccd"),
            description="stamps of one image in a VIGNET column (CLASSIC; key: the PREFIX)"),
)


@module(
    name="vignetmaker",
    products=PRODUCTS,
    version="2.0",
    description="Postage stamps around catalogue positions (CLASSIC) or in every epoch of every tile object "
                "(MULTI-EPOCH).",
    aliases=("vignetmaker_runner",),
    input_module="sextractor",
    file_pattern=("galaxy_selection", "image"),
    file_ext=(".fits", ".fits"),
    depends=("numpy", "astropy", "sqlitedict"),
    preload=(
             "astropy.io.fits",
             "shapepipe_modules.io.images:fast_inflate",
             "astropy.wcs",
             "shapepipe_modules.vignetmaker.classic",
             "shapepipe_modules.vignetmaker.multi_epoch",
             "shapepipe_modules.io.stamp_store",
    ),
    options=OPTIONS,
    validate=validate,
)
def vignetmaker(job):
    """Cut the stamps of one catalogue."""
    options = job.options
    inputs = [Path(p) for p in job.inputs]
    if not inputs:
        raise JobError("vignetmaker: no input catalogue")
    catalogue = inputs[0]
    size = int(options["STAMP_SIZE"])
    positions = tuple(options["POSITION_PARAMS"] or ())

    if options["MODE"] == "MULTI-EPOCH":
        from .multi_epoch import make_multi_epoch_stamps, make_sources

        try:
            sources = make_sources(options["ME_IMAGE_DIR"], options["ME_IMAGE_PATTERN"],
                                   options.get("ME_IMAGE_KIND") or None, options["ME_IMAGE_EXT"])
        except ValueError as error:
            raise JobError(f"{catalogue}: {error}") from None
        object_mask = None
        if options.get("NEIGHBOUR_MASK"):
            if len(inputs) != 2:
                raise JobError(f"{catalogue}: [VIGNETMAKER] NEIGHBOUR_MASK in MULTI-EPOCH mode needs FILE_PATTERN "
                               f"= the catalogue, then the tile's object mask; got {len(inputs)} files")
            object_mask = inputs[1]
        try:
            summary = make_multi_epoch_stamps(
                catalogue, options["ME_LOG_WCS"], sources, job.output_dir, job.number, size,
                position_params=positions, logger=job.logger, off_ccd_flag=int(options["ME_OFF_CCD_FLAG"]),
                compress=bool(options["ME_COMPRESS"]), object_mask=object_mask,
            )
        except ValueError as error:
            raise JobError(f"{catalogue}: [VIGNETMAKER] {error}") from None
        missing = summary.pop("missing_files")
        summary["n_missing_files"] = len(missing)
        job.logger.info("multi-epoch stamps of %s: %s", catalogue.name, summary)
        if summary["n_objects"]:
            summary["bytes_per_object"] = summary["bytes_written"] / summary["n_objects"]
        return summary

    from .classic import make_classic_stamps, mask_catalogue_vignets

    prefixes = list(options["PREFIX"] or [])
    if options["MASKING"]:
        prefix = prefixes[0] if prefixes else "cat"
        path = mask_catalogue_vignets(catalogue, float(options["MASK_VALUE"]), job.output_dir, job.number, prefix)
        job.logger.info("wrote %s", path.name)
        return {"n_files": 1}
    images = inputs[1:]
    neighbour_mask = None
    if options.get("NEIGHBOUR_MASK"):
        if len(images) < 2:
            raise JobError(f"{catalogue}: [VIGNETMAKER] NEIGHBOUR_MASK needs an image and the object mask "
                           "after the catalogue in FILE_PATTERN")
        images, neighbour_mask = images[:-1], images[-1]
    if not images:
        raise JobError(f"{catalogue}: CLASSIC mode needs at least one image after the catalogue in FILE_PATTERN")
    if len(prefixes) != len(images):
        raise JobError(f"{catalogue}: PREFIX has {len(prefixes)} entries for {len(images)} images "
                       f"({', '.join(p.name for p in images)})")
    try:
        written = make_classic_stamps(catalogue, images, prefixes, job.output_dir, job.number, size,
                                      coord=options["COORD"], position_params=positions,
                                      neighbour_mask=neighbour_mask,
                                      masked_prefixes=options.get("NEIGHBOUR_MASK_PREFIXES") or ())
    except ValueError as error:
        raise JobError(f"{catalogue}: {error}") from None
    for path in written:
        job.logger.info("wrote %s", path.name)
    return {"n_files": len(written)}
