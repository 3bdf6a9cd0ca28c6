"""Geometry of the masks: templates, sky selection and rasterisation.

Pixel coordinates are 0-based with pixel ``(i, j)`` centred on ``x = i``,
``y = j`` (numpy ``array[y, x]``). A pixel belongs to a shape when its
centre lies inside it. Everything is vectorised over catalogue entries and
pixels; the only Python loops run over the few shapes that touch the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PLAIN_LINE = re.compile(rf"^\s*({_NUMBER})[\s,]+({_NUMBER})\s*$")
_POLYGON = re.compile(r"^\s*(?:\w+\s*;\s*)?polygon\s*\(([^)]*)\)", re.IGNORECASE)
_UNITS = re.compile(r"^\s*#\s*units\s*[:=]\s*(\w+)", re.IGNORECASE)
_DS9_SKIP = re.compile(r"^\s*(global\b|image\s*$|physical\s*$|# Region file format)", re.IGNORECASE)


@dataclass(frozen=True)
class Template:
    """Mask template: polygons of offsets from the star at the pivot magnitude.

    Attributes
    ----------
    polygons : tuple of ndarray
        Each an ``(n, 2)`` array of ``(dx, dy)`` offsets.
    units : {'pixel', 'arcsec'}
        Units of the offsets; pixel offsets follow the detector axes.
    path : Path
        File the template was read from.
    """

    polygons: tuple
    units: str
    path: Path

    def in_pixels(self, pixel_scale_arcsec: float) -> list[np.ndarray]:
        """Polygons in pixel offsets for an image of the given pixel scale."""
        if self.units == "arcsec":
            return [poly / pixel_scale_arcsec for poly in self.polygons]
        return [poly.copy() for poly in self.polygons]

    def extent(self) -> float:
        """Largest distance of a vertex from the star, in template units."""
        return float(max(np.hypot(p[:, 0], p[:, 1]).max() for p in self.polygons))


def read_template(path: str | Path) -> Template:
    """Read a halo or spike template.

    Two forms are accepted: ShapePipe's (one ``dx dy`` pair per line, one
    polygon, in pixels) and ds9 region lines ``polygon(dx1,dy1,dx2,dy2,...)``
    (one polygon per line). A comment ``# units: arcsec`` (or ``pixel``)
    sets the units; pixels by default.

    Raises
    ------
    ValueError
        Naming the file and line of anything that is not a polygon.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read mask template {path}: {error}") from None
    units = "pixel"
    polygons = []
    plain = []
    for number, line in enumerate(lines, start=1):
        unit_match = _UNITS.match(line)
        if unit_match:
            units = unit_match.group(1).lower().rstrip("s")
            if units not in ("pixel", "arcsec"):
                raise ValueError(f"{path}:{number}: units must be pixel or arcsec, got {unit_match.group(1)!r}")
            continue
        text = line.split("#", 1)[0].strip()
        if not text or _DS9_SKIP.match(line):
            continue
        polygon_match = _POLYGON.match(text)
        if polygon_match:
            try:
                values = [float(v) for v in re.split(r"[\s,]+", polygon_match.group(1).strip()) if v]
            except ValueError:
                raise ValueError(f"{path}:{number}: polygon with a non-numeric coordinate") from None
            if len(values) % 2 or len(values) < 6:
                raise ValueError(f"{path}:{number}: a polygon needs at least 3 (x, y) pairs")
            polygons.append(np.array(values, dtype=float).reshape(-1, 2))
            continue
        plain_match = _PLAIN_LINE.match(text)
        if plain_match:
            plain.append((float(plain_match.group(1)), float(plain_match.group(2))))
            continue
        raise ValueError(f"{path}:{number}: expected 'dx dy' or 'polygon(...)', got {line.strip()!r}")
    if plain:
        if len(plain) < 3:
            raise ValueError(f"{path}: a polygon needs at least 3 vertices, found {len(plain)}")
        polygons.append(np.array(plain, dtype=float))
    if not polygons:
        raise ValueError(f"mask template {path} holds no polygon")
    return Template(polygons=tuple(polygons), units=units, path=path)


def magnitude_scale(mag, mag_pivot: float, scale_factor: float, min_scale: float) -> np.ndarray:
    """Template scaling ``max(1 - scale_factor * (mag - mag_pivot), min_scale)``."""
    mag = np.asarray(mag, dtype=float)
    return np.maximum(1.0 - scale_factor * (mag - mag_pivot), min_scale)


def angular_separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in degrees (haversine; arrays broadcast)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    hav = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0))))


@dataclass(frozen=True)
class ImageFootprint:
    """Where an image lies on the sky, for cheap catalogue cuts.

    Attributes
    ----------
    shape : (ny, nx)
    centre_ra, centre_dec : float
        Sky position of the image centre (degrees).
    radius_deg : float
        Largest distance from the centre to a corner.
    pixel_scale_arcsec : float
        Local pixel scale at the centre (square root of the pixel area).
    """

    shape: tuple
    centre_ra: float
    centre_dec: float
    radius_deg: float
    pixel_scale_arcsec: float


