"""HEALPix (healsparse) maps of the mask and of the exposure coverage.

Mask map: an integer healsparse map (NEST, equatorial) whose value in a
HEALPix pixel is the bitwise OR of the flags of every image pixel whose
centre falls in it, so each mask plane keeps its own bit (the ``MP_*``
cards of the flag image, copied into the map's metadata). A position is
clear of a plane when ``map.get_values_pos(ra, dec) & bit == 0``; the OR
makes the map conservative: a HEALPix pixel that touches a masked image
pixel carries its bit. Outside the image the map holds its sentinel, -1,
which has every bit set: off the footprint counts as masked.

Coverage map: the number of exposures whose CCDs contain the centre of
each HEALPix pixel of the same footprint, from the CCD headers of the
header store (``merge_headers``).

Object columns: the flag of the image pixel holding each object, as
``MASK_FLAGS`` and one boolean ``MASK_<PLANE>`` column per plane.
"""

from __future__ import annotations

import numpy as np

#: Image rows per block of the pixel pass (bounds the memory: ~60 bytes per pixel of a block).
BLOCK_PIXELS = 2_000_000


def _or_reduce(pixels: np.ndarray, values: np.ndarray):
    """Unique ``pixels`` and the bitwise OR of the ``values`` of each."""
    order = np.argsort(pixels, kind="stable")
    pixels, values = pixels[order], values[order]
    unique, start = np.unique(pixels, return_index=True)
    if unique.size == 0:
        return unique.astype(np.int64), values[:0]
    return unique.astype(np.int64), np.bitwise_or.reduceat(values, start)


