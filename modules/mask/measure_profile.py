"""Measure the bright-star profile (core, halo, spikes) from the images.

The mask module's ``STAR_MASK_SIZING = profile`` sizes halo and spike masks
from a star's flux times a profile of fixed shape (:mod:`.profile`). On real
data that profile is unknown: here it is measured by stacking the bright
stars of a set of images, each normalised by its catalogue flux
(``10^(-0.4 (mag - zero point))``), so that radii beyond a saturated core
still fix the halo's share of the flux.

Per star (one cutout out to the sky annulus, numpy throughout):

- pixels are dropped where the weight is 0, the value is at or above
  ``saturation_fraction x SATURATE`` (grown by 2 pixels: the nonlinear
  edge), or where a neighbouring catalogue star's light (its flux times a
  prior profile) exceeds 0.1 of the star's own prior light plus 0.01 of
  the pixel noise;
- sky: a plane fitted (with clipping) to the annulus ``sky_radii``
  outside the strips (a star near an edge has a one-sided annulus, the
  sky a gradient);
- azimuthal profile: clipped means (3 sigma from the median and MAD,
  3 passes) in log-spaced annuli, leaving out the strips of half width
  ``strip_half_width`` along both pixel axes (the spikes and the bleed
  trails of saturated columns; near the centre narrowed to sectors of
  about 19 degrees so that the core keeps its pixels) and every annulus inside the saturated core
  (1.5 times the largest radius of the saturated region at the star's
  centre, its bleed trail aside, plus 2 pixels);
- spike pixels: the strips beyond that core, kept per pixel for the fit.

Across stars, each annulus is the weighted mean of the stars' normalised
values (weights ``1 / (error^2 + (0.1 median)^2)``: no star counts more than
one measured to 10 %; stars further than 4 such errors from the median are
left out), its error scaled up by the scatter of the stars about it when
they scatter more than their errors say (faint objects in the annuli). The model fitted to the stack is the one :mod:`.profile` uses:
``(1 - f_h - 2 f_s)`` Moffat core (FWHM fitted, beta given) plus an ``f_h``
Moffat halo (FWHM and beta fitted), averaged exactly over each annulus
(Moffat enclosed flux) and minus its own mean in the sky annulus (the
halo reaches the sky annulus). The spikes are fitted per strip pixel to the
light minus the fitted azimuthal model: two Gaussians along the pixel axes,
sigma ``length`` along and ``width`` across, sampled at the pixel centres
(every length is that of the light per pixel, pixel response included, as
the mask sizing and the simulator use them). Errors: from the fit's Jacobian, scaled by the reduced
chi^2 when it exceeds 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .profile import StarProfile

#: Profile parameters written to and read from a profile file, as the mask module's options.
PROFILE_KEYS = {
    "STAR_PROFILE_PSF_FWHM": "psf_fwhm",
    "STAR_PROFILE_PSF_BETA": "psf_beta",
    "STAR_PROFILE_HALO_FRACTION": "halo_fraction",
    "STAR_PROFILE_HALO_FWHM": "halo_fwhm",
    "STAR_PROFILE_HALO_BETA": "halo_beta",
    "STAR_PROFILE_SPIKE_FRACTION": "spike_fraction",
    "STAR_PROFILE_SPIKE_LENGTH": "spike_length",
    "STAR_PROFILE_SPIKE_WIDTH": "spike_width",
}
FILE_KIND = "shapepipe star profile"
FILE_VERSION = 1


# --------------------------------------------------------------------------- grouped statistics

def _grouped_median(group, values, n_groups):
    """Median of ``values`` in each of ``n_groups`` groups (NaN for empty groups)."""
    order = np.lexsort((values, group))
    sorted_values = values[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    result = np.full(n_groups, np.nan)
    has = counts > 0
    low = starts[has] + (counts[has] - 1) // 2
    high = starts[has] + counts[has] // 2
    result[has] = 0.5 * (sorted_values[low] + sorted_values[high])
    return result


def grouped_clipped_mean(group, values, n_groups, nsigma=3.0, passes=3, min_count=8):
    """Per group: mean of ``values`` within ``nsigma`` robust sigmas of the median, and its error.

    Parameters
    ----------
    group : array of int
        Group index (0 .. n_groups - 1) of each value.
    values : array
        The values.
    n_groups : int
        Number of groups.
    nsigma : float
        Clipping threshold in units of ``1.4826 MAD``.
    passes : int
        Clipping passes.
    min_count : int
        Groups with fewer kept values get NaN.

    Returns
    -------
    mean, error, count : arrays of length ``n_groups``
    """
    group = np.asarray(group, int)
    values = np.asarray(values, float)
    keep = np.ones(values.size, bool)
    for _ in range(passes):
        median = _grouped_median(group[keep], values[keep], n_groups)
        mad = _grouped_median(group[keep], np.abs(values[keep] - median[group[keep]]), n_groups)
        sigma = 1.4826 * mad
        # A group of identical values (sigma 0) keeps them all.
        keep = np.abs(values - median[group]) <= nsigma * np.where(sigma > 0, sigma, np.inf)[group]
    count = np.bincount(group[keep], minlength=n_groups)
    total = np.bincount(group[keep], values[keep], minlength=n_groups)
    total2 = np.bincount(group[keep], values[keep] ** 2, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        variance = np.maximum(total2 / count - mean**2, 0.0) * count / np.maximum(count - 1, 1)
        error = np.sqrt(variance / count)
    bad = count < min_count
    mean[bad] = np.nan
    error[bad] = np.nan
    return mean, error, count


# --------------------------------------------------------------------------- model

def _moffat_enclosed(r, fwhm, beta):
    """Fraction of a unit-flux Moffat's light within radius ``r``."""
    rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return 1.0 - (1.0 + (r / rd) ** 2) ** (1.0 - beta)


