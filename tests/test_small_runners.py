"""random_cat, match_external and pastecat (ShapePipe's small runners) against independent computations."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from conftest import run_module
from shapepipe.errors import JobError, JobUnprocessable
from shapepipe_modules.io.ldac import write_ldac
from shapepipe_modules.match_external.runner import match_external
from shapepipe_modules.pastecat.runner import pastecat
from shapepipe_modules.random_cat.runner import random_cat

NUMBER = "-244-252"


def tile_files(folder, scale_arcsec=2.0, shape=(300, 400)):
    """An image header with a TAN WCS and a flag image: a masked disc, a masked stripe, a masked bit."""
    ny, nx = shape
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=122.0, CRVAL2=36.0, CRPIX1=nx / 2,
                  CRPIX2=ny / 2, CD1_1=-scale_arcsec / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=scale_arcsec / 3600)
    flag = np.zeros(shape, np.int16)
    yy, xx = np.mgrid[:ny, :nx]
    flag[np.hypot(xx - 250, yy - 150) < 60] |= 2
    flag[:, :50] |= 4
    flag[200:220, 100:300] |= 1024
    image_path, flag_path = folder / f"image{NUMBER}.fits", folder / f"pipeline_flag{NUMBER}.fits"
    fits.PrimaryHDU(np.zeros(shape, np.float32), header).writeto(image_path)
    fits.PrimaryHDU(flag, header).writeto(flag_path)
    return image_path, flag_path, flag, WCS(header)


def test_random_points_are_uniform_over_the_unmasked_area(tmp_path):
    image, flag_path, flag, wcs = tile_files(tmp_path)
    n = 40000
    summary = run_module(random_cat, [image, flag_path], tmp_path / "out", NUMBER, N_RANDOM=n)
    table = Table.read(tmp_path / "out" / f"random_cat{NUMBER}.fits")
    assert len(table) == n == summary["points"]
    assert np.all(table["TILE_ID"] == 244.252)
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    column, row = np.floor(x - 0.5).astype(int), np.floor(y - 0.5).astype(int)
    assert np.all(flag[row, column] == 0)  # none in a masked pixel
    ra, dec = wcs.all_pix2world(x, y, 1)
    np.testing.assert_allclose(table["RA"], ra, atol=1e-9)
    np.testing.assert_allclose(table["DEC"], dec, atol=1e-9)
    # Counts in 20x20-pixel cells against n * (unmasked pixels of the cell) / (all unmasked pixels).
    clear = (flag == 0).reshape(15, 20, 20, 20).sum(axis=(1, 3))
    counts = np.histogram2d(row, column, bins=(15, 20), range=((0, 300), (0, 400)))[0]
    expected = n * clear / clear.sum()
    used = expected > 0
    assert np.all(counts[~used] == 0)
    chi2 = np.sum((counts[used] - expected[used]) ** 2 / expected[used])
    dof = used.sum() - 1
    # Poisson: chi2/dof = 1 +- sqrt(2/dof) (0.085 here); 4 sigma bounds.
    assert abs(chi2 / dof - 1) < 4 * np.sqrt(2 / dof), chi2 / dof
    area = (2.0 / 3600) ** 2 * (flag == 0).sum()
    assert summary["area_deg2"] == pytest.approx(area, rel=1e-3)


def test_density_mode_and_healpix_map(tmp_path):
    pytest.importorskip("healsparse")
    import hpgeom

    from shapepipe_modules.io.readers import HEALSPARSE

    image, flag_path, flag, wcs = tile_files(tmp_path)
    nside = 2048
    summary = run_module(random_cat, [image, flag_path], tmp_path / "out", NUMBER, N_RANDOM=2.0e5, DENSITY=True,
                         SAVE_MASK_AS_HEALPIX=True, HEALPIX_OUT_NSIDE=nside)
    area = (2.0 / 3600) ** 2 * (flag == 0).sum()
    assert summary["points"] == round(2.0e5 * area)
    hsp = HEALSPARSE.read(tmp_path / "out" / f"mask_hp{NUMBER}.hsp")
    assert hsp.nside_sparse == nside
    pixels = hsp.valid_pixels
    # Exact fractions from every pixel centre (the module samples a sub-grid).
    yy, xx = np.mgrid[: flag.shape[0], : flag.shape[1]]
    ra, dec = wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    index = hpgeom.angle_to_pixel(nside, ra, dec)
    unique, inverse = np.unique(index, return_inverse=True)
    exact = np.bincount(inverse, weights=(flag.ravel() == 0)) / np.bincount(inverse)
    assert set(pixels.tolist()) <= set(unique.tolist())
    full = np.bincount(inverse) > 0.5 * np.bincount(inverse).max()  # pixels well inside the image
    values = hsp[unique[full]]
    assert np.all(np.abs(values - exact[full]) < 0.15)
    assert np.mean(np.abs(values - exact[full])) < 0.03


def test_fully_masked_tile_is_an_error_naming_the_file(tmp_path):
    image, flag_path, flag, _ = tile_files(tmp_path)
    fits.PrimaryHDU(np.ones_like(flag), fits.getheader(flag_path)).writeto(flag_path, overwrite=True)
    with pytest.raises(JobError, match="masks every pixel"):
        run_module(random_cat, [image, flag_path], tmp_path / "out", NUMBER, N_RANDOM=10)


def _catalogues(tmp_path):
    rng = np.random.default_rng(4)
    n = 200
    ra, dec = rng.uniform(10.0, 10.5, n), rng.uniform(-5.0, -4.5, n)
    cat = Table({"NUMBER": np.arange(1, n + 1, dtype=np.int32), "XWIN_WORLD": ra, "YWIN_WORLD": dec,
                 "MAG_AUTO": rng.uniform(18, 24, n).astype(np.float32)})
    path = tmp_path / f"final_cat{NUMBER}.fits"
    write_ldac(path, cat, fits.Header())
    # 150 counterparts 0.1 arcsec away (in a random direction), 100 unrelated objects far away.
    chosen = rng.permutation(n)[:150]
    angle = rng.uniform(0, 2 * np.pi, 150)
    ext_ra = ra[chosen] + 0.1 / 3600 * np.cos(angle) / np.cos(np.radians(dec[chosen]))
    ext_dec = dec[chosen] + 0.1 / 3600 * np.sin(angle)
    ext = Table({"RA": np.r_[ext_ra, rng.uniform(20, 21, 100)], "Dec": np.r_[ext_dec, rng.uniform(5, 6, 100)],
                 "CFIS_ID": np.arange(250) + 1000, "r_mag": rng.uniform(18, 24, 250)})
    ext_path = tmp_path / "external.fits"
    ext.write(ext_path)
    return path, ext_path, chosen


def test_match_external_copies_the_right_rows(tmp_path):
    path, ext_path, chosen = _catalogues(tmp_path)
    options = dict(TOLERANCE=0.5, COL_MATCH=["XWIN_WORLD", "YWIN_WORLD"], EXTERNAL_CAT_PATH=str(ext_path),
                   EXTERNAL_COL_MATCH=["RA", "Dec"], EXTERNAL_COL_COPY=["CFIS_ID", "r_mag"], OUTPUT_DISTANCE=True)
    summary = run_module(match_external, [path], tmp_path / "out", NUMBER, **options)
    assert summary == {"objects": 200, "matched": 150, "written": 150}
    out = Table.read(tmp_path / "out" / f"cat_matched{NUMBER}.fits", hdu="MATCHED")
    expected = {int(k) + 1: 1000 + i for i, k in enumerate(chosen)}  # NUMBER -> CFIS_ID
    assert {int(n): int(c) for n, c in zip(out["NUMBER"], out["CFIS_ID"])} == expected
    np.testing.assert_allclose(out["distance"], 0.1, atol=1e-3)
    # Every object kept, the unmatched marked.
    run_module(match_external, [path], tmp_path / "all", NUMBER, MARK_NON_MATCHED=-99.0, **options)
    every = Table.read(tmp_path / "all" / f"cat_matched{NUMBER}.fits", hdu="MATCHED")
    assert len(every) == 200 and np.sum(every["CFIS_ID"] == -99.0) == 50
    # No counterpart within the tolerance: the job is unprocessable.
    with pytest.raises(JobUnprocessable, match="no object within 0.01 arcsec"):
        run_module(match_external, [path], tmp_path / "none", NUMBER, **dict(options, TOLERANCE=0.01))


def test_match_external_names_a_missing_column(tmp_path):
    path, ext_path, _ = _catalogues(tmp_path)
    with pytest.raises(JobError, match="column r_mg is not in the external catalogue"):
        run_module(match_external, [path], tmp_path / "out", NUMBER, TOLERANCE=0.5,
                   COL_MATCH=["XWIN_WORLD", "YWIN_WORLD"], EXTERNAL_CAT_PATH=str(ext_path),
                   EXTERNAL_COL_MATCH=["RA", "Dec"], EXTERNAL_COL_COPY=["r_mg"])


def test_pastecat_pastes_checked_tables(tmp_path):
    numbers = np.arange(1, 51, dtype=np.int32)
    first, second = tmp_path / f"sexcat{NUMBER}.fits", tmp_path / f"ngmix{NUMBER}.fits"
    write_ldac(first, Table({"NUMBER": numbers, "MAG": np.linspace(18, 24, 50)}), fits.Header())
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"NUMBER": numbers, "G1": np.zeros(50)}))]).writeto(second)
    summary = run_module(pastecat, [first, second], tmp_path / "out", NUMBER, HDU=[2, 1], EXT_NAME=["SEX", "SHAPE"],
                         CHECK_COL_NAME="NUMBER")
    assert summary == {"tables": 2, "rows": 50}
    with fits.open(tmp_path / "out" / f"cat_pasted{NUMBER}.fits") as hdus:
        assert [h.name for h in hdus[1:]] == ["SEX", "SHAPE"]
        np.testing.assert_array_equal(hdus["SHAPE"].data["NUMBER"], numbers)
        assert list(hdus["SEX"].columns.names) == ["NUMBER", "MAG"]
    shuffled = tmp_path / f"other{NUMBER}.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"NUMBER": numbers[::-1]}))]).writeto(shuffled)
    with pytest.raises(JobError, match=r"other-244-252.fits \(HDU 1\): column NUMBER differs .*first difference at row 0"):
        run_module(pastecat, [first, shuffled], tmp_path / "bad", NUMBER, HDU=[2, 1], CHECK_COL_NAME="NUMBER")
    with pytest.raises(JobError, match="2 inputs but 1 HDUs"):
        run_module(pastecat, [first, second], tmp_path / "bad2", NUMBER, HDU=[2])
