"""A synthetic exposure: CCDs on a grid, stars drawn with a PSF varying over the whole focal plane.

The truth is :class:`shapepipe_modules.psfex.synthetic.SmoothPSFField` over
the mosaic (a quadratic in focal-plane position of the FWHM and the
distortion), so each CCD sees a piece of one smooth variation. Stamps are
drawn directly (no detection), for tests and the benchmark of the
focal-plane model against per-CCD models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..psfex.model import StarSample
from ..psfex.synthetic import SmoothPSFField


@dataclass
class Mosaic:
    """CCDs of ``ccd_nx`` x ``ccd_ny`` pixels on a ``columns`` x ``rows`` grid, no gaps."""

    columns: int = 4
    rows: int = 2
    ccd_nx: int = 256
    ccd_ny: int = 512

    @property
    def ccds(self) -> list:
        return list(range(self.columns * self.rows))

    def origin(self, ccd: int):
        return (ccd % self.columns) * self.ccd_nx, (ccd // self.columns) * self.ccd_ny

    def to_focal(self, ccd: int):
        """``(x, y) -> (X, Y)``: mosaic pixel position of CCD pixel positions."""
        x0, y0 = self.origin(ccd)
        return lambda x, y: (np.asarray(x, float) + x0, np.asarray(y, float) + y0)

    def field(self, rng) -> SmoothPSFField:
        return SmoothPSFField.random(rng, nx=self.columns * self.ccd_nx, ny=self.rows * self.ccd_ny)


def draw_stars(field: SmoothPSFField, mosaic: Mosaic, ccd: int, rng, n_stars: int, size: int = 31,
               noise: float = 5.0, flux_range=(5e3, 2e5)) -> StarSample:
    """Noisy stamps of ``n_stars`` stars on one CCD (background subtracted, Gaussian noise)."""
    margin = size // 2 + 2
    x = rng.uniform(margin, mosaic.ccd_nx - margin, n_stars)
    y = rng.uniform(margin, mosaic.ccd_ny - margin, n_stars)
    flux = np.exp(rng.uniform(*np.log(flux_range), n_stars))
    fx, fy = mosaic.to_focal(ccd)(x, y)
    offset_x, offset_y = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
    stamps = np.stack([f * field.image(X, Y, size=size, offset=(ox, oy))
                       for f, X, Y, ox, oy in zip(flux, fx, fy, offset_x, offset_y)])
    stamps += rng.normal(0.0, noise, stamps.shape)
    ones = np.ones(n_stars)
    return StarSample(stamps=stamps, valid=np.ones_like(stamps, dtype=bool), centre_x=x, centre_y=y,
                      context_x=x, context_y=y, offset_x=offset_x, offset_y=offset_y, flux=stamps.sum(axis=(1, 2)),
                      noise=noise * ones, gain=0.0, usable=np.ones(n_stars, dtype=bool))


def shape_residuals(model, field: SmoothPSFField, mosaic: Mosaic, ccd: int, grid=(3, 5), size: int = 31) -> dict:
    """Model minus truth on a grid over the CCD (HSM adaptive moments): size (relative) and e1, e2."""
    import galsim

    xs = np.linspace(1, mosaic.ccd_nx, grid[0])
    ys = np.linspace(1, mosaic.ccd_ny, grid[1])
    d_size, d_e1, d_e2 = [], [], []
    to_focal = mosaic.to_focal(ccd)
    for x in xs:
        for y in ys:
            X, Y = to_focal(x, y)
            truth = field.image(float(X), float(Y), size=size)
            stamp = model.evaluate(x, y, size=size)[0]
            m_t = galsim.hsm.FindAdaptiveMom(galsim.ImageD(truth))
            m_m = galsim.hsm.FindAdaptiveMom(galsim.ImageD(np.asarray(stamp, float)))
            d_size.append(m_m.moments_sigma / m_t.moments_sigma - 1.0)
            d_e1.append(m_m.observed_shape.e1 - m_t.observed_shape.e1)
            d_e2.append(m_m.observed_shape.e2 - m_t.observed_shape.e2)
    d_size, d_e1, d_e2 = map(np.asarray, (d_size, d_e1, d_e2))
    return {"size_mean": float(d_size.mean()), "size_rms": float(np.sqrt(np.mean(d_size**2))),
            "e_rms": float(np.sqrt(np.mean(d_e1**2 + d_e2**2) / 2)),
            "e_max": float(np.max(np.hypot(d_e1, d_e2)))}
