"""Cutting postage stamps and local WCS Jacobians, vectorised over objects.

Centre convention (used by every stamp the pipeline writes)
------------------------------------------------------------
Positions are FITS pixel coordinates (1-based: the centre of the first
pixel is ``x = 1``). Pixel ``i`` (0-based array index) covers
``i + 0.5 <= x < i + 1.5``. The stamp's central pixel (array index
``size // 2`` on both axes) is the pixel *containing* the position::

    ix = floor(x - 0.5)        # 0-based column of the central pixel
    dx = x - (ix + 1)          # sub-pixel offset, -0.5 <= dx < 0.5

so the object sits at ``(row, col) = (size // 2 + dy, size // 2 + dx)``
in the stamp's 0-based array indices. ``dx`` and ``dy`` are returned
(and stored) so downstream fits know the true centre. ShapePipe rounded
``x - 1`` with ``numpy.round`` (half to even): the same pixel except for
positions exactly on a pixel border.

Pixels of a stamp that fall outside the image are filled with a given value
and reported in a boolean ``missing`` array.
"""

from __future__ import annotations

import numpy as np

#: Default finite-difference step (pixels) of :func:`local_jacobians`.
JACOBIAN_STEP = 0.5


def check_stamp_size(size) -> int:
    """Return ``size`` as an int, or raise ValueError if it is not a positive odd integer."""
    value = int(size)
    if value != size or value < 1 or value % 2 == 0:
        raise ValueError(f"stamp size must be a positive odd integer, got {size!r}")
    return value


def central_pixels(x, y):
    """Central pixel and sub-pixel offset of stamps around FITS positions.

    Parameters
    ----------
    x, y : array_like
        FITS (1-based) pixel positions.

    Returns
    -------
    ix, iy : numpy.ndarray of int64
        0-based column and row of the pixel containing each position.
    dx, dy : numpy.ndarray of float
        Offset of the position from that pixel's centre, in ``[-0.5, 0.5)``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ix = np.floor(x - 0.5).astype(np.int64)
    iy = np.floor(y - 0.5).astype(np.int64)
    return ix, iy, x - (ix + 1), y - (iy + 1)


def stamps_inside(shape, ix, iy, size) -> np.ndarray:
    """True for stamps that lie entirely inside an image of ``shape`` (rows, cols)."""
    half = size // 2
    ny, nx = shape
    ix = np.asarray(ix)
    iy = np.asarray(iy)
    return (ix - half >= 0) & (ix + half < nx) & (iy - half >= 0) & (iy + half < ny)


def cut_stamps(image, ix, iy, size, fill=0, dtype=None):
    """Stamps of ``image`` centred on pixels ``(iy, ix)``.

    Stamps fully inside the image are taken from a strided window view (one
    block copy each, straight into the result when all are inside); stamps
    crossing the border are gathered with index arrays and their outside
    pixels set to ``fill``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (rows, cols).
    ix, iy : array_like of int
        0-based central column and row of each stamp (see :func:`central_pixels`).
    size : int
        Odd stamp side in pixels.
    fill : scalar
        Value of pixels outside the image.
    dtype : numpy.dtype, optional
        Output type (default: the image's).

    Returns
    -------
    stamps : numpy.ndarray
        ``(n, size, size)``.
    missing : numpy.ndarray of bool
        ``(n, size, size)``: True where the pixel is outside the image.
    """
    size = check_stamp_size(size)
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    ix = np.atleast_1d(np.asarray(ix, dtype=np.int64))
    iy = np.atleast_1d(np.asarray(iy, dtype=np.int64))
    n = ix.size
    half = size // 2
    dtype = np.dtype(dtype or image.dtype)
    missing = np.zeros((n, size, size), dtype=bool)
    inside = stamps_inside(image.shape, ix, iy, size)
    fits_window = image.shape[0] >= size and image.shape[1] >= size
    if n and fits_window and dtype == image.dtype:
        # One gather straight into the result; stamps crossing the border take a
        # window clipped to the image here and are redone below.
        windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
        out = windows[np.clip(iy - half, 0, image.shape[0] - size), np.clip(ix - half, 0, image.shape[1] - size)]
    else:
        out = np.empty((n, size, size), dtype=dtype)
        if n == 0:
            return out, missing
        if inside.any() and fits_window:
            windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
            out[inside] = windows[iy[inside] - half, ix[inside] - half]
    edge = np.flatnonzero(~inside)
    if edge.size:
        offsets = np.arange(size) - half
        rows = iy[edge, None] + offsets  # (m, size)
        cols = ix[edge, None] + offsets
        row_ok = (rows >= 0) & (rows < image.shape[0])
        col_ok = (cols >= 0) & (cols < image.shape[1])
        gathered = image[np.clip(rows, 0, image.shape[0] - 1)[:, :, None],
                         np.clip(cols, 0, image.shape[1] - 1)[:, None, :]]
        outside = ~(row_ok[:, :, None] & col_ok[:, None, :])
        gathered = np.where(outside, fill, gathered)
        out[edge] = gathered
        missing[edge] = outside
    return out, missing


def local_jacobians(wcs, x, y, step: float = JACOBIAN_STEP) -> np.ndarray:
    """Local WCS Jacobians at FITS positions, distortion included.

    Central finite differences of ``wcs.all_pix2world`` (so SIP and TPV
    terms are included), projected on the tangent plane at each position:
    ``u = -(RA - RA0) cos(Dec0)`` (towards the west) and ``v = Dec - Dec0``
    (north), in arcsec, as GalSim's ``FitsWCS.jacobian`` (which ShapePipe's
    ngmix stage used).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    x, y : array_like
        FITS (1-based) pixel positions.
    step : float
        Half-width of the difference in pixels.

    Returns
    -------
    numpy.ndarray
        ``(n, 2, 2)``: ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` in arcsec/pixel.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    n = x.size
    # One call for the four neighbours of every position.
    px = np.concatenate([x + step, x - step, x, x])
    py = np.concatenate([y, y, y + step, y - step])
    ra, dec = wcs.all_pix2world(px, py, 1)
    ra = ra.reshape(4, n)
    dec = dec.reshape(4, n)
    dec0 = 0.5 * (dec[0] + dec[1])
    cos_dec = np.cos(np.deg2rad(dec0))
    # Wrap RA differences into (-180, 180] so positions near RA = 0 work.
    dra_x = (ra[0] - ra[1] + 180.0) % 360.0 - 180.0
    dra_y = (ra[2] - ra[3] + 180.0) % 360.0 - 180.0
    scale = 3600.0 / (2.0 * step)
    jac = np.empty((n, 2, 2))
    jac[:, 0, 0] = -dra_x * cos_dec * scale
    jac[:, 0, 1] = -dra_y * cos_dec * scale
    jac[:, 1, 0] = (dec[0] - dec[1]) * scale
    jac[:, 1, 1] = (dec[2] - dec[3]) * scale
    return jac
