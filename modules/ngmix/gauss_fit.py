"""Joint fit of one elliptical Gaussian to several epochs.

The model of epoch ``e`` at a pixel whose sky offset from the epoch's
Jacobian centre is ``d = (du, dv)`` (arcsec) is::

    m = F * A_e / (2 pi sqrt(det C_e)) * exp(-0.5 (d - c)^T C_e^-1 (d - c))

with ``c = (u0, v0)`` the centre, ``A_e`` the pixel area (arcsec^2),
``C_e = C_gal + C_psf,e`` and ``C_gal`` the galaxy covariance built from
``(g1, g2, T)`` in ngmix's convention (``T = Iuu + Ivv = 2 sigma^2`` for a
round Gaussian, ``g`` the reduced-shear ellipticity, ``|g| = (a-b)/(a+b)``).
The PSF of each epoch is a Gaussian of covariance ``C_psf,e`` (zero to fit a
PSF image itself). The model is evaluated at pixel centres: the images it
describes are samples of the convolved profile (see :mod:`.metacal`).

Parameters are ``(u0, v0, g1, g2, T, F)``. The fitter is Levenberg-Marquardt
on ``0.5 chi^2 + prior`` with an analytic Jacobian (Gauss-Newton Hessian for
the pixels, exact Hessian for the priors); see :mod:`.priors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from numba import njit

from .priors import ShapePipePrior

NPARS = 6
PAR_NAMES = ("u0", "v0", "g1", "g2", "T", "flux")

#: Fit status bits (internal; the engine maps them to catalogue flags).
FIT_OK = 0
FIT_NOT_CONVERGED = 1
FIT_BAD_COVARIANCE = 2
FIT_INVALID_GUESS = 4
FIT_NOT_FINITE = 8


@dataclass
class PixelData:
    """Pixels of all epochs of one object, concatenated.

    Attributes
    ----------
    du, dv : numpy.ndarray
        Sky offsets (arcsec) of each pixel centre from its epoch's Jacobian
        centre.
    data, weight : numpy.ndarray
        Pixel values and inverse variances (only pixels with weight > 0).
    epoch : numpy.ndarray
        Epoch index of each pixel.
    psf_cov : numpy.ndarray
        (n_epoch, 3) PSF covariance ``(Cuu, Cuv, Cvv)`` per epoch (arcsec^2).
    area : numpy.ndarray
        Pixel area (arcsec^2) per epoch.
    """

    du: np.ndarray
    dv: np.ndarray
    data: np.ndarray
    weight: np.ndarray
    epoch: np.ndarray
    psf_cov: np.ndarray
    area: np.ndarray
    pixel_index: list = None

    @property
    def n_pixels(self):
        """Number of pixels used."""
        return self.data.size

    def with_images(self, images):
        """Same pixels, values taken from other images (e.g. another branch).

        Parameters
        ----------
        images : list of numpy.ndarray
            One stamp per epoch, same shapes as the original ones.

        Returns
        -------
        PixelData
        """
        data = np.concatenate([np.asarray(img, dtype=float)[rows, cols]
                               for img, (rows, cols) in zip(images, self.pixel_index)])
        return PixelData(du=self.du, dv=self.dv, data=data, weight=self.weight,
                         epoch=self.epoch, psf_cov=self.psf_cov, area=self.area,
                         pixel_index=self.pixel_index)


def make_pixel_data(images, weights, jacobians, centres, psf_covs, radius=None):
    """Collect the pixels of several epochs for :func:`fit_gauss`.

    Parameters
    ----------
    images, weights : list of numpy.ndarray
        Per-epoch stamps and inverse-variance maps (zero weight = unused).
    jacobians : list of array_like
        Per-epoch 2x2 Jacobians (arcsec/pixel, ``[[du/dx, du/dy],
        [dv/dx, dv/dy]]``).
    centres : list of tuple
        Per-epoch (row, col) pixel position of the sky origin.
    psf_covs : list of tuple
        Per-epoch PSF covariance ``(Cuu, Cuv, Cvv)`` in arcsec^2.
    radius : float, optional
        Keep only pixels within this distance (pixels) of the centre; the
        same aperture must be used for every metacal branch.

    Returns
    -------
    PixelData
    """
    parts = {"du": [], "dv": [], "data": [], "weight": [], "epoch": []}
    areas = []
    index_list = []
    for index, (image, weight, jac, centre) in enumerate(
            zip(images, weights, jacobians, centres)):
        jac = np.ascontiguousarray(jac, dtype=float)
        image = np.ascontiguousarray(image, dtype=float)
        weight = np.ascontiguousarray(weight, dtype=float)
        if image.shape != weight.shape:
            raise ValueError(f"image shape {image.shape} differs from weight shape {weight.shape}")
        # Pixels with weight > 0 (within ``radius`` of the centre), in row-major order.
        out = np.empty((5, weight.size))
        count = _select_pixels(image, weight, jac, float(centre[0]), float(centre[1]),
                               -1.0 if radius is None else float(radius) ** 2, out)
        rows = out[0, :count].astype(np.int64)
        cols = out[1, :count].astype(np.int64)
        index_list.append((rows, cols))
        parts["du"].append(out[2, :count])
        parts["dv"].append(out[3, :count])
        parts["data"].append(out[4, :count])
        parts["weight"].append(weight.ravel()[rows * weight.shape[1] + cols])
        parts["epoch"].append(np.full(count, index, dtype=np.int64))
        areas.append(jacobian_area(jac))
    joined = {key: np.ascontiguousarray(val[0]) if len(val) == 1 else np.concatenate(val)
              for key, val in parts.items()}
    return PixelData(psf_cov=np.ascontiguousarray(psf_covs, dtype=float).reshape(-1, 3),
                     area=np.asarray(areas, dtype=float), pixel_index=index_list,
                     **joined)


def jacobian_area(jacobian):
    """Pixel area ``|det J|`` (arcsec^2) of a 2x2 Jacobian, without ``np.linalg.det``'s overhead."""
    jac = np.asarray(jacobian, dtype=float)
    return abs(float(jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]))


@njit(cache=True)
def _select_pixels(image, weight, jac, centre_row, centre_col, radius_sq, out):
    """Rows, columns, sky offsets and values of the usable pixels into ``out`` (5, n); return their number.

    Usable: weight > 0 and, if ``radius_sq >= 0``, within that squared
    distance (pixels) of the centre. The same arithmetic as the numpy
    expressions it replaces (no fastmath).
    """
    ny, nx = weight.shape
    count = 0
    for r in range(ny):
        dy = r - centre_row
        for c in range(nx):
            if not weight[r, c] > 0:
                continue
            dx = c - centre_col
            if radius_sq >= 0.0 and dy * dy + dx * dx > radius_sq:
                continue
            out[0, count] = r
            out[1, count] = c
            out[2, count] = jac[0, 0] * dx + jac[0, 1] * dy
            out[3, count] = jac[1, 0] * dx + jac[1, 1] * dy
            out[4, count] = image[r, c]
            count += 1
    return count


