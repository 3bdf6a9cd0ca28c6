"""Tests of the .npy array and record encoding (no pickle)."""

import pickle

import numpy as np
import pytest

from shapepipe_modules.io.arrays import (
    EncodingError,
    decode_array,
    encode_array,
    pack_record,
    unpack_record,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[1, 2], [3, 4]], dtype=">i8"),
        np.array([True, False]),
        np.array(["2113737-1", "a"], dtype="U9"),
        np.zeros((0, 5)),
        np.array(3.5),
        np.zeros(3, dtype=[("x", "f4"), ("n", "i2")]),
    ],
)
def test_array_round_trip_keeps_dtype_shape_values(array):
    data = encode_array(array)
    assert data[:6] == b"\x93NUMPY"
    back = decode_array(data)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_object_arrays_are_refused():
    with pytest.raises(EncodingError, match="pickling"):
        encode_array(np.array([{"a": 1}], dtype=object))


def test_pickled_payload_is_refused():
    data = pickle.dumps(np.array([1, 2]))
    with pytest.raises(EncodingError):
        decode_array(data)
    # An object-dtype .npy needs allow_pickle=True: refused too.
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(EncodingError):
        decode_array(buffer.getvalue())


def test_record_round_trip_with_numpy_metadata():
    arrays = {"VIGNET": np.random.default_rng(1).normal(size=(51, 51)).astype(np.float32),
              "JACOBIAN": np.array([[0.187, 0.001], [-0.001, 0.187]])}
    meta = {"E1_PSF_HSM": np.float32(0.01), "FLAG_PSF_HSM": np.int16(0), "ok": np.bool_(True),
            "nested": {"n": np.int64(3)}, "nan": float("nan")}
    packed = pack_record(arrays, meta)
    back_arrays, back_meta = unpack_record(packed)
    assert list(back_arrays) == ["VIGNET", "JACOBIAN"]
    for name in arrays:
        np.testing.assert_array_equal(back_arrays[name], arrays[name])
        assert back_arrays[name].dtype == arrays[name].dtype
    assert back_meta["E1_PSF_HSM"] == pytest.approx(0.01, rel=1e-6)
    assert back_meta["FLAG_PSF_HSM"] == 0 and back_meta["ok"] is True
    assert back_meta["nested"] == {"n": 3}
    assert np.isnan(back_meta["nan"])


def test_record_rejects_foreign_and_truncated_bytes():
    with pytest.raises(EncodingError, match="magic"):
        unpack_record(pickle.dumps({"a": 1}))
    packed = pack_record({"a": np.arange(100)})
    with pytest.raises(EncodingError, match="truncated"):
        unpack_record(packed[:-50])


def test_unencodable_metadata_named():
    with pytest.raises(EncodingError, match="set"):
        pack_record({}, {"bad": {1, 2}})
