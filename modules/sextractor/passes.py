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

Optionally (:func:`merge_shallow_splits`, per pass before the join) two
small detections of one pass are one object when the pass's filtered
detection image, followed from one centre to the other, never dips
significantly below the fainter of their two peaks: a deblending as fine as
a crowded field needs cuts faint galaxies at noise dips, and a split that
no significant valley separates is not two galaxies.
"""

from __future__ import annotations

import numpy as np

from .config_files import ConfigFileError, Parameter

#: Columns the join needs; added to a pass's extraction when the .param file lacks them, dropped after.
#: Smallest core radius of the core rule (pixels): about one PSF FWHM, so that a compact kept object's own
#: re-detection never counts as a new object.
MIN_CORE_RADIUS = 3.0
#: Samples along the segment between two centres in the saddle test (merge_shallow_splits).
SADDLE_SAMPLES = 25
#: Extended pairs of the saddle test (merge_shallow_splits ``extended_radius``): the profile is read on the
#: filtered image smoothed by a Gaussian of EXTENDED_SMOOTHING times the smaller FLUX_RADIUS, for pairs
#: closer than EXTENDED_SEPARATION times the sum of their FLUX_RADIUS, both below EXTENDED_MAX_RADIUS pixels.
EXTENDED_SMOOTHING = 0.5
EXTENDED_SEPARATION = 1.25
EXTENDED_MAX_RADIUS = 10.0
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
    return _brightest_of_groups(pairs, np.asarray(table["FLUX_AUTO"], float))


def _brightest_of_groups(pairs, flux) -> np.ndarray:
    """Keep mask: of each group of rows connected by ``pairs`` (k x 2), only the largest ``flux`` (first on a tie)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(flux)
    pairs = np.asarray(pairs, int).reshape(-1, 2)
    if not len(pairs):
        return np.ones(n, bool)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    flux = np.nan_to_num(np.asarray(flux, float), nan=-np.inf)
    # Stable sort by group, then by decreasing flux: the first row of each group is its brightest.
    order = np.lexsort((np.arange(n), -flux, labels))
    keep = np.zeros(n, bool)
    keep[order[np.r_[True, labels[order][1:] != labels[order][:-1]]]] = True
    return keep


def filtered_detection_image(image, weight, kernel, back_size=(64, 64), back_filtersize=(3, 3), back_value=None):
    """A pass's detection image: the background-subtracted image convolved with its filter, and its noise.

    Parameters
    ----------
    image, weight : numpy.ndarray
        The pixels the pass detected on and their weight map (None: the
        background's RMS everywhere). Weights are taken as relative, as
        SExtractor's MAP_WEIGHT with RESCALE_WEIGHTS: scaled so that their
        median gives the background's global RMS.
    kernel : numpy.ndarray
        The detection filter (normalised here to unit sum); ``[[1]]``: none.
    back_size, back_filtersize : tuple of int
        The pass's background mesh and median filter (BACK_SIZE, BACK_FILTERSIZE).
    back_value : float, optional
        A constant background (BACK_TYPE MANUAL) instead of the mesh.

    Returns
    -------
    filtered, noise : numpy.ndarray
        float32 images; ``noise`` is the standard deviation of ``filtered``
        (infinite where the weight is 0).
    """
    import sep
    from scipy.ndimage import convolve

    data = np.ascontiguousarray(image, np.float32)
    valid = None if weight is None else np.asarray(weight) > 0
    background = sep.Background(data, mask=None if valid is None else ~valid, bw=int(back_size[0]),
                                bh=int(back_size[1]), fw=int(back_filtersize[0]), fh=int(back_filtersize[1]))
    if back_value is None:
        centred = background.back()
        np.subtract(data, centred, out=centred)  # the background's own array: one image copy fewer
    else:
        centred = data - np.float32(back_value)
    kernel = np.asarray(kernel, float)
    kernel = kernel / kernel.sum() if kernel.sum() > 0 else kernel
    filtered = convolve(centred, kernel.astype(np.float32), mode="nearest")
    del centred
    spread = np.sqrt(np.sum(kernel ** 2))
    if valid is None:
        return filtered, (background.rms() * spread).astype(np.float32)
    # noise = globalrms x spread x sqrt(median weight / weight), built in place (a 10,000-pixel tile is 400 MB).
    weight = np.asarray(weight, np.float32)
    median = float(np.median(weight[valid])) if valid.any() else 0.0
    noise = np.full(data.shape, np.inf, np.float32)
    np.divide(np.float32(median), weight, out=noise, where=valid)
    np.sqrt(noise, out=noise)
    noise *= np.float32(background.globalrms * spread)
    return filtered, noise


