"""Several detection passes in one job, joined as CluSex joins them (docs/crowded.md).

A crowded field (a cluster core, the surroundings of a bright star) needs
two detection configurations: a "hot" pass (high threshold, coarse
deblending) that keeps large bright galaxies whole, and a "cold" pass (low
threshold, fine deblending) that finds the faint galaxies between them but
shreds the bright ones. The catalogues are joined by geometry: every object
of the first pass is kept; an object of a later pass is added only when its
centre lies outside the ellipse of every object kept so far, scaled by a
factor. A KD-tree of the kept centres limits the exact ellipse test to the
pairs closer than the largest scaled semi-major axis.

Optionally (``neighbour_radius``) a later object inside a kept ellipse is
still added when it is a resolved galaxy blended into the kept object
rather than a piece of it: its FLUX_RADIUS is at least ``neighbour_radius``
pixels and its centre lies beyond the FLUX_RADIUS of every kept object
whose ellipse contains it. The pieces a fine deblending cuts out of a
galaxy (star-forming knots, globular clusters) are compact; a neighbour
that the first pass merged into a larger object is found by the later pass
as an extended object off that object's centre.

Optionally (``merge_radius``) the pieces of one object that a later pass's
fine deblending cut apart are merged before the join: of detections of the
same later pass closer than ``merge_radius`` pixels (connected: chains
count), only the one with the largest FLUX_AUTO is kept, its row unchanged
(a faint galaxy split in two by a fine deblending, pieces 3-6 pixels apart
on the simulated cluster; docs/crowded.md).

Optionally (``core_scales``, per pass) a later pass is joined by its
distance to the kept objects' cores instead of their ellipses: an object is
added when its centre lies farther than ``core_scale x FLUX_RADIUS`` (and
:data:`MIN_CORE_RADIUS` pixels) from the centre of every kept object. With a
pass that detects on the image minus the models of the first pass's
galaxies (:mod:`.subtract`), the faint galaxies on a member's wing are no
longer inside its light, and the ellipse would drop them.
"""

from __future__ import annotations

import numpy as np

from .config_files import ConfigFileError, Parameter

#: Columns the join needs; added to a pass's extraction when the .param file lacks them, dropped after.
#: Smallest core radius of the core rule (pixels): about one PSF FWHM, so that a compact kept object's own
#: re-detection never counts as a new object.
MIN_CORE_RADIUS = 3.0
JOIN_COLUMNS = ("X_IMAGE", "Y_IMAGE", "A_IMAGE", "B_IMAGE", "THETA_IMAGE", "KRON_RADIUS", "FLUX_RADIUS", "FLUX_AUTO")


