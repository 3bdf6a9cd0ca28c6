"""Data by name (shapepipe.Repository) after a GOLD run on tiny, and on small runs of a user module.

Every product is compared with an independent read of its file (astropy,
sqlite3, numpy), never with the reader the repository uses.
"""

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe import Repository
from shapepipe.datasets import DatasetTable, Product
from shapepipe.repository import RepositoryError


def _direct_first_image(path):
    with fits.open(path) as hdus:
        hdu = next(h for h in hdus if h.is_image and h.header.get("NAXIS", 0) > 0)
        return np.array(hdu.data), hdu.header.copy()


def _assert_same_table(got, expected, where):
    assert got.colnames == expected.colnames, where
    assert len(got) == len(expected), where
    for name in expected.colnames:
        a, b = np.asarray(got[name]), np.asarray(expected[name])
        if a.dtype.kind == "f":
            assert np.array_equal(a, b, equal_nan=True), (where, name)
        else:
            assert np.array_equal(a, b), (where, name)


def _direct_ldac(path):
    """LDAC_OBJECTS, with VIGNET rebuilt from LDAC_VIGNET (ROW, VIGNET) when stamps are kept by rows."""
    table = Table.read(path, hdu="LDAC_OBJECTS", character_as_bytes=False)
    with fits.open(path) as hdus:
        if "LDAC_VIGNET" not in hdus:
            return table
        header = hdus["LDAC_VIGNET"].header
        rows = np.asarray(hdus["LDAC_VIGNET"].data["ROW"], dtype=int)
        stamps = np.asarray(hdus["LDAC_VIGNET"].data["VIGNET"])
    full = np.full((len(table), *stamps.shape[1:]), -1e30, dtype=stamps.dtype)
    full[rows] = stamps
    table.add_column(full, name="VIGNET", index=int(header.get("VIGNCOL", len(table.colnames))))
    return table


def _sqlite_keys(path, table):
    connection = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in connection.execute(f'SELECT key FROM "{table}"'))
    finally:
        connection.close()


def _compare(reader, product, path, where):
    """The product read by the repository against a direct read of ``path``."""
    if reader == "ldac":
        _assert_same_table(product, _direct_ldac(path), where)
    elif reader == "fits_table":
        _assert_same_table(product, Table.read(path, hdu=1, character_as_bytes=False), where)
    elif reader == "fits_tables":
        with fits.open(path) as hdus:
            names = [hdu.name for hdu in hdus[1:]]
        assert sorted(product) == sorted(names), where
        for name in names:
            _assert_same_table(product[name], Table.read(path, hdu=name, character_as_bytes=False), where)
    elif reader == "fits_image":
        data, header = _direct_first_image(path)
        assert np.array_equal(product.array, data, equal_nan=True), where
        assert product.header["NAXIS1"] == header["NAXIS1"], where
    elif reader == "fits_images":
        with fits.open(path) as hdus:
            arrays = [np.array(h.data) for h in hdus if h.is_image and h.header.get("NAXIS", 0) > 0]
        assert len(product) == len(arrays) >= 1, where
        assert all(np.array_equal(p.array, a, equal_nan=True) for p, a in zip(product, arrays)), where
    elif reader == "psfex":
        basis = fits.getdata(path, "PSF_DATA")["PSF_MASK"][0]
        assert np.allclose(product.basis, basis), where
        stamp = product.evaluate(100.0, 200.0)
        assert stamp.shape[0] == 1 and abs(stamp.sum() - 1) < 1e-9, where
    elif reader == "stamp_store":
        with product:
            ids = sorted(str(i) for i in product.object_ids())
        assert ids and len(ids) == len(_sqlite_keys(path, "objects")), where
    elif reader == "header_store":
        with product:
            exposures = sorted(product.exposures())
        assert exposures == sorted(k for k in _sqlite_keys(path, "headers")), where
    elif reader == "text":
        assert product == Path(path).read_text(), where
    elif reader == "json":
        assert product == json.loads(Path(path).read_text()), where
    elif reader == "npy":
        assert np.array_equal(product, np.load(path, allow_pickle=False)), where
    elif reader == "png":
        assert product == Path(path).read_bytes(), where
    elif reader == "hdf5_table":
        import h5py

        with h5py.File(path, "r") as handle:
            names = list(handle["RESULTS"])
            assert sorted(product) == sorted(names) and names, where
            for name in names:
                direct = handle["RESULTS"][name][()]
                assert np.array_equal(product[name], direct, equal_nan=direct.dtype.kind in "fc"), where
    else:
        raise AssertionError(f"{where}: no direct read for reader {reader}")


