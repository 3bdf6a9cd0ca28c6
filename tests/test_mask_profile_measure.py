"""Measuring the bright-star profile (modules/mask/measure_profile.py, shapepipe_star_profile).

Truth: bright stars drawn by the simulator's own ``star_profile`` (GalSim:
PSF core, Moffat halo, two Gaussian spikes) at known positions and fluxes on
a sky with Gaussian noise, cores clipped at the saturation level; sampled
at the pixel centres as the simulator draws them (the profile is the light
per pixel, pixel response included). The fit
must recover every parameter within 4 of its own errors (which the noise
sets) and the errors must be small enough to be useful.
"""

import json
import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from test_mask_geometry import tan_wcs

SCALE = 0.187
FWHM = 0.72
SKY, NOISE, SATURATE = 167.0, 5.35, 40000.0
#: Stars on a 3 x 3 grid, 640 pixels (120") apart: each has its 60" sky annulus to itself.
MAGS = (14.0, 14.3, 14.6, 14.9, 15.2, 15.5, 15.8, 16.1, 16.4)


def true_options():
    from shapepipe_modules.simulate.render import (HALO_BETA, HALO_FRACTION, HALO_FWHM_FACTOR, SPIKE_FRACTION,
                                                   SPIKE_LENGTH_ARCSEC, SPIKE_WIDTH_FACTOR)

    return {"STAR_PROFILE_PSF_FWHM": FWHM, "STAR_PROFILE_PSF_BETA": 3.5, "STAR_PROFILE_HALO_FRACTION": HALO_FRACTION,
            "STAR_PROFILE_HALO_FWHM": HALO_FWHM_FACTOR * FWHM, "STAR_PROFILE_HALO_BETA": HALO_BETA,
            "STAR_PROFILE_SPIKE_FRACTION": SPIKE_FRACTION, "STAR_PROFILE_SPIKE_LENGTH": SPIKE_LENGTH_ARCSEC,
            "STAR_PROFILE_SPIKE_WIDTH": SPIKE_WIDTH_FACTOR * FWHM}


def draw_field(folder, seed=5):
    """image-0000001-0.fits, weight-0000001-0.fits and bright_stars.fits of 9 simulated bright stars."""
    from shapepipe_modules.simulate.render import star_profile

    shape = (1950, 1950)
    rng = np.random.default_rng(seed)
    wcs = tan_wcs(shape, ra=150.0, dec=2.0)
    image = SKY + rng.normal(0.0, NOISE, shape)
    grid = np.array([335.0, 975.0, 1615.0])
    x = np.repeat(grid, 3) + rng.uniform(-0.5, 0.5, 9)
    y = np.tile(grid, 3) + rng.uniform(-0.5, 0.5, 9)
    half = 330
    for xs, ys, mag in zip(x, y, MAGS):
        flux = 10.0 ** (-0.4 * (mag - 30.0))
        ix, iy = int(round(xs)), int(round(ys))
        stamp = star_profile(flux, mag, FWHM, 0.0, 0.0, {"psf_beta": 3.5, "halo_mag": 17.0}).drawImage(
            nx=2 * half + 1, ny=2 * half + 1, scale=SCALE, offset=(xs - ix, ys - iy),
            method="no_pixel").array
        image[iy - half:iy + half + 1, ix - half:ix + half + 1] += stamp
    image = np.minimum(image, SATURATE)
    header = wcs.to_header()
    header["PHOTZP"] = 30.0
    header["SATURATE"] = SATURATE
    paths = {"image": folder / "image-0000001-0.fits", "weight": folder / "weight-0000001-0.fits"}
    fits.PrimaryHDU(image.astype(np.float32), header).writeto(paths["image"])
    fits.PrimaryHDU(np.full(shape, 1.0 / NOISE**2, np.float32), header).writeto(paths["weight"])
    ra, dec = wcs.all_pix2world(x, y, 0)
    stars = folder / "bright_stars.fits"
    Table({"ra": ra, "dec": dec, "mag": np.array(MAGS)}).write(stars)
    return paths, stars


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    folder = tmp_path_factory.mktemp("star_profile_field")
    return folder, *draw_field(folder)


@pytest.fixture(scope="module")
def measured_file(field):
    """shapepipe_star_profile run on the field: the JSON file and what the script printed."""
    from shapepipe_modules.tools.star_profile import main

    folder, paths, stars = field
    out = folder / "star_profile.json"
    assert main([str(folder), "--star-cat", str(stars), "-o", str(out)]) == 0
    return out


