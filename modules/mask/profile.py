"""Halo and spike masks sized by the star's flux and its light profile.

ShapePipe scales one template linearly in magnitude, with a size chosen by
eye. Here (``STAR_MASK_SIZING = profile``) each bright star gets the region
where its modelled light exceeds a fraction of the image's pixel noise:

- halo (``MP_HALO``): a disc out to where the PSF core plus the halo,
  ``F [ (1 - f_h - 2 f_s) M(r; psf) + f_h M(r; halo) ]`` (Moffat surface
  brightnesses of unit flux), falls to ``NOISE_FRACTION x sigma``;
- spikes (``MP_SPIKE``): two bars along the pixel axes, out to where the
  spike, a Gaussian of sigma ``length`` along the arm and ``width`` across
  holding ``f_s F``, falls to the same level; their half width is where the
  spike's cross-section at its peak falls to it.

``F`` is the star's flux from its catalogue magnitude and the image zero
point; ``sigma`` the median of ``1 / sqrt(weight)`` over the pixels of
positive weight. The default profile is the simulator's (docs/simulation.md,
"Bright stars"); on real data it is the stacked profile of bright stars,
measured by :mod:`.measure_profile` (``shapepipe_star_profile``) and given
to the mask module as ``STAR_PROFILE_FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _moffat_peak(flux, fwhm, beta):
    """Central surface brightness (per arcsec^2) and scale radius of a Moffat."""
    rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return flux * (beta - 1.0) / (np.pi * rd**2), rd


@dataclass(frozen=True)
class StarProfile:
    """A bright star's light per unit flux (lengths in arcsec) and the mask level.

    Attributes
    ----------
    psf_fwhm, psf_beta : float
        The PSF core (Moffat).
    halo_fraction, halo_fwhm, halo_beta : float
        The halo (Moffat) and its share of the flux.
    spike_fraction, spike_length, spike_width : float
        Each spike's share of the flux (two spikes) and its Gaussian sigmas
        along and across the arm.
    noise_fraction : float
        Masks end where the light falls to this fraction of the pixel noise.
    """

    psf_fwhm: float = 0.725
    psf_beta: float = 3.5
    halo_fraction: float = 0.03
    halo_fwhm: float = 5.8
    halo_beta: float = 2.0
    spike_fraction: float = 0.005
    spike_length: float = 10.0
    spike_width: float = 0.18
    noise_fraction: float = 0.1

    def halo_radius(self, flux, level):
        """Radius (arcsec) where core plus halo light (per arcsec^2) falls to ``level``; 0 if never above.

        Both Moffats fall monotonically, so their sum does: the radius is
        found by bisection, vectorised over the stars.
        """
        flux = np.atleast_1d(np.asarray(flux, float))
        core_peak, core_rd = _moffat_peak(1.0 - self.halo_fraction - 2.0 * self.spike_fraction,
                                          self.psf_fwhm, self.psf_beta)
        halo_peak, halo_rd = _moffat_peak(self.halo_fraction, self.halo_fwhm, self.halo_beta)

        def light(r):
            return flux * (core_peak * (1.0 + (r / core_rd) ** 2) ** -self.psf_beta
                           + halo_peak * (1.0 + (r / halo_rd) ** 2) ** -self.halo_beta)

        low = np.zeros_like(flux)
        high = np.full_like(flux, 1.0)
        while np.any(light(high) > level):
            high = np.where(light(high) > level, 2.0 * high, high)
        for _ in range(40):
            middle = 0.5 * (low + high)
            above = light(middle) > level
            low = np.where(above, middle, low)
            high = np.where(above, high, middle)
        return np.where(light(0.0) > level, high, 0.0)

    def spike_size(self, flux, level):
        """Arm length and half width (arcsec) of the spikes; 0 where the spike peak is below ``level``."""
        flux = np.atleast_1d(np.asarray(flux, float))
        peak = self.spike_fraction * flux / (2.0 * np.pi * self.spike_length * self.spike_width)
        depth = np.sqrt(2.0 * np.log(np.maximum(peak / level, 1.0)))
        return self.spike_length * depth, self.spike_width * depth

    def sizes(self, mag, zero_point, noise_sigma, pixel_scale):
        """Halo radius, spike length and spike half width in pixels of stars of magnitude ``mag``.

        Parameters
        ----------
        mag : array
            Catalogue magnitudes.
        zero_point : float
            Image zero point (``mag = zero_point - 2.5 log10(ADU)``).
        noise_sigma : float
            Pixel noise (ADU).
        pixel_scale : float
            Arcsec per pixel.
        """
        flux = 10.0 ** (-0.4 * (np.asarray(mag, float) - zero_point))
        level = self.noise_fraction * noise_sigma / pixel_scale**2  # per arcsec^2
        radius = self.halo_radius(flux, level)
        length, half_width = self.spike_size(flux, level)
        return radius / pixel_scale, length / pixel_scale, half_width / pixel_scale


def noise_sigma(weight) -> float:
    """Pixel noise from an inverse-variance weight map: median of ``1/sqrt(w)`` where ``w > 0``."""
    weight = np.asarray(weight)
    if weight.size > 4_000_000:  # a full tile: a regular subsample gives the same median
        step = int(np.ceil(np.sqrt(weight.size / 4_000_000)))
        weight = weight[::step, ::step]
    positive = weight[weight > 0]
    if positive.size == 0:
        raise ValueError("the weight is zero everywhere: no noise level to size masks by")
    return float(np.median(1.0 / np.sqrt(positive)))
