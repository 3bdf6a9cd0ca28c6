"""SPREAD_MODEL star/galaxy classifier, vectorised over objects.

Definition (Desai et al. 2012; SExtractor; ShapePipe's ``spread_model``):
with ``g`` the object's stamp, ``p`` the PSF model and ``t`` a galaxy model
(the PSF convolved with a circular exponential of scale length
``FWHM / 16``, ``FWHM`` the PSF's), both of unit flux, and ``w`` the mask of
usable pixels (stamp value above -1e29 and weight above 0)::

    SPREAD_MODEL    = t.w.g / p.w.g - t.w.p / p.w.p
    SPREADERR_MODEL = sqrt(tVt (p.w.g)^2 + pVp (t.w.g)^2 - 2 tVp (p.w.g)(t.w.g)) / (p.w.g)^2

where ``a.w.b = sum(a w b)`` and ``aVb = sum(a w b / weight)`` (the pixel
variances are the inverse weights). Stars have ``SPREAD_MODEL`` near 0,
galaxies positive.

PSF models
----------
``gaussian`` (ShapePipe's)
    A Gaussian of the object's PSF ``sigma`` (mean of the epochs' HSM
    sigmas, pixels), integrated over the pixel.
``stamp``
    The object's PSF stamp (mean of the epochs' normalised PSF stamps),
    which keeps the PSF's wings (a Moffat is far from a Gaussian).

Models are made in Fourier space in one batch (exponential transform
``(1 + r0^2 k^2)^-3/2``, Gaussian, pixel ``sinc``) and may be centred on the
object's sub-pixel position; ShapePipe centred them on the stamp's central
pixel, which biases SPREAD_MODEL of stars by up to a few 1e-3 for offsets
of half a pixel.

Failures are flags (``SPREAD_FLAGS``), with NaN values, never fake numbers:
see :data:`FLAGS`.
"""

from __future__ import annotations

import numpy as np

#: Bit flags of SPREAD_FLAGS.
FLAG_NO_PSF = 1
FLAG_NO_OVERLAP = 2
FLAG_NO_ERROR = 4
FLAGS = {
    FLAG_NO_PSF: "no PSF for the object (no usable epoch in the PSF store)",
    FLAG_NO_OVERLAP: "no usable pixel, or the object does not correlate with the PSF (p.w.g <= 0)",
    FLAG_NO_ERROR: "error undefined (variance term <= 0)",
}
#: SExtractor's value of unusable VIGNET pixels is -1e30.
MASK_LIMIT = -1e29
#: Gaussian FWHM / sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Exponential scale length as a fraction of the PSF FWHM.
SCALE_PER_FWHM = 1.0 / 16.0


def decode_flags(value: int) -> list[str]:
    """Descriptions of the bits set in a SPREAD_FLAGS value."""
    return [text for bit, text in FLAGS.items() if int(value) & bit]


#: Objects per internal chunk of the model computation (keeps arrays in cache).
CHUNK = 128


def _grid(size: int) -> int:
    """FFT side: the stamp plus a margin against wrap-around, a product of 2, 3 and 5."""
    n = size + 12
    while True:
        m = n
        for factor in (2, 3, 5):
            while m % factor == 0:
                m //= factor
        if m == 1 and n % 2 == 0:
            return n
        n += 1


def _frequencies(n: int):
    ky = 2.0 * np.pi * np.fft.fftfreq(n)
    kx = 2.0 * np.pi * np.fft.rfftfreq(n)
    return kx, ky


def _crop(images, size: int) -> np.ndarray:
    """Stamp pixel j is at offset j - size//2 from the periodic grid's origin."""
    half = size // 2
    top = images[:, -half:, :] if half else images[:, :0, :]
    rows = np.concatenate([top, images[:, :size - half, :]], axis=1)
    left = rows[:, :, -half:] if half else rows[:, :, :0]
    return np.concatenate([left, rows[:, :, :size - half]], axis=2)


