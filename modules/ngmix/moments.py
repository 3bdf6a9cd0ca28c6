"""Adaptive moments, noise level and size conventions.

Size conventions (ngmix's): ``T = Iuu + Ivv`` in arcsec^2, ``T = 2 sigma^2``
for a round Gaussian. ShapePipe's catalogue column ``T`` holds instead the
half-light radius of the fitted Gaussian (its fit parameter), in arcsec:
``r50 = sqrt(2 ln 2) sigma = sqrt(ln 2 * T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

LN2 = np.log(2.0)
MAD_TO_SIGMA = 1.482602218505602


def T_to_r50(T):
    """Half-light radius (arcsec) of a Gaussian of size ``T`` (arcsec^2).

    Negative ``T`` (allowed for a fit convolved with a PSF) gives a negative
    radius of the same magnitude, so the ordering of sizes is kept.
    """
    T = np.asarray(T, dtype=float)
    return np.sign(T) * np.sqrt(LN2 * np.abs(T))


def T_err_to_r50_err(T, T_err):
    """Propagate an error on ``T`` to the half-light radius."""
    T = np.asarray(T, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(LN2) * np.asarray(T_err) / (2.0 * np.sqrt(np.abs(T)))


def r50_to_T(r50):
    """Inverse of :func:`T_to_r50` (for positive radii)."""
    r50 = np.asarray(r50, dtype=float)
    return np.sign(r50) * r50 ** 2 / LN2


@njit(cache=True)
def _select(values, k):
    """Partially order ``values`` in place so that ``values[k]`` is its k-th smallest (no NaN)."""
    low, high = 0, values.size - 1
    while high > low:
        # Median-of-three pivot, then Hoare partition.
        mid = (low + high) // 2
        a, b, c = values[low], values[mid], values[high]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = low, high
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if k <= j:
            high = j
        elif k >= i:
            low = i
        else:
            return


@njit(cache=True)
def _median_nb(values):
    """Median of a flat float array, reordering it in place; NaN if any is NaN."""
    n = values.size
    for i in range(n):
        if np.isnan(values[i]):
            return np.nan
    half = n // 2
    _select(values, half)
    upper = values[half]
    if n % 2:
        return upper
    # Everything left of ``half`` is not larger: the largest of them is the other middle value.
    lower = values[0]
    for i in range(1, half):
        lower = max(lower, values[i])
    return (lower + upper) / 2.0


def _median(values):
    """``np.median`` of a flat float array (the same value: an order statistic), compiled; NaN if any is NaN."""
    return _median_nb(np.array(values, dtype=float).ravel())


@njit(cache=True)
def _sigma_mad_nb(values):
    work = values.copy()
    centre = _median_nb(work)
    for i in range(values.size):
        work[i] = abs(values[i] - centre)
    return MAD_TO_SIGMA * _median_nb(work)


def sigma_mad(values):
    """Noise sigma from the median absolute deviation."""
    values = np.ascontiguousarray(values, dtype=float).ravel()
    if values.size == 0:
        return np.nan
    return float(_sigma_mad_nb(values))


@dataclass
class Moments:
    """Adaptive moments of a stamp (pixel units).

    Attributes
    ----------
    row, col : float
        Centroid (0-based pixel coordinates).
    sigma : float
        Size ``det(M)^(1/4)`` in pixels.
    e1, e2 : float
        Distortion ellipticity in the pixel frame.
    amplitude : float
        Amplitude of the best-fit elliptical Gaussian (its total flux).
    """

    row: float
    col: float
    sigma: float
    e1: float
    e2: float
    amplitude: float


_ALL_PIXELS: dict = {}


def _all_pixels(shape):
    """GalSim integer mask of ones for stamps of ``shape``, made once per shape (HSM only reads it)."""
    used = _ALL_PIXELS.get(shape)
    if used is None:
        import galsim

        array = np.ones(shape, dtype=np.int32)
        array.flags.writeable = False
        used = _ALL_PIXELS[shape] = galsim.ImageI(array, xmin=0, ymin=0)
    return used


def adaptive_moments(image, mask=None, guess_sigma=3.0):
    """Adaptive moments with GalSim's HSM; None when they fail.

    Parameters
    ----------
    image : numpy.ndarray
        Stamp.
    mask : numpy.ndarray of bool, optional
        True for bad pixels (ignored).
    guess_sigma : float, optional
        Starting size in pixels.

    Returns
    -------
    Moments or None
    """
    import galsim

    gs_image = galsim.Image(np.ascontiguousarray(image, dtype=float), xmin=0, ymin=0)
    # The integer mask HSM uses (1: pixel used), given directly: the mask
    # GalSim would make from ``badpix`` (ones, zero where badpix is not
    # zero), without its checks and copies.
    if mask is not None and np.any(mask):
        used = galsim.ImageI(np.ascontiguousarray(np.asarray(mask) == 0, dtype=np.int32), xmin=0, ymin=0)
    else:
        used = _all_pixels(gs_image.array.shape)
    result = galsim.hsm.FindAdaptiveMom(gs_image, weight=used, strict=False, guess_sig=guess_sigma, check=False)
    if result.error_message or result.moments_status != 0:
        return None
    if not (result.moments_sigma > 0 and np.isfinite(result.moments_amp)):
        return None
    centroid, shape = result.moments_centroid, result.observed_shape  # each a new object per access
    return Moments(row=centroid.y, col=centroid.x, sigma=result.moments_sigma,
                   e1=shape.e1, e2=shape.e2, amplitude=result.moments_amp)


def _covariance(moments):
    """``(mxx, myy, mxy, det)`` of the moments' elliptical Gaussian.

    Distortion e with det(M) = sigma^4: M = sigma^2 / sqrt(1-e^2) [[1+e1, e2], [e2, 1-e1]].
    """
    e1, e2 = moments.e1, moments.e2
    sig2 = moments.sigma ** 2
    root = np.sqrt(max(1.0 - e1 * e1 - e2 * e2, 1e-6))
    mxx = sig2 * (1 + e1) / root
    myy = sig2 * (1 - e1) / root
    mxy = sig2 * e2 / root
    return mxx, myy, mxy, mxx * myy - mxy * mxy


def gaussian_image(moments, shape):
    """The elliptical Gaussian described by adaptive ``moments``, drawn on a stamp of ``shape``.

    Its total flux is ``moments.amplitude`` (pixel values sampled at pixel centres).
    """
    ny, nx = shape
    # Broadcast (ny, 1) and (1, nx) offsets: the same values as full grids, without them.
    dy = np.arange(ny, dtype=float)[:, None] - moments.row
    dx = np.arange(nx, dtype=float)[None, :] - moments.col
    mxx, myy, mxy, det = _covariance(moments)
    rho = (myy * dx * dx - 2 * mxy * dx * dy + mxx * dy * dy) / det
    return moments.amplitude / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * rho)


def noise_sigma_outside_object(image, usable, moments=None, threshold=1.2):
    """Noise sigma from the pixels where the object is faint.

    As ShapePipe: a first estimate from every usable pixel; then, if the
    adaptive moments are known, the elliptical Gaussian they describe
    (:func:`gaussian_image`) is drawn and the estimate is repeated on the
    usable pixels where that model is below ``threshold`` times the first
    estimate (if there are at least 10). Compiled passes over the usable
    pixels only, with the same arithmetic as those numpy steps (the
    exponential is numpy's: numba's differs in the last bit for ~5% of
    arguments).

    Parameters
    ----------
    image : numpy.ndarray
        Stamp (background subtracted).
    usable : numpy.ndarray of bool
        Pixels that may be used.
    moments : Moments, optional
        Adaptive moments of the object.
    threshold : float, optional
        Model level, in units of the first noise estimate, below which a
        pixel counts as background.

    Returns
    -------
    float
    """
    image = np.ascontiguousarray(image, dtype=float)
    usable = np.ascontiguousarray(usable, dtype=np.bool_)
    values = np.empty(image.size)
    exponents = np.empty(image.size)
    if moments is None:
        first, count = _usable_mad_nb(image, usable, False, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, values, exponents)
        return float(first)
    mxx, myy, mxy, det = _covariance(moments)  # the covariance of gaussian_image
    first, count = _usable_mad_nb(image, usable, True, float(moments.row), float(moments.col),
                                  float(mxx), float(myy), float(mxy), float(det), values, exponents)
    if count == 0 or not np.isfinite(first) or first <= 0:
        return float(first)
    model = moments.amplitude / (2 * np.pi * np.sqrt(det)) * np.exp(exponents[:count])
    return float(_background_mad_nb(values[:count], model, threshold * first, first))


@njit(cache=True)
def _usable_mad_nb(image, usable, with_model, row, col, mxx, myy, mxy, det, values, exponents):
    """Usable pixels into ``values`` (and, ``with_model``, gaussian_image's ``-0.5 rho`` into ``exponents``).

    Returns their :func:`sigma_mad` (NaN if none) and number. No fastmath:
    the same arithmetic as the numpy expressions.
    """
    ny, nx = image.shape
    count = 0
    for r in range(ny):
        dy = r - row
        for c in range(nx):
            if not usable[r, c]:
                continue
            values[count] = image[r, c]
            if with_model:
                dx = c - col
                # gaussian_image's expression, in its order of operations.
                exponents[count] = -0.5 * ((myy * dx * dx - 2 * mxy * dx * dy + mxx * dy * dy) / det)
            count += 1
    if count == 0:
        return np.nan, 0
    return _sigma_mad_nb(values[:count]), count


@njit(cache=True)
def _background_mad_nb(values, model, level, first):
    """:func:`sigma_mad` of the values whose model is below ``level``; ``first`` if fewer than 10."""
    count = 0
    selected = np.empty(values.size)
    for i in range(values.size):
        if model[i] < level:
            selected[count] = values[i]
            count += 1
    if count < 10:
        return first
    return _sigma_mad_nb(selected[:count])
