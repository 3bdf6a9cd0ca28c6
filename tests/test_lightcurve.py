"""Forced photometry per epoch and light curves on the ``lightcurve`` simulation, against its truth
(variable stars with their light-curve parameters, true magnitude per exposure).

Numbers measured on seed 7 (docs/lightcurves.md): 309 constant stars matched, 84 of them blended
(another tile object within 3 arcsec), 29 more with an undetected simulated neighbour; on the others
the pooled reduced chi2 with the default errors (systematic error and offset per exposure CCD
measured on the data) is 1.12 (17-19 mag), 0.84, 1.02, 1.10, 0.93, 0.82 (23-24); one false positive
in 228 unblended constant stars; all 17 unblended variables brighter than 22 with a true range
>= 0.1 mag over the used epochs are flagged. Each bright bin over 13 seeds:
benchmarks/lightcurve_errors.py.
"""

import logging
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lightcurve_chain import isolated_in_truth, match_tile_truth, run_forced_phot, run_lightcurve

#: Faintest magnitude and smallest true range over the used epochs at which every variable is flagged.
DETECTION_MAG, DETECTION_AMPLITUDE = 22.0, 0.1


@pytest.fixture(scope="module")
def data(lightcurve_sim, lightcurve_chain, lightcurve_forced):
    forced_path, stats_path = lightcurve_forced
    forced = Table.read(forced_path, hdu="FORCED_PHOT")
    epochs = Table.read(forced_path, hdu="EPOCHS")
    stats = Table.read(stats_path, hdu="LIGHTCURVE_STATS")
    number, index, truth = match_tile_truth(lightcurve_sim, lightcurve_chain["tile_catalogue"])
    of_number = dict(zip(number.tolist(), index.tolist()))
    row = np.array([of_number[n] for n in stats["NUMBER"]])
    matched = row >= 0
    safe = np.where(matched, row, 0)
    stats["TRUE_MAG"] = np.where(matched, truth["mag"][safe], np.nan)
    stats["IS_STAR"] = matched & np.asarray(truth["is_star"])[safe]
    stats["VAR_TYPE"] = np.where(matched, truth["var_type"][safe], -1)
    stats["TRUE_ID"] = np.where(matched, truth["id"][safe], -1)
    # No simulated neighbour within 3 arcsec, detected or not (an undetected one makes the light curve
    # that of two objects).
    ids = np.where(matched, truth["id"][safe], truth["id"][0])
    stats["ISOLATED"] = matched & isolated_in_truth(lightcurve_sim, ids)
    return {"forced": forced, "epochs": epochs, "stats": stats, "truth": truth, "forced_path": forced_path,
            "stats_path": stats_path, "sim": lightcurve_sim, "number": number}


def used_exposures(data):
    epochs = data["epochs"]
    return sorted(set(epochs["EXP_NAME"][epochs["USED"]]))


def true_range(sim, exposures):
    """True magnitude range of every object over the given exposures (exposure truth)."""
    mags = {}
    for exposure in exposures:
        truth = Table.read(sim / "truth" / f"truth_exp-{exposure}.fits")
        for object_id, mag in zip(truth["id"], truth["mag"]):
            mags.setdefault(int(object_id), []).append(float(mag))
    return {key: max(values) - min(values) for key, values in mags.items()}


def test_epochs_exclude_the_bad_exposures_and_join_the_catalogue(data, lightcurve_chain):
    epochs, forced = data["epochs"], data["forced"]
    left_out = set(epochs["EXP_NAME"][~epochs["USED"]])
    assert left_out == {"2100004", "2100007"}
    assert all("excluded by the quality list" in reason for reason in epochs["REASON"][~epochs["USED"]])
    assert set(forced["EXP_NAME"]) == set(used_exposures(data))
    assert set(forced["NUMBER"]) <= set(data["number"].tolist())
    # One row per object and epoch; dates are the headers' (4 nights).
    pairs = set(zip(forced["NUMBER"].tolist(), forced["EXP_NAME"].tolist()))
    assert len(pairs) == len(forced)
    assert len(np.unique(np.floor(forced["MJD"]))) == 4
    assert np.all(forced["MAG_PSF"][forced["FLUX_PSF"] > 0] > 15)


