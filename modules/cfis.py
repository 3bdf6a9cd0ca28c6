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


# ---------------------------------------------------------------------------
# Canonical tiles, nearest tile, areas (vectorised).


def tile_row_count(yyy):
    """Number of distinct tiles in row ``YYY``: ``XXX = 0 .. count - 1``.

    In a row the centres are spaced by ``1 / (2 cos(dec))`` degrees of RA,
    starting at RA 0; the row holds the tiles whose centre RA is below 360
    (one tile at the poles).
    """
    dec = np.asarray(yyy, dtype=float) / 2.0 - 90.0
    count = np.ceil(720.0 * np.cos(np.radians(dec)) - 1e-9).astype(int)
    count = np.maximum(count, 1)
    if count.ndim == 0:
        return int(count)
    return count


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle separation in degrees (haversine; arrays broadcast)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    term = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(term, 0.0, 1.0))))


def nearest_tile(ra_deg, dec_deg):
    """Tile (XXX, YYY) whose centre is nearest to each coordinate.

    :func:`tile_number` uses ``cos(dec)`` of the coordinate, so near tile
    boundaries it can name a neighbour of the tile that contains the
    coordinate; this function examines the rule's row and its two
    neighbours, with the four nearest columns in each (wrapping at RA 0),
    and keeps the centre with the smallest great-circle distance.

    Returns
    -------
    tuple of int or int arrays
        ``(xxx, yyy)``.
    """
    ra = np.mod(np.asarray(ra_deg, dtype=float), 360.0)
    dec = np.asarray(dec_deg, dtype=float)
    scalar = ra.ndim == 0 and dec.ndim == 0
    ra, dec = np.broadcast_arrays(np.atleast_1d(ra), np.atleast_1d(dec))
    yyy0 = np.rint((dec + 90.0) * 2.0).astype(int)
    rows = np.clip(yyy0[:, None] + np.array([-1, 0, 1]), 0, 360)  # (n, 3)
    counts = tile_row_count(rows)
    row_dec = rows / 2.0 - 90.0
    step = 1.0 / (2.0 * np.maximum(np.cos(np.radians(row_dec)), 1e-300))  # RA spacing of centres
    first = np.floor(ra[:, None] / step).astype(np.int64)
    columns = (first[..., None] + np.array([-1, 0, 1, 2])) % counts[..., None]  # (n, 3, 4)
    rows = np.broadcast_to(rows[..., None], columns.shape)
    centre_ra, centre_dec = tile_centre(columns, rows)
    distance = angular_separation(ra[:, None, None], dec[:, None, None], centre_ra, centre_dec)
    best = np.argmin(distance.reshape(len(ra), -1), axis=1)
    xxx = columns.reshape(len(ra), -1)[np.arange(len(ra)), best]
    yyy = rows.reshape(len(ra), -1)[np.arange(len(ra)), best]
    if scalar:
        return int(xxx[0]), int(yyy[0])
    return xxx, yyy


def ra_in_range(ra_deg, ra_min, ra_max):
    """Whether RA lies in ``[ra_min, ra_max]`` (degrees), across RA 0 when needed.

    The interval runs east from ``ra_min`` to ``ra_max``: ``ra_min > ra_max``
    (e.g. 350 to 10), or ``ra_max > 360`` as ShapePipe wrote it (350 to
    370), means it wraps through RA 0. An interval of 360 degrees or more
    holds every RA.
    """
    ra = np.mod(np.asarray(ra_deg, dtype=float), 360.0)
    if float(ra_max) - float(ra_min) >= 360.0:
        return np.ones_like(ra, dtype=bool)
    low = float(ra_min) % 360.0
    width = (float(ra_max) - float(ra_min)) % 360.0
    if width == 0.0 and float(ra_max) != float(ra_min):
        width = 360.0
    return np.mod(ra - low, 360.0) <= width + 1e-12


def tiles_in_area(ra_min, dec_min, ra_max, dec_max):
    """Every tile whose centre lies in an RA/Dec rectangle (see :func:`ra_in_range`).

    Returns
    -------
    xxx, yyy : int arrays
        Sorted by YYY then XXX.
    """
    dec_low, dec_high = sorted((float(dec_min), float(dec_max)))
    rows = np.arange(int(np.ceil((dec_low + 90.0) * 2.0 - 1e-9)), int(np.floor((dec_high + 90.0) * 2.0 + 1e-9)) + 1)
    rows = rows[(rows >= 0) & (rows <= 360)]
    xxx_list, yyy_list = [], []
    for yyy in rows:  # at most 361 rows; each row is vectorised
        xxx = np.arange(tile_row_count(yyy))
        ra, _ = tile_centre(xxx, np.full_like(xxx, yyy))
        keep = ra_in_range(ra, ra_min, ra_max)
        xxx_list.append(xxx[keep])
        yyy_list.append(np.full(int(keep.sum()), yyy))
    if not xxx_list:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return np.concatenate(xxx_list), np.concatenate(yyy_list)


