"""PSFEx ``.psf`` files: reading, writing and fast evaluation of the PSF.

A ``.psf`` file (PSFEx's own layout, read by PSFEx-aware tools such as
``galsim.des.DES_PSFEx``) has an empty primary HDU and a binary table
``PSF_DATA`` with one row and one column ``PSF_MASK`` of shape
``(ncomponents, ny, nx)`` (``TDIM = (nx, ny, ncomponents)``). Component ``k``
multiplies the monomial ``u**i * v**j`` of the ``k``-th pair in the order
``for j in 0..deg: for i in 0..deg-j``, where ``u = (X - POLZERO1) /
POLSCAL1`` and ``v = (Y - POLZERO2) / POLSCAL2`` are the scaled context
values (``XWIN_IMAGE``, ``YWIN_IMAGE``). The grid step is ``PSF_SAMP``
image pixels and the PSF centre is at pixel ``(nx // 2, ny // 2)``.

PSFEx sets ``POLZERO`` to the middle and ``POLSCAL`` to the extent of the
star positions, so ``|u|, |v| <= 1/2`` is the region covered by stars;
:meth:`PSFModel.evaluate` clamps positions to it by default so a model is
never extrapolated into a corner without stars.

Evaluation resamples the grid to image pixels with a Lanczos-3 kernel
corrected for flux conservation (the kernel galsim uses, so the result
matches ``DES_PSFEx`` drawn with ``method='no_pixel'``), centres the PSF at
a given sub-pixel offset and normalises every stamp to unit sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path

from .aot import Kernels

LANCZOS_ORDER = 3
# Positions evaluated per block: bounds the memory of the batched products.
_BLOCK = 1024


class PSFFileError(ValueError):
    """A file is not a usable PSFEx ``.psf`` file (the message names it)."""


def _lanczos_dc_terms(order: int) -> np.ndarray:
    """Fourier coefficients K(1..5) of the plain Lanczos kernel at integer frequencies.

    They give the first-order correction that makes the interpolated value
    of a constant image exactly constant (galsim's ``conserve_dc``).
    """
    x = np.linspace(-order, order, 120001)
    kernel = np.sinc(x) * np.sinc(x / order)
    terms = np.zeros(6)
    for j in range(1, 6):
        terms[j] = np.trapezoid(kernel * np.cos(2 * np.pi * j * x), x)
    return terms


_DC_TERMS = _lanczos_dc_terms(LANCZOS_ORDER)
_DC_CACHE = {LANCZOS_ORDER: _DC_TERMS}
#: The numba kernels (:mod:`.psfex_kernels`), from their ahead-of-time build for the arguments this
#: module passes (offsets read-only or not): a fresh process draws PSFs without importing numba.
_kernels = Kernels("shapepipe_modules.io.psfex_kernels", {
    "taps": [(offsets, "i8", "f8", "f8[1]", "i8[2]", "f8[3]") for offsets in ("f8[1]", "f8[1,r]")],
    "resample": [("f8[3]", "f8[2]", "i8[2]", "f8[3]", "i8[2]", "f8[3]", "f8[3]")],
})


def lanczos(x: np.ndarray, order: int = LANCZOS_ORDER, conserve_dc: bool = True) -> np.ndarray:
    """Lanczos kernel ``sinc(x) sinc(x/order)``, optionally flux-conserving.

    With ``conserve_dc`` the kernel is divided by the sum of its
    integer-shifted copies (to the fifth harmonic), so a flat image stays
    flat whatever the sub-pixel shift; for order 3 this is galsim's
    ``Lanczos(3, conserve_dc=True)``.
    """
    x = np.asarray(x, dtype=float)
    value = np.sinc(x) * np.sinc(x / order)
    value = np.where(np.abs(x) < order, value, 0.0)
    if conserve_dc:
        if order not in _DC_CACHE:
            _DC_CACHE[order] = _lanczos_dc_terms(order)
        terms = _DC_CACHE[order]
        correction = 1.0 - 2.0 * sum(terms[j] * (1.0 - np.cos(2 * np.pi * j * x)) for j in range(1, 6))
        value = value / correction
    return value


def resampling_matrix(offsets: np.ndarray, out_size: int, grid_size: int, step: float,
                      order: int = LANCZOS_ORDER) -> np.ndarray:
    """Weights taking a PSF grid to an image-pixel stamp along one axis.

    Parameters
    ----------
    offsets : ndarray (n,)
        Sub-pixel position of the PSF centre in each output stamp, relative
        to the stamp's central pixel ``out_size // 2``.
    out_size, grid_size : int
        Pixels of the output stamp and of the PSF grid.
    step : float
        Grid step in image pixels (``PSF_SAMP``).
    order : int
        Lanczos order.

    Returns
    -------
    ndarray (n, out_size, grid_size)
        ``stamp = W_y @ grid @ W_x.T`` for each position.
    """
    offsets = np.asarray(offsets, dtype=float).reshape(-1)
    pixel = np.arange(out_size) - out_size // 2
    # Coordinate of each output pixel on the PSF grid (grid centre at grid_size // 2).
    coordinate = grid_size // 2 + (pixel[None, :] - offsets[:, None]) / step
    # The kernel is zero beyond LANCZOS_ORDER grid steps: evaluate it on those taps only.
    first = np.floor(coordinate).astype(np.int64) - (order - 1)
    taps = first[:, :, None] + np.arange(2 * order)[None, None, :]
    values = lanczos(coordinate[:, :, None] - taps, order)
    inside = (taps >= 0) & (taps < grid_size)
    weights = np.zeros((offsets.size, out_size, grid_size + 1))
    # Taps falling off the grid go to a spare last column, dropped below.
    np.put_along_axis(weights, np.where(inside, taps, grid_size), np.where(inside, values, 0.0), axis=2)
    return weights[:, :, :grid_size]


def resampling_taps(offsets: np.ndarray, out_size: int, grid_size: int, step: float):
    """Non-zero resampling weights along one axis, as first tap index and tap values.

    Returns
    -------
    first : ndarray of int (n, out_size)
        Grid index of the first of the ``2 * LANCZOS_ORDER`` taps of each output pixel.
    values : ndarray (n, out_size, 2 * LANCZOS_ORDER)
        Kernel weights; taps off the grid get zero weight.
    """
    offsets = np.ascontiguousarray(np.asarray(offsets, dtype=float).reshape(-1))
    if _kernels.available():
        first = np.empty((offsets.size, out_size), dtype=np.int64)
        values = np.empty((offsets.size, out_size, 2 * LANCZOS_ORDER))
        _kernels.taps(offsets, int(grid_size), float(step), _DC_TERMS, first, values)
        return first, values
    pixel = np.arange(out_size) - out_size // 2
    coordinate = grid_size // 2 + (pixel[None, :] - offsets[:, None]) / step
    first = np.floor(coordinate).astype(np.int64) - (LANCZOS_ORDER - 1)
    taps = first[:, :, None] + np.arange(2 * LANCZOS_ORDER)[None, None, :]
    values = lanczos(coordinate[:, :, None] - taps)
    values[(taps < 0) | (taps >= grid_size)] = 0.0
    return first, values




def _resample_numpy(basis, terms, first_x, values_x, first_y, values_y, out):
    """Reference implementation of :func:`_resample` (dense matrices)."""
    ncomp, ny, nx = basis.shape
    grids = (terms @ basis.reshape(ncomp, -1)).reshape(-1, ny, nx)
    for first, values, grid_size, name in ((first_x, values_x, nx, "x"), (first_y, values_y, ny, "y")):
        taps = first[:, :, None] + np.arange(values.shape[2])
        weights = np.zeros(first.shape + (grid_size + 1,))
        np.put_along_axis(weights, np.clip(taps, -1, grid_size) % (grid_size + 1), values, axis=2)
        if name == "x":
            weights_x = weights[:, :, :grid_size]
        else:
            weights_y = weights[:, :, :grid_size]
    out[...] = weights_y @ grids @ weights_x.transpose(0, 2, 1)


def warm_up() -> None:
    """Load the kernels (a worker's ``preload``): from their ahead-of-time build, built if missing."""
    _kernels.compiled()


def _resample(basis, terms, first_x, values_x, first_y, values_y, out):
    """The PSF of each position resampled on the output grid (numba kernel, else :func:`_resample_numpy`)."""
    if _kernels.available():
        _kernels.resample(basis, terms, first_x, values_x, first_y, values_y, out)
    else:
        _resample_numpy(basis, terms, first_x, values_x, first_y, values_y, out)




def polynomial_terms(u: np.ndarray, v: np.ndarray, degree: int) -> np.ndarray:
    """Monomials ``u**i v**j`` in PSFEx order (``j`` outer, ``i`` inner), shape (n, nterms)."""
    u = np.asarray(u, dtype=float).reshape(-1)
    v = np.asarray(v, dtype=float).reshape(-1)
    columns = [u**i * v**j for j in range(degree + 1) for i in range(degree + 1 - j)]
    return np.stack(columns, axis=1)


def n_terms(degree: int) -> int:
    """Number of monomials of a 2-D polynomial of the given total degree."""
    return (degree + 1) * (degree + 2) // 2


@dataclass
class PSFModel:
    """A PSFEx pixel-basis PSF model varying as a polynomial of the position.

    Attributes
    ----------
    basis : ndarray (ncomponents, ny, nx)
        ``PSF_MASK``: one image per polynomial term.
    degree : int
        ``POLDEG1`` (0 for a constant PSF).
    zero, scale : tuple of float
        ``POLZERO1/2`` and ``POLSCAL1/2``.
    sampling : float
        ``PSF_SAMP``: grid step in image pixels.
    names : tuple of str
        ``POLNAME1/2``.
    loaded, accepted : int
        Stars read and stars kept in the fit.
    chi2 : float
        Final reduced chi2 of the fit.
    fwhm : float
        ``PSF_FWHM`` in image pixels.
    header : dict
        Further keys written to (or read from) the ``PSF_DATA`` header.
    """

    basis: np.ndarray
    degree: int
    zero: tuple = (0.0, 0.0)
    scale: tuple = (1.0, 1.0)
    sampling: float = 1.0
    names: tuple = ("XWIN_IMAGE", "YWIN_IMAGE")
    loaded: int = 0
    accepted: int = 0
    chi2: float = 0.0
    fwhm: float = 0.0
    header: dict = field(default_factory=dict)

    def __post_init__(self):
        self.basis = np.asarray(self.basis, dtype=float)
        if self.basis.ndim != 3 or self.basis.shape[0] != n_terms(self.degree):
            raise PSFFileError(
                f"PSF basis of shape {self.basis.shape} does not match polynomial degree {self.degree}"
            )

    @property
    def grid_shape(self) -> tuple:
        """(ny, nx) of the PSF grid."""
        return self.basis.shape[1:]

    def scaled_position(self, x, y, clamp: bool = True):
        """Context values ``(u, v)``; clamped to the star-covered range if ``clamp``."""
        u = (np.asarray(x, dtype=float) - self.zero[0]) / self.scale[0]
        v = (np.asarray(y, dtype=float) - self.zero[1]) / self.scale[1]
        if clamp:
            u = np.clip(u, -0.5, 0.5)
            v = np.clip(v, -0.5, 0.5)
        return u, v

    def grid_images(self, x, y, clamp: bool = True) -> np.ndarray:
        """PSF on its own grid (``PSF_SAMP`` steps) at each position, shape (n, ny, nx)."""
        u, v = self.scaled_position(np.atleast_1d(x), np.atleast_1d(y), clamp)
        terms = polynomial_terms(u, v, self.degree)
        ncomp, ny, nx = self.basis.shape
        return (terms @ self.basis.reshape(ncomp, ny * nx)).reshape(-1, ny, nx)

    def evaluate(self, x, y, size: int | None = None, centre=(0.0, 0.0), clamp: bool = True,
                 normalise: bool = True, dtype=np.float64) -> np.ndarray:
        """PSF stamps on the image pixel grid at many positions.

        Parameters
        ----------
        x, y : float or array_like (n,)
            Image positions (1-based, like ``XWIN_IMAGE``).
        size : int, optional
            Stamp side in image pixels (odd); defaults to the grid size.
        centre : (dx, dy), each float or array_like (n,)
            Sub-pixel position of the PSF centre relative to the stamp's
            central pixel ``size // 2`` (e.g. the fractional part of an
            object's position).
        clamp : bool
            Clamp positions to the star-covered range (no extrapolation).
        normalise : bool
            Scale every stamp to unit sum.
        dtype : numpy dtype
            Type of the returned array.

        Returns
        -------
        ndarray (n, size, size)
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        x, y = np.broadcast_arrays(x, y)
        count = x.size
        ny, nx = self.grid_shape
        size = int(size or nx)
        dx = np.broadcast_to(np.asarray(centre[0], dtype=float), (count,))
        dy = np.broadcast_to(np.asarray(centre[1], dtype=float), (count,))
        stamps = np.empty((count, size, size), dtype=dtype)
        for start in range(0, count, _BLOCK):
            block = slice(start, min(start + _BLOCK, count))
            u, v = self.scaled_position(x.ravel()[block], y.ravel()[block], clamp)
            terms = polynomial_terms(u, v, self.degree)
            first_x, values_x = resampling_taps(dx[block], size, nx, self.sampling)
            first_y, values_y = resampling_taps(dy[block], size, ny, self.sampling)
            images = np.empty((terms.shape[0], size, size))
            # Numba pays off for many positions; a few are faster with matrices.
            resample = _resample if terms.shape[0] > 64 else _resample_numpy
            resample(self.basis, terms, first_x, values_x, first_y, values_y, images)
            if normalise:
                images /= images.sum(axis=(1, 2), keepdims=True)
            stamps[block] = images
        return stamps


def write_psf(path, model: PSFModel) -> None:
    """Write a model as a PSFEx ``.psf`` file, atomically."""
    from astropy.io import fits

    basis = np.asarray(model.basis, dtype=np.float32)
    ncomp, ny, nx = basis.shape
    column = fits.Column(name="PSF_MASK", format=f"{basis.size}E", dim=f"({nx}, {ny}, {ncomp})",
                         array=basis[None])
    hdu = fits.BinTableHDU.from_columns([column], name="PSF_DATA")
    header = hdu.header
    cards = [
        ("LOADED", int(model.loaded), "Number of loaded sources"),
        ("ACCEPTED", int(model.accepted), "Number of accepted sources"),
        ("CHI2", float(model.chi2), "Final reduced chi2"),
        ("POLNAXIS", 2, "Number of context parameters"),
        ("POLGRP1", 1, "Polynom group for this context parameter"),
        ("POLNAME1", model.names[0], "Name of this context parameter"),
        ("POLZERO1", float(model.zero[0]), "Offset value for this context parameter"),
        ("POLSCAL1", float(model.scale[0]), "Scale value for this context parameter"),
        ("POLGRP2", 1, "Polynom group for this context parameter"),
        ("POLNAME2", model.names[1], "Name of this context parameter"),
        ("POLZERO2", float(model.zero[1]), "Offset value for this context parameter"),
        ("POLSCAL2", float(model.scale[1]), "Scale value for this context parameter"),
        ("POLNGRP", 1, "Number of context groups"),
        ("POLDEG1", int(model.degree), "Polynom degree for this context group"),
        ("PSF_FWHM", float(model.fwhm), "PSF FWHM in image pixels"),
        ("PSF_SAMP", float(model.sampling), "Sampling step of the PSF data in image pixels"),
        ("PSFNAXIS", 3, "Dimensionality of the PSF data"),
        ("PSFAXIS1", nx, "Number of element along this axis"),
        ("PSFAXIS2", ny, "Number of element along this axis"),
        ("PSFAXIS3", ncomp, "Number of element along this axis"),
    ]
    for key, value, comment in cards:
        header[key] = (value, comment)
    for key, value in model.header.items():
        if key not in header:
            header[key] = value
    with atomic_path(path) as temporary:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(temporary)


_STRUCTURAL = {"XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "TFIELDS",
               "EXTNAME", "TTYPE1", "TFORM1", "TDIM1"}
_MODEL_KEYS = {"LOADED", "ACCEPTED", "CHI2", "POLNAXIS", "POLGRP1", "POLNAME1", "POLZERO1", "POLSCAL1",
               "POLGRP2", "POLNAME2", "POLZERO2", "POLSCAL2", "POLNGRP", "POLDEG1", "PSF_FWHM",
               "PSF_SAMP", "PSFNAXIS", "PSFAXIS1", "PSFAXIS2", "PSFAXIS3"}


_FITS_BLOCK = 2880


def _header_bytes(handle) -> bytes | None:
    """The next FITS header (whole 2880-byte blocks, through the END card), or None at a short read."""
    blocks = []
    while len(blocks) < 100:
        block = handle.read(_FITS_BLOCK)
        if len(block) < _FITS_BLOCK:
            return None
        blocks.append(block)
        if any(block[i:i + 8] == b"END     " for i in range(0, _FITS_BLOCK, 80)):
            return b"".join(blocks)
    return None


def _read_plain_psf_data(path):
    """``(PSF_DATA header, basis)`` of a file laid out as PSFEx writes it, else None.

    That layout: a primary HDU without data, then the ``PSF_DATA`` binary
    table with one row and the single column ``PSF_MASK`` of 32- or 64-bit
    floats, unscaled. Reading it directly (astropy parsing only the table's
    header) is several times faster than opening the table with astropy,
    which counts when thousands of CCD models are read; anything else
    returns None and is read by astropy.
    """
    from astropy.io import fits

    with open(path, "rb") as handle:
        primary = _header_bytes(handle)
        if primary is None or b"NAXIS   =                    0" not in primary:
            return None
        text = _header_bytes(handle)
        if text is None:
            return None
        header = fits.Header.fromstring(text.decode("ascii", "replace"))
        form = str(header.get("TFORM1", "")).strip().upper()
        if (header.get("XTENSION") != "BINTABLE" or header.get("EXTNAME") != "PSF_DATA"
                or header.get("TFIELDS") != 1 or header.get("TTYPE1") != "PSF_MASK" or header.get("NAXIS2") != 1
                or header.get("PCOUNT", 0) != 0 or "TSCAL1" in header or "TZERO1" in header
                or form[-1:] not in ("E", "D")):
            return None
        count = int(form[:-1] or 1)
        dtype = np.dtype(">f4" if form[-1] == "E" else ">f8")
        if header.get("NAXIS1") != count * dtype.itemsize:
            return None
        dims = str(header.get("TDIM1", f"({count})")).strip()
        try:
            shape = tuple(int(v) for v in dims.strip("()").split(","))[::-1]
        except ValueError:
            return None
        if int(np.prod(shape)) != count:
            return None
        data = handle.read(count * dtype.itemsize)
        if len(data) < count * dtype.itemsize:
            return None
    return header, np.frombuffer(data, dtype=dtype).astype(float).reshape(shape)


def read_psf(path) -> PSFModel:
    """Read a PSFEx ``.psf`` file (written by PSFEx or by :func:`write_psf`).

    Raises
    ------
    PSFFileError
        If the file is missing, not FITS, or not a two-context PSFEx model.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        found = _read_plain_psf_data(path)
        if found is not None:
            header, basis = found
        else:
            with fits.open(path, memmap=False) as hdus:
                if "PSF_DATA" not in hdus:
                    raise PSFFileError(f"{path}: no PSF_DATA extension")
                hdu = hdus["PSF_DATA"]
                header = hdu.header
                basis = np.array(hdu.data["PSF_MASK"][0], dtype=float)
    except OSError as error:
        raise PSFFileError(f"{path}: cannot read as FITS ({error})") from error
    except KeyError as error:
        raise PSFFileError(f"{path}: PSF_DATA has no PSF_MASK column") from error
    naxis = header.get("POLNAXIS", 0)
    if naxis == 0:
        degree, zero, scale, names = 0, (0.0, 0.0), (1.0, 1.0), ("XWIN_IMAGE", "YWIN_IMAGE")
    elif naxis == 2 and header.get("POLNGRP", 1) == 1:
        try:
            degree = int(header["POLDEG1"])
            zero = (float(header["POLZERO1"]), float(header["POLZERO2"]))
            scale = (float(header["POLSCAL1"]), float(header["POLSCAL2"]))
            names = (str(header["POLNAME1"]), str(header["POLNAME2"]))
        except KeyError as error:
            raise PSFFileError(f"{path}: PSF_DATA header lacks {error.args[0]}") from None
    else:
        raise PSFFileError(f"{path}: only models of 2 context values in 1 group are supported "
                           f"(POLNAXIS={naxis}, POLNGRP={header.get('POLNGRP')})")
    if basis.ndim == 2:
        basis = basis[None]
    try:
        return PSFModel(
            basis=basis, degree=degree, zero=zero, scale=scale,
            sampling=float(header.get("PSF_SAMP", 1.0)), names=names,
            loaded=int(header.get("LOADED", 0)), accepted=int(header.get("ACCEPTED", 0)),
            chi2=float(header.get("CHI2", 0.0)), fwhm=float(header.get("PSF_FWHM", 0.0)),
            header={k: header[k] for k in header if k not in _STRUCTURAL | _MODEL_KEYS and k},
        )
    except PSFFileError as error:
        raise PSFFileError(f"{path}: {error}") from None
