"""The GOLD summary: run times per module, PSF residuals, truth checks, shear biases."""

from __future__ import annotations

import numpy as np

import json
import math
from pathlib import Path


def folder_bytes(folder) -> int:
    """Bytes of the files under ``folder`` (0 if absent); symbolic links are not followed."""
    total = 0
    if not folder or not Path(folder).is_dir():
        return 0
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def module_times(run_dirs) -> list[dict]:
    """One row per module run of the given run folders, from their records and job tables.

    Each row: stage run name, module run, jobs done / total, module wall time
    (s), summed job CPU time (s), largest job peak real memory (MB), the
    slowest job's duration (s) and the bytes its output folder holds now.
    """
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        record = json.loads((run_dir / "run.json").read_text())
        jobs = json.loads((run_dir / "jobs.json").read_text())
        jobs = jobs["jobs"] if isinstance(jobs, dict) else jobs
        for module in record["modules"]:
            mine = [j for j in jobs if j["module_run"] == module["module_run"]]
            rows.append({
                "run": record["run_name"],
                "module_run": module["module_run"],
                "status": module["status"],
                "jobs": len(mine),
                "done": sum(j["status"] in ("done", "done_previously") for j in mine),
                "unprocessable": sum(j["status"] in ("unprocessable", "skipped_unprocessable") for j in mine),
                "wall_s": float(module.get("wall_s") or 0.0),
                "cpu_s": sum(float(j.get("cpu_s") or 0.0) for j in mine),
                "max_job_s": max((float(j.get("duration_s") or 0.0) for j in mine), default=0.0),
                "peak_memory_mb": max((float(j.get("peak_memory_mb") or 0.0) for j in mine), default=0.0),
                "bytes": folder_bytes(module.get("output_dir")),
            })
    return rows


def psf_residuals(stats_path) -> dict:
    """PSF residual numbers from psf_validation's ``psf_validation_stats.json``."""
    stats = json.loads(Path(stats_path).read_text())
    keep = {key: stats[key] for key in ("n_stars", "n_exposures", "n_ccds", "focal_plane_layout") if key in stats}
    for key in ("e1_residual", "e2_residual", "size_relative_residual"):
        keep[key] = {"mean": stats[key]["mean"], "rms": stats[key]["rms"]}
    rho = stats.get("rho", {})
    keep["rho_max_abs_xip"] = {name: value["max_abs_xip"] for name, value in rho.items()}
    return keep


