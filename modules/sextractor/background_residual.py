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


def fit_residuals(residual, bins=101):
    """Gaussian fit to the histogram of background residuals.

    The histogram spans +-5 robust sigma (MAD) about the median, so bright
    undetected wings do not drive the fit.

    Returns
    -------
    dict
        ``mean``, ``sigma``, ``mean_error``, ``sample_median``,
        ``sample_mad_sigma``, ``n_pixels``, plus ``histogram`` and ``edges``
        (arrays, for plotting).
    """
    from scipy.optimize import curve_fit

    residual = np.asarray(residual, dtype=float)
    residual = residual[np.isfinite(residual)]
    if residual.size < 100:
        raise ValueError(f"only {residual.size} background pixels: too few for a residual histogram")
    median = float(np.median(residual))
    mad_sigma = float(1.4826 * np.median(np.abs(residual - median)))
    if mad_sigma <= 0:
        raise ValueError("background residuals have zero spread")
    edges = np.linspace(median - 5 * mad_sigma, median + 5 * mad_sigma, bins + 1)
    histogram, _ = np.histogram(residual, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])

    def gaussian(value, amplitude, mean, sigma):
        return amplitude * np.exp(-0.5 * ((value - mean) / sigma) ** 2)

    errors = np.sqrt(np.maximum(histogram, 1.0))
    (amplitude, mean, sigma), covariance = curve_fit(
        gaussian, centres, histogram, p0=(histogram.max(), median, mad_sigma), sigma=errors,
        absolute_sigma=True, maxfev=5000,
    )
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
