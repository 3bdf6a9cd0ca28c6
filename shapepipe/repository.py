"""Data by name: every product of the runs under an output folder, by dataset type and data id.

::

    from shapepipe import Repository

    repo = Repository("output")
    repo.dataset_types()                      # ['exposure', 'final_cat', 'psf', 'sexcat', ...]
    repo.query("sexcat", tile="244.252")      # [{'tile': '244.252'}]
    catalogue = repo.get("sexcat", tile="244.252")
    path = repo.get("sexcat_filename", tile="244.252")
    header = repo.get("exposure_md", exposure=2113737, ccd=10)   # header only

The products are found from the run records (``run.json``) and job tables
(``jobs.json``, or the job status files of a run still going): each output
file a job recorded is matched against the products its module declares
(:mod:`shapepipe.datasets`). The file system is not walked; ``get`` only
opens the one file it returns.

Which product: for each data id, the newest run (by start time; the last
module run within it) in which the job that wrote it is ``done``. Products
of jobs with any other status (failed, timed out, unprocessable, ...) are
invisible unless ``include_failed=True``. ``run=`` pins one run folder (its
full name, or a ``RUN_NAME`` for the newest run of that name).

Errors never fall back to a wrong product: a missing data id names the
dataset, the data id and the runs searched; a recorded file deleted by hand
names the file and the run; a damaged run record or job table under the
output folder stops every unpinned lookup with a message naming it (a newer
product might be recorded there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .datasets import DERIVED, DatasetTable, DatasetType, UnknownDataset
from .errors import ShapePipeError
from .records import job_rows, scan_run_folders

#: Job statuses whose products are visible by default.
VISIBLE = ("done", "done_previously")


class RepositoryError(ShapePipeError, LookupError):
    """A product cannot be returned; the message says what was asked and what was searched."""


@dataclass(frozen=True)
class ProductRef:
    """Where one product lies and who wrote it."""

    dataset: str
    data_id: dict
    path: Path
    run: str  # run folder name
    run_dir: Path
    run_name: str
    module_run: str
    module: str
    status: str  # status of the job that wrote it
    order: int  # global order: later is newer

    @property
    def visible(self) -> bool:
        return self.status in VISIBLE


def _same(stored, given) -> bool:
    if isinstance(stored, int) and not isinstance(stored, bool):
        try:
            return stored == int(str(given).strip())
        except ValueError:
            return False
    return str(stored) == str(given).strip()


def _describe_id(data_id: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in data_id.items()) or "(no data id)"


def _key(number: str, extra: dict) -> tuple:
    return (number, tuple(sorted((k, str(v)) for k, v in extra.items())))


class Repository:
    """The products of every run under an output folder, by dataset type and data id.

    Parameters
    ----------
    output_dir : path
        A run root's ``OUTPUT_DIR`` (the folder holding the run folders).
    module_dirs : list of path, optional
        Folders of user modules (``[EXECUTION] MODULE_DIR``) whose products to know.
    table : shapepipe.datasets.DatasetTable, optional
        Dataset types (default: declared by the built-in, entry-point and
        ``module_dirs`` modules).
    """

    def __init__(self, output_dir, module_dirs=(), table: DatasetTable | None = None):
        self.output_dir = Path(output_dir)
        if not self.output_dir.is_dir():
            raise RepositoryError(f"output folder {self.output_dir} does not exist")
        if table is None:
            from .module import default_registry

            table = DatasetTable(default_registry(module_dirs))
        self.table = table
        self._index = None

    # -- index ------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget the index; the next call reads the run records again."""
        self._index = None

    def _build(self):
        runs, problems = scan_run_folders(self.output_dir)
        index: dict[str, dict[tuple, list[ProductRef]]] = {}
        unmatched: dict[str, int] = {}
        names, order = [], 0
        for run_dir, record in runs:
            try:
                rows = job_rows(run_dir, record)
            except ValueError as error:
                problems.append(str(error))
                continue
            names.append(run_dir.name)
            entries = {entry["module_run"]: entry for entry in record["modules"]}
            position = {name: i for i, name in enumerate(entries)}
            rows = sorted(rows, key=lambda row: (position.get(row.get("module_run"), len(position)),
                                                 str(row.get("number", ""))))
            for row in rows:
                entry = entries.get(row.get("module_run"))
                outputs = row.get("outputs") or []
                if entry is None or not outputs:
                    continue
                module = entry["module"]
                folder = self._output_folder(run_dir, record, entry)
                for relative in outputs:
                    found = self.table.classify(module, str(relative))
                    if found is None:
                        unmatched[module] = unmatched.get(module, 0) + 1
                        continue
                    dataset, data_id, number = found
                    extra = {k: data_id[k] for k in dataset.product.extra_keys}
                    order += 1
                    ref = ProductRef(dataset.name, data_id, folder / relative, run_dir.name, run_dir,
                                     str(record.get("run_name", "")), entry["module_run"], module,
                                     str(row.get("status", "")), order)
                    index.setdefault(dataset.name, {}).setdefault(_key(number, extra), []).append(ref)
        self._index = {"products": index, "runs": names, "problems": problems, "unmatched": unmatched,
                       "records": {run_dir.name: record for run_dir, record in runs}}
        return self._index

    def _output_folder(self, run_dir: Path, record: dict, entry: dict) -> Path:
        """The module run's output folder, re-rooted if the run folder moved since the run."""
        recorded = Path(entry["output_dir"])
        try:
            return run_dir / recorded.relative_to(record["run_dir"])
        except ValueError:
            return recorded

    @property
    def index(self) -> dict:
        return self._index or self._build()

    # -- public API -----------------------------------------------------------
    def dataset_types(self) -> list[str]:
        """Every declared dataset type name (``<name>_filename`` and ``<name>_md`` are also accepted by get)."""
        return self.table.names()

    def runs(self) -> list[str]:
        """Run folders with a readable record, oldest first."""
        return list(self.index["runs"])

    def problems(self) -> list[str]:
        """Damaged run records or job tables found under the output folder."""
        return list(self.index["problems"])

    def _dataset(self, name: str) -> DatasetType:
        try:
            return self.table.get(name)
        except UnknownDataset as error:
            raise RepositoryError(f"{error.args[0]} (known: {', '.join(self.table.names())})") from None

    def _pick_run(self, run: str | None) -> str | None:
        if run is None:
            problems = self.index["problems"]
            if problems:
                raise RepositoryError(
                    f"{len(problems)} damaged run record(s) or job table(s) under {self.output_dir}: a newer "
                    f"product may be recorded there, so no product is returned; repair or move the run "
                    f"folder, or pin a run with run=...:\n  " + "\n  ".join(problems))
            return None
        runs = self.index["runs"]
        run = str(run).strip()
        if run in runs:
            return run
        records = self.index["records"]
        named = [name for name in runs if records[name].get("run_name") == run]
        if not named:
            named = [name for name in runs if run in name]
            if len(named) > 1:
                raise RepositoryError(f"run {run!r} matches {len(named)} run folders under {self.output_dir} "
                                      f"({', '.join(named[-5:])}); give the full run folder name")
        if not named:
            damaged = [p for p in self.index["problems"] if run in p]
            why = f" (damaged: {damaged[0]})" if damaged else ""
            raise RepositoryError(f"no run {run!r} under {self.output_dir}{why}; runs: "
                                  f"{', '.join(runs[-8:]) or 'none'}")
        return named[-1]

    def _candidates(self, dataset: DatasetType, run: str | None, include_failed: bool):
        """``{key: newest ProductRef}`` of one dataset type."""
        chosen = {}
        for key, refs in self.index["products"].get(dataset.name, {}).items():
            for ref in reversed(refs):
                if run is not None and ref.run != run:
                    continue
                if ref.visible or include_failed:
                    chosen[key] = ref
                    break
        return chosen

    def query(self, dataset: str, run: str | None = None, include_failed: bool = False, **where) -> list[dict]:
        """Data ids of the products that exist (sorted), as dicts ``get`` takes back as keywords.

        Parameters
        ----------
        dataset : str
            Dataset type name.
        run : str, optional
            A run folder name or RUN_NAME: only its products.
        include_failed : bool
            Also products of jobs that are not ``done``.
        **where
            Keep the data ids with these key values (``tile="244.252"``).
        """
        kind = self._dataset(dataset)
        unknown = [key for key in where if key not in kind.keys]
        if unknown:
            raise RepositoryError(f"{dataset}: no data-id key {', '.join(unknown)} (keys: "
                                  f"{', '.join(kind.keys) or 'none'})")
        run = self._pick_run(run)
        ids = []
        for ref in self._candidates(kind, run, include_failed).values():
            if all(key in ref.data_id and _same(ref.data_id[key], value) for key, value in where.items()):
                ids.append(dict(ref.data_id))
        return sorted(ids, key=lambda d: tuple(sorted((k, str(v)) for k, v in d.items())))

    def refs(self, dataset: str, run: str | None = None, include_failed: bool = False) -> list[ProductRef]:
        """The products of one dataset type chosen as ``get`` would choose them."""
        kind = self._dataset(dataset)
        run = self._pick_run(run)
        return sorted(self._candidates(kind, run, include_failed).values(), key=lambda ref: ref.order)

    def find(self, dataset: str, run: str | None = None, include_failed: bool = False, **data_id) -> ProductRef:
        """Where the product of a data id lies (the file is checked to exist).

        Raises
        ------
        RepositoryError
            No such product (naming the dataset, the data id and the runs
            searched), or its recorded file is missing.
        """
        kind = self._dataset(dataset)
        located = kind.number_of(data_id)
        if located is None:
            forms = " or ".join(", ".join(keys) or "no key" for keys in kind.key_sets)
            raise RepositoryError(f"{dataset}: data id {_describe_id(data_id)} does not fit its keys ({forms})")
        pinned = self._pick_run(run)
        key = _key(*located)
        refs = self.index["products"].get(kind.name, {}).get(key, [])
        runs = [pinned] if pinned else self.index["runs"]
        chosen = None
        for ref in reversed(refs):
            if pinned is not None and ref.run != pinned:
                continue
            if ref.visible or include_failed:
                chosen = ref
                break
        if chosen is None:
            searched = f"{len(runs)} run(s) under {self.output_dir}: {', '.join(runs[-6:]) or 'none'}"
            if len(runs) > 6:
                searched += f" (and {len(runs) - 6} older)"
            hidden = [ref for ref in refs if pinned is None or ref.run == pinned]
            why = ""
            if hidden:
                last = hidden[-1]
                why = (f"; the job that wrote it in {last.run}/{last.module_run} is {last.status!r} "
                       f"(pass include_failed=True to read it anyway)")
            else:
                ids = self.query(dataset, run=pinned)
                if ids:
                    why = f"; {len(ids)} {dataset} product(s) exist, e.g. {_describe_id(ids[0])}"
            raise RepositoryError(f"no {dataset} product with {_describe_id(data_id)} in the {searched}{why}")
        if not chosen.path.is_file():
            raise RepositoryError(
                f"{dataset} {_describe_id(data_id)}: the file {chosen.path} recorded by "
                f"{chosen.run}/{chosen.module_run} (job {chosen.status}) is missing (deleted or moved by hand?); "
                f"no other run's product is returned in its place")
        return chosen

    def get(self, dataset: str, run: str | None = None, include_failed: bool = False, **data_id):
        """One product: ``<type>`` (read by its reader), ``<type>_filename`` (the path) or
        ``<type>_md`` (its header or summary, without reading pixels or rows).

        Raises
        ------
        RepositoryError
            See :meth:`find`; or the file cannot be read (the message names it).
        """
        suffix = next((s for s in DERIVED if dataset.endswith(s) and dataset[: -len(s)] in self.table.types), "")
        name = dataset[: -len(suffix)] if suffix else dataset
        ref = self.find(name, run=run, include_failed=include_failed, **data_id)
        if suffix == "_filename":
            return ref.path
        reader = self.table.get(name).reader
        function = reader.metadata if suffix == "_md" else reader.read
        try:
            return function(ref.path)
        except Exception as error:
            raise RepositoryError(f"{dataset} {_describe_id(data_id)}: cannot read {ref.path} "
                                  f"({reader.name}): {type(error).__name__}: {error}") from error

    def counts(self, run: str | None = None) -> dict[str, int]:
        """Number of visible products per dataset type (types with none are left out)."""
        counts = {name: len(self.refs(name, run=run)) for name in self.table.names()}
        return {name: count for name, count in counts.items() if count}

    def unmatched(self) -> dict[str, int]:
        """Recorded output files matching no declared product, per module."""
        return dict(self.index["unmatched"])