def annulus_mean(inner, outer, psf_fwhm, psf_beta, halo_fraction, halo_fwhm, halo_beta, spike_fraction=0.0):
    """Mean surface brightness (per arcsec^2, unit flux) of core plus halo between two radii (arcsec)."""
    core = 1.0 - halo_fraction - 2.0 * spike_fraction

    def enclosed(r):
        return core * _moffat_enclosed(r, psf_fwhm, psf_beta) + halo_fraction * _moffat_enclosed(r, halo_fwhm,
                                                                                                    halo_beta)

    return (enclosed(outer) - enclosed(inner)) / (np.pi * (outer**2 - inner**2))


def azimuthal_light(r, psf_fwhm, psf_beta, halo_fraction, halo_fwhm, halo_beta, spike_fraction=0.0):
    """Surface brightness (per arcsec^2, unit flux) of core plus halo at radius ``r`` (arcsec)."""
    def moffat(fraction, fwhm, beta):
        rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        return fraction * (beta - 1.0) / (np.pi * rd**2) * (1.0 + (r / rd) ** 2) ** -beta

    return (moffat(1.0 - halo_fraction - 2.0 * spike_fraction, psf_fwhm, psf_beta)
            + moffat(halo_fraction, halo_fwhm, halo_beta))


def spike_pixel_light(along, across, fraction, length, width, pixel):
    """Light (unit star flux) of one spike in a pixel centred ``along``, ``across`` (arcsec) from the star.

    A Gaussian of sigma ``length`` along the arm and ``width`` across
    holding ``fraction``, sampled at the pixel centre: the profile is the
    light per pixel as the image records it (pixel response included, as
    for the PSF core and as :mod:`.profile` and the simulator use it).
    """
    return (fraction / (2.0 * np.pi * length * width) * pixel**2
            * np.exp(-0.5 * ((along / length) ** 2 + (across / width) ** 2)))


# --------------------------------------------------------------------------- per star

@dataclass
class MeasureSettings:
    """How stars are measured (lengths in arcsec).

    Attributes
    ----------
    edges : array
        Annulus edges of the azimuthal profile.
    sky_radii : (float, float)
        Inner and outer radius of the sky annulus.
    strip_half_width : float
        Half width of the strips along the pixel axes left out of the
        azimuthal profile and used for the spikes.
    saturation_fraction : float
        Pixels at or above this fraction of the image's saturation level
        are the saturated, nonlinear core.
    psf_beta : float
        Moffat index of the core (not fitted: the saturated cores leave
        too few radii to fix it).
    sector_slope : float
        Near the centre the strips narrow to sectors of half width
        ``sector_slope x r`` (about 19 degrees).
    neighbour_ratio, neighbour_noise_fraction : float
        A pixel is left out where the light of a neighbouring catalogue star
        (its flux times ``prior``, halo and spikes) exceeds
        ``neighbour_ratio`` times the star's own (``prior``) light plus
        ``neighbour_noise_fraction`` times the pixel noise (the sky annulus
        must be free of a neighbour's halo to a small fraction of the noise).
    prior : StarProfile
        Profile used only to find the neighbours' light and to start the fit.
    """

    edges: np.ndarray = field(default_factory=lambda: np.geomspace(0.4, 30.0, 21))
    sky_radii: tuple = (40.0, 60.0)
    strip_half_width: float = 1.0
    saturation_fraction: float = 0.8
    psf_beta: float = 3.5
    sector_slope: float = 0.35
    neighbour_ratio: float = 0.1
    neighbour_noise_fraction: float = 0.01
    prior: StarProfile = field(default_factory=StarProfile)


