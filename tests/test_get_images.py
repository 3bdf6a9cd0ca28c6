"""get_images: ID lists to renamed links or copies of raw CFIS files."""

import logging
import os

import numpy as np
import pytest
from astropy.io import fits

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.get_images.get_images import (
    Transfer,
    existing_names,
    file_types,
    input_name,
    output_name,
    pipeline_number,
    plan_transfers,
    read_id_lists,
    retrieve,
)
from shapepipe_modules.get_images.runner import OPTIONS, get_images, validate
from test_split_exp import make_exposure

TILE_TYPES = dict(input_paths=["tiles", "tiles"], input_patterns=["CFIS.000.000.r", "CFIS.000.000.r.weight"],
                  exts=[".fits", ".fits.fz"], output_patterns=["CFIS_image-", "CFIS_weight-"])
EXPOSURE_TYPES = dict(input_paths=["exp"], input_patterns=["000000", "000000.weight", "000000.flag"],
                      exts=[".fits", ".fitsfz", ".fits.fz"], output_patterns=["image-", "weight-", "flag-"])


def make_tile(folder, xxx, yyy, exposures, with_history=True):
    """CFIS.XXX.YYY.r.fits with HISTORY cards naming its exposures, and its compressed weight."""
    folder.mkdir(parents=True, exist_ok=True)
    header = fits.Header()
    header["OBJECT"] = f"CFIS.{xxx:03d}.{yyy:03d}.r"
    if with_history:
        for name in exposures:
            header.add_history(f"input image {name}p.fits 3 extension(s)")
    rng = np.random.default_rng(xxx)
    image = rng.normal(0.0, 1.0, (40, 50)).astype(np.float32)
    weight = np.full((40, 50), 2.5, np.float32)
    fits.PrimaryHDU(image, header).writeto(folder / f"CFIS.{xxx:03d}.{yyy:03d}.r.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(weight)]).writeto(
        folder / f"CFIS.{xxx:03d}.{yyy:03d}.r.weight.fits.fz")
    return image, weight


def make_cfis_exposure(folder, exposure, seed=0):
    """NNNNNNNp.fits, NNNNNNNp.weight.fits.fz, NNNNNNNp.flag.fits.fz (3 CCDs)."""
    paths, truth = make_exposure(folder, exposure=exposure, seed=seed)
    names = [f"{exposure}p.fits", f"{exposure}p.weight.fits.fz", f"{exposure}p.flag.fits.fz"]
    for path, name in zip(paths, names):
        path.rename(folder / name)
    return truth


def test_names():
    assert pipeline_number("244.252") == "244-252"
    assert pipeline_number("2113737p") == "2113737"
    assert pipeline_number("CFIS_2113737") == "2113737"
    with pytest.raises(TypeError):
        pipeline_number(2113737)
    assert input_name("CFIS.000.000.r", r"\d{3}\.\d{3}", "244.252", ".fits") == "CFIS.244.252.r.fits"
    assert input_name("000000.flag", r"\d{6}", "2113737p", ".fits.fz") == "2113737p.flag.fits.fz"
    assert output_name("CFIS_image-", "244.252", ".fits") == "CFIS_image-244-252.fits"
    assert output_name("flag-", "2113737p", ".fits.fz") == "flag-2113737.fits.fz"


def test_read_id_lists(tmp_path):
    (tmp_path / "a.txt").write_text("244.252\n\n# comment\n245.252  # trailing\n")
    (tmp_path / "b.txt").write_text("245.252\n246.252\n")
    assert read_id_lists([tmp_path / "a.txt", tmp_path / "b.txt"]) == ["244.252", "245.252", "246.252"]
    with pytest.raises(JobError, match="c.txt"):
        read_id_lists([tmp_path / "c.txt"])


def test_file_types_lengths(tmp_path):
    kinds = file_types(**EXPOSURE_TYPES)
    assert [k.ext for k in kinds] == [".fits", ".fits.fz", ".fits.fz"]  # .fitsfz read as .fits.fz
    assert all(k.input_dir == kinds[0].input_dir for k in kinds)  # one INPUT_PATH for all
    with pytest.raises(ValueError, match="OUTPUT_FILE_PATTERN \\(1\\)"):
        file_types(["a", "b"], ["x", "y"], [".fits"], ["o-"])


