"""A PSF model per exposure over all its CCDs (ShapePipe's MCCD role).

Every star of the exposure enters one fit. The pixel-basis model of the
``psfex`` engine (:mod:`shapepipe_modules.psfex.model`: images on a grid,
fitted in each star's own pixel frame) gets, instead of a polynomial of the
position on one CCD, the terms

- one constant image per CCD (the CCD's own PSF at the exposure's mean;
  absorbs what differs from CCD to CCD: focus, flatness, chip height);
- global images multiplying the monomials ``U^i V^j`` (``1 <= i + j <=
  GLOBAL_DEGREE``) of the focal-plane position ``(U, V) = (X, Y) / R``,
  ``X, Y`` in pixels from the mosaic centre and ``R`` the mosaic's half extent.

so that the smooth optical variation is fitted with every star of the
exposure (a CCD with 20 stars borrows the shape of the variation from the
other CCDs). Each CCD's model is then written as an ordinary PSFEx model of
its own pixel position (degree ``GLOBAL_DEGREE``): the focal-plane position
is an affine function of the CCD position (to the WCS distortion, which the
least-squares re-expansion absorbs), so a global polynomial restricted to a
CCD is a polynomial of the same degree in the CCD position. ``psfinterp`` and
``merge_starcat`` read these files like any PSFEx model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.psfex_file import PSFModel, n_terms, polynomial_terms
from ..psfex.model import (
    FitOptions,
    PSFFitError,
    StarSample,
    _conjugate_gradient,
    _moments,
    _Problem,
    _shapes,
    auto_sampling,
    clip_stars,
    single_threaded_blas,
)


@dataclass
class ExposureFit:
    """A focal-plane fit: one PSFEx model per CCD and the fit's numbers."""

    models: dict  # {ccd: PSFModel}
    accepted: dict  # {ccd: bool array per star}
    chi2: dict  # {ccd: per-star reduced chi2}
    info: dict = field(default_factory=dict)


def global_monomials(u, v, degree: int) -> np.ndarray:
    """``U^i V^j`` with ``1 <= i + j <= degree`` (PSFEx order, constant dropped), shape (n, m)."""
    return polynomial_terms(u, v, degree)[:, 1:]


def _concatenate(samples):
    names = ("stamps", "valid", "centre_x", "centre_y", "context_x", "context_y", "offset_x", "offset_y",
             "flux", "noise", "usable")
    parts = {name: np.concatenate([getattr(samples[c], name) for c in samples]) for name in names}
    gains = [samples[c].gain for c in samples]
    return StarSample(gain=float(np.median(gains)) if gains else 0.0, **parts)


def fit_exposure(samples: dict, to_focal: dict, ccd_shapes: dict, options: FitOptions, global_degree: int = 2,
                 names=("XWIN_IMAGE", "YWIN_IMAGE")) -> ExposureFit:
    """Fit one exposure.

    Parameters
    ----------
    samples : dict
        ``{ccd: StarSample}`` of the CCDs of one exposure (``context_x/y``
        are the CCD pixel positions of the stars).
    to_focal : dict
        ``{ccd: callable(x, y) -> (X, Y)}``: focal-plane position in pixels
        of CCD pixel positions.
    ccd_shapes : dict
        ``{ccd: (nx, ny)}`` pixel size of each CCD.
    options : FitOptions
        ``psf_size``, ``sampling``, ``accuracy``, ``regularisation``, CG and
        clipping settings and ``min_stars`` (per exposure) are used.
    global_degree : int
        Degree of the focal-plane polynomial.

    Raises
    ------
    PSFFitError
        When the exposure has fewer usable (or, after clipping, accepted)
        stars than ``options.min_stars``.
    """
    with single_threaded_blas():
        return _fit_exposure(samples, to_focal, ccd_shapes, options, global_degree, names)


def _focal_extent(to_focal, ccd_shapes):
    corners = []
    for ccd, (nx, ny) in ccd_shapes.items():
        corners.append(np.column_stack(to_focal[ccd](np.array([1.0, nx, 1.0, nx]), np.array([1.0, 1.0, ny, ny]))))
    corners = np.concatenate(corners)
    centre = 0.5 * (corners.min(axis=0) + corners.max(axis=0))
    half = float(np.max(np.abs(corners - centre))) or 1.0
    return centre, half


