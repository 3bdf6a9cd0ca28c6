"""Per-object light curves and variability statistics from a ``forced_phot`` table.

An object's light curve is its rows of the ``FORCED_PHOT`` table (one per
epoch), ordered by MJD. The statistics use the calibrated PSF fluxes
(``FLUX_PSF_CAL``, zero point 30) of the epochs without a flag of
``flag_mask``, each divided by ``1 + delta_e`` of its exposure CCD ``e``,
with errors ``sigma_i^2 = FLUXERR_PSF_CAL_i^2 max(CHI2_PSF_i, 1) + (s_e F)^2
+ (k F)^2``: the statistical error, inflated when the epoch's PSF fit is
worse than its noise (the PSF model's error at that star), the systematic
error ``s_e`` of the exposure CCD and an optional fixed floor
``error_floor`` (mag, ``k = 10^(0.4 error_floor) - 1``), relative to the
mean flux ``F``. ``delta_e`` (the exposure CCD's calibration offset: zero
point, PSF model normalisation) and ``s_e`` (the rest of its PSF model's
error) are measured on the data by :func:`exposure_systematics`, from the
scatter of the bright unblended objects about their other epochs.

``N_EPOCHS``, ``MJD_FIRST``, ``MJD_LAST``
    Usable epochs and their span.
``FLUX_MEAN``, ``FLUX_MEAN_ERR``, ``MAG_MEAN``
    Inverse-variance weighted mean flux and magnitude (zero point 30).
``CHI2_RED``, ``P_CONSTANT``
    ``sum((f_i - F)^2 / sigma_i^2) / (n - 1)`` and the probability of a
    chi2 this large for a constant source (chi2 law, ``n - 1`` degrees of
    freedom).
``EXCESS_VAR``, ``EXCESS_VAR_ERR``
    Normalised excess variance ``(s^2 - <sigma^2>) / F^2`` (``s^2`` the
    sample variance) and its error ``sqrt(2 / n) <sigma^2> / F^2``.
``AMPLITUDE``
    Largest minus smallest magnitude of the usable epochs (positive fluxes).
``BLENDED``
    forced_phot flagged the object blended (another tile object nearby).
``VARIABLE``
    ``N_EPOCHS >= min_epochs``, ``P_CONSTANT < false_alarm`` and not ``BLENDED``.
"""

from __future__ import annotations

import numpy as np

STAT_COLUMNS = (("NUMBER", np.int64), ("N_EPOCHS", np.int32), ("MJD_FIRST", np.float64), ("MJD_LAST", np.float64),
                ("FLUX_MEAN", np.float64), ("FLUX_MEAN_ERR", np.float64), ("MAG_MEAN", np.float64),
                ("CHI2_RED", np.float64), ("P_CONSTANT", np.float64), ("EXCESS_VAR", np.float64),
                ("EXCESS_VAR_ERR", np.float64), ("AMPLITUDE", np.float64), ("BLENDED", bool),
                ("VARIABLE", bool))
#: forced_phot's blend bit: a blended object is never flagged VARIABLE.
FLAG_BLENDED = 16


def usable_epochs(table, flag_mask: int) -> np.ndarray:
    """Rows of a forced-photometry table that enter the statistics."""
    flux = np.asarray(table["FLUX_PSF_CAL"], float)
    error = np.asarray(table["FLUXERR_PSF_CAL"], float)
    flags = np.asarray(table["FLAGS"], np.int64)
    mjd = np.asarray(table["MJD"], float)
    return np.isfinite(flux) & np.isfinite(error) & (error > 0) & np.isfinite(mjd) & ((flags & int(flag_mask)) == 0)