def flag_map_pixels(flag: np.ndarray, wcs, nside: int):
    """HEALPix pixels (NEST) of the image pixel centres and the OR of their flags.

    Parameters
    ----------
    flag : numpy.ndarray of int, shape (ny, nx)
    wcs : astropy.wcs.WCS
        Celestial WCS of the flag image.
    nside : int

    Returns
    -------
    pixels : numpy.ndarray of int64
        Sorted HEALPix pixels touched by the image.
    values : numpy.ndarray of int64
        Bitwise OR of the flags of the image pixels whose centres are in each.
    """
    import hpgeom

    ny, nx = flag.shape
    rows = max(1, BLOCK_PIXELS // max(nx, 1))
    columns = np.arange(nx, dtype=np.float64)
    parts_pixels, parts_values = [], []
    for row0 in range(0, ny, rows):
        row1 = min(ny, row0 + rows)
        grid_x, grid_y = np.meshgrid(columns, np.arange(row0, row1, dtype=np.float64))
        ra, dec = wcs.celestial.all_pix2world(grid_x.ravel(), grid_y.ravel(), 0)
        cells = hpgeom.angle_to_pixel(nside, ra, dec, nest=True, lonlat=True, degrees=True)
        unique, values = _or_reduce(cells, flag[row0:row1].ravel().astype(np.int64))
        parts_pixels.append(unique)
        parts_values.append(values)
    # A HEALPix pixel spans block boundaries: OR the blocks' partial results.
    return _or_reduce(np.concatenate(parts_pixels), np.concatenate(parts_values))


def coverage_counts(pixels: np.ndarray, nside: int, ccds) -> np.ndarray:
    """Number of exposures whose CCDs contain each HEALPix pixel centre.

    Parameters
    ----------
    pixels : numpy.ndarray of int64
        HEALPix pixels (NEST).
    nside : int
    ccds : iterable of (exposure, wcs, nx, ny)
        Every CCD of every exposure; a position is on a CCD when its 0-based
        pixel coordinates are within ``[-0.5, n - 0.5)``.

    Returns
    -------
    numpy.ndarray of int16
    """
    import hpgeom

    from shapepipe_modules.sextractor.multi_epoch import _footprint_filter, _unit_vectors

    ra, dec = hpgeom.pixel_to_angle(nside, pixels, nest=True, lonlat=True, degrees=True)
    positions = _unit_vectors(ra, dec)
    seen: dict[str, np.ndarray] = {}
    for exposure, wcs, nx, ny in ccds:
        box = (-0.5, nx - 0.5, -0.5, ny - 0.5)
        near = np.flatnonzero(_footprint_filter(wcs, box, positions))
        if near.size == 0:
            continue
        x, y = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
        with np.errstate(invalid="ignore"):
            on = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        mask = seen.setdefault(exposure, np.zeros(pixels.size, bool))
        mask[near[on]] = True
    count = np.zeros(pixels.size, np.int16)
    for mask in seen.values():
        count += mask
    return count


def store_ccds(store):
    """``(exposure, wcs, nx, ny)`` of every CCD of an open header store."""
    for exposure in store.exposures():
        for ccd in store.ccds(exposure):
            header = store.header(exposure, ccd)
            nx = int(header.get("ZNAXIS1", header.get("NAXIS1", 0)))
            ny = int(header.get("ZNAXIS2", header.get("NAXIS2", 0)))
            if nx <= 0 or ny <= 0:
                raise ValueError(f"header store {store.path}: exposure {exposure} CCD {ccd} has no NAXIS1/NAXIS2")
            yield exposure, store.wcs(exposure, ccd), nx, ny


def healsparse_int_map(pixels, values, nside: int, dtype, sentinel: int, nside_coverage: int = 32, metadata=None):
    """An integer HealSparseMap holding ``values`` at ``pixels`` (``sentinel`` elsewhere)."""
    import healsparse

    hsp = healsparse.HealSparseMap.make_empty(nside_coverage, nside, dtype=dtype, sentinel=sentinel,
                                              metadata=metadata)
    hsp[np.asarray(pixels, np.int64)] = np.asarray(values).astype(dtype)
    return hsp


def object_mask_columns(flag: np.ndarray, wcs, ra, dec, planes: dict) -> dict:
    """Mask columns of objects at (ra, dec): the flag of the image pixel holding each.

    Parameters
    ----------
    flag : numpy.ndarray of int, shape (ny, nx)
    wcs : astropy.wcs.WCS
    ra, dec : array-like
        Positions (deg).
    planes : dict
        ``{'MP_HALO': bits, ...}`` from the flag image's header.

    Returns
    -------
    dict
        ``MASK_FLAGS`` (int32; -1 for an object off the image) and
        ``MASK_<PLANE>`` (bool, plane name without ``MP_``) per plane.
    """
    ny, nx = flag.shape
    ra = np.asarray(ra, np.float64)
    dec = np.asarray(dec, np.float64)
    x, y = wcs.celestial.all_world2pix(ra, dec, 0, quiet=True)
    with np.errstate(invalid="ignore"):
        i = np.floor(np.asarray(x) + 0.5)
        j = np.floor(np.asarray(y) + 0.5)
        inside = np.isfinite(i) & np.isfinite(j) & (i >= 0) & (i < nx) & (j >= 0) & (j < ny)
    values = np.full(ra.size, -1, np.int32)
    values[inside] = flag[j[inside].astype(np.int64), i[inside].astype(np.int64)]
    columns = {"MASK_FLAGS": values}
    for name, bits in planes.items():
        columns["MASK_" + name.upper().removeprefix("MP_")] = (values >= 0) & ((values & int(bits)) != 0)
    return columns


#: Catalogue position columns tried in order (RA, Dec in degrees).
POSITION_COLUMNS = (("XWIN_WORLD", "YWIN_WORLD"), ("ALPHAWIN_J2000", "DELTAWIN_J2000"), ("X_WORLD", "Y_WORLD"),
                    ("ALPHA_J2000", "DELTA_J2000"), ("RA", "DEC"))


def position_columns(names) -> tuple[str, str] | None:
    """The first pair of :data:`POSITION_COLUMNS` present in ``names`` (case-insensitive), as spelt there."""
    lower = {name.lower(): name for name in names}
    for ra_name, dec_name in POSITION_COLUMNS:
        if ra_name.lower() in lower and dec_name.lower() in lower:
            return lower[ra_name.lower()], lower[dec_name.lower()]
    return None
