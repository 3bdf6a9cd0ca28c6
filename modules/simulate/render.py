"""Pixel rendering of one CCD or one block of tile rows.

Each function is one unit of parallel work: it receives the objects that may
touch its pixels and returns arrays; all randomness comes from a generator
seeded from (seed, exposure, CCD) or (seed, tile, block).
"""

from __future__ import annotations

import numpy as np

from .geometry import local_jacobians, world_to_pixel
from .psf import moffat
from .scene import galaxy_profile

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


def stamp_radius(objects, fwhm, params, noise_sigma):
    """Half size (pixels) of the drawing stamp of each object.

    Stars: out to where the Moffat falls below 0.01 sigma of the background
    (larger for stars with halos). Galaxies: 4.5 half-light radii of the
    larger component plus 1.5 PSF FWHM.
    """
    scale = params["pixel_scale"]
    beta = params["psf_beta"]
    rd = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)) / scale
    peak = objects["flux"] * (beta - 1.0) / (np.pi * rd**2)
    star_r = rd * np.sqrt(np.maximum(peak / (0.01 * noise_sigma), 1.0) ** (1.0 / beta) - 1.0)
    star_r = np.maximum(star_r, 4.0 * fwhm / scale)
    halo = objects["mag"] < params["halo_mag"]
    star_r = np.where(halo, np.maximum(star_r, _halo_radius(objects["mag"], params)), star_r)
    gal_r = (4.5 * np.maximum(objects["disk_hlr"], objects["bulge_hlr"]) + 1.5 * fwhm) / scale
    radius = np.where(objects["is_star"], star_r, gal_r)
    return np.clip(np.ceil(radius), 6, 1500).astype(int)


def _halo_radius(mag, params):
    """Radius (pixels) of the halo and spikes of a bright star."""
    return np.clip(60.0 * 10.0 ** (-0.2 * (mag - params["halo_mag"])), 60.0, 600.0) / 1.0


def star_profile(flux, mag, fwhm, e1, e2, params):
    """Star: the local PSF, plus a halo and diffraction spikes when bright."""
    import galsim

    core = moffat(params["psf_beta"], fwhm, e1, e2, flux=flux, gsparams=gsparams())
    if mag >= params["halo_mag"]:
        return core
    halo = galsim.Moffat(beta=2.0, fwhm=8.0 * fwhm, flux=0.03 * flux, gsparams=gsparams())
    length = _halo_radius(mag, params) * params["pixel_scale"] / 3.0
    width = 0.25 * fwhm
    # Spikes along the pixel axes: a very elongated Gaussian per direction.
    spike = galsim.Gaussian(sigma=np.sqrt(length * width), flux=0.005 * flux, gsparams=gsparams())
    axis_ratio = width / length
    e = (1 - axis_ratio**2) / (1 + axis_ratio**2)
    spikes = [spike.shear(e1=e, e2=0.0), spike.shear(e1=-e, e2=0.0)]
    return galsim.Add([core.withFlux(0.96 * flux), halo] + spikes)


def draw_objects(image, objects, x, y, jacobians, fwhm, e1, e2, radius, params, with_psf=True):
    """Add the objects to a GalSim image (bounds 1..nx, 1..ny) in place."""
    import galsim

    for i in range(x.size):
        ix, iy = int(np.rint(x[i])), int(np.rint(y[i]))
        r = int(radius[i])
        bounds = galsim.BoundsI(ix - r, ix + r, iy - r, iy + r) & image.bounds
        if not bounds.isDefined():
            continue
        stamp = image[bounds]
        wcs = galsim.JacobianWCS(*jacobians[i])
        if objects["is_star"][i]:
            profile = star_profile(objects["flux"][i], objects["mag"][i], fwhm[i], e1[i], e2[i], params)
        else:
            profile = galaxy_profile(
                objects["disk_hlr"][i], objects["bulge_hlr"][i], objects["bulge_frac"][i],
                objects["e1_int"][i], objects["e2_int"][i], objects["g1"][i], objects["g2"][i],
                flux=objects["flux"][i], gsparams=gsparams(),
            )
            if with_psf:
                psf = moffat(params["psf_beta"], fwhm[i], e1[i], e2[i], gsparams=gsparams())
                profile = galsim.Convolve([profile, psf], gsparams=gsparams())
        offset = (x[i] - stamp.true_center.x, y[i] - stamp.true_center.y)
        method = "no_pixel" if with_psf else "auto"
        profile.drawImage(image=stamp, wcs=wcs, offset=offset, method=method, add_to_image=True)


