"""Focal plane, pointings and WCS of the simulated exposures and tiles.

Conventions
-----------
- Pixel coordinates are FITS 1-based: the centre of the first pixel is 1.0.
- Every CCD and tile is oriented north up, east left (``CD1_1 < 0``), so the
  pixel axes (x, y) are parallel to GalSim's world axes (u west, v north):
  ellipticities in the pixel frame equal those in GalSim's sky frame.
- Focal-plane coordinates (X, Y) are in pixels from the mosaic centre; CCD
  ``k`` maps its pixel (x, y) to ``(X0[k] + x - 1, Y0[k] + y - 1)``.
"""

from __future__ import annotations

import numpy as np

from shapepipe_modules import cfis

from . import streams

ARCSEC = 1.0 / 3600.0


class Mosaic:
    """Layout of the CCDs of the simulated camera.

    Parameters
    ----------
    params : dict
        Simulation parameters (``ccd_rows``, ``ccd_nx``, ``ccd_ny``,
        ``gap_x``, ``gap_y``, ``pixel_scale``).
    """

    def __init__(self, params):
        self.nx = int(params["ccd_nx"])
        self.ny = int(params["ccd_ny"])
        self.pixel_scale = float(params["pixel_scale"])
        rows = list(params["ccd_rows"])
        height = len(rows) * self.ny + (len(rows) - 1) * params["gap_y"]
        x0, y0 = [], []
        for row, n_ccd in enumerate(rows):
            width = n_ccd * self.nx + (n_ccd - 1) * params["gap_x"]
            bottom = -height / 2.0 + row * (self.ny + params["gap_y"])
            for column in range(n_ccd):
                left = -width / 2.0 + column * (self.nx + params["gap_x"])
                # Focal-plane coordinate of the centre of pixel (1, 1).
                x0.append(left + 0.5)
                y0.append(bottom + 0.5)
        self.x0 = np.array(x0)
        self.y0 = np.array(y0)
        self.n_ccd = len(x0)
        corners_x = np.concatenate([self.x0 - 0.5, self.x0 + self.nx - 0.5])
        corners_y = np.concatenate([self.y0 - 0.5, self.y0 + self.ny - 0.5])
        # Half extent used to normalise the focal-plane polynomials.
        self.half_extent = float(max(np.abs(corners_x).max(), np.abs(corners_y).max()))
        self.corner_radius = float(np.hypot(np.abs(corners_x).max(), np.abs(corners_y).max()))

    def focal_plane(self, ccd, x, y):
        """Focal-plane pixel coordinates of CCD pixel positions (vectorised)."""
        ccd = np.asarray(ccd, dtype=int)
        return self.x0[ccd] + np.asarray(x, float) - 1.0, self.y0[ccd] + np.asarray(y, float) - 1.0

    def as_dict(self):
        """JSON-ready description (for psf.json)."""
        return {
            "ccd_nx": self.nx,
            "ccd_ny": self.ny,
            "pixel_scale": self.pixel_scale,
            "x0": self.x0.tolist(),
            "y0": self.y0.tolist(),
            "half_extent": self.half_extent,
        }


def distortion_coefficient(params, mosaic: Mosaic) -> float:
    """Cubic radial distortion ``k`` (deg^-2): ``xi' = xi (1 + k r^2)``.

    Chosen so that the displacement 0.5 degree from the pointing is
    ``distortion_arcsec`` (MegaCam-like scale, whatever the mosaic size; the
    local shear of the WCS is ``~3 k r^2``, 3e-3 at 0.5 deg for 1 arcsec);
    zero when ``distortion`` is ``none``.
    """
    del mosaic  # the distortion is a property of the optics, not of the CCD layout
    if params["distortion"] == "none":
        return 0.0
    return params["distortion_arcsec"] * ARCSEC / 0.5**3


