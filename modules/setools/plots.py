"""PLOT sections: line/point plots, colour-coded scatter plots and histograms.

matplotlib is imported inside :func:`make_plot` (Agg canvas, no pyplot
state), so importing this file stays cheap and plotting is thread-safe.
PNG files are written by :func:`shapepipe_modules.io.figures.save_png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from shapepipe.atomic import atomic_path

from .actions import evaluate_expression, render_label
from .config import PlotSection
from .language import SetoolsError


def _array(plot: PlotSection, key: str, series: str, columns, masks, config_path) -> np.ndarray:
    expression = plot.get(key, series)
    value = np.asarray(evaluate_expression(expression, columns, masks, config_path), dtype=float)
    return value.ravel() if value.ndim else value.reshape(1)


def _paired(plot: PlotSection, series: str, keys, columns, masks, config_path):
    arrays = [_array(plot, key, series, columns, masks, config_path) for key in keys]
    sizes = {a.size for a in arrays if a.size != 1}
    if len(sizes) > 1:
        detail = ", ".join(f"{key}: {a.size}" for key, a in zip(keys, arrays))
        raise SetoolsError(f"[PLOT:{plot.name}] series {series or '(single)'!r}: lengths differ ({detail})",
                           config_path, plot.line)
    size = sizes.pop() if sizes else 1
    return [np.broadcast_to(a, (size,)) for a in arrays]


def make_plot(plot: PlotSection, columns: Mapping, masks: Mapping, output_base, config_path: str = "") -> Path:
    """Draw one PLOT section and save it as ``<output_base>.<format>``.

    Parameters
    ----------
    plot : PlotSection
        The section (type, series, decorations).
    columns, masks : Mapping
        Catalogue columns and computed masks.
    output_base : path-like
        Output path without extension (``plot/<name><number>``).
    config_path : str
        The ``.setools`` file, for error messages.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from shapepipe_modules.io.figures import agg_figure, save_png

    figure = agg_figure()
    axes = figure.add_subplot()
    title = render_label(plot.get("TITLE", ""), columns, masks, config_path)
    figure.suptitle(title or "")
    has_label = False
    last_scatter = None
    for series in plot.series():
        label = render_label(plot.get("LABEL", series), columns, masks, config_path)
        has_label |= label is not None
        color = plot.get("COLOR", series)
        alpha = plot.get("ALPHA", series)
        if plot.kind == "plot":
            x, y = _paired(plot, series, ("X", "Y"), columns, masks, config_path)
            axes.plot(
                x, y,
                linestyle=plot.get("LINE", series, ""),
                marker=plot.get("MARKER", series, "+"),
                markersize=plot.get("MARKERSIZE", series, 1.0),
                color=color, alpha=alpha, label=label,
            )
        elif plot.kind == "scatter":
            x, y, c = _paired(plot, series, ("X", "Y", "SCATTER"), columns, masks, config_path)
            if x.size:
                last_scatter = axes.scatter(x, y, c=c, marker=plot.get("MARKER", series, "+"),
                                            alpha=alpha, label=label)
        else:
            y = _array(plot, "Y", series, columns, masks, config_path)
            y = y[np.isfinite(y)]
            bins = plot.get("BIN", series, 50)
            histtype = plot.get("HTYPE", "", "bar")
            log = plot.get("LOG", "", False)
            if histtype == "bar" and not log:
                # One data set per call: hist's touching bars are one filled step outline,
                # drawn as one patch instead of one per bin. (Every series of the plot takes
                # this branch, so the default colours follow the same cycle as hist's.)
                counts, edges = np.histogram(y, bins=bins)
                axes.stairs(counts, edges, fill=True, baseline=0, alpha=alpha, label=label,
                            **({} if color is None else {"color": color}))
            else:
                axes.hist(y, bins=bins, color=color, alpha=alpha, label=label, histtype=histtype, log=log)
    if last_scatter is not None:
        figure.colorbar(last_scatter, ax=axes)
    for key, setter in (("XLIM", axes.set_xlim), ("YLIM", axes.set_ylim)):
        limits = plot.get(key, "")
        if limits is not None:
            setter(*limits)
    if has_label and axes.get_legend_handles_labels()[0]:
        axes.legend()
    for key, setter in (("XLABEL", axes.set_xlabel), ("YLABEL", axes.set_ylabel)):
        text = render_label(plot.get(key, ""), columns, masks, config_path)
        if text is not None:
            setter(text)
    fmt = plot.get("FORMAT", "", "png")
    path = Path(f"{output_base}.{fmt}")
    if fmt == "png":
        return save_png(figure, path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=fmt)
    return path
