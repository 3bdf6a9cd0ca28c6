"""The ``mccd_fit`` job: star selections of many CCDs, grouped by exposure, through the focal-plane fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gnomonic(ra, dec, ra0, dec0):
    """Standard coordinates (deg) of sky positions about ``(ra0, dec0)`` (all in degrees)."""
    a, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cos_c
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cos_c
    return np.degrees(xi), np.degrees(eta)


def exposure_centre(wcs_by_ccd: dict, shapes: dict) -> tuple[float, float]:
    """(RA, Dec) in degrees of the mean direction of the CCD centres."""
    centres = []
    for ccd, wcs in wcs_by_ccd.items():
        nx, ny = shapes[ccd]
        centres.append(wcs.all_pix2world([(nx + 1) / 2], [(ny + 1) / 2], 1))
    ra, dec = np.radians(np.array([c[0][0] for c in centres])), np.radians(np.array([c[1][0] for c in centres]))
    vector = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    return (float(np.degrees(np.arctan2(vector[1], vector[0]))),
            float(np.degrees(np.arcsin(vector[2] / np.linalg.norm(vector)))))


def focal_plane_maps(wcs_by_ccd: dict, shapes: dict):
    """``{ccd: (x, y) -> (X, Y)}`` in pixels on the tangent plane at the exposure's centre, from CCD WCSs."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    centres = []
    for ccd, wcs in wcs_by_ccd.items():
        nx, ny = shapes[ccd]
        centres.append(wcs.all_pix2world([(nx + 1) / 2], [(ny + 1) / 2], 1))
    ra, dec = np.radians(np.array([c[0][0] for c in centres])), np.radians(np.array([c[1][0] for c in centres]))
    vector = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    ra0 = float(np.degrees(np.arctan2(vector[1], vector[0])))
    dec0 = float(np.degrees(np.arcsin(vector[2] / np.linalg.norm(vector))))
    scale = float(np.median([np.mean(proj_plane_pixel_scales(w.celestial)) for w in wcs_by_ccd.values()]))

    def mapping(wcs):
        def to_focal(x, y):
            sky_ra, sky_dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 1)
            xi, eta = gnomonic(sky_ra, sky_dec, ra0, dec0)
            return xi / scale, eta / scale
        return to_focal

    return {ccd: mapping(wcs) for ccd, wcs in wcs_by_ccd.items()}