@dataclass
class StarMeasurement:
    """One star's normalised measurements.

    Attributes
    ----------
    profile, error : arrays
        Azimuthal profile per annulus (per arcsec^2, unit flux; NaN where
        not measured) and its error.
    inner_radius : float
        Radius (arcsec) inside which the star is not used (saturated core).
    dx, dy, light, sigma : arrays
        Strip pixels for the spike fit: offsets (arcsec) from the star
        along the pixel axes, light per pixel per unit flux minus the sky,
        and its noise.
    """

    profile: np.ndarray
    error: np.ndarray
    inner_radius: float
    dx: np.ndarray
    dy: np.ndarray
    light: np.ndarray
    sigma: np.ndarray


def measure_star(image, weight, x, y, flux, pixel_scale, settings: MeasureSettings, saturate=None,
                 neighbours=()):
    """Measure one star's azimuthal profile and keep its strip pixels.

    Parameters
    ----------
    image, weight : 2-d arrays
        Science image (ADU, sky not subtracted or subtracted: a local sky is
        taken) and inverse-variance weight.
    x, y : float
        Star position (0-based pixels).
    flux : float
        Catalogue flux (ADU) of the star.
    pixel_scale : float
        Arcsec per pixel.
    settings : MeasureSettings
    saturate : float, optional
        Saturation level (ADU) of the image.
    neighbours : sequence of (x, y, flux)
        Other catalogue stars near this one.

    Returns
    -------
    StarMeasurement or None
        None when the star has no usable sky annulus.
    """
    from scipy.ndimage import binary_dilation, label

    ny, nx = image.shape
    reach = settings.sky_radii[1] / pixel_scale
    x0, x1 = max(int(np.floor(x - reach)), 0), min(int(np.ceil(x + reach)) + 1, nx)
    y0, y1 = max(int(np.floor(y - reach)), 0), min(int(np.ceil(y + reach)) + 1, ny)
    if x1 <= x0 or y1 <= y0:
        return None
    data = np.asarray(image[y0:y1, x0:x1], float)
    wgt = np.asarray(weight[y0:y1, x0:x1], float)
    dx = ((np.arange(x0, x1) - x) * pixel_scale)[None, :]
    dy = ((np.arange(y0, y1) - y) * pixel_scale)[:, None]
    r = np.hypot(dx, dy)
    half = settings.strip_half_width
    # Strips along the axes, narrowed to sectors near the centre so that the core keeps pixels.
    strip_half = np.minimum(half, settings.sector_slope * r)
    strip = (np.abs(dx) <= strip_half) | (np.abs(dy) <= strip_half)

    saturated = np.zeros(data.shape, bool)
    if saturate is not None and np.isfinite(saturate) and saturate > 0:
        saturated = binary_dilation(data >= settings.saturation_fraction * saturate, iterations=2)
    usable = (wgt > 0) & np.isfinite(data) & ~saturated
    if neighbours:
        # Neighbours' light (prior profile) against this star's plus the pixel noise.
        prior = settings.prior
        noise = float(np.median(1.0 / np.sqrt(wgt[wgt > 0]))) if np.any(wgt > 0) else np.inf
        own = flux * azimuthal_light(r, prior.psf_fwhm, prior.psf_beta, prior.halo_fraction, prior.halo_fwhm,
                                     prior.halo_beta, prior.spike_fraction) * pixel_scale**2
        level = settings.neighbour_ratio * own + settings.neighbour_noise_fraction * noise
        spike_peak = prior.spike_fraction / (2.0 * np.pi * prior.spike_length * prior.spike_width)
        for xn, yn, fn in neighbours:
            dxn = ((np.arange(x0, x1) - xn) * pixel_scale)[None, :]
            dyn = ((np.arange(y0, y1) - yn) * pixel_scale)[:, None]
            rn = np.hypot(dxn, dyn)
            light = fn * azimuthal_light(rn, prior.psf_fwhm, prior.psf_beta, prior.halo_fraction, prior.halo_fwhm,
                                         prior.halo_beta, prior.spike_fraction) * pixel_scale**2
            on_arm = (np.abs(dxn) <= half) | (np.abs(dyn) <= half)
            light = light + np.where(on_arm, fn * spike_peak * np.exp(-0.5 * (rn / prior.spike_length) ** 2)
                                     * pixel_scale**2, 0.0)
            usable &= light <= level
    # The star's own saturated core: the saturated regions reaching within 2 pixels of its centre (not
    # a neighbour's), without the bleed trails (the vertical strip beyond the core box).
    inner = 0.0
    if saturated.any():
        labels, _ = label(saturated)
        central = np.unique(labels[saturated & (r <= 2.0 * pixel_scale)])
        bleed = (np.abs(dx) <= half) & (np.abs(dy) > half)
        core_saturated = np.isin(labels, central[central > 0]) & ~bleed
        if core_saturated.any():
            inner = 1.5 * float(r[core_saturated].max()) + 2.0 * pixel_scale

    sky_pixels = usable & ~strip & (r >= settings.sky_radii[0]) & (r < settings.sky_radii[1])
    if np.count_nonzero(sky_pixels) < 50:
        return None
    sky = _sky_plane(np.broadcast_to(dx, data.shape)[sky_pixels], np.broadcast_to(dy, data.shape)[sky_pixels],
                     data[sky_pixels])
    if sky is None:
        return None
    sky, sky_error = sky
    # A plane, not a constant: the annulus of a star near an edge is one-sided and the sky has gradients.
    data = data - (sky[0] + sky[1] * dx + sky[2] * dy)

    edges = np.asarray(settings.edges, float)
    n_annuli = edges.size - 1
    annulus = np.searchsorted(edges, r, side="right") - 1
    chosen = usable & ~strip & (annulus >= 0) & (annulus < n_annuli) & (r >= inner)
    norm = flux * pixel_scale**2  # per arcsec^2 per unit flux
    mean, error, _ = grouped_clipped_mean(annulus[chosen], data[chosen] / norm, n_annuli)
    # The sky's error offsets all annuli of the star alike; added to each (its correlation ignored).
    error = np.hypot(error, sky_error / norm)
    # Annuli cut by the saturated core would mix radii unevenly: measured only when wholly outside it.
    mean[edges[:-1] < inner] = np.nan
    error[edges[:-1] < inner] = np.nan

    spike = usable & strip & (r >= max(inner, half / settings.sector_slope)) & (r < settings.sky_radii[0])
    ddx = np.broadcast_to(dx, data.shape)[spike]
    ddy = np.broadcast_to(dy, data.shape)[spike]
    return StarMeasurement(profile=mean, error=error, inner_radius=inner, dx=ddx, dy=ddy,
                           light=data[spike] / flux, sigma=1.0 / np.sqrt(wgt[spike]) / flux)


