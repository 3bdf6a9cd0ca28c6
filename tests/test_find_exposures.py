"""find_exposures: a tile's HISTORY cards to its list of exposures."""

import logging

import pytest
from astropy.io import fits

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.find_exposures.find_exposures import (
    exposure_name,
    exposures_from_history,
    find_exposures,
)
from shapepipe_modules.find_exposures.runner import OPTIONS, find_exposures as find_exposures_job, validate
from test_get_images import make_tile


def test_exposure_name():
    assert exposure_name("2113737p.fits") == "2113737p"
    assert exposure_name("2113737p.fits.fz") == "2113737p"
    assert exposure_name("simu_image-2113737.fits", prefix="simu_image-") == "2113737"
    with pytest.raises(ValueError):
        exposure_name("6")


def test_history_parsing_rules():
    cards = [
        "input image 2113737p.fits 40 extension(s)",
        " input image 2113800p.fits 40 extension(s)",  # leading space: ShapePipe's COLNUM 3
        "input image 2113737p.fits 40 extension(s)",  # duplicate
        "swarp resampled with LANCZOS3",
    ]
    assert exposures_from_history(cards) == ["2113737p", "2113800p"]
    # ShapePipe's COLNUM does not matter for 'input image' cards...
    assert exposures_from_history(cards[:3], colnum=3) == ["2113737p", "2113800p"]
    # ...and applies to other cards, which must then hold a file name there.
    assert exposures_from_history(["stacked from 2113999p.fits"], colnum=2) == ["2113999p"]
    with pytest.raises(ValueError, match="word 1 .*'resampled', not a file name"):
        exposures_from_history(cards, colnum=1)


def test_tile_file(tmp_path):
    make_tile(tmp_path, 244, 252, ["2113737", "2113800", "2113737"])
    assert find_exposures(tmp_path / "CFIS.244.252.r.fits") == ["2113737p", "2113800p"]


def test_tile_without_history_fails_naming_it(tmp_path):
    make_tile(tmp_path, 244, 252, ["2113737"], with_history=False)
    with pytest.raises(JobError, match="CFIS.244.252.r.fits has no HISTORY"):
        find_exposures(tmp_path / "CFIS.244.252.r.fits")


def test_tile_with_other_history_only_fails(tmp_path):
    header = fits.Header()
    header.add_history("made by hand")
    path = tmp_path / "CFIS_image-244-252.fits"
    fits.PrimaryHDU(header=header).writeto(path)
    with pytest.raises(JobError, match="CFIS_image-244-252.fits: none of its 1 HISTORY cards"):
        find_exposures(path)


def test_truncated_tile_fails_naming_it(tmp_path):
    make_tile(tmp_path, 244, 252, ["2113737"])
    path = tmp_path / "CFIS.244.252.r.fits"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(JobError, match="CFIS.244.252.r.fits"):
        find_exposures(path)


def test_runner_function(tmp_path):
    make_tile(tmp_path, 244, 252, ["2113800", "2113737"])
    out = tmp_path / "out"
    out.mkdir()
    options = {option.name: option.default for option in OPTIONS}
    job = Job(module="find_exposures", module_run="find_exposures", number="-244-252",
              inputs=[tmp_path / "CFIS.244.252.r.fits"], output_dir=out, log_dir=tmp_path, options=options,
              logger=logging.getLogger("test_find_exposures"), run_dir=tmp_path)
    assert find_exposures_job(job) == {"exposures": 2}
    assert (out / "exp_numbers-244-252.txt").read_text() == "2113800p\n2113737p\n"
    assert validate({"COLNUM": -1, "EXP_PREFIX": ""}) == ["COLNUM must be 0 or more (or unset for automatic detection)"]