def exposure_systematics(group, exposure, flux, variance, scale, calibrator, false_alarm: float = 1e-3,
                         min_stars: int = 5, clip: float = 4.0, iterations: int = 6, offsets: bool = True):
    """Relative flux offset and systematic error of every exposure CCD, from the bright objects' scatter.

    Each calibrator epoch is compared with the weighted mean of the same
    object's OTHER epochs: ``x = (f - F_other) / F`` has, for a constant
    object, the variance ``v = (sigma^2 + 1 / W_other) / F^2 + s_e^2``. Per
    exposure CCD, the offset ``delta_e`` is the weighted mean of ``x`` (the
    calibration error common to its objects: zero point, PSF model
    normalisation) and ``s_e`` solves ``sum((x - delta_e)^2 / v) = m - 1``
    over its ``m`` calibrator epochs (0 when the statistical errors already
    explain the scatter): the rest of the PSF model's error. Robust to the
    variables among the calibrators: epochs beyond ``clip`` sigma are left
    out, and from the second pass on, objects whose corrected light curve is
    not constant (``P < false_alarm``). The other epochs' corrections enter
    ``F_other`` and ``W_other``, so the solution is iterated. An exposure CCD
    with fewer than ``min_stars`` calibrator epochs takes no offset and the
    median ``s`` of the others.

    Parameters
    ----------
    group : ndarray of int (n,)
        Object index of every epoch.
    exposure : ndarray of int (n,)
        Exposure-CCD index of every epoch (0 .. k-1).
    flux, variance : ndarray (n,)
        Flux and statistical variance of every epoch.
    scale : ndarray (n,)
        The object's mean flux (offset and systematic are fractions of it).
    calibrator : ndarray of bool (n,)
        Epochs that may enter the estimate (bright, unblended objects).
    offsets : bool
        Fit the offsets (else only ``s``).

    Returns
    -------
    delta : ndarray (k,)
        Fractional flux offset of each exposure CCD (divide its fluxes by
        ``1 + delta``); mean 0 over the exposure CCDs that have one.
    s : ndarray (k,)
        Fractional systematic error of each exposure CCD.
    count : ndarray of int (k,)
        Calibrator epochs used for each.
    """
    from scipy import stats

    k = int(exposure.max()) + 1 if exposure.size else 0
    s2 = np.zeros(k)
    delta = np.zeros(k)
    count = np.zeros(k, np.int64)
    n_obj = int(group.max()) + 1 if group.size else 0
    n_epochs = np.bincount(group, minlength=n_obj)
    constant = np.ones(n_obj, bool)
    for iteration in range(iterations):
        corrected = flux / (1.0 + delta[exposure])
        var = variance / (1.0 + delta[exposure]) ** 2
        w = 1.0 / (var + s2[exposure] * scale**2)
        total_w = np.bincount(group, w, n_obj)
        total_wf = np.bincount(group, w * corrected, n_obj)
        if iteration > 0:
            mean = total_wf / total_w
            chi2 = np.bincount(group, w * (corrected - mean[group]) ** 2, n_obj)
            constant = stats.chi2.sf(chi2, np.maximum(n_epochs - 1, 1)) >= false_alarm
        other_w = total_w[group] - w
        usable = calibrator & constant[group] & (other_w > 0)
        other_mean = (total_wf[group] - w * corrected) / np.where(other_w > 0, other_w, 1.0)
        # Residual of the uncorrected flux: the offset is re-estimated from scratch each pass.
        x = (flux - other_mean) / scale
        base = (variance + 1.0 / np.where(other_w > 0, other_w, np.inf)) / scale**2
        new_s2 = np.full(k, np.nan)
        new_delta = np.zeros(k)
        for e in range(k):
            rows = usable & (exposure == e)
            z2 = (x[rows] - delta[e]) ** 2 / (base[rows] + s2[e])
            keep = z2 < clip**2
            count[e] = int(keep.sum())
            if count[e] < min_stars:
                continue
            x_e, base_e = x[rows][keep], base[rows][keep]
            if offsets:
                weight = 1.0 / (base_e + s2[e])
                new_delta[e] = np.sum(weight * x_e) / np.sum(weight)
            dof = count[e] - 1 if offsets else count[e]
            new_s2[e] = _solve_extra_variance((x_e - new_delta[e]) ** 2, base_e, dof / count[e])
        measured = np.isfinite(new_s2)
        if offsets and measured.any():
            new_delta[measured] -= np.mean(new_delta[measured])
        delta = new_delta
        s2 = np.where(measured, new_s2, np.nanmedian(new_s2) if measured.any() else 0.0)
    return delta, np.sqrt(s2), count


