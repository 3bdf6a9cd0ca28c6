"""psfinterp: PSF stamps, shapes and the three modes against known Gaussian PSFs."""

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.header_store import write_header_store
from shapepipe_modules.io.ldac import read_ldac, write_ldac
from shapepipe_modules.io.psfex_file import write_psf
from shapepipe_modules.io.stamp_store import StampStore
from shapepipe_modules.psfinterp.interpolate import (FLAG_BAD_CHI2, FLAG_FEW_STARS, hsm_shapes, model_status,
                                                     psf_stamps, used_in_fit)
from shapepipe_modules.psfinterp.runner import OPTIONS, psfinterp, validate
from shapepipe_modules.psfinterp.synthetic import ccd_header, gaussian_model, star_catalogue, tile_catalogue

NUMBER = "-2113737-3"


def make_job(tmp_path, inputs, number=NUMBER, **options):
    values = {option.name: option.default for option in OPTIONS}
    values.update(options)
    output = Path(tempfile.mkdtemp(prefix="out", dir=tmp_path))
    return Job(module="psfinterp", module_run="psfinterp", number=number, inputs=[Path(p) for p in inputs],
               output_dir=output, log_dir=tmp_path, options=values, logger=logging.getLogger("test_psfinterp"),
               run_dir=tmp_path)


def test_model_status_thresholds_chi2_is_a_float():
    good = gaussian_model(2.0, accepted=30, chi2=1.2)
    assert model_status(good, 20, 1.5).usable
    # ShapePipe read CHI2_THRESH as an integer: 1.5 became 1 and rejected this model.
    assert not model_status(good, 20, 1.0).usable
    few = model_status(gaussian_model(2.0, accepted=12, chi2=1.7), 20, 1.5)
    assert few.flag == FLAG_FEW_STARS | FLAG_BAD_CHI2
    assert "12 accepted stars < STAR_THRESH 20" in few.reason and "CHI2_THRESH 1.5" in few.reason


@pytest.mark.parametrize("sampling", [0.5, 1.0, 1.25])
def test_stamps_honour_psf_samp_recentre_and_normalise(sampling):
    sigma, g1, g2 = 2.0, 0.05, -0.03
    model = gaussian_model(sigma, g1, g2, size=45, sampling=sampling)
    dx = np.array([0.0, 0.31, -0.45])
    dy = np.array([0.0, -0.22, 0.4])
    stamps = psf_stamps(model, [10.0, 500.0, 900.0], [20.0, 300.0, 3000.0], size=31, dx=dx, dy=dy)
    assert stamps.shape == (3, 31, 31)
    np.testing.assert_allclose(stamps.sum(axis=(1, 2)), 1.0, rtol=1e-12)
    # Centroid at (15 + dx, 15 + dy): the PSF is re-centred at the sub-pixel position (Lanczos-3,
    # PSFEx's interpolant, moves the centroid of a sigma = 2 px profile by up to 0.02 px).
    grid = np.arange(31)
    np.testing.assert_allclose((stamps.sum(axis=1) * grid).sum(axis=1), 15 + dx, atol=0.02)
    np.testing.assert_allclose((stamps.sum(axis=2) * grid).sum(axis=1), 15 + dy, atol=0.02)
    shapes = hsm_shapes(stamps)
    # The size is in image pixels whatever the grid step (ignoring PSF_SAMP would give sigma / sampling);
    # Lanczos-3 shifts change it by up to 0.5% on a coarse grid.
    np.testing.assert_allclose(shapes["sigma"], sigma, rtol=6e-3)
    np.testing.assert_allclose(shapes["e1"], g1, atol=1e-3)
    np.testing.assert_allclose(shapes["e2"], g2, atol=1e-3)
    assert not shapes["flag"].any()


def test_stamps_follow_position_dependence():
    model = gaussian_model(2.0, sigma_slope=0.4, nx=2048, ny=4096)
    stamps = psf_stamps(model, [1.0, 1024.5, 2048.0], [2048.5, 2048.5, 2048.5], size=31)
    sigma = hsm_shapes(stamps)["sigma"]
    assert sigma[0] < 1.9 and abs(sigma[1] - 2.0) < 1e-3 and sigma[2] > 2.15


def test_hsm_failure_is_flagged():
    shapes = hsm_shapes(np.zeros((2, 21, 21)))
    assert shapes["flag"].tolist() == [1, 1] and np.isnan(shapes["sigma"]).all()


def _write_model(path, **kwargs):
    write_psf(path, gaussian_model(**kwargs))
    return path


