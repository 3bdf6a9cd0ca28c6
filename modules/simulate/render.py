"""Pixel rendering of one CCD or one block of tile rows.

Each function is one unit of parallel work: it receives the objects that may
touch its pixels and returns arrays. Every random quantity has its own
stream (:mod:`.streams`), so no draw depends on the pixel values of another.
"""

from __future__ import annotations

import numpy as np

from . import streams
from .geometry import local_jacobians, world_to_pixel
from .psf import moffat
from .scene import galaxy_profile, knots_of

FLAG_BAD_COLUMN = 1
FLAG_COSMIC_RAY = 2
FLAG_SATURATED = 4

_GSPARAMS = None


def gsparams():
    """GalSim accuracy settings shared by all draws (relaxed folding for speed)."""
    global _GSPARAMS
    if _GSPARAMS is None:
        import galsim

        _GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=2e-3)
    return _GSPARAMS


def sky_level(params) -> float:
    """Sky per pixel (ADU at PHOTZP=30)."""
    return 10.0 ** (-0.4 * (params["sky_mag"] - 30.0)) * params["pixel_scale"] ** 2


def background_variance(params) -> float:
    """Variance per pixel of the background (sky Poisson plus read noise), ADU^2."""
    return sky_level(params) / params["gain"] + (params["read_noise"] / params["gain"]) ** 2


#: Bright stars (mag < ``halo_mag``) have, beyond the PSF core (96 % of the flux), a scattered-light
#: halo and two diffraction spikes of fixed shapes (docs/simulation.md, "Bright stars"): an optical
#: system is linear, so a star's light is its flux times one profile, and only the extent above the
#: noise grows with the flux. Halo: Moffat, beta 2 (surface brightness ~ r^-4 far out), FWHM 8 times
#: the PSF's, 3 % of the flux. Spikes: along the pixel axes, each (horizontal, vertical) a Gaussian
#: of sigma 10 arcsec along the arm and 0.25 PSF FWHM across, 0.5 % of the flux.
HALO_FRACTION = 0.03
HALO_BETA = 2.0
HALO_FWHM_FACTOR = 8.0
SPIKE_FRACTION = 0.005
SPIKE_LENGTH_ARCSEC = 10.0
SPIKE_WIDTH_FACTOR = 0.25
#: Stamps of stars reach where their light falls to this fraction of the pixel noise.
STAMP_NOISE_FRACTION = 0.01


def bright_star_extent(flux, fwhm, pixel_scale, level):
    """Radius (pixels) beyond which the halo and the spikes of bright stars are below ``level``.

    Parameters
    ----------
    flux : array
        Star fluxes (ADU).
    fwhm : array or float
        PSF FWHM (arcsec).
    pixel_scale : float
        Arcsec per pixel.
    level : float
        ADU per pixel.

    Returns
    -------
    halo, spike : arrays
        Halo radius and spike arm length (pixels; 0 where the peak is below ``level``).
    """
    flux = np.asarray(flux, float)
    area = pixel_scale**2
    rd = HALO_FWHM_FACTOR * np.asarray(fwhm, float) / (2.0 * np.sqrt(2.0 ** (1.0 / HALO_BETA) - 1.0))
    peak = HALO_FRACTION * flux * (HALO_BETA - 1.0) / (np.pi * rd**2) * area
    halo = rd * np.sqrt(np.maximum(peak / level, 1.0) ** (1.0 / HALO_BETA) - 1.0)
    width = SPIKE_WIDTH_FACTOR * np.asarray(fwhm, float)
    spike_peak = SPIKE_FRACTION * flux / (2.0 * np.pi * SPIKE_LENGTH_ARCSEC * width) * area
    spike = SPIKE_LENGTH_ARCSEC * np.sqrt(2.0 * np.log(np.maximum(spike_peak / level, 1.0)))
    return halo / pixel_scale, spike / pixel_scale


