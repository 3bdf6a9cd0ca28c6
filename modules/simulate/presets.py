"""Simulation presets and parameter validation.

A simulation is described by one flat dictionary of parameters. A preset
gives every parameter a value; any of them can be overridden by name. An
unknown name or a value of the wrong type is an error naming the parameter.
"""

from __future__ import annotations

import copy

from shapepipe.errors import ConfigError

# Every parameter with its default (the ``demo`` values) and a short meaning.
# Angles in arcsec unless named otherwise, sizes in pixels, fluxes at PHOTZP.
_BASE = {
    # survey layout
    "tiles": (["244.252", "245.252"], "CFIS tile ids XXX.YYY to simulate"),
    "shear": ([[0.02, 0.0], [0.0, -0.02]], "reduced shear (g1, g2) per tile, in tile order"),
    "tile_size": (2800, "tile side in pixels (10000 for a full CFIS tile)"),
    "tile_block_rows": (1024, "tile rows rendered per work unit (bounds memory)"),
    "coverage_step": (4, "grid step (pixels) of the tile coverage map used for the stack weight"),
    "exposures_per_tile": (4, "exposures pointed at each tile"),
    "first_exposure": (2100001, "number of the first exposure (7 digits)"),
    "dither_arcsec": (60.0, "amplitude of the dither pattern between exposures"),
    # camera
    "ccd_rows": ([3, 3], "CCDs per row of the mosaic, rows centred, bottom to top"),
    "ccd_nx": (1024, "CCD width in pixels"),
    "ccd_ny": (2048, "CCD height in pixels"),
    "gap_x": (60, "gap between CCD columns, pixels"),
    "gap_y": (100, "gap between CCD rows, pixels"),
    "pixel_scale": (0.187, "arcsec per pixel, exposures and tiles"),
    "distortion": ("tpv", "exposure WCS distortion: none (TAN), tpv or sip"),
    "distortion_arcsec": (1.0, "radial distortion displacement 0.5 deg from the pointing"),
    "exptime": (200.0, "exposure time, s"),
    "mjd_start": (58800.0, "MJD-OBS of the first exposure"),
    "exposures_per_night": (0, "0: every exposure in one sequence (exptime + 40 s apart); n > 0: n consecutive "
                               "exposures per night, nights night_gap_days apart"),
    "night_gap_days": (1.0, "days between the first exposures of two nights (exposures_per_night > 0)"),
    "zero_point_range": ([30.0, 30.0], "range of an exposure's photometric zero point PHOTZP (uniform, ZERO_POINT "
                                       "stream): objects and sky give 10^(0.4 (PHOTZP - 30)) times the ADU of PHOTZP 30"),
    "bad_zero_point_exposures": ([], "indices (0-based, simulation order) of exposures whose zero point is "
                                     "shifted by bad_zero_point_offset (clouds)"),
    "bad_zero_point_offset": (-0.5, "zero-point shift of the bad_zero_point_exposures, mag"),
    "bad_seeing_exposures": ([], "indices (0-based, simulation order) of exposures whose PSF FWHM is multiplied "
                                 "by bad_seeing_factor"),
    "bad_seeing_factor": (1.6, "FWHM factor of the bad_seeing_exposures"),
    "filter": ("r.MP9602", "FILTER keyword"),
    "gain": (6.0, "e-/ADU of the calibrated (PHOTZP=30) pixel values"),
    "read_noise": (5.0, "read noise, e-"),
    "saturate": (40000.0, "saturation level, ADU"),
    "sky_mag": (20.8, "sky surface brightness, mag/arcsec^2"),
    "sky_gradient": (0.03, "fractional sky change across a CCD"),
    "bad_columns": (1, "bad columns per CCD"),
    "cosmic_rate": (5.0, "cosmic rays per million pixels"),
    "noise_realisation": (0, "noise realisation of the same scene: 0 the seed's own noise; k > 0 draws every "
                             "noise stream (sky and object photons, read noise, cosmic rays, tile noise) anew, "
                             "the scene, PSFs, pointings and truth unchanged"),
    # PSF
    "psf_beta": (3.5, "Moffat beta (half-integer: closed-form Fourier transform, 3x faster draws)"),
    "psf_fwhm_range": ([0.65, 0.8], "range of the central FWHM of an exposure, arcsec"),
    "psf_fwhm_variation": (0.03, "rms of the relative FWHM polynomial coefficients"),
    "psf_e_mean": (0.015, "rms of the central PSF ellipticity components"),
    "psf_e_variation": (0.01, "rms of the PSF ellipticity polynomial coefficients"),
    # stars
    "star_density": (10.0, "stars per arcmin^2 over star_mag_range (boosted: real high-latitude ~1-3)"),
    "star_mag_range": ([14.0, 24.0], "star magnitudes"),
    "star_count_slope": (0.2, "d log10 N / d mag of star counts"),
    "halo_mag": (17.0, "stars brighter than this get a halo and diffraction spikes"),
    "variable_fraction": (0.0, "fraction of the stars that vary (VARIABLES stream; 0: none, the scene as before)"),
    "transient_fraction": (0.3, "fraction of the variables that are transients (one Gaussian brightening in time); "
                                "the others are periodic (a sinusoid in magnitude)"),
    "variable_amplitude_range": ([0.05, 0.5], "semi-amplitude of a periodic variable, peak brightening of a "
                                              "transient, mag (uniform)"),
    "variable_period_range": ([0.2, 5.0], "period of the periodic variables, days (log-uniform)"),
    "transient_width_range": ([0.3, 1.5], "Gaussian sigma in time of a transient, days (uniform); its peak is "
                                          "uniform over the exposures' dates"),
    # galaxies
    "galaxy_density": (25.0, "galaxies per arcmin^2 over galaxy_mag_range"),
    "galaxy_mag_range": ([20.0, 25.5], "galaxy magnitudes"),
    "galaxy_count_slope": (0.3, "d log10 N / d mag of galaxy counts"),
    "e_sigma": (0.26, "rms per component of the intrinsic ellipticity (shear convention)"),
    "hlr_at_22": (0.55, "median half-light radius at mag 22, arcsec"),
    "hlr_slope": (-0.1, "d log10 hlr / d mag"),
    "hlr_scatter": (0.15, "log10 scatter of the half-light radius"),
    "ring": (False, "galaxies in pairs rotated by 90 degrees"),
    "min_separation": (0.0, "smallest distance between two objects, arcsec (0: independent uniform positions; "
                            "> 0: an object too close to one placed before it is moved to a new random position)"),
    "deep_sky": (True, "add one large bright galaxy listed in catalogues/deep_sky.fits"),
    # galaxy cluster (crowded field; off unless cluster = True; docs/crowded.md)
    "cluster": (False, "add a galaxy cluster at the first tile: members, intracluster light, NFW tangential "
                       "shear of every other galaxy, bright saturated stars (truth column cluster_role)"),
    "cluster_offset": ([0.0, 0.0], "cluster centre from the first tile centre, arcsec (east, north)"),
    "cluster_members": (20, "member galaxies (the first is the brightest cluster galaxy, at the centre)"),
    "cluster_radius": (20.0, "Gaussian sigma of the members' positions, arcsec"),
    "cluster_min_separation": (4.0, "smallest distance between two members, arcsec"),
    "cluster_mag_range": ([17.5, 20.5], "member magnitudes (uniform); the central galaxy is cluster_bcg_mag"),
    "cluster_bcg_mag": (16.0, "magnitude of the central galaxy"),
    "cluster_hlr_range": ([0.8, 2.0], "member half-light radii (log-uniform), arcsec; the central galaxy 3 arcsec"),
    "cluster_knot_fraction": (0.0, "fraction of each member's flux in point-like knots (star-forming regions, "
                                    "globular clusters): what shreds a bright galaxy in a finely deblended pass"),
    "cluster_knots": (30, "knots per member"),
    "cluster_e_sigma": (0.15, "rms per component of the members' ellipticity"),
    "icl_mag": (16.5, "magnitude of the intracluster light (exponential profile at the centre; 0: none)"),
    "icl_hlr": (15.0, "half-light radius of the intracluster light, arcsec"),
    "nfw_kappa_s": (0.1, "NFW convergence scale kappa_s = rho_s r_s / Sigma_crit of the tangential shear"),
    "nfw_rs": (60.0, "NFW scale radius, arcsec"),
    "nfw_sign": (1, "+1, or -1 to negate the NFW shear (the minus member of a paired simulation)"),
    "nfw_lensed_positions": (False, "move the background galaxies as the NFW lens does (the drawn positions are "
                                    "source positions, mapped radially to the image plane), so that pairs and "
                                    "blends are sheared with their galaxies; the density near the centre then "
                                    "falls by the magnification (fluxes and sizes are not magnified). Off, a "
                                    "blend's separation is not sheared and metacal calibrates it wrongly (m -0.4 "
                                    "at 1 arcsec): shear tests of blends need it on (docs/crowded.md)"),
    "intrinsic_rotated": (False, "negate the intrinsic ellipticity of every field galaxy (a 90-degree rotation; "
                                 "cluster members, intracluster light and the deep-sky galaxy keep theirs): the "
                                 "other member of a pair at the same shear, whose mean cancels the shape noise "
                                 "(simulate_paired pairing='rotate')"),
    "cluster_bright_stars": (3, "saturated stars added in the first tile, at least 40 arcsec from the centre"),
    "cluster_bright_mag_range": ([13.0, 14.0], "their magnitudes"),
}

