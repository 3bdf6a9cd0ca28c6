"""Register the products of ShapePipe runs in an LSST data butler, in place.

Mapping (``docs/butler.md``):

- one RUN collection ``shapepipe/<run folder>`` per ShapePipe run, and a
  CHAINED collection ``shapepipe/latest`` of them, newest first (so a butler
  lookup through it finds what ``Repository.get`` finds by default);
- only the products ``Repository`` shows by default (jobs ``done``); within
  a run, a data id written by two module runs is registered once, from the
  later one, as ``Repository.get(..., run=...)`` reads it;
- data ids: ``exposure`` -> ``instrument=MegaPrime, exposure``;
  ``ccd`` -> ``detector``; ``tile`` XXX.YYY -> ``skymap=cfis_tiles,
  tract=XXX, patch=YYY``; no key -> no dimension. The ``exposure``
  dimension records get FILTER, MJD-OBS and EXPTIME from the exposure
  headers (``raw_md`` or ``exposure_md``);
- dataset type names: the ShapePipe name when the type has one key set;
  ``<name>_<id scheme>`` for each key set of a type with several
  (``sexcat_tile``, ``sexcat_exposure_ccd``); an extra key of a template
  (``check``, ``plot``, ...) is appended as ``_<value>``, since a butler data id
  has only dimensions. Products numbered by the generic ``number`` scheme
  (the example modules) have no dimensions to map to and are not registered;
- files are registered with ``transfer="direct"`` (absolute paths, no copy)
  and the formatter :class:`.formatter.ShapePipeFormatter`, which reads them
  with the pipeline's readers. Dataset ids are derived from the data id, type
  and run, so ingesting again registers nothing twice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTRUMENT = "MegaPrime"
SKYMAP = "cfis_tiles"
LATEST = "shapepipe/latest"
FORMATTER = "shapepipe_modules.butler.formatter.ShapePipeFormatter"

_DIMENSIONS = {
    "tile": ("skymap", "tract", "patch"),
    "exposure": ("instrument", "exposure"),
    "exposure_ccd": ("instrument", "exposure", "detector"),
    "": (),
}


class IngestError(RuntimeError):
    """Products cannot be registered; the message names the run and the files."""


def run_collection(run_folder: str) -> str:
    return f"shapepipe/{run_folder}"


def scheme_of(kind, data_id: dict) -> str | None:
    """Name of the id scheme a data id of a dataset type follows ('' for none)."""
    keys = set(data_id) - set(kind.product.extra_keys)
    if not kind.schemes:
        return "" if not keys else None
    for scheme in kind.schemes:
        if keys == set(scheme.keys):
            return scheme.name
    return None


def butler_name(kind, scheme: str, data_id: dict) -> str:
    """Butler dataset type name of one product (see the module docstring)."""
    name = kind.name if len(kind.schemes) <= 1 else f"{kind.name}_{scheme}"
    for key in kind.product.extra_keys:
        name += "_" + re.sub(r"[^A-Za-z0-9_]", "_", str(data_id[key]))
    return name


def butler_data_id(scheme: str, data_id: dict) -> dict:
    if scheme == "tile":
        tract, patch = str(data_id["tile"]).split(".")
        return {"skymap": SKYMAP, "tract": int(tract), "patch": int(patch)}
    if scheme == "exposure":
        return {"instrument": INSTRUMENT, "exposure": int(data_id["exposure"])}
    if scheme == "exposure_ccd":
        return {"instrument": INSTRUMENT, "exposure": int(data_id["exposure"]), "detector": int(data_id["ccd"])}
    return {}


@dataclass
class IngestReport:
    """What an ingest did."""

    runs: list = field(default_factory=list)
    registered: dict = field(default_factory=dict)  # ShapePipe type -> datasets of this ingest (new or not)
    skipped: dict = field(default_factory=dict)  # ShapePipe type -> products with no dimensions to map to
    files: int = 0
    seconds: float = 0.0


def _day_obs(mjd) -> int:
    from astropy.time import Time

    return int(Time(float(mjd), format="mjd").strftime("%Y%m%d"))


def _exposure_header(repo, exposure: int, ccds: dict):
    """A header of one exposure (its raw primary header, else one CCD's), or None."""
    for dataset, data_id in (("raw", {"exposure": exposure}),
                             *(("exposure", {"exposure": exposure, "ccd": ccd}) for ccd in sorted(ccds))):
        try:
            return repo.get(f"{dataset}_md", **data_id)
        except Exception:  # absent or unreadable: try the next, else defaults
            continue
    return None


def create_repository(root) -> None:
    """A new butler repository (SQLite registry) knowing the ShapePipe storage classes."""
    from lsst.daf.butler import Butler, Config

    from .formatter import storage_classes

    Butler.makeRepo(str(root), config=Config({"storageClasses": storage_classes()}))


def _insert_dimensions(butler, repo, exposures: dict, tiles: set) -> None:
    registry = butler.registry
    if exposures:
        detector_max = max([ccd for ccds in exposures.values() for ccd in ccds] + [0]) + 1
        registry.insertDimensionData("instrument", {"name": INSTRUMENT, "detector_max": max(detector_max, 100),
                                                    "exposure_max": 10**8, "visit_max": 10**8},
                                     skip_existing=True)
        filters, days, groups, records = {}, set(), set(), []
        for exposure, ccds in sorted(exposures.items()):
            header = _exposure_header(repo, exposure, ccds)
            header = header if header is not None else {}
            physical = str(header.get("FILTER") or "unknown").strip()
            filters[physical] = physical.split(".")[0] or physical
            day = _day_obs(header["MJD-OBS"]) if header.get("MJD-OBS") is not None else 19700101
            days.add(day)
            groups.add(str(exposure))
            records.append({"instrument": INSTRUMENT, "id": exposure, "obs_id": str(exposure),
                            "physical_filter": physical, "day_obs": day, "group": str(exposure),
                            "exposure_time": float(header.get("EXPTIME") or 0.0)})
        registry.insertDimensionData("physical_filter",
                                     *({"instrument": INSTRUMENT, "name": name, "band": band}
                                       for name, band in sorted(filters.items())), skip_existing=True)
        registry.insertDimensionData("day_obs", *({"instrument": INSTRUMENT, "id": day} for day in sorted(days)),
                                     skip_existing=True)
        registry.insertDimensionData("group", *({"instrument": INSTRUMENT, "name": g} for g in sorted(groups)),
                                     skip_existing=True)
        registry.insertDimensionData("exposure", *records, skip_existing=True)
        ccds = sorted({ccd for values in exposures.values() for ccd in values})
        if ccds:
            registry.insertDimensionData("detector", *({"instrument": INSTRUMENT, "id": ccd,
                                                        "full_name": f"ccd{ccd:02d}"} for ccd in ccds),
                                         skip_existing=True)
    if tiles:
        registry.insertDimensionData("skymap", {"name": SKYMAP, "hash": SKYMAP.encode(), "tract_max": 720,
                                                "patch_nx_max": 361, "patch_ny_max": 1}, skip_existing=True)
        tracts = sorted({tract for tract, _ in tiles})
        registry.insertDimensionData("tract", *({"skymap": SKYMAP, "id": t} for t in tracts), skip_existing=True)
        registry.insertDimensionData("patch", *({"skymap": SKYMAP, "tract": t, "id": p} for t, p in sorted(tiles)),
                                     skip_existing=True)


def ingest(output_dir, root, runs=None, module_dirs=(), log=print) -> IngestReport:
    """Register the products of the runs under ``output_dir`` in the butler repository ``root``.

    Parameters
    ----------
    output_dir : path
        Folder of the run folders.
    root : path
        Butler repository; created (SQLite registry) if it does not exist.
    runs : list of str, optional
        Run folders (or RUN_NAMEs) to ingest; default every run.
    module_dirs : list of path
        Folders of user modules whose products to know (``MODULE_DIR``).

    Raises
    ------
    IngestError
        A damaged run record under ``output_dir``, or a recorded product
        file that is missing (nothing of that run is registered).
    """
    from lsst.daf.butler import Butler, CollectionType, DatasetIdGenEnum, DatasetRef, DatasetType, FileDataset

    from shapepipe.repository import Repository, RepositoryError

    from .formatter import storage_class_name

    started = time.perf_counter()
    repo = Repository(output_dir, module_dirs=module_dirs)
    if repo.problems():
        raise IngestError("cannot ingest: " + "; ".join(repo.problems()))
    root = Path(root)
    if not (root / "butler.yaml").is_file():
        create_repository(root)
    butler = Butler.from_config(str(root), writeable=True)
    universe = butler.dimensions
    try:
        names = [repo._pick_run(run) for run in runs] if runs else repo.runs()
    except RepositoryError as error:
        raise IngestError(str(error)) from None
    report = IngestReport(runs=list(names))

    # Every product first: dimension records are inserted once for all runs.
    plan, exposures, tiles = {}, {}, set()
    for run in names:
        items, missing = [], []
        for dataset in repo.dataset_types():
            kind = repo.table.get(dataset)
            for ref in repo.refs(dataset, run=run):
                scheme = scheme_of(kind, ref.data_id)
                if scheme is None or scheme not in _DIMENSIONS:
                    report.skipped[dataset] = report.skipped.get(dataset, 0) + 1
                    continue
                if not ref.path.exists():
                    missing.append(str(ref.path))
                    continue
                items.append((kind, scheme, ref))
                if "exposure" in ref.data_id:
                    exposures.setdefault(int(ref.data_id["exposure"]), set())
                    if "ccd" in ref.data_id:
                        exposures[int(ref.data_id["exposure"])].add(int(ref.data_id["ccd"]))
                if "tile" in ref.data_id:
                    tract, patch = str(ref.data_id["tile"]).split(".")
                    tiles.add((int(tract), int(patch)))
        if missing:
            raise IngestError(f"run {run}: {len(missing)} recorded product file(s) missing (deleted by hand?), "
                              f"nothing registered: {', '.join(missing[:5])}")
        plan[run] = items
    _insert_dimensions(butler, repo, exposures, tiles)

    known, datasets = {}, []
    for run in names:
        collection = run_collection(run)
        for kind, scheme, ref in plan[run]:
            name = butler_name(kind, scheme, ref.data_id)
            if name not in known:
                dataset_type = DatasetType(name, _DIMENSIONS[scheme], storage_class_name(kind.reader.name),
                                           universe=universe)
                butler.registry.registerDatasetType(dataset_type)
                known[name] = dataset_type
            butler_ref = DatasetRef(known[name], butler_data_id(scheme, ref.data_id), run=collection,
                                    id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)
            datasets.append(FileDataset(path=str(ref.path.resolve()), refs=[butler_ref], formatter=FORMATTER))
            report.registered[kind.name] = report.registered.get(kind.name, 0) + 1
        log(f"  {collection}: {len(plan[run])} products")
    # One transaction (SQLite commits cost ~20 ms each) and one ingest call for every run
    # (the butler groups the refs by run); those already registered (same type, data
    # id and run: same dataset id) are skipped.
    with butler.transaction():
        for run in names:
            butler.registry.registerCollection(run_collection(run), CollectionType.RUN)
        if datasets:
            butler.ingest(*datasets, transfer="direct", skip_existing=True)
    report.files = len(datasets)
    existing = set(butler.registry.queryCollections())
    chain = [run_collection(run) for run in reversed(repo.runs()) if run_collection(run) in existing]
    butler.registry.registerCollection(LATEST, CollectionType.CHAINED)
    butler.registry.setCollectionChain(LATEST, chain)
    report.seconds = time.perf_counter() - started
    return report