def star_surface_brightness(dx, dy, flux, fwhm, bright, params):
    """Noise-free light (ADU per pixel) of one star at offsets ``dx, dy`` (arcsec, pixel axes).

    The round PSF core (its ellipticity of a few per cent is ignored) plus,
    when ``bright``, the halo and the spikes of :func:`star_profile`: the
    truth against which the mask sizes are checked.
    """
    beta = params["psf_beta"]
    r2 = np.asarray(dx, float) ** 2 + np.asarray(dy, float) ** 2
    area = params["pixel_scale"] ** 2
    rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    core_flux = (1.0 - HALO_FRACTION - 2.0 * SPIKE_FRACTION) * flux if bright else flux
    light = core_flux * (beta - 1.0) / (np.pi * rd**2) * (1.0 + r2 / rd**2) ** -beta
    if bright:
        rh = HALO_FWHM_FACTOR * fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / HALO_BETA) - 1.0))
        light = light + HALO_FRACTION * flux * (HALO_BETA - 1.0) / (np.pi * rh**2) * (1.0 + r2 / rh**2) ** -HALO_BETA
        length, width = SPIKE_LENGTH_ARCSEC, SPIKE_WIDTH_FACTOR * fwhm
        norm = SPIKE_FRACTION * flux / (2.0 * np.pi * length * width)
        light = light + norm * (np.exp(-0.5 * (dx**2 / length**2 + dy**2 / width**2))
                                + np.exp(-0.5 * (dy**2 / length**2 + dx**2 / width**2)))
    return light * area


def stamp_radius(objects, fwhm, params, noise_sigma):
    """Half size (pixels) of the drawing stamp of each object.

    Stars: out to where the Moffat core, and for bright stars the halo and
    the spikes, fall below ``STAMP_NOISE_FRACTION`` (0.01) of the background
    noise. Galaxies: 4.5 half-light radii of the larger component plus 1.5
    PSF FWHM.
    """
    scale = params["pixel_scale"]
    beta = params["psf_beta"]
    level = STAMP_NOISE_FRACTION * noise_sigma
    rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)) / scale
    peak = objects["flux"] * (beta - 1.0) / (np.pi * rd**2)
    star_r = rd * np.sqrt(np.maximum(peak / level, 1.0) ** (1.0 / beta) - 1.0)
    star_r = np.maximum(star_r, 4.0 * fwhm / scale)
    bright = objects["mag"] < params["halo_mag"]
    halo_r, spike_r = bright_star_extent(objects["flux"], fwhm, scale, level)
    star_r = np.where(bright, np.maximum(star_r, np.maximum(halo_r, spike_r)), star_r)
    gal_r = (4.5 * np.maximum(objects["disk_hlr"], objects["bulge_hlr"]) + 1.5 * fwhm) / scale
    radius = np.where(objects["is_star"], star_r, gal_r)
    return np.clip(np.ceil(radius), 6, 1500).astype(int)


def star_profile(flux, mag, fwhm, e1, e2, params):
    """Star: the local PSF, plus the halo and diffraction spikes when brighter than ``halo_mag``."""
    import galsim

    core = moffat(params["psf_beta"], fwhm, e1, e2, flux=flux, gsparams=gsparams())
    if mag >= params["halo_mag"]:
        return core
    halo = galsim.Moffat(beta=HALO_BETA, fwhm=HALO_FWHM_FACTOR * fwhm, flux=HALO_FRACTION * flux,
                         gsparams=gsparams())
    length = SPIKE_LENGTH_ARCSEC
    width = SPIKE_WIDTH_FACTOR * fwhm
    # Spikes along the pixel axes: a Gaussian of sigma sqrt(length width) sheared to axis ratio
    # width / length (area-preserving: sigmas length and width), one per direction.
    spike = galsim.Gaussian(sigma=np.sqrt(length * width), flux=SPIKE_FRACTION * flux, gsparams=gsparams())
    axis_ratio = width / length
    e = (1 - axis_ratio**2) / (1 + axis_ratio**2)
    spikes = [spike.shear(e1=e, e2=0.0), spike.shear(e1=-e, e2=0.0)]
    return galsim.Add([core.withFlux((1.0 - HALO_FRACTION - 2.0 * SPIKE_FRACTION) * flux), halo] + spikes)


