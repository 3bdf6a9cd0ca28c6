"""Where each CCD lies in the focal plane, and per-CCD binned maps of star quantities.

A :class:`FocalPlane` maps CCD pixel positions to focal-plane coordinates
(degrees, East to the left when plotted with an inverted x axis):

- :meth:`FocalPlane.from_wcs`: from each CCD's WCS (the header store),
  projected about the exposure centre: works for any camera, any number and
  size of CCDs, rotated or flipped;
- :meth:`FocalPlane.megacam`: MegaCam's layout by CCD number (4 rows of 9
  CCDs of 2048 x 4612 pixels plus 4 "ears"; the upper half rotated by 180
  degrees), used when no header store is given;
- :meth:`FocalPlane.grid`: a plain grid of CCDs, for other cameras without WCS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEGACAM_SIZE = (2048, 4612)
MEGACAM_SCALE = 0.187 / 3600.0  # degrees per pixel
MEGACAM_GAP = 80  # pixels between CCDs, for display


def megacam_slot(ccd: int) -> tuple[int, int]:
    """(row from the top, column) of a MegaCam CCD on a 4 x 11 grid of slots.

    Rows 0-3 hold CCDs 0-8, 9-17, 18-26, 27-35 in columns 1-9; the ears
    36, 37 (row 1) and 38, 39 (row 2) sit in columns 0 and 10.
    """
    ears = {36: (1, 0), 37: (1, 10), 38: (2, 0), 39: (2, 10)}
    if ccd in ears:
        return ears[ccd]
    if not 0 <= ccd < 36:
        raise ValueError(f"MegaCam has CCDs 0-39, not {ccd}")
    return ccd // 9, ccd % 9 + 1


@dataclass
class CCDPlacement:
    """One CCD: its size and the map from pixels to focal-plane degrees."""

    nx: int
    ny: int
    transform: object  # callable (x, y) -> (u, v) in degrees

    def __call__(self, x, y):
        return self.transform(np.asarray(x, dtype=float), np.asarray(y, dtype=float))


class FocalPlane:
    """CCD number -> :class:`CCDPlacement`."""

    def __init__(self, placements: dict, source: str):
        self.placements = dict(placements)
        self.source = source

    def __contains__(self, ccd) -> bool:
        return int(ccd) in self.placements

    def __getitem__(self, ccd) -> CCDPlacement:
        return self.placements[int(ccd)]

    def ccds(self) -> list[int]:
        """CCD numbers, sorted."""
        return sorted(self.placements)

    @classmethod
    def from_wcs(cls, wcs_by_ccd: dict, sizes: dict) -> "FocalPlane":
        """Layout from CCD WCSs, in gnomonic coordinates about the mean CCD centre.

        Parameters
        ----------
        wcs_by_ccd : dict
            CCD number -> astropy WCS (one exposure).
        sizes : dict
            CCD number -> (nx, ny) in pixels.
        """
        centres = []
        for ccd, wcs in wcs_by_ccd.items():
            nx, ny = sizes[ccd]
            centres.append(wcs.all_pix2world([(nx + 1) / 2.0], [(ny + 1) / 2.0], 1))
        ra_c = np.array([c[0][0] for c in centres])
        dec_c = np.array([c[1][0] for c in centres])
        # Mean direction on the sphere (safe across RA = 0).
        vector = np.array([np.cos(np.radians(dec_c)) * np.cos(np.radians(ra_c)),
                           np.cos(np.radians(dec_c)) * np.sin(np.radians(ra_c)), np.sin(np.radians(dec_c))])
        mean = vector.mean(axis=1)
        ra0 = np.arctan2(mean[1], mean[0])
        dec0 = np.arctan2(mean[2], np.hypot(mean[0], mean[1]))

        def projector(wcs):
            def transform(x, y):
                ra, dec = wcs.all_pix2world(x, y, 1)
                ra, dec = np.radians(ra), np.radians(dec)
                denominator = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
                xi = np.cos(dec) * np.sin(ra - ra0) / denominator
                eta = (np.sin(dec) * np.cos(dec0) - np.cos(dec) * np.sin(dec0) * np.cos(ra - ra0)) / denominator
                return np.degrees(xi), np.degrees(eta)
            return transform

        placements = {int(ccd): CCDPlacement(*sizes[ccd], projector(wcs)) for ccd, wcs in wcs_by_ccd.items()}
        return cls(placements, "wcs")

    @classmethod
    def megacam(cls, ccds=range(40)) -> "FocalPlane":
        """MegaCam's layout (CCDs 0-39) without WCS."""
        nx, ny = MEGACAM_SIZE
        placements = {}
        for ccd in ccds:
            row, column = megacam_slot(int(ccd))
            left = (column - 5.5) * (nx + MEGACAM_GAP)
            bottom = (1 - row) * (ny + MEGACAM_GAP)
            rotated = row < 2  # upper half read out from the other side

            def transform(x, y, left=left, bottom=bottom, rotated=rotated):
                if rotated:
                    x, y = nx + 1 - x, ny + 1 - y
                # East to the left: focal-plane u decreases with x on the sky.
                return -(left + x) * MEGACAM_SCALE, (bottom + y) * MEGACAM_SCALE

            placements[int(ccd)] = CCDPlacement(nx, ny, transform)
        return cls(placements, "megacam")

    @classmethod
    def grid(cls, ccds, nx: int, ny: int, scale: float = MEGACAM_SCALE) -> "FocalPlane":
        """CCDs on a near-square grid, row by row from the top (no WCS, not MegaCam)."""
        ccds = sorted(int(c) for c in ccds)
        columns = max(int(np.ceil(np.sqrt(len(ccds) * ny / nx))), 1)
        placements = {}
        gap = 0.04 * max(nx, ny)
        for index, ccd in enumerate(ccds):
            row, column = divmod(index, columns)

            def transform(x, y, column=column, row=row):
                return -(column * (nx + gap) + x) * scale, (-row * (ny + gap) + y) * scale

            placements[ccd] = CCDPlacement(nx, ny, transform)
        return cls(placements, "grid")