def ccd_wcs_cards(params, mosaic: Mosaic, ccd: int, ra0: float, dec0: float) -> list:
    """WCS header cards of one CCD of an exposure pointed at (ra0, dec0).

    All CCDs share the tangent point (the pointing); ``CRPIX`` places the
    CCD in the focal plane, as MegaCam headers do. The distortion is written
    as TPV (``PVi_j``, read by SExtractor, astropy and GalSim) or SIP.
    """
    scale = mosaic.pixel_scale * ARCSEC
    k = distortion_coefficient(params, mosaic)
    kind = params["distortion"]
    ctype = {"none": ("RA---TAN", "DEC--TAN"), "tpv": ("RA---TPV", "DEC--TPV"), "sip": ("RA---TAN-SIP", "DEC--TAN-SIP")}[kind]
    cards = [
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", ctype[0], "projection"),
        ("CTYPE2", ctype[1], "projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRVAL1", float(ra0), "pointing RA, deg"),
        ("CRVAL2", float(dec0), "pointing Dec, deg"),
        ("CRPIX1", float(1.0 - mosaic.x0[ccd]), "tangent point, CCD pixels"),
        ("CRPIX2", float(1.0 - mosaic.y0[ccd]), "tangent point, CCD pixels"),
        ("CD1_1", -scale, "deg/pixel"),
        ("CD1_2", 0.0, ""),
        ("CD2_1", 0.0, ""),
        ("CD2_2", scale, "deg/pixel"),
        ("EQUINOX", 2000.0, ""),
        ("RADESYS", "ICRS", ""),
    ]
    if kind == "tpv":
        for axis in (1, 2):
            terms = {0: 0.0, 1: 1.0, 2: 0.0, 4: 0.0, 5: 0.0, 6: 0.0, 7: k, 8: 0.0, 9: k, 10: 0.0}
            cards += [(f"PV{axis}_{term}", value, "TPV distortion") for term, value in terms.items()]
    elif kind == "sip":
        k_pix = k * scale**2
        cards += [("A_ORDER", 3, "SIP order"), ("B_ORDER", 3, "SIP order")]
        cards += [("A_3_0", k_pix, ""), ("A_1_2", k_pix, ""), ("B_0_3", k_pix, ""), ("B_2_1", k_pix, "")]
        cards += [("AP_ORDER", 3, ""), ("BP_ORDER", 3, "")]
        cards += [("AP_3_0", -k_pix, ""), ("AP_1_2", -k_pix, ""), ("BP_0_3", -k_pix, ""), ("BP_2_1", -k_pix, "")]
    return cards


def tile_wcs_cards(params, xxx: int, yyy: int) -> list:
    """TAN WCS cards of a (possibly reduced) tile centred on the CFIS tile centre."""
    ra0, dec0 = cfis.tile_centre(xxx, yyy)
    scale = params["pixel_scale"] * ARCSEC
    centre = (params["tile_size"] + 1) / 2.0
    return [
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", "RA---TAN", "projection"),
        ("CTYPE2", "DEC--TAN", "projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRVAL1", float(ra0), "CFIS tile centre RA, deg"),
        ("CRVAL2", float(dec0), "CFIS tile centre Dec, deg"),
        ("CRPIX1", float(centre), ""),
        ("CRPIX2", float(centre), ""),
        ("CD1_1", -scale, "deg/pixel"),
        ("CD1_2", 0.0, ""),
        ("CD2_1", 0.0, ""),
        ("CD2_2", scale, "deg/pixel"),
        ("EQUINOX", 2000.0, ""),
        ("RADESYS", "ICRS", ""),
    ]


def make_wcs(cards):
    """astropy WCS from a list of header cards."""
    from astropy.io import fits
    from astropy.wcs import WCS

    header = fits.Header()
    for key, value, comment in cards:
        header[key] = (value, comment)
    return WCS(header)


def world_to_pixel(wcs, ra, dec):
    """FITS (1-based) pixel coordinates of sky positions, with distortion."""
    ra = np.atleast_1d(np.asarray(ra, float))
    dec = np.atleast_1d(np.asarray(dec, float))
    if ra.size == 0:
        return np.zeros(0), np.zeros(0)
    if wcs.sip is not None:
        x, y = wcs.all_world2pix(ra, dec, 1, tolerance=1e-10, maxiter=50, quiet=True)
    else:
        x, y = wcs.wcs_world2pix(ra, dec, 1)
    return np.asarray(x, float), np.asarray(y, float)


