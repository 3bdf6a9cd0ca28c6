"""Declaration of the ``random_cat`` module (ShapePipe's ``random_cat_runner``).

Inputs: an image (its WCS) and its flag image (``pipeline_flag`` from the
mask module; 0 = unmasked), both in HDU 0 or the first image HDU. Outputs:

- ``<OUTPUT_FILE_PATTERN><number>.fits``: ``RA``, ``DEC`` (deg), ``x``, ``y``
  (FITS pixels) and ``TILE_ID`` (ShapePipe's ``244.252`` form, when the
  number is a tile number) of points uniform over the unmasked pixels;
- with ``SAVE_MASK_AS_HEALPIX``: ``<HEALPIX_OUT_FILE_BASE><number>.hsp``, a
  healsparse map (NEST, equatorial) of the unmasked fraction of the tile in
  each HEALPix pixel of ``HEALPIX_OUT_NSIDE``.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("N_RANDOM", "float", help="Number of random points, or with DENSITY their number per square degree "
           "of unmasked area."),
    Option("DENSITY", "bool", False, "N_RANDOM is a density (per deg^2 of unmasked area) instead of a number."),
    Option("OUTPUT_FILE_PATTERN", "name", "random_cat", "Name of the random catalogue before the number."),
    Option("SAVE_MASK_AS_HEALPIX", "bool", False, "Also write the unmasked fraction as a HEALPix map "
           "(healsparse)."),
    Option("HEALPIX_OUT_NSIDE", "int", 1024, "nside of the HEALPix map."),
    Option("HEALPIX_OUT_FILE_BASE", "name", "mask_hp", "Name of the HEALPix map before the number."),
    Option("HDU", "int", 0, "HDU of the image and the flag image (0 also finds the image of a tile-compressed "
           "file)."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    if options.get("N_RANDOM") is not None and options["N_RANDOM"] < 0:
        problems.append(f"N_RANDOM must not be negative, got {options['N_RANDOM']}")
    nside = options.get("HEALPIX_OUT_NSIDE") or 0
    if options.get("SAVE_MASK_AS_HEALPIX") and (nside < 1 or nside & (nside - 1)):
        problems.append(f"HEALPIX_OUT_NSIDE must be a power of 2, got {nside}")
    return problems


def requirements(options):
    """healsparse only when a HEALPix map is written."""
    return (("healsparse", "hpgeom") if options.get("SAVE_MASK_AS_HEALPIX") else ()), ()


PRODUCTS = (
    Product("random_cat", "random_cat{number}.fits", "fits_table", ids=("tile",),
            description="random points uniform over the unmasked footprint"),
    Product("mask_healpix", "mask_hp{number}.hsp", "healsparse", ids=("tile",),
            description="unmasked fraction per HEALPix pixel (healsparse)"),
)


@module(
    name="random_cat",
    products=PRODUCTS,
    version="1.0",
    description="Random points uniform over the unmasked footprint of a tile; optional HEALPix map of the mask.",
    aliases=("random_cat_runner",),
    input_module="mask",
    file_pattern=("image", "pipeline_flag"),
    file_ext=(".fits", ".fits"),
    numbering_scheme="_0",
    depends=("numpy", "astropy"),
    options=OPTIONS,
    validate=validate,
    requirements=requirements,
)
def random_cat(job):
    """Write the random catalogue (and map) of one tile."""
    import warnings

    import numpy as np
    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe.atomic import atomic_path
    from shapepipe.errors import JobError
    from shapepipe_modules.io.tables import write_fits_table
    from shapepipe_modules.mask.runner import _read_image

    from .random_cat import (draw_points, healpix_fraction, healsparse_map, number_of_points, pixel_area_deg2,
                             tile_id)

    options = job.options
    image_path, flag_path = job.inputs[0], job.inputs[1]
    _, header = _read_image(image_path, options["HDU"], "image")
    flag, _ = _read_image(flag_path, options["HDU"], "flag image", integer=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise JobError(f"image {image_path} has no celestial WCS")
    shape = (int(header.get("NAXIS2", flag.shape[0])), int(header.get("NAXIS1", flag.shape[1])))
    if shape != flag.shape:
        raise JobError(f"flag image {flag_path} has shape {flag.shape} but image {image_path} has {shape}")
    unmasked = flag == 0
    n_clear = int(np.count_nonzero(unmasked))
    area = pixel_area_deg2(wcs)
    n = number_of_points(options["N_RANDOM"], options["DENSITY"], n_clear, area)
    if n > 0 and n_clear == 0:
        raise JobError(f"flag image {flag_path} masks every pixel: no random point can be placed")
    x, y = draw_points(unmasked, n, job.rng("points"))
    ra, dec = wcs.celestial.all_pix2world(x, y, 1)
    columns = {"RA": ra, "DEC": dec, "x": x, "y": y}
    identifier = tile_id(job.number)
    if identifier is not None:
        columns["TILE_ID"] = np.full(n, identifier)
    name = f"{options['OUTPUT_FILE_PATTERN']}{job.number}.fits"
    from astropy.io import fits

    cards = fits.Header()
    cards["AREA"] = (n_clear * area, "unmasked area, deg^2")
    cards["AREATOT"] = (flag.size * area, "image area, deg^2")
    write_fits_table(job.output_path(name), columns, header=cards)
    job.logger.info("%s: %d points over %.5f deg^2 unmasked of %.5f deg^2", name, n, n_clear * area,
                    flag.size * area)
    summary = {"points": n, "area_deg2": n_clear * area, "unmasked_fraction": n_clear / flag.size}
    if options["SAVE_MASK_AS_HEALPIX"]:
        nside = options["HEALPIX_OUT_NSIDE"]
        pixels, fraction = healpix_fraction(unmasked, wcs, nside)
        hsp = healsparse_map(pixels, fraction, nside)
        map_name = f"{options['HEALPIX_OUT_FILE_BASE']}{job.number}.hsp"
        with atomic_path(job.output_path(map_name), suffix=".hsp") as temporary:
            hsp.write(str(temporary), clobber=True)
        summary["healpix_pixels"] = int(pixels.size)
    return summary