def test_classic_mode(tmp_path):
    rng = np.random.default_rng(4)
    header = ccd_header(0)
    psf = _write_model(tmp_path / f"star_selection{NUMBER}.psf", sigma=1.8, g1=-0.04, g2=0.02, size=41,
                       sampling=0.8, nx=256, ny=512)
    table = Table()
    table["NUMBER"] = np.arange(1, 31, dtype=np.int32)
    table["XWIN_IMAGE"] = rng.uniform(1, 256, 30)
    table["YWIN_IMAGE"] = rng.uniform(1, 512, 30)
    galcat = tmp_path / f"galaxy_selection{NUMBER}.fits"
    write_ldac(galcat, table, header)
    job = make_job(tmp_path, [psf, galcat], STAMP_SIZE=33)
    result = psfinterp(job)
    assert result == {"objects": 30, "psf_flag": 0}
    out, out_header = read_ldac(job.output_dir / f"galaxy_psf{NUMBER}.fits")
    assert out_header["PSF_FLAG"] == 0 and out_header["CRVAL1"] == header["CRVAL1"]
    assert out["VIGNET"].shape == (30, 33, 33)
    np.testing.assert_array_equal(out["NUMBER"], table["NUMBER"])
    np.testing.assert_allclose(out["SIGMA_PSF_HSM"], 1.8, rtol=6e-3)  # PSF_SAMP 0.8: Lanczos-3
    np.testing.assert_allclose(out["E1_PSF_HSM"], -0.04, atol=1e-3)
    np.testing.assert_allclose(out["E2_PSF_HSM"], 0.02, atol=1e-3)
    assert (out["FLAG_PSF_HSM"] == 0).all() and (out["PSF_FLAG"] == 0).all()


def test_classic_rejected_model_is_recorded(tmp_path):
    header = ccd_header(0)
    psf = _write_model(tmp_path / f"star_selection{NUMBER}.psf", sigma=1.8, accepted=8, chi2=3.5)
    table = Table({"NUMBER": np.arange(1, 6), "XWIN_IMAGE": np.full(5, 50.0), "YWIN_IMAGE": np.full(5, 60.0)})
    galcat = tmp_path / f"galaxy_selection{NUMBER}.fits"
    write_ldac(galcat, table, header)
    job = make_job(tmp_path, [psf, galcat], CHI2_THRESH=2.5)
    assert psfinterp(job)["psf_flag"] == FLAG_FEW_STARS | FLAG_BAD_CHI2
    out, out_header = read_ldac(job.output_dir / f"galaxy_psf{NUMBER}.fits")
    assert len(out) == 5 and (out["PSF_FLAG"] == 3).all() and (out["FLAG_PSF_HSM"] == 1).all()
    assert np.isnan(np.ma.filled(out["VIGNET"], np.nan)).all() and out_header["PSF_FLAG"] == 3


def test_missing_position_column_names_the_file(tmp_path):
    psf = _write_model(tmp_path / f"star_selection{NUMBER}.psf", sigma=1.8)
    galcat = tmp_path / f"galaxy_selection{NUMBER}.fits"
    write_ldac(galcat, Table({"NUMBER": [1], "X": [3.0]}), ccd_header(0))
    with pytest.raises(JobError, match=r"galaxy_selection-2113737-3.fits: column XWIN_IMAGE not found"):
        psfinterp(make_job(tmp_path, [psf, galcat]))
    with pytest.raises(JobError, match="takes 1-1 inputs"):
        psfinterp(make_job(tmp_path, [psf, galcat], MODE="MULTI-EPOCH"))


def test_validate_options():
    assert validate({"MODE": "MULTI-EPOCH", "POSITION_PARAMS": ["A"], "STAR_THRESH": 3, "STAMP_SIZE": 40}) == [
        "POSITION_PARAMS: expected two column names, got 1",
        "STAMP_SIZE must be odd (or 0 for the model's size)",
        "ME_DOT_PSF_DIR is required with MODE = MULTI-EPOCH",
        "ME_LOG_WCS is required with MODE = MULTI-EPOCH",
    ]
    assert validate({"MODE": "CLASSIC", "POSITION_PARAMS": [], "STAR_THRESH": 3, "STAMP_SIZE": 0}) == []


def test_used_in_fit_matches_by_position():
    fit = Table({"X_IMAGE": [10.0, 20.0, 30.0], "Y_IMAGE": [5.0, 6.0, 7.0], "FLAGS_PSF": [0, 1, 0]})
    got = used_in_fit(np.array([30.0, 20.0, 10.0, 11.0]), np.array([7.0, 6.0, 5.0, 5.0]), fit)
    assert got.tolist() == [1, 0, 1, 0]


