"""Figures of the shear validation (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(fig, path):
    """Write a figure atomically."""
    from shapepipe.atomic import atomic_path

    with atomic_path(path) as temporary:
        fig.savefig(temporary, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_response(result, path):
    """Histogram of the per-object diagonal responses R11, R22 of the selection."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    response = result["R_objects"]
    finite = response[np.all(np.isfinite(response), axis=1)]
    if finite.size:
        low, high = np.percentile(finite, [0.5, 99.5])
        bins = np.linspace(low, high, 50)
        for i, label in enumerate(("R11", "R22")):
            ax.hist(finite[:, i], bins=bins, histtype="step", label=f"{label} (mean {result['R'][i, i]:.3f})")
    ax.set_xlabel("per-object response")
    ax.set_ylabel("objects")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def plot_g_vs_truth(result, path):
    """Estimated against true shear per tile, both components, with the fitted line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for i, ax in enumerate(axes):
        x, y = result["g_true"][:, i], result["g_est"][:, i]
        ax.plot(x, y, "o")
        span = np.array([min(x.min(), y.min()) - 0.005, max(x.max(), y.max()) + 0.005])
        ax.plot(span, span, "k:", label="g_est = g_true")
        m, c = result["m"][i], result["c"][i]
        if np.isfinite(m):
            ax.plot(span, (1 + m) * span + (c if np.isfinite(c) else 0.0), "r-",
                    label=f"m={m:.2e}+-{result['m_err'][i]:.1e}")
        ax.set_xlabel(f"true g{i + 1}")
        ax.set_ylabel(f"estimated g{i + 1}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def plot_bins(result, path):
    """m and c per S/N bin and per size-ratio bin."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for col, (label, xlabel) in enumerate((("snr", "S/N"), ("size_ratio", "T / Tpsf"))):
        rows = result["bins"].get(label, [])
        if not rows:
            continue
        centre = np.array([0.5 * (r["low"] + r["high"]) for r in rows])
        for row_index, quantity in enumerate(("m", "c")):
            ax = axes[row_index, col]
            for i in range(2):
                values = np.array([r[quantity][i] for r in rows], dtype=float)
                errors = np.array([r[f"{quantity}_err"][i] for r in rows], dtype=float)
                ax.errorbar(centre, values, yerr=errors, fmt="o-", label=f"{quantity}{i + 1}")
            ax.axhline(0.0, color="k", lw=0.5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(quantity)
            if label == "snr":
                ax.set_xscale("log")
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


BIN_LABELS = {"snr": "S/N", "size_ratio": "T / Tpsf", "psf_size": "PSF T (arcsec)", "mag": "magnitude"}


def plot_paired_bins(result, path, title=None):
    """m1, m2 per bin of each quantity of a paired result (``result['bins']``), one panel per quantity."""
    plt = _pyplot()
    names = [name for name in BIN_LABELS if result["bins"].get(name)]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.6 * max(len(names), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = result["bins"][name]
        centre = np.array([0.5 * (r["low"] + r["high"]) for r in rows])
        for i in range(2):
            values = np.array([r["m"][i] for r in rows], dtype=float)
            errors = np.array([r["m_err"][i] for r in rows], dtype=float)
            ax.errorbar(centre * (1 + 0.01 * (2 * i - 1)), values, yerr=errors, fmt="o-", label=f"m{i + 1}")
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel(BIN_LABELS[name])
        ax.set_ylabel("m")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)
