"""Tests of the ngmix module: epochs from the stores, id splits, failures."""

import logging

import numpy as np
import pytest
from astropy.io import fits

pytest.importorskip("galsim")

from shapepipe.errors import JobError  # noqa: E402
from shapepipe_modules.io.header_store import HeaderStore  # noqa: E402
from shapepipe_modules.make_catalog.runner import run_make_catalog  # noqa: E402
from shapepipe_modules.merge_sep_cats.runner import merge_tile  # noqa: E402
from shapepipe_modules.ngmix import flags as fl  # noqa: E402
from shapepipe_modules.ngmix.runner import run_ngmix  # noqa: E402
from test_ngmix_module_data import EXPOSURES, N_CCD, NUMBER, make_tile  # noqa: E402

LOG = logging.getLogger("test")


def options(tile, id_min=-1, id_max=-1):
    return {"LOG_WCS": str(tile.header_store), "MAG_ZP": 30.0, "PIXEL_SCALE": 0.186,
            "ID_OBJ_MIN": id_min, "ID_OBJ_MAX": id_max}


def read_branches(path):
    with fits.open(path) as hdus:
        return [h.name for h in hdus], {h.name: np.array(h.data) for h in hdus[1:]}, hdus[0].header.copy()


def test_round_galaxies_give_the_applied_shear(tmp_path):
    """Round galaxies, shear (0.04, -0.02), 1-3 epochs with different Jacobians and flux scales."""
    tile = make_tile(tmp_path / "in", ids=range(1, 9), e_sigma=0.0, noise=0.3)
    path, summary = run_ngmix(tile.inputs, tmp_path, NUMBER, 3, options(tile), LOG)
    names, tables, header = read_branches(path)
    assert names == ["PRIMARY", "1M", "1P", "2M", "2P", "NOSHEAR"]
    assert header["NOBJTILE"] == 8 and summary["n_flagged"] == 0
    ns = tables["NOSHEAR"]
    np.testing.assert_array_equal(ns["id"], np.arange(1, 9))
    np.testing.assert_array_equal(ns["n_epoch_model"], [1 + i % 3 for i in range(1, 9)])
    r11 = (tables["1P"]["g1"] - tables["1M"]["g1"]) / 0.02
    r22 = (tables["2P"]["g2"] - tables["2M"]["g2"]) / 0.02
    assert np.all((r11 > 0.5) & (r11 < 1.1)) and np.all((r22 > 0.5) & (r22 < 1.1))
    g1 = np.mean(ns["g1"]) / np.mean(r11)
    g2 = np.mean(ns["g2"]) / np.mean(r22)
    assert abs(g1 - 0.04) < 0.004 and abs(g2 + 0.02) < 0.004
    # ShapePipe's T (half-light radius) and the explicit 2 sigma^2 size agree.
    np.testing.assert_allclose(ns["T"], np.sqrt(np.log(2.0) * ns["T_gauss_arcsec2"]), rtol=1e-12)
    np.testing.assert_allclose(ns["mag"], 30.0 - 2.5 * np.log10(ns["flux"]), rtol=1e-12)


def test_flux_scale_from_the_header_store_is_applied(tmp_path):
    """Doubling every FSCALE doubles the fluxes and leaves the shapes unchanged."""
    tile = make_tile(tmp_path / "in", ids=(2, 4, 5))
    out1 = tmp_path / "a"
    out1.mkdir()
    path1, _ = run_ngmix(tile.inputs, out1, NUMBER, 1, options(tile), LOG)
    doubled = tmp_path / "doubled.sqlite"
    with HeaderStore(doubled, mode="w") as store:
        for exposure in EXPOSURES:
            headers = []
            for _ in range(N_CCD):
                header = fits.Header()
                header["FSCALE"] = 2.0 * tile.flux_scales[exposure]
                headers.append(header)
            store.write_exposure(exposure, headers)
    out2 = tmp_path / "b"
    out2.mkdir()
    opts = options(tile)
    opts["LOG_WCS"] = str(doubled)
    path2, _ = run_ngmix(tile.inputs, out2, NUMBER, 1, opts, LOG)
    _, t1, _ = read_branches(path1)
    _, t2, _ = read_branches(path2)
    for branch in ("NOSHEAR", "1P"):
        np.testing.assert_allclose(t2[branch]["flux"], 2.0 * t1[branch]["flux"], rtol=1e-6)
        np.testing.assert_allclose(t2[branch]["g1"], t1[branch]["g1"], atol=1e-7)
        np.testing.assert_allclose(t2[branch]["s2n"], t1[branch]["s2n"], rtol=1e-6)
    # Without a header store (and no FSCALE in the stamps) the job fails clearly.
    opts["LOG_WCS"] = ""
    with pytest.raises(JobError, match="FSCALE"):
        run_ngmix(tile.inputs, out2, NUMBER, 1, opts, LOG)