def _exponential_factor(kx, ky, sigma):
    """Fourier transform of exponentials of scale FWHM/16 for PSF ``sigma`` (pixels)."""
    r0 = SCALE_PER_FWHM * FWHM_PER_SIGMA * np.asarray(sigma, float).reshape(-1, 1, 1)
    x = 1.0 + r0 ** 2 * (kx[None, None, :] ** 2 + ky[None, :, None] ** 2)
    return 1.0 / (x * np.sqrt(x))


def _pixel_gaussian_1d(sigma, offset, size):
    """Pixel-integrated unit Gaussians along one axis, ``(n, size)``."""
    from scipy.special import ndtr

    centres = np.arange(size) - size // 2 - np.asarray(offset, float)[:, None]
    s = np.asarray(sigma, float)[:, None]
    return ndtr((centres + 0.5) / s) - ndtr((centres - 0.5) / s)


def gaussian_models(sigma, size: int, dx=0.0, dy=0.0):
    """PSF and galaxy models for Gaussian PSFs.

    Parameters
    ----------
    sigma : array_like
        PSF sigma per object, pixels.
    size : int
        Stamp side.
    dx, dy : array_like
        Model centre offset from the central pixel (pixels).

    Returns
    -------
    psf, galaxy : numpy.ndarray
        ``(n, size, size)``, pixel response included, unit flux (up to
        what falls outside the stamp).
    """
    sigma = np.atleast_1d(np.asarray(sigma, float))
    count = sigma.size
    dx = np.broadcast_to(np.asarray(dx, float), (count,))
    dy = np.broadcast_to(np.asarray(dy, float), (count,))
    # The Gaussian PSF is separable: exact pixel integrals with erf.
    psf = _pixel_gaussian_1d(sigma, dy, size)[:, :, None] * _pixel_gaussian_1d(sigma, dx, size)[:, None, :]
    n = _grid(size)
    kx, ky = _frequencies(n)
    pixel_x = np.sinc(kx / (2 * np.pi))
    pixel_y = np.sinc(ky / (2 * np.pi))
    galaxy = np.empty((count, size, size))
    for start in range(0, count, CHUNK):
        part = slice(start, start + CHUNK)
        s = sigma[part, None]
        fx = np.exp(-0.5 * s ** 2 * kx ** 2 - 1j * kx * dx[part, None]) * pixel_x
        fy = np.exp(-0.5 * s ** 2 * ky ** 2 - 1j * ky * dy[part, None]) * pixel_y
        fourier = fy[:, :, None] * fx[:, None, :] * _exponential_factor(kx, ky, sigma[part])
        galaxy[part] = _crop(np.fft.irfft2(fourier, s=(n, n), axes=(-2, -1)), size)
    return psf, galaxy


