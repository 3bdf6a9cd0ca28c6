"""FITS-LDAC read/write (shapepipe_modules.io.ldac)."""

import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe_modules.io.ldac import LDACError, read_ldac, write_ldac


def _header():
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = 100
    header["NAXIS2"] = 200
    header["CTYPE1"] = "RA---TAN"
    header["CRVAL1"] = 150.25
    header["SEXBKDEV"] = (12.5, "Median background RMS (ADU)")
    header["HISTORY"] = "2222222p.fits"
    return header


def test_round_trip_keeps_columns_shapes_and_header(tmp_path):
    rng = np.random.default_rng(0)
    table = Table()
    table["NUMBER"] = np.arange(1, 6, dtype="i4")
    table["FLUX_APER"] = rng.normal(size=(5, 3)).astype("f4")
    table["VIGNET"] = rng.normal(size=(5, 7, 9)).astype("f4")
    table["X_WORLD"] = rng.uniform(0, 360, 5)
    table["X_WORLD"].unit = "deg"
    path = tmp_path / "cat.fits"
    write_ldac(path, table, _header())
    with fits.open(path) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        assert hdus["LDAC_IMHEAD"].header["TDIM1"].replace(" ", "") == f"(80,{len(_header()) + 1})"
        assert hdus["LDAC_OBJECTS"].header["TDIM3"] == "(9,7)"
    back, header = read_ldac(path)
    assert back["VIGNET"].shape == (5, 7, 9)
    np.testing.assert_array_equal(back["VIGNET"], table["VIGNET"])
    np.testing.assert_array_equal(back["FLUX_APER"], table["FLUX_APER"])
    np.testing.assert_array_equal(back["NUMBER"], table["NUMBER"])
    assert str(back["X_WORLD"].unit) == "deg"
    assert header["CRVAL1"] == 150.25 and header["SEXBKDEV"] == 12.5 and header["NAXIS2"] == 200
    assert "2222222p.fits" in str(header["HISTORY"])


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "cat.fits"
    write_ldac(path, Table({"NUMBER": [1]}), _header())
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_ldac(path, Table({"BAD": [object()]}), _header())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat.fits"]


def test_non_ldac_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(path)
    with pytest.raises(LDACError, match="image.fits"):
        read_ldac(path)


@pytest.mark.external
@pytest.mark.skipif(shutil.which("source-extractor") is None, reason="source-extractor not installed")
def test_reads_a_catalogue_written_by_sextractor(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    image = rng.normal(100, 5, (128, 128)) + 2000 * np.exp(-((xx - 60.3) ** 2 + (yy - 40.7) ** 2) / 8)
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 5.0,
                          "CRPIX1": 64, "CRPIX2": 64, "CD1_1": -5e-5, "CD2_2": 5e-5, "CD1_2": 0, "CD2_1": 0})
    fits.PrimaryHDU(image.astype("f4"), header=header).writeto(tmp_path / "im.fits")
    (tmp_path / "p.param").write_text("NUMBER\nX_IMAGE\nY_IMAGE\nFLUX_APER(2)\nVIGNET(5,7)\n")
    subprocess.run(["source-extractor", "im.fits", "-c", "/dev/null", "-PARAMETERS_NAME", "p.param",
                    "-CATALOG_TYPE", "FITS_LDAC", "-CATALOG_NAME", "cat.fits", "-FILTER", "N", "-DETECT_THRESH", "10",
                    "-PHOT_APERTURES", "3,6", "-VERBOSE_TYPE", "QUIET"], cwd=tmp_path, check=True)
    table, image_header = read_ldac(tmp_path / "cat.fits")
    bright = np.argmax(table["FLUX_APER"][:, 1])
    assert abs(table["X_IMAGE"][bright] - 61.3) < 0.05 and abs(table["Y_IMAGE"][bright] - 41.7) < 0.05
    assert table["FLUX_APER"].shape == (len(table), 2) and table["VIGNET"].shape == (len(table), 7, 5)
    assert image_header["CRVAL2"] == 5.0 and image_header["NAXIS1"] == 128
    assert "SEXBKDEV" in image_header


