"""Random points uniform over the unmasked pixels of a flag image.

A pixel is unmasked where the flag is 0. Points are drawn by rejection:
uniform positions over the whole image, kept where their pixel is unmasked,
so the density is uniform over the unmasked area (and zero elsewhere)
without listing the unmasked pixels (a tile has 10^8).

Pixel coordinates follow FITS: pixel ``(i, j)`` (0-based row ``j``, column
``i``) covers ``x`` in ``[i + 0.5, i + 1.5)``, ``y`` likewise, with centres
at integers from 1.
"""

from __future__ import annotations

import re

import numpy as np

#: Points drawn per rejection round (memory bound, not a result parameter).
BATCH = 1_000_000


def pixel_area_deg2(wcs) -> float:
    """Area of one pixel (deg^2) at the reference point of a celestial WCS."""
    from astropy.wcs.utils import proj_plane_pixel_area

    return float(proj_plane_pixel_area(wcs.celestial))


def number_of_points(n_random: float, density: bool, unmasked_pixels: int, pixel_area: float) -> int:
    """Points to draw: ``n_random`` itself, or ``n_random`` per deg^2 of unmasked area."""
    if density:
        return int(round(n_random * unmasked_pixels * pixel_area))
    return int(round(n_random))


def draw_points(unmasked: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform over the unmasked pixels.

    Parameters
    ----------
    unmasked : numpy.ndarray of bool, shape (ny, nx)
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    x, y : numpy.ndarray
        FITS (1-based) pixel coordinates.

    Raises
    ------
    ValueError
        If points are asked for and no pixel is unmasked.
    """
    ny, nx = unmasked.shape
    if n <= 0:
        return np.empty(0), np.empty(0)
    fraction = np.count_nonzero(unmasked) / unmasked.size
    if fraction == 0:
        raise ValueError(f"{n} random points asked for but every pixel is masked")
    xs, ys, found = [], [], 0
    while found < n:
        size = int(min(BATCH, max(1024, 1.2 * (n - found) / fraction)))
        x0 = rng.uniform(-0.5, nx - 0.5, size)
        y0 = rng.uniform(-0.5, ny - 0.5, size)
        # Pixel of each point; the upper edge nx - 0.5 is excluded by uniform(), the clip is for rounding.
        i = np.clip(np.floor(x0 + 0.5).astype(np.int64), 0, nx - 1)
        j = np.clip(np.floor(y0 + 0.5).astype(np.int64), 0, ny - 1)
        keep = unmasked[j, i]
        xs.append(x0[keep])
        ys.append(y0[keep])
        found += int(np.count_nonzero(keep))
    x = np.concatenate(xs)[:n] + 1.0
    y = np.concatenate(ys)[:n] + 1.0
    return x, y


def tile_id(number: str) -> float | None:
    """ShapePipe's numeric tile ID (``-244-252`` -> 244.252); None if the number is no tile number."""
    match = re.search(r"(\d{3})\D(\d{3})(?!\d)", number)
    return float(f"{match.group(1)}.{match.group(2)}") if match else None


def healpix_fraction(unmasked: np.ndarray, wcs, nside: int, samples_per_side: int = 8):
    """Unmasked fraction of the image in each HEALPix pixel (NEST), from a sub-grid of pixel centres.

    The image is sampled every ``step`` pixels, ``step`` chosen so that a
    HEALPix pixel holds about ``samples_per_side**2`` samples.

    Returns
    -------
    pixels : numpy.ndarray of int64
        HEALPix pixel indices (NEST) touched by the image.
    fraction : numpy.ndarray of float
        Unmasked fraction of the image samples in each of them.
    """
    import hpgeom

    ny, nx = unmasked.shape
    side_deg = float(hpgeom.nside_to_resolution(nside, units="degrees"))
    pixel_deg = float(np.sqrt(pixel_area_deg2(wcs)))
    step = max(1, int(side_deg / pixel_deg / samples_per_side))
    rows = np.arange(step // 2, ny, step)
    cols = np.arange(step // 2, nx, step)
    grid_x, grid_y = np.meshgrid(cols, rows)
    ra, dec = wcs.celestial.all_pix2world(grid_x.ravel(), grid_y.ravel(), 0)
    pixels = hpgeom.angle_to_pixel(nside, ra, dec, nest=True, lonlat=True, degrees=True)
    good = unmasked[grid_y.ravel(), grid_x.ravel()]
    unique, inverse = np.unique(pixels, return_inverse=True)
    total = np.bincount(inverse, minlength=unique.size)
    clear = np.bincount(inverse, weights=good.astype(float), minlength=unique.size)
    return unique.astype(np.int64), clear / total


def healsparse_map(pixels: np.ndarray, values: np.ndarray, nside: int, nside_coverage: int = 32):
    """A float64 HealSparseMap holding ``values`` at ``pixels`` (NEST)."""
    import healsparse

    hsp = healsparse.HealSparseMap.make_empty(nside_coverage, nside, dtype=np.float64)
    hsp[pixels] = values
    return hsp
