"""Run records and run references (``last:``, ``all:``, ``run:``).

Every run folder holds ``run.json``, rewritten atomically whenever the state
of the run or of one of its module runs changes::

    {"format": 1, "run_name": ..., "run_dir": <absolute>, "status": ...,
     "config_file": ..., "config_copy": ..., "config_sha256": ...,
     "started": ..., "finished": ..., "pid": ..., "host": ...,
     "modules": [{"module_run", "module", "version", "status", "output_dir",
                  "started", "finished", "counts"}, ...]}

Module-run statuses: ``pending``, ``running``, ``done`` (every job ok),
``partial`` (some jobs failed; the successful numbers still resolve),
``failed`` (no job ok, or the module run could not start) and
``interrupted`` (the process died while it ran). Only ``done`` and
``partial`` module runs resolve references.

Runs are discovered by scanning ``OUTPUT_DIR/*/run.json``; the text run log
of ShapePipe (``RUN_LOG_NAME``) is written for people and never read.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_text_atomic
from .errors import ReferenceError_

RECORD_NAME = "run.json"
RESOLVABLE = ("done", "partial")
_RUN_SUFFIX = re.compile(r"^(?P<base>.+?)_run_(?P<index>\d+)$", re.IGNORECASE)


def split_module_run(name: str) -> tuple[str, int | None]:
    """``'sextractor_runner_run_2'`` -> ``('sextractor_runner', 2)``."""
    match = _RUN_SUFFIX.match(name.strip())
    if match:
        return match.group("base").lower(), int(match.group("index"))
    return name.strip().lower(), None


def write_record(record: dict) -> None:
    """Write a run record atomically into its run folder."""
    write_text_atomic(Path(record["run_dir"]) / RECORD_NAME, json.dumps(record, indent=1, sort_keys=True))


def process_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie.

    A killed process whose parent is gone stays a zombie when the init
    process of a container does not reap orphans; it must count as dead.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True





def read_record(run_dir: str | Path) -> dict | None:
    """Read a run record; a run whose process died is marked interrupted.

    Returns None if the folder holds no readable record.
    """
    path = Path(run_dir) / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "running" and record.get("host") == socket.gethostname():
        if not process_alive(int(record.get("pid", 0) or 0)):
            record["status"] = "interrupted"
            for entry in record.get("modules", []):
                if entry.get("status") == "running":
                    entry["status"] = "interrupted"
    return record


def scan_runs(output_dir: str | Path) -> list[dict]:
    """Every run record under ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    records = []
    if not output_dir.is_dir():
        return records
    for child in output_dir.iterdir():
        if child.is_dir() and (child / RECORD_NAME).is_file():
            record = read_record(child)
            if record is not None:
                records.append(record)
    records.sort(key=lambda r: (r.get("started", ""), r.get("run_dir", "")))
    return records


@dataclass(frozen=True)
class Reference:
    """A parsed run reference."""

    kind: str  # 'last', 'all' or 'run'
    module: str  # canonical module name
    index: int | None  # _run_N suffix, or None
    run: str | None  # run name for 'run:'
    text: str  # as written

    def matches(self, entry: dict) -> bool:
        """Whether a module-run entry of a record is the one referred to."""
        if entry.get("module") != self.module:
            return False
        if self.index is None:
            return True
        return entry.get("module_run") in (f"{self.module}_run_{self.index}",) or (
            self.index == 1 and entry.get("module_run") == self.module
        )


def parse_reference(text: str, canonical) -> Reference | None:
    """Parse ``last:M``, ``all:M``, ``run:RUN:M`` (or ShapePipe's ``RUN:M``).

    Parameters
    ----------
    text : str
        The value as written.
    canonical : callable
        Maps a module name or alias to its canonical name; raises KeyError
        (with suggestions) for an unknown module.

    Returns
    -------
    Reference or None
        None when ``text`` is not a reference (a plain path).

    Raises
    ------
    KeyError
        If the module is unknown.
    """
    value = text.strip()
    if ":" not in value or os.path.isdir(value):
        return None
    head, _, rest = value.partition(":")
    kind = head.lower()
    if kind in ("last", "all"):
        run_name, module = None, rest
    elif kind == "run":
        run_name, _, module = rest.rpartition(":")
        if not run_name:
            raise KeyError(f"expected run:RUN_NAME:MODULE, got {text!r}")
    else:  # ShapePipe's <search string>:<module>
        kind, run_name, module = "run", head, rest
    base, index = split_module_run(module)
    try:
        name = canonical(base)
    except KeyError:
        # 'x_run_2' where the module itself is named 'x_run'? try the whole name.
        if index is None:
            raise
        name, index = canonical(module.strip()), None
    return Reference(kind=kind, module=name, index=index, run=run_name, text=value)


def _describe_candidates(records, reference: Reference) -> str:
    seen = []
    for record in reversed(records):
        for entry in record.get("modules", []):
            if entry.get("module") == reference.module:
                seen.append(f"{Path(record['run_dir']).name}/{entry['module_run']} ({entry.get('status')})")
    if not seen:
        return "no run of this module was found"
    more = f" and {len(seen) - 8} more" if len(seen) > 8 else ""
    return "candidates: " + ", ".join(seen[:8]) + more


