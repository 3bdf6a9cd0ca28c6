"""Executors: where the jobs of a module run execute.

The runner hands every job of a module run to one executor and reads back
one row of the job table per job, in completion order. Executors never decide
what to run (the runner and the batch system do); they only run it.

- :class:`SerialExecutor`: in the runner's process (one worker).
- :class:`shapepipe.pool.PoolExecutor`: ``[EXECUTION] MODE = SMP`` (backends
  loky and multiprocessing): supervised worker processes; a dead worker costs
  its job only, workers never outlive the runner.
- :class:`JoblibExecutor`: ``MODE = SMP`` with ``SMP_BACKEND = threading``.
- ``MODE = DASK``: :class:`shapepipe.executor_dask.DaskExecutor`.
- ``MODE = MPI``: :class:`shapepipe.executor_mpi.MpiExecutor`, only under an
  MPI launcher; mpi4py is never imported otherwise.

A job that the executor itself loses (a worker process killed, a node gone)
comes back as a ``failed`` row naming the cause, never as a hung run or an
exception that would lose the other jobs' results.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Callable, Iterable, Iterator

from .jobs import Task, failure_row

#: Environment variables set by MPI launchers (Open MPI, MPICH/Hydra, PMIx, MVAPICH, Intel MPI).
MPI_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
                          "MPI_LOCALNRANKS", "I_MPI_HYDRA_HOST_FILE")


def mpi_launcher_detected(environ=None) -> bool:
    """True when this process was started by an MPI launcher (mpirun, mpiexec, srun --mpi)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in MPI_LAUNCHER_VARIABLES)


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


def make_executor(mode: str, workers: int, backend: str, dask_options: dict | None = None,
                  notes: list | None = None, retries: int = 1, on_event=None) -> Executor:
    """The executor of ``[EXECUTION] MODE``.

    Parameters
    ----------
    mode : str
        ``SMP``, ``DASK`` or ``MPI``.
    workers : int
        Workers of the SMP executor (from ``[JOB] SMP_BATCH_SIZE`` and the allocation).
    backend : str
        joblib backend of the SMP executor.
    dask_options : dict, optional
        The parsed ``[DASK]`` section.
    notes : list, optional
        Receives a line for the log when the mode falls back.
    retries : int
        SMP process workers: times a job is run again after its worker died.
    on_event : callable, optional
        SMP process workers: receives a line per worker death, for the log.
    """
    mode = (mode or "SMP").upper()
    if mode == "DASK":
        from .executor_dask import DaskExecutor

        return DaskExecutor(dask_options or {})
    if mode == "MPI":
        if mpi_launcher_detected():
            from .executor_mpi import MpiExecutor, mpi_world_size

            if mpi_world_size() > 1:
                return MpiExecutor()
            if notes is not None:
                notes.append("MODE = MPI with a single MPI process: jobs run with SMP on this process "
                             "(launch with mpirun -np N python -m mpi4py.futures -m shapepipe.cli ...)")
        elif notes is not None:
            notes.append("MODE = MPI but no MPI launcher started this process: jobs run with SMP "
                         "(launch with mpirun -np N python -m mpi4py.futures -m shapepipe.cli -c CONFIG)")
    if backend == "threading":
        return JoblibExecutor(workers, backend)
    from .pool import PoolExecutor

    return PoolExecutor(workers, retries=retries, on_event=on_event)


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
