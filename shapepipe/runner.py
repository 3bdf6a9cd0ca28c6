"""Execution of a validated plan: run folder, records, jobs, summary, resume.

Layout of a run::

    OUTPUT_DIR/
      shapepipe_runs.txt                 human-readable list of runs
      RUN_NAME_YYYY-MM-DD_HH-MM-SS/
        run.json                         run record (see shapepipe.records)
        config.ini                       copy of the configuration
        shapepipe.log                    main log (LOG_NAME)
        jobs.csv, jobs.json              job table (json holds tracebacks)
        <module_run>/output/             published outputs
        <module_run>/logs/process<number>.log, logs/status/*.json

Exit status: 0 all ok (numbers lacking an input type are reported, not
failures), 1 some job failed or timed out, or a module run could not start.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .atomic import write_text_atomic
from .errors import ConfigError, ReferenceError_, RunInterrupted
from .cluster.executor import SerialExecutor, run_all
from .cluster.modes import make_executor
from .jobs import STAGING, Task, failure_row, read_status, run_task, status_path
from .numbering import compile_scheme, discover, sort_numbers
from .plan import Plan, resolve_option_dirs, resolve_sources
from .records import RECORD_NAME, new_record, read_record, scan_runs, write_record
from .selection import worker_count

OK = ("done", "done_previously")
#: Statuses of numbers whose data cannot give the product: not failures, but counted.
UNPROCESSABLE = ("unprocessable", "skipped_unprocessable")
LOCK_NAME = ".lock"
#: Batch-system variables kept in the run record of an array task.
BATCH_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_SUBMIT_DIR",
                   "PBS_JOBID", "PBS_ARRAY_INDEX", "PBS_ARRAYID", "PBS_O_WORKDIR",
                   "JOB_ID", "SGE_TASK_ID", "SGE_O_WORKDIR", "SHAPEPIPE_BATCH_SCRIPT")
FAILED = ("failed", "timeout")
TABLE_COLUMNS = ("module_run", "module", "number", "status", "duration_s", "cpu_s",
                 "peak_memory_mb", "error", "log", "peak_rss_mb")


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="microseconds")


def _make_run_dir(plan: Plan) -> Path:
    base = plan.run_name
    if plan.selection is not None and plan.selection.label:
        base += f"_{plan.selection.label}"  # array tasks of one RUN_NAME never share a folder
    if plan.core["DEFAULT"]["RUN_DATETIME"]:
        base += dt.datetime.now().strftime("_%Y-%m-%d_%H-%M-%S")
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    candidate, suffix = plan.output_dir / base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if not plan.core["DEFAULT"]["RUN_DATETIME"]:
                raise ConfigError(
                    f"{plan.ini.where('DEFAULT', 'RUN_NAME')}: run folder {candidate} already exists; "
                    "use --resume to continue it, or change RUN_NAME or set RUN_DATETIME = True"
                ) from None
            suffix += 1
            candidate = plan.output_dir / f"{base}_{suffix}"


def lock_run_dir(run_dir: Path):
    """Take the lock of a run folder for this process; return the open lock file.

    The lock (``flock`` on ``RUN_DIR/.lock``) is released by the kernel when
    the process ends, even by ``kill -9``, so a stale lock never blocks a resume.

    Raises
    ------
    ConfigError
        If another process holds it (two ``--resume`` of one run at once).
    """
    path = Path(run_dir) / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run folder {run_dir} is in use by another shapepipe_run ({holder}, lock file "
                          f"{path}); wait for it to finish, or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def check_writable(folder: Path, where: str) -> None:
    """Raise ConfigError unless a file can be created in ``folder``."""
    try:
        with open(folder / f".write_test.{os.getpid()}", "x") as handle:
            handle.write("")
        os.unlink(folder / f".write_test.{os.getpid()}")
    except OSError as error:
        raise ConfigError(f"{where}: cannot write in {folder} ({error.strerror}); nothing was run") from None


def find_resume_dir(plan: Plan, given: str | None, missing_ok: bool = False) -> Path | None:
    """The run folder to resume: the given one, or the newest run of RUN_NAME.

    With ``missing_ok``, None (start a new run) when RUN_NAME has no run yet.
    """
    if given:
        path = Path(given).resolve()
        if not (path / RECORD_NAME).is_file():
            raise ConfigError(f"--resume {given}: no run record ({RECORD_NAME}) in that folder")
        return path
    wanted = plan.selection.numbers if plan.selection is not None else None
    runs = [r for r in scan_runs(plan.output_dir) if r.get("run_name") == plan.run_name
            and (r.get("selection") or {}).get("numbers") == wanted]
    if not runs:
        if missing_ok:
            return None
        raise ConfigError(f"--resume: no run named {plan.run_name!r} under {plan.output_dir}")
    return Path(runs[-1]["run_dir"])


class _Progress:
    """tqdm bar on a terminal, a plain line every ~10% otherwise."""

    def __init__(self, name, total, logger, verbose):
        self.name, self.total, self.logger = name, total, logger
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self.bar = None
        self.step = max(1, total // 10)
        self.verbose = verbose
        if verbose and total and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="job", leave=True, dynamic_ncols=True)

    def update(self, row):
        if row["status"] in OK or row["status"] in UNPROCESSABLE:
            self.done += 1
        else:
            self.failed += 1
        count = self.done + self.failed
        if self.bar is not None:
            self.bar.set_postfix(ok=self.done, failed=self.failed, refresh=False)
            self.bar.update(1)
        elif self.verbose and (count % self.step == 0 or count == self.total):
            rate = count / max(time.perf_counter() - self.start, 1e-9)
            eta = (self.total - count) / rate if rate else 0.0
            self.logger.info("%s: %d/%d jobs (%d failed), %.1f jobs/s, ETA %.0f s",
                             self.name, count, self.total, self.failed, rate, eta)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _FailingExecutor(SerialExecutor):
    """Stands in for an executor that could not start: every job fails with the cause."""

    name = "unavailable"

    def __init__(self, message: str):
        self.message = message

    def run(self, function, tasks):
        for task in tasks:
            yield task, failure_row(task, self.message)


class Runner:
    """Run a plan in a new run folder, or resume an earlier one."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.rows: list[dict] = []
        self.record: dict = {}
        self.run_dir: Path | None = None
        self.logger = logging.getLogger(f"shapepipe.run.{id(self)}")
        self.errors = 0
        self.missing_report: list[str] = []
        self.lost_report: list[str] = []
        self.resuming = False
        self.config_changed = False
        self.executor = None
        self.run_notes: list[str] = []
        self.lock = None
        self.interrupted: int | None = None  # the signal that stopped the run
        self._stopping = False
        self._module_rows: list[dict] | None = None  # rows of the module run in progress
        self._module_todo: tuple = ((), None)  # its dispatched tasks and output folder
        self._module_name: str | None = None
        self._pool_expected: bool | None = None  # some module run is known to have several jobs
        self.workers, note = worker_count(plan.core["JOB"]["SMP_BATCH_SIZE"])
        if note:
            self.run_notes.append(note)
        mode = (plan.core["EXECUTION"]["MODE"] or "SMP").upper()
        self.executor_description = mode if mode != "SMP" else f"SMP ({self.workers} worker(s))"

    # -- set-up ---------------------------------------------------------
    def _setup_logging(self):
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        log_path = self.run_dir / f"{self.plan.core['FILE']['LOG_NAME']}.log"
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)
        if self.plan.core["DEFAULT"]["VERBOSE"]:
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(console)

    def _close_logging(self):
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)

    def _module_entries(self):
        return [
            {
                "module_run": run.name,
                "module": run.spec.name,
                "version": run.spec.version,
                "status": "pending",
                "output_dir": str(self.run_dir / run.name / "output"),
                "started": None,
                "finished": None,
                "counts": {},
                "keep": run.keep,
            }
            for run in self.plan.module_runs
        ]

    def _start_new(self):
        plan = self.plan
        self.run_dir = _make_run_dir(plan)
        self.lock = lock_run_dir(self.run_dir)
        text = plan.config_path.read_bytes()
        copy_name = plan.config_path.name
        (self.run_dir / copy_name).write_bytes(text)
        self.record = new_record(plan.run_name, self.run_dir, plan.config_path.resolve(), copy_name,
                                 hashlib.sha256(text).hexdigest(), self._module_entries(), _now())
        if plan.selection is not None:
            self.record["selection"] = plan.selection.as_record()
        self.record["executor"] = self.executor_description
        batch = {name: os.environ[name] for name in BATCH_VARIABLES if os.environ.get(name)}
        if batch:
            self.record["batch"] = batch  # lets shapepipe_status name the array tasks to resubmit
        write_record(self.record)
        run_log = plan.output_dir / f"{plan.core['FILE']['RUN_LOG_NAME']}.txt"
        line = f"{self.run_dir} {','.join(r.name for r in plan.module_runs)}\n"
        with open(run_log, "a", encoding="utf-8") as handle:  # one short append: never interleaved
            handle.write(line)

    def _start_resume(self, resume_dir: Path):
        plan = self.plan
        record = read_record(resume_dir)
        if record is None:
            raise ConfigError(f"--resume: cannot read the run record of {resume_dir}")
        check_writable(Path(resume_dir), f"--resume {resume_dir}")
        self.lock = lock_run_dir(resume_dir)
        record = read_record(resume_dir)  # read again under the lock
        if record.get("status") == "running":
            raise ConfigError(f"--resume: run {resume_dir} is still running (process {record.get('pid')})")
        names = [m["module_run"] for m in record.get("modules", [])]
        wanted = [r.name for r in plan.module_runs]
        if names != wanted:
            raise ConfigError(f"--resume: run {resume_dir} ran {', '.join(names)} but the configuration runs "
                              f"{', '.join(wanted)}; resume with the configuration of that run")
        self.run_dir = Path(record["run_dir"])
        text = plan.config_path.read_bytes()
        self.config_changed = hashlib.sha256(text).hexdigest() != record.get("config_sha256")
        record["status"] = "running"
        record["pid"] = os.getpid()
        record["finished"] = None
        record.setdefault("resumed", []).append(_now())
        self.record = record
        # The resumed run itself must not resolve its own references as a previous run.
        plan.records = [r for r in plan.records if Path(r["run_dir"]) != self.run_dir]
        write_record(self.record)

    # -- module runs ----------------------------------------------------
    def _entry(self, name):
        return next(m for m in self.record["modules"] if m["module_run"] == name)

    def _set_status(self, name, status, **extra):
        entry = self._entry(name)
        entry["status"] = status
        entry.update(extra)
        write_record(self.record)

    def _row(self, run, number, status, error=""):
        return {"module": run.spec.name, "module_run": run.name, "number": number, "status": status,
                "duration_s": 0.0, "cpu_s": 0.0, "peak_memory_mb": 0.0, "error": error, "traceback": "",
                "result": {}, "outputs": [], "log": ""}

    def _run_module(self, run, produced, not_ok):
        plan = self.plan
        module_dir = self.run_dir / run.name
        output_dir, log_dir = module_dir / "output", module_dir / "logs"
        for folder in (output_dir, log_dir, log_dir / "status"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(output_dir / STAGING, ignore_errors=True)  # leftovers of a killed run
        produced[run.name] = str(output_dir)
        started = time.perf_counter()
        self._set_status(run.name, "running", started=_now())
        self.logger.info("== %s (module %s %s, %s)", run.name, run.spec.name, run.spec.version, run.run_method)
        rows: list[dict] = []
        self._module_rows, self._module_name = rows, run.name
        try:
            dirs, upstream = resolve_sources(plan, run, self.record, produced)
            options = resolve_option_dirs(plan, run, self.record)
        except ReferenceError_ as error:
            return self._module_error(run, f"cannot resolve the inputs: {error}", started)
        self.logger.info("   inputs: %s", ", ".join(dirs) or "-")
        found = None
        if run.patterns:
            found = discover(dirs, run.patterns, run.exts, run.scheme,
                             plan.core["FILE"]["CORRECT_FILE_PATTERN"], exclude=(str(plan.output_dir),))
            if found.duplicates:
                return self._module_error(run, "; ".join(found.duplicates), started)
        upstream_bad = set()  # numbers whose input failed upstream (not merely absent)
        upstream_lost = {}  # numbers whose data proved unprocessable upstream: {number: module run}
        for name in upstream:
            upstream_bad |= {n for n, status in not_ok.get(name, {}).items()
                             if status in (*FAILED, "skipped_upstream")}
            for number, status in not_ok.get(name, {}).items():
                if status in UNPROCESSABLE:
                    upstream_lost.setdefault(number, name)
        upstream_lost = {n: m for n, m in upstream_lost.items() if n not in upstream_bad}
        complete = dict(found.complete) if found else {}
        missing = dict(found.missing) if found else {}
        if run.patterns and run.scheme is not None:
            # Numbers that failed upstream published nothing here: list them, never drop them.
            fits = compile_scheme(run.scheme).fullmatch
            for number in (*upstream_bad, *upstream_lost):
                if number and number not in complete and number not in missing and fits(number):
                    missing[number] = list(found.patterns)
        if run.numbers is not None:
            wanted = list(run.numbers)
            if run.patterns:
                labels = found.patterns
                for number in wanted:
                    if number not in complete and number not in missing:
                        missing[number] = list(labels)
                complete = {n: complete[n] for n in wanted if n in complete}
                missing = {n: missing[n] for n in wanted if n in missing}
            else:
                complete = {n: [] for n in wanted}
        for number in sort_numbers(missing):
            if number in upstream_lost:
                rows.append(self._row(run, number, "skipped_unprocessable",
                                      f"input unprocessable in {upstream_lost[number]}"))
            elif number in upstream_bad:
                rows.append(self._row(run, number, "skipped_upstream", "input failed in an earlier module run"))
            else:
                rows.append(self._row(run, number, "missing_input", "no input file for " + ", ".join(missing[number])))
        lacking = [r for r in rows if r["status"] == "missing_input"]
        if lacking:
            first = "; ".join(f"{r['number']} ({r['error'][len('no input file for '):]})" for r in lacking[:5])
            self.logger.warning("   %d number(s) lack some input type and are not processed: %s%s",
                                len(lacking), first, " ..." if len(lacking) > 5 else "")
            self.missing_report.append(f"{run.name}: {len(lacking)} number(s) lack an input type, e.g. "
                                       + ", ".join(r["number"] for r in lacking[:5]))

        tasks = self._tasks(run, options, complete, output_dir, log_dir)
        todo = []
        for task in tasks:
            previous = _done_row(task, output_dir) if self.resuming else None
            if previous:
                previous = dict(previous, status="done_previously")
                rows.append(previous)
            else:
                todo.append(task)
        if not tasks and not rows:
            self.logger.warning("   no job to run")
        self._module_todo = (todo, output_dir)
        self._dispatch(run, todo, rows)
        return self._finish_module(run, rows, started, not_ok)

    def _tasks(self, run, options, complete, output_dir, log_dir):
        plan = self.plan
        job = plan.core["JOB"]
        function = (run.spec.run.__module__, run.spec.run.__qualname__)
        common = dict(module=run.spec.name, module_run=run.name, options=options, function=function,
                      module_dirs=plan.module_dirs, output_dir=str(output_dir), log_dir=str(log_dir),
                      run_dir=str(self.run_dir), seed=job["SEED"], timeout=job["TIMEOUT"], main_pid=os.getpid(),
                      main_host=socket.gethostname(), preload=run.spec.preload)
        if run.run_method == "serial":
            if not complete and run.patterns:
                return []
            by_pattern = [p for i in range(len(run.patterns)) for p in (v[i] for v in complete.values())]
            return [Task(number="", inputs=by_pattern, input_table={n: list(v) for n, v in complete.items()},
                         **common)]
        return [Task(number=n, inputs=list(paths), input_table={n: list(paths)}, **common)
                for n, paths in complete.items()]

    def _get_executor(self):
        if self.executor is None:
            notes: list[str] = []
            preload = [name for run in self.plan.module_runs for name in run.spec.preload]
            self.executor = make_executor(self.plan.core["EXECUTION"]["MODE"], self.workers,
                                          self.plan.core["JOB"]["SMP_BACKEND"], self.plan.core.get("DASK"),
                                          notes=notes, retries=self.plan.core["JOB"]["RETRIES"],
                                          on_event=lambda text: self.logger.warning("   %s", text),
                                          preload=preload)
            for note in notes:
                self.logger.info("note: %s", note)
            self.logger.info("executor: %s", self.executor.describe())
            self.record["executor"] = self.executor.describe()
            write_record(self.record)
        return self.executor

    def _pool_for_single(self, executor) -> bool:
        """Whether a single job goes to the process pool rather than this process.

        Yes when the pool runs already or a module run of this plan is known
        (its inputs found at plan time) to have several jobs: the pool's fork
        server then loads the modules once for every job of the run, where a
        job in this process would load them a second time (astropy, numba:
        about a second of CPU).
        """
        if executor.name != "pool":
            return False
        if getattr(executor, "started", False):
            return True
        if self._pool_expected is None:
            self._pool_expected = any((count or 0) > 1 for count in map(known_job_count, self.plan.module_runs))
        return self._pool_expected

    def _dispatch(self, run, tasks, rows):
        """Run the tasks; append each row to ``rows`` and to the job table as it finishes."""
        if not tasks:
            return
        progress = _Progress(run.name, len(tasks), self.logger, self.plan.core["DEFAULT"]["VERBOSE"])
        try:
            try:
                executor = self._get_executor()
            except Exception as error:  # e.g. no Dask scheduler at the address: the jobs fail, with the cause
                message = f"executor could not start: {type(error).__name__}: {error}".splitlines()[0]
                self.logger.error("   %s", message)
                executor = _FailingExecutor(message)
            if len(tasks) == 1 and executor.name in ("joblib", "pool") and not self._pool_for_single(executor):
                executor = SerialExecutor()  # no worker start-up for a single job
            for _, row in run_all(executor, run_task, tasks):
                rows.append(row)
                self._append_row(row)
                progress.update(row)
                if row["status"] in UNPROCESSABLE:
                    self.logger.warning("   %s %s: unprocessable: %s", run.name, row["number"] or "serial",
                                        row["error"].splitlines()[0] if row["error"] else "")
                elif row["status"] not in OK:
                    self.logger.error("   %s %s: %s: %s (log: %s)", run.name, row["number"] or "serial",
                                      row["status"], row["error"].splitlines()[0] if row["error"] else "",
                                      row["log"])
        finally:
            progress.close()

    def _append_row(self, row):
        """Add a finished job to jobs.csv at once (rewritten in order at the module run's end)."""
        path = self.run_dir / "jobs.csv"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, extrasaction="ignore", lineterminator="\n")
        if not path.exists():
            writer.writeheader()
        writer.writerow({**row, "error": (row.get("error") or "").replace("\n", " | ")})
        with open(path, "a", encoding="utf-8") as handle:  # one short append per job
            handle.write(buffer.getvalue())

    def _module_error(self, run, message, started):
        self.logger.error("   module run %s could not start: %s", run.name, message)
        self.errors += 1
        self._set_status(run.name, "failed", finished=_now(), error=message,
                         wall_s=round(time.perf_counter() - started, 3))
        self.rows.append(self._row(run, "", "failed", message))
        return "failed"

    def _finish_module(self, run, rows, started, not_ok):
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        ok = sum(counts.get(s, 0) for s in OK)
        bad = sum(counts.get(s, 0) for s in (*FAILED, "skipped_upstream"))
        lost = sum(counts.get(s, 0) for s in UNPROCESSABLE)
        if bad:
            status = "partial" if ok else "failed"
        elif ok or lost:
            status = "done"  # unprocessable data is a result, not an error
        else:
            status = "done" if not rows else "failed"
        extra = {}
        unprocessable = counts.get("unprocessable", 0)
        ran = ok + unprocessable + sum(counts.get(s, 0) for s in FAILED)
        limit = self.plan.core["JOB"]["MAX_UNPROCESSABLE_FRACTION"]
        if unprocessable and unprocessable > limit * ran:
            message = (f"{unprocessable} of {ran} jobs unprocessable, more than MAX_UNPROCESSABLE_FRACTION = "
                       f"{limit:g}")
            self.logger.error("   %s: %s", run.name, message)
            self.errors += 1
            status = "partial" if ok else "failed"
            extra["error"] = message
        if lost:
            first = [r["number"] for r in rows if r["status"] in UNPROCESSABLE][:5]
            self.lost_report.append(f"{run.name}: {unprocessable} unprocessable, "
                                    f"{counts.get('skipped_unprocessable', 0)} skipped as their input was, "
                                    f"e.g. {', '.join(first)}")
        not_ok[run.name] = {r["number"]: r["status"] for r in rows if r["status"] not in OK}
        with contextlib.suppress(OSError):  # empty unless a job is still writing
            os.rmdir(self.run_dir / run.name / "output" / STAGING)
        wall = time.perf_counter() - started
        cpu = sum(r.get("cpu_s", 0.0) for r in rows if r["status"] != "done_previously")
        self.rows.extend(rows)
        self._write_table()
        self._set_status(run.name, status, finished=_now(), counts=counts, wall_s=round(wall, 3),
                         cpu_s=round(cpu, 3), **extra)
        self.logger.info("   %s: %s (%s)", run.name, status,
                         ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no job")
        return status

    def _delete_scratch(self):
        """Delete the outputs of the module runs with ``KEEP = False`` (the run has succeeded)."""
        for run in self.plan.module_runs:
            entry = self._entry(run.name)
            if run.keep or entry.get("outputs_deleted") is not None:
                continue
            freed = delete_outputs(Path(entry["output_dir"]))
            entry["outputs_deleted"] = freed
            self.logger.info("%s: KEEP = False: outputs deleted (%.1f MB)", run.name, freed / 1e6)

    def _write_table(self):
        ordered = sorted(self.rows, key=lambda r: ([m.name for m in self.plan.module_runs].index(r["module_run"]),
                                                   r["number"]))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in ordered:
            writer.writerow({**row, "error": (row.get("error") or "").replace("\n", " | ")})
        write_text_atomic(self.run_dir / "jobs.csv", buffer.getvalue())
        write_text_atomic(self.run_dir / "jobs.json", json.dumps(ordered, indent=1, default=str))

    # -- summary --------------------------------------------------------
    def summary(self) -> str:
        """Table of module runs: jobs ok/failed/skipped, wall and CPU time."""
        header = ("module run", "status", "ok", "previous", "failed", "timeout", "skipped", "unproc",
                  "missing", "wall s", "cpu s")
        lines = []
        for run in self.plan.module_runs:
            entry = self._entry(run.name)
            c = entry.get("counts", {})
            lines.append((run.name, entry["status"], c.get("done", 0), c.get("done_previously", 0),
                          c.get("failed", 0), c.get("timeout", 0), c.get("skipped_upstream", 0),
                          c.get("unprocessable", 0) + c.get("skipped_unprocessable", 0), c.get("missing_input", 0), f"{entry.get('wall_s', 0):.2f}",
                          f"{entry.get('cpu_s', 0):.2f}"))
        widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        text = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        text += [fmt.format(*map(str, line)) for line in lines]
        text += [f"numbers lacking an input type: {m}" for m in self.missing_report]
        text += [f"unprocessable data (not failures): {m}" for m in self.lost_report]
        return "\n".join(text)

    # -- main -----------------------------------------------------------
    def run(self, resume_dir: Path | None = None) -> int:
        """Run every module run; return the exit status.

        0 ok, 1 failures, 128+N when signal N (SIGTERM, SIGINT) stopped the
        run: no new job starts, running jobs are killed with the programs
        they started, finished jobs stay recorded, unfinished staging is
        removed and the record says ``interrupted`` (``--resume`` continues).
        """
        plan = self.plan
        self.resuming = resume_dir is not None
        previous = self._install_signal_handlers()
        try:
            if self.resuming:
                self._start_resume(resume_dir)
            else:
                self._start_new()
            self._setup_logging()
            self.logger.info("shapepipe run %s (config %s)", self.run_dir, plan.config_path)
            if self.resuming:
                self.logger.info("resuming: jobs recorded as done are skipped")
                if self.config_changed:
                    self.logger.warning("the configuration differs from the one this run started with")
            for note in [*plan.notes, *self.run_notes]:
                self.logger.info("note: %s", note)
            if plan.selection is not None:
                self.logger.info("selection (%s): %d number(s): %s%s", plan.selection.source,
                                 len(plan.selection.numbers), ", ".join(plan.selection.numbers[:10]),
                                 " ..." if len(plan.selection.numbers) > 10 else "")
            produced: dict = {}
            not_ok: dict = {}
            for run in plan.module_runs:
                self._run_module(run, produced, not_ok)
            self._module_rows = None
            failures = self.errors + sum(1 for r in self.rows if r["status"] in FAILED)
            statuses = {m["status"] for m in self.record["modules"]}
            self.record["status"] = "done" if statuses <= {"done"} else ("failed" if statuses == {"failed"} else "partial")
            if self.record["status"] == "done":
                self._delete_scratch()
            self.record["finished"] = _now()
            write_record(self.record)
            self._write_table()
            self.logger.info("summary of %s:\n%s", self.run_dir, self.summary())
            return 1 if failures else 0
        except (RunInterrupted, KeyboardInterrupt) as stop:
            self._stopping = True
            signum = getattr(stop, "signum", signal.SIGINT)
            self.interrupted = int(signum)
            if self.run_dir is None or not self.record:
                self._stop_workers()
                return 128 + self.interrupted
            self._interrupt_cleanup()
            return 128 + self.interrupted
        finally:
            if self.executor is not None:
                with contextlib.suppress(Exception):  # closing must not hide the run's own outcome
                    self.executor.close()
            self._restore_signal_handlers(previous)
            self._close_logging()
            if self.lock is not None:
                self.lock.close()  # releases the run folder's lock
                self.lock = None

    # -- signals --------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None  # signals reach the main thread only; its owner handles them
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous):
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)

    def _on_signal(self, signum, frame):
        if self._stopping:  # a second signal while stopping: no more waiting
            from .cluster.pool import kill_descendants

            kill_descendants()
            os._exit(128 + signum)
        self._stopping = True
        raise RunInterrupted(signum)

    def _stop_workers(self):
        """Kill every job and program still running (workers first, then any descendant)."""
        from .cluster.pool import kill_descendants

        executor, self.executor = self.executor, None
        if executor is not None and hasattr(executor, "terminate"):
            with contextlib.suppress(Exception):
                executor.terminate()
        elif executor is not None:
            kill_descendants(sig=signal.SIGTERM)
            time.sleep(0.5)
            with contextlib.suppress(Exception):
                executor.close()
        kill_descendants()

    def _interrupt_cleanup(self):
        """After a signal: stop jobs, keep what finished, remove staging, record ``interrupted``."""
        name = signal.Signals(self.interrupted).name
        self._stop_workers()
        rows = self._module_rows or []
        self._module_rows = None
        rows.extend(self._finished_unreported(rows))
        self.rows.extend(rows)
        for entry in self.record.get("modules", []):
            shutil.rmtree(Path(entry["output_dir"]) / STAGING, ignore_errors=True)
            if entry["status"] == "running":
                entry["status"] = "interrupted"
                counts: dict = {}
                for row in rows:
                    counts[row["status"]] = counts.get(row["status"], 0) + 1
                entry["counts"] = counts
                entry["finished"] = _now()
        self.record["status"] = "interrupted"
        self.record["interrupted_by"] = name
        self.record["finished"] = _now()
        write_record(self.record)
        self._write_table()
        done = sum(1 for r in rows if r["status"] == "done")
        self.logger.error("interrupted by %s: %d job(s) of %s finished and are recorded; running jobs were "
                          "stopped; resume with: %s", name, done, self._module_name or "-", self.resume_command())

    def _finished_unreported(self, rows) -> list[dict]:
        """Rows of jobs that finished (status file done, outputs published) before the signal
        reached the runner but after the last result it collected."""
        todo, output_dir = self._module_todo
        self._module_todo = ((), None)
        seen = {(row.get("module_run"), row.get("number")) for row in rows}
        found = []
        for task in todo:
            if (task.module_run, task.number) in seen:
                continue
            status = _done_row(task, output_dir)
            if status:
                found.append(status)
        return found

    def resume_command(self) -> str:
        """The command that continues this run."""
        return f"shapepipe_run -c {self.plan.config_path} --resume {self.run_dir}"


