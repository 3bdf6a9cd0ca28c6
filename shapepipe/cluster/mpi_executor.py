"""``[EXECUTION] MODE = MPI``: the jobs on the ranks of an MPI job (mpi4py.futures).

Launch line::

    mpirun -np N python -m mpi4py.futures -m shapepipe.cli -c CONFIG

Rank 0 runs ``shapepipe_run``; ranks 1 to N-1 form mpi4py's shared worker
pool and take one job at a time as they become free (dynamic load
balancing). Under ``-m mpi4py.futures`` an exception or a non-zero exit on
any rank calls ``MPI_Abort``, and Open MPI's ``mpirun`` stops every rank when
one of them dies, so a broken rank ends the MPI job instead of hanging it. A
run that ends normally with failed jobs (status 1) finalises MPI and exits
with its status instead (:func:`exit_without_abort`).

Importing mpi4py initialises MPI: it is imported inside the functions only,
which :mod:`shapepipe.cluster.modes` calls only when an MPI launcher started
the process (:func:`mpi_launcher_detected`).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from .executor import Executor
from ..jobs import failure_row

LAUNCH_LINE = "mpirun -np N python -m mpi4py.futures -m shapepipe.cli -c CONFIG"

#: Environment variables set by MPI launchers (Open MPI, MPICH/Hydra, PMIx, MVAPICH, Intel MPI).
MPI_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
                          "MPI_LOCALNRANKS", "I_MPI_HYDRA_HOST_FILE")


def exit_without_abort(status: int) -> None:
    """Let a run that ended with a failure status leave MPI cleanly (rank 0, after the run).

    ``-m mpi4py.futures`` turns any non-zero exit into ``MPI_Abort`` once its
    worker pool is shut down. For a run whose failures are recorded (status
    1) the ranks are healthy, and Open MPI's ``mpirun`` has been seen to hang
    or crash while relaying the abort's help message (CI: "Data unpack would
    read past end of buffer", show_help.c). An exit hook, which runs before
    mpi4py's, finalises MPI and ends the process with ``status``: ``mpirun``
    still exits non-zero. Does nothing unless mpi4py has initialised MPI.
    """
    import atexit

    def leave():
        mpi4py_mpi = sys.modules.get("mpi4py.MPI")
        if mpi4py_mpi is None or not mpi4py_mpi.Is_initialized() or mpi4py_mpi.Is_finalized():
            return
        sys.stdout.flush()
        sys.stderr.flush()
        mpi4py_mpi.Finalize()
        os._exit(status)

    if status:
        atexit.register(leave)


def mpi_launcher_detected(environ=None) -> bool:
    """True when this process was started by an MPI launcher (mpirun, mpiexec, srun --mpi)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in MPI_LAUNCHER_VARIABLES)


def mpi_world_size() -> int:
    """Number of processes in ``MPI.COMM_WORLD`` (imports mpi4py, initialising MPI)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()


def _shared_pool_running() -> bool:
    """True when ``python -m mpi4py.futures`` made the other ranks a worker pool."""
    # mpi4py keeps the pool of ``-m mpi4py.futures`` in a module attribute
    # (``_core`` since mpi4py 4, ``_lib`` before); no public call tells.
    for name in ("mpi4py.futures._core", "mpi4py.futures._lib"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "SharedPool", None) is not None:
            return True
    return False


def launch_problem() -> str | None:
    """Why ``MODE = MPI`` cannot run under this launch, or None.

    Called (under an MPI launcher only) before anything is written: ``mpirun
    -np N shapepipe_run`` without ``-m mpi4py.futures`` would start N
    independent runs of the whole pipeline.
    """
    if _shared_pool_running():
        return None
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        return None  # one process: the jobs run with SMP, as without a launcher
    return (f"MODE = MPI under an MPI launcher with {world.Get_size()} processes but without "
            f"-m mpi4py.futures (rank {world.Get_rank()} would run the whole pipeline); "
            f"launch with: {LAUNCH_LINE}")


class MpiExecutor(Executor):
    """Jobs on the worker ranks of ``python -m mpi4py.futures`` (world size - 1 workers).

    Raises
    ------
    RuntimeError
        When the ranks were not started through ``-m mpi4py.futures`` (each
        rank would otherwise run the whole pipeline on its own).
    """

    name = "mpi"

    def __init__(self):
        from mpi4py import MPI
        from mpi4py.futures import MPIPoolExecutor

        world = MPI.COMM_WORLD
        if world.Get_rank() != 0 or not _shared_pool_running():
            raise RuntimeError(f"MODE = MPI needs the ranks started as a worker pool: {LAUNCH_LINE} "
                               f"(this is rank {world.Get_rank()} of {world.Get_size()} without "
                               "-m mpi4py.futures)")
        self.workers = world.Get_size() - 1
        self.pool = MPIPoolExecutor()

    def describe(self) -> str:
        return f"MPI (mpi4py.futures, {self.workers} worker rank{'s' if self.workers != 1 else ''})"

    def run(self, function, tasks):
        from concurrent.futures import as_completed

        # A worker rank may run on another node, where the runner's process id
        # means nothing; a dead rank 0 ends the whole MPI job anyway.
        futures = {self.pool.submit(function, dataclasses.replace(task, main_pid=0)): task
                   for task in tasks}
        try:
            for future in as_completed(futures):
                task = futures.pop(future)
                try:
                    row = future.result()
                except Exception as error:  # run_task records job errors itself: this is the pool failing
                    message = f"MPI worker could not run the job: {type(error).__name__}: {error}"
                    row = failure_row(task, message.splitlines()[0])
                yield task, row
        finally:
            for future in futures:  # the caller stopped early (interrupt): drop what has not started
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