def _number(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def format_summary(summary: dict) -> str:
    """Plain-text report of :func:`shapepipe_modules.gold.cli.build_summary`'s dict."""
    lines = ["", "GOLD summary", "============", ""]
    lines.append(f"data: {summary['data']} (preset {summary.get('preset', '?')})")
    lines.append(f"simulation: {summary['simulation_s']:.1f} s" if summary.get("simulation_s") is not None
                 else "simulation: reused")
    lines.append(f"chain wall time: {summary['chain_wall_s']:.1f} s; summed job CPU time: "
                 f"{sum(r['cpu_s'] for r in summary['modules']):.1f} s")
    lines.append("")
    header = (f"{'run':<28} {'module run':<18} {'jobs':>9} {'wall s':>8} {'cpu s':>8} {'max job s':>9} "
              f"{'peak MB':>8} {'disk MB':>8}")
    lines += [header, "-" * len(header)]
    for row in summary["modules"]:
        lines.append(f"{row['run']:<28} {row['module_run']:<18} {row['done']:>4}/{row['jobs']:<4} "
                     f"{row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} {row['max_job_s']:>9.1f} {row['peak_memory_mb']:>8.0f} "
                     f"{row.get('bytes', 0) / 1e6:>8.1f}")
    total = sum(row.get("bytes", 0) for row in summary["modules"])
    lines.append(f"outputs on disk: {total / 1e6:.1f} MB (peak MB: largest job's real memory, anonymous pages)")
    after = summary.get("disk_after_keep")
    if after:
        lines.append(f"--keep final: {after['freed_bytes'] / 1e6:.1f} MB of intermediate outputs deleted, "
                     f"{after['kept_bytes'] / 1e6:.1f} MB kept (final catalogues, PSF validation)")
    lost = [f"{r['module_run']} {r['unprocessable']}" for r in summary["modules"] if r.get("unprocessable")]
    if lost:
        lines.append("unprocessable data (dropped, not failures; jobs per module run): " + ", ".join(lost))
    stages = summary.get("stages", [])
    if stages:
        slowest = max(stages, key=lambda s: s["wall_s"])
        lines.append("")
        lines.append("stage wall times: " + ", ".join(f"{s['stage']} {s['wall_s']:.1f} s" for s in stages))
        lines.append(f"dominant stage: {slowest['stage']} ({100 * slowest['wall_s'] / summary['chain_wall_s']:.0f}% "
                     "of the chain)")
    psf = summary.get("psf")
    if psf:
        lines += ["", f"PSF residuals (star - model, {psf.get('n_stars')} reserved stars, "
                      f"{psf.get('n_exposures')} exposures, {psf.get('n_ccds')} CCDs):"]
        for key in ("e1_residual", "e2_residual", "size_relative_residual"):
            lines.append(f"  {key:<24} mean {psf[key]['mean']:+.2e}  rms {psf[key]['rms']:.2e}")
        if psf.get("rho_max_abs_xip"):
            lines.append("  max |rho_i|: " + ", ".join(f"{k} {v:.1e}" for k, v in psf["rho_max_abs_xip"].items()))
    stars = summary.get("star_selection")
    if stars:
        low, high = stars["mag_range"]
        lines += ["", f"setools star selection vs truth ({low:g} < mag < {high:g}): "
                      f"purity {stars['purity']:.4f} ({stars['n_selected_stars']}/{stars['n_selected']}), "
                      f"completeness {stars['completeness']:.3f} ({stars['n_true_stars_found']}/{stars['n_true_stars']}), "
                      f"over unflagged stars {stars['completeness_unflagged']:.3f} "
                      f"({stars['n_true_stars_unflagged_found']}/{stars['n_true_stars_unflagged']})"]
        if stars.get("losses"):
            lines.append("  true stars not selected, by the first cut failed: "
                         + ", ".join(f"{name} {count}" for name, count in stars["losses"].items()))
    masks = summary.get("star_masks")
    if masks:
        ccds = masks["ccds"]
        keys = ("masked", "star_masked", "light", "light_masked", "star_masked_dark")
        lines += ["", f"masks of exposure CCDs vs the true light of bright stars (above {masks['noise_fraction']:g} "
                      "x pixel noise); fractions of the CCD area, light_masked of the light area, "
                      "star_masked_dark of the halo/spike mask:"]
        lines.append(f"  {'CCD':<12}" + "".join(f" {k:>16}" for k in keys))
        for row in ccds:
            lines.append(f"  {row['ccd']:<12}" + "".join(f" {row[k]:>16.4f}" for k in keys))
        # light_masked and star_masked_dark: means over the CCDs where they are defined.
        lit = [r for r in ccds if r["light"] > 0] or ccds
        masked = [r for r in ccds if r["star_masked"] > 0] or ccds
        pool = {"light_masked": lit, "star_masked_dark": masked}
        lines.append(f"  {'mean':<12}" + "".join(f" {np.mean([r[k] for r in pool.get(k, ccds)]):>16.4f}"
                                               for k in keys))
    sm = summary.get("spread_model")
    if sm:
        lines += ["", f"SPREAD_MODEL classification (s = SPREAD_MODEL + 2 SPREADERR_MODEL; star |s| < "
                      f"{sm['star_thresh']}, galaxy s > {sm['gal_thresh']}) vs truth, by measured MAG:"]
        lines.append(f"  {'mag':<12} {'n':>6} {'stars':>6} {'gals':>6} {'as gal':>7} {'gal purity':>10} {'star compl':>10}")
        for row in sm["bins"] + [dict(sm["bright"], mag_range=["", f"< {sm['bright']['mag_limit']:g}"])]:
            low, high = row["mag_range"]
            label = f"{low}-{high}" if low != "" else high
            lines.append(f"  {label:<12} {row['n']:>6} {row['n_true_stars']:>6} {row['n_true_galaxies']:>6} "
                         f"{row['n_classified_galaxies']:>7} {_number(row['galaxy_purity']):>10} "
                         f"{_number(row['star_completeness']):>10}")
    shear = summary.get("shear")
    if shear:
        lines += ["", "shear bias (shapepipe_validate):"]
        if shear.get("ring"):
            lines.append("  ring test: galaxies simulated in pairs rotated by 90 degrees (30 arcsec apart); only "
                         "pairs with both galaxies selected in one tile are used, so that their intrinsic shapes "
                         "cancel")
        elif "ring" in shear:
            lines.append("  galaxies with independent intrinsic shapes (no ring): shape noise is not cancelled")
        if shear.get("selection"):
            lines.append(f"  selection: {shear['selection']}")
        if shear.get("n_selected") is not None:
            counts = shear.get("counts", {})
            lines.append("  selected per tile: " + ", ".join(str(n) for n in shear["n_selected"])
                         + (f" (of {counts['n_used']} matched galaxies, {counts['n_matched']} matched objects, "
                            f"{counts['n_detected']} detections)" if counts else ""))
        for name in ("R", "R_sel"):
            if shear.get(name) is not None:
                matrix = shear[name]
                lines.append(f"  {name:<5} = [[{matrix[0][0]:+.4f}, {matrix[0][1]:+.4f}], "
                             f"[{matrix[1][0]:+.4f}, {matrix[1][1]:+.4f}]]")
        for key in ("m1", "m2", "c1", "c2"):
            if key in shear:
                value, error = shear[key]
                lines.append(f"  {key} = {value:+.4f} +- {error:.4f}" + (
                    f"  ({value / error:+.1f} sigma)" if key.startswith("m") and error > 0 else ""))
    elif summary.get("shear_note") and not summary.get("paired"):
        lines += ["", summary["shear_note"]]
    paired = summary.get("paired")
    if paired:
        lines += ["", "paired shear bias (shapepipe_validate --paired; +g and -g runs of the same galaxies and "
                      "noise, joined by truth id):"]
        lines.append(f"  galaxies in both runs: {paired['n_pairs']} (plus {paired.get('n_plus')}, minus "
                     f"{paired.get('n_minus')} matched); selected on both: {paired['n_selected']}")
        if paired.get("selection"):
            lines.append(f"  selection: {paired['selection']}")
        for k in (0, 1):
            m, m_err = paired["m"][k], paired["m_err"][k]
            c, c_err = paired["c"][k], paired["c_err"][k]
            lines.append(f"  m{k + 1} = {_number(m, 4)} +- {_number(m_err, 2)}    c{k + 1} = {_number(c, 3)} +- "
                         f"{_number(c_err, 2)}")
        cpu = paired.get("chain_cpu_s", {})
        if cpu:
            lines.append("  summed job CPU time of the chains: " + ", ".join(f"{k} {v:.0f} s" for k, v in cpu.items()))
    return "\n".join(lines) + "\n"