#: Pixels farther than this squared Mahalanobis distance (model below
#: exp(-40) = 4e-18 of its peak, e.g. the outer PSF stamp) skip the model and
#: its derivatives: their terms are below the rounding (1e-16) of sums that
#: the central pixels dominate, so the fit is unchanged
#: (``tests/test_metacal.py``), at about a third of the cost for PSF stamps.
_RHO_NEGLIGIBLE = 80.0


@njit(cache=True)
def _galaxy_cov(g1, g2, T):
    gsq = g1 * g1 + g2 * g2
    e1 = 2.0 * g1 / (1.0 + gsq)
    e2 = 2.0 * g2 / (1.0 + gsq)
    half = 0.5 * T
    return half * (1.0 + e1), half * e2, half * (1.0 - e1), e1, e2, gsq


@njit(cache=True, fastmath=True)
def _epoch_terms(g1, g2, T, cuu, cuv, cvv, e1, e2, gsq, psf_cov, area):
    """Per-epoch terms shared by the fit and the model derivatives.

    Returns ``dcov`` (dC/dtheta as (uu, uv, vv) rows for theta = g1, g2,
    T), the inverse convolved covariance ``quu, quv, qvv`` and the
    normalisation ``unit`` of each epoch, ``trace[e, k] = tr(C^-1 dC/dtheta_k)``,
    and False if a convolved covariance is not positive definite.
    """
    # d e_j / d g_i
    opg = 1.0 + gsq
    de1_dg1 = 2.0 / opg - 4.0 * g1 * g1 / (opg * opg)
    de1_dg2 = -4.0 * g1 * g2 / (opg * opg)
    de2_dg2 = 2.0 / opg - 4.0 * g2 * g2 / (opg * opg)
    half = 0.5 * T
    dcov = np.empty((3, 3))
    dcov[0, 0] = half * de1_dg1
    dcov[0, 1] = half * de1_dg2  # d e2 / d g1 = d e1 / d g2
    dcov[0, 2] = -half * de1_dg1
    dcov[1, 0] = half * de1_dg2
    dcov[1, 1] = half * de2_dg2
    dcov[1, 2] = -half * de1_dg2
    dcov[2, 0] = 0.5 * (1.0 + e1)
    dcov[2, 1] = 0.5 * e2
    dcov[2, 2] = 0.5 * (1.0 - e1)
    n_epoch = psf_cov.shape[0]
    quu = np.empty(n_epoch)
    quv = np.empty(n_epoch)
    qvv = np.empty(n_epoch)
    unit = np.empty(n_epoch)
    trace = np.empty((n_epoch, 3))
    for e in range(n_epoch):
        c11 = cuu + psf_cov[e, 0]
        c12 = cuv + psf_cov[e, 1]
        c22 = cvv + psf_cov[e, 2]
        det = c11 * c22 - c12 * c12
        if det <= 0.0 or c11 <= 0.0:
            return dcov, quu, quv, qvv, unit, trace, False
        quu[e] = c22 / det
        quv[e] = -c12 / det
        qvv[e] = c11 / det
        unit[e] = area[e] / (2.0 * np.pi * np.sqrt(det))
        for k in range(3):
            trace[e, k] = quu[e] * dcov[k, 0] + 2.0 * quv[e] * dcov[k, 1] + qvv[e] * dcov[k, 2]
    return dcov, quu, quv, qvv, unit, trace, True


@njit(cache=True, fastmath=True)
def _normal_equations(pars, du, dv, data, weight, epoch, psf_cov, area,
                      hess, grad, round_model):
    """Fill chi^2 gradient and Gauss-Newton Hessian; return chi^2.

    Returns -1 if the model is invalid (|g| >= 1 or a convolved covariance
    not positive definite). With ``round_model`` true, returns instead
    sum(weight * model^2) for g = 0 (the round-model S/N squared).
    """
    return _pixel_sums(pars, du, dv, data, weight, epoch, psf_cov, area, hess, grad, round_model, True)


@njit(cache=True, fastmath=True)
def _pixel_sums(pars, du, dv, data, weight, epoch, psf_cov, area,
                hess, grad, round_model, with_hessian):
    """:func:`_normal_equations`; with ``with_hessian`` false ``hess`` is left untouched (half the work)."""
    u0, v0, g1, g2, T, flux = pars[0], pars[1], pars[2], pars[3], pars[4], pars[5]
    if round_model:
        g1 = 0.0
        g2 = 0.0
    cuu, cuv, cvv, e1, e2, gsq = _galaxy_cov(g1, g2, T)
    if gsq >= 1.0:
        return -1.0
    dcov, quu, quv, qvv, unit, trace, valid = _epoch_terms(g1, g2, T, cuu, cuv, cvv, e1, e2, gsq, psf_cov, area)
    if not valid:
        return -1.0

    # Scalar accumulators (6 gradient terms gr*, 21 Hessian terms h* of the
    # lower triangle, derivatives a*) keep the pixel loop in registers: 2.3x
    # faster than array updates, equal to rounding.
    gr0 = gr1 = gr2 = gr3 = gr4 = gr5 = 0.0
    h00 = h10 = h11 = h20 = h21 = h22 = 0.0
    h30 = h31 = h32 = h33 = 0.0
    h40 = h41 = h42 = h43 = h44 = 0.0
    h50 = h51 = h52 = h53 = h54 = h55 = 0.0
    chi2 = 0.0
    d20, d21, d22 = dcov[0, 0], dcov[0, 1], dcov[0, 2]
    d30, d31, d32 = dcov[1, 0], dcov[1, 1], dcov[1, 2]
    d40, d41, d42 = dcov[2, 0], dcov[2, 1], dcov[2, 2]
    for i in range(data.size):
        e = epoch[i]
        x = du[i] - u0
        y = dv[i] - v0
        qx = quu[e] * x + quv[e] * y
        qy = quv[e] * x + qvv[e] * y
        rho = x * qx + y * qy
        if rho > _RHO_NEGLIGIBLE:
            # model / peak < 4e-18: its terms are below the sums' rounding.
            if not round_model:
                chi2 += weight[i] * data[i] * data[i]
            continue
        profile = unit[e] * np.exp(-0.5 * rho)
        model = flux * profile
        if round_model:
            chi2 += weight[i] * model * model
            continue
        resid = model - data[i]
        w = weight[i]
        chi2 += w * resid * resid
        qxx = qx * qx
        qxy = 2.0 * qx * qy
        qyy = qy * qy
        half_model = model * 0.5
        a0 = model * qx
        a1 = model * qy
        a2 = half_model * (qxx * d20 + qxy * d21 + qyy * d22 - trace[e, 0])
        a3 = half_model * (qxx * d30 + qxy * d31 + qyy * d32 - trace[e, 1])
        a4 = half_model * (qxx * d40 + qxy * d41 + qyy * d42 - trace[e, 2])
        a5 = profile
        wr = w * resid
        gr0 += wr * a0
        gr1 += wr * a1
        gr2 += wr * a2
        gr3 += wr * a3
        gr4 += wr * a4
        gr5 += wr * a5
        if not with_hessian:
            continue
        w0 = w * a0
        w1 = w * a1
        w2 = w * a2
        w3 = w * a3
        w4 = w * a4
        w5 = w * a5
        h00 += w0 * a0
        h10 += w1 * a0
        h11 += w1 * a1
        h20 += w2 * a0
        h21 += w2 * a1
        h22 += w2 * a2
        h30 += w3 * a0
        h31 += w3 * a1
        h32 += w3 * a2
        h33 += w3 * a3
        h40 += w4 * a0
        h41 += w4 * a1
        h42 += w4 * a2
        h43 += w4 * a3
        h44 += w4 * a4
        h50 += w5 * a0
        h51 += w5 * a1
        h52 += w5 * a2
        h53 += w5 * a3
        h54 += w5 * a4
        h55 += w5 * a5
    grad[0] = gr0
    grad[1] = gr1
    grad[2] = gr2
    grad[3] = gr3
    grad[4] = gr4
    grad[5] = gr5
    if not with_hessian:
        return chi2
    hess[0, 0] = h00
    hess[1, 0] = h10
    hess[1, 1] = h11
    hess[2, 0] = h20
    hess[2, 1] = h21
    hess[2, 2] = h22
    hess[3, 0] = h30
    hess[3, 1] = h31
    hess[3, 2] = h32
    hess[3, 3] = h33
    hess[4, 0] = h40
    hess[4, 1] = h41
    hess[4, 2] = h42
    hess[4, 3] = h43
    hess[4, 4] = h44
    hess[5, 0] = h50
    hess[5, 1] = h51
    hess[5, 2] = h52
    hess[5, 3] = h53
    hess[5, 4] = h54
    hess[5, 5] = h55
    for a in range(NPARS):
        for b in range(a):
            hess[b, a] = hess[a, b]
    return chi2


