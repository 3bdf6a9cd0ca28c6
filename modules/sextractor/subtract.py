"""Smooth models of the first pass's galaxies, subtracted before the later passes (docs/crowded.md).

Behind a cluster core the faint background galaxies sit on the wings of the
bright members and the intracluster light; a cold pass finds them only by a
deblending fine enough to shred the members, and the CluSex join then drops
them as pieces of the members. Cluster-lensing work removes the bright
galaxies first (elliptical-isophote models, as IRAF ``ellipse``/``bmodel``):
here each first-pass object with ``FLUX_RADIUS`` of at least a few pixels
gets a ring-median model, the median of the image in elliptical annuli of
the object's own centre, axis ratio and angle (``X_IMAGE, Y_IMAGE,
A_IMAGE, B_IMAGE, THETA_IMAGE``). The median ignores whatever fills less
than half of an annulus (neighbours, knots, background galaxies), so these
stay in the residual image on which the later passes detect.
"""

from __future__ import annotations

import numpy as np

#: Inner annuli 1 pixel wide to this radius (pixels), then logarithmic steps.
LINEAR_TO = 6.0
#: Logarithmic annuli from LINEAR_TO to the model's outer radius.
N_LOG_ANNULI = 24
#: The model reaches this many Kron radii (KRON_RADIUS x A_IMAGE) along the major axis.
MODEL_EXTENT = 2.5
#: Largest model radius (pixels): a saturated star's or a cD galaxy's model stops there.
MAX_MODEL_RADIUS = 250.0
#: The model is tapered to zero from this fraction of its outer radius on (a raised cosine), so that
#: what it leaves of a wider light (the object's far wing, the intracluster light) has no edge for the
#: later passes to detect.
TAPER_FROM = 0.6
#: Gaussian window of the models' centre (sep.winpos), in half-light radii, and its least sigma (pixels).
CENTRE_WINDOW = 0.3
MIN_CENTRE_WINDOW = 1.5
#: Smallest axis ratio used for the annuli (a needle-thin catalogue ellipse is a blend, not a disc).
MIN_AXIS_RATIO = 0.2