def _sky_plane(dx, dy, values, nsigma=3.0, passes=4):
    """Plane ``a + b dx + c dy`` fitted to sky pixels with clipping at ``nsigma`` robust sigmas; None if too few."""
    keep = np.ones(values.size, bool)
    coefficients = None
    for _ in range(passes):
        if np.count_nonzero(keep) < 50:
            return None
        design = np.column_stack([np.ones(np.count_nonzero(keep)), dx[keep], dy[keep]])
        coefficients = np.linalg.lstsq(design, values[keep], rcond=None)[0]
        residual = values - (coefficients[0] + coefficients[1] * dx + coefficients[2] * dy)
        sigma = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        new_keep = np.abs(residual - np.median(residual[keep])) <= nsigma * sigma if sigma > 0 else keep
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    # The error of the plane at the star (its constant term), shared by every annulus of the star.
    error = float(np.std(residual[keep]) / np.sqrt(np.count_nonzero(keep)))
    return coefficients, error


# --------------------------------------------------------------------------- stack and fits

def stack_profiles(profiles, errors, floor=0.1, nsigma=4.0):
    """Weighted, clipped mean across stars of normalised profiles ``(n_stars, n_annuli)``.

    Returns
    -------
    mean, error, count : arrays of length ``n_annuli``
    """
    values = np.asarray(profiles, float)
    errs = np.asarray(errors, float)
    good = np.isfinite(values) & np.isfinite(errs) & (errs > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # annuli no star measured: NaN, as wanted
        median = np.nanmedian(np.where(good, values, np.nan), axis=0)
    total_error2 = errs**2 + (floor * np.abs(median)) ** 2
    with np.errstate(invalid="ignore"):
        good &= np.abs(values - median) <= nsigma * np.sqrt(total_error2)
    w = np.where(good, 1.0 / np.where(good, total_error2, 1.0), 0.0)
    count = good.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(w * np.where(good, values, 0.0), axis=0) / w.sum(axis=0)
        error = 1.0 / np.sqrt(w.sum(axis=0))
        # The stars scatter more than their errors say (faint galaxies and stars in the annuli, PSF
        # changes between exposures): the error is scaled by the scatter about the mean when larger.
        chi2 = np.sum(np.where(good, (values - mean) ** 2 * w, 0.0), axis=0) / np.maximum(count - 1, 1)
        error = error * np.sqrt(np.where(count > 1, np.maximum(chi2, 1.0), 1.0))
    mean[count == 0] = np.nan
    error[count == 0] = np.nan
    return mean, error, count


def _covariance_errors(result, n_data):
    """Parameter errors from a scipy least_squares result (scaled by the reduced chi^2 when above 1)."""
    jac = result.jac
    dof = max(n_data - jac.shape[1], 1)
    chi2 = 2.0 * result.cost / dof
    try:
        cov = np.linalg.inv(jac.T @ jac) * max(chi2, 1.0)
        return np.sqrt(np.maximum(np.diag(cov), 0.0)), chi2
    except np.linalg.LinAlgError:
        return np.full(jac.shape[1], np.nan), chi2


def fit_azimuthal(edges, stack, error, psf_beta, sky_radii, spike_fraction=0.0, start=None):
    """Fit core FWHM, halo fraction, halo FWHM and halo beta to a stacked azimuthal profile.

    Returns
    -------
    values, errors : dict
        Keys ``psf_fwhm``, ``halo_fraction``, ``halo_fwhm``, ``halo_beta``.
    chi2 : float
        Reduced chi^2.
    """
    from scipy.optimize import least_squares

    edges = np.asarray(edges, float)
    use = np.isfinite(stack) & np.isfinite(error) & (error > 0)
    if np.count_nonzero(use) < 6:
        raise ValueError(f"only {np.count_nonzero(use)} annuli measured: too few to fit the halo (6 needed)")
    inner, outer = edges[:-1][use], edges[1:][use]
    data, sigma = stack[use], error[use]
    start = start or {"psf_fwhm": 0.725, "halo_fraction": 0.03, "halo_fwhm": 5.8, "halo_beta": 2.0}

    def model(p):
        psf_fwhm, log_fraction, halo_fwhm, halo_beta = p
        args = (psf_fwhm, psf_beta, 10.0**log_fraction, halo_fwhm, halo_beta, spike_fraction)
        return annulus_mean(inner, outer, *args) - annulus_mean(sky_radii[0], sky_radii[1], *args)

    p0 = [start["psf_fwhm"], np.log10(start["halo_fraction"]), start["halo_fwhm"], start["halo_beta"]]
    result = least_squares(lambda p: (model(p) - data) / sigma, p0,
                           bounds=([0.2, -5.0, 0.5, 1.05], [5.0, np.log10(0.5), 120.0, 8.0]), x_scale="jac")
    errs, chi2 = _covariance_errors(result, data.size)
    psf_fwhm, log_fraction, halo_fwhm, halo_beta = result.x
    fraction = 10.0**log_fraction
    values = {"psf_fwhm": psf_fwhm, "halo_fraction": fraction, "halo_fwhm": halo_fwhm, "halo_beta": halo_beta}
    errors = {"psf_fwhm": errs[0], "halo_fraction": fraction * np.log(10.0) * errs[1], "halo_fwhm": errs[2],
              "halo_beta": errs[3]}
    return values, errors, chi2


def fit_spikes(dx, dy, light, sigma, pixel_scale, background=None, start=None, passes=3, clip=3.0):
    """Fit spike fraction, length and width to strip pixels (light per unit flux, sky removed).

    Both spikes are modelled in every pixel: the horizontal one (along x)
    and the vertical one (along y), on top of ``(1 + a) background`` (the
    fitted azimuthal light, per pixel; ``a`` is fitted too: across a strip
    the halo holds as much light as the spike, so a few per cent error in
    the halo would otherwise move the spike fraction). Pixels further than
    ``clip`` sigma from the previous pass's model (neighbouring objects,
    cosmic rays) are left out of the next pass.

    Returns
    -------
    values, errors : dict
        Keys ``spike_fraction``, ``spike_length``, ``spike_width``.
    chi2 : float
        Reduced chi^2.
    """
    from scipy.optimize import least_squares

    dx, dy, light, sigma = (np.asarray(a, float) for a in (dx, dy, light, sigma))
    if light.size < 20:
        raise ValueError(f"only {light.size} pixels along the spikes: too few to fit them")
    start = start or {"spike_fraction": 0.005, "spike_length": 10.0, "spike_width": 0.18}

    background = np.zeros(light.size) if background is None else np.asarray(background, float)

    def model(p, sel):
        fraction, length, width = 10.0 ** p[0], p[1], p[2]
        return (spike_pixel_light(dx[sel], dy[sel], fraction, length, width, pixel_scale)
                + spike_pixel_light(dy[sel], dx[sel], fraction, length, width, pixel_scale)
                + (1.0 + p[3]) * background[sel])

    keep = np.ones(light.size, bool)
    p = np.array([np.log10(start["spike_fraction"]), start["spike_length"], start["spike_width"], 0.0])
    for _ in range(passes):
        result = least_squares(lambda q: (model(q, keep) - light[keep]) / sigma[keep], p,
                               bounds=([-6.0, 0.5, 0.01, -1.0], [np.log10(0.2), 200.0, 5.0, 1.0]), x_scale="jac")
        p = result.x
        all_pixels = np.ones(light.size, bool)
        new_keep = np.abs(model(p, all_pixels) - light) <= clip * sigma
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    errs, chi2 = _covariance_errors(result, int(np.count_nonzero(keep)))
    fraction = 10.0 ** p[0]
    values = {"spike_fraction": fraction, "spike_length": p[1], "spike_width": p[2]}
    errors = {"spike_fraction": fraction * np.log(10.0) * errs[0], "spike_length": errs[1], "spike_width": errs[2]}
    return values, errors, chi2


# --------------------------------------------------------------------------- whole measurement

@dataclass
class MeasuredProfile:
    """A measured star profile with its errors and the data behind it."""

    profile: StarProfile
    errors: dict
    n_stars: int
    n_images: int
    chi2: dict
    edges: np.ndarray
    stack: np.ndarray
    stack_error: np.ndarray
    stack_count: np.ndarray

    def options(self) -> dict:
        """The mask module's ``STAR_PROFILE_*`` option values."""
        return {key: float(getattr(self.profile, attr)) for key, attr in PROFILE_KEYS.items()}


def fit_profile(stars, settings: MeasureSettings, pixel_scale, start: StarProfile | None = None,
                n_images=0) -> MeasuredProfile:
    """Stack per-star measurements and fit the halo and the spikes (two rounds: each needs the other)."""
    stars = [s for s in stars if s is not None]
    if not stars:
        raise ValueError("no bright star measured: no profile")
    start = start or settings.prior
    stack, stack_error, count = stack_profiles([s.profile for s in stars], [s.error for s in stars])
    dx = np.concatenate([s.dx for s in stars])
    dy = np.concatenate([s.dy for s in stars])
    light = np.concatenate([s.light for s in stars])
    sigma = np.concatenate([s.sigma for s in stars])
    r = np.hypot(dx, dy)
    spikes = {"spike_fraction": start.spike_fraction, "spike_length": start.spike_length,
              "spike_width": start.spike_width}
    halo = {"psf_fwhm": start.psf_fwhm, "halo_fraction": start.halo_fraction, "halo_fwhm": start.halo_fwhm,
            "halo_beta": start.halo_beta}
    for _ in range(2):
        halo, halo_errors, halo_chi2 = fit_azimuthal(settings.edges, stack, stack_error, settings.psf_beta,
                                                     settings.sky_radii, spikes["spike_fraction"], start=halo)
        azimuthal = azimuthal_light(r, halo["psf_fwhm"], settings.psf_beta, halo["halo_fraction"],
                                    halo["halo_fwhm"], halo["halo_beta"], spikes["spike_fraction"])
        sky_level = annulus_mean(settings.sky_radii[0], settings.sky_radii[1], halo["psf_fwhm"], settings.psf_beta,
                                 halo["halo_fraction"], halo["halo_fwhm"], halo["halo_beta"],
                                 spikes["spike_fraction"])
        background = (azimuthal - sky_level) * pixel_scale**2
        spikes, spike_errors, spike_chi2 = fit_spikes(dx, dy, light, sigma, pixel_scale, background, start=spikes)
    profile = StarProfile(psf_fwhm=halo["psf_fwhm"], psf_beta=settings.psf_beta,
                          halo_fraction=halo["halo_fraction"], halo_fwhm=halo["halo_fwhm"],
                          halo_beta=halo["halo_beta"], spike_fraction=spikes["spike_fraction"],
                          spike_length=spikes["spike_length"], spike_width=spikes["spike_width"],
                          noise_fraction=start.noise_fraction)
    errors = {**halo_errors, **spike_errors, "psf_beta": 0.0}
    return MeasuredProfile(profile=profile, errors={k: float(v) for k, v in errors.items()}, n_stars=len(stars),
                           n_images=n_images, chi2={"halo": float(halo_chi2), "spikes": float(spike_chi2)},
                           edges=np.asarray(settings.edges, float), stack=stack, stack_error=stack_error,
                           stack_count=count)


def image_pixel_scale(wcs) -> float:
    """Mean pixel scale (arcsec) of a celestial WCS."""
    return float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600.0)


