"""PSF validation figures (PNG, matplotlib's Agg backend).

- :func:`plot_focal_plane`: star, model and residual panels of one quantity,
  every CCD drawn at its place in the focal plane with its bins;
- :func:`plot_histograms`: distributions of stars, model and residuals;
- :func:`plot_rho`: rho statistics, |xi+| on log axes (open markers where
  negative).
"""

from __future__ import annotations

import numpy as np

from shapepipe_modules.io.figures import agg_figure, save_png

QUANTITIES = {
    "e1": ("e_1", "bwr"),
    "e2": ("e_2", "bwr"),
    "size": ("T = 2 sigma^2 [pix^2]", "viridis"),
}


def _hist(axis, values, bins, value_range=None, **kwargs):
    """Filled histogram as one step patch (as ``hist``'s touching bars, without a patch per bin)."""
    values = np.asarray(values, dtype=float)
    if value_range is None:  # as hist: the range of the finite values
        finite = values[np.isfinite(values)]
        value_range = (float(finite.min()), float(finite.max())) if finite.size else None
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    axis.stairs(counts, edges, fill=True, baseline=0, **kwargs)


def _draw_ccds(axis, focal_plane, values_by_ccd, vmin, vmax, cmap):
    mesh = None
    for ccd in focal_plane.ccds():
        placement = focal_plane[ccd]
        values = values_by_ccd[ccd]
        nbx, nby = values.shape
        xe = np.linspace(0.5, placement.nx + 0.5, nbx + 1)
        ye = np.linspace(0.5, placement.ny + 0.5, nby + 1)
        grid_x, grid_y = np.meshgrid(xe, ye, indexing="ij")
        u, v = placement(grid_x, grid_y)
        mesh = axis.pcolormesh(u, v, np.ma.masked_invalid(values), vmin=vmin, vmax=vmax, cmap=cmap,
                               shading="flat")
        # CCD outline and number.
        edge_x = np.r_[xe, np.full(nby, xe[-1]), xe[::-1], np.full(nby, xe[0])]
        edge_y = np.r_[np.full(nbx + 1, ye[0]), ye[1:], np.full(nbx + 1, ye[-1]), ye[-2::-1]]
        eu, ev = placement(edge_x, edge_y)
        axis.plot(np.r_[eu, eu[:1]], np.r_[ev, ev[:1]], color="0.4", lw=0.5)
        cu, cv = placement([(placement.nx + 1) / 2], [(placement.ny + 1) / 2])
        axis.text(cu[0], cv[0], str(ccd), ha="center", va="center", fontsize=6, color="0.3")
    axis.set_aspect("equal")
    axis.invert_xaxis()  # East to the left
    axis.set_xlabel("xi [deg] (East to the left)")
    axis.set_ylabel("eta [deg]")
    return mesh


def _symmetric(values, cap=None):
    finite = np.concatenate([np.ravel(v) for v in values])
    finite = finite[np.isfinite(finite)]
    limit = cap if cap else (float(np.abs(finite).max()) if finite.size else 1.0)
    return -(limit or 1.0), (limit or 1.0)


def plot_focal_plane(maps, focal_plane, quantity: str, path, limits=None, residual_limit=None):
    """Star, model and residual focal-plane maps of ``e1``, ``e2`` or ``size``.

    Parameters
    ----------
    maps : dict
        From :func:`.focal_plane.binned_maps`.
    focal_plane : FocalPlane
    quantity : {'e1', 'e2', 'size'}
    path : path-like
        PNG written.
    limits : (float, float), optional
        Colour range of the star and model panels (default: from the data;
        symmetric for ellipticities).
    residual_limit : float, optional
        Colour range (+-) of the residual panel.
    """
    label, cmap = QUANTITIES[quantity]
    star = maps[f"{quantity}_star"]
    model = maps[f"{quantity}_psf"]
    residual = maps[f"{quantity}_residual"]
    if limits is None:
        if quantity == "size":
            both = np.concatenate([np.ravel(v) for v in (*star.values(), *model.values())])
            both = both[np.isfinite(both)]
            limits = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        else:
            limits = _symmetric(list(star.values()) + list(model.values()))
    res_limits = _symmetric(list(residual.values()), residual_limit)
    res_label = "(T_star - T_model) / T_star" if quantity == "size" else f"{label} star - model"
    figure = agg_figure(figsize=(18, 6.5))
    axes = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.05, right=0.97, wspace=0.3, top=0.85)
    panels = ((star, f"{label}: stars", limits, cmap), (model, f"{label}: model", limits, cmap),
              (residual, res_label, res_limits, "bwr"))
    for axis, (values, title, (vmin, vmax), colours) in zip(axes, panels):
        mesh = _draw_ccds(axis, focal_plane, values, vmin, vmax, colours)
        finite = np.concatenate([np.ravel(v) for v in values.values()])
        finite = finite[np.isfinite(finite)]
        rms = float(np.sqrt(np.mean(finite ** 2))) if finite.size else float("nan")
        axis.set_title(f"{title}\nbin mean: rms {rms:.3g}, std {np.std(finite) if finite.size else np.nan:.3g}")
        figure.colorbar(mesh, ax=axis, shrink=0.8)
    save_png(figure, path)


