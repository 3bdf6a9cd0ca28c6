"""Synthetic inputs with known truth for psfinterp, merge_starcat and psf_validation.

Used by the tests and the benchmark until the simulator provides full runs:

- :func:`gaussian_model`: a PSFEx model whose PSF is an elliptical Gaussian
  of known size and shape (optionally varying linearly across the CCD);
- :func:`ccd_header`: a CCD header with a TAN WCS placing the CCD in a
  focal plane of ``nx_ccd`` x ``ny_ccd`` CCDs around the exposure centre;
- :func:`star_catalogue`: a FITS-LDAC star catalogue with noisy ``VIGNET``
  stamps drawn from a known Gaussian PSF;
- :func:`tile_catalogue`: a multi-epoch tile catalogue (``EPOCH_i`` HDUs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PIXEL_SCALE = 0.187  # arcsec per pixel (MegaCam)


def gaussian_grid(sigma: float, g1: float, g2: float, size: int, sampling: float) -> np.ndarray:
    """Elliptical Gaussian (sigma in image pixels) on a PSFEx grid of step ``sampling`` pixels, unit sum."""
    import galsim

    profile = galsim.Gaussian(sigma=sigma).shear(g1=g1, g2=g2)
    image = profile.drawImage(nx=size, ny=size, scale=sampling, method="no_pixel").array
    return image / image.sum()


def gaussian_model(sigma: float, g1: float = 0.0, g2: float = 0.0, size: int = 41, sampling: float = 1.0,
                   accepted: int = 100, chi2: float = 1.0, sigma_slope: float = 0.0, nx: int = 2048,
                   ny: int = 4096):
    """A PSFEx model of a Gaussian PSF.

    With ``sigma_slope`` the model is of degree 1 and the PSF at scaled
    position ``u`` is ``G(sigma) + u * sigma_slope * dG/dsigma``, i.e. its
    size grows about linearly across the CCD in x.

    Returns
    -------
    shapepipe_modules.io.psfex_file.PSFModel
    """
    from shapepipe_modules.io.psfex_file import PSFModel

    base = gaussian_grid(sigma, g1, g2, size, sampling)
    common = dict(zero=((nx + 1) / 2.0, (ny + 1) / 2.0), scale=(float(nx), float(ny)), sampling=sampling,
                  loaded=accepted, accepted=accepted, chi2=chi2, fwhm=2.3548 * sigma)
    if not sigma_slope:
        return PSFModel(basis=base[None], degree=0, **common)
    step = 1e-3
    derivative = (gaussian_grid(sigma + step, g1, g2, size, sampling)
                  - gaussian_grid(sigma - step, g1, g2, size, sampling)) / (2 * step)
    basis = np.stack([base, sigma_slope * derivative, np.zeros_like(base)])
    return PSFModel(basis=basis, degree=1, **common)


def ccd_header(ccd: int, centre=(150.0, 2.0), nx: int = 256, ny: int = 512, nx_ccd: int = 2, gap: int = 20):
    """Header of CCD ``ccd`` in a focal plane of ``nx_ccd`` CCDs per row (TAN WCS).

    CCDs are laid out row by row, each ``nx`` x ``ny`` pixels with ``gap``
    pixels between them, centred on the exposure centre ``(ra, dec)``.
    """
    from astropy.io import fits

    column, row = ccd % nx_ccd, ccd // nx_ccd
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRVAL1"] = centre[0]
    header["CRVAL2"] = centre[1]
    # Pixel (1, 1) of CCD (column, row) sits at focal-plane pixel offset (column, row) * (size + gap).
    header["CRPIX1"] = -column * (nx + gap) + 0.5
    header["CRPIX2"] = -row * (ny + gap) + 0.5
    header["CD1_1"] = -PIXEL_SCALE / 3600.0
    header["CD1_2"] = 0.0
    header["CD2_1"] = 0.0
    header["CD2_2"] = PIXEL_SCALE / 3600.0
    return header


def star_catalogue(path, header, sigma, g1, g2, rng: np.random.Generator, n_stars: int = 40, stamp: int = 41,
                   flux: float = 2e5, noise: float = 5.0, start_number: int = 1):
    """Write a FITS-LDAC catalogue of stars drawn from a Gaussian PSF.

    ``sigma``, ``g1``, ``g2`` may be scalars or functions of ``(x, y)``.
    Stamps are centred like SExtractor's (on pixel ``floor(X_IMAGE + 0.5)``)
    with Gaussian noise of standard deviation ``noise``.

    Returns
    -------
    astropy.table.Table
        The catalogue written.
    """
    import galsim
    from astropy.table import Table
    from astropy.wcs import WCS

    from shapepipe_modules.io.ldac import write_ldac

    nx, ny = header["NAXIS1"], header["NAXIS2"]
    x = rng.uniform(30, nx - 30, n_stars)
    y = rng.uniform(30, ny - 30, n_stars)
    ra, dec = WCS(header).all_pix2world(x, y, 1)
    vignets = np.empty((n_stars, stamp, stamp), dtype=np.float32)
    for index in range(n_stars):
        values = [v(x[index], y[index]) if callable(v) else v for v in (sigma, g1, g2)]
        profile = galsim.Gaussian(sigma=values[0], flux=flux).shear(g1=values[1], g2=values[2])
        offset = (x[index] - np.floor(x[index] + 0.5), y[index] - np.floor(y[index] + 0.5))
        image = profile.drawImage(nx=stamp, ny=stamp, scale=1.0, offset=offset, method="no_pixel").array
        vignets[index] = image + rng.normal(0.0, noise, image.shape)
    # A few pixels off the image edge, as SExtractor fills them.
    vignets[0, :3, :] = -1e30
    table = Table()
    table["NUMBER"] = np.arange(start_number, start_number + n_stars, dtype=np.int32)
    table["XWIN_IMAGE"] = x
    table["YWIN_IMAGE"] = y
    table["X_IMAGE"] = x + rng.normal(0, 0.02, n_stars)
    table["Y_IMAGE"] = y + rng.normal(0, 0.02, n_stars)
    table["XWIN_WORLD"] = ra
    table["YWIN_WORLD"] = dec
    table["MAG_AUTO"] = -2.5 * np.log10(flux) + 30 + rng.normal(0, 0.01, n_stars)
    table["SNR_WIN"] = np.full(n_stars, flux / (noise * np.sqrt(4 * np.pi) * 2.0))
    table["VIGNET"] = vignets
    write_ldac(path, table, header)
    return table


def tile_catalogue(path, ra, dec, epochs):
    """Write a multi-epoch tile catalogue.

    Parameters
    ----------
    path : path-like
    ra, dec : ndarray (n,)
        Object positions (``XWIN_WORLD``, ``YWIN_WORLD``).
    epochs : list of (str, ndarray of int)
        Per exposure: its name and the CCD of each object (-1: not seen).
    """
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import write_ldac

    count = len(ra)
    number = np.arange(1, count + 1, dtype=np.int32)
    table = Table()
    table["NUMBER"] = number
    table["XWIN_WORLD"] = np.asarray(ra, dtype=float)
    table["YWIN_WORLD"] = np.asarray(dec, dtype=float)
    table["N_EPOCH"] = np.sum([np.asarray(ccds) >= 0 for _, ccds in epochs], axis=0).astype(np.int32)
    hdus = []
    for index, (exposure, ccds) in enumerate(epochs):
        columns = [
            fits.Column(name="NUMBER", format="J", array=number),
            fits.Column(name="EXP_NAME", format="10A", array=np.full(count, exposure)),
            fits.Column(name="CCD_N", format="J", array=np.asarray(ccds, dtype=np.int32)),
        ]
        hdus.append(fits.BinTableHDU.from_columns(columns, name=f"EPOCH_{index}"))
    header = fits.Header()
    header["NAXIS"] = 2
    write_ldac(Path(path), table, header, extra_hdus=hdus)