def pixel_to_world(wcs, x, y):
    """Sky coordinates (deg) of FITS (1-based) pixel positions, with distortion."""
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 1)
    return np.asarray(ra, float), np.asarray(dec, float)


def local_jacobians(wcs, x, y):
    """Local Jacobians d(u, v)/d(x, y) in arcsec/pixel at pixel positions.

    ``u`` points west and ``v`` north (GalSim's sky frame); returns an array
    of shape (n, 4): ``dudx, dudy, dvdx, dvdy``.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    h = 0.5
    ra, dec = pixel_to_world(wcs, np.concatenate([x + h, x - h, x, x]), np.concatenate([y, y, y + h, y - h]))
    n = x.size
    ra = ra.reshape(4, n)
    dec = dec.reshape(4, n)
    cos_dec = np.cos(np.radians(dec.mean(axis=0)))
    dra = lambda a, b: (np.mod(ra[a] - ra[b] + 180.0, 360.0) - 180.0)  # noqa: E731
    dudx = -dra(0, 1) * cos_dec * 3600.0 / (2 * h)
    dvdx = (dec[0] - dec[1]) * 3600.0 / (2 * h)
    dudy = -dra(2, 3) * cos_dec * 3600.0 / (2 * h)
    dvdy = (dec[2] - dec[3]) * 3600.0 / (2 * h)
    return np.stack([dudx, dudy, dvdx, dvdy], axis=1)


def exposure_pointings(params, seed: int):
    """Exposure numbers and pointings (ra, dec) dithered around each tile centre.

    Returns
    -------
    list of dict
        ``{"exposure": int, "tile": "XXX.YYY", "ra": float, "dec": float, "index": int}``.
    """
    pattern = np.array([[0.0, 0.0], [1.0, 0.6], [-0.6, 1.0], [-1.0, -0.6], [0.6, -1.0], [0.3, 0.3], [-0.3, 0.5], [0.5, -0.3]])
    pointings = []
    number = params["first_exposure"]
    for tile_index, tile in enumerate(params["tiles"]):
        ra_c, dec_c = cfis.tile_centre(*cfis.parse_tile_id(tile))
        for j in range(params["exposures_per_tile"]):
            rng = streams.stream(seed, streams.POINTING, number)
            offset = pattern[j % len(pattern)] + rng.uniform(-0.2, 0.2, size=2)
            dx, dy = offset * params["dither_arcsec"]
            ra = (ra_c - dx * ARCSEC / np.cos(np.radians(dec_c))) % 360.0
            dec = dec_c + dy * ARCSEC
            pointings.append({"exposure": int(number), "tile": tile, "ra": float(ra), "dec": float(dec), "index": len(pointings)})
            number += 1
    return pointings


def ccd_boundary(mosaic: Mosaic, n_per_edge: int = 16):
    """Pixel positions along the edge of a CCD (x, y arrays)."""
    xs = np.linspace(0.5, mosaic.nx + 0.5, n_per_edge)
    ys = np.linspace(0.5, mosaic.ny + 0.5, n_per_edge)
    x = np.concatenate([xs, xs, np.full(n_per_edge, 0.5), np.full(n_per_edge, mosaic.nx + 0.5)])
    y = np.concatenate([np.full(n_per_edge, 0.5), np.full(n_per_edge, mosaic.ny + 0.5), ys, ys])
    return x, y


def ccd_tile_overlap(ccd_wcs, tile_wcs, mosaic: Mosaic, tile_size: int) -> bool:
    """Whether a CCD overlaps the pixel area of a tile.

    The CCD edge is projected onto the tile pixel grid; the bounding box of
    the projection (a near-rectangle: no rotation, small distortion) is
    compared with the tile bounds.
    """
    x, y = ccd_boundary(mosaic)
    ra, dec = pixel_to_world(ccd_wcs, x, y)
    tx, ty = world_to_pixel(tile_wcs, ra, dec)
    return bool(tx.max() > 0.5 and tx.min() < tile_size + 0.5 and ty.max() > 0.5 and ty.min() < tile_size + 0.5)