def plot_counts(maps, focal_plane, path):
    """Number of stars per bin in the focal plane."""
    counts = maps["count"]
    total = int(sum(v.sum() for v in counts.values()))
    peak = max((float(v.max()) for v in counts.values()), default=1.0)
    figure = agg_figure(figsize=(8, 7))
    axis = figure.subplots()
    shown = {ccd: np.where(v > 0, v, np.nan) for ccd, v in counts.items()}
    mesh = _draw_ccds(axis, focal_plane, shown, 0, max(peak, 1.0), "magma")
    axis.set_title(f"Validation stars per bin (total {total})")
    figure.colorbar(mesh, ax=axis, shrink=0.8)
    save_png(figure, path)


def plot_histograms(sample, path, bins: int = 50):
    """Histograms of e1, e2 and size of stars and model, and of their residuals."""
    figure = agg_figure(figsize=(16, 9))
    axes = figure.subplots(2, 3)
    figure.subplots_adjust(hspace=0.35, wspace=0.25)
    rows = (("e1", sample.e1_star, sample.e1_psf, sample.de1, "e1 star - model"),
            ("e2", sample.e2_star, sample.e2_psf, sample.de2, "e2 star - model"),
            ("T [pix^2]", sample.size_star, sample.size_psf, sample.dsize, "(T_star - T_model) / T_star"))
    for column, (name, star, model, residual, residual_name) in enumerate(rows):
        both = np.concatenate([star, model])
        span = (np.percentile(both, 0.5), np.percentile(both, 99.5)) if both.size else (0, 1)
        axis = axes[0, column]
        _hist(axis, star, bins, span, alpha=0.5, color="C0", label="stars")
        _hist(axis, model, bins, span, alpha=0.5, color="C1", label="model")
        axis.set_xlabel(name)
        axis.legend()
        axis = axes[1, column]
        _hist(axis, residual, bins, color="C2")
        mean = float(np.mean(residual)) if residual.size else float("nan")
        std = float(np.std(residual)) if residual.size else float("nan")
        axis.axvline(0.0, color="k", lw=0.8)
        axis.set_xlabel(residual_name)
        axis.set_title(f"mean {mean:.3g}, std {std:.3g}")
    figure.suptitle(f"PSF validation: {len(sample)} reserved stars")
    save_png(figure, path)


def plot_rho(rho: dict, path, ylim_left=None, ylim_right=None, style: str = "HSC"):
    """Rho statistics on two panels: rho0, rho1, rho3, rho4 | rho2, rho5.

    ``style`` HSC plots ``|xi+|``; DES plots ``theta * |xi+|``; UNIONS plots
    the signed ``xi+`` on a symmetric-log axis (as ShapePipe's UNIONS style,
    through shear_psf_leakage, plots it without absolute values).
    """
    figure = agg_figure(figsize=(14, 6))
    axes = figure.subplots(1, 2)
    groups = (("rho0", "rho1", "rho3", "rho4"), ("rho2", "rho5"))
    for axis, names, ylim in zip(axes, groups, (ylim_left, ylim_right)):
        for index, name in enumerate(names):
            values = rho[name]
            filled = values["npairs"] > 0
            theta = values["theta"][filled]
            factor = theta if style == "DES" else 1.0
            xip = values["xip"][filled] * factor
            sigma = values["sigma_xip"][filled] * factor
            colour = f"C{index if axis is axes[0] else index + 4}"
            if style == "UNIONS":
                axis.errorbar(theta, xip, yerr=sigma, fmt="o-", color=colour, lw=0.8, label=f"{name}")
                continue
            positive = xip >= 0
            axis.errorbar(theta[positive], xip[positive], yerr=sigma[positive], fmt="o", color=colour,
                          label=f"{name}")
            axis.errorbar(theta[~positive], -xip[~positive], yerr=sigma[~positive], fmt="o", mfc="none",
                          color=colour)
            axis.plot(theta, np.abs(xip), color=colour, lw=0.8)
        axis.set_xscale("log")
        if style == "UNIONS":
            finite = [np.abs(rho[n]["xip"][rho[n]["npairs"] > 0]) for n in names]
            finite = np.concatenate(finite) if finite else np.array([])
            finite = finite[finite > 0]
            axis.set_yscale("symlog", linthresh=float(np.min(finite)) if finite.size else 1e-8)
        else:
            axis.set_yscale("log")
        if ylim:
            axis.set_ylim(*ylim)
        axis.set_xlabel("theta [arcmin]")
        axis.set_ylabel({"DES": "theta |xi+|", "UNIONS": "xi+"}.get(style, "|xi+|  (open: negative)"))
        axis.legend()
    figure.suptitle("Rho statistics (reserved stars)")
    save_png(figure, path)
