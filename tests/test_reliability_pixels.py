"""Reliability 5: non-finite pixels are masked and counted; unreadable files are named.

A CCD of the simulator's tiny survey is extracted by a real ``shapepipe_run``
(sextractor, sep engine) as it is, with half its pixels NaN and some weights
infinite, with those pixels given weight 0 instead (the reference), entirely
NaN, and truncated.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

RUN = [sys.executable, "-m", "shapepipe.cli"]
N_INF = 10


@pytest.fixture(scope="module")
def ccd(tmp_path_factory):
    from astropy.io import fits

    from shapepipe_modules.simulate import simulate

    folder = tmp_path_factory.mktemp("sim")
    simulate(preset="tiny", output_dir=folder, seed=1, n_workers=1)
    with fits.open(folder / "exposures" / "2100001p.fits") as hdus:
        image, header = np.array(hdus[1].data, np.float32), hdus[1].header.copy()
    with fits.open(folder / "exposures" / "2100001p.weight.fits.fz") as hdus:
        weight = np.array(hdus[1].data, np.float32)
    return image, weight, header


def _write(folder, number, image, weight, header):
    from astropy.io import fits

    fits.PrimaryHDU(image, header=header).writeto(folder / f"image{number}.fits", overwrite=True)
    fits.PrimaryHDU(weight).writeto(folder / f"weight{number}.fits", overwrite=True)
    fits.PrimaryHDU(np.zeros(image.shape, np.int16)).writeto(folder / f"flag{number}.fits", overwrite=True)


def test_bad_pixels_masked_counted_and_detection_unchanged(tmp_path, ccd):
    from shapepipe_modules.io.ldac import read_ldac

    image, weight, header = ccd
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    ny, nx = image.shape
    _write(data, "-1", image, weight, header)
    nan_image = image.copy()
    nan_image[:, : nx // 2] = np.nan
    inf_weight = weight.copy()
    spots = (rng.integers(0, ny, N_INF), rng.integers(nx // 2, nx, N_INF))
    inf_weight[spots] = np.inf
    _write(data, "-2", nan_image, inf_weight, header)
    zero_weight = weight.copy()
    zero_weight[:, : nx // 2] = 0.0
    zero_weight[spots] = 0.0
    _write(data, "-3", image, zero_weight, header)  # the same pixels at weight 0: the reference
    _write(data, "-4", np.full_like(image, np.nan), weight, header)
    _write(data, "-5", image, weight, header)
    truncated = data / "image-5.fits"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    out = tmp_path / "out"
    config = tmp_path / "c.ini"
    config.write_text(f"""[DEFAULT]
VERBOSE = False
RUN_NAME = pix
[EXECUTION]
MODULE = sextractor
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {out}
[JOB]
SMP_BATCH_SIZE = 2
[SEXTRACTOR]
FILE_PATTERN = image, weight, flag
FILE_EXT = .fits, .fits, .fits
NUMBERING_SCHEME = -0
ENGINE = sep
WEIGHT_IMAGE = True
FLAG_IMAGE = True
ZP_FROM_HEADER = False
""")
    result = subprocess.run(RUN + ["-c", str(config)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # the truncated file fails its job
    (run_dir,) = out.glob("pix_*")
    table = {r["number"]: r for r in json.loads((run_dir / "jobs.json").read_text())}
    assert {n: r["status"] for n, r in table.items()} == {
        "-1": "done", "-2": "done", "-3": "done", "-4": "unprocessable", "-5": "failed"}
    # Counted and recorded in the job table, logged with the file names.
    assert table["-2"]["result"]["bad_pixels_image"] == ny * (nx // 2)
    assert table["-2"]["result"]["bad_pixels_weight"] == len(set(zip(*spots)))
    assert table["-1"]["result"]["bad_pixels_image"] == 0
    log = (run_dir / "sextractor" / "logs" / "process-2.log").read_text()
    assert f"{data / 'image-2.fits'}: {ny * (nx // 2)} non-finite pixel(s) (NaN or inf) masked (weight 0)" in log
    assert f"{data / 'weight-2.fits'}: {len(set(zip(*spots)))} non-finite weight pixel(s) masked" in log
    # Detection in the valid part: exactly that of the same pixels at weight 0.
    output = run_dir / "sextractor" / "output"
    masked, _ = read_ldac(output / "sexcat-2.fits")
    reference, _ = read_ldac(output / "sexcat-3.fits")
    full, _ = read_ldac(output / "sexcat-1.fits")
    assert 0 < len(masked) < len(full)
    assert len(masked) == len(reference)
    for column in ("X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLAGS"):
        np.testing.assert_array_equal(np.asarray(masked[column]), np.asarray(reference[column]))
    assert np.all(np.asarray(masked["X_IMAGE"]) > nx // 2 - 5)
    # Entirely bad: unprocessable, naming the file; truncated: failed, naming the file.
    assert table["-4"]["error"].startswith(f"JobUnprocessable: {data / 'image-4.fits'}: no usable pixel")
    assert str(truncated) in table["-5"]["error"] and "cannot read as FITS" in table["-5"]["error"]
    assert not (output / "sexcat-4.fits").exists() and not (output / "sexcat-5.fits").exists()
