"""``MODE = SMP`` worker processes that never outlive the runner and lose one job at most.

Each worker is a process of its own group (started from a fork server, so it
inherits no thread or OpenMP state of the runner) that runs one job at a
time; the runner knows which job every worker holds. Consequences:

- a worker that dies (killed, out of memory, a crash in C code) costs only
  the job it held: the job is run again ``[JOB] RETRIES`` times (default 1)
  on a fresh worker, then fails with ``worker died (signal N)``; its
  external programs (same process group) and its staging folder are removed,
  and the other jobs go on;
- a worker watches the runner and exits, killing everything it started,
  within a fraction of a second when the runner is gone (``kill -9``);
- SIGTERM to a worker kills its job with every program the job started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from .executor import Executor, task_key
from ..jobs import STAGING, Task, failure_row

#: Seconds between two checks of the runner by a worker.
WATCH_INTERVAL = 0.2
#: Environment variable through which the fork server receives the preload entries (see :mod:`.preload`).
PRELOAD_VARIABLE = "SHAPEPIPE_FORKSERVER_PRELOAD"


def kill_descendants(pid: int | None = None, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every descendant of ``pid`` (default: this process); return how many."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)
    return len(children)


def _runner_alive(main_pid: int) -> bool:
    from ..records import process_alive

    return process_alive(main_pid)


def _watch_runner(main_pid: int) -> None:
    """Worker thread: when the runner is gone, kill this worker's programs and exit."""
    while True:
        time.sleep(WATCH_INTERVAL)
        if not _runner_alive(main_pid):
            kill_descendants()
            with contextlib.suppress(OSError):
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(1)


def _on_terminate(signum, frame):
    """SIGTERM in a worker: kill the job and everything it started, then exit."""
    kill_descendants()
    os._exit(128 + signum)


def worker_main(connection, main_pid: int) -> None:
    """Body of a worker process: run ``(function, task)`` items until told to stop."""
    from .. import job as job_module

    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # own group: killpg reaches the job's external programs
    job_module.COMMANDS_IN_OWN_SESSION = False  # programs stay in this worker's group
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    signal.signal(signal.SIGTERM, _on_terminate)
    threading.Thread(target=_watch_runner, args=(main_pid,), daemon=True, name="watch-runner").start()
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):
            break
        if item is None:
            break
        function, task = item
        row = function(task)
        try:
            connection.send(row)
        except (BrokenPipeError, OSError):
            break
    os._exit(0)


def death_cause(exitcode: int | None) -> str:
    """``worker died (signal 9)`` or ``worker died (exit status 1)``."""
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        return f"worker died (signal {-exitcode})"
    return f"worker died (exit status {exitcode})"


