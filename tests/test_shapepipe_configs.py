"""ShapePipe parity: every example configuration of ShapePipe (develop and
v1.4; our comment-free forms in tests/data/shapepipe_configs) validates with
``shapepipe_run -c CONFIG --dry-run``, and the compatibility rules behind it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from shapepipe.cli import main
from shapepipe.errors import ConfigError
from shapepipe.module import default_registry
from shapepipe.plan import build_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapepipe_parity import FORMS, dry_run, run_configs, validates  # noqa: E402

#: ShapePipe's 28 runners (develop and v1.4 ship the same set).
SHAPEPIPE_RUNNERS = (
    "execute_example", "find_exposures", "get_images", "make_cat", "mask", "match_external", "mccd_fit",
    "mccd_fit_val", "mccd_interp", "mccd_plots", "mccd_preprocessing", "mccd_val", "merge_headers",
    "merge_sep_cats", "merge_starcat", "ngmix", "pastecat", "psfex_interp", "psfex", "python_example",
    "random_cat", "serial_example", "setools", "sextractor", "split_exp", "spread_model", "uncompress_fits",
    "vignetmaker",
)

CONFIGS = run_configs()


def test_every_form_is_there():
    # config*.ini: 38 on develop, 56 on v1.4, less the config_MCCD.ini and config_stats.ini files,
    # which are inputs of modules and scripts, not runs.
    names = {p.relative_to(FORMS).parts[0] for p in CONFIGS}
    assert names == {"develop", "v1.4"}
    assert len([p for p in CONFIGS if p.relative_to(FORMS).parts[0] == "develop"]) == 35
    assert len([p for p in CONFIGS if p.relative_to(FORMS).parts[0] == "v1.4"]) == 53


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(FORMS)) for p in CONFIGS])
def test_shapepipe_config_validates(config, tmp_path):
    status, problems, _, output = dry_run(config, tmp_path)
    assert validates(status, problems), output


def test_dry_run_as_a_command(tmp_path):
    """One form through the installed console script, as a user runs it."""
    from shapepipe_parity import sandbox

    config = FORMS / "v1.4" / "cfis" / "config_MsPl_psfex.ini"
    env = sandbox(config, tmp_path)
    import os

    result = subprocess.run([str(Path(sys.executable).parent / "shapepipe_run"), "-c",
                             str(Path(env["SP_CONFIG"]) / config.name), "--dry-run"],
                            capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path / "cwd")
    # Only missing input data (no earlier runs in the sandbox) may be reported.
    assert result.returncode in (0, 2, 3), result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert all(re.search(r"no successful|does not exist|no input file", line) for line in lines), result.stderr


def test_list_shows_every_shapepipe_runner_and_aliases(capsys):
    assert main(["-l"]) == 0
    listing = capsys.readouterr().out
    for name in SHAPEPIPE_RUNNERS:
        assert re.search(rf"(^|[\s,]){name}_runner([\s,]|$)", listing, re.M), name
    assert "also: make_catalog_runner, make_cat, make_cat_runner" in listing


@pytest.mark.parametrize("name, canonical", [
    ("make_cat", "make_catalog"), ("make_cat_runner", "make_catalog"), ("mccd_plots", "psf_validation"),
    ("mccd_plots_runner", "psf_validation"), ("psfex_interp", "psfinterp"), ("psfex_interp_runner", "psfinterp"),
    ("sextractor_runner", "sextractor"), ("random_cat", "random_cat"), ("pastecat_runner", "pastecat"),
])
def test_module_names_with_and_without_runner(name, canonical):
    assert default_registry().canonical(name) == canonical


def _write(tmp_path, text):
    path = tmp_path / "c.ini"
    path.write_text(text.format(out=tmp_path / "out", inp=tmp_path))
    return path


HEAD = """[DEFAULT]
RUN_NAME = t
[EXECUTION]
MODULE = mccd_plots_runner
[FILE]
INPUT_DIR = {inp}
OUTPUT_DIR = {out}
[MCCD_PLOTS_RUNNER]
FILE_PATTERN = full_starcat
FILE_EXT = .fits
NUMBERING_SCHEME = -0000000
PSF = mccd
RHO_STATS_STYLE = UNIONS
"""


def test_shapepipe_misspelt_key_is_accepted_with_a_warning(tmp_path, capsys):
    (tmp_path / "full_starcat-0000000.fits").write_bytes(b"")
    config = _write(tmp_path, HEAD + "EHO_STATS_YLIM_R = 1e-8, 4e-5\nMODE = FIT_VALIDATION\n")
    assert main(["-c", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: c.ini: [MCCD_PLOTS_RUNNER] EHO_STATS_YLIM_R is a ShapePipe key with no effect" in out
    assert "[MCCD_PLOTS_RUNNER] MODE is a ShapePipe key with no effect" in out


def test_other_typos_are_still_refused(tmp_path):
    config = _write(tmp_path, HEAD + "RHO_STATS_YLIMR = 1e-8, 4e-5\n")
    with pytest.raises(ConfigError, match=r"\[MCCD_PLOTS_RUNNER\] RHO_STATS_YLIMR: unknown key .*RHO_STATS_YLIM_R"):
        build_plan(config)


def test_retired_shapepipe_section_is_read_with_a_note(tmp_path, capsys):
    (tmp_path / "full_starcat-0000000.fits").write_bytes(b"")
    config = _write(tmp_path, HEAD + "[GALSIM_SHAPES_V2_RUNNER]\nMAG_ZP = 30.0\n[MCCD_MERGE_STARCAT_RUNNER]\n"
                    "MODE = FIT\n")
    assert main(["-c", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "section [GALSIM_SHAPES_V2_RUNNER] is not read" in out
    assert "section [MCCD_MERGE_STARCAT_RUNNER] is not read" in out
    config = _write(tmp_path, HEAD + "[GALSIM_SHAPES_V3_RUNNER]\nMAG_ZP = 30.0\n")
    with pytest.raises(ConfigError, match=r"\[GALSIM_SHAPES_V3_RUNNER\]: unknown section"):
        build_plan(config)


def test_input_module_with_last_prefix(tmp_path):
    config = _write(tmp_path, """[DEFAULT]