def stamp_boxes(x, y, radius):
    """Pixel boxes drawn for objects at FITS positions ``(x, y)``.

    Returns ``(x_low, x_high, y_low, y_high)``, 1-based inclusive: the box
    ``rint(x) - r .. rint(x) + r`` (same in y), before clipping to the image.
    Every pixel an object adds light (and photon noise) to lies in its box.
    """
    ix = np.rint(np.asarray(x, float)).astype(int)
    iy = np.rint(np.asarray(y, float)).astype(int)
    r = np.asarray(radius, int)
    return ix - r, ix + r, iy - r, iy + r


def footprint_mask(x, y, radius, nx, row0, row1):
    """Pixels of rows ``row0 .. row1-1`` (0-based) and ``nx`` columns inside any object's box.

    Parameters
    ----------
    x, y : array
        FITS pixel positions of the objects.
    radius : array of int
        Stamp half sizes (:func:`stamp_radius`).
    nx, row0, row1 : int
        Image width and the block of rows (a whole CCD: ``0, ny``).

    Returns
    -------
    numpy.ndarray
        Boolean ``(row1 - row0, nx)`` mask.
    """
    mask = np.zeros((row1 - row0, nx), bool)
    x_low, x_high, y_low, y_high = stamp_boxes(x, y, radius)
    for i in range(np.size(x_low)):
        c0, c1 = max(x_low[i], 1) - 1, min(x_high[i], nx)
        r0, r1 = max(y_low[i] - 1, row0) - row0, min(y_high[i], row1) - row0
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def draw_stamps(bounds, objects, x, y, jacobians, fwhm, e1, e2, radius, params):
    """Draw each object on its own stamp, clipped to ``bounds``.

    Yields
    ------
    tuple
        ``(index, rows, columns, array)``: the object's index in ``x``, the
        0-based slices of the stamp in an array covering ``bounds``, and the
        stamp (float32, image units).
    """
    import galsim

    x_low, x_high, y_low, y_high = stamp_boxes(x, y, radius)
    for i in range(x.size):
        box = galsim.BoundsI(int(x_low[i]), int(x_high[i]), int(y_low[i]), int(y_high[i])) & bounds
        if not box.isDefined():
            continue
        stamp = galsim.ImageF(box)
        wcs = galsim.JacobianWCS(*jacobians[i])
        if objects["is_star"][i]:
            profile = star_profile(objects["flux"][i], objects["mag"][i], fwhm[i], e1[i], e2[i], params)
        else:
            profile = galaxy_profile(
                objects["disk_hlr"][i], objects["bulge_hlr"][i], objects["bulge_frac"][i],
                objects["e1_int"][i], objects["e2_int"][i], objects["g1"][i], objects["g2"][i],
                flux=objects["flux"][i], gsparams=gsparams(), knots=knots_of(objects, i),
            )
            psf = moffat(params["psf_beta"], fwhm[i], e1[i], e2[i], gsparams=gsparams())
            profile = galsim.Convolve([profile, psf], gsparams=gsparams())
        offset = (x[i] - stamp.true_center.x, y[i] - stamp.true_center.y)
        profile.drawImage(image=stamp, wcs=wcs, offset=offset, method="no_pixel")
        rows = slice(box.ymin - bounds.ymin, box.ymax - bounds.ymin + 1)
        columns = slice(box.xmin - bounds.xmin, box.xmax - bounds.xmin + 1)
        yield i, rows, columns, stamp.array


