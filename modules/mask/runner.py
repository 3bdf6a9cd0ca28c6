"""Declaration of the ``mask`` module (ShapePipe's ``mask_runner``).

Inputs, in ``FILE_PATTERN`` order: image, weight, then the input flag image
when ``USE_EXT_FLAG``, then a per-image star catalogue when
``USE_EXT_STAR``. Output: ``<PREFIX>_flag<number>.fits`` (``flag<number>.fits``
with ``PREFIX = none``), an int16 flag image (int32 if a bit >= 2**15 is in
use) whose header records the mask planes (``MP_*`` cards, read them with
:func:`shapepipe_modules.mask.mask_bits`) and the image WCS; optionally a
ds9 region file of the applied masks (``REG_FILE = True`` here or
``KEEP_REG_FILE = True`` in the ``.mask`` file: one file for every plane,
``<PREFIX>_flag<number>.reg``; ShapePipe's HALO_REG_FILE and SPIKE_REG_FILE
names are accepted and not used).

Bit overlaps: every mask is OR-ed into its own bit and the input flag is
OR-ed in last, so every input bit survives. When the input flag uses a bit
that an internal plane also uses, that bit means "either" (both ``MP_*``
cards list it, and a warning is logged).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from shapepipe.datasets import Product
from shapepipe.errors import ConfigError, JobError
from shapepipe.module import module
from shapepipe.options import Option

from .config import default_config_path, read_mask_config
from .planes import planes_to_cards

_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRPIX\d|CRVAL\d|CDELT\d|CUNIT\d|CD\d_\d|PC\d_\d|PV\d_\d+|CROTA\d|LONPOLE|LATPOLE"
    r"|RADESYS|RADECSYS|EQUINOX|(A|B|AP|BP)_(ORDER|\d+_\d+|DMAX))$"
)

OPTIONS = (
    Option(
        "MASK_CONFIG_PATH",
        "file",
        "",
        "The .mask file (ShapePipe's form); empty: the module's own file chosen by MASK_DEFAULTS.",
        aliases=("CONFIG_PATH",),
    ),
    Option(
        "MASK_DEFAULTS",
        "choice",
        "exposure",
        "Shipped .mask file used when MASK_CONFIG_PATH is empty: config.mask for CCDs (exposure) "
        "or config_tile.mask for tiles (tile).",
        choices=("exposure", "tile"),
    ),
    Option("USE_EXT_FLAG", "bool", True, "The third input is a flag image OR-ed into the output (MP_EXTERNAL)."),
    Option("USE_EXT_STAR", "bool", False, "The last input is a per-image bright-star catalogue (FITS: ra, dec, mag)."),
    Option(
        "STAR_CAT_PATH",
        "file",
        "",
        "One bright-star catalogue (FITS: ra, dec, mag) for every image; needed for halos and spikes "
        "unless USE_EXT_STAR. A .mask file naming ShapePipe's network query (CDSCLIENT_PATH) without either "
        "validates, and its jobs fail with a message saying so (no network here).",
    ),
    Option(
        "LOCAL_STAR_CAT",
        "path",
        "",
        "Offline form of ShapePipe's on-the-fly star query, used when STAR_CAT_PATH is empty and USE_EXT_STAR is "
        "False: a folder of create_star_cat's per-image catalogues (star_cat<number>.fits or .csv, picked by "
        "the job's number), or one FITS or CSV reference catalogue (ra, dec in deg, mag) from which the stars "
        "on the image and within LOCAL_STAR_MARGIN of it are taken at run time.",
    ),
    Option("LOCAL_STAR_MARGIN", "float", 600.0, "Margin (arcsec) around the image within which the stars of a "
           "LOCAL_STAR_CAT reference catalogue are kept (halos and spikes of stars off the image reach in)."),
    Option(
        "DEEP_SKY_CAT_PATH",
        "file",
        "",
        "Deep-sky catalogue (FITS: ra, dec, radius in deg) for MP_MESSIER; "
        "overrides MESSIER_CAT_PATH of the .mask file.",
    ),
    Option("PREFIX", "name", "pipeline", "Output name prefix: <PREFIX>_flag<number>.fits ('none' for no prefix).",
           aliases=("SUFFIX",)),
    Option("HDU", "int", 0, "HDU of the image, weight and flag files (0 also finds the image of a "
           "tile-compressed file, after its empty primary HDU)."),
    Option("COMPRESS", "bool", True, "Write the flag image tile-compressed without loss (RICE_1, fpack layout: "
           "50-80x smaller; sextractor, vignetmaker and astropy read it)."),
    Option("REG_FILE", "bool", False, "Also write <PREFIX>_flag<number>.reg, a ds9 region file of the masks."),
    Option("STAR_MASK_SIZING", "choice", "template", "How halo and spike masks are sized: 'template' scales the "
           ".mask file's templates linearly in magnitude (ShapePipe); 'profile' masks each star brighter than the "
           "HALO_/SPIKE_MAG_LIM of the .mask file out to where its light, its flux (catalogue magnitude and the "
           "image zero point) times the STAR_PROFILE_* profile (or STAR_PROFILE_FILE), falls to "
           "STAR_MASK_NOISE_FRACTION of the pixel noise (from the weight): a disc for the halo, two bars along the "
           "pixel axes for the spikes.",
           choices=("template", "profile")),
    Option("STAR_MASK_NOISE_FRACTION", "float", 0.1, "With STAR_MASK_SIZING = profile: masks end where the "
           "star's modelled light falls to this fraction of the pixel noise."),
    Option("STAR_PROFILE_PSF_FWHM", "float", 0.725, "Star profile (STAR_MASK_SIZING = profile; defaults: the "
           "simulator's, docs/simulation.md): FWHM (arcsec) of the PSF core, a Moffat."),
    Option("STAR_PROFILE_PSF_BETA", "float", 3.5, "Star profile: Moffat index of the PSF core."),
    Option("STAR_PROFILE_HALO_FRACTION", "float", 0.03, "Star profile: fraction of the flux in the halo."),
    Option("STAR_PROFILE_HALO_FWHM", "float", 5.8, "Star profile: FWHM (arcsec) of the halo, a Moffat."),
    Option("STAR_PROFILE_HALO_BETA", "float", 2.0, "Star profile: Moffat index of the halo (surface brightness "
           "~ r^(-2 beta) far out)."),
    Option("STAR_PROFILE_SPIKE_FRACTION", "float", 0.005, "Star profile: fraction of the flux in each of the two "
           "diffraction spikes (horizontal, vertical)."),
    Option("STAR_PROFILE_SPIKE_LENGTH", "float", 10.0, "Star profile: Gaussian sigma (arcsec) of a spike along "
           "its arm."),
    Option("STAR_PROFILE_SPIKE_WIDTH", "float", 0.18, "Star profile: Gaussian sigma (arcsec) of a spike across "
           "its arm."),
    Option("STAR_PROFILE_FILE", "file", "", "With STAR_MASK_SIZING = profile: a star profile measured from the "
           "data by shapepipe_star_profile (JSON; the stacked bright stars of the exposures, docs/crowded.md); its "
           "values replace every STAR_PROFILE_* option. Empty: the STAR_PROFILE_* options."),
    Option("ZERO_POINT_KEY", "str", "PHOTZP", "With STAR_MASK_SIZING = profile: image header keyword of the "
           "magnitude zero point (mag = ZP - 2.5 log10 ADU) that turns catalogue magnitudes into fluxes."),
    Option("BORDER_WIDTH", "int", -1, "Width (pixels) of the border mask, replacing the .mask file's "
           "[BORDER_PARAMETERS] BORDER_WIDTH when >= 0 (the border is made only if the .mask file makes it)."),
    Option("CHECK_EXISTING_DIR", "path", None, "Folder (need not exist) of an earlier run's flag images (ShapePipe's key): a "
           "job whose output name exists there links that file instead of remaking it."),
)


def _config_path(options) -> Path:
    return Path(options.get("MASK_CONFIG_PATH") or default_config_path(options.get("MASK_DEFAULTS") or "exposure"))


def validate(options) -> list[str]:
    """Read the ``.mask`` file and check that every catalogue it needs is given."""
    try:
        params = read_mask_config(_config_path(options))
    except ConfigError as error:
        return list(error.problems)
    problems = []
    if params.halo is not None or params.spike is not None:
        if options.get("USE_EXT_STAR") and options.get("STAR_CAT_PATH"):
            problems.append("USE_EXT_STAR and STAR_CAT_PATH both set: give the star catalogue one way")
        elif (not options.get("USE_EXT_STAR") and not options.get("STAR_CAT_PATH")
              and not options.get("LOCAL_STAR_CAT") and not params.network_stars):
            problems.append(
                f"{_config_path(options)} makes halo/spike masks: set STAR_CAT_PATH, LOCAL_STAR_CAT or USE_EXT_STAR "
                "(stars are never queried over the network)"
            )
    if params.messier is not None and params.messier.cat_path is None and not options.get("DEEP_SKY_CAT_PATH"):
        problems.append(
            f"{_config_path(options)} [MESSIER_PARAMETERS] MESSIER_MAKE = True: set MESSIER_CAT_PATH there "
            "or DEEP_SKY_CAT_PATH in the module section"
        )
    for name in ("STAR_MASK_NOISE_FRACTION", "STAR_PROFILE_PSF_FWHM", "STAR_PROFILE_PSF_BETA",
                 "STAR_PROFILE_HALO_FWHM", "STAR_PROFILE_HALO_BETA", "STAR_PROFILE_SPIKE_LENGTH",
                 "STAR_PROFILE_SPIKE_WIDTH"):
        if options.get(name) is not None and not options.get(name) > 0:
            problems.append(f"{name} must be positive, got {options.get(name)}")
    for name in ("STAR_PROFILE_PSF_BETA", "STAR_PROFILE_HALO_BETA"):
        if options.get(name) is not None and options.get(name) <= 1:
            problems.append(f"{name} must exceed 1 (a Moffat of finite flux), got {options.get(name)}")
    fractions = [options.get(name) for name in ("STAR_PROFILE_HALO_FRACTION", "STAR_PROFILE_SPIKE_FRACTION")]
    if None not in fractions and (min(fractions) < 0 or fractions[0] + 2 * fractions[1] >= 1):
        problems.append("STAR_PROFILE_HALO_FRACTION + 2 STAR_PROFILE_SPIKE_FRACTION must lie in [0, 1)")
    if options.get("STAR_PROFILE_FILE"):
        from .measure_profile import read_profile_file

        if options.get("STAR_MASK_SIZING") != "profile":
            problems.append("STAR_PROFILE_FILE is used only with STAR_MASK_SIZING = profile")
        try:
            read_profile_file(options["STAR_PROFILE_FILE"])
        except ValueError as error:
            problems.append(f"STAR_PROFILE_FILE: {error}")
    if params.ngc is not None and params.ngc.cat_path is None:
        problems.append(f"{_config_path(options)} [NGC_PARAMETERS] NGC_MAKE = True: NGC_CAT_PATH is missing")
    return problems


def _read_image(path, hdu, what, integer=False):
    """Data and header of one image HDU; JobError naming the file if unusable."""
    import numpy as np
    from astropy.io import fits

    from shapepipe_modules.io.images import image_data, image_hdu

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # memmap: a full tile is 400 MB per image; its pages are read as the mask needs them and
            # are not the job's own memory.
            with fits.open(path, memmap=True) as hdus:
                chosen = image_hdu(hdus, hdu)  # HDU 0 of a tile-compressed (fpack) file: its image
                header = chosen.header.copy()
                data = image_data(chosen)
                data = None if data is None else np.asarray(data)
        except Exception as error:  # astropy raises many types on corrupt files
            raise JobError(
                f"cannot read {what} {path} (corrupt or truncated FITS?): {type(error).__name__}: {error}"
            ) from None
    for warning in caught:
        if "truncated" in str(warning.message).lower():
            raise JobError(f"{what} {path} is truncated: {warning.message}")
    if data is None or data.ndim != 2:
        shape = None if data is None else data.shape
        raise JobError(f"{what} {path} HDU {hdu} holds no 2-d image (data shape {shape})")
    if integer and not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(np.mod(data, 1) != 0):
            raise JobError(f"{what} {path} holds non-integer values")
        data = data.astype(np.int64)
    return data, header


def _output_header(image_header, result, params, input_paths):
    from astropy.io import fits

    header = fits.Header()
    for card in image_header.cards:
        if _WCS_KEY.match(card.keyword):
            header.append((card.keyword, card.value, card.comment))
    for key, bits, comment in planes_to_cards(result.planes):
        header[key] = (bits, comment)
    for key, value, comment in result.header_cards:
        header[key] = (value, comment)
    header["MASKCONF"] = (str(params.source.name) if params.source else "", ".mask file")
    header.add_history(f"flags OR-ed from the masks of {Path(input_paths[0]).name}")
    return header


PRODUCTS = (
    Product("pipeline_flag", "*flag{number}.fits", "fits_image", ids=("tile", "exposure_ccd"),
            description="flag image of the masks (halos, spikes, borders, ...)"),
    Product("mask_region", "*flag{number}.reg", "text", ids=("tile", "exposure_ccd"),
            description="ds9 regions of the masks"),
)


@module(
    name="mask",
    products=PRODUCTS,
    version="1.0",
    description="Pipeline flag image: border, star halos and spikes, deep-sky objects, saturation, input flag.",
    aliases=("mask_runner",),
    input_module="split_exp",
    file_pattern=("image", "weight", "flag"),
    file_ext=(".fits", ".fits", ".fits"),
    numbering_scheme="-0000000-0",
    depends=("numpy", "scipy", "astropy"),
    preload=(
             "astropy.io.fits",
             "shapepipe_modules.io.images:fast_inflate",
             "astropy.wcs",
             "scipy.ndimage",
             "shapepipe_modules.mask.build",
    ),
    options=OPTIONS,
    validate=validate,
)
def mask(job):
    """Build the pipeline flag image of one CCD or tile."""
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe.atomic import atomic_path

    from .build import MaskInputError, build_mask, region_text
    from .catalogues import local_star_catalogue, read_deep_sky_catalogue, read_star_catalogue

    options = job.options
    use_flag, use_star = bool(options["USE_EXT_FLAG"]), bool(options["USE_EXT_STAR"])
    expected = 2 + use_flag + use_star
    inputs = [Path(p) for p in job.inputs]
    if len(inputs) != expected:
        raise JobError(
            f"mask expects {expected} inputs (image, weight"
            + (", flag" if use_flag else "")
            + (", star catalogue" if use_star else "")
            + f") from USE_EXT_FLAG = {use_flag}, USE_EXT_STAR = {use_star}, but FILE_PATTERN gives {len(inputs)}: "
            + ", ".join(p.name for p in inputs)
        )
    image_path, weight_path = inputs[0], inputs[1]
    flag_path = inputs[2] if use_flag else None
    star_path = inputs[-1] if use_star else options.get("STAR_CAT_PATH") or None
    existing = options.get("CHECK_EXISTING_DIR")
    prefix = str(options["PREFIX"]).replace(" ", "")
    prefix = "" if prefix.lower() in ("", "none") else prefix + "_"
    out_name = f"{prefix}flag{job.number}.fits"
    if existing and (Path(existing) / out_name).is_file():
        # ShapePipe's CHECK_EXISTING_DIR: a flag image made by an earlier run is reused, not remade.
        os.symlink((Path(existing) / out_name).resolve(), job.output_path(out_name))
        job.logger.info("%s: reused from CHECK_EXISTING_DIR %s", out_name, existing)
        return {"reused": 1}

    try:
        params = read_mask_config(_config_path(options))
    except ConfigError as error:
        raise JobError(str(error)) from None
    for note in params.notes:
        job.logger.info("%s: %s", params.source, note)
    if params.border is not None and options["BORDER_WIDTH"] >= 0:
        import dataclasses

        params = dataclasses.replace(params, border=dataclasses.replace(params.border, width=options["BORDER_WIDTH"]))
    local_stars = options.get("LOCAL_STAR_CAT") or None
    if (params.halo or params.spike) and not star_path and not local_stars:
        raise JobError(
            f"{params.source} asks for ShapePipe's on-the-fly star query ([PROGRAM_PATH] CDSCLIENT_PATH, a "
            "network service), which is not available here: give a local bright-star catalogue with "
            "STAR_CAT_PATH (FITS: ra, dec, mag; e.g. from create_star_cat), a per-image folder or a reference "
            "catalogue (FITS or CSV) with LOCAL_STAR_CAT, or one per image with USE_EXT_STAR"
        )

    hdu = int(options["HDU"])
    image, header = _read_image(image_path, hdu, "image")
    weight, _ = _read_image(weight_path, hdu, "weight")
    external = _read_image(flag_path, hdu, "flag image", integer=True)[0] if flag_path else None
    for path, array in ((weight_path, weight), (flag_path, external)):
        if array is not None and array.shape != image.shape:
            raise JobError(f"{path} has shape {array.shape} but image {image_path} has {image.shape}")
    if not np.any(weight > 0):
        raise JobError(f"weight {weight_path} is zero everywhere: nothing to mask")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception as error:
            raise JobError(f"image {image_path}: invalid WCS: {error}") from None
    if not wcs.has_celestial or wcs.naxis != 2:
        raise JobError(f"image {image_path} has no 2-d celestial WCS")

    star_cat = deep_sky_cat = ngc_cat = None
    try:
        if (params.halo or params.spike) and star_path:
            star_cat = read_star_catalogue(star_path)
        elif params.halo or params.spike:
            try:
                star_cat = local_star_catalogue(local_stars, job.number, header, options["LOCAL_STAR_MARGIN"])
            except ValueError as error:
                raise ValueError(f"[{job.module_run.upper()}_RUNNER] LOCAL_STAR_CAT: {error}") from None
            job.logger.info("on-the-fly stars offline: %d from %s", star_cat.ra.size, star_cat.path)
        if params.messier is not None:
            deep_path = options.get("DEEP_SKY_CAT_PATH") or params.messier.cat_path
            if deep_path:
                deep_sky_cat = read_deep_sky_catalogue(deep_path)
        if params.ngc is not None and params.ngc.cat_path:
            ngc_cat = read_deep_sky_catalogue(params.ngc.cat_path)
    except ValueError as error:
        raise JobError(str(error)) from None

    profile = zero_point = None
    if options["STAR_MASK_SIZING"] == "profile" and (params.halo or params.spike):
        from .measure_profile import PROFILE_KEYS, read_profile_file
        from .profile import StarProfile

        values = {key: options[key] for key in PROFILE_KEYS}
        if options.get("STAR_PROFILE_FILE"):
            try:
                values = read_profile_file(options["STAR_PROFILE_FILE"])
            except ValueError as error:
                raise JobError(f"[{job.module_run.upper()}_RUNNER] STAR_PROFILE_FILE: {error}") from None
        profile = StarProfile(**{attr: values[key] for key, attr in PROFILE_KEYS.items()},
                              noise_fraction=options["STAR_MASK_NOISE_FRACTION"])
        key = options["ZERO_POINT_KEY"]
        try:
            zero_point = float(header[key])
        except (KeyError, TypeError, ValueError):
            raise JobError(f"image {image_path}: no numeric header keyword {key} (ZERO_POINT_KEY), needed by "
                           "STAR_MASK_SIZING = profile") from None

    try:
        result = build_mask(
            image,
            weight,
            wcs,
            header,
            star_cat,
            deep_sky_cat,
            params,
            ngc_cat=ngc_cat,
            external_flag=external,
            logger=job.logger,
            star_profile=profile,
            zero_point=zero_point,
        )
    except (MaskInputError, ValueError) as error:
        raise JobError(f"image {image_path}: {error}") from None

    out_header = _output_header(header, result, params, inputs)
    from shapepipe_modules.io.images import write_image

    write_image(job.output_path(out_name), result.flag, out_header, compress=options["COMPRESS"],
                output_verify="exception")
    if options["REG_FILE"] or params.keep_reg_file:
        with atomic_path(job.output_path(f"{prefix}flag{job.number}.reg")) as temporary:
            temporary.write_text(region_text(result.shapes))
    job.logger.info(
        "%s: planes %s; %s",
        out_name,
        ", ".join(f"{k}={v}" for k, v in result.planes.items()),
        ", ".join(f"{k}={v}" for k, v in result.stats.items()),
    )
    return {k: v for k, v in result.stats.items() if isinstance(v, (int, float))}
