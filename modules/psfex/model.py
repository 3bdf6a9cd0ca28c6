"""The built-in PSFEx-equivalent engine: a pixel-basis PSF varying with position.

The model is PSFEx's: an image on a grid of ``PSF_SIZE`` pixels with step
``PSF_SAMPLING`` image pixels, each grid value a polynomial of degree
``PSFVAR_DEGREES`` in the scaled position ``u = (x - POLZERO1) / POLSCAL1``,
``v = (y - POLZERO2) / POLSCAL2``.

The fit is done in each star's own pixel frame ("super-resolution" fit):
the model grid is resampled (Lanczos-3) to the star's sub-pixel centre and
compared with the star's pixels, so the data are never interpolated. The
normal equations of this linear least-squares problem are solved by
preconditioned conjugate gradients (the preconditioner is the plain
per-pixel fit, exact for unshifted stars). The plain per-pixel fit of
re-centred (interpolated) stamps is available as ``super_resolution=False``;
interpolating noisy stamps smooths them, which biases the PSF size upwards.

Around the linear solve: per-star flux normalisation, weights with
background, Poisson and ``PSF_ACCURACY`` terms, optional re-centring
(``PSF_RECENTER``), iterative chi2 clipping of bad stars, and guards that
lower the polynomial degree when stars are too few or leave a quadrant of
the field empty. Positions are scaled to the range covered by accepted
stars, and evaluation clamps to that range (see
:mod:`shapepipe_modules.io.psfex_file`).

Degree guard against noisy extrapolation. With ~50 stars per CCD a
quadratic ellipticity mostly fits noise, which it extrapolates into the
corners (errors up to 0.02 there, for PSFEx as for a full quadratic fit
here), while the size curvature is often real. So the ellipticity and the
size get their own degrees (each at most ``PSFVAR_DEGREES``), chosen from
the stars' own shapes (:func:`star_shapes`): for each degree the engine
estimates the expected error over the whole star-covered box, corners
included (:func:`field_errors`, Mallows' Cp over the box), and raises the
degree while that error drops (:func:`select_degrees`), by more than its
standard error for a quadratic (``FitOptions.shear_margins``,
``size_margins``). Cp charges the noise of the star moments; on noise
realisations of a CCD the variance of the pixel model's ellipticity was
about twice that for a linear model and four times for a quadratic one, so
a quadratic must clear the margin. The pixel basis has the size degree,
but its images of degree above the ellipticity's may change the PSF's
profile and size only, not its centre or ellipticity
(:class:`_ShapeFreeProjector`); the written model stays a plain PSFEx
polynomial.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import numpy as np

from ..io.psfex_file import PSFModel, lanczos, n_terms, polynomial_terms, resampling_matrix

BAD_PIXEL = -1e29  # SExtractor fills VIGNET pixels outside the image with -1e30

# FLAGS_PSF bits written to the residual catalogue.
FLAG_REJECTED_CHI2 = 1
FLAG_BAD_INPUT = 2
FLAG_REJECTED_SHAPE = 4


class PSFFitError(ValueError):
    """The stars cannot constrain a PSF model (too few usable stars)."""


@dataclass
class StarSample:
    """Star stamps and what the fit needs about them.

    Attributes
    ----------
    stamps : ndarray (n, v, v)
        Background-subtracted VIGNET pixels (bad pixels set to 0).
    valid : ndarray of bool (n, v, v)
        Pixels that hold data.
    centre_x, centre_y : ndarray (n,)
        Catalogue centres (1-based image pixels, ``CENTER_KEYS``).
    context_x, context_y : ndarray (n,)
        Polynomial context values (``PSFVAR_KEYS``).
    offset_x, offset_y : ndarray (n,)
        Star centre relative to the central stamp pixel.
    flux : ndarray (n,)
        Initial flux normalisation (``PHOTFLUX_KEY``).
    noise : ndarray (n,)
        Background noise per pixel of each stamp.
    gain : float
        Electrons per ADU for the Poisson term (0: no Poisson term).
    usable : ndarray of bool (n,)
        Stars with finite centres, positive flux and enough valid pixels.
    """

    stamps: np.ndarray
    valid: np.ndarray
    centre_x: np.ndarray
    centre_y: np.ndarray
    context_x: np.ndarray
    context_y: np.ndarray
    offset_x: np.ndarray
    offset_y: np.ndarray
    flux: np.ndarray
    noise: np.ndarray
    gain: float
    usable: np.ndarray

    def __len__(self):
        return len(self.stamps)


def column(table, name: str) -> np.ndarray:
    """Catalogue column by PSFEx name; ``FLUX_APER(2)`` is element 2 (from 1) of a vector column."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\((\d+)\))?\s*", name)
    if not match:
        raise KeyError(name)
    base, index = match.group(1), match.group(2)
    values = np.asarray(table[base], dtype=float)
    if values.ndim == 2:
        values = values[:, int(index or 1) - 1]
    elif index not in (None, "1"):
        raise KeyError(name)
    return values


def load_stars(table, image_header, center_keys=("XWIN_IMAGE", "YWIN_IMAGE"),
               var_keys=("XWIN_IMAGE", "YWIN_IMAGE"), flux_key="FLUX_AUTO") -> StarSample:
    """Build a :class:`StarSample` from a SExtractor catalogue with VIGNET stamps.

    Raises
    ------
    KeyError
        Naming a missing column.
    """
    if "VIGNET" not in table.colnames:
        raise KeyError("VIGNET")
    raw = np.asarray(table["VIGNET"], dtype=float)
    if raw.ndim != 3 or raw.shape[1] != raw.shape[2] or raw.shape[1] % 2 == 0:
        raise KeyError(f"VIGNET must hold odd square stamps, got shape {raw.shape[1:]}")
    valid = np.isfinite(raw) & (raw > BAD_PIXEL)
    stamps = np.where(valid, raw, 0.0)
    centre_x, centre_y = (column(table, key) for key in center_keys)
    context_x, context_y = (column(table, key) for key in var_keys)
    # SExtractor centres VIGNET on the pixel holding the isophotal barycentre.
    anchor_x = column(table, "X_IMAGE") if "X_IMAGE" in table.colnames else centre_x
    anchor_y = column(table, "Y_IMAGE") if "Y_IMAGE" in table.colnames else centre_y
    offset_x = centre_x - np.floor(anchor_x + 0.5)
    offset_y = centre_y - np.floor(anchor_y + 0.5)
    flux = column(table, flux_key)
    # Background noise from the stamp border (robust to neighbours).
    size = raw.shape[1]
    border = np.zeros((size, size), dtype=bool)
    border[:3] = border[-3:] = True
    border[:, :3] = border[:, -3:] = True
    ring = np.where(valid & border, stamps, np.nan)
    median = np.nanmedian(ring.reshape(len(raw), -1), axis=1)
    noise = 1.4826 * np.nanmedian(np.abs(ring - median[:, None, None]).reshape(len(raw), -1), axis=1)
    gain = 0.0
    if image_header is not None:
        for key in ("SEXGAIN", "GAIN"):
            if key in image_header and float(image_header[key]) > 0:
                gain = float(image_header[key])
                break
    usable = (
        np.isfinite(centre_x) & np.isfinite(centre_y) & np.isfinite(context_x) & np.isfinite(context_y)
        & np.isfinite(flux) & (flux > 0) & np.isfinite(noise) & (noise > 0)
        & (np.abs(offset_x) <= 1.0) & (np.abs(offset_y) <= 1.0)
        & (valid.mean(axis=(1, 2)) > 0.5)
    )
    return StarSample(stamps, valid, centre_x, centre_y, context_x, context_y, offset_x, offset_y,
                      flux, np.where(np.isfinite(noise), noise, 0.0), gain, usable)