def test_calibrated_magnitudes_of_constant_stars_match_the_truth(data):
    stats, forced = data["stats"], data["forced"]
    constant = stats["IS_STAR"] & (stats["VAR_TYPE"] == 0) & ~stats["BLENDED"] & (stats["TRUE_MAG"] < 21)
    true_mag = dict(zip(stats["NUMBER"][constant].tolist(), stats["TRUE_MAG"][constant].tolist()))
    chosen = np.isin(forced["NUMBER"], list(true_mag)) & (forced["FLAGS"] == 0)
    offset = np.ma.filled(forced["MAG_PSF"], np.nan)[chosen] - np.array([true_mag[n] for n in forced["NUMBER"][chosen]])
    for exposure in used_exposures(data):
        median = np.median(offset[forced["EXP_NAME"][chosen] == exposure])
        assert abs(median) < 0.01, (exposure, median)


def pooled_chi2(stats, low, high):
    chosen = (stats["IS_STAR"] & (stats["VAR_TYPE"] == 0) & ~stats["BLENDED"] & stats["ISOLATED"]
              & (stats["N_EPOCHS"] >= 4)
              & (stats["TRUE_MAG"] >= low) & (stats["TRUE_MAG"] < high))
    dof = stats["N_EPOCHS"][chosen] - 1
    return float(np.sum(stats["CHI2_RED"][chosen] * dof) / np.sum(dof)), int(chosen.sum())


def test_constant_stars_scatter_as_their_errors_predict(data, tmp_path):
    # One seed holds ~17 isolated constant stars per magnitude brighter than 19 (chi2/dof known to
    # +-0.16): 17-19 is pooled here; benchmarks/lightcurve_errors.py measures each bin on 13 seeds.
    stats = data["stats"]
    for low, high in ((17, 19), (19, 20), (20, 21), (21, 22), (22, 23), (23, 24)):
        chi2, count = pooled_chi2(stats, low, high)
        assert count >= 20
        assert 0.8 <= chi2 <= 1.2, (low, chi2)
    # With the statistical errors alone, where the photon noise dominates (21-24 mag: errors of 2% and
    # more; at 20-21 mag, 1%, the PSF model's ~4 mmag adds ~16% to chi2).
    raw = Table.read(run_lightcurve(data["forced_path"], tmp_path, ERROR_FLOOR=0.0, SCALE_BY_FIT_CHI2=False,
                                    EXPOSURE_SYSTEMATICS=False), hdu="LIGHTCURVE_STATS")
    for name in ("TRUE_MAG", "IS_STAR", "VAR_TYPE", "ISOLATED"):
        raw[name] = stats[name]
    raw["BLENDED"] = stats["BLENDED"]
    assert np.array_equal(raw["NUMBER"], stats["NUMBER"])
    for low in (21, 22, 23):
        chi2, _ = pooled_chi2(raw, low, low + 1)
        assert 0.8 <= chi2 <= 1.2, (low, chi2)
    # Brighter, the PSF model's errors dominate: the statistical errors alone are too small.
    assert pooled_chi2(raw, 17, 19)[0] > 2


def test_systematics_per_exposure_ccd(data):
    """The SYSTEMATICS HDU: one row per used exposure CCD, offsets of mean 0; applying them brings the
    calibrated PSF fluxes of bright isolated constant stars closer to their true fluxes."""
    systematics = Table.read(data["stats_path"], hdu="SYSTEMATICS")
    forced, stats = data["forced"], data["stats"]
    used = {(str(e), int(c)) for e, c in zip(forced["EXP_NAME"], forced["CCD_N"])}
    assert {(str(e), int(c)) for e, c in zip(systematics["EXP_NAME"], systematics["CCD_N"])} == used
    assert np.all(systematics["N_CALIBRATORS"] >= 5)
    assert abs(np.mean(10 ** (-0.4 * systematics["OFFSET"]) - 1)) < 1e-4
    assert np.all((systematics["SYSTEMATIC"] >= 0) & (systematics["SYSTEMATIC"] < 0.02))
    # Against truth: scatter of the PSF fluxes about the true flux, per exposure CCD, before and after.
    chosen = (stats["IS_STAR"] & (stats["VAR_TYPE"] == 0) & ~stats["BLENDED"] & stats["ISOLATED"]
              & (stats["TRUE_MAG"] < 20))
    true_mag = dict(zip(stats["NUMBER"][chosen].tolist(), stats["TRUE_MAG"][chosen].tolist()))
    rows = np.isin(forced["NUMBER"], list(true_mag)) & (forced["FLAGS"] == 0)
    ratio = forced["FLUX_PSF_CAL"][rows] / 10 ** (-0.4 * (np.array([true_mag[n] for n in forced["NUMBER"][rows]]) - 30))
    offset = {(str(e), int(c)): o
              for e, c, o in zip(systematics["EXP_NAME"], systematics["CCD_N"], systematics["OFFSET"])}
    corrected = ratio * 10 ** (-0.4 * np.array([offset[(str(e), int(c))] for e, c in
                                                zip(forced["EXP_NAME"][rows], forced["CCD_N"][rows])]))
    before, after = [], []
    for key in used:
        on = (forced["EXP_NAME"][rows] == key[0]) & (forced["CCD_N"][rows] == key[1])
        before.append(np.median(ratio[on]))
        after.append(np.median(corrected[on]))
    # Each exposure CCD's median ratio to the truth (its calibration error) spreads less after the offsets.
    assert np.std(after) < np.std(before)