RUN_NAME = t
[EXECUTION]
MODULE = sextractor_runner, setools_runner
[FILE]
INPUT_DIR = {inp}
OUTPUT_DIR = {out}
[SEXTRACTOR_RUNNER]
FILE_PATTERN = image
FILE_EXT = .fits
NUMBERING_SCHEME = -0000000-0
[SETOOLS_RUNNER]
INPUT_MODULE = last:sextractor_runner
""")
    (tmp_path / "image-0000001-0.fits").write_bytes(b"")
    plan = build_plan(config)
    assert plan.module_runs[1].input_modules == ["sextractor_runner"]


def test_mccd_modules_check_their_config_and_name_bad_numbers(tmp_path):
    import logging

    from shapepipe.errors import JobError
    from shapepipe.job import Job
    from shapepipe_modules.mccd.runner import INTERP_OPTIONS, _check_mccd_config, mccd_interp

    good = tmp_path / "config_MCCD.ini"
    good.write_text("[INPUTS]\nMIN_N_STARS = 20\n[INSTANCE]\nD_COMP_GLOB = 8\n[FIT]\nPSF_SIZE = 6.2\n[VALIDATION]\n"
                    "APPLY_DEGRADATION = True\n")
    assert _check_mccd_config({"CONFIG_PATH": str(good)}) == []
    bad = tmp_path / "not_mccd.ini"
    bad.write_text("[INPUTS]\nA = 1\n")
    assert "missing section(s) INSTANCE, FIT, VALIDATION" in _check_mccd_config({"CONFIG_PATH": str(bad)})[0]
    options = {o.name: o.default for o in INTERP_OPTIONS}
    options["PSF_MODEL_DIR"] = str(tmp_path)
    job = Job(module="mccd_interp", module_run="mccd_interp", number="-2113737", inputs=[tmp_path / "cat.fits"],
              output_dir=tmp_path, log_dir=tmp_path, options=options, logger=logging.getLogger("t"), run_dir=tmp_path)
    # CLASSIC reads one CCD's catalogue: its number must name the exposure and the CCD (the model's name).
    with pytest.raises(JobError, match="cat.fits: file number '-2113737' is not -<exposure>-<ccd>"):
        mccd_interp(job)


def test_n_split_max_zero_means_the_input_alone(tmp_path):
    from shapepipe_modules.merge_sep_cats.runner import split_candidates, validate

    assert validate({"N_SPLIT_MAX": 0}) == []
    assert validate({"N_SPLIT_MAX": -1}) == ["N_SPLIT_MAX must be at least 0, got -1"]
    first = tmp_path / "run_1" / "ngmix-244-252.fits"
    assert split_candidates(first, {"N_SPLIT_MAX": 0, "SPLIT_INPUT_DIR": []}) == [first]
    assert len(split_candidates(first, {"N_SPLIT_MAX": 3, "SPLIT_INPUT_DIR": []})) == 3


DOC = Path(__file__).resolve().parent.parent / "docs" / "shapepipe.md"


def _runner_options():
    table = {}
    for line in (FORMS / "runner_options.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        runner, _, keys = line.partition(":")
        table[runner.strip()] = keys.split()
    return table


def test_every_shapepipe_runner_key_is_declared_and_documented():
    from shapepipe.config import MODULE_SECTION_TABLE

    registry = default_registry()
    doc = DOC.read_text()
    table = _runner_options()
    assert len(table) == 28
    for runner, keys in table.items():
        spec = registry.get(runner)
        row = next(line for line in doc.splitlines() if line.startswith(f"| {runner} | {spec.name} |"))
        for key in keys:
            assert key in spec.option_table or key in MODULE_SECTION_TABLE, (runner, key)
            assert f"`{key}`" in row, (runner, key)


def test_every_no_effect_key_is_in_the_documented_list():
    """Keys accepted with a warning are exactly those the no-effect table of docs/shapepipe.md names."""
    doc = DOC.read_text()
    listed = doc.split("only this documented list passes:")[1].split("- **Sections")[0]
    for spec in default_registry():
        for option in spec.options:
            if option.ignored:
                assert f"`{option.name}`" in listed, (spec.name, option.name)
