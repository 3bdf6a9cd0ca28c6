"""shapepipe_campaign: per-stage summary, missing lists and duplicates over a tile list, from real runs."""

import textwrap

import pytest

from shapepipe.cli import main as shapepipe_run
from shapepipe_modules.tools.campaign import main as campaign

MODULES = '''
from pathlib import Path

from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option


@module(name="t_tile", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000-000",
        options=(Option("FAIL_ON", "list", [], "numbers that fail"),))
def t_tile(job):
    """Copy the input."""
    if job.number in job.options["FAIL_ON"]:
        raise JobError(f"refusing {job.inputs[0]}")
    job.output_path(f"out{job.number}.txt").write_text(Path(job.inputs[0]).read_text())


@module(name="t_ccd", version="0.1", file_pattern=("ccd",), file_ext=".txt", numbering_scheme="-0000000-0",
        options=(Option("FAIL_ON", "list", [], "numbers that fail"),))
def t_ccd(job):
    """Copy the input."""
    if job.number in job.options["FAIL_ON"]:
        raise JobError(f"refusing {job.inputs[0]}")
    job.output_path(f"out{job.number}.txt").write_text(Path(job.inputs[0]).read_text())
'''


@pytest.fixture
def campaign_dir(tmp_path):
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "campaign_modules.py").write_text(MODULES)
    data = tmp_path / "data"
    data.mkdir()
    for tile in ("244-252", "244-253", "245-252", "245-253"):
        (data / f"in-{tile}.txt").write_text(tile)
    for number in ("2113737-0", "2113737-1", "2113738-0"):
        (data / f"ccd-{number}.txt").write_text(number)
    (tmp_path / "tiles.txt").write_text("244.252\nCFIS.244.253.r\n245.252\n245.253\n246.252\n")
    (tmp_path / "exposures.txt").write_text("2113737p\n2113738p\n2113739p\n")
    return tmp_path


def _config(folder, name, fail_tile="", fail_ccd=""):
    path = folder / f"{name}.ini"
    path.write_text(textwrap.dedent(f"""\
        [DEFAULT]
        VERBOSE = False
        RUN_NAME = {name}
        [EXECUTION]
        MODULE = t_tile, t_ccd
        MODULE_DIR = {folder / 'modules'}
        [FILE]
        INPUT_DIR = {folder / 'data'}
        OUTPUT_DIR = {folder / 'output'}
        [T_TILE]
        FAIL_ON = {fail_tile}
        [T_CCD]
        FAIL_ON = {fail_ccd}
        """))
    return path


def test_summary_missing_rerun_and_duplicates(campaign_dir, capsys):
    folder = campaign_dir
    assert shapepipe_run(["-c", str(_config(folder, "first", "-245-253", "-2113738-0"))]) == 1
    capsys.readouterr()
    common = [str(folder / "output"), "--tiles", str(folder / "tiles.txt"), "--exposures",
              str(folder / "exposures.txt")]
    assert campaign(["summary", *common, "--json"]) == 1
    import json

    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert {k: rows["t_tile"][k] for k in ("unit", "expected", "done", "failed", "not_done")} == \
        {"unit": "tile", "expected": 5, "done": 3, "failed": 1, "not_done": 2}
    assert {k: rows["t_ccd"][k] for k in ("unit", "expected", "done", "failed", "not_done")} == \
        {"unit": "exposure", "expected": 3, "done": 1, "failed": 1, "not_done": 2}
    assert campaign(["missing", *common, "--stage", "t_tile"]) == 1
    assert capsys.readouterr().out == "245.253\n246.252\n"
    numbers = folder / "missing.txt"
    assert campaign(["missing", *common, "--stage", "t_tile", "--numbers", "-o", str(numbers)]) == 1
    assert numbers.read_text() == "-245-253\n-246-252\n"
    # Re-run the missing tiles with the failure fixed: only 246.252 (no input data) stays missing.
    shapepipe_run(["-c", str(_config(folder, "second")), "--numbers", str(numbers)])
    capsys.readouterr()
    assert campaign(["missing", *common, "--stage", "t_tile"]) == 1
    assert capsys.readouterr().out == "246.252\n"
    assert campaign(["summary", *common]) == 1
    table = capsys.readouterr().out
    assert "t_tile" in table and "80.0%" in table
    # A third full run does every tile again: those done twice are reported.
    shapepipe_run(["-c", str(_config(folder, "third"))])
    capsys.readouterr()
    assert campaign(["duplicates", str(folder / "output")]) == 0
    out = capsys.readouterr().out
    assert "t_tile -244-252: 2 runs" in out and "t_tile -245-253: 2 runs" in out
    assert "t_ccd -2113737-0: 2 runs" in out


def test_bad_tile_list_names_the_line(campaign_dir, capsys):
    (campaign_dir / "bad.txt").write_text("244.252\nnot a tile\n")
    assert shapepipe_run(["-c", str(_config(campaign_dir, "first"))]) == 0
    capsys.readouterr()
    assert campaign(["summary", str(campaign_dir / "output"), "--tiles", str(campaign_dir / "bad.txt")]) == 2
    assert "bad.txt:2: no CFIS tile id" in capsys.readouterr().err


def test_expected_exposures_from_find_exposures_lists(tmp_path):
    from shapepipe_modules.tools.campaign import exposures_of_tiles

    run = tmp_path / "output" / "run" / "find_exposures" / "output"
    run.mkdir(parents=True)
    (run / "exp_numbers-244-252.txt").write_text("2113737p\n2113738p\n")
    (run / "exp_numbers-245-252.txt").write_text("2113738p\n2113740p\n")
    (run / "exp_numbers-300-300.txt").write_text("2999999p\n")
    assert exposures_of_tiles([tmp_path / "output"], ["244.252", "245.252"]) == ["2113737", "2113738", "2113740"]
