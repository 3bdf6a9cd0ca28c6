"""exposure_quality on the ``lightcurve`` simulation, against its truth
(``truth/exposures.fits``: dates, zero points, PSF FWHM, the exposures made bad)."""

import logging
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lightcurve_chain import quality_inputs, run_serial_module


@pytest.fixture(scope="module")
def quality(lightcurve_quality):
    return Table.read(lightcurve_quality / "exposure_quality-0000000.fits")


@pytest.fixture(scope="module")
def truth(lightcurve_sim):
    table = Table.read(lightcurve_sim / "truth" / "exposures.fits")
    return {f"{row['exposure']:07d}": row for row in table}


def test_dates_and_filter_come_from_the_headers(quality, truth):
    for row in quality:
        assert row["MJD"] == truth[row["EXPOSURE"]]["mjd"]
        assert row["FILTER"] == "r.MP9602"
    nights = np.unique(np.floor(quality["MJD"]))
    assert len(nights) == 4


def test_zero_points_recovered_within_0p01_mag(quality, truth):
    errors = np.array([row["ZP"] - truth[row["EXPOSURE"]]["zero_point"] for row in quality])
    assert np.all(quality["ZP_SOURCE"] == "stars")
    assert np.all(quality["N_ZP_STARS"] >= 20)
    assert np.max(np.abs(errors)) < 0.01, errors
    # The header's PHOTZP is the simulation's true zero point.
    assert np.allclose(quality["PHOTZP_HEADER"], [truth[e]["zero_point"] for e in quality["EXPOSURE"]])


def test_sky_and_psf_follow_the_truth(quality, truth, lightcurve_sim):
    from shapepipe_modules.simulate.presets import resolve_parameters
    from shapepipe_modules.simulate.render import sky_level

    params = resolve_parameters("lightcurve")
    true_zp = np.array([truth[e]["zero_point"] for e in quality["EXPOSURE"]])
    true_sky = sky_level(params) * 10 ** (0.4 * (true_zp - 30.0))
    # Faint undetected objects raise the median a little above the sky.
    assert np.all(np.abs(quality["SKY"] / true_sky - 1) < 0.01)
    assert np.all(np.abs(quality["SKY_MAG"] - params["sky_mag"]) < 0.02)
    noise = np.sqrt(true_sky / params["gain"] + (params["read_noise"] / params["gain"]) ** 2)
    # The rms: the pixel noise, plus a little from the faint objects (3-17% here).
    assert np.all((quality["SKY_RMS"] / noise > 0.98) & (quality["SKY_RMS"] / noise < 1.2))
    # The Gaussian-equivalent FWHM of the Moffat model is ~10% above the Moffat's FWHM, the same
    # factor for every exposure: the measured FWHM follows the true one.
    true_fwhm = np.array([truth[e]["psf_fwhm0"] for e in quality["EXPOSURE"]])
    ratio = quality["PSF_FWHM"] / true_fwhm
    assert np.all((ratio > 1.0) & (ratio < 1.25)), ratio
    assert np.corrcoef(quality["PSF_FWHM"], true_fwhm)[0, 1] > 0.98
    assert np.all(np.hypot(quality["PSF_E1"], quality["PSF_E2"]) < 0.05)
    # Bad seeing and clouds make an exposure shallower.
    depth = {e: np.mean(quality["LIMMAG"][quality["EXPOSURE"] == e]) for e in truth}
    good = [depth[e] for e in truth if not (truth[e]["bad_seeing"] or truth[e]["bad_zero_point"])]
    bad = [depth[e] for e in truth if truth[e]["bad_seeing"] or truth[e]["bad_zero_point"]]
    assert max(bad) < min(good)


def test_rules_flag_exactly_the_exposures_made_bad(quality, truth, lightcurve_quality):
    from shapepipe_modules.exposure_quality.quality import read_exclusion_list

    excluded = read_exclusion_list(lightcurve_quality / "exposure_exclude-0000000.txt")
    expected = {e: ("LOW_ZP" if row["bad_zero_point"] else "BAD_SEEING") for e, row in truth.items()
                if row["bad_zero_point"] or row["bad_seeing"]}
    assert len(expected) == 2
    assert excluded == expected
    for row in quality:
        assert (row["QUALITY_FLAGS"] != 0) == (row["EXPOSURE"] in expected)
    assert (lightcurve_quality / "exposure_quality-0000000.png").stat().st_size > 10000


def test_missing_date_or_zero_point_is_named_and_excluded(lightcurve_sim, lightcurve_chain, tmp_path, caplog):
    from shapepipe_modules.exposure_quality.quality import read_exclusion_list
    from shapepipe_modules.exposure_quality.runner import exposure_quality

    table = {n: paths for n, paths in quality_inputs(lightcurve_chain).items()
             if n.split("-")[1] in ("2100001", "2100002", "2100003")}
    for number, key in (("-2100002-0", "MJD-OBS"), ("-2100003-1", "PHOTZP")):
        copy = tmp_path / f"image{number}.fits"
        shutil.copy(table[number][0], copy)
        with fits.open(copy, mode="update") as hdus:
            del hdus[0].header[key]
        table[number] = [copy] + table[number][1:]
    with caplog.at_level(logging.WARNING):
        run_serial_module(exposure_quality, table, tmp_path / "out",
                          REF_CATALOGUE=str(lightcurve_sim / "catalogues" / "reference_stars.fits"))
    assert "exposure 2100002 CCD 0 (image-2100002-0.fits): no MJD-OBS" in caplog.text
    assert "exposure 2100003 CCD 1 (image-2100003-1.fits): no PHOTZP" in caplog.text
    quality = Table.read(tmp_path / "out" / "exposure_quality-0000000.fits")
    chosen = (quality["EXPOSURE"] == "2100002") & (quality["CCD"] == 0)
    assert np.isnan(np.ma.filled(quality["MJD"], np.nan)[chosen][0])  # NaN, never a made-up date
    assert quality["FLAG_NAMES"][chosen][0] == "NO_DATE"
    assert read_exclusion_list(tmp_path / "out" / "exposure_exclude-0000000.txt") == {
        "2100002": "NO_DATE", "2100003": "NO_ZERO_POINT"}


def test_options_are_checked():
    from shapepipe_modules.exposure_quality.runner import validate

    problems = validate({"EXCLUDE_FLAGS": ["LOW_ZP", "CLOUDY"], "REF_COLUMNS": ["ra", "dec"],
                         "ZP_MAG_RANGE": [21.0, 17.0], "STAMP_SIZE": 20})
    assert len(problems) == 4
    assert "CLOUDY" in problems[0]


def test_reference_catalogue_without_a_column_is_named(tmp_path):
    from shapepipe.errors import JobError
    from shapepipe_modules.exposure_quality.runner import _read_reference

    path = tmp_path / "ref.fits"
    Table({"ra": [1.0], "dec": [2.0]}).write(path)
    with pytest.raises(JobError, match=r"\[EXPOSURE_QUALITY\] REF_CATALOGUE .*ref.fits: no column mag"):
        _read_reference(path, ["ra", "dec", "mag"])