def apply_saturation(image, saturate):
    """Clip at the saturation level and bleed the excess charge along columns.

    Returns the boolean mask of saturated (clipped or bled) pixels. The loop
    runs over saturated columns only (a handful per CCD).
    """
    over = image > saturate
    mask = over.copy()
    for column in np.flatnonzero(over.any(axis=0)):
        rows = np.flatnonzero(over[:, column])
        excess = float(np.sum(image[rows, column] - saturate))
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

    Parameters
    ----------
    task : dict
        ``params, seed, exposure, ccd, wcs_cards, psf_model, half_extent,
        focal_x0, focal_y0, objects`` (objects: dict of arrays, candidates).

    Returns
    -------
    dict
        ``image`` (float32), ``weight`` (float32), ``flag`` (int16),
        ``truth`` (dict of arrays), ``n_saturated``.
    """
    import galsim

    from .geometry import make_wcs
    from .psf import psf_shape_at

    params = task["params"]
    nx, ny = params["ccd_nx"], params["ccd_ny"]
    objects = task["objects"]
    wcs = make_wcs(task["wcs_cards"])
    rng = np.random.default_rng(np.random.SeedSequence([task["seed"], 3, task["exposure"], task["ccd"]]))

    x, y = world_to_pixel(wcs, objects["ra"], objects["dec"])
    fwhm, e1, e2 = psf_shape_at(task["psf_model"], task["focal_x0"] + x - 1.0, task["focal_y0"] + y - 1.0, task["half_extent"])
    noise_sigma = np.sqrt(background_variance(params))
    radius = stamp_radius(objects, fwhm, params, noise_sigma)
    touches = (x + radius > 0.5) & (x - radius < nx + 0.5) & (y + radius > 0.5) & (y - radius < ny + 0.5)
    idx = np.flatnonzero(touches)
    sub = {name: column[idx] for name, column in objects.items()}
    x, y, fwhm, e1, e2, radius = x[idx], y[idx], fwhm[idx], e1[idx], e2[idx], radius[idx]
    jac = local_jacobians(wcs, x, y)

    model = galsim.ImageF(nx, ny)
    draw_objects(model, sub, x, y, jac, fwhm, e1, e2, radius, params)
    noiseless = model.array.astype(np.float64)
    peak_over = noiseless  # kept for the per-object saturation flag below

    # Sky with a gentle linear gradient across the CCD.
    grad = rng.normal(0.0, params["sky_gradient"], 2)
    gx = (np.arange(nx) + 0.5) / nx - 0.5
    gy = (np.arange(ny) + 0.5) / ny - 0.5
    sky = sky_level(params) * (1.0 + grad[0] * gx[None, :] + grad[1] * gy[:, None])
    gain = params["gain"]
    expected = np.maximum(noiseless + sky, 0.0)
    image = rng.poisson(expected * gain) / gain + rng.normal(0.0, params["read_noise"] / gain, expected.shape)
    weight = (1.0 / (sky / gain + (params["read_noise"] / gain) ** 2)).astype(np.float32)
    del expected

    flag = np.zeros((ny, nx), np.int16)
    add_cosmic_rays(image, flag, rng, params)
    saturated = apply_saturation(image, params["saturate"])
    flag[saturated] |= FLAG_SATURATED
    for _ in range(params["bad_columns"]):
        column = rng.integers(0, nx)
        start = rng.integers(0, ny // 2) if rng.uniform() < 0.5 else 0
        image[start:, column] = 0.0
        weight[start:, column] = 0.0
        flag[start:, column] |= FLAG_BAD_COLUMN

    on_ccd = (x >= 0.5) & (x < nx + 0.5) & (y >= 0.5) & (y < ny + 0.5)
    ix = np.clip(np.rint(x).astype(int) - 1, 0, nx - 1)
    iy = np.clip(np.rint(y).astype(int) - 1, 0, ny - 1)
    truth = {name: column[on_ccd] for name, column in sub.items()}
    truth.update(
        x=x[on_ccd], y=y[on_ccd], psf_fwhm=fwhm[on_ccd], psf_e1=e1[on_ccd], psf_e2=e2[on_ccd],
        saturated=(peak_over[iy, ix] + sky[iy, ix] > params["saturate"])[on_ccd],
        flag=flag[iy, ix][on_ccd].astype(np.int16),
    )
    return {"image": image.astype(np.float32), "weight": weight, "flag": flag, "truth": truth}


def render_tile_block(task):
    """Rows ``row0 .. row1-1`` (0-based) of a tile: image, weight, truth of the block.

    The tile is the scene drawn on the tile WCS with the tile's single mean
    PSF; its noise is Gaussian with the variance of a mean stack of the
    ``n_cov`` exposures covering each pixel (background and object shot
    noise), and its weight is the inverse background variance of that stack.
    """
    import galsim

    from .geometry import make_wcs

    params = task["params"]
    size = params["tile_size"]
    row0, row1 = task["row0"], task["row1"]
    objects = task["objects"]
    wcs = make_wcs(task["wcs_cards"])
    rng = np.random.default_rng(np.random.SeedSequence([task["seed"], 4, task["tile_index"], row0]))

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

    model = galsim.ImageF(galsim.BoundsI(1, size, row0 + 1, row1))
    draw_objects(model, sub, x, y, jac, fwhm, e1, e2, radius, params)
    noiseless = model.array.astype(np.float64)

    n_cov = task["coverage"].astype(np.float64)
    covered = n_cov > 0
    safe = np.where(covered, n_cov, 1.0)
    gain = params["gain"]
    variance = (background_variance(params) + np.maximum(noiseless, 0.0) / gain) / safe
    image = noiseless + rng.normal(0.0, 1.0, noiseless.shape) * np.sqrt(variance)
    saturated = apply_saturation(image, params["saturate"])
    del saturated
    image[~covered] = 0.0
    weight = np.where(covered, safe / background_variance(params), 0.0)

    in_block = (x >= 0.5) & (x < size + 0.5) & (y >= y_low) & (y < y_high)
    truth = {name: column[in_block] for name, column in sub.items()}
    iy = np.clip(np.rint(y).astype(int) - 1 - row0, 0, row1 - row0 - 1)
    ix = np.clip(np.rint(x).astype(int) - 1, 0, size - 1)
    truth.update(x=x[in_block], y=y[in_block], n_exposures=n_cov[iy, ix][in_block].astype(np.int16))
    return {"image": image.astype(np.float32), "weight": weight.astype(np.float32), "truth": truth}
