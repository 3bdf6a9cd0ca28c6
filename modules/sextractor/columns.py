"""Catalogue columns: FITS format, unit and meaning, as SExtractor writes them.

The ``sep`` engine computes every column listed in :data:`COLUMNS`; a
``.param`` file asking for anything else is a configuration error when the
``sep`` engine is selected (see :func:`unsupported_parameters`).
"""

from __future__ import annotations

import re

import numpy as np

# name: (numpy dtype, unit, description). Units and types follow the
# SExtractor 2.25 output, so both engines write interchangeable catalogues.
COLUMNS = {
    "NUMBER": ("i4", "", "Running object number"),
    "EXT_NUMBER": ("i2", "", "FITS extension number"),
    "FLUX_AUTO": ("f4", "count", "Flux within a Kron-like elliptical aperture"),
    "FLUXERR_AUTO": ("f4", "count", "RMS error for AUTO flux"),
    "MAG_AUTO": ("f4", "mag", "Kron-like elliptical aperture magnitude"),
    "MAGERR_AUTO": ("f4", "mag", "RMS error for AUTO magnitude"),
    "KRON_RADIUS": ("f4", "", "Kron apertures in units of A or B"),
    "FLUX_WIN": ("f4", "count", "Gaussian-weighted flux"),
    "FLUXERR_WIN": ("f4", "count", "RMS error for WIN flux"),
    "MAG_WIN": ("f4", "mag", "Gaussian-weighted magnitude"),
    "MAGERR_WIN": ("f4", "mag", "RMS error for MAG_WIN"),
    "SNR_WIN": ("f4", "", "Gaussian-weighted SNR"),
    "FLUX_APER": ("f4", "count", "Flux vector within fixed circular aperture(s)"),
    "FLUXERR_APER": ("f4", "count", "RMS error vector for aperture flux(es)"),
    "MAG_APER": ("f4", "mag", "Fixed aperture magnitude vector"),
    "MAGERR_APER": ("f4", "mag", "RMS error vector for fixed aperture mag."),
    "FLUX_RADIUS": ("f4", "pixel", "Fraction-of-light radii"),
    "FLUX_MAX": ("f4", "count", "Peak flux above background"),
    "ISOAREA_IMAGE": ("i4", "pixel**2", "Isophotal area above Analysis threshold"),
    "BACKGROUND": ("f4", "count", "Background at centroid position"),
    "THRESHOLD": ("f4", "count", "Detection threshold above background"),
    "X_IMAGE": ("f4", "pixel", "Object position along x"),
    "Y_IMAGE": ("f4", "pixel", "Object position along y"),
    "X_WORLD": ("f8", "deg", "Barycenter position along world x axis"),
    "Y_WORLD": ("f8", "deg", "Barycenter position along world y axis"),
    "ALPHA_J2000": ("f8", "deg", "Right ascension of barycenter (J2000)"),
    "DELTA_J2000": ("f8", "deg", "Declination of barycenter (J2000)"),
    "X2_IMAGE": ("f8", "pixel**2", "Variance along x"),
    "Y2_IMAGE": ("f8", "pixel**2", "Variance along y"),
    "XY_IMAGE": ("f8", "pixel**2", "Covariance between x and y"),
    "ERRX2_IMAGE": ("f8", "pixel**2", "Variance of position along x"),
    "ERRY2_IMAGE": ("f8", "pixel**2", "Variance of position along y"),
    "ERRXY_IMAGE": ("f8", "pixel**2", "Covariance of position between x and y"),
    "CXX_IMAGE": ("f4", "pixel**(-2)", "Cxx object ellipse parameter"),
    "CYY_IMAGE": ("f4", "pixel**(-2)", "Cyy object ellipse parameter"),
    "CXY_IMAGE": ("f4", "pixel**(-2)", "Cxy object ellipse parameter"),
    "A_IMAGE": ("f4", "pixel", "Profile RMS along major axis"),
    "B_IMAGE": ("f4", "pixel", "Profile RMS along minor axis"),
    "THETA_IMAGE": ("f4", "deg", "Position angle (CCW/x)"),
    "X2_WORLD": ("f8", "deg**2", "Variance along X-WORLD (alpha)"),
    "Y2_WORLD": ("f8", "deg**2", "Variance along Y-WORLD (delta)"),
    "XY_WORLD": ("f8", "deg**2", "Covariance between X-WORLD and Y-WORLD"),
    "A_WORLD": ("f4", "deg", "Profile RMS along major axis (world units)"),
    "B_WORLD": ("f4", "deg", "Profile RMS along minor axis (world units)"),
    "THETA_WORLD": ("f4", "deg", "Position angle (CCW/world-x)"),
    "THETA_SKY": ("f4", "deg", "Position angle (east of north) (native)"),
    "THETA_J2000": ("f4", "deg", "Position angle (east of north) (J2000)"),
    "XWIN_IMAGE": ("f8", "pixel", "Windowed position estimate along x"),
    "YWIN_IMAGE": ("f8", "pixel", "Windowed position estimate along y"),
    "XWIN_WORLD": ("f8", "deg", "Windowed position along world x axis"),
    "YWIN_WORLD": ("f8", "deg", "Windowed position along world y axis"),
    "ALPHAWIN_J2000": ("f8", "deg", "Windowed right ascension (J2000)"),
    "DELTAWIN_J2000": ("f8", "deg", "Windowed declination (J2000)"),
    "X2WIN_IMAGE": ("f8", "pixel**2", "Windowed variance along x"),
    "Y2WIN_IMAGE": ("f8", "pixel**2", "Windowed variance along y"),
    "XYWIN_IMAGE": ("f8", "pixel**2", "Windowed covariance between x and y"),
    "ERRX2WIN_IMAGE": ("f8", "pixel**2", "Variance of windowed pos along x"),
    "ERRY2WIN_IMAGE": ("f8", "pixel**2", "Variance of windowed pos along y"),
    "ERRXYWIN_IMAGE": ("f8", "pixel**2", "Covariance of windowed pos between x and y"),
    "AWIN_IMAGE": ("f4", "pixel", "Windowed profile RMS along major axis"),
    "BWIN_IMAGE": ("f4", "pixel", "Windowed profile RMS along minor axis"),
    "THETAWIN_IMAGE": ("f4", "deg", "Windowed position angle (CCW/x)"),
    "AWIN_WORLD": ("f4", "deg", "Windowed profile RMS along major axis (world units)"),
    "BWIN_WORLD": ("f4", "deg", "Windowed profile RMS along minor axis (world units)"),
    "THETAWIN_J2000": ("f4", "deg", "Windowed position angle (east of north) (J2000)"),
    "MU_THRESHOLD": ("f4", "mag * arcsec**(-2)", "Analysis threshold above background"),
    "MU_MAX": ("f4", "mag * arcsec**(-2)", "Peak surface brightness above background"),
    "FLAGS": ("i2", "", "Extraction flags"),
    "FLAGS_WIN": ("i2", "", "Flags for WINdowed parameters"),
    "IMAFLAGS_ISO": ("i4", "", "FLAG-image flags OR'ed over the iso. profile"),
    "NIMAFLAGS_ISO": ("i4", "", "Number of flagged pixels entering IMAFLAGS_ISO"),
    "FWHM_IMAGE": ("f4", "pixel", "FWHM assuming a gaussian core"),
    "FWHM_WORLD": ("f4", "deg", "FWHM assuming a gaussian core"),
    "ELONGATION": ("f4", "", "A_IMAGE/B_IMAGE"),
    "ELLIPTICITY": ("f4", "", "1 - B_IMAGE/A_IMAGE"),
    "VIGNET": ("f4", "count", "Pixel data around detection"),
}