# The CFIS camera (40 CCDs of 2048x4612), tiles of 10,000 pixels, three dithered exposures: presets
# cfis (the survey) and cfis_tile (one tile of it).
_CFIS_SURVEY = {
    "tile_size": 10000,
    "tile_block_rows": 1000,
    "coverage_step": 16,
    "exposures_per_tile": 3,
    "dither_arcsec": 120.0,
    "ccd_rows": [9, 11, 11, 9],
    "ccd_nx": 2048,
    "ccd_ny": 4612,
    "gap_x": 70,
    "gap_y": 400,
    "star_density": 3.0,
    "galaxy_density": 25.0,
}

_PRESET_OVERRIDES = {
    # The GOLD run's survey; a ring test, so that shapepipe_validate --ring cancels shape noise.
    "demo": {"ring": True},
    "tiny": {
        "tiles": ["244.252"],
        "shear": [[0.02, 0.0]],
        "tile_size": 900,
        "tile_block_rows": 512,
        "exposures_per_tile": 2,
        "dither_arcsec": 10.0,
        "ccd_rows": [2],
        "ccd_nx": 512,
        "ccd_ny": 1024,
        "gap_x": 40,
        "star_density": 40.0,
        "galaxy_density": 15.0,
        "deep_sky": False,
    },
    # Shear calibration campaigns (shapepipe_calibrate; docs/calibration.md): the demo geometry with the
    # CPU spent where it buys precision on m. Both shear components in every tile (each galaxy measures
    # m1 and m2); galaxies only as faint as mag 23.5 (the faint ones cost ngmix time and their
    # responses scatter most); no star brighter than 17 (no halo masks) and fewer stars (ngmix
    # measures every tile detection), still ~60 PSF candidates per CCD; two exposures per tile;
    # no deep-sky galaxy masking the field; ring pairs (c cancels shape noise). No two objects closer
    # than 7 arcsec: the simulator shears galaxies but not their positions, so a blend's metacal response
    # (which includes its separation vector) is not the response of the simulated blend (m ~ -0.27 for
    # galaxies with a neighbour within 2 arcsec, 10-seed campaign; docs/calibration.md). bench_metacal --blend
    # shows it is all that: m = -0.40 for 1" blends with fixed separations, 0.000 +- 0.002 with sheared ones.
    "calib": {
        "min_separation": 7.0,
        "shear": [[0.02, 0.02], [0.02, 0.02]],
        "exposures_per_tile": 2,
        "star_density": 6.0,
        "star_mag_range": [17.0, 23.0],
        "galaxy_density": 25.0,
        "galaxy_mag_range": [20.0, 23.5],
        "ring": True,
        "deep_sky": False,
    },
    # Light curves and exposure quality (docs/lightcurves.md): the tiny geometry seen 8 times over 4 nights
    # (2 exposures a night), zero points 29.9-30.1 and FWHM 0.6-0.85 arcsec varying between exposures,
    # exposure index 3 under clouds (zero point -0.5 mag) and index 6 in bad seeing (FWHM x 1.6); 15% of
    # the stars vary (periodic and transient). More stars, more of them bright (count slope 0.12: ~100
    # stars brighter than 20.5 in the tile, to calibrate zero points); none brighter than 17 (no halos).
    "lightcurve": {
        "tiles": ["244.252"],
        "shear": [[0.02, 0.0]],
        "tile_size": 900,
        "tile_block_rows": 512,
        "exposures_per_tile": 8,
        "dither_arcsec": 10.0,
        "ccd_rows": [2],
        "ccd_nx": 512,
        "ccd_ny": 1024,
        "gap_x": 40,
        "star_density": 50.0,
        "star_mag_range": [17.0, 24.0],
        "star_count_slope": 0.12,
        "galaxy_density": 10.0,
        "deep_sky": False,
        "exposures_per_night": 2,
        "night_gap_days": 1.0,
        "zero_point_range": [29.9, 30.1],
        "psf_fwhm_range": [0.6, 0.85],
        "bad_zero_point_exposures": [3],
        "bad_seeing_exposures": [6],
        "variable_fraction": 0.15,
    },
    # A galaxy cluster at the centre of one small tile covered by one CCD per exposure (docs/crowded.md):
    # tests and benchmarks of crowded-field detection, object masks and local sky. No tile shear: the
    # galaxies behind the cluster carry its NFW tangential shear only. Background galaxies down to 24.5, the
    # tile's detection limit (two exposures), 60 per arcmin^2: about 45 within 30 arcsec of the centre.
    # The members are smooth de Vaucouleurs ellipticals, as a cluster core's red sequence is; cluster_knotty
    # below is the same field with knots on the members, the stress test of a finely deblended pass.
    "cluster": {
        "tiles": ["244.252"],
        "shear": [[0.0, 0.0]],
        "tile_size": 900,
        "tile_block_rows": 512,
        "exposures_per_tile": 2,
        "dither_arcsec": 10.0,
        "ccd_rows": [1],
        "ccd_nx": 1024,
        "ccd_ny": 1024,
        "star_density": 15.0,
        "galaxy_density": 60.0,
        "galaxy_mag_range": [21.0, 24.5],
        "deep_sky": False,
        "cluster": True,
    },
    # Campaign tools (shapepipe_campaign, docs/campaign.md): four neighbouring tiles of one row that
    # overlap as real CFIS tiles do (a CFIS tile is 0.52 deg, its neighbours' centres 0.5 deg away). To
    # keep that with few pixels, the tiny scene is enlarged ~10.7 times in angle: 2 arcsec pixels, tiles
    # of 1000 pixels (0.56 deg, 200 arcsec overlap strips), PSF and galaxy sizes, dithers and distortion
    # scaled with the pixel, densities divided by 10.7^2 (the tiny counts per pixel) and the sky 5.1 mag
    # fainter per arcsec^2 (tiny's sky per pixel, hence its noise). Two exposures per tile, each covering
    # its tile and a strip of the neighbours'.
    "campaign": {
        "tiles": ["244.252", "245.252", "246.252", "247.252"],
        "shear": [[0.02, 0.0], [0.0, 0.02], [-0.02, 0.0], [0.0, -0.02]],
        "pixel_scale": 2.0,
        "tile_size": 1000,
        "tile_block_rows": 512,
        "exposures_per_tile": 2,
        "dither_arcsec": 40.0,
        "distortion_arcsec": 10.0,
        "ccd_rows": [2],
        "ccd_nx": 540,
        "ccd_ny": 1080,
        "gap_x": 20,
        "psf_fwhm_range": [7.0, 8.5],
        "hlr_at_22": 5.9,
        "sky_mag": 25.9,
        "star_density": 0.35,
        "star_mag_range": [17.0, 24.0],
        "galaxy_density": 0.13,
        "deep_sky": False,
    },
    "cfis": dict(_CFIS_SURVEY),
    # One full-size CFIS tile (10,000 x 10,000 pixels, 0.52 deg) with its own
    # exposures of the 40-CCD camera, for benchmarks/bench_tile.py (memory
    # and disk of a real tile, cost per object-epoch). exposures_per_tile can
    # be lowered (bench_tile.py --exposures) when simulating all three is too
    # long: every tile-size stage still sees a full tile.
    "cfis_tile": {"tiles": ["244.252"], "shear": [[0.02, 0.0]], **_CFIS_SURVEY},
    # The shape of the field ShapePipe was timed on (2 exposures of 4 CFHT-size
    # CCDs, one 4000x4000 tile), for benchmarks/bench_chain.py. CFIS star
    # density; the galaxy density gives ~2,500 detections in the tile (~4,500
    # object-epochs), the count implied by ShapePipe's ngmix time on that field
    # (78% of 1081 s CPU at 186 ms per object-epoch).
    "sp_field": {
        "tiles": ["244.252"],
        "shear": [[0.02, 0.0]],
        "tile_size": 4000,
        "tile_block_rows": 1000,
        "coverage_step": 8,
        "exposures_per_tile": 2,
        "ccd_rows": [2, 2],
        "ccd_nx": 2048,
        "ccd_ny": 4612,
        "gap_x": 70,
        "gap_y": 400,
        "star_density": 3.0,
        "galaxy_density": 45.0,
    },
}