def _bilinear(image, x, y):
    """``image`` interpolated bilinearly at 0-based ``(x, y)`` (clipped to the edges), without copying ``image``."""
    ny, nx = image.shape
    x = np.clip(np.asarray(x, float), 0.0, nx - 1.0)
    y = np.clip(np.asarray(y, float), 0.0, ny - 1.0)
    x0 = np.minimum(np.floor(x).astype(int), max(nx - 2, 0))
    y0 = np.minimum(np.floor(y).astype(int), max(ny - 2, 0))
    x1, y1 = np.minimum(x0 + 1, nx - 1), np.minimum(y0 + 1, ny - 1)
    fx, fy = x - x0, y - y0
    top = image[y0, x0] * (1.0 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1.0 - fx) + image[y1, x1] * fx
    return top * (1.0 - fy) + bottom * fy


def merge_shallow_splits(table, filtered, noise, sigma: float, max_flux_radius: float, extended_radius: float = 0.0,
                         kernel=None) -> np.ndarray:
    """Which rows to keep when the detections a fine deblending split without a significant saddle are one object.

    Two detections with FLUX_RADIUS below ``max_flux_radius`` pixels and
    centres closer than twice that are linked when the filtered detection
    image (:func:`filtered_detection_image`) sampled along the segment
    between them has no valley deeper than ``sigma`` times its noise (a
    valley's depth: how far a sample lies below the lower of the highest
    samples on its two sides; a slope or a single peak has none). Of each connected group only the row with the largest
    FLUX_AUTO is kept, as in :func:`merge_close_pieces`. Larger objects are
    left alone: a faint galaxy on a bright galaxy's wing sits on a slope,
    not behind a saddle.

    With ``extended_radius`` > 0, two detections with FLUX_RADIUS between
    it and :data:`EXTENDED_MAX_RADIUS`, closer than
    :data:`EXTENDED_SEPARATION` times the sum of their FLUX_RADIUS, are
    tested too, on the filtered image smoothed by a
    Gaussian of :data:`EXTENDED_SMOOTHING` times the smaller FLUX_RADIUS
    (its noise scaled for that smoothing of ``kernel``, the pass's
    normalised filter; None: no filter). A diffuse disc that a fine
    deblending cut in two along its major axis has noise valleys deeper
    than 3 sigma at the filter's scale, not at its own.

    Returns
    -------
    numpy.ndarray
        Boolean mask over the rows of ``table``.
    """
    from scipy.spatial import cKDTree

    n = len(table)
    if sigma <= 0 or max_flux_radius <= 0 or n < 2:
        return np.ones(n, bool)
    x = np.asarray(table["X_IMAGE"], float) - 1.0
    y = np.asarray(table["Y_IMAGE"], float) - 1.0
    small = np.flatnonzero((np.nan_to_num(_flux_radius(table), nan=np.inf) < max_flux_radius)
                           & np.isfinite(x) & np.isfinite(y))
    pairs = np.empty((0, 2), int)
    if small.size >= 2:
        pairs = cKDTree(np.column_stack([x[small], y[small]])).query_pairs(2.0 * max_flux_radius,
                                                                           output_type="ndarray").reshape(-1, 2)
    i, j = small[pairs[:, 0]], small[pairs[:, 1]]
    steps = np.linspace(0.0, 1.0, SADDLE_SAMPLES)
    px = x[i, None] + steps * (x[j] - x[i])[:, None]
    py = y[i, None] + steps * (y[j] - y[i])[:, None]
    profile = _bilinear(filtered, px, py)
    rows = np.clip(np.rint(py).astype(int), 0, noise.shape[0] - 1)
    cols = np.clip(np.rint(px).astype(int), 0, noise.shape[1] - 1)
    spread = noise[rows, cols].max(axis=1)
    depth = _valley_depth(profile)
    with np.errstate(invalid="ignore"):
        shallow = depth < sigma * spread
    links = [np.column_stack([i[shallow], j[shallow]])]
    if extended_radius > 0:
        links.append(_shallow_extended_pairs(table, x, y, filtered, noise, sigma, extended_radius, kernel))
    return _brightest_of_groups(np.concatenate(links), np.asarray(table["FLUX_AUTO"], float))


def _valley_depth(profile):
    """The deepest valley of each row of ``profile``: how far a sample lies below the lower of the highest
    samples on its two sides (0 along a slope or over a single peak)."""
    left = np.maximum.accumulate(profile, axis=-1)
    right = np.maximum.accumulate(profile[..., ::-1], axis=-1)[..., ::-1]
    return (np.minimum(left, right) - profile).max(axis=-1)


def _smoothing_noise_factor(kernel, width):
    """How much a Gaussian of ``width`` pixels lowers the noise of an image filtered by ``kernel`` (unit sum)."""
    from scipy.signal import fftconvolve

    kernel = np.ones((1, 1)) if kernel is None else np.asarray(kernel, float)
    kernel = kernel / kernel.sum() if kernel.sum() > 0 else kernel
    half = int(np.ceil(4.0 * width))
    axis = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
    gauss = np.outer(axis, axis)
    combined = fftconvolve(kernel, gauss / gauss.sum())
    return float(np.sqrt(np.sum(combined ** 2) / np.sum(kernel ** 2)))


