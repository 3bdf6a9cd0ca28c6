"""Tests of merge_final_cat."""

import numpy as np
import pytest
from astropy.io import fits

from shapepipe_modules.io.tables import read_fits_table, write_fits_table
from shapepipe_modules.tools import merge_final_cat as mfc


def final_cat(directory, tile, n, rng, extra=None, flux_dtype=np.float64):
    columns = {
        "NUMBER": np.arange(1, n + 1, dtype=np.int32),
        "XWIN_WORLD": rng.uniform(0, 1, n),
        "NGMIX_ELL_NOSHEAR": rng.normal(size=(n, 2)).astype(np.float32),
        "NGMIX_FLUX_NOSHEAR": rng.uniform(1, 2, n).astype(flux_dtype),
        "TILE_ID": np.array([tile] * n, dtype=f"U{len(tile)}"),
    }
    columns.update(extra or {})
    write_fits_table(directory / f"final_cat-{tile.replace('.', '-')}.fits", columns, extname="RESULTS")
    return columns


def test_merge_selected_columns_in_file_order(tmp_path, capsys):
    rng = np.random.default_rng(2)
    parts = [final_cat(tmp_path, tile, n, rng) for tile, n in [("244.252", 5), ("245.252", 0), ("246.252", 7)]]
    param = tmp_path / "final_cat.param"
    param.write_text("# coordinates\nXWIN_WORLD\n\n#NUMBER\nNGMIX_ELL_NOSHEAR\nTILE_ID\n")
    out = tmp_path / "merged.fits"
    assert mfc.main(["-i", str(tmp_path), "-p", str(param), "-o", str(out), "-q"]) == 0
    merged = read_fits_table(out, "RESULTS")
    assert merged.colnames == ["XWIN_WORLD", "NGMIX_ELL_NOSHEAR", "TILE_ID"]
    np.testing.assert_array_equal(merged["XWIN_WORLD"], np.concatenate([p["XWIN_WORLD"] for p in parts]))
    np.testing.assert_array_equal(merged["NGMIX_ELL_NOSHEAR"],
                                  np.concatenate([p["NGMIX_ELL_NOSHEAR"] for p in parts]))
    assert list(merged["TILE_ID"]) == ["244.252"] * 5 + ["246.252"] * 7
    # .npy output, all columns, only listed tiles.
    tiles = tmp_path / "tiles.txt"
    tiles.write_text("246.252\nbad line\n")
    npy = tmp_path / "merged.npy"
    assert mfc.main(["-i", str(tmp_path), "-l", str(tiles), "-o", str(npy)]) == 0
    assert "tiles.txt:2" in capsys.readouterr().err
    array = np.load(npy, allow_pickle=False)
    assert array.dtype.names == ("NUMBER", "XWIN_WORLD", "NGMIX_ELL_NOSHEAR", "NGMIX_FLUX_NOSHEAR", "TILE_ID")
    np.testing.assert_array_equal(array["NUMBER"], np.arange(1, 8))


def test_inconsistent_schemas_are_refused_with_the_file_named(tmp_path, capsys):
    rng = np.random.default_rng(3)
    final_cat(tmp_path, "244.252", 4, rng)
    final_cat(tmp_path, "245.252", 4, rng, flux_dtype=np.int16)
    out = tmp_path / "m.fits"
    assert mfc.main(["-i", str(tmp_path), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "final_cat-245-252.fits: column types differ from final_cat-244-252.fits" in err
    assert "NGMIX_FLUX_NOSHEAR" in err and not out.exists()
    param = tmp_path / "p.param"
    param.write_text("NUMBER\nXWIN_WORLD\n")
    assert mfc.main(["-i", str(tmp_path), "-p", str(param), "-o", str(out), "-q"]) == 0
    (tmp_path / "final_cat-245-252.fits").unlink()
    final_cat(tmp_path, "246.252", 2, rng, extra={"MORE": np.zeros(2)})
    assert mfc.main(["-i", str(tmp_path), "-o", str(out), "-q", "-n", "final_cat-24"]) == 1
    assert "extra: ['MORE']" in capsys.readouterr().err
    param.write_text("NUMBER\nGONE\n")
    assert mfc.main(["-i", str(tmp_path), "-p", str(param), "-o", str(out), "-q"]) == 1
    assert "final_cat-244-252.fits: columns ['GONE'] missing" in capsys.readouterr().err
    param.write_text("NUMBER\n# c\nNUMBER\n")
    assert mfc.main(["-i", str(tmp_path), "-p", str(param), "-o", str(out)]) == 1
    assert "p.param:3: column 'NUMBER' already listed on line 1" in capsys.readouterr().err
    assert mfc.main(["-i", str(tmp_path / "empty"), "-o", str(out)]) == 1


def test_string_lengths_may_differ(tmp_path):
    rng = np.random.default_rng(4)
    final_cat(tmp_path, "1.2", 2, rng)  # TILE_ID of 3 characters
    final_cat(tmp_path, "244.252", 3, rng)
    paths = mfc.find_catalogues(tmp_path)
    merged = mfc.merge_catalogues(paths, ["TILE_ID"])
    assert merged["TILE_ID"].tolist() == ["1.2", "1.2", "244.252", "244.252", "244.252"]
    with pytest.raises(mfc.ToolError, match="no HDU 'OTHER'"):
        mfc.merge_catalogues(paths, hdu="OTHER")