def ring_median_models(data, table, rows, valid=None):
    """Sum of the ring-median models of ``rows`` of ``table`` on ``data``.

    Parameters
    ----------
    data : numpy.ndarray
        Background-subtracted image (2-D, float).
    table : astropy.table.Table
        Catalogue with X_IMAGE, Y_IMAGE (FITS, 1-based), A_IMAGE, B_IMAGE,
        THETA_IMAGE (degrees), KRON_RADIUS, FLUX_AUTO; with FLUX_RADIUS
        each centre is refined first (:func:`_windowed_centre`).
    rows : array_like of int
        The objects to model, modelled brightest (FLUX_AUTO) first, each on
        the data minus the models before it.
    valid : numpy.ndarray of bool, optional
        Pixels that may enter the medians (e.g. positive weight).

    Returns
    -------
    numpy.ndarray
        The models (float32, the shape of ``data``): in each annulus the
        median of its pixels, interpolated in elliptical radius (linearly
        in log intensity), never negative, tapered from TAPER_FROM of
        MODEL_EXTENT Kron radii to zero there.
    """
    from scipy import ndimage

    data = np.asarray(data, np.float32)
    model = np.zeros_like(data)
    ny, nx = data.shape
    rows = np.asarray(rows, int)
    if not rows.size:
        return model
    flux = np.nan_to_num(np.asarray(table["FLUX_AUTO"], float), nan=0.0)
    # Without KRON_RADIUS in the catalogue, SExtractor's usual value (3.5) for every object.
    kron = _column(table, "KRON_RADIUS")
    kron = np.full(len(flux), 3.5) if kron is None else np.where(np.isfinite(kron) & (kron > 0), kron, 3.5)
    half_light = _column(table, "FLUX_RADIUS")
    for i in rows[np.argsort(-flux[rows], kind="stable")]:
        x0, y0 = float(table["X_IMAGE"][i]) - 1.0, float(table["Y_IMAGE"][i]) - 1.0
        a, b = float(table["A_IMAGE"][i]), float(table["B_IMAGE"][i])
        if not (np.isfinite(x0) and np.isfinite(y0) and a > 0 and b > 0):
            continue
        if half_light is not None and np.isfinite(half_light[i]) and half_light[i] > 0:
            x0, y0 = _windowed_centre(data, model, x0, y0, float(half_light[i]), valid)
        angle = np.radians(float(table["THETA_IMAGE"][i]))
        axis_ratio = max(b / a, MIN_AXIS_RATIO)
        radius = min(MODEL_EXTENT * kron[i] * a, MAX_MODEL_RADIUS)
        x1, x2 = max(int(x0 - radius), 0), min(int(x0 + radius) + 2, nx)
        y1, y2 = max(int(y0 - radius), 0), min(int(y0 + radius) + 2, ny)
        if x2 <= x1 or y2 <= y1:
            continue
        dy, dx = np.mgrid[y1 - y0:y2 - y0, x1 - x0:x2 - x0]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / axis_ratio
        r_ell = np.sqrt(u * u + v * v)
        edges = np.unique(np.r_[np.arange(0.0, LINEAR_TO), np.geomspace(LINEAR_TO, max(radius, LINEAR_TO + 1),
                                                                         N_LOG_ANNULI)])
        labels = np.digitize(r_ell, edges)
        labels[r_ell > radius] = 0
        if valid is not None:
            labels[~valid[y1:y2, x1:x2]] = 0
        index = np.arange(1, len(edges))
        box = data[y1:y2, x1:x2] - model[y1:y2, x1:x2]
        with np.errstate(invalid="ignore", divide="ignore"):  # an annulus with no valid pixel: NaN, dropped
            median = np.asarray(ndimage.median(box, labels, index), float)
            centre = np.asarray(ndimage.mean(r_ell, labels, index), float)
        good = np.isfinite(median) & np.isfinite(centre)
        if good.sum() < 3:
            continue
        profile = _interpolate(r_ell, centre[good], median[good]) * _taper(r_ell / radius)
        model[y1:y2, x1:x2] += profile.astype(np.float32)
    return model


def _column(table, name):
    """A catalogue column as floats (its first entry when it has several), or None when absent."""
    if name not in getattr(table, "colnames", ()):
        return None
    values = np.asarray(table[name], float)
    return values[:, 0] if values.ndim > 1 else values


def _windowed_centre(data, model, x, y, half_light_radius, valid=None):
    """The centre (0-based) of the light of ``data - model`` in a Gaussian window, as SExtractor's XWIN_IMAGE.

    The catalogue's isophotal barycentre may be off the light's peak by a
    pixel (a neighbour in the footprint, a fine background mesh under the
    wings), and annuli around a wrong centre leave a dipole at the core,
    which the later passes detect. The window is narrow, CENTRE_WINDOW
    of the half-light radius (at least MIN_CENTRE_WINDOW pixels): it finds
    the peak of a concentrated profile, which knots or a neighbour on the
    wing pull less than they pull a window of the galaxy's size (a
    de Vaucouleurs galaxy with 12 knots: 0.05 pixel against 0.34 with
    SExtractor's XWIN window of 0.85 half-light radius). ``sep.winpos`` on
    a cut-out, pixels outside ``valid`` masked.
    """
    import sep

    sigma = max(CENTRE_WINDOW * half_light_radius, MIN_CENTRE_WINDOW)
    half = int(np.ceil(4.0 * sigma)) + 2
    ny, nx = data.shape
    x1, x2 = max(int(x) - half, 0), min(int(x) + half + 1, nx)
    y1, y2 = max(int(y) - half, 0), min(int(y) + half + 1, ny)
    if x2 - x1 < 3 or y2 - y1 < 3:
        return x, y
    cut = np.ascontiguousarray(data[y1:y2, x1:x2] - model[y1:y2, x1:x2], np.float32)
    mask = None if valid is None else np.ascontiguousarray(~valid[y1:y2, x1:x2])
    wx, wy, flag = sep.winpos(cut, np.array([x - x1]), np.array([y - y1]), np.array([sigma]), mask=mask)
    wx, wy = float(wx[0]) + x1, float(wy[0]) + y1
    if flag[0] or not (np.isfinite(wx) and np.isfinite(wy)) or np.hypot(wx - x, wy - y) > half_light_radius:
        return x, y
    return wx, wy


