"""One tile through every stage (ShapePipe's ``job_sp``), on top of ``shapepipe_run``.

A campaign lives under one root folder::

    ROOT/tile_runs/XXX.YYY/data/            the tile's view of the data: tile_list.txt (this tile only)
                                             and a link to every other entry of the data folder
    ROOT/tile_runs/XXX.YYY/output/          every run folder of the tile (SP_RUN = ROOT/tile_runs/XXX.YYY)
    ROOT/tile_runs/XXX.YYY/stages/NAME.done a stage that succeeded (JSON: its configuration and run folder)

as ShapePipe's CANFAR runs keep ``tile_runs/ID/output``. A stage is one
configuration run by ``shapepipe_run`` in a subprocess (as
:func:`shapepipe_modules.gold.chain.run_config`), with the variables of the
GOLD chain (``SP_DATA`` the view, ``SP_RUN`` the tile folder, ``SP_CONFIG``).
The ``.done`` markers make a tile resumable: a later run starts at its first
stage without one (``force`` redoes them all), and they are the outputs of the
generated Snakemake rules (:mod:`.snakemake_workflow`), whose bookkeeping is
then Snakemake's own.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..cfis import parse_tile_id, tile_id
from ._common import ToolError

TILE_LIST = "tile_list.txt"


@dataclass(frozen=True)
class CampaignStage:
    """One stage: a name and its configuration file (relative to the configuration folder)."""

    name: str
    config: str


def gold_stages() -> list[CampaignStage]:
    """The stages of the GOLD chain (``example/GOLD``), in order."""
    from ..gold.chain import STAGES

    return [CampaignStage(stage.name, stage.config) for stage in STAGES]


def parse_stages(text: str) -> list[CampaignStage]:
    """``NAME=config.ini, NAME=config.ini`` -> stages, in order.

    Raises
    ------
    ToolError
        If an entry has no ``=`` or a name repeats.
    """
    stages = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, config = entry.partition("=")
        if not sep or not name.strip() or not config.strip():
            raise ToolError(f"--stages: {entry!r} is not NAME=CONFIG_FILE")
        stages.append(CampaignStage(name.strip(), config.strip()))
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or not stages:
        raise ToolError(f"--stages: stage names must be unique and at least one given, got {names}")
    return stages


def canonical_tile(text: str) -> str:
    """``XXX.YYY`` of any tile spelling, or ToolError."""
    try:
        return tile_id(*parse_tile_id(text))
    except ValueError as error:
        raise ToolError(str(error)) from None


def tile_folder(root, tile: str) -> Path:
    """``ROOT/tile_runs/XXX.YYY``."""
    return Path(root).resolve() / "tile_runs" / canonical_tile(tile)


def marker_path(root, tile: str, stage: str) -> Path:
    """``ROOT/tile_runs/XXX.YYY/stages/STAGE.done``."""
    return tile_folder(root, tile) / "stages" / f"{stage}.done"


def prepare_tile(root, tile: str, data_dir) -> Path:
    """Write the tile's data view (its own ``tile_list.txt``, links to the rest); return the tile folder.

    Raises
    ------
    ToolError
        If the data folder does not exist.
    """
    from shapepipe.atomic import write_text_atomic

    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise ToolError(f"data folder {data_dir} does not exist")
    folder = tile_folder(root, tile)
    view = folder / "data"
    view.mkdir(parents=True, exist_ok=True)
    (folder / "output").mkdir(exist_ok=True)
    (folder / "stages").mkdir(exist_ok=True)
    write_text_atomic(view / TILE_LIST, canonical_tile(tile) + "\n")
    for entry in data_dir.iterdir():
        if entry.name == TILE_LIST or entry.name.startswith("."):
            continue
        link = view / entry.name
        if link.is_symlink() and Path(os.readlink(link)) == entry:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(entry)
    return folder


def stage_environment(root, tile: str, config_dir, extra_env=None) -> dict:
    """Variables of a tile's stages (the GOLD chain's, with the tile's view and folder)."""
    from ..gold.chain import ccd_size_from_simulation

    folder = tile_folder(root, tile)
    env = {
        "SP_DATA": str(folder / "data"),
        "SP_RUN": str(folder),
        "SP_CONFIG": str(Path(config_dir).resolve()),
        "SP_TILE": canonical_tile(tile),
        "SP_NG_INDEX": "1", "SP_NG_ID_MIN": "-1", "SP_NG_ID_MAX": "-1", "SP_NG_SPLITS": "1",
        "SP_NG_SPLIT_DIRS": "last:ngmix_runner",
    }
    if (folder / "data" / "simulation.json").is_file():
        env["SP_CCD_SIZE"] = ccd_size_from_simulation(folder / "data")
    env.update(extra_env or {})
    return env


