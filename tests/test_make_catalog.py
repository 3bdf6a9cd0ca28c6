"""Tests of make_catalog: joins by id against a brute-force join, PSF epochs, flags."""

import logging

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.errors import JobError
from shapepipe_modules.io.stamp_store import StampStore
from shapepipe_modules.io.tables import write_fits_table
from shapepipe_modules.make_catalog.catalogue import join_index
from shapepipe_modules.make_catalog.runner import run_make_catalog, validate
from shapepipe_modules.ngmix import flags as fl
from shapepipe_modules.ngmix.engine import COLUMNS, INT_COLUMNS
from shapepipe_modules.ngmix.epochs import write_ngmix_catalogue
from shapepipe_modules.tools import merge_final_cat

NUMBER = "-244-252"
OPTIONS = {"SM_DO_CLASSIFICATION": True, "SM_STAR_THRESH": 0.003, "SM_GAL_THRESH": 0.01, "SAVE_PSF_DATA": True,
           "PSF_N_EPOCH_MAX": 0}
LOG = logging.getLogger("test")


def write_inputs(directory, rng, n=60, number=NUMBER, first_id=1):
    ids = rng.permutation(np.arange(first_id, first_id + 3 * n, 3))  # tile order is not id order
    tile = directory / f"sexcat{number}.fits"
    write_fits_table(tile, {"NUMBER": ids.astype(np.int32), "XWIN_WORLD": rng.uniform(0, 1, n),
                            "YWIN_WORLD": rng.uniform(0, 1, n), "FLAGS": rng.integers(0, 3, n).astype(np.int16),
                            "VIGNET": rng.normal(size=(n, 5, 5)).astype(np.float32)}, extname="LDAC_OBJECTS")
    sm_rows = rng.permutation(n)[: n - 3]  # three objects without spread model
    sm = directory / f"sexcat_sm{number}.fits"
    write_fits_table(sm, {"NUMBER": ids[sm_rows].astype(np.int32), "SPREAD_MODEL": rng.normal(0.005, 0.01, n - 3),
                          "SPREADERR_MODEL": rng.uniform(0, 0.002, n - 3)}, extname="LDAC_OBJECTS")
    measured = rng.permutation(ids)[: n - 5]  # five objects absent from ngmix
    tables = {}
    for branch in ("noshear", "1p", "1m", "2p", "2m"):
        table = {}
        for column in COLUMNS:
            if column == "id":
                table[column] = measured
            elif column in INT_COLUMNS:
                table[column] = rng.integers(0, 3, measured.size)
            else:
                table[column] = rng.normal(size=measured.size)
        table["mcal_flags"] = np.where(rng.uniform(size=measured.size) < 0.2, fl.FIT_FAIL, 0)
        tables[branch] = table
    for branch in ("1p", "1m", "2p", "2m"):
        tables[branch]["mcal_flags"] = tables["noshear"]["mcal_flags"]
    ngmix = write_ngmix_catalogue(directory / f"ngmix{number}.fits", tables)
    psf = directory / f"galaxy_psf{number}.sqlite"
    epochs = {}
    with StampStore(psf, mode="w") as store:
        for object_id in ids.tolist():
            n_epochs = int(rng.integers(0, 4))
            if n_epochs == 0:
                store.mark_no_epoch(object_id, "no PSF")
            keys = [f"{2100000 + int(e)}-{int(rng.integers(0, 40))}" for e in rng.choice(9, n_epochs, replace=False)]
            epochs[object_id] = {}
            for key in keys:
                meta = {"E1_PSF_HSM": rng.normal(0, 0.02), "E2_PSF_HSM": rng.normal(0, 0.02),
                        "SIGMA_PSF_HSM": rng.uniform(1.5, 2.0), "FLAG_PSF_HSM": int(rng.uniform() < 0.2)}
                store.put(object_id, key, {"VIGNET": np.zeros((3, 3), np.float32)}, meta)
                epochs[object_id][key] = meta
    return [tile, sm, psf, ngmix], tables, epochs


