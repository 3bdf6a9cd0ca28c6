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

Writing is batched: :meth:`StampStore.put` (one epoch of one object),
:meth:`StampStore.put_object` (several epochs) and :meth:`StampStore.put_many`
(one epoch of many objects, from stacked arrays and metadata columns) buffer
records in memory; each batch (``batch_bytes``) is encoded and handed to a
writer thread, which inserts it in one transaction while the caller goes on.
A later ``put`` for an object already written is merged into its stored
record. The file appears under its final name only when the store is closed
without error (synced to disk first with ``durable=True``).

Reading: :meth:`StampStore.get` (one object), :meth:`StampStore.get_many`
(many objects in a few queries) and :meth:`StampStore.items`; with
``arrays=False`` only the metadata is decoded.

PSF stores may hold models instead of stamps (:meth:`StampStore.put_psf_model`,
psfinterp's ``ME_STAMPS_FROM_MODEL``): a second table, ``psf_models``, holds
one PSF model per epoch key, the records of such an epoch keep only their
metadata (``X``, ``Y``, ``DX``, ``DY``...), and reading draws the stamps
from the model, the float32 arrays psfinterp would have stored.

The file is a plain sqlitedict table (``sqlitedict.SqliteDict(path,
tablename='objects')`` with bytes values reads it; a value written with
``compress=True`` is ``SPZREC2\n`` followed by the zlib-compressed record,
its array bytes shuffled in 4-byte lanes); the store itself reads and
writes it through ``sqlite3``, with a page size chosen from the record sizes.

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

import itertools
import json
import os
import queue
import re
import sqlite3
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np

from ._sqlite import SqliteFile
from .arrays import (RECORD_MAGIC, EncodingError, StoreError, _npy_header, pack_record, to_json,
                     unpack_record)

TABLE = "objects"
NO_EPOCH = "__no_epoch__"
#: Start of a compressed record (``StampStore(..., compress=True)``): the record with the bytes after
#: its metadata shuffled in 4-byte lanes (the first bytes of every float32 together, ...), then zlib.
#: Readers accept compressed and plain records.
ZRECORD_MAGIC = b"SPZREC2\n"
#: Earlier compressed records: zlib of the record, not shuffled (still read).
_ZRECORD_UNSHUFFLED = b"SPZREC1\n"
#: zlib level of compressed records: level 1 gets most of the gain (flags 35x, weights and
#: backgrounds 2x, images 1.3x) at a fraction of the cost of higher levels.
ZLIB_LEVEL = 1
_EPOCH_RE = re.compile(r"^([^\s-]+)-(\d+)$")
# sqlitedict's own table layout: the file stays a plain sqlitedict table.
_MAKE_TABLE = f'CREATE TABLE IF NOT EXISTS "{TABLE}" (key TEXT PRIMARY KEY, value BLOB)'
_PUT = f'REPLACE INTO "{TABLE}" (key, value) VALUES (?, ?)'
# Records of stamps are 5-100 kB: on 4 kB pages each is a chain of overflow pages,
# written page by page; larger pages write 2-3 times faster but waste the end of
# each page that no further record fits in. The page size is chosen from the first
# records written (see _page_size); readers do not depend on it.
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
#: Largest extra file size accepted for a larger page size.
PAGE_WASTE = 0.05
#: Records encoded to choose the page size.
_SIZE_SAMPLE = 500
# Keys per SELECT ... IN (...) of a bulk read (below SQLite's parameter limit).
_IN_CHUNK = 500
#: Table of PSF models (:meth:`StampStore.put_psf_model`): one row per epoch key; a store without
#: it is a plain sqlitedict table as before.
MODELS_TABLE = "psf_models"
_MAKE_MODELS = f'CREATE TABLE IF NOT EXISTS "{MODELS_TABLE}" (key TEXT PRIMARY KEY, value BLOB)'
_PUT_MODEL = f'REPLACE INTO "{MODELS_TABLE}" (key, value) VALUES (?, ?)'


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
    if type(object_id) is int:
        return str(object_id)
    try:
        value = int(object_id)
    except (TypeError, ValueError):
        raise ValueError(f"object id {object_id!r} is not an integer") from None
    if value != object_id and not (isinstance(object_id, str) and str(value) == object_id.strip()):
        raise ValueError(f"object id {object_id!r} is not an integer")
    return str(value)


class EncodedMeta:
    """Epoch metadata encoded once, for writing the same metadata to several stores.

    Parameters
    ----------
    meta : dict
        JSON-encodable numbers and strings (numpy scalars accepted).

    Raises
    ------
    EncodingError
        If a value is not JSON-encodable.
    """

    __slots__ = ("meta", "json")

    def __init__(self, meta: dict | None = None):
        self.meta = dict(meta or {})
        self.json = to_json(self.meta)


@dataclass
class EpochRecord:
    """Arrays and metadata of one object in one epoch.

    ``record[name]`` looks up ``arrays`` first, then ``meta``. Records held
    by a store open for writing are not to be modified (their metadata is
    kept encoded).
    """

    arrays: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    meta_json: str | None = field(default=None, repr=False, compare=False)
    layout: tuple | None = field(default=None, repr=False, compare=False)

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


_JSON_STRINGS: dict = {}


def _json_string(text: str) -> str:
    """JSON form of a key or name (few distinct values: cached)."""
    value = _JSON_STRINGS.get(text)
    if value is None:
        value = json.dumps(text)
        if len(_JSON_STRINGS) < 65536:
            _JSON_STRINGS[text] = value
    return value


def _json_values(values: np.ndarray) -> list[str]:
    """JSON text of each value of a 1-d numeric, boolean or string array (as :func:`to_json`)."""
    if values.dtype.kind == "b":
        return ["true" if v else "false" for v in values.tolist()]
    if values.dtype.kind in "iu":
        return list(map(str, values.tolist()))
    if values.dtype.kind == "f":
        text = list(map(float.__repr__, values.tolist()))
        for index in np.flatnonzero(~np.isfinite(values)).tolist():
            text[index] = to_json(float(values[index]))  # NaN, Infinity, -Infinity
        return text
    return [to_json(v) for v in values.tolist()]


def _json_rows(columns: dict, count: int) -> list[str]:
    """JSON objects ``{name: column[i]}`` for i < count, one string each (as :func:`to_json`)."""
    if not columns:
        return ["{}"] * count
    parts = []
    for position, (name, values) in enumerate(columns.items()):
        prefix = ("{" if position == 0 else ",") + _json_string(name) + ":"
        parts.append([prefix + text for text in _json_values(values)])
    return [row + "}" for row in map("".join, zip(*parts))]


# Encoded layout of an epoch, by (epoch key, (name, dtype, shape) of each array): stores
# hold many epochs of the same key and arrays, whose JSON and .npy headers are the same.
_LAYOUTS: dict = {}


def _layout(key: str, arrays: dict) -> tuple:
    """(JSON before the meta, JSON after it, array entries JSON, .npy headers) of one epoch.

    The arrays must be C-contiguous, plain (not structured) arrays.
    """
    signature = (key, *[(name, array.dtype.str, array.shape) for name, array in arrays.items()])
    layout = _LAYOUTS.get(signature)
    if layout is None:
        names = ",".join(_json_string(name) for name in arrays)
        headers = tuple(_npy_header(array.dtype.str, array.shape) for array in arrays.values())
        entries = ",".join(f"[{_json_string(f'{key}/{name}')},{len(header) + array.nbytes}]"
                           for (name, array), header in zip(arrays.items(), headers))
        layout = (f'{_json_string(key)}:{{"meta":', f',"arrays":[{names}]}}', entries, headers)
        if len(_LAYOUTS) < 65536:
            _LAYOUTS[signature] = layout
    return layout


def _plain(arrays: dict) -> bool:
    """True if every array can be written from its buffer (C-contiguous, no fields)."""
    for array in arrays.values():
        if array.dtype.names is not None or array.dtype.subdtype is not None or not array.flags.c_contiguous:
            return False
    return True


def _pack(record: ObjectRecord) -> bytes:
    """One packed value per object (arrays named ``epoch/name``).

    The same bytes as ``pack_record(arrays, {"epochs": ...})`` with the
    flattened arrays, assembled from each epoch's encoded metadata and
    layout, copying each array once, straight into the value.
    """
    if record.reason is not None:
        return pack_record({}, {NO_EPOCH: record.reason})
    epochs = []
    entries = []
    parts = []
    for key, epoch in record.items():
        if epoch.meta_json is None:
            epoch.meta_json = to_json(epoch.meta)
        arrays = epoch.arrays
        if epoch.layout is None:
            if not _plain(arrays):
                arrays = {name: np.ascontiguousarray(array) if array.dtype.names is None
                          and array.dtype.subdtype is None else array for name, array in arrays.items()}
            if not _plain(arrays):  # structured arrays: numpy's own .npy writer
                return pack_record({f"{k}/{n}": a for k, e in record.items() for n, a in e.arrays.items()},
                                   {"epochs": {k: {"meta": e.meta, "arrays": list(e.arrays)}
                                               for k, e in record.items()}})
            epoch.layout = _layout(key, arrays)
        before, after, array_entries, headers = epoch.layout
        epochs.append(before + epoch.meta_json + after)
        if array_entries:
            entries.append(array_entries)
        for header, array in zip(headers, arrays.values()):
            parts.append(header)
            parts.append(array)  # bytes.join copies a C-contiguous array's buffer directly
    header = ('{"meta":{"epochs":{' + ",".join(epochs) + '}},"arrays":[' + ",".join(entries) + "]}").encode()
    return b"".join([RECORD_MAGIC, len(header).to_bytes(4, "little"), header, *parts])


def _body_offset(value) -> int:
    """Offset of the arrays in a packed record (after the magic, the length and the metadata)."""
    start = len(RECORD_MAGIC)
    return start + 4 + int.from_bytes(bytes(value[start:start + 4]), "little")


def _zlib_functions():
    """``(compress(data, level), decompress(data), errors)`` of zlib streams: ISA-L's when ``isal`` is
    installed (the same format; at level 1 ten times faster than zlib's and as small on stamps),
    else zlib's."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.compress, zlib.decompress, (zlib.error,)
    return isal_zlib.compress, isal_zlib.decompress, (zlib.error, isal_zlib.error)


_zlib_compress, _zlib_decompress, _ZLIB_ERRORS = _zlib_functions()


def _compress(value: bytes) -> bytes:
    """Shuffle the array bytes of a packed record in 4-byte lanes, then zlib: float32 stamps compress
    1.5x (noisy images) to 3x (weights, backgrounds) instead of 1.3x and 2x with zlib alone."""
    offset = _body_offset(value)
    n = (len(value) - offset) // 4 * 4
    body = np.frombuffer(value, np.uint8, count=n, offset=offset).reshape(-1, 4).T.tobytes()
    return ZRECORD_MAGIC + _zlib_compress(b"".join([value[:offset], body, value[offset + n:]]), ZLIB_LEVEL)


def _decompress(data) -> bytes:
    value = _zlib_decompress(memoryview(data)[len(ZRECORD_MAGIC):])
    if bytes(data[:len(ZRECORD_MAGIC)]) == _ZRECORD_UNSHUFFLED:
        return value
    offset = _body_offset(value)
    n = (len(value) - offset) // 4 * 4
    lanes = np.frombuffer(value, np.uint8, count=n, offset=offset).reshape(4, -1)
    # One contiguous lane at a time into every 4th byte: the same bytes as lanes.T.tobytes(), 2.4x faster.
    body = np.empty((lanes.shape[1], 4), dtype=np.uint8)
    for lane in range(4):
        body[:, lane] = lanes[lane]
    return b"".join([value[:offset], body.tobytes(), value[offset + n:]])


def _unpack(data, arrays: bool = True) -> ObjectRecord:
    if bytes(data[:len(ZRECORD_MAGIC)]) in (ZRECORD_MAGIC, _ZRECORD_UNSHUFFLED):
        try:
            data = _decompress(data)
        except _ZLIB_ERRORS as error:
            raise EncodingError(f"compressed record: {error}") from None
    decoded, meta = unpack_record(data, arrays)
    if NO_EPOCH in meta:
        return ObjectRecord(reason=meta[NO_EPOCH])
    epochs = {}
    for key, entry in meta["epochs"].items():
        epochs[key] = EpochRecord(
            arrays={name: decoded[f"{key}/{name}"] for name in entry["arrays"]} if arrays else {},
            meta=entry["meta"],
        )
    return ObjectRecord(epochs)


def _file_bytes(sizes, page: int) -> int:
    """Bytes taken by records of these sizes appended to a SQLite table of this page size.

    Rows are appended in rowid order, so leaf pages fill in sequence; a
    record larger than the page's local limit keeps a head on the leaf and
    the rest on overflow pages (SQLite's file-format rules).
    """
    max_local = page - 35
    min_local = (page - 12) * 32 // 255 - 23
    pages = 0
    free = 0
    for size in sizes:
        payload = size + 16  # key text and record header
        local, overflow = payload, 0
        if payload > max_local:
            local = min_local + (payload - min_local) % (page - 4)
            if local > max_local:
                local = min_local
            overflow = -(-(payload - local) // (page - 4))
        cell = local + 15  # cell pointer, lengths, rowid, overflow page number
        if cell > free:
            pages += 1
            free = page - 12
        free -= cell
        pages += overflow
    # Schema page, and the key index (about 24 bytes per key).
    pages += 1 + -(-24 * len(sizes) // page)
    return pages * page


def _page_size(sizes) -> int:
    """The largest page size whose file is at most PAGE_WASTE larger than the smallest."""
    if not sizes:
        return PAGE_SIZES[0]
    total = {page: _file_bytes(sizes, page) for page in PAGE_SIZES}
    smallest = min(total.values())
    return max(page for page, value in total.items() if value <= (1 + PAGE_WASTE) * smallest)


def _nbytes(arrays: dict) -> int:
    total = 256
    for array in arrays.values():
        total += array.nbytes
    return total


def _checked_arrays(path, key, arrays: dict) -> dict:
    checked = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise EncodingError(f"stamp store {path}: array {name!r} of object {key} has dtype object")
        checked[str(name)] = value
    return checked


def _prepared(path, key: str, epoch: str, arrays: dict) -> tuple:
    """Checked arrays of one epoch, their layout (None if not plain) and byte count, in one pass."""
    checked = {}
    signature = [epoch]
    plain = True
    nbytes = 256
    for name, value in arrays.items():
        if type(value) is not np.ndarray:
            value = np.asarray(value)
        dtype = value.dtype
        if dtype.hasobject:
            raise EncodingError(f"stamp store {path}: array {name!r} of object {key} has dtype object")
        if dtype.names is not None or dtype.subdtype is not None or not value.flags.c_contiguous:
            plain = False
        if type(name) is not str:
            name = str(name)
        checked[name] = value
        signature.append((name, dtype.str, value.shape))
        nbytes += value.nbytes
    layout = (_LAYOUTS.get(tuple(signature)) or _layout(epoch, checked)) if plain else None
    return checked, layout, nbytes


#: Encoded bytes handed to the writer thread at a time (bounds the memory in flight).
_CHUNK_BYTES = 16 * 2**20


def _fsync(path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class _Writer(threading.Thread):
    """Runs a store's SQLite writes (and syncs) while the caller encodes the next records.

    Tasks are ``("rows", [(key, value), ...])`` and ``("commit", None)``;
    with ``durable`` a commit is followed by a sync of the file. SQLite and
    ``fsync`` release the GIL: writing overlaps the caller's work, as
    sqlitedict's thread did, but with one hand-over per chunk of records
    instead of one per record. The first error stops the writing and is
    raised to the caller by :meth:`check`.
    """

    def __init__(self, connection: sqlite3.Connection, path, durable: bool):
        super().__init__(name=f"stamp-store-writer-{os.path.basename(path)}", daemon=True)
        self.connection = connection
        self.path = path
        self.durable = durable
        self.tasks: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        while True:
            task = self.tasks.get()
            try:
                if task is None:
                    return
                if self.error is None:
                    kind, rows = task
                    if kind == "rows":
                        self.connection.executemany(_PUT, rows)
                    elif kind == "models":
                        self.connection.executemany(_PUT_MODEL, rows)
                    else:
                        self.connection.commit()
                        if self.durable:
                            _fsync(self.path)
            except BaseException as error:  # raised again in the caller's thread
                self.error = error
            finally:
                self.tasks.task_done()

    def check(self, store_path) -> None:
        if self.error is not None:
            raise StoreError(f"stamp store {store_path}: writing failed: {self.error}") from self.error

    def submit(self, task, store_path) -> None:
        self.check(store_path)
        self.tasks.put(task)

    def wait(self, store_path) -> None:
        """Block until every submitted task is done; raise the writer's error if any."""
        self.tasks.join()
        self.check(store_path)

    def stop(self) -> None:
        self.tasks.put(None)
        self.join()


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
    durable : bool
        In write mode, sync the file to disk before publishing it (as the
        pipeline's other outputs, a store is by default published atomically
        but left to the system to write out: syncing costs about 0.7 s per
        GB written).
    compress : bool
        In write mode, compress each record with zlib (prefix
        :data:`ZRECORD_MAGIC`); reading detects compressed records, so a
        store may hold both.

    Notes
    -----
    The file is one sqlitedict table (``objects``: text key, blob value),
    read and written here through ``sqlite3`` directly: sqlitedict passes
    every key through a worker thread, which cost more than the encoding.
    """

    def __init__(self, path, mode: str = "r", batch_bytes: int = 256 * 2**20, durable: bool = False,
                 compress: bool = False):
        self._file = SqliteFile(path, mode, "stamp store")
        self.path = self._file.path
        self.mode = mode
        self._connection = self._connect()
        self._pending: dict[str, ObjectRecord] = {}
        self._pending_bytes = 0
        # A store opened for writing starts empty (a new temporary file), so the
        # keys it holds are exactly those flushed: no SQLite query per new object.
        self._flushed: set[str] = set()
        self._has_table = mode == "r"
        self._writer: _Writer | None = None
        self._epoch_keys: set[str] = set()
        self.batch_bytes = int(batch_bytes)
        self.durable = bool(durable)
        self.compress = bool(compress)
        self._pending_models: dict[str, bytes] = {}
        self._has_models = False
        self._models: dict | None = None  # read mode: epoch key -> (PSFModel, settings), loaded on first use

    def _connect(self) -> sqlite3.Connection:
        work = self._file.work_path
        try:
            if self.mode == "r":
                connection = sqlite3.connect(f"{work.resolve().as_uri()}?mode=ro", uri=True,
                                             check_same_thread=False)
                found = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                                           (TABLE,)).fetchone()
                if found is None:
                    connection.close()
                    raise StoreError(f"stamp store {self.path}: no table {TABLE!r}")
                return connection
            connection = sqlite3.connect(str(work), check_same_thread=False)
            # The temporary file is deleted on failure (no journal needed), and synced
            # only by a durable store, after its last commit.
            connection.execute("PRAGMA journal_mode = OFF")
            connection.execute("PRAGMA synchronous = OFF")
            # The table is created by the first flush, once the page size is known.
            return connection
        except sqlite3.Error as error:
            self._file.close(success=False)
            raise StoreError(f"stamp store {self.path}: cannot open table {TABLE!r}: {error}") from error

    def _ensure_table(self, record_sizes=()) -> None:
        """Create the table of a new store, with a page size suited to these record sizes."""
        if self._has_table:
            return
        self._connection.execute(f"PRAGMA page_size = {_page_size(record_sizes)}")
        self._connection.execute(_MAKE_TABLE)
        self._connection.commit()
        self._has_table = True

    def _decode(self, key: str, data, arrays: bool = True) -> ObjectRecord:
        try:
            return _unpack(data, arrays)
        except (EncodingError, KeyError, TypeError) as error:
            raise StoreError(f"stamp store {self.path}: unreadable record of object {key} ({error})") from error

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(success=exc_type is None)

    def close(self, success: bool = True) -> None:
        """Write pending records and close; in write mode publish the file
        (or discard it if not ``success``)."""
        if self._file.closed:
            return
        try:
            if success and self.mode == "w":
                self.flush()
                self._idle()
                self._ensure_table()
                self._idle()
        except BaseException:
            self._shutdown()
            self._file.close(success=False)
            raise
        published = success and self.mode == "w"
        self._shutdown()
        if published and self.durable and self._writer is None:
            _fsync(self._file.work_path)  # no commit went through the writer (empty store)
        # A durable store was synced by the writer after its last commit.
        self._file.close(success)

    def _shutdown(self) -> None:
        """Stop the writer thread and close the connection."""
        if self._writer is not None and self._writer.is_alive():
            self._writer.stop()
        self._connection.close()

    def _idle(self) -> None:
        """Wait for the writer thread: the connection is then free for this thread."""
        if self._writer is not None:
            self._writer.wait(self.path)

    def _check_writable(self):
        if self.mode != "w":
            raise StoreError(f"stamp store {self.path} is open read-only")

    def _read(self, key: str, arrays: bool = True) -> ObjectRecord | None:
        self._ensure_table()
        self._idle()
        row = self._connection.execute(f'SELECT value FROM "{TABLE}" WHERE key = ?', (key,)).fetchone()
        if row is None:
            return None
        record = self._decode(key, row[0], arrays)
        if arrays and self.mode == "r":
            self._draw_psf([record])
        return record

    def _stored(self, key: str) -> ObjectRecord | None:
        record = self._pending.get(key)
        if record is None and key in self._flushed:
            record = self._read(key)
            self._pending[key] = record
            self._pending_bytes += sum(_nbytes(e.arrays) for e in record.values())  # re-read for a merge
        return record

    def _add(self, key: str, epoch: str, prepared: tuple, meta) -> None:
        """Add one epoch: ``prepared`` from :func:`_prepared`."""
        arrays, layout, nbytes = prepared
        record = self._pending.get(key)
        if record is None:
            record = self._stored(key)
            if record is None:
                record = self._pending[key] = ObjectRecord()
        if record.reason is not None:
            raise ValueError(
                f"stamp store {self.path}: object {key} was marked as having no epoch "
                f"({record.reason}); cannot add epoch {epoch}"
            )
        if isinstance(meta, EncodedMeta):
            record[epoch] = EpochRecord(arrays, meta.meta, meta.json, layout)
        else:
            meta = dict(meta or {})
            record[epoch] = EpochRecord(arrays, meta, to_json(meta), layout)
        self._pending_bytes += nbytes

    def put(self, object_id, epoch: str, arrays: dict, meta: dict | EncodedMeta | None = None) -> None:
        """Add (or replace) one epoch of one object.

        Parameters
        ----------
        object_id : int
            Object id (``NUMBER``).
        epoch : str
            Epoch key ``'<exposure>-<ccd>'`` (see :func:`epoch_key`).
        arrays : dict of str to numpy.ndarray
            Stamps and other arrays (no object dtype).
        meta : dict or EncodedMeta, optional
            JSON-encodable numbers and strings; an :class:`EncodedMeta`
            written to several stores is encoded only once.

        Raises
        ------
        ValueError
            If the object was marked as having no epoch, or the key is malformed.
        """
        self._check_writable()
        if epoch not in self._epoch_keys:
            split_epoch_key(epoch)
            self._epoch_keys.add(epoch)
        key = _object_key(object_id)
        self._add(key, epoch, _prepared(self.path, key, epoch, arrays), meta)
        if self._pending_bytes >= self.batch_bytes:
            self.flush()

    def put_many(self, object_ids, epoch: str, arrays: dict, meta: dict | None = None) -> None:
        """Add one epoch of many objects at once (one array row and one meta value each).

        Parameters
        ----------
        object_ids : array_like of int (n,)
        epoch : str
            Epoch key shared by all these objects.
        arrays : dict of str to numpy.ndarray
            Stacks of shape ``(n, ...)``: object ``i`` gets row ``i``.
        meta : dict of str to array_like (n,), optional
            Metadata columns: object ``i`` gets ``{name: column[i]}``
            (numbers, bools or strings).

        Raises
        ------
        ValueError
            As :meth:`put`, or if a stack or column does not have ``n`` rows.
        """
        self._check_writable()
        split_epoch_key(epoch)
        ids = np.asarray(object_ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"stamp store {self.path}: object ids must be a 1-d integer array, got {ids.dtype} "
                             f"of shape {ids.shape}")
        count = ids.size
        stacks = _checked_arrays(self.path, f"ids {ids[:3].tolist()}...", arrays)
        columns = {}
        for name, values in (meta or {}).items():
            values = np.asarray(values)
            if values.shape != (count,):
                raise ValueError(f"stamp store {self.path}: meta {name!r} has shape {values.shape}, "
                                 f"expected ({count},)")
            if values.dtype.hasobject:
                raise EncodingError(f"stamp store {self.path}: meta {name!r} has dtype object")
            columns[str(name)] = values
        for name, stack in stacks.items():
            if stack.ndim == 0 or stack.shape[0] != count:
                raise ValueError(f"stamp store {self.path}: array {name!r} has shape {stack.shape}, "
                                 f"expected {count} rows")
        if count == 0:
            return
        texts = _json_rows(columns, count)
        rows = zip(*(values.tolist() for values in columns.values())) if columns else ((),) * count
        names = list(columns)
        # Rows of C-contiguous stacks share one layout and size: prepared once.
        stacks = {name: np.ascontiguousarray(stack) for name, stack in stacks.items()}
        _, layout, nbytes = _prepared(self.path, ids[0], epoch, {name: stack[0] for name, stack in stacks.items()})
        for index, (object_id, values, text) in enumerate(zip(ids.tolist(), rows, texts)):
            meta_row = EncodedMeta.__new__(EncodedMeta)
            meta_row.meta = dict(zip(names, values))
            meta_row.json = text
            self._add(str(object_id), epoch, ({name: stack[index] for name, stack in stacks.items()}, layout, nbytes),
                      meta_row)
            if self._pending_bytes >= self.batch_bytes:
                self.flush()

    def put_object(self, object_id, epochs: dict) -> None:
        """Add several epochs of one object: ``{epoch_key: (arrays, meta)}`` (meta as in :meth:`put`)."""
        self._check_writable()
        key = _object_key(object_id)
        for epoch, (arrays, meta) in epochs.items():
            if epoch not in self._epoch_keys:
                split_epoch_key(epoch)
                self._epoch_keys.add(epoch)
            self._add(key, epoch, _prepared(self.path, key, epoch, arrays), meta)
        if self._pending_bytes >= self.batch_bytes:
            self.flush()

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
        """Write the buffered records in one transaction (in a writer thread: the
        call returns once the records are encoded)."""
        self._check_writable()
        if self._pending:
            if self.compress:
                rows = ((key, _compress(_pack(record))) for key, record in self._pending.items())
            else:
                rows = ((key, _pack(record)) for key, record in self._pending.items())
            if not self._has_table:
                first = list(itertools.islice(rows, _SIZE_SAMPLE))
                self._ensure_table([len(value) for _, value in first])
                rows = itertools.chain(first, rows)
            if self._writer is None:
                self._writer = _Writer(self._connection, self._file.work_path, self.durable)
            chunk, size = [], 0
            for row in rows:
                chunk.append(row)
                size += len(row[1])
                if size >= _CHUNK_BYTES:
                    self._writer.submit(("rows", chunk), self.path)
                    chunk, size = [], 0
            if chunk:
                self._writer.submit(("rows", chunk), self.path)
            self._writer.submit(("commit", None), self.path)
            self._flushed.update(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self._pending_models:
            if not self._has_models:
                self._idle()  # the connection is the writer thread's while it works
                self._connection.execute(_MAKE_MODELS)
                self._connection.commit()
                self._has_models = True
            if self._writer is None:
                self._writer = _Writer(self._connection, self._file.work_path, self.durable)
            self._writer.submit(("models", list(self._pending_models.items())), self.path)
            self._writer.submit(("commit", None), self.path)
            self._pending_models = {}

    def get(self, object_id, arrays: bool = True) -> ObjectRecord:
        """All epochs of one object.

        Parameters
        ----------
        object_id : int
        arrays : bool
            Decode the arrays (False: only the metadata, epochs have empty
            ``arrays``; ignored for records not yet written).

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
        record = self._read(key, arrays)
        if record is None:
            raise KeyError(f"object {key} is not in stamp store {self.path}")
        return record

    def get_many(self, object_ids, arrays: bool = True) -> dict:
        """Records of many objects, read in a few queries.

        Parameters
        ----------
        object_ids : array_like of int
        arrays : bool
            As in :meth:`get`.

        Returns
        -------
        dict of int to ObjectRecord
            The objects found in the store (absent ids are left out).
        """
        keys = list(dict.fromkeys(_object_key(i) for i in np.asarray(object_ids).ravel().tolist()))
        found = {}
        missing = []
        for key in keys:
            if key in self._pending:
                found[int(key)] = self._pending[key]
            else:
                missing.append(key)
        if missing:
            self._ensure_table()
            self._idle()
        for start in range(0, len(missing), _IN_CHUNK):
            chunk = missing[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f'SELECT key, value FROM "{TABLE}" WHERE key IN ({marks})'
            for key, value in self._connection.execute(query, chunk):
                found[int(key)] = self._decode(key, value, arrays)
        if arrays and missing:
            self._draw_psf(found.values())
        return found

    def __getitem__(self, object_id) -> ObjectRecord:
        return self.get(object_id)

    def __contains__(self, object_id) -> bool:
        key = _object_key(object_id)
        if key in self._pending:
            return True
        self._ensure_table()
        self._idle()
        return self._connection.execute(f'SELECT 1 FROM "{TABLE}" WHERE key = ?', (key,)).fetchone() is not None

    def object_ids(self) -> np.ndarray:
        """Sorted ids of every object in the store (with or without epochs)."""
        self._ensure_table()
        self._idle()
        keys = {key for (key,) in self._connection.execute(f'SELECT key FROM "{TABLE}"')} | set(self._pending)
        return np.array(sorted(int(k) for k in keys), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.object_ids())

    def items(self, arrays: bool = True):
        """Iterate ``(object_id, ObjectRecord)`` over the stored objects, in the
        order they were written (in write mode, call :meth:`flush` first)."""
        self._ensure_table()
        self._idle()
        cursor = self._connection.execute(f'SELECT key, value FROM "{TABLE}" ORDER BY rowid')
        for key, value in cursor:
            record = self._decode(key, value, arrays)
            if arrays:
                self._draw_psf([record])
            yield int(key), record

    # PSF stamps drawn from stored models -------------------------------------------------

    def put_psf_model(self, epoch: str, model, size: int | None = None, array: str = "VIGNET") -> None:
        """Store the PSF model of one epoch instead of its objects' PSF stamps.

        Records of this epoch are then written without ``array`` but with
        meta ``X``, ``Y`` (1-based position on the CCD) and ``DX``, ``DY``
        (centre offset); readers get ``array`` drawn from the model
        (:func:`shapepipe_modules.psfinterp.interpolate.psf_stamps`, float32),
        the stamp psfinterp would have stored: a 40-CCD tile's models take
        a few MB where its 175,000 stamps took 1.8 GB.

        Parameters
        ----------
        epoch : str
            Epoch key ``'<exposure>-<ccd>'``.
        model : PSFModel
            As read by :func:`shapepipe_modules.io.psfex_file.read_psf`.
        size : int, optional
            Stamp side (default: the model grid's).
        array : str
            Name under which readers find the stamp.
        """
        self._check_writable()
        split_epoch_key(epoch)
        settings = {"array": str(array), "size": None if size is None else int(size), "degree": int(model.degree),
                    "zero": [float(v) for v in model.zero], "scale": [float(v) for v in model.scale],
                    "sampling": float(model.sampling), "names": [str(n) for n in model.names]}
        basis = np.ascontiguousarray(model.basis)
        single = basis.astype(np.float32)
        if np.array_equal(single, basis):  # a model read from a .psf file (float32 PSF_MASK): half the bytes
            basis = single
        self._pending_models[epoch] = pack_record({"basis": basis}, settings)

    def _load_models(self) -> dict:
        if self._models is None:
            self._models = {}
            found = self._connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                                             (MODELS_TABLE,)).fetchone()
            if found is not None:
                from .psfex_file import PSFModel

                for key, value in self._connection.execute(f'SELECT key, value FROM "{MODELS_TABLE}"'):
                    try:
                        arrays, settings = unpack_record(value)
                        model = PSFModel(basis=arrays["basis"], degree=settings["degree"],
                                         zero=tuple(settings["zero"]), scale=tuple(settings["scale"]),
                                         sampling=settings["sampling"], names=tuple(settings["names"]))
                    except (EncodingError, KeyError, TypeError, ValueError) as error:
                        raise StoreError(f"stamp store {self.path}: unreadable PSF model of epoch {key} "
                                         f"({error})") from error
                    self._models[key] = (model, settings)
        return self._models

    def _draw_psf(self, records) -> None:
        """Add the PSF stamps of epochs stored as models to these records (in place), one
        vectorised call per epoch."""
        if self.mode != "r":
            return
        models = self._load_models()
        if not models:
            return
        groups: dict[str, list] = {}
        for record in records:
            for key, epoch in record.items():
                entry = models.get(key)
                if entry is not None and entry[1]["array"] not in epoch.arrays:
                    groups.setdefault(key, []).append(epoch)
        if not groups:
            return
        from shapepipe_modules.psfinterp.interpolate import psf_stamps

        for key, epochs in groups.items():
            model, settings = models[key]
            try:
                x, y, dx, dy = (np.array([epoch.meta[name] for epoch in epochs], dtype=float)
                                for name in ("X", "Y", "DX", "DY"))
            except KeyError as error:
                raise StoreError(f"stamp store {self.path}: epoch {key} is stored as a PSF model but a record "
                                 f"lacks {error.args[0]}") from None
            stamps = psf_stamps(model, x, y, settings["size"], dx, dy).astype(np.float32)
            for epoch, stamp in zip(epochs, stamps):
                epoch.arrays[settings["array"]] = stamp