def stamp_models(psf_stamps, sigma, size: int, dx=0.0, dy=0.0):
    """PSF and galaxy models from PSF stamps (pixel response already in them).

    Parameters
    ----------
    psf_stamps : array_like
        ``(n, m, m)`` PSF stamps centred on their central pixel (``m`` odd).
    sigma : array_like
        PSF sigma per object (pixels, e.g. HSM's): sets the exponential's
        scale length ``2.3548 sigma / 16``.
    size : int
        Output stamp side.
    dx, dy : array_like
        Model centre offset from the central pixel (pixels).

    Returns
    -------
    psf, galaxy : numpy.ndarray
        ``(n, size, size)``.
    """
    psf_stamps = np.asarray(psf_stamps, float)
    count, m, _ = psf_stamps.shape
    sigma = np.atleast_1d(np.asarray(sigma, float))
    dx = np.broadcast_to(np.asarray(dx, float), (count,))
    dy = np.broadcast_to(np.asarray(dy, float), (count,))
    n = max(_grid(size), _grid(m))
    kx, ky = _frequencies(n)
    index = (np.arange(m) - m // 2) % n
    psf = np.empty((count, size, size))
    galaxy = np.empty((count, size, size))
    for start in range(0, count, CHUNK):
        part = slice(start, start + CHUNK)
        # Each PSF stamp on the periodic grid, centre at index 0, unit sum.
        grid = np.zeros((psf_stamps[part].shape[0], n, n))
        grid[:, index[:, None], index[None, :]] = psf_stamps[part]
        total = grid.sum(axis=(1, 2))
        grid /= np.where(total != 0, total, 1.0)[:, None, None]
        shift = (np.exp(-1j * ky * dy[part, None])[:, :, None] * np.exp(-1j * kx * dx[part, None])[:, None, :])
        fourier = np.fft.rfft2(grid, axes=(-2, -1)) * shift
        psf[part] = _crop(np.fft.irfft2(fourier, s=(n, n), axes=(-2, -1)), size)
        fourier *= _exponential_factor(kx, ky, sigma[part])
        galaxy[part] = _crop(np.fft.irfft2(fourier, s=(n, n), axes=(-2, -1)), size)
    return psf, galaxy


def spread_model(stamps, weights, psf, galaxy):
    """SPREAD_MODEL, SPREADERR_MODEL and SPREAD_FLAGS of a batch of objects.

    Parameters
    ----------
    stamps : array_like
        ``(n, size, size)`` object stamps (SExtractor's VIGNET; values below
        -1e29 are masked).
    weights : array_like
        ``(n, size, size)`` inverse-variance weights.
    psf, galaxy : array_like
        ``(n, size, size)`` models (:func:`gaussian_models`, :func:`stamp_models`).

    Returns
    -------
    sm, sm_err : numpy.ndarray of float64
        NaN where flagged (see :data:`FLAGS`).
    flags : numpy.ndarray of int16
    """
    g = np.asarray(stamps, float)
    weight = np.asarray(weights, float)
    p = np.asarray(psf, float)
    t = np.asarray(galaxy, float)
    usable = (g > MASK_LIMIT) & (weight > 0) & np.isfinite(g) & np.isfinite(weight)
    g = np.where(usable, g, 0.0)
    variance = np.where(usable, 1.0 / np.where(usable, weight, 1.0), 0.0)
    axes = (1, 2)
    tg = np.einsum("nij,nij->n", t, g)
    pg = np.einsum("nij,nij->n", p, g)
    pw = np.where(usable, p, 0.0)
    tw = np.where(usable, t, 0.0)
    tp = (tw * p).sum(axis=axes)
    pp = (pw * p).sum(axis=axes)
    tvt = (tw * tw * variance).sum(axis=axes)
    pvp = (pw * pw * variance).sum(axis=axes)
    tvp = (tw * pw * variance).sum(axis=axes)
    flags = np.zeros(g.shape[0], np.int16)
    ok = (pg > 0) & (pp > 0) & usable.any(axis=axes)
    flags[~ok] |= FLAG_NO_OVERLAP
    with np.errstate(divide="ignore", invalid="ignore"):
        sm = np.where(ok, tg / pg - tp / pp, np.nan)
        err2 = tvt * pg ** 2 + pvp * tg ** 2 - 2.0 * tvp * pg * tg
        good_err = ok & (err2 > 0)
        sm_err = np.where(good_err, np.sqrt(np.where(good_err, err2, 1.0)) / pg ** 2, np.nan)
    flags[ok & ~good_err] |= FLAG_NO_ERROR
    return sm, sm_err, flags


def classify(sm, sm_err, star_thresh=0.003, gal_thresh=0.01) -> np.ndarray:
    """ShapePipe's spread-model class: 0 star, 1 galaxy, 2 other.

    ``c = SPREAD_MODEL + 2 SPREADERR_MODEL``; star if ``|c| < star_thresh``,
    galaxy if ``c > gal_thresh`` (NaN gives 2).
    """
    c = np.asarray(sm, float) + 2.0 * np.asarray(sm_err, float)
    out = np.full(c.shape, 2, np.int16)
    with np.errstate(invalid="ignore"):
        out[np.abs(c) < star_thresh] = 0
        out[c > gal_thresh] = 1
    return out