@dataclass
class FitResult:
    """Result of :func:`fit_gauss`.

    Attributes
    ----------
    pars : numpy.ndarray
        ``(u0, v0, g1, g2, T, flux)`` (NaN if the fit failed).
    cov : numpy.ndarray
        6x6 covariance, scaled by the reduced pixel chi^2 (ngmix 1.x).
    status : int
        Bit mask of ``FIT_*`` values; 0 on success.
    chi2, dof : float, int
        Pixel chi^2 and degrees of freedom.
    niter : int
        LM iterations used.
    s2n : float
        S/N of the round model, ``sqrt(sum w m_round^2)`` (ngmix's s2n_r).
    """

    pars: np.ndarray
    cov: np.ndarray
    status: int
    chi2: float = np.nan
    dof: int = 0
    niter: int = 0
    s2n: float = np.nan
    errors: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.errors is None:
            # sqrt of the diagonal, NaN where negative (as np.sqrt), without np.errstate's cost.
            self.errors = _diagonal_sqrt(np.ascontiguousarray(self.cov, dtype=float))


@njit(cache=True)
def _diagonal_sqrt(cov):
    """Square roots of a square matrix's diagonal, NaN where negative or NaN (sqrt is exactly rounded)."""
    errors = np.empty(cov.shape[0])
    for i in range(cov.shape[0]):
        value = cov[i, i]
        errors[i] = np.sqrt(value) if value >= 0 else np.nan
    return errors


@njit(cache=True)
def _usable_covariance(cov):
    """True when every element is finite and the diagonal positive."""
    for i in range(cov.shape[0]):
        for j in range(cov.shape[1]):
            if not np.isfinite(cov[i, j]):
                return False
        if not cov[i, i] > 0:
            return False
    return True


def _failed(status, niter=0):
    nan = np.full(NPARS, np.nan)
    return FitResult(pars=nan, cov=np.full((NPARS, NPARS), np.nan),
                     status=status, niter=niter)


@njit(cache=True)
def _prior_terms(pars, grad, hess, prior_pars):
    """Add -ln p gradient and Hessian (see priors.py); return -ln p."""
    cen_sigma, g_sigma = prior_pars[0], prior_pars[1]
    g1, g2 = pars[2], pars[3]
    gsq = g1 * g1 + g2 * g2
    if gsq >= 1.0:
        return np.inf
    omg = 1.0 - gsq
    inv_c = 1.0 / (cen_sigma * cen_sigma)
    inv_g = 1.0 / (g_sigma * g_sigma)
    grad[0] += pars[0] * inv_c
    grad[1] += pars[1] * inv_c
    hess[0, 0] += inv_c
    hess[1, 1] += inv_c
    grad[2] += 4.0 * g1 / omg + g1 * inv_g
    grad[3] += 4.0 * g2 / omg + g2 * inv_g
    diag = 4.0 / omg + inv_g
    hess[2, 2] += diag + 8.0 * g1 * g1 / (omg * omg)
    hess[3, 3] += diag + 8.0 * g2 * g2 / (omg * omg)
    hess[2, 3] += 8.0 * g1 * g2 / (omg * omg)
    hess[3, 2] += 8.0 * g1 * g2 / (omg * omg)
    return (0.5 * (pars[0] ** 2 + pars[1] ** 2) * inv_c - 2.0 * np.log(omg)
            + 0.5 * gsq * inv_g)


@njit(cache=True)
def _clip(pars, prior_pars):
    pars[4] = min(max(pars[4], prior_pars[2]), prior_pars[3])
    pars[5] = min(max(pars[5], prior_pars[4]), prior_pars[5])


@njit(cache=True)
def _cost_nb(pars, du, dv, data, weight, epoch, psf_cov, area, use_prior,
             prior_pars, hess, grad):
    chi2 = _normal_equations(pars, du, dv, data, weight, epoch, psf_cov, area,
                             hess, grad, False)
    if chi2 < 0.0 or not np.isfinite(chi2):
        return np.inf, chi2
    cost = 0.5 * chi2
    if use_prior:
        pcost = _prior_terms(pars, grad, hess, prior_pars)
        if not np.isfinite(pcost):
            return np.inf, chi2
        cost += pcost
    return cost, chi2


@njit(cache=True)
def _cost_grad_nb(pars, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars, scratch, grad):
    """:func:`_cost_nb` without the pixels' Hessian (``scratch`` receives only the prior's)."""
    chi2 = _pixel_sums(pars, du, dv, data, weight, epoch, psf_cov, area, scratch, grad, False, False)
    if chi2 < 0.0 or not np.isfinite(chi2):
        return np.inf
    cost = 0.5 * chi2
    if use_prior:
        pcost = _prior_terms(pars, grad, scratch, prior_pars)
        if not np.isfinite(pcost):
            return np.inf
        cost += pcost
    return cost


#: Steps of the fitter: the Gauss-Newton Hessian of the current point, a
#: fixed Hessian given by the caller, or the full Hessian of the current point.
_STEP_GAUSS_NEWTON = 0
_STEP_FIXED = 1
_STEP_FULL = 2
#: Iterations after which an unconverged fit switches to full-Hessian steps.
RESCUE_AFTER = 30


@njit(cache=True)
def _positive_definite(matrix):
    """True when the symmetric 6x6 ``matrix`` has a Cholesky factor (all pivots positive)."""
    n = matrix.shape[0]
    low = np.zeros((n, n))
    for j in range(n):
        diag = matrix[j, j]
        for k in range(j):
            diag -= low[j, k] * low[j, k]
        if not diag > 0.0:
            return False
        low[j, j] = np.sqrt(diag)
        for i in range(j + 1, n):
            value = matrix[i, j]
            for k in range(j):
                value -= low[i, k] * low[j, k]
            low[i, j] = value / low[j, j]
    return True


