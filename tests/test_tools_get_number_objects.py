"""get_number_objects: objects per tile from a real sextractor run, against the sources put in the images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from shapepipe_modules.tools import get_number_objects as tool

RUN = [sys.executable, "-m", "shapepipe.cli"]
SOURCES = {"-1": 17, "-2": 30}  # isolated bright sources per image


def _image(path, count, rng, size=320):
    """Noise (sigma 1) plus ``count`` round Gaussians of S/N ~ 200 on a grid: each one detection."""
    from astropy.io import fits

    y, x = np.mgrid[0:size, 0:size]
    image = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    cells = np.arange(36)
    rng.shuffle(cells)
    for cell in cells[:count]:
        cy, cx = 26 + 50 * (cell // 6) + rng.uniform(-3, 3), 26 + 50 * (cell % 6) + rng.uniform(-3, 3)
        image += 60.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 2.0**2))
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 244.0, 52.0
    header["CRPIX1"], header["CRPIX2"] = size / 2, size / 2
    header["CD1_1"], header["CD2_2"] = -0.187 / 3600, 0.187 / 3600
    fits.PrimaryHDU(image, header=header).writeto(path)
    fits.PrimaryHDU(np.zeros((size, size), np.int16)).writeto(str(path).replace("image", "flag"))


def _config(path, data, out, name):
    path.write_text(f"""[DEFAULT]
VERBOSE = False
RUN_NAME = {name}
[EXECUTION]
MODULE = sextractor
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {out}
[SEXTRACTOR]
FILE_PATTERN = image, flag
FILE_EXT = .fits, .fits
NUMBERING_SCHEME = -0
ENGINE = sep
WEIGHT_IMAGE = False
FLAG_IMAGE = True
ZP_FROM_HEADER = False
BKG_RESIDUAL = False
""")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    import json

    root = tmp_path_factory.mktemp("n_obj")
    rng = np.random.default_rng(21)
    data = root / "data"
    data.mkdir()
    for number, count in SOURCES.items():
        _image(data / f"image{number}.fits", count, rng)
    out = root / "output"
    _config(root / "c.ini", data, out, "sx")
    result = subprocess.run(RUN + ["-c", str(root / "c.ini")], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.glob("sx_*")
    table = {row["number"]: row["result"]["n_objects"] for row in json.loads((run_dir / "jobs.json").read_text())}
    return out, run_dir, table


def test_counts_equal_sources_catalogue_rows_and_job_table(run_output, capsys):
    from shapepipe_modules.io.ldac import read_ldac

    out, run_dir, recorded = run_output
    paths = tool.find_catalogues(out)
    assert [p.name for p in paths] == ["sexcat-1.fits", "sexcat-2.fits"]
    mean, counts = tool.number_of_objects(paths)
    by_number = {p.name[len("sexcat"):-len(".fits")]: n for p, n in counts.items()}
    assert by_number == SOURCES  # every source detected once
    assert by_number == recorded  # as the job table recorded
    assert by_number == {number: len(read_ldac(out / run_dir.name / "sextractor" / "output"
                                               / f"sexcat{number}.fits")[0]) for number in SOURCES}
    assert mean == (17 + 30) // 2
    # The console script: ShapePipe's single integer, or one line per catalogue, also to a file.
    assert tool.main(["-i", str(out)]) == 0
    assert capsys.readouterr().out == "23\n"
    listing = out.parent / "n_obj.txt"
    assert tool.main(["-i", str(out), "-m", "last:sextractor", "--per-file", "-o", str(listing)]) == 0
    assert capsys.readouterr().out == listing.read_text() == "sexcat-1.fits 17\nsexcat-2.fits 30\n"
    assert tool.main([str(paths[1])]) == 0
    assert capsys.readouterr().out == "30\n"


def test_extra_tables_after_the_objects_are_not_counted(tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import write_ldac

    path = tmp_path / "sexcat-244-252.fits"
    # An EPOCH_i table of 9 rows after LDAC_OBJECTS (ShapePipe counted the last HDU).
    write_ldac(path, Table({"NUMBER": np.arange(1, 6)}), fits.Header(),
               extra_hdus=[fits.BinTableHDU(Table({"ID": np.arange(9)}), name="EPOCH_0")])
    assert tool.count_objects(path) == 5
    assert tool.count_objects(path, hdu="EPOCH_0") == 9


def test_errors_name_what_is_missing(tmp_path, run_output, capsys):
    out, _, _ = run_output
    assert tool.main(["-i", str(tmp_path / "nowhere")]) == 1
    assert f"run output folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert tool.main(["-i", str(tmp_path)]) == 1
    assert f"no run record (*/run.json) under {tmp_path}" in capsys.readouterr().err
    assert tool.main(["-i", str(out), "-m", "psfex"]) == 1
    assert "no successful (done or partial) module psfex" in capsys.readouterr().err
    assert tool.main(["-i", str(out), "-m", "no_such_module"]) == 1
    assert "no_such_module" in capsys.readouterr().err
    broken = tmp_path / "sexcat-9.fits"
    broken.write_bytes(b"truncated")
    assert tool.main([str(broken)]) == 1
    assert f"cannot read catalogue {broken}" in capsys.readouterr().err