def _compare_md(reader, md, path, where):
    """``<type>_md`` against the header or summary read directly."""
    if reader in ("fits_image",):
        assert md == _direct_first_image(path)[1], where
    elif reader == "ldac":
        with fits.open(path) as hdus:
            cards = hdus["LDAC_IMHEAD"].data["Field Header Card"][0]
        assert md == fits.Header.fromstring("".join(str(card).ljust(80) for card in cards)), where
    elif reader == "fits_table":
        assert md == fits.getheader(path, 1), where
    elif reader in ("fits_tables", "fits_images"):
        assert md == fits.getheader(path, 0), where
    elif reader == "psfex":
        assert md == fits.getheader(path, "PSF_DATA"), where
    elif reader in ("stamp_store", "header_store"):
        table = "objects" if reader == "stamp_store" else "headers"
        assert md["entries"] == len(_sqlite_keys(path, table)), where
    elif reader == "npy":
        assert md["shape"] == np.load(path, allow_pickle=False).shape, where
    elif reader == "hdf5_table":
        import h5py

        with h5py.File(path, "r") as handle:
            assert md["columns"] == list(handle["RESULTS"]), where
            assert md["rows"] == len(handle["RESULTS"][md["columns"][0]]), where
    elif reader == "png":
        import matplotlib.image

        height, width = matplotlib.image.imread(path).shape[:2]
        assert (md["width"], md["height"]) == (width, height), where
    else:  # text, json
        assert md["bytes"] == Path(path).stat().st_size, where


def _published_files(output_dir):
    """Every published output file of every module run (walked here, never by the repository)."""
    files = set()
    for output in Path(output_dir).glob("*/*/output"):
        for path in output.rglob("*"):
            if ".staging" not in path.parts and (path.is_file() or path.is_symlink()):
                files.add(path)
    return files


def test_every_product_of_a_gold_run_by_name(tiny_gold_run):
    repo = Repository(tiny_gold_run)
    table = repo.table
    seen, types_with_products = set(), 0
    for name in repo.dataset_types():
        reader = table.get(name).reader.name
        ids = repo.query(name)
        types_with_products += bool(ids)
        for data_id in ids:
            where = f"{name} {data_id}"
            path = repo.get(f"{name}_filename", **data_id)
            assert path not in seen, where
            seen.add(path)
            _compare(reader, repo.get(name, **data_id), path, where)
            _compare_md(reader, repo.get(f"{name}_md", **data_id), path, where)
    # Every published file of the run is some product, reached by name.
    assert seen == _published_files(tiny_gold_run)
    assert types_with_products >= 35
    assert repo.unmatched() == {}


def test_gold_products_by_data_id(tiny_gold_run):
    repo = Repository(tiny_gold_run)
    # The tile catalogue is the sextractor_run_1 output of the Sx stage.
    path = repo.get("sexcat_filename", tile="244.252")
    assert path.name == "sexcat-244-252.fits" and path.parent.parent.name == "sextractor_run_1"
    assert repo.query("sexcat", tile="244.252") == [{"tile": "244.252"}]
    ccds = repo.query("sexcat", exposure="2100001")
    assert ccds == [{"exposure": 2100001, "ccd": 0}, {"exposure": 2100001, "ccd": 1}]
    # exposure given as text or number, the CCD header without the pixels
    header = repo.get("exposure_md", exposure="2100001", ccd=1)
    assert header == repo.get("exposure_md", exposure=2100001, ccd="1")
    assert header["EXPNUM"] == 2100001 and header["EXTNAME"] == "ccd01"
    # the final catalogue has one row per tile detection
    assert len(repo.get("final_cat", tile="244.252")) == len(repo.get("sexcat", tile="244.252"))
    with pytest.raises(RepositoryError) as error:
        repo.get("sexcat", tile="244.253")
    message = str(error.value)
    assert "sexcat" in message and "tile=244.253" in message and "run_sp_tile_Sx_exp_SxSePsf" in message
    with pytest.raises(RepositoryError, match="does not fit its keys"):
        repo.get("sexcat", tile="244.252", ccd=3)
    with pytest.raises(RepositoryError, match="did you mean sexcat"):
        repo.query("sexcats")