@njit(cache=True)
def _step_hessian(mode, pars, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars, hess, gn_hess):
    """Fill ``hess`` for the steps from ``pars``; return True if it is the Gauss-Newton Hessian there.

    ``gn_hess`` holds the Gauss-Newton Hessian of ``pars``. In the full
    mode, where the full Hessian is not positive definite (far from a
    minimum), the Gauss-Newton one is used.
    """
    if mode == _STEP_FULL:
        if (_exact_hessian_nb(pars, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars, hess)
                and _positive_definite(hess)):
            return False
    for a in range(NPARS):
        for b in range(NPARS):
            hess[a, b] = gn_hess[a, b]
    return True


@njit(cache=True)
def _levenberg_marquardt(pars, du, dv, data, weight, epoch, psf_cov, area,
                         use_prior, prior_pars, max_iter, tol, hess, fixed_hess, use_fixed, rescue_after):
    """LM minimisation of 0.5 chi^2 - ln p, in place; returns (status, niter, chi2).

    Steps solve ``(H + lam diag(H)) d = -grad``. ``H`` is the Gauss-Newton
    Hessian of the current point or, with ``use_fixed``, ``fixed_hess`` (the
    full Hessian at a nearby solution). A fit not converged after ``rescue_after``
    iterations (:data:`RESCUE_AFTER`) continues with the full Hessian of the
    current point (:func:`_exact_hessian_nb`, the Gauss-Newton one where
    the full one is not positive definite; convergence is still measured
    with the Gauss-Newton Hessian): where the model does not
    describe the galaxy (faint, barely resolved ones near ``T = 0``) the
    Gauss-Newton Hessian misses the residuals' curvature along a flat
    valley and converges linearly over hundreds of iterations; Newton steps
    converge quadratically. On return ``hess`` is the Gauss-Newton Hessian
    of the solution.
    """
    if use_prior:
        _clip(pars, prior_pars)
    mode = _STEP_FIXED if use_fixed else _STEP_GAUSS_NEWTON
    grad = np.empty(NPARS)
    gn_hess = np.empty((NPARS, NPARS))
    new_hess = np.empty((NPARS, NPARS))
    new_grad = np.empty(NPARS)
    trial = np.empty(NPARS)
    system = np.empty((NPARS, NPARS))
    searched = np.empty(NPARS)
    searched_grad = np.empty(NPARS)
    searched_hess = np.empty((NPARS, NPARS))
    # Every pass also sums the Gauss-Newton Hessian (it costs little beside
    # the exponentials), so that of the solution is at hand in every mode.
    cost, chi2 = _cost_nb(pars, du, dv, data, weight, epoch, psf_cov, area,
                          use_prior, prior_pars, gn_hess, grad)
    if not np.isfinite(cost):
        return FIT_INVALID_GUESS, 0, chi2
    if use_fixed:
        for a in range(NPARS):
            for b in range(NPARS):
                hess[a, b] = fixed_hess[a, b]
        is_gauss_newton = False
    else:
        is_gauss_newton = _step_hessian(mode, pars, du, dv, data, weight, epoch, psf_cov, area, use_prior,
                                        prior_pars, hess, gn_hess)
    lam = 1e-3
    niter = 0
    while niter < max_iter:
        niter += 1
        if niter == rescue_after + 1:
            mode = _STEP_FULL
            lam = 1e-3
            is_gauss_newton = _step_hessian(mode, pars, du, dv, data, weight, epoch, psf_cov, area, use_prior,
                                            prior_pars, hess, gn_hess)
        for a in range(NPARS):
            for b in range(NPARS):
                system[a, b] = hess[a, b]
            d = hess[a, a] if hess[a, a] > 0.0 else 1.0
            system[a, a] += lam * d
        step = np.linalg.solve(system, -grad)
        for a in range(NPARS):
            trial[a] = pars[a] + step[a]
        if use_prior:
            _clip(trial, prior_pars)
        new_cost, new_chi2 = _cost_nb(trial, du, dv, data, weight, epoch,
                                      psf_cov, area, use_prior, prior_pars,
                                      new_hess, new_grad)
        # Line search along the step: where the Gauss-Newton Hessian misses
        # the curvature (faint, small objects: the T-flux valley), the full
        # step overshoots by up to 2x and plain LM then converges linearly
        # over hundreds of iterations. The parabola through the cost at 0
        # and 1 with the slope at 0 gives the minimum along the step.
        slope = 0.0
        for a in range(NPARS):
            slope += grad[a] * (trial[a] - pars[a])
        curvature = new_cost - cost - slope
        if np.isfinite(new_cost) and slope < 0.0 and curvature > 0.0:
            alpha = -slope / (2.0 * curvature)
            if alpha < 0.8 or alpha > 1.25:
                alpha = min(alpha, 4.0)
                for a in range(NPARS):
                    searched[a] = pars[a] + alpha * (trial[a] - pars[a])
                if use_prior:
                    _clip(searched, prior_pars)
                searched_cost, searched_chi2 = _cost_nb(searched, du, dv, data, weight, epoch,
                                                        psf_cov, area, use_prior, prior_pars,
                                                        searched_hess, searched_grad)
                if searched_cost < new_cost:
                    new_cost, new_chi2 = searched_cost, searched_chi2
                    for a in range(NPARS):
                        trial[a] = searched[a]
                        new_grad[a] = searched_grad[a]
                        for b in range(NPARS):
                            new_hess[a, b] = searched_hess[a, b]
        if new_cost <= cost:
            # Convergence is measured with the Gauss-Newton Hessian in the
            # full mode: the full one is nearly singular along a flat valley,
            # where it would call a long step small.
            metric = gn_hess if mode == _STEP_FULL else hess
            decrement = 0.0
            for a in range(NPARS):
                for b in range(NPARS):
                    decrement += (trial[a] - pars[a]) * metric[a, b] * (trial[b] - pars[b])
            for a in range(NPARS):
                pars[a] = trial[a]
                grad[a] = new_grad[a]
                for b in range(NPARS):
                    gn_hess[a, b] = new_hess[a, b]
            cost = new_cost
            chi2 = new_chi2
            lam = max(lam * 0.1, 1e-12)
            if mode != _STEP_FIXED:
                is_gauss_newton = _step_hessian(mode, pars, du, dv, data, weight, epoch, psf_cov, area,
                                                use_prior, prior_pars, hess, gn_hess)
            if decrement < tol:
                return _finish(FIT_OK, niter, hess, gn_hess, is_gauss_newton, chi2)
        elif mode == _STEP_FULL and not is_gauss_newton:
            # The full Hessian's step went uphill (far from the minimum, where
            # it describes the cost worse): retry with the Gauss-Newton one.
            for a in range(NPARS):
                for b in range(NPARS):
                    hess[a, b] = gn_hess[a, b]
            is_gauss_newton = True
        else:
            lam *= 10.0
            if lam > 1e12:
                # No downhill step left: a minimum to machine precision.
                metric = gn_hess if mode == _STEP_FULL else hess
                decrement = 0.0
                for a in range(NPARS):
                    for b in range(NPARS):
                        decrement += step[a] * metric[a, b] * step[b]
                if decrement < 1e3 * tol:
                    return _finish(FIT_OK, niter, hess, gn_hess, is_gauss_newton, chi2)
                return FIT_NOT_CONVERGED, niter, chi2
    return FIT_NOT_CONVERGED, niter, chi2