def test_validation_mode(tmp_path):
    rng = np.random.default_rng(11)
    header = ccd_header(1)
    sigma, g1, g2 = 2.2, 0.04, -0.025
    psf = _write_model(tmp_path / f"star_split_ratio_80{NUMBER}.psf", sigma=sigma, g1=g1, g2=g2, size=41,
                       nx=256, ny=512)
    stars = star_catalogue(tmp_path / f"star_split_ratio_20{NUMBER}.fits", header, sigma, g1, g2, rng, n_stars=30)
    # The fit used (and accepted) stars 0-9 and rejected star 10; the others were reserved.
    fit = Table({"SOURCE_NUMBER": np.arange(1, 12), "X_IMAGE": np.asarray(stars["XWIN_IMAGE"][:11]),
                 "Y_IMAGE": np.asarray(stars["YWIN_IMAGE"][:11]), "FLAGS_PSF": np.r_[np.zeros(10), 1]})
    psfex_cat = tmp_path / f"psfex_cat{NUMBER}.cat"
    write_ldac(psfex_cat, fit, header)
    job = make_job(tmp_path, [psf, tmp_path / f"star_split_ratio_20{NUMBER}.fits", psfex_cat], MODE="VALIDATION")
    assert psfinterp(job)["objects"] == 30
    out, _ = read_ldac(job.output_dir / f"validation_psf{NUMBER}.fits")
    for name in ("E1_PSF_HSM", "E2_PSF_HSM", "SIGMA_PSF_HSM", "FLAG_PSF_HSM", "E1_STAR_HSM", "E2_STAR_HSM",
                 "SIGMA_STAR_HSM", "FLAG_STAR_HSM", "NUMBER", "X", "Y", "RA", "DEC", "MAG", "SNR", "ACCEPTED",
                 "PSF_FLAG"):
        assert name in out.colnames, name
    assert out["ACCEPTED"].tolist() == [1] * 10 + [0] * 20
    np.testing.assert_allclose(out["RA"], stars["XWIN_WORLD"])
    np.testing.assert_allclose(out["X"], stars["XWIN_IMAGE"])
    # The model at each star: the truth, whatever the sub-pixel position.
    np.testing.assert_allclose(out["SIGMA_PSF_HSM"], sigma, rtol=3e-3)
    np.testing.assert_allclose(out["E1_PSF_HSM"], g1, atol=1.5e-3)
    # Stars: the truth within their noise (S/N ~ 2000); residuals centred on zero.
    assert (out["FLAG_STAR_HSM"] == 0).all()
    np.testing.assert_allclose(out["SIGMA_STAR_HSM"], sigma, rtol=0.01)
    np.testing.assert_allclose(out["E1_STAR_HSM"], g1, atol=0.01)
    np.testing.assert_allclose(out["E2_STAR_HSM"], g2, atol=0.01)
    assert abs(np.mean(out["E1_STAR_HSM"] - out["E1_PSF_HSM"])) < 2e-3
    assert abs(np.mean(out["SIGMA_STAR_HSM"] / out["SIGMA_PSF_HSM"] - 1)) < 2e-3


def _me_setup(tmp_path, n_objects=60, rng=None):
    """Two exposures of 4 CCDs; PSF sigma encodes (exposure, CCD); one model rejected, one missing."""
    from astropy.wcs import WCS

    rng = rng or np.random.default_rng(5)
    exposures = ["2113737", "2113738"]
    centres = {"2113737": (150.0, 2.0), "2113738": (150.002, 2.001)}
    headers = {e: [ccd_header(c, centres[e]) for c in range(4)] for e in exposures}
    write_header_store(tmp_path / "log_exp_headers.sqlite", headers)
    psf_dir = tmp_path / "psf"
    psf_dir.mkdir()
    truth = {}
    for k, exposure in enumerate(exposures):
        for ccd in range(4):
            if (exposure, ccd) == ("2113738", 3):
                continue  # no model file
            sigma = 1.5 + 0.1 * ccd + 0.05 * k
            accepted = 5 if (exposure, ccd) == ("2113737", 2) else 50
            write_psf(psf_dir / f"star_split_ratio_80-{exposure}-{ccd}.psf",
                      gaussian_model(sigma, 0.01 * ccd, -0.01 * k, size=33, accepted=accepted, nx=256, ny=512))
            truth[(exposure, ccd)] = sigma
    # Objects on exposure 1's CCDs at known pixels; each lands somewhere (or nowhere) on exposure 2.
    ccd1 = rng.integers(0, 4, n_objects)
    x = rng.uniform(5, 250, n_objects)
    y = rng.uniform(5, 505, n_objects)
    ra = np.empty(n_objects)
    dec = np.empty(n_objects)
    for ccd in range(4):
        sel = ccd1 == ccd
        ra[sel], dec[sel] = WCS(headers["2113737"][ccd]).all_pix2world(x[sel], y[sel], 1)
    ccd2 = np.full(n_objects, -1)
    for ccd in range(4):
        px, py = WCS(headers["2113738"][ccd]).all_world2pix(ra, dec, 1)
        ccd2[(px >= 0.5) & (px <= 256.5) & (py >= 0.5) & (py <= 512.5)] = ccd
    ccd2[:3] = -1
    ccd1[:2] = -1  # objects 1 and 2 are on no exposure; object 3 only on exposure 1
    ccd1[2] = 2  # ... on the rejected CCD
    tile = tmp_path / "sexcat-244-252.fits"
    tile_catalogue(tile, ra, dec, [("2113737", ccd1), ("2113738", ccd2)])
    return tile, psf_dir, truth, headers, (ra, dec, ccd1, ccd2)