# Vector columns and the .sex setting that gives their default length.
VECTOR_SETTINGS = {
    "FLUX_APER": "phot_apertures",
    "FLUXERR_APER": "phot_apertures",
    "MAG_APER": "phot_apertures",
    "MAGERR_APER": "phot_apertures",
    "FLUX_RADIUS": "phot_fluxfrac",
}

# SExtractor flag bits (FLAGS column).
FLAG_CROWDED = 1  # neighbours or bad pixels cover >10 % of the AUTO aperture
FLAG_MERGED = 2  # deblended from a larger detection
FLAG_SATURATED = 4  # at least one pixel at or above the saturation level
FLAG_TRUNCATED = 8  # isophote touches the image border
FLAG_APERTURE = 16  # an aperture runs off the image
FLAG_ISO = 32  # isophotal data incomplete
FLAG_DEBLEND_OVERFLOW = 64  # deblending memory overflow
FLAG_EXTRACT_OVERFLOW = 128  # extraction memory overflow

FLAG_NAMES = {
    FLAG_CROWDED: "crowded",
    FLAG_MERGED: "merged",
    FLAG_SATURATED: "saturated",
    FLAG_TRUNCATED: "truncated",
    FLAG_APERTURE: "aperture_incomplete",
    FLAG_ISO: "isophote_incomplete",
    FLAG_DEBLEND_OVERFLOW: "deblend_overflow",
    FLAG_EXTRACT_OVERFLOW: "extract_overflow",
}