# ---------------------------------------------------------------------------
# File names by ShapePipe's image types (cfis_field_select -t).

TILE_TYPES = ("tile", "tile.fz", "weight", "weight.fz")
EXPOSURE_TYPES = (
    "exposure", "exposure.fz", "exposure_weight", "exposure_weight.fz", "exposure_flag", "exposure_flag.fz",
)
IMAGE_TYPES = TILE_TYPES + EXPOSURE_TYPES


def parse_exposure_name(text: str) -> str:
    """Exposure name (digits) from ``2113737``, ``2113737p.fits``, ``image-2113737.fits``...

    Raises
    ------
    ValueError
        If the text holds no 6 to 8 digit exposure number.
    """
    base = str(text).strip().rsplit("/", 1)[-1]
    match = _EXPOSURE_RE.search(base)
    if not match:
        raise ValueError(f"no CFIS exposure name (NNNNNNNp) in {text!r}")
    return match.group(1)


def cfis_file_name(identifier, image_type: str, band: str = "r") -> str:
    """CFIS file name of a tile or exposure for one of ShapePipe's image types.

    Parameters
    ----------
    identifier : tuple of int or str
        ``(xxx, yyy)`` for tile types; the exposure name for exposure types.
    image_type : str
        One of :data:`IMAGE_TYPES`: ``tile`` -> ``CFIS.XXX.YYY.r.fits``,
        ``weight`` -> ``CFIS.XXX.YYY.r.weight.fits``, ``exposure_flag.fz``
        -> ``NNNNNNNp.flag.fits.fz``... (``.fz``: compressed).
    band : str
        Band of tiles.
    """
    if image_type not in IMAGE_TYPES:
        raise ValueError(f"unknown image type {image_type!r}; expected one of {', '.join(IMAGE_TYPES)}")
    compressed = image_type.endswith(".fz")
    kind = image_type[:-3] if compressed else image_type
    suffix = ".fits.fz" if compressed else ".fits"
    if image_type in TILE_TYPES:
        xxx, yyy = identifier
        middle = "" if kind == "tile" else ".weight"
        return f"CFIS.{tile_id(xxx, yyy)}.{band}{middle}{suffix}"
    middle = {"exposure": "", "exposure_weight": ".weight", "exposure_flag": ".flag"}[kind]
    return f"{str(identifier).lstrip('-')}p{middle}{suffix}"


# -- data-id schemes of the file numbers (shapepipe.datasets) ---------------------------------
def _tile_id(number: str) -> dict:
    return {"tile": f"{number[1:4]}.{number[5:8]}"}


def _tile_number(tile) -> str:
    match = re.fullmatch(r"(\d{3})[.\-_](\d{3})", str(tile).strip())
    if match is None:
        raise ValueError(f"tile {tile!r} is not XXX.YYY")
    return f"-{match.group(1)}-{match.group(2)}"


def _exposure_number(exposure) -> str:
    text = str(exposure).strip()
    if not re.fullmatch(r"\d{1,7}", text):
        raise ValueError(f"exposure {exposure!r} is not a number of at most 7 digits")
    return f"-{int(text):07d}"


def _ccd_number(ccd) -> str:
    text = str(ccd).strip()
    if not re.fullmatch(r"\d{1,2}", text):
        raise ValueError(f"ccd {ccd!r} is not a CCD number")
    return f"-{int(text)}"


def _exposure_ccd_id(number: str) -> dict:
    exposure, ccd = number[1:].split("-")
    return {"exposure": int(exposure), "ccd": int(ccd)}


def _declare_schemes():
    from shapepipe.datasets import IdScheme

    tile = IdScheme("tile", ("tile",), r"-\d{3}-\d{3}", _tile_id, lambda tile: _tile_number(tile),
                    "CFIS tile XXX.YYY (file number -XXX-YYY)")
    exposure = IdScheme("exposure", ("exposure",), r"-\d{7}", lambda number: {"exposure": int(number[1:])},
                        lambda exposure: _exposure_number(exposure),
                        "CFIS exposure (file number -NNNNNNN)")
    exposure_ccd = IdScheme("exposure_ccd", ("exposure", "ccd"), r"-\d{7}-\d{1,2}", _exposure_ccd_id,
                            lambda exposure, ccd: _exposure_number(exposure) + _ccd_number(ccd),
                            "one CCD of a CFIS exposure (file number -NNNNNNN-C, C from 0)")
    return tile, exposure, exposure_ccd


#: Id schemes of CFIS file numbers (entry points of group ``shapepipe.id_schemes``).
TILE_SCHEME, EXPOSURE_SCHEME, EXPOSURE_CCD_SCHEME = _declare_schemes()
