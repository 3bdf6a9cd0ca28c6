"""The preparation chain through the runner, with ShapePipe's section names and keys.

get_images (tiles) -> find_exposures -> get_images (exposures) -> split_exp
-> merge_headers, plus uncompress_fits on the tile weights. One tile has no
HISTORY and one exposure has a truncated flag file: each fails its own job,
the rest of the run completes.
"""

import json

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from shapepipe.cli import main
from shapepipe_modules.io.header_store import HeaderStore
from test_get_images import make_cfis_exposure, make_tile
from test_split_exp import SHAPE, truncate

CONFIG = """
[DEFAULT]
VERBOSE = False
RUN_NAME = run_sp_GitFeGie

[EXECUTION]
MODULE = get_images_runner, find_exposures_runner, get_images_runner, uncompress_fits_runner,
         split_exp_runner, merge_headers_runner
MODE = SMP

[FILE]
LOG_NAME = log_sp
RUN_LOG_NAME = log_run_sp
INPUT_DIR = {root}
OUTPUT_DIR = {root}/output

[JOB]
SMP_BATCH_SIZE = 2
TIMEOUT = 00:05:00

[GET_IMAGES_RUNNER_RUN_1]
FILE_PATTERN = tile_numbers
FILE_EXT = .txt
NUMBERING_SCHEME =
INPUT_PATH = {root}/data_tiles, {root}/data_tiles
INPUT_FILE_PATTERN = CFIS.000.000.r, CFIS.000.000.r.weight
INPUT_FILE_EXT = .fits, .fits.fz
INPUT_NUMBERING = \\d{{3}}\\.\\d{{3}}
OUTPUT_FILE_PATTERN = CFIS_image-, CFIS_weight-
RETRIEVE = symlink
RETRIEVE_OPTIONS = -L

[FIND_EXPOSURES_RUNNER]
INPUT_MODULE = get_images_runner_run_1
FILE_PATTERN = CFIS_image
FILE_EXT = .fits
NUMBERING_SCHEME = -000-000
COLNUM = 3

[GET_IMAGES_RUNNER_RUN_2]
INPUT_MODULE = find_exposures_runner
FILE_PATTERN = exp_numbers
FILE_EXT = .txt
NUMBERING_SCHEME = -000-000
INPUT_PATH = {root}/data_exp, {root}/data_exp, {root}/data_exp
INPUT_FILE_PATTERN = 000000, 000000.weight, 000000.flag
INPUT_FILE_EXT = .fits, .fitsfz, .fitsfz
INPUT_NUMBERING = \\d{{6}}
OUTPUT_FILE_PATTERN = image-, weight-, flag-
RETRIEVE = copy
N_TRY = 3

[UNCOMPRESS_FITS_RUNNER]
INPUT_DIR = last:get_images_runner_run_1
FILE_PATTERN = CFIS_weight
FILE_EXT = .fitsfz
NUMBERING_SCHEME = -000-000
HDU_DATA = 1
OUTPUT_PATTERN = CFIS_weight

[SPLIT_EXP_RUNNER]
INPUT_DIR = last:get_images_runner_run_2
FILE_EXT = .fits, .fitsfz, .fitsfz
NUMBERING_SCHEME = -0000000
OUTPUT_SUFFIX = image, weight, flag
N_HDU = 3

[MERGE_HEADERS_RUNNER]
FILE_PATTERN = headers
FILE_EXT = .npy
NUMBERING_SCHEME = -0000000
OUTPUT_PATH = {root}/output
"""


def test_preparation_chain(tmp_path):
    root = tmp_path
    tiles = {(244, 252): ["2113737", "2113800"], (245, 252): ["2113800", "2113801"], (246, 252): ["2113802"]}
    for (xxx, yyy), exposures in tiles.items():
        make_tile(root / "data_tiles", xxx, yyy, exposures, with_history=(xxx != 246))
    truths = {}
    for seed, exposure in enumerate(("2113737", "2113800", "2113801", "2113802")):
        truths[exposure] = make_cfis_exposure(root / "data_exp", exposure, seed=seed)
    truncate(root / "data_exp" / "2113801p.flag.fits.fz", 0.6)
    (root / "tile_numbers.txt").write_text("244.252\n245.252\n246.252\n")
    config = root / "config.ini"
    config.write_text(CONFIG.format(root=root))

    status = main(["-c", str(config)])
    assert status != 0  # two jobs failed on purpose

    run_dir = next((root / "output").glob("run_sp_GitFeGie_*"))
    rows = json.loads((run_dir / "jobs.json").read_text())
    rows = rows["jobs"] if isinstance(rows, dict) else rows
    failed = {(r["module_run"], r["number"]): r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == {("find_exposures", "-246-252"), ("split_exp", "-2113801")}
    assert "CFIS_image-246-252.fits has no HISTORY" in failed[("find_exposures", "-246-252")]
    assert "flag-2113801.fits.fz" in failed[("split_exp", "-2113801")]

    tiles_out = run_dir / "get_images_run_1" / "output"
    assert sorted(p.name for p in tiles_out.iterdir()) == sorted(
        [f"CFIS_{k}-{x}-252.{e}" for x in (244, 245, 246) for k, e in (("image", "fits"), ("weight", "fits.fz"))])
    assert (tiles_out / "CFIS_image-244-252.fits").is_symlink()

    exp_lists = run_dir / "find_exposures" / "output"
    assert (exp_lists / "exp_numbers-244-252.txt").read_text() == "2113737p\n2113800p\n"
    assert (exp_lists / "exp_numbers-245-252.txt").read_text() == "2113800p\n2113801p\n"

    exposures_out = run_dir / "get_images_run_2" / "output"
    assert sorted(p.name for p in exposures_out.iterdir()) == sorted(
        [f"{k}-{e}{x}" for e in ("2113737", "2113800", "2113801")
         for k, x in (("image", ".fits"), ("weight", ".fits.fz"), ("flag", ".fits.fz"))])
    assert not (exposures_out / "image-2113737.fits").is_symlink()  # RETRIEVE = copy

    weights = run_dir / "uncompress_fits" / "output"
    assert sorted(p.name for p in weights.iterdir()) == [f"CFIS_weight-{x}-252.fits" for x in (244, 245, 246)]
    np.testing.assert_array_equal(fits.getdata(weights / "CFIS_weight-245-252.fits"), np.full((40, 50), 2.5))

    split = run_dir / "split_exp" / "output"
    for exposure in ("2113737", "2113800"):
        for ccd in range(3):
            np.testing.assert_array_equal(fits.getdata(split / f"image-{exposure}-{ccd}.fits"),
                                          truths[exposure]["image"][ccd])
            np.testing.assert_array_equal(fits.getdata(split / f"flag-{exposure}-{ccd}.fits"),
                                          truths[exposure]["flag"][ccd])
    assert not list(split.glob("*-2113801*"))

    store_path = run_dir / "merge_headers" / "output" / "log_exp_headers.sqlite"
    x, y = np.meshgrid(np.linspace(1, SHAPE[1], 3), np.linspace(1, SHAPE[0], 3))
    with HeaderStore(store_path) as store:
        assert store.exposures() == ["2113737", "2113800"]
        for exposure in store.exposures():
            for ccd in store.ccds(exposure):
                ra, dec = WCS(truths[exposure]["header"][ccd]).all_pix2world(x.ravel(), y.ravel(), 1)
                x_back, y_back = store.wcs(exposure, ccd).all_world2pix(ra, dec, 1)
                assert np.max(np.hypot(x_back - x.ravel(), y_back - y.ravel())) < 1e-6
