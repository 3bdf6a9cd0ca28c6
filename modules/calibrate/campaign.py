"""The merge of a calibration campaign: pooled paired estimate, per-seed rows, bins, CPU time, projection.

Each finished seed leaves ``seed-NNNNNN.json`` (its record: CPU time,
parameters, its own m and c) and ``pairs-NNNNNN.fits`` (every galaxy found
in both runs, all metacal branches) in the output folder of a
``calibration_seed`` job. :func:`merge_campaign` pools the galaxies of every
seed and runs the paired estimator once on the pool (not an average of
per-seed m), then per seed with the same selection, and in bins of S/N,
T/Tpsf, PSF size and magnitude. It writes one results table
(``calibration.csv``: per-seed, combined and bin rows), ``calibration.json``,
``calibration.txt`` and two figures, each atomically.

CPU: the sum of the seeds' measured CPU times (:mod:`.seed`). Figure of
merit: ``sigma_m * sqrt(CPU hours)`` with ``sigma_m`` the quadratic mean of
the m1 and m2 errors; the CPU hours for a target ``sigma_m`` scale as
``CPU hours * (sigma_m / target)^2``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

SEED_NAME = re.compile(r"^seed-(\d+)\.json$")
TABLE_COLUMNS = ("row", "seed", "quantity", "low", "high", "n", "m1", "m1_err", "m2", "m2_err", "c1", "c1_err",
                 "c2", "c2_err", "cpu_hours")


def seed_number(seed: int) -> str:
    """File number of a seed (``-000017``)."""
    return f"-{int(seed):06d}"


def find_seed_results(folders) -> dict:
    """Finished seeds under the given folders: ``{seed: (record path, pair table path)}``.

    A seed is finished when both files exist (they are published together
    when its job succeeds). Found twice (a seed run again by hand), the
    newer record wins.
    """
    found = {}
    for folder in folders:
        for record in Path(folder).rglob("seed-*.json"):
            match = SEED_NAME.match(record.name)
            if not match or any(part.startswith(".") for part in record.parts):
                continue  # staging folders of running jobs
            pairs = record.with_name(f"pairs-{match.group(1)}.fits")
            if not pairs.is_file():
                continue
            seed = int(match.group(1))
            if seed not in found or record.stat().st_mtime > found[seed][0].stat().st_mtime:
                found[seed] = (record, pairs)
    return dict(sorted(found.items()))


def _row(kind, estimate, seed="", quantity="", low="", high="", cpu_hours=""):
    m, m_err, c, c_err = (np.asarray(estimate[k], dtype=float) for k in ("m", "m_err", "c", "c_err"))
    return {"row": kind, "seed": seed, "quantity": quantity, "low": low, "high": high,
            "n": estimate.get("n_selected", estimate.get("n")), "m1": m[0], "m1_err": m_err[0], "m2": m[1],
            "m2_err": m_err[1], "c1": c[0], "c1_err": c_err[0], "c2": c[1], "c2_err": c_err[1],
            "cpu_hours": cpu_hours}


def sigma_m(m_err) -> float:
    """Quadratic mean of the m1 and m2 errors (the campaign's sigma_m)."""
    m_err = np.asarray(m_err, dtype=float)
    m_err = m_err[np.isfinite(m_err)]  # a preset shearing one component only measures one m
    return float(np.sqrt(np.mean(m_err ** 2))) if m_err.size else float("nan")


def merge_campaign(results, out_dir, selection=None, weights="none", n_boot=200, n_bins=4, target_sigma_m=1e-3,
                   boot_seed=1, plots=True, ring=None) -> dict:
    """Pool the seeds, estimate m and c, write the results table, the record and the figures.

    Parameters
    ----------
    results : dict
        :func:`find_seed_results` output.
    out_dir : path-like
        Folder of ``calibration.csv``, ``calibration.json``,
        ``calibration.txt``, ``m_bins.png``, ``m_per_seed.png``.
    selection : shapepipe_modules.validate.shear.Selection, optional
    weights : {"none", "ivar"}
    target_sigma_m : float
        sigma_m for which the CPU hours are projected.
    ring : bool, optional
        Bootstrap ring pairs whole (default: when the seeds were simulated
        with ``ring``).

    Returns
    -------
    dict
        The record written to ``calibration.json``.
    """
    from shapepipe.atomic import write_text_atomic
    from shapepipe_modules.validate.paired import concatenate_pairs, paired_estimate, read_pairs
    from shapepipe_modules.validate.shear import Selection, ValidationError

    if not results:
        raise ValidationError("no finished seed to merge")
    selection = selection or Selection()
    records, tables = {}, {}
    for seed, (record_path, pairs_path) in results.items():
        records[seed] = json.loads(Path(record_path).read_text())
        tables[seed] = read_pairs(pairs_path)
    presets = {(r["preset"], json.dumps(r["parameters"], sort_keys=True)) for r in records.values()}
    if len(presets) > 1:
        raise ValidationError("the seeds were simulated with different presets or parameters: "
                              + "; ".join(sorted({p for p, _ in presets})) + " (one campaign, one preset)")
    if ring is None:
        ring = bool(next(iter(records.values()))["parameters"].get("ring", False))
    pooled = concatenate_pairs(tables.values())
    combined = paired_estimate(pooled, selection, weights, n_boot, boot_seed, n_bins, ring=ring)
    cpu_s = float(sum(r["cpu_s"] for r in records.values()))
    cpu_hours = cpu_s / 3600.0
    rows, per_seed = [], []
    for seed, table in tables.items():
        try:
            estimate = paired_estimate(table, selection, weights, max(n_boot // 2, 20), boot_seed + seed, bins=(),
                                       ring=ring)
        except (ValueError, np.linalg.LinAlgError):
            continue
        hours = records[seed]["cpu_s"] / 3600.0
        rows.append(_row("seed", estimate, seed=seed, cpu_hours=hours))
        per_seed.append({"seed": seed, "m": estimate["m"].tolist(), "m_err": estimate["m_err"].tolist(),
                         "c": estimate["c"].tolist(), "c_err": estimate["c_err"].tolist(),
                         "n_selected": estimate["n_selected"], "cpu_hours": hours,
                         "wall_s": records[seed].get("wall_s")})
    rows.append(_row("combined", combined, seed="all", cpu_hours=cpu_hours))
    for quantity, bins in combined["bins"].items():
        for entry in bins:
            rows.append(_row("bin", entry, quantity=quantity, low=entry["low"], high=entry["high"]))
    sig = sigma_m(combined["m_err"])
    figure_of_merit = sig * np.sqrt(cpu_hours)
    projected = cpu_hours * (sig / target_sigma_m) ** 2
    first = next(iter(records.values()))
    record = {
        "preset": first["preset"], "overrides": first.get("overrides", {}), "parameters": first["parameters"],
        "seeds": list(tables), "n_seeds": len(tables), "selection": combined["selection"], "weights": weights, "ring_bootstrap": bool(ring),
        "m": combined["m"].tolist(), "m_err": combined["m_err"].tolist(), "c": combined["c"].tolist(),
        "c_err": combined["c_err"].tolist(), "m_err_seeds": combined["m_err_seeds"].tolist(),
        "c_err_seeds": combined["c_err_seeds"].tolist(), "ring": bool(ring), "n_c": combined["n_c"],
        "c_all": combined["c_all"].tolist(), "c_all_err": combined["c_all_err"].tolist(),
        "c_all_err_seeds": combined["c_all_err_seeds"].tolist(),
        "e_int_mean": combined["e_int_mean"].tolist(), "e_int_mean_err": combined["e_int_mean_err"].tolist(),
        "R": combined["R"].tolist(), "R_sel": combined["R_sel"].tolist(),
        "n_pairs": combined["n_pairs"], "n_selected": combined["n_selected"], "n_m": combined["n_m"].tolist(),
        "bins": combined["bins"], "per_seed": per_seed,
        "cpu_s": cpu_s, "cpu_hours": cpu_hours, "cpu_hours_per_seed": cpu_hours / len(tables),
        "sigma_m": sig, "figure_of_merit": float(figure_of_merit),
        "target_sigma_m": float(target_sigma_m), "projected_cpu_hours": float(projected),
        "significance": [float(m / max(e, j)) if np.isfinite(e) and e > 0 else None
                         for m, e, j in zip(combined["m"], combined["m_err"],
                                            np.nan_to_num(combined["m_err_seeds"], nan=0.0))],
        # Against the larger of the two errors: galaxy bootstrap or seed jackknife.
        "c_significance": [float(c / max(e, j)) if np.isfinite(e) and e > 0 else None
                           for c, e, j in zip(combined["c"], combined["c_err"],
                                              np.nan_to_num(combined["c_err_seeds"], nan=0.0))],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    write_text_atomic(out / "calibration.csv", buffer.getvalue())
    write_text_atomic(out / "calibration.json", json.dumps(_jsonable(record), indent=1) + "\n")
    write_text_atomic(out / "calibration.txt", format_campaign(record) + "\n")
    if plots:
        from shapepipe_modules.validate import plots as validate_plots

        validate_plots.plot_paired_bins(combined, out / "m_bins.png",
                                        title=f"{record['preset']}: {len(tables)} seeds, pooled")
        plot_per_seed(record, out / "m_per_seed.png")
    return record


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_campaign(record) -> str:
    """The printed summary of a merged campaign."""
    lines = [f"calibration campaign: preset {record['preset']}, {record['n_seeds']} seeds "
             f"({', '.join(map(str, record['seeds'][:12]))}{' ...' if record['n_seeds'] > 12 else ''})",
             f"  galaxies in both runs {record['n_pairs']}, selected on both {record['n_selected']}; "
             f"selection: {record['selection']}; weights {record['weights']}"]
    seeds_m = record.get("m_err_seeds") or [None, None]
    seeds_c = record.get("c_err_seeds") or [None, None]
    c_sig = record.get("c_significance") or [None, None]

    def jack(value):
        return f" (seeds {value:.5f})" if value is not None and np.isfinite(value) else ""

    for i in range(2):
        lines.append(f"  m{i + 1} = {record['m'][i]:+.5f} +- {record['m_err'][i]:.5f}{jack(seeds_m[i])}"
                     f" ({(record['significance'][i] or float('nan')):+.1f} sigma)    "
                     f"c{i + 1} = {record['c'][i]:+.5f} +- {record['c_err'][i]:.5f}{jack(seeds_c[i])}"
                     f" ({(c_sig[i] if c_sig[i] is not None else float('nan')):+.1f} sigma)")
    lines.append("  errors: bootstrap over galaxies (ring pairs whole); in brackets, jackknife over seeds; "
                 "sigma against the larger")
    from shapepipe_modules.validate.cli import additive_lines

    lines.extend("  " + line for line in additive_lines(record))
    lines.append(f"  per seed:  {'seed':>6} {'n':>6} {'m1':>9} {'+-':>7} {'m2':>9} {'+-':>7} {'c1':>9} {'+-':>7} "
                 f"{'c2':>9} {'+-':>7} {'CPU h':>7}")
    for row in record["per_seed"]:
        lines.append(f"             {row['seed']:>6} {row['n_selected']:>6} {row['m'][0]:+9.4f} {row['m_err'][0]:7.4f} "
                     f"{row['m'][1]:+9.4f} {row['m_err'][1]:7.4f} {row['c'][0]:+9.4f} {row['c_err'][0]:7.4f} "
                     f"{row['c'][1]:+9.4f} {row['c_err'][1]:7.4f} {row['cpu_hours']:7.3f}")
    for quantity, bins in record["bins"].items():
        text = "; ".join(f"[{b['low']:.3g}, {b['high']:.3g}) m1 {b['m'][0]:+.3f}+-{b['m_err'][0]:.3f} "
                         f"m2 {b['m'][1]:+.3f}+-{b['m_err'][1]:.3f}" for b in bins)
        lines.append(f"  bins of {quantity}: {text}")
    lines.append(f"  CPU time: {record['cpu_hours']:.3f} CPU hours ({record['cpu_hours_per_seed'] * 60:.1f} CPU min "
                 f"per seed), measured")
    lines.append(f"  sigma_m = {record['sigma_m']:.5f}; figure of merit sigma_m * sqrt(CPU hours) = "
                 f"{record['figure_of_merit']:.4f}")
    lines.append(f"  projected for sigma_m = {record['target_sigma_m']:g}: {record['projected_cpu_hours']:.1f} CPU hours "
                 f"({record['projected_cpu_hours'] / max(record['cpu_hours_per_seed'], 1e-12):.0f} seeds)")
    return "\n".join(lines)


def plot_per_seed(record, path):
    """m1, m2 of each seed with the pooled value and its 1-sigma band."""
    from shapepipe_modules.validate.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    seeds = np.array([row["seed"] for row in record["per_seed"]])
    for i, ax in enumerate(axes):
        values = np.array([row["m"][i] for row in record["per_seed"]], dtype=float)
        errors = np.array([row["m_err"][i] for row in record["per_seed"]], dtype=float)
        ax.errorbar(seeds, values, yerr=errors, fmt="o")
        m, e = record["m"][i], record["m_err"][i]
        ax.axhspan(m - e, m + e, color="C1", alpha=0.3, label=f"pooled m{i + 1} = {m:+.4f} +- {e:.4f}")
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel("seed")
        ax.set_ylabel(f"m{i + 1}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)