def binned_maps(sample, focal_plane: FocalPlane, nbins=(5, 10)) -> dict:
    """Per-CCD binned means of star, model and residual quantities (vectorised).

    Stars are binned in their CCD's pixel coordinates (all exposures
    together), ``nbins = (x bins, y bins)`` per CCD.

    Returns
    -------
    dict
        ``{quantity: {ccd: ndarray (nbx, nby)}}`` for ``e1_star``,
        ``e1_psf``, ``e1_residual``, the same for ``e2`` and ``size``
        (``size_residual`` is relative, ``(T_star - T_model) / T_star``),
        and ``count``; empty bins are NaN (count 0).
    """
    nbx, nby = nbins
    ccds = focal_plane.ccds()
    slot = {ccd: index for index, ccd in enumerate(ccds)}
    known = np.array([c in slot for c in sample.ccd.tolist()], dtype=bool)
    ccd_index = np.array([slot.get(c, 0) for c in sample.ccd.tolist()], dtype=np.int64)
    nx = np.array([focal_plane[c].nx for c in ccds], dtype=float)
    ny = np.array([focal_plane[c].ny for c in ccds], dtype=float)
    bx = np.clip(((sample.x - 0.5) / nx[ccd_index] * nbx).astype(np.int64), 0, nbx - 1)
    by = np.clip(((sample.y - 0.5) / ny[ccd_index] * nby).astype(np.int64), 0, nby - 1)
    flat = ((ccd_index * nbx + bx) * nby + by)[known]
    length = len(ccds) * nbx * nby
    count = np.bincount(flat, minlength=length).astype(float)
    quantities = {
        "e1_star": sample.e1_star, "e1_psf": sample.e1_psf, "e1_residual": sample.de1,
        "e2_star": sample.e2_star, "e2_psf": sample.e2_psf, "e2_residual": sample.de2,
        "size_star": sample.size_star, "size_psf": sample.size_psf, "size_residual": sample.dsize,
    }
    maps = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, values in quantities.items():
            total = np.bincount(flat, weights=np.asarray(values, dtype=float)[known], minlength=length)
            mean = np.where(count > 0, total / count, np.nan).reshape(len(ccds), nbx, nby)
            maps[name] = {ccd: mean[slot[ccd]] for ccd in ccds}
    maps["count"] = {ccd: count.reshape(len(ccds), nbx, nby)[slot[ccd]] for ccd in ccds}
    return maps
