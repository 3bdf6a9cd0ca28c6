"""Running one job: staging, publication, logging, time-out and status file.

:func:`run_task` is what a joblib worker executes. It

1. opens the job's own log file (``<module_run>/logs/process<number>.log``);
2. gives the module a fresh staging folder
   (``<module_run>/output/.staging/<number>.<pid>``);
3. calls the module function, directly or, when ``[JOB] TIMEOUT`` is set,
   in a forked child that leads its own process group (killed with every
   program it started when time runs out, whatever the joblib backend);
4. on success moves every staged file to ``<module_run>/output/`` with
   ``os.replace`` (sub-folders kept), on failure deletes the staging folder;
5. writes the job's status file (``logs/status/process<number>.json``)
   atomically; a resumed run skips the jobs whose status is ``done``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import job as job_module
from .atomic import write_text_atomic
from .errors import JobTimeout, JobUnprocessable, RunInterrupted
from .job import Job
from .memory import PeakSampler, peak_rss_mb, reset_peak_rss

STAGING = ".staging"
_HOST = socket.gethostname()


@dataclass
class Task:
    """Everything a worker needs to run one job (small and picklable)."""

    module: str
    module_run: str
    number: str
    inputs: list
    input_table: dict
    options: dict
    function: tuple  # (python module, qualified name)
    module_dirs: tuple
    output_dir: str
    log_dir: str
    run_dir: str
    seed: int = 0
    timeout: float | None = None
    main_pid: int = 0
    main_host: str = ""  # the runner's host: its pid means nothing on another node
    preload: tuple = ()  # modules imported by the worker before forking (ModuleSpec.preload)
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``process<number>`` (``process_serial`` for a serial job), as in ShapePipe."""
        return f"process{self.number}" if self.number else "process_serial"

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir) / f"{self.label}.log"

    @property
    def status_path(self) -> Path:
        return status_path(self.log_dir, self.label)


def status_path(log_dir, label) -> Path:
    """Path of a job's status file."""
    return Path(log_dir) / "status" / f"{label}.json"


def read_status(path: Path) -> dict | None:
    """A job status file, or None if absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _load_function(task: Task):
    for directory in task.module_dirs:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    python_module, qualname = task.function
    target = importlib.import_module(python_module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


_PRELOADED: set = set()


@contextlib.contextmanager
def _imports_then_freeze():
    """Run imports without the cyclic garbage collector, then freeze what they made.

    Imports make hundreds of thousands of long-lived objects and almost no
    garbage: without the collector they run faster, and frozen
    (:func:`gc.freeze`) those objects are no longer traversed by every full
    collection of this process and of the processes forked from it (0.1 s
    per full collection once astropy and matplotlib are loaded); forked
    children also stop touching their pages (copy-on-write).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


def _preload(names, logger) -> None:
    """Import (and call) a module's preload entries once per worker process.

    Every forked job then inherits them: re-importing astropy or starting
    numba in each job costs up to a second of CPU per job. A failing entry
    is logged and skipped; the job itself reports any real problem.
    """
    names = [name for name in names if name not in _PRELOADED]
    if not names:
        return
    with _imports_then_freeze():
        for name in names:
            _PRELOADED.add(name)
            module_name, _, function_name = name.partition(":")
            try:
                target = importlib.import_module(module_name)
                if function_name:
                    getattr(target, function_name)()
            except Exception as error:  # a preload is an optimisation, never a requirement
                logger.warning("preload of %s failed: %s: %s", name, type(error).__name__, error)


def preload_for_children(names) -> list[str]:
    """Run preload entries in a process that only forks workers (the SMP fork server).

    Every worker forked from it then starts with them done, instead of each
    worker importing astropy, numba and the modules' kernels again. An entry
    that fails is not marked done: the worker runs it again and logs the
    failure in the job's log, as without this step. Returns the entries done.
    """
    done = []
    with _imports_then_freeze():
        for name in names:
            if not name or name in _PRELOADED:
                continue
            module_name, _, function_name = name.partition(":")
            try:
                target = importlib.import_module(module_name)
                if function_name:
                    getattr(target, function_name)()
            except Exception:  # noqa: BLE001  the worker retries and reports it
                continue
            _PRELOADED.add(name)
            done.append(name)
    return done