def fit_star_selections(job, model_name=None) -> dict:
    """Group the job's star selections by exposure, fit each, write ``<input name>.psf`` per CCD.

    ``model_name(number, input_path)`` overrides the model file names (``mccd_fit_val``).
    """
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe.errors import JobError, JobUnprocessable
    from shapepipe_modules.io.ldac import LDACError, read_ldac
    from shapepipe_modules.io.psfex_file import write_psf
    from shapepipe_modules.merge_starcat.merge import MergeError, split_number
    from shapepipe_modules.psfex.config import PSFExConfigError, PSFExSettings
    from shapepipe_modules.psfex.model import FitOptions, PSFFitError, load_stars

    from .focal_plane import fit_exposure

    options = job.options
    try:
        settings = PSFExSettings.from_file(options["DOT_PSFEX_FILE"])
    except PSFExConfigError as error:
        raise JobError(f"DOT_PSFEX_FILE: {error}") from None
    exposures: dict = {}
    numbers: dict = {}
    for number, paths in sorted(job.input_table.items()):
        try:
            exposure, ccd = split_number(number)
        except MergeError as error:
            raise JobError(f"{paths[0]}: {error}") from None
        exposures.setdefault(exposure, {})[ccd] = Path(paths[0])
        numbers[(exposure, ccd)] = number
    fit_options = FitOptions(psf_size=settings.psf_size, sampling=settings.sampling, degree=options["GLOBAL_DEGREE"],
                             accuracy=settings.accuracy, recenter=False, min_stars=options["MIN_STARS"],
                             interpolant_order=options["INTERPOLANT_ORDER"])
    written, skipped, accepted = 0, [], 0
    engine = options.get("ENGINE", "builtin")
    for exposure, files in exposures.items():
        samples, wcs_by_ccd, shapes, headers = {}, {}, {}, {}
        for ccd, path in files.items():
            try:
                table, header = read_ldac(path)
            except LDACError as error:
                raise JobError(str(error)) from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(header, naxis=2)
            if not wcs.has_celestial or "NAXIS1" not in header:
                raise JobError(f"{path}: the image header (LDAC_IMHEAD) has no celestial WCS or no NAXIS1/2: "
                               "the CCD cannot be placed in the focal plane")
            try:
                samples[ccd] = load_stars(table, header, settings.center_keys, settings.var_keys, settings.flux_key)
            except KeyError as error:
                raise JobError(f"{path}: missing or bad column {error.args[0]}") from None
            wcs_by_ccd[ccd], shapes[ccd] = wcs, (int(header["NAXIS1"]), int(header["NAXIS2"]))
            headers[ccd] = header
        try:
            if engine == "piff":
                models, n_accepted = _fit_piff(samples, wcs_by_ccd, headers, shapes, settings, options)
                job.logger.info("exposure %s: %d CCD models (Piff) from %d stars", exposure, len(models), n_accepted)
            else:
                fit = fit_exposure(samples, focal_plane_maps(wcs_by_ccd, shapes), shapes, fit_options,
                                   options["GLOBAL_DEGREE"], names=settings.var_keys)
                models, n_accepted = fit.models, fit.info["accepted"]
                job.logger.info("exposure %s: %d CCD models from %d/%d stars, %d CG iterations", exposure,
                                len(models), n_accepted, fit.info["stars"], fit.info["cg_iterations"])
        except PSFFitError as error:
            job.logger.warning("exposure %s: no model: %s", exposure, error)
            skipped.append(exposure)
            continue
        for ccd, model in models.items():
            name = (model_name(numbers[(exposure, ccd)], files[ccd]) if model_name
                    else files[ccd].with_suffix(".psf").name)
            write_psf(job.output_path(name), model)
            written += 1
        accepted += n_accepted
    if not written:
        raise JobUnprocessable(f"no exposure could be modelled ({len(skipped)} with too few stars)")
    return {"exposures": len(exposures) - len(skipped), "ccd_models": written, "stars": accepted,
            "exposures_without_model": len(skipped)}


def _fit_piff(samples, wcs_by_ccd, headers, shapes, settings, options):
    """Piff engine on one exposure: ``({ccd: PSFModel}, stars used)`` (:mod:`.piff_engine`)."""
    import galsim
    from astropy.wcs.utils import proj_plane_pixel_scales

    from shapepipe_modules.psfex.model import PSFFitError

    from .piff_engine import fit_exposure_piff

    if settings.psf_size[0] != settings.psf_size[1]:
        raise PSFFitError(f"ENGINE = piff needs a square PSF_SIZE, got {settings.psf_size}")
    sampling = settings.sampling if settings.sampling > 0 else 1.0
    galsim_wcs = {}
    for ccd, header in headers.items():
        try:
            galsim_wcs[ccd] = galsim.GSFitsWCS(header=galsim.FitsHeader(header=header))
        except (galsim.GalSimError, KeyError, ValueError) as error:
            raise PSFFitError(f"CCD {ccd}: GalSim cannot read the WCS for Piff: {error}") from None
    ra0, dec0 = exposure_centre(wcs_by_ccd, shapes)
    pointing = galsim.CelestialCoord(ra0 * galsim.degrees, dec0 * galsim.degrees)
    scale = float(np.median([np.mean(proj_plane_pixel_scales(w.celestial)) for w in wcs_by_ccd.values()])) * 3600
    models = fit_exposure_piff(samples, galsim_wcs, focal_plane_maps(wcs_by_ccd, shapes), shapes,
                               settings.psf_size[0], sampling, scale, options["GLOBAL_DEGREE"], pointing=pointing,
                               names=settings.var_keys, min_stars=options["MIN_STARS"])
    return models, sum(int(samples[c].usable.sum()) for c in models)
