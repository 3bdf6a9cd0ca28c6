"""merge_headers: per-exposure header files into one text header store, WCS on demand."""

import logging
import sqlite3

import numpy as np
import pytest
from astropy.wcs import WCS

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.header_store import HeaderStore
from shapepipe_modules.merge_headers.merge_headers import exposure_from_file_name, merge_header_files
from shapepipe_modules.merge_headers.runner import OPTIONS, merge_headers
from shapepipe_modules.split_exp.split_exp import split_exposure, write_header_file
from test_split_exp import SHAPE, make_exposure


def split_two_exposures(tmp_path):
    out = tmp_path / "split"
    out.mkdir()
    truths = {}
    for seed, exposure in enumerate(("2113737", "2113800")):
        paths, truth = make_exposure(tmp_path / "in", exposure=exposure, n_ccd=3, seed=seed)
        split_exposure(paths, ["image", "weight", "flag"], f"-{exposure}", out)
        truths[exposure] = truth
    return out, truths


def test_store_gives_each_ccd_wcs_and_header(tmp_path):
    out, truths = split_two_exposures(tmp_path)
    store_path = tmp_path / "log_exp_headers.sqlite"
    counts = merge_header_files(sorted(out.glob("headers-*.npy")), store_path)
    assert counts == {"exposures": 2, "ccds": 6}
    x, y = np.meshgrid(np.linspace(1, SHAPE[1], 4), np.linspace(1, SHAPE[0], 4))
    with HeaderStore(store_path) as store:
        assert store.exposures() == ["2113737", "2113800"]
        for exposure, truth in truths.items():
            assert store.ccds(exposure) == [0, 1, 2]
            for ccd in range(3):
                reference = WCS(truth["header"][ccd])
                ra, dec = reference.all_pix2world(x.ravel(), y.ravel(), 1)
                x_back, y_back = store.wcs(exposure, ccd).all_world2pix(ra, dec, 1)
                np.testing.assert_allclose(x_back, x.ravel(), atol=1e-6)
                np.testing.assert_allclose(y_back, y.ravel(), atol=1e-6)
                header = store.header(f"-{exposure}", ccd)
                assert header["GAIN"] == pytest.approx(1.5 + 0.1 * ccd)
                assert header["CTYPE1"] == truth["header"][ccd]["CTYPE1"]


def test_store_holds_text_not_pickles(tmp_path):
    out, _ = split_two_exposures(tmp_path)
    store_path = tmp_path / "log_exp_headers.sqlite"
    merge_header_files(sorted(out.glob("headers-*.npy")), store_path)
    with sqlite3.connect(store_path) as connection:
        rows = connection.execute("SELECT key, value FROM headers").fetchall()
    assert len(rows) == 2
    for key, value in rows:
        text = bytes(value).decode("utf-8")  # JSON text; a pickle would not decode
        assert text.startswith("{") and "CTYPE1" in text


def test_exposure_from_file_name():
    assert exposure_from_file_name("/a/headers-2113737.npy") == "2113737"
    with pytest.raises(JobError, match="headers"):
        exposure_from_file_name("/a/image-2113737.npy")


def test_bad_header_files_fail_naming_them(tmp_path):
    empty = write_header_file(tmp_path / "headers-1.npy", [None, None])
    with pytest.raises(JobError, match="headers-1.npy holds no CCD header"):
        merge_header_files([empty], tmp_path / "store.sqlite")
    garbage = tmp_path / "headers-2.npy"
    garbage.write_bytes(b"not an npy file")
    with pytest.raises(JobError, match="headers-2.npy"):
        merge_header_files([garbage], tmp_path / "store.sqlite")
    # A failed merge leaves no store behind.
    assert not (tmp_path / "store.sqlite").exists()


def test_runner_function_writes_store_in_output_dir(tmp_path):
    out, _ = split_two_exposures(tmp_path)
    table = {f"-{e}": [out / f"headers-{e}.npy"] for e in ("2113737", "2113800")}
    values = {option.name: option.default for option in OPTIONS}
    values["OUTPUT_PATH"] = str(tmp_path / "shapepipe_output")
    job_out = tmp_path / "job_out"
    job_out.mkdir()
    job = Job(module="merge_headers", module_run="merge_headers", number="", inputs=[p[0] for p in table.values()],
              input_table=table, output_dir=job_out, log_dir=tmp_path, options=values,
              logger=logging.getLogger("test_merge_headers"), run_dir=tmp_path)
    assert merge_headers(job) == {"exposures": 2, "ccds": 6}
    assert [p.name for p in job_out.iterdir()] == ["log_exp_headers.sqlite"]
    with HeaderStore(job_out / "log_exp_headers.sqlite") as store:
        assert len(store) == 2
        assert store.header("2113800", 2)["EXTNAME"] == "ccd02"
    # ShapePipe's OUTPUT_PATH gets an identical copy.
    copy = tmp_path / "shapepipe_output" / "log_exp_headers.sqlite"
    assert copy.read_bytes() == (job_out / "log_exp_headers.sqlite").read_bytes()