def measure_image(image, weight, wcs, zero_point, ra, dec, mag, settings: MeasureSettings, max_mag,
                  min_mag=-np.inf, saturate=None):
    """Measure every catalogue star with ``min_mag <= mag < max_mag`` centred on the image.

    Stars of the catalogue outside that range (but on or near the image)
    are the neighbours whose light is left out.

    Returns
    -------
    list of StarMeasurement
    float
        The image's pixel scale (arcsec).
    """
    scale = image_pixel_scale(wcs)
    ny, nx = image.shape
    x, y = wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
    flux = 10.0 ** (-0.4 * (np.asarray(mag, float) - zero_point))
    reach = settings.sky_radii[1] / scale
    near = np.isfinite(x) & np.isfinite(y) & (x > -2 * reach) & (x < nx + 2 * reach) & (y > -2 * reach) & (
        y < ny + 2 * reach)
    targets = np.flatnonzero(near & (mag >= min_mag) & (mag < max_mag) & (x >= -0.5) & (x < nx - 0.5)
                             & (y >= -0.5) & (y < ny - 0.5))
    measured = []
    for k in targets:
        others = np.flatnonzero(near & (np.hypot(x - x[k], y - y[k]) < 2 * reach))
        others = others[others != k]
        neighbours = [(x[j], y[j], flux[j]) for j in others]
        measured.append(measure_star(image, weight, x[k], y[k], flux[k], scale, settings, saturate, neighbours))
    return [m for m in measured if m is not None], scale