def test_fit_recovers_the_simulated_profile(measured_file):
    from shapepipe_modules.mask.measure_profile import read_profile_file

    document = json.loads(measured_file.read_text())
    values = read_profile_file(measured_file)
    errors = document["errors"]
    truth = true_options()
    assert document["n_stars"] == len(MAGS) and document["n_images"] == 1
    print()
    for key, true in truth.items():
        print(f"{key:30s} {values[key]:.5g} +- {errors[key]:.2g} (true {true:.5g})")
        if key == "STAR_PROFILE_PSF_BETA":  # given, not fitted
            assert values[key] == true
            continue
        # The noise sets the errors (a few per cent); the measurement must lie within 4 of them.
        assert 0 < errors[key] < 0.1 * true, key
        assert abs(values[key] - true) < 4.0 * errors[key], key
    # The stacked annuli follow the true profile (an independent computation: the simulator's
    # surface brightness, averaged over each annulus on a fine grid).
    from shapepipe_modules.simulate.render import star_surface_brightness

    annuli = document["annuli"]
    inner, outer = np.array(annuli["inner_arcsec"]), np.array(annuli["outer_arcsec"])
    light = np.array([np.nan if v is None else v for v in annuli["light_per_arcsec2_per_flux"]])
    error = np.array([np.nan if v is None else v for v in annuli["error"]])
    for k in np.flatnonzero(np.isfinite(light) & (inner > 1.0) & (outer < 20.0)):
        r = np.linspace(inner[k], outer[k], 400)
        theta = np.radians(45.0)  # off the spikes
        sb = star_surface_brightness(r * np.cos(theta), r * np.sin(theta), 1.0, FWHM, True,
                                     {"psf_beta": 3.5, "pixel_scale": 1.0})
        expected = np.sum(sb * r) / np.sum(r)  # area-weighted mean over the annulus
        assert abs(light[k] - expected) < 4.0 * error[k] + 0.03 * expected, (inner[k], light[k], expected)


def write_ccd(folder, zero_point=30.0):
    """A 700 x 500 CCD of pure noise 5 ADU with two bright stars in its catalogue."""
    shape = (700, 500)
    wcs = tan_wcs(shape, ra=35.0, dec=-5.0)
    header = wcs.to_header()
    header["PHOTZP"] = zero_point
    header["SATURATE"] = 50000.0
    paths = {"image": folder / "image-0000002-1.fits", "weight": folder / "weight-0000002-1.fits"}
    fits.PrimaryHDU(np.random.default_rng(2).normal(100.0, 5.0, shape).astype(np.float32), header).writeto(
        paths["image"])
    fits.PrimaryHDU(np.full(shape, 1.0 / 25.0, np.float32), header).writeto(paths["weight"])
    stars = folder / "stars.fits"
    ra, dec = wcs.all_pix2world([150.0, 380.0], [200.0, 520.0], 0)
    Table({"ra": ra, "dec": dec, "mag": [14.0, 16.5]}).write(stars)
    ra, dec = wcs.all_pix2world([5000.0], [10.0], 0)  # one deep-sky object, far off the CCD
    Table({"name": ["far"], "ra": ra, "dec": dec, "radius": [0.01]}).write(folder / "deep_sky.fits")
    return paths, stars


def make_job(folder, paths, **options):
    from shapepipe.job import Job
    from shapepipe_modules.mask.runner import OPTIONS

    values = {option.name: option.default for option in OPTIONS}
    values.update(USE_EXT_FLAG=False, STAR_MASK_SIZING="profile", BORDER_WIDTH=0,
                  DEEP_SKY_CAT_PATH=str(folder / "deep_sky.fits"),
                  **options)
    out = folder / "output"
    out.mkdir(exist_ok=True)
    return Job(module="mask", module_run="mask", number="-0000002-1", inputs=[paths["image"], paths["weight"]],
               output_dir=out, log_dir=folder, options=values, logger=logging.getLogger("test_profile"),
               run_dir=folder)


def run_flag(folder, paths, **options):
    from shapepipe_modules.mask.runner import mask

    out = folder / "output" / "pipeline_flag-0000002-1.fits"
    out.unlink(missing_ok=True)
    mask(make_job(folder, paths, **options))
    with fits.open(out) as hdus:
        return np.asarray(hdus[1].data if len(hdus) > 1 else hdus[0].data)


def write_document(path, options):
    path.write_text(json.dumps({"kind": "shapepipe star profile", "version": 1, "options": options}))


def test_masks_from_the_profile_file_match_masks_from_the_options(tmp_path):
    paths, stars = write_ccd(tmp_path)
    # A profile unlike the defaults: wider halo, brighter and longer spikes.
    options = {**true_options(), "STAR_PROFILE_HALO_FRACTION": 0.05, "STAR_PROFILE_HALO_FWHM": 9.0,
               "STAR_PROFILE_SPIKE_FRACTION": 0.008, "STAR_PROFILE_SPIKE_LENGTH": 14.0}
    profile_file = tmp_path / "star_profile.json"
    write_document(profile_file, options)
    from_file = run_flag(tmp_path, paths, STAR_CAT_PATH=str(stars), STAR_PROFILE_FILE=str(profile_file))
    from_options = run_flag(tmp_path, paths, STAR_CAT_PATH=str(stars), **options)
    defaults = run_flag(tmp_path, paths, STAR_CAT_PATH=str(stars))
    np.testing.assert_array_equal(from_file, from_options)
    # The file's values are used (not the defaults): its masks are larger.
    assert np.count_nonzero(from_file) > 1.3 * np.count_nonzero(defaults) > 0
    # The file also wins over explicit STAR_PROFILE_* options.
    overridden = run_flag(tmp_path, paths, STAR_CAT_PATH=str(stars), STAR_PROFILE_FILE=str(profile_file),
                          STAR_PROFILE_HALO_FWHM=3.0)
    np.testing.assert_array_equal(overridden, from_file)


