"""Which file numbers one ``shapepipe_run`` processes, and with how many workers.

On a cluster the batch system is the scheduler: each array task runs
``shapepipe_run`` on a slice of a number list. This module turns the command
line (``-e``, ``--numbers``, ``--array-index``, ``--per-task``) and the
batch system's environment into a :class:`Selection`, and reads the CPU count
of the allocation so that a task never starts more workers than it was given.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

#: Environment variables holding the array index, in the order they are tried.
ARRAY_INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "PBS_ARRAYID", "SGE_TASK_ID")
#: Variables whose tasks are numbered from 1 (Grid Engine's ``-t 1-N``): the index is the value minus 1.
ONE_BASED_INDEX_VARIABLES = ("SGE_TASK_ID",)
#: Environment variables holding the CPU count of the allocation.
ALLOCATION_CPU_VARIABLES = ("SLURM_CPUS_PER_TASK", "PBS_NCPUS", "NCPUS", "NSLOTS")


@dataclass
class Selection:
    """The file numbers chosen on the command line.

    Attributes
    ----------
    numbers : list of str
        File numbers to process, in the given order.
    label : str
        Short name of the selection, appended to the run folder name of an
        array task so that concurrent tasks never share a run folder.
    source : str
        Where the numbers came from (for messages and the run record).
    array_index : int or None
        The array index that chose the slice, if any.
    """

    numbers: list
    label: str = ""
    source: str = ""
    array_index: int | None = None
    extra: dict = field(default_factory=dict)

    def as_record(self) -> dict:
        """The selection as stored in a run record."""
        return {"numbers": list(self.numbers), "label": self.label, "source": self.source,
                "array_index": self.array_index}

    @classmethod
    def from_record(cls, entry: dict | None) -> "Selection | None":
        """Inverse of :meth:`as_record` (None for a run without selection)."""
        if not entry:
            return None
        return cls(numbers=list(entry.get("numbers", [])), label=entry.get("label", ""),
                   source=entry.get("source", ""), array_index=entry.get("array_index"))


def read_numbers_argument(text: str) -> tuple[list[str], str]:
    """Numbers from ``--numbers``: a file with one number per line, or a comma list.

    Returns the numbers and a description of their source. Lines starting
    with ``#`` and blank lines of a file are ignored.
    """
    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--numbers {text}: cannot read the file: {error}") from None
        numbers = [line.split("#", 1)[0].strip() for line in lines]
        return [n for n in numbers if n], f"file {path.resolve()}"
    if os.sep in text or text.endswith(".txt"):
        raise ConfigError(f"--numbers {text}: number list file not found")
    numbers = [item.strip() for item in text.split(",") if item.strip()]
    if not numbers:
        raise ConfigError("--numbers: no number given")
    return numbers, "command line"


def array_index_from_environment(environ=None) -> int | None:
    """The array index set by SLURM, PBS or Grid Engine (from 0), or None outside an array job."""
    environ = os.environ if environ is None else environ
    for name in ARRAY_INDEX_VARIABLES:
        value = environ.get(name, "").strip()
        if value and value != "undefined":  # Grid Engine's SGE_TASK_ID in a job that is no array
            try:
                return int(value) - (1 if name in ONE_BASED_INDEX_VARIABLES else 0)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not an array index") from None
    return None


def _hash_label(numbers: list[str]) -> str:
    digest = hashlib.sha1("\n".join(numbers).encode()).hexdigest()[:8]
    return f"n{digest}"


def make_selection(exclusive: str | None = None, numbers: str | None = None,
                   array_index: int | str | None = None, per_task: int = 1,
                   config_numbers: list[str] | None = None, environ=None) -> Selection | None:
    """The selection of a command line, or None when every number is processed.

    Parameters
    ----------
    exclusive : str, optional
        ``-e NUMBER``: that number only.
    numbers : str, optional
        ``--numbers``: a comma list or a file of numbers.
    array_index : int or str, optional
        ``--array-index``: an index, or ``"env"`` to read it from the batch
        system's environment. Selects ``numbers[K*per_task:(K+1)*per_task]``.
    per_task : int
        Numbers per array task.
    config_numbers : list of str, optional
        ``[FILE] NUMBER_LIST`` of the configuration, sliced by the array index
        when ``--numbers`` is absent.

    Raises
    ------
    ConfigError
        Conflicting options, an empty slice or a missing index.
    """
    if exclusive is not None and (numbers is not None or array_index is not None):
        raise ConfigError("-e/--exclusive cannot be combined with --numbers or --array-index")
    if per_task < 1:
        raise ConfigError(f"--per-task {per_task}: must be at least 1")
    if exclusive is not None:
        return Selection(numbers=[exclusive], label="", source="-e")
    listed, source = (read_numbers_argument(numbers) if numbers is not None else (None, ""))
    if array_index is None:
        if listed is None:
            return None
        return Selection(numbers=listed, label=_hash_label(listed), source=source)
    if array_index == "env":
        index = array_index_from_environment(environ)
        if index is None:
            raise ConfigError("--array-index without a value needs one of the environment variables "
                              + ", ".join(ARRAY_INDEX_VARIABLES) + " (not inside an array job?)")
    else:
        try:
            index = int(array_index)
        except ValueError:
            raise ConfigError(f"--array-index {array_index!r}: not an integer") from None
    if listed is None:
        if not config_numbers:
            raise ConfigError("--array-index needs a number list: give --numbers FILE or set [FILE] NUMBER_LIST")
        listed, source = list(config_numbers), "[FILE] NUMBER_LIST"
    start = index * per_task
    if index < 0 or start >= len(listed):
        raise ConfigError(f"--array-index {index} with --per-task {per_task} selects nothing: the number list "
                          f"({source}) has {len(listed)} number(s), so indices run from 0 to "
                          f"{max((len(listed) - 1) // per_task, 0)}")
    chosen = listed[start:start + per_task]
    return Selection(numbers=chosen, label=f"task{index}", source=f"{source}, index {index}",
                     array_index=index)


def allocation_cpus(environ=None) -> tuple[int | None, str]:
    """CPU count granted by the batch system, and the variable that gave it.

    Returns ``(None, "")`` outside an allocation. Values such as SLURM's
    ``2(x3)`` are read up to the first non-digit.
    """
    environ = os.environ if environ is None else environ
    for name in ALLOCATION_CPU_VARIABLES:
        value = environ.get(name, "").strip()
        digits = ""
        for character in value:
            if not character.isdigit():
                break
            digits += character
        if digits and int(digits) > 0:
            return int(digits), name
    return None, ""


def worker_count(configured: int | None, environ=None) -> tuple[int, str]:
    """Number of workers for ``[JOB] SMP_BATCH_SIZE`` under the current allocation.

    Unset: the allocation's CPU count, else 1. Set above the allocation: capped
    to it, since more workers than granted CPUs only slow every job down.
    Returns the count and a note for the log (empty when nothing changed).
    """
    cpus, variable = allocation_cpus(environ)
    if configured is None:
        if cpus is None:
            return 1, ""
        return cpus, f"[JOB] SMP_BATCH_SIZE unset: {cpus} worker(s) from {variable}"
    if cpus is not None and configured > cpus:
        return cpus, (f"[JOB] SMP_BATCH_SIZE = {configured} capped to the {cpus} CPU(s) of the allocation "
                      f"({variable})")
    return configured, ""