def test_shapepipe_datasets_lists_counts(tiny_gold_run):
    completed = subprocess.run([sys.executable, "-m", "shapepipe.repository", str(tiny_gold_run)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert completed.returncode == 0, completed.stdout
    rows = {line.split()[0]: line.split() for line in completed.stdout.splitlines()[1:-1]}
    counts = Repository(tiny_gold_run).counts()
    assert {name: int(row[1]) for name, row in rows.items()} == counts
    assert counts["sexcat"] == 5 and counts["psf"] == 4 and counts["final_cat"] == 1


# -- small runs of a user module: failed jobs, damaged records, deleted products ----------------

_MODULE = '''
from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option


@module(name="flaky", version="1.0", file_pattern="numbers", file_ext=".txt", numbering_scheme="_0",
        options=(Option("FAIL", "list", [], "numbers that fail"), Option("TAG", "str", "", "written out")),
        products=(Product("flaky_out", "flaky_out{number}.txt", "text", ids=("number",)),))
def flaky(job):
    job.output_path(f"flaky_out{job.number}.txt").write_text(job.options["TAG"])
    if job.number in job.options["FAIL"]:
        raise JobError(f"{job.inputs[0]}: told to fail")
'''


def _run(tmp_path, tag, fail=""):
    config = tmp_path / f"config_{tag}.ini"
    config.write_text(textwrap.dedent(f"""\
        [DEFAULT]
        RUN_NAME = run_{tag}
        [EXECUTION]
        MODULE = flaky
        MODULE_DIR = {tmp_path / 'mods'}
        [FILE]
        INPUT_DIR = {tmp_path / 'data'}
        OUTPUT_DIR = {tmp_path / 'out'}
        [JOB]
        SMP_BATCH_SIZE = 1
        [FLAKY]
        TAG = {tag}
        FAIL = {fail}
        """))
    subprocess.run([sys.executable, "-m", "shapepipe.cli", "-c", str(config)], stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, text=True)
    return next((tmp_path / "out").glob(f"run_{tag}_*"))


@pytest.fixture
def two_runs(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "flaky.py").write_text(_MODULE)
    (tmp_path / "data").mkdir()
    for number in (1, 2, 3):
        (tmp_path / "data" / f"numbers_{number}.txt").write_text(str(number))
    first = _run(tmp_path, "first")
    second = _run(tmp_path, "second", fail="_2")
    return tmp_path, first, second


def test_failed_job_is_invisible(two_runs):
    tmp_path, first, second = two_runs
    repo = Repository(tmp_path / "out", module_dirs=[tmp_path / "mods"])
    assert repo.get("flaky_out", number="_1") == "second"
    # the second run's job _2 failed: the first run's product is the latest good one
    assert repo.get("flaky_out", number="_2") == "first"
    with pytest.raises(RepositoryError) as error:
        repo.get("flaky_out", number="_2", run=second.name)
    assert "flaky_out" in str(error.value) and "number=_2" in str(error.value) and second.name in str(error.value)
    assert repo.query("flaky_out", run=second.name) == [{"number": "_1"}, {"number": "_3"}]

    # A job table that lists the product of a job that is not done (a failed job whose
    # file stayed): invisible by default, returned only when asked for.
    table = json.loads((second / "jobs.json").read_text())
    for row in table:
        if row["number"] == "_3":
            row["status"] = "failed"
    (second / "jobs.json").write_text(json.dumps(table))
    repo = Repository(tmp_path / "out", module_dirs=[tmp_path / "mods"])
    assert (second / "flaky" / "output" / "flaky_out_3.txt").read_text() == "second"
    assert repo.get("flaky_out", number="_3") == "first"
    assert repo.get("flaky_out", number="_3", include_failed=True) == "second"
    assert {"number": "_3"} not in repo.query("flaky_out", run=second.name)


def test_deleted_product_and_damaged_record_name_themselves(two_runs):
    tmp_path, first, second = two_runs
    mods = [tmp_path / "mods"]
    deleted = second / "flaky" / "output" / "flaky_out_1.txt"
    deleted.unlink()
    repo = Repository(tmp_path / "out", module_dirs=mods)
    with pytest.raises(RepositoryError) as error:
        repo.get("flaky_out", number="_1")  # never the first run's file in its place
    assert str(deleted) in str(error.value) and second.name in str(error.value)

    (second / "run.json").write_text('{"format": 1, "run_dir": "')
    repo = Repository(tmp_path / "out", module_dirs=mods)
    with pytest.raises(RepositoryError) as error:
        repo.get("flaky_out", number="_3")
    assert str(second / "run.json") in str(error.value)
    with pytest.raises(RepositoryError, match="run.json"):
        repo.query("flaky_out")
    # a pinned, intact run still answers
    assert repo.get("flaky_out", number="_3", run=first.name) == "first"

    shutil.rmtree(second)
    (first / "jobs.json").write_text("[{]")
    repo = Repository(tmp_path / "out", module_dirs=mods)
    with pytest.raises(RepositoryError, match=str(first / "jobs.json")):
        repo.get("flaky_out", number="_3")


def test_product_templates_classify_files():
    table = DatasetTable()
    assert table.classify("psfex", "star_split_ratio_80-2100001-10.psf")[1] == {"exposure": 2100001, "ccd": 10}
    dataset, data_id, number = table.classify("sextractor", "sexcat-244-252.fits")
    assert (dataset.name, data_id, number) == ("sexcat", {"tile": "244.252"}, "-244-252")
    assert table.classify("sextractor", "sexcat_sm-244-252.fits")[0].name == "check_image"
    assert table.classify("spread_model", "sexcat_sm-244-252.fits")[0].name == "sexcat_sm"
    assert table.classify("setools", "mask/galaxy_selection-244-252.fits")[1] == {
        "tile": "244.252", "selection": "galaxy_selection"}
    assert table.classify("setools", "mask/star_selection-2100001-0.fits")[0].name == "star_selection"
    assert table.classify("psfex", "notes.txt") is None
    assert table.get("sexcat").number_of({"tile": "244.252"}) == ("-244-252", {})
    assert table.get("sexcat").number_of({"exposure": "2100001", "ccd": 3}) == ("-2100001-3", {})
    assert table.get("sexcat").number_of({"tile": "24.252"}) is None
    with pytest.raises(ValueError, match="needs ids"):
        Product("x", "x{number}.fits", "text")