def _taper(r):
    """1 inside TAPER_FROM, a raised cosine down to 0 at 1, 0 beyond (``r`` in units of the outer radius)."""
    t = np.clip((np.asarray(r, float) - TAPER_FROM) / (1.0 - TAPER_FROM), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _interpolate(r, centres, medians):
    """Profile at radii ``r`` from the annuli's medians: linear in log intensity while they are positive.

    A galaxy profile is convex in radius, so straight lines between the
    annuli would lie above it (a Sersic n=4 profile over-subtracted by 5 %
    at 1-2 half-light radii); in log intensity the chords follow it. From
    the first annulus whose median is not positive outward the model is 0.
    """
    positive = medians > 0
    last = int(np.argmin(positive)) if not positive.all() else len(medians)
    if last < 2:
        return np.zeros_like(r)
    log_profile = np.interp(r, centres[:last], np.log(medians[:last]), right=-np.inf)
    return np.exp(log_profile)


def modelled_rows(table, min_flux_radius, contrast=0.0):
    """Rows of ``table`` that get a model: FLUX_RADIUS >= ``min_flux_radius``, less the satellites.

    With ``contrast`` > 1, an object inside the model disc of one at least
    ``contrast`` times brighter (:func:`satellites`) gets no model, so that
    the residual can say whether it is there (``PASS_CONFIRM_CONTRAST``).
    """
    radius = _column(table, "FLUX_RADIUS")
    if radius is None:
        raise KeyError("the first pass's catalogue has no FLUX_RADIUS column (needed by PASS_SUBTRACT_RADIUS)")
    rows = np.flatnonzero(np.nan_to_num(radius, nan=0.0) >= min_flux_radius)
    if contrast > 1 and rows.size:
        rows = rows[~satellites(table, min_flux_radius, contrast)[rows]]
    return rows


def satellites(table, min_flux_radius, contrast):
    """Which rows of ``table`` lie inside the model disc of another row ``contrast`` times brighter.

    The discs are those of the rows with FLUX_RADIUS >= ``min_flux_radius``
    (:func:`model_discs` without satellites); brighter compares FLUX_AUTO.
    A fine first pass cuts pieces from a bright galaxy's wing (or from the
    ripple a fine background mesh leaves on it) that are as large as a faint
    galaxy; modelled, they would leave nothing to test on the residual.

    Returns
    -------
    numpy.ndarray
        Boolean mask over the rows of ``table``.
    """
    from scipy.spatial import cKDTree

    from .passes import inside_ellipses

    flagged = np.zeros(len(table), bool)
    ref_rows = modelled_rows(table, min_flux_radius)
    cx, cy, a, b, theta = model_discs(table, min_flux_radius, rows=ref_rows)
    if not cx.size or contrast <= 1:
        return flagged
    ref_flux = np.nan_to_num(np.asarray(table["FLUX_AUTO"], float)[ref_rows], nan=0.0)
    flux = np.nan_to_num(np.asarray(table["FLUX_AUTO"], float), nan=np.inf)
    x, y = np.asarray(table["X_IMAGE"], float), np.asarray(table["Y_IMAGE"], float)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return flagged
    near = cKDTree(np.column_stack([cx, cy])).query_ball_point(
        np.column_stack([x[finite], y[finite]]), r=float(np.nanmax(a)))
    rows = np.repeat(np.flatnonzero(finite), [len(n) for n in near])
    cols = np.fromiter((c for n in near for c in n), int, count=rows.size)
    if not rows.size:
        return flagged
    hit = (ref_flux[cols] >= contrast * flux[rows]) & inside_ellipses(x[rows], y[rows], cx[cols], cy[cols],
                                                                      a[cols], b[cols], theta[cols])
    flagged[rows[hit]] = True
    return flagged


def model_discs(table, min_flux_radius, contrast=0.0, rows=None):
    """Centres (FITS pixels), semi-axes (pixels) and angles (radians) of the models :func:`subtract_models` makes.

    The ellipses out to which the models reach: ``MODEL_EXTENT`` Kron radii
    along the major axis (at most ``MAX_MODEL_RADIUS``), the catalogue's
    axis ratio (at least ``MIN_AXIS_RATIO``) and angle, for ``rows`` (by
    default those :func:`modelled_rows` gives).
    """
    rows = modelled_rows(table, min_flux_radius, contrast) if rows is None else np.asarray(rows, int)
    a = np.asarray(table["A_IMAGE"], float)[rows]
    b = np.asarray(table["B_IMAGE"], float)[rows]
    kron = np.asarray(table["KRON_RADIUS"], float)[rows]
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 3.5)
    major = np.minimum(MODEL_EXTENT * kron * a, MAX_MODEL_RADIUS)
    with np.errstate(invalid="ignore", divide="ignore"):
        minor = major * np.maximum(b / a, MIN_AXIS_RATIO)
    return (np.asarray(table["X_IMAGE"], float)[rows], np.asarray(table["Y_IMAGE"], float)[rows], major,
            np.nan_to_num(minor), np.radians(np.asarray(table["THETA_IMAGE"], float)[rows]))