def test_failures_are_flagged_never_dropped(tmp_path):
    tile = make_tile(tmp_path / "in", ids=(1, 2, 3, 4), masked_ids=(2,), no_epoch_ids=(3,))
    path, summary = run_ngmix(tile.inputs, tmp_path, NUMBER, 1, options(tile), LOG)
    _, tables, _ = read_branches(path)
    for name, table in tables.items():
        np.testing.assert_array_equal(table["id"], [1, 2, 3, 4])
        assert table["flags"][1] == fl.NO_EPOCHS and table["flags"][2] == fl.NO_EPOCHS
        assert np.isnan(table["g1"][1]) and table["n_epoch_model"][1] == 0
        assert table["flags"][0] == 0 and np.isfinite(table["g1"][3])
    assert summary["n_no_epoch"] == 2


def test_missing_psf_store_fails_naming_the_file(tmp_path):
    tile = make_tile(tmp_path / "in", ids=(1, 2), write_psf=False)
    with pytest.raises(JobError, match=str(tile.psf_path)):
        run_ngmix(tile.inputs, tmp_path, NUMBER, 1, options(tile), LOG)
    assert not list(tmp_path.glob("ngmix*.fits"))


def test_tile_without_objects_gives_valid_empty_catalogues(tmp_path):
    tile = make_tile(tmp_path / "in", ids=())
    path, summary = run_ngmix(tile.inputs, tmp_path, NUMBER, 1, options(tile), LOG)
    names, tables, header = read_branches(path)
    assert names[1:] == ["1M", "1P", "2M", "2P", "NOSHEAR"] and len(tables["NOSHEAR"]) == 0
    assert header["NOBJTILE"] == 0
    final, _ = run_make_catalog([tile.inputs[0], tile.sm_path, tile.psf_path, path], tmp_path, NUMBER,
                                {"SM_DO_CLASSIFICATION": True, "SM_STAR_THRESH": 0.003, "SM_GAL_THRESH": 0.01,
                                 "SAVE_PSF_DATA": True, "PSF_N_EPOCH_MAX": 0}, LOG)
    with fits.open(final) as hdus:
        assert hdus[1].name == "RESULTS" and len(hdus[1].data) == 0
        assert "NGMIX_ELL_NOSHEAR" in hdus[1].columns.names


def test_id_splits_merged_equal_the_single_job(tmp_path):
    """One job vs four ID_OBJ ranges merged: identical ngmix and final catalogues."""
    tile = make_tile(tmp_path / "in", ids=(3, 5, 6, 9, 10, 12, 17, 21), masked_ids=(9,))
    make_opts = {"SM_DO_CLASSIFICATION": True, "SM_STAR_THRESH": 0.003, "SM_GAL_THRESH": 0.01,
                 "SAVE_PSF_DATA": True, "PSF_N_EPOCH_MAX": 0}
    single = tmp_path / "single"
    single.mkdir()
    full_path, _ = run_ngmix(tile.inputs, single, NUMBER, 11, options(tile), LOG)
    final_single, _ = run_make_catalog([tile.inputs[0], tile.sm_path, tile.psf_path, full_path], single,
                                       NUMBER, make_opts, LOG)
    split_dirs = []
    for k, (low, high) in enumerate([(-1, 5), (6, 9), (10, 16), (17, -1)]):
        folder = tmp_path / f"split{k + 1}"
        folder.mkdir()
        run_ngmix(tile.inputs, folder, NUMBER, 11, options(tile, low, high), LOG)
        split_dirs.append(folder)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    merge_opts = {"SPLIT_INPUT_DIR": [str(d) for d in split_dirs[1:]], "N_SPLIT_MAX": 1, "WARNING": "error"}
    summary = merge_tile([split_dirs[0] / f"ngmix{NUMBER}.fits"], merged_dir, merge_opts, LOG)
    assert summary["n_splits"] == 4 and summary["n_rows"] == 8
    _, full_tables, _ = read_branches(full_path)
    _, merged_tables, merged_header = read_branches(merged_dir / f"ngmix{NUMBER}.fits")
    assert merged_header["ID_MIN"] == -1 and merged_header["ID_MAX"] == -1
    for name in full_tables:
        assert merged_tables[name].dtype == full_tables[name].dtype
        for column in full_tables[name].dtype.names:  # column-wise: NaN equals NaN
            np.testing.assert_array_equal(merged_tables[name][column], full_tables[name][column])
    final_merged, _ = run_make_catalog([tile.inputs[0], tile.sm_path, tile.psf_path,
                                       merged_dir / f"ngmix{NUMBER}.fits"], merged_dir, NUMBER, make_opts, LOG)
    with fits.open(final_single) as a, fits.open(final_merged) as b:
        assert a[1].columns.names == b[1].columns.names
        for column in a[1].columns.names:
            np.testing.assert_array_equal(a[1].data[column], b[1].data[column], err_msg=column)

    # A missing range or a doubled one is refused.
    with pytest.raises(JobError, match=r"id range\(s\) missing \(6-9\)"):
        merge_tile([split_dirs[0] / f"ngmix{NUMBER}.fits"], merged_dir,
                   dict(merge_opts, SPLIT_INPUT_DIR=[str(split_dirs[2]), str(split_dirs[3])]), LOG)
    doubled = tmp_path / "doubled"
    doubled.mkdir()
    run_ngmix(tile.inputs, doubled, NUMBER, 11, options(tile, 8, 12), LOG)
    with pytest.raises(JobError, match="overlap"):
        merge_tile([split_dirs[0] / f"ngmix{NUMBER}.fits"], merged_dir,
                   dict(merge_opts, SPLIT_INPUT_DIR=[*map(str, split_dirs[1:]), str(doubled)]), LOG)


