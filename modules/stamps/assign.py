"""Tile assignment of targets: by the CFIS tile rule, or by the run's actual tile footprints.

``cfis``
    The tile whose centre is nearest (:func:`shapepipe_modules.cfis.nearest_tile`,
    the project's tile rule); a target whose tile is not among the run's
    tiles is outside every tile. Right for CFIS tiles, which cover their
    0.5 x 0.5 degree cell.
``footprint``
    The run's tile images, through their WCS: a target is on a tile when its
    FITS position satisfies ``0.5 <= x < NAXIS1 + 0.5`` (same for y), the
    range where the stamp's central pixel is a pixel of the image. On
    overlapping tiles, the tile where it lies farthest from the nearest edge
    wins (the multi-epoch bookkeeping's rule for CCDs). Right for any
    tiling, including the simulator's tiles, which are smaller than their
    cell.
"""

from __future__ import annotations

import numpy as np

from shapepipe_modules.cfis import nearest_tile, tile_id

from .extract import StampWCS, read_image_header, world_to_pixel

RULES = ("footprint", "cfis")
OUTSIDE = "outside every tile of the run"


def assign_cfis(ra, dec, run_tiles=None) -> np.ndarray:
    """Tile ids by the CFIS rule; '' where the tile is not in ``run_tiles`` (when given)."""
    xxx, yyy = nearest_tile(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
    tiles = np.array([tile_id(a, b) for a, b in zip(np.atleast_1d(xxx).tolist(), np.atleast_1d(yyy).tolist())],
                     dtype=object)
    if run_tiles is not None:
        known = set(run_tiles)
        tiles[[t not in known for t in tiles]] = ""
    return tiles


def _unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def assign_footprint(ra, dec, tile_headers: dict) -> np.ndarray:
    """Tile ids from the tile images' WCS; '' off every tile.

    Parameters
    ----------
    ra, dec : arrays (degrees)
    tile_headers : dict
        Tile id -> header of its image (first band).
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    best = np.full(ra.size, -np.inf)
    tiles = np.full(ra.size, "", dtype=object)
    vectors = _unit(ra, dec)
    for tile in sorted(tile_headers):
        header = tile_headers[tile]
        nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
        wcs = StampWCS(header).wcs
        # Cheap cut first: within the circle through the image corners (plus slack).
        corner_ra, corner_dec = wcs.all_pix2world([0.5, nx + 0.5, nx + 0.5, 0.5, (nx + 1) / 2],
                                                  [0.5, 0.5, ny + 0.5, ny + 0.5, (ny + 1) / 2], 1)
        corners = _unit(np.asarray(corner_ra), np.asarray(corner_dec))
        radius = np.max(np.arccos(np.clip(corners[:4] @ corners[4], -1, 1)))
        near = np.flatnonzero(vectors @ corners[4] >= np.cos(min(1.05 * radius + 1e-6, np.pi)))
        if near.size == 0:
            continue
        x, y = world_to_pixel(wcs, ra[near], dec[near])
        with np.errstate(invalid="ignore"):
            margin = np.minimum.reduce([x - 0.5, nx + 0.5 - x, y - 0.5, ny + 0.5 - y])
            better = np.isfinite(margin) & (margin > 0) & (margin > best[near])
        chosen = near[better]
        tiles[chosen] = tile
        best[chosen] = margin[better]
    return tiles


def assign_tiles(ra, dec, layout, rule: str = "footprint") -> tuple[np.ndarray, list[str]]:
    """Tile of each target with the chosen rule, and the run's tiles.

    Returns
    -------
    tiles : ndarray of str
        Tile id per target; '' outside every tile of the run.
    run_tiles : list of str
    """
    if rule not in RULES:
        raise ValueError(f"TILE_RULE must be one of {', '.join(RULES)}, got {rule!r}")
    run_tiles = layout.tiles()
    if rule == "cfis":
        return assign_cfis(ra, dec, run_tiles), run_tiles
    headers = {}
    for tile in run_tiles:
        headers[tile] = read_image_header(layout.tile_file(layout.bands[0], "image", tile))
    return assign_footprint(ra, dec, headers), run_tiles


def batches_of(tiles, batch_size: int) -> np.ndarray:
    """Batch number of each target: the run's tiles holding targets, sorted, ``batch_size`` per batch.

    Targets outside every tile get -1.
    """
    tiles = np.asarray(tiles, dtype=object)
    used = sorted({t for t in tiles.tolist() if t})
    number = {tile: index // max(int(batch_size), 1) for index, tile in enumerate(used)}
    return np.array([number.get(t, -1) for t in tiles.tolist()], dtype=np.int64)
