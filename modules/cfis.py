"""CFIS tiling and naming: the one place where the tile rule is written.

CFIS stacks are 0.5 degree tiles named ``CFIS.XXX.YYY.r.fits`` with

    YYY = rint((dec + 90) * 2)
    XXX = rint(ra * cos(dec) * 2), wrapped at 720

where ``cos(dec)`` is taken at the coordinate itself. The inverse gives the
tile centre: ``dec = YYY / 2 - 90`` and ``ra = XXX / 2 / cos(dec)``.
"""

from __future__ import annotations

import re

import numpy as np

TILE_STEP_DEG = 0.5

_TILE_ID_RE = re.compile(r"(?<!\d)(\d{3})[.\-_](\d{3})(?!\d)")
_EXPOSURE_RE = re.compile(r"(?<!\d)(\d{6,8})p?(?=[.\-_]|$)")


def tile_number(ra_deg, dec_deg):
    """Tile indices (XXX, YYY) of sky coordinates (degrees; scalars or arrays).

    Returns
    -------
    tuple of int or int arrays
        ``(xxx, yyy)``.
    """
    ra = np.mod(np.asarray(ra_deg, dtype=float), 360.0)
    dec = np.asarray(dec_deg, dtype=float)
    yyy = np.rint((dec + 90.0) * 2.0).astype(int)
    xxx = np.rint(ra * np.cos(np.radians(dec)) * 2.0).astype(int) % 720
    if xxx.ndim == 0:
        return int(xxx), int(yyy)
    return xxx, yyy


def tile_centre(xxx, yyy):
    """Centre (ra, dec) in degrees of tile (XXX, YYY); inverse of :func:`tile_number`."""
    xxx = np.asarray(xxx, dtype=float)
    yyy = np.asarray(yyy, dtype=float)
    dec = yyy / 2.0 - 90.0
    cos_dec = np.cos(np.radians(dec))
    with np.errstate(divide="ignore", invalid="ignore"):
        ra = np.where(cos_dec > 1e-12, xxx / 2.0 / np.where(cos_dec > 1e-12, cos_dec, 1.0), 0.0)
    ra = np.mod(ra, 360.0)
    if ra.ndim == 0:
        return float(ra), float(dec)
    return ra, dec


def tile_id(xxx: int, yyy: int, sep: str = ".") -> str:
    """Tile id string, ``'244.252'`` (or with another separator)."""
    return f"{int(xxx):03d}{sep}{int(yyy):03d}"


def parse_tile_id(text: str) -> tuple[int, int]:
    """Tile indices from any string holding ``XXX.YYY`` or ``XXX-YYY``.

    Accepts ``244.252``, ``CFIS.244.252.r.fits``, ``CFIS_image-244-252.fits``.

    Raises
    ------
    ValueError
        If no tile id is found in the text.
    """
    match = _TILE_ID_RE.search(text)
    if not match:
        raise ValueError(f"no CFIS tile id (XXX.YYY) in {text!r}")
    return int(match.group(1)), int(match.group(2))


def tile_file_name(xxx: int, yyy: int, band: str = "r", kind: str = "image") -> str:
    """CFIS file name of a tile: ``image`` -> ``CFIS.XXX.YYY.r.fits``;
    ``weight`` -> ``CFIS.XXX.YYY.r.weight.fits.fz``."""
    base = f"CFIS.{tile_id(xxx, yyy)}.{band}"
    if kind == "image":
        return base + ".fits"
    if kind == "weight":
        return base + ".weight.fits.fz"
    raise ValueError(f"unknown tile file kind {kind!r}")


def exposure_file_name(exposure: str | int, kind: str = "image") -> str:
    """CFIS file name of an exposure: ``2113737p.fits``, ``2113737p.weight.fits.fz``,
    ``2113737p.flag.fits.fz``."""
    if kind == "image":
        return f"{exposure}p.fits"
    if kind in ("weight", "flag"):
        return f"{exposure}p.{kind}.fits.fz"
    raise ValueError(f"unknown exposure file kind {kind!r}")
