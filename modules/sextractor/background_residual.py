"""Background-residual diagnostic.

After background subtraction, the pixels that are usable (non-zero weight)
and belong to no detection should be pure noise centred on zero. Their
histogram is fitted with a Gaussian; the fitted mean measures the
background bias and the width the noise. Outputs, per CCD or tile:

``bkg_resid<number>.txt``
    ``key value`` lines: ``mean``, ``sigma`` (Gaussian fit), ``mean_error``,
    ``sample_median``, ``sample_mad_sigma``, ``n_pixels``.
``bkg_resid<number>.png``
    The histogram with the fitted Gaussian.
"""

from __future__ import annotations

import numpy as np

from shapepipe.atomic import atomic_path, write_text_atomic

from . import robust


def _gaussian_terms(centres, amplitude, mean, sigma):
    """Gaussian model and its derivatives with respect to (amplitude, mean, sigma)."""
    offset = (centres - mean) / sigma
    shape = np.exp(-0.5 * offset**2)
    model = amplitude * shape
    jacobian = np.column_stack([shape, model * offset / sigma, model * offset**2 / sigma])
    return model, jacobian


def fit_gaussian(centres, counts, errors, start, max_iterations=100):
    """Weighted least-squares fit of ``A exp(-(x - mu)^2 / (2 sigma^2))`` (Levenberg-Marquardt).

    Parameters
    ----------
    centres, counts, errors : 1-d arrays
        Bin centres, counts and their (absolute) errors.
    start : tuple
        Initial ``(A, mu, sigma)``.

    Returns
    -------
    parameters : numpy.ndarray
        ``(A, mu, sigma)``.
    covariance : numpy.ndarray
        3 x 3, the inverse of the weighted normal matrix (errors taken as
        absolute).

    Raises
    ------
    RuntimeError
        If the fit does not converge.
    """
    weights = 1.0 / np.asarray(errors, float) ** 2
    parameters = np.asarray(start, float)
    model, jacobian = _gaussian_terms(centres, *parameters)
    chi2 = float(np.sum(weights * (counts - model) ** 2))
    damping = 1e-3
    for _ in range(max_iterations):
        normal = jacobian.T @ (weights[:, None] * jacobian)
        gradient = jacobian.T @ (weights * (counts - model))
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal)), gradient)
        trial = parameters + step
        trial_model, trial_jacobian = _gaussian_terms(centres, *trial)
        trial_chi2 = float(np.sum(weights * (counts - trial_model) ** 2))
        if trial_chi2 <= chi2:
            converged = chi2 - trial_chi2 <= 1e-10 * max(chi2, 1.0)
            parameters, model, jacobian, chi2 = trial, trial_model, trial_jacobian, trial_chi2
            damping = max(damping / 10.0, 1e-12)
            if converged:
                break
        else:
            damping *= 10.0
            if damping > 1e12:
                break
    else:
        raise RuntimeError(f"Gaussian fit did not converge in {max_iterations} iterations")
    normal = jacobian.T @ (weights[:, None] * jacobian)
    return parameters, np.linalg.inv(normal)


def fit_residuals(residual, bins=101, max_pixels=2_000_000):  # sep_engine.RESIDUAL_MAX_PIXELS: the same limit
    """Gaussian fit to the histogram of background residuals.

    The histogram spans +-5 robust sigma (MAD) about the median, so bright
    undetected wings do not drive the fit.

    Parameters
    ----------
    residual : 1-d array
        Residual pixel values; float32 is kept as is (no float64 copy).
    bins : int
        Histogram bins.
    max_pixels : int
        Larger inputs are subsampled with a regular stride to at most this
        many pixels (2 million give the mean to 7e-4 of the noise, far below
        any residual worth flagging, at a fraction of the cost on a CCD).

    Returns
    -------
    dict
        ``mean``, ``sigma``, ``mean_error``, ``sample_median``,
        ``sample_mad_sigma``, ``n_pixels``, plus ``histogram`` and ``edges``
        (arrays, for plotting).
    """
    residual = np.asarray(residual).ravel()
    if residual.size > max_pixels:
        # Contiguous copy: every later pass is several times faster than on a strided view.
        residual = np.ascontiguousarray(residual[::-(-residual.size // max_pixels)])
    if residual.dtype.kind != "f":
        residual = residual.astype(np.float64)
    finite = np.isfinite(residual)
    if not finite.all():
        residual = residual[finite]
    if residual.size < 100:
        raise ValueError(f"only {residual.size} background pixels: too few for a residual histogram")
    median = robust.median(residual)
    deviation = residual - residual.dtype.type(median)
    mad_sigma = 1.4826 * robust.median(np.abs(deviation, out=deviation))
    del deviation
    if mad_sigma <= 0:
        raise ValueError("background residuals have zero spread")
    # Equal bins: the bin index is arithmetic (in the data's precision), no search per value.
    low, high = median - 5 * mad_sigma, median + 5 * mad_sigma
    edges = np.linspace(low, high, bins + 1)
    scaled = residual - residual.dtype.type(low)
    scaled *= residual.dtype.type(bins / (high - low))
    inside = (scaled >= 0) & (scaled < bins)
    histogram = np.bincount(scaled[inside].astype(np.int32), minlength=bins)[:bins]
    del scaled, inside
    centres = 0.5 * (edges[1:] + edges[:-1])
    errors = np.sqrt(np.maximum(histogram, 1.0))
    (amplitude, mean, sigma), covariance = fit_gaussian(
        centres, histogram, errors, (histogram.max(), median, mad_sigma))
    return {
        "mean": float(mean),
        "sigma": float(abs(sigma)),
        "mean_error": float(np.sqrt(covariance[1, 1])),
        "sample_median": median,
        "sample_mad_sigma": mad_sigma,
        "n_pixels": int(residual.size),
        "histogram": histogram,
        "edges": edges,
        "amplitude": float(amplitude),
    }


STAT_KEYS = ("mean", "sigma", "mean_error", "sample_median", "sample_mad_sigma", "n_pixels")


def write_stats(path, result) -> None:
    """Write the ``key value`` statistics file atomically."""
    lines = [f"{key} {result[key]!r}" for key in STAT_KEYS]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_stats(path) -> dict:
    """Read a statistics file written by :func:`write_stats`."""
    out = {}
    for line in open(path).read().splitlines():
        key, value = line.split(None, 1)
        out[key] = int(value) if key == "n_pixels" else float(value)
    return out


def plot(path, result, title="") -> None:
    """Histogram with the fitted Gaussian, saved as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = result["edges"]
    centres = 0.5 * (edges[1:] + edges[:-1])
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.stairs(result["histogram"], edges, label="unmasked, undetected pixels")
    model = result["amplitude"] * np.exp(-0.5 * ((centres - result["mean"]) / result["sigma"]) ** 2)
    axes.plot(centres, model, label=f"Gaussian: mean {result['mean']:.3g}, sigma {result['sigma']:.3g}")
    axes.set_xlabel("background-subtracted value [ADU]")
    axes.set_ylabel("pixels")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
