"""The whole PSF validation report from a merged star catalogue (``full_starcat``).

:func:`make_report` selects the reserved stars, writes the focal-plane maps,
histograms, rho statistics (plot and FITS table) and the stats file, and
returns the stats. Callable without the runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .focal_plane import FocalPlane, binned_maps
from .stats import rho_statistics, rho_summary, rho_table, select_stars, summary


@dataclass
class ReportSettings:
    """What to compute and draw (the module's options)."""

    nbins: tuple = (5, 10)
    reserved_only: bool = True
    remove_outliers: bool = False
    plot_maps: bool = True
    plot_histograms: bool = True
    rho: bool = True
    rho_min_sep: float = 0.1
    rho_max_sep: float = 100.0
    rho_nbins: int = 20
    rho_bin_slop: float = 0.1
    rho_style: str = "HSC"
    rho_ylim_left: tuple | None = None
    rho_ylim_right: tuple | None = None
    e_limit: float | None = None
    de_limit: float | None = None
    size_limits: tuple | None = None
    dsize_limit: float | None = None
    outputs: list = field(default_factory=list)


def focal_plane_for(sample, header_store=None) -> FocalPlane:
    """The focal-plane layout: from the header store's WCS if given, else MegaCam's, else a grid."""
    ccds = sorted(set(sample.ccd.tolist()))
    if header_store is not None:
        exposures = [e for e in sample.exposure.tolist() if e in header_store]
        if exposures:
            names, counts = np.unique(exposures, return_counts=True)
            reference = str(names[np.argmax(counts)])
            wcs, sizes = {}, {}
            for ccd in header_store.ccds(reference):
                header = header_store.header(reference, ccd)
                sizes[ccd] = (int(header.get("ZNAXIS1", header.get("NAXIS1", 0))),
                              int(header.get("ZNAXIS2", header.get("NAXIS2", 0))))
                if sizes[ccd][0] > 0 and sizes[ccd][1] > 0:
                    wcs[ccd] = header_store.wcs(reference, ccd)
            if wcs:
                return FocalPlane.from_wcs(wcs, sizes)
    if len(sample) and min(ccds) >= 0 and max(ccds) < 40 and sample.x.max() <= 2049 and sample.y.max() <= 4613:
        return FocalPlane.megacam()
    nx = int(np.ceil(sample.x.max())) if len(sample) else 1
    ny = int(np.ceil(sample.y.max())) if len(sample) else 1
    return FocalPlane.grid(ccds or [0], nx, ny)


def make_report(table, output_dir, settings: ReportSettings, header_store=None, logger=None) -> dict:
    """Write the validation figures, rho statistics and stats file; return the stats.

    Parameters
    ----------
    table : astropy.table.Table
        Merged star catalogue (``merge_starcat`` output).
    output_dir : path-like
    settings : ReportSettings
    header_store : HeaderStore, optional
        CCD WCSs for the focal-plane layout.
    logger : logging.Logger, optional

    Returns
    -------
    dict
        The content of ``psf_validation_stats.json``.
    """
    from shapepipe.atomic import atomic_path

    from . import plots

    output_dir = Path(output_dir)
    sample = select_stars(table, settings.reserved_only, settings.remove_outliers)
    stats = {"selection": sample.counts, "reserved_only": settings.reserved_only, **summary(sample)}
    if logger is not None:
        logger.info("validation stars: %s", sample.counts)
    if len(sample) == 0:
        raise ValueError(f"no usable validation star left after the cuts {sample.counts}")
    written = []
    if settings.plot_maps:
        focal_plane = focal_plane_for(sample, header_store)
        stats["focal_plane_layout"] = focal_plane.source
        maps = binned_maps(sample, focal_plane, settings.nbins)
        e_limits = (-settings.e_limit, settings.e_limit) if settings.e_limit else None
        for quantity, limits, residual in (("e1", e_limits, settings.de_limit), ("e2", e_limits, settings.de_limit),
                                           ("size", settings.size_limits, settings.dsize_limit)):
            path = output_dir / f"focal_plane_{quantity}.png"
            plots.plot_focal_plane(maps, focal_plane, quantity, path, limits, residual)
            written.append(path.name)
        plots.plot_counts(maps, focal_plane, output_dir / "focal_plane_nstar.png")
        written.append("focal_plane_nstar.png")
        for quantity in ("e1", "e2", "size"):
            values = np.concatenate([np.ravel(v) for v in maps[f"{quantity}_residual"].values()])
            values = values[np.isfinite(values)]
            stats[f"{quantity}_residual_binned_rms"] = float(np.sqrt(np.mean(values ** 2))) if values.size else None
    if settings.plot_histograms:
        plots.plot_histograms(sample, output_dir / "histograms.png")
        written.append("histograms.png")
    if settings.rho:
        rho = rho_statistics(sample, settings.rho_min_sep, settings.rho_max_sep, settings.rho_nbins,
                             settings.rho_bin_slop)
        from shapepipe_modules.io.tables import write_fits_table

        write_fits_table(output_dir / "rho_stats.fits", rho_table(rho), extname="RHO_STATS")
        plots.plot_rho(rho, output_dir / "rho_stats.png", settings.rho_ylim_left, settings.rho_ylim_right,
                       settings.rho_style)
        written += ["rho_stats.fits", "rho_stats.png"]
        stats["rho"] = rho_summary(rho)
    stats["outputs"] = written
    with atomic_path(output_dir / "psf_validation_stats.json") as temporary:
        Path(temporary).write_text(json.dumps(stats, indent=2, default=float) + "\n")
    with atomic_path(output_dir / "psf_validation_stats.txt") as temporary:
        Path(temporary).write_text(stats_text(stats))
    return stats


def stats_text(stats: dict) -> str:
    """A short human-readable version of the stats."""
    lines = ["# PSF validation summary", ""]
    selection = stats["selection"]
    lines.append(f"stars in catalogue: {selection['rows']}; kept: {selection['kept']} "
                 f"(reserved only: {stats['reserved_only']})")
    for key, value in selection.items():
        if key not in ("rows", "kept"):
            lines.append(f"  removed ({key}): {value}")
    lines.append(f"exposures: {stats['n_exposures']}, CCDs: {stats['n_ccds']}")
    lines.append("")
    lines.append(f"{'quantity':<26}{'mean':>14}{'std':>14}{'rms':>14}")
    for key in ("e1_star", "e1_psf", "e1_residual", "e2_star", "e2_psf", "e2_residual", "size_star", "size_psf",
                "size_relative_residual"):
        value = stats[key]
        lines.append(f"{key:<26}{value['mean']:>14.5g}{value['std']:>14.5g}{value['rms']:>14.5g}")
    if "rho" in stats:
        lines.append("")
        lines.append("rho statistics: largest |xi+| (at theta, arcmin)")
        for name, value in stats["rho"].items():
            lines.append(f"  {name}: {value['max_abs_xip']:.4g} at {value['theta_arcmin']:.3g}")
    return "\n".join(lines) + "\n"
