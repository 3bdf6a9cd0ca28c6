"""Forced positions: measure at the objects of an external catalogue instead of the detections.

Detection still runs, for its segmentation map (neighbours are masked in
every measurement, as for detected objects). The segmentation is then
relabelled so that forced object ``i`` has label ``i + 1``:

- a detected segment holding one forced position becomes that object's;
- a segment holding several is split between them, each pixel going to the
  nearest forced position (a blend that the external catalogue resolves);
- a segment holding none stays as a neighbour (label above every forced one);
- a forced position on no segment (undetected here) owns no pixel.

Each forced object's second moments come from its pixels (intensity
weighted about their barycentre, as SExtractor's isophotal moments); an
object with fewer than 3 positive pixels gets a round profile of
``default_sigma`` pixels. The measured position (``X_IMAGE``) is the given
one; the windowed position is measured from it as usual.
"""

from __future__ import annotations

import numpy as np

#: Fields of a sep object array that the measurement reads.
FIELDS = ("x", "y", "a", "b", "theta", "cxx", "cyy", "cxy", "x2", "y2", "xy", "errx2", "erry2", "errxy",
          "peak", "npix", "flag", "xmin", "xmax", "ymin", "ymax")


def relabel(seg: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Segmentation map with forced object ``i`` labelled ``i + 1`` (see the module docstring).

    Parameters
    ----------
    seg : numpy.ndarray of int32
        Detection segmentation (0 background, k for detection k).
    x, y : numpy.ndarray
        Forced positions, 0-based pixel coordinates inside the image.
    """
    ny, nx = seg.shape
    n = x.size
    i = np.clip(np.floor(x + 0.5).astype(np.int64), 0, nx - 1)
    j = np.clip(np.floor(y + 0.5).astype(np.int64), 0, ny - 1)
    owner_segment = seg[j, i]
    n_detected = int(seg.max(initial=0))
    # Detected segment -> new label: neighbours keep a label above the forced ones.
    mapping = np.arange(n_detected + 1, dtype=np.int64) + n
    mapping[0] = 0
    holders = np.bincount(owner_segment, minlength=n_detected + 1)
    holders[0] = 0
    single = np.flatnonzero(owner_segment > 0)
    single = single[holders[owner_segment[single]] == 1]
    mapping[owner_segment[single]] = single + 1
    out = mapping[seg].astype(np.int32)
    for segment in np.flatnonzero(holders > 1):
        members = np.flatnonzero(owner_segment == segment)
        rows, cols = np.nonzero(seg == segment)
        d2 = (cols[:, None] - x[members][None, :]) ** 2 + (rows[:, None] - y[members][None, :]) ** 2
        out[rows, cols] = members[np.argmin(d2, axis=1)] + 1
    return out


def forced_objects(seg: np.ndarray, sub: np.ndarray, var, x: np.ndarray, y: np.ndarray,
                   default_sigma: float = 1.6):
    """Object fields (as sep.extract's) of the forced positions, from the relabelled segmentation.

    Parameters
    ----------
    seg : numpy.ndarray
        Relabelled segmentation (:func:`relabel`).
    sub : numpy.ndarray
        Background-subtracted image.
    var : numpy.ndarray or float
        Per-pixel variance, or one value.
    x, y : numpy.ndarray
        Forced positions (0-based).
    default_sigma : float
        Gaussian sigma (pixels) of an object with fewer than 3 positive pixels (1.6: a CFIS PSF of
        0.7 arcsec FWHM).

    Returns
    -------
    dict
        The :data:`FIELDS`, one value per forced object.
    """
    n = x.size
    ny, nx = seg.shape
    flat = seg.ravel()
    pixels = np.flatnonzero((flat > 0) & (flat <= n))
    label = flat[pixels].astype(np.int64) - 1
    rows, cols = np.divmod(pixels, nx)
    value = sub.ravel()[pixels].astype(np.float64)
    weight = np.maximum(value, 0.0)
    variance = var.ravel()[pixels].astype(np.float64) if np.ndim(var) else np.full(pixels.size, float(var))

    def total(values):
        return np.bincount(label, weights=values, minlength=n)

    npix = np.bincount(label, minlength=n)
    flux = total(weight)
    positive = np.bincount(label, weights=(weight > 0).astype(float), minlength=n)
    good = (positive >= 3) & (flux > 0)
    safe = np.where(good, flux, 1.0)
    mx = total(weight * cols) / safe
    my = total(weight * rows) / safe
    dx, dy = cols - mx[label], rows - my[label]
    x2 = total(weight * dx * dx) / safe + 1.0 / 12.0  # SExtractor's pixel-size term
    y2 = total(weight * dy * dy) / safe + 1.0 / 12.0
    xy = total(weight * dx * dy) / safe
    errx2 = total(variance * dx * dx) / safe**2
    erry2 = total(variance * dy * dy) / safe**2
    errxy = total(variance * dx * dy) / safe**2
    s2 = float(default_sigma) ** 2
    x2, y2, xy = np.where(good, x2, s2), np.where(good, y2, s2), np.where(good, xy, 0.0)
    errx2, erry2, errxy = (np.where(good, e, 0.0) for e in (errx2, erry2, errxy))
    half_sum, half_diff = 0.5 * (x2 + y2), np.sqrt(0.25 * (x2 - y2) ** 2 + xy**2)
    a = np.sqrt(half_sum + half_diff)
    b = np.sqrt(np.maximum(half_sum - half_diff, 1e-6))
    theta = 0.5 * np.arctan2(2.0 * xy, x2 - y2)
    det = np.maximum(x2 * y2 - xy**2, 1e-12)
    peak = np.zeros(n)
    np.maximum.at(peak, label, value)
    centre = sub[np.clip(np.floor(y + 0.5).astype(np.int64), 0, ny - 1),
                 np.clip(np.floor(x + 0.5).astype(np.int64), 0, nx - 1)]
    peak = np.where(npix > 0, peak, centre)
    big = np.iinfo(np.int64).max
    xmin, ymin = np.full(n, big), np.full(n, big)
    xmax, ymax = np.full(n, -1), np.full(n, -1)
    np.minimum.at(xmin, label, cols)
    np.maximum.at(xmax, label, cols)
    np.minimum.at(ymin, label, rows)
    np.maximum.at(ymax, label, rows)
    ix, iy = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    empty = npix == 0
    xmin, xmax = np.where(empty, ix, xmin), np.where(empty, ix, xmax)
    ymin, ymax = np.where(empty, iy, ymin), np.where(empty, iy, ymax)
    flag = np.zeros(n, np.int64)  # no deblending flags: the external catalogue decides the objects
    return {"x": x.astype(np.float64), "y": y.astype(np.float64), "a": a, "b": b, "theta": theta,
            "cxx": y2 / det, "cyy": x2 / det, "cxy": -2.0 * xy / det, "x2": x2, "y2": y2, "xy": xy,
            "errx2": errx2, "erry2": erry2, "errxy": errxy, "peak": peak, "npix": npix, "flag": flag,
            "xmin": xmin, "xmax": xmax, "ymin": ymin, "ymax": ymax}
