"""The true PSF of the simulation: a Moffat varying over the focal plane.

For exposure ``e`` at focal-plane position (X, Y) (pixels from the mosaic
centre, normalised ``u = X / R``, ``v = Y / R`` with ``R`` the half extent of
the mosaic), with the monomials ``m = (u, v, u^2, u v, v^2)``:

    fwhm = fwhm0_e * (1 + a_e . m)
    e1   = e1_e + b_e . m
    e2   = e2_e + c_e . m

The profile is ``Moffat(beta, fwhm).shear(e1=e1, e2=e2)``: ``e`` is GalSim's
distortion ``(a^2 - b^2) / (a^2 + b^2)`` (what ``hsm`` reports as
``observed_shape.e1/e2``) in GalSim's sky frame (u west, v north), which is
also the CCD pixel frame; ``fwhm`` is the FWHM of the round Moffat before the
shear (the geometric mean of the major and minor FWHM). The Moffat is the
effective PSF, pixel response included: images are drawn with GalSim's
``no_pixel`` method, so star pixels sample the Moffat.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import streams

N_TERMS = 5


def _monomials(u, v):
    return np.stack([u, v, u * u, u * v, v * v], axis=-1)


def draw_exposure_psf(params, seed: int, exposure: int) -> dict:
    """Random PSF parameters of one exposure (from seed and exposure number)."""
    rng = streams.stream(seed, streams.PSF, exposure)
    low, high = params["psf_fwhm_range"]
    # Bound the polynomial so the FWHM stays inside the documented range.
    margin = 3 * params["psf_fwhm_variation"]
    fwhm0 = rng.uniform(low * (1 + margin), high * (1 - margin)) if low * (1 + margin) < high * (1 - margin) else 0.5 * (low + high)
    return {
        "beta": float(params["psf_beta"]),
        "fwhm0": float(fwhm0),
        "fwhm_coeffs": np.clip(rng.normal(0.0, params["psf_fwhm_variation"], N_TERMS), -margin / 2, margin / 2).tolist(),
        "e1_0": float(rng.normal(0.0, params["psf_e_mean"])),
        "e2_0": float(rng.normal(0.0, params["psf_e_mean"])),
        "e1_coeffs": rng.normal(0.0, params["psf_e_variation"], N_TERMS).tolist(),
        "e2_coeffs": rng.normal(0.0, params["psf_e_variation"], N_TERMS).tolist(),
    }


def psf_shape_at(model: dict, focal_x, focal_y, half_extent: float):
    """(fwhm, e1, e2) of an exposure PSF model at focal-plane positions (vectorised)."""
    m = _monomials(np.asarray(focal_x, float) / half_extent, np.asarray(focal_y, float) / half_extent)
    fwhm = model["fwhm0"] * (1.0 + m @ np.asarray(model["fwhm_coeffs"]))
    e1 = model["e1_0"] + m @ np.asarray(model["e1_coeffs"])
    e2 = model["e2_0"] + m @ np.asarray(model["e2_coeffs"])
    return fwhm, e1, e2


def moffat(beta, fwhm, e1, e2, flux=1.0, gsparams=None):
    """The PSF profile as a GalSim object (arcsec, sky frame)."""
    import galsim

    return galsim.Moffat(beta=beta, fwhm=fwhm, flux=flux, gsparams=gsparams).shear(e1=e1, e2=e2)


class TruePSF:
    """The true PSF of a simulation, rebuilt from ``truth/psf.json``.

    Parameters
    ----------
    sim_dir : path-like
        Output directory of :func:`shapepipe_modules.simulate.simulate`.

    Examples
    --------
    >>> psf = TruePSF("sim")
    >>> fwhm, e1, e2 = psf.shape(2100001, 3, x=[100.0, 900.0], y=[50.0, 2000.0])
    >>> star = psf.draw(2100001, 3, 512.3, 1000.7, flux=1e4)
    """

    def __init__(self, sim_dir):
        path = Path(sim_dir) / "truth" / "psf.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise FileNotFoundError(f"cannot read the true PSF file {path}: {error}") from error
        self.path = path
        self.mosaic = data["mosaic"]
        self.exposures = {int(key): value for key, value in data["exposures"].items()}
        self.tiles = data["tiles"]
        self._x0 = np.asarray(self.mosaic["x0"])
        self._y0 = np.asarray(self.mosaic["y0"])
        self._sim_dir = Path(sim_dir)
        self._wcs_cache = {}

    def _model(self, exposure):
        try:
            return self.exposures[int(exposure)]
        except (KeyError, ValueError):
            raise KeyError(f"exposure {exposure!r} is not in {self.path}") from None

    def shape(self, exposure, ccd, x, y):
        """(fwhm_arcsec, e1, e2) at CCD pixel positions (FITS 1-based; vectorised).

        ``e1, e2``: GalSim distortion in the pixel (= GalSim sky) frame.
        """
        model = self._model(exposure)
        ccd = np.asarray(ccd, dtype=int)
        if np.any((ccd < 0) | (ccd >= self._x0.size)):
            raise IndexError(f"CCD index out of range 0..{self._x0.size - 1}")
        focal_x = self._x0[ccd] + np.asarray(x, float) - 1.0
        focal_y = self._y0[ccd] + np.asarray(y, float) - 1.0
        fwhm, e1, e2 = psf_shape_at(model, focal_x, focal_y, self.mosaic["half_extent"])
        if np.ndim(fwhm) == 0:
            return float(fwhm), float(e1), float(e2)
        return fwhm, e1, e2

    def galsim(self, exposure, ccd, x, y, flux=1.0):
        """The PSF at one CCD position as a GalSim GSObject (arcsec, sky frame)."""
        fwhm, e1, e2 = self.shape(exposure, ccd, float(x), float(y))
        return moffat(self._model(exposure)["beta"], fwhm, e1, e2, flux=flux)

    def local_wcs(self, exposure, ccd, x, y):
        """GalSim JacobianWCS of the CCD at (x, y), from the exposure file header."""
        import galsim
        from astropy.io import fits
        from astropy.wcs import WCS

        from shapepipe_modules import cfis

        from .geometry import local_jacobians

        key = (int(exposure), int(ccd))
        if key not in self._wcs_cache:
            path = self._sim_dir / "exposures" / cfis.exposure_file_name(f"{int(exposure):07d}")
            self._wcs_cache[key] = WCS(fits.getheader(path, int(ccd) + 1))
        jac = local_jacobians(self._wcs_cache[key], [float(x)], [float(y)])[0]
        return galsim.JacobianWCS(*jac)

    def draw(self, exposure, ccd, x, y, flux=1.0, size=33):
        """Noise-free image of the PSF centred at CCD position (x, y).

        Drawn as the simulation draws stars (``no_pixel``, local WCS of the
        CCD); the stamp is centred on the nearest pixel, so the profile
        centre sits at the stamp's true centre plus the sub-pixel offset.
        """
        import galsim

        profile = self.galsim(exposure, ccd, x, y, flux=flux)
        image = galsim.ImageF(size, size)
        offset = (float(x) - np.rint(x), float(y) - np.rint(y))
        return profile.drawImage(image=image, wcs=self.local_wcs(exposure, ccd, x, y), offset=offset, method="no_pixel")

    def tile_galsim(self, tile, flux=1.0):
        """The single mean PSF with which a tile is rendered."""
        try:
            model = self.tiles[tile]
        except KeyError:
            raise KeyError(f"tile {tile!r} is not in {self.path}") from None
        return moffat(model["beta"], model["fwhm"], model["e1"], model["e2"], flux=flux)