def subtract_models(image, table, min_flux_radius, back_size=64, weight=None, contrast=0.0):
    """The image minus the ring-median models of the table's objects with FLUX_RADIUS >= ``min_flux_radius``.

    Satellites of ``contrast`` times brighter objects are not modelled (:func:`modelled_rows`; for
    satellites modelled when a residual shows them, :func:`subtract_models_confirming`).

    The models are measured on the image minus a sep background of
    ``back_size`` pixels (the first pass's mesh); the residual keeps the
    image's own background, for the later passes to subtract as they do.

    Returns
    -------
    residual : numpy.ndarray
        float32, the shape of ``image``.
    n_models : int
        Objects modelled.
    """
    image, data, valid = _centred(image, back_size, weight)
    rows = modelled_rows(table, min_flux_radius, contrast)
    model = ring_median_models(data, table, rows, valid)
    return image - model, int(rows.size)


def _centred(image, back_size, weight):
    """The image as float32, the image minus a sep background of ``back_size`` pixels, and the valid pixels."""
    import sep

    image = np.ascontiguousarray(image, np.float32)
    valid = None if weight is None else np.asarray(weight) > 0
    background = sep.Background(image, mask=None if valid is None else ~valid, bw=int(back_size),
                                bh=int(back_size)).back()
    return image, image - background, valid


def subtract_models_confirming(image, table, min_flux_radius, contrast, seen, back_size=64, weight=None):
    """:func:`subtract_models`, the satellites modelled only when the residual without their models shows them.

    The objects with FLUX_RADIUS >= ``min_flux_radius`` that are not
    satellites (:func:`satellites`, ``contrast``) are modelled first; then
    ``seen(residual, rows)`` is asked, for the satellites' rows, whether
    that residual shows them (boolean over ``rows``). Those it shows (a
    galaxy on a bright galaxy's wing) are modelled on what the first models
    left; the others (a piece of the wing) are not, and are returned as
    rejected, for the caller to drop from its catalogue.

    Returns
    -------
    residual : numpy.ndarray
        float32, the shape of ``image``.
    modelled : numpy.ndarray
        Rows of ``table`` modelled.
    rejected : numpy.ndarray
        Boolean over the rows of ``table``: satellites not seen.
    """
    image, data, valid = _centred(image, back_size, weight)
    large = modelled_rows(table, min_flux_radius)
    flagged = satellites(table, min_flux_radius, contrast)[large]
    rows = large[flagged]
    model = ring_median_models(data, table, large[~flagged], valid)
    rejected = np.zeros(len(table), bool)
    if rows.size:
        shown = np.asarray(seen(image - model, rows), bool)
        rejected[rows[~shown]] = True
        data -= model
        model += ring_median_models(data, table, rows[shown], valid)
    return image - model, large[~rejected[large]], rejected
