"""ShapePipe's priors for the Gaussian fit, as cost terms for the fitter.

ShapePipe (``ngmix_package``) uses ngmix's separable prior: a Gaussian prior
on the centre (zero mean, width one pixel scale on each axis), the
Bernstein & Armstrong (2014) shape prior
``p(g) = (1 - g^2)^2 exp(-g^2 / (2 sigma_g^2))`` with ``sigma_g = 0.4``, and
flat priors on size and flux, used as bounds. The fitter minimises
``0.5 chi^2 - ln p``; this module returns ``-ln p`` with its exact gradient
and Hessian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShapePipePrior:
    """Centre, shape and bound priors (ShapePipe's values by default).

    Parameters
    ----------
    cen_sigma : float
        Width (arcsec) of the Gaussian prior on each centre coordinate;
        ShapePipe uses the pixel scale.
    g_sigma : float
        Width of the Bernstein & Armstrong shape prior (0.4).
    T_bounds : tuple of float
        Bounds on ``T`` (arcsec^2). ShapePipe bounds its size parameter
        (a half-light radius) to [-10, 1e6]; ``T`` = 2 sigma^2 uses the same
        numbers, the lower one never active (the fit also requires a
        positive-definite convolved covariance).
    flux_bounds : tuple of float
        Bounds on the flux ([-1e4, 1e9] in ShapePipe).
    """

    cen_sigma: float = 0.187
    g_sigma: float = 0.4
    T_bounds: tuple = (-10.0, 1.0e6)
    flux_bounds: tuple = (-1.0e4, 1.0e9)

    def __post_init__(self):
        if not (self.cen_sigma > 0 and self.g_sigma > 0):
            raise ValueError("prior widths must be positive")
        if not (self.T_bounds[0] < self.T_bounds[1]
                and self.flux_bounds[0] < self.flux_bounds[1]):
            raise ValueError("prior bounds must be increasing")

    def clip(self, pars):
        """Return ``pars`` with T and flux clipped to their bounds."""
        pars = np.array(pars, dtype=float)
        pars[4] = np.clip(pars[4], *self.T_bounds)
        pars[5] = np.clip(pars[5], *self.flux_bounds)
        return pars

    def neg_log_prob(self, pars):
        """Return ``-ln p`` (up to a constant); inf outside |g| < 1."""
        gsq = pars[2] ** 2 + pars[3] ** 2
        if gsq >= 1.0:
            return np.inf
        cen = 0.5 * (pars[0] ** 2 + pars[1] ** 2) / self.cen_sigma ** 2
        return cen - 2.0 * np.log(1.0 - gsq) + 0.5 * gsq / self.g_sigma ** 2

    def add_terms(self, pars, grad, hess):
        """Add the prior gradient and Hessian in place; return ``-ln p``.

        Parameters
        ----------
        pars : numpy.ndarray
            ``(u0, v0, g1, g2, T, flux)``.
        grad, hess : numpy.ndarray
            Gradient (6) and Hessian (6x6) of ``0.5 chi^2`` to add to.

        Returns
        -------
        float
            ``-ln p`` at ``pars`` (inf if |g| >= 1).
        """
        value = self.neg_log_prob(pars)
        if not np.isfinite(value):
            return value
        inv_c = 1.0 / self.cen_sigma ** 2
        grad[0] += pars[0] * inv_c
        grad[1] += pars[1] * inv_c
        hess[0, 0] += inv_c
        hess[1, 1] += inv_c
        g = pars[2:4]
        omg = 1.0 - g @ g
        inv_g = 1.0 / self.g_sigma ** 2
        grad[2:4] += 4.0 * g / omg + g * inv_g
        hess[2:4, 2:4] += ((4.0 / omg + inv_g) * np.eye(2)
                           + 8.0 * np.outer(g, g) / omg ** 2)
        return value