def _solve_extra_variance(d2, base, target=1.0):
    """``x >= 0`` with ``mean(d2 / (base + x)) = target`` (bisection; 0 if the mean is already <= target)."""
    if np.mean(d2 / base) <= target:
        return 0.0
    low, high = 0.0, float(np.mean(d2)) / target
    for _ in range(60):
        middle = 0.5 * (low + high)
        if np.mean(d2 / (base + middle)) > target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def variability(table, flag_mask: int = 15, error_floor: float = 0.0, min_epochs: int = 4,
                false_alarm: float = 1e-3, scale_by_fit_chi2: bool = True, exposure_systematics_on: bool = True,
                relative_calibration: bool = True, systematic_max_error: float = 0.01,
                systematic_min_stars: int = 5) -> dict:
    """Statistics of every object of a forced-photometry table (see the module docstring).

    Parameters
    ----------
    table : mapping of arrays
        ``NUMBER, MJD, FLUX_PSF_CAL, FLUXERR_PSF_CAL, FLAGS`` per epoch
        (``EXP_NAME, CCD_N`` for the systematics per exposure CCD,
        ``CHI2_PSF`` for the fit-chi2 scaling).
    exposure_systematics_on : bool
        Add each exposure CCD's systematic error derived from the data
        (:func:`exposure_systematics`).
    relative_calibration : bool
        With it, divide each exposure CCD's fluxes by ``1 + delta`` of
        :func:`exposure_systematics` (ensemble relative photometry).
    systematic_max_error : float
        Calibrators: epochs of unblended objects with at least ``min_epochs``
        epochs whose statistical error is below this (mag).

    Returns
    -------
    dict of ndarray
        :data:`STAT_COLUMNS`, one entry per object with at least one usable
        epoch, and ``SYSTEMATICS``: ``{EXP_NAME, CCD_N, OFFSET (mag added to
        its magnitudes), SYSTEMATIC (mag), N_CALIBRATORS}`` per exposure CCD
        (empty without the systematics).
    """
    from scipy import stats

    keep = usable_epochs(table, flag_mask)
    number = np.asarray(table["NUMBER"], np.int64)[keep]
    order = np.argsort(number, kind="stable")
    number = number[order]
    flux = np.asarray(table["FLUX_PSF_CAL"], float)[keep][order]
    error = np.asarray(table["FLUXERR_PSF_CAL"], float)[keep][order]
    names = table.colnames if hasattr(table, "colnames") else list(table)
    if scale_by_fit_chi2 and "CHI2_PSF" in names:
        # A PSF fit worse than its noise (model errors on bright stars) has a larger flux error.
        fit_chi2 = np.asarray(table["CHI2_PSF"], float)[keep][order]
        error = error * np.sqrt(np.maximum(np.nan_to_num(fit_chi2, nan=1.0), 1.0))
    mjd = np.asarray(table["MJD"], float)[keep][order]
    blend = (np.asarray(table["FLAGS"], np.int64)[keep][order] & FLAG_BLENDED) != 0
    empty_systematics = {"EXP_NAME": np.zeros(0, "U16"), "CCD_N": np.zeros(0, np.int32),
                         "OFFSET": np.zeros(0), "SYSTEMATIC": np.zeros(0), "N_CALIBRATORS": np.zeros(0, np.int32)}
    if number.size == 0:
        return dict({name: np.zeros(0, dtype) for name, dtype in STAT_COLUMNS}, SYSTEMATICS=empty_systematics)
    starts = np.flatnonzero(np.r_[True, number[1:] != number[:-1]])
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, number.size]))

    def total(values):
        return np.add.reduceat(values, starts)

    n = total(np.ones_like(flux))
    # Systematics are relative to the object's mean flux: a first unweighted mean sets it.
    scale = np.abs(total(flux) / n)
    k = k_of(error_floor)
    variance = error**2 + (k * scale[group]) ** 2
    systematics = empty_systematics
    if exposure_systematics_on and "EXP_NAME" in names and "CCD_N" in names:
        exp_name = np.char.strip(np.asarray(table["EXP_NAME"]).astype(str)[keep][order])
        ccd = np.asarray(table["CCD_N"], np.int64)[keep][order]
        keys, exposure = np.unique(np.char.add(np.char.add(exp_name, ":"), ccd.astype(str)), return_inverse=True)
        object_blended = np.maximum.reduceat(blend, starts)
        row_scale = np.where(scale[group] > 0, scale[group], np.nan)
        calibrator = ((~object_blended[group]) & (n[group] >= min_epochs) & np.isfinite(row_scale)
                      & (error / np.where(np.isfinite(row_scale), row_scale, 1.0) < k_of(systematic_max_error)))
        delta, s, count = exposure_systematics(group, exposure, flux, variance,
                                               np.where(np.isfinite(row_scale), row_scale, 1.0), calibrator,
                                               false_alarm, systematic_min_stars, offsets=relative_calibration)
        flux = flux / (1.0 + delta[exposure])
        variance = variance / (1.0 + delta[exposure]) ** 2 + (s[exposure] * scale[group]) ** 2
        split = np.char.partition(keys, ":")
        systematics = {"EXP_NAME": split[:, 0], "CCD_N": split[:, 2].astype(np.int32),
                       "OFFSET": 2.5 * np.log10(1.0 + delta), "SYSTEMATIC": 2.5 * np.log10(1.0 + s),
                       "N_CALIBRATORS": count.astype(np.int32)}
    weight = 1.0 / variance
    mean = total(weight * flux) / total(weight)
    chi2 = total(weight * (flux - mean[group]) ** 2)
    dof = np.maximum(n - 1, 1)
    sample_var = total((flux - total(flux)[group] / n[group]) ** 2) / dof
    mean_var = total(variance) / n
    positive = flux > 0
    mag = np.where(positive, 30.0 - 2.5 * np.log10(np.where(positive, flux, 1.0)), np.nan)
    amplitude = np.maximum.reduceat(np.where(positive, mag, -np.inf), starts) - \
        np.minimum.reduceat(np.where(positive, mag, np.inf), starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_mag = np.where(mean > 0, 30.0 - 2.5 * np.log10(np.where(mean > 0, mean, 1.0)), np.nan)
        excess = (sample_var - mean_var) / mean**2
        excess_err = np.sqrt(2.0 / n) * mean_var / mean**2
    p_constant = np.where(n > 1, stats.chi2.sf(chi2, dof), 1.0)
    chi2_red = np.where(n > 1, chi2 / dof, np.nan)
    return {
        "NUMBER": number[starts], "N_EPOCHS": n.astype(np.int32),
        "MJD_FIRST": np.minimum.reduceat(mjd, starts), "MJD_LAST": np.maximum.reduceat(mjd, starts),
        "FLUX_MEAN": mean, "FLUX_MEAN_ERR": np.sqrt(1.0 / total(weight)), "MAG_MEAN": mean_mag,
        "CHI2_RED": chi2_red, "P_CONSTANT": p_constant, "EXCESS_VAR": excess, "EXCESS_VAR_ERR": excess_err,
        "AMPLITUDE": np.where(np.isfinite(amplitude), amplitude, np.nan),
        "BLENDED": np.maximum.reduceat(blend, starts),
        "VARIABLE": (n >= min_epochs) & (p_constant < false_alarm) & ~np.maximum.reduceat(blend, starts),
        "SYSTEMATICS": systematics,
    }


def k_of(mag_error):
    """Fractional flux error of a magnitude error (``10^(0.4 e) - 1``)."""
    return 10.0 ** (0.4 * mag_error) - 1.0


def light_curve(table, number: int):
    """Rows of one object, ordered by MJD (an astropy Table)."""
    from astropy.table import Table

    rows = Table(table)[np.asarray(table["NUMBER"]) == int(number)]
    rows.sort("MJD")
    return rows


def plot_light_curve(rows, path, title: str = "", flag_mask: int = 15, stats: dict | None = None) -> None:
    """PSF magnitude (and aperture magnitude) against MJD; flagged epochs as open symbols."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shapepipe.atomic import atomic_path

    good = usable_epochs(rows, flag_mask)
    mjd = np.asarray(rows["MJD"], float)
    fig, ax = plt.subplots(figsize=(7, 4))
    for mask, style, label in ((good, "o", "PSF (used)"), (~good, "o", "PSF (flagged)")):
        if mask.any():
            ax.errorbar(mjd[mask], np.asarray(rows["MAG_PSF"])[mask], yerr=np.asarray(rows["MAGERR_PSF"])[mask],
                        fmt=style, mfc="C0" if style == "o" and label.endswith("(used)") else "none", color="C0",
                        label=label)
    ax.plot(mjd, np.asarray(rows["MAG_APER"]), "s", color="C1", ms=4, alpha=0.6, label="aperture")
    ax.invert_yaxis()
    ax.set_xlabel("MJD")
    ax.set_ylabel("magnitude")
    if stats is not None:
        title += (f"  chi2_red {stats['CHI2_RED']:.2f}, amplitude {stats['AMPLITUDE']:.3f} mag"
                  f"{', VARIABLE' if stats['VARIABLE'] else ''}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=90)
    plt.close(fig)


def plot_summary(stats: dict, path, title: str = "") -> None:
    """Reduced chi2 and excess variance against mean magnitude; variables in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shapepipe.atomic import atomic_path

    mag = np.asarray(stats["MAG_MEAN"], float)
    variable = np.asarray(stats["VARIABLE"], bool)
    fig, axes = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for ax, name, label in ((axes[0], "CHI2_RED", "reduced chi2 against constant"),
                            (axes[1], "EXCESS_VAR", "normalised excess variance")):
        values = np.asarray(stats[name], float)
        ax.plot(mag[~variable], values[~variable], ".", color="C0", ms=3, label="constant")
        ax.plot(mag[variable], values[variable], "o", color="C3", ms=4, label="variable")
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_xlabel("mean PSF magnitude")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"{variable.sum()} variables among {variable.size} objects")
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=80)
    plt.close(fig)