def _fit_exposure(samples, to_focal, ccd_shapes, options, global_degree, names):
    ccds = [c for c in sorted(samples) if len(samples[c])]
    samples = {c: samples[c] for c in ccds}
    sample = _concatenate(samples)
    which = np.concatenate([np.full(len(samples[c]), k) for k, c in enumerate(ccds)])
    centre, half = _focal_extent(to_focal, {c: ccd_shapes[c] for c in ccds})
    focal = np.concatenate([np.column_stack(to_focal[c](samples[c].context_x, samples[c].context_y)) for c in ccds])
    fu, fv = (focal[:, 0] - centre[0]) / half, (focal[:, 1] - centre[1]) / half
    onehot = (which[:, None] == np.arange(len(ccds))[None, :]).astype(float)
    terms_all = np.hstack([onehot, global_monomials(fu, fv, global_degree)])

    nx, ny = options.psf_size
    step = options.sampling if options.sampling > 0 else auto_sampling(sample)
    size = sample.stamps.shape[1]
    accepted = sample.usable.copy()
    if accepted.sum() < options.min_stars:
        raise PSFFitError(f"{int(accepted.sum())} usable stars in the exposure, fewer than {options.min_stars}")
    norm = sample.flux.copy()
    chi2 = np.full(len(sample), np.nan)
    iterations_used = 0
    for clip_round in range(options.max_clip_iterations + 1):
        index = np.flatnonzero(accepted)
        # A CCD left without accepted stars keeps a constant image the ridge holds at zero: drop its term.
        present = np.unique(which[index])
        columns = np.r_[present, np.arange(len(ccds), terms_all.shape[1])]
        terms = terms_all[index][:, columns]
        data = sample.stamps[index]
        valid = sample.valid[index].astype(float)
        noise2 = sample.noise[index, None, None] ** 2
        stars = (sample.offset_x[index], sample.offset_y[index], size, step, options.interpolant_order)
        basis = None
        for _ in range(2):  # weights from the data, then from the model
            amplitude = norm[index]
            signal = np.clip(data if basis is None else amplitude[:, None, None] * _shapes(basis, terms, *stars), 0,
                             None)
            variance = noise2 + (signal / sample.gain if sample.gain > 0 else 0.0) + (options.accuracy * signal) ** 2
            weights = valid / variance
            problem = _Problem(data, weights, amplitude, terms, sample.offset_x[index], sample.offset_y[index],
                               (ny, nx), step, options.interpolant_order)
            ridge, precondition = problem.preconditioner(options.regularisation)
            right = problem.right(data)
            start = precondition(right) if basis is None else basis.ravel()
            solution, used = _conjugate_gradient(problem, right, start, ridge, precondition, options.cg_iterations,
                                                 options.cg_tolerance)
            iterations_used += used
            basis = problem.split(solution)
            shapes = _shapes(basis, terms, *stars)
            norm[index] = np.sum(weights * shapes * data, axis=(1, 2)) / np.sum(weights * shapes**2, axis=(1, 2))
        # Chi2 of every usable star (rejected ones too) against the model of its CCD.
        full = np.zeros((terms_all.shape[1],) + basis.shape[1:])
        full[columns] = basis
        every = np.flatnonzero(sample.usable)
        all_shapes = _shapes(full, terms_all[every], sample.offset_x[every], sample.offset_y[every], size, step,
                             options.interpolant_order)
        all_valid = sample.valid[every]
        amp = np.sum(all_valid * all_shapes * sample.stamps[every], axis=(1, 2)) / np.sum(
            all_valid * all_shapes**2, axis=(1, 2))
        rejected = ~accepted[every]
        norm[every[rejected]] = amp[rejected]
        prediction = norm[every, None, None] * all_shapes
        selection = clip_stars(sample, every, sample.stamps[every], prediction, all_valid, chi2, accepted, options)
        if (selection == accepted).all() or clip_round == options.max_clip_iterations:
            break
        accepted = selection
        if accepted.sum() < options.min_stars:
            raise PSFFitError(f"only {int(accepted.sum())} stars left after rejecting bad ones")

    models, accepted_by_ccd, chi2_by_ccd = {}, {}, {}
    n_global = terms_all.shape[1] - len(ccds)
    degree = global_degree
    for k, ccd in enumerate(ccds):
        mine = which == k
        if not accepted[mine].any():
            continue  # no star of this CCD survived: no model (as a per-CCD fit would end)
        ccd_nx, ccd_ny = ccd_shapes[ccd]
        zero = (0.5 * (1 + ccd_nx), 0.5 * (1 + ccd_ny))
        scale = (float(ccd_nx), float(ccd_ny))
        # Re-express the global monomials on this CCD as polynomials of its own position.
        gx, gy = np.meshgrid(np.linspace(1, ccd_nx, 9), np.linspace(1, ccd_ny, 9))
        gx, gy = gx.ravel(), gy.ravel()
        fx, fy = to_focal[ccd](gx, gy)
        target = global_monomials((fx - centre[0]) / half, (fy - centre[1]) / half, degree)
        local = polynomial_terms((gx - zero[0]) / scale[0], (gy - zero[1]) / scale[1], degree)
        coefficients, *_ = np.linalg.lstsq(local, target, rcond=None)  # (n_local, n_global)
        global_images = full[len(ccds):].reshape(n_global, -1)
        local_basis = (coefficients @ global_images).reshape((n_terms(degree),) + full.shape[1:])
        local_basis[0] += full[k]
        local_basis /= local_basis[0].sum() * step**2  # unit sum at the CCD centre
        model = PSFModel(basis=local_basis, degree=degree, zero=zero, scale=scale, sampling=step,
                         names=tuple(names), loaded=int(mine.sum()), accepted=int(accepted[mine].sum()),
                         chi2=float(np.nanmean(chi2[mine & accepted])))
        model.fwhm = float(_moments(model.evaluate(zero[0], zero[1], size=min(nx, size)))[0][0])
        model.header["FPDEGREE"] = global_degree
        models[ccd] = model
        accepted_by_ccd[ccd] = accepted[mine]
        chi2_by_ccd[ccd] = chi2[mine]
    return ExposureFit(models=models, accepted=accepted_by_ccd, chi2=chi2_by_ccd,
                       info={"cg_iterations": iterations_used, "clip_rounds": clip_round, "sampling": step,
                             "stars": int(sample.usable.sum()), "accepted": int(accepted.sum()),
                             "focal_centre": tuple(map(float, centre)), "focal_half_extent": half})
