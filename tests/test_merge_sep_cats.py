"""Tests of merge_sep_cats: finding the splits, checking id ranges, merging."""

import logging
import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.errors import JobError
from shapepipe_modules.io.tables import write_fits_tables
from shapepipe_modules.merge_sep_cats.merge import merge_split_catalogues, shapepipe_split_paths
from shapepipe_modules.merge_sep_cats.runner import merge_tile

LOG = logging.getLogger("test")
NAME = "ngmix-244-252.fits"


def write_split(path, ids, id_min=-1, id_max=-1, n_tile=None, with_header=True, extra_column=False):
    header = fits.Header()
    if with_header:
        header["ID_MIN"], header["ID_MAX"] = id_min, id_max
        header["NOBJTILE"], header["IDTILEMN"], header["IDTILEMX"] = n_tile, 1, 40
    ids = np.asarray(ids, dtype=np.int64)
    tables = []
    for name in ("1M", "1P", "2M", "2P", "NOSHEAR"):
        columns = {"id": ids, "g1": ids * 0.001 + len(name)}
        if extra_column:
            columns["g2"] = ids * 0.0
        tables.append((name, columns, None))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_fits_tables(path, tables, primary_header=header)
    return path


def test_shapepipe_rule_on_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "output" / "run_Ng1u" / "ngmix_runner" / "output" / NAME
    paths = shapepipe_split_paths(first, 3)
    assert [str(p) for p in paths[1:]] == [os.path.join("output", f"run_Ng{n}u", "ngmix_runner", "output", NAME)
                                           for n in (2, 3)]


def test_merge_sorts_by_id_and_checks_ranges(tmp_path):
    a = write_split(tmp_path / "a" / NAME, [12, 3, 5], -1, 14, n_tile=5)
    b = write_split(tmp_path / "b" / NAME, [15], 15, 19, n_tile=5)
    c = write_split(tmp_path / "c" / NAME, [], 20, 29, n_tile=5)  # an empty range is fine
    last = write_split(tmp_path / "last" / NAME, [30], 30, -1, n_tile=5)
    header, tables = merge_split_catalogues([b, last, c, a])
    assert header["ID_MIN"] == -1 and header["ID_MAX"] == -1 and header["NSPLIT"] == 4
    np.testing.assert_array_equal(tables["NOSHEAR"]["id"], [3, 5, 12, 15, 30])
    np.testing.assert_allclose(tables["1M"]["g1"], [2.003, 2.005, 2.012, 2.015, 2.030])
    # 5 of 7 tile objects: a range is missing, named in the message.
    with pytest.raises(JobError, match=r"3 objects .* tile has 5: id range\(s\) missing \(15-19, 30-40\)"):
        merge_split_catalogues([a, c])
    # Doubled ids without range headers (ShapePipe files) are still found.
    with pytest.raises(JobError, match="overlap"):
        merge_split_catalogues([a, b, write_split(tmp_path / "x" / NAME, [16], 16, 25, n_tile=5)])
    d = write_split(tmp_path / "d" / NAME, [5, 7], with_header=False)
    with pytest.raises(JobError, match=r"1 id\(s\) appear in several .*e\.g\. \[5\]"):
        merge_split_catalogues([a, d])
    e = write_split(tmp_path / "e" / NAME, [40], extra_column=True, with_header=False)
    with pytest.raises(JobError, match="columns of HDU 1M differ"):
        merge_split_catalogues([d, e])


def test_missing_split_file_follows_warning_option(tmp_path):
    a = write_split(tmp_path / "a" / NAME, [1, 2], -1, 2, n_tile=3)
    write_split(tmp_path / "b" / NAME, [3], 3, -1, n_tile=3)
    options = {"SPLIT_INPUT_DIR": [str(tmp_path / "b"), str(tmp_path / "nowhere")], "N_SPLIT_MAX": 1,
               "WARNING": "error"}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(JobError, match="nowhere/ngmix-244-252.fits not found"):
        merge_tile([a], out, options, LOG)
    summary = merge_tile([a], out, dict(options, WARNING="always"), LOG)
    assert summary == {"n_files": 1, "n_splits": 2, "n_rows": 3}
    with fits.open(out / NAME) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "1M", "1P", "2M", "2P", "NOSHEAR"]
        np.testing.assert_array_equal(hdus["NOSHEAR"].data["id"], [1, 2, 3])