def test_three_id_splits_of_the_gold_chain_equal_one_job(tmp_path):
    """The ranges of `shapepipe_gold --ng-splits 3` (chain.tile_object_ranges), merged, equal one job."""
    import json

    from shapepipe_modules.gold.chain import tile_object_ranges

    tile = make_tile(tmp_path / "in", ids=range(1, 8))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(
        {"modules": [{"module_run": "sextractor_run_1", "output_dir": str(tile.directory)}]}))
    ranges = tile_object_ranges(run_dir, 3)
    assert ranges == [(1, 2), (3, 4), (5, 7)]
    single = tmp_path / "single"
    single.mkdir()
    full_path, _ = run_ngmix(tile.inputs, single, NUMBER, 5, options(tile), LOG)
    split_dirs = []
    for k, (low, high) in enumerate(ranges):
        folder = tmp_path / f"split{k + 1}"
        folder.mkdir()
        run_ngmix(tile.inputs, folder, NUMBER, 5, options(tile, low, high), LOG)
        split_dirs.append(folder)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    merge_tile([split_dirs[0] / f"ngmix{NUMBER}.fits"], merged_dir,
               {"SPLIT_INPUT_DIR": [str(d) for d in split_dirs[1:]], "N_SPLIT_MAX": 1, "WARNING": "error"}, LOG)
    _, full_tables, _ = read_branches(full_path)
    _, merged_tables, _ = read_branches(merged_dir / f"ngmix{NUMBER}.fits")
    for name in full_tables:
        assert np.isfinite(full_tables[name]["g1"]).all()
        for column in full_tables[name].dtype.names:
            np.testing.assert_array_equal(merged_tables[name][column], full_tables[name][column])


def test_random_stream_follows_the_sky_position(tmp_path):
    """An object moved within its sky cell keeps its shape; one moved to another cell changes alone."""
    from shapepipe_modules.ngmix.engine import sky_cell
    from shapepipe_modules.io.tables import write_fits_table

    tile = make_tile(tmp_path / "in", ids=(4, 5, 6))
    first = tmp_path / "a"
    first.mkdir()
    path, _ = run_ngmix(tile.inputs, first, NUMBER, 2, options(tile), LOG)
    _, reference, _ = read_branches(path)
    with fits.open(tile.inputs[0]) as hdus:
        columns = {name: np.array(hdus["LDAC_OBJECTS"].data[name]) for name in hdus["LDAC_OBJECTS"].columns.names}
    moved = dict(columns)
    # Object 4 moves by 0.02 arcsec (within its cell), object 5 by 2 arcsec (another cell).
    moved["YWIN_WORLD"] = columns["YWIN_WORLD"] + np.array([0.02, 2.0, 0.0]) / 3600
    cells = [sky_cell(a, d) for a, d in zip(columns["XWIN_WORLD"], columns["YWIN_WORLD"])]
    new_cells = [sky_cell(a, d) for a, d in zip(moved["XWIN_WORLD"], moved["YWIN_WORLD"])]
    assert [new == old for new, old in zip(new_cells, cells)] == [True, False, True]
    catalogue = tmp_path / "moved" / tile.inputs[0].name
    catalogue.parent.mkdir()
    write_fits_table(catalogue, moved, extname="LDAC_OBJECTS")
    path, _ = run_ngmix([catalogue, *tile.inputs[1:]], catalogue.parent, NUMBER, 2, options(tile), LOG)
    _, changed, _ = read_branches(path)
    for name in reference:
        for row in (0, 2):
            assert reference[name]["g1"][row] == changed[name]["g1"][row]
        assert reference[name]["g1"][1] != changed[name]["g1"][1]
    # Without the position columns the stage names the missing column.
    del moved["XWIN_WORLD"]
    write_fits_table(catalogue, moved, extname="LDAC_OBJECTS")
    with pytest.raises(JobError, match="no XWIN_WORLD column"):
        run_ngmix([catalogue, *tile.inputs[1:]], catalogue.parent, NUMBER, 2, options(tile), LOG)


