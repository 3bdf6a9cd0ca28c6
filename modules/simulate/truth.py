"""Reading the truth written beside a simulation."""

from __future__ import annotations

from pathlib import Path

from shapepipe_modules import cfis


def truth_path(sim_dir, tile=None, exposure=None) -> Path:
    """Path of the truth catalogue of one tile (``XXX.YYY``) or exposure (``NNNNNNN``)."""
    if (tile is None) == (exposure is None):
        raise ValueError("load_truth: give exactly one of tile= or exposure=")
    truth_dir = Path(sim_dir) / "truth"
    if tile is not None:
        xxx, yyy = cfis.parse_tile_id(str(tile))
        return truth_dir / f"truth_tile-{cfis.tile_id(xxx, yyy, sep='-')}.fits"
    text = str(exposure).removesuffix("p").removesuffix(".fits")
    text = Path(text).name.removesuffix("p")
    if not text.isdigit():
        raise ValueError(f"load_truth: exposure {exposure!r} is not an exposure number")
    return truth_dir / f"truth_exp-{int(text):07d}.fits"


def load_truth(sim_dir, tile=None, exposure=None):
    """Truth catalogue of one tile or one exposure as an astropy Table.

    Parameters
    ----------
    sim_dir : path-like
        Simulation output directory.
    tile : str, optional
        Tile id, e.g. ``"244.252"`` (any form :func:`cfis.parse_tile_id` accepts).
    exposure : str or int, optional
        Exposure number, e.g. ``2100001`` or ``"2100001p"``.

    Raises
    ------
    FileNotFoundError
        If the truth file does not exist (its path is named).
    """
    from astropy.table import Table

    path = truth_path(sim_dir, tile=tile, exposure=exposure)
    if not path.is_file():
        raise FileNotFoundError(f"no truth catalogue {path}")
    return Table.read(path, format="fits")
