"""One full-size CFIS tile through the whole GOLD chain: per-module CPU, memory, disk, and the survey budget.

Usage::

    python benchmarks/bench_tile.py [--exposures 3] [--data /tmp/cfis_tile/data] [--run-root /tmp/cfis_tile]
    python benchmarks/bench_tile.py --read          # table of the newest record, no run

The ``cfis_tile`` simulator preset is one 10,000 x 10,000 tile (0.187"/pixel)
with its exposures of the 40-CCD camera (2048 x 4612 CCDs), simulated into
``--data`` when absent (not counted). ``--exposures N`` simulates N of the
three exposures (every tile-size stage still sees the full tile; the costs
that scale with CCDs and object-epochs are scaled by the cost model below).

Per module: jobs, wall time, CPU of its jobs, the largest job's peak real
memory (anonymous + shared pages of the job's process tree, recorded by the
runner in the job table) and resident size with file pages, and the bytes
its output folder holds. Every job's real memory is checked against 2 GiB.

Cost model (per real tile): each module's cost is scaled by what it scales
with -- tile pixels (here the full tile: x1), exposure CCDs (x ``REAL_CCDS``
/ CCDs here), detections (x ``REAL_DETECTIONS`` / detections here) or
object-epochs (x ``REAL_OBJECT_EPOCHS`` / object-epochs here); the runner
processes are a fixed cost per stage. Survey figures are per 1,000 tiles.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chain import become_subreaper, child_pids, children_cpu, ngmix_object_epochs, reap_orphans  # noqa: E402

#: A real CFIS tile (issue 22): detections, object-epochs, unique exposure CCDs per tile.
REAL_DETECTIONS = 50_000
REAL_OBJECT_EPOCHS = 175_000
REAL_CCDS = 40
LIMIT_MB = 2048.0
#: What each module run's cost scales with.
SCALING = {
    "get_images_run_1": "tile", "uncompress_fits": "tile", "mask_run_1": "tile", "sextractor_run_1": "tile",
    "find_exposures": "tile",
    "get_images_run_2": "ccd", "split_exp": "ccd", "merge_headers": "ccd", "mask_run_2": "ccd",
    "sextractor_run_2": "ccd", "setools": "ccd", "psfex": "ccd", "psfinterp": "ccd", "merge_starcat": "ccd",
    "psf_validation": "ccd",
    "vignetmaker_run_1": "detection", "spread_model": "detection", "merge_sep_cats": "detection",
    "make_catalog": "detection",
    "psfinterp_run_2": "object-epoch", "vignetmaker_run_2": "object-epoch", "ngmix": "object-epoch",
}
#: Module runs whose outputs are kept at the end of a campaign (the rest is scratch).
KEPT = ("make_catalog", "psf_validation", "merge_starcat")


def run_stages(data_dir: Path, run_root: Path, ng_splits: int, log=print) -> dict:
    from shapepipe_modules.gold.chain import STAGES, gold_folder, run_chain

    subreaper = become_subreaper()
    stages = []
    for stage in STAGES:
        before = child_pids()  # this process's own helpers: not the stage's, not waited for
        cpu0, wall0 = children_cpu(), time.perf_counter()
        runs = run_chain(data_dir, run_root, gold_folder(), first=stage.name, last=stage.name,
                         ng_splits=ng_splits, log=log)
        reap_orphans(keep=before)
        wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
        stages.append({"stage": stage.name, "wall_s": wall, "cpu_all_s": cpu,
                       "run_dirs": [str(d) for run in runs for d in run.run_dirs]})
        log(f"  {stage.name}: {wall:.1f} s wall, {cpu:.1f} s CPU (all processes)")
    return {"data": str(data_dir), "run_root": str(run_root), "subreaper": subreaper, "ng_splits": ng_splits,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": stages}


def module_rows(record: dict) -> list[dict]:
    """Per module run: jobs, wall, CPU, peak real and resident memory of the largest job, bytes on disk."""
    from shapepipe_modules.gold.summary import folder_bytes

    rows = []
    for stage in record["stages"]:
        for run_dir in map(Path, stage["run_dirs"]):
            run = json.loads((run_dir / "run.json").read_text())
            jobs = json.loads((run_dir / "jobs.json").read_text())
            jobs = jobs["jobs"] if isinstance(jobs, dict) else jobs
            for module in run["modules"]:
                mine = [j for j in jobs if j["module_run"] == module["module_run"]]
                name = module["module_run"]
                if name == "psfinterp" and stage["stage"] == "PiViSmVi":
                    name = "psfinterp_run_2"
                rows.append({"stage": stage["stage"], "module_run": name, "jobs": len(mine),
                             "wall_s": float(module.get("wall_s") or 0.0),
                             "cpu_s": sum(float(j.get("cpu_s") or 0.0) for j in mine),
                             "real_mb": max((float(j.get("peak_memory_mb") or 0) for j in mine), default=0.0),
                             "rss_mb": max((float(j.get("peak_rss_mb") or 0) for j in mine), default=0.0),
                             "bytes": folder_bytes(module.get("output_dir"))})
    return rows


def counts(record: dict) -> dict:
    """Detections in the tile, exposure CCDs and object-epochs measured in this run."""
    from astropy.io import fits

    from shapepipe_modules.gold.chain import module_output

    found = {"detections": 0, "ccds": 0, "object_epochs": 0}
    for stage in record["stages"]:
        if stage["stage"] == "Sx_exp_psfex":
            run_dir = stage["run_dirs"][0]
            for path in module_output(run_dir, "sextractor_run_1").glob("sexcat-*.fits"):
                with fits.open(path) as hdus:
                    found["detections"] += int(hdus["LDAC_OBJECTS"].header["NAXIS2"])
            found["ccds"] = len(list(module_output(run_dir, "sextractor_run_2").glob("sexcat-*.fits")))
        if stage["stage"] == "Ng":
            found["object_epochs"] += ngmix_object_epochs(stage["run_dirs"])
    return found


def format_table(record: dict) -> str:
    rows = module_rows(record)
    n = counts(record)
    factor = {"tile": 1.0, "ccd": REAL_CCDS / max(n["ccds"], 1),
              "detection": REAL_DETECTIONS / max(n["detections"], 1),
              "object-epoch": REAL_OBJECT_EPOCHS / max(n["object_epochs"], 1)}
    header = (f"{'stage':<13} {'module run':<18} {'jobs':>5} {'wall s':>8} {'CPU s':>8} {'real MB':>8} "
              f"{'RSS MB':>8} {'disk MB':>8} {'scales with':>12} {'real tile CPU s':>15} {'real tile GB':>12}")
    lines = [f"one CFIS tile: {record['data']} ({record['when']}); {n['detections']} detections, "
             f"{n['ccds']} exposure CCDs, {n['object_epochs']} object-epochs", "", header, "-" * len(header)]
    total = {"cpu": 0.0, "wall": 0.0, "bytes": 0, "real_cpu": 0.0, "real_bytes": 0.0, "kept": 0.0}
    jobs_cpu = {}
    over = []
    for row in rows:
        scale = SCALING.get(row["module_run"], "tile")
        real_cpu, real_bytes = row["cpu_s"] * factor[scale], row["bytes"] * factor[scale]
        lines.append(f"{row['stage']:<13} {row['module_run']:<18} {row['jobs']:>5} {row['wall_s']:>8.1f} "
                     f"{row['cpu_s']:>8.1f} {row['real_mb']:>8.0f} {row['rss_mb']:>8.0f} {row['bytes'] / 1e6:>8.1f} "
                     f"{scale:>12} {real_cpu:>15.0f} {real_bytes / 1e9:>12.2f}")
        jobs_cpu[row["stage"]] = jobs_cpu.get(row["stage"], 0.0) + row["cpu_s"]
        total["bytes"] += row["bytes"]
        total["real_cpu"] += real_cpu
        total["real_bytes"] += real_bytes
        if row["module_run"] in KEPT:
            total["kept"] += real_bytes
        if row["real_mb"] >= LIMIT_MB:
            over.append(f"{row['module_run']} {row['real_mb']:.0f} MB")
    runner = sum(s["cpu_all_s"] - jobs_cpu.get(s["stage"], 0.0) for s in record["stages"])
    total["cpu"] = sum(s["cpu_all_s"] for s in record["stages"])
    total["wall"] = sum(s["wall_s"] for s in record["stages"])
    total["real_cpu"] += runner
    largest = max(rows, key=lambda r: r["real_mb"])
    scratch = total["real_bytes"] - total["kept"]
    ngmix_cpu = sum(r["cpu_s"] for r in rows if r["module_run"] == "ngmix")
    lines += ["-" * len(header),
              f"{'chain':<13} {'(runner processes)':<18} {'':>5} {'':>8} {runner:>8.1f}",
              f"{'chain':<13} {'all processes':<18} {'':>5} {total['wall']:>8.1f} {total['cpu']:>8.1f} "
              f"{largest['real_mb']:>8.0f} {'':>8} {total['bytes'] / 1e6:>8.1f} {'':>12} {total['real_cpu']:>15.0f} "
              f"{total['real_bytes'] / 1e9:>12.2f}",
              "",
              f"memory: largest job {largest['real_mb']:.0f} MB real ({largest['module_run']}); every job under "
              f"{LIMIT_MB:.0f} MB: {'yes' if not over else 'NO: ' + ', '.join(over)}",
              f"cost model per real tile ({REAL_DETECTIONS} detections, {REAL_OBJECT_EPOCHS} object-epochs, "
              f"{REAL_CCDS} exposure CCDs of its own):",
              f"  ngmix {1000 * ngmix_cpu / max(n['object_epochs'], 1):.1f} ms CPU per object-epoch; "
              f"tile CPU {total['real_cpu'] / 3600:.2f} h; disk {total['real_bytes'] / 1e9:.1f} GB "
              f"({scratch / 1e9:.1f} GB intermediate, {total['kept'] / 1e9:.2f} GB kept)",
              f"survey per 1,000 tiles: {total['real_cpu'] / 3.6:.0f} CPU-hours, peak real memory per worker "
              f"{largest['real_mb'] / 1024:.2f} GiB (x{1.25:g} margin: shapepipe_batch --mem-from), scratch "
              f"{scratch / 1e12 * 1000:.1f} TB if kept, kept {total['kept'] / 1e12 * 1000:.2f} TB"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from shapepipe.arguments import ArgumentParser

    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/cfis_tile/data"), help="simulated tile")
    parser.add_argument("--run-root", type=Path, default=Path("/tmp/cfis_tile"), help="runs go to RUN_ROOT/output")
    parser.add_argument("--exposures", type=int, default=3, help="exposures simulated when --data is absent")
    parser.add_argument("--ng-splits", type=int, default=1, help="ngmix runs by object-id range")
    parser.add_argument("--read", action="store_true", help="print the newest record, no run")
    args = parser.parse_args(argv)
    run_root = args.run_root.resolve()
    path = run_root / "output" / "bench_tile.json"
    if args.read:
        print(format_table(json.loads(path.read_text())))
        return 0
    data_dir = args.data.resolve()
    if not (data_dir / "simulation.json").is_file():
        from shapepipe_modules.simulate import simulate

        print(f"simulating cfis_tile ({args.exposures} exposures) into {data_dir} (not counted) ...")
        simulate(preset="cfis_tile", output_dir=data_dir, seed=1, n_workers=2, ring=True,
                 exposures_per_tile=args.exposures)
    record = run_stages(data_dir, run_root, args.ng_splits)
    from shapepipe.atomic import atomic_path

    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
