"""Shared helpers of the runner tests: a folder of test modules and config writing."""

from __future__ import annotations

import textwrap
from pathlib import Path

TEST_MODULES = '''
"""Modules used by the runner tests."""
import os
import time
from pathlib import Path

from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option


@module(name="t_copy", version="0.1", aliases=("t_copy_runner",), file_pattern=("in",), file_ext=".txt",
        numbering_scheme="-000",
        options=(Option("FAIL_ON", "list", [], "numbers that fail"),
                 Option("SLEEP", "float", 0.0, "seconds to sleep"),
                 Option("TAG", "str", "", "text added"),
                 Option("REF_DIR", "dir", None, "a directory option"),
                 Option("DIE_ON", "list", [], "numbers whose job kills its own process (a lost worker)"),
                 Option("UNPROCESSABLE_ON", "list", [], "numbers whose data cannot give the product")))
def t_copy(job):
    """Copy the input, prefixed with TAG, into out<number>.txt and sub/side<number>.txt."""
    if job.number in job.options["DIE_ON"]:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    if job.number in job.options["UNPROCESSABLE_ON"]:
        from shapepipe.errors import JobUnprocessable
        raise JobUnprocessable(f"{job.inputs[0]}: too few stars")
    if job.options["SLEEP"]:
        time.sleep(job.options["SLEEP"])
    text = job.options["TAG"] + Path(job.inputs[0]).read_text()
    job.output_path(f"out{job.number}.txt").write_text(text)
    job.output_path(f"sub/side{job.number}.txt").write_text(str(job.rng().integers(1 << 30)))
    if job.number in job.options["FAIL_ON"]:
        raise JobError(f"refusing {job.inputs[0]}")
    return {"length": len(text)}


@module(name="t_chain", version="0.1", input_module="t_copy", file_pattern=("out",), file_ext=".txt",
        numbering_scheme="-000")
def t_chain(job):
    """Upper-case the input into up<number>.txt."""
    job.output_path(f"up{job.number}.txt").write_text(Path(job.inputs[0]).read_text().upper())


@module(name="t_sum", version="0.1", input_module="t_copy", file_pattern=("out",), file_ext=".txt",
        numbering_scheme="-000", run_method="serial")
def t_sum(job):
    """Concatenate every input in number order into all.txt."""
    text = "".join(Path(p[0]).read_text() for p in job.input_table.values())
    job.output_path("all.txt").write_text(text)


@module(name="t_sleep_cmd", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000",
        executes=("sleep",), options=(Option("SECONDS", "float", 30.0, "sleep length"),
                                      Option("RAW", "bool", False, "start sleep with Popen and wait in Python")))
def t_sleep_cmd(job):
    """Start an external sleep (through run_command, or Popen then a Python wait)."""
    import subprocess

    job.output_path("never.txt").write_text("partial")
    if job.options["RAW"]:
        subprocess.Popen(["sleep", str(job.options["SECONDS"])])
        time.sleep(job.options["SECONDS"])
    else:
        job.run_command(["sleep", str(job.options["SECONDS"])])


@module(name="t_needs", version="0.1", file_pattern=("in",), file_ext=".txt", numbering_scheme="-000",
        depends=("no_such_package_xyz",), executes=("no-such-program-xyz",))
def t_needs(job):
    """Never runs: its dependencies are missing."""
'''


def make_modules(tmp_path: Path) -> Path:
    """Write the test modules into tmp_path/mods and return the folder."""
    folder = tmp_path / "mods"
    folder.mkdir(exist_ok=True)
    (folder / "runner_test_modules.py").write_text(TEST_MODULES)
    return folder


def make_inputs(folder: Path, numbers, prefix="in", ext=".txt") -> Path:
    """Input files <prefix><number><ext> holding 'value<number>'."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        (folder / f"{prefix}{number}{ext}").write_text(f"value{number}")
    return folder


def write_config(path: Path, modules, input_dir, output_dir, module_dir, extra="", job="", default="",
                 run_name="test", batch=2):
    """A configuration for the test modules; ``extra`` holds module sections."""
    lines = [
        "[DEFAULT]", "VERBOSE = False", f"RUN_NAME = {run_name}", default, "",
        "[EXECUTION]", f"MODULE = {modules}", f"MODULE_DIR = {module_dir}", "",
        "[FILE]", f"INPUT_DIR = {input_dir}", f"OUTPUT_DIR = {output_dir}", "",
        "[JOB]", f"SMP_BATCH_SIZE = {batch}", job, "",
    ]
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(extra))
    return path