def _stop_fork_server() -> None:
    """Stop and reap the fork server, so that its workers' CPU time reaches this process's
    ``RUSAGE_CHILDREN`` (what a caller timing ``shapepipe_run`` measures); left running, it is
    reaped by init and that time is lost."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        with contextlib.suppress(Exception):
            server._stop()


_AT_EXIT = []


def _stop_fork_server_at_exit() -> None:
    if not _AT_EXIT:
        import atexit

        atexit.register(_stop_fork_server)
        _AT_EXIT.append(True)


class _Worker:
    def __init__(self, process, connection):
        self.process, self.connection = process, connection
        self.task: Task | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class PoolExecutor(Executor):
    """Worker processes with per-job supervision (``MODE = SMP``, process backends).

    Parameters
    ----------
    workers : int
        Number of worker processes.
    retries : int
        Times a job is run again after its worker died (job errors are never retried).
    on_event : callable, optional
        Receives one line per worker death, for the run log.
    preload : sequence of str, optional
        ``preload`` entries of the modules the run will use (``ModuleSpec.preload``):
        the fork server runs them once, before it forks the first worker, so
        that every worker starts with them done.
    """

    name = "pool"

    def __init__(self, workers: int, retries: int = 1, on_event=None, preload=()):
        self.workers = max(int(workers), 1)
        self.retries = max(int(retries), 0)
        self.on_event = on_event
        self.preload = tuple(dict.fromkeys(preload))
        self._pool: list[_Worker] = []
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["shapepipe.jobs", "shapepipe.cluster.pool", "shapepipe.cluster.preload"])
        self.started = False  # True once a worker was started (the fork server runs, preloaded)
        self.deaths = 0
        _stop_fork_server_at_exit()

    def _start_server(self) -> None:
        """Start the fork server with the preload entries in its environment (and nowhere else).

        A fork server already running in this process (an earlier run of the
        same Python session) is kept: workers then run what it lacks themselves.
        """
        from multiprocessing import forkserver

        previous = os.environ.get(PRELOAD_VARIABLE)
        os.environ[PRELOAD_VARIABLE] = ",".join(self.preload)
        try:
            forkserver.ensure_running()
        finally:
            if previous is None:
                os.environ.pop(PRELOAD_VARIABLE, None)
            else:
                os.environ[PRELOAD_VARIABLE] = previous

    def describe(self) -> str:
        return (f"SMP (process pool), {self.workers} worker(s); a job whose worker dies is retried "
                f"{self.retries} time(s)")

    def _start_worker(self) -> _Worker:
        if not self.started:
            self._start_server()
            self.started = True
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=worker_main, args=(theirs, os.getpid()), daemon=True,
                                        name="shapepipe-worker")
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self._pool.append(worker)
        return worker

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (for tests and the fault campaign)."""
        return [w.pid for w in self._pool if w.process.is_alive()]

    def _bury(self, worker: _Worker) -> str:
        """Remove a dead worker: kill its group, delete its staging folder; return the cause."""
        worker.process.join(timeout=2)
        cause = death_cause(worker.process.exitcode)
        with contextlib.suppress(OSError):
            os.killpg(worker.pid, signal.SIGKILL)  # programs its job started
        task = worker.task
        if task is not None:
            for leftover in (Path(task.output_dir) / STAGING).glob(f"{task.label}.{worker.pid}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
        with contextlib.suppress(OSError):
            worker.connection.close()
        self._pool.remove(worker)
        self.deaths += 1
        return cause

    def run(self, function, tasks):
        queue = deque(tasks)
        deaths: dict = {}
        while queue or any(w.task is not None for w in self._pool):
            for worker in [w for w in self._pool if w.task is None and not w.process.is_alive()]:
                self._event(f"idle {self._bury(worker)} (pid {worker.pid}); replaced")
            while len(self._pool) < min(self.workers, len(queue) + sum(w.task is not None for w in self._pool)):
                self._start_worker()
            for worker in self._pool:
                if worker.task is None and queue:
                    worker.task = queue.popleft()
                    try:
                        worker.connection.send((function, worker.task))
                    except (BrokenPipeError, OSError):
                        pass  # found dead below through its sentinel
            busy = [w for w in self._pool if w.task is not None]
            handles = [w.connection for w in busy] + [w.process.sentinel for w in busy]
            ready = set(wait(handles))
            for worker in busy:
                row = None
                if worker.connection in ready or worker.process.sentinel in ready:
                    try:
                        if worker.connection.poll():
                            row = worker.connection.recv()
                    except (EOFError, OSError):
                        row = None
                    if row is not None:
                        task, worker.task = worker.task, None
                        yield task, row
                        continue
                    if worker.process.is_alive() and worker.process.sentinel not in ready:
                        continue
                    task = worker.task
                    cause = self._bury(worker)
                    key = task_key(task)
                    deaths[key] = deaths.get(key, 0) + 1
                    if deaths[key] <= self.retries:
                        self._event(f"{task.module_run} {task.number or 'serial'}: {cause} (pid {worker.pid}); "
                                    "job run again on a new worker")
                        queue.appendleft(task)
                    else:
                        retried = f" (also after {self.retries} retr{'y' if self.retries == 1 else 'ies'})" \
                            if self.retries else ""
                        self._event(f"{task.module_run} {task.number or 'serial'}: {cause} (pid {worker.pid}){retried}; "
                                    "job failed")
                        yield task, failure_row(task, cause + retried)

    def _event(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    def terminate(self, grace: float = 2.0) -> None:
        """Stop every worker now: SIGTERM (each kills its job's programs), SIGKILL after ``grace`` s."""
        for worker in self._pool:
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in self._pool:
            worker.process.join(timeout=max(deadline - time.monotonic(), 0.01))
        for worker in self._pool:
            with contextlib.suppress(OSError):
                os.killpg(worker.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                worker.connection.close()
        self._pool.clear()

    def close(self) -> None:
        """Ask idle workers to stop; kill any that do not."""
        for worker in self._pool:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
        deadline = time.monotonic() + 2.0
        for worker in self._pool:
            worker.process.join(timeout=max(deadline - time.monotonic(), 0.01))
        self.terminate(grace=0.5)