# --------------------------------------------------------------------------- profile file

def profile_document(measured: MeasuredProfile, sources=()) -> dict:
    """The JSON document of a measured profile (option values, errors, the stacked annuli)."""
    return {
        "kind": FILE_KIND,
        "version": FILE_VERSION,
        "options": measured.options(),
        "errors": {key: measured.errors.get(attr, float("nan")) for key, attr in PROFILE_KEYS.items()},
        "n_stars": measured.n_stars,
        "n_images": measured.n_images,
        "reduced_chi2": measured.chi2,
        "annuli": {
            "inner_arcsec": measured.edges[:-1].tolist(),
            "outer_arcsec": measured.edges[1:].tolist(),
            "light_per_arcsec2_per_flux": [None if not np.isfinite(v) else float(v) for v in measured.stack],
            "error": [None if not np.isfinite(v) else float(v) for v in measured.stack_error],
            "n_stars": [int(v) for v in measured.stack_count],
        },
        "sources": [str(s) for s in sources],
    }


def write_profile_file(path, measured: MeasuredProfile, sources=()) -> None:
    """Write a measured profile as JSON, atomically."""
    import json

    from shapepipe.atomic import write_text_atomic

    text = json.dumps(profile_document(measured, sources), indent=1, allow_nan=True)
    write_text_atomic(path, text + "\n")


