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


def test_bulk_put_and_reads_match_single_puts(tmp_path):
    """put_many and EncodedMeta give the records of one put per object; get_many and
    meta-only reads return what get returns."""
    from shapepipe_modules.io.stamp_store import EncodedMeta

    rng = np.random.default_rng(11)
    ids = np.array([4, 8, 15, 16, 23])
    stack = rng.normal(size=(5, 7, 7)).astype(np.float32)
    jac = rng.normal(size=(5, 2, 2))
    sigma = rng.uniform(1.5, 2.5, 5)
    flag = np.array([0, 0, 1, 0, 0], np.int32)
    bulk, single = tmp_path / "bulk.sqlite", tmp_path / "single.sqlite"
    with StampStore(bulk, mode="w") as store:
        store.put_many(ids, "2113737-3", {"VIGNET": stack, "JACOBIAN": jac}, {"SIGMA_PSF_HSM": sigma, "FLAG": flag})
        store.put_many(ids[:2], "2113738-0", {"VIGNET": stack[:2] + 1}, {"SIGMA_PSF_HSM": sigma[:2]})
        shared = EncodedMeta({"MASKED_FRACTION": np.float32(0.25), "NOTE": "x"})
        store.put(42, "2113737-3", {"VIGNET": stack[0]}, shared)
        with pytest.raises(ValueError, match="expected 5 rows"):
            store.put_many(ids, "2113737-4", {"VIGNET": stack[:4]})
        with pytest.raises(ValueError, match="shape"):
            store.put_many(ids, "2113737-4", {"VIGNET": stack}, {"X": np.zeros(3)})
    with StampStore(single, mode="w") as store:
        for k, object_id in enumerate(ids):
            store.put(object_id, "2113737-3", {"VIGNET": stack[k], "JACOBIAN": jac[k]},
                      {"SIGMA_PSF_HSM": float(sigma[k]), "FLAG": int(flag[k])})
            if k < 2:
                store.put(object_id, "2113738-0", {"VIGNET": stack[k] + 1}, {"SIGMA_PSF_HSM": float(sigma[k])})
        store.put(42, "2113737-3", {"VIGNET": stack[0]}, {"MASKED_FRACTION": 0.25, "NOTE": "x"})
    with sqlite3.connect(bulk) as a, sqlite3.connect(single) as b:
        query = "SELECT key, value FROM objects ORDER BY key"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
    with StampStore(bulk) as store:
        many = store.get_many([16, 4, 999, 42])
        assert sorted(many) == [4, 16, 42]
        np.testing.assert_array_equal(many[16]["2113737-3"]["VIGNET"], stack[3])
        assert many[16]["2113737-3"]["FLAG"] == 0 and many[4]["2113738-0"]["SIGMA_PSF_HSM"] == sigma[0]
        meta_only = store.get(4, arrays=False)
        assert meta_only["2113737-3"].arrays == {} and meta_only["2113737-3"]["SIGMA_PSF_HSM"] == sigma[0]
        assert [i for i, _ in store.items(arrays=False)] == [4, 8, 15, 16, 23, 42]
        # Arrays read back are writable copies.
        array = store.get(8)["2113737-3"]["VIGNET"]
        array += 1
        np.testing.assert_array_equal(array, stack[1] + 1)


