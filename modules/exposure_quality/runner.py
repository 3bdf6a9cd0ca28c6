"""Declaration of the ``exposure_quality`` module: one quality row per exposure CCD.

Serial (one job over every exposure CCD of the run, because the rules
compare each exposure with the others). Inputs per CCD (``FILE_PATTERN``
order): the split image, weight and flag (``split_exp``), the CCD's
detection catalogue (``sextractor``, for the isolation of zero-point stars)
and its PSF model (``psfex``). See :mod:`.quality` for every column.

Outputs:

``exposure_quality-0000000.fits``
    One row per exposure CCD (``EXPOSURE``, ``CCD``, ``MJD``, ``FILTER``,
    ``ZP``, ``ZP_PSF``, ``SKY``, ``SKY_RMS``, ``PSF_FWHM``, ``PSF_E1/E2``,
    ``N_STARS``, ``LIMMAG``, ... ``QUALITY_FLAGS``, ``FLAG_NAMES``).
``exposure_exclude-0000000.txt``
    The exposures to leave out (any CCD flagged by a bit of
    ``EXCLUDE_FLAGS``), one ``EXPOSURE FLAGS`` line each; ``forced_phot``
    reads it (``EXCLUDE_LIST``).
``exposure_quality-0000000.png``
    Every quantity against MJD, flagged CCDs in red.

An exposure CCD without ``MJD-OBS`` or ``PHOTZP`` in its header is named in
the log and flagged (``NO_DATE``, ``NO_ZERO_POINT``): no date is made up.
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("REF_CATALOGUE", "file", "", "FITS table of reference stars (RA, Dec in degrees, magnitude) for "
           "the zero points, e.g. the simulation's catalogues/reference_stars.fits; empty: the headers' PHOTZP."),
    Option("REF_COLUMNS", "list", ["ra", "dec", "mag"], "Columns of REF_CATALOGUE: RA, Dec, magnitude."),
    Option("ZP_MAG_RANGE", "float_list", [17.0, 21.5], "Reference magnitudes of the zero-point stars."),
    Option("ZP_MIN_SNR", "float", 20.0, "Minimum aperture S/N of a zero-point star."),
    Option("ZP_APER_FWHM", "float", 4.0, "Radius of the zero-point apertures in PSF FWHM (all but ~0.1% "
           "of a Moffat's flux)."),
    Option("ZP_MIN_STARS", "int", 5, "Fewer zero-point stars in an exposure: the header's PHOTZP is used."),
    Option("STAMP_SIZE", "int", 21, "Side of the PSF-fit stamps, pixels (odd)."),
    Option("MAX_ZP_LOSS", "float", 0.25, "Flag LOW_ZP: zero point below the median of all CCDs by more than "
           "this (mag)."),
    Option("MAX_FWHM_RATIO", "float", 1.3, "Flag BAD_SEEING: PSF FWHM above this times the median."),
    Option("MAX_SKY_BRIGHTENING", "float", 0.5, "Flag BRIGHT_SKY: sky brighter than the median by more than "
           "this (mag/arcsec^2)."),
    Option("MAX_PSF_E", "float", 0.1, "Flag PSF_ELLIPTICITY: |e| of the PSF model above this."),
    Option("MIN_STARS", "int", 10, "Flag FEW_STARS: fewer stars in the PSF model."),
    Option("MAX_DEPTH_LOSS", "float", 0.5, "Flag SHALLOW: 5-sigma depth shallower than the median by more "
           "than this (mag)."),
    Option("EXCLUDE_FLAGS", "list", ["NO_DATE", "NO_ZERO_POINT", "LOW_ZP", "BAD_SEEING", "BRIGHT_SKY",
                                     "PSF_ELLIPTICITY", "FEW_STARS", "SHALLOW"],
           "Quality flags that put an exposure on the exclusion list."),
    Option("PLOT", "bool", True, "Write the quality plot against MJD."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    from .quality import FLAGS

    problems = []
    unknown = [name for name in options.get("EXCLUDE_FLAGS") or [] if name not in FLAGS]
    if unknown:
        problems.append(f"EXCLUDE_FLAGS: unknown flags {unknown}; choose among {', '.join(FLAGS)}")
    if len(options.get("REF_COLUMNS") or []) != 3:
        problems.append("REF_COLUMNS needs three column names (RA, Dec, magnitude)")
    mag_range = options.get("ZP_MAG_RANGE") or []
    if len(mag_range) != 2 or mag_range[0] >= mag_range[1]:
        problems.append("ZP_MAG_RANGE needs two increasing magnitudes")
    size = options.get("STAMP_SIZE")
    if size is not None and (size < 3 or size % 2 == 0):
        problems.append("STAMP_SIZE must be odd and at least 3")
    return problems


PRODUCTS = (
    Product("exposure_quality", "exposure_quality-0000000.fits", "fits_table",
            description="quality of every exposure CCD: date, zero point, sky, PSF, depth, flags"),
    Product("exposure_exclude", "exposure_exclude-0000000.txt", "text",
            description="exposures to leave out, with the flags that put them there"),
)

COLUMNS = (("EXPOSURE", "U16"), ("CCD", "i4"), ("MJD", "f8"), ("FILTER", "U16"), ("EXPTIME", "f8"),
           ("PHOTZP_HEADER", "f8"), ("ZP", "f8"), ("ZP_ERR", "f8"), ("ZP_PSF", "f8"), ("APCORR", "f8"),
           ("N_ZP_STARS", "i4"), ("ZP_SOURCE", "U8"), ("SKY", "f8"), ("SKY_RMS", "f8"), ("SKY_MAG", "f8"),
           ("PSF_FWHM", "f8"), ("PSF_E1", "f8"), ("PSF_E2", "f8"), ("N_STARS", "i4"), ("LIMMAG", "f8"),
           ("QUALITY_FLAGS", "i4"), ("FLAG_NAMES", "U120"))


def _read_reference(path, columns):
    import numpy as np

    from shapepipe_modules.io.tables import FitsTableError, read_fits_table

    try:
        table = read_fits_table(path)
    except FitsTableError as error:
        raise JobError(f"[EXPOSURE_QUALITY] REF_CATALOGUE: {error}") from None
    missing = [name for name in columns if name not in table.colnames]
    if missing:
        raise JobError(f"[EXPOSURE_QUALITY] REF_CATALOGUE {path}: no column {', '.join(missing)} "
                       f"(REF_COLUMNS; columns are {', '.join(table.colnames)})")
    return {key: np.asarray(table[name], float) for key, name in zip(("ra", "dec", "mag"), columns)}


def _ccd_name(number: str):
    """``'-2100001-0'`` -> ``('2100001', 0)``."""
    parts = number.strip("-").split("-")
    return parts[0], int(parts[-1])


@module(
    name="exposure_quality",
    products=PRODUCTS,
    version="1.0",
    description="Quality of every exposure CCD (date, zero point, sky, PSF, depth) with outlier flags and "
                "an exclusion list.",
    input_module=("split_exp", "sextractor", "psfex"),
    file_pattern=("image", "weight", "flag", "sexcat", "star_selection"),
    file_ext=(".fits", ".fits", ".fits", ".fits", ".psf"),
    numbering_scheme="-0000000-0",
    run_method="serial",
    depends=("numpy", "astropy", "scipy", "matplotlib"),
    options=OPTIONS,
    validate=validate,
)
def exposure_quality(job):
    """Measure every CCD, flag outliers, write the table, the exclusion list and the plot."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import LDACError, read_ldac
    from shapepipe_modules.io.psfex_file import PSFFileError, read_psf
    from shapepipe_modules.io.tables import write_fits_table

    from .quality import (FLAGS, exclusion_list, exposure_zero_points, flag_names, flag_rows, measure_ccd,
                          plot_quality, write_exclusion_list)

    options = job.options
    reference = _read_reference(options["REF_CATALOGUE"], options["REF_COLUMNS"]) if options["REF_CATALOGUE"] else None
    zp_options = {"mag_range": tuple(options["ZP_MAG_RANGE"]), "min_snr": options["ZP_MIN_SNR"],
                  "aper_fwhm": options["ZP_APER_FWHM"], "stamp_size": options["STAMP_SIZE"]}
    rows = []
    for number, paths in sorted(job.input_table.items()):
        image_path, weight_path, flag_path, catalogue_path, psf_path = paths
        exposure, ccd = _ccd_name(number)
        try:
            with fits.open(image_path, memmap=False) as hdus:
                image, header = hdus[0].data.astype(np.float64), hdus[0].header
            weight = fits.getdata(weight_path).astype(np.float64)
            flag = fits.getdata(flag_path)
            model = read_psf(psf_path)
            catalogue, _ = read_ldac(catalogue_path)
        except (OSError, PSFFileError, LDACError, TypeError) as error:
            raise JobError(f"exposure {exposure} CCD {ccd}: cannot read its files ({error})") from None
        detections = np.c_[np.asarray(catalogue["XWIN_IMAGE"]), np.asarray(catalogue["YWIN_IMAGE"])]
        row = measure_ccd(image, weight, flag, header, model, detections, reference, **zp_options)
        row.update(EXPOSURE=exposure, CCD=ccd)
        for key, flag_name in (("MJD-OBS", "NO_DATE"), ("PHOTZP", "NO_ZERO_POINT")):
            if header.get(key) is None:
                job.logger.warning("exposure %s CCD %d (%s): no %s in the header; flagged %s, left out of "
                                   "the light curves", exposure, ccd, image_path.name, key, flag_name)
        rows.append(row)
    exposure_zero_points(rows, options["ZP_MIN_STARS"])
    flags = flag_rows(rows, options["MAX_ZP_LOSS"], options["MAX_FWHM_RATIO"], options["MAX_SKY_BRIGHTENING"],
                      options["MAX_PSF_E"], options["MIN_STARS"], options["MAX_DEPTH_LOSS"])
    for row, flag in zip(rows, flags):
        row["QUALITY_FLAGS"] = int(flag)
        row["FLAG_NAMES"] = ",".join(flag_names(flag))
    table = Table({name: np.array([row[name] for row in rows], dtype=dtype) for name, dtype in COLUMNS})
    header = fits.Header()
    for key, name in (("MAXZPLOS", "MAX_ZP_LOSS"), ("MAXFWHMR", "MAX_FWHM_RATIO"), ("MAXSKYBR", "MAX_SKY_BRIGHTENING"),
                      ("MAXPSFE", "MAX_PSF_E"), ("MINSTARS", "MIN_STARS"), ("MAXDEPTH", "MAX_DEPTH_LOSS")):
        header[key] = (options[name], name)
    write_fits_table(job.output_path("exposure_quality-0000000.fits"), table, header, extname="EXPOSURE_QUALITY")
    mask = sum(FLAGS[name] for name in options["EXCLUDE_FLAGS"])
    excluded = exclusion_list(table["EXPOSURE"], flags, mask)
    write_exclusion_list(job.output_path("exposure_exclude-0000000.txt"), excluded)
    for exposure, names in excluded.items():
        job.logger.info("exposure %s excluded: %s", exposure, ", ".join(names))
    if options["PLOT"]:
        plot_quality(table, flags, job.output_path("exposure_quality-0000000.png"),
                     f"exposure quality: {len(set(table['EXPOSURE']))} exposures, {len(excluded)} excluded")
    return {"ccds": len(rows), "exposures": len(set(table["EXPOSURE"].tolist())), "excluded": len(excluded)}