@dataclass
class FitOptions:
    """Settings of the built-in engine (PSFEx keys where they exist).

    Attributes
    ----------
    psf_size : (int, int)
        ``PSF_SIZE`` (nx, ny), odd.
    sampling : float
        ``PSF_SAMPLING`` in image pixels; 0 chooses one pixel, or FWHM/2 for
        undersampled stars (FWHM under 2 pixels).
    degree : int
        ``PSFVAR_DEGREES``.
    accuracy : float
        ``PSF_ACCURACY``: relative error floor of pixel values.
    recenter : bool
        ``PSF_RECENTER``: refine star centres against the model.
    super_resolution : bool
        Fit in each star's pixel frame (True) or fit interpolated,
        re-centred stamps pixel by pixel (False, biased; for comparison).
    clip_sigma : float
        Stars with chi2 above median + clip_sigma * robust sigma (and above
        ``clip_floor`` times the median) are rejected, iteratively.
    clip_floor : float
        Bright stars show the model's small imperfections as a chi2 of a
        few; only stars this many times above the median chi2 are outliers.
    max_clip_iterations : int
        Rejection rounds at most.
    shape_clip : float
        Before the fit, stars whose size or ellipticity is off the smooth
        field by more than this many robust sigmas are left out
        (:func:`shape_outliers`; flag ``FLAG_REJECTED_SHAPE``); 0: keep all.
    min_stars : int
        Fewer accepted stars than this is an error.
    regularisation : float
        Ridge term relative to each unknown's own diagonal element of the
        normal matrix (see :func:`_ridge`).
    cg_iterations : int
        Conjugate-gradient iterations per solve at most.
    cg_tolerance : float
        Relative residual at which the conjugate gradients stop.
    select_degree : bool
        Choose the degrees of the ellipticity and size variations (each at
        most ``degree``) from the stars' shapes (:func:`select_degrees`),
        the images of the pixel basis above the ellipticity's degree
        changing the size and profile only; False fits every pixel with
        ``degree`` (PSFEx's way).
    shear_margins, size_margins : sequence of float
        Standard errors by which a higher degree must lower the estimated
        error to be chosen, for the step to degree 1, then to degree 2 and
        above (0: the degree of least estimated error; 1: the
        one-standard-error rule).
    interpolant_order : int
        Lanczos order of the resampling inside the fit. A pixel-sampled PSF
        is not exactly band-limited; Lanczos-3 shifts change its size by up
        to 0.5% (at half-pixel shifts), which a fit absorbs as a size bias
        of about 0.3%; order 7 brings this under 0.05%.
    """

    psf_size: tuple = (51, 51)
    sampling: float = 1.0
    degree: int = 2
    accuracy: float = 0.01
    recenter: bool = False
    super_resolution: bool = True
    clip_sigma: float = 4.0
    max_clip_iterations: int = 4
    clip_floor: float = 4.0
    shape_clip: float = 5.0
    min_stars: int = 10
    regularisation: float = 1e-5
    cg_iterations: int = 40
    cg_tolerance: float = 1e-6
    interpolant_order: int = 7
    select_degree: bool = True
    shear_margins: tuple = (0.0, 1.0)
    size_margins: tuple = (1.0,)


@dataclass
class FitResult:
    """Outcome of :func:`fit_psf`: the model and per-star diagnostics."""

    model: PSFModel
    accepted: np.ndarray
    flags: np.ndarray
    chi2: np.ndarray
    norm: np.ndarray
    snr: np.ndarray
    residual: np.ndarray
    fwhm: np.ndarray
    ellipticity: np.ndarray
    offset_x: np.ndarray
    offset_y: np.ndarray
    degree_requested: int
    info: dict = field(default_factory=dict)


def choose_degree(u: np.ndarray, v: np.ndarray, degree: int) -> int:
    """Highest degree up to ``degree`` that the star positions can constrain.

    Needs at least ``2 * nterms + 2`` stars; a quadratic or higher needs at
    least 2 stars in every quadrant of the star-covered box, a linear model
    at least 2 stars on each side of both axes. Otherwise the polynomial
    would be free to swing in the empty part of the field.
    """
    count = len(u)
    while degree > 0:
        enough = count >= 2 * n_terms(degree) + 2
        if degree >= 2:
            quadrants = [np.sum((np.sign(u) == sx) & (np.sign(v) == sy)) for sx in (-1, 1) for sy in (-1, 1)]
            covered = min(quadrants) >= 2
        else:
            covered = min(np.sum(u < 0), np.sum(u > 0), np.sum(v < 0), np.sum(v > 0)) >= 2
        if enough and covered:
            break
        degree -= 1
    return degree


def _matched_round_weight(images: np.ndarray, valid: np.ndarray, iterations: int = 6):
    """Round Gaussian weights matched to images: re-centred and re-sized to each image ``iterations`` times.

    The weight's variance is set to the weighted variance of the image,
    which matches it to a Gaussian image. Centres stay within 2 pixels of
    the central pixel.

    Returns
    -------
    cx, cy, variance : ndarray (n,)
        The matched weight (centre from the central pixel, variance).
    weight, total, ixx, iyy, ixy
        The last iteration's weight images (n, ny, nx), weighted flux and
        second moments (n,), about the centre before its last update.
    """
    count, ny, nx = images.shape
    y, x = np.mgrid[:ny, :nx].astype(float)
    x -= nx // 2
    y -= ny // 2
    cx, cy = np.zeros(count), np.zeros(count)
    variance = np.full(count, 4.0)
    for _ in range(iterations):
        dx = x - cx[:, None, None]
        dy = y - cy[:, None, None]
        weight = np.exp(-0.5 * (dx**2 + dy**2) / variance[:, None, None]) * valid
        weighted = weight * images
        total = weighted.sum(axis=(1, 2))
        total = np.where(total > 0, total, np.nan)
        cx = np.clip(np.nan_to_num(cx + (weighted * dx).sum(axis=(1, 2)) / total), -2.0, 2.0)
        cy = np.clip(np.nan_to_num(cy + (weighted * dy).sum(axis=(1, 2)) / total), -2.0, 2.0)
        ixx = (weighted * dx * dx).sum(axis=(1, 2)) / total
        iyy = (weighted * dy * dy).sum(axis=(1, 2)) / total
        ixy = (weighted * dx * dy).sum(axis=(1, 2)) / total
        # A Gaussian image of variance s2 under a weight of variance s2 shows s2 / 2 per axis.
        variance = np.clip(np.nan_to_num(ixx + iyy, nan=4.0), 0.5, 100.0)
    return cx, cy, variance, weight, total, ixx, iyy, ixy


