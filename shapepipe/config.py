"""Reading ``.ini`` configurations and the core option declarations.

The core sections (``[DEFAULT]``, ``[EXECUTION]``, ``[FILE]``, ``[JOB]``,
``[DASK]``, ``[WORKER]``) and the generic keys of module sections are declared here as
:class:`~shapepipe.options.Option` objects, so validation, ``--describe``
and ``docs/config_reference.md`` all come from one place.

Values are read with :mod:`configparser` without ``%`` interpolation;
``$VAR`` and ``${VAR}`` are replaced by environment variables in every value
(an unset variable is an error). ``[DEFAULT]`` keys act as defaults for
every section, as in configparser.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .options import Option, option_table

IGNORED = " Accepted for ShapePipe compatibility and ignored (a note is logged)."

CORE_OPTIONS: dict[str, tuple[Option, ...]] = {
    "DEFAULT": (
        Option("VERBOSE", "bool", True, "Print progress and messages on the terminal."),
        Option("RUN_NAME", "name", "shapepipe_run", "Name of the run; the run folder is OUTPUT_DIR/RUN_NAME[_date_time]."),
        Option("RUN_DATETIME", "bool", True, "Append _YYYY-MM-DD_HH-MM-SS to the run folder name."),
    ),
    "EXECUTION": (
        Option("MODULE", "list", help="Modules to run, in order; a module may appear several times "
               "(its runs are then NAME_run_1, NAME_run_2, ...). ShapePipe's *_runner names are accepted."),
        Option("MODE", "choice", "SMP", "Where the jobs run. SMP: on this machine with joblib ([JOB]). "
               "DASK: on a Dask cluster ([DASK]: an existing scheduler, a local cluster or SLURM/PBS "
               "workers through dask-jobqueue). MPI: mpi4py's futures executor, only under an MPI "
               "launcher (mpirun -np N python -m mpi4py.futures -m shapepipe.cli -c CONFIG); "
               "without one the jobs run as SMP (a note is logged).", choices=("SMP", "DASK", "MPI")),
        Option("MODULE_DIR", "dir_list", [], "Extra folders of user modules (Python files or packages "
               "with a runner.py)."),
    ),
    "FILE": (
        Option("INPUT_DIR", "dir_list", [], "Input folders of modules that do not take their inputs "
               "from an earlier module of this run; accepts last:MODULE, all:MODULE and run:RUN_NAME:MODULE."),
        Option("OUTPUT_DIR", "path", help="Folder holding the run folders and the run log; created if absent."),
        Option("FILE_PATTERN", "name_list", None, "File name patterns (before the number) for every module; "
               "overrides the module declarations."),
        Option("FILE_EXT", "name_list", None, "File extensions, one per pattern or one for all ('.fits', "
               "'fits', '.fitsfz' = '.fits.fz')."),
        Option("NUMBERING_SCHEME", "str", None, "Numbering template (-0000000-0, _0, RE:regex) for every module."),
        Option("NUMBER_LIST", "list", None, "Numbers to process (inline list or a file with one per line)."),
        Option("LOG_NAME", "name", "shapepipe", "Name of the main log file in the run folder (.log added)."),
        Option("RUN_LOG_NAME", "name", "shapepipe_runs", "Human-readable list of runs in OUTPUT_DIR (.txt "
               "added); never used to resolve references (the run records are)."),
        Option("CORRECT_FILE_PATTERN", "bool", True, "When no file name starts with a pattern, accept "
               "names that contain it before the number."),
    ),
    "JOB": (
        Option("SMP_BATCH_SIZE", "int", None, "Number of jobs run at the same time (MODE = SMP). Unset: "
               "the CPU count of the batch allocation (SLURM_CPUS_PER_TASK, PBS_NCPUS, NCPUS, NSLOTS), "
               "else 1; a value above the allocation is capped to it."),
        Option("SMP_BACKEND", "choice", "loky", "joblib backend of the workers.",
               choices=("loky", "multiprocessing", "threading")),
        Option("TIMEOUT", "duration", None, "Time limit of each job (HH:MM:SS or seconds); absent means "
               "no limit. A job past it is killed with every program it started."),
        Option("RETRIES", "int", 1, "Times a job is run again after its worker process died (killed, out "
               "of memory, a crash in compiled code) before it fails with 'worker died (signal N)'; job errors "
               "are never retried. MODE = SMP with process workers."),
        Option("MAX_UNPROCESSABLE_FRACTION", "float", 1.0, "Largest fraction of the jobs of a module run "
               "that may end 'unprocessable' (the data cannot give the product: too few stars, no object, "
               "fully masked) with the run still a success; above it the module run fails (exit status 1)."),
        Option("SEED", "int", 0, "Run seed; each job derives its random streams from it, the module "
               "and the file number."),
    ),
    "DASK": (
        Option("SCHEDULER_ADDRESS", "str", None, "Address of a running Dask scheduler "
               "(tcp://host:8786); when set, no cluster is started."),
        Option("CLUSTER", "choice", "local", "Cluster started when no scheduler address is given: local "
               "(worker processes on this machine), slurm or pbs (batch jobs through dask-jobqueue).",
               choices=("local", "slurm", "pbs")),
        Option("N_WORKERS", "int", 2, "Worker processes of a local cluster."),
        Option("N_JOBS", "int", 1, "Batch jobs of a slurm or pbs cluster."),
        Option("CORES", "int", 1, "Cores per batch job (slurm, pbs)."),
        Option("PROCESSES", "int", 1, "Worker processes per batch job (slurm, pbs)."),
        Option("MEMORY", "str", "4GB", "Memory per batch job (slurm, pbs), e.g. 8GB."),
        Option("WALLTIME", "str", "01:00:00", "Wall time per batch job (slurm, pbs)."),
        Option("QUEUE", "str", None, "Partition (slurm) or queue (pbs) of the batch jobs."),
        Option("ACCOUNT", "str", None, "Account charged for the batch jobs."),
        Option("JOB_EXTRA_DIRECTIVES", "list", None, "Extra #SBATCH / #PBS directives of the batch jobs."),
        Option("JOB_SCRIPT_PROLOGUE", "list", None, "Shell lines run before each batch worker starts "
               "(e.g. activating the environment)."),
        Option("THREADS_PER_WORKER", "int", 1, "Threads per worker process (jobs running at once per worker)."),
        Option("ALLOWED_FAILURES", "int", 0, "Times a job is retried after its worker died before it fails; "
               "0 fails it at once (a job that kills its worker cannot take other workers down)."),
        Option("WORKER_WAIT", "duration", 600.0, "Longest wait for a first worker, or with every worker gone, "
               "before the remaining jobs fail."),
    ),
    "WORKER": (
        Option("PROCESS_PRINT_LIMIT", "int", 200, "ShapePipe's limit on printed output lines." + IGNORED),
    ),
}

# Keys every module section accepts (ShapePipe's module properties). None
# means "not set here": the [FILE] value or the module declaration applies.
MODULE_SECTION_OPTIONS: tuple[Option, ...] = (
    Option("INPUT_DIR", "dir_list", None, "Input folders of this module run (replaces the inputs from "
           "INPUT_MODULE and [FILE] INPUT_DIR); accepts run references."),
    Option("ADD_INPUT_DIR", "dir_list", None, "Folders searched in addition to the other inputs."),
    Option("INPUT_MODULE", "list", None, "Modules (or module runs, NAME_RUN_N) whose outputs are the "
           "inputs; those not run earlier in this run are taken from their last successful run "
           "(ShapePipe's last:NAME form means the same)."),
    Option("ADD_INPUT_MODULE", "list", None, "Input modules added to the declared ones."),
    Option("FILE_PATTERN", "name_list", None, "File name patterns of the inputs."),
    Option("ADD_FILE_PATTERN", "name_list", None, "Patterns added to the declared ones."),
    Option("FILE_EXT", "name_list", None, "Extensions of the inputs, one per pattern or one for all."),
    Option("ADD_FILE_EXT", "name_list", None, "Extensions of the added patterns."),
    Option("NUMBERING_SCHEME", "str", None, "Numbering template of the inputs."),
    Option("NUMBER_LIST", "list", None, "Numbers processed by this module run (inline or a file)."),
    Option("RUN_METHOD", "choice", None, "Override the declared run method.", choices=("parallel", "serial")),
    Option("KEEP", "bool", None, "Keep this module run's outputs (default True). False: scratch products, "
           "deleted once the whole run has succeeded (every module run done; the job table and logs stay, "
           "run.json records the bytes freed), so that a campaign keeps only what it needs. Later runs "
           "cannot resolve them with last:/all:/run: references."),
    Option("DEPENDS", "list", None, "Python packages checked before the run (added to the declared ones)."),
    Option("ADD_DEPENDS", "list", None, "Same as DEPENDS."),
    Option("EXECUTES", "list", None, "Executables checked before the run (added to the declared ones)."),
    Option("ADD_EXECUTES", "list", None, "Same as EXECUTES."),
)
MODULE_SECTION_TABLE = option_table(MODULE_SECTION_OPTIONS)
CORE_SECTIONS = tuple(CORE_OPTIONS)

_VAR = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def expand_vars(text: str, environ=None) -> str:
    """Replace ``$VAR`` and ``${VAR}`` by environment values.

    Raises
    ------
    KeyError
        Naming the first unset variable.
    """
    environ = os.environ if environ is None else environ

    def replace(match):
        name = match.group("braced") if match.group("braced") is not None else match.group("plain")
        if name not in environ:
            raise KeyError(name)
        return environ[name]

    return _VAR.sub(replace, text)


_NO_DEFAULT_SECTION = "\x00no-default-section"


@dataclass
class IniFile:
    """A parsed ``.ini`` file: sections and keys as written, upper-cased.

    ``[DEFAULT]`` is kept as an ordinary section; :meth:`lookup` applies it.
    """

    path: Path
    sections: dict = field(default_factory=dict)  # {SECTION: {KEY: raw text}}
    spelling: dict = field(default_factory=dict)  # {SECTION: name as written}

    def lookup(self, chain, key, use_default=True):
        """Raw text of ``key`` from the first section of ``chain`` that sets it.

        Returns ``(text, section)`` or ``(None, None)``.
        """
        chain = list(chain) + (["DEFAULT"] if use_default else [])
        for section in chain:
            values = self.sections.get(section)
            if values is not None and key in values:
                return values[key], section
        return None, None

    def where(self, section, key=None) -> str:
        """``file: [SECTION] KEY`` for messages."""
        name = self.spelling.get(section, section)
        return f"{self.path.name}: [{name}]" + (f" {key}" if key else "")


def read_ini(path: str | Path) -> IniFile:
    """Parse a configuration file.

    Raises
    ------
    ConfigError
        If the file is missing or not valid ``.ini`` syntax (duplicate
        sections or keys included).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    parser = configparser.ConfigParser(
        interpolation=None, default_section=_NO_DEFAULT_SECTION, strict=True,
        inline_comment_prefixes=None,
    )
    parser.optionxform = str.upper
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except configparser.Error as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"{path.name}: cannot parse the file: {message}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path.name}: not a text file ({error})") from None
    ini = IniFile(path=path)
    for name in parser.sections():
        upper = name.strip().upper()
        if upper in ini.sections:
            raise ConfigError(
                f"{path.name}: sections [{ini.spelling[upper]}] and [{name}] are the same section "
                "(names are case-insensitive)"
            )
        ini.spelling[upper] = name
        ini.sections[upper] = {key: value for key, value in parser.items(name, raw=True)}
    return ini


def parse_value(option: Option, text: str, where: str, problems: list):
    """Expand variables and parse one value; append a problem on failure."""
    try:
        expanded = expand_vars(text)
    except KeyError as error:
        problems.append(f"{where}: environment variable ${error.args[0]} is not set")
        return None
    try:
        return option.parse(expanded)
    except ValueError as error:
        problems.append(f"{where}: {error}")
        return None
