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

Models are made in Fourier space in one batch, in single precision
(exponential transform ``(1 + r0^2 k^2)^-3/2``, Gaussian, pixel ``sinc``,
and a phase that puts the centre on the stamp's central pixel, so the
inverse transform needs no re-ordering) and may be centred on the
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


def _phases(k, offset):
    """``exp(-i k offset)`` per object, ``(n, len(k))`` complex64."""
    return np.exp(-1j * np.asarray(offset, float)[:, None] * k[None, :]).astype(np.complex64)


def _exponential_factor(kx, ky, sigma):
    """Fourier transform of exponentials of scale FWHM/16 for PSF ``sigma`` (pixels), float32."""
    r0 = SCALE_PER_FWHM * FWHM_PER_SIGMA * np.asarray(sigma, float).reshape(-1, 1, 1)
    x = (1.0 + r0 ** 2 * (kx[None, None, :] ** 2 + ky[None, :, None] ** 2)).astype(np.float32)
    return 1.0 / (x * np.sqrt(x))


def _to_stamps(fourier, n: int, size: int) -> np.ndarray:
    """Inverse FFT (single precision) and crop: the model's centre was moved to pixel ``size // 2``
    by the phases, so the stamp is the grid's first ``size`` rows and columns."""
    return np.fft.irfft2(fourier, s=(n, n), axes=(-2, -1))[:, :size, :size]


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
        ``(n, size, size)`` float32 (the galaxy is convolved by a
        single-precision FFT: errors ~1e-7 of the peak), pixel response
        included, unit flux (up to what falls outside the stamp).
    """
    sigma = np.atleast_1d(np.asarray(sigma, float))
    count = sigma.size
    dx = np.broadcast_to(np.asarray(dx, float), (count,))
    dy = np.broadcast_to(np.asarray(dy, float), (count,))
    # The Gaussian PSF is separable: exact pixel integrals with erf.
    psf = np.empty((count, size, size), np.float32)
    np.multiply(_pixel_gaussian_1d(sigma, dy, size)[:, :, None], _pixel_gaussian_1d(sigma, dx, size)[:, None, :],
                out=psf, casting="same_kind")
    n = _grid(size)
    kx, ky = _frequencies(n)
    half = size // 2
    galaxy = np.empty((count, size, size), np.float32)
    for start in range(0, count, CHUNK):
        part = slice(start, start + CHUNK)
        s = sigma[part, None]
        # Gaussian x pixel, one axis at a time, with the shift to the stamp's centre pixel.
        fx = (np.exp(-0.5 * s ** 2 * kx ** 2) * np.sinc(kx / (2 * np.pi))).astype(np.float32) \
            * _phases(kx, dx[part] + half)
        fy = (np.exp(-0.5 * s ** 2 * ky ** 2) * np.sinc(ky / (2 * np.pi))).astype(np.float32) \
            * _phases(ky, dy[part] + half)
        fourier = fy[:, :, None] * fx[:, None, :]
        fourier *= _exponential_factor(kx, ky, sigma[part])
        galaxy[part] = _to_stamps(fourier, n, size)
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
        ``(n, size, size)`` float32 (single-precision FFTs).
    """
    psf_stamps = np.asarray(psf_stamps)
    count, m, _ = psf_stamps.shape
    sigma = np.atleast_1d(np.asarray(sigma, float))
    dx = np.broadcast_to(np.asarray(dx, float), (count,))
    dy = np.broadcast_to(np.asarray(dy, float), (count,))
    n = max(_grid(size), _grid(m))
    kx, ky = _frequencies(n)
    index = (np.arange(m) - m // 2) % n
    half = size // 2
    psf = np.empty((count, size, size), np.float32)
    galaxy = np.empty((count, size, size), np.float32)
    for start in range(0, count, CHUNK):
        part = slice(start, start + CHUNK)
        # Each PSF stamp on the periodic grid, centre at index 0.
        grid = np.zeros((psf_stamps[part].shape[0], n, n), np.float32)
        grid[:, index[:, None], index[None, :]] = psf_stamps[part]
        fourier = np.fft.rfft2(grid, axes=(-2, -1))
        # Unit sum: the zero-frequency term is the sum.
        total = fourier[:, 0, 0].real
        scale = np.where(total != 0, 1.0 / np.where(total != 0, total, 1.0), 1.0).astype(np.float32)
        phases = _phases(ky, dy[part] + half)[:, :, None] * _phases(kx, dx[part] + half)[:, None, :]
        fourier *= phases * scale[:, None, None]
        psf[part] = _to_stamps(fourier, n, size)
        fourier *= _exponential_factor(kx, ky, sigma[part])
        galaxy[part] = _to_stamps(fourier, n, size)
    return psf, galaxy


#: Objects per chunk of the sums in :func:`spread_model`.
_SUM_CHUNK = 32


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
    g = np.asarray(stamps)
    weight = np.asarray(weights)
    count = g.shape[0]
    pixels = int(np.prod(g.shape[1:]))
    g = g.reshape(count, pixels)
    weight = weight.reshape(count, pixels)
    t = np.asarray(galaxy).reshape(count, pixels)
    p = np.asarray(psf).reshape(count, pixels)
    # Every sum is over usable pixels of products of the masked vectors t, p, g and of
    # t v, p v (v: variance): rows (t, p) of one (n, 5, pixels) array times its columns
    # (p, g, t v, p v), one batched matrix product in double precision. Small chunks
    # keep the buffers (reused) in cache.
    step = max(1, min(count, _SUM_CHUNK))
    vectors = np.empty((step, 5, pixels))
    variance = np.empty((step, pixels))
    sums = np.empty((count, 2, 4))
    any_usable = np.empty(count, bool)
    for start in range(0, count, step):
        part = slice(start, min(start + step, count))
        m = part.stop - start
        gp, wp = g[part], weight[part]
        usable = (gp > MASK_LIMIT) & (wp > 0) & np.isfinite(gp) & np.isfinite(wp)
        any_usable[part] = usable.any(axis=1)
        v = vectors[:m]
        np.multiply(t[part], usable, out=v[:, 0])
        np.multiply(p[part], usable, out=v[:, 1])
        v[:, 2] = 0.0
        np.copyto(v[:, 2], gp, where=usable)
        var = variance[:m]
        var[...] = 0.0
        np.divide(1.0, wp, out=var, where=usable)
        np.multiply(v[:, :2], var[:, None, :], out=v[:, 3:])
        np.matmul(v[:, :2], v[:, 1:].transpose(0, 2, 1), out=sums[part])
    tp, tg, tvt, tvp = sums[:, 0, 0], sums[:, 0, 1], sums[:, 0, 2], sums[:, 0, 3]
    pp, pg, pvp = sums[:, 1, 0], sums[:, 1, 1], sums[:, 1, 3]
    flags = np.zeros(count, np.int16)
    ok = (pg > 0) & (pp > 0) & any_usable
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