def apply_saturation(image, saturate, base=None):
    """Clip at the saturation level and bleed the excess charge along columns.

    The bleed trails are those of ``base`` (default: the image itself): the
    image without the galaxies, so that galaxies (which never saturate) do
    not change the trails outside their stamps. Pixels of the image above
    ``saturate`` are clipped in any case. Returns the boolean mask of
    saturated (clipped or bled) pixels. The loop runs over saturated columns
    only (a handful per CCD).
    """
    base = image if base is None else base
    over = base > saturate
    mask = over | (image > saturate)
    for column in np.flatnonzero(over.any(axis=0)):
        rows = np.flatnonzero(over[:, column])
        excess = float(np.sum(base[rows, column] - saturate))
        extra = int(excess / saturate / 2.0)
        low = max(rows.min() - extra, 0)
        high = min(rows.max() + extra + 1, image.shape[0])
        mask[low:high, column] = True
    image[mask] = saturate
    return mask


def add_cosmic_rays(image, flag, rng, params):
    """Add cosmic-ray tracks (short straight lines) to the image and the flag."""
    ny, nx = image.shape
    n = rng.poisson(params["cosmic_rate"] * nx * ny / 1e6)
    if n == 0:
        return
    x0 = rng.uniform(0, nx, n)
    y0 = rng.uniform(0, ny, n)
    length = rng.uniform(1.0, 15.0, n)
    angle = rng.uniform(0.0, np.pi, n)
    energy = rng.uniform(300.0, 5000.0, n)
    steps = np.arange(0.0, 16.0, 0.5)
    t = steps[None, :]
    keep = t <= length[:, None]
    px = np.rint(x0[:, None] + t * np.cos(angle)[:, None])[keep].astype(int)
    py = np.rint(y0[:, None] + t * np.sin(angle)[:, None])[keep].astype(int)
    deposit = (energy[:, None] / (length[:, None] / 0.5 + 1.0) * np.ones_like(t))[keep]
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    np.add.at(image, (py[inside], px[inside]), deposit[inside])
    flag[py[inside], px[inside]] |= FLAG_COSMIC_RAY