def _vignet_table(rng, n=300):
    table = Table()
    table["NUMBER"] = np.arange(1, n + 1, dtype=np.int32)
    table["VIGNET"] = rng.normal(0, 1, (n, 15, 15)).astype(np.float32)
    table["VIGNET"].unit = "count"
    table["MAG_AUTO"] = rng.uniform(16, 25, n).astype(np.float32)
    table["FLAGS"] = (rng.random(n) < 0.2).astype(np.int16) * 2
    return table


def test_vignets_stored_by_rows_read_back_in_place(tmp_path):
    from shapepipe_modules.io.ldac import VIGNET_FILL, missing_vignets

    rng = np.random.default_rng(5)
    table = _vignet_table(rng)
    rows = (table["MAG_AUTO"] < 21) & (table["FLAGS"] == 0)
    assert 0 < rows.sum() < len(table)
    dense, sparse = tmp_path / "dense.fits", tmp_path / "sparse.fits"
    write_ldac(dense, table, _header())
    write_ldac(sparse, table, _header(), vignet_rows=rows, vignet_selection="MAG_AUTO < 21, FLAGS == 0")
    with fits.open(sparse) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS", "LDAC_VIGNET"]
        assert "VIGNET" not in hdus["LDAC_OBJECTS"].columns.names
        assert len(hdus["LDAC_VIGNET"].data) == rows.sum()
    # Smaller by the stamps of the rows left out (225 float32 each), less the new table's header,
    # ROW column and FITS block padding.
    saved = dense.stat().st_size - sparse.stat().st_size
    assert abs(saved - (len(table) - rows.sum()) * 225 * 4) <= 3 * 2880 + 4 * rows.sum()

    back, header = read_ldac(sparse)
    assert back.colnames == table.colnames
    assert header["CRVAL1"] == 150.25
    np.testing.assert_array_equal(back["VIGNET"][rows], table["VIGNET"][rows])
    assert np.all(back["VIGNET"][~rows] == VIGNET_FILL)
    for name in ("NUMBER", "MAG_AUTO", "FLAGS"):
        np.testing.assert_array_equal(back[name], table[name])
    assert missing_vignets(back) == (int((~rows).sum()), "MAG_AUTO < 21, FLAGS == 0")
    assert missing_vignets(back, rows)[0] == 0
    assert missing_vignets(back, ~rows)[0] == int((~rows).sum())
    # A table of stored rows written again is an ordinary catalogue.
    write_ldac(tmp_path / "again.fits", back[rows], header)
    again, _ = read_ldac(tmp_path / "again.fits")
    assert missing_vignets(again) == (0, "")
    np.testing.assert_array_equal(again["VIGNET"], table["VIGNET"][rows])


def test_store_vignets_for_rewrites_keeping_other_hdus(tmp_path):
    from shapepipe_modules.io.ldac import append_hdus, store_vignets_for

    rng = np.random.default_rng(6)
    table = _vignet_table(rng)
    path, direct = tmp_path / "cat.fits", tmp_path / "direct.fits"
    write_ldac(path, table, _header())
    epoch = fits.BinTableHDU(Table({"NUMBER": table["NUMBER"], "CCD_N": np.arange(len(table))}), name="EPOCH_0")
    append_hdus(path, [epoch])
    cards = fits.getheader(path, 1).tostring()
    kept, total = store_vignets_for(path, lambda t: np.asarray(t["FLAGS"]) == 0, "FLAGS == 0")
    rows = np.asarray(table["FLAGS"]) == 0
    assert (kept, total) == (rows.sum(), len(table))
    with fits.open(path) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS", "LDAC_VIGNET", "EPOCH_0"]
        assert hdus[1].header.tostring() == cards
        np.testing.assert_array_equal(hdus["EPOCH_0"].data["CCD_N"], np.arange(len(table)))
    write_ldac(direct, table, _header(), vignet_rows=rows, vignet_selection="FLAGS == 0")
    a, _ = read_ldac(path)
    b, _ = read_ldac(direct)
    for name in table.colnames:
        np.testing.assert_array_equal(a[name], b[name])
    # Already stored by rows: nothing to do.
    assert store_vignets_for(path, lambda t: np.ones(len(t), bool)) == (0, 0)
