"""Observing conditions per exposure and variable stars.

Exposure conditions
-------------------
Date: with ``exposures_per_night = 0`` the exposures follow each other
(``exptime + 40`` s apart, from ``mjd_start``); with ``n > 0`` exposure
``i`` is the ``i mod n``-th of night ``i // n``, nights ``night_gap_days``
apart. Zero point: uniform in ``zero_point_range`` (stream ``ZERO_POINT``
of the exposure; not drawn when the range is one value), plus
``bad_zero_point_offset`` for the ``bad_zero_point_exposures``. An exposure
of zero point ``ZP`` records ``10^(0.4 (ZP - 30))`` times the ADU of the
same sky at ``PHOTZP = 30`` (objects and sky alike: a transparency change),
and its headers say ``PHOTZP = ZP``.

Variable stars
--------------
A fraction ``variable_fraction`` of the stars vary (stream ``VARIABLES``);
of them ``transient_fraction`` are transients, the others periodic. The
magnitude at date ``t`` (MJD-OBS) is ``mag + dmag(t)`` with

- periodic (``var_type = 1``): ``dmag = A sin(2 pi (t - t_ref) / P + phase)``,
  ``t_ref = mjd_start``;
- transient (``var_type = 2``): ``dmag = -A exp(-(t - t_peak)^2 / (2 w^2))``.

``mag`` (the scene's, used for the tile) is the constant part.
"""

from __future__ import annotations

import numpy as np

from . import streams

NOT_VARIABLE, PERIODIC, TRANSIENT = 0, 1, 2
VARIABLE_COLUMNS = ("var_type", "var_amplitude", "var_period", "var_phase", "var_t_peak", "var_width")


def exposure_mjd(params, index: int) -> float:
    """MJD-OBS of the exposure of 0-based index ``index`` (simulation order)."""
    step = (params["exptime"] + 40.0) / 86400.0
    per_night = int(params["exposures_per_night"])
    if per_night <= 0:
        return params["mjd_start"] + index * step
    night, order = divmod(index, per_night)
    return params["mjd_start"] + night * params["night_gap_days"] + order * step


def exposure_zero_point(params, seed: int, exposure: int, index: int) -> float:
    """Zero point of one exposure (see the module docstring)."""
    low, high = params["zero_point_range"]
    zp = low if low == high else float(streams.stream(seed, streams.ZERO_POINT, exposure).uniform(low, high))
    if index in params["bad_zero_point_exposures"]:
        zp += params["bad_zero_point_offset"]
    return float(zp)


def make_variables(params, seed: int, is_star, mjd_range) -> dict:
    """Light-curve parameters of every scene object (zeros for the constant ones).

    Parameters
    ----------
    params : dict
    seed : int
    is_star : numpy.ndarray of bool
        One entry per scene object.
    mjd_range : tuple of float
        First and last exposure dates (transient peaks fall between).

    Returns
    -------
    dict
        The :data:`VARIABLE_COLUMNS`, one entry per object.
    """
    n = np.size(is_star)
    out = {name: np.zeros(n) for name in VARIABLE_COLUMNS}
    out["var_type"] = np.zeros(n, np.int16)
    if params["variable_fraction"] <= 0:
        return out
    rng = streams.stream(seed, streams.VARIABLES)
    stars = np.flatnonzero(is_star)
    chosen = stars[rng.uniform(size=stars.size) < params["variable_fraction"]]
    m = chosen.size
    transient = rng.uniform(size=m) < params["transient_fraction"]
    out["var_type"][chosen] = np.where(transient, TRANSIENT, PERIODIC)
    out["var_amplitude"][chosen] = rng.uniform(*params["variable_amplitude_range"], m)
    low, high = params["variable_period_range"]
    period = np.exp(rng.uniform(np.log(low), np.log(high), m))
    phase = rng.uniform(0.0, 2.0 * np.pi, m)
    t_peak = rng.uniform(mjd_range[0], mjd_range[1], m)
    width = rng.uniform(*params["transient_width_range"], m)
    out["var_period"][chosen] = np.where(transient, 0.0, period)
    out["var_phase"][chosen] = np.where(transient, 0.0, phase)
    out["var_t_peak"][chosen] = np.where(transient, t_peak, 0.0)
    out["var_width"][chosen] = np.where(transient, width, 0.0)
    return out


def delta_mag(variables: dict, mjd: float, t_ref: float) -> np.ndarray:
    """Magnitude change of every object at date ``mjd`` (0 for the constant ones)."""
    kind = np.asarray(variables["var_type"])
    amplitude = np.asarray(variables["var_amplitude"], float)
    out = np.zeros(kind.size)
    periodic = kind == PERIODIC
    if periodic.any():
        period = variables["var_period"][periodic]
        out[periodic] = amplitude[periodic] * np.sin(2.0 * np.pi * (mjd - t_ref) / period + variables["var_phase"][periodic])
    transient = kind == TRANSIENT
    if transient.any():
        dt = mjd - variables["var_t_peak"][transient]
        out[transient] = -amplitude[transient] * np.exp(-0.5 * (dt / variables["var_width"][transient]) ** 2)
    return out