def test_join_index_matches_brute_force():
    rng = np.random.default_rng(1)
    right = rng.permutation(1000)[:700] * 7
    left = rng.integers(0, 7000, 500)
    expected = np.array([np.flatnonzero(right == v)[0] if (right == v).any() else -1 for v in left])
    np.testing.assert_array_equal(join_index(left, right), expected)
    with pytest.raises(JobError, match="duplicated"):
        join_index(left, np.array([1, 2, 2]), "x.fits")


def test_final_catalogue_against_brute_force_join(tmp_path):
    rng = np.random.default_rng(3)
    inputs, tables, epochs = write_inputs(tmp_path, rng)
    path, summary = run_make_catalog(inputs, tmp_path, NUMBER, OPTIONS, LOG)
    with fits.open(path) as hdus:
        assert hdus[1].name == "RESULTS"
        cat = hdus[1].data
        names = cat.columns.names
    with fits.open(inputs[0]) as hdus:
        tile = hdus[1].data
    with fits.open(inputs[1]) as hdus:
        sm = hdus[1].data
    assert "VIGNET" not in names and names[:4] == ["NUMBER", "XWIN_WORLD", "YWIN_WORLD", "FLAGS"]
    np.testing.assert_array_equal(cat["NUMBER"], tile["NUMBER"])
    assert np.all(cat["TILE_ID"] == 244.252)
    noshear_ids = list(tables["noshear"]["id"])
    for row, object_id in enumerate(cat["NUMBER"]):
        sm_rows = [i for i in range(len(sm)) if sm["NUMBER"][i] == object_id]
        if sm_rows:
            assert cat["SPREAD_MODEL"][row] == sm["SPREAD_MODEL"][sm_rows[0]]
            c = sm["SPREAD_MODEL"][sm_rows[0]] + 2 * sm["SPREADERR_MODEL"][sm_rows[0]]
            assert cat["SPREAD_CLASS"][row] == (0 if abs(c) < 0.003 else 1 if c > 0.01 else 2)
        else:
            assert np.isnan(cat["SPREAD_MODEL"][row]) and cat["SPREAD_CLASS"][row] == 2
        if object_id in noshear_ids:
            k = noshear_ids.index(object_id)
            for branch, key in (("noshear", "NOSHEAR"), ("1p", "1P"), ("2m", "2M")):
                t = tables[branch]
                assert tuple(cat[f"NGMIX_ELL_{key}"][row]) == (t["g1"][k], t["g2"][k])
                assert cat[f"NGMIX_T_{key}"][row] == t["T"][k] and cat[f"NGMIX_Tpsf_{key}"][row] == t["Tpsf"][k]
                assert cat[f"NGMIX_SNR_{key}"][row] == t["s2n"][k]
                assert cat[f"NGMIX_T_GAUSS_{key}"][row] == t["T_gauss_arcsec2"][k]
                assert tuple(cat[f"NGMIX_ELL_PSFo_{key}"][row]) == (t["g1_psfo_ngmix"][k], t["g2_psfo_ngmix"][k])
                assert tuple(cat[f"NGMIX_ELL_PSFr_{key}"][row]) == (t["g1_psf"][k], t["g2_psf"][k])
                assert cat[f"NGMIX_T_PSFo_{key}"][row] == t["T_psfo_ngmix"][k]
                assert cat[f"NGMIX_T_PSFr_{key}"][row] == t["Tpsf"][k]
            assert cat["NGMIX_N_EPOCH"][row] == tables["noshear"]["n_epoch_model"][k]
            fatal = tables["noshear"]["mcal_flags"][k] & fl.FATAL
            assert cat["NGMIX_NO_SHAPE"][row] == (2 if fatal else 0)
        else:
            assert cat["NGMIX_NO_SHAPE"][row] == 1 and tuple(cat["NGMIX_ELL_NOSHEAR"][row]) == (-10.0, -10.0)
        # Per-epoch PSF columns keep the exposure and CCD of each epoch, sorted.
        keys = sorted(epochs[object_id], key=lambda k: (k.split("-")[0], int(k.split("-")[1])))
        n_slots = max(len(e) for e in epochs.values())
        for slot in range(n_slots):
            i = slot + 1
            if slot < len(keys):
                meta = epochs[object_id][keys[slot]]
                assert f"{cat[f'PSF_EXP_{i}'][row]}-{cat[f'PSF_CCD_{i}'][row]}" == keys[slot]
                assert cat[f"PSF_FLAG_{i}"][row] == meta["FLAG_PSF_HSM"]
                if meta["FLAG_PSF_HSM"] == 0:
                    assert cat[f"PSF_FWHM_{i}"][row] == pytest.approx(2.3548200450309493 * meta["SIGMA_PSF_HSM"])
                    assert tuple(cat[f"PSF_ELL_{i}"][row]) == (meta["E1_PSF_HSM"], meta["E2_PSF_HSM"])
            else:
                assert cat[f"PSF_CCD_{i}"][row] == -1 and cat[f"PSF_FLAG_{i}"][row] == 1
    assert f"PSF_ELL_{n_slots + 1}" not in names
    assert summary["n_absent_from_ngmix"] == 5