def render_ccd(task):
    """Image, weight, flag and truth of one CCD.

    Noise and defects come from separate streams (:mod:`.streams`) of
    ``(seed, exposure, CCD)``: sky gradient, sky photons, read noise, cosmic
    rays, bad columns; the photon noise of each object comes from its own
    stream of ``(seed, exposure, CCD, object id)`` and lands in its stamp
    only (a sum of independent Poisson draws is the Poisson draw of the
    sum). So a pixel outside every galaxy's stamp does not depend on the
    galaxies at all.

    Parameters
    ----------
    task : dict
        ``params, seed, exposure, ccd, wcs_cards, psf_model, half_extent,
        focal_x0, focal_y0, objects`` (objects: dict of arrays, candidates).

    Returns
    -------
    dict
        ``image`` (float32), ``weight`` (float32), ``flag`` (int16),
        ``truth`` (dict of arrays).
    """
    import galsim

    from .geometry import make_wcs
    from .psf import psf_shape_at

    params = task["params"]
    nx, ny = params["ccd_nx"], params["ccd_ny"]
    objects = task["objects"]
    wcs = make_wcs(task["wcs_cards"])
    seed, key = task["seed"], (task["exposure"], task["ccd"])
    realisation = int(params.get("noise_realisation", 0))

    x, y = world_to_pixel(wcs, objects["ra"], objects["dec"])
    fwhm, e1, e2 = psf_shape_at(task["psf_model"], task["focal_x0"] + x - 1.0, task["focal_y0"] + y - 1.0, task["half_extent"])
    noise_sigma = np.sqrt(background_variance(params))
    radius = stamp_radius(objects, fwhm, params, noise_sigma)
    touches = (x + radius > 0.5) & (x - radius < nx + 0.5) & (y + radius > 0.5) & (y - radius < ny + 0.5)
    idx = np.flatnonzero(touches)
    sub = {name: column[idx] for name, column in objects.items()}
    x, y, fwhm, e1, e2, radius = x[idx], y[idx], fwhm[idx], e1[idx], e2[idx], radius[idx]
    jac = local_jacobians(wcs, x, y)
    # Zero point: objects and sky give 10^(0.4 (ZP - 30)) times their ADU at PHOTZP 30 (a transparency change).
    scale = 10.0 ** (0.4 * (task.get("zero_point", 30.0) - 30.0))
    drawn = sub if scale == 1.0 else dict(sub, flux=sub["flux"] * scale)

    gain = params["gain"]
    # Stars and galaxies apart: the galaxies' light and photons are added last,
    # so that everything else (and the saturation trails) ignores them.
    model = {True: np.zeros((ny, nx), np.float32), False: np.zeros((ny, nx), np.float32)}
    photons = {True: np.zeros((ny, nx), np.int32), False: np.zeros((ny, nx), np.int32)}
    for i, rows, columns, stamp in draw_stamps(galsim.BoundsI(1, nx, 1, ny), drawn, x, y, jac, fwhm, e1, e2, radius, params):
        star = bool(sub["is_star"][i])
        rng = streams.noise_stream(seed, streams.OBJECT_PHOTONS, realisation, *key, sub["id"][i])
        model[star][rows, columns] += stamp
        photons[star][rows, columns] += rng.poisson(np.maximum(stamp, 0.0) * gain)

    # Sky with a gentle linear gradient across the CCD.
    grad = streams.stream(seed, streams.SKY_GRADIENT, *key).normal(0.0, params["sky_gradient"], 2)
    gx = (np.arange(nx) + 0.5) / nx - 0.5
    gy = (np.arange(ny) + 0.5) / ny - 0.5
    sky = scale * sky_level(params) * (1.0 + grad[0] * gx[None, :] + grad[1] * gy[:, None])
    sky_photons = streams.noise_stream(seed, streams.SKY_PHOTONS, realisation, *key).poisson(sky * gain)
    base = (sky_photons + photons[True]) / gain
    del sky_photons
    base += streams.noise_stream(seed, streams.READ_NOISE, realisation, *key).normal(0.0, params["read_noise"] / gain, base.shape)
    weight = (1.0 / (sky / gain + (params["read_noise"] / gain) ** 2)).astype(np.float32)

    flag = np.zeros((ny, nx), np.int16)
    add_cosmic_rays(base, flag, streams.noise_stream(seed, streams.COSMIC_RAYS, realisation, *key), params)
    image = base + photons[False] / gain
    del photons
    saturated = apply_saturation(image, params["saturate"], base)
    del base
    flag[saturated] |= FLAG_SATURATED
    rng = streams.stream(seed, streams.BAD_COLUMNS, *key)
    for _ in range(params["bad_columns"]):
        column = rng.integers(0, nx)
        start = rng.integers(0, ny // 2) if rng.uniform() < 0.5 else 0
        image[start:, column] = 0.0
        weight[start:, column] = 0.0
        flag[start:, column] |= FLAG_BAD_COLUMN

    on_ccd = (x >= 0.5) & (x < nx + 0.5) & (y >= 0.5) & (y < ny + 0.5)
    ix = np.clip(np.rint(x).astype(int) - 1, 0, nx - 1)
    iy = np.clip(np.rint(y).astype(int) - 1, 0, ny - 1)
    # A star's saturation truth ignores the galaxies (they never saturate).
    peak = model[True][iy, ix] + np.where(sub["is_star"], 0.0, model[False][iy, ix])
    truth = {name: column[on_ccd] for name, column in sub.items()}
    truth.update(
        x=x[on_ccd], y=y[on_ccd], psf_fwhm=fwhm[on_ccd], psf_e1=e1[on_ccd], psf_e2=e2[on_ccd],
        saturated=(peak + sky[iy, ix] > params["saturate"])[on_ccd],
        flag=flag[iy, ix][on_ccd].astype(np.int16),
    )
    return {"image": image.astype(np.float32), "weight": weight, "flag": flag, "truth": truth}


def render_tile_block(task):
    """Rows ``row0 .. row1-1`` (0-based) of a tile: image, weight, truth of the block.

    The tile is the scene drawn on the tile WCS with the tile's single mean
    PSF; its noise is Gaussian with the variance of a mean stack of the
    ``n_cov`` exposures covering each pixel (background and object shot
    noise), and its weight is the inverse background variance of that stack.
    The unit normal deviates come from one stream of ``(seed, tile, row0)``
    with one draw per pixel, so the noise outside the galaxies' stamps does
    not depend on them.
    """
    import galsim

    from .geometry import make_wcs

    params = task["params"]
    size = params["tile_size"]
    row0, row1 = task["row0"], task["row1"]
    objects = task["objects"]
    wcs = make_wcs(task["wcs_cards"])

    x, y = world_to_pixel(wcs, objects["ra"], objects["dec"])
    psf = task["psf"]
    fwhm = np.full(x.size, psf["fwhm"])
    e1 = np.full(x.size, psf["e1"])
    e2 = np.full(x.size, psf["e2"])
    noise_sigma = np.sqrt(background_variance(params) / max(task["n_exposures"], 1))
    radius = stamp_radius(objects, fwhm, params, noise_sigma)
    y_low, y_high = row0 + 0.5, row1 + 0.5
    touches = (x + radius > 0.5) & (x - radius < size + 0.5) & (y + radius > y_low) & (y - radius < y_high)
    idx = np.flatnonzero(touches)
    sub = {name: column[idx] for name, column in objects.items()}
    x, y, fwhm, e1, e2, radius = x[idx], y[idx], fwhm[idx], e1[idx], e2[idx], radius[idx]
    jac = local_jacobians(wcs, x, y)

    stars = np.zeros((row1 - row0, size))
    galaxies = np.zeros((row1 - row0, size))
    for i, rows, columns, stamp in draw_stamps(galsim.BoundsI(1, size, row0 + 1, row1), sub, x, y, jac, fwhm, e1, e2, radius, params):
        (stars if sub["is_star"][i] else galaxies)[rows, columns] += stamp

    n_cov = task["coverage"].astype(np.float64)
    covered = n_cov > 0
    safe = np.where(covered, n_cov, 1.0)
    gain = params["gain"]
    deviates = streams.noise_stream(task["seed"], streams.TILE_NOISE, int(params.get("noise_realisation", 0)),
                                     *task["tile"], row0).normal(0.0, 1.0, stars.shape)
    base = stars + deviates * np.sqrt((background_variance(params) + np.maximum(stars, 0.0) / gain) / safe)
    noiseless = stars + galaxies
    del stars, galaxies
    image = noiseless + deviates * np.sqrt((background_variance(params) + np.maximum(noiseless, 0.0) / gain) / safe)
    del deviates, noiseless
    apply_saturation(image, params["saturate"], base)
    del base
    image[~covered] = 0.0
    weight = np.where(covered, safe / background_variance(params), 0.0)

    in_block = (x >= 0.5) & (x < size + 0.5) & (y >= y_low) & (y < y_high)
    truth = {name: column[in_block] for name, column in sub.items()}
    iy = np.clip(np.rint(y).astype(int) - 1 - row0, 0, row1 - row0 - 1)
    ix = np.clip(np.rint(x).astype(int) - 1, 0, size - 1)
    truth.update(x=x[in_block], y=y[in_block], n_exposures=n_cov[iy, ix][in_block].astype(np.int16))
    return {"image": image.astype(np.float32), "weight": weight.astype(np.float32), "truth": truth}