def _shallow_extended_pairs(table, x, y, filtered, noise, sigma, min_radius, kernel):
    """Index pairs of extended detections with no valley deeper than ``sigma`` at their own scale."""
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    radius = np.nan_to_num(_flux_radius(table), nan=np.inf)
    chosen = np.flatnonzero((radius >= min_radius) & (radius < EXTENDED_MAX_RADIUS) & np.isfinite(x) & np.isfinite(y))
    if chosen.size < 2:
        return np.empty((0, 2), int)
    pairs = cKDTree(np.column_stack([x[chosen], y[chosen]])).query_pairs(
        2.0 * EXTENDED_SEPARATION * EXTENDED_MAX_RADIUS, output_type="ndarray")
    ny, nx = filtered.shape
    steps = np.linspace(0.0, 1.0, SADDLE_SAMPLES)
    linked = []
    for i, j in chosen[pairs]:
        if np.hypot(x[i] - x[j], y[i] - y[j]) > EXTENDED_SEPARATION * (radius[i] + radius[j]):
            continue
        width = EXTENDED_SMOOTHING * min(radius[i], radius[j])
        pad = int(np.ceil(4.0 * width)) + 2
        x1, x2 = max(int(min(x[i], x[j])) - pad, 0), min(int(max(x[i], x[j])) + pad + 2, nx)
        y1, y2 = max(int(min(y[i], y[j])) - pad, 0), min(int(max(y[i], y[j])) + pad + 2, ny)
        cut = np.nan_to_num(np.asarray(filtered[y1:y2, x1:x2], float))
        smooth = gaussian_filter(cut, width, mode="nearest")
        px, py = x[i] + steps * (x[j] - x[i]), y[i] + steps * (y[j] - y[i])
        profile = _bilinear(smooth, px - x1, py - y1)
        spread = float(noise[np.clip(np.rint(py).astype(int), 0, ny - 1),
                             np.clip(np.rint(px).astype(int), 0, nx - 1)].max())
        if _valley_depth(profile) < sigma * spread * _smoothing_noise_factor(kernel, width):
            linked.append((i, j))
    return np.asarray(linked, int).reshape(-1, 2)


def _pairs_within(cx, cy, x, y, radius):
    """Index pairs (row of ``x, y``, kept object) closer than ``radius``, from a KD-tree of the kept centres."""
    from scipy.spatial import cKDTree

    near = cKDTree(np.column_stack([cx, cy])).query_ball_point(np.column_stack([x, y]), r=radius)
    counts = np.fromiter((len(n) for n in near), int, len(near))
    rows = np.repeat(np.arange(len(x)), counts)
    cols = np.fromiter((j for n in near for j in n), int, int(counts.sum()))
    return rows, cols


def confirmed_on_residual(table, discs, filtered, noise, sigma: float, min_flux_radius: float,
                          also=None) -> np.ndarray:
    """Which first-pass rows to keep: those inside a model's disc must still be seen once the models are gone.

    A first-pass object smaller than the modelled ones (FLUX_RADIUS below
    ``min_flux_radius``) whose centre lies inside a model's disc
    (``discs``: x, y, a, b, theta as :func:`.subtract.model_discs`) is kept
    only when the residual's filtered detection image (``filtered``,
    ``noise``: :func:`filtered_detection_image` of a later pass) is at least
    ``sigma`` times its noise at its centre. What the fine first pass cut
    out of a member's wing (its light, or the ripple a fine background mesh
    leaves on its slope) is not there once the member is subtracted; a
    galaxy on the wing is. ``also`` (boolean over the rows) marks larger
    rows to test the same way: those left unmodelled as satellites of a much
    brighter object (:func:`.subtract.satellites`).

    Returns
    -------
    numpy.ndarray
        Boolean mask over the rows of ``table``.
    """
    n = len(table)
    keep = np.ones(n, bool)
    cx, cy, a, b, theta = (np.asarray(v, float) for v in discs)
    if sigma <= 0 or not n or not cx.size:
        return keep
    x, y = np.asarray(table["X_IMAGE"], float), np.asarray(table["Y_IMAGE"], float)
    tested = np.nan_to_num(_flux_radius(table), nan=0.0) < min_flux_radius
    if also is not None:
        tested |= np.asarray(also, bool)
    small = np.flatnonzero(tested)
    rows, cols = _pairs_within(cx, cy, x[small], y[small], float(np.nanmax(a)))
    hit = inside_ellipses(x[small][rows], y[small][rows], cx[cols], cy[cols], a[cols], b[cols], theta[cols])
    inside = np.unique(small[rows[hit]])
    if not inside.size:
        return keep
    ny, nx = noise.shape
    level = _bilinear(filtered, x[inside] - 1.0, y[inside] - 1.0)
    spread = noise[np.clip(np.rint(y[inside] - 1.0).astype(int), 0, ny - 1),
                   np.clip(np.rint(x[inside] - 1.0).astype(int), 0, nx - 1)]
    keep[inside] = level >= sigma * spread
    return keep


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
