"""Array and record encoding for the pipeline's stores: ``.npy`` bytes, never pickles.

Every store of the pipeline (header store, stamp stores) keeps numpy arrays
as bytes in the ``.npy`` format and reads them back with
``allow_pickle=False``, so a store never executes code when it is read and
stays readable by any numpy.

Two levels are provided:

- :func:`encode_array` / :func:`decode_array`: one array <-> ``.npy`` bytes.
- :func:`pack_record` / :func:`unpack_record`: a small record made of named
  arrays plus JSON metadata <-> one ``bytes`` value, laid out as::

      b"SPREC1\\n" | uint32 little-endian header length | JSON header | .npy blobs

  The JSON header holds the metadata and, per array, its name and byte
  length (blobs follow in that order). Metadata may be nested dicts and
  lists of str, int, float, bool and None; numpy scalars are converted to
  Python numbers, NaN and infinities are kept.

Object arrays (``dtype=object``) are refused: they could only be stored by
pickling.
"""

from __future__ import annotations

import functools
import io
import json
import struct

import numpy as np

from shapepipe.errors import ShapePipeError

RECORD_MAGIC = b"SPREC1\n"
_LENGTH = struct.Struct("<I")


class EncodingError(ShapePipeError, ValueError):
    """A value cannot be encoded, or bytes are not a valid encoded value."""


class StoreError(ShapePipeError, ValueError):
    """A store file is missing, unreadable or not in the expected format.

    The message names the file.
    """


def encode_array(array) -> bytes:
    """Encode an array as ``.npy`` bytes.

    Parameters
    ----------
    array : array_like
        Any numeric, boolean or fixed-width string array (not ``object``).

    Returns
    -------
    bytes
        The ``.npy`` file content.

    Raises
    ------
    EncodingError
        For object arrays, which would need pickling.
    """
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise EncodingError(f"cannot store an array of dtype {array.dtype} without pickling")
    if array.dtype.names is None and array.dtype.subdtype is None:
        # Fast path (stamp stores write many small arrays): the same bytes as
        # np.save, with the header built once per dtype and shape.
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would make 0-d arrays 1-d)
            array = array.copy(order="C")
        return _npy_header(array.dtype.str, array.shape) + array.tobytes()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1024)
def _npy_header(descr: str, shape: tuple) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(descr)), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def decode_array(data) -> np.ndarray:
    """Decode ``.npy`` bytes written by :func:`encode_array`.

    Parameters
    ----------
    data : bytes-like
        The ``.npy`` payload. A ``bytes`` object gives a fresh array; a
        writable buffer (``bytearray``, writable ``memoryview``) gives a
        writable view of it, without copying.

    Raises
    ------
    EncodingError
        If ``data`` is not a pickle-free ``.npy`` payload.
    """
    view = memoryview(data)
    layout = _parse_header(view)
    if layout is None:
        # Other .npy versions: numpy's reader (pickles refused).
        try:
            return np.load(io.BytesIO(bytes(view)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise EncodingError(f"not a valid .npy payload: {error}") from error
    dtype, shape, order, offset, count = layout
    if len(view) - offset < count * dtype.itemsize:
        raise EncodingError(f"not a valid .npy payload: {len(view) - offset} data bytes for "
                            f"{count} values of {dtype}")
    array = np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape, order=order)
    return array if not view.readonly else array.copy(order="K")


_NPY_MAGIC = b"\x93NUMPY\x01"
# Parsed version-1.0 headers: stores repeat a few (dtype, shape) headers many times, and
# numpy's parser (ast.literal_eval) costs more than reading the array.
_HEADERS: dict = {}


def _parse_header(view: memoryview):
    """(dtype, shape, order, data offset, count) of a version-1.0 ``.npy`` payload, else None.

    Raises
    ------
    EncodingError
        For a malformed header or a dtype that needs pickling.
    """
    if len(view) < 10 or view[:7] != _NPY_MAGIC:
        return None
    length = view[8] | (view[9] << 8)
    header = bytes(view[10:10 + length])
    layout = _HEADERS.get(header)
    if layout is None:
        try:
            parsed = np.lib.format.read_array_header_1_0(io.BytesIO(bytes(view[:10 + length])[8:]))
        except (ValueError, OSError, EOFError) as error:
            raise EncodingError(f"not a valid .npy payload: {error}") from error
        shape, fortran, dtype = parsed
        if dtype.hasobject:
            raise EncodingError(f"not a valid .npy payload: dtype {dtype} would need pickling")
        count = int(np.prod(shape, dtype=np.int64))
        layout = (dtype, shape, "F" if fortran else "C", 10 + length, count)
        if len(_HEADERS) < 4096:
            _HEADERS[header] = layout
    return layout


def _json_default(value):
    """Convert numpy scalars (and tiny arrays) for JSON."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise EncodingError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-encodable")


def to_json(value) -> str:
    """JSON text of ``value``, with numpy scalars converted (NaN allowed)."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def pack_record(arrays: dict | None = None, meta: dict | None = None) -> bytes:
    """Pack named arrays and JSON metadata into one ``bytes`` value.

    Parameters
    ----------
    arrays : dict of str to array_like, optional
        Arrays to store; kept with their dtype and shape.
    meta : dict, optional
        JSON-encodable metadata (numpy scalars accepted).

    Returns
    -------
    bytes
    """
    arrays = arrays or {}
    blobs = []
    entries = []
    for name, array in arrays.items():
        blob = encode_array(array)
        blobs.append(blob)
        entries.append([str(name), len(blob)])
    header = to_json({"meta": meta or {}, "arrays": entries}).encode("utf-8")
    return b"".join([RECORD_MAGIC, _LENGTH.pack(len(header)), header, *blobs])


def unpack_record(data, arrays: bool = True) -> tuple[dict, dict]:
    """Unpack bytes written by :func:`pack_record`.

    Parameters
    ----------
    data : bytes-like
        The packed record.
    arrays : bool
        Decode the arrays (False: only the metadata is read, and the array
        dict is empty).

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        Writable arrays (views of one private copy of ``data``).
    meta : dict

    Raises
    ------
    EncodingError
        If ``data`` is not a packed record (for example a pickle).
    """
    view = memoryview(data)
    start = len(RECORD_MAGIC)
    if view[:start] != RECORD_MAGIC or len(view) < start + _LENGTH.size:
        raise EncodingError("not a packed record (wrong magic bytes; a pickled ShapePipe store?)")
    (length,) = _LENGTH.unpack(view[start:start + _LENGTH.size])
    offset = start + _LENGTH.size
    try:
        header = json.loads(bytes(view[offset:offset + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncodingError(f"corrupt record header: {error}") from error
    if not arrays:
        return {}, header["meta"]
    offset += length
    # One copy of the whole record: every array is a writable view of it.
    buffer = memoryview(bytearray(view))
    decoded = {}
    for name, size in header["arrays"]:
        if offset + size > len(buffer):
            raise EncodingError(f"truncated record: array {name!r} is incomplete")
        decoded[name] = decode_array(buffer[offset:offset + size])
        offset += size
    return decoded, header["meta"]
