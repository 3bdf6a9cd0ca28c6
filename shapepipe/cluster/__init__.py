"""Where the jobs run and how a campaign is followed: the executors, batch scripts and status.

- :mod:`.executor`: the base every executor extends (serial, joblib threads);
- :mod:`.modes`: the executor of ``[EXECUTION] MODE``;
- :mod:`.pool` (SMP worker processes), :mod:`.dask_executor` (Dask, local
  or through dask-jobqueue), :mod:`.mpi_executor` (mpi4py.futures);
- :mod:`.batch`: ``shapepipe_batch``, job-array scripts for SLURM, PBS and Grid Engine;
- :mod:`.status`: ``shapepipe_status``, what a campaign did and what to resubmit.
"""
