"""Runner: configuration validation, numbering, file discovery, references."""

from __future__ import annotations

import json
import re

import pytest

from test_runner_helpers import make_inputs, make_modules, write_config
from shapepipe.cli import main
from shapepipe.config import expand_vars
from shapepipe.errors import ConfigError
from shapepipe.numbering import compile_scheme, discover, scheme_regex
from shapepipe.plan import build_plan


@pytest.fixture
def setup(tmp_path):
    mods = make_modules(tmp_path)
    inputs = make_inputs(tmp_path / "data", ["-001", "-002", "-003"])
    return tmp_path, mods, inputs


def _errors(config):
    with pytest.raises(ConfigError) as info:
        build_plan(config)
    return info.value.problems


# -- numbering ---------------------------------------------------------------

@pytest.mark.parametrize(
    "template, good, bad",
    [
        ("_0", ["_1", "_12", "_123456"], ["_", "-1", "_1a", "1"]),
        ("-000-000", ["-051-123", "-000-999"], ["-51-123", "-0511-123", "_051-123"]),
        ("-0000000-0", ["-2113737-10", "-2113737-0"], ["-211373-10", "-2113737-", "-2113737_1"]),
        (r"RE:_\d{2}[ab]", ["_12a", "_99b"], ["_12c", "_1a"]),
    ],
)
def test_numbering_templates(template, good, bad):
    regex = compile_scheme(template)
    assert all(regex.fullmatch(n) for n in good)
    assert not any(regex.fullmatch(n) for n in bad)


def test_scheme_regex_text():
    assert scheme_regex("-0000000-0") == r"\-\d{7}\-\d+"
    assert scheme_regex("_0") == r"_\d+"
    assert scheme_regex("RE:x+") == "x+"


def test_discovery_gaps_duplicates_union_and_subfolders(tmp_path):
    a = make_inputs(tmp_path / "a", ["-001-002", "-001-003"], prefix="image")
    make_inputs(tmp_path / "a", ["-001-002"], prefix="weight", ext=".fits.fz")
    b = make_inputs(tmp_path / "b", ["-001-004"], prefix="weight", ext=".fits.fz")
    make_inputs(tmp_path / "b", ["-001-004"], prefix="image")
    make_inputs(tmp_path / "b" / "sub", ["-009-009"], prefix="image")
    # A running job's staging folder is never an input.
    make_inputs(tmp_path / "b" / ".staging", ["-007-007"], prefix="image")
    found = discover([a, b], ["image", "weight"], [".txt", ".fits.fz"], "-000-000")
    assert list(found.complete) == ["-001-002", "-001-004"]
    assert found.complete["-001-002"] == [str(a / "image-001-002.txt"), str(a / "weight-001-002.fits.fz")]
    assert found.missing == {"-001-003": ["weight*.fits.fz"], "-009-009": ["weight*.fits.fz"]}
    assert found.duplicates == []
    # The same number twice for one pattern is an error naming both files.
    make_inputs(tmp_path / "b", ["-001-002"], prefix="image")
    found = discover([a, b], ["image", "weight"], [".txt", ".fits.fz"], "-000-000")
    assert len(found.duplicates) == 1
    assert str(a / "image-001-002.txt") in found.duplicates[0]
    assert str(b / "image-001-002.txt") in found.duplicates[0]


def test_discovery_exact_prefix_beats_substring(tmp_path):
    folder = make_inputs(tmp_path / "d", ["_1", "_2"], prefix="flag")
    make_inputs(folder, ["_1", "_3"], prefix="pipeline_flag")
    found = discover([folder], ["flag"], [".txt"], "_0")
    assert list(found.complete) == ["_1", "_2"]
    # No exact match: names containing the pattern are accepted (CORRECT_FILE_PATTERN).
    found = discover([folder], ["line_fl"], [".txt"], "_0")
    assert list(found.complete) == ["_1", "_3"]
    assert discover([folder], ["line_fl"], [".txt"], "_0", correct_pattern=False).complete == {}


# -- variables ---------------------------------------------------------------

