"""Forced PSF and aperture photometry at known positions on one CCD.

For each position, a ``STAMP_SIZE`` square of pixels around it is fitted
with ``F P + b``: ``P`` the PSF model at that position (centred at its
sub-pixel offset) normalised to the model's total flux, ``b`` a constant
background. Both are linear, so the fit is a weighted 2 x 2 least-squares
solution per object, vectorised over all objects of the CCD. Weights are the
inverse pixel variances: first the CCD weight map (background noise), then
once more with the object's own shot noise (``F P / gain``) added, so that
bright objects get the error their photons give. ``FLUXERR_PSF`` is the
square root of the flux's variance in the inverse normal matrix.

The aperture flux is the sum of ``data - b`` over the pixels whose centres
lie within ``aperture_radius`` of the position (masked pixels replaced by
the fitted model); its variance sums the pixel variances and the
background's. Neighbours: the fitted models of the other objects are
subtracted from each stamp and the fit repeated (see
:func:`forced_photometry`).
"""

from __future__ import annotations

import numpy as np

#: Flag bits of a forced measurement.
FLAG_EDGE = 1        # the stamp runs off the CCD
FLAG_MASKED = 2      # masked (zero-weight or flagged) pixels hold more than 5% of the PSF
FLAG_NO_FIT = 4      # singular fit (no usable pixel)
FLAG_NEGATIVE = 8    # PSF flux <= 0: no magnitude
FLAG_BLENDED = 16    # another tile object within the blend radius (set by forced.measure_tile)
MASKED_PSF_FRACTION = 0.05


def model_total(model, x, y) -> np.ndarray:
    """Total flux of the unnormalised PSF model at each position (sum over its whole grid)."""
    from shapepipe_modules.io.psfex_file import polynomial_terms

    u, v = model.scaled_position(np.atleast_1d(x), np.atleast_1d(y))
    terms = polynomial_terms(u, v, model.degree)
    # Resampling conserves the sum of the grid, which is sampled every PSF_SAMP image pixels.
    return terms @ model.basis.sum(axis=(1, 2)) / float(model.sampling) ** 2


def cut_stamps(array, x, y, size: int, fill=0.0):
    """Square stamps of ``array`` centred on the pixels nearest to FITS positions ``(x, y)``.

    Returns
    -------
    stamps : ndarray (n, size, size)
    inside : ndarray of bool (n, size, size)
        Pixels on the array.
    """
    half = size // 2
    ix = np.rint(np.asarray(x, float)).astype(np.int64) - 1
    iy = np.rint(np.asarray(y, float)).astype(np.int64) - 1
    offsets = np.arange(-half, half + 1)
    rows = iy[:, None] + offsets[None, :]
    cols = ix[:, None] + offsets[None, :]
    ok_r = (rows >= 0) & (rows < array.shape[0])
    ok_c = (cols >= 0) & (cols < array.shape[1])
    inside = ok_r[:, :, None] & ok_c[:, None, :]
    if ok_r.all() and ok_c.all():  # the common case: no stamp runs off the array
        return array[rows[:, :, None], cols[:, None, :]], inside
    stamps = array[np.clip(rows, 0, array.shape[0] - 1)[:, :, None], np.clip(cols, 0, array.shape[1] - 1)[:, None, :]]
    return np.where(inside, stamps, fill), inside


def _fit(data, ivar, psf):
    """Weighted least squares of ``F psf + b`` on every stamp: flux, background and their variances."""
    a11 = np.einsum("nij,nij,nij->n", ivar, psf, psf)
    a12 = np.einsum("nij,nij->n", ivar, psf)
    a22 = ivar.sum(axis=(1, 2))
    b1 = np.einsum("nij,nij,nij->n", ivar, psf, data)
    b2 = np.einsum("nij,nij->n", ivar, data)
    det = a11 * a22 - a12 * a12
    ok = det > 0
    safe = np.where(ok, det, 1.0)
    flux = np.where(ok, (a22 * b1 - a12 * b2) / safe, np.nan)
    bkg = np.where(ok, (a11 * b2 - a12 * b1) / safe, np.nan)
    return flux, bkg, np.where(ok, a22 / safe, np.nan), np.where(ok, a11 / safe, np.nan), ok


