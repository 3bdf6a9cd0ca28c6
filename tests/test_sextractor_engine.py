"""The sextractor module with the sep engine, against the simulation truth."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.background_residual import read_stats
from shapepipe_modules.sextractor.runner import OPTIONS, sextractor
from test_sextractor_sim import NOISE_SIGMA, PIXEL_SCALE, make_ccd, write_ccd

NUMBER = "-0000000-0"


def make_job(tmp_path, inputs, name="out", **overrides):
    options = {o.name: o.default for o in OPTIONS}
    options.update(overrides)
    output = tmp_path / name
    output.mkdir()
    return Job(module="sextractor", module_run="sextractor", number=NUMBER, inputs=list(inputs),
               output_dir=output, log_dir=tmp_path, options=options,
               logger=logging.getLogger("test_sextractor"), run_dir=tmp_path)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ccd")
    ccd = make_ccd(np.random.default_rng(11), nx=640, ny=640, n_stars=70, n_galaxies=120)
    # A flagged box with valid weights, so IMAFLAGS_ISO can be checked.
    ccd["flag"][100:300, 400:600] |= 2
    return ccd, write_ccd(ccd, directory)


@pytest.fixture(scope="module")
def sep_run(simulated, tmp_path_factory):
    ccd, paths = simulated
    tmp_path = tmp_path_factory.mktemp("run")
    job = make_job(tmp_path, paths, CHECKIMAGE=["BACKGROUND", "SEGMENTATION", "BACKGROUND_RMS"],
                   ZP_FROM_HEADER=True, ZP_KEY="PHOTZP", BKG_RESIDUAL_PLOT=True)
    summary = sextractor(job)
    table, header = read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")
    return ccd, job, summary, table, header


def _match(table, truth, radius=1.0):
    distance, index = cKDTree(np.c_[table["X_IMAGE"], table["Y_IMAGE"]]).query(np.c_[truth["x"], truth["y"]])
    return distance < radius, index


def test_outputs_and_summary(sep_run):
    ccd, job, summary, table, header = sep_run
    names = sorted(p.name for p in job.output_dir.iterdir())
    assert names == sorted([f"sexcat{NUMBER}.fits", f"background{NUMBER}.fits", f"segmentation{NUMBER}.fits",
                            f"background_rms{NUMBER}.fits", f"bkg_resid{NUMBER}.txt", f"bkg_resid{NUMBER}.png"])
    assert summary["n_objects"] == len(table)
    assert header["NAXIS1"] == 640 and header["SEXGAIN"] == 1.6 and header["SEXMGZPT"] == 30.0
    assert abs(header["SEXBKDEV"] / NOISE_SIGMA - 1) < 0.05
    segmentation = fits.getdata(job.output_dir / f"segmentation{NUMBER}.fits")
    assert segmentation.max() == len(table)
    background = fits.getdata(job.output_dir / f"background{NUMBER}.fits")
    assert abs(np.median(background) - ccd["header"]["BKGLEVEL"]) < 1.0


def test_background_residual_diagnostic(sep_run):
    _, job, summary, _, _ = sep_run
    stats = read_stats(job.output_dir / f"bkg_resid{NUMBER}.txt")
    assert stats["mean"] == summary["bkg_resid_mean"]
    # Pure Gaussian noise of sigma 20 ADU once sources are masked.
    assert abs(stats["mean"]) < 1.0
    assert abs(stats["sigma"] / NOISE_SIGMA - 1) < 0.05
    assert stats["n_pixels"] > 0.5 * 640 * 640
    assert (job.output_dir / f"bkg_resid{NUMBER}.png").read_bytes()[:4] == b"\x89PNG"


def test_positions_fluxes_and_sizes_against_truth(sep_run):
    ccd, _, _, table, _ = sep_run
    truth = ccd["truth"]
    found, index = _match(table, truth)
    bright = truth["mag"] < 22.5
    assert found[bright & truth["is_star"]].mean() > 0.95
    # Extended galaxies: barycentres of noisy isophotes scatter more.
    found_galaxy, _ = _match(table, truth, radius=2.5)
    assert found_galaxy[(truth["mag"] < 21.5) & ~truth["is_star"]].mean() > 0.8
    rows = table[index[found & bright & truth["is_star"]]]
    clean = rows["FLAGS"] == 0
    true_x = truth["x"][found & bright & truth["is_star"]][clean]
    true_y = truth["y"][found & bright & truth["is_star"]][clean]
    assert np.median(np.hypot(rows["XWIN_IMAGE"][clean] - true_x, rows["YWIN_IMAGE"][clean] - true_y)) < 0.05
    true_mag = truth["mag"][found & bright & truth["is_star"]][clean]
    # Kron apertures miss a few per cent of a Moffat(beta=3) profile.
    offset = np.median(rows["MAG_AUTO"][clean] - true_mag)
    assert 0.0 < offset < 0.1
    # FWHM_IMAGE: Gaussian-core estimate of a 3.74-pixel Moffat FWHM.
    fwhm = np.median(rows["FWHM_IMAGE"][clean])
    assert abs(fwhm / (0.7 / PIXEL_SCALE) - 1) < 0.15
    assert abs(np.median(rows["FWHM_WORLD"][clean]) * 3600 / fwhm - PIXEL_SCALE) < 1e-4
    assert np.all(rows["SNR_WIN"] > 10) and np.median(rows["ELONGATION"][clean]) < 1.1
    np.testing.assert_allclose(rows["ELLIPTICITY"], 1 - 1 / rows["ELONGATION"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows["MAG_WIN"], -2.5 * np.log10(rows["FLUX_WIN"]) + 30.0, atol=1e-4)


def test_flags_from_flag_image_and_vignets(sep_run):
    ccd, _, _, table, _ = sep_run
    x, y = table["X_IMAGE"], table["Y_IMAGE"]
    inside = (x > 410) & (x < 590) & (y > 110) & (y < 290)
    outside = (x < 390) | (y > 310)
    assert inside.sum() > 3
    assert np.all(table["IMAFLAGS_ISO"][inside] & 2)
    assert not np.any(table["IMAFLAGS_ISO"][outside] & 2)
    # The dead column (weight 0) shows as -1e30 in the stamps that cross it.
    dead = 640 // 3 + 1  # 1-based column
    crossing = np.abs(np.floor(x + 0.5) - dead) <= 20
    assert crossing.sum() > 0
    for row in table[crossing]:
        column = int(dead - np.floor(row["X_IMAGE"] + 0.5)) + 25
        assert np.all(row["VIGNET"][:, column] == np.float32(-1e30))
    assert table["VIGNET"].shape[1:] == (51, 51)


def test_bad_inputs_are_job_errors_naming_the_file(simulated, tmp_path):
    _, paths = simulated
    with pytest.raises(JobError, match="2 input files"):
        sextractor(make_job(tmp_path, paths[:2], name="a"))
    with pytest.raises(JobError, match="NOPE"):
        sextractor(make_job(tmp_path, paths, name="b", ZP_FROM_HEADER=True, ZP_KEY="NOPE"))
    broken = tmp_path / "broken.fits"
    broken.write_text("not a fits file")
    with pytest.raises(JobError, match="broken.fits"):
        sextractor(make_job(tmp_path, [broken, *paths[1:]], name="c"))


def test_file_backed_background_of_large_images_gives_the_same_outputs(sep_run, simulated, tmp_path, monkeypatch):
    """A full tile keeps its background map in a memory-mapped temporary file: same catalogue and check images."""
    from shapepipe_modules.io.images import image_hdu
    from shapepipe_modules.sextractor import sep_engine

    _, reference_job, _, reference, _ = sep_run
    _, paths = simulated
    monkeypatch.setattr(sep_engine, "FILE_BACKED_PIXELS", 1)
    job = make_job(tmp_path, paths, CHECKIMAGE=["BACKGROUND", "SEGMENTATION", "BACKGROUND_RMS"],
                   ZP_FROM_HEADER=True, ZP_KEY="PHOTZP")
    sextractor(job)
    table, _ = read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")
    assert table.colnames == reference.colnames and len(table) == len(reference)
    for name in table.colnames:
        np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(reference[name]), err_msg=name)
    for kind in ("background", "segmentation"):
        with fits.open(job.output_dir / f"{kind}{NUMBER}.fits") as ours, \
                fits.open(reference_job.output_dir / f"{kind}{NUMBER}.fits") as theirs:
            np.testing.assert_array_equal(image_hdu(ours).data, image_hdu(theirs).data)


@pytest.mark.parametrize("max_pixels", [10**9, 1000, 997])
def test_sky_sample_equals_the_strided_full_selection(max_pixels):
    from shapepipe_modules.sextractor.sep_engine import sky_sample

    rng = np.random.default_rng(8)
    sub = rng.normal(size=(700, 300)).astype(np.float32)
    seg = (rng.random((700, 300)) < 0.3) * rng.integers(1, 50, (700, 300))
    bad = rng.random((700, 300)) < 0.05
    full = sub[(seg == 0) & ~bad]
    step = max(1, -(-full.size // max_pixels))
    np.testing.assert_array_equal(sky_sample(sub, seg, bad, max_pixels, block_rows=64), full[::step])


def test_vignet_rows_keeps_stamps_of_selected_rows_only(simulated, sep_run, tmp_path):
    from shapepipe_modules.io.ldac import VIGNET_FILL, missing_vignets
    from shapepipe_modules.sextractor.runner import validate

    _, paths = simulated
    _, dense_job, _, dense, _ = sep_run
    conditions = ["FLAGS == 0", "IMAFLAGS_ISO == 0", "MAG_AUTO < 24.5"]
    job = make_job(tmp_path, paths, CHECKIMAGE=["BACKGROUND", "SEGMENTATION", "BACKGROUND_RMS"],
                   ZP_FROM_HEADER=True, ZP_KEY="PHOTZP", VIGNET_ROWS=conditions)
    summary = sextractor(job)
    table, _ = read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")
    rows = (dense["FLAGS"] == 0) & (dense["IMAFLAGS_ISO"] == 0) & (dense["MAG_AUTO"] < 24.5)
    assert 0 < rows.sum() < len(dense)
    assert summary["n_vignets_stored"] == rows.sum()
    assert table.colnames == dense.colnames
    for name in dense.colnames:
        if name != "VIGNET":
            np.testing.assert_array_equal(table[name], dense[name], err_msg=name)
    np.testing.assert_array_equal(table["VIGNET"][rows], dense["VIGNET"][rows])
    assert np.all(table["VIGNET"][~rows] == VIGNET_FILL)
    assert missing_vignets(table)[0] == (~rows).sum()
    dense_size = (dense_job.output_dir / f"sexcat{NUMBER}.fits").stat().st_size
    size = (job.output_dir / f"sexcat{NUMBER}.fits").stat().st_size
    # Less the LDAC_VIGNET header, its ROW column and FITS block padding.
    assert dense_size - size >= (~rows).sum() * 51 * 51 * 4 - 2 * 2880 - 4 * rows.sum()
    # Selected as the catalogue is written: the file the rewrite of the full catalogue gives, byte for byte.
    import functools
    import shutil

    from shapepipe_modules.io.ldac import store_vignets_for
    from shapepipe_modules.sextractor.columns import rows_meeting

    rewritten = tmp_path / "rewritten.fits"
    shutil.copy(dense_job.output_dir / f"sexcat{NUMBER}.fits", rewritten)
    assert store_vignets_for(rewritten, functools.partial(rows_meeting, conditions=conditions),
                             ", ".join(conditions)) == (rows.sum(), len(rows))
    assert rewritten.read_bytes() == (job.output_dir / f"sexcat{NUMBER}.fits").read_bytes()

    options = {o.name: o.default for o in OPTIONS}
    assert validate({**options, "VIGNET_ROWS": conditions}) == []
    problems = validate({**options, "VIGNET_ROWS": ["MAG_AUTO << 3"]})
    assert any("VIGNET_ROWS" in p and "MAG_AUTO << 3" in p for p in problems)
    problems = validate({**options, "VIGNET_ROWS": ["NOPE > 3"]})
    assert any("VIGNET_ROWS" in p and "NOPE" in p for p in problems)
