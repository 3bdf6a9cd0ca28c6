"""Declaration of the ``mask_maps`` module: the mask and the coverage as HEALPix maps.

Inputs, in ``FILE_PATTERN`` order: the flag image of the ``mask`` module
(``pipeline_flag``: its ``MP_*`` cards name the planes, its header holds the
WCS), then, with ``OBJECT_COLUMNS``, a catalogue of the same image (FITS-LDAC
or a FITS table with RA/Dec columns, e.g. ``sexcat`` or ``final_cat``).

Outputs (:mod:`.maps` says how each is computed):

- ``mask_map<number>.hsp``: int32 healsparse map (NEST, equatorial), the OR
  of the flags of the image pixels in each HEALPix pixel; bit = mask plane,
  the metadata holds the ``MP_*`` cards; -1 outside the image;
- ``coverage<number>.hsp`` (with ``LOG_WCS``): int16 healsparse map of the
  number of exposures covering each HEALPix pixel of the image;
- ``mask_cat<number>.fits`` (with ``OBJECT_COLUMNS``): the catalogue with
  ``MASK_FLAGS`` and one boolean ``MASK_<PLANE>`` column per plane added.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("NSIDE", "int", 131072, "nside of the maps (NEST; 131072 = 1.6 arcsec, about 9 CFIS pixels)."),
    Option("NSIDE_COVERAGE", "int", 32, "healsparse coverage nside (the map's blocks; 32 = 1.8 deg)."),
    Option("LOG_WCS", "store", "", "Header store of the exposures (merge_headers; the file, a folder or "
           "reference holding log_exp_headers.sqlite): also write coverage<number>.hsp, the number of "
           "exposures per HEALPix pixel. Empty: no coverage map.", file_name="log_exp_headers.sqlite"),
    Option("OBJECT_COLUMNS", "bool", False, "The second input is a catalogue of the image: write "
           "mask_cat<number>.fits, that catalogue with MASK_FLAGS and MASK_<PLANE> columns."),
    Option("HDU", "int", 0, "HDU of the flag image (0 also finds the image of a tile-compressed file)."),
)


def validate(options) -> list[str]:
    """nside values must be powers of 2, the coverage nside not above the map's."""
    problems = []
    for key in ("NSIDE", "NSIDE_COVERAGE"):
        value = options.get(key) or 0
        if value < 1 or value & (value - 1) or value > 2**29:
            problems.append(f"{key} must be a power of 2 up to 2**29, got {value}")
    if not problems and options["NSIDE_COVERAGE"] > options["NSIDE"]:
        problems.append(f"NSIDE_COVERAGE ({options['NSIDE_COVERAGE']}) must not exceed NSIDE ({options['NSIDE']})")
    return problems


PRODUCTS = (
    Product("mask_map", "mask_map{number}.hsp", "healsparse", ids=("tile", "exposure_ccd"),
            description="mask planes as bits of a HEALPix map (healsparse; OR over the pixels)"),
    Product("coverage_map", "coverage{number}.hsp", "healsparse", ids=("tile", "exposure_ccd"),
            description="number of exposures per HEALPix pixel (healsparse)"),
    Product("mask_cat", "mask_cat{number}.fits", "fits_table", ids=("tile", "exposure_ccd"),
            description="the input catalogue with the mask bits of every object"),
)


def _write_catalogue(source, target, flag, wcs, planes):
    """Copy ``source`` with the mask columns added (FITS-LDAC stays LDAC); returns the number of rows."""
    import shutil

    from astropy.io import fits

    from shapepipe.atomic import atomic_path
    from shapepipe.errors import JobError
    from shapepipe_modules.io.ldac import read_ldac, update_ldac
    from shapepipe_modules.io.tables import read_fits_table, write_fits_table

    from .maps import POSITION_COLUMNS, object_mask_columns, position_columns

    try:
        with fits.open(source) as hdus:
            names = [hdu.name for hdu in hdus]
            tables = [i for i, hdu in enumerate(hdus) if isinstance(hdu, fits.BinTableHDU)]
    except OSError as error:
        raise JobError(f"catalogue {source}: cannot read it ({error})") from None
    ldac = "LDAC_OBJECTS" in names
    if ldac:
        table, _ = read_ldac(source)
    elif tables:
        table = read_fits_table(source, hdu=tables[0])
    else:
        raise JobError(f"catalogue {source} holds no FITS table")
    pair = position_columns(table.colnames)
    if pair is None:
        wanted = ", ".join("/".join(p) for p in POSITION_COLUMNS)
        raise JobError(f"catalogue {source} has none of the position columns {wanted}")
    columns = object_mask_columns(flag, wcs, table[pair[0]], table[pair[1]], planes)
    if ldac:
        with atomic_path(target) as temporary:
            shutil.copyfile(source, temporary)
            update_ldac(temporary, columns=columns)
    else:
        for name, values in columns.items():
            table[name] = values
        write_fits_table(target, table, extname=names[tables[0]] or "DATA")
    return len(table)