def star_shapes(stamps: np.ndarray, valid: np.ndarray, noise: np.ndarray, gain: float = 0.0):
    """Adaptive moments of star stamps with a round Gaussian weight.

    The weight is re-centred and re-sized to the star six times (its
    variance set to the weighted variance of the star, which matches it to
    a Gaussian star). Round weights underestimate ``|e|`` by a factor common
    to all stars, which does not matter for comparing stars with each other.

    Parameters
    ----------
    stamps, valid : ndarray (n, v, v)
        Background-subtracted pixels and the mask of pixels that hold data.
    noise : ndarray (n,)
        Background noise per pixel.
    gain : float
        Electrons per ADU (0: no Poisson term in the S/N).

    Returns
    -------
    sigma, e1, e2, snr : ndarray (n,)
        Size ``sqrt((Ixx + Iyy) / 2)`` (pixels), distortion ``e1 = (Ixx -
        Iyy) / (Ixx + Iyy)``, ``e2 = 2 Ixy / (Ixx + Iyy)``, and the S/N of
        the weighted flux. NaN where the moments fail.
    """
    images = np.where(valid, stamps, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        _, _, _, weight, total, ixx, iyy, ixy = _matched_round_weight(images, valid)
        trace = ixx + iyy
        pixel_variance = noise[:, None, None] ** 2 + (np.clip(images, 0, None) / gain if gain > 0 else 0.0)
        snr = total / np.sqrt((weight**2 * pixel_variance).sum(axis=(1, 2)))
        bad = ~(trace > 0) | ~np.isfinite(snr)
        sigma = np.where(bad, np.nan, np.sqrt(np.abs(trace) / 2))
        e1 = np.where(bad, np.nan, (ixx - iyy) / trace)
        e2 = np.where(bad, np.nan, 2 * ixy / trace)
    return sigma, e1, e2, np.where(bad, np.nan, snr)


def field_errors(u, v, values, weights, low: int, high: int, grid: int = 9):
    """Expected squared errors, over the star-covered box, of two polynomial fits of star quantities.

    The weighted least-squares fits ``f_low`` and ``f_high`` of the values
    (degrees ``low < high``) are judged where the model is used: on a ``grid
    x grid`` raster of the box ``|u|, |v| <= 1/2`` that the stars span
    (corners included; evaluation clamps to this box). The error of a fit
    there is its variance plus its squared bias. Variances follow from the
    fits, with the measurement scatter estimated from the residuals of
    ``f_high``. ``f_high`` is taken as unbiased, and the squared bias of
    ``f_low`` is estimated without bias as ``|f_low - f_high|^2`` minus the
    variance of that difference (Mallows' Cp, taken over the box instead of
    the stars' positions), so extrapolation into corners with few stars
    counts against the higher degree.

    Parameters
    ----------
    u, v : ndarray (n,)
        Scaled star positions.
    values : ndarray (n, m)
        Quantities measured on each star (e.g. e1, e2, log size).
    weights : ndarray (n,)
        Relative inverse variances of the measurements.
    low, high : int
        The two degrees.
    grid : int
        Raster points per axis.

    Returns
    -------
    errors : ndarray (2, m)
        Mean estimated squared error over the box of ``f_low`` and ``f_high``.
    spread : ndarray (m,)
        Standard error of the difference of the two (the noise of the
        squared-bias estimate).
    """
    gu, gv = np.meshgrid(np.linspace(-0.5, 0.5, grid), np.linspace(-0.5, 0.5, grid))
    operators = []
    for degree in (low, high):
        terms = polynomial_terms(u, v, degree)
        inverse = np.linalg.pinv(terms.T @ (weights[:, None] * terms))
        # Row g: the linear map from the star values to the fit at raster point g.
        operators.append(polynomial_terms(gu, gv, degree) @ inverse @ (terms * weights[:, None]).T)
    terms = polynomial_terms(u, v, high)
    fitted = terms @ np.linalg.pinv(terms.T @ (weights[:, None] * terms)) @ (terms.T @ (weights[:, None] * values))
    residual = values - fitted
    scatter = np.sum(weights[:, None] * residual**2, axis=0) / max(len(u) - n_terms(high), 1)
    points = operators[0].shape[0]
    variances = [np.mean(np.sum(operator**2 / weights, axis=1)) * scatter for operator in operators]
    difference = operators[0] - operators[1]
    shift = difference @ values
    covariance = (difference / weights) @ difference.T
    bias2 = np.mean(shift**2, axis=0) - np.trace(covariance) / points * scatter
    # For shift ~ N(mu, s^2 C): var(|shift|^2 / G) = (2 s^4 tr(C^2) + 4 s^2 mu.C.mu) / G^2,
    # with mu.C.mu estimated without bias as shift.C.shift - s^2 tr(C^2).
    trace2 = np.sum(covariance**2)
    quadratic = np.einsum("gq,gh,hq->q", shift, covariance, shift)
    spread = np.sqrt(np.maximum(4 * scatter * quadratic - 2 * trace2 * scatter**2, 2 * trace2 * scatter**2)) / points
    return np.array([bias2 + variances[0], variances[1]]), spread


def shape_outliers(u, v, sigma, e1, e2, snr, degree: int, clip: float = 5.0, floor: float = 1e-3) -> np.ndarray:
    """Stars whose shape is off the smooth PSF field: compact galaxies, blends, artefacts.

    Each star's size (log sigma) and ellipticity (:func:`star_shapes`) are
    compared with a polynomial of degree ``degree`` fitted to all stars,
    each residual in units of the star's own noise (``1 / snr``, plus
    ``floor``); a star is an outlier when any residual exceeds ``clip`` times
    the robust spread (MAD) of those pulls. A compact galaxy 20-40% larger
    than the PSF sits tens of sigmas off at any useful S/N, while the
    chi2 clip of the pixel fit (relative to the median chi2) keeps it, and
    a few of them in ~50 stars make the model ~1% too large.

    Returns
    -------
    ndarray of bool (n,)
        True for outliers; stars without measured shapes are not outliers.
    """
    outlier = np.zeros(np.shape(sigma), dtype=bool)
    good = np.isfinite(sigma) & np.isfinite(e1) & np.isfinite(e2) & (snr > 0) & (sigma > 0)
    if clip <= 0 or good.sum() < 3:
        return outlier
    u, v = u[good], v[good]
    degree = choose_degree(u, v, degree)
    values = np.c_[e1[good], e2[good], np.log(sigma[good])]
    root_weights = 1.0 / np.sqrt(1.0 / snr[good] ** 2 + floor**2)
    terms = polynomial_terms(u, v, degree)
    coefficients = np.linalg.lstsq(root_weights[:, None] * terms, root_weights[:, None] * values, rcond=None)[0]
    pulls = root_weights[:, None] * (values - terms @ coefficients)
    spread = 1.4826 * np.median(np.abs(pulls - np.median(pulls, axis=0)), axis=0)
    outlier[good] = np.any(np.abs(pulls) > clip * np.where(spread > 0, spread, np.inf), axis=1)
    return outlier


def sample_shape_outliers(sample: StarSample, degree: int, clip: float, shapes=None) -> np.ndarray:
    """:func:`shape_outliers` among the usable stars of a sample (False for the others).

    ``shapes``: the sample's :func:`star_shapes`, if already measured.
    """
    sigma, e1, e2, snr = shapes if shapes is not None else star_shapes(sample.stamps, sample.valid, sample.noise,
                                                                        sample.gain)
    outlier = np.zeros(len(sample), dtype=bool)
    index = np.flatnonzero(sample.usable)
    if index.size == 0:
        return outlier
    cx, cy = sample.context_x[index], sample.context_y[index]
    u = (cx - (cx.min() + cx.max()) / 2) / max(cx.max() - cx.min(), 1.0)
    v = (cy - (cy.min() + cy.max()) / 2) / max(cy.max() - cy.min(), 1.0)
    outlier[index] = shape_outliers(u, v, sigma[index], e1[index], e2[index], snr[index], degree, clip)
    return outlier


def select_degrees(u, v, sigma, e1, e2, snr, max_degree: int, floor: float = 1e-3, clip: float = 5.0,
                   shear_margins=(0.0, 1.0), size_margins=(1.0,)):
    """Polynomial degrees of the ellipticity and of the size variation, from the stars' shapes.

    Each star's shape (:func:`star_shapes`) is a noisy sample of the PSF's
    shape at its position. A polynomial of higher degree follows the true
    variation more closely but carries more of the stars' noise, most of
    all into the parts of the CCD that few stars cover (the corners).
    Starting from a constant, the degree is raised while a higher degree
    has an expected error over the star-covered box (:func:`field_errors`)
    lower by more than ``margins[d - 1]`` standard errors of the
    comparison, ``d`` the degree raised to. This is done separately for the
    ellipticity (e1 and e2 together) and for the size (log sigma).

    Parameters
    ----------
    u, v, sigma, e1, e2, snr : ndarray (n,)
        Scaled positions and :func:`star_shapes` of the stars.
    max_degree : int
    floor : float
        Shape scatter added to the noise (``1 / snr``) of every star, so the
        brightest stars do not decide alone.
    clip : float
        Stars whose shape (size included) is off the ``max_degree`` fit by
        more than this many robust sigmas (blends, artefacts) are left out.
    shear_margins, size_margins : sequence of float
        Margin of each step up (the last one for any further step).

    Returns
    -------
    shear_degree, size_degree : int
    scores : ndarray (max_degree + 1, max_degree + 1, 3, 3)
        ``scores[low, high]``: :func:`field_errors` of e1, e2 and log sigma
        (columns) for the two degrees (rows 0, 1) and the standard error of
        their difference (row 2); NaN where ``low >= high``.
    """
    good = np.isfinite(sigma) & np.isfinite(e1) & np.isfinite(e2) & (snr > 0) & (sigma > 0)
    if choose_degree(u[good], v[good], max_degree) == 0:
        return 0, 0, np.zeros((1, 1, 3, 3))
    good &= ~shape_outliers(u, v, sigma, e1, e2, snr, max_degree, clip, floor)
    u, v = u[good], v[good]
    values = np.c_[e1[good], e2[good], np.log(sigma[good])]
    weights = 1.0 / (1.0 / snr[good] ** 2 + floor**2)
    max_degree = choose_degree(u, v, max_degree)
    # scores[low, high]: field_errors of the two fits (rows 0, 1) and the spread (row 2).
    scores = np.full((max_degree + 1, max_degree + 1, 3, 3), np.nan)
    for low in range(max_degree):
        for high in range(low + 1, max_degree + 1):
            scores[low, high] = np.vstack(field_errors(u, v, values, weights, low, high))
    degrees = []
    for columns, margins in (([0, 1], shear_margins), ([2], size_margins)):
        margins = list(np.atleast_1d(margins))
        degree = 0
        while degree < max_degree:
            margin = margins[min(degree, len(margins) - 1)]
            gains = [scores[degree, high, 0, columns].sum() - scores[degree, high, 1, columns].sum()
                     - margin * np.sqrt(np.sum(scores[degree, high, 2, columns] ** 2))
                     for high in range(degree + 1, max_degree + 1)]
            if max(gains) <= 0:
                break
            degree += 1
        degrees.append(degree)
    return degrees[0], degrees[1], scores


def _monomials(degree: int) -> list:
    """Exponents (i, j) of ``u**i v**j`` in the order of :func:`polynomial_terms`."""
    return [(i, j) for j in range(degree + 1) for i in range(degree + 1 - j)]


def _shape_responses(image: np.ndarray) -> np.ndarray:
    """Images whose inner products with a small change of a PSF image give the change of its shape.

    The shape is measured as by adaptive moments: a round Gaussian weight
    ``W`` matched to the image and centred on it. To first order in a
    change ``dP``, the centroid moves by ``<W x, dP>`` and ``<W y, dP>``
    (over the weighted flux) and the distortion by ``<W (x^2 - y^2 - e1
    r^2), dP>`` and ``<W (2 x y - e2 r^2), dP>`` (over the weighted
    ``r^2`` moment). A dilation of the image (a pure size change) is
    orthogonal to all four, whatever its ellipticity.

    Returns
    -------
    ndarray (4, ny, nx)
        The responses of x, y, e1 and e2 (unnormalised).
    """
    ny, nx = image.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_x, centre_y, variance = (float(value[0]) for value in
                                        _matched_round_weight(image[None], np.ones((1, ny, nx)))[:3])
    y, x = np.mgrid[:ny, :nx].astype(float)
    x -= nx // 2
    y -= ny // 2
    dx, dy = x - centre_x, y - centre_y
    weight = np.exp(-0.5 * (dx**2 + dy**2) / variance)
    radius2 = dx**2 + dy**2
    trace = np.sum(weight * radius2 * image)
    e1 = np.sum(weight * (dx**2 - dy**2) * image) / trace if trace > 0 else 0.0
    e2 = np.sum(weight * 2 * dx * dy * image) / trace if trace > 0 else 0.0
    return np.stack([weight * dx, weight * dy, weight * (dx**2 - dy**2 - e1 * radius2),
                     weight * (2 * dx * dy - e2 * radius2)])


def _round_gaussian(shape, sigma: float) -> np.ndarray:
    """A round Gaussian image of width ``sigma`` (grid pixels) centred on the central pixel."""
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx].astype(float)
    return np.exp(-0.5 * ((x - nx // 2) ** 2 + (y - ny // 2) ** 2) / max(sigma, 0.5) ** 2)


class _ShapeFreeProjector:
    """Orthogonal projection of the higher-degree basis images onto changes that leave the shape alone.

    The pixel basis has the size degree; its images of degree above the
    ellipticity degree (``constrained``) may change the PSF's profile and
    size but neither its centre nor its ellipticity (to first order,
    :func:`_shape_responses` of ``centre_image``, the constant image). With ~50 stars a
    polynomial of degree 2 in every pixel mostly fits noise in the
    ellipticity and extrapolates it into the corners, while the size
    curvature of the PSF is often real; a degree-2 fit in every pixel is
    also the best size model on noise realisations of the demo CCDs (size
    rms over the CCD 0.19% against 0.24% for degree-1 pixels plus a fitted
    dilation image). The projection removes only four directions per image.
    The images are also kept to a disc of 3 FWHM of ``centre_image``: beyond it the stars' pixels are mostly noise, which a varying
    image would carry into the model's wings (the metacalibration target
    PSF, set where the PSF's transform falls off, grows with that noise).
    """

    def __init__(self, constrained: np.ndarray, centre_image: np.ndarray):
        self.constrained = np.asarray(constrained, bool)
        ny, nx = centre_image.shape
        fwhm = float(_moments(centre_image[None])[0][0])
        y, x = np.mgrid[:ny, :nx]
        self.support = (((x - nx // 2) ** 2 + (y - ny // 2) ** 2) <= (3.0 * fwhm) ** 2).astype(float).ravel()
        flat = _shape_responses(centre_image).reshape(4, -1) * self.support
        # Orthonormal rows spanning the responses (inside the support).
        self.rows = np.linalg.qr(flat.T)[0].T

    def __call__(self, basis: np.ndarray) -> np.ndarray:
        if not self.constrained.any():
            return basis
        basis = basis.copy()
        flat = basis[self.constrained].reshape(int(self.constrained.sum()), -1) * self.support
        flat -= (flat @ self.rows.T) @ self.rows
        basis[self.constrained] = flat.reshape((-1,) + basis.shape[1:])
        return basis


class _Problem:
    """Weighted linear least squares for the basis images, in the stars' pixel frames.

    With ``project`` (a :class:`_ShapeFreeProjector`) the unknowns are
    restricted to its subspace: the normal operator, the right-hand side and
    the preconditioner are projected, so the conjugate gradients stay there.
    Unknowns are flat vectors.
    """

    def __init__(self, data, weights, amplitude, terms, offset_x, offset_y, grid_shape, step, order, project=None):
        self.data = data
        self.weights = weights
        self.amplitude = amplitude
        self.terms = terms
        ny, nx = grid_shape
        size = data.shape[1]
        # Star pixel i sees grid coordinate centre + (i - size//2 - offset) / step.
        self.rx = resampling_matrix(offset_x, size, nx, step, order)
        self.ry = resampling_matrix(offset_y, size, ny, step, order)
        self.grid_shape = grid_shape
        self.basis_shape = (terms.shape[1], ny, nx)
        self.project_basis = project

    def project(self, unknowns):
        if self.project_basis is None:
            return unknowns
        return self.project_basis(unknowns.reshape(self.basis_shape)).ravel()

    def grids(self, basis):
        ncomp = basis.shape[0]
        return (self.terms @ basis.reshape(ncomp, -1)).reshape((-1,) + basis.shape[1:])

    def shapes(self, basis):
        """Unit-amplitude model of every star in its own pixel frame."""
        return self.ry @ self.grids(basis) @ self.rx.transpose(0, 2, 1)

    def adjoint(self, images):
        projected = self.ry.transpose(0, 2, 1) @ images @ self.rx
        weights = (self.amplitude[:, None] * self.terms).T
        return (weights @ projected.reshape(len(projected), -1)).reshape((-1,) + projected.shape[1:])

    def split(self, unknowns):
        """The basis images of a flat vector of unknowns."""
        return unknowns.reshape(self.basis_shape)

    def right(self, data):
        """Right-hand side of the normal equations for the star images ``data``."""
        return self.project(self.adjoint(self.weights * data).ravel())

    def normal(self, unknowns, ridge):
        forward = self.shapes(self.split(unknowns))
        normal = self.adjoint(self.weights * self.amplitude[:, None, None] * forward).ravel() + ridge * unknowns
        return self.project(normal)

    def block_diagonal(self):
        """Per-grid-pixel (ncomp, ncomp) blocks of the normal matrix (pixel coupling dropped)."""
        diag = self.ry.transpose(0, 2, 1) ** 2 @ self.weights @ self.rx**2
        return _pixel_blocks(self.amplitude, self.terms, diag)

    def preconditioner(self, regularisation):
        """Ridge (flat) and the preconditioning solve, exact per pixel (then projected)."""
        blocks = self.block_diagonal()
        pixel_ridge = _ridge(blocks, regularisation)

        def solve(residual):
            return self.project(_solve_blocks(blocks, self.split(residual), pixel_ridge).ravel())

        return pixel_ridge.ravel(), solve


def _pixel_blocks(amplitude, terms, pixel_weights):
    """``sum_k a_k^2 t_kj t_kl w_k(pixel)`` as (ny, nx, ncomp, ncomp) blocks."""
    ncomp = terms.shape[1]
    products = (amplitude[:, None, None] ** 2 * terms[:, :, None] * terms[:, None, :]).reshape(len(terms), -1)
    blocks = products.T @ pixel_weights.reshape(len(terms), -1)
    return np.moveaxis(blocks.reshape((ncomp, ncomp) + pixel_weights.shape[1:]), (0, 1), (2, 3))


def _ridge(blocks, regularisation):
    """Ridge of every unknown, shape (ncomp, ny, nx): ``regularisation`` times its own diagonal.

    A ridge scaled to one number for the whole grid (such as the mean
    diagonal) is not neutral: with the ``PSF_ACCURACY`` term the weight of a
    pixel goes as 1 / (accuracy * value)^2 at high S/N, so the core of the
    PSF has diagonal elements 10^4-10^6 times smaller than the faint wings.
    A common ridge then shrinks the core towards zero far more than the
    wings, lowering the peak and making the model too large (+8% with
    peak pixels at S/N ~ 3e4, +1% on a low-noise simulation). Scaled per
    unknown, the ridge shrinks every grid value by about the same factor
    ``1 / (1 + regularisation)`` (exactly, where grid pixels are not
    coupled by the resampling), which the flux normalisation removes. The
    tiny floor keeps grid values that no star pixel constrains at zero.
    """
    diagonal = np.einsum("abjj->jab", blocks)
    return regularisation * (diagonal + 1e-9 * float(np.mean(diagonal)))


def _solve_blocks(blocks, right, ridge):
    """Solve the per-pixel systems ``(blocks + diag(ridge))[a, b] x = right[:, a, b]``."""
    ncomp = blocks.shape[-1]
    matrix = blocks + np.moveaxis(ridge, 0, -1)[..., None] * np.eye(ncomp)
    solution = np.linalg.solve(matrix, np.moveaxis(right, 0, -1)[..., None])[..., 0]
    return np.ascontiguousarray(np.moveaxis(solution, -1, 0))


def _conjugate_gradient(problem, right, start, ridge, precondition, iterations, tolerance):
    """Preconditioned conjugate gradients for ``problem.normal(x, ridge) = right`` (flat vectors)."""
    solution = start.copy()
    residual = right - problem.normal(solution, ridge)
    preconditioned = precondition(residual)
    direction = preconditioned.copy()
    product = np.vdot(residual, preconditioned)
    norm0 = np.sqrt(np.vdot(right, right)) or 1.0
    done = 0
    for done in range(1, iterations + 1):
        applied = problem.normal(direction, ridge)
        step = product / np.vdot(direction, applied)
        solution += step * direction
        residual -= step * applied
        if np.sqrt(np.vdot(residual, residual)) < tolerance * norm0:
            break
        preconditioned = precondition(residual)
        new_product = np.vdot(residual, preconditioned)
        direction = preconditioned + (new_product / product) * direction
        product = new_product
    return solution, done


def _recentred_stamps(sample, index, grid_shape, step, order=7):
    """Stamps and weights interpolated onto the centred model grid (plain per-pixel fit)."""
    ny, nx = grid_shape
    size = sample.stamps.shape[1]
    # Inverse of resampling_matrix: grid pixel p reads stamp coordinate size//2 + offset + (p - n//2) * step.
    px = size // 2 + sample.offset_x[index, None] + (np.arange(nx) - nx // 2)[None, :] * step
    py = size // 2 + sample.offset_y[index, None] + (np.arange(ny) - ny // 2)[None, :] * step
    sx = lanczos(px[:, :, None] - np.arange(size)[None, None, :], order)
    sy = lanczos(py[:, :, None] - np.arange(size)[None, None, :], order)
    stamps = sy @ sample.stamps[index] @ sx.transpose(0, 2, 1)
    coverage = np.abs(sy) @ sample.valid[index].astype(float) @ np.abs(sx).transpose(0, 2, 1)
    return stamps, coverage


def _moments(images, step=1.0):
    """Gaussian-weighted second moments: FWHM (image pixels) and ellipticity (a-b)/(a+b)."""
    n, ny, nx = images.shape
    y, x = np.mgrid[:ny, :nx].astype(float)
    x -= nx // 2
    y -= ny // 2
    sigma2 = np.full(n, 4.0 / step**2)
    cx = np.zeros(n)
    cy = np.zeros(n)
    for _ in range(6):
        weight = np.exp(-0.5 * ((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2) / sigma2[:, None, None])
        wi = weight * images
        total = wi.sum(axis=(1, 2))
        total = np.where(total > 0, total, np.nan)
        cx = (wi * x).sum(axis=(1, 2)) / total
        cy = (wi * y).sum(axis=(1, 2)) / total
        dx = x - cx[:, None, None]
        dy = y - cy[:, None, None]
        ixx = (wi * dx * dx).sum(axis=(1, 2)) / total
        iyy = (wi * dy * dy).sum(axis=(1, 2)) / total
        ixy = (wi * dx * dy).sum(axis=(1, 2)) / total
        # A Gaussian of variance s2 weighted by one of variance w2 shows s2*w2/(s2+w2).
        trace = np.clip(ixx + iyy, 1e-6, None) / 2
        sigma2 = np.clip(2 * trace, 0.25, 1e4)
    intrinsic = 2.0
    ixx, iyy, ixy = ixx * intrinsic, iyy * intrinsic, ixy * intrinsic
    root = np.sqrt(((ixx - iyy) / 2) ** 2 + ixy**2)
    major = np.sqrt(np.clip((ixx + iyy) / 2 + root, 0, None))
    minor = np.sqrt(np.clip((ixx + iyy) / 2 - root, 0, None))
    fwhm = 2.3548 * np.sqrt(major * minor) * step
    ellipticity = (major - minor) / np.where(major + minor > 0, major + minor, np.nan)
    return fwhm, ellipticity


def auto_sampling(sample: StarSample) -> float:
    """Grid step for ``PSF_SAMPLING 0``: 1 pixel, or FWHM/2 for undersampled stars."""
    index = np.flatnonzero(sample.usable)
    fwhm, _ = _moments(sample.stamps[index] / sample.flux[index, None, None])
    median = float(np.nanmedian(fwhm)) if len(index) else 3.0
    return 1.0 if median >= 2.0 else max(median / 2.0, 0.25)


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread (if threadpoolctl is installed).

    The fit multiplies many small matrices; threaded BLAS only adds
    overhead there and competes with parallel jobs for the cores.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def fit_psf(sample: StarSample, options: FitOptions, names=("XWIN_IMAGE", "YWIN_IMAGE")) -> FitResult:
    """Fit the pixel-basis PSF model to the stars of one CCD.

    Raises
    ------
    PSFFitError
        When fewer than ``options.min_stars`` stars are usable or survive
        the rejection.
    """
    with single_threaded_blas():
        return _fit_psf(sample, options, names)


def _fit_psf(sample, options, names):
    count = len(sample)
    nx, ny = options.psf_size
    step = options.sampling if options.sampling > 0 else auto_sampling(sample)
    flags = np.where(sample.usable, 0, FLAG_BAD_INPUT)
    accepted = sample.usable.copy()
    if accepted.sum() < options.min_stars:
        raise PSFFitError(f"{int(accepted.sum())} usable stars of {count}, fewer than {options.min_stars}")
    offset_x = sample.offset_x.copy()
    offset_y = sample.offset_y.copy()
    norm = sample.flux.copy()
    size = sample.stamps.shape[1]
    chi2 = np.full(count, np.nan)
    basis = None
    iterations_used = 0
    degree_scores = np.zeros((1, 1, 3, 3))
    if options.select_degree or options.shape_clip > 0:
        shape_sigma, shape_e1, shape_e2, shape_snr = star_shapes(sample.stamps, sample.valid, sample.noise,
                                                                 sample.gain)
    if options.shape_clip > 0:
        odd = np.flatnonzero(sample_shape_outliers(sample, options.degree, options.shape_clip,
                                                   (shape_sigma, shape_e1, shape_e2, shape_snr)))
        accepted[odd] = False
        flags[odd] |= FLAG_REJECTED_SHAPE
        if accepted.sum() < options.min_stars:
            raise PSFFitError(f"only {int(accepted.sum())} stars left after rejecting {odd.size} with outlying "
                              f"shapes (fewer than {options.min_stars})")
    eligible = accepted.copy()  # the chi2 clip may bring back its own rejections, not these
    for clip_round in range(options.max_clip_iterations + 1):
        index = np.flatnonzero(accepted)
        cx, cy = sample.context_x[index], sample.context_y[index]
        zero = ((cx.min() + cx.max()) / 2, (cy.min() + cy.max()) / 2)
        scale = (max(cx.max() - cx.min(), 1.0), max(cy.max() - cy.min(), 1.0))
        u, v = (cx - zero[0]) / scale[0], (cy - zero[1]) / scale[1]
        degree = choose_degree(u, v, options.degree)
        shear_degree = size_degree = degree
        if options.select_degree and options.super_resolution and degree > 0:
            shear_degree, size_degree, degree_scores = select_degrees(
                u, v, shape_sigma[index], shape_e1[index], shape_e2[index], shape_snr[index], degree,
                shear_margins=options.shear_margins, size_margins=options.size_margins)
            size_degree = max(size_degree, shear_degree)
        # The pixel basis has the size degree; its images above the ellipticity degree change the size only.
        terms = polynomial_terms(u, v, size_degree)
        constrained = np.array([i + j > shear_degree for i, j in _monomials(size_degree)])
        if basis is not None and basis.shape[0] != terms.shape[1]:
            basis = None
        data = sample.stamps[index]
        valid = sample.valid[index].astype(float)
        noise2 = sample.noise[index, None, None] ** 2
        stars = (offset_x[index], offset_y[index], size, step, options.interpolant_order)
        # With constrained images, a third pass takes their constraint from the refined constant image.
        for outer in range(3 if constrained.any() else 2):
            amplitude = norm[index]
            if basis is None:
                # Weights from the data themselves, for the first pass only.
                signal = np.clip(data, 0, None)
            else:
                model_images = _shapes(basis, terms, *stars)
                signal = np.clip(amplitude[:, None, None] * model_images, 0, None)
            variance = noise2 + (signal / sample.gain if sample.gain > 0 else 0.0) + (options.accuracy * signal) ** 2
            weights = valid / variance
            if options.super_resolution:
                project = None
                if constrained.any():
                    centre = basis[0] if basis is not None else _round_gaussian(
                        (ny, nx), float(np.nanmedian(shape_sigma[index])) / step)
                    project = _ShapeFreeProjector(constrained, centre)
                problem = _Problem(data, weights, amplitude, terms, offset_x[index], offset_y[index], (ny, nx),
                                   step, options.interpolant_order, project=project)
                ridge, precondition = problem.preconditioner(options.regularisation)
                right = problem.right(data)
                start = precondition(right) if basis is None else problem.project(basis.ravel())
                solution, used = _conjugate_gradient(problem, right, start, ridge, precondition,
                                                     options.cg_iterations, options.cg_tolerance)
                iterations_used += used
                basis = problem.split(solution)
            else:
                basis = _plain_fit(sample, index, weights, amplitude, terms, (ny, nx), step, options)
            shapes = _shapes(basis, terms, *stars)
            # Flux normalisation: best amplitude of each star given the model.
            norm[index] = np.sum(weights * shapes * data, axis=(1, 2)) / np.sum(weights * shapes**2, axis=(1, 2))
            if options.recenter and outer == 0:
                shift_x, shift_y = _centre_shifts(basis, terms, offset_x[index], offset_y[index], size, step, data,
                                                  weights, norm[index], options.interpolant_order)
                offset_x[index] += shift_x
                offset_y[index] += shift_y
                stars = (offset_x[index], offset_y[index], size, step, options.interpolant_order)
        model_basis, degree = basis, size_degree
        # Per-star chi2 of accepted and rejected stars alike.
        all_index = np.flatnonzero(sample.usable)
        all_u = np.clip((sample.context_x[all_index] - zero[0]) / scale[0], -0.5, 0.5)
        all_v = np.clip((sample.context_y[all_index] - zero[1]) / scale[1], -0.5, 0.5)
        all_terms = polynomial_terms(all_u, all_v, degree)
        all_shapes = _shapes(model_basis, all_terms, offset_x[all_index], offset_y[all_index], size, step,
                             options.interpolant_order)
        all_data = sample.stamps[all_index]
        all_valid = sample.valid[all_index]
        amp = np.sum(all_valid * all_shapes * all_data, axis=(1, 2)) / np.sum(all_valid * all_shapes**2, axis=(1, 2))
        rejected_norm = ~accepted[all_index]
        norm[all_index[rejected_norm]] = amp[rejected_norm]
        prediction = norm[all_index, None, None] * all_shapes
        # Stars rejected against a model still spoilt by outliers may come back.
        selection = clip_stars(sample, all_index, all_data, prediction, all_valid, chi2, accepted, options)
        selection &= eligible
        if (selection == accepted).all() or clip_round == options.max_clip_iterations:
            break
        accepted = selection
        if accepted.sum() < options.min_stars:
            raise PSFFitError(f"only {int(accepted.sum())} stars left after rejecting bad ones "
                              f"(fewer than {options.min_stars})")
    flags[eligible & ~accepted] |= FLAG_REJECTED_CHI2
    # Flux normalisation of the model: unit sum on the image pixel grid at the field centre.
    model_basis = model_basis / (model_basis[0].sum() * step**2)
    model = PSFModel(basis=model_basis, degree=degree, zero=zero, scale=scale, sampling=step, names=tuple(names),
                     loaded=count, accepted=int(accepted.sum()),
                     chi2=float(np.nanmean(chi2[accepted])))
    central = model.evaluate(zero[0], zero[1], size=min(nx, size))
    model.fwhm = float(_moments(central)[0][0])
    psf_images = model.evaluate(sample.context_x, sample.context_y, size=size, centre=(offset_x, offset_y))
    fwhm, ellipticity = _moments(psf_images)
    weights = sample.valid / sample.noise[:, None, None] ** 2
    norm = np.sum(weights * psf_images * sample.stamps, axis=(1, 2)) / np.sum(weights * psf_images**2, axis=(1, 2))
    residual_images = (sample.stamps - norm[:, None, None] * psf_images) * sample.valid
    # Residual rms relative to the star's peak, PSFEx's RESI_PSF spirit.
    residual = np.sqrt(np.mean(residual_images**2, axis=(1, 2))) / np.abs(norm * psf_images.max(axis=(1, 2)))
    snr = np.abs(norm) * np.sqrt(np.sum(weights * psf_images**2, axis=(1, 2)))
    return FitResult(model=model, accepted=accepted, flags=flags, chi2=chi2, norm=norm, snr=snr,
                     residual=residual, fwhm=fwhm, ellipticity=ellipticity, offset_x=offset_x,
                     offset_y=offset_y, degree_requested=options.degree,
                     info={"cg_iterations": iterations_used, "clip_rounds": clip_round, "sampling": step,
                           "degree": degree, "shear_degree": shear_degree, "size_degree": size_degree,
                           "degree_scores": degree_scores})


def clip_stars(sample, index, data, prediction, valid, chi2, accepted, options):
    """Reduced chi^2 of stars ``index`` against ``prediction`` (into ``chi2``) and the stars the clip keeps.

    The noise model is the stars' background noise, their shot noise (``gain``)
    and ``options.accuracy`` of the signal; a star is kept when usable and its
    chi^2 is below ``median + clip_sigma * MAD`` of the ``accepted`` stars
    (never below ``clip_floor * median``).
    """
    signal = np.clip(prediction, 0, None)
    variance = (sample.noise[index, None, None] ** 2 + (signal / sample.gain if sample.gain > 0 else 0.0)
                + (options.accuracy * signal) ** 2)
    resid = (data - prediction) * valid
    chi2[index] = np.sum(resid**2 / variance, axis=(1, 2)) / np.maximum(valid.sum(axis=(1, 2)) - 1, 1)
    current = chi2[accepted]
    median = np.median(current)
    spread = 1.4826 * np.median(np.abs(current - median))
    threshold = max(median + options.clip_sigma * spread, options.clip_floor * median)
    return sample.usable & (chi2 <= threshold)


def _shapes(basis, terms, offset_x, offset_y, size, step, order=7):
    ncomp, ny, nx = basis.shape
    rx = resampling_matrix(offset_x, size, nx, step, order)
    ry = resampling_matrix(offset_y, size, ny, step, order)
    grids = (terms @ basis.reshape(ncomp, -1)).reshape(-1, ny, nx)
    return ry @ grids @ rx.transpose(0, 2, 1)


def _plain_fit(sample, index, weights, amplitude, terms, grid_shape, step, options):
    """Per-pixel polynomial fit of stamps interpolated to a common centre (the biased method)."""
    order = options.interpolant_order
    stamps, coverage = _recentred_stamps(sample, index, grid_shape, step, order)
    # Per-star weight on the grid: the stamp weights, taken at the interpolated positions.
    grid_weights, _ = _recentred_stamps(
        StarSample(weights, sample.valid[index], *(getattr(sample, name)[index] for name in (
            "centre_x", "centre_y", "context_x", "context_y", "offset_x", "offset_y", "flux", "noise")),
            sample.gain, sample.usable[index]),
        np.arange(len(index)), grid_shape, step, order)
    grid_weights = np.clip(grid_weights, 0, None) * (coverage > 0.5)
    blocks = _pixel_blocks(amplitude, terms, grid_weights)
    ncomp = terms.shape[1]
    right = ((amplitude[:, None] * terms).T @ (grid_weights * stamps).reshape(len(terms), -1)).reshape(
        (ncomp,) + stamps.shape[1:])
    return _solve_blocks(blocks, right, _ridge(blocks, options.regularisation))


def _centre_shifts(basis, terms, offset_x, offset_y, size, step, data, weights, norm, order):
    """One Gauss-Newton step for each star's centre; the mean shift is removed (it is the model's)."""
    delta = 0.05
    base = _shapes(basis, terms, offset_x, offset_y, size, step, order)
    grad_x = (_shapes(basis, terms, offset_x + delta, offset_y, size, step, order) - base) / delta
    grad_y = (_shapes(basis, terms, offset_x, offset_y + delta, size, step, order) - base) / delta
    residual = data - norm[:, None, None] * base
    gx, gy = norm[:, None, None] * grad_x, norm[:, None, None] * grad_y
    a11 = np.sum(weights * gx * gx, axis=(1, 2))
    a22 = np.sum(weights * gy * gy, axis=(1, 2))
    a12 = np.sum(weights * gx * gy, axis=(1, 2))
    b1 = np.sum(weights * gx * residual, axis=(1, 2))
    b2 = np.sum(weights * gy * residual, axis=(1, 2))
    det = a11 * a22 - a12**2
    shift_x = np.clip((a22 * b1 - a12 * b2) / det, -0.5, 0.5)
    shift_y = np.clip((a11 * b2 - a12 * b1) / det, -0.5, 0.5)
    return shift_x - shift_x.mean(), shift_y - shift_y.mean()


def residual_table(result: FitResult, sample: StarSample):
    """Per-star diagnostics in the columns of PSFEx's output catalogue (an astropy Table).

    ``RESI_PSF`` is the rms of the star's residual (data minus the scaled
    model, over valid pixels) relative to the scaled model's peak.
    """
    from astropy.table import Table

    count = len(sample)
    table = Table()
    table["SOURCE_NUMBER"] = np.arange(1, count + 1, dtype=np.int32)
    table["EXTENSION"] = np.ones(count, dtype=np.int16)
    table["CATALOG_NUMBER"] = np.ones(count, dtype=np.int32)
    table["FLAGS_PSF"] = result.flags.astype(np.int32)
    table["VECTOR_CONTEXT"] = np.stack([sample.context_x, sample.context_y], axis=1)
    table["X_IMAGE"] = sample.centre_x
    table["Y_IMAGE"] = sample.centre_y
    table["DELTAX_IMAGE"] = result.offset_x.astype(np.float32)
    table["DELTAY_IMAGE"] = result.offset_y.astype(np.float32)
    table["NORM_PSF"] = result.norm.astype(np.float32)
    table["FWHM_PSF"] = result.fwhm.astype(np.float32)
    table["ELLIP_PSF"] = result.ellipticity.astype(np.float32)
    table["SNR_PSF"] = result.snr.astype(np.float32)
    table["CHI2_PSF"] = result.chi2.astype(np.float32)
    table["RESI_PSF"] = result.residual.astype(np.float32)
    table["ACCEPTED"] = result.accepted.astype(np.int16)
    return table
