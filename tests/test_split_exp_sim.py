"""Preparation of the simulator's ``tiny`` survey through the runner, checked against its truth.

get_images (tiles from tile_list.txt) -> find_exposures -> get_images
(exposures) -> split_exp -> merge_headers, with ShapePipe's keys. Then every
CCD's WCS from the header store must map every truth star's (ra, dec) to its
true pixel position within 0.01 pixel, and the split CCD images must be the
mosaic's pixels.
"""

import json

import numpy as np

from shapepipe_modules.io.images import image_hdu
import pytest
from astropy.io import fits

from shapepipe.cli import main
from shapepipe_modules.io.header_store import HeaderStore

simulate_module = pytest.importorskip("shapepipe_modules.simulate")

CONFIG = """
[DEFAULT]
VERBOSE = False
RUN_NAME = prep

[EXECUTION]
MODULE = get_images_runner, find_exposures_runner, get_images_runner, split_exp_runner, merge_headers_runner

[FILE]
INPUT_DIR = {sim}
OUTPUT_DIR = {out}

[JOB]
SMP_BATCH_SIZE = 2

[GET_IMAGES_RUNNER_RUN_1]
FILE_PATTERN = tile_list
FILE_EXT = .txt
NUMBERING_SCHEME =
INPUT_PATH = {sim}/tiles
INPUT_FILE_PATTERN = CFIS.000.000.r, CFIS.000.000.r.weight
INPUT_FILE_EXT = .fits, .fits.fz
INPUT_NUMBERING = \\d{{3}}\\.\\d{{3}}
OUTPUT_FILE_PATTERN = CFIS_image-, CFIS_weight-

[FIND_EXPOSURES_RUNNER]
INPUT_MODULE = get_images_runner_run_1
FILE_PATTERN = CFIS_image
FILE_EXT = .fits
NUMBERING_SCHEME = -000-000

[GET_IMAGES_RUNNER_RUN_2]
INPUT_MODULE = find_exposures_runner
FILE_PATTERN = exp_numbers
FILE_EXT = .txt
NUMBERING_SCHEME = -000-000
INPUT_PATH = {sim}/exposures
INPUT_FILE_PATTERN = 0000000, 0000000.weight, 0000000.flag
INPUT_FILE_EXT = .fits, .fits.fz, .fits.fz
INPUT_NUMBERING = \\d{{7}}
OUTPUT_FILE_PATTERN = image-, weight-, flag-

[SPLIT_EXP_RUNNER]
FILE_EXT = .fits, .fits.fz, .fits.fz
NUMBERING_SCHEME = -0000000

[MERGE_HEADERS_RUNNER]
NUMBERING_SCHEME = -0000000
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep_sim")
    sim = root / "sim"
    simulate_module.simulate(preset="tiny", output_dir=str(sim), seed=3, n_workers=1)
    config = root / "config.ini"
    config.write_text(CONFIG.format(sim=sim, out=root / "output"))
    status = main(["-c", str(config)])
    run_dir = next((root / "output").glob("prep_*"))
    return sim, run_dir, status


def test_every_job_succeeds(prepared):
    sim, run_dir, status = prepared
    rows = json.loads((run_dir / "jobs.json").read_text())
    rows = rows["jobs"] if isinstance(rows, dict) else rows
    assert status == 0, [r for r in rows if r["status"] != "done"]
    exposures = sorted((sim / "exposure_list.txt").read_text().split())
    lists = sorted((run_dir / "find_exposures" / "output").glob("exp_numbers-*.txt"))
    found = sorted({line.rstrip("p") for path in lists for line in path.read_text().split()})
    assert found == exposures


def test_store_wcs_maps_truth_stars_to_truth_pixels(prepared):
    from astropy.table import Table

    sim, run_dir, _ = prepared
    exposures = sorted((sim / "exposure_list.txt").read_text().split())
    checked = 0
    with HeaderStore(run_dir / "merge_headers" / "output" / "log_exp_headers.sqlite") as store:
        assert store.exposures() == exposures
        for exposure in exposures:
            truth = Table.read(sim / "truth" / f"truth_exp-{exposure}.fits")
            stars = truth[truth["is_star"]]
            with fits.open(sim / "exposures" / f"{exposure}p.fits") as mosaic:
                n_ccd = len(mosaic) - 1
            assert store.ccds(exposure) == list(range(n_ccd))
            for ccd in range(n_ccd):
                on_ccd = stars[stars["ccd"] == ccd]
                assert len(on_ccd) > 0
                x, y = store.wcs(exposure, ccd).all_world2pix(on_ccd["ra"], on_ccd["dec"], 1)
                offset = np.hypot(x - on_ccd["x"], y - on_ccd["y"])
                assert offset.max() < 0.01, (exposure, ccd, offset.max())
                checked += len(on_ccd)
    assert checked > 20


def test_split_files_hold_the_mosaic_pixels(prepared):
    sim, run_dir, _ = prepared
    split = run_dir / "split_exp" / "output"
    exposure = sorted((sim / "exposure_list.txt").read_text().split())[0]
    with fits.open(sim / "exposures" / f"{exposure}p.fits") as image, \
            fits.open(sim / "exposures" / f"{exposure}p.flag.fits.fz") as flag:
        for ccd in range(len(image) - 1):
            np.testing.assert_array_equal(fits.getdata(split / f"image-{exposure}-{ccd}.fits"), image[ccd + 1].data)
            np.testing.assert_array_equal(fits.getdata(split / f"flag-{exposure}-{ccd}.fits"), flag[ccd + 1].data)
            # Flags (and weights) tile-compressed without loss by default (the pixels above are equal);
            # images plain. The pipeline's readers take the image HDU of both layouts.
            with fits.open(split / f"flag-{exposure}-{ccd}.fits") as hdus:
                assert isinstance(hdus[1], fits.CompImageHDU) and hdus[0].header["NAXIS"] == 0
                assert image_hdu(hdus).header["EXTNAME"] == image[ccd + 1].header["EXTNAME"]
            with fits.open(split / f"image-{exposure}-{ccd}.fits") as hdus:
                assert len(hdus) == 1
                header = image_hdu(hdus).header
            for key in ("GAIN", "SATURATE", "PHOTZP", "FSCALE", "EXPTIME", "MJD-OBS", "FILTER", "EXTNAME"):
                assert header[key] == image[ccd + 1].header[key]
