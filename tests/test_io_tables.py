"""Tests of the generic FITS table helpers."""

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe_modules.io.tables import FitsTableError, read_fits_table, write_fits_table, write_fits_tables


def test_write_read_dict_with_header_and_vector_column(tmp_path):
    path = tmp_path / "final_cat-244-252.fits"
    header = fits.Header()
    header["TILE_ID"] = ("244.252", "CFIS tile")
    header["NAXIS"] = 7  # structural: must not corrupt the table
    header["TTYPE1"] = "BOGUS"
    header.add_history("made by a test")
    columns = {"NUMBER": np.arange(1, 4), "FLUX": np.array([1.5, 2.5, np.nan]),
               "VEC": np.arange(6, dtype=np.float32).reshape(3, 2), "NAME": np.array(["a", "bb", "ccc"])}
    write_fits_table(path, columns, header=header, extname="RESULTS")
    assert os.listdir(tmp_path) == [path.name]
    table = read_fits_table(path, hdu="RESULTS")
    assert table.colnames == ["NUMBER", "FLUX", "VEC", "NAME"]
    np.testing.assert_array_equal(table["NUMBER"], [1, 2, 3])
    np.testing.assert_array_equal(table["VEC"], columns["VEC"])
    assert np.isnan(table["FLUX"][2]) and list(table["NAME"]) == ["a", "bb", "ccc"]
    assert table.meta["TILE_ID"] == "244.252"
    with fits.open(path) as hdul:
        assert hdul[1].name == "RESULTS" and "made by a test" in str(hdul[1].header["HISTORY"])
    assert read_fits_table(path, columns=["FLUX", "NUMBER"]).colnames == ["FLUX", "NUMBER"]


def test_several_tables_and_overwrite(tmp_path):
    path = tmp_path / "t.fits"
    write_fits_tables(path, [("A", Table({"x": [1]}), None), ("B", {"y": [2.0, 3.0]}, None)])
    assert len(read_fits_table(path, "B")) == 2
    with pytest.raises(FitsTableError, match="exists"):
        write_fits_table(path, {"x": [1]}, overwrite=False)
    write_fits_table(path, np.zeros(4, dtype=[("z", "i4")]))
    assert read_fits_table(path).colnames == ["z"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FitsTableError, match="missing.fits"):
        read_fits_table(tmp_path / "missing.fits")
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(FitsTableError, match="bad.fits"):
        read_fits_table(bad)
    image = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2)))]).writeto(image)
    with pytest.raises(FitsTableError, match="image.fits.*not a table"):
        read_fits_table(image)
    with pytest.raises(FitsTableError, match="image.fits.*no HDU 'RESULTS'"):
        read_fits_table(image, "RESULTS")
    write_fits_table(tmp_path / "t.fits", {"a": [1]})
    with pytest.raises(FitsTableError, match="t.fits.*missing columns \\['b'\\]"):
        read_fits_table(tmp_path / "t.fits", columns=["a", "b"])
