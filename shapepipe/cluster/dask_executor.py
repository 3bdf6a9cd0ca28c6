"""``[EXECUTION] MODE = DASK``: the jobs of a module run on a Dask cluster.

The cluster is either an existing scheduler (``[DASK] SCHEDULER_ADDRESS``,
never closed by us) or one started for the run and closed at its end:

- ``CLUSTER = local``: :class:`distributed.LocalCluster`, ``N_WORKERS``
  worker processes on this machine;
- ``CLUSTER = slurm`` / ``pbs``: batch jobs through :mod:`dask_jobqueue`
  (``N_JOBS`` jobs of ``CORES`` cores, ``PROCESSES`` workers, ``MEMORY``,
  ``WALLTIME``, ``QUEUE``, ``ACCOUNT``...).

Every job is one Dask task running :func:`shapepipe.jobs.run_task`, so its
log, status file, staging and ``[JOB] TIMEOUT`` (a forked child in its own
process group) are exactly those of an SMP run. What Dask adds is handled
here, so that a run always ends with one row per job:

- a worker that dies while running a job (killed, out of memory, node lost)
  fails that job with ``worker lost: ...``; the scheduler's allowed failures
  are ``[DASK] ALLOWED_FAILURES`` (0 by default: no retry, so a job that
  kills its worker cannot take others down). Each job leaves a marker file
  (started, then its row): a job only queued on the dead worker is submitted
  again, and a job that had finished keeps its row and is not run twice;
- with no worker for ``[DASK] WORKER_WAIT`` seconds (none ever joined, or all
  died and none came back) the remaining jobs fail with
  ``no Dask worker for N s: ...``;
- a lost scheduler connection or a cancelled task fails the job with the cause.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from ..atomic import write_text_atomic
from .executor import Executor
from ..jobs import Task, failure_row, read_status

#: Folder of a module run's ``logs`` holding the job markers of the running
#: submissions (see :func:`_run_on_worker`); emptied and removed after.
MARKER_FOLDER = ".dask_jobs"
STARTED = "started"

#: Times a job queued on a worker that died (without starting) is submitted again.
MAX_RESUBMISSIONS = 3

#: Seconds between two checks of the workers while no job finishes.
POLL_SECONDS = 1.0

#: Jobs a worker thread holds at once: only the one it runs, so that a worker
#: dying takes no queued job with it (the scheduler keeps the queue).
WORKER_SATURATION = 1.0


def dask_defaults() -> dict:
    """The declared defaults of the ``[DASK]`` section."""
    from ..config import CORE_OPTIONS

    return {option.name: option.default for option in CORE_OPTIONS["DASK"]}


def missing_packages(options: dict) -> list[str]:
    """Packages that ``MODE = DASK`` with these ``[DASK]`` options needs and cannot import.

    Checked when the configuration is read, so that a run never starts
    without them.
    """
    import importlib.util

    options = {**dask_defaults(), **(options or {})}
    needed = [("distributed", "dask distributed")]
    kind = (options.get("CLUSTER") or "local").lower()
    if not options.get("SCHEDULER_ADDRESS") and kind in ("slurm", "pbs"):
        needed.append(("dask_jobqueue", "dask-jobqueue"))
    missing = []
    for name, install in needed:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            why = "[EXECUTION] MODE = DASK" + (f" with [DASK] CLUSTER = {kind}" if name == "dask_jobqueue" else "")
            missing.append(f"{why}: Python package {name} is not installed (install it with: pip install "
                           f"{install}, or pip install 'shapepipe[dask]')")
    return missing


def jobqueue_cluster_kwargs(options: dict) -> dict:
    """Keyword arguments of the dask-jobqueue cluster of a ``[DASK]`` section.

    Parameters
    ----------
    options : dict
        The parsed ``[DASK]`` section (missing keys take their defaults).

    Returns
    -------
    dict
        Arguments of :class:`dask_jobqueue.SLURMCluster` / ``PBSCluster``.
    """
    options = {**dask_defaults(), **options}
    kwargs = dict(
        cores=int(options["CORES"]),
        processes=int(options["PROCESSES"]),
        memory=str(options["MEMORY"]),
        walltime=str(options["WALLTIME"]),
        job_extra_directives=list(options["JOB_EXTRA_DIRECTIVES"] or []),
        job_script_prologue=list(options["JOB_SCRIPT_PROLOGUE"] or []),
        python=sys.executable,  # the workers run the runner's environment
        # No dashboard; the scheduler's HTTP server on a free port (no clash between runs).
        scheduler_options={"dashboard": False, "dashboard_address": ":0"},
    )
    if options.get("QUEUE"):
        kwargs["queue"] = str(options["QUEUE"])
    if options.get("ACCOUNT"):
        kwargs["account"] = str(options["ACCOUNT"])
    return kwargs


def make_jobqueue_cluster(kind: str, options: dict):
    """A dask-jobqueue cluster object (no batch job is submitted until it is scaled)."""
    import dask_jobqueue

    classes = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}
    return classes[kind](**jobqueue_cluster_kwargs(options))


def job_marker(task: Task, token: str) -> Path:
    """File of one Dask submission of a job: ``started`` while it runs, then its row."""
    return Path(task.log_dir) / MARKER_FOLDER / f"{task.label}.{token}.json"


def read_marker(task: Task, token: str) -> dict | str | None:
    """The row of a finished submission, ``"started"``, or None if it never started."""
    marker = job_marker(task, token)
    try:
        text = marker.read_text()
    except OSError:
        return None
    if text == STARTED:
        # The worker may have gone between the job's status file and the
        # marker's row: a status file written after the marker is this run's.
        with contextlib.suppress(OSError):
            if task.status_path.stat().st_mtime_ns >= marker.stat().st_mtime_ns:
                row = read_status(task.status_path)
                if isinstance(row, dict):
                    return row
        return STARTED
    try:
        row = json.loads(text)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _run_on_worker(task: Task, function, runner_host: str, token: str) -> dict:
    """Run one job on a Dask worker; return its row.

    The job's marker file says whether it started and, once finished, holds
    its row. The runner reads it when the worker died: a job that never
    started was only queued on that worker and runs again elsewhere; a job
    that finished keeps its result. A finished job that Dask runs again
    because its result was lost with its worker returns the kept row.
    """
    marker = job_marker(task, token)
    previous = read_marker(task, token)
    if isinstance(previous, dict):
        return previous
    write_text_atomic(marker, STARTED)
    # The job's check that the runner is alive compares process ids, which
    # only means something on the runner's own machine.
    if task.main_pid and socket.gethostname() != runner_host:
        task = replace(task, main_pid=0)
    row = function(task)
    with contextlib.suppress(OSError):
        write_text_atomic(marker, json.dumps(row))
    return row


def _job_key(task: Task, token: str) -> str:
    """Readable, unique task key: ``shapepipe-<module run>-<label>-<token>``."""
    return f"shapepipe-{task.module_run}-{task.label}-{token}"


class _WorkerWatch:
    """Tells when the scheduler has been without workers for too long."""

    def __init__(self, client, wait_seconds: float, where: str):
        self.client = client
        self.wait_seconds = float(wait_seconds)
        self.where = where
        self.seen_worker = False
        self.last_worker_time = time.monotonic()
        self.last_error = ""

    def worker_count(self) -> int:
        try:
            info = self.client.scheduler_info(n_workers=0)
            self.last_error = ""
            return int(info.get("n_workers", len(info.get("workers", {}))))
        except Exception as error:  # connection lost: counts as no worker
            self.last_error = f"{type(error).__name__}: {error}".splitlines()[0]
            return 0

    def alive(self) -> None:
        """A job just finished: some worker was there."""
        self.seen_worker = True
        self.last_worker_time = time.monotonic()

    def problem(self, worker_ran_a_job=None) -> str | None:
        """The reason to give up, or None while workers exist or may still come.

        ``worker_ran_a_job`` (a callable, asked only when giving up) tells
        whether a job started on some worker: one that ran a job and left
        between two looks at the scheduler was there all the same.
        """
        now = time.monotonic()
        if self.worker_count() > 0:
            self.seen_worker = True
            self.last_worker_time = now
            return None
        if now - self.last_worker_time < self.wait_seconds:
            return None
        if not self.seen_worker and worker_ran_a_job is not None and worker_ran_a_job():
            self.seen_worker = True
        if self.last_error:
            why = f"the scheduler at {self.where} cannot be reached ({self.last_error})"
        elif self.seen_worker:
            why = f"every worker of {self.where} died or left and none came back"
        else:
            why = f"no worker joined the scheduler at {self.where}"
        return f"no Dask worker for {self.wait_seconds:g} s: {why}"


class DaskExecutor(Executor):
    """Run jobs on a Dask cluster (see the module docstring).

    Parameters
    ----------
    dask_options : dict
        The parsed ``[DASK]`` section; missing keys take their defaults.

    Notes
    -----
    ``ALLOWED_FAILURES`` applies to the clusters started here. An existing
    scheduler keeps its own settings: start it with
    ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0`` (Dask's default, 3,
    runs a job that kills its worker on up to four workers). Workers must see
    the run folder at the same path as the runner (a shared file system).
    """

    name = "dask"

    def __init__(self, dask_options: dict):
        import dask
        from distributed import Client

        self.options = {**dask_defaults(), **(dask_options or {})}
        self.worker_wait = float(self.options["WORKER_WAIT"])
        self.cluster = None
        self.client = None
        address = self.options.get("SCHEDULER_ADDRESS")
        kind = (self.options.get("CLUSTER") or "local").lower()
        # Read by the scheduler when it starts: effective for the clusters we
        # start; an external scheduler keeps its own settings.
        settings = {"distributed.scheduler.allowed-failures": int(self.options["ALLOWED_FAILURES"]),
                    "distributed.scheduler.worker-saturation": WORKER_SATURATION}
        with dask.config.set(settings):
            if address:
                self.client = Client(address)
                self.where = str(address)
                self._description = f"DASK (scheduler {address})"
                self.workers = max(len(self.client.scheduler_info(n_workers=-1).get("workers", {})), 1)
                return
            try:
                if kind == "local":
                    self.cluster = self._local_cluster()
                    self.workers = int(self.options["N_WORKERS"])
                    self._description = f"DASK (local cluster, {self.workers} worker processes)"
                elif kind in ("slurm", "pbs"):
                    self.cluster = make_jobqueue_cluster(kind, self.options)
                    jobs, processes = int(self.options["N_JOBS"]), int(self.options["PROCESSES"])
                    self.cluster.scale(jobs=jobs)
                    self.workers = jobs * processes
                    self._description = (f"DASK ({kind} cluster through dask-jobqueue, {jobs} job(s) x "
                                         f"{processes} worker process(es), {self.options['CORES']} cores, "
                                         f"{self.options['MEMORY']}, wall time {self.options['WALLTIME']})")
                else:
                    raise ValueError(f"[DASK] CLUSTER = {kind}: expected local, slurm or pbs")
                self.where = str(self.cluster.scheduler_address)
                self.client = Client(self.cluster)
            except BaseException:
                self.close()
                raise

    def _local_cluster(self):
        from distributed import LocalCluster

        # No memory limit (as in SMP): a big job is not paused or killed by the
        # nanny. No dashboard; the scheduler's HTTP server on a free local port.
        return LocalCluster(n_workers=int(self.options["N_WORKERS"]),
                            threads_per_worker=int(self.options["THREADS_PER_WORKER"]),
                            processes=True, dashboard_address=None, memory_limit=0,
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                            silence_logs=logging.WARNING)

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        """Close the client, and the cluster if this executor started it."""
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            try:
                client.close()
            except Exception:  # already disconnected
                pass
        if cluster is not None:
            try:
                cluster.close()
            except Exception:
                pass

    def run(self, function, tasks):
        from distributed import as_completed

        if not tasks:
            return
        client = self.client
        host = socket.gethostname()
        pending: dict = {}  # future key -> (task, future, token, submissions)
        submitted = []  # (task, token) of every submission: their markers go at the end

        def submit(batch, submissions):
            token = uuid.uuid4().hex[:8]
            submitted.extend((task, token) for task in batch)
            futures = client.map(_run_on_worker, batch, function=function, runner_host=host, token=token,
                                 key=[_job_key(task, token) for task in batch], pure=False)
            for task, future in zip(batch, futures):
                pending[future.key] = (task, future, token, submissions)
            return futures

        finished = as_completed(submit(tasks, 1), with_results=True, raise_errors=False)
        watch = _WorkerWatch(client, self.worker_wait, self.where)
        last_check = time.monotonic()
        try:
            while pending:
                batch = finished.next_batch(block=False)
                if not batch:
                    # as_completed has no time limit of its own: wait for its
                    # signal, and look at the workers while nothing finishes.
                    with finished.thread_condition:
                        if not finished.has_ready():
                            finished.thread_condition.wait(timeout=POLL_SECONDS)
                    if finished.has_ready() or time.monotonic() - last_check < POLL_SECONDS:
                        continue
                    last_check = time.monotonic()
                    reason = watch.problem(lambda: any(read_marker(task, token) is not None
                                                       for task, _, token, _ in pending.values()))
                    if reason is not None:
                        yield from self._abandon(pending, reason)
                    continue
                last_check = time.monotonic()
                watch.alive()
                again = []
                for future, result in batch:
                    entry = pending.pop(future.key, None)
                    if entry is None:
                        continue
                    task, _, token, submissions = entry
                    marker = None if future.status == "finished" else read_marker(task, token)
                    row = _row_of(task, future, result, marker)
                    if row is None and submissions <= MAX_RESUBMISSIONS:
                        again.append((task, submissions + 1))
                        continue
                    if row is None:
                        row = failure_row(task, f"worker lost: the job was queued on {submissions} Dask "
                                                "workers that all died before it could start")
                    yield task, row
                for submissions in sorted({n for _, n in again}):
                    finished.update(submit([task for task, n in again if n == submissions], submissions))
        finally:
            if pending:  # the caller stopped early: nothing may run unseen
                self._cancel([entry[1] for entry in pending.values()])
            finished.clear()
            folders = set()
            for task, token in submitted:
                marker = job_marker(task, token)
                folders.add(marker.parent)
                with contextlib.suppress(OSError):
                    marker.unlink()
            for folder in folders:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _abandon(self, pending: dict, reason: str):
        """Cancel the unfinished jobs and fail them with ``reason``.

        A job that finished on a worker which then left before its result
        reached us keeps the row of its marker: a done job is never failed.
        """
        self._cancel([entry[1] for entry in pending.values()])
        rows = []
        for task, _, token, _ in pending.values():
            marker = read_marker(task, token)
            rows.append((task, marker if isinstance(marker, dict) else failure_row(task, reason)))
        pending.clear()
        return rows

    def _cancel(self, futures) -> None:
        # Cancelled so that a worker arriving later does not run a job already
        # recorded as failed (a job running right now cannot be stopped).
        try:
            self.client.cancel(futures, force=True)
        except Exception:
            pass


def _row_of(task: Task, future, result, marker) -> dict | None:
    """The row of a completed Dask task, or None to submit it again.

    ``marker`` is the job's marker (:func:`read_marker`): a job whose worker
    died keeps its row if it had finished, is submitted again if it had not
    started, and fails with ``worker lost`` if it was running.
    """
    status = future.status
    if status == "finished" and isinstance(result, dict):
        return result
    if status == "error":
        error = result[1] if isinstance(result, tuple) and len(result) == 3 else result
        from distributed.scheduler import KilledWorker

        if isinstance(error, KilledWorker):
            if isinstance(marker, dict):
                return marker  # finished before its worker died
            if marker is None:
                return None  # only queued on the worker that died
            worker = getattr(error.last_worker, "address", error.last_worker)
            tries = error.allowed_failures + 1
            message = (f"worker lost: Dask worker {worker} died while running the job"
                       + (f" (the job was tried on {tries} workers, all died)" if tries > 1 else ""))
        else:
            message = f"job could not run on the Dask cluster: {type(error).__name__}: {error}"
        return failure_row(task, message.splitlines()[0])
    if isinstance(marker, dict):
        return marker
    if future.cancelled() or status == "cancelled":
        detail = f": {result}" if result is not None and str(result) else ""
        return failure_row(task, f"job cancelled on the Dask cluster{detail}".splitlines()[0])
    return failure_row(task, f"job lost on the Dask cluster (task status {status}, result "
                             f"{type(result).__name__})")