def image_footprint(wcs, shape) -> ImageFootprint:
    """Footprint of an image of ``shape`` (ny, nx) with an astropy WCS."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    xs = np.array([cx, cx + 1, cx, -0.5, nx - 0.5, -0.5, nx - 0.5])
    ys = np.array([cy, cy, cy + 1, -0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    if not np.all(np.isfinite(ra) & np.isfinite(dec)):
        raise ValueError("the WCS does not map the image corners to the sky")
    cos_dec = np.cos(np.radians(dec[0]))
    # Local Jacobian by finite differences: its determinant is the pixel area.
    dra = ((ra[1:3] - ra[0] + 180.0) % 360.0 - 180.0) * cos_dec * 3600.0
    ddec = (dec[1:3] - dec[0]) * 3600.0
    area = abs(dra[0] * ddec[1] - dra[1] * ddec[0])
    radius = float(angular_separation_deg(ra[0], dec[0], ra[3:], dec[3:]).max())
    return ImageFootprint(
        shape=(int(ny), int(nx)),
        centre_ra=float(ra[0]),
        centre_dec=float(dec[0]),
        radius_deg=radius,
        pixel_scale_arcsec=float(np.sqrt(area)),
    )


def sky_to_pixel(wcs, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of sky positions (vectorised)."""
    if len(ra) == 0:
        return np.zeros(0), np.zeros(0)
    x, y = wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
    return np.asarray(x, float), np.asarray(y, float)


def discs_touching_rectangle(x, y, radius, shape) -> np.ndarray:
    """Whether discs (pixel centre and radius) overlap the image rectangle.

    The rectangle spans the pixel edges ``[-0.5, nx - 0.5] x [-0.5, ny - 0.5]``;
    a disc overlaps when the rectangle's point closest to its centre is
    within its radius, which also catches discs covering no image corner.
    """
    ny, nx = shape
    closest_x = np.clip(x, -0.5, nx - 0.5)
    closest_y = np.clip(y, -0.5, ny - 0.5)
    return (x - closest_x) ** 2 + (y - closest_y) ** 2 <= np.asarray(radius) ** 2


def _row_range(ymin, ymax, ny):
    start = max(int(np.ceil(ymin)), 0)
    stop = min(int(np.floor(ymax)), ny - 1)
    return start, stop


def fill_polygon(flag: np.ndarray, vertices: np.ndarray, bit: int) -> int:
    """OR ``bit`` into the pixels of ``flag`` whose centres lie in a polygon.

    Scan-line fill with the even-odd rule, vectorised over rows and edges;
    only the polygon's bounding box is touched.

    Parameters
    ----------
    flag : 2-d integer ndarray
        Modified in place.
    vertices : (n, 2) ndarray
        Polygon vertices ``(x, y)`` in 0-based pixel coordinates.
    bit : int
        Bits to set.

    Returns
    -------
    int
        Number of pixels inside the polygon (within the image).
    """
    ny, nx = flag.shape
    xv = np.asarray(vertices[:, 0], float)
    yv = np.asarray(vertices[:, 1], float)
    row0, row1 = _row_range(yv.min(), yv.max(), ny)
    col0, col1 = _row_range(xv.min(), xv.max(), nx)
    if row0 > row1 or col0 > col1:
        return 0
    rows = np.arange(row0, row1 + 1, dtype=float)[:, None]
    x_a, y_a = xv[None, :], yv[None, :]
    x_b, y_b = np.roll(xv, -1)[None, :], np.roll(yv, -1)[None, :]
    # Half-open crossing rule: a vertex on a scan line counts once.
    crosses = (y_a <= rows) != (y_b <= rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x_a + (rows - y_a) * (x_b - x_a) / (y_b - y_a)
    x_cross = np.where(crosses, x_cross, np.inf)
    x_cross.sort(axis=1)
    starts, ends = x_cross[:, 0::2], x_cross[:, 1::2]
    npairs = min(starts.shape[1], ends.shape[1])
    starts, ends = starts[:, :npairs], ends[:, :npairs]
    valid = np.isfinite(ends)
    # Pixel centres i with start <= i < end, clipped to the bounding box.
    first = np.clip(np.ceil(starts[valid]), col0, col1 + 1).astype(np.int64) - col0
    last = np.clip(np.ceil(ends[valid]), col0, col1 + 1).astype(np.int64) - col0
    row_index = np.nonzero(valid)[0]
    width = col1 - col0 + 1
    edges = np.zeros((row1 - row0 + 1, width + 1), dtype=np.int32)
    np.add.at(edges, (row_index, first), 1)
    np.add.at(edges, (row_index, last), -1)
    inside = np.cumsum(edges[:, :width], axis=1) > 0
    box = flag[row0:row1 + 1, col0:col1 + 1]
    box[inside] |= bit
    return int(inside.sum())


def fill_disc(flag: np.ndarray, x: float, y: float, radius: float, bit: int) -> int:
    """OR ``bit`` into pixels whose centres lie within ``radius`` of ``(x, y)``.

    Returns
    -------
    int
        Number of pixels inside the disc (within the image).
    """
    ny, nx = flag.shape
    row0, row1 = _row_range(y - radius, y + radius, ny)
    col0, col1 = _row_range(x - radius, x + radius, nx)
    if row0 > row1 or col0 > col1:
        return 0
    dy2 = (np.arange(row0, row1 + 1, dtype=float) - y) ** 2
    dx2 = (np.arange(col0, col1 + 1, dtype=float) - x) ** 2
    inside = dy2[:, None] + dx2[None, :] <= radius * radius
    flag[row0:row1 + 1, col0:col1 + 1][inside] |= bit
    return int(inside.sum())


def fill_border(flag: np.ndarray, width: int, bit: int) -> None:
    """OR ``bit`` into the ``width`` pixels along every edge."""
    if width <= 0:
        return
    flag[:width, :] |= bit
    flag[-width:, :] |= bit
    flag[:, :width] |= bit
    flag[:, -width:] |= bit