def test_final_catalogue_has_original_and_reconvolved_psf_shapes(tmp_path):
    """PSFo: the PSF model at the object (Moffat, g = (0.02, -0.01 k) on the sky); PSFr: the round target."""
    tile = make_tile(tmp_path / "in", ids=(1, 3))  # 2 and 1 epochs
    path, _ = run_ngmix(tile.inputs, tmp_path, NUMBER, 1, options(tile), LOG)
    final, _ = run_make_catalog([tile.inputs[0], tile.sm_path, tile.psf_path, path], tmp_path, NUMBER,
                                {"SM_DO_CLASSIFICATION": True, "SM_STAR_THRESH": 0.003, "SM_GAL_THRESH": 0.01,
                                 "SAVE_PSF_DATA": False, "PSF_N_EPOCH_MAX": 0}, LOG)
    with fits.open(final) as hdus:
        cat = hdus[1].data
    for key in ("NOSHEAR", "1P", "2M"):
        psfo, psfr = cat[f"NGMIX_ELL_PSFo_{key}"], cat[f"NGMIX_ELL_PSFr_{key}"]
        # Object 1 (epochs k = 0, 1) averages g2 = 0 and -0.01; object 3 (k = 0) is (0.02, 0).
        np.testing.assert_allclose(psfo[:, 0], 0.02, atol=0.004)
        assert -0.012 < psfo[0, 1] < 0.0 and abs(psfo[1, 1]) < 0.002
        np.testing.assert_allclose(psfr, 0.0, atol=1e-4)
        # Sizes: two different fits (Moffat and pixel vs the Gaussian target); both near 0.37 arcsec.
        ratio = cat[f"NGMIX_T_PSFr_{key}"] / cat[f"NGMIX_T_PSFo_{key}"]
        assert np.all((np.abs(ratio - 1) > 0.01) & (np.abs(ratio - 1) < 0.2))
        np.testing.assert_allclose(cat[f"NGMIX_T_PSFr_GAUSS_{key}"] / cat[f"NGMIX_T_PSFo_GAUSS_{key}"], ratio ** 2,
                                   rtol=1e-3)  # epoch averages of T and of sqrt(T)
        np.testing.assert_array_equal(cat[f"NGMIX_T_PSFr_{key}"], cat[f"NGMIX_Tpsf_{key}"])


def test_tile_vignet_mask_flags_epoch_pixels_only_when_asked(tmp_path):
    """TILE_VIGNET_MASK: the tile VIGNET's -1e30 pixels (float32, as SExtractor writes them) flag every epoch.

    One object's tile stamp is -1e30 over 40% of its pixels: with the option its epochs are dropped (more
    than a third flagged, ShapePipe's rule), without it (the default) the object is measured as before.
    """
    tile = make_tile(tmp_path / "in", ids=(3, 5, 6))
    with fits.open(tile.inputs[0], mode="update") as hdus:
        vignet = hdus["LDAC_OBJECTS"].data["VIGNET"]
        assert vignet.dtype.itemsize == 4
        rows = int(0.4 * vignet.shape[1]) + 1
        vignet[1, :rows, :] = np.float32(-1e30)
    out_default, out_masked = tmp_path / "default", tmp_path / "masked"
    out_default.mkdir()
    out_masked.mkdir()
    path, _ = run_ngmix(tile.inputs, out_default, NUMBER, 1, options(tile), LOG)
    default = read_branches(path)[1]["NOSHEAR"]
    path, summary = run_ngmix(tile.inputs, out_masked, NUMBER, 1, {**options(tile), "TILE_VIGNET_MASK": True}, LOG)
    masked = read_branches(path)[1]["NOSHEAR"]
    np.testing.assert_array_equal(default["id"], [3, 5, 6])
    assert default["n_epoch_model"][1] == 1 + 5 % 3 and default["mcal_flags"][1] == 0
    assert masked["n_epoch_model"][1] == 0 and "NO_EPOCHS" in fl.flags_to_names(int(masked["mcal_flags"][1]))
    # The other objects are untouched by the option.
    for name in ("g1", "g2", "T", "flux"):
        np.testing.assert_array_equal(masked[name][[0, 2]], default[name][[0, 2]])