def test_bad_profile_files_give_clear_errors(tmp_path):
    from shapepipe.errors import JobError
    from shapepipe_modules.mask.measure_profile import read_profile_file
    from shapepipe_modules.mask.runner import mask, validate

    good = true_options()
    cases = {
        "missing.json": None,
        "notjson.json": "{not json",
        "kind.json": json.dumps({"kind": "something else", "version": 1, "options": good}),
        "key.json": json.dumps({"kind": "shapepipe star profile", "version": 1,
                                "options": {k: v for k, v in good.items() if k != "STAR_PROFILE_HALO_BETA"}}),
        "beta.json": json.dumps({"kind": "shapepipe star profile", "version": 1,
                                 "options": {**good, "STAR_PROFILE_HALO_BETA": 0.8}}),
        "text.json": json.dumps({"kind": "shapepipe star profile", "version": 1,
                                 "options": {**good, "STAR_PROFILE_SPIKE_LENGTH": "long"}}),
    }
    expected = {"missing.json": "cannot read", "notjson.json": "not JSON", "kind.json": "key 'kind'",
                "key.json": "STAR_PROFILE_HALO_BETA is None", "beta.json": "STAR_PROFILE_HALO_BETA must exceed 1",
                "text.json": "STAR_PROFILE_SPIKE_LENGTH is 'long'"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ValueError, match=rf"star profile file .*{name}: .*{expected[name]}"):
            read_profile_file(path)
        problems = validate({"STAR_MASK_SIZING": "profile", "STAR_PROFILE_FILE": str(path)})
        assert any(p.startswith("STAR_PROFILE_FILE: ") and name in p and expected[name] in p for p in problems), \
            problems
    # Validation also refuses a file with template sizing, where it would be ignored.
    write_document(tmp_path / "good.json", good)
    problems = validate({"STAR_MASK_SIZING": "template", "STAR_PROFILE_FILE": str(tmp_path / "good.json")})
    assert "STAR_PROFILE_FILE is used only with STAR_MASK_SIZING = profile" in problems
    # A job whose file went bad after validation fails naming the section, the key and the file.
    paths, stars = write_ccd(tmp_path)
    with pytest.raises(JobError, match=r"\[MASK_RUNNER\] STAR_PROFILE_FILE: star profile file .*beta.json"):
        mask(make_job(tmp_path, paths, STAR_CAT_PATH=str(stars), STAR_PROFILE_FILE=str(tmp_path / "beta.json")))


def test_grouped_clipped_mean_matches_a_loop():
    from shapepipe_modules.mask.measure_profile import grouped_clipped_mean

    rng = np.random.default_rng(3)
    group = rng.integers(0, 5, 2000)
    values = rng.normal(group * 10.0, 1.0)
    values[:20] += 100.0  # outliers
    mean, error, count = grouped_clipped_mean(group, values, 6)
    for g in range(5):
        v = values[group == g]
        keep = np.ones(v.size, bool)
        for _ in range(3):
            median = np.median(v[keep])
            sigma = 1.4826 * np.median(np.abs(v[keep] - median))
            keep = np.abs(v - median) <= 3.0 * sigma
        assert mean[g] == pytest.approx(v[keep].mean(), rel=1e-12)
        assert count[g] == keep.sum()
        assert error[g] == pytest.approx(v[keep].std(ddof=1) / np.sqrt(keep.sum()), rel=1e-9)
    assert np.isnan(mean[5]) and count[5] == 0


def test_script_errors_name_the_file(tmp_path, capsys):
    from shapepipe_modules.tools.star_profile import main

    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(tmp_path / "image-0000003-0.fits")
    assert main([str(tmp_path), "--star-cat", str(tmp_path / "stars.fits"), "-o", str(tmp_path / "p.json")]) == 1
    assert "image-0000003-0.fits: no weight weight-0000003-0.fits" in capsys.readouterr().err
    fits.PrimaryHDU(np.ones((10, 10), np.float32)).writeto(tmp_path / "weight-0000003-0.fits")
    Table({"ra": [1.0], "dec": [1.0], "mag": [15.0]}).write(tmp_path / "stars.fits")
    assert main([str(tmp_path), "--star-cat", str(tmp_path / "stars.fits"), "-o", str(tmp_path / "p.json")]) == 1
    assert "image-0000003-0.fits: no numeric header keyword PHOTZP" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