@njit(cache=True)
def _finish(status, niter, hess, gn_hess, is_gauss_newton, chi2):
    """Return value of :func:`_levenberg_marquardt`, with ``hess`` the Gauss-Newton Hessian of the solution."""
    if not is_gauss_newton:
        for a in range(NPARS):
            for b in range(NPARS):
                hess[a, b] = gn_hess[a, b]
    return status, niter, chi2


@njit(cache=True)
def _inverse_nb(matrix):
    return np.linalg.inv(matrix)


def inverse(matrix):
    """``np.linalg.inv`` of a small matrix, compiled (numpy's call costs more than the inversion of a 6x6).

    Raises
    ------
    numpy.linalg.LinAlgError
        If the matrix is singular or not finite.
    """
    return _inverse_nb(np.ascontiguousarray(matrix, dtype=float))


@lru_cache(maxsize=16)
def _prior_array(prior):
    """The prior's parameters as the kernels take them (zeros without prior), one array per prior (never written)."""
    if prior is None:
        values = np.zeros(6)
    else:
        values = np.array([prior.cen_sigma, prior.g_sigma, *prior.T_bounds, *prior.flux_bounds], dtype=float)
    return values


def fit_gauss(pixels, guess, prior=None, max_iter=200, tol=1e-12, s2n=True, hessian=None,
              rescue_after=RESCUE_AFTER):
    """Fit one elliptical Gaussian jointly to all epochs.

    Parameters
    ----------
    pixels : PixelData
        The pixels (see :func:`make_pixel_data`).
    guess : array_like
        Starting ``(u0, v0, g1, g2, T, flux)``.
    prior : ShapePipePrior, optional
        Priors and bounds; none when fitting PSF images.
    max_iter : int, optional
        Maximum LM iterations.
    tol : float, optional
        Convergence when an accepted step ``d`` has ``d^T H d < tol``
        (``H`` the Hessian of the cost): the step is then below
        ``sqrt(tol)`` times the statistical errors of the parameters.
    s2n : bool, optional
        Compute the round-model S/N (NaN otherwise; PSF fits do not need it).
    hessian : numpy.ndarray, optional
        6x6 Hessian used for every step instead of the Gauss-Newton one of
        the current point: the full Hessian (:func:`cost_hessian`) at the
        solution of a nearby problem, e.g. the noshear branch for a sheared
        one. Where the model does not describe the galaxy, the Gauss-Newton
        Hessian misses the residuals' curvature and converges by a factor
        of 5-10 per step; this one, by the change of the Hessian between
        the two solutions (1-3% for the 1% metacal shear), so the fit takes
        about half the steps. The stopping rule and the minimum are the same.
    rescue_after : int, optional
        Iterations after which an unconverged fit takes full-Hessian
        (Newton) steps, damped as the others (see
        :func:`_levenberg_marquardt`).

    Returns
    -------
    FitResult
    """
    pars = np.array(guess, dtype=float)
    if pars.shape != (NPARS,) or not np.isfinite(pars).all():
        return _failed(FIT_INVALID_GUESS)
    if pixels.n_pixels <= NPARS:
        return _failed(FIT_INVALID_GUESS)
    prior_pars = _prior_array(prior)
    hess = np.empty((NPARS, NPARS))
    use_fixed = hessian is not None
    fixed = np.ascontiguousarray(hessian, dtype=float) if use_fixed else hess
    status, niter, chi2 = _levenberg_marquardt(
        pars, pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch,
        pixels.psf_cov, pixels.area, prior is not None, prior_pars, max_iter,
        tol, hess, fixed, use_fixed, int(rescue_after))
    if status != FIT_OK:
        return _failed(status, niter)
    dof = max(pixels.n_pixels - NPARS, 1)
    try:
        cov = inverse(hess) * (chi2 / dof)
        if not _usable_covariance(cov):
            status |= FIT_BAD_COVARIANCE
    except np.linalg.LinAlgError:
        cov = np.full((NPARS, NPARS), np.nan)
        status |= FIT_BAD_COVARIANCE
    s2n_value = np.nan
    if s2n:
        scratch_h = np.empty((NPARS, NPARS))
        scratch_g = np.empty(NPARS)
        s2n_sq = _normal_equations(pars, pixels.du, pixels.dv, pixels.data,
                                   pixels.weight, pixels.epoch, pixels.psf_cov,
                                   pixels.area, scratch_h, scratch_g, True)
        s2n_value = float(np.sqrt(s2n_sq)) if s2n_sq > 0 else 0.0
    return FitResult(pars=pars, cov=cov, status=status, chi2=float(chi2),
                     dof=dof, niter=niter, s2n=s2n_value)


def cost_hessian(pars, pixels, prior=None, scale=None, method="exact"):
    """Full Hessian of ``0.5 chi^2 - ln p``.

    Unlike the Gauss-Newton Hessian it includes the term of the residuals
    times the second derivatives of the model, which does not vanish when the
    model does not describe the galaxy (an exponential fitted with a
    Gaussian) and changes the errors by about 10%.

    Parameters
    ----------
    pars : array_like
        Point (the fit's solution).
    pixels : PixelData
    prior : ShapePipePrior, optional
    scale : array_like, optional
        With ``method="fd"``: parameter scales (e.g. the Gauss-Newton
        errors); steps are 1e-3 of them.
    method : {"exact", "fd"}
        ``exact``: analytic second derivatives of the model, one pass over
        the pixels; ``fd``: forward differences of the analytic gradient
        (seven passes, relative error ~1e-3; the reference of the tests).

    Returns
    -------
    numpy.ndarray
        6x6 symmetric matrix (NaN if the cost is undefined near ``pars``).
    """
    pars = np.asarray(pars, dtype=float)
    if prior is None:
        prior_pars = np.zeros(6)
    else:
        prior_pars = np.array([prior.cen_sigma, prior.g_sigma, *prior.T_bounds,
                               *prior.flux_bounds], dtype=float)
    if method == "exact":
        hess = np.empty((NPARS, NPARS))
        if not _exact_hessian_nb(pars, pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch,
                                 pixels.psf_cov, pixels.area, prior is not None, prior_pars, hess):
            return np.full((NPARS, NPARS), np.nan)
        return hess
    if method != "fd":
        raise ValueError(f"method must be 'exact' or 'fd', got {method!r}")
    if scale is None:
        scale = np.maximum(np.abs(pars), 1e-2)
    steps = 1e-3 * np.asarray(scale, dtype=float)
    hess = np.empty((NPARS, NPARS))
    # One-sided steps (1e-3 of the errors): the curvature changes by ~1e-3 over them.
    if not _cost_hessian_nb(pars, steps, pixels.du, pixels.dv, pixels.data, pixels.weight, pixels.epoch,
                            pixels.psf_cov, pixels.area, prior is not None, prior_pars, hess):
        return np.full((NPARS, NPARS), np.nan)
    return 0.5 * (hess + hess.T)