# The calib survey with 10x less pixel noise (gain x 100: S/N x 10, same galaxies, stars and PSFs):
# metacalibration's noise bias vanishes, so a campaign measures every other bias of the chain (PSF model,
# detection, stamps, masks, selection) at sigma_m ~ 0.0013 per 4 seeds, ~40x less CPU than calib for the
# same sigma_m (docs/calibration.md, "High-S/N campaigns").
_PRESET_OVERRIDES["calib_highsnr"] = {**_PRESET_OVERRIDES["calib"], "gain": 600.0}

# The cluster with 30% of each member's flux in 30 point-like knots (star-forming regions, globular clusters;
# exaggerated for elliptical members): a finely deblended pass shreds them, so that no single detection pass
# keeps them whole and finds the faint galaxies between them (docs/crowded.md, "Knotty members").
_PRESET_OVERRIDES["cluster_knotty"] = {**_PRESET_OVERRIDES["cluster"], "cluster_knot_fraction": 0.3}

PRESETS = tuple(_PRESET_OVERRIDES)
PARAMETER_HELP = {name: text for name, (_, text) in _BASE.items()}


def preset_parameters(preset: str) -> dict:
    """All parameters of a preset (a fresh copy)."""
    if preset not in _PRESET_OVERRIDES:
        raise ConfigError(f"simulate: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    params = {name: copy.deepcopy(value) for name, (value, _) in _BASE.items()}
    params.update(copy.deepcopy(_PRESET_OVERRIDES[preset]))
    return params


def _coerce(name, value, default):
    """Value converted to the type of the default, or ConfigError."""
    problem = ConfigError(f"simulate: parameter {name!r} = {value!r} should be like {default!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise problem
    if isinstance(default, int):
        number = _num(value, problem) if isinstance(value, str) else value
        if isinstance(number, bool) or not float(number).is_integer():
            raise problem
        return int(number)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise problem
        return float(_num(value, problem) if isinstance(value, str) else value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise problem
        return value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise problem
        if not default:  # an empty default list holds integers (exposure indices)
            return [_coerce(name, v, 0) for v in value]
        if default and isinstance(default[0], list):
            return [[float(v) for v in item] for item in value]
        if default and isinstance(default[0], str):
            return [str(v) for v in value]
        return [_coerce(name, v, default[0]) for v in value]
    raise problem


def _num(text, problem):
    try:
        return float(text)
    except ValueError:
        raise problem from None


def resolve_parameters(preset: str = "demo", **overrides) -> dict:
    """Preset parameters with overrides applied and checked.

    Raises
    ------
    ConfigError
        Unknown parameter names, wrong types or inconsistent values.
    """
    params = preset_parameters(preset)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ConfigError([f"simulate: unknown parameter {name!r}" for name in unknown])
    for name, value in overrides.items():
        if value is not None:
            params[name] = _coerce(name, value, params[name])
    if "tiles" in overrides and "shear" not in overrides:
        params["shear"] = default_shears(len(params["tiles"]))
    _check(params)
    return params


def default_shears(n_tiles: int) -> list:
    """Default shear per tile: (0.02, 0) and (0, -0.02), alternating."""
    return [[0.02, 0.0] if index % 2 == 0 else [0.0, -0.02] for index in range(n_tiles)]


def _check(params):
    problems = []
    if not params["tiles"]:
        problems.append("simulate: 'tiles' is empty")
    if len(params["shear"]) != len(params["tiles"]):
        problems.append(f"simulate: 'shear' has {len(params['shear'])} entries for {len(params['tiles'])} tiles")
    for g in params["shear"]:
        if len(g) != 2 or g[0] ** 2 + g[1] ** 2 >= 0.25:
            problems.append(f"simulate: shear {g} must be (g1, g2) with |g| < 0.5")
    if params["distortion"] not in ("none", "tpv", "sip"):
        problems.append(f"simulate: 'distortion' = {params['distortion']!r}, choose none, tpv or sip")
    for name in ("tile_size", "tile_block_rows", "coverage_step", "exposures_per_tile", "ccd_nx", "ccd_ny"):
        if params[name] < 1:
            problems.append(f"simulate: {name!r} must be positive")
    if not params["ccd_rows"] or min(params["ccd_rows"]) < 1:
        problems.append("simulate: 'ccd_rows' needs at least one CCD per row")
    n_exposures = len(params["tiles"]) * params["exposures_per_tile"]
    if not 1000000 <= params["first_exposure"] <= 10000000 - n_exposures:
        problems.append("simulate: 'first_exposure' must have 7 digits")
    for name in ("bad_zero_point_exposures", "bad_seeing_exposures"):
        if any(not 0 <= index < n_exposures for index in params[name]):
            problems.append(f"simulate: {name!r} lists indices outside 0..{n_exposures - 1}")
    if params["exposures_per_night"] < 0:
        problems.append("simulate: 'exposures_per_night' must be 0 or more")
    if not 0.0 <= params["variable_fraction"] <= 1.0 or not 0.0 <= params["transient_fraction"] <= 1.0:
        problems.append("simulate: 'variable_fraction' and 'transient_fraction' must be in 0..1")
    if params["noise_realisation"] < 0:
        problems.append("simulate: 'noise_realisation' must be 0 or more")
    if params["bad_seeing_factor"] <= 0:
        problems.append("simulate: 'bad_seeing_factor' must be positive")
    for name in ("zero_point_range", "variable_amplitude_range", "variable_period_range", "transient_width_range"):
        low, high = params[name]
        if not low <= high:
            problems.append(f"simulate: {name!r} must be non-decreasing")
    if params["variable_period_range"][0] <= 0 or params["transient_width_range"][0] <= 0:
        problems.append("simulate: periods and transient widths must be positive")
    if params["cluster"]:
        if params["cluster_members"] < 1:
            problems.append("simulate: 'cluster_members' must be at least 1 (the central galaxy)")
        if len(params["cluster_offset"]) != 2:
            problems.append("simulate: 'cluster_offset' needs (east, north) in arcsec")
        if params["nfw_rs"] <= 0 or not 0 <= params["nfw_kappa_s"] <= 0.12:
            problems.append("simulate: 'nfw_rs' must be positive and 'nfw_kappa_s' in [0, 0.12] (weak lensing beyond 2 arcsec)")
        if params["nfw_sign"] not in (1, -1):
            problems.append("simulate: 'nfw_sign' must be 1 or -1")
        if params["icl_mag"] > 0 and params["icl_hlr"] <= 0:
            problems.append("simulate: 'icl_hlr' must be positive")
    for name in ("psf_fwhm_range", "star_mag_range", "galaxy_mag_range", "cluster_mag_range",
                 "cluster_hlr_range", "cluster_bright_mag_range"):
        low, high = params[name]
        if not low < high:
            problems.append(f"simulate: {name!r} must be increasing")
    if problems:
        raise ConfigError(problems)