def parse_pass_settings(text: str, where: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs separated by spaces (``-`` or empty: none) as ``{KEY: VALUE}``.

    Raises
    ------
    ConfigFileError
        A word without ``=``; the message names ``where``.
    """
    text = (text or "").strip()
    if text in ("", "-"):
        return {}
    settings = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise ConfigFileError(f"{where}: {word!r} is not KEY=VALUE (e.g. DETECT_THRESH=5)")
        settings[key.strip().upper()] = value.strip()
    return settings


def write_pass_sex(base_path, overrides: dict, target) -> None:
    """Write a copy of the ``.sex`` file ``base_path`` with ``overrides`` replacing or adding keys."""
    from pathlib import Path

    lines, seen = [], set()
    for line in Path(base_path).read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0].upper() in overrides:
            key = words[0].upper()
            seen.add(key)
            lines.append(f"{key} {overrides[key]}")
        else:
            lines.append(line)
    lines += [f"{key} {value}" for key, value in overrides.items() if key not in seen]
    Path(target).write_text("\n".join(lines) + "\n")


def with_join_columns(parameters) -> tuple[list, list[str]]:
    """The parameters plus the join columns they lack, and the names added."""
    names = {p.name for p in parameters}
    added = [name for name in JOIN_COLUMNS if name not in names]
    return list(parameters) + [Parameter(name) for name in added], added


def ellipse_axes(table, scale: float):
    """Semi-axes (pixels) and angle (radians) of each object's join ellipse.

    ``scale * KRON_RADIUS * (A_IMAGE, B_IMAGE)``; an object without a Kron
    radius (0 or NaN, e.g. at an image edge) gets 3.5, SExtractor's usual
    minimum-radius scale times 1.
    """
    kron = np.asarray(table["KRON_RADIUS"], float)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 3.5)
    a = scale * kron * np.asarray(table["A_IMAGE"], float)
    b = scale * kron * np.asarray(table["B_IMAGE"], float)
    return a, b, np.radians(np.asarray(table["THETA_IMAGE"], float))


def inside_ellipses(px, py, cx, cy, a, b, theta):
    """Whether points ``(px, py)`` lie inside ellipses ``(cx, cy, a, b, theta)``, element-wise."""
    dx, dy = px - cx, py - cy
    c, s = np.cos(theta), np.sin(theta)
    u = (dx * c + dy * s) / np.maximum(a, 1e-6)
    v = (-dx * s + dy * c) / np.maximum(b, 1e-6)
    return u * u + v * v <= 1.0


def _flux_radius(table):
    """FLUX_RADIUS of each row (the first fraction when PHOT_FLUXFRAC gives several)."""
    radius = np.asarray(table["FLUX_RADIUS"], float)
    return radius[:, 0] if radius.ndim > 1 else radius


def merge_close_pieces(table, radius: float) -> np.ndarray:
    """Which rows to keep when detections closer than ``radius`` pixels are one object.

    Detections are linked when their centres (X_IMAGE, Y_IMAGE) are closer
    than ``radius``; of each connected group only the row with the largest
    FLUX_AUTO is kept (the first such row on a tie).

    Returns
    -------
    numpy.ndarray
        Boolean mask over the rows of ``table``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(table)
    keep = np.ones(n, bool)
    if radius <= 0 or n < 2:
        return keep
    x, y = np.asarray(table["X_IMAGE"], float), np.asarray(table["Y_IMAGE"], float)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    # query_pairs counts distance <= radius; "closer than" excludes the boundary.
    pairs = pairs[np.hypot(x[pairs[:, 0]] - x[pairs[:, 1]], y[pairs[:, 0]] - y[pairs[:, 1]]) < radius]
    if not len(pairs):
        return keep
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    flux = np.nan_to_num(np.asarray(table["FLUX_AUTO"], float), nan=-np.inf)
    # Stable sort by group, then by decreasing flux: the first row of each group is its brightest.
    order = np.lexsort((np.arange(n), -flux, labels))
    first = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    keep[:] = False
    keep[first] = True
    return keep


def _pairs_within(cx, cy, x, y, radius):
    """Index pairs (row of ``x, y``, kept object) closer than ``radius``, from a KD-tree of the kept centres."""
    from scipy.spatial import cKDTree

    near = cKDTree(np.column_stack([cx, cy])).query_ball_point(np.column_stack([x, y]), r=radius)
    counts = np.fromiter((len(n) for n in near), int, len(near))
    rows = np.repeat(np.arange(len(x)), counts)
    cols = np.fromiter((j for n in near for j in n), int, int(counts.sum()))
    return rows, cols


def join_passes(tables, scale: float = 1.0, neighbour_radius: float = 0.0, merge_radius: float = 0.0,
                core_scales=None, min_radii=None, merge_first: bool = False):
    """Join the catalogues of the passes (first pass first) by the CluSex rule.

    Parameters
    ----------
    tables : list of astropy.table.Table
        One per pass, each with the :data:`JOIN_COLUMNS` (FLUX_RADIUS only
        with ``neighbour_radius`` or ``core_scales``).
    scale : float
        Factor on each kept object's Kron ellipse.
    neighbour_radius : float
        When > 0, an object inside kept ellipses is still added if its
        FLUX_RADIUS is at least this (pixels) and its centre lies farther
        than FLUX_RADIUS from the centre of every kept object containing it
        (a blended neighbour, not a fragment); 0: the CluSex rule alone.
    merge_radius : float
        When > 0, detections of a later pass closer than this (pixels) are
        one object: only the brightest (FLUX_AUTO) of each connected group
        takes part in the join (:func:`merge_close_pieces`); the first
        pass is untouched unless ``merge_first``.
    core_scales : sequence of float, optional
        One entry per table (the first is ignored): when > 0, that pass is
        joined by the core rule, its objects added when farther than
        ``core_scale x FLUX_RADIUS`` (at least :data:`MIN_CORE_RADIUS`
        pixels) from every kept centre; 0 or None: the ellipse rule (with
        ``neighbour_radius``).
    min_radii : sequence of float, optional
        One entry per table (the first is ignored): a later pass's objects
        with FLUX_RADIUS below it (pixels) are not joined (a pass run on
        the model-subtracted image to find the members the first pass
        merged, whose knots are compact there); 0 or None: all.
    merge_first : bool
        Also merge the first pass's close detections (a finely deblended
        first pass splits faint galaxies too).

    Returns
    -------
    astropy.table.Table
        Rows of every pass that were kept, pass by pass in the input order,
        with a ``PASS`` column (1-based pass index) and ``NUMBER`` renumbered
        1..n when present.
    """
    from astropy.table import Table, vstack

    kept_parts = []
    cx = cy = a = b = theta = radius = np.empty(0)
    need_radius = neighbour_radius > 0 or (core_scales is not None and any(float(c) > 0 for c in core_scales[1:]))
    for index, table in enumerate(tables, start=1):
        table = Table(table, copy=False)
        if merge_radius > 0 and (index > 1 or merge_first):
            table = table[merge_close_pieces(table, merge_radius)]
        if index > 1 and min_radii is not None and float(min_radii[index - 1]) > 0:
            table = table[np.nan_to_num(_flux_radius(table), nan=0.0) >= float(min_radii[index - 1])]
        x = np.asarray(table["X_IMAGE"], float)
        y = np.asarray(table["Y_IMAGE"], float)
        keep = np.ones(len(table), bool)
        core_scale = float(core_scales[index - 1]) if core_scales is not None and index > 1 else 0.0
        if core_scale > 0 and cx.size and len(table):
            core = np.maximum(core_scale * radius, MIN_CORE_RADIUS)
            rows, cols = _pairs_within(cx, cy, x, y, float(core.max()))
            hit = np.hypot(x[rows] - cx[cols], y[rows] - cy[cols]) <= core[cols]
            keep[rows[hit]] = False
        elif cx.size and len(table):
            # Prefilter: only kept objects closer than the largest semi-major axis can contain a centre.
            rows, cols = _pairs_within(cx, cy, x, y, float(a.max()))
            if rows.size:
                hit = inside_ellipses(x[rows], y[rows], cx[cols], cy[cols], a[cols], b[cols], theta[cols])
                inside = np.zeros(len(table), bool)
                inside[rows[hit]] = True
                if neighbour_radius > 0:
                    # A containing object whose FLUX_RADIUS reaches the centre makes it a fragment.
                    near = hit & (np.hypot(x[rows] - cx[cols], y[rows] - cy[cols]) <= radius[cols])
                    fragment = np.zeros(len(table), bool)
                    fragment[rows[near]] = True
                    neighbour = inside & ~fragment & (_flux_radius(table) >= neighbour_radius)
                    inside &= ~neighbour
                keep[inside] = False
        part = table[keep]
        part["PASS"] = np.full(len(part), index, np.int16)
        kept_parts.append(part)
        pa, pb, pt = ellipse_axes(part, scale)
        cx = np.concatenate([cx, np.asarray(part["X_IMAGE"], float)])
        cy = np.concatenate([cy, np.asarray(part["Y_IMAGE"], float)])
        a, b, theta = np.concatenate([a, pa]), np.concatenate([b, pb]), np.concatenate([theta, pt])
        if need_radius:
            radius = np.concatenate([radius, _flux_radius(part)])
    joined = vstack(kept_parts, join_type="exact", metadata_conflicts="silent") if kept_parts else Table()
    if "NUMBER" in joined.colnames:
        joined["NUMBER"] = np.arange(1, len(joined) + 1, dtype=joined["NUMBER"].dtype)
    return joined
