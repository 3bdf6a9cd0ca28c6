"""The final catalogue of a campaign: tile catalogues joined, duplicates across tile overlaps removed.

ShapePipe's ``create_final_cat`` joins the ``final_cat`` files of every
``tile_runs/ID`` (newest ``run_sp_Mc_*``); its ``make_cat`` (``TILE_LIST``)
flags with ``FLAG_TILING`` the objects of a tile that lie in a neighbour's
footprint and closer to the neighbour's centre. Here the rule is the same
(each object is kept from the tile whose centre it is closest to), applied
to the detections themselves: detections of different tiles within
``match_radius`` of each other are one object, and only the detection(s) of
the tile whose centre is nearest are kept. An object seen by only one tile
is always kept (ShapePipe's per-tile flag drops it when it lies nearer a
neighbour's centre, even if the neighbour failed or missed it).

Functions: :func:`tile_catalogues` (newest final catalogue of each tile),
:func:`duplicate_groups`, :func:`combine` (the kept rows and the counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cfis import parse_tile_id, tile_centre
from ._common import ToolError


def newest_output(output_dir, module_run: str, file_name: str) -> Path | None:
    """``file_name`` in the output of ``module_run`` of the newest finished run under ``output_dir`` having it."""
    found = []
    for record_path in Path(output_dir).glob("*/run.json"):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        modules = record.get("modules", [])
        modules = modules.values() if isinstance(modules, dict) else modules
        for entry in modules:
            if not isinstance(entry, dict) or entry.get("module_run") != module_run:
                continue
            path = Path(entry.get("output_dir", "")) / file_name
            if path.is_file() and entry.get("outputs_deleted") is None:
                found.append((record.get("started", ""), path))
    return max(found)[1] if found else None


def tile_catalogues(root, tiles, module_run="make_catalog", prefix="final_cat") -> tuple[dict, list]:
    """``{tile: path}`` of the newest final catalogue of each tile, and the tiles without one."""
    from .campaign_run import tile_folder

    paths, missing = {}, []
    for tile in tiles:
        name = f"{prefix}-{tile.replace('.', '-')}.fits"
        path = newest_output(tile_folder(root, tile) / "output", module_run, name)
        if path is None:
            missing.append(tile)
        else:
            paths[tile] = path
    return paths, missing


def angular_distance(ra, dec, ra0, dec0):
    """Great-circle distance (deg) of points from a centre (haversine, stable at small angles)."""
    ra, dec, ra0, dec0 = map(np.radians, (ra, dec, ra0, dec0))
    a = np.sin((dec - dec0) / 2) ** 2 + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def duplicate_groups(ra, dec, tile_index, match_radius_arcsec):
    """Groups (arrays of row indices) of detections of different tiles within the radius of one another.

    Pairs of the same tile are not linked (two objects of one tile are two
    objects); groups are the connected components of the cross-tile pairs.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    if ra.size == 0:
        return []
    coords = SkyCoord(ra * u.deg, dec * u.deg)
    first, second, _, _ = search_around_sky(coords, coords, match_radius_arcsec * u.arcsec)
    cross = tile_index[first] != tile_index[second]
    first, second = first[cross], second[cross]
    parent = np.arange(ra.size)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(first, second):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members = {}
    for i in np.unique(np.concatenate([first, second])):
        members.setdefault(root(i), []).append(i)
    return [np.array(sorted(group)) for group in members.values()]