def test_exposure_systematics_recovers_known_offsets_and_errors():
    """Synthetic light curves: 400 objects on 8 exposure CCDs, known offsets and systematic errors,
    15% variables of 0.05-0.5 mag (which must not bias the estimate)."""
    from shapepipe_modules.lightcurve.curves import exposure_systematics

    rng = np.random.default_rng(3)
    n_obj, k = 400, 8
    f0 = 10 ** rng.uniform(3.5, 6.0, n_obj)
    delta = rng.normal(0.0, 0.005, k)
    s = rng.uniform(0.0, 0.01, k)
    group = np.repeat(np.arange(n_obj), k)
    exposure = np.tile(np.arange(k), n_obj)
    amplitude = np.where(rng.uniform(size=n_obj) < 0.15, rng.uniform(0.05, 0.5, n_obj), 0.0)
    true = f0[group] * (1 + amplitude[group] * np.sin(rng.uniform(0, 2 * np.pi, n_obj)[group] + exposure))
    sigma = np.sqrt(true + 300.0)
    noise = rng.normal(size=(2, group.size))
    flux = true * (1 + delta[exposure]) * (1 + s[exposure] * noise[0]) + sigma * noise[1]
    scale = np.bincount(group, flux)[group] / k
    found_delta, found_s, count = exposure_systematics(group, exposure, flux, sigma**2, scale, sigma / scale < 0.01)
    assert np.all(count > 200)
    # ~250 calibrators each: the offsets to ~0.5 mmag, the systematic errors to ~0.5 mmag.
    assert np.all(np.abs(found_delta - (delta - delta.mean())) < 0.0015), found_delta - (delta - delta.mean())
    assert np.all(np.abs(found_s - s) < 0.0015), found_s - s
    # Without the systematics, the same light curves would look variable.
    assert np.mean(found_s) > 0.004


def test_variables_flagged_and_false_positives_below_one_percent(data):
    stats = data["stats"]
    ranges = true_range(data["sim"], used_exposures(data))
    unblended = stats["IS_STAR"] & ~stats["BLENDED"] & (stats["N_EPOCHS"] >= 4)
    constant = unblended & (stats["VAR_TYPE"] == 0)
    assert constant.sum() > 200
    false_positive = stats["VARIABLE"][constant].mean()
    assert false_positive < 0.01
    variable = unblended & (stats["VAR_TYPE"] > 0)
    amplitude = np.array([ranges.get(int(i), 0.0) for i in stats["TRUE_ID"]])
    detectable = variable & (stats["TRUE_MAG"] < DETECTION_MAG) & (amplitude >= DETECTION_AMPLITUDE)
    assert detectable.sum() >= 15
    assert np.all(stats["VARIABLE"][detectable]), stats["NUMBER"][detectable & ~stats["VARIABLE"]]
    # Both kinds are found; the measured range follows the true one for bright variables.
    kinds = set(stats["VAR_TYPE"][detectable].tolist())
    assert kinds == {1, 2}
    bright = detectable & (stats["TRUE_MAG"] < 21)
    assert np.all(np.abs(stats["AMPLITUDE"][bright] - amplitude[bright]) < 0.08)
    # The excess variance of variables stands above that of constant stars of the same magnitudes.
    assert np.median(stats["EXCESS_VAR"][detectable]) > 10 * np.percentile(stats["EXCESS_VAR"][constant], 90)