def _job_logger(task: Task) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"shapepipe.job.{task.module_run}.{task.label}.{os.getpid()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(task.log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def _publish(staging: Path, output_dir: Path) -> list[str]:
    """Move staged files to their final names; return their relative paths."""
    published = []
    for root, _, files in os.walk(staging):
        for name in files:
            source = Path(root) / name
            relative = source.relative_to(staging)
            target = output_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            published.append(relative.as_posix())
    shutil.rmtree(staging, ignore_errors=True)
    return sorted(published)


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _call(task: Task, function, logger, staging: Path, deadline) -> dict:
    """Run the module function; return a status dict (never raises)."""
    job = Job(
        module=task.module,
        module_run=task.module_run,
        number=task.number,
        inputs=[Path(p) for p in task.inputs],
        input_table={n: [Path(p) for p in paths] for n, paths in task.input_table.items()},
        output_dir=staging,
        log_dir=Path(task.log_dir),
        options=dict(task.options),
        logger=logger,
        run_dir=Path(task.run_dir),
        seed=task.seed,
        timeout=task.timeout,
        deadline=deadline,
    )
    try:
        result = function(job)
        if result is not None and not isinstance(result, dict):
            logger.warning("module returned %s instead of a dict; not recorded", type(result).__name__)
            result = None
        return {"status": "done", "result": _jsonable(result) if result else {}}
    except RunInterrupted:
        raise
    except JobUnprocessable as error:  # a property of the data, not an error: no traceback
        logger.warning("job unprocessable: %s", error)
        return {"status": "unprocessable", "error": f"{type(error).__name__}: {error}".strip(), "traceback": ""}
    except BaseException as error:  # the job fails, the worker goes on
        text = traceback.format_exc()
        logger.error("job failed:\n%s", text)
        status = "timeout" if isinstance(error, JobTimeout) else "failed"
        message = f"{type(error).__name__}: {error}".strip()
        names = [str(p) for p in task.inputs[:4]]
        if task.number and names and not any(n in message or Path(n).name in message for n in names):
            # Errors from libraries (e.g. a truncated FITS file) often name no file: the job's inputs do.
            message += f" (job inputs: {', '.join(names)})"
        return {"status": status, "error": message, "traceback": text}


#: Key of the forked job's own peak real memory (MB) in the outcome it sends back.
CHILD_PEAK_KEY = "_child_peak_real_mb"