def read_profile_file(path) -> dict:
    """Read the ``STAR_PROFILE_*`` option values of a profile file.

    Raises
    ------
    ValueError
        Naming the file and the key, when the file cannot be read, is not a
        star profile, or a value is missing, not a finite number or outside
        its range.
    """
    import json

    try:
        with open(path) as handle:
            document = json.load(handle)
    except OSError as error:
        raise ValueError(f"star profile file {path}: cannot read it: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"star profile file {path}: not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != FILE_KIND:
        raise ValueError(f"star profile file {path}: not a star profile (key 'kind' is not {FILE_KIND!r})")
    if document.get("version") != FILE_VERSION:
        raise ValueError(f"star profile file {path}: key 'version' is {document.get('version')!r}, "
                         f"expected {FILE_VERSION}")
    options = document.get("options")
    if not isinstance(options, dict):
        raise ValueError(f"star profile file {path}: no 'options' object")
    values = {}
    for key in PROFILE_KEYS:
        value = options.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"star profile file {path}: 'options' key {key} is {value!r}, expected a finite number")
        values[key] = float(value)
    for key in ("STAR_PROFILE_PSF_FWHM", "STAR_PROFILE_HALO_FWHM", "STAR_PROFILE_SPIKE_LENGTH",
                "STAR_PROFILE_SPIKE_WIDTH"):
        if values[key] <= 0:
            raise ValueError(f"star profile file {path}: 'options' key {key} must be positive, got {values[key]}")
    for key in ("STAR_PROFILE_PSF_BETA", "STAR_PROFILE_HALO_BETA"):
        if values[key] <= 1:
            raise ValueError(f"star profile file {path}: 'options' key {key} must exceed 1, got {values[key]}")
    halo, spike = values["STAR_PROFILE_HALO_FRACTION"], values["STAR_PROFILE_SPIKE_FRACTION"]
    if min(halo, spike) < 0 or halo + 2 * spike >= 1:
        raise ValueError(f"star profile file {path}: 'options' keys STAR_PROFILE_HALO_FRACTION + 2 "
                         "STAR_PROFILE_SPIKE_FRACTION must lie in [0, 1)")
    return values