def test_multi_epoch_mode(tmp_path):
    from astropy.wcs import WCS

    tile, psf_dir, truth, headers, (ra, dec, ccd1, ccd2) = _me_setup(tmp_path)
    job = make_job(tmp_path, [tile], number="-244-252", MODE="MULTI-EPOCH", ME_DOT_PSF_DIR=str(psf_dir),
                   ME_LOG_WCS=str(tmp_path / "log_exp_headers.sqlite"), STAR_THRESH=20, CHI2_THRESH=2.0)
    result = psfinterp(job)
    n_usable = sum(((ccd1 >= 0) & (ccd1 != 2)).tolist()) + sum(((ccd2 >= 0) & (ccd2 != 3)).tolist())
    assert result["object_epochs"] == n_usable and result["objects"] == len(ra)
    status = Table.read(job.output_dir / "psf_ccd_status-244-252.fits", hdu="PSF_CCD_STATUS")
    flags = {(str(r["EXPOSURE"]), int(r["CCD"])): int(r["PSF_FLAG"]) for r in status}
    assert flags[("2113737", 2)] == FLAG_FEW_STARS
    if ("2113738", 3) in flags:
        assert flags[("2113738", 3)] == 4
    with StampStore(job.output_dir / "galaxy_psf-244-252.sqlite") as store:
        assert len(store) == len(ra)
        for index in range(len(ra)):
            record = store.get(index + 1)
            expected = {}
            for exposure, ccds in (("2113737", ccd1), ("2113738", ccd2)):
                ccd = int(ccds[index])
                if ccd >= 0 and (exposure, ccd) in truth and (exposure, ccd) != ("2113737", 2):
                    expected[f"{exposure}-{ccd}"] = truth[(exposure, ccd)]
            assert set(record) == set(expected), index
            for key, sigma in expected.items():
                epoch = record[key]
                assert epoch["VIGNET"].shape == (33, 33) and epoch["VIGNET"].dtype == np.float32
                assert abs(epoch["VIGNET"].sum() - 1) < 1e-5
                assert abs(epoch["SIGMA_PSF_HSM"] - sigma) < 5e-3 and epoch["FLAG_PSF_HSM"] == 0
                exposure, ccd = key.split("-")
                px, py = WCS(headers[exposure][int(ccd)]).all_world2pix(ra[index], dec[index], 1)
                assert abs(epoch["X"] - px) < 1e-6 and abs(epoch["Y"] - py) < 1e-6
        # Objects without PSF are recorded, with why.
        assert store.get(1).reason == "not on any exposure"
        assert "2113737-2" in store.get(3).reason and "STAR_THRESH 20" in store.get(3).reason


def test_multi_epoch_needs_epoch_hdus(tmp_path):
    tile = tmp_path / "sexcat-244-252.fits"
    write_ldac(tile, Table({"NUMBER": [1], "XWIN_WORLD": [1.0], "YWIN_WORLD": [2.0]}), fits.Header())
    write_header_store(tmp_path / "h.sqlite", {"1": [ccd_header(0)]})
    job = make_job(tmp_path, [tile], number="-244-252", MODE="MULTI-EPOCH", ME_DOT_PSF_DIR=str(tmp_path),
                   ME_LOG_WCS=str(tmp_path / "h.sqlite"))
    with pytest.raises(JobError, match="sexcat-244-252.fits: no EPOCH_i HDU"):
        psfinterp(job)