@pytest.mark.parametrize("method", ["symlink", "copy"])
def test_retrieve_tiles_and_exposures(tmp_path, method, monkeypatch):
    monkeypatch.chdir(tmp_path)  # INPUT_PATH values are relative, as in ShapePipe configs
    image, weight = make_tile(tmp_path / "tiles", 244, 252, ["2113737"])
    make_tile(tmp_path / "tiles", 245, 252, ["2113737"])
    truth = make_cfis_exposure(tmp_path / "exp", "2113737")
    out = tmp_path / "out"
    transfers = plan_transfers(["244.252", "245.252"], file_types(**TILE_TYPES), r"\d{3}\.\d{3}")
    transfers += plan_transfers(["2113737p"], file_types(**EXPOSURE_TYPES), r"\d{6}")
    counts = retrieve(transfers, out, method)
    assert counts == {"retrieved": 7, "skipped": 0}
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "CFIS_image-244-252.fits", "CFIS_image-245-252.fits", "CFIS_weight-244-252.fits.fz",
        "CFIS_weight-245-252.fits.fz", "image-2113737.fits", "weight-2113737.fits.fz", "flag-2113737.fits.fz"])
    tile = out / "CFIS_image-244-252.fits"
    assert tile.is_symlink() == (method == "symlink")
    if method == "symlink":
        assert os.readlink(tile) == str(tmp_path / "tiles" / "CFIS.244.252.r.fits")
    np.testing.assert_array_equal(fits.getdata(tile), image)
    np.testing.assert_array_equal(fits.getdata(out / "CFIS_weight-244-252.fits.fz", 1), weight)
    np.testing.assert_array_equal(fits.getdata(out / "flag-2113737.fits.fz", 2), truth["flag"][1])


def test_missing_input_files_fail_before_anything_is_retrieved(tmp_path):
    make_tile(tmp_path / "tiles", 244, 252, ["2113737"])
    types = file_types([str(tmp_path / "tiles")], TILE_TYPES["input_patterns"], TILE_TYPES["exts"],
                       TILE_TYPES["output_patterns"])
    with pytest.raises(JobError) as error:
        plan_transfers(["244.252", "999.252"], types, r"\d{3}\.\d{3}")
    message = str(error.value)
    assert "2 input file(s) not found" in message
    assert "CFIS.999.252.r.fits" in message and "CFIS.999.252.r.weight.fits.fz" in message