@njit(cache=True)
def _cost_hessian_nb(pars, steps, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars, hess):
    """Forward differences of the analytic gradient into ``hess`` (column j: step j); False if undefined."""
    scratch = np.empty((NPARS, NPARS))
    base = np.empty(NPARS)
    grad = np.empty(NPARS)
    point = np.empty(NPARS)
    # Only gradients are needed: the pixels' Gauss-Newton Hessian is not accumulated.
    cost = _cost_grad_nb(pars, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars, scratch, base)
    if not np.isfinite(cost):
        return False
    for j in range(NPARS):
        for a in range(NPARS):
            point[a] = pars[a]
        point[j] += steps[j]
        cost = _cost_grad_nb(point, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars,
                             scratch, grad)
        if not np.isfinite(cost):
            return False
        for a in range(NPARS):
            hess[a, j] = (grad[a] - base[a]) / steps[j]
    return True


@njit(cache=True, fastmath=True)
def _exact_hessian_nb(pars, du, dv, data, weight, epoch, psf_cov, area, use_prior, prior_pars, hess):
    """Analytic Hessian of ``0.5 chi^2 (- ln p)`` into ``hess``: ``sum w (a a^T + r d2m)``; False if undefined.

    With ``y = Q x`` (``Q`` the inverse convolved covariance, ``x`` the
    offset from the centre), ``C_k = dC/dtheta_k`` and ``z_k = C_k y`` for
    ``theta = (g1, g2, T)``, ``h_k = (y.z_k - tr(Q C_k)) / 2`` and ``m`` the
    model, the second derivatives are ``m (y_i y_j - Q_ij)`` (centre),
    ``m (h_k y_i - (Q z_k)_i)`` (centre, theta),
    ``m (h_k h_l + (y.C_kl y - 2 z_l.Q z_k + tr(Q C_l Q C_k) - tr(Q C_kl)) / 2)``
    (theta), the model over the flux times the first derivative (flux), 0
    (flux, flux).
    """
    u0, v0, g1, g2, T, flux = pars[0], pars[1], pars[2], pars[3], pars[4], pars[5]
    cuu, cuv, cvv, e1, e2, gsq = _galaxy_cov(g1, g2, T)
    if gsq >= 1.0:
        return False
    dcov, quu_e, quv_e, qvv_e, unit, trace, valid = _epoch_terms(g1, g2, T, cuu, cuv, cvv, e1, e2, gsq, psf_cov, area)
    if not valid:
        return False
    # Second derivatives of C (uu, uv, vv) with respect to (g1, g2, T).
    den = 1.0 + gsq
    d2 = den * den
    d3 = d2 * den
    de1 = (2.0 / den - 4.0 * g1 * g1 / d2, -4.0 * g1 * g2 / d2)
    de2 = (-4.0 * g1 * g2 / d2, 2.0 / den - 4.0 * g2 * g2 / d2)
    dde1 = np.empty((2, 2))
    dde2 = np.empty((2, 2))
    dde1[0, 0] = -12.0 * g1 / d2 + 16.0 * g1 ** 3 / d3
    dde1[0, 1] = dde1[1, 0] = -4.0 * g2 / d2 + 16.0 * g1 * g1 * g2 / d3
    dde1[1, 1] = -4.0 * g1 / d2 + 16.0 * g1 * g2 * g2 / d3
    dde2[0, 0] = -4.0 * g2 / d2 + 16.0 * g1 * g1 * g2 / d3
    dde2[0, 1] = dde2[1, 0] = -4.0 * g1 / d2 + 16.0 * g1 * g2 * g2 / d3
    dde2[1, 1] = -12.0 * g2 / d2 + 16.0 * g2 ** 3 / d3
    half = 0.5 * T
    d2cov = np.zeros((3, 3, 3))
    for i in range(2):
        for j in range(2):
            d2cov[i, j, 0] = half * dde1[i, j]
            d2cov[i, j, 1] = half * dde2[i, j]
            d2cov[i, j, 2] = -half * dde1[i, j]
        d2cov[i, 2, 0] = d2cov[2, i, 0] = 0.5 * de1[i]
        d2cov[i, 2, 1] = d2cov[2, i, 1] = 0.5 * de2[i]
        d2cov[i, 2, 2] = d2cov[2, i, 2] = -0.5 * de1[i]
    n_epoch = psf_cov.shape[0]
    # Per epoch: tr(Q C_l Q C_k) - tr(Q C_kl).
    const = np.empty((n_epoch, 3, 3))
    for e in range(n_epoch):
        qm = np.array([[quu_e[e], quv_e[e]], [quv_e[e], qvv_e[e]]])
        prods = np.empty((3, 2, 2))
        for k in range(3):
            ck = np.array([[dcov[k, 0], dcov[k, 1]], [dcov[k, 1], dcov[k, 2]]])
            prods[k] = qm @ ck
        for k in range(3):
            for m_ in range(3):
                tqq = 0.0
                for a in range(2):
                    for b in range(2):
                        tqq += prods[m_, a, b] * prods[k, b, a]
                tkl = (quu_e[e] * d2cov[k, m_, 0] + 2.0 * quv_e[e] * d2cov[k, m_, 1] + qvv_e[e] * d2cov[k, m_, 2])
                const[e, k, m_] = tqq - tkl
    # Scalars only in the pixel loop (the 21 sums of the lower triangle,
    # generated term by term): 3x faster than small arrays, same terms.
    c00 = dcov[0, 0]
    c01 = dcov[0, 1]
    c02 = dcov[0, 2]
    c10 = dcov[1, 0]
    c11 = dcov[1, 1]
    c12 = dcov[1, 2]
    c20 = dcov[2, 0]
    c21 = dcov[2, 1]
    c22 = dcov[2, 2]
    e000 = d2cov[0, 0, 0]
    e001 = d2cov[0, 0, 1]
    e002 = d2cov[0, 0, 2]
    e100 = d2cov[1, 0, 0]
    e101 = d2cov[1, 0, 1]
    e102 = d2cov[1, 0, 2]
    e110 = d2cov[1, 1, 0]
    e111 = d2cov[1, 1, 1]
    e112 = d2cov[1, 1, 2]
    e200 = d2cov[2, 0, 0]
    e201 = d2cov[2, 0, 1]
    e202 = d2cov[2, 0, 2]
    e210 = d2cov[2, 1, 0]
    e211 = d2cov[2, 1, 1]
    e212 = d2cov[2, 1, 2]
    e220 = d2cov[2, 2, 0]
    e221 = d2cov[2, 2, 1]
    e222 = d2cov[2, 2, 2]
    h00_ = h10_ = h11_ = h20_ = h21_ = h22_ = 0.0
    h30_ = h31_ = h32_ = h33_ = 0.0
    h40_ = h41_ = h42_ = h43_ = h44_ = 0.0
    h50_ = h51_ = h52_ = h53_ = h54_ = h55_ = 0.0
    current = -1
    quu = quv = qvv = unit_e = t0 = t1 = t2 = 0.0
    k00 = k10 = k11 = k20 = k21 = k22 = 0.0
    for i in range(data.size):
        e = epoch[i]
        if e != current:
            current = e
            quu, quv, qvv, unit_e = quu_e[e], quv_e[e], qvv_e[e], unit[e]
            t0, t1, t2 = trace[e, 0], trace[e, 1], trace[e, 2]
            k00 = const[e, 0, 0]
            k10 = const[e, 1, 0]
            k11 = const[e, 1, 1]
            k20 = const[e, 2, 0]
            k21 = const[e, 2, 1]
            k22 = const[e, 2, 2]
        x = du[i] - u0
        y = dv[i] - v0
        qx = quu * x + quv * y
        qy = quv * x + qvv * y
        rho = x * qx + y * qy
        if rho > _RHO_NEGLIGIBLE:
            continue
        profile = unit_e * np.exp(-0.5 * rho)
        model = flux * profile
        w = weight[i]
        wr = w * (model - data[i])
        qxx = qx * qx
        qxy2 = 2.0 * qx * qy
        qyy = qy * qy
        zu0 = c00 * qx + c01 * qy
        zv0 = c01 * qx + c02 * qy
        h0 = 0.5 * (qx * zu0 + qy * zv0 - t0)
        qzu0 = quu * zu0 + quv * zv0
        qzv0 = quv * zu0 + qvv * zv0
        zu1 = c10 * qx + c11 * qy
        zv1 = c11 * qx + c12 * qy
        h1 = 0.5 * (qx * zu1 + qy * zv1 - t1)
        qzu1 = quu * zu1 + quv * zv1
        qzv1 = quv * zu1 + qvv * zv1
        zu2 = c20 * qx + c21 * qy
        zv2 = c21 * qx + c22 * qy
        h2 = 0.5 * (qx * zu2 + qy * zv2 - t2)
        qzu2 = quu * zu2 + quv * zv2
        qzv2 = quv * zu2 + qvv * zv2
        der0 = model * qx
        der1 = model * qy
        der2 = model * h0
        der3 = model * h1
        der4 = model * h2
        der5 = profile
        s00 = model * (qxx - quu)
        s10 = model * (qy * qx - quv)
        s11 = model * (qyy - qvv)
        s20 = model * (h0 * qx - qzu0)
        s21 = model * (h0 * qy - qzv0)
        s22 = model * (h0 * h0 + 0.5 * ((qxx * e000 + qxy2 * e001 + qyy * e002) - 2.0 * (zu0 * qzu0 + zv0 * qzv0) + k00))
        s30 = model * (h1 * qx - qzu1)
        s31 = model * (h1 * qy - qzv1)
        s32 = model * (h1 * h0 + 0.5 * ((qxx * e100 + qxy2 * e101 + qyy * e102) - 2.0 * (zu0 * qzu1 + zv0 * qzv1) + k10))
        s33 = model * (h1 * h1 + 0.5 * ((qxx * e110 + qxy2 * e111 + qyy * e112) - 2.0 * (zu1 * qzu1 + zv1 * qzv1) + k11))
        s40 = model * (h2 * qx - qzu2)
        s41 = model * (h2 * qy - qzv2)
        s42 = model * (h2 * h0 + 0.5 * ((qxx * e200 + qxy2 * e201 + qyy * e202) - 2.0 * (zu0 * qzu2 + zv0 * qzv2) + k20))
        s43 = model * (h2 * h1 + 0.5 * ((qxx * e210 + qxy2 * e211 + qyy * e212) - 2.0 * (zu1 * qzu2 + zv1 * qzv2) + k21))
        s44 = model * (h2 * h2 + 0.5 * ((qxx * e220 + qxy2 * e221 + qyy * e222) - 2.0 * (zu2 * qzu2 + zv2 * qzv2) + k22))
        s50 = profile * qx
        s51 = profile * qy
        s52 = profile * h0
        s53 = profile * h1
        s54 = profile * h2
        h00_ += w * der0 * der0 + wr * s00
        h10_ += w * der1 * der0 + wr * s10
        h11_ += w * der1 * der1 + wr * s11
        h20_ += w * der2 * der0 + wr * s20
        h21_ += w * der2 * der1 + wr * s21
        h22_ += w * der2 * der2 + wr * s22
        h30_ += w * der3 * der0 + wr * s30
        h31_ += w * der3 * der1 + wr * s31
        h32_ += w * der3 * der2 + wr * s32
        h33_ += w * der3 * der3 + wr * s33
        h40_ += w * der4 * der0 + wr * s40
        h41_ += w * der4 * der1 + wr * s41
        h42_ += w * der4 * der2 + wr * s42
        h43_ += w * der4 * der3 + wr * s43
        h44_ += w * der4 * der4 + wr * s44
        h50_ += w * der5 * der0 + wr * s50
        h51_ += w * der5 * der1 + wr * s51
        h52_ += w * der5 * der2 + wr * s52
        h53_ += w * der5 * der3 + wr * s53
        h54_ += w * der5 * der4 + wr * s54
        h55_ += w * der5 * der5
    for a in range(NPARS):
        for b in range(NPARS):
            hess[a, b] = 0.0
    hess[0, 0] = h00_
    hess[1, 0] += h10_
    hess[1, 1] += h11_
    hess[2, 0] += h20_
    hess[2, 1] += h21_
    hess[2, 2] += h22_
    hess[3, 0] += h30_
    hess[3, 1] += h31_
    hess[3, 2] += h32_
    hess[3, 3] += h33_
    hess[4, 0] += h40_
    hess[4, 1] += h41_
    hess[4, 2] += h42_
    hess[4, 3] += h43_
    hess[4, 4] += h44_
    hess[5, 0] += h50_
    hess[5, 1] += h51_
    hess[5, 2] += h52_
    hess[5, 3] += h53_
    hess[5, 4] += h54_
    hess[5, 5] += h55_
    for a in range(NPARS):
        for b in range(a):
            hess[b, a] = hess[a, b]
    if use_prior:
        grad = np.zeros(NPARS)
        if not np.isfinite(_prior_terms(pars, grad, hess, prior_pars)):
            return False
    return True


