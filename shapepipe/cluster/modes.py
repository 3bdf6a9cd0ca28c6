"""The executor of ``[EXECUTION] MODE``: the one place that knows every back end.

The back ends (:mod:`.pool`, :mod:`.dask_executor`, :mod:`.mpi_executor`)
extend :class:`.executor.Executor`. Dask is imported only when ``MODE = DASK``
is chosen, and mpi4py (which initialises MPI on import) only under an MPI
launcher: :mod:`.mpi_executor` imports it inside its functions.
"""

from __future__ import annotations

from .executor import Executor, JoblibExecutor
from .mpi_executor import MpiExecutor, mpi_launcher_detected, mpi_world_size


def make_executor(mode: str, workers: int, backend: str, dask_options: dict | None = None,
                  notes: list | None = None, retries: int = 1, on_event=None, preload=()) -> Executor:
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
    preload : sequence of str, optional
        SMP process workers: the run's module ``preload`` entries, run once by
        the workers' fork server.
    """
    mode = (mode or "SMP").upper()
    if mode == "DASK":
        from .dask_executor import DaskExecutor

        return DaskExecutor(dask_options or {})
    if mode == "MPI":
        if mpi_launcher_detected():
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

    return PoolExecutor(workers, retries=retries, on_event=on_event, preload=preload)
