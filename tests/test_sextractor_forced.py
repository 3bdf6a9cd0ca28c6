"""Forced positions (FORCED_CAT_PATH): the sep engine measures exactly the objects of an external catalogue."""

import numpy as np
import pytest
from astropy.table import Table

from conftest import run_module
from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.forced import forced_objects, relabel
from shapepipe_modules.sextractor.runner import DATA_DIR, OPTIONS, sextractor, validate


def test_relabel_splits_blends_and_keeps_neighbours():
    seg = np.zeros((10, 12), np.int32)
    seg[1:4, 1:4] = 1          # one forced position
    seg[5:9, 1:11] = 2         # two forced positions: split at x = 5.5
    seg[1:3, 8:11] = 3         # none: a neighbour
    x = np.array([2.0, 3.0, 8.0, 6.0])
    y = np.array([2.0, 7.0, 7.0, 0.0])  # the last on no segment
    out = relabel(seg, x, y)
    assert np.all(out[1:4, 1:4] == 1)
    assert np.all(out[5:9, 1:6] == 2) and np.all(out[5:9, 6:11] == 3)
    assert np.all(out[1:3, 8:11] == 4 + 3)  # neighbour label above the forced ones
    assert not np.any(out == 4) and np.all(out[seg == 0] == 0)


def test_forced_moments_of_a_gaussian():
    yy, xx = np.mgrid[:41, :41]
    sx, sy = 2.5, 1.5
    image = np.exp(-0.5 * ((xx - 20) ** 2 / sx**2 + (yy - 20) ** 2 / sy**2))
    seg = (image > 1e-4).astype(np.int32)
    fields = forced_objects(seg, image, 1e-6, np.array([20.0, 5.0]), np.array([20.0, 35.0]))
    assert fields["x2"][0] == pytest.approx(sx**2 + 1 / 12, rel=2e-3)
    assert fields["y2"][0] == pytest.approx(sy**2 + 1 / 12, rel=2e-3)
    assert abs(fields["xy"][0]) < 1e-9 and fields["npix"][0] == seg.sum()
    assert fields["npix"][1] == 0 and fields["x2"][1] == pytest.approx(1.6**2)  # no pixel: the round default


def test_validate_checks_the_catalogue(tmp_path):
    defaults = {option.name: option.default for option in OPTIONS}
    path = tmp_path / "ext.csv"
    Table({"ra": [1.0], "dec": [2.0], "id": [7]}).write(path, format="ascii.csv")
    assert validate(dict(defaults, FORCED_CAT_PATH=str(path), FORCED_ID_COL="id")) == []
    problems = validate(dict(defaults, FORCED_CAT_PATH=str(path), FORCED_RA_COL="ALPHA"))
    assert problems == [f"FORCED_CAT_PATH {path} has no column 'ALPHA' (FORCED_RA_COL; columns: ra, dec, id)"]
    problems = validate(dict(defaults, FORCED_CAT_PATH=str(path), ENGINE="sextractor", EXEC_PATH="true"))
    assert any("FORCED_CAT_PATH needs ENGINE = sep" in p for p in problems)


