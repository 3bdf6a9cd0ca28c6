"""Synthetic CCD star fields with a known, smoothly varying PSF.

Used by the tests and the benchmark of the ``psfex`` module: the true PSF is
known at every position, so a fitted model can be compared with the truth.
The PSF is a Moffat (beta=3) whose FWHM and ellipticity are low-order
polynomials of the position, convolved with the pixel.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PIXEL_SCALE = 0.187  # arcsec per pixel, CFHT MegaCam

# Columns SExtractor must write for the psfex module (ShapePipe's list, trimmed).
SEXTRACTOR_PARAMS = (
    "NUMBER",
    "XWIN_IMAGE",
    "YWIN_IMAGE",
    "X_IMAGE",
    "Y_IMAGE",
    "FLUX_AUTO",
    "FLUXERR_AUTO",
    "FLUX_APER(1)",
    "FLUXERR_APER(1)",
    "SNR_WIN",
    "FLUX_RADIUS",
    "FWHM_IMAGE",
    "ELONGATION",
    "FLAGS",
    "VIGNET(51,51)",
)


@dataclass
class SmoothPSFField:
    """A Moffat PSF whose FWHM and distortion vary smoothly over a CCD.

    Each of ``fwhm`` (arcsec), ``e1`` and ``e2`` is a quadratic polynomial
    of the position normalised to [-1, 1] over the CCD; ``coeffs[name]``
    holds the six coefficients (1, u, v, u^2, uv, v^2).
    """

    nx: int
    ny: int
    coeffs: dict
    beta: float = 3.0

    @classmethod
    def random(cls, rng: np.random.Generator, nx: int = 1024, ny: int = 2048) -> "SmoothPSFField":
        """Draw a field with FWHM in about 0.65-0.8 arcsec and |e| below about 0.08."""
        fwhm = [rng.uniform(0.70, 0.75), *rng.uniform(-0.025, 0.025, 2), *rng.uniform(-0.015, 0.015, 3)]
        e1 = [rng.uniform(-0.03, 0.03), *rng.uniform(-0.02, 0.02, 2), *rng.uniform(-0.012, 0.012, 3)]
        e2 = [rng.uniform(-0.03, 0.03), *rng.uniform(-0.02, 0.02, 2), *rng.uniform(-0.012, 0.012, 3)]
        return cls(nx, ny, {"fwhm": np.array(fwhm), "e1": np.array(e1), "e2": np.array(e2)})

    def shape(self, x, y):
        """Return (fwhm_arcsec, e1, e2) at 1-based pixel positions ``x``, ``y``."""
        u = 2.0 * (np.asarray(x, float) - 0.5) / self.nx - 1.0
        v = 2.0 * (np.asarray(y, float) - 0.5) / self.ny - 1.0
        terms = np.array([np.ones_like(u), u, v, u * u, u * v, v * v])
        return tuple(np.tensordot(self.coeffs[name], terms, axes=1) for name in ("fwhm", "e1", "e2"))

    def profile(self, x: float, y: float):
        """The galsim profile (in pixel units, without the pixel) at one position."""
        import galsim

        fwhm, e1, e2 = (float(v) for v in self.shape(x, y))
        return galsim.Moffat(beta=self.beta, fwhm=fwhm / PIXEL_SCALE).shear(e1=e1, e2=e2)

    def image(self, x: float, y: float, size: int = 51, offset=(0.0, 0.0), scale: float = 1.0) -> np.ndarray:
        """Unit-sum pixelised PSF stamp centred at ``size//2 + offset`` (pixel convolved in)."""
        import galsim

        stamp = galsim.ImageD(size, size, scale=scale)
        # galsim centres odd stamps on the central pixel, as PSFEx does.
        self.profile(x, y).drawImage(stamp, offset=offset, method="auto")
        array = stamp.array
        return array / array.sum()