def combine(tables: dict, ra_column="XWIN_WORLD", dec_column="YWIN_WORLD", match_radius_arcsec=1.0):
    """Join tile tables and keep each object from the tile whose centre is nearest.

    Parameters
    ----------
    tables : dict
        ``{tile 'XXX.YYY': astropy Table}``.
    ra_column, dec_column : str
        Object positions (deg).
    match_radius_arcsec : float
        Detections of two tiles closer than this are one object.

    Returns
    -------
    joined : astropy.table.Table
        Every row, with ``TILE`` (the tile ID), ``TILE_DIST`` (deg from its
        tile centre) and ``KEEP`` (False for the duplicates removed).
    counts : dict
        ``rows``, ``kept``, ``removed``, ``groups`` and per tile ``{tile: [rows, kept]}``.

    Raises
    ------
    ToolError
        If a table lacks a position column.
    """
    from astropy.table import Table, vstack
    from astropy.table.operations import TableMergeError

    parts = []
    for tile, table in tables.items():
        for column in (ra_column, dec_column):
            if column not in table.colnames:
                raise ToolError(f"tile {tile}: final catalogue has no column {column!r} "
                                f"(columns: {', '.join(table.colnames[:12])} ...)")
        part = Table(table, copy=True)
        ra0, dec0 = tile_centre(*parse_tile_id(tile))
        part["TILE"] = np.full(len(part), tile)
        part["TILE_DIST"] = angular_distance(np.asarray(part[ra_column], float), np.asarray(part[dec_column], float),
                                             ra0, dec0)
        parts.append(part)
    try:
        joined = vstack(parts, join_type="exact", metadata_conflicts="silent") if parts else Table()
    except TableMergeError as error:
        names = {tile: set(part.colnames) for tile, part in zip(tables, parts)}
        common = set.intersection(*names.values())
        differing = {tile: sorted(n - common)[:5] for tile, n in names.items() if n - common}
        raise ToolError(f"tile catalogues differ in their columns ({error}); columns not in every tile: {differing} "
                        "(select common columns with -p)") from None
    n = len(joined)
    keep = np.ones(n, dtype=bool)
    groups = []
    if n:
        tiles = np.asarray(joined["TILE"]).astype(str)
        _, tile_index = np.unique(tiles, return_inverse=True)
        groups = duplicate_groups(np.asarray(joined[ra_column], float), np.asarray(joined[dec_column], float),
                                  tile_index, match_radius_arcsec)
        distance = np.asarray(joined["TILE_DIST"])
        for group in groups:
            winner = tile_index[group[np.argmin(distance[group])]]
            keep[group[tile_index[group] != winner]] = False
    joined["KEEP"] = keep
    per_tile = {tile: [int(np.sum(joined["TILE"] == tile)), int(np.sum(keep & (joined["TILE"] == tile)))]
                for tile in tables}
    counts = {"rows": n, "kept": int(keep.sum()), "removed": int(n - keep.sum()), "groups": len(groups),
              "tiles": per_tile}
    return joined, counts


def create_final_catalogue(root, tiles, output, columns=None, module_run="make_catalog", prefix="final_cat",
                           ra_column="XWIN_WORLD", dec_column="YWIN_WORLD", match_radius_arcsec=1.0,
                           keep_duplicates=False) -> dict:
    """Write the campaign's final catalogue (FITS, HDU ``RESULTS``); return the counts and the missing tiles.

    ``keep_duplicates`` writes every row with the ``KEEP`` column instead of
    dropping the duplicates. ``columns`` selects columns (``TILE`` and
    ``KEEP`` are always written).
    """
    from ..io.tables import read_fits_table, write_fits_table

    paths, missing = tile_catalogues(root, tiles, module_run, prefix)
    if not paths:
        raise ToolError(f"no tile of the list has a {prefix} catalogue under {Path(root) / 'tile_runs'}")
    tables = {tile: read_fits_table(path, hdu="RESULTS" if _has_results(path) else 1) for tile, path in paths.items()}
    joined, counts = combine(tables, ra_column, dec_column, match_radius_arcsec)
    if columns:
        absent = [c for c in columns if c not in joined.colnames]
        if absent:
            raise ToolError(f"columns {absent} are in no tile catalogue")
        joined = joined[list(dict.fromkeys([*columns, "TILE", "KEEP"]))]
    if not keep_duplicates:
        joined = joined[np.asarray(joined["KEEP"])]
    joined.meta.clear()
    write_fits_table(output, joined, extname="RESULTS")
    counts["missing_tiles"] = missing
    counts["catalogues"] = {tile: str(path) for tile, path in paths.items()}
    return counts


def _has_results(path) -> bool:
    from astropy.io import fits

    try:
        with fits.open(path) as hdus:
            return "RESULTS" in hdus
    except (OSError, ValueError):
        return True  # unreadable: read_fits_table names the file