def decode_flags(value: int) -> list[str]:
    """Names of the FLAGS bits set in ``value``."""
    return [name for bit, name in FLAG_NAMES.items() if int(value) & bit]


def unsupported_parameters(parameters) -> list[str]:
    """Parameters (from :func:`read_dot_param`) the ``sep`` engine cannot compute."""
    problems = []
    for parameter in parameters:
        if parameter.name not in COLUMNS:
            problems.append(str(parameter))
        elif parameter.name == "VIGNET" and len(parameter.shape) != 2:
            problems.append(f"{parameter} (VIGNET needs a size, VIGNET(w,h))")
        elif parameter.name != "VIGNET" and parameter.name not in VECTOR_SETTINGS and parameter.shape:
            problems.append(f"{parameter} (not a vector parameter)")
    return problems


def column_shape(parameter, settings) -> tuple:
    """Per-row shape of a column: ``()``, ``(n,)`` or ``(h, w)`` for VIGNET(w,h)."""
    if parameter.name == "VIGNET":
        width, height = parameter.shape
        return (height, width)
    if parameter.name in VECTOR_SETTINGS:
        available = len(getattr(settings, VECTOR_SETTINGS[parameter.name]))
        length = parameter.shape[0] if parameter.shape else 1
        length = min(length, available)
        return () if length == 1 else (length,)
    return ()


def magnitude(flux, zero_point):
    """SExtractor magnitude: ``-2.5 log10(flux) + ZP``, 99 for non-positive flux."""
    flux = np.asarray(flux, dtype=float)
    positive = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, -2.5 * np.log10(np.where(positive, flux, 1.0)) + zero_point, 99.0)


def magnitude_error(flux, flux_error):
    """SExtractor magnitude error: ``1.0857 fluxerr / flux``, 99 for non-positive flux."""
    flux = np.asarray(flux, dtype=float)
    positive = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, 1.0857 * np.asarray(flux_error) / np.where(positive, flux, 1.0), 99.0)


_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
_COMPARE = {"==": np.equal, "!=": np.not_equal, "<=": np.less_equal, ">=": np.greater_equal,
            "<": np.less, ">": np.greater}


def parse_conditions(conditions) -> list[tuple[str, str, float]]:
    """``COLUMN OP NUMBER`` strings as (column, operator, value); ValueError names a bad one."""
    parsed = []
    for text in conditions:
        match = _CONDITION.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not 'COLUMN OP NUMBER' (OP one of ==, !=, <, <=, >, >=)")
        name, operator, value = match.groups()
        parsed.append((name.upper(), operator, float(value)))
    return parsed


def rows_meeting(table, conditions) -> np.ndarray:
    """Rows of ``table`` meeting every condition (:func:`parse_conditions`); True for all if none.

    The comparisons are numpy's on the stored column values, as setools makes
    them, so rows selected there by the same conditions are a subset of these.
    """
    rows = np.ones(len(table), dtype=bool)
    for name, operator, value in parse_conditions(conditions):
        if name not in table.colnames:
            raise ValueError(f"{name} is not a catalogue column (DOT_PARAM_FILE)")
        column = np.asarray(table[name])
        if column.ndim != 1:
            raise ValueError(f"{name} is a vector column; conditions take scalar columns")
        rows &= _COMPARE[operator](column, value)
    return rows
