"""Exception hierarchy of the pipeline.

Every exception raised on purpose derives from :class:`ShapePipeError` and
from the built-in type that best describes it, so callers can catch either.

Which one to raise:

- :class:`ConfigError`: the configuration is wrong (unknown key, bad type,
  missing value, unresolvable reference). Raised before any job starts and
  carries every problem found, each naming file, section and key.
- :class:`DependencyError`: a Python package or executable that the
  configured modules need is missing.
- :class:`ReferenceError_`: a ``last:``/``all:``/``run:`` reference matches
  no successful module run.
- :class:`JobError`: a job cannot process its data (bad input file, too few
  stars, ...). The message should name the file concerned. The job fails,
  the run continues.
- :class:`JobTimeout`: a job ran past the ``[JOB] TIMEOUT`` limit.
"""

from __future__ import annotations


class ShapePipeError(Exception):
    """Base class of every error raised by the pipeline on purpose."""


class ConfigError(ShapePipeError, ValueError):
    """The configuration is invalid.

    Parameters
    ----------
    problems : list of str or str
        One line per problem, each naming file, section and key.
    """

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self):
        if len(self.problems) == 1:
            return f"configuration error: {self.problems[0]}"
        lines = [f"{len(self.problems)} configuration errors:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class OptionError(ShapePipeError, ValueError):
    """A single option value cannot be parsed (wrapped into ConfigError)."""


class DependencyError(ShapePipeError, ImportError):
    """Python packages or executables needed by the configured modules are missing."""


class ReferenceError_(ShapePipeError, LookupError):
    """A ``last:``/``all:``/``run:`` reference cannot be resolved."""


class JobError(ShapePipeError, RuntimeError):
    """A job cannot process its input; the message names the file concerned."""


class JobTimeout(ShapePipeError, TimeoutError):
    """A job ran past its time limit."""


class ExternalCommandError(JobError):
    """An external program exited with a non-zero status."""

    def __init__(self, args, returncode, stderr_tail=""):
        self.command = list(args)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        message = f"command {self.command!r} exited with status {returncode}"
        if stderr_tail:
            message += f"; last lines of its error output:\n{stderr_tail}"
        super().__init__(message)


class JobUnprocessable(JobError):
    """The data cannot give this product (too few stars, no object, fully masked).

    Not an error of the pipeline: the job ends ``unprocessable``, its
    downstream jobs are skipped with this reason, and the run still succeeds
    unless ``[JOB] MAX_UNPROCESSABLE_FRACTION`` is exceeded.
    """


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT reached the runner: stop cleanly (never caught as a job error)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