def test_exposure_without_date_is_left_out_and_named(data, lightcurve_chain, tmp_path, caplog):
    split = tmp_path / "split"
    split.mkdir()
    for path in lightcurve_chain["split_dir"].glob("*-*-*.fits"):
        os.symlink(path, split / path.name)
    (split / "image-2100002-0.fits").unlink()
    shutil.copy(lightcurve_chain["split_dir"] / "image-2100002-0.fits", split / "image-2100002-0.fits")
    with fits.open(split / "image-2100002-0.fits", mode="update") as hdus:
        del hdus[0].header["MJD-OBS"]
    chain = dict(lightcurve_chain, split_dir=split)
    with caplog.at_level(logging.WARNING):
        path = run_forced_phot(chain, None, tmp_path / "out")
    assert "exposure 2100002 CCD 0 left out of the light curves: no MJD-OBS in the header of image-2100002-0.fits" \
        in caplog.text
    epochs = Table.read(path, hdu="EPOCHS")
    row = epochs[(epochs["EXP_NAME"] == "2100002") & (epochs["CCD_N"] == 0)][0]
    assert not row["USED"] and "no MJD-OBS" in row["REASON"]
    forced = Table.read(path, hdu="FORCED_PHOT")
    assert not np.any((forced["EXP_NAME"] == "2100002") & (forced["CCD_N"] == 0))
    assert np.all(np.isfinite(forced["MJD"]))
    # Without a quality table, the headers' zero points; no exposure excluded.
    assert set(epochs["ZP_SOURCE"][epochs["USED"]]) == {"header"}
    assert set(forced["EXP_NAME"]) == {f"{2100001 + k}" for k in range(8)}


def test_shapepipe_lightcurve_prints_and_plots(data, tmp_path, capsys):
    from shapepipe_modules.lightcurve.cli import main

    stats = data["stats"]
    chosen = stats["VARIABLE"] & (stats["TRUE_MAG"] < 20)
    number = int(stats["NUMBER"][chosen][0])
    output = tmp_path / "curve.png"
    assert main([str(number), "--forced", str(data["forced_path"]), "--stats", str(data["stats_path"]),
                 "-o", str(output)]) == 0
    text = capsys.readouterr().out
    assert f"object {number}: {int(np.sum(data['forced']['NUMBER'] == number))} epochs" in text
    assert "variable True" in text
    assert output.stat().st_size > 5000
    assert main(["999999", "--forced", str(data["forced_path"]), "--no-plot"]) == 2
    assert "object 999999 has no epoch" in capsys.readouterr().err


def test_summary_plot_written(data):
    summary = data["stats_path"].parent / data["stats_path"].name.replace("lightcurve_stats", "lightcurve_summary")
    assert summary.with_suffix(".png").stat().st_size > 10000


def test_options_are_checked():
    from shapepipe_modules.forced_phot.runner import validate as validate_forced
    from shapepipe_modules.lightcurve.runner import validate as validate_curve

    assert len(validate_curve({"ERROR_FLOOR": -1.0, "FALSE_ALARM": 2.0, "MIN_EPOCHS": 1})) == 3
    problems = validate_forced({"STAMP_SIZE": 20, "APER_RADIUS": 0.0, "ME_IMAGE_PATTERN": ["image"],
                                "POSITION_PARAMS": ["XWIN_WORLD", "YWIN_WORLD"], "ME_IMAGE_DIR": "",
                                "ME_DOT_PSF_DIR": "psf"})
    assert len(problems) == 4 and "ME_IMAGE_DIR is required" in problems[-1]


def test_simulated_conditions_in_headers_and_truth(lightcurve_sim):
    from shapepipe_modules.simulate.variability import delta_mag

    conditions = Table.read(lightcurve_sim / "truth" / "exposures.fits")
    variables = Table.read(lightcurve_sim / "truth" / "variables.fits")
    assert len(variables) > 30 and set(variables["var_type"]) == {1, 2}
    for row in conditions:
        with fits.open(lightcurve_sim / "exposures" / f"{row['exposure']}p.fits") as hdus:
            assert hdus[0].header["MJD-OBS"] == row["mjd"] and hdus[1].header["MJD-OBS"] == row["mjd"]
            assert hdus[1].header["PHOTZP"] == row["zero_point"]
        truth = Table.read(lightcurve_sim / "truth" / f"truth_exp-{row['exposure']}.fits")
        columns = {name: np.asarray(truth[name]) for name in truth.colnames}
        assert np.allclose(truth["mag"], truth["mag_ref"] + delta_mag(columns, row["mjd"], 58800.0))
    assert np.all(conditions["bad_zero_point"] == (conditions["index"] == 3))
    assert np.all(conditions["bad_seeing"] == (conditions["index"] == 6))
    good = ~conditions["bad_zero_point"]
    assert np.all((conditions["zero_point"][good] >= 29.9) & (conditions["zero_point"][good] <= 30.1))
    # Two exposures a night, one day apart.
    assert np.allclose(np.diff(conditions["mjd"][::2]), 1.0)