def measure_files(pairs, star_cat, settings: MeasureSettings | None = None, max_mag=17.0, min_mag=-np.inf,
                  zero_point_key="PHOTZP", saturate_key="SATURATE", hdu=0) -> MeasuredProfile:
    """Measure the star profile over image and weight files (the mask module's exposure CCDs).

    Parameters
    ----------
    pairs : iterable of (path, path)
        Image and weight files.
    star_cat : StarCatalogue
        Bright stars (:func:`.catalogues.read_star_catalogue`): positions and magnitudes.
    settings : MeasureSettings, optional
    max_mag, min_mag : float
        Stars with ``min_mag <= mag < max_mag`` are stacked.
    zero_point_key, saturate_key : str
        Image header keywords of the zero point (required) and the
        saturation level (optional).
    hdu : int
        HDU of the images (0 also finds the image of a tile-compressed file).

    Raises
    ------
    ValueError
        Naming the file, when an image cannot be read or lacks the zero point.
    """
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe_modules.io.images import image_hdu

    settings = settings or MeasureSettings()
    stars, scales, n_images = [], [], 0
    for image_path, weight_path in pairs:
        try:
            with fits.open(image_path) as hdus:
                chosen = image_hdu(hdus, hdu)
                header = chosen.header.copy()
                image = np.asarray(chosen.data, float)
            with fits.open(weight_path) as hdus:
                weight = np.asarray(image_hdu(hdus, hdu).data, float)
        except (OSError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"cannot read {image_path} or {weight_path}: {error}") from None
        if image.ndim != 2 or weight.shape != image.shape:
            raise ValueError(f"{weight_path} has shape {weight.shape} but image {image_path} has {image.shape}")
        try:
            zero_point = float(header[zero_point_key])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"image {image_path}: no numeric header keyword {zero_point_key}") from None
        saturate = header.get(saturate_key)
        saturate = float(saturate) if isinstance(saturate, (int, float)) and not isinstance(saturate, bool) else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
        measured, scale = measure_image(image, weight, wcs, zero_point, star_cat.ra, star_cat.dec, star_cat.mag,
                                        settings, max_mag, min_mag, saturate)
        stars += measured
        scales.append(scale)
        n_images += 1
    if not stars:
        raise ValueError(f"no star with {min_mag} <= mag < {max_mag} measured on {n_images} images")
    return fit_profile(stars, settings, float(np.median(scales)), n_images=n_images)
