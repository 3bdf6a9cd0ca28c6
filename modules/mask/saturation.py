"""Saturated pixels and bleed trails, found in the image itself.

Saturated regions are rare and small, so after one pass over the image to
find the seed pixels, every step works in small boxes around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_VERTICAL = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=bool)


@dataclass(frozen=True)
class SaturatedPatch:
    """Saturated pixels inside one box of the image.

    Attributes
    ----------
    rows, cols : slice
        The box.
    mask : ndarray of bool
        The saturated pixels of the box (grown and with their trails).
    boxes : list of tuple
        ``(x0, y0, x1, y1)`` inclusive image-pixel bounds of each connected
        region in the box.
    """

    rows: slice
    cols: slice
    mask: np.ndarray
    boxes: list


def saturated_patches(
    image: np.ndarray, level: float, bleed_fraction: float = 0.5, grow: int = 2
) -> list[SaturatedPatch]:
    """Saturated regions and their bleed trails, as patches of the image.

    Pixels at or above ``level`` seed the mask. Charge from a saturated
    star bleeds along CCD columns, and the trail fades below the saturation
    level at its ends, so each seed's column is followed up and down while
    pixels stay at or above ``bleed_fraction * level`` (vertical runs of the
    low threshold that hold a seed). The result is grown by ``grow`` pixels
    in every direction (a square of side ``2 * grow + 1``) to cover the
    wings of the saturated cores.

    Parameters
    ----------
    image : 2-d ndarray
        Pixel values (NaN pixels are never saturated).
    level : float
        Saturation level, in the image's units.
    bleed_fraction : float
        Fraction of ``level`` above which a column run continues a trail.
    grow : int
        Growth in pixels.

    Returns
    -------
    list of SaturatedPatch
        Patches whose grown regions never touch each other.
    """
    from scipy import ndimage

    with np.errstate(invalid="ignore"):
        seeds = image >= level
    columns = np.flatnonzero(seeds.any(axis=0))
    if columns.size == 0:
        return []
    # Trails are vertical: follow them in the seed columns only.
    sub_image = image[:, columns]
    with np.errstate(invalid="ignore"):
        low = sub_image >= bleed_fraction * level
    runs, _ = ndimage.label(low, structure=_VERTICAL)
    keep = np.unique(runs[seeds[:, columns]])
    trail = np.isin(runs, keep[keep > 0])
    ys, sub_x = np.nonzero(trail)
    xs = columns[sub_x]

    # Group pixels by coarse cells; cells that touch form one patch. Cells are
    # wider than the growth, so grown regions of different patches never meet.
    cell = max(64, 4 * grow + 4)
    ny, nx = image.shape
    occupied = np.zeros((ny // cell + 1, nx // cell + 1), dtype=bool)
    occupied[ys // cell, xs // cell] = True
    groups, _ = ndimage.label(occupied, structure=np.ones((3, 3), dtype=bool))
    group_of_pixel = groups[ys // cell, xs // cell]
    order = np.argsort(group_of_pixel, kind="stable")
    splits = np.flatnonzero(np.diff(group_of_pixel[order])) + 1
    patches = []
    for members in np.split(order, splits):
        py, px = ys[members], xs[members]
        r0, r1 = max(py.min() - grow, 0), min(py.max() + grow + 1, ny)
        c0, c1 = max(px.min() - grow, 0), min(px.max() + grow + 1, nx)
        local = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
        local[py - r0, px - c0] = 1
        if grow > 0:
            size = 2 * grow + 1
            local = ndimage.maximum_filter1d(local, size, axis=0, mode="constant")
            local = ndimage.maximum_filter1d(local, size, axis=1, mode="constant")
        local = local.astype(bool)
        labels, _ = ndimage.label(local, structure=np.ones((3, 3), dtype=bool))
        boxes = [
            (c0 + found[1].start, r0 + found[0].start, c0 + found[1].stop - 1, r0 + found[0].stop - 1)
            for found in ndimage.find_objects(labels)
            if found is not None
        ]
        patches.append(SaturatedPatch(slice(r0, r1), slice(c0, c1), local, boxes))
    return patches


def saturation_mask(image: np.ndarray, level: float, bleed_fraction: float = 0.5, grow: int = 2) -> np.ndarray:
    """Boolean image of :func:`saturated_patches` (same arguments)."""
    mask = np.zeros(image.shape, dtype=bool)
    for patch in saturated_patches(image, level, bleed_fraction, grow):
        mask[patch.rows, patch.cols] |= patch.mask
    return mask
