"""Reading a stamp archive: the batch files of a folder (layout in :mod:`.extract`).

A folder holds ``targets.csv`` (the status table), ``archive.json`` (the
settings it was made with) and the batch files
``stamps-b<batch>-p<part>.h5``: part 0 is the first extraction of a
batch, later parts hold the targets retried with ``--retry-failed``. A
target is in at most one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


BATCH_FILE_RE = re.compile(r"^stamps-b(\d{5,})-p(\d+)\.h5$")
STATUS_NAME = "targets.csv"
#: HDF5 chunk cache per open batch file (bytes).
CHUNK_CACHE_BYTES = 32 << 20
SETTINGS_NAME = "archive.json"


class ArchiveError(ValueError):
    """An archive is missing or malformed (the message names the file)."""


def batch_file_name(batch: int, part: int) -> str:
    """``stamps-b00003-p0.h5``."""
    return f"stamps-b{int(batch):05d}-p{int(part)}.h5"


def batch_files(folder) -> list[Path]:
    """Batch files of an archive folder, by batch then part (a single ``.h5`` file is its own list)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ArchiveError(f"{folder}: no such archive folder or file")
    found = []
    for path in folder.iterdir():
        match = BATCH_FILE_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return [path for _, _, path in sorted(found)]


def _text(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def file_outcome(path) -> tuple[list[str], dict]:
    """Ids with stamps and ``{id: reason}`` of the failed targets of one batch file."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            done = []
            for name, group in h5.items():
                if name != "failed":
                    done.extend(_text(group["ids"][:]))
            failed = dict(zip(_text(h5["failed/ids"][:]), _text(h5["failed/reasons"][:])))
    except (OSError, KeyError) as error:
        raise ArchiveError(f"{path}: not a readable stamp batch file ({error})") from error
    return done, failed


@dataclass
class Location:
    """Where a target's stamps are."""

    path: Path
    tile: str
    row: int


class Archive:
    """Every batch file of an archive, indexed by target id.

    Parameters
    ----------
    source : path-like
        The archive folder, or one batch file.
    """

    def __init__(self, source):
        import h5py

        self.files = batch_files(source)
        self._handles = {}
        self._datasets = {}
        self.index: dict[str, Location] = {}
        self.order: list[str] = []
        for path in self.files:
            try:
                # A chunk holds the stamps of several targets in one slot: a cache holding every
                # chunk of a few targets makes reading targets in order decompress each chunk once.
                h5 = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=100003)
            except OSError as error:
                raise ArchiveError(f"{path}: cannot open ({error})") from error
            self._handles[path] = h5
            for tile in sorted(name for name in h5 if name != "failed"):
                for row, target in enumerate(_text(h5[tile]["ids"][:])):
                    if target in self.index:
                        first = self.index[target]
                        raise ArchiveError(f"{path}: target {target!r} also in {first.path} (tile {first.tile})")
                    self.index[target] = Location(path, tile, row)
                    self.order.append(target)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._datasets.clear()
        for h5 in self._handles.values():
            h5.close()
        self._handles.clear()

    def __contains__(self, target) -> bool:
        return str(target) in self.index

    def __len__(self) -> int:
        return len(self.index)

    def _dataset(self, group, name):
        """Open datasets are kept: HDF5 drops a dataset's chunk cache when it is closed."""
        key = (group.file.filename, group.name, name)
        dataset = self._datasets.get(key)
        if dataset is None:
            dataset = self._datasets[key] = group[name]
        return dataset

    def group(self, target):
        location = self.index[str(target)]
        return self._handles[location.path][location.tile], location.row

    def target(self, target) -> dict:
        """All arrays of one target: ``data``, ``weight``, ``flag``, ``psf`` ``(slots, size, size)``,
        ``masked``, ``present``, ``psf_present``, ``ccd``, ``x``, ``y``, ``headers`` (text) per slot,
        and ``images`` (slot names), ``tile``, ``id``, ``ra``, ``dec``."""
        group, row = self.group(target)
        record = {name: self._dataset(group, name)[row] for name in ("data", "weight", "flag", "psf", "masked",
                                                                    "present", "psf_present", "ccd", "x", "y")}
        record["headers"] = [h.decode("ascii") for h in self._dataset(group, "headers")[row]]
        record["images"] = [str(v) for v in group.attrs["images"]]
        record["tile"] = group.name.strip("/")
        record["id"] = str(target)
        record["ra"] = float(group["ra"][row])
        record["dec"] = float(group["dec"][row])
        return record

    def failed(self) -> dict:
        """``{id: reason}`` over every file (later parts win)."""
        result = {}
        for path in self.files:
            h5 = self._handles[path]
            result.update(zip(_text(h5["failed/ids"][:]), _text(h5["failed/reasons"][:])))
        for target in self.index:
            result.pop(target, None)
        return result


def stamp_bytes(folder) -> int:
    """Bytes of every batch file of an archive."""
    return int(sum(path.stat().st_size for path in batch_files(folder)))


def first_ids(folder, count: int) -> list[str]:
    """The first ``count`` target ids of an archive, in file, tile and row order."""
    with Archive(folder) as archive:
        return archive.order[:count]




