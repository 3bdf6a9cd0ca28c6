"""A small campaign over simulated exposures for the tests on real batch systems (SLURM, Grid Engine).

One exposure per array task runs split_exp; the merge job runs merge_headers
over ``all:split_exp``; results are read back from the run records and the
header store, and compared with the simulated files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def write_campaign(root: Path, sim: Path) -> tuple[list[str], Path, Path, Path]:
    """Pipeline-named inputs, the number list and the two configurations."""
    data = root / "data"
    data.mkdir()
    exposures = (sim / "exposure_list.txt").read_text().split()
    for exposure in exposures:
        source = sim / "exposures" / f"{exposure}p"
        shutil.copy(f"{source}.fits", data / f"image-{exposure}.fits")
        shutil.copy(f"{source}.weight.fits.fz", data / f"weight-{exposure}.fits.fz")
        shutil.copy(f"{source}.flag.fits.fz", data / f"flag-{exposure}.fits.fz")
    numbers = [f"-{exposure}" for exposure in exposures]
    listing = root / "exposures.txt"
    listing.write_text("# one exposure per array task\n" + "\n".join(numbers) + "\n")
    common = f"[FILE]\nINPUT_DIR = {data}\nOUTPUT_DIR = {root / 'output'}\n\n"
    task = root / "split.ini"
    task.write_text("[DEFAULT]\nVERBOSE = False\nRUN_NAME = split\n\n[EXECUTION]\nMODULE = split_exp\n\n" + common
                    + "[SPLIT_EXP]\nFILE_EXT = .fits, .fits.fz, .fits.fz\nNUMBERING_SCHEME = -0000000\n")
    merge = root / "merge.ini"
    merge.write_text("[DEFAULT]\nVERBOSE = False\nRUN_NAME = merge\n\n[EXECUTION]\nMODULE = merge_headers\n\n"
                     + common + "[MERGE_HEADERS]\nINPUT_DIR = all:split_exp\nNUMBERING_SCHEME = -0000000\n")
    return numbers, listing, task, merge


def task_runs(output: Path) -> dict[int, Path]:
    """Run folder of every array task, by the array index its record holds (from 0)."""
    runs = {}
    for run_dir in output.glob("split_task*"):
        record = json.loads((run_dir / "run.json").read_text())
        runs[record["selection"]["array_index"]] = run_dir
    return runs


def job_rows(run_dir: Path) -> list[tuple[str, str]]:
    """(number, status) of every job of a run."""
    return [(row["number"], row["status"]) for row in json.loads((run_dir / "jobs.json").read_text())]


def merged_store(output: Path):
    """Newest merge run: (record, {exposure: {ccd: CRVAL1}}) read from its header store."""
    from shapepipe_modules.io.header_store import HeaderStore

    runs = sorted(output.glob("merge_*"), key=lambda p: json.loads((p / "run.json").read_text())["started"])
    record = json.loads((runs[-1] / "run.json").read_text())
    with HeaderStore(runs[-1] / "merge_headers" / "output" / "log_exp_headers.sqlite") as store:
        values = {e: {c: store.header(e, c)["CRVAL1"] for c in store.ccds(e)} for e in store.exposures()}
    return record, values


def truth_crval(sim: Path, exposure: str) -> dict[int, float]:
    """CRVAL1 of every CCD of a simulated mosaic, read directly from its file."""
    from astropy.io import fits

    with fits.open(sim / "exposures" / f"{exposure}p.fits") as hdus:
        return {k: hdus[k + 1].header["CRVAL1"] for k in range(len(hdus) - 1)}