def main(argv=None) -> int:
    """``shapepipe_datasets OUTPUT_DIR``: the dataset types found there, with their counts."""
    from .arguments import ArgumentParser

    parser = ArgumentParser(prog="shapepipe_datasets",
                            description="List the products of the runs under OUTPUT_DIR by dataset type.")
    parser.add_argument("output_dir", help="folder holding the run folders (the OUTPUT_DIR of the runs)")
    parser.add_argument("--run", help="only this run folder (or the newest run of this RUN_NAME)")
    parser.add_argument("--all", action="store_true", help="also list declared types with no product")
    parser.add_argument("--ids", metavar="DATASET", help="print the data ids of one dataset type instead")
    args = parser.parse_args(argv)
    try:
        repo = Repository(args.output_dir)
        if args.ids:
            for data_id in repo.query(args.ids, run=args.run):
                print(_describe_id(data_id))
            return 0
        counts = repo.counts(run=args.run)
    except RepositoryError as error:
        print(f"shapepipe_datasets: {error}")
        return 1
    names = repo.dataset_types() if args.all else sorted(counts)
    width = max([len(n) for n in names] + [12])
    print(f"{'dataset type':<{width}}  {'count':>6}  {'data-id keys':<22}  module")
    for name in names:
        kind = repo.table.get(name)
        keys = " | ".join(", ".join(k) or "-" for k in kind.key_sets)
        print(f"{name:<{width}}  {counts.get(name, 0):>6}  {keys:<22}  {kind.module}")
    print(f"{sum(counts.values())} products of {len(counts)} dataset types in {len(repo.runs())} run(s) "
          f"under {repo.output_dir}")
    unmatched = repo.unmatched()
    if unmatched:
        print("recorded files of no declared dataset type: "
              + ", ".join(f"{module} {count}" for module, count in sorted(unmatched.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