def test_expand_vars(monkeypatch):
    monkeypatch.setenv("SPX_RUN", "/data/run")
    assert expand_vars("$SPX_RUN/out, ${SPX_RUN}x") == "/data/run/out, /data/runx"
    monkeypatch.delenv("SPX_UNSET", raising=False)
    with pytest.raises(KeyError):
        expand_vars("$SPX_UNSET/x")


def test_variables_in_config(setup, monkeypatch):
    tmp_path, mods, inputs = setup
    monkeypatch.setenv("SPX_BASE", str(tmp_path))
    config = write_config(tmp_path / "c.ini", "t_copy", "${SPX_BASE}/data", "$SPX_BASE/out", mods,
                          extra="[T_COPY]\nTAG = $SPX_BASE\n")
    plan = build_plan(config)
    assert plan.output_dir == tmp_path / "out"
    assert plan.module_runs[0].options["TAG"] == str(tmp_path)
    monkeypatch.delenv("SPX_BASE")
    problems = _errors(config)
    assert any("[FILE] INPUT_DIR" in p and "$SPX_BASE is not set" in p for p in problems)


# -- validation ----------------------------------------------------------------

def test_every_config_error_listed_at_once(setup, capsys):
    tmp_path, mods, inputs = setup
    config = write_config(
        tmp_path / "bad.ini", "t_copy_runner, t_chain", inputs, tmp_path / "out", mods,
        job="SMP_BACKEND = lokky\nTIMEOUT = soon\n",
        extra="""
        [T_COPPY]
        TAG = x

        [T_COPY_RUNNER]
        SLEPP = 1
        SLEEP = abc
        REF_DIR = last:t_sum

        [T_CHAIN]
        ADD_INPUT_DIR = /no/such/folder
        """.replace("        ", ""),
    )
    problems = _errors(config)
    text = "\n".join(problems)
    assert "bad.ini: [T_COPPY]: unknown section (did you mean T_COPY or T_COPY_RUNNER?)" in text
    assert "[T_COPY_RUNNER] SLEPP: unknown key for module t_copy (did you mean SLEEP?)" in text
    assert "[T_COPY_RUNNER] SLEEP: expected a number" in text
    assert "[JOB] SMP_BACKEND: expected one of loky, multiprocessing, threading" in text
    assert "[JOB] TIMEOUT: expected HH:MM:SS" in text
    assert re.search(r"REF_DIR: last:t_sum: no successful .*module t_sum.* no run of this module", text)
    assert "[T_CHAIN] ADD_INPUT_DIR: directory /no/such/folder does not exist" in text
    assert len(problems) == 7
    # Through the command line: exit status 2, one message, nothing written.
    assert main(["-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "7 configuration errors" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_required_and_unknown_module(setup):
    tmp_path, mods, inputs = setup
    config = write_config(tmp_path / "c.ini", "t_copy, python_exampel", inputs, tmp_path / "out", mods)
    problems = _errors(config)
    assert any("unknown module 'python_exampel'; did you mean python_example" in p for p in problems)
    config = write_config(tmp_path / "c.ini", "python_example", inputs, tmp_path / "out", mods)
    problems = _errors(config)
    assert problems == ["c.ini: [PYTHON_EXAMPLE] MESSAGE: required key of module python_example is missing"]
    text = (tmp_path / "c.ini").read_text().replace("OUTPUT_DIR", "#")
    (tmp_path / "c.ini").write_text(text)
    assert any("[FILE] OUTPUT_DIR: required key is missing" in p for p in _errors(tmp_path / "c.ini"))


def test_missing_input_directory(setup):
    tmp_path, mods, inputs = setup
    config = write_config(tmp_path / "c.ini", "t_copy", tmp_path / "nothere", tmp_path / "out", mods)
    assert _errors(config) == [f"c.ini: [FILE] INPUT_DIR: directory {tmp_path / 'nothere'} does not exist"]


def test_shapepipe_keys_and_default_section_accepted(setup):
    tmp_path, mods, inputs = setup
    config = write_config(
        tmp_path / "c.ini", "t_copy", inputs, tmp_path / "out", mods,
        default="TAG = from-default",
        job="TIMEOUT = 96:00:00",
        extra="""
        [EXECUTION]
        MODE = mpi

        [WORKER]
        PROCESS_PRINT_LIMIT = 100

        [T_COPY_RUNNER]
        FILE_EXT = txt
        NUMBERING_SCHEME = -000
        NUMBER_LIST = -001, -003
        """.replace("        ", ""),
    )
    # [EXECUTION] appears twice: a parse error, reported as such.
    problems = _errors(config)
    assert len(problems) == 1 and "cannot parse" in problems[0] and "EXECUTION" in problems[0]
    text = config.read_text().replace("[EXECUTION]\nMODE = mpi\n", "")
    text = text.replace("MODULE = t_copy", "MODULE = t_copy\nMODE = MPI")
    config.write_text(text)
    plan = build_plan(config)
    run = plan.module_runs[0]
    assert run.options["TAG"] == "from-default"  # [DEFAULT] propagates into module sections
    assert run.exts == [".txt"] and run.numbers == ["-001", "-003"]
    assert plan.core["JOB"]["TIMEOUT"] == 96 * 3600
    assert any("MPI" in n for n in plan.notes) and any("PROCESS_PRINT_LIMIT" in n for n in plan.notes)


def test_run_n_sections_fall_back_to_plain_section(setup):
    tmp_path, mods, inputs = setup
    config = write_config(
        tmp_path / "c.ini", "t_copy, t_copy, t_copy", inputs, tmp_path / "out", mods,
        extra="""
        [T_COPY]
        TAG = plain
        SLEEP = 0.5

        [T_COPY_RUNNER_RUN_2]
        TAG = second

        [t_copy_run_3]
        SLEEP = 0
        """.replace("        ", ""),
    )
    plan = build_plan(config)
    names = [r.name for r in plan.module_runs]
    assert names == ["t_copy_run_1", "t_copy_run_2", "t_copy_run_3"]
    options = [(r.options["TAG"], r.options["SLEEP"]) for r in plan.module_runs]
    assert options == [("plain", 0.5), ("second", 0.5), ("plain", 0.0)]
    config.write_text(config.read_text() + "\n[T_COPY_RUN_4]\nTAG = x\n")
    assert any("runs 3 times; there is no run 4" in p for p in _errors(config))


def test_number_list_file_and_bad_numbers(setup):
    tmp_path, mods, inputs = setup
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("-001\n\n-002\n")
    config = write_config(tmp_path / "c.ini", "t_copy", inputs, tmp_path / "out", mods,
                          extra=f"[T_COPY]\nNUMBER_LIST = {numbers}\n")
    assert build_plan(config).module_runs[0].numbers == ["-001", "-002"]
    numbers.write_text("-001\n_2\n")
    assert any("do not fit the numbering scheme '-000': _2" in p for p in _errors(config))


def test_duplicate_input_files_are_config_errors(setup):
    tmp_path, mods, inputs = setup
    other = make_inputs(tmp_path / "other", ["-002"])
    config = write_config(tmp_path / "c.ini", "t_copy", f"{inputs}, {other}", tmp_path / "out", mods)
    problems = _errors(config)
    assert len(problems) == 1
    assert "'-002'" in problems[0] and str(inputs / "in-002.txt") in problems[0]
    assert str(other / "in-002.txt") in problems[0]


# -- references across runs ------------------------------------------------------

def _run(config, *extra):
    return main(["-c", str(config), *extra])


def _record(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def test_last_all_run_references_skip_failed_runs(setup):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    first = write_config(tmp_path / "a.ini", "t_copy", inputs, out, mods, extra="[T_COPY]\nTAG = A\n",
                         run_name="first")
    assert _run(first) == 0
    second = write_config(tmp_path / "b.ini", "t_copy", inputs, out, mods, extra="[T_COPY]\nTAG = B\n",
                          run_name="second")
    assert _run(second) == 0
    failing = write_config(tmp_path / "c.ini", "t_copy", inputs, out, mods,
                           extra="[T_COPY]\nTAG = C\nFAIL_ON = -001, -002, -003\n", run_name="third")
    assert _run(failing) == 1
    runs = sorted(out.glob("*/run.json"), key=lambda p: _record(p.parent)["started"])
    assert [_record(p.parent)["modules"][0]["status"] for p in runs] == ["done", "done", "failed"]
    first_dir, second_dir = runs[0].parent, runs[1].parent

    def chain(reference, name):
        config = write_config(tmp_path / f"{name}.ini", "t_chain", inputs, out, mods,
                              extra=f"[T_CHAIN]\nINPUT_DIR = {reference}\n", run_name=f"{name}")
        assert _run(config) == 0
        run_dir = max(out.glob(f"{name}_*"))
        return sorted((run_dir / "t_chain" / "output").glob("up*.txt"))

    # last: skips the failed third run and resolves to the second.
    last = chain("last:t_copy_runner", "chain_last")
    assert [p.read_text() for p in last] == ["BVALUE-001", "BVALUE-002", "BVALUE-003"]
    # run: a named run.
    named = chain(f"run:{first_dir.name}:t_copy", "chain_named")
    assert [p.read_text() for p in named] == ["AVALUE-001", "AVALUE-002", "AVALUE-003"]
    # all: the union of every successful run: the same numbers twice is an error naming both.
    config = write_config(tmp_path / "all.ini", "t_chain", inputs, out, mods,
                          extra="[T_CHAIN]\nINPUT_DIR = all:t_copy\n", run_name="chain_all")
    problems = _errors(config)
    assert len(problems) == 3 and all(str(first_dir) in p and str(second_dir) in p for p in problems)
    # A reference to a module that never succeeded names what was searched and the candidates.
    config = write_config(tmp_path / "none.ini", "t_chain", inputs, out, mods,
                          extra="[T_CHAIN]\nINPUT_DIR = last:t_sum\n", run_name="chain_none")
    problems = _errors(config)
    assert "no successful (done or partial) module t_sum" in problems[0] and str(out) in problems[0]


def test_all_reference_is_a_union(setup):
    tmp_path, mods, _ = setup
    out = tmp_path / "out"
    for name, numbers in (("p1", ["-001", "-002"]), ("p2", ["-003"])):
        data = make_inputs(tmp_path / f"data_{name}", numbers)
        config = write_config(tmp_path / f"{name}.ini", "t_copy", data, out, mods, run_name=f"{name}")
        assert _run(config) == 0
    config = write_config(tmp_path / "u.ini", "t_sum", tmp_path, out, mods,
                          extra="[T_SUM]\nINPUT_DIR = all:t_copy\n", run_name="union")
    assert _run(config) == 0
    total = next(out.glob("union_*")) / "t_sum" / "output" / "all.txt"
    assert total.read_text() == "value-001value-002value-003"


def test_last_reference_within_the_current_run(setup):
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.ini", "t_copy, t_copy, t_chain", inputs, out, mods,
                          extra="[T_COPY_RUN_2]\nTAG = two\n[T_CHAIN]\nINPUT_DIR = last:t_copy_run_1\n")
    assert _run(config) == 0
    run_dir = next(out.glob("test_*"))
    ups = sorted((run_dir / "t_chain" / "output").glob("up*"))
    assert [p.read_text() for p in ups] == ["VALUE-001", "VALUE-002", "VALUE-003"]


def test_bare_module_name_in_directory_option_means_last(setup):
    """ShapePipe writes ME_DOT_PSF_DIR = psfex_runner: a bare module name is last:NAME."""
    tmp_path, mods, inputs = setup
    out = tmp_path / "out"
    first = write_config(tmp_path / "a.ini", "t_copy", inputs, out, mods, run_name="first")
    assert _run(first) == 0
    config = write_config(tmp_path / "b.ini", "t_copy", inputs, out, mods, run_name="second",
                          extra="[T_COPY]\nREF_DIR = t_copy_runner\n")
    plan = build_plan(config)
    run = plan.module_runs[0]
    assert run.option_refs["REF_DIR"][0] == ["last:t_copy_runner"]
    # An existing folder of that name stays a folder; an unknown name is an error.
    config = write_config(tmp_path / "c.ini", "t_copy", inputs, out, mods, run_name="third",
                          extra="[T_COPY]\nREF_DIR = no_such_module_dir\n")
    assert any("no_such_module_dir" in p for p in _errors(config))