def test_forced_truth_positions_on_the_tiny_tile(tiny_sim, tmp_path):
    """Truth positions in, exactly the truth objects out, at those positions, with fluxes matching truth."""
    from shapepipe_modules.simulate import load_truth

    tile = (tiny_sim / "tile_list.txt").read_text().split()[0]
    truth = load_truth(tiny_sim, tile=tile)
    external = tmp_path / "external.fits"
    Table({"ID": truth["id"].astype(np.int32), "RA": truth["ra"], "DEC": truth["dec"]}).write(external)
    # Kron apertures of 6 Kron radii (2.5 by default) hold all but ~0.3% of a star's Moffat light and of a
    # galaxy's: the truth flux is then the expectation of FLUX_AUTO.
    sex = tmp_path / "wide_kron.sex"
    sex.write_text((DATA_DIR / "default_tile.sex").read_text().replace("PHOT_AUTOPARAMS  2.5, 3.5",
                                                                       "PHOT_AUTOPARAMS  6.0, 3.5"))
    number = "-" + tile.replace(".", "-")
    images = [tiny_sim / "tiles" / f"CFIS.{tile}.r.fits", tiny_sim / "tiles" / f"CFIS.{tile}.r.weight.fits.fz"]
    run_module(sextractor, images, tmp_path / "forced", number, DOT_SEX_FILE=str(sex), FLAG_IMAGE=False,
               BKG_RESIDUAL=False, FORCED_CAT_PATH=str(external), FORCED_ID_COL="ID")
    path = tmp_path / "forced" / f"sexcat{number}.fits"
    table, _ = read_ldac(path)
    assert table["NUMBER"].tolist() == truth["id"].tolist()
    np.testing.assert_allclose(table["X_IMAGE"], truth["x"], atol=1e-6)
    np.testing.assert_allclose(table["Y_IMAGE"], truth["y"], atol=1e-6)
    # Fluxes against truth: objects without a neighbour less than 2 mag fainter within 6 arcsec, not flagged,
    # not the large galaxy. Stars brighter than 18 lose ~2.5% of their flux to the sky estimate near them,
    # as in detection mode (the same engine): their pulls are excluded, their ratio is bounded.
    from scipy.spatial import cKDTree

    mag = np.asarray(truth["mag"])
    xy = np.column_stack([truth["x"], truth["y"]])
    near = cKDTree(xy).query_ball_point(xy, 6.0 / 0.187)
    crowded = np.array([any(mag[k] < mag[i] + 2 for k in group if k != i) for i, group in enumerate(near)])
    clean = ~crowded & (np.asarray(table["FLAGS"]) == 0) & ~np.asarray(truth["is_deep_sky"], bool)
    flux, error, true = np.asarray(table["FLUX_AUTO"]), np.asarray(table["FLUXERR_AUTO"]), np.asarray(truth["flux"])
    pull = (flux - true) / error
    bright = clean & (mag < 18)
    fainter = clean & (mag >= 18)
    print(f"forced tile: {len(table)} objects; {fainter.sum()} clean at mag >= 18: median pull "
          f"{np.median(pull[fainter]):.2f}, |pull| < 3 for {np.mean(np.abs(pull[fainter]) < 3):.3f}; "
          f"{bright.sum()} brighter: flux/truth {np.min(flux[bright] / true[bright]):.4f}"
          f"-{np.max(flux[bright] / true[bright]):.4f}")
    assert fainter.sum() >= 60 and bright.sum() >= 5
    assert abs(np.median(pull[fainter])) < 0.3
    assert np.mean(np.abs(pull[fainter]) < 3) > 0.9  # tile noise is correlated (resampling): pulls are ~1.5 wide
    assert np.all(np.abs(flux[bright] / true[bright] - 1) < 0.04)


def test_forced_catalogue_shared_by_a_ccd(tiny_sim, tiny_split, tmp_path):
    """The same external catalogue on an exposure CCD: its rows on that CCD, with the same NUMBER."""
    from shapepipe_modules.simulate import load_truth

    ccds, _ = tiny_split
    (exposure, ccd), files = sorted(ccds.items())[0]
    tile = (tiny_sim / "tile_list.txt").read_text().split()[0]
    truth = load_truth(tiny_sim, tile=tile)
    external = tmp_path / "external.csv"
    Table({"id": truth["id"], "ra": truth["ra"], "dec": truth["dec"]}).write(external, format="ascii.csv")
    number = f"-{exposure}-{ccd}"
    run_module(sextractor, [files["image"], files["weight"], files["flag"]], tmp_path, number, BKG_RESIDUAL=False,
               FORCED_CAT_PATH=str(external), FORCED_ID_COL="id", FORCED_RA_COL="ra", FORCED_DEC_COL="dec")
    table, _ = read_ldac(tmp_path / f"sexcat{number}.fits")
    on_ccd = load_truth(tiny_sim, exposure=exposure)
    import json

    params = json.loads((tiny_sim / "simulation.json").read_text())["parameters"]
    inside = ((on_ccd["ccd"] == ccd) & (on_ccd["x"] >= 0.5) & (on_ccd["x"] < params["ccd_nx"] + 0.5)
              & (on_ccd["y"] >= 0.5) & (on_ccd["y"] < params["ccd_ny"] + 0.5))
    expected = sorted(set(on_ccd["id"][inside].tolist()) & set(truth["id"].tolist()))
    assert 0 < len(table) < len(truth)
    assert sorted(table["NUMBER"].tolist()) == expected
