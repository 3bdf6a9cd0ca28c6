"""What a module's function receives: one :class:`Job`.

The runner builds a ``Job`` for every file number (parallel modules) or one
for all numbers (serial modules). The module reads ``job.inputs``, writes
every output file into ``job.output_dir`` and returns ``None`` or a small
dict of numbers for the job table. The runner publishes the files of
``job.output_dir`` under their final names only when the function returns
without error, so a failure or a kill never leaves a partial file that looks
complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

from .errors import ExternalCommandError, JobError, JobTimeout

# Process groups of external programs started by jobs of this process, so a
# time-out can stop them too (see shapepipe.jobs).
_CHILD_GROUPS: set[int] = set()

# True: external programs get their own session (jobs running directly in a
# worker). A job supervised for TIMEOUT runs as the leader of its own process
# group, and the runner sets this to False in that process so that external
# programs stay in the job's group and die with it on a time-out.
COMMANDS_IN_OWN_SESSION = True


def kill_child_groups(sig=signal.SIGKILL) -> None:
    """Kill every external program group started by jobs of this process."""
    for pgid in list(_CHILD_GROUPS):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        _CHILD_GROUPS.discard(pgid)


@dataclass
class Job:
    """One unit of work handed to a module function.

    Attributes
    ----------
    module : str
        Canonical module name.
    module_run : str
        Name of this module run (``sextractor`` or ``sextractor_run_2``).
    number : str
        File number string (``-0000000-0``); ``''`` for serial modules.
    inputs : list of Path
        Parallel modules: one path per declared file pattern, in the order of
        ``FILE_PATTERN``. Serial modules: every path of every number, pattern
        by pattern (see ``input_table`` for the grouping).
    input_table : dict
        Serial modules: ``{number: [path per pattern]}``; parallel modules:
        ``{number: inputs}``.
    output_dir : Path
        Staging directory for this job's outputs (created by the runner).
        Sub-folders are allowed and keep their relative paths when published.
    log_dir : Path
        Directory for this job's log and any diagnostic files.
    options : Mapping
        Typed, validated options of the module section (references resolved).
    logger : logging.Logger
        Writes to this job's log file.
    run_dir : Path
        The run directory (``OUTPUT_DIR/RUN_NAME_date``).
    seed : int
        Run seed (``[JOB] SEED``); see :meth:`rng`.
    timeout : float or None
        Time limit of this job in seconds, for external programs; None means
        no limit.
    deadline : float or None
        ``time.monotonic()`` value at which the job's time runs out (set by
        the runner); :meth:`run_command` never waits past it.
    """

    module: str
    module_run: str
    number: str
    inputs: list
    output_dir: Path
    log_dir: Path
    options: Mapping[str, Any]
    logger: logging.Logger
    run_dir: Path
    input_table: dict = field(default_factory=dict)
    seed: int = 0
    timeout: float | None = None
    deadline: float | None = None

    def time_left(self) -> float | None:
        """Seconds left before the job's time limit (None: no limit)."""
        if self.deadline is not None:
            return max(self.deadline - time.monotonic(), 0.0)
        return self.timeout

    def rng(self, *keys) -> np.random.Generator:
        """Random generator seeded from the run seed, the module and the number.

        Extra ``keys`` (e.g. an object id) give independent streams, so a
        result does not depend on how the work is split or scheduled.
        """
        import numpy as np  # here: the runner's command-line path needs no numpy

        text = "\x1f".join(str(k) for k in (self.module, self.number, *keys))
        digest = hashlib.sha256(text.encode()).digest()
        entropy = [self.seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def output_path(self, name: str) -> Path:
        """Path of an output file inside the staging directory.

        Sub-folders are allowed; a name that would leave the staging folder
        (absolute, ``..``, a symbolic link pointing out) raises
        :class:`~shapepipe.errors.JobError`, so every output is published by
        the runner and nothing is written outside the run.
        """
        path = self.output_dir / name
        root = os.path.realpath(self.output_dir)
        target = os.path.realpath(path)
        if os.path.commonpath([root, target]) != root or target == root:
            raise JobError(f"output name {str(name)!r} leaves the job's output folder {self.output_dir}; "
                           "output names must be plain names (sub-folders allowed)")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def run_command(
        self,
        args: Sequence[str],
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run an external program (no shell) and log its output.

        The program runs in its own process group, so a job time-out stops it
        and everything it started.

        Raises
        ------
        ExternalCommandError
            If ``check`` and the program exits with a non-zero status.
        JobTimeout
            If the job's time limit runs out while the program runs.
        """
        args = [str(a) for a in args]
        self.logger.info("running: %s", " ".join(args))
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=COMMANDS_IN_OWN_SESSION,
        )
        if COMMANDS_IN_OWN_SESSION:
            _CHILD_GROUPS.add(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=self.time_left())
        except subprocess.TimeoutExpired:
            if COMMANDS_IN_OWN_SESSION:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.communicate()
            raise JobTimeout(f"{args[0]} still running when the job's time limit ran out") from None
        finally:
            _CHILD_GROUPS.discard(process.pid)
        if stdout.strip():
            self.logger.info("%s stdout:\n%s", args[0], stdout.rstrip())
        if stderr.strip():
            self.logger.info("%s stderr:\n%s", args[0], stderr.rstrip())
        if check and process.returncode != 0:
            tail = "\n".join(stderr.strip().splitlines()[-10:])
            raise ExternalCommandError(args, process.returncode, tail)
        return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