def overlapping_pairs(x, y, size: int):
    """Directed pairs ``(i, j)`` of objects whose stamps overlap, and the offsets of ``j``'s stamp."""
    from scipy.spatial import cKDTree

    ix = np.rint(np.asarray(x, float)).astype(np.int64)
    iy = np.rint(np.asarray(y, float)).astype(np.int64)
    if ix.size < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    pairs = cKDTree(np.c_[ix, iy]).query_pairs(size - 1 + 1e-6, p=np.inf, output_type="ndarray")
    target = np.concatenate([pairs[:, 0], pairs[:, 1]])
    source = np.concatenate([pairs[:, 1], pairs[:, 0]])
    return target, source, ix[source] - ix[target], iy[source] - iy[target]


def _neighbour_light(flux, psf, pairs, n):
    """In each stamp, the fitted PSF models of the overlapping objects (their light to subtract)."""
    target, source, shift_x, shift_y = pairs
    size = psf.shape[1]
    light = np.zeros((n, size, size))
    if target.size == 0:
        return light
    index = np.arange(size)
    rows = index[None, :] - shift_y[:, None]            # row of the source stamp seen at each target row
    cols = index[None, :] - shift_x[:, None]
    valid = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    gathered = psf[source[:, None, None], np.clip(rows, 0, size - 1)[:, :, None], np.clip(cols, 0, size - 1)[:, None, :]]
    np.add.at(light, target, np.where(valid, gathered, 0.0) * np.nan_to_num(flux[source])[:, None, None])
    return light


