"""PSF stamps and shapes from PSFEx models at catalogue positions.

The algorithms behind the ``psfinterp`` module, usable without the runner:

- :func:`model_status`: is a CCD's model good enough (``STAR_THRESH``,
  ``CHI2_THRESH``)? A rejected model is reported with a flag and a reason,
  never silently skipped.
- :func:`psf_stamps`: PSF stamps at many positions at once, on the image
  pixel grid (``PSF_SAMP`` honoured), centred at a chosen sub-pixel offset
  and normalised to unit sum (see
  :meth:`shapepipe_modules.io.psfex_file.PSFModel.evaluate`).
- :func:`hsm_shapes`: adaptive-moment shapes of stamps (HSM's algorithm, see
  :mod:`shapepipe_modules.io.moments`; ``galsim.hsm`` as the reference).
- :func:`classic`, :func:`validation`: the single-CCD modes as tables.
- :mod:`.multi_epoch`: the tile mode.

Shapes are HSM's ``observed_shape`` (``g1``, ``g2``) and ``moments_sigma``
in pixels, as in ShapePipe's ``E1_*_HSM``, ``E2_*_HSM``, ``SIGMA_*_HSM``;
``FLAG_*_HSM`` is 1 where HSM failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# PSF_FLAG bits: why a CCD has no usable PSF model.
FLAG_FEW_STARS = 1
FLAG_BAD_CHI2 = 2
FLAG_NO_MODEL = 4
FLAG_NO_WCS = 8
FLAG_NAMES = {
    FLAG_FEW_STARS: "too few stars",
    FLAG_BAD_CHI2: "chi2 too high",
    FLAG_NO_MODEL: "no PSF model",
    FLAG_NO_WCS: "no WCS",
}

# SExtractor fills VIGNET pixels outside the image with -1e30.
BAD_PIXEL = -1e29


def decode_flag(flag: int) -> list[str]:
    """Names of the bits set in a ``PSF_FLAG`` value."""
    return [name for bit, name in FLAG_NAMES.items() if int(flag) & bit]


@dataclass(frozen=True)
class ModelStatus:
    """Whether a PSF model may be used, and why not.

    Attributes
    ----------
    flag : int
        ``PSF_FLAG`` bits (0: usable).
    reason : str
        Human-readable reason ('' when usable).
    """

    flag: int = 0
    reason: str = ""

    @property
    def usable(self) -> bool:
        """True when the model passes every check."""
        return self.flag == 0


def model_status(model, star_thresh: int, chi2_thresh: float) -> ModelStatus:
    """Check a model against ``STAR_THRESH`` (accepted stars) and ``CHI2_THRESH``.

    Parameters
    ----------
    model : PSFModel or None
        The CCD's model (None: no model file).
    star_thresh : int
        Fewer accepted stars than this rejects the model.
    chi2_thresh : float
        A reduced chi2 above this rejects the model.
    """
    if model is None:
        return ModelStatus(FLAG_NO_MODEL, "no PSF model")
    flag = 0
    reasons = []
    if model.accepted < star_thresh:
        flag |= FLAG_FEW_STARS
        reasons.append(f"{model.accepted} accepted stars < STAR_THRESH {star_thresh}")
    if not np.isfinite(model.chi2) or model.chi2 > chi2_thresh:
        flag |= FLAG_BAD_CHI2
        reasons.append(f"chi2 {model.chi2:.4g} > CHI2_THRESH {chi2_thresh:g}")
    return ModelStatus(flag, "; ".join(reasons))


def subpixel_offset(position, anchor=None) -> np.ndarray:
    """Offset of ``position`` from the pixel SExtractor centres a stamp on.

    SExtractor centres ``VIGNET`` on the pixel ``floor(anchor + 0.5)``, the
    anchor being ``X_IMAGE`` (the isophotal barycentre) when known, else the
    position itself. Positions are 1-based, like ``XWIN_IMAGE``.
    """
    position = np.asarray(position, dtype=float)
    anchor = position if anchor is None else np.asarray(anchor, dtype=float)
    return position - np.floor(anchor + 0.5)


def psf_stamps(model, x, y, size: int | None = None, dx=0.0, dy=0.0, dtype=np.float64) -> np.ndarray:
    """PSF stamps at many positions (vectorised), unit sum, centred at ``(dx, dy)``.

    Parameters
    ----------
    model : PSFModel
        Model read by :func:`shapepipe_modules.io.psfex_file.read_psf`.
    x, y : array_like (n,)
        1-based image positions (the model's context values).
    size : int, optional
        Stamp side in image pixels; the model grid size by default.
    dx, dy : float or array_like (n,)
        PSF centre relative to the stamp's central pixel ``size // 2``.
    dtype : numpy dtype
        Type of the returned stamps.

    Returns
    -------
    ndarray (n, size, size)
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    if x.size == 0:
        side = int(size or model.grid_shape[1])
        return np.zeros((0, side, side), dtype=dtype)
    if float(model.sampling) == 1.0 and not np.any(dx) and not np.any(dy):
        return _unshifted_stamps(model, x, y, size, dtype)
    return model.evaluate(x, y, size=size, centre=(dx, dy), dtype=dtype)


def _overlap(size: int, grid: int):
    """Slices of a stamp and of a model grid that overlap when their centres are aligned."""
    first = grid // 2 - size // 2  # grid index of the stamp's first pixel
    low, high = max(0, -first), min(size, grid - first)
    return slice(low, high), slice(first + low, first + high)


# Positions per block of :func:`_unshifted_stamps` (bounds the memory of the grids).
_BLOCK = 1024


def _unshifted_stamps(model, x, y, size, dtype):
    """Stamps of a model whose grid is the pixel grid, centred on the central pixel.

    Lanczos resampling at integer offsets on a grid of step 1 is the
    identity, so the stamp is the grid itself, cropped or zero-padded: the
    result of ``model.evaluate`` (up to rounding) for a fraction of its cost.
    """
    y = np.atleast_1d(np.asarray(y, dtype=float))
    x, y = np.broadcast_arrays(x, y)
    x, y = x.ravel(), y.ravel()
    ny, nx = model.grid_shape
    size = int(size or nx)
    out_rows, grid_rows = _overlap(size, ny)
    out_cols, grid_cols = _overlap(size, nx)
    stamps = np.zeros((x.size, size, size), dtype=dtype)
    for start in range(0, x.size, _BLOCK):
        block = slice(start, start + _BLOCK)
        grids = model.grid_images(x[block], y[block])[:, grid_rows, grid_cols]
        grids /= grids.sum(axis=(1, 2), keepdims=True)
        stamps[block, out_rows, out_cols] = grids
    return stamps


def hsm_shapes(stamps, bad_pixels=None, warm_start: bool = False, engine: str = "numba") -> dict:
    """Adaptive-moment shapes of stamps (HSM's ``FindAdaptiveMom``).

    Parameters
    ----------
    stamps : ndarray (n, ny, nx)
        Images; pixel scale 1 (sizes come out in pixels).
    bad_pixels : ndarray of bool (n, ny, nx), optional
        Pixels to ignore (e.g. SExtractor's -1e30 fill).
    warm_start : bool
        Start the iteration of every stamp from the size of the first one
        (stamps of one PSF model are alike: about half the iterations; the
        converged moments change by less than 1e-6).
    engine : {'numba', 'galsim'}
        :func:`shapepipe_modules.io.moments.adaptive_moments` (HSM's
        algorithm compiled over the whole stack), or one
        ``galsim.hsm.FindAdaptiveMom`` call per stamp (the reference).

    Returns
    -------
    dict
        ``e1``, ``e2`` (HSM's observed shape g1, g2), ``sigma`` (pixels) and
        ``flag`` (1 where HSM failed), each an array of length n.
    """
    if engine == "galsim":
        return _galsim_shapes(stamps, bad_pixels)
    if engine != "numba":
        raise ValueError(f"unknown moments engine {engine!r} (numba or galsim)")
    from shapepipe_modules.io.moments import GUESS_SIGMA, adaptive_moments

    stamps = np.asarray(stamps, dtype=np.float64)
    guess = GUESS_SIGMA
    if warm_start and len(stamps) > 1:
        first = adaptive_moments(stamps[:1], None if bad_pixels is None else bad_pixels[:1])
        if first["flag"][0] == 0:
            guess = float(first["sigma"][0])
    moments = adaptive_moments(stamps, bad_pixels, guess_sigma=guess)
    failed = moments["flag"] != 0
    return {"e1": moments["g1"], "e2": moments["g2"], "sigma": moments["sigma"], "flag": failed.astype(np.int32)}


def _galsim_shapes(stamps, bad_pixels=None) -> dict:
    """:func:`hsm_shapes` through ``galsim.hsm``, one call per stamp."""
    import galsim

    stamps = np.asarray(stamps, dtype=np.float64)
    count = len(stamps)
    e1 = np.zeros(count)
    e2 = np.zeros(count)
    sigma = np.zeros(count)
    flag = np.zeros(count, dtype=np.int32)
    for index in range(count):
        image = galsim.Image(np.ascontiguousarray(stamps[index]), scale=1.0)
        badpix = None
        if bad_pixels is not None and bad_pixels[index].any():
            badpix = galsim.Image(bad_pixels[index].astype(np.int32), scale=1.0)
        result = galsim.hsm.FindAdaptiveMom(image, badpix=badpix, strict=False)
        if result.error_message or result.moments_status != 0:
            flag[index] = 1
            e1[index] = e2[index] = sigma[index] = np.nan
            continue
        e1[index] = result.observed_shape.g1
        e2[index] = result.observed_shape.g2
        sigma[index] = result.moments_sigma
    return {"e1": e1, "e2": e2, "sigma": sigma, "flag": flag}


def _column(table, name, path):
    if name not in table.colnames:
        raise KeyError(f"{path}: column {name} not found (columns: {', '.join(table.colnames[:20])}...)")
    return np.asarray(table[name])


def classic(model, status: ModelStatus, table, position_params, path, size=None, centre_on_object=False,
            get_shapes=True):
    """PSF at every object of a CCD catalogue (``MODE = CLASSIC``).

    Parameters
    ----------
    model : PSFModel or None
    status : ModelStatus
        From :func:`model_status`; a rejected model gives NaN stamps, NaN
        shapes with ``FLAG_PSF_HSM = 1`` and ``PSF_FLAG`` set on every row.
    table : astropy.table.Table
        Objects (SExtractor columns).
    position_params : (str, str)
        Columns of the image positions.
    path : str
        Catalogue path, for error messages.
    size : int, optional
        Stamp side (default: model grid size).
    centre_on_object : bool
        Centre each PSF at the object's sub-pixel position in its ``VIGNET``
        (True) or on the stamp's central pixel (False, ShapePipe's stamps).
    get_shapes : bool
        Add HSM shape columns.

    Returns
    -------
    dict of ndarray
        Output columns.
    """
    x = _column(table, position_params[0], path).astype(float)
    y = _column(table, position_params[1], path).astype(float)
    count = len(x)
    columns = {}
    if "NUMBER" in table.colnames:
        columns["NUMBER"] = np.asarray(table["NUMBER"])
    if status.usable:
        size = int(size or model.grid_shape[1])
        dx = dy = 0.0
        if centre_on_object:
            dx = subpixel_offset(x, table["X_IMAGE"] if "X_IMAGE" in table.colnames else None)
            dy = subpixel_offset(y, table["Y_IMAGE"] if "Y_IMAGE" in table.colnames else None)
        stamps = psf_stamps(model, x, y, size, dx, dy)
    else:
        size = int(size or (model.grid_shape[1] if model is not None else 1))
        stamps = np.full((count, size, size), np.nan)
    columns["VIGNET"] = stamps.astype(np.float32)
    if get_shapes:
        shapes = hsm_shapes(stamps, warm_start=True) if status.usable else _failed_shapes(count)
        columns.update(_shape_columns(shapes, "PSF"))
    columns["PSF_FLAG"] = np.full(count, status.flag, dtype=np.int16)
    return columns


def _failed_shapes(count):
    nan = np.full(count, np.nan)
    return {"e1": nan, "e2": nan.copy(), "sigma": nan.copy(), "flag": np.ones(count, dtype=np.int32)}


def _shape_columns(shapes, kind):
    return {
        f"E1_{kind}_HSM": shapes["e1"],
        f"E2_{kind}_HSM": shapes["e2"],
        f"SIGMA_{kind}_HSM": shapes["sigma"],
        f"FLAG_{kind}_HSM": shapes["flag"].astype(np.int16),
    }


def used_in_fit(x, y, fit_table, tolerance: float = 1e-3) -> np.ndarray:
    """Which stars were accepted by the PSF fit, matched by position.

    ShapePipe compared row numbers of the validation catalogue with the
    ``SOURCE_NUMBER`` of the fitted catalogue, which are rows of another
    file; matching positions is right whatever catalogue was fitted.

    Parameters
    ----------
    x, y : ndarray (n,)
        Star positions (the fit's centre keys, e.g. ``XWIN_IMAGE``).
    fit_table : astropy.table.Table
        PSFEx output catalogue (``psfex_cat``): ``X_IMAGE``, ``Y_IMAGE``
        and ``ACCEPTED`` (built-in engine) or ``FLAGS_PSF`` (PSFEx: 0 for
        accepted stars).
    tolerance : float
        Largest position difference in pixels for a match.

    Returns
    -------
    ndarray of int16 (n,)
        1 for a star accepted by the fit, else 0.
    """
    from scipy.spatial import cKDTree

    if "ACCEPTED" in fit_table.colnames:
        accepted = np.asarray(fit_table["ACCEPTED"]).astype(bool)
    else:
        accepted = np.asarray(fit_table["FLAGS_PSF"]) == 0
    fit_x = np.asarray(fit_table["X_IMAGE"], dtype=float)[accepted]
    fit_y = np.asarray(fit_table["Y_IMAGE"], dtype=float)[accepted]
    result = np.zeros(len(x), dtype=np.int16)
    if len(fit_x) == 0 or len(x) == 0:
        return result
    distance, _ = cKDTree(np.column_stack([fit_x, fit_y])).query(np.column_stack([x, y]))
    result[distance <= tolerance] = 1
    return result


VALIDATION_COLUMNS = {
    "X": "XWIN_IMAGE",
    "Y": "YWIN_IMAGE",
    "RA": "XWIN_WORLD",
    "DEC": "YWIN_WORLD",
    "MAG": "MAG_AUTO",
    "SNR": "SNR_WIN",
}


def validation(model, status: ModelStatus, table, position_params, path, fit_table=None):
    """Shapes of reserved stars and of the model at their positions (``MODE = VALIDATION``).

    The model is drawn at each star's position on a stamp the size of the
    star's ``VIGNET``, centred on the central pixel (HSM measures the
    centroid itself, and an unshifted stamp needs no interpolation when
    ``PSF_SAMP`` is 1); pixels SExtractor could not fill are ignored by HSM.

    Parameters
    ----------
    model, status, table, position_params, path
        As in :func:`classic`.
    fit_table : astropy.table.Table, optional
        PSFEx output catalogue, for the ``ACCEPTED`` column (see
        :func:`used_in_fit`); without it ``ACCEPTED`` is 0.

    Returns
    -------
    dict of ndarray
        ShapePipe's validation columns (``E1_PSF_HSM`` ... ``FLAG_STAR_HSM``,
        ``NUMBER``, ``X``, ``Y``, ``RA``, ``DEC``, ``MAG``, ``SNR``,
        ``ACCEPTED``) plus ``PSF_FLAG``.

    Raises
    ------
    KeyError
        Naming the file and a missing column.
    """
    vignets = _column(table, "VIGNET", path).astype(float)
    if vignets.ndim != 3 or vignets.shape[1] != vignets.shape[2]:
        raise KeyError(f"{path}: VIGNET must hold square stamps, got shape {vignets.shape[1:]}")
    count, size = len(vignets), vignets.shape[1]
    x = _column(table, position_params[0], path).astype(float)
    y = _column(table, position_params[1], path).astype(float)
    extra = {name: _column(table, source, path) for name, source in VALIDATION_COLUMNS.items()}
    bad = ~np.isfinite(vignets) | (vignets <= BAD_PIXEL)
    star_shapes = hsm_shapes(np.where(bad, 0.0, vignets), bad)
    if status.usable:
        # HSM finds the centroid itself; a centred stamp avoids the interpolation a sub-pixel shift
        # needs (Lanczos-3 shifts add ~1e-3 of spurious ellipticity to a 2-pixel PSF).
        models = psf_stamps(model, x, y, size)
        psf_shapes = hsm_shapes(models, warm_start=True)
    else:
        psf_shapes = _failed_shapes(count)
    columns = {**_shape_columns(psf_shapes, "PSF"), **_shape_columns(star_shapes, "STAR")}
    columns["NUMBER"] = _column(table, "NUMBER", path)
    for name in VALIDATION_COLUMNS:
        columns[name] = np.asarray(extra[name], dtype=float)
    if fit_table is not None:
        columns["ACCEPTED"] = used_in_fit(extra["X"], extra["Y"], fit_table)
    else:
        columns["ACCEPTED"] = np.zeros(count, dtype=np.int16)
    columns["PSF_FLAG"] = np.full(count, status.flag, dtype=np.int16)
    return columns
