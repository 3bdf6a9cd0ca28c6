"""Reliability 1: an option that becomes part of a path is a name, never a path.

Every option declared ``name``/``name_list`` (core and modules, found from the
declarations) is given an escaping value in a real ``shapepipe_run``; the run
must stop at validation (exit 2) naming ``file: [SECTION] KEY``, with nothing
written. A module that asks for an escaping output name fails its job.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from shapepipe.config import CORE_OPTIONS
from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe.module import default_registry
from shapepipe.options import Option, OptionError

from test_runner_helpers import make_inputs, make_modules, write_config

ESCAPES = ("../../escaped", "/tmp/escaped_abs", "..", "sub/../../escaped")
#: Name-like option spellings: such an option must be declared name/name_list (a lint on declarations).
NAME_LIKE = re.compile(r"(PREFIX|SUFFIX|_PATTERN|_EXT|_NAME|CHECKIMAGE)$")


def _name_options():
    """(section, option) of every declared name option, core and modules."""
    found = [(section, o) for section, options in CORE_OPTIONS.items() for o in options
             if o.type in ("name", "name_list")]
    for spec in default_registry():
        found += [(spec.name.upper(), o) for o in spec.options if o.type in ("name", "name_list")]
    return found


def test_name_type_refuses_paths_and_keeps_names():
    option = Option("SUFFIX", "name", "", "x")
    for bad in ESCAPES + ("a\\b",):
        with pytest.raises(OptionError, match="not a path"):
            option.parse(bad)
    assert option.parse(" sexcat ") == "sexcat"
    assert option.parse("") == ""
    assert option.parse("..hidden-but-plain") == "..hidden-but-plain"
    listed = Option("OUTPUT_SUFFIX", "name_list", [], "x")
    assert listed.parse("image, weight,flag") == ["image", "weight", "flag"]
    with pytest.raises(OptionError):
        listed.parse("image, ../weight")


def test_every_name_like_option_is_declared_a_name():
    """Declarations decide: a new PREFIX/SUFFIX/PATTERN option declared 'str' fails here."""
    offenders = []
    for spec in default_registry():
        for option in spec.options:
            if NAME_LIKE.search(option.name) and option.type not in ("name", "name_list", "choice"):
                offenders.append(f"{spec.name} {option.name} ({option.type})")
    for section in ("DEFAULT", "FILE"):
        for option in CORE_OPTIONS[section]:
            if NAME_LIKE.search(option.name) and option.type not in ("name", "name_list", "bool"):
                offenders.append(f"[{section}] {option.name} ({option.type})")
    assert offenders == []
    names = {(s, o.name) for s, o in _name_options()}
    for expected in [("DEFAULT", "RUN_NAME"), ("FILE", "LOG_NAME"), ("FILE", "RUN_LOG_NAME"),
                     ("SEXTRACTOR", "SUFFIX"), ("SEXTRACTOR", "PREFIX"), ("SPLIT_EXP", "OUTPUT_SUFFIX"),
                     ("MASK", "PREFIX"), ("UNCOMPRESS_FITS", "OUTPUT_PATTERN")]:
        assert expected in names


@pytest.mark.parametrize("escape", ["../../escaped", "/tmp/shapepipe_escaped_abs"])
def test_every_name_option_of_every_module_stops_the_run(tmp_path, escape):
    """One real shapepipe_run with every module listed and every name option escaping."""
    options = _name_options()
    modules = sorted({s.lower() for s, _ in options if s not in CORE_OPTIONS})
    lines = {"DEFAULT": ["VERBOSE = False"], "EXECUTION": [f"MODULE = {', '.join(modules)}"],
             "FILE": [f"INPUT_DIR = {tmp_path}", f"OUTPUT_DIR = {tmp_path / 'out' / 'deep'}"]}
    for section, option in options:
        value = f"ok, {escape}" if option.type == "name_list" else escape
        lines.setdefault(section, []).append(f"{option.name} = {value}")
    text = "\n".join(f"[{s}]\n" + "\n".join(v) + "\n" for s, v in lines.items())
    config = tmp_path / "escape.ini"
    config.write_text(text)
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    for section, option in options:
        assert f"escape.ini: [{section}] {option.name}: expected a name, not a path" in result.stderr, \
            (section, option.name)
    assert not (tmp_path / "out").exists()  # nothing written
    assert not (tmp_path / "escaped").exists() and not Path(escape).exists()


ESCAPING_MODULE = '''
from shapepipe.module import module
from shapepipe.options import Option


@module(name="t_escape", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000",
        options=(Option("TARGET", "str", "", "an output name not declared as a name (module bug)"),))
def t_escape(job):
    job.output_path(job.options["TARGET"]).write_text("escaped")
'''


def test_job_output_path_refuses_to_leave_staging(tmp_path):
    job = Job(module="m", module_run="m", number="-1", inputs=[], output_dir=tmp_path / "stage",
              log_dir=tmp_path, options={}, logger=None, run_dir=tmp_path)
    (tmp_path / "stage").mkdir()
    assert job.output_path("sub/a.txt") == tmp_path / "stage" / "sub" / "a.txt"
    for bad in ("../a.txt", "/tmp/a.txt", "sub/../../a.txt", "."):
        with pytest.raises(JobError, match="leaves the job's output folder"):
            job.output_path(bad)
    (tmp_path / "stage" / "link").symlink_to(tmp_path)
    with pytest.raises(JobError):
        job.output_path("link/a.txt")


def test_a_module_asking_for_an_escaping_output_fails_its_job(tmp_path):
    mods = make_modules(tmp_path)
    (mods / "escape_module.py").write_text(ESCAPING_MODULE)
    inputs = make_inputs(tmp_path / "data", ["-001", "-002"])
    out = tmp_path / "run" / "out"
    config = write_config(tmp_path / "c.ini", "t_escape", inputs, out, mods,
                          extra="[T_ESCAPE]\nTARGET = ../../../escaped.txt\n")
    result = subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert not list(tmp_path.rglob("escaped.txt"))
    (run_dir,) = out.glob("test_*")
    table = (run_dir / "jobs.csv").read_text()
    assert table.count("leaves the job's output folder") == 2