def resolve_reference(reference: Reference, records: list[dict], output_dir: str | Path) -> list[str]:
    """Output folders a reference stands for.

    Parameters
    ----------
    reference : Reference
    records : list of dict
        Run records, oldest first (the current run included if it counts).
    output_dir : path
        Where the records were searched, for messages.

    Raises
    ------
    ReferenceError_
        Saying what was searched and listing the candidates.
    """
    def successful(record):
        return [
            entry for entry in record.get("modules", [])
            if reference.matches(entry) and entry.get("status") in RESOLVABLE
            and entry.get("outputs_deleted") is None
        ]

    if reference.kind == "run":
        named = [r for r in records if Path(r["run_dir"]).name == reference.run]
        if not named:
            named = [r for r in records if r.get("run_name") == reference.run]
        if not named:
            named = [r for r in records if reference.run in Path(r["run_dir"]).name]
            if len(named) > 1:
                names = ", ".join(Path(r["run_dir"]).name for r in named[-5:])
                raise ReferenceError_(
                    f"{reference.text}: {len(named)} runs under {output_dir} match {reference.run!r} "
                    f"({names}); give the full run folder name"
                )
        if not named:
            runs = ", ".join(Path(r["run_dir"]).name for r in records[-8:]) or "none"
            raise ReferenceError_(
                f"{reference.text}: no run named {reference.run!r} under {output_dir} (runs found: {runs})"
            )
        records = named[-1:]

    found = []
    for record in reversed(records):
        entries = successful(record)
        if entries:
            found.append(entries[-1]["output_dir"])
            if reference.kind != "all":
                break
    if not found:
        what = f"module run {reference.module}_run_{reference.index}" if reference.index else f"module {reference.module}"
        raise ReferenceError_(
            f"{reference.text}: no successful (done or partial) {what} in the {len(records)} run record(s) "
            f"under {output_dir}; {_describe_candidates(records, reference)}"
        )
    return found


def new_record(run_name: str, run_dir: Path, config_file: Path, config_copy: str, config_hash: str,
               modules: list[dict], started: str) -> dict:
    """A fresh record for a run that is starting."""
    from . import __version__

    return {
        "format": 1,
        "shapepipe_version": __version__,
        "run_name": run_name,
        "run_dir": str(run_dir),
        "config_file": str(config_file),
        "config_copy": config_copy,
        "config_sha256": config_hash,
        "started": started,
        "finished": None,
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "resumed": [],
        "modules": modules,
    }


# -- reading records for the data butler (shapepipe.repository) --------------------------------
JOB_TABLE_NAME = "jobs.json"
_MODULE_ENTRY_KEYS = ("module", "module_run", "status", "output_dir")


def check_record(run_dir: str | Path) -> tuple[dict | None, str | None]:
    """Read a run record and check its structure.

    Returns
    -------
    record, problem : dict or None, str or None
        ``(record, None)``, or ``(None, message naming the file)`` when the
        record is unreadable or lacks what a reader of products needs.
    """
    path = Path(run_dir) / RECORD_NAME
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"{path}: unreadable run record ({error})"
    record = read_record(run_dir)
    if not isinstance(record, dict) or not isinstance(record.get("modules"), list) \
            or not record.get("run_dir"):
        return None, f"{path}: damaged run record (no run_dir or modules list)"
    for entry in record["modules"]:
        missing = [key for key in _MODULE_ENTRY_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            return None, f"{path}: damaged run record (a module entry lacks {', '.join(missing)})"
    return record, None


def scan_run_folders(output_dir: str | Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Every run folder under ``output_dir`` with its record, oldest first, and the damaged ones.

    Returns
    -------
    runs : list of (Path, dict)
        Folder (as found now, even if moved since the run) and record.
    problems : list of str
        One message per folder whose ``run.json`` is unreadable or damaged.
    """
    output_dir = Path(output_dir)
    runs, problems = [], []
    if not output_dir.is_dir():
        return runs, problems
    for child in output_dir.iterdir():
        if child.is_dir() and (child / RECORD_NAME).is_file():
            record, problem = check_record(child)
            if problem:
                problems.append(problem)
            else:
                runs.append((child, record))
    runs.sort(key=lambda item: (str(item[1].get("started") or ""), item[0].name))
    return runs, sorted(problems)


def job_rows(run_dir: str | Path, record: dict) -> list[dict]:
    """Rows of a run's job table (module_run, number, status, outputs, ...).

    ``jobs.json`` holds the module runs it was last written for; the module
    runs of the record it lacks (a run still going or interrupted) are read
    from their status files (``<module_run>/logs/status/*.json``), which are
    written after a job's outputs are published.

    Raises
    ------
    ValueError
        If ``jobs.json`` or a status file exists but is unreadable (the
        message names it).
    """
    run_dir = Path(run_dir)
    path = run_dir / JOB_TABLE_NAME
    rows = []
    if path.is_file():
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable job table ({error})") from None
        table = table.get("jobs", []) if isinstance(table, dict) else table
        if not isinstance(table, list) or not all(isinstance(row, dict) for row in table):
            raise ValueError(f"{path}: damaged job table (not a list of rows)")
        rows = list(table)
    covered = {row.get("module_run") for row in rows}
    for entry in record.get("modules", []):
        name = entry["module_run"]
        if name in covered or entry.get("status") == "pending":
            continue
        folder = run_dir / name / "logs" / "status"
        if not folder.is_dir():
            continue
        for status_file in sorted(folder.glob("*.json")):
            if status_file.name.startswith("."):
                continue
            try:
                row = json.loads(status_file.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{status_file}: unreadable job status file ({error})") from None
            row.setdefault("module_run", name)
            rows.append(row)
    return rows