def weighted_model_derivatives(pars, pixels):
    """``weight * d model / d par`` at every pixel, as ``(6, n_pixels)`` (numba).

    The same values as ``(model_derivatives(pars, pixels) * pixels.weight[:, None]).T``
    (to rounding; ``tests/test_metacal.py``), without the temporaries.

    Raises
    ------
    ValueError
        As :func:`model_derivatives`.
    """
    pars = np.asarray(pars, dtype=float)
    out = np.empty((NPARS, pixels.n_pixels))
    status = _weighted_derivatives_nb(pars, pixels.du, pixels.dv, pixels.weight, pixels.epoch, pixels.psf_cov,
                                      pixels.area, out)
    if status == 1:
        raise ValueError(f"|g| must be below 1, got {np.hypot(pars[2], pars[3])}")
    if status == 2:
        raise ValueError("convolved covariance is not positive definite")
    return out


@njit(cache=True, fastmath=True)
def _weighted_derivatives_nb(pars, du, dv, weight, epoch, psf_cov, area, out):
    u0, v0, g1, g2, T, flux = pars[0], pars[1], pars[2], pars[3], pars[4], pars[5]
    cuu, cuv, cvv, e1, e2, gsq = _galaxy_cov(g1, g2, T)
    if gsq >= 1.0:
        return 1
    dcov, quu, quv, qvv, unit, trace, valid = _epoch_terms(g1, g2, T, cuu, cuv, cvv, e1, e2, gsq, psf_cov, area)
    if not valid:
        return 2
    for i in range(du.size):
        e = epoch[i]
        x = du[i] - u0
        y = dv[i] - v0
        qx = quu[e] * x + quv[e] * y
        qy = quv[e] * x + qvv[e] * y
        profile = unit[e] * np.exp(-0.5 * (x * qx + y * qy))
        w = weight[i]
        wmodel = w * flux * profile
        out[0, i] = wmodel * qx
        out[1, i] = wmodel * qy
        qxx = qx * qx
        qxy = 2.0 * qx * qy
        qyy = qy * qy
        for k in range(3):
            out[2 + k, i] = 0.5 * wmodel * (qxx * dcov[k, 0] + qxy * dcov[k, 1] + qyy * dcov[k, 2] - trace[e, k])
        out[5, i] = w * profile
    return 0