def _run_forked(task: Task, function, logger, handler, staging: Path) -> tuple[dict, float, float, float]:
    """Run the job in a child process group; kill the group on time-out.

    Returns the status dict, the child's CPU seconds, its peak real memory
    (MB; sampled by the parent and by the child itself, see
    :mod:`shapepipe.memory`; ``ru_maxrss`` where it cannot be sampled) and
    its peak resident size (``ru_maxrss``, file pages included).
    """
    read_fd, write_fd = os.pipe()
    deadline = time.monotonic() + task.timeout
    pid = os.fork()
    if pid == 0:  # child: its own session, so killpg reaches everything it starts
        code = 0
        try:
            # What the job inherits lives as long as the job: full collections need not traverse it.
            gc.freeze()
            os.close(read_fd)
            os.setsid()
            die_with_parent()
            job_module.COMMANDS_IN_OWN_SESSION = False
            # The child samples itself too: on a loaded machine it can finish a
            # short job before the parent's first sample of it.
            own_sampler = PeakSampler().start()
            outcome = _call(task, function, logger, staging, deadline)
            outcome[CHILD_PEAK_KEY] = own_sampler.stop()
            handler.flush()
            data = json.dumps(outcome).encode()
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    sampler = PeakSampler(pid).start()
    chunks = []
    timed_out = False
    with os.fdopen(read_fd, "rb") as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([pipe], [], [], left)
            if ready:
                chunk = os.read(pipe.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    if timed_out:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    real = sampler.stop()
    _, wait_status, usage = os.wait4(pid, 0)
    # Anything the job left running in its group (daemonised helpers) goes too.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss / 1024.0
    memory = real or rss  # a job ended before the first sample: its resident size, an upper bound
    if timed_out:
        message = f"JobTimeout: job still running after the TIMEOUT of {task.timeout:g} s; its processes were killed"
        logger.error(message)
        return {"status": "timeout", "error": message, "traceback": ""}, cpu, memory, rss
    try:
        outcome = json.loads(b"".join(chunks).decode())
        child_peak = outcome.pop(CHILD_PEAK_KEY, None)
        if child_peak:
            memory = max(real or 0.0, child_peak)
    except ValueError:
        if os.WIFSIGNALED(wait_status):
            message = f"job process killed by signal {os.WTERMSIG(wait_status)}"
        else:
            message = f"job process ended with status {os.WEXITSTATUS(wait_status)} without a result"
        logger.error(message)
        outcome = {"status": "failed", "error": message, "traceback": ""}
    return outcome, cpu, memory, rss


def run_task(task: Task) -> dict:
    """Run one job and return its row of the job table.

    Never raises for job errors: a failure is recorded in the row, the job
    log and the status file.
    """
    started = time.time()
    wall0 = time.perf_counter()
    if task.main_pid and task.main_pid != os.getpid() and task.main_host in ("", _HOST) \
            and not _alive(task.main_pid):
        # The runner died (kill -9); an orphaned worker must not keep working.
        return _row(task, {"status": "failed", "error": "runner process gone"}, started, 0.0, 0.0, 0.0)
    Path(task.log_dir).mkdir(parents=True, exist_ok=True)
    logger, handler = _job_logger(task)
    staging = Path(task.output_dir) / STAGING / f"{task.label}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        staging.mkdir(parents=True)
        logger.info("%s %s: start (inputs: %s)", task.module_run, task.number or "serial",
                    ", ".join(map(str, task.inputs)) or "-")
        function = _load_function(task)
        if task.timeout:
            _preload(task.preload, logger)
            outcome, cpu, memory, rss = _run_forked(task, function, logger, handler, staging)
        else:
            reset = reset_peak_rss()
            sampler = PeakSampler().start()
            usage0 = resource.getrusage(resource.RUSAGE_THREAD)
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            outcome = _call(task, function, logger, staging, None)
            usage1 = resource.getrusage(resource.RUSAGE_THREAD)
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
                   + children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime)
            real = sampler.stop()
            # Peak resident size of the worker during this job (reset at its start; else so far: an upper bound).
            rss = (peak_rss_mb() if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            memory = rss if real is None else real
        if outcome["status"] == "done":
            outcome["outputs"] = _publish(staging, Path(task.output_dir))
        else:
            shutil.rmtree(staging, ignore_errors=True)
    except RunInterrupted:
        shutil.rmtree(staging, ignore_errors=True)
        handler.close()
        logger.removeHandler(handler)
        raise
    except BaseException as error:  # runner-side problem (import of the module, disk)
        shutil.rmtree(staging, ignore_errors=True)
        text = traceback.format_exc()
        logger.error("job could not run:\n%s", text)
        outcome, cpu, memory, rss = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                     "traceback": text}, 0.0, 0.0, 0.0
    duration = time.perf_counter() - wall0
    row = _row(task, outcome, started, duration, cpu, memory, rss)
    logger.info("%s %s: %s in %.3f s", task.module_run, task.number or "serial", row["status"], duration)
    handler.close()
    logger.removeHandler(handler)
    _write_status(task.status_path, json.dumps(row, indent=1))
    return row


def failure_row(task: Task, message: str) -> dict:
    """Row of a job lost outside :func:`run_task` (worker killed, executor failure).

    The failure is also written to the job's log and status file, so that a
    resumed run redoes the job and ``shapepipe_status`` reports it.
    """
    row = _row(task, {"status": "failed", "error": message}, time.time(), 0.0, 0.0, 0.0)
    row["worker_pid"] = None
    with contextlib.suppress(OSError):
        Path(task.log_dir).mkdir(parents=True, exist_ok=True)
        with open(task.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {message}\n")
        _write_status(task.status_path, json.dumps(row, indent=1))
    return row


def _write_status(path: Path, text: str) -> None:
    """Write a status file atomically with one create and one rename (hot path)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except FileNotFoundError:  # status folder removed under us: recreate once
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    from .records import process_alive

    return process_alive(pid)


def _row(task: Task, outcome: dict, started: float, duration: float, cpu: float, memory: float,
         rss: float = 0.0) -> dict:
    return {
        "module": task.module,
        "module_run": task.module_run,
        "number": task.number,
        "status": outcome["status"],
        "duration_s": round(duration, 6),
        "cpu_s": round(cpu, 6),
        "peak_memory_mb": round(memory, 3),
        "peak_rss_mb": round(rss, 3),
        "error": outcome.get("error", ""),
        "traceback": outcome.get("traceback", ""),
        "result": outcome.get("result", {}),
        "outputs": outcome.get("outputs", []),
        "started": started,
        "log": str(task.log_path),
        "worker_pid": os.getpid(),
    }