def _done_row(task, output_dir) -> dict | None:
    """The job's status row if it says done and every output it names is in ``output_dir``, else None."""
    status = read_status(task.status_path)
    if status and status.get("status") == "done" and all(
        (Path(output_dir) / name).exists() for name in status.get("outputs", [])
    ):
        return status
    return None


def known_job_count(run) -> int | None:
    """Jobs of a module run as far as known at plan time (None: its inputs are produced in this run)."""
    if run.run_method == "serial":
        return 1
    found = run.discovery
    if found is None:
        return None if run.patterns else (len(run.numbers) if run.numbers is not None else None)
    complete = dict(found.complete)
    if run.numbers is not None:
        return sum(1 for number in run.numbers if number in complete)
    return len(complete)


def delete_outputs(output_dir: Path) -> int:
    """Delete every file under a module run's output folder (the folder stays); return the bytes freed."""
    freed = 0
    if not output_dir.is_dir():
        return 0
    for path in sorted(output_dir.rglob("*"), reverse=True):
        if path.is_symlink() or path.is_file():
            if not path.is_symlink():
                freed += path.stat().st_size
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return freed


def dry_run(plan: Plan) -> str:
    """The job table a run would execute, without running anything."""
    lines = [f"dry run of {plan.config_path}: {len(plan.module_runs)} module run(s)"]
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append(f"{'module run':<28} {'number':<16} {'status':<14} inputs")
    for run in plan.module_runs:
        found = run.discovery
        if found is None and run.patterns:
            lines.append(f"{run.name:<28} {'*':<16} {'planned':<14} (inputs produced earlier in this run)")
            continue
        complete = dict(found.complete) if found else {}
        missing = dict(found.missing) if found else {}
        if run.numbers is not None:
            if run.patterns:
                missing.update({n: found.patterns for n in run.numbers if n not in complete and n not in missing})
                complete = {n: complete[n] for n in run.numbers if n in complete}
                missing = {n: v for n, v in missing.items() if n in run.numbers}
            else:
                complete = {n: [] for n in run.numbers}
        if run.run_method == "serial":
            lines.append(f"{run.name:<28} {'(serial)':<16} {'planned':<14} {len(complete)} numbers")
        else:
            for number, paths in complete.items():
                lines.append(f"{run.name:<28} {number:<16} {'planned':<14} {', '.join(map(str, paths))}")
        for number in sort_numbers(missing):
            lines.append(f"{run.name:<28} {number:<16} {'missing_input':<14} lacks {', '.join(missing[number])}")
    return "\n".join(lines)
