"""Status of a campaign: ``shapepipe_status OUTPUT_DIR_OR_RUN_DIR ...``.

A campaign on a cluster is many runs (one per array task) in one or more
``OUTPUT_DIR``. This module reads every run folder once (``run.json``,
``jobs.json`` and, for module runs that did not finish, the per-job status
files ``<module_run>/logs/status/*.json``) and says, for each module run and
file number, what happened:

- ``done`` (``done_previously`` counts as done), ``failed``, ``timeout``,
  ``skipped_upstream``, ``missing_input`` (the number lacks an input type:
  reported, not a failure);
- ``missing``: a number the run was meant to process (its selection, else the
  numbers of its first module run) without any row in a module run that did
  not finish (the run was killed, or is still running).

Over many runs the newest outcome of a (module run, number) wins: a
resubmitted task that succeeded hides the earlier failure. A ``missing`` or
``missing_input`` entry never hides a real outcome of another run.

The report ends with the commands that re-run exactly what is not done:
``shapepipe_run -c CONFIG --resume RUN_DIR`` per run (a resumed run keeps
its selection and redoes only the jobs not done), and, for SLURM or PBS array
tasks written by ``shapepipe_batch``, the resubmission of the failed tasks.

Exit status: 0 nothing failed or missing; 1 otherwise; 2 a path is not a run
folder or an output folder holding runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import ShapePipeError
from ..numbering import sort_numbers
from ..records import RECORD_NAME, read_record
from ..arguments import ArgumentParser

EXIT_OK, EXIT_NOT_DONE, EXIT_BAD_PATH = 0, 1, 2
#: Job statuses that count as done.
DONE = ("done", "done_previously")
#: Statuses that need a re-run (``missing_input`` does not: its input does not exist).
NOT_DONE = ("failed", "timeout", "skipped_upstream", "missing")
#: Statuses that say a number was not attempted; they never hide an outcome of another run.
ABSENT = ("missing", "missing_input")
#: Columns of the per-module tables, with the statuses each one counts.
COLUMNS = (("done", DONE), ("failed", ("failed",)), ("timeout", ("timeout",)),
           ("skipped", ("skipped_upstream",)), ("missing", ("missing",)), ("missing_input", ("missing_input",)))
_UNFINISHED_MODULE = ("pending", "running", "interrupted")
_UNFINISHED_RUN = ("running", "interrupted")


class StatusError(ShapePipeError, ValueError):
    """A path given to ``shapepipe_status`` holds no run."""


@dataclass
class Outcome:
    """What happened to one job (module run and number) of one run.

    Attributes
    ----------
    status : str
        ``done``, ``failed``, ``timeout``, ``skipped_upstream``,
        ``missing_input`` or ``missing``.
    time : float
        When the job started (epoch seconds); for rows without a start time
        (missing, skipped), the last start or resumption of the run.
    error : str
        First line of the error message.
    failed_before : int
        Failed or timed-out attempts older than this outcome (other runs, and
        with ``detail`` the earlier attempts in the job's own log).
    """

    module: str
    module_run: str
    number: str
    status: str
    run_dir: str
    time: float
    error: str = ""
    log: str = ""
    failed_before: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.module_run, self.number


@dataclass
class RunStatus:
    """One run folder: its record and the job counts of each of its module runs."""

    run_dir: str
    run_name: str
    status: str
    started: str = ""
    finished: str = ""
    host: str = ""
    pid: int = 0
    config_file: str = ""
    config_copy: str = ""  # absolute path of the copy inside the run folder, "" if absent
    config_changed: bool = False  # config_file differs from the configuration the run started with
    selection: dict | None = None
    batch: dict = field(default_factory=dict)
    modules: list = field(default_factory=list)  # [{"module_run", "module", "status"}]
    counts: dict = field(default_factory=dict)  # module run -> {status: count}
    missing: dict = field(default_factory=dict)  # module run -> [numbers]
    numbers_unknown: bool = False  # unfinished, and no selection nor job tells what it was to process
    problems: list = field(default_factory=list)


@dataclass
class StatusReport:
    """The status of every run found, and the newest outcome of each job."""

    runs: list = field(default_factory=list)  # RunStatus, oldest first
    outcomes: list = field(default_factory=list)  # Outcome, the newest of each (module run, number)
    module_runs: list = field(default_factory=list)  # [module_run, module] in first-seen order
    unreadable: list = field(default_factory=list)  # run folders whose run.json cannot be read

    def not_done(self) -> list[Outcome]:
        """Outcomes that need a re-run (failed, timeout, skipped, missing)."""
        return [o for o in self.outcomes if o.status in NOT_DONE]

    def failures(self) -> list[Outcome]:
        """Failed and timed-out jobs."""
        return [o for o in self.outcomes if o.status in ("failed", "timeout")]

    def unfinished_runs(self) -> list[RunStatus]:
        """Runs that were interrupted or are still running."""
        return [r for r in self.runs if r.status in _UNFINISHED_RUN]

    def runs_to_redo(self) -> list[RunStatus]:
        """Runs owning a job that is not done (running runs excluded), oldest first."""
        wanted = {o.run_dir for o in self.not_done()}
        wanted |= {r.run_dir for r in self.runs if r.numbers_unknown}
        return [r for r in self.runs if r.run_dir in wanted and r.status != "running"]

    def counts(self) -> dict[str, dict[str, int]]:
        """Module run -> column -> count, over the newest outcomes."""
        table = {name: {column: 0 for column, _ in COLUMNS} for name, _ in self.module_runs}
        column_of = {status: column for column, statuses in COLUMNS for status in statuses}
        for outcome in self.outcomes:
            table.setdefault(outcome.module_run, {column: 0 for column, _ in COLUMNS})
            table[outcome.module_run][column_of[outcome.status]] += 1
        return table

    def exit_status(self) -> int:
        """0 when every job is done (or lacks an input), 1 otherwise."""
        if self.not_done() or self.unreadable or any(r.numbers_unknown for r in self.runs):
            return EXIT_NOT_DONE
        return EXIT_OK

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {"runs": [asdict(r) for r in self.runs], "outcomes": [asdict(o) for o in self.outcomes],
                "module_runs": [list(m) for m in self.module_runs], "unreadable": list(self.unreadable)}

    @classmethod
    def from_dict(cls, data: dict) -> "StatusReport":
        """Inverse of :meth:`to_dict` (extra keys, such as the commands, are ignored)."""
        run_keys = {f.name for f in fields(RunStatus)}
        outcome_keys = {f.name for f in fields(Outcome)}
        return cls(runs=[RunStatus(**{k: v for k, v in r.items() if k in run_keys}) for r in data["runs"]],
                   outcomes=[Outcome(**{k: v for k, v in o.items() if k in outcome_keys})
                             for o in data["outcomes"]],
                   module_runs=[list(m) for m in data["module_runs"]],
                   unreadable=list(data.get("unreadable", [])))


# -- reading one run ------------------------------------------------------
def _epoch(text) -> float:
    if not text:
        return 0.0
    try:
        return dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0


def _first_line(text) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else ""


def _read_json(path: Path):
    """Parsed JSON of a file; None if absent; ValueError text if unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"{path}: unreadable ({error})"


def _status_files(folder: Path) -> list[dict]:
    """Rows of the status files of one module run (temporary files skipped)."""
    rows = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return rows
    for entry in entries:
        if entry.name.endswith(".json") and not entry.name.startswith("."):
            row = _read_json(Path(entry.path))
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _failed_attempts_in_log(log: str, module_run: str, number: str) -> int:
    """Failed or timed-out attempts recorded in a job's log (one end line per attempt)."""
    prefix = f"{module_run} {number or 'serial'}: "
    count = 0
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                at = line.find(prefix)
                if at >= 0 and line.startswith(("failed in ", "timeout in "), at + len(prefix)):
                    count += 1
    except OSError:
        return 0
    return count


def _expected_numbers(record: dict, rows: dict) -> list[str] | None:
    """Numbers the run was meant to process: its selection, else its first per-number module run's."""
    selection = record.get("selection") or {}
    if selection.get("numbers"):
        return list(selection["numbers"])
    for entry in record.get("modules", []):
        numbers = [number for (name, number) in rows if name == entry["module_run"] and number]
        if numbers:
            return sort_numbers(numbers)
    return None


def read_run(run_dir: str | Path, detail: bool = False, config_hashes: dict | None = None
             ) -> tuple[RunStatus, list[Outcome]] | None:
    """Status of one run folder and the outcome of each of its jobs.

    Parameters
    ----------
    run_dir : path
        A folder holding ``run.json``.
    detail : bool
        Also count the failed attempts in the logs of jobs that ended done
        after a resumption.
    config_hashes : dict, optional
        Cache of configuration file hashes shared between runs.

    Returns
    -------
    (RunStatus, list of Outcome) or None
        None if the folder has no readable record.
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if record is None:
        return None
    found, recorded = Path(run_dir).absolute(), record.get("run_dir")
    try:
        same = bool(recorded) and os.path.samefile(found, recorded)
    except OSError:
        same = False
    run_dir = Path(recorded) if same else found  # a moved folder is reported where it was found
    run_time = max([_epoch(record.get("started"))] + [_epoch(t) for t in record.get("resumed", [])])
    copy = run_dir / record["config_copy"] if record.get("config_copy") else None
    status = RunStatus(
        run_dir=str(run_dir), run_name=record.get("run_name", ""), status=record.get("status", "unknown"),
        started=record.get("started") or "", finished=record.get("finished") or "",
        host=record.get("host", ""), pid=int(record.get("pid") or 0),
        config_file=record.get("config_file", ""), config_copy=str(copy) if copy and copy.is_file() else "",
        selection=record.get("selection"), batch=dict(record.get("batch") or {}),
        modules=[{"module_run": m["module_run"], "module": m.get("module", ""), "status": m.get("status", "")}
                 for m in record.get("modules", [])])
    if config_hashes is not None and status.config_file and record.get("config_sha256"):
        if status.config_file not in config_hashes:
            try:
                config_hashes[status.config_file] = hashlib.sha256(Path(status.config_file).read_bytes()).hexdigest()
            except OSError:
                config_hashes[status.config_file] = None
        current = config_hashes[status.config_file]
        status.config_changed = current is not None and current != record["config_sha256"]

    table = _read_json(run_dir / "jobs.json")
    if isinstance(table, str):
        status.problems.append(table)
        table = None
    rows: dict[tuple[str, str], dict] = {}
    for row in table or []:
        rows[(row.get("module_run", ""), str(row.get("number", "")))] = row
    with_rows = {name for name, _ in rows}

    run_unfinished = status.status in _UNFINISHED_RUN
    unfinished = []
    for entry in status.modules:
        name = entry["module_run"]
        if entry["status"] in _UNFINISHED_MODULE or (run_unfinished and name not in with_rows) \
                or (table is None and entry["status"] != "pending"):
            unfinished.append(name)
            # Jobs finished after the last jobs.json write (or by a killed run) left their status files.
            for row in _status_files(run_dir / name / "logs" / "status"):
                key = (row.get("module_run", name), str(row.get("number", "")))
                known = rows.get(key)
                if known is None or float(row.get("started") or 0) > float(known.get("started") or 0):
                    rows[key] = row

    expected = _expected_numbers(record, rows)
    where = str(run_dir)
    module_of = {m["module_run"]: m["module"] for m in status.modules}
    outcomes = []
    for (name, number), row in rows.items():
        job_status = row.get("status", "")
        if job_status == "done_previously":
            job_status = "done"
        if job_status not in (*DONE, *NOT_DONE, *ABSENT):
            status.problems.append(f"{name} {number}: unknown job status {job_status!r}")
            continue
        started = row.get("started")
        outcome = Outcome(module=row.get("module") or module_of.get(name, ""), module_run=name, number=number,
                          status=job_status, run_dir=where,
                          time=float(started) if started else run_time,
                          error=_first_line(row.get("error")), log=row.get("log") or "")
        if detail and job_status == "done" and record.get("resumed") and outcome.log:
            outcome.failed_before = _failed_attempts_in_log(outcome.log, name, number)
        outcomes.append(outcome)
    for name in unfinished:
        present = {number for (mr, number) in rows if mr == name}
        if present == {""}:
            continue  # a serial module run: one job, which has a row
        if expected is None:
            if not present:
                status.numbers_unknown = True
            continue
        lacking = [n for n in expected if n not in present]
        if lacking:
            status.missing[name] = lacking
            outcomes.extend(Outcome(module=module_of.get(name, ""), module_run=name, number=n, status="missing",
                                    run_dir=where, time=run_time) for n in lacking)
    for outcome in outcomes:
        counts = status.counts.setdefault(outcome.module_run, {})
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return status, outcomes


# -- many runs ------------------------------------------------------------
def find_run_dirs(path: str | Path) -> list[Path]:
    """Run folders at ``path``: the folder itself, or every child folder holding a record.

    Raises
    ------
    StatusError
        If ``path`` does not exist or holds no run.
    """
    path = Path(path)
    if (path / RECORD_NAME).is_file():
        return [path]
    if not path.exists():
        raise StatusError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise StatusError(f"{path}: not a directory (give an OUTPUT_DIR or a run folder)")
    found = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir() and os.path.isfile(os.path.join(entry.path, RECORD_NAME)):
                found.append(Path(entry.path))
    if not found:
        raise StatusError(f"{path}: no run folder (a folder holding {RECORD_NAME}) here or directly below")
    return found


def collect(paths, run_name: str | None = None, detail: bool = False) -> StatusReport:
    """Status of every run under ``paths``, with the newest outcome of each job.

    Parameters
    ----------
    paths : path or list of paths
        Each an ``OUTPUT_DIR`` (every run folder under it) or a run folder.
    run_name : str, optional
        Only runs of this ``RUN_NAME``.
    detail : bool
        Count failed attempts in the logs of resumed jobs (reads those logs).

    Raises
    ------
    StatusError
        If a path does not exist or holds no run.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    folders, seen = [], set()
    for path in paths:
        for folder in find_run_dirs(path):
            real = os.path.realpath(folder)
            if real not in seen:
                seen.add(real)
                folders.append(folder)
    config_hashes: dict = {}
    runs, per_run, unreadable = [], [], []
    for folder in folders:
        result = read_run(folder, detail=detail, config_hashes=config_hashes)
        if result is None:
            unreadable.append(str(Path(folder).absolute()))
            continue
        status, outcomes = result
        if run_name is not None and status.run_name != run_name:
            continue
        runs.append(status)
        per_run.append(outcomes)
    order = sorted(range(len(runs)), key=lambda i: (runs[i].started, runs[i].run_dir))
    runs = [runs[i] for i in order]
    per_run = [per_run[i] for i in order]

    # Newest outcome per job; an absence never hides an outcome. One pass, dicts only.
    best: dict[tuple[str, str], Outcome] = {}
    failure_times: dict[tuple[str, str], list[float]] = {}
    module_runs: dict[str, str] = {}
    for status in runs:
        for entry in status.modules:
            module_runs.setdefault(entry["module_run"], entry["module"])
    for outcomes in per_run:  # runs oldest first: on equal times the newer run wins
        for outcome in outcomes:
            key = outcome.key
            module_runs.setdefault(outcome.module_run, outcome.module)
            if outcome.status in ("failed", "timeout"):
                failure_times.setdefault(key, []).append(outcome.time)
            current = best.get(key)
            if current is None:
                best[key] = outcome
                continue
            absent, current_absent = outcome.status in ABSENT, current.status in ABSENT
            if (absent, current_absent) == (True, False):
                continue
            if (current_absent and not absent) or outcome.time >= current.time:
                best[key] = outcome
    for key, outcome in best.items():
        if outcome.status == "done":
            outcome.failed_before += sum(1 for t in failure_times.get(key, ()) if t < outcome.time)
    position = {name: i for i, name in enumerate(module_runs)}
    rank = {number: i for i, number in enumerate(sort_numbers({number for _, number in best}))}
    ordered = sorted(best.values(), key=lambda o: (position[o.module_run], rank[o.number]))
    return StatusReport(runs=runs, outcomes=ordered, module_runs=[[n, m] for n, m in module_runs.items()],
                        unreadable=unreadable)


# -- commands -------------------------------------------------------------
def rerun_commands(report: StatusReport, original_config: bool = False) -> list[list[str]]:
    """``shapepipe_run`` commands that redo exactly the jobs not done, one per run.

    Parameters
    ----------
    report : StatusReport
    original_config : bool
        Use the configuration file the run was started with (``config_file``,
        e.g. after fixing it) instead of the copy kept in the run folder.

    Returns
    -------
    list of list of str
        Argument vectors (no shell).
    """
    commands = []
    for run in report.runs_to_redo():
        config = run.config_file if original_config or not run.config_copy else run.config_copy
        commands.append(["shapepipe_run", "-c", config, "--resume", run.run_dir])
    return commands


def _array_task(run: RunStatus) -> tuple[str, str, int] | None:
    """(scheduler, batch script, array index) of a run started by a batch array, else None.

    The index is the batch system's own (Grid Engine's SGE_TASK_ID counts from 1).
    """
    batch = run.batch
    script = batch.get("SHAPEPIPE_BATCH_SCRIPT")
    if not script:
        return None
    if batch.get("SLURM_ARRAY_TASK_ID") and batch.get("SLURM_ARRAY_JOB_ID"):
        scheduler, index, workdir = "slurm", batch["SLURM_ARRAY_TASK_ID"], batch.get("SLURM_SUBMIT_DIR")
    elif batch.get("PBS_ARRAY_INDEX"):
        scheduler, index, workdir = "pbspro", batch["PBS_ARRAY_INDEX"], batch.get("PBS_O_WORKDIR")
    elif batch.get("PBS_ARRAYID"):
        scheduler, index, workdir = "torque", batch["PBS_ARRAYID"], batch.get("PBS_O_WORKDIR")
    elif batch.get("SGE_TASK_ID") not in (None, "", "undefined"):
        scheduler, index, workdir = "sge", batch["SGE_TASK_ID"], batch.get("SGE_O_WORKDIR")
    else:
        return None
    try:
        index = int(index)
    except ValueError:
        return None
    if not os.path.isabs(script) and workdir:
        script = os.path.join(workdir, script)  # the script was named relative to the submission folder
    return scheduler, script, index


def _ranges(indices) -> list[tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive values."""
    spans: list[list[int]] = []
    for index in sorted(set(indices)):
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return [(a, b) for a, b in spans]


def _range_text(spans) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def resubmit_commands(report: StatusReport) -> list[list[str]]:
    """Batch commands resubmitting the array tasks whose runs have jobs not done.

    SLURM: ``sbatch --array=LIST SCRIPT``; Torque (``PBS_ARRAYID``):
    ``qsub -t LIST SCRIPT``; Grid Engine (``SGE_TASK_ID``): ``qsub -t A-B
    SCRIPT`` per range (its ``-t`` takes one range); PBS Pro (``PBS_ARRAY_INDEX``): ``qsub -J A-B
    SCRIPT`` per range, since its arrays take ranges only and hold at least
    two sub-jobs: a lone index is paired with a neighbouring task of the same
    array, which resumes its own finished run and redoes nothing. Only runs
    whose record names the batch script (``SHAPEPIPE_BATCH_SCRIPT``) count.
    """
    known: dict[tuple[str, str], set[int]] = {}
    for run in report.runs:
        task = _array_task(run)
        if task is not None:
            known.setdefault(task[:2], set()).add(task[2])
    redo: dict[tuple[str, str], set[int]] = {}
    for run in report.runs_to_redo():
        task = _array_task(run)
        if task is not None:
            redo.setdefault(task[:2], set()).add(task[2])
    commands = []
    for (scheduler, script), indices in redo.items():
        spans = _ranges(indices)
        if scheduler == "slurm":
            commands.append(["sbatch", f"--array={_range_text(spans)}", script])
        elif scheduler == "torque":
            commands.append(["qsub", "-t", _range_text(spans), script])
        elif scheduler == "sge":
            commands += [["qsub", "-t", f"{first}-{last}", script] for first, last in spans]
        else:
            for first, last in spans:
                if first == last:
                    if first + 1 in known[(scheduler, script)]:
                        last = first + 1
                    elif first - 1 in known[(scheduler, script)]:
                        first = first - 1
                    else:
                        continue  # a one-task array cannot be resubmitted as an array: shapepipe_run does it
                commands.append(["qsub", "-J", f"{first}-{last}", script])
    return commands


# -- text report ----------------------------------------------------------
def _table(header, lines) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    text = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in lines]
    return [line.rstrip() for line in text]


def _number_label(outcome: Outcome) -> str:
    """The number, or what a job without a number is: a serial job, or the module run itself."""
    if outcome.number:
        return outcome.number
    return "(serial)" if outcome.log else "(module run)"


def _short_numbers(numbers, limit=10) -> str:
    shown = ", ".join(n or "(serial)" for n in numbers[:limit])
    return shown + (f" ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def format_report(report: StatusReport, failed_only: bool = False, detail: bool = False,
                  original_config: bool = False) -> str:
    """The readable report printed by ``shapepipe_status``."""
    lines = []
    by_status: dict[str, int] = {}
    for run in report.runs:
        by_status[run.status] = by_status.get(run.status, 0) + 1
    lines.append(f"{len(report.runs)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    counts = report.counts()
    modules: dict[str, list[str]] = {}
    for name, module in report.module_runs:
        modules.setdefault(module, []).append(name)
    header = ("module run",) + tuple(column for column, _ in COLUMNS)
    for module, names in modules.items():
        rows = [(name, *(counts[name][c] for c, _ in COLUMNS)) for name in names]
        if failed_only:
            rows = [r for r in rows if any(r[i + 1] for i, (c, _) in enumerate(COLUMNS) if c not in ("done",))]
        if rows:
            lines += ["", f"module {module}"] + _table(header, rows)

    failures = report.failures()
    if failures:
        lines += ["", f"failures ({len(failures)}):"]
        lines += _table(("run", "module run", "number", "status", "error", "log"),
                        [(Path(o.run_dir).name, o.module_run, _number_label(o), o.status, o.error or "-",
                          o.log or "-") for o in failures])
    missing: dict[tuple[str, str], list[str]] = {}
    for outcome in report.outcomes:
        if outcome.status in ("missing", "skipped_upstream"):
            missing.setdefault((outcome.run_dir, f"{outcome.module_run} {outcome.status}"), []).append(outcome.number)
    if missing:
        lines += ["", "not attempted:"]
        lines += [f"  {Path(run_dir).name}: {what}: {_short_numbers(numbers)}"
                  for (run_dir, what), numbers in missing.items()]
    unfinished = report.unfinished_runs()
    if unfinished:
        lines += ["", f"interrupted or running runs ({len(unfinished)}):"]
        for run in unfinished:
            where = [m["module_run"] for m in run.modules if m["status"] in ("running", "interrupted")]
            lacking = sum(len(v) for v in run.missing.values())
            text = f"  {run.run_dir}: {run.status}"
            if run.status == "running":
                text += f" (process {run.pid} on {run.host or 'unknown host'})"
            text += f", started {run.started}"
            if where:
                text += f", in {', '.join(where)}"
            text += f"; {lacking} job(s) missing" if not run.numbers_unknown else "; numbers to process unknown"
            lines.append(text)
    problems = [p for run in report.runs for p in run.problems]
    problems += [f"{folder}: {RECORD_NAME} cannot be read" for folder in report.unreadable]
    if problems:
        lines += ["", "problems reading runs:"] + [f"  {p}" for p in problems]
    if detail:
        shown = [o for o in report.outcomes if not failed_only or o.status in NOT_DONE]
        lines += ["", "jobs:"]
        lines += _table(("module run", "number", "status", "run"),
                        [(o.module_run, _number_label(o), _detail_status(o), Path(o.run_dir).name)
                         for o in shown])

    commands = rerun_commands(report, original_config=original_config)
    if commands:
        lines += ["", "to re-run exactly the failures:"] + [f"  {shlex.join(c)}" for c in commands]
        resubmit = resubmit_commands(report)
        if resubmit:
            lines += ["or resubmit the array tasks concerned (each resumes its own run):"]
            lines += [f"  {shlex.join(c)}" for c in resubmit]
        changed = sorted({r.config_file for r in report.runs_to_redo() if r.config_changed})
        if changed and not original_config:
            lines += [f"note: {', '.join(changed)} changed since the run started; the commands above use the "
                      "run's own copy: add --original-config to use the edited file"]
    running = [r for r in report.runs if r.status == "running"]
    if running:
        lines += ["", f"{len(running)} run(s) still running: no command given for them"]
    if not commands and report.exit_status() == EXIT_OK:
        lines += ["", "every job is done"]
    return "\n".join(lines)


def _detail_status(outcome: Outcome) -> str:
    if outcome.status == "done" and outcome.failed_before:
        plural = "s" if outcome.failed_before > 1 else ""
        return f"done (after {outcome.failed_before} failed attempt{plural})"
    return outcome.status


# -- memory ---------------------------------------------------------------
def peak_memory(run_dirs) -> dict[str, dict]:
    """Largest peak real memory of a job (``peak_memory_mb`` of the job tables), per module run.

    Returns ``{module_run: {"peak_memory_mb", "peak_rss_mb", "number", "run_dir", "jobs"}}`` over
    the jobs that ran (``done``, ``failed``, ``timeout``, ``unprocessable``), in first-seen order.
    """
    table: dict[str, dict] = {}
    for run_dir in run_dirs:
        rows = _read_json(Path(run_dir) / "jobs.json")
        rows = rows.get("jobs", []) if isinstance(rows, dict) else rows if isinstance(rows, list) else []
        for row in rows:
            if row.get("status") not in ("done", "failed", "timeout", "unprocessable"):
                continue
            entry = table.setdefault(row.get("module_run", "?"), {"peak_memory_mb": 0.0, "peak_rss_mb": 0.0,
                                                                   "number": "", "run_dir": "", "jobs": 0})
            entry["jobs"] += 1
            value = float(row.get("peak_memory_mb") or 0.0)
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], float(row.get("peak_rss_mb") or 0.0))
            if value > entry["peak_memory_mb"]:
                entry.update(peak_memory_mb=value, number=row.get("number", ""), run_dir=str(run_dir))
    return table


def format_memory(table: dict[str, dict]) -> list[str]:
    """Lines of the memory table printed by ``shapepipe_status``."""
    if not table:
        return []
    rows = [(name, entry["jobs"], f"{entry['peak_memory_mb']:.0f}", f"{entry['peak_rss_mb']:.0f}",
             entry["number"] or "serial") for name, entry in table.items()]
    return ["", "peak memory per job (real: anonymous + shared pages; RSS: with file pages), MB:"] + _table(
        ("module run", "jobs", "real", "RSS", "largest job"), rows)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="shapepipe_status",
        description="Done, failed and missing jobs of one or many runs (e.g. every array task of a "
                    "campaign), and the commands that re-run exactly the failures.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="an OUTPUT_DIR (every run in it) or a run folder")
    parser.add_argument("--run-name", metavar="NAME", help="only the runs of this RUN_NAME")
    parser.add_argument("--failed-only", action="store_true", help="show only what is not done")
    parser.add_argument("--detail", action="store_true",
                        help="list every job, with the failed attempts before a success")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    parser.add_argument("--original-config", action="store_true",
                        help="re-run with the configuration file each run was started with (e.g. after "
                             "fixing it) instead of the copy kept in the run folder")
    return parser


def main(argv=None) -> int:
    """Entry point of ``shapepipe_status``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        report = collect(args.paths, run_name=args.run_name, detail=args.detail)
    except StatusError as error:
        print(f"shapepipe_status: {error}", file=sys.stderr)
        return EXIT_BAD_PATH
    if args.run_name is not None and not report.runs:
        print(f"shapepipe_status: no run named {args.run_name!r} under {', '.join(args.paths)}", file=sys.stderr)
        return EXIT_BAD_PATH
    status = report.exit_status()
    if args.json:
        data = report.to_dict()
        if args.failed_only:
            data["outcomes"] = [o for o in data["outcomes"] if o["status"] in NOT_DONE]
        data["rerun_commands"] = rerun_commands(report, original_config=args.original_config)
        data["resubmit_commands"] = resubmit_commands(report)
        data["exit_status"] = status
        data["peak_memory"] = peak_memory(r.run_dir for r in report.runs)
        print(json.dumps(data, indent=1))
    else:
        print(format_report(report, failed_only=args.failed_only, detail=args.detail,
                            original_config=args.original_config))
        memory = format_memory(peak_memory(r.run_dir for r in report.runs))
        if memory:
            print("\n".join(memory))
    return status


if __name__ == "__main__":
    sys.exit(main())
