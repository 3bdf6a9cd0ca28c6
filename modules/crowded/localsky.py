"""Local sky of each object in a crowded field (docs/crowded.md).

Two methods, tried in the order given; both skip every masked pixel (any
object's ellipse in the object mask, saturated regions, zero weight):

- ``RING`` (gradient rings): elliptical rings of the object's own ellipse
  shape, each ``ring_width`` pixels wide, grow outwards from the object's
  mask ellipse; the sky is the mean of the first ring whose successor is not
  fainter (the light profile has stopped falling: the object's wings are
  behind), its standard deviation the pixels' rms. Not converged when no
  such ring is found within ``max_radius`` or a ring has fewer than
  ``min_pixels`` usable pixels.
- ``BOXES`` (random boxes): ``n_boxes`` square boxes of side ``box_size``
  at random positions within ``max_radius`` of the object, kept when
  entirely unmasked; the sky is the median of the kept boxes' means, its
  standard deviation the rms of their pixels. Not converged with fewer than
  ``min_boxes`` kept boxes.

Columns: ``BKG_LOCAL``, ``BKG_LOCAL_STD`` (per-pixel rms of the sky
pixels used), ``BKG_METHOD`` (1 RING, 2 BOXES, 0 no method converged: then
BKG_LOCAL and BKG_LOCAL_STD are NaN).
"""

from __future__ import annotations

import numpy as np

METHOD_CODES = {"RING": 1, "BOXES": 2}
#: Reach (pixels beyond the mask ellipse) of the first, cheaper ring search.
FIRST_RADIUS = 30.0
NOT_CONVERGED = 0


def ring_sky(image, usable, x, y, a, b, theta, ring_width=3.0, max_radius=150.0, min_pixels=20):
    """Gradient-ring sky of one object; ``(sky, rms)`` or None when not converged.

    ``a, b`` (pixels) and ``theta`` (radians): the object's mask ellipse;
    rings start at its edge. ``usable``: boolean image of sky pixels.
    """
    ny, nx = image.shape
    reach = a + max_radius
    c0, c1 = max(int(x - 1 - reach), 0), min(int(x - 1 + reach) + 2, nx)
    r0, r1 = max(int(y - 1 - reach), 0), min(int(y - 1 + reach) + 2, ny)
    if c1 <= c0 or r1 <= r0:
        return None
    dy, dx = np.mgrid[r0:r1, c0:c1]
    dx = dx - (x - 1.0)
    dy = dy - (y - 1.0)
    c, s = np.cos(theta), np.sin(theta)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) * (a / max(b, 1e-3))
    # Distance beyond the ellipse edge along the major-axis scale, in ring widths.
    ring = np.floor((np.hypot(u, v) - a) / ring_width).astype(int)
    n_rings = int(max_radius / ring_width)
    good = usable[r0:r1, c0:c1] & (ring >= 0) & (ring < n_rings)
    index = ring[good]
    pixels = image[r0:r1, c0:c1][good].astype(float)
    count = np.bincount(index, minlength=n_rings)
    total = np.bincount(index, weights=pixels, minlength=n_rings)
    squares = np.bincount(index, weights=pixels * pixels, minlength=n_rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        rms = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    for k in range(n_rings - 1):
        if count[k] < min_pixels or count[k + 1] < min_pixels:
            return None
        if mean[k + 1] >= mean[k]:
            return float(mean[k]), float(rms[k])
    return None


def box_sky(image, usable, x, y, rng, box_size=9, n_boxes=60, max_radius=150.0, min_boxes=8, min_distance=0.0):
    """Random-box sky of one object; ``(sky, rms)`` or None when not converged."""
    ny, nx = image.shape
    half = box_size // 2
    radius = np.sqrt(rng.uniform(min_distance**2, max_radius**2, n_boxes))
    angle = rng.uniform(0.0, 2.0 * np.pi, n_boxes)
    cx = np.rint(x - 1 + radius * np.cos(angle)).astype(int)
    cy = np.rint(y - 1 + radius * np.sin(angle)).astype(int)
    inside = (cx - half >= 0) & (cx + half < nx) & (cy - half >= 0) & (cy + half < ny)
    cx, cy = cx[inside], cy[inside]
    if cx.size < min_boxes:
        return None
    offsets = np.arange(-half, half + 1)
    rows = cy[:, None, None] + offsets[None, :, None]
    cols = cx[:, None, None] + offsets[None, None, :]
    clean = usable[rows, cols].all(axis=(1, 2))
    if clean.sum() < min_boxes:
        return None
    boxes = image[rows[clean], cols[clean]].astype(float)
    means = boxes.mean(axis=(1, 2))
    sky = float(np.median(means))
    return sky, float(np.sqrt(np.mean((boxes - means[:, None, None]) ** 2)))


def local_sky(image, mask, table, methods=("RING", "BOXES"), weight=None, scale=1.0, offset=0.0,
              ring_width=3.0, max_radius=150.0, box_size=9, n_boxes=60, seed=0):
    """``BKG_LOCAL``, ``BKG_LOCAL_STD``, ``BKG_METHOD`` of every object.

    Parameters
    ----------
    image : 2-d array
        The image as measured (sky not subtracted).
    mask : 2-d int array
        Object mask (:func:`.masks.object_mask` with the same scale and offset).
    table : astropy.table.Table
        The catalogue (positions, shapes, NUMBER).
    methods : sequence of str
        ``RING`` and/or ``BOXES``, in the order to try.
    weight : 2-d array, optional
        Pixels of weight 0 are skipped too.
    seed : int
        Seed of the random boxes (one generator for the catalogue).
    """
    from .masks import object_ellipses

    usable = np.asarray(mask) == 0
    if weight is not None:
        usable &= np.asarray(weight) > 0
    usable &= np.isfinite(image)
    n = len(table)
    sky = np.full(n, np.nan)
    rms = np.full(n, np.nan)
    method = np.zeros(n, np.int16)
    x, y, a, b, theta = object_ellipses(table, scale, offset)
    rng = np.random.default_rng(seed)
    for i in range(n):
        for name in methods:
            if name == "RING":
                # Most rings turn within a few widths: try a small box first. Rings inside it are the same
                # rings as in the full box, so the result is that of the full search.
                found = None
                if max_radius > FIRST_RADIUS:
                    found = ring_sky(image, usable, x[i], y[i], a[i], b[i], theta[i], ring_width, FIRST_RADIUS)
                if found is None:
                    found = ring_sky(image, usable, x[i], y[i], a[i], b[i], theta[i], ring_width, max_radius)
            else:
                found = box_sky(image, usable, x[i], y[i], rng, box_size, n_boxes, max_radius, min_distance=a[i])
            if found is not None:
                sky[i], rms[i] = found
                method[i] = METHOD_CODES[name]
                break
    return {"BKG_LOCAL": sky.astype(np.float32), "BKG_LOCAL_STD": rms.astype(np.float32), "BKG_METHOD": method}
