"""``shapepipe_batch``: job-array scripts for SLURM, PBS and Grid Engine from a configuration.

The batch system is the scheduler. From a configuration and a file of
numbers (one tile or exposure per line), this writes

- ``<name>_array.slurm`` (``.pbs``, ``.sge``): a job array whose task ``K`` runs
  ``shapepipe_run -c CONFIG --numbers FILE --array-index --per-task N
  --resume-if-any`` on numbers ``K*N .. K*N+N-1`` of the file;
- ``<name>_merge.slurm`` (with ``--merge-config``): one serial job running the
  stage that reads every task's output (``INPUT_DIR = all:MODULE``);
- ``<name>_submit.sh``: submits both, the merge job waiting for the array.

It submits only with ``--submit``. Everything is checked first: the
configuration must build for the numbers of the first task, every number must
fit a numbering scheme of the configuration. Also ``python -m shapepipe.cluster.batch``.

Exit status: 0 written (and submitted); 1 submission failed; 2 invalid
configuration, numbers or options (nothing written).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DependencyError
from ..arguments import ArgumentParser

EXIT_OK, EXIT_SUBMIT, EXIT_CONFIG = 0, 1, 2
SCHEDULERS = ("slurm", "pbs", "sge")
EXTENSIONS = {"slurm": ".slurm", "pbs": ".pbs", "sge": ".sge"}
SUBMIT_PROGRAMS = {"slurm": "sbatch", "pbs": "qsub", "sge": "qsub"}
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<hours>\d+):(?P<minutes>[0-5]\d):(?P<seconds>[0-5]\d)$")
_MEMORY = re.compile(r"^(?P<value>\d+)(?P<unit>[KMGT]?)B?$", re.IGNORECASE)
_JOB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class BatchSettings:
    """Everything a batch script needs, with absolute paths.

    Attributes
    ----------
    scheduler : {"slurm", "pbs", "sge"}
    config, numbers_file, out_dir, log_dir, workdir : Path
        The array's configuration, the number list, where the scripts go,
        where the batch system writes the task logs, and the folder every job
        starts in (relative paths of the configuration are read from there).
    per_task, throttle, cpus : int
        Numbers per array task; most tasks running at once (None: no limit);
        CPUs per task (the runner starts that many workers).
    time, mem : str
        Wall time ``[D-]HH:MM:SS`` and memory per task (``8G``, ``500M``;
        None: the scheduler's default).
    queue, account, job_name : str
    activation : list of str
        Shell lines that set up the environment of the jobs.
    exports : list of (str, str)
        Environment variables set in the jobs (those the configurations use).
    merge_config : Path or None
        Configuration of the serial merge job.
    merge_time, merge_mem, merge_cpus :
        Resources of the merge job.
    dependency : {"afterany", "afterok"}
        When the merge job may start: after every task ended, or only if all
        succeeded.
    parallel_environment : str
        Grid Engine: the parallel environment that grants ``cpus`` slots on
        one host (``-pe NAME cpus``, only when ``cpus`` > 1).
    """

    scheduler: str
    config: Path
    numbers_file: Path
    out_dir: Path
    log_dir: Path
    workdir: Path
    job_name: str
    per_task: int = 1
    throttle: int | None = None
    time: str = "04:00:00"
    mem: str | None = None
    cpus: int = 1
    queue: str | None = None
    account: str | None = None
    activation: list = field(default_factory=list)
    exports: list = field(default_factory=list)
    merge_config: Path | None = None
    merge_time: str | None = None
    merge_mem: str | None = None
    merge_cpus: int = 1
    dependency: str = "afterany"
    parallel_environment: str = "smp"
    command_line: str = ""

    def script_path(self, kind: str) -> Path:
        """Path of the ``array``, ``merge`` or ``submit`` script."""
        extension = ".sh" if kind == "submit" else EXTENSIONS[self.scheduler]
        return self.out_dir / f"{self.job_name}_{kind}{extension}"


@dataclass
class Campaign:
    """The validated numbers of an array."""

    numbers: list
    n_tasks: int
    notes: list = field(default_factory=list)
    modules: list = field(default_factory=list)  # modules the array runs (None: unknown)
    output_dir: Path | None = None  # the array's OUTPUT_DIR


# --------------------------------------------------------------------------- checks


def read_number_file(path: Path) -> list[tuple[str, int]]:
    """Numbers of a number list with their line numbers (``#`` comments and blank lines skipped).

    Raises
    ------
    ConfigError
        Unreadable or empty file, a line holding several words, a repeated number.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--numbers {path}: cannot read the number list: {error}") from None
    numbers, seen, problems = [], {}, []
    for line_number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if len(text.split()) > 1:
            problems.append(f"{path}:{line_number}: one number per line, found {text!r}")
            continue
        if text in seen:
            problems.append(f"{path}:{line_number}: number {text} repeated (first on line {seen[text]})")
            continue
        seen[text] = line_number
        numbers.append((text, line_number))
    if problems:
        raise ConfigError(problems)
    if not numbers:
        raise ConfigError(f"--numbers {path}: the number list holds no number")
    return numbers


def check_time(text: str, option: str) -> str:
    """A wall time ``[D-]HH:MM:SS``, returned unchanged."""
    if not _TIME.match(text):
        raise ConfigError(f"{option} {text!r}: give the wall time as HH:MM:SS (or D-HH:MM:SS)")
    return text


def check_memory(text: str | None, option: str) -> str | None:
    """A memory size such as ``8G``, ``500M`` or ``2000`` (megabytes), upper-cased."""
    if text is None:
        return None
    match = _MEMORY.match(text.strip())
    if not match or int(match.group("value")) <= 0:
        raise ConfigError(f"{option} {text!r}: give the memory as a number with an optional unit K, M, G or T "
                          "(e.g. 8G, 500M)")
    return f"{match.group('value')}{match.group('unit').upper()}"


def pbs_memory(text: str) -> str:
    """PBS spelling of a SLURM-style memory size: ``8G`` -> ``8gb``, ``2000`` -> ``2000mb``."""
    match = _MEMORY.match(text)
    unit = (match.group("unit") or "M").lower()
    return f"{match.group('value')}{unit}b"


def pbs_walltime(text: str) -> str:
    """PBS spelling of a wall time: days are folded into hours (``1-02:00:00`` -> ``26:00:00``)."""
    match = _TIME.match(text)
    hours = int(match.group("days") or 0) * 24 + int(match.group("hours"))
    return f"{hours:02d}:{match.group('minutes')}:{match.group('seconds')}"


def sge_memory(text: str, cpus: int) -> str:
    """Grid Engine ``h_vmem`` of a task's memory: per slot, in megabytes (``8G`` on 4 CPUs -> ``2048M``)."""
    match = _MEMORY.match(text)
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[match.group("unit").upper()]
    return f"{max(math.ceil(int(match.group('value')) * scale / cpus), 1)}M"


def config_variables(paths) -> list[str]:
    """Environment variables named in configuration files (``$NAME``, ``${NAME}``), in order of appearance."""
    names = []
    for path in paths:
        if path is None:
            continue
        for line in Path(path).read_text().splitlines():
            if line.lstrip().startswith(("#", ";")):
                continue
            for match in _VARIABLE.finditer(line):
                name = match.group("braced") or match.group("plain")
                if name not in names:
                    names.append(name)
    return names


def _plan_schemes(plan) -> list[tuple[str, str]]:
    return [(run.name, run.scheme) for run in plan.module_runs if run.scheme is not None]


def validate_array(settings: BatchSettings) -> Campaign:
    """Check the array's configuration and numbers; return the numbers and task count.

    The configuration is built (:func:`shapepipe.plan.build_plan`) with the
    selection of the first task, as that task will build it; then every
    number is checked against the numbering schemes of its module runs.

    Raises
    ------
    ConfigError
        Naming the file (and line, for a number) at fault.
    """
    from ..numbering import compile_scheme
    from ..plan import build_plan
    from ..selection import Selection

    numbered = read_number_file(settings.numbers_file)
    numbers = [number for number, _ in numbered]
    n_tasks = math.ceil(len(numbers) / settings.per_task)
    notes = []
    first = Selection(numbers=numbers[:settings.per_task], label="task0",
                      source=f"--numbers {settings.numbers_file}, task 0", array_index=0)
    try:
        plan = build_plan(settings.config, selection=first)
    except ConfigError as error:
        raise ConfigError([f"-c {settings.config} (as array task 0 builds it): {p}" for p in error.problems]) from None
    except DependencyError as error:
        # The jobs run in the activated environment, which may provide what this shell lacks.
        notes.append(f"warning: {error}; the job environment (--env) must provide them")
        plan = None
    modules, output_dir = _array_modules(settings.config, plan)
    if plan is not None:
        schemes = _plan_schemes(plan)
        fits = [compile_scheme(scheme).fullmatch for _, scheme in schemes]
        strangers = [(n, line) for n, line in numbered if fits and not any(f(n) for f in fits)]
        if strangers:
            described = ", ".join(f"{name} {scheme!r}" for name, scheme in schemes)
            raise ConfigError([f"{settings.numbers_file}:{line}: number {n} fits no numbering scheme of "
                               f"{settings.config} ({described})" for n, line in strangers])
        for run in plan.module_runs:
            if run.discovery is None or run.scheme is None:
                continue
            matcher = compile_scheme(run.scheme).fullmatch
            absent = [n for n in numbers if matcher(n) and n not in run.discovery.complete]
            if absent:
                notes.append(f"note: {len(absent)} of the {len(numbers)} numbers have no complete input for "
                             f"module run {run.name} yet (e.g. {', '.join(absent[:3])}); their tasks will "
                             "report the inputs as missing")
            break
    return Campaign(numbers=numbers, n_tasks=n_tasks, notes=notes, modules=modules, output_dir=output_dir)


def _array_modules(config: Path, plan) -> tuple[list[str], Path | None]:
    """Modules of the array configuration and its OUTPUT_DIR (read from the file when no plan was built)."""
    if plan is not None:
        return [run.spec.name for run in plan.module_runs], plan.output_dir
    from ..config import expand_vars, read_ini
    from ..module import default_registry
    from ..options import split_list

    ini = read_ini(config)
    text, _ = ini.lookup(["EXECUTION"], "MODULE_DIR")
    registry = default_registry([os.path.abspath(d) for d in split_list(expand_vars(text))] if text else [])
    text, _ = ini.lookup(["EXECUTION"], "MODULE")
    modules = []
    for name in split_list(text or ""):
        try:
            modules.append(registry.canonical(name.strip()))
        except KeyError:
            continue
    return modules, _output_dir(ini)


def _output_dir(ini) -> Path | None:
    from ..config import expand_vars

    text, _ = ini.lookup(["FILE"], "OUTPUT_DIR")
    if not text:
        return None
    try:
        return Path(os.path.abspath(os.path.expanduser(expand_vars(text.strip()))))
    except KeyError:
        return None


def validate_merge(settings: BatchSettings, campaign: Campaign) -> list[str]:
    """Check the merge configuration; returns notes.

    References to modules that the array produces (``all:split_exp``) cannot
    resolve before the array ran: those are accepted when the array's
    configuration runs the module and both write to the same OUTPUT_DIR.
    """
    from ..config import read_ini
    from ..plan import build_plan

    try:
        build_plan(settings.merge_config)
        return []
    except DependencyError as error:
        return [f"warning: {error}; the job environment (--env) must provide them"]
    except ConfigError as error:
        problems = error.problems
    pending = re.compile(r"no successful \(done or partial\) module(?: run)? (?P<module>[a-z0-9_]+?)(?:_run_\d+)? in ")
    remaining, deferred = [], []
    for problem in problems:
        match = pending.search(problem)
        if match and match.group("module") in campaign.modules:
            deferred.append(match.group("module"))
        else:
            remaining.append(problem)
    merge_output = _output_dir(read_ini(settings.merge_config))
    if deferred and merge_output != campaign.output_dir:
        remaining.append(f"[FILE] OUTPUT_DIR is {merge_output}, the array's is {campaign.output_dir}: the "
                         f"references to {', '.join(dict.fromkeys(deferred))} will find no run of the array")
    if remaining:
        raise ConfigError([f"--merge-config {settings.merge_config}: {p}" for p in remaining])
    if not deferred:
        return []
    return [f"note: the merge configuration reads outputs of {', '.join(dict.fromkeys(deferred))}, "
            "which the array will produce"]


# --------------------------------------------------------------------------- scripts


def _quote(path) -> str:
    return shlex.quote(str(path))


def _directive_path(path: Path, option: str) -> str:
    # Batch directives are not parsed by a shell: a path with spaces cannot be quoted there.
    text = str(path)
    if any(character.isspace() for character in text):
        raise ConfigError(f"{option} {text}: batch directives cannot hold paths with spaces; choose another folder")
    return text


def _environment_lines(settings: BatchSettings, script: Path) -> list[str]:
    lines = ["# Environment of the jobs. 'set +u': activation scripts may read unset variables."]
    lines += ["set +u"] + list(settings.activation) + ["set -u"]
    if settings.exports:
        lines.append("# Variables the configuration uses, with their values when the script was written.")
        lines += [f"export {name}={shlex.quote(value)}" for name, value in settings.exports]
    lines.append("# Recorded in run.json; shapepipe_status names this script in its resubmission command.")
    lines.append(f"export SHAPEPIPE_BATCH_SCRIPT={_quote(script)}")
    lines.append(f"cd {_quote(settings.workdir)}")
    return lines


def _run_command(settings: BatchSettings, single_task: bool) -> str:
    index = "--array-index 0" if single_task else "--array-index"
    return (f"exec shapepipe_run -c {_quote(settings.config)} --numbers {_quote(settings.numbers_file)} "
            f"{index} --per-task {settings.per_task} --resume-if-any")


def _header(settings: BatchSettings, what: str) -> list[str]:
    lines = [f"# {what}", "# Written by shapepipe_batch; run again to regenerate."]
    if settings.command_line:
        lines.append(f"#   {settings.command_line}")
    return lines


def _slurm_resources(settings: BatchSettings, cpus: int, mem: str | None, time: str) -> list[str]:
    """``#SBATCH`` lines for CPUs, memory, wall time, partition and account."""
    lines = ["#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={cpus}"]
    if mem:
        lines.append(f"#SBATCH --mem={mem}")
    lines.append(f"#SBATCH --time={time}")
    if settings.queue:
        lines.append(f"#SBATCH --partition={settings.queue}")
    if settings.account:
        lines.append(f"#SBATCH --account={settings.account}")
    return lines


def _pbs_resources(settings: BatchSettings, cpus: int, mem: str | None, time: str) -> list[str]:
    """``#PBS`` lines for CPUs, memory, wall time, queue and account."""
    resources = f"select=1:ncpus={cpus}" + (f":mem={pbs_memory(mem)}" if mem else "")
    lines = [f"#PBS -l {resources}", f"#PBS -l walltime={pbs_walltime(time)}"]
    if settings.queue:
        lines.append(f"#PBS -q {settings.queue}")
    if settings.account:
        lines.append(f"#PBS -A {settings.account}")
    return lines


def _sge_resources(settings: BatchSettings, cpus: int, mem: str | None, time: str) -> list[str]:
    """``#$`` lines for the shell, slots, memory, wall time, queue and project."""
    lines = ["#$ -S /bin/bash"]
    if cpus > 1:
        lines.append(f"#$ -pe {settings.parallel_environment} {cpus}")
    lines.append(f"#$ -l h_rt={pbs_walltime(time)}")
    if mem:
        # h_vmem is per slot and limits virtual memory (sites that use mem_free
        # or m_mem_free instead: edit this line).
        lines.append(f"#$ -l h_vmem={sge_memory(mem, cpus)}")
    if settings.queue:
        lines.append(f"#$ -q {settings.queue}")
    if settings.account:
        lines.append(f"#$ -P {settings.account}")
    return lines


def array_script(settings: BatchSettings, campaign: Campaign) -> str:
    """Text of the job-array script."""
    script = settings.script_path("array")
    last = campaign.n_tasks - 1
    per = f"{settings.per_task} number{'s' if settings.per_task > 1 else ''}"
    what = (f"ShapePipe job array: {len(campaign.numbers)} numbers of {settings.numbers_file}, {per} per task, "
            f"{campaign.n_tasks} task{'s' if campaign.n_tasks > 1 else ''} (indices 0-{last}).")
    throttle = f"%{settings.throttle}" if settings.throttle else ""
    logs = _directive_path(settings.log_dir, "--log-dir")
    lines = ["#!/bin/bash"]
    if settings.scheduler == "slurm":
        lines += [f"#SBATCH --job-name={settings.job_name}", f"#SBATCH --array=0-{last}{throttle}"]
        lines += _slurm_resources(settings, settings.cpus, settings.mem, settings.time)
        lines += [f"#SBATCH --output={logs}/{settings.job_name}_%A_%a.out",
                  f"#SBATCH --error={logs}/{settings.job_name}_%A_%a.err"]
        lines += _header(settings, what)
        lines += [f"# Submit: sbatch {script}",
                  f"# Re-run some tasks only (after a fix): sbatch --array=LIST {script}",
                  "# with LIST such as 0,2-3 (shapepipe_status OUTPUT_DIR prints this command for the failures).",
                  "# Each task resumes its own run (--resume-if-any): finished jobs are never redone."]
    elif settings.scheduler == "sge":
        # Grid Engine numbers tasks from 1: the runner's index is SGE_TASK_ID - 1.
        lines += [f"#$ -N {settings.job_name}", f"#$ -t 1-{campaign.n_tasks}"]
        if settings.throttle:
            lines.append(f"#$ -tc {settings.throttle}")
        lines += _sge_resources(settings, settings.cpus, settings.mem, settings.time)
        lines += [f"#$ -o {logs}/{settings.job_name}.$JOB_ID.$TASK_ID.out",
                  f"#$ -e {logs}/{settings.job_name}.$JOB_ID.$TASK_ID.err"]
        lines += _header(settings, what)
        lines += [f"# Submit: qsub {script}",
                  "# Grid Engine numbers the tasks from 1: task K+1 (SGE_TASK_ID) runs index K.",
                  f"# Re-run some tasks only (after a fix): qsub -t A-B {script}",
                  "# one range per qsub (shapepipe_status OUTPUT_DIR prints these commands for the failures).",
                  "# Each task resumes its own run (--resume-if-any): finished jobs are never redone."]
    else:
        lines += [f"#PBS -N {settings.job_name}"]
        if campaign.n_tasks > 1:
            lines.append(f"#PBS -J 0-{last}{throttle}")
        lines += _pbs_resources(settings, settings.cpus, settings.mem, settings.time)
        # A folder (not a file name): PBS names each subjob's log after its job id,
        # so a resubmitted task never overwrites the log of an earlier attempt.
        lines += [f"#PBS -o {logs}/", f"#PBS -e {logs}/"]
        lines += _header(settings, what)
        lines.append(f"# Submit: qsub {script}")
        if campaign.n_tasks == 1:
            lines.append("# One task: a plain job with its index on the command line (PBS Pro arrays need two "
                         "subjobs).")
        else:
            lines += [f"# Re-run some tasks only (after a fix): qsub -J A-B {script}",
                      "# (a range of at least two indices; shapepipe_status OUTPUT_DIR prints this command).",
                      "# '-J 0-N%M' runs at most M subjobs at once (the max_run_subjobs attribute of OpenPBS "
                      "and",
                      "# recent PBS Pro; older versions reject '%M': remove it). Torque: replace '#PBS -J' by",
                      "# '#PBS -t' (same range and %M) and '-l select=1:ncpus=C:mem=X' by "
                      "'-l nodes=1:ppn=C,mem=X';",
                      "# the runner reads the index from PBS_ARRAY_INDEX (PBS Pro) or PBS_ARRAYID (Torque)."]
    lines += ["set -euo pipefail", ""] + _environment_lines(settings, script)
    lines += [_run_command(settings, settings.scheduler == "pbs" and campaign.n_tasks == 1)]
    return "\n".join(lines) + "\n"


def merge_script(settings: BatchSettings) -> str:
    """Text of the serial merge job script."""
    script = settings.script_path("merge")
    time = settings.merge_time or settings.time
    mem = settings.merge_mem or settings.mem
    logs = _directive_path(settings.log_dir, "--log-dir")
    name = f"{settings.job_name}_merge"
    what = f"ShapePipe merge job: {settings.merge_config}, after the array {settings.script_path('array').name}."
    lines = ["#!/bin/bash"]
    if settings.scheduler == "slurm":
        lines += [f"#SBATCH --job-name={name}"] + _slurm_resources(settings, settings.merge_cpus, mem, time)
        lines += [f"#SBATCH --output={logs}/{name}_%j.out", f"#SBATCH --error={logs}/{name}_%j.err"]
        lines += _header(settings, what)
        lines += [f"# Submit after the array: sbatch --dependency={settings.dependency}:ARRAY_JOB_ID {script}",
                  f"# ({settings.script_path('submit').name} does both.)"]
    elif settings.scheduler == "sge":
        lines += [f"#$ -N {name}"] + _sge_resources(settings, settings.merge_cpus, mem, time)
        lines += [f"#$ -o {logs}/{name}.$JOB_ID.out", f"#$ -e {logs}/{name}.$JOB_ID.err"]
        lines += _header(settings, what)
        lines += [f"# Submit after the array: qsub -hold_jid ARRAY_JOB_ID {script}",
                  "# (it starts when every task of the array has ended, whatever its exit status)",
                  f"# ({settings.script_path('submit').name} does both.)"]
    else:
        lines += [f"#PBS -N {name}"] + _pbs_resources(settings, settings.merge_cpus, mem, time)
        lines += [f"#PBS -o {logs}/", f"#PBS -e {logs}/"]
        lines += _header(settings, what)
        lines += [f"# Submit after the array: qsub -W depend={settings.dependency}:ARRAY_JOB_ID {script}",
                  "# (ARRAY_JOB_ID as qsub printed it, e.g. 1234[].server; Torque: "
                  f"-W depend={settings.dependency}array:ARRAY_JOB_ID)",
                  f"# ({settings.script_path('submit').name} does both.)"]
    lines += ["set -euo pipefail", ""] + _environment_lines(settings, script)
    lines.append(f"exec shapepipe_run -c {_quote(settings.merge_config)}")
    return "\n".join(lines) + "\n"


def submit_script(settings: BatchSettings) -> str:
    """Text of the script that submits the array, then the merge job depending on it."""
    array, merge = settings.script_path("array"), settings.script_path("merge")
    lines = ["#!/bin/bash", f"# Submit the ShapePipe array {array.name}"
             + (f" and the merge job {merge.name}, which starts after every task ended ({settings.dependency})."
                if settings.merge_config else "."),
             "# Written by shapepipe_batch.", "set -euo pipefail",
             "# The batch system does not create the log folder.",
             f"mkdir -p {_quote(settings.log_dir)}"]
    if settings.scheduler == "slurm":
        lines += [f"array_job=$(sbatch --parsable {_quote(array)})",
                  "array_job=${array_job%%;*}  # --parsable prints JOBID[;CLUSTER]",
                  f'echo "array job $array_job: {array}"']
        if settings.merge_config:
            lines += [f"merge_job=$(sbatch --parsable --dependency={settings.dependency}:$array_job {_quote(merge)})",
                      "merge_job=${merge_job%%;*}",
                      f'echo "merge job $merge_job ({settings.dependency}:$array_job): {merge}"']
    elif settings.scheduler == "sge":
        lines += [f"array_job=$(qsub -terse {_quote(array)})",
                  "array_job=${array_job%%.*}  # -terse prints JOBID.FIRST-LAST:STEP for an array",
                  f'echo "array job $array_job: {array}"']
        if settings.merge_config:
            lines += [f"merge_job=$(qsub -terse -hold_jid $array_job {_quote(merge)})",
                      f'echo "merge job $merge_job ({settings.dependency}:$array_job): {merge}"']
    else:
        lines += [f"array_job=$(qsub {_quote(array)})", f'echo "array job $array_job: {array}"']
        if settings.merge_config:
            lines += [f"merge_job=$(qsub -W depend={settings.dependency}:$array_job {_quote(merge)})",
                      f'echo "merge job $merge_job ({settings.dependency}:$array_job): {merge}"']
    return "\n".join(lines) + "\n"


@dataclass
class WrittenScripts:
    """Paths of the written scripts (merge is None without --merge-config)."""

    array: Path
    submit: Path
    merge: Path | None = None


def write_scripts(settings: BatchSettings, campaign: Campaign) -> WrittenScripts:
    """Write the scripts atomically (mode 755) and create the log folder."""
    from ..atomic import write_text_atomic

    texts = {"array": array_script(settings, campaign), "submit": submit_script(settings)}
    if settings.merge_config is not None:
        texts["merge"] = merge_script(settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, text in texts.items():
        path = settings.script_path(kind)
        write_text_atomic(path, text)
        path.chmod(0o755)
        paths[kind] = path
    return WrittenScripts(array=paths["array"], submit=paths["submit"], merge=paths.get("merge"))


# --------------------------------------------------------------------------- submission


class SubmitError(RuntimeError):
    """The batch system refused a script or is not available."""


def _submit_one(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SubmitError(f"{' '.join(argv)}: {error}") from None
    if result.returncode != 0:
        raise SubmitError(f"{' '.join(argv)} failed (exit status {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}")
    job_id = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if not job_id:
        raise SubmitError(f"{' '.join(argv)} printed no job id")
    return job_id.split(";", 1)[0]


def submit(settings: BatchSettings, scripts: WrittenScripts) -> tuple[str, str | None]:
    """Submit the array, then the merge job depending on it; returns the job ids.

    Raises
    ------
    SubmitError
        The submission program is missing or refused a script.
    """
    program = SUBMIT_PROGRAMS[settings.scheduler]
    executable = shutil.which(program)
    if executable is None:
        raise SubmitError(f"--submit: {program} not found on PATH (is this a {settings.scheduler.upper()} login node?)")
    if settings.scheduler == "slurm":
        array_id = _submit_one([executable, "--parsable", str(scripts.array)])
        merge_id = None
        if scripts.merge is not None:
            merge_id = _submit_one([executable, "--parsable", f"--dependency={settings.dependency}:{array_id}",
                                    str(scripts.merge)])
    elif settings.scheduler == "sge":
        array_id = _submit_one([executable, "-terse", str(scripts.array)]).split(".", 1)[0]
        merge_id = None
        if scripts.merge is not None:
            merge_id = _submit_one([executable, "-terse", "-hold_jid", array_id, str(scripts.merge)])
    else:
        array_id = _submit_one([executable, str(scripts.array)])
        merge_id = None
        if scripts.merge is not None:
            merge_id = _submit_one([executable, "-W", f"depend={settings.dependency}:{array_id}", str(scripts.merge)])
    return array_id, merge_id


# --------------------------------------------------------------------------- command line


def default_activation() -> list[str]:
    """Shell lines activating the environment of the running Python.

    ``source <prefix>/bin/activate`` for a virtual environment; otherwise the
    interpreter's folder (where ``shapepipe_run`` is installed) goes first on
    PATH.
    """
    activate = Path(sys.prefix) / "bin" / "activate"
    if activate.is_file():
        return [f"source {_quote(activate)}"]
    return [f"export PATH={_quote(Path(sys.executable).parent)}:\"$PATH\""]


def activation_lines(values: list[str] | None) -> list[str]:
    """``--env`` values: an existing file is sourced, anything else is a shell line kept as given."""
    if not values:
        return default_activation()
    lines = []
    for value in values:
        path = Path(value).expanduser()
        lines.append(f"source {_quote(path.resolve())}" if path.is_file() else value)
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="shapepipe_batch",
        description="Write SLURM, PBS or Grid Engine (sge) job-array scripts running shapepipe_run over a number list, and a "
                    "merge job that waits for the array. Submits only with --submit.")
    parser.add_argument("--scheduler", required=True, choices=SCHEDULERS, help="batch system")
    parser.add_argument("-c", "--config", required=True, help="configuration of every array task")
    parser.add_argument("--numbers", required=True, metavar="FILE", help="file of numbers, one a line")
    parser.add_argument("--per-task", type=int, default=1, metavar="N", help="numbers per array task (default 1)")
    parser.add_argument("--throttle", type=int, default=None, metavar="M", help="at most M tasks running at once")
    parser.add_argument("--time", default="04:00:00", metavar="HH:MM:SS", help="wall time per task (default 04:00:00)")
    parser.add_argument("--mem", default=None, metavar="SIZE", help="memory per task, e.g. 8G (default: scheduler's)")
    parser.add_argument("--mem-from", default=None, metavar="PATH",
                        help="size --mem from the peak real memory per job recorded in earlier runs (an "
                             "OUTPUT_DIR or run folder, e.g. of a pilot task): --cpus jobs of the largest at once, "
                             f"x{MEM_MARGIN:g}, plus {MEM_BASE_MB} MB for the runner")
    parser.add_argument("--cpus", type=int, default=1, metavar="N",
                        help="CPUs per task (default 1); the runner starts that many workers")
    parser.add_argument("--partition", "--queue", dest="queue", default=None, metavar="Q", help="partition or queue")
    parser.add_argument("--account", default=None, metavar="A", help="account charged (Grid Engine: the project, -P)")
    parser.add_argument("--pe", default="smp", metavar="NAME",
                        help="Grid Engine: parallel environment granting --cpus slots on one host (default smp)")
    parser.add_argument("--job-name", default=None, metavar="NAME",
                        help="job name and script prefix (default: the configuration's RUN_NAME)")
    parser.add_argument("--log-dir", default=None, metavar="DIR", help="task logs (default OUTDIR/logs)")
    parser.add_argument("--env", action="append", default=None, metavar="ACTIVATE",
                        help="environment set-up of the jobs: an activate script to source, or a shell line "
                             "(repeatable; default: source the activate script of this Python's environment)")
    parser.add_argument("--export", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable set in the jobs (repeatable); variables the configurations "
                             "use are exported with their current values unless given here")
    parser.add_argument("--chdir", default=None, metavar="DIR",
                        help="folder the jobs start in (default: the current folder)")
    parser.add_argument("--merge-config", default=None, metavar="CONFIG2",
                        help="configuration of the serial merge job run after the array")
    parser.add_argument("--merge-time", default=None, metavar="HH:MM:SS", help="wall time of the merge job")
    parser.add_argument("--merge-mem", default=None, metavar="SIZE", help="memory of the merge job")
    parser.add_argument("--merge-cpus", type=int, default=1, metavar="N", help="CPUs of the merge job (default 1)")
    parser.add_argument("--dependency", choices=("afterany", "afterok"), default="afterany",
                        help="start the merge job after every task ended (afterany, default: partial results "
                             "still merge) or only if all succeeded (afterok)")
    parser.add_argument("-o", "--output-dir", default=".", metavar="OUTDIR", help="where the scripts go (default .)")
    parser.add_argument("--submit", action="store_true", help="submit the scripts and print the job ids")
    return parser


#: Margin on the largest recorded job peak and memory of the runner process, for ``--mem-from``.
MEM_MARGIN, MEM_BASE_MB = 1.25, 512


def memory_from_runs(path: str, cpus: int) -> tuple[str, str]:
    """``--mem`` value (``NNNNM``) sized from the job tables under ``path``, and a note saying why.

    Each of the ``cpus`` workers may hold a job of the module run with the
    largest recorded ``peak_memory_mb`` at the same time.

    Raises
    ------
    ConfigError
        If ``path`` holds no run or no job with a recorded peak.
    """
    from .status import StatusError, find_run_dirs, peak_memory

    try:
        table = peak_memory(find_run_dirs(path))
    except StatusError as error:
        raise ConfigError(f"--mem-from {path}: {error}") from None
    if not table or max(e["peak_memory_mb"] for e in table.values()) <= 0:
        raise ConfigError(f"--mem-from {path}: no job with a recorded peak memory")
    name, entry = max(table.items(), key=lambda item: item[1]["peak_memory_mb"])
    megabytes = int(-(-(cpus * entry["peak_memory_mb"] * MEM_MARGIN + MEM_BASE_MB) // 1))
    note = (f"--mem {megabytes}M from {path}: largest job {entry['peak_memory_mb']:.0f} MB ({name} "
            f"{entry['number'] or 'serial'}) x {cpus} CPU(s) x {MEM_MARGIN:g} + {MEM_BASE_MB} MB")
    return f"{megabytes}M", note


def _existing_file(text: str, option: str) -> Path:
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{option} {text}: file not found")
    return path


def settings_from_args(args, environ=None) -> BatchSettings:
    """Checked :class:`BatchSettings` from parsed arguments (paths made absolute)."""
    from ..config import read_ini

    environ = os.environ if environ is None else environ
    config = _existing_file(args.config, "-c")
    numbers_file = _existing_file(args.numbers, "--numbers")
    merge_config = _existing_file(args.merge_config, "--merge-config") if args.merge_config else None
    for value, option in ((args.per_task, "--per-task"), (args.cpus, "--cpus"), (args.merge_cpus, "--merge-cpus")):
        if value < 1:
            raise ConfigError(f"{option} {value}: must be at least 1")
    if args.throttle is not None and args.throttle < 1:
        raise ConfigError(f"--throttle {args.throttle}: must be at least 1")
    if args.scheduler == "sge" and args.dependency == "afterok":
        raise ConfigError("--dependency afterok with --scheduler sge: Grid Engine's -hold_jid starts the merge "
                          "job when the array has ended, whatever its exit status; use afterany (the merge "
                          "reads what succeeded)")
    exports = []
    for item in args.export:
        name, equals, value = item.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"--export {item!r}: give NAME=VALUE")
        exports.append((name, value))
    given = {name for name, _ in exports}
    for name in config_variables([config, merge_config]):
        if name not in given and name in environ:
            exports.append((name, environ[name]))
    job_name = args.job_name
    if job_name is None:
        text, _ = read_ini(config).lookup(["DEFAULT"], "RUN_NAME")
        job_name = re.sub(r"[^A-Za-z0-9_.-]", "", text or "") or "shapepipe"
        if not job_name[0].isalpha():
            job_name = f"sp_{job_name}"
    if not _JOB_NAME.match(job_name):
        raise ConfigError(f"--job-name {job_name!r}: use letters, digits, '_', '.', '-', starting with a letter")
    out_dir = Path(args.output_dir).expanduser().resolve()
    mem = check_memory(args.mem, "--mem")
    if getattr(args, "mem_from", None):
        if mem is not None:
            raise ConfigError("--mem and --mem-from: give one of them")
        mem, note = memory_from_runs(args.mem_from, args.cpus)
        print(note)
    return BatchSettings(
        scheduler=args.scheduler, config=config, numbers_file=numbers_file, out_dir=out_dir,
        log_dir=Path(args.log_dir).expanduser().resolve() if args.log_dir else out_dir / "logs",
        workdir=Path(args.chdir).expanduser().resolve() if args.chdir else Path.cwd(),
        job_name=job_name, per_task=args.per_task, throttle=args.throttle, time=check_time(args.time, "--time"),
        mem=mem, cpus=args.cpus, queue=args.queue, account=args.account,
        activation=activation_lines(args.env), exports=exports, merge_config=merge_config,
        merge_time=check_time(args.merge_time, "--merge-time") if args.merge_time else None,
        merge_mem=check_memory(args.merge_mem, "--merge-mem"), merge_cpus=args.merge_cpus,
        dependency=args.dependency, parallel_environment=args.pe)


def main(argv=None) -> int:
    """Entry point of ``shapepipe_batch``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        settings.command_line = "shapepipe_batch " + " ".join(shlex.quote(a) for a in argv)
        # The configurations are validated with the variables the jobs will see.
        saved = {name: os.environ.get(name) for name, _ in settings.exports}
        os.environ.update(dict(settings.exports))
        try:
            campaign = validate_array(settings)
            if settings.merge_config is not None:
                campaign.notes += validate_merge(settings, campaign)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        if settings.throttle is not None and settings.throttle > campaign.n_tasks:
            campaign.notes.append(f"note: --throttle {settings.throttle} exceeds the {campaign.n_tasks} task(s)")
        scripts = write_scripts(settings, campaign)
    except ConfigError as error:
        print(f"shapepipe_batch: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for note in campaign.notes:
        print(note, file=sys.stderr)
    print(f"{campaign.n_tasks} task(s) over {len(campaign.numbers)} number(s), {settings.per_task} per task")
    print(f"array script: {scripts.array}")
    if scripts.merge is not None:
        print(f"merge script: {scripts.merge}")
    print(f"submit script: {scripts.submit}")
    print(f"task logs: {settings.log_dir}")
    if not args.submit:
        print(f"submit with: bash {scripts.submit}")
        return EXIT_OK
    try:
        array_id, merge_id = submit(settings, scripts)
    except SubmitError as error:
        print(f"shapepipe_batch: {error}", file=sys.stderr)
        return EXIT_SUBMIT
    print(f"array job: {array_id}")
    if merge_id is not None:
        print(f"merge job: {merge_id} ({settings.dependency}:{array_id})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
