"""Executors: where the jobs of a module run execute (the base every back end extends).

The runner hands every job of a module run to one executor and reads back
one row of the job table per job, in completion order. Executors never decide
what to run (the runner and the batch system do); they only run it.

- :class:`SerialExecutor`: in the runner's process (one worker).
- :class:`JoblibExecutor`: ``MODE = SMP`` with ``SMP_BACKEND = threading``.
- :class:`shapepipe.cluster.pool.PoolExecutor`: ``[EXECUTION] MODE = SMP``
  (backends loky and multiprocessing): supervised worker processes; a dead
  worker costs its job only, workers never outlive the runner.
- ``MODE = DASK``: :class:`shapepipe.cluster.dask_executor.DaskExecutor`.
- ``MODE = MPI``: :class:`shapepipe.cluster.mpi_executor.MpiExecutor`.

:func:`shapepipe.cluster.modes.make_executor` chooses among them; this module
imports none of the back ends, which all import it.

A job that the executor itself loses (a worker process killed, a node gone)
comes back as a ``failed`` row naming the cause, never as a hung run or an
exception that would lose the other jobs' results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Iterator

from ..jobs import Task, failure_row


def task_key(task: Task) -> tuple[str, str]:
    """Identity of a job within a run: (module run, number)."""
    return task.module_run, task.number


class Executor(ABC):
    """Base class: run tasks, yield ``(task, row)`` pairs as jobs finish."""

    name = "executor"
    workers = 1

    @abstractmethod
    def run(self, function: Callable[[Task], dict], tasks: list[Task]) -> Iterator[tuple[Task, dict]]:
        """Run ``function(task)`` for every task; yield each task with its row as it finishes."""

    def describe(self) -> str:
        """One line for the run log."""
        return f"{self.name}, {self.workers} worker(s)"

    def close(self) -> None:
        """Release workers and clusters (called once at the end of a run)."""


class SerialExecutor(Executor):
    """Every job in the runner's own process, one after the other."""

    name = "serial"

    def run(self, function, tasks):
        for task in tasks:
            try:
                row = function(task)
            except Exception as error:  # run_task records job errors itself; this is the runner failing
                row = failure_row(task, f"job could not run: {type(error).__name__}: {error}")
            yield task, row


class JoblibExecutor(Executor):
    """``MODE = SMP``: joblib workers on this machine (loky, multiprocessing or threading)."""

    name = "joblib"

    def __init__(self, workers: int, backend: str = "loky"):
        self.workers = max(int(workers), 1)
        self.backend = backend

    def describe(self) -> str:
        return f"SMP (joblib {self.backend}), {self.workers} worker(s)"

    def run(self, function, tasks):
        if self.workers == 1 or len(tasks) == 1:
            yield from SerialExecutor().run(function, tasks)
            return
        from joblib import Parallel, delayed

        pending = {task_key(task): task for task in tasks}
        results = Parallel(n_jobs=min(self.workers, len(tasks)), backend=self.backend,
                           return_as="generator_unordered")(delayed(function)(task) for task in tasks)
        try:
            for row in results:
                task = pending.pop((row["module_run"], row["number"]), None)
                if task is not None:
                    yield task, row
        except Exception as error:
            # A worker died (killed, out of memory): joblib stops the whole batch.
            # The jobs without a result fail with the cause; finished ones are kept.
            message = f"worker lost: {type(error).__name__}: {error}".splitlines()[0]
            for task in list(pending.values()):
                yield task, failure_row(task, message)
            pending.clear()


def run_all(executor: Executor, function, tasks: Iterable[Task]) -> Iterator[tuple[Task, dict]]:
    """Run tasks on an executor, turning an executor failure into failed rows."""
    tasks = list(tasks)
    done = set()
    try:
        for task, row in executor.run(function, tasks):
            done.add(task_key(task))
            yield task, row
    except Exception as error:
        message = f"executor {executor.name} failed: {type(error).__name__}: {error}".splitlines()[0]
        for task in tasks:
            if task_key(task) not in done:
                yield task, failure_row(task, message)