@pytest.mark.parametrize("size", [None, 21, 61])
def test_unshifted_stamps_equal_model_evaluation(size):
    """Stamps centred on their central pixel with PSF_SAMP = 1 skip the resampling: the same
    stamps as the model's Lanczos evaluation (cropped or zero-padded)."""
    model = gaussian_model(2.0, 0.04, -0.02, size=45, sigma_slope=0.3, nx=2048, ny=4096)
    x, y = np.array([1.0, 700.3, 2048.0]), np.array([5.0, 2000.7, 4000.0])
    fast = psf_stamps(model, x, y, size)
    reference = model.evaluate(x, y, size=size)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)
    # Any sub-pixel centre goes through the evaluation.
    np.testing.assert_array_equal(psf_stamps(model, x, y, size, dx=0.25), model.evaluate(x, y, size, (0.25, 0.0)))


def test_shapes_match_galsim_hsm():
    """The compiled adaptive moments reproduce galsim.hsm on model stamps and noisy stars."""
    rng = np.random.default_rng(2)
    model = gaussian_model(1.9, 0.05, -0.04, size=41, sigma_slope=0.3, nx=2048, ny=4096)
    stamps = psf_stamps(model, rng.uniform(1, 2048, 40), rng.uniform(1, 4096, 40), dx=rng.uniform(-0.5, 0.5, 40))
    noisy = stamps + rng.normal(0, 2e-4, stamps.shape)
    bad = np.zeros(stamps.shape, bool)
    bad[::3, 5, 3:9] = True
    for images, options, mask in ((stamps, {"warm_start": True}, None), (noisy, {}, bad)):
        ours = hsm_shapes(images, mask, **options)
        reference = hsm_shapes(images, mask, engine="galsim")
        assert not ours["flag"].any() and not reference["flag"].any()
        for name in ("e1", "e2", "sigma"):
            np.testing.assert_allclose(ours[name], reference[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("centre", [False, True])
def test_multi_epoch_stamps_from_model_read_back_identical(tmp_path, centre):
    """ME_STAMPS_FROM_MODEL: the store keeps one model per CCD and its readers get the stamps psfinterp
    stores otherwise, bit for bit (get, get_many, items), at a fraction of the size."""
    from shapepipe_modules.io.psfex_file import PSFModel

    tile, psf_dir, truth, headers, _ = _me_setup(tmp_path, n_objects=120)
    # Degree-2 models with arbitrary components, so that the stamps vary with the position.
    rng = np.random.default_rng(8)
    for path in psf_dir.glob("*.psf"):
        base = gaussian_model(1.6, size=33, nx=256, ny=512)
        basis = np.concatenate([base.basis, 0.01 * rng.normal(size=(5, 33, 33)) * base.basis.max()])
        write_psf(path, PSFModel(basis=basis, degree=2, zero=base.zero, scale=base.scale, loaded=50,
                                 accepted=50, chi2=1.0, fwhm=base.fwhm))
    common = dict(number="-244-252", MODE="MULTI-EPOCH", ME_DOT_PSF_DIR=str(psf_dir), STAR_THRESH=20,
                  ME_LOG_WCS=str(tmp_path / "log_exp_headers.sqlite"), CHI2_THRESH=2.0, CENTRE_ON_OBJECT=centre)
    stored, drawn = make_job(tmp_path, [tile], **common), make_job(tmp_path, [tile], ME_STAMPS_FROM_MODEL=True,
                                                                     **common)
    assert psfinterp(stored) == psfinterp(drawn)
    name = "galaxy_psf-244-252.sqlite"
    # 7 models of 6 components against about 200 stamps: the saving grows with the objects per CCD.
    assert (drawn.output_dir / name).stat().st_size < (stored.output_dir / name).stat().st_size / 2
    with StampStore(stored.output_dir / name) as a, StampStore(drawn.output_dir / name) as b:
        ids = a.object_ids()
        assert np.array_equal(ids, b.object_ids())
        many = b.get_many(ids[::-1])
        items = dict(b.items())
        n_epochs = 0
        for object_id in ids.tolist():
            expected = a.get(object_id)
            for record in (b.get(object_id), many[object_id], items[object_id]):
                assert record.reason == expected.reason and set(record) == set(expected)
                for key, epoch in expected.items():
                    assert record[key].meta == epoch.meta
                    assert record[key]["VIGNET"].dtype == np.float32
                    np.testing.assert_array_equal(record[key]["VIGNET"], epoch["VIGNET"])
            n_epochs += len(expected)
            assert all(not epoch.arrays for epoch in b.get(object_id, arrays=False).values())
        assert n_epochs > 100
