"""Per-object multi-epoch metacalibration: the built-in engine.

The steps follow ShapePipe's ``ngmix`` stage (``ngmix_package/ngmix.py``):

1. assemble the epochs of an object (:func:`assemble_epoch`): drop epochs
   off the chip edge, subtract the background, flag pixels missing from the
   tile, drop epochs with more than a third of their pixels flagged, apply
   the flux scale to image and weight;
2. per epoch (:func:`prepare_epoch`): fit the original PSF with a Gaussian
   (an epoch whose PSF fit fails is dropped), measure adaptive moments for
   the starting point, estimate the noise level, fill masked pixels with
   noise and set the weight to ``1/sigma^2`` on usable pixels;
3. metacalibration of each epoch (:mod:`.metacal`) with the correlated-noise
   correction;
4. in each of the five branches, one elliptical Gaussian fitted jointly to
   all epochs (:mod:`.gauss_fit`) with ShapePipe's priors and retries, and
   the branch PSF measured with the same fitter.

Differences from ShapePipe, on purpose: an object whose fit fails is
returned with flags instead of vanishing; the random generator is seeded per
object from its sky position (:func:`sky_rng`); every epoch's sky origin is the object's
catalogue position; the PSF of every branch is measured the same way; the
size is written both as ShapePipe's ``T`` (a half-light radius) and as
``T_gauss_arcsec2`` (``2 sigma^2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import flags as fl
from .gauss_fit import (FIT_BAD_COVARIANCE, FIT_OK, FitResult, cost_hessian, fit_gauss, fit_with_retries, gaussian_covariance,
                        inverse, jacobian_area, make_pixel_data, model_derivatives, weighted_model_derivatives)
from .metacal import BRANCHES, EpochMetacal
from .moments import LN2, T_err_to_r50_err, T_to_r50, adaptive_moments, noise_sigma_outside_object
from .priors import ShapePipePrior

#: Pixels of the tile stamp outside the tile image (SExtractor's value).
TILE_MISSING_VALUE = -1e30
#: Tile stamp pixels below this are SExtractor's missing value, whatever the stamp's float precision.
TILE_MISSING_BELOW = -1e29
#: Flag value given to those pixels (ShapePipe's).
TILE_MISSING_FLAG = 2 ** 10


@dataclass
class Epoch:
    """One epoch of one object, ready for metacalibration.

    Attributes
    ----------
    image : numpy.ndarray
        Background-subtracted, flux-scaled stamp; masked pixels filled with
        noise.
    weight : numpy.ndarray
        ``1/noise_sigma^2`` on usable pixels, 0 on masked ones.
    mask : numpy.ndarray of bool
        True for masked pixels (flagged or zero weight).
    psf_image : numpy.ndarray
        PSF stamp (pixel response included), centred on its central pixel.
    jacobian : numpy.ndarray
        2x2 local WCS Jacobian in arcsec/pixel, ``[[du/dx, du/dy],
        [dv/dx, dv/dy]]``.
    centre : tuple of float
        (row, col) pixel position of the object in the stamp: the origin of
        the sky coordinates.
    noise_sigma : float
        Noise level of ``image``.
    flux_scale : float
        Flux scale applied to image (and, squared, to the weight).
    name : str
        Epoch name (e.g. ``"2104126-12"``: exposure and CCD).
    """

    image: np.ndarray
    weight: np.ndarray
    mask: np.ndarray
    psf_image: np.ndarray
    jacobian: np.ndarray
    centre: tuple
    noise_sigma: float
    flux_scale: float = 1.0
    name: str = ""
    moments: object = None
    psf_fit: object = None


@dataclass
class RawEpoch:
    """Stamps of one epoch as stored by the stamp maker.

    Attributes
    ----------
    image, background, weight, flag : numpy.ndarray
        Single-exposure stamps around the object.
    psf_image : numpy.ndarray
        PSF stamp at the object's position.
    jacobian : array_like
        2x2 local WCS Jacobian (arcsec/pixel) at the object's position.
    flux_scale : float
        ``FSCALE`` of the exposure.
    name : str
        ``"<exposure>-<ccd>"``.
    centre : tuple of float, optional
        Object position in the stamp (default: the central pixel).
    tile_stamp : numpy.ndarray, optional
        Tile stamp of the object; its pixels at SExtractor's -1e30 (below ``TILE_MISSING_BELOW``) are flagged.
    ccd : int, optional
        CCD number, to orient ``tile_stamp`` like the exposure (MegaCam).
    """

    image: np.ndarray
    background: np.ndarray
    weight: np.ndarray
    flag: np.ndarray
    psf_image: np.ndarray
    jacobian: np.ndarray
    flux_scale: float = 1.0
    name: str = ""
    centre: tuple = None
    tile_stamp: np.ndarray = None
    ccd: int = None


def megacam_flip(stamp, ccd):
    """Orient a tile stamp like a MegaCam CCD (rows 0-17 and 36, 37 upside down).

    Parameters
    ----------
    stamp : numpy.ndarray
        Tile stamp.
    ccd : int
        CCD number.

    Returns
    -------
    numpy.ndarray
    """
    if ccd < 18 or ccd in (36, 37):
        return np.rot90(stamp, k=2)
    return stamp


def assemble_epoch(raw, max_flagged_fraction=1.0 / 3.0, local_sky_width=0):
    """Apply ShapePipe's per-epoch selection and scaling.

    Parameters
    ----------
    raw : RawEpoch
        Stored stamps.
    max_flagged_fraction : float, optional
        Epochs with a larger fraction of flagged pixels are dropped.
    local_sky_width : int, optional
        When > 0, the median of the background-subtracted pixels in the
        stamp's outer ``local_sky_width`` rows and columns (positive weight,
        no flag) is subtracted as well: the light of neighbours' wings and
        diffuse light on scales finer than the background mesh (crowded
        fields; ``EPOCH_LOCAL_SKY_WIDTH``). Not done with fewer than
        ``MIN_LOCAL_SKY_PIXELS`` usable pixels.

    Returns
    -------
    dict or None
        ``image``, ``weight``, ``flag``, ``psf_image``, ``jacobian``,
        ``flux_scale``, ``name``, ``centre``; None when the epoch is dropped
        (a pixel exactly 0 means the stamp crosses the chip edge).
    """
    image = np.asarray(raw.image, dtype=float)
    shape = image.shape
    for label, arr in (("background", raw.background), ("weight", raw.weight),
                       ("flag", raw.flag)):
        if np.shape(arr) != shape:
            raise ValueError(
                f"epoch {raw.name}: {label} stamp shape {np.shape(arr)} "
                f"differs from image stamp shape {shape}")
    if np.any(image == 0):
        return None
    image = image - np.asarray(raw.background, dtype=float)
    flag = np.array(raw.flag, dtype=np.int64, copy=True)
    if local_sky_width > 0:
        image = image - border_sky(image, raw.weight, flag, int(local_sky_width))
    if raw.tile_stamp is not None:
        tile = np.asarray(raw.tile_stamp)
        if raw.ccd is not None:
            tile = megacam_flip(tile, int(raw.ccd))
        # SExtractor's -1e30 is stored as float32 (-1.0000000150e30 once read as float64): an equality
        # test with the float64 constant never matched. No real pixel value comes near -1e29.
        flag[tile < TILE_MISSING_BELOW] = TILE_MISSING_FLAG
    if np.count_nonzero(flag) / flag.size > max_flagged_fraction:
        return None
    scale = float(raw.flux_scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"epoch {raw.name}: flux scale must be positive, got {scale}")
    centre = raw.centre if raw.centre is not None else (shape[0] // 2, shape[1] // 2)
    return {
        "image": image * scale,
        "weight": np.asarray(raw.weight, dtype=float) / scale ** 2,
        "flag": flag,
        "psf_image": np.asarray(raw.psf_image, dtype=float),
        "jacobian": np.asarray(raw.jacobian, dtype=float),
        "flux_scale": scale,
        "name": raw.name,
        "centre": tuple(float(c) for c in centre),
    }


MIN_LOCAL_SKY_PIXELS = 20


def border_sky(image, weight, flag, width):
    """Median of a stamp's outer ``width`` rows and columns where the weight is positive and no flag is set.

    Returns 0 when fewer than :data:`MIN_LOCAL_SKY_PIXELS` such pixels remain.
    """
    border = np.ones(np.shape(image), bool)
    border[width:-width, width:-width] = False
    usable = border & (np.asarray(weight) > 0) & (np.asarray(flag) == 0)
    if np.count_nonzero(usable) < MIN_LOCAL_SKY_PIXELS:
        return 0.0
    return float(np.median(np.asarray(image)[usable]))


def _psf_guess_T(psf_image, jacobian):
    moments = adaptive_moments(psf_image, guess_sigma=2.0)
    area = jacobian_area(jacobian)
    if moments is None:
        return 2.0 * 4.0 * area, None
    return 2.0 * moments.sigma ** 2 * area, moments


def psf_stamp_usable(psf_image):
    """True when a PSF stamp can be normalised: finite pixels, positive sum."""
    image = np.asarray(psf_image, dtype=float)
    return bool(image.size and np.isfinite(image).all() and image.sum() > 0)


def fit_psf_image(psf_image, jacobian, T_guess):
    """Fit one Gaussian to a PSF image (unit weight, as ngmix's PSF obs).

    Parameters
    ----------
    psf_image : numpy.ndarray
        PSF stamp, centred on its central pixel.
    jacobian : array_like
        2x2 Jacobian (arcsec/pixel).
    T_guess : float
        Starting size (arcsec^2).

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        If the stamp cannot be normalised (:func:`psf_stamp_usable`).
    """
    if not psf_stamp_usable(psf_image):
        raise ValueError("PSF image must have finite pixels and a positive sum")
    image = np.asarray(psf_image, dtype=float)
    image = image / image.sum()
    centre = (image.shape[0] // 2, image.shape[1] // 2)
    pixels = make_pixel_data([image], [np.ones_like(image)], [jacobian], [centre],
                             [(0.0, 0.0, 0.0)])
    return fit_gauss(pixels, [0.0, 0.0, 0.0, 0.0, T_guess, 1.0], s2n=False)


def fit_target_psf(operator):
    """Gaussian fit of an epoch's reconvolution PSF (its :meth:`~.metacal.EpochMetacal.target_psf_image`).

    A Gaussian target (``gauss_nopix``, ``gauss_pix``) is drawn at pixel
    centres exactly as the fitter's model with ``(0, 0, 0, 0, 2 sigma^2, 1)``,
    so its fit returns those parameters to rounding (1e-16; it stopped at its
    first step): they are returned directly (``tests/test_metacal.py``
    compares them with the fit). The pixel-convolved kernel (``shapepipe``) is
    fitted with :func:`fit_psf_image`.

    Returns
    -------
    FitResult
    """
    T_target = 2.0 * operator.target_sigma ** 2
    if operator.target_is_gaussian:
        return FitResult(pars=np.array([0.0, 0.0, 0.0, 0.0, T_target, 1.0]), cov=np.zeros((6, 6)), status=FIT_OK)
    return fit_psf_image(operator.target_psf_image(), operator.jacobian, T_target)


def prepare_epoch(assembled, rng, mask_fill="model"):
    """Fit the original PSF, estimate the noise and fill masked pixels.

    Parameters
    ----------
    assembled : dict
        Output of :func:`assemble_epoch`.
    rng : numpy.random.Generator
        Draws the noise that fills masked pixels.
    mask_fill : {"model", "noise"}
        What masked pixels hold (see :func:`epoch_from_pixels`).

    Returns
    -------
    epoch : Epoch or None
        None when the epoch cannot be used (ShapePipe drops such epochs).
    reason : str
        ``""``, ``"psf_stamp"`` (the PSF stamp has a sum that is not finite
        and positive), ``"psf_fit"`` (the PSF fit failed) or ``"no_pixels"``
        (no usable pixel or no valid noise level).
    """
    if not psf_stamp_usable(assembled["psf_image"]):
        return None, "psf_stamp"
    jac = assembled["jacobian"]
    T_guess, _ = _psf_guess_T(assembled["psf_image"], jac)
    psf_fit = fit_psf_image(assembled["psf_image"], jac, T_guess)
    if psf_fit.status & ~FIT_BAD_COVARIANCE:
        return None, "psf_fit"
    return epoch_from_pixels(assembled, psf_fit, rng, mask_fill)


#: What masked pixels of a stamp hold before the metacal operations.
MASK_FILLS = ("model", "noise")


def epoch_from_pixels(assembled, psf_fit, rng, mask_fill="model"):
    """Epoch with masked pixels filled and the weight from the noise level.

    Shared by the engines once their PSF fit succeeded; returns
    ``(Epoch, "")`` or ``(None, reason)``.

    Masked pixels keep zero weight in every fit, but the metacal images are
    made from the whole stamp: deconvolution, shear and reconvolution spread
    each pixel over its neighbours, so a hole in the galaxy's light leaks
    into the pixels that are fitted. A masked column or a chip edge is
    aligned with the pixel grid, so that leak is a shear: on galaxies with
    a masked column within 10 pixels of their centre, filling with noise
    alone gives c1 = -0.005 and m1 = +0.02 (benchmarks/bench_mask_fill.py).
    ``mask_fill = "model"`` fills with an elliptical Gaussian fitted to the
    usable pixels (:func:`masked_pixel_model`) plus noise, as the DES metacal
    catalogues fill masked pixels with a model of the object; ``"noise"``
    fills with noise only (ShapePipe), as does ``"model"`` when the fit fails.
    """
    if mask_fill not in MASK_FILLS:
        raise ValueError(f"mask_fill must be one of {', '.join(MASK_FILLS)}, got {mask_fill!r}")
    image = assembled["image"]
    mask = (assembled["flag"] != 0) | (assembled["weight"] <= 0)
    usable = ~mask
    if not usable.any():
        return None, "no_pixels"
    moments = adaptive_moments(image, mask=mask)
    sigma = noise_sigma_outside_object(image, usable, moments)
    if not (np.isfinite(sigma) and sigma > 0):
        return None, "no_pixels"
    filled = image.copy()
    if mask.any():
        filled[mask] = rng.normal(0.0, sigma, size=int(mask.sum()))
        if mask_fill == "model":
            model = masked_pixel_model(image, usable, mask, sigma, moments)
            if model is not None:
                filled[mask] += model
    return Epoch(image=filled, weight=usable / sigma ** 2, mask=mask,
                 psf_image=assembled["psf_image"], jacobian=assembled["jacobian"],
                 centre=assembled["centre"], noise_sigma=float(sigma),
                 flux_scale=assembled["flux_scale"], name=assembled["name"],
                 moments=moments, psf_fit=psf_fit), ""


def masked_pixel_model(image, usable, mask, sigma, moments, n_sigma=4.0, min_radius=6.0):
    """An elliptical Gaussian fitted to the usable pixels, evaluated on the masked ones.

    Adaptive moments cannot be used as they are: they treat a masked pixel
    as missing light, so a masked column through a galaxy shifts and
    elongates them. A weighted fit ignores those pixels without bias (for a
    Gaussian object); it starts from the moments and uses the pixels within
    ``n_sigma`` moment sizes of the object.

    Parameters
    ----------
    image : numpy.ndarray
        Background-subtracted stamp.
    usable, mask : numpy.ndarray of bool
        Usable and masked pixels.
    sigma : float
        Noise level of the usable pixels.
    moments : Moments or None
        Adaptive moments measured with the mask (the starting point).

    Returns
    -------
    numpy.ndarray or None
        Model values on ``image[mask]`` (same order); None without moments
        or when the fit fails.
    """
    if moments is None:
        return None
    centre = (moments.row, moments.col)
    pixel_frame = np.eye(2)
    e = np.hypot(moments.e1, moments.e2)
    to_g = 1.0 / (1.0 + np.sqrt(max(1.0 - e * e, 1e-6)))  # distortion -> reduced shear
    guess = [0.0, 0.0, moments.e1 * to_g, moments.e2 * to_g, 2.0 * moments.sigma ** 2, moments.amplitude]
    radius = max(n_sigma * moments.sigma, min_radius)
    pixels = make_pixel_data([image], [usable / sigma ** 2], [pixel_frame], [centre], [(0.0, 0.0, 0.0)],
                             radius=radius)
    fit = fit_gauss(pixels, guess)
    if fit.status & ~FIT_BAD_COVARIANCE or not np.all(np.isfinite(fit.pars)):
        return None
    targets = make_pixel_data([image], [mask.astype(float)], [pixel_frame], [centre], [(0.0, 0.0, 0.0)])
    try:
        return fit.pars[5] * model_derivatives(fit.pars, targets)[:, 5]
    except ValueError:  # |g| >= 1 or a degenerate covariance
        return None


#: Side (arcsec) of the sky cells that key the per-object random streams.
RNG_CELL_ARCSEC = 1.0
#: Mixed into every stream's key so that it differs from other SeedSequences of the run seed.
_RNG_PURPOSE = 0x6D63616C  # "mcal"


def sky_cell(ra, dec, cell_arcsec=RNG_CELL_ARCSEC):
    """Integer indices of the sky cell holding a position.

    Cells are ``cell_arcsec`` high in Dec and ``cell_arcsec`` wide in
    ``RA cos(Dec)`` (``cos`` taken at the centre of the Dec row, so a cell is
    square on the sky and the RA index depends on the Dec row only).

    Parameters
    ----------
    ra, dec : float or array_like
        Position in degrees.
    cell_arcsec : float, optional
        Cell side in arcsec.

    Returns
    -------
    (ra_index, dec_index) : tuple of int or of numpy.ndarray
        Non-negative integers.
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        raise ValueError("sky position must be finite")
    if not cell_arcsec > 0:
        raise ValueError(f"cell size must be positive, got {cell_arcsec}")
    cell_deg = cell_arcsec / 3600.0
    dec_index = np.floor((np.clip(dec, -90.0, 90.0) + 90.0) / cell_deg)
    dec_centre = (dec_index + 0.5) * cell_deg - 90.0
    width = cell_deg / np.maximum(np.cos(np.radians(dec_centre)), 1e-12)
    ra_index = np.floor(np.mod(ra, 360.0) / width)
    if ra_index.ndim == 0:
        return int(ra_index), int(dec_index)
    return ra_index.astype(np.int64), dec_index.astype(np.int64)


def sky_rng(seed, ra, dec, cell_arcsec=RNG_CELL_ARCSEC):
    """Random generator of one object, keyed by the run seed and its sky cell.

    The key does not depend on the detection number, the image or how a
    tile is split, so the same galaxy draws the same numbers (correlated-noise
    image, masked-pixel fill, fit retries) in runs with opposite shears, in
    any id range and with any number of workers. A galaxy whose detected
    centroid moves across a cell edge between two runs gets another stream
    (fraction about ``(<|dx|> + <|dy|>) / cell``: 0.02-0.04% for the
    centroid shifts between +-0.02 shear on a simulated tile, 1 arcsec cell);
    two objects in one cell share a stream.

    Parameters
    ----------
    seed : int
        Run seed (non-negative).
    ra, dec : float
        Object position (degrees), e.g. the tile catalogue's ``XWIN_WORLD``,
        ``YWIN_WORLD``.
    cell_arcsec : float, optional
        Cell side (arcsec).

    Returns
    -------
    numpy.random.Generator
    """
    ra_index, dec_index = sky_cell(ra, dec, cell_arcsec)
    sequence = np.random.SeedSequence([int(seed), _RNG_PURPOSE, ra_index, dec_index])
    return np.random.default_rng(sequence)


@dataclass
class EngineConfig:
    """Settings of the metacal engine (ShapePipe's values by default).

    Attributes
    ----------
    step : float
        Metacal shear step.
    prior : ShapePipePrior
        Fit priors; ``cen_sigma`` should be the pixel scale.
    ntry : int
        Fit tries per branch.
    zero_point : float
        Magnitude zero point (``MAG_ZP``).
    max_flagged_fraction : float
        Epochs with more flagged pixels are dropped.
    fix_noise : bool
        Apply the correlated-noise correction.
    aperture_sigmas : float or None
        Fit only the pixels within this many sigmas of the guessed
        (PSF-convolved) profile around the object (the same aperture in all
        branches; the model is below 1e-5 of its peak outside 5 sigma).
        None fits the whole stamp as ShapePipe does.
    target_psf : str
        Reconvolution-PSF rule, one of :data:`.metacal.TARGET_RULES`
        (``TARGET_PSF`` of the module).
    mask_fill : str
        What masked pixels hold, one of :data:`MASK_FILLS` (``MASK_FILL``
        of the module; see :func:`epoch_from_pixels`).
    epoch_local_sky_width : int
        Border width (pixels) of the per-epoch local sky of
        :func:`assemble_epoch`; 0: none (ShapePipe).
    """

    step: float = 0.01
    prior: ShapePipePrior = field(default_factory=ShapePipePrior)
    ntry: int = 5
    zero_point: float = 30.0
    max_flagged_fraction: float = 1.0 / 3.0
    fix_noise: bool = True
    aperture_sigmas: float = 5.0
    target_psf: str = "gauss_nopix"
    mask_fill: str = "model"
    epoch_local_sky_width: int = 0


def fit_radius(T_guess, operators, n_sigma, min_radius=6.0):
    """Aperture radius (pixels) for the galaxy fit, or None for the stamp."""
    if n_sigma is None:
        return None
    radii = []
    for op in operators:
        sigma = np.sqrt(max(T_guess, 0.0) / 2.0 + op.target_sigma ** 2)
        pixel = np.sqrt(jacobian_area(op.jacobian))
        radii.append(n_sigma * sigma / pixel)
    return max(min_radius, max(radii))


#: Columns written for every branch, in ShapePipe's order, then the explicit
#: size columns. ``T``, ``T_err``, ``Tpsf`` and ``T_psfo_ngmix`` are
#: half-light radii in arcsec (ShapePipe's meaning); ``*_gauss_arcsec2`` are
#: ``T = 2 sigma^2`` in arcsec^2.
COLUMNS = (
    "id", "n_epoch_model", "moments_fail", "ntry_fit",
    "g1_psfo_ngmix", "g2_psfo_ngmix", "T_psfo_ngmix",
    "g1_err_psfo_ngmix", "g2_err_psfo_ngmix", "T_err_psfo_ngmix",
    "g1", "g1_err", "g2", "g2_err", "T", "T_err", "Tpsf", "g1_psf", "g2_psf",
    "flux", "flux_err", "s2n", "mag", "mag_err", "flags", "mcal_flags",
    "T_gauss_arcsec2", "T_gauss_arcsec2_err", "Tpsf_gauss_arcsec2",
    "T_psfo_gauss_arcsec2", "T_err_psfo_gauss_arcsec2",
)
INT_COLUMNS = ("id", "n_epoch_model", "moments_fail", "ntry_fit", "flags", "mcal_flags")


def _empty_branch(object_id):
    row = {name: np.nan for name in COLUMNS}
    row.update(id=int(object_id), n_epoch_model=0, moments_fail=0, ntry_fit=0,
               flags=0, mcal_flags=0)
    return row


def _weighted_psf_summary(epochs):
    """Original-PSF columns: fits averaged with weights sum(weight map)."""
    wsum = np.array([ep.weight.sum() for ep in epochs])
    wsum = wsum / wsum.sum()
    pars = np.array([ep.psf_fit.pars for ep in epochs])
    errs = np.array([ep.psf_fit.errors for ep in epochs])
    T = wsum @ pars[:, 4]
    T_err = wsum @ errs[:, 4]
    r50 = wsum @ T_to_r50(pars[:, 4])
    r50_err = wsum @ T_err_to_r50_err(pars[:, 4], errs[:, 4])
    return {
        "g1_psfo_ngmix": wsum @ pars[:, 2], "g2_psfo_ngmix": wsum @ pars[:, 3],
        "g1_err_psfo_ngmix": wsum @ errs[:, 2], "g2_err_psfo_ngmix": wsum @ errs[:, 3],
        "T_psfo_ngmix": r50, "T_err_psfo_ngmix": r50_err,
        "T_psfo_gauss_arcsec2": T, "T_err_psfo_gauss_arcsec2": T_err,
    }


def _initial_guess(epochs, targets):
    """Starting point shared by all branches, from adaptive moments."""
    T_values, fluxes = [], []
    for ep, target in zip(epochs, targets):
        if ep.moments is None:
            continue
        area = jacobian_area(ep.jacobian)
        T_obs = 2.0 * ep.moments.sigma ** 2 * area
        T_psf = ep.psf_fit.pars[4]
        T_values.append(max(T_obs - T_psf, 0.1 * 2.0 * target.target_sigma ** 2))
        fluxes.append(ep.moments.amplitude)
    if not T_values:
        # ShapePipe's default starting point when moments fail everywhere.
        T_default = 2.0 * np.mean([t.target_sigma for t in targets]) ** 2
        return np.array([0.0, 0.0, 0.0, 0.0, T_default, 100.0]), True
    return np.array([0.0, 0.0, 0.0, 0.0, np.mean(T_values), np.mean(fluxes)]), False


#: The sheared branch fitted second of each pair, and its partner fitted first.
_MIRROR_BRANCH = {"1m": "1p", "2m": "2p"}


def measure_object(epochs, object_id, rng, config=None, n_dropped_psf=0):
    """Metacalibration shape measurement of one object over its epochs.

    Parameters
    ----------
    epochs : list of Epoch
        Prepared epochs (see :func:`prepare_epoch`); may be empty.
    object_id : int
        Object id, written in the ``id`` column.
    rng : numpy.random.Generator
        The object's generator (:func:`sky_rng`): draws the noise images
        of the correlated-noise correction and the retry perturbations.
    config : EngineConfig, optional
    n_dropped_psf : int, optional
        Epochs dropped because their PSF fit failed (sets PSF_FIT_FAIL).

    Returns
    -------
    dict
        Branch name to a row dict with the :data:`COLUMNS`. Always returned,
        with failure flags when something went wrong.
    """
    config = config or EngineConfig()
    object_flags = fl.PSF_FIT_FAIL if n_dropped_psf else 0
    rows = {name: _empty_branch(object_id) for name in BRANCHES}
    if not epochs:
        object_flags |= fl.NO_EPOCHS
        for row in rows.values():
            row["flags"] = row["mcal_flags"] = object_flags
        return rows

    # Metacal images of every epoch.
    branch_images = {name: [] for name in BRANCHES}
    operators = []
    try:
        for ep in epochs:
            op = EpochMetacal(ep.psf_image, ep.jacobian, ep.image.shape, step=config.step,
                              target_rule=config.target_psf)
            noise = (rng.normal(0.0, ep.noise_sigma, size=ep.image.shape)
                     if config.fix_noise else None)
            images = op.make_images(ep.image, noise)
            for name in BRANCHES:
                branch_images[name].append(images[name])
            operators.append(op)
    except (ValueError, np.linalg.LinAlgError):
        object_flags |= fl.METACAL_FAIL
        for row in rows.values():
            row["flags"] = row["mcal_flags"] = object_flags
            row["n_epoch_model"] = len(epochs)
        return rows

    guess, moments_failed = _initial_guess(epochs, operators)
    if moments_failed:
        object_flags |= fl.MOMENTS_FAIL
    psf_columns = _weighted_psf_summary(epochs)

    # The reconvolution PSF is shared by the five branches: measure it once
    # per epoch, with the same pixel convention for every branch.
    weight_factor = 0.5 if config.fix_noise else 1.0
    weights = [ep.weight * weight_factor for ep in epochs]
    target_fits = [fit_target_psf(op) for op in operators]
    target_ok = all(f.status == FIT_OK for f in target_fits)
    wsum = np.array([w.sum() for w in weights])
    wsum = wsum / wsum.sum()
    if target_ok:
        tpars = np.array([f.pars for f in target_fits])
        Tpsf = wsum @ tpars[:, 4]
        psf_branch = {"Tpsf_gauss_arcsec2": Tpsf, "Tpsf": wsum @ T_to_r50(tpars[:, 4]),
                      "g1_psf": wsum @ tpars[:, 2], "g2_psf": wsum @ tpars[:, 3]}
    else:
        object_flags |= fl.TARGET_PSF_FIT_FAIL
        psf_branch = {}

    if all(op.target_is_gaussian for op in operators):
        psf_covs = [(op.target_sigma ** 2, 0.0, op.target_sigma ** 2) for op in operators]
    elif target_ok:
        # A pixel-convolved kernel: its fitted Gaussian, as ngmix does.
        psf_covs = [gaussian_covariance(*f.pars[2:5]) for f in target_fits]
    else:
        # No fitted kernel: the Gaussian plus the pixel's variance (1/12 pixel^2 per axis).
        var = [op.target_sigma ** 2 + abs(np.linalg.det(op.jacobian)) / 12.0 for op in operators]
        psf_covs = [(v, 0.0, v) for v in var]
    jacobians = [ep.jacobian for ep in epochs]
    centres = [ep.centre for ep in epochs]
    radius = fit_radius(guess[4], operators, config.aperture_sigmas)
    mcal_flags = object_flags
    start = guess
    pixels = make_pixel_data(branch_images["noshear"], weights, jacobians, centres,
                             psf_covs, radius=radius)
    fits = {}
    noshear_hessian = None
    for name in BRANCHES:
        if name != "noshear":
            pixels = pixels.with_images(branch_images[name])
        branch_start = start
        partner = _MIRROR_BRANCH.get(name)
        if partner and fits["noshear"][0].status == FIT_OK and fits[partner][0].status == FIT_OK:
            # The opposite shear's solution mirrored through the noshear one:
            # parameters are smooth in the shear, so this start is off by the
            # second-order term only (~1e-4 of the first-order one). Not
            # where it would leave the valid shapes (then the noshear start).
            mirrored = 2.0 * fits["noshear"][0].pars - fits[partner][0].pars
            if np.hypot(mirrored[2], mirrored[3]) < 0.99:
                branch_start = mirrored
        result, ntry = fit_with_retries(pixels, branch_start, rng, prior=config.prior,
                                        ntry=config.ntry, hessian=noshear_hessian)
        if name == "noshear" and result.status == FIT_OK:
            # The sheared branches differ by 1%: starting them from the
            # noshear solution saves iterations. The fit converges to
            # d^T H d < 1e-12, so the start changes g by < 1e-6
            # (tests/test_metacal_engines.py).
            start = result.pars.copy()
            # The full Hessian at the noshear solution (needed by its
            # errors anyway) steers the sheared fits: about half the steps
            # of Gauss-Newton ones (gauss_fit.fit_gauss).
            noshear_hessian = _full_hessian(result.pars, pixels, config.prior)
        fits[name] = (result, ntry, pixels)
    # Computed the same way in every branch, so that weights made from the
    # errors respond to shear like the shapes (selection response); one
    # transform per epoch serves the five branches.
    ok_names = [name for name in BRANCHES if fits[name][0].status == FIT_OK]
    hessians = [noshear_hessian if name == "noshear" else None for name in ok_names]
    covariances = metacal_covariances([fits[name][0] for name in ok_names], [fits[name][2] for name in ok_names],
                                      operators, [ep.noise_sigma for ep in epochs], config.fix_noise, config.prior,
                                      hessians=hessians)
    covariances = dict(zip(ok_names, covariances))
    for name in BRANCHES:
        row = rows[name]
        row.update(psf_columns)
        row.update(psf_branch)
        row["n_epoch_model"] = len(epochs)
        row["moments_fail"] = int(moments_failed)
        result, ntry, pixels = fits[name]
        row["ntry_fit"] = ntry
        branch_flags = object_flags
        if result.status & ~FIT_BAD_COVARIANCE:
            branch_flags |= fl.FIT_FAIL
        elif result.status & FIT_BAD_COVARIANCE:
            branch_flags |= fl.BAD_COVARIANCE
        errors = result.errors
        if result.status == FIT_OK:
            errors = _standard_errors(covariances[name])
            if not (np.isfinite(errors).all() and np.all(errors > 0)):
                branch_flags |= fl.BAD_COVARIANCE
        if not branch_flags & fl.FIT_FAIL:
            branch_flags |= fill_branch_row(row, result.pars, errors, result.s2n, config.zero_point)
        row["flags"] = branch_flags
        mcal_flags |= branch_flags
    for row in rows.values():
        row["mcal_flags"] = mcal_flags
    return rows


def metacal_covariance(result, pixels, operators, noise_sigmas, fix_noise=True, prior=None):
    """Covariance of the fitted parameters under the metacal image's own noise.

    The fit weights the metacal image with ``1/sigma^2`` (``1/(2 sigma^2)``
    with the correlated-noise correction), but its noise is the epoch's white
    noise pushed through the metacal operation ``A`` (deconvolution by the
    PSF, reconvolution by the wider target: correlated and lower per pixel)
    plus, with the correction, a second such image rotated by 90 degrees.
    To first order the fit returns ``dp = H^-1 D^T W dy`` (``H`` the full
    Hessian of the cost with the priors, :func:`~.gauss_fit.cost_hessian`;
    ``D`` the model derivatives, ``W`` the weights), so::

        Cov(p) = H^-1 [sum_e sigma_e^2 (|A_e^T W D|^2 + |A_e^T R W D|^2)] H^-1

    with ``R`` the 90-degree rotation. The noshear operator stands for the
    sheared ones (they differ by the 1% shear). Neither the inverse Hessian
    (which assumes white noise of the weight's level) nor its scaling by the
    reduced chi^2 (below 1 for the smoothed noise) describe that scatter: they
    underestimate the shape errors by a factor 2-3 (``benchmarks/bench_metacal.py
    --errors``).

    Parameters
    ----------
    result : FitResult
        Successful fit.
    pixels : PixelData
        The pixels fitted.
    operators : list of EpochMetacal
    noise_sigmas : list of float
        Noise level of each epoch's image.
    fix_noise : bool, optional
        Whether the correlated-noise correction was applied.
    prior : ShapePipePrior, optional
        The fit's priors (their curvature enters ``H``).

    Returns
    -------
    numpy.ndarray
        6x6 covariance (NaN when the Hessian cannot be inverted).
    """
    return metacal_covariances([result], [pixels], operators, noise_sigmas, fix_noise, prior)[0]


def _full_hessian(pars, pixels, prior):
    """:func:`~.gauss_fit.cost_hessian` at a solution, or None where it is not finite."""
    hessian = cost_hessian(pars, pixels, prior)
    return hessian if np.isfinite(hessian).all() else None


def metacal_covariances(results, pixel_sets, operators, noise_sigmas, fix_noise=True, prior=None, hessians=None):
    """:func:`metacal_covariance` of several fits on the same pixels (e.g. the five branches).

    The derivative images of all the fits go through one Fourier transform
    per epoch (:meth:`~.metacal.EpochMetacal.noshear_grams`).

    Parameters
    ----------
    results : list of FitResult
    pixel_sets : list of PixelData
        The pixels of each fit (the same pixel positions for all).
    operators, noise_sigmas, fix_noise, prior
        As :func:`metacal_covariance`.
    hessians : list, optional
        Per fit, its :func:`~.gauss_fit.cost_hessian` if already computed
        (else None).

    Returns
    -------
    list of numpy.ndarray
        One 6x6 covariance per fit (NaN when its Hessian cannot be inverted).
    """
    h_invs, derivs, good = [], [], []
    hessians = hessians or [None] * len(results)
    for result, pixels, hessian in zip(results, pixel_sets, hessians):
        try:
            h_invs.append(inverse(cost_hessian(result.pars, pixels, prior) if hessian is None else hessian))
            derivs.append(weighted_model_derivatives(result.pars, pixels))
            good.append(True)
        except (np.linalg.LinAlgError, ValueError, TypeError):
            h_invs.append(None)
            derivs.append(None)
            good.append(False)
    out = [np.full((6, 6), np.nan) for _ in results]
    used = [i for i, ok in enumerate(good) if ok]
    if not used:
        return out
    stacked = np.stack([derivs[i] for i in used])
    middle = np.zeros((len(used), 6, 6))
    start = 0
    for op, (rows, cols), sigma in zip(operators, pixel_sets[used[0]].pixel_index, noise_sigmas):
        values = stacked[:, :, start:start + rows.size]
        start += rows.size
        middle += sigma ** 2 * op.noshear_grams(values, (rows, cols), rotated_noise=fix_noise)
    for j, i in enumerate(used):
        out[i] = h_invs[i] @ middle[j] @ h_invs[i].T
    return out


def _standard_errors(cov):
    """Square roots of the covariance's diagonal; NaN where not positive."""
    diag = np.diag(cov)
    errors = np.full(diag.shape, np.nan)
    positive = diag > 0
    errors[positive] = np.sqrt(diag[positive])
    return errors


def metacal_errors(result, pixels, operators, noise_sigmas, fix_noise=True, prior=None):
    """Standard errors from :func:`metacal_covariance` (NaN where not positive)."""
    return _standard_errors(metacal_covariance(result, pixels, operators, noise_sigmas, fix_noise, prior))


def fill_branch_row(row, pars, errs, s2n, zero_point):
    """Write a successful Gaussian fit (g1, g2, T, flux) into a branch row.

    ``T`` follows ShapePipe (half-light radius, arcsec); the Gaussian size is
    also written as ``T_gauss_arcsec2``. Returns the flags to add
    (NONPOSITIVE_FLUX when the flux is not positive, which leaves no magnitude).
    """
    T, T_err = float(pars[4]), float(errs[4])
    if T != 0 and math.isfinite(T) and math.isfinite(T_err):
        # Scalar arithmetic, the same as T_to_r50 and T_err_to_r50_err without numpy's per-call cost.
        r50 = math.copysign(math.sqrt(LN2 * abs(T)), T)
        r50_err = math.sqrt(LN2) * T_err / (2.0 * math.sqrt(abs(T)))
    else:
        r50, r50_err = float(T_to_r50(T)), float(T_err_to_r50_err(T, T_err))
    row.update(
        g1=pars[2], g2=pars[3], g1_err=errs[2], g2_err=errs[3],
        T_gauss_arcsec2=pars[4], T_gauss_arcsec2_err=errs[4],
        T=r50, T_err=r50_err,
        flux=pars[5], flux_err=errs[5], s2n=s2n,
    )
    if pars[5] <= 0:
        return fl.NONPOSITIVE_FLUX
    row["mag"] = -2.5 * np.log10(pars[5]) + zero_point
    row["mag_err"] = abs(2.5 * errs[5] / (pars[5] * np.log(10.0)))
    return 0


def measure_raw_object(raw_epochs, object_id, rng, config=None):
    """Assemble, prepare and measure one object from its stored stamps.

    Parameters
    ----------
    raw_epochs : list of RawEpoch
    object_id : int
    rng : numpy.random.Generator
    config : EngineConfig, optional

    Returns
    -------
    dict
        As :func:`measure_object`.
    """
    config = config or EngineConfig()
    epochs = []
    n_dropped_psf = n_bad_stamp = 0
    for raw in raw_epochs:
        assembled = assemble_epoch(raw, config.max_flagged_fraction, config.epoch_local_sky_width)
        if assembled is None:
            continue
        epoch, reason = prepare_epoch(assembled, rng, config.mask_fill)
        if epoch is None:
            n_dropped_psf += reason == "psf_fit"
            n_bad_stamp += reason == "psf_stamp"
            continue
        epochs.append(epoch)
    rows = measure_object(epochs, object_id, rng, config, n_dropped_psf=n_dropped_psf)
    return add_object_flags(rows, fl.BAD_PSF_STAMP if n_bad_stamp else 0)


def add_object_flags(rows, bits):
    """OR object-level flag bits into every branch's ``flags`` and ``mcal_flags``; return ``rows``."""
    if bits:
        for row in rows.values():
            row["flags"] |= bits
            row["mcal_flags"] |= bits
    return rows


def rows_to_tables(results):
    """Stack per-object results into one table (dict of arrays) per branch.

    Parameters
    ----------
    results : iterable of dict
        Outputs of :func:`measure_object`.

    Returns
    -------
    dict
        Branch name to a dict of column arrays (integer columns as int64).
    """
    results = list(results)
    tables = {}
    for name in BRANCHES:
        table = {}
        for column in COLUMNS:
            values = [res[name][column] for res in results]
            dtype = np.int64 if column in INT_COLUMNS else np.float64
            table[column] = np.asarray(values, dtype=dtype)
        tables[name] = table
    return tables


def warm_up(seed=1):
    """Measure one synthetic object, so that every numba kernel of the engine is compiled and cached.

    The kernels are cached on disk (``cache=True``): run once at installation
    (``scripts/setup_env.sh``), the first ngmix jobs load them instead of
    compiling them each (about 20 s of CPU and 170 MB per job). The object is
    a round Gaussian galaxy (sigma 2.5 pixels) seen through a round Gaussian
    PSF (sigma 1.5 pixels) in two epochs at S/N ~ 1000.

    Returns
    -------
    dict
        The rows of :func:`measure_raw_object` (``rows["noshear"]["g1"]`` is 0
        to the noise).
    """
    size, pixel_scale, noise = 41, 0.187, 1.0
    y, x = np.mgrid[:size, :size] - size // 2
    r2 = x * x + y * y
    psf = np.exp(-0.5 * r2 / 1.5 ** 2)
    psf /= psf.sum()
    sigma2 = 2.5 ** 2 + 1.5 ** 2
    galaxy = 5000.0 * np.exp(-0.5 * r2 / sigma2) / (2.0 * np.pi * sigma2)
    rng = np.random.default_rng(seed)
    epochs = [RawEpoch(image=galaxy + rng.normal(0.0, noise, galaxy.shape), background=np.zeros_like(galaxy),
                       weight=np.full(galaxy.shape, 1.0 / noise ** 2), flag=np.zeros(galaxy.shape, np.int64),
                       psf_image=psf, jacobian=np.eye(2) * pixel_scale, flux_scale=1.0, name=f"warmup-{k}")
              for k in range(2)]
    return measure_raw_object(epochs, 1, rng)