def test_wildcards_and_keep_names(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("2113737p_a.cat", "2113737p_b.cat"):
        (folder / name).write_text(name)
    types = file_types([str(folder)], ["000000_*"], [".cat"], ["*"])
    transfers = plan_transfers(["2113737p"], types, r"\d{6}")
    assert sorted(t.target_name for t in transfers) == ["2113737p_a.cat", "2113737p_b.cat"]
    types = file_types([str(folder)], ["000000_*"], [".cat"], ["cat-"])
    with pytest.raises(JobError, match="2 files match"):
        plan_transfers(["2113737p"], types, r"\d{6}")


def test_two_ids_with_one_output_name_fail(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("2113737p.fits", "2113737s.fits"):
        (folder / name).write_text("x")
    types = file_types([str(folder)], ["000000"], [".fits"], ["image-"])
    with pytest.raises(JobError, match="would both become image-2113737.fits"):
        plan_transfers(["2113737p", "2113737s"], types, r"\d{6}")


def test_check_existing_dir_skips_present_files(tmp_path):
    make_tile(tmp_path / "tiles", 244, 252, [])
    previous = tmp_path / "previous" / "run_1"
    previous.mkdir(parents=True)
    (previous / "CFIS_image-244-252.fits").write_text("already here")
    types = file_types([str(tmp_path / "tiles")], TILE_TYPES["input_patterns"], TILE_TYPES["exts"],
                       TILE_TYPES["output_patterns"])
    transfers = plan_transfers(["244.252"], types, r"\d{3}\.\d{3}")
    existing = existing_names(tmp_path / "previous")
    counts = retrieve(transfers, tmp_path / "out", "symlink", existing=existing, n_expected=1)
    assert counts == {"retrieved": 1, "skipped": 1}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["CFIS_weight-244-252.fits.fz"]
    # Expecting two copies: one is not enough, so the file is retrieved.
    counts = retrieve(transfers, tmp_path / "out2", "symlink", existing=existing, n_expected=2)
    assert counts == {"retrieved": 2, "skipped": 0}


def test_copy_of_unreadable_source_fails_after_n_try(tmp_path):
    transfer = Transfer("1", tmp_path / "gone.fits", "image-1.fits")
    with pytest.raises(JobError, match="gone.fits after 1 attempt"):
        retrieve([transfer], tmp_path / "out", "copy", n_try=1)
    assert not list((tmp_path / "out").iterdir())


def base_options(**changes):
    values = {option.name: option.default for option in OPTIONS}
    values.update(changes)
    return values


def test_validate_accepts_vos_form_and_refuses_bad_lists(tmp_path):
    # ShapePipe's VOSpace form validates (it fails at run time: no network here) ...
    options = base_options(INPUT_PATH=["vos:cfis/tiles_DR3"], INPUT_FILE_PATTERN=["CFIS.000.000.r"],
                           INPUT_FILE_EXT=[".fits"], OUTPUT_FILE_PATTERN=["CFIS_image-"],
                           INPUT_NUMBERING=r"\d{3}\.\d{3}", RETRIEVE="vos")
    assert validate(options) == []
    # ... but vos: paths without RETRIEVE = vos are refused.
    options.update(RETRIEVE="symlink")
    assert "VOSpace paths need RETRIEVE = vos" in validate(options)[0]
    options.update(INPUT_PATH=[str(tmp_path), str(tmp_path / "nope")], INPUT_NUMBERING=r"\d{4}(")
    problems = validate(options)
    assert any("INPUT_NUMBERING" in p and "regular expression" in p for p in problems)
    assert any("must have the same length" in p for p in problems)
    assert any("nope does not exist" in p for p in problems)
    options.update(INPUT_PATH=[str(tmp_path)], INPUT_NUMBERING=r"\d{6}")
    assert validate(options) == [
        "INPUT_FILE_PATTERN 'CFIS.000.000.r' holds no match of INPUT_NUMBERING '\\\\d{6}': "
        "the ID would not appear in the file name"
    ]


def test_runner_function_reads_every_list(tmp_path):
    make_tile(tmp_path / "tiles", 244, 252, [])
    make_tile(tmp_path / "tiles", 245, 252, [])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "exp_numbers-244-252.txt").write_text("244.252\n")
    (lists / "exp_numbers-245-252.txt").write_text("245.252\n244.252\n")
    table = {"-244-252": [lists / "exp_numbers-244-252.txt"], "-245-252": [lists / "exp_numbers-245-252.txt"]}
    out = tmp_path / "job_out"
    out.mkdir()
    options = base_options(INPUT_PATH=[str(tmp_path / "tiles")], INPUT_FILE_PATTERN=["CFIS.000.000.r"],
                           INPUT_FILE_EXT=[".fits"], OUTPUT_FILE_PATTERN=["CFIS_image-"],
                           INPUT_NUMBERING=r"\d{3}\.\d{3}", RETRIEVE="copy", RETRIEVE_OPTIONS="-L")
    job = Job(module="get_images", module_run="get_images", number="", inputs=[p[0] for p in table.values()],
              input_table=table, output_dir=out, log_dir=tmp_path, options=options,
              logger=logging.getLogger("test_get_images"), run_dir=tmp_path)
    assert get_images(job) == {"ids": 2, "retrieved": 2, "skipped": 0}
    assert sorted(p.name for p in out.iterdir()) == ["CFIS_image-244-252.fits", "CFIS_image-245-252.fits"]


def test_vos_job_fails_with_a_clear_message(tmp_path):
    from shapepipe.errors import JobError
    from shapepipe_modules.get_images.runner import get_images

    from conftest import run_module

    ids = tmp_path / "tile_numbers.txt"
    ids.write_text("244.252\n")
    with pytest.raises(JobError, match="VOSpace.*not available"):
        run_module(get_images, [ids], tmp_path / "out", "", INPUT_PATH=["vos:cfis/tiles_DR3"],
                   INPUT_FILE_PATTERN=["CFIS.000.000.r"], INPUT_FILE_EXT=[".fits"],
                   OUTPUT_FILE_PATTERN=["CFIS_image-"], INPUT_NUMBERING=r"\d{3}\.\d{3}", RETRIEVE="vos")