def run_config_here(config, env, output_dir, log=print) -> Path:
    """:func:`shapepipe_modules.gold.chain.run_config` in this process (for a process started for one stage,
    such as a Snakemake job: one interpreter start instead of two). Sets ``env`` in ``os.environ``.

    Raises
    ------
    shapepipe_modules.gold.chain.ChainError
        If ``shapepipe_run`` returns a non-zero status.
    """
    from shapepipe.cli import main as shapepipe_run

    from ..gold.chain import ChainError, failed_jobs, run_folders

    before = run_folders(output_dir)
    os.environ.update(env)
    status = shapepipe_run(["-c", str(config)])
    new = sorted(run_folders(output_dir) - before)
    run_dir = new[-1] if new else None
    if status != 0:
        detail = "\n  ".join(failed_jobs(run_dir)) if run_dir else ""
        raise ChainError(f"{config} failed (shapepipe_run exit status {status}"
                         f"{', run folder ' + str(run_dir) if run_dir else ''})" + (f"\n  {detail}" if detail else ""))
    if run_dir is None:
        raise ChainError(f"{config}: shapepipe_run exited with 0 but wrote no run folder in {output_dir}")
    return run_dir


def run_stage(root, tile: str, stage: CampaignStage, data_dir, config_dir, log=print, extra_env=None,
              in_process=False) -> dict:
    """Run one stage of one tile with ``shapepipe_run``; write its marker; return the marker's content.

    ``in_process`` runs ``shapepipe_run`` in this process (:func:`run_config_here`)
    instead of a subprocess.

    Raises
    ------
    ToolError
        If the configuration file does not exist.
    shapepipe_modules.gold.chain.ChainError
        If ``shapepipe_run`` fails (the message lists the failed jobs).
    """
    from shapepipe.atomic import write_text_atomic

    from ..gold.chain import run_config

    config = Path(config_dir).resolve() / stage.config
    if not config.is_file():
        raise ToolError(f"stage {stage.name}: configuration {config} does not exist")
    folder = prepare_tile(root, tile, data_dir)
    env = stage_environment(root, tile, config_dir, extra_env)
    started = time.perf_counter()
    run_dir = (run_config_here if in_process else run_config)(config, env, folder / "output", log)
    record = {"tile": canonical_tile(tile), "stage": stage.name, "config": str(config), "run_dir": str(run_dir),
              "wall_s": round(time.perf_counter() - started, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text_atomic(marker_path(root, tile, stage.name), json.dumps(record, indent=1) + "\n")
    return record


def run_tile(root, tile: str, stages, data_dir, config_dir, first=None, last=None, force=False, log=print,
             extra_env=None) -> list[dict]:
    """Run a tile's stages in order from ``first`` to ``last``, skipping those already done (unless ``force``).

    Returns the markers of the stages run now. Stops at the first failing
    stage (ShapePipe's ``job_sp`` stops too): its ChainError propagates.
    """
    names = [s.name for s in stages]
    for name in (first, last):
        if name is not None and name not in names:
            raise ToolError(f"no stage {name!r}; stages: {', '.join(names)}")
    chosen = stages[names.index(first) if first else 0:names.index(last) + 1 if last else len(stages)]
    done = []
    for stage in chosen:
        marker = marker_path(root, tile, stage.name)
        if marker.is_file() and not force:
            log(f"[{canonical_tile(tile)} {stage.name}] done before ({json.loads(marker.read_text())['run_dir']})")
            continue
        log(f"[{canonical_tile(tile)} {stage.name}] shapepipe_run -c {stage.config}")
        record = run_stage(root, tile, stage, data_dir, config_dir, log, extra_env)
        log(f"  {record['wall_s']:.1f} s, run folder {record['run_dir']}")
        done.append(record)
    return done


def tile_progress(root, tiles, stages) -> dict[str, list[str]]:
    """Per tile, the stages with a marker (done), in stage order."""
    return {t: [s.name for s in stages if marker_path(root, t, s.name).is_file()] for t in tiles}
