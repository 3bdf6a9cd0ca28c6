"""Simulated CCD images for the sextractor tests and benchmark (galsim).

``make_ccd`` draws Moffat stars (FWHM 0.7 arcsec) and exponential galaxies
on a sky background with Gaussian noise, at 0.187 arcsec/pixel with a TAN
WCS, and returns the image, an inverse-variance weight (with a dead
column at weight 0), an integer flag image (that column flagged) and the
truth table. The tests at the bottom check the helper itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PIXEL_SCALE = 0.187
ZERO_POINT = 30.0
GAIN = 1.6
SATURATE = 60000.0
SKY = 400.0
NOISE_SIGMA = 20.0


def ccd_header(nx: int, ny: int, ra=150.0, dec=2.0):
    """A CCD header with a TAN WCS and the keys the simulator writes."""
    from astropy.io import fits

    header = fits.Header()
    scale = PIXEL_SCALE / 3600.0
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRVAL1"] = ra
    header["CRVAL2"] = dec
    header["CRPIX1"] = nx / 2.0
    header["CRPIX2"] = ny / 2.0
    header["CD1_1"] = -scale
    header["CD1_2"] = 0.0
    header["CD2_1"] = 0.0
    header["CD2_2"] = scale
    header["EQUINOX"] = 2000.0
    header["GAIN"] = GAIN
    header["SATURATE"] = SATURATE
    header["PHOTZP"] = ZERO_POINT
    header["BKGLEVEL"] = SKY
    return header


def make_ccd(rng: np.random.Generator, nx=768, ny=768, n_stars=80, n_galaxies=150,
             star_mag=(17.5, 22.0), galaxy_mag=(20.0, 24.5), dead_column=True):
    """Draw a simulated CCD.

    Returns
    -------
    dict
        ``image``, ``weight``, ``flag`` (arrays), ``header`` and ``truth``
        (structured array: x, y (1-based pixels), mag, flux, is_star).
    """
    import galsim

    image = galsim.ImageF(nx, ny, scale=PIXEL_SCALE)
    n = n_stars + n_galaxies
    margin = 12
    x = rng.uniform(margin, nx - margin, n)
    y = rng.uniform(margin, ny - margin, n)
    is_star = np.zeros(n, bool)
    is_star[:n_stars] = True
    mag = np.where(is_star, rng.uniform(*star_mag, n), rng.uniform(*galaxy_mag, n))
    flux = 10 ** (-0.4 * (mag - ZERO_POINT))
    psf = galsim.Moffat(beta=3.0, fwhm=0.7)
    for i in range(n):
        if is_star[i]:
            profile = psf.withFlux(flux[i])
        else:
            radius = rng.uniform(0.3, 1.2)
            g1, g2 = rng.normal(0, 0.2, 2).clip(-0.6, 0.6)
            galaxy = galsim.Exponential(half_light_radius=radius, flux=flux[i]).shear(g1=g1, g2=g2)
            profile = galsim.Convolve(galaxy, psf)
        # galsim's true_center convention: pixel (1,1) centre is at 1.0.
        stamp = profile.drawImage(scale=PIXEL_SCALE, center=galsim.PositionD(x[i], y[i]),
                                  nx=64 if is_star[i] else 96, ny=64 if is_star[i] else 96)
        bounds = stamp.bounds & image.bounds
        image[bounds] += stamp[bounds]
    data = image.array.astype(np.float64) + SKY
    data += rng.normal(0.0, NOISE_SIGMA, data.shape)
    data = np.minimum(data, SATURATE).astype(np.float32)
    weight = np.full(data.shape, 1.0 / NOISE_SIGMA**2, np.float32)
    flag = np.zeros(data.shape, np.int16)
    if dead_column:
        column = nx // 3
        weight[:, column] = 0.0
        flag[:, column] = 1
        data[:, column] = 0.0
    truth = np.zeros(n, dtype=[("x", "f8"), ("y", "f8"), ("mag", "f8"), ("flux", "f8"), ("is_star", "?")])
    truth["x"], truth["y"], truth["mag"], truth["flux"], truth["is_star"] = x, y, mag, flux, is_star
    return {"image": data, "weight": weight, "flag": flag, "header": ccd_header(nx, ny), "truth": truth}


def write_ccd(ccd: dict, directory, number="-0000000-0"):
    """Write image, weight and flag FITS files; return their paths."""
    from astropy.io import fits

    directory = Path(directory)
    paths = []
    for name, key in (("image", "image"), ("weight", "weight"), ("pipeline_flag", "flag")):
        path = directory / f"{name}{number}.fits"
        fits.PrimaryHDU(ccd[key], header=ccd["header"]).writeto(path, overwrite=True)
        paths.append(path)
    return paths


def test_make_ccd_truth_fluxes():
    """The drawn flux of an isolated star equals the truth flux."""
    rng = np.random.default_rng(3)
    ccd = make_ccd(rng, nx=128, ny=128, n_stars=1, n_galaxies=0, star_mag=(18, 18), dead_column=False)
    net = ccd["image"].astype(float) - SKY
    yy, xx = np.mgrid[1:129, 1:129]
    inside = np.hypot(xx - ccd["truth"]["x"][0], yy - ccd["truth"]["y"][0]) < 20
    # noise in the aperture is ~700 ADU against ~63000: 3 % is a 3-sigma bound
    assert abs(net[inside].sum() / ccd["truth"]["flux"][0] - 1) < 0.03
    peak_y, peak_x = np.unravel_index(np.argmax(net), net.shape)
    assert abs(peak_x + 1 - ccd["truth"]["x"][0]) <= 1 and abs(peak_y + 1 - ccd["truth"]["y"][0]) <= 1
