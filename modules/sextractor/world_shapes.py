"""Second moments and ellipses in world coordinates, as SExtractor defines them.

The image moments ``(x2, y2, xy)`` (pixel^2) go through the local Jacobian
of the WCS at the object, taken with one-pixel forward differences and the
longitude difference multiplied by ``cos(latitude)`` (so both world axes
are in degrees on the sky):

``lm0 = d lng/dx``, ``lm1 = d lng/dy``, ``lm2 = d lat/dx``, ``lm3 = d lat/dy``,

and, following SExtractor 2.x term by term (its ``X2_WORLD`` carries the
cross term once, not twice),

- ``X2_WORLD = lm0^2 x2 + lm1^2 y2 + lm0 lm1 xy``
- ``Y2_WORLD = lm2^2 x2 + lm3^2 y2 + lm2 lm3 xy``
- ``XY_WORLD = lm0 lm2 x2 + lm1 lm3 y2 + (lm0 lm3 + lm1 lm2) xy``.

``A_WORLD``, ``B_WORLD`` are the square roots of the eigenvalues of that
matrix; ``THETA_WORLD`` is its position angle from the world x axis
(counter-clockwise, folded to [-90, 90)); ``THETA_SKY`` is measured from
north through east (``+-90 - THETA_WORLD`` when longitude is the first
world axis); ``THETA_J2000`` equals ``THETA_SKY`` for images whose WCS is
in J2000/ICRS (the only frame this engine accepts for it).
"""

from __future__ import annotations

import numpy as np


def fold_m90_p90(angle):
    """Angles (deg) folded into [-90, 90)."""
    return (np.asarray(angle, float) + 90.0) % 180.0 - 90.0


def local_jacobian(wcs, x, y):
    """``(lm0, lm1, lm2, lm3)`` at FITS (1-based) pixel positions ``x, y``."""
    lng, lat = (wcs.wcs.lng, wcs.wcs.lat) if wcs.wcs.lng >= 0 else (0, 1)

    def world(px, py):
        out = wcs.all_pix2world(px, py, 1)
        return out[lng], out[lat]

    lng0, lat0 = world(x, y)
    lng_x, lat_x = world(x + 1.0, y)
    lng_y, lat_y = world(x, y + 1.0)
    cos_lat = np.cos(np.radians(lat0))
    lm0 = ((lng_x - lng0 + 180.0) % 360.0 - 180.0) * cos_lat
    lm1 = ((lng_y - lng0 + 180.0) % 360.0 - 180.0) * cos_lat
    lm2 = lat_x - lat0
    lm3 = lat_y - lat0
    return lm0, lm1, lm2, lm3


def world_moments(x2, y2, xy, jacobian):
    """``(X2_WORLD, Y2_WORLD, XY_WORLD)`` in deg^2 from image moments and the local Jacobian."""
    lm0, lm1, lm2, lm3 = jacobian
    xm2 = lm0 * lm0 * x2 + lm1 * lm1 * y2 + lm0 * lm1 * xy
    ym2 = lm2 * lm2 * x2 + lm3 * lm3 * y2 + lm2 * lm3 * xy
    xym = lm0 * lm2 * x2 + lm1 * lm3 * y2 + (lm0 * lm3 + lm1 * lm2) * xy
    return xm2, ym2, xym


def world_ellipse(xm2, ym2, xym, longitude_first: bool = True):
    """``(A_WORLD, B_WORLD, THETA_WORLD, THETA_SKY)`` from world moments (deg, deg, deg, deg).

    ``longitude_first``: the longitude is the first world axis (RA---TAN, DEC--TAN).
    """
    xm2, ym2, xym = (np.asarray(v, float) for v in (xm2, ym2, xym))
    diff = xm2 - ym2
    with np.errstate(invalid="ignore"):
        theta_world = fold_m90_p90(np.where(diff == 0.0, 45.0, np.degrees(0.5 * np.arctan2(2.0 * xym, diff))))
        half = np.sqrt(0.25 * diff * diff + xym * xym)
        mean = 0.5 * (xm2 + ym2)
        a = np.sqrt(mean + half)
        b = np.sqrt(np.maximum(mean - half, 0.0))
    if longitude_first:
        theta_sky = fold_m90_p90(np.where(theta_world > 0.0, 90.0, -90.0) - theta_world)
    else:
        theta_sky = theta_world
    return a, b, theta_world, theta_sky


def is_j2000(header) -> bool:
    """Whether the WCS of a header is equatorial J2000 or ICRS (THETA_J2000 = THETA_SKY)."""
    system = str(header.get("RADESYS", header.get("RADECSYS", ""))).strip().upper()
    equinox = header.get("EQUINOX", header.get("EPOCH"))
    if system == "ICRS":
        return True
    if system in ("FK4", "FK4-NO-E", "GAPPT"):
        return False
    return equinox is None or abs(float(equinox) - 2000.0) < 1e-6
