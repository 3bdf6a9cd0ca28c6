"""Tests of the per-object, per-epoch stamp store."""

import os
import sqlite3

import numpy as np
import pytest

from shapepipe_modules.io.arrays import StoreError
from shapepipe_modules.io.stamp_store import StampStore, epoch_key, split_epoch_key


def stamps(rng, n=51):
    return {
        "VIGNET": rng.normal(size=(n, n)).astype(np.float32),
        "WEIGHT": rng.uniform(size=(n, n)).astype(np.float32),
        "FLAG": rng.integers(0, 4, size=(n, n)).astype(np.int16),
        "JACOBIAN": np.array([[0.187, 1e-4], [-2e-4, 0.186]]),
    }


def test_round_trip_epochs_meta_and_no_epoch(tmp_path):
    rng = np.random.default_rng(7)
    written = {}
    path = tmp_path / "vignet-244-252.sqlite"
    with StampStore(path, mode="w") as store:
        for object_id in (1, 2, 5):
            for ccd in (3, 12):
                key = epoch_key(2113737 + object_id, ccd)
                arrays = stamps(rng)
                meta = {"MASKED_FRACTION": np.float64(ccd / 100), "E1_PSF_HSM": np.float32(0.02)}
                store.put(object_id, key, arrays, meta)
                written[(object_id, key)] = (arrays, meta)
        store.mark_no_epoch(np.int64(9), "outside every CCD footprint")
        assert not path.exists()
    assert path.exists() and os.listdir(tmp_path) == [path.name]

    with StampStore(path) as store:
        np.testing.assert_array_equal(store.object_ids(), [1, 2, 5, 9])
        assert len(store) == 4 and 5 in store and 6 not in store
        for (object_id, key), (arrays, meta) in written.items():
            epoch = store.get(object_id)[key]
            for name, array in arrays.items():
                np.testing.assert_array_equal(epoch[name], array)
                assert epoch[name].dtype == array.dtype
            assert epoch["MASKED_FRACTION"] == pytest.approx(meta["MASKED_FRACTION"])
        record = store.get(5)
        assert sorted(record) == ["2113742-12", "2113742-3"] and record.reason is None
        empty = store[9]
        assert len(empty) == 0 and empty.reason == "outside every CCD footprint"
        with pytest.raises(KeyError, match="object 6 is not in stamp store"):
            store.get(6)
        assert [object_id for object_id, _ in store.items()] == [1, 2, 5, 9]


def test_batches_merge_epochs_written_in_different_transactions(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.sqlite"
    # A tiny batch forces a flush after every put: later epochs of the same
    # object must be merged into its stored record, not replace it.
    with StampStore(path, mode="w", batch_bytes=1) as store:
        for ccd in range(5):
            for object_id in range(20):
                store.put(object_id, epoch_key("2113737", ccd), {"VIGNET": np.full((3, 3), ccd * 100 + object_id)})
    with StampStore(path) as store:
        for object_id in (0, 7, 19):
            record = store.get(object_id)
            assert sorted(record) == [f"2113737-{ccd}" for ccd in range(5)]
            for ccd in range(5):
                assert record[f"2113737-{ccd}"]["VIGNET"][1, 1] == ccd * 100 + object_id


def test_values_are_npy_not_pickle(tmp_path):
    path = tmp_path / "s.sqlite"
    with StampStore(path, mode="w") as store:
        store.put(1, "2113737-0", {"VIGNET": np.ones((2, 2))})
    with sqlite3.connect(path) as connection:
        ((key, value),) = connection.execute("SELECT key, value FROM objects").fetchall()
    assert key == "1"
    assert bytes(value).startswith(b"SPREC1\n") and b"\x93NUMPY" in bytes(value)


def test_conflicts_and_bad_input_are_errors(tmp_path):
    with StampStore(tmp_path / "s.sqlite", mode="w") as store:
        store.put(1, "2113737-0", {"VIGNET": np.ones(2)})
        with pytest.raises(ValueError, match="already has epochs"):
            store.mark_no_epoch(1, "flagged")
        store.mark_no_epoch(2, "flagged")
        with pytest.raises(ValueError, match="no epoch"):
            store.put(2, "2113737-0", {"VIGNET": np.ones(2)})
        with pytest.raises(ValueError, match="epoch key"):
            store.put(3, "2113737_0", {"VIGNET": np.ones(2)})
        with pytest.raises(ValueError, match="not an integer"):
            store.put(1.5, "2113737-0", {"VIGNET": np.ones(2)})
        with pytest.raises(ValueError, match="object"):
            store.put(4, "2113737-0", {"VIGNET": np.array([None], dtype=object)})
        with pytest.raises(ValueError, match="reason"):
            store.mark_no_epoch(5, " ")
    with StampStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(StoreError, match="read-only"):
            store.put(9, "1-1", {})
    with pytest.raises(StoreError, match="nothere"):
        StampStore(tmp_path / "nothere.sqlite")


def test_failed_write_publishes_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with StampStore(tmp_path / "s.sqlite", mode="w", batch_bytes=1) as store:
            store.put(1, "1-1", {"VIGNET": np.ones(4)})
            1 / 0
    assert os.listdir(tmp_path) == []


def test_epoch_keys():
    assert epoch_key("-2113737", np.int64(12)) == "2113737-12"
    assert split_epoch_key("2113737-12") == ("2113737", 12)
    with pytest.raises(ValueError):
        split_epoch_key("2113737")