def test_pack_is_pack_record_of_flattened_arrays(tmp_path):
    """The store's record encoding is exactly pack_record of 'epoch/name' arrays and the epochs' meta."""
    from shapepipe_modules.io.arrays import pack_record
    from shapepipe_modules.io.stamp_store import EpochRecord, ObjectRecord, _pack

    rng = np.random.default_rng(2)
    epochs = {"2113737-3": EpochRecord({"VIGNET": rng.normal(size=(5, 5)), "FLAG": np.arange(4, dtype=np.int16)},
                                       {"X": 1.5, "NAME": 'a "quoted" \\ name', "N": 3}),
              'odd"exp-1': EpochRecord({}, {"NAN": float("nan")})}
    arrays = {f"{key}/{name}": a for key, epoch in epochs.items() for name, a in epoch.arrays.items()}
    meta = {"epochs": {key: {"meta": epoch.meta, "arrays": list(epoch.arrays)} for key, epoch in epochs.items()}}
    assert _pack(ObjectRecord(epochs)) == pack_record(arrays, meta)
    # Non-contiguous, big-endian and structured arrays take numpy's encoding.
    epochs["2113737-4"] = EpochRecord({"F": np.asfortranarray(rng.normal(size=(3, 4))),
                                       "BE": np.arange(5, dtype=">i4")[::2]}, {})
    arrays.update({"2113737-4/F": epochs["2113737-4"].arrays["F"], "2113737-4/BE": epochs["2113737-4"].arrays["BE"]})
    meta["epochs"]["2113737-4"] = {"meta": {}, "arrays": ["F", "BE"]}
    assert _pack(ObjectRecord(epochs)) == pack_record(arrays, meta)
    epochs["2113737-5"] = EpochRecord({"S": np.zeros(2, dtype=[("x", "f4"), ("n", "i2")])}, {"K": 1})
    arrays["2113737-5/S"] = epochs["2113737-5"].arrays["S"]
    meta["epochs"]["2113737-5"] = {"meta": {"K": 1}, "arrays": ["S"]}
    assert _pack(ObjectRecord(epochs)) == pack_record(arrays, meta)


def test_file_is_a_plain_sqlitedict_table(tmp_path):
    """sqlitedict itself reads the store (large pages included)."""
    from sqlitedict import SqliteDict

    from shapepipe_modules.io.arrays import unpack_record

    path = tmp_path / "s.sqlite"
    with StampStore(path, mode="w", batch_bytes=1) as store:
        for object_id in range(3):
            store.put(object_id, "2113737-0", {"VIGNET": np.full((51, 51), object_id, np.float32)}, {"A": object_id})
    with SqliteDict(str(path), tablename="objects", flag="r", encode=bytes, decode=bytes) as table:
        assert sorted(table.keys()) == ["0", "1", "2"]
        arrays, meta = unpack_record(table["2"])
    assert meta["epochs"]["2113737-0"]["meta"] == {"A": 2}
    np.testing.assert_array_equal(arrays["2113737-0/VIGNET"], np.full((51, 51), 2, np.float32))


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "notastore.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="notastore.sqlite"):
        StampStore(path)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE other (a)").connection.commit()
    with pytest.raises(StoreError, match="empty.sqlite: no table 'objects'"):
        StampStore(empty)


def test_bulk_metadata_text_is_json_of_each_row():
    from shapepipe_modules.io.arrays import to_json
    from shapepipe_modules.io.stamp_store import _json_rows

    columns = {"X": np.array([1.5, np.nan, np.inf, -np.inf, 1e-300]), "F32": np.float32([0.1, 2, 3, 4, 5]),
               "N": np.array([0, -3, 7, 2**40, 1], np.int64), "OK": np.array([True, False, True, True, False]),
               'NA"ME': np.array(["a", 'b"c', "d\\e", "é", ""])}
    rows = _json_rows(columns, 5)
    for index, text in enumerate(rows):
        assert text == to_json({name: values[index] for name, values in columns.items()})
    assert _json_rows({}, 2) == ["{}", "{}"]


@pytest.mark.parametrize("side", [20, 51, 64])
def test_page_size_keeps_the_file_compact(tmp_path, side):
    """The file is within 8% of the smallest any page size gives for the same records (a fixed
    64 kB page would double it for records just over 32 kB), with pages of 8 kB or more."""
    from shapepipe_modules.io.stamp_store import PAGE_SIZES

    rng = np.random.default_rng(side)
    path = tmp_path / "s.sqlite"
    with StampStore(path, mode="w") as store:
        for object_id in range(300):
            store.put(object_id, "2113737-0", {"VIGNET": rng.normal(size=(2, side, side)).astype(np.float32)},
                      {"X": 1.0})
    with sqlite3.connect(path) as connection:
        (page,) = connection.execute("PRAGMA page_size").fetchone()
        rows = connection.execute("SELECT key, value FROM objects ORDER BY rowid").fetchall()
    sizes = []
    for candidate in PAGE_SIZES:
        other = tmp_path / f"page{candidate}.sqlite"
        with sqlite3.connect(other) as connection:
            connection.execute(f"PRAGMA page_size = {candidate}")
            connection.execute('CREATE TABLE "objects" (key TEXT PRIMARY KEY, value BLOB)')
            connection.executemany('INSERT INTO "objects" VALUES (?, ?)', rows)
        sizes.append(other.stat().st_size)
    assert path.stat().st_size <= 1.08 * min(sizes), (page, path.stat().st_size / min(sizes))
    assert page >= 8192