def draw_ccd(field: SmoothPSFField, rng: np.random.Generator, n_stars: int = 100, margin: int = 20,
             sky: float = 100.0, gain: float = 1.0, flux_range=(3e3, 3e5)):
    """Draw a noisy CCD image with stars at random positions.

    Returns
    -------
    image : ndarray (ny, nx)
        Sky-subtracted image (Poisson noise of sky plus stars, in ADU).
    stars : dict of ndarray
        True 1-based ``x``, ``y`` and ``flux`` of every star.
    """
    import galsim

    x = rng.uniform(margin, field.nx - margin, n_stars)
    y = rng.uniform(margin, field.ny - margin, n_stars)
    flux = np.exp(rng.uniform(*np.log(flux_range), n_stars))
    image = galsim.ImageD(field.nx, field.ny, scale=1.0)
    for xs, ys, fs in zip(x, y, flux):
        # galsim positions are 1-based like FITS, matching SExtractor's X_IMAGE.
        centre = galsim.PositionD(xs, ys)
        bounds = galsim.BoundsI(int(xs) - 25, int(xs) + 25, int(ys) - 25, int(ys) + 25) & image.bounds
        stamp = image[bounds]
        field.profile(xs, ys).withFlux(fs).drawImage(stamp, center=centre, add_to_image=True, method="auto")
    expected = image.array + sky
    counts = rng.poisson(np.clip(expected, 0, None) * gain) / gain
    return (counts - sky).astype(np.float32), {"x": x, "y": y, "flux": flux}


def write_star_catalogue(image: np.ndarray, stars: dict, directory, name: str = "star_selection",
                         gain: float = 1.0, match_radius: float = 1.5) -> Path:
    """Run ``source-extractor`` on an image and keep the detections of true stars.

    The result is a FITS-LDAC star catalogue like the one ``setools`` writes
    for ``psfex`` (VIGNET stamps, windowed positions, fluxes).

    Returns
    -------
    Path
        The selected-star catalogue ``<directory>/<name>.fits``.
    """
    from astropy.io import fits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    executable = shutil.which("source-extractor") or shutil.which("sex")
    if executable is None:
        raise FileNotFoundError("source-extractor executable not found")
    image_path = directory / f"{name}_image.fits"
    header = fits.Header()
    header["GAIN"] = gain
    fits.PrimaryHDU(image, header=header).writeto(image_path, overwrite=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        work = Path(work)
        (work / "default.param").write_text("\n".join(SEXTRACTOR_PARAMS) + "\n")
        raw = work / "raw.cat"
        subprocess.run(
            [executable, str(image_path), "-c", "/dev/null",
             "-PARAMETERS_NAME", str(work / "default.param"), "-CATALOG_TYPE", "FITS_LDAC",
             "-CATALOG_NAME", str(raw), "-FILTER", "N", "-DETECT_THRESH", "5", "-DETECT_MINAREA", "5",
             "-GAIN", str(gain), "-PIXEL_SCALE", "1.0", "-SATUR_LEVEL", "1e9", "-BACK_SIZE", "128",
             "-PHOT_APERTURES", "15", "-CHECKIMAGE_TYPE", "NONE", "-VERBOSE_TYPE", "QUIET"],
            check=True, capture_output=True, text=True,
        )
        with fits.open(raw) as hdus:
            objects = hdus[2].data
            dx = objects["XWIN_IMAGE"][:, None] - stars["x"][None, :]
            dy = objects["YWIN_IMAGE"][:, None] - stars["y"][None, :]
            distance = np.hypot(dx, dy)
            nearest = distance.min(axis=1)
            # Isolated stars only: a second true star within 12 px spoils the stamp.
            crowded = (distance < 12.0).sum(axis=1) > 1
            keep = (nearest < match_radius) & (objects["FLAGS"] == 0) & ~crowded
            out = fits.HDUList([hdus[0].copy(), hdus[1].copy(),
                                fits.BinTableHDU(objects[keep], header=hdus[2].header, name="LDAC_OBJECTS")])
            path = directory / f"{name}.fits"
            out.writeto(path, overwrite=True)
    return path
