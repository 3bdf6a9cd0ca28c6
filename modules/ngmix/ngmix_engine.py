"""Per-object multi-epoch metacalibration with the ngmix package (``ENGINE = ngmix``).

The same steps, inputs, result rows, columns and flags as the built-in
engine (:mod:`.engine`), with the image operations and fits done by the
ngmix package (version 2.x API):

1. epochs assembled with :func:`~.engine.assemble_epoch` (ShapePipe's
   selection and flux scaling);
2. per epoch (:func:`prepare_epoch`): the original PSF stamp fitted with a
   Gaussian by ``ngmix.fitting.Fitter`` (unit weight, as ShapePipe; an epoch
   whose fit fails is dropped), adaptive moments, noise level, masked pixels
   filled with noise, weight ``1/sigma^2``;
3. ``ngmix.metacal.get_all_metacal`` on each epoch, with ShapePipe's
   settings (step 0.01, ``fixnoise=True`` with ``use_noise_image=True``: each
   epoch carries a noise image of its own level, drawn before anything else
   as in the built-in engine, so both engines add the same one) and the
   reconvolution kernel of ``config.target_psf`` computed as by the built-in
   engine (:func:`target_psf_object`), so both engines use the same kernel;
4. the reconvolution PSF of every epoch fitted with a Gaussian (for the
   catalogue columns), then in each branch a ``'gauss'`` model fitted
   jointly to all epochs, convolved with the kernel's Gaussian, with
   ShapePipe's priors (centre Gaussian of width the pixel scale, Bernstein &
   Armstrong shape prior of width 0.4, flat priors on T and flux) and up to
   ``ntry`` tries. Every branch starts from the same moments guess and the
   fitter runs at tight tolerances (:data:`LM_PARS`): ngmix's defaults
   (1e-5) from the noshear solution left the sheared fits short and the
   response 0.7-1.5% low (issue 23).

The per-object generator is ngmix's ``rng`` everywhere (PSF-image noise of
the metacal step, priors, retries), so results do not depend on how a tile
is split.

Differences from ShapePipe's use of ngmix 1.3: ShapePipe fitted with
``galsimfit`` (a Gaussian parametrised by its half-light radius, fitted in
Fourier space, which ignores each epoch's Jacobian centre); here the fit is
ngmix's Gaussian-mixture maximum-likelihood fitter (``T = 2 sigma^2``,
evaluated at pixel centres around each epoch's object position), the same
conventions as the built-in engine. ``T`` is then written, as by the
built-in engine, as the half-light radius ``sqrt(ln 2 * T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import flags as fl
from .engine import (
    EngineConfig,
    _empty_branch,
    _weighted_psf_summary,
    add_object_flags,
    assemble_epoch,
    epoch_from_pixels,
    fill_branch_row,
)
from .gauss_fit import perturb_guess
from .metacal import BRANCHES, EpochMetacal
from .moments import T_to_r50, adaptive_moments

#: Oldest ngmix major version whose API this engine uses.
NGMIX_MAJOR = 2
#: Half-width of the uniform perturbations of retried fits (ShapePipe's).
RETRY_SCATTER = 0.1
#: Tolerances of ngmix's Levenberg-Marquardt fitter (scipy's leastsq). ngmix's
#: defaults (ftol = xtol = 1e-5) stop a fit while it still moves g by up to
#: 1e-4 at S/N 50-100 (the metacal response R came out 0.7-1.5% low when the
#: sheared branches started from the noshear solution); 1e-10 converges to
#: the built-in engine's minimum.
LM_PARS = {"maxfev": 4000, "ftol": 1.0e-10, "xtol": 1.0e-10}
#: ngmix's default tolerances, for comparison (benchmarks/bench_engines.py).
NGMIX_DEFAULT_LM_PARS = {"maxfev": 4000, "ftol": 1.0e-5, "xtol": 1.0e-5}


def import_ngmix():
    """Import the ngmix package and check that it has the 2.x API.

    Returns
    -------
    module
        The ``ngmix`` package.

    Raises
    ------
    ImportError
        If ngmix is missing or older than version 2.
    """
    try:
        import ngmix
    except ImportError as error:
        raise ImportError("ENGINE = ngmix needs the ngmix package (version 2.x): "
                          "pip install ngmix, or use ENGINE = builtin") from error
    version = str(getattr(ngmix, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < NGMIX_MAJOR:
        raise ImportError(f"ENGINE = ngmix needs ngmix {NGMIX_MAJOR}.x; version {version} is installed")
    return ngmix


@dataclass
class GaussFit:
    """Gaussian fit of one image by ngmix, in the built-in engine's layout.

    Attributes
    ----------
    pars, errors : numpy.ndarray
        ``(v0, u0, g1, g2, T, flux)`` and their errors (ngmix's order: the
        centre is (row-like v, column-like u); g and T as the built-in
        engine).
    gmix : object
        The fitted ``ngmix.GMix`` (pre-PSF for a galaxy fit).
    flags : int
        ngmix's fit flags (0 on success).
    """

    pars: np.ndarray
    errors: np.ndarray
    gmix: object = None
    flags: int = 0


def _covariance_flags(ngmix):
    """ngmix LM flags that mean a converged fit with an unusable covariance."""
    names = ("LM_SINGULAR_MATRIX", "LM_NEG_COV_EIG", "LM_NEG_COV_DIAG", "EIG_NOTFINITE")
    value = 0
    for name in names:
        value |= int(getattr(ngmix.flags, name, 0))
    return value


def ngmix_jacobian(ngmix, jacobian, centre):
    """``ngmix.Jacobian`` from a 2x2 ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` matrix.

    Parameters
    ----------
    ngmix : module
    jacobian : array_like
        Local WCS Jacobian in arcsec/pixel (x = column, y = row).
    centre : tuple of float
        (row, col) of the sky origin in the stamp.

    Returns
    -------
    ngmix.Jacobian
    """
    jac = np.asarray(jacobian, dtype=float)
    return ngmix.Jacobian(row=float(centre[0]), col=float(centre[1]),
                          dudcol=jac[0, 0], dudrow=jac[0, 1],
                          dvdcol=jac[1, 0], dvdrow=jac[1, 1])


def psf_observation(ngmix, psf_image, jacobian):
    """Observation of a PSF stamp: normalised, unit weight, centred on its central pixel."""
    image = np.asarray(psf_image, dtype=float)
    total = image.sum()
    if not (np.isfinite(total) and total > 0):
        raise ValueError("PSF image must have a finite positive sum")
    centre = (image.shape[0] // 2, image.shape[1] // 2)
    return ngmix.Observation(image / total, weight=np.ones_like(image),
                             jacobian=ngmix_jacobian(ngmix, jacobian, centre))


def _moments_T_guess(image, jacobian, guess_sigma=2.0):
    """Size ``T`` (arcsec^2) of an image from adaptive moments, or None."""
    moments = adaptive_moments(image, guess_sigma=guess_sigma)
    if moments is None:
        return None
    return 2.0 * moments.sigma ** 2 * abs(np.linalg.det(np.asarray(jacobian, dtype=float)))


def fit_gauss(ngmix, obs, guess, rng, prior=None, ntry=5, lm_pars=None, accept_bad_covariance=False):
    """Fit a ``'gauss'`` model with ngmix, retrying from perturbed guesses.

    The first try starts from ``guess``; later ones from
    :func:`~.gauss_fit.perturb_guess` (the built-in engine's rule: centre and
    shape additive, size and flux relative, half-width 0.1).

    Parameters
    ----------
    ngmix : module
    obs : ngmix.Observation or ngmix.ObsList
        With PSF mixtures set for a galaxy fit; none for a PSF fit.
    guess : array_like
        Starting ``(v0, u0, g1, g2, T, flux)``.
    rng : numpy.random.Generator
    prior : ngmix joint prior, optional
    ntry : int, optional
    lm_pars : dict, optional
        Fitter settings (default :data:`LM_PARS`).
    accept_bad_covariance : bool, optional
        Stop at the first converged fit even if its covariance is unusable
        (PSF fits: the built-in engine does not retry them either, and a
        retry would consume random numbers).

    Returns
    -------
    fit : GaussFit or None
        The successful fit; else the first one that converged with an
        unusable covariance (its mixture set), else the last one tried
        (non-zero ``flags``), else None when every try raised.
    ntry_used : int
    """
    fitter = ngmix.fitting.Fitter(model="gauss", prior=prior,
                                  fit_pars=dict(LM_PARS if lm_pars is None else lm_pars))
    covariance_only = _covariance_flags(ngmix)
    guess = np.asarray(guess, dtype=float)
    last = None
    for attempt in range(ntry):
        trial = perturb_guess(guess, rng, RETRY_SCATTER) if attempt > 0 else guess.copy()
        try:
            result = fitter.go(obs, trial)
        except ngmix.GMixRangeError:
            # An invalid starting point (e.g. a non-positive convolved size).
            continue
        flags = int(result["flags"])
        pars = np.array(result["pars"], dtype=float)
        errors = np.array(result["pars_err"], dtype=float)
        gmix = None
        if flags & ~covariance_only == 0:
            if flags:
                # Converged, but ngmix's placeholder errors are meaningless.
                errors = np.full(pars.size, np.nan)
            gmix = result.get_gmix()
        fit = GaussFit(pars=pars, errors=errors, gmix=gmix, flags=flags)
        if flags == 0 or (accept_bad_covariance and gmix is not None):
            return fit, attempt + 1
        if last is None or last.gmix is None:
            # Keep a converged fit over later failed tries.
            last = fit
    return last, ntry


def fit_psf(ngmix, psf_obs, rng, ntry=5):
    """Gaussian fit of a PSF observation; None when it fails.

    The starting size comes from the adaptive moments of the image
    (4 pixels squared per axis if they fail). As in the built-in engine, a
    converged fit whose covariance is unusable is kept (errors NaN).
    """
    jac = psf_obs.jacobian
    matrix = np.array([[jac.dudcol, jac.dudrow], [jac.dvdcol, jac.dvdrow]])
    T_guess = _moments_T_guess(psf_obs.image, matrix)
    if T_guess is None:
        T_guess = 2.0 * 4.0 * abs(np.linalg.det(matrix))
    fit, _ = fit_gauss(ngmix, psf_obs, [0.0, 0.0, 0.0, 0.0, T_guess, float(psf_obs.image.sum())],
                       rng, ntry=ntry, accept_bad_covariance=True)
    if fit is None or fit.gmix is None:
        return None
    return fit


def shapepipe_ngmix_prior(ngmix, prior, rng, bounds=False):
    """ngmix's separable prior with the values of a :class:`~.priors.ShapePipePrior`.

    Outside its range a flat prior raises ``GMixRangeError``, which ngmix's
    fitter turns into a wall (the step is refused): the ranges act as the
    built-in engine's bounds. ``bounds=True`` also passes them to scipy's
    ``leastsqbound``, which then fits ``sin``-transformed parameters; over
    ShapePipe's ranges ([-10, 1e6] for T) that costs precision (see
    docs/metacal.md), so it is off by default.

    Parameters
    ----------
    ngmix : module
    prior : ShapePipePrior
        Centre width (the pixel scale), shape-prior width and bounds.
    rng : numpy.random.Generator
        Given to every ngmix prior (ngmix requires one).
    bounds : bool, optional
        Give the flat priors ``bounds`` for ``leastsqbound``.

    Returns
    -------
    ngmix.joint_prior.PriorSimpleSep
    """
    cen = ngmix.priors.CenPrior(0.0, 0.0, prior.cen_sigma, prior.cen_sigma, rng=rng)
    shape = ngmix.priors.GPriorBA(prior.g_sigma, rng=rng)
    size = ngmix.priors.FlatPrior(prior.T_bounds[0], prior.T_bounds[1], rng=rng)
    flux = ngmix.priors.FlatPrior(prior.flux_bounds[0], prior.flux_bounds[1], rng=rng)
    if bounds:
        # ngmix's FlatPrior sets no bounds of its own.
        size.bounds = tuple(prior.T_bounds)
        flux.bounds = tuple(prior.flux_bounds)
    return ngmix.joint_prior.PriorSimpleSep(cen, shape, size, flux)


def prepare_epoch(ngmix, assembled, rng, ntry=5, mask_fill="model"):
    """Fit the original PSF with ngmix, estimate the noise and fill masked pixels.

    Parameters
    ----------
    ngmix : module
    assembled : dict
        Output of :func:`~.engine.assemble_epoch`.
    rng : numpy.random.Generator
    ntry : int, optional
        Tries of the PSF fit.
    mask_fill : {"model", "noise"}
        What masked pixels hold (:func:`~.engine.epoch_from_pixels`).

    Returns
    -------
    epoch : Epoch or None
        None when the epoch cannot be used; ``psf_fit`` holds a
        :class:`GaussFit`.
    reason : str
        ``""``, ``"psf_stamp"``, ``"psf_fit"`` or ``"no_pixels"`` (as the
        built-in engine).
    """
    jac = assembled["jacobian"]
    try:
        psf_obs = psf_observation(ngmix, assembled["psf_image"], jac)
    except ValueError:
        return None, "psf_stamp"
    psf_fit = fit_psf(ngmix, psf_obs, rng, ntry=ntry)
    if psf_fit is None:
        return None, "psf_fit"
    return epoch_from_pixels(assembled, psf_fit, rng, mask_fill)


def _round_s2n(ngmix, pars, obslist):
    """S/N of the round model (g = 0) over all epochs: ngmix's ``s2n_r``."""
    round_pars = np.array(pars, dtype=float)
    round_pars[2:4] = 0.0
    total = 0.0
    try:
        for obs in obslist:
            model = ngmix.GMixModel(round_pars, "gauss").convolve(obs.psf.gmix)
            image = model.make_image(obs.image.shape, jacobian=obs.jacobian)
            total += float(np.sum(obs.weight * image ** 2))
    except ngmix.GMixRangeError:
        return np.nan
    return float(np.sqrt(total)) if total > 0 else 0.0


def _fit_target_psfs(ngmix, branch_obs, rng, ntry):
    """Fit the reconvolution PSF of every epoch of every branch; set their mixtures.

    The metacal PSF image is the same in every branch; it is fitted once per
    epoch (on the noshear branch) and refitted only where a branch differs.

    Returns
    -------
    dict or None
        Branch name to the list of per-epoch :class:`GaussFit`; None if a
        fit failed.
    """
    fits = {}
    reference = branch_obs["noshear"]
    for name in BRANCHES:
        fits[name] = []
        for index, obs in enumerate(branch_obs[name]):
            if name != "noshear" and np.array_equal(obs.psf.image, reference[index].psf.image):
                fit = fits["noshear"][index]
            else:
                fit = fit_psf(ngmix, obs.psf, rng, ntry=ntry)
                if fit is None:
                    return None
            obs.psf.set_gmix(fit.gmix.copy())
            fits[name].append(fit)
    return fits


def _galaxy_guess(epochs, target_fits):
    """Starting point shared by all branches, from adaptive moments.

    Returns
    -------
    guess : numpy.ndarray
    moments_failed : bool
    """
    T_values, fluxes = [], []
    for ep, target in zip(epochs, target_fits):
        if ep.moments is None:
            continue
        area = abs(np.linalg.det(ep.jacobian))
        T_obs = 2.0 * ep.moments.sigma ** 2 * area
        T_values.append(max(T_obs - ep.psf_fit.pars[4], 0.1 * target.pars[4]))
        fluxes.append(ep.moments.amplitude)
    if not T_values:
        # ShapePipe's default starting point when moments fail everywhere.
        T_default = float(np.mean([t.pars[4] for t in target_fits]))
        return np.array([0.0, 0.0, 0.0, 0.0, T_default, 100.0]), True
    return np.array([0.0, 0.0, 0.0, 0.0, np.mean(T_values), np.mean(fluxes)]), False


def _metacal_errors(ngmix):
    import galsim

    # Data-dependent failures only: other errors are bugs and must surface.
    return (ngmix.gexceptions.NGmixBaseException, galsim.GalSimError, ZeroDivisionError,
            np.linalg.LinAlgError)


def target_psf_object(ngmix, epoch, config):
    """Undilated reconvolution kernel of one epoch as a GalSim object.

    The kernel follows ``config.target_psf`` and is computed as by the
    built-in engine (:class:`~.metacal.EpochMetacal`), so both engines
    reconvolve with the same kernel; ngmix dilates it by ``1 + 2|step|``.

    Returns
    -------
    kernel : galsim.GSObject
    sigma : float
        Sigma (arcsec) of the dilated Gaussian.
    """
    import galsim

    op = EpochMetacal(epoch.psf_image, epoch.jacobian, epoch.image.shape, step=config.step,
                      target_rule=config.target_psf)
    dilation = 1.0 + 2.0 * abs(config.step)
    kernel = galsim.Gaussian(sigma=op.target_sigma / dilation)
    if not op.target_is_gaussian:
        jac = np.asarray(epoch.jacobian, dtype=float)
        pixel = galsim.JacobianWCS(*jac.ravel()).toWorld(galsim.Pixel(scale=1.0))
        # Dilated with the Gaussian by ngmix, the pixel comes back to its size.
        kernel = galsim.Convolve(kernel, pixel.dilate(1.0 / dilation))
    return kernel, op.target_sigma


def _metacal_obs(ngmix, epochs, config, rng, native=False):
    """Metacal observations of every branch, one epoch at a time (one kernel each).

    Returns
    -------
    branch_obs : dict
        Branch name to ``ngmix.ObsList``.
    sigmas : list of float
        Dilated target sigma of each epoch.
    gaussian : bool
        Whether the kernels are Gaussians of known sigma.
    native : bool, optional
        Let ngmix choose the kernel (``psf='gauss'``, its own rule) instead.
    """
    branch_obs = {name: ngmix.ObsList() for name in BRANCHES}
    sigmas = []
    gaussian = config.target_psf != "shapepipe"
    # All noise images first, in the built-in engine's order, so both engines
    # add the same noise (ngmix draws from rng too).
    noises = [rng.normal(0.0, ep.noise_sigma, size=ep.image.shape) if config.fix_noise else None
              for ep in epochs]
    if native:
        obslist = ngmix.ObsList()
        for ep, noise in zip(epochs, noises):
            obslist.append(ngmix.Observation(
                np.array(ep.image, dtype=float), weight=np.array(ep.weight, dtype=float),
                jacobian=ngmix_jacobian(ngmix, ep.jacobian, ep.centre),
                psf=psf_observation(ngmix, ep.psf_image, ep.jacobian), noise=noise))
        branch_obs = ngmix.metacal.get_all_metacal(
            obslist, psf="gauss", step=config.step, fixnoise=config.fix_noise, rng=rng,
            use_noise_image=config.fix_noise, types=list(BRANCHES))
        return branch_obs, [np.nan] * len(epochs), False
    for ep, noise in zip(epochs, noises):
        obs = ngmix.Observation(
            np.array(ep.image, dtype=float), weight=np.array(ep.weight, dtype=float),
            jacobian=ngmix_jacobian(ngmix, ep.jacobian, ep.centre),
            psf=psf_observation(ngmix, ep.psf_image, ep.jacobian), noise=noise)
        kernel, sigma = target_psf_object(ngmix, ep, config)
        sigmas.append(sigma)
        odict = ngmix.metacal.get_all_metacal(
            obs, psf=kernel, step=config.step, fixnoise=config.fix_noise, rng=rng,
            use_noise_image=config.fix_noise, types=list(BRANCHES))
        for name in BRANCHES:
            branch_obs[name].append(odict[name])
    return branch_obs, sigmas, gaussian


def measure_object(epochs, object_id, rng, config=None, n_dropped_psf=0, target_gmix="analytic",
                   lm_pars=None, start="guess", prior_bounds=False, native_target=False):
    """Metacalibration shape measurement of one object with ngmix.

    Parameters
    ----------
    epochs : list of Epoch
        Prepared epochs (see :func:`prepare_epoch`); may be empty.
    object_id : int
    rng : numpy.random.Generator
        The object's generator (:func:`~.engine.sky_rng`), ngmix's rng.
    config : EngineConfig, optional
        ``step``, ``prior``, ``ntry``, ``zero_point``, ``fix_noise`` and
        ``target_psf`` are used (``aperture_sigmas`` is not: ngmix fits the
        whole stamp).
    n_dropped_psf : int, optional
        Epochs dropped because their PSF fit failed (sets PSF_FIT_FAIL).
    target_gmix : {"analytic", "fit"}, optional
        PSF of the galaxy fits: the kernel's own Gaussian (exact for the
        Gaussian rules, as in the built-in engine) or a Gaussian fitted to
        ngmix's noisy image of it (always for the ``shapepipe`` rule).
    lm_pars : dict, optional
        Fitter settings (default :data:`LM_PARS`).
    start : {"guess", "noshear"}, optional
        Start of the sheared fits: the moments guess shared by all branches
        (as ngmix's bootstrapper, default) or the noshear solution.
    prior_bounds : bool, optional
        Pass the flat priors' ranges to ``leastsqbound`` as bounds (see
        :func:`shapepipe_ngmix_prior`).
    native_target : bool, optional
        Let ngmix choose the kernel with its own ``psf='gauss'`` code (the
        PSF with its pixel in ngmix 2.3+, on its own k grid) and fit it from
        its noisy image, as the engine did before issue 23.

    Returns
    -------
    dict
        Branch name to a row dict with the columns of
        :data:`~.engine.COLUMNS`, exactly as the built-in engine.
    """
    ngmix = import_ngmix()
    config = config or EngineConfig()
    object_flags = fl.PSF_FIT_FAIL if n_dropped_psf else 0
    rows = {name: _empty_branch(object_id) for name in BRANCHES}

    def finish(extra_flags, n_epoch):
        for row in rows.values():
            row["flags"] = row["mcal_flags"] = object_flags | extra_flags
            row["n_epoch_model"] = n_epoch
        return rows

    if not epochs:
        return finish(fl.NO_EPOCHS, 0)

    try:
        branch_obs, sigmas, gaussian = _metacal_obs(ngmix, epochs, config, rng, native=native_target)
    except (ValueError, *_metacal_errors(ngmix)):
        return finish(fl.METACAL_FAIL, len(epochs))

    psf_columns = _weighted_psf_summary(epochs)
    target_fits = _fit_target_psfs(ngmix, branch_obs, rng, config.ntry)
    if target_fits is None and not (gaussian and target_gmix == "analytic"):
        # Without the reconvolution PSF no branch can be fitted.
        for row in rows.values():
            row.update(psf_columns)
        return finish(fl.TARGET_PSF_FIT_FAIL, len(epochs))
    if gaussian and target_gmix == "analytic":
        for obslist in branch_obs.values():
            for obs, sigma in zip(obslist, sigmas):
                obs.psf.set_gmix(ngmix.GMixModel([0.0, 0.0, 0.0, 0.0, 2.0 * sigma ** 2, 1.0], "gauss"))
    if target_fits is None:
        object_flags |= fl.TARGET_PSF_FIT_FAIL
        fallback = [GaussFit(pars=np.array([0.0, 0.0, 0.0, 0.0, 2.0 * sig ** 2, 1.0]),
                             errors=np.full(6, np.nan)) for sig in sigmas]
        target_fits = {name: fallback for name in BRANCHES}

    guess, moments_failed = _galaxy_guess(epochs, target_fits["noshear"])
    if moments_failed:
        object_flags |= fl.MOMENTS_FAIL
    prior = shapepipe_ngmix_prior(ngmix, config.prior, rng, bounds=prior_bounds)
    covariance_only = _covariance_flags(ngmix)
    mcal_flags = object_flags
    branch_start = guess
    for name in BRANCHES:
        row = rows[name]
        obs = branch_obs[name]
        row.update(psf_columns)
        weights = np.array([o.weight.sum() for o in obs])
        weights = weights / weights.sum()
        tpars = np.array([f.pars for f in target_fits[name]])
        row.update(Tpsf_gauss_arcsec2=weights @ tpars[:, 4], Tpsf=weights @ T_to_r50(tpars[:, 4]),
                   g1_psf=weights @ tpars[:, 2], g2_psf=weights @ tpars[:, 3])
        row["n_epoch_model"] = len(epochs)
        row["moments_fail"] = int(moments_failed)
        fit, ntry = fit_gauss(ngmix, obs, branch_start, rng, prior=prior, ntry=config.ntry,
                              lm_pars=lm_pars)
        row["ntry_fit"] = ntry
        branch_flags = object_flags
        if fit is None or not np.isfinite(fit.pars).all():
            branch_flags |= fl.FIT_FAIL
        elif fit.flags & ~covariance_only:
            branch_flags |= fl.FIT_FAIL
        elif fit.flags:
            branch_flags |= fl.BAD_COVARIANCE
        if not branch_flags & fl.FIT_FAIL:
            pars, errs = fit.pars, fit.errors
            if start == "noshear" and name == "noshear" and fit.flags == 0:
                branch_start = pars.copy()
            branch_flags |= fill_branch_row(row, pars, errs, _round_s2n(ngmix, pars, obs), config.zero_point)
        row["flags"] = branch_flags
        mcal_flags |= branch_flags
    for row in rows.values():
        row["mcal_flags"] = mcal_flags
    return rows


def measure_raw_object(raw_epochs, object_id, rng, config=None, **options):
    """Assemble, prepare and measure one object with ngmix.

    Same signature and result as :func:`.engine.measure_raw_object`.

    Parameters
    ----------
    raw_epochs : list of RawEpoch
    object_id : int
    rng : numpy.random.Generator
    config : EngineConfig, optional
    **options
        Passed to :func:`measure_object` (``target_gmix``, ``lm_pars``,
        ``start``, ``prior_bounds``, ``native_target``).

    Returns
    -------
    dict
        Branch name to a row dict (:data:`~.engine.COLUMNS`).
    """
    ngmix = import_ngmix()
    config = config or EngineConfig()
    epochs = []
    n_dropped_psf = n_bad_stamp = 0
    for raw in raw_epochs:
        assembled = assemble_epoch(raw, config.max_flagged_fraction, config.epoch_local_sky_width)
        if assembled is None:
            continue
        epoch, reason = prepare_epoch(ngmix, assembled, rng, ntry=config.ntry, mask_fill=config.mask_fill)
        if epoch is None:
            n_dropped_psf += reason == "psf_fit"
            n_bad_stamp += reason == "psf_stamp"
            continue
        epochs.append(epoch)
    rows = measure_object(epochs, object_id, rng, config, n_dropped_psf=n_dropped_psf, **options)
    return add_object_flags(rows, fl.BAD_PSF_STAMP if n_bad_stamp else 0)
