"""Per-object light curves and variability statistics from a ``forced_phot`` table.

An object's light curve is its rows of the ``FORCED_PHOT`` table (one per
epoch), ordered by MJD. The statistics use the calibrated PSF fluxes
(``FLUX_PSF_CAL``, zero point 30) of the epochs without a flag of
``flag_mask``, with errors ``sigma_i^2 = FLUXERR_PSF_CAL_i^2 + (k F)^2``:
the statistical error (times ``sqrt(CHI2_PSF)`` when the epoch's PSF fit
is worse than its noise, ``CHI2_PSF > 1``: the PSF model's errors on bright
stars) and a systematic floor ``error_floor`` (mag, ``k = 0.4 ln 10
error_floor``) relative to the mean flux ``F``:

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


def variability(table, flag_mask: int = 15, error_floor: float = 0.004, min_epochs: int = 4,
                false_alarm: float = 1e-3, scale_by_fit_chi2: bool = True) -> dict:
    """Statistics of every object of a forced-photometry table (see the module docstring).

    Parameters
    ----------
    table : mapping of arrays
        ``NUMBER, MJD, FLUX_PSF_CAL, FLUXERR_PSF_CAL, FLAGS`` per epoch.

    Returns
    -------
    dict of ndarray
        :data:`STAT_COLUMNS`, one entry per object with at least one usable epoch.
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
    if number.size == 0:
        return {name: np.zeros(0, dtype) for name, dtype in STAT_COLUMNS}
    starts = np.flatnonzero(np.r_[True, number[1:] != number[:-1]])
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, number.size]))

    def total(values):
        return np.add.reduceat(values, starts)

    n = total(np.ones_like(flux))
    # The floor is relative to the object's mean flux: a first unweighted mean sets it.
    scale = np.abs(total(flux) / n)
    k = 0.4 * np.log(10.0) * error_floor
    variance = error**2 + (k * scale[group]) ** 2
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
    }


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
