"""Piff (``pip install piff``) as the engine of the focal-plane PSF model.

One :class:`piff.SimplePSF` per exposure: a :class:`piff.PixelGrid` model
(the pixel basis, ``PSF_SIZE`` x ``PSF_SIZE`` at ``PSF_SAMPLING``) whose
pixel values are a :class:`piff.BasisPolynomial` of the normalised
focal-plane position ``(U, V)`` (the same ``(X, Y) / R`` as
:mod:`.focal_plane`, given to Piff as star properties ``fu``, ``fv``), of
degree ``GLOBAL_DEGREE``, fitted with every star of the exposure. Piff has
no per-CCD term in this form: the focal-plane polynomial alone carries the
variation. Each CCD's WCS (a GalSim WCS) gives Piff the local pixel
Jacobian, so the pixel grid lives on the sky and Piff draws it into each
CCD's pixel frame.

Each CCD's model is then re-expanded, as in :mod:`.focal_plane`, into an
ordinary PSFEx model of its own pixel position: Piff draws the PSF on a 5 x 5
grid over the CCD and a least-squares polynomial of degree
``GLOBAL_DEGREE`` in the CCD position is fitted pixel by pixel, so that
``psfinterp`` and ``merge_starcat`` read it like any other.
"""

from __future__ import annotations

import numpy as np

from ..io.psfex_file import PSFModel, polynomial_terms
from ..psfex.model import PSFFitError, _moments


def _focal_normalisation(to_focal, ccd_shapes):
    from .focal_plane import _focal_extent

    return _focal_extent(to_focal, ccd_shapes)


def _stars(samples, wcs_by_ccd, pointing, fu_fv):
    """Piff stars of every usable sample star (stamps placed at their CCD pixel positions)."""
    import galsim
    import piff

    stars = []
    for ccd, sample in samples.items():
        size = sample.stamps.shape[1]
        half = size // 2
        fu, fv = fu_fv[ccd]
        for i in np.flatnonzero(sample.usable):
            x, y = float(sample.centre_x[i]), float(sample.centre_y[i])
            ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            bounds = galsim.BoundsI(ix - half, ix - half + size - 1, iy - half, iy - half + size - 1)
            image = galsim.Image(np.ascontiguousarray(sample.stamps[i], dtype=float), bounds=bounds,
                                 wcs=wcs_by_ccd[ccd])
            noise2 = float(sample.noise[i]) ** 2
            weight = galsim.Image(sample.valid[i].astype(float) / noise2, bounds=bounds, wcs=wcs_by_ccd[ccd])
            data = piff.StarData(image, galsim.PositionD(x, y), weight=weight, pointing=pointing,
                                 properties={"chipnum": ccd, "fu": float(fu[i]), "fv": float(fv[i])})
            stars.append(piff.Star(data, None))
    return stars


def fit_exposure_piff(samples: dict, wcs_by_ccd: dict, to_focal: dict, ccd_shapes: dict, psf_size: int,
                      sampling: float, pixel_scale: float, global_degree: int = 2, pointing=None,
                      names=("XWIN_IMAGE", "YWIN_IMAGE"), min_stars: int = 20, logger=None) -> dict:
    """Fit one exposure with Piff; ``{ccd: PSFModel}`` re-expanded per CCD.

    Parameters
    ----------
    samples : dict
        ``{ccd: StarSample}`` (``centre_x/y``: 1-based CCD pixel positions).
    wcs_by_ccd : dict
        ``{ccd: galsim.BaseWCS}`` of each CCD (celestial with ``pointing``, or
        Euclidean in pixels).
    to_focal : dict
        ``{ccd: callable(x, y) -> (X, Y)}``: focal-plane position in pixels.
    ccd_shapes : dict
        ``{ccd: (nx, ny)}``.
    psf_size : int
        Side of the pixel grid (odd).
    sampling : float
        Grid step in image pixels.
    pixel_scale : float
        Pixel size in the WCS's world units (arcsec, or 1 for a pixel WCS).
    global_degree : int
        Degree of the focal-plane polynomial.
    pointing : galsim.CelestialCoord, optional
        Exposure centre (needed with a celestial WCS).
    min_stars : int
        Fewer usable stars: PSFFitError.

    Raises
    ------
    PSFFitError
        Too few stars, or Piff's fit failed.
    """
    import galsim
    import piff

    ccds = [c for c in sorted(samples) if len(samples[c]) and samples[c].usable.any()]
    samples = {c: samples[c] for c in ccds}
    n_usable = sum(int(samples[c].usable.sum()) for c in ccds)
    if n_usable < min_stars:
        raise PSFFitError(f"{n_usable} usable stars in the exposure, fewer than {min_stars}")
    centre, half = _focal_normalisation(to_focal, {c: ccd_shapes[c] for c in ccds})

    def normalised(ccd, x, y):
        fx, fy = to_focal[ccd](x, y)
        return (np.asarray(fx) - centre[0]) / half, (np.asarray(fy) - centre[1]) / half

    fu_fv = {c: normalised(c, samples[c].context_x, samples[c].context_y) for c in ccds}
    stars = _stars(samples, wcs_by_ccd, pointing, fu_fv)
    psf = piff.SimplePSF(piff.PixelGrid(scale=sampling * pixel_scale, size=int(psf_size)),
                         piff.BasisPolynomial(order=global_degree, keys=("fu", "fv")))
    try:
        psf.fit(stars, {c: wcs_by_ccd[c] for c in ccds}, pointing, logger=logger)
    except Exception as error:  # Piff raises many kinds (singular matrices, failed reflux)
        raise PSFFitError(f"Piff fit failed: {type(error).__name__}: {error}") from None
    models = {}
    size = int(psf_size)
    for ccd in ccds:
        nx, ny = ccd_shapes[ccd]
        zero, scale = (0.5 * (1 + nx), 0.5 * (1 + ny)), (float(nx), float(ny))
        gx, gy = np.meshgrid(np.linspace(1, nx, 5), np.linspace(1, ny, 5))
        gx, gy = gx.ravel(), gy.ravel()
        fu, fv = normalised(ccd, gx, gy)
        images = []
        for x, y, u, v in zip(gx, gy, fu, fv):
            # The PSF in this CCD's pixel frame, on a grid of `sampling` pixels, centred.
            local = wcs_by_ccd[ccd].jacobian(image_pos=galsim.PositionD(x, y))
            grid = galsim.JacobianWCS(local.dudx * sampling, local.dudy * sampling,
                                      local.dvdx * sampling, local.dvdy * sampling)
            image = galsim.ImageD(size, size, wcs=grid)
            psf.draw(x, y, chipnum=ccd, image=image, center=True, fu=float(u), fv=float(v))
            images.append(image.array.ravel())
        local_terms = polynomial_terms((gx - zero[0]) / scale[0], (gy - zero[1]) / scale[1], global_degree)
        coefficients, *_ = np.linalg.lstsq(local_terms, np.asarray(images), rcond=None)
        basis = coefficients.reshape(-1, size, size)
        basis /= basis[0].sum() * sampling**2
        n_ccd = int(samples[ccd].usable.sum())
        model = PSFModel(basis=basis, degree=global_degree, zero=zero, scale=scale, sampling=sampling,
                         names=tuple(names), loaded=n_ccd, accepted=n_ccd, chi2=0.0)
        model.fwhm = float(_moments(model.evaluate(zero[0], zero[1], size=size))[0][0])
        model.header["FPDEGREE"] = global_degree
        model.header["PSFENGIN"] = "piff"
        models[ccd] = model
    return models