def test_durable_store_round_trip(tmp_path):
    path = tmp_path / "durable.sqlite"
    with StampStore(path, mode="w", durable=True, batch_bytes=1) as store:
        store.put(1, "2113737-0", {"VIGNET": np.arange(9.0).reshape(3, 3)}, {"A": 1})
        store.put(2, "2113737-0", {"VIGNET": np.ones((3, 3))})
    with StampStore(tmp_path / "empty.sqlite", mode="w", durable=True):
        pass
    with StampStore(path) as store:
        np.testing.assert_array_equal(store.get(1)["2113737-0"]["VIGNET"], np.arange(9.0).reshape(3, 3))
    with StampStore(tmp_path / "empty.sqlite") as store:
        assert len(store) == 0


def test_compressed_store_round_trips_exactly_and_is_smaller(tmp_path):
    """zlib records: identical arrays and metadata, merged puts, flag stamps far smaller, mixed stores readable."""
    rng = np.random.default_rng(3)
    image = rng.normal(100, 5, (40, 51, 51)).astype(np.float32)
    flags = np.zeros((40, 51, 51), np.int16)
    flags[:, :3] = 4
    sizes = {}
    for compress in (False, True):
        path = tmp_path / f"s{int(compress)}.sqlite"
        with StampStore(path, mode="w", compress=compress, batch_bytes=50_000) as store:
            for k in range(40):
                store.put(k + 1, "2100001-3", {"VIGNET": image[k], "FLAG": flags[k]}, {"MASKED_FRACTION": 0.1 * k})
            store.flush()
            for k in range(40):  # a second epoch merged into the stored (compressed) record
                store.put(k + 1, "2100002-5", {"VIGNET": image[k] + 1, "FLAG": flags[k]}, {})
            store.mark_no_epoch(99, "off every CCD")
        sizes[compress] = sum(len(v) for (v,) in sqlite3.connect(path).execute("SELECT value FROM objects"))
        with StampStore(path) as store:
            for k in range(40):
                record = store.get(k + 1)
                np.testing.assert_array_equal(record["2100001-3"].arrays["VIGNET"], image[k])
                np.testing.assert_array_equal(record["2100002-5"].arrays["VIGNET"], image[k] + 1)
                np.testing.assert_array_equal(record["2100002-5"].arrays["FLAG"], flags[k])
                assert record["2100001-3"].meta["MASKED_FRACTION"] == pytest.approx(0.1 * k)
            assert store.get(99).reason == "off every CCD"
    # Noisy float32 stamps compress 1.2-1.5x (shuffled), the flags almost vanish: about half the bytes.
    assert sizes[True] < 0.7 * sizes[False]
    with sqlite3.connect(tmp_path / "s1.sqlite") as connection:
        value = connection.execute("SELECT value FROM objects WHERE key = '1'").fetchone()[0]
    assert value.startswith(b"SPZREC2\n")


def test_compressed_records_are_zlib_streams_and_damage_is_an_encoding_error(tmp_path):
    """Records deflated by ISA-L (when installed) are plain zlib streams; a damaged one names the record."""
    import zlib

    from shapepipe_modules.io.arrays import StoreError

    stamp = np.random.default_rng(8).normal(100, 5, (51, 51)).astype(np.float32)
    path = tmp_path / "z.sqlite"
    with StampStore(path, mode="w", compress=True) as store:
        store.put(1, "2100001-3", {"VIGNET": stamp}, {})
        store.put(2, "2100001-3", {"VIGNET": stamp}, {})
    with sqlite3.connect(path) as connection:
        value = connection.execute("SELECT value FROM objects WHERE key = '1'").fetchone()[0]
        zlib.decompress(value[len(b"SPZREC2\n"):])  # the standard library inflates it
        damaged = value[:40] + bytes(200) + value[240:]
        connection.execute("UPDATE objects SET value = ? WHERE key = '2'", (damaged,))
    with StampStore(path) as store:
        np.testing.assert_array_equal(store.get(1)["2100001-3"].arrays["VIGNET"], stamp)
        with pytest.raises(StoreError, match="record of object 2 .compressed record"):
            store.get(2)
