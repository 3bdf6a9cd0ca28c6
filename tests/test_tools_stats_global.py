"""Tests of stats_global."""

import csv
import os
import time

import numpy as np
import pytest

from shapepipe_modules.tools import stats_global as sg


def write_stat(directory, number, values):
    stat = directory / "stat"
    stat.mkdir(parents=True, exist_ok=True)
    lines = ["# Statistics"] + [f"{label} = {value}" for label, value in values.items()]
    path = stat / f"star_stat{number}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_summary_per_ccd_table_and_histograms(tmp_path, capsys):
    rng = np.random.default_rng(8)
    n_stars = rng.integers(20, 90, 12)
    fwhm = rng.normal(0.7, 0.05, 12)
    run1 = tmp_path / "output" / "run_1" / "setools_runner" / "output"
    run2 = tmp_path / "output" / "run_2" / "setools_runner" / "output"
    for index in range(12):
        values = {"Nb stars": n_stars[index], "Mean star fwhm selected (arcsec)": fwhm[index],
                  "stars/deg^2": "nan" if index == 3 else n_stars[index] * 10.0}
        write_stat(run1 if index < 6 else run2, f"-{2113737 + index}-{index % 4}", values)
    # A stale copy of one file in an older run: the newer one is used.
    old = write_stat(tmp_path / "older", f"-{2113737}-0", {"Nb stars": 9999})
    os.utime(old, (time.time() - 1000, time.time() - 1000))
    bad = write_stat(run2, "-3000000-1", {"Nb stars": 50})
    bad.write_text(bad.read_text() + "garbage line\n")
    out = tmp_path / "stats"
    assert sg.main([str(tmp_path), "-o", str(out), "--bins", "5"]) == 0
    assert "star_stat-3000000-1.txt:3: not 'label = number'" in capsys.readouterr().err

    all_stars = np.append(n_stars, 50)
    summary = (out / "stats_summary.txt").read_text().splitlines()
    assert summary[0] == "# 13 statistics files"
    row = next(line for line in summary if line.strip().startswith("Nb stars"))
    numbers = [float(v) for v in row.split()[2:]]
    assert numbers[0] == 13
    np.testing.assert_allclose(numbers[1:], [all_stars.mean(), all_stars.std(), np.median(all_stars),
                                             all_stars.min(), all_stars.max()], rtol=1e-5)
    density = next(line for line in summary if line.strip().startswith("stars/deg^2"))
    assert int(density.split()[1]) == 11  # NaN (file 3) and missing (bad file) left out

    with open(out / "stats_per_ccd.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 13 and rows[0]["number"] == "-2113737-0"
    assert float(rows[0]["Nb stars"]) == n_stars[0]
    assert float(rows[1]["Mean star fwhm selected (arcsec)"]) == pytest.approx(fwhm[1])

    hist = np.loadtxt(out / "hist_nb_stars.txt")
    assert hist.shape == (5, 2) and hist[:, 1].sum() == 13
    assert hist[0, 0] == all_stars.min()
    png = out / "hist_mean_star_fwhm_selected_arcsec.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_errors(tmp_path, capsys):
    assert sg.main([str(tmp_path / "none")]) == 1
    assert "none does not exist" in capsys.readouterr().err
    assert sg.main([str(tmp_path)]) == 1
    assert "no stat/star_stat-*.txt" in capsys.readouterr().err
    write_stat(tmp_path, "-1-1", {"a": 1})
    (tmp_path / "file").write_text("")
    assert sg.main([str(tmp_path), "-o", str(tmp_path / "file")]) == 1
    assert "is a file" in capsys.readouterr().err