def model_derivatives(pars, pixels):
    """Derivatives of the model at every pixel with respect to the parameters.

    Parameters
    ----------
    pars : array_like
        ``(u0, v0, g1, g2, T, flux)``.
    pixels : PixelData

    Returns
    -------
    numpy.ndarray
        ``(n_pixels, 6)``: ``d model / d par`` (the columns whose weighted
        products make the Gauss-Newton Hessian of :func:`fit_gauss`).
    """
    u0, v0, g1, g2, T, flux = (float(p) for p in pars)
    gsq = g1 * g1 + g2 * g2
    if gsq >= 1.0:
        raise ValueError(f"|g| must be below 1, got {np.sqrt(gsq)}")
    opg = 1.0 + gsq
    e1, e2 = 2.0 * g1 / opg, 2.0 * g2 / opg
    half = 0.5 * T
    de1 = np.array([2.0 / opg - 4.0 * g1 * g1 / opg ** 2, -4.0 * g1 * g2 / opg ** 2])
    de2 = np.array([-4.0 * g1 * g2 / opg ** 2, 2.0 / opg - 4.0 * g2 * g2 / opg ** 2])
    # dC/d(g1, g2, T) as (uu, uv, vv).
    dcov = np.array([[half * de1[0], half * de2[0], -half * de1[0]],
                     [half * de1[1], half * de2[1], -half * de1[1]],
                     [0.5 * (1.0 + e1), 0.5 * e2, 0.5 * (1.0 - e1)]])
    cov = pixels.psf_cov + np.array([half * (1.0 + e1), half * e2, half * (1.0 - e1)])
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    if np.any(det <= 0) or np.any(cov[:, 0] <= 0):
        raise ValueError("convolved covariance is not positive definite")
    quu, quv, qvv = cov[:, 2] / det, -cov[:, 1] / det, cov[:, 0] / det
    unit = pixels.area / (2.0 * np.pi * np.sqrt(det))
    trace = (quu[:, None] * dcov[None, :, 0] + 2.0 * quv[:, None] * dcov[None, :, 1]
             + qvv[:, None] * dcov[None, :, 2])
    e = pixels.epoch
    x = pixels.du - u0
    y = pixels.dv - v0
    qx = quu[e] * x + quv[e] * y
    qy = quv[e] * x + qvv[e] * y
    profile = unit[e] * np.exp(-0.5 * (x * qx + y * qy))
    model = flux * profile
    out = np.empty((x.size, NPARS))
    out[:, 0] = model * qx
    out[:, 1] = model * qy
    for k in range(3):
        out[:, 2 + k] = 0.5 * model * (qx * qx * dcov[k, 0] + 2.0 * qx * qy * dcov[k, 1]
                                       + qy * qy * dcov[k, 2] - trace[e, k])
    out[:, 5] = profile
    return out


def gaussian_covariance(g1, g2, T):
    """Covariance ``(Cuu, Cuv, Cvv)`` of a Gaussian of shape ``(g1, g2)`` and size ``T``."""
    cuu, cuv, cvv, _, _, _ = _galaxy_cov(float(g1), float(g2), float(T))
    return cuu, cuv, cvv


def perturb_guess(guess, rng, scatter=0.1):
    """Starting point of a retried fit, perturbed on the scale of each parameter.

    The centre (arcsec) and ``g`` get uniform deviates in ``[-scatter,
    scatter]`` added (``|g|`` kept below 0.9); ``T`` and the flux are
    multiplied by ``1 + u`` with ``u`` in the same interval, so their sign
    and scale are kept (an additive 0.1 arcsec^2 would give a non-positive
    ``T`` to a galaxy smaller than 0.1 arcsec^2).

    Parameters
    ----------
    guess : array_like
        ``(u0, v0, g1, g2, T, flux)``.
    rng : numpy.random.Generator
    scatter : float, optional

    Returns
    -------
    numpy.ndarray
    """
    trial = np.array(guess, dtype=float)
    trial[:4] += rng.uniform(-scatter, scatter, 4)
    trial[4:6] *= 1.0 + rng.uniform(-scatter, scatter, 2)
    gnorm = np.hypot(trial[2], trial[3])
    if gnorm >= 0.9:
        trial[2:4] *= 0.9 / gnorm
    return trial


def fit_with_retries(pixels, guess, rng, prior=None, ntry=5, scatter=0.1,
                     **kwargs):
    """Fit, retrying from perturbed guesses when the fit fails.

    The first try starts from ``guess`` itself; later tries start from
    :func:`perturb_guess` (relative perturbations of size and flux).

    Parameters
    ----------
    pixels : PixelData
    guess : array_like
    rng : numpy.random.Generator
        Source of the perturbations.
    prior : ShapePipePrior, optional
    ntry : int, optional
        Maximum number of tries.
    scatter : float, optional
        Half-width of the perturbations.
    **kwargs
        Passed to :func:`fit_gauss`.

    Returns
    -------
    result : FitResult
    ntry_used : int
    """
    guess = np.asarray(guess, dtype=float)
    result = None
    hessian = kwargs.pop("hessian", None)
    for attempt in range(ntry):
        trial = perturb_guess(guess, rng, scatter) if attempt > 0 else guess.copy()
        # A perturbed start is far from where ``hessian`` was computed.
        result = fit_gauss(pixels, trial, prior=prior, hessian=hessian if attempt == 0 else None, **kwargs)
        if result.status == FIT_OK:
            return result, attempt + 1
    return result, ntry


__all__ = ["PixelData", "make_pixel_data", "fit_gauss", "inverse", "jacobian_area", "fit_with_retries",
           "model_derivatives", "cost_hessian",
           "weighted_model_derivatives",
           "perturb_guess", "gaussian_covariance",
           "FitResult", "ShapePipePrior", "PAR_NAMES"]