@module(
    name="mask_maps",
    products=PRODUCTS,
    version="1.0",
    description="The mask as a healsparse map (one bit per plane), the exposure coverage map, and the mask "
                "bits of every object of a catalogue.",
    input_module="mask",
    file_pattern=("pipeline_flag",),
    file_ext=(".fits",),
    numbering_scheme="-000-000",
    depends=("numpy", "astropy", "healsparse", "hpgeom"),
    options=OPTIONS,
    validate=validate,
)
def mask_maps(job):
    """Write the maps (and the catalogue with mask columns) of one flag image."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe.atomic import atomic_path
    from shapepipe.errors import JobError
    from shapepipe_modules.io.header_store import HeaderStore
    from shapepipe_modules.mask.planes import planes_from_header
    from shapepipe_modules.mask.runner import _read_image
    from shapepipe_modules.sextractor.multi_epoch import MultiEpochError, resolve_store_path

    from .maps import coverage_counts, flag_map_pixels, healsparse_int_map, store_ccds

    options = job.options
    expected = 1 + bool(options["OBJECT_COLUMNS"])
    if len(job.inputs) != expected:
        raise JobError(f"mask_maps expects {expected} input(s) (flag image"
                       + (", catalogue" if expected == 2 else "")
                       + f") from OBJECT_COLUMNS = {options['OBJECT_COLUMNS']}, but FILE_PATTERN gives "
                       f"{len(job.inputs)}: " + ", ".join(str(p) for p in job.inputs))
    flag_path = job.inputs[0]
    flag, header = _read_image(flag_path, options["HDU"], "flag image", integer=True)
    planes = planes_from_header(header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise JobError(f"flag image {flag_path} has no celestial WCS")
    nside = options["NSIDE"]
    pixels, values = flag_map_pixels(flag, wcs, nside)
    metadata = {key: int(bits) for key, bits in planes.items()}
    hsp = healsparse_int_map(pixels, values, nside, "int32", sentinel=-1,
                             nside_coverage=options["NSIDE_COVERAGE"], metadata=metadata)
    name = f"mask_map{job.number}.hsp"
    with atomic_path(job.output_path(name), suffix=".hsp") as temporary:
        hsp.write(str(temporary), clobber=True)
    summary = {"healpix_pixels": int(pixels.size), "masked_healpix_pixels": int((values != 0).sum())}
    if options["LOG_WCS"]:
        try:
            store_path = resolve_store_path(options["LOG_WCS"])
        except MultiEpochError as error:
            raise JobError(f"[{job.module_run.upper()}_RUNNER] LOG_WCS: {error}") from None
        with HeaderStore(store_path) as store:
            try:
                counts = coverage_counts(pixels, nside, store_ccds(store))
            except ValueError as error:
                raise JobError(str(error)) from None
        coverage = healsparse_int_map(pixels, counts, nside, "int16", sentinel=0,
                                      nside_coverage=options["NSIDE_COVERAGE"])
        with atomic_path(job.output_path(f"coverage{job.number}.hsp"), suffix=".hsp") as temporary:
            coverage.write(str(temporary), clobber=True)
        summary.update(coverage_max=int(counts.max(initial=0)), coverage_mean=float(counts.mean()) if counts.size else 0.0)
    if options["OBJECT_COLUMNS"]:
        summary["objects"] = _write_catalogue(job.inputs[1], job.output_path(f"mask_cat{job.number}.fits"),
                                              flag, wcs, planes)
    job.logger.info("%s: %s", name, summary)
    return summary