def forced_photometry(image, weight, model, x, y, gain: float, stamp_size: int = 21, aperture_radius: float = 5.0,
                      flag=None, deblend_iterations: int = 2, psf=None) -> dict:
    """PSF-fit and aperture fluxes at FITS positions on one CCD.

    Neighbours: after a first fit of every object alone, each object's stamp
    has the fitted models of the other objects subtracted and is fitted
    again (``deblend_iterations`` times; a Jacobi iteration of the joint
    linear fit of all the point sources).

    Parameters
    ----------
    image, weight : ndarray (ny, nx)
        CCD pixels (ADU) and inverse variances (0: unusable).
    model : PSFModel
        The CCD's PSF model (:func:`shapepipe_modules.io.psfex_file.read_psf`).
    x, y : array_like (n,)
        1-based positions of every object measured on the CCD.
    gain : float
        e-/ADU, for the objects' shot noise (<= 0: none).
    stamp_size : int
        Side of the fitted square (odd).
    aperture_radius : float
        Pixels.
    flag : ndarray (ny, nx), optional
        Non-zero pixels are unusable.
    deblend_iterations : int
        Refits with the neighbours' models subtracted (0: each object alone).
    psf : ndarray (n, stamp_size, stamp_size), optional
        PSF stamps to fit instead of the model's (unit total flux, centred
        as the model's would be): e.g. the simulation's true PSF, to tell the
        model's errors from the others. ``model`` is then not used.

    Returns
    -------
    dict of ndarray (n,)
        ``FLUX_PSF, FLUXERR_PSF, BKG_PSF, CHI2_PSF`` (reduced), ``FLUX_APER,
        FLUXERR_APER, FLAGS``.
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    n = x.size
    size = int(stamp_size)
    data, inside = cut_stamps(image, x, y, size)
    w, _ = cut_stamps(weight, x, y, size)
    w = np.where(inside & np.isfinite(data), np.maximum(w, 0.0), 0.0)
    if flag is not None:
        bad, _ = cut_stamps(flag, x, y, size, fill=1)
        w = np.where(bad != 0, 0.0, w)
    data = np.where(w > 0, data, 0.0)
    dx = x - np.rint(x)
    dy = y - np.rint(y)
    if psf is None:
        psf = model.evaluate(x, y, size=size, centre=(dx, dy), normalise=False)
        psf /= model_total(model, x, y)[:, None, None]
    else:
        psf = np.asarray(psf, float).reshape(n, size, size)

    usable = w > 0
    variance_bkg = np.where(usable, 1.0 / np.where(usable, w, 1.0), 0.0)
    flux, bkg, flux_var, bkg_var, ok = _fit(data, w, psf)
    neighbours = np.zeros_like(data)
    pairs = overlapping_pairs(x, y, size) if deblend_iterations > 0 else (np.zeros(0, np.int64),) * 4
    crowded = np.unique(pairs[0])  # only objects with an overlapping stamp are refitted
    for _ in range(max(int(deblend_iterations), 0)):
        if crowded.size == 0:
            break
        neighbours = np.where(usable, _neighbour_light(flux, psf, pairs, n), 0.0)
        refit = _fit(data[crowded] - neighbours[crowded], w[crowded], psf[crowded])
        for array, value in zip((flux, bkg, flux_var, bkg_var, ok), refit):
            array[crowded] = value
    ivar = w
    if gain > 0:
        # Once more with the object's own shot noise in the variance (the fitted model, never negative).
        source = np.maximum(np.nan_to_num(flux)[:, None, None] * psf, 0.0) / gain
        with np.errstate(divide="ignore"):
            ivar = np.where(usable, 1.0 / (variance_bkg + source), 0.0)
        flux, bkg, flux_var, bkg_var, ok = _fit(data - neighbours, ivar, psf)
    clean = data - neighbours
    fitted = np.nan_to_num(flux)[:, None, None] * psf + np.nan_to_num(bkg)[:, None, None]
    n_pix = usable.sum(axis=(1, 2))
    chi2 = np.einsum("nij,nij->n", ivar, (clean - fitted) ** 2) / np.maximum(n_pix - 2, 1)

    # Aperture (neighbours subtracted): pixel centres within the radius; masked pixels take the model.
    offsets = np.arange(size) - size // 2
    r2 = (offsets[None, None, :] - dx[:, None, None]) ** 2 + (offsets[None, :, None] - dy[:, None, None]) ** 2
    aperture = r2 <= aperture_radius**2
    filled = np.where(usable, clean, fitted)
    flux_aper = np.where(aperture, filled - np.nan_to_num(bkg)[:, None, None], 0.0).sum(axis=(1, 2))
    pixel_var = np.where(usable, 1.0 / np.where(usable, ivar, 1.0), 0.0)
    n_aper = aperture.sum(axis=(1, 2))
    aper_var = np.where(aperture, pixel_var, 0.0).sum(axis=(1, 2)) + n_aper**2 * bkg_var

    flags = np.zeros(n, np.int16)
    flags[~inside.all(axis=(1, 2))] |= FLAG_EDGE
    masked_psf = np.where(usable, 0.0, psf).sum(axis=(1, 2))
    flags[masked_psf > MASKED_PSF_FRACTION] |= FLAG_MASKED
    flags[~ok] |= FLAG_NO_FIT
    flags[~(flux > 0)] |= FLAG_NEGATIVE
    return {"FLUX_PSF": flux, "FLUXERR_PSF": np.sqrt(flux_var), "BKG_PSF": bkg, "CHI2_PSF": chi2,
            "FLUX_APER": flux_aper, "FLUXERR_APER": np.sqrt(aper_var), "FLAGS": flags}


def magnitudes(flux, flux_err, zero_point):
    """``(mag, mag_err)``: ``ZP - 2.5 log10(flux)`` and ``1.0857 err / flux``; NaN where flux <= 0."""
    flux = np.asarray(flux, float)
    positive = flux > 0
    safe = np.where(positive, flux, 1.0)
    mag = np.where(positive, zero_point - 2.5 * np.log10(safe), np.nan)
    err = np.where(positive, 2.5 / np.log(10.0) * np.asarray(flux_err, float) / safe, np.nan)
    return mag, err
