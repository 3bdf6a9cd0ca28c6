"""Object masks and saturated-star regions of a crowded field (docs/crowded.md).

The object mask is an int32 image in which each object's ellipse is filled
with its ``NUMBER``: larger objects are painted first, so a small object on
the wing of a large one keeps its own pixels; saturated-star regions are
painted last with a reserved value. Work is done object by object on the
ellipse's bounding box (vectorised inside the box), never pixel by pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Value of saturated-star regions in the object mask (NUMBER is always >= 1).
SATURATED_VALUE = -1
#: KRON_RADIUS used when the catalogue has no such column (SExtractor's usual minimum, 3.5 A).
DEFAULT_KRON_RADIUS = 3.5


def object_ellipses(table, scale: float = 1.0, offset: float = 0.0):
    """Ellipse of every object: centre (FITS pixels), semi-axes (pixels) and angle (radians).

    Semi-axes ``scale * KRON_RADIUS * (A_IMAGE, B_IMAGE) + offset``
    (:data:`DEFAULT_KRON_RADIUS` when the catalogue has no KRON_RADIUS or
    the value is not positive).
    """
    n = len(table)
    kron = np.asarray(table["KRON_RADIUS"], float) if "KRON_RADIUS" in table.colnames else np.full(n, DEFAULT_KRON_RADIUS)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, DEFAULT_KRON_RADIUS)
    a = scale * kron * np.asarray(table["A_IMAGE"], float) + offset
    b = scale * kron * np.asarray(table["B_IMAGE"], float) + offset
    return (np.asarray(table["X_IMAGE"], float), np.asarray(table["Y_IMAGE"], float),
            np.maximum(a, 0.5), np.maximum(b, 0.5), np.radians(np.asarray(table["THETA_IMAGE"], float)))


def _ellipse_box(shape, x, y, a, b, theta):
    """0-based slices of the bounding box of one ellipse clipped to ``shape``, and its pixel mask."""
    # Half extents of a rotated ellipse along x and y.
    c, s = np.cos(theta), np.sin(theta)
    hx = np.sqrt((a * c) ** 2 + (b * s) ** 2)
    hy = np.sqrt((a * s) ** 2 + (b * c) ** 2)
    x0, y0 = x - 1.0, y - 1.0  # 0-based centre
    c0, c1 = max(int(np.floor(x0 - hx)), 0), min(int(np.ceil(x0 + hx)) + 1, shape[1])
    r0, r1 = max(int(np.floor(y0 - hy)), 0), min(int(np.ceil(y0 + hy)) + 1, shape[0])
    if c1 <= c0 or r1 <= r0:
        return None, None
    dy, dx = np.mgrid[r0:r1, c0:c1]
    dx = dx - x0
    dy = dy - y0
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    return (slice(r0, r1), slice(c0, c1)), u * u + v * v <= 1.0


def object_mask(shape, table, scale: float = 1.0, offset: float = 0.0, saturated=None):
    """The int32 object mask: 0 sky, NUMBER inside each object's ellipse, -1 saturated regions.

    Parameters
    ----------
    shape : tuple
        Image shape (ny, nx).
    table : astropy.table.Table
        ``NUMBER, X_IMAGE, Y_IMAGE, A_IMAGE, B_IMAGE, THETA_IMAGE`` (and
        ``KRON_RADIUS`` when present).
    scale, offset : float
        Ellipse size: ``scale * KRON_RADIUS * A + offset`` pixels.
    saturated : 2-d bool array, optional
        Saturated-star regions, painted last with :data:`SATURATED_VALUE`.
    """
    mask = np.zeros(shape, np.int32)
    x, y, a, b, theta = object_ellipses(table, scale, offset)
    number = np.asarray(table["NUMBER"], np.int64)
    for i in np.argsort(-(a * b), kind="stable"):  # larger first: smaller objects on top
        box, inside = _ellipse_box(shape, x[i], y[i], a[i], b[i], theta[i])
        if box is not None:
            mask[box][inside] = number[i]
    if saturated is not None:
        mask[np.asarray(saturated, bool)] = SATURATED_VALUE
    return mask


def unmask_object(mask, table, number, scale: float = 1.0, offset: float = 0.0):
    """Copy of ``mask`` with one object's ellipse removed, for fitting that object.

    The pixels of its ellipse that carry its own NUMBER become 0; pixels of
    smaller objects painted over it and saturated regions stay masked.
    """
    out = np.array(mask, copy=True)
    row = np.flatnonzero(np.asarray(table["NUMBER"]) == number)
    if row.size != 1:
        raise ValueError(f"unmask_object: NUMBER {number} is not exactly once in the catalogue")
    x, y, a, b, theta = (v[row[0]] for v in object_ellipses(table, scale, offset))
    box, inside = _ellipse_box(mask.shape, x, y, a, b, theta)
    if box is not None:
        view = out[box]
        view[inside & (view == number)] = 0
    return out


def neighbour_pixels(mask_stamps, numbers):
    """Pixels of stamps of the object mask that belong to another object or a saturated region.

    Parameters
    ----------
    mask_stamps : (n, size, size) int array
        Stamps of the object mask around each object.
    numbers : (n,) int array
        Each object's NUMBER.
    """
    numbers = np.asarray(numbers).reshape(-1, 1, 1)
    return (mask_stamps != 0) & (mask_stamps != numbers)


@dataclass(frozen=True)
class SaturatedRegion:
    """One saturated star: a box covering its saturated core and bleed trail, and a circle on the core.

    Attributes
    ----------
    x, y : float
        Centre of the circle (FITS pixels): the detection's position, or the core's centroid.
    radius : float
        Circle radius (pixels).
    box : tuple
        ``(x0, y0, x1, y1)`` FITS pixel bounds, inclusive.
    number : int
        NUMBER of the detection it belongs to (0: none).
    """

    x: float
    y: float
    radius: float
    box: tuple
    number: int


def saturated_regions(image, level, flag=None, flag_bits=0, table=None, radius_scale=1.5, pad=3.0):
    """Saturated-star regions from the saturation level, the flag image and the catalogue.

    Saturated pixels (at or above ``level``, followed along columns as bleed
    trails by :func:`shapepipe_modules.mask.saturation.saturation_mask`, or
    with ``flag & flag_bits``) are grouped into connected regions. Each region
    gives a box over its full extent (core and trail) grown by ``pad``, and a
    circle of radius ``radius_scale`` times the half width of the core (its
    widest row) plus ``pad``, centred on the catalogue object with FLAGS bit 4
    (saturated) inside the region, else on the region's widest row.

    Returns
    -------
    list of SaturatedRegion
    """
    from scipy import ndimage

    from shapepipe_modules.mask.saturation import saturation_mask

    saturated = saturation_mask(np.asarray(image, float), float(level), grow=1) if level and level > 0 else \
        np.zeros(np.shape(image), bool)
    if flag is not None and flag_bits:
        saturated |= (np.asarray(flag).astype(np.int64) & int(flag_bits)) != 0
    labels, n = ndimage.label(saturated, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    candidates = None
    if table is not None and len(table):
        flags = np.asarray(table["FLAGS"]) if "FLAGS" in table.colnames else np.zeros(len(table), int)
        cx, cy = np.asarray(table["X_IMAGE"], float), np.asarray(table["Y_IMAGE"], float)
        candidates = (cx, cy, np.asarray(table["NUMBER"]), (flags & 4) != 0)
    regions = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = found
        local = labels[found] == index
        widths = local.sum(axis=1)
        core_row = int(np.argmax(widths))
        half_width = 0.5 * widths[core_row]
        x0, y0 = cols.start + 1, rows.start + 1  # FITS
        x1, y1 = cols.stop, rows.stop
        centre_x = x0 + float(np.mean(np.flatnonzero(local[core_row])))
        centre_y = y0 + core_row
        number = 0
        if candidates is not None:
            cx, cy, numbers, is_saturated = candidates
            inside = (cx >= x0 - pad) & (cx <= x1 + pad) & (cy >= y0 - pad) & (cy <= y1 + pad)
            pick = np.flatnonzero(inside & is_saturated) if np.any(inside & is_saturated) else np.flatnonzero(inside)
            if pick.size:
                best = pick[np.argmin(np.hypot(cx[pick] - centre_x, cy[pick] - centre_y))]
                centre_x, centre_y, number = float(cx[best]), float(cy[best]), int(numbers[best])
        regions.append(SaturatedRegion(centre_x, centre_y, radius_scale * half_width + pad,
                                       (x0 - pad, y0 - pad, x1 + pad, y1 + pad), number))
    return regions


def regions_plane(shape, regions):
    """Boolean image of the saturated regions (boxes and circles)."""
    plane = np.zeros(shape, bool)
    for region in regions:
        x0, y0, x1, y1 = region.box
        c0, c1 = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)), shape[1])
        r0, r1 = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)), shape[0])
        if c1 > c0 and r1 > r0:
            plane[r0:r1, c0:c1] = True
        box, inside = _ellipse_box(shape, region.x, region.y, region.radius, region.radius, 0.0)
        if box is not None:
            plane[box] |= inside
    return plane