def test_default_presets_keep_their_dates_and_zero_points(tiny_sim):
    conditions = Table.read(tiny_sim / "truth" / "exposures.fits")
    assert np.all(conditions["zero_point"] == 30.0)
    assert np.allclose(conditions["mjd"], 58800.0 + conditions["index"] * 240.0 / 86400.0, rtol=0, atol=1e-9)
    assert not (tiny_sim / "truth" / "variables.fits").exists()
    assert "var_type" not in Table.read(tiny_sim / "truth" / "truth_tile-244-252.fits").colnames


def test_true_psf_fluxes_scatter_as_photon_noise(data, lightcurve_chain):
    """Forced fits with the simulation's TRUE PSF (``psf=``) on bright isolated constant stars, calibrated
    with the true zero points: the statistical errors alone predict the scatter (the noise model is
    right); with the PSFEx model on the same pixels the scatter is several times larger (the model's
    flux errors, which the lightcurve module measures per exposure CCD)."""
    from shapepipe_modules.forced_phot.photometry import forced_photometry
    from shapepipe_modules.simulate.psf import TruePSF

    stats, forced, sim = data["stats"], data["forced"], data["sim"]
    chosen = (stats["IS_STAR"] & (stats["VAR_TYPE"] == 0) & ~stats["BLENDED"] & stats["ISOLATED"]
              & (stats["TRUE_MAG"] < 20))
    rows = np.flatnonzero(np.isin(forced["NUMBER"], stats["NUMBER"][chosen]) & (forced["FLAGS"] == 0))
    conditions = Table.read(sim / "truth" / "exposures.fits")
    true_zp = {f"{int(e):07d}": float(z) for e, z in zip(conditions["exposure"], conditions["zero_point"])}
    psf = TruePSF(sim)
    flux = {"true": np.zeros(rows.size), "model": np.zeros(rows.size)}
    error = {"true": np.zeros(rows.size), "model": np.zeros(rows.size)}
    exposures = np.char.strip(np.asarray(forced["EXP_NAME"][rows]).astype(str))
    for exposure, ccd in sorted(set(zip(exposures.tolist(), forced["CCD_N"][rows].tolist()))):
        on = np.flatnonzero((exposures == exposure) & (forced["CCD_N"][rows] == ccd))
        files = lightcurve_chain["ccds"][(exposure, ccd)]
        with fits.open(files["image"]) as hdus:
            image, gain = hdus[0].data.astype(np.float64), float(hdus[0].header["GAIN"])
        weight = fits.getdata(files["weight"]).astype(np.float64)
        x, y = forced["X_CCD"][rows][on], forced["Y_CCD"][rows][on]
        stamps = np.stack([psf.draw(int(exposure), ccd, xi, yi, size=21).array for xi, yi in zip(x, y)])
        phot = forced_photometry(image, weight, None, x, y, gain, 21, 5.0, fits.getdata(files["flag"]),
                                 deblend_iterations=0, psf=stamps)
        scale = 10 ** (-0.4 * (true_zp[exposure] - 30.0))
        flux["true"][on], error["true"][on] = phot["FLUX_PSF"] * scale, phot["FLUXERR_PSF"] * scale
        flux["model"][on] = forced["FLUX_PSF"][rows][on] * scale
        error["model"][on] = forced["FLUXERR_PSF"][rows][on] * scale
    number = forced["NUMBER"][rows]
    chi2 = {}
    for kind in ("true", "model"):
        total, dof = 0.0, 0
        for n in np.unique(number):
            own = number == n
            if own.sum() < 4:
                continue
            w = 1.0 / error[kind][own] ** 2
            mean = np.sum(w * flux[kind][own]) / np.sum(w)
            total += np.sum(w * (flux[kind][own] - mean) ** 2)
            dof += own.sum() - 1
        chi2[kind] = total / dof
    assert dof > 200
    assert 0.8 <= chi2["true"] <= 1.2, chi2
    assert chi2["model"] > 2.5 * chi2["true"], chi2