def test_output_merges_over_tiles_and_wrong_inputs_fail(tmp_path):
    rng = np.random.default_rng(4)
    out = tmp_path / "final"
    for number, first_id in (("-244-252", 1), ("-245-252", 1000)):
        folder = tmp_path / number
        folder.mkdir()
        inputs, _, _ = write_inputs(folder, rng, n=20, number=number, first_id=first_id)
        run_make_catalog(inputs, out, number, dict(OPTIONS, PSF_N_EPOCH_MAX=4), LOG)
    merged = merge_final_cat.merge_catalogues(merge_final_cat.find_catalogues(out))
    assert len(merged) == 40 and set(np.unique(merged["TILE_ID"])) == {244.252, 245.252}
    # An ngmix catalogue of another tile is refused, naming the file.
    other = tmp_path / "-244-252"
    inputs = [other / "sexcat-244-252.fits", other / "sexcat_sm-244-252.fits", other / "galaxy_psf-244-252.sqlite",
              tmp_path / "-245-252" / "ngmix-245-252.fits"]
    with pytest.raises(JobError, match="ngmix-245-252.fits.*not in the tile catalogue"):
        run_make_catalog(inputs, tmp_path, "-244-252", OPTIONS, LOG)
    with pytest.raises(JobError, match="more than PSF_N_EPOCH_MAX"):
        run_make_catalog(inputs[:3] + [other / "ngmix-244-252.fits"], tmp_path, "-244-252",
                         dict(OPTIONS, PSF_N_EPOCH_MAX=1), LOG)
    assert validate({"SHAPE_MEASUREMENT_TYPE": ["galsim"], "PSF_N_EPOCH_MAX": 0})


def test_hdf5_copy_holds_every_fits_column(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(4)
    inputs, _, _ = write_inputs(tmp_path, rng)
    out = tmp_path / "out"
    out.mkdir()
    path, _ = run_make_catalog(inputs, out, NUMBER, dict(OPTIONS, EXTRA_FORMATS=["hdf5"]), LOG)
    with fits.open(path) as hdus:
        cat = hdus["RESULTS"].data
        names = cat.columns.names
        with h5py.File(out / f"final_cat{NUMBER}.h5", "r") as handle:
            group = handle["RESULTS"]
            assert sorted(group) == sorted(names) and group.attrs["TILE"] == NUMBER
            for name in names:
                stored = group[name][:]
                expected = np.asarray(cat[name])
                if expected.dtype.kind in "SU":
                    assert [bytes(v).decode().rstrip() for v in stored] == [str(v).rstrip() for v in expected]
                else:
                    np.testing.assert_array_equal(stored, expected.astype(expected.dtype.newbyteorder("=")))
    assert validate(dict(OPTIONS, SHAPE_MEASUREMENT_TYPE=["ngmix"], EXTRA_FORMATS=["parquet"])) != []
    run_make_catalog(inputs, tmp_path, NUMBER, dict(OPTIONS, EXTRA_FORMATS=["none"]), LOG)
    assert not (tmp_path / f"final_cat{NUMBER}.h5").exists()
