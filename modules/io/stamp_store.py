"""Per-object, per-epoch stamp stores (vignetmaker and psfinterp MULTI-EPOCH).

One SQLite file, table ``objects``: one row per object, keyed by the object
id as text (``'1234'``, SExtractor's ``NUMBER``). The value is a record
packed by :func:`shapepipe_modules.io.arrays.pack_record` (``.npy`` arrays +
JSON, no pickle) holding, per epoch key, named arrays and metadata.

Epoch keys are ``'<exposure>-<ccd>'`` (``'2113737-12'``), as in ShapePipe;
build and split them with :func:`epoch_key` and :func:`split_epoch_key`.

An object seen by no usable epoch is stored explicitly with a reason
(:meth:`StampStore.mark_no_epoch`), where ShapePipe wrote the string
``'empty'``; :meth:`StampStore.get` then returns an empty
:class:`ObjectRecord` whose ``reason`` says why.

Names used by the pipeline's writers (ShapePipe kept each kind in its own
store under ``'VIGNET'``; ours may keep several kinds in one record):

=================== ============================================================
``VIGNET``          image stamp (psfinterp: the PSF stamp)
``WEIGHT``          weight stamp
``FLAG``            flag stamp
``BACKGROUND``      background stamp
``JACOBIAN``        2x2 local WCS Jacobian (``dudx, dudy; dvdx, dvdy``, arcsec/pixel)
``MASKED_FRACTION`` meta: fraction of flagged pixels in the stamp
``E1_PSF_HSM``, ``E2_PSF_HSM``, ``SIGMA_PSF_HSM``, ``FLAG_PSF_HSM``
                    meta: PSF shape (ShapePipe's ``SHAPES`` dict, flattened)
=================== ============================================================

Writing is batched: :meth:`StampStore.put` buffers records in memory and
writes them in one transaction per batch (``batch_bytes``); a later ``put``
for an object already written is merged into its stored record. The file
appears under its final name only when the store is closed without error.

Example
-------
>>> with StampStore("vignet-244-252.sqlite", mode="w") as store:
...     store.put(12, "2113737-6", {"VIGNET": stamp}, {"MASKED_FRACTION": 0.0})
...     store.mark_no_epoch(13, "outside every CCD")
>>> with StampStore("vignet-244-252.sqlite") as store:
...     for key, epoch in store.get(12).items():
...         exposure, ccd = split_epoch_key(key)
...         image = epoch["VIGNET"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ._sqlite import SqliteFile
from .arrays import EncodingError, StoreError, pack_record, unpack_record

TABLE = "objects"
NO_EPOCH = "__no_epoch__"
_EPOCH_RE = re.compile(r"^([^\s-]+)-(\d+)$")


def epoch_key(exposure, ccd) -> str:
    """Epoch key ``'<exposure>-<ccd>'`` (``'2113737-12'``); a leading dash is dropped."""
    exposure = str(exposure).strip().lstrip("-")
    return f"{exposure}-{int(ccd)}"


def split_epoch_key(key: str) -> tuple[str, int]:
    """``'2113737-12'`` -> ``('2113737', 12)``.

    Raises
    ------
    ValueError
        If ``key`` is not ``<exposure>-<ccd>``.
    """
    match = _EPOCH_RE.match(str(key))
    if not match:
        raise ValueError(f"epoch key {key!r} is not '<exposure>-<ccd>'")
    return match.group(1), int(match.group(2))


def _object_key(object_id) -> str:
    try:
        value = int(object_id)
    except (TypeError, ValueError):
        raise ValueError(f"object id {object_id!r} is not an integer") from None
    if value != object_id and not (isinstance(object_id, str) and str(value) == object_id.strip()):
        raise ValueError(f"object id {object_id!r} is not an integer")
    return str(value)


@dataclass
class EpochRecord:
    """Arrays and metadata of one object in one epoch.

    ``record[name]`` looks up ``arrays`` first, then ``meta``.
    """

    arrays: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __getitem__(self, name):
        if name in self.arrays:
            return self.arrays[name]
        if name in self.meta:
            return self.meta[name]
        raise KeyError(f"{name!r} not in epoch record (arrays: {sorted(self.arrays)}, meta: {sorted(self.meta)})")

    def __contains__(self, name) -> bool:
        return name in self.arrays or name in self.meta


class ObjectRecord(dict):
    """Epoch key -> :class:`EpochRecord` for one object.

    Attributes
    ----------
    reason : str or None
        Why the object has no usable epoch (then the mapping is empty);
        ``None`` for an object with epochs.
    """

    def __init__(self, epochs=None, reason: str | None = None):
        super().__init__(epochs or {})
        self.reason = reason


def _pack(record: ObjectRecord) -> bytes:
    """Flatten an object record into one packed value (arrays named ``epoch/name``)."""
    if record.reason is not None:
        return pack_record({}, {NO_EPOCH: record.reason})
    arrays = {}
    meta = {}
    for key, epoch in record.items():
        for name, array in epoch.arrays.items():
            arrays[f"{key}/{name}"] = array
        meta[key] = {"meta": epoch.meta, "arrays": list(epoch.arrays)}
    return pack_record(arrays, {"epochs": meta})


def _unpack(data) -> ObjectRecord:
    arrays, meta = unpack_record(data)
    if NO_EPOCH in meta:
        return ObjectRecord(reason=meta[NO_EPOCH])
    epochs = {}
    for key, entry in meta["epochs"].items():
        epochs[key] = EpochRecord(
            arrays={name: arrays[f"{key}/{name}"] for name in entry["arrays"]},
            meta=entry["meta"],
        )
    return ObjectRecord(epochs)


def _nbytes(arrays: dict) -> int:
    return sum(np.asarray(a).nbytes for a in arrays.values()) + 256


class StampStore:
    """Per-object, per-epoch arrays in one SQLite file.

    Parameters
    ----------
    path : path-like
        Store file.
    mode : {'r', 'w'}
        ``'r'`` (default) reads; ``'w'`` creates it atomically (published
        under ``path`` when closed without error).
    batch_bytes : int
        In write mode, buffered array bytes that trigger a write of the
        batch in one transaction (default 256 MB).
    """

    def __init__(self, path, mode: str = "r", batch_bytes: int = 256 * 2**20):
        self._file = SqliteFile(path, mode, "stamp store")
        self.path = self._file.path
        self.mode = mode
        self._table = self._file.table(TABLE, _pack, self._decode)
        self._pending: dict[str, ObjectRecord] = {}
        self._pending_bytes = 0
        # A store opened for writing starts empty (a new temporary file), so the
        # keys it holds are exactly those flushed: no SQLite query per new object.
        self._flushed: set[str] = set()
        self.batch_bytes = int(batch_bytes)

    def _decode(self, data) -> ObjectRecord:
        try:
            return _unpack(data)
        except (EncodingError, KeyError) as error:
            raise StoreError(f"stamp store {self.path}: unreadable record ({error})") from error

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(success=exc_type is None)

    def close(self, success: bool = True) -> None:
        """Write pending records and close; in write mode publish the file
        (or discard it if not ``success``)."""
        if success and self.mode == "w" and not self._file.closed:
            self.flush()
        self._file.close(success)

    def _check_writable(self):
        if self.mode != "w":
            raise StoreError(f"stamp store {self.path} is open read-only")

    def _stored(self, key: str) -> ObjectRecord | None:
        record = self._pending.get(key)
        if record is None and key in self._flushed:
            record = self._table[key]
            self._pending[key] = record
            self._pending_bytes += sum(_nbytes(e.arrays) for e in record.values())
        return record

    def put(self, object_id, epoch: str, arrays: dict, meta: dict | None = None) -> None:
        """Add (or replace) one epoch of one object.

        Parameters
        ----------
        object_id : int
            Object id (``NUMBER``).
        epoch : str
            Epoch key ``'<exposure>-<ccd>'`` (see :func:`epoch_key`).
        arrays : dict of str to numpy.ndarray
            Stamps and other arrays (no object dtype).
        meta : dict, optional
            JSON-encodable numbers and strings.

        Raises
        ------
        ValueError
            If the object was marked as having no epoch, or the key is malformed.
        """
        self._check_writable()
        split_epoch_key(epoch)
        key = _object_key(object_id)
        record = self._stored(key)
        if record is None:
            record = self._pending[key] = ObjectRecord()
        elif record.reason is not None:
            raise ValueError(
                f"stamp store {self.path}: object {key} was marked as having no epoch "
                f"({record.reason}); cannot add epoch {epoch}"
            )
        arrays = {str(name): np.asarray(value) for name, value in arrays.items()}
        for name, value in arrays.items():
            if value.dtype.hasobject:
                raise EncodingError(f"stamp store {self.path}: array {name!r} of object {key} has dtype object")
        record[epoch] = EpochRecord(arrays, dict(meta or {}))
        self._pending_bytes += _nbytes(arrays)
        if self._pending_bytes >= self.batch_bytes:
            self.flush()

    def put_object(self, object_id, epochs: dict) -> None:
        """Add several epochs of one object: ``{epoch_key: (arrays, meta)}``."""
        for epoch, (arrays, meta) in epochs.items():
            self.put(object_id, epoch, arrays, meta)

    def mark_no_epoch(self, object_id, reason: str) -> None:
        """Record that ``object_id`` has no usable epoch, and why.

        Raises
        ------
        ValueError
            If epochs were already stored for the object, or ``reason`` is empty.
        """
        self._check_writable()
        if not str(reason).strip():
            raise ValueError("a no-epoch record needs a reason")
        key = _object_key(object_id)
        record = self._stored(key)
        if record is not None and record.reason is None and len(record):
            raise ValueError(
                f"stamp store {self.path}: object {key} already has epochs {sorted(record)}; "
                "cannot mark it as having none"
            )
        self._pending[key] = ObjectRecord(reason=str(reason))

    def flush(self) -> None:
        """Write the buffered records in one transaction."""
        self._check_writable()
        for key, record in self._pending.items():
            self._table[key] = record
            self._flushed.add(key)
        self._table.commit()
        self._pending.clear()
        self._pending_bytes = 0

    def get(self, object_id) -> ObjectRecord:
        """All epochs of one object.

        Returns
        -------
        ObjectRecord
            Epoch key -> :class:`EpochRecord`; empty with ``reason`` set for an
            object seen by no usable epoch.

        Raises
        ------
        KeyError
            If the object is not in the store at all.
        """
        key = _object_key(object_id)
        if key in self._pending:
            return self._pending[key]
        try:
            return self._table[key]
        except KeyError:
            raise KeyError(f"object {key} is not in stamp store {self.path}") from None

    def __getitem__(self, object_id) -> ObjectRecord:
        return self.get(object_id)

    def __contains__(self, object_id) -> bool:
        key = _object_key(object_id)
        return key in self._pending or key in self._table

    def object_ids(self) -> np.ndarray:
        """Sorted ids of every object in the store (with or without epochs)."""
        keys = set(self._table.keys()) | set(self._pending)
        return np.array(sorted(int(k) for k in keys), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.object_ids())

    def items(self):
        """Iterate ``(object_id, ObjectRecord)`` over the stored objects (in write
        mode, call :meth:`flush` first)."""
        for key, record in self._table.items():
            yield int(key), record
