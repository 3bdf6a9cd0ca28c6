"""MCCD chain (mccd_preprocessing, mccd_fit_val, mccd_val, mccd_interp) against truth and psfinterp."""

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.ldac import read_ldac, write_ldac
from shapepipe_modules.io.psfex_file import read_psf
from shapepipe_modules.mccd import runner
from shapepipe_modules.mccd.steps import CHI2_THRESH
from shapepipe_modules.mccd.synthetic import Mosaic
from shapepipe_modules.psfinterp.interpolate import hsm_shapes, psf_stamps
from shapepipe_modules.psfinterp.runner import OPTIONS as PSFINTERP_OPTIONS
from shapepipe_modules.psfinterp.runner import psfinterp
from shapepipe_modules.psfex.runner import DATA_DIR
from test_focal_plane_psf import _ldac_selections
from test_psfinterp import _me_setup

EXPOSURE = "2113737"


def _job(tmp_path, module, declared, number="", inputs=(), input_table=None, **options):
    values = {o.name: o.default for o in declared}
    values.update(options)
    output = Path(tempfile.mkdtemp(prefix="out", dir=tmp_path))
    return Job(module=module, module_run=module, number=number, inputs=[Path(p) for p in inputs],
               input_table=input_table or {}, output_dir=output, log_dir=tmp_path, options=values,
               logger=logging.getLogger(f"test_{module}"), run_dir=tmp_path)


def _add_sextractor_columns(path, new_path):
    """The columns setools' selections carry beyond the fit's: world positions, magnitude, SNR."""
    from astropy.wcs import WCS

    table, header = read_ldac(path)
    ra, dec = WCS(header).all_pix2world(np.asarray(table["XWIN_IMAGE"]), np.asarray(table["YWIN_IMAGE"]), 1)
    table["XWIN_WORLD"], table["YWIN_WORLD"] = ra, dec
    table["MAG_AUTO"] = 30.0 - 2.5 * np.log10(np.asarray(table["FLUX_AUTO"]))
    table["SNR_WIN"] = np.asarray(table["FLUX_AUTO"]) / (5.0 * 31)
    write_ldac(new_path, table, header)
    path.unlink()
    return new_path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """setools-like 80/20 splits of 8 CCDs, preprocessed, then mccd_fit_val."""
    tmp_path = tmp_path_factory.mktemp("mccd")
    rng = np.random.default_rng(11)
    mosaic = Mosaic()
    field = mosaic.field(rng)
    splits = {}
    for name, stars in (("star_split_ratio_80", 15), ("star_split_ratio_20", 6)):
        folder = tmp_path / name
        folder.mkdir()
        for number, path in _ldac_selections(folder, mosaic, field, rng, stars=stars).items():
            splits.setdefault(number, []).append(_add_sextractor_columns(path, folder / f"{name}{number}.fits"))
    prepared = {}
    for number, inputs in splits.items():
        job = _job(tmp_path, "mccd_preprocessing", runner.MCCD_OPTIONS, number=number, inputs=inputs)
        assert runner.mccd_preprocessing(job) == {"train_stars": 15, "test_stars": 6}
        prepared[number] = [job.output_dir / f"{k}_star_selection{number}.fits" for k in ("train", "test")]
    dot_psfex = tmp_path / "small.psfex"
    dot_psfex.write_text((DATA_DIR / "default.psfex").read_text().replace("PSF_SIZE        51,51", "PSF_SIZE 25,25"))
    fit_val = _job(tmp_path, "mccd_fit_val", runner.FIT_VAL_OPTIONS, inputs=[p for v in prepared.values() for p in v],
                   input_table=prepared, DOT_PSFEX_FILE=str(dot_psfex))
    summary = runner.mccd_fit_val(fit_val)
    return mosaic, field, prepared, fit_val, summary, splits


def test_preprocessing_adds_the_focal_plane_identity(chain):
    _, _, prepared, _, _, splits = chain
    number = f"-{EXPOSURE}-3"
    table, header = read_ldac(prepared[number][1])
    original, original_header = read_ldac(splits[number][1])
    np.testing.assert_array_equal(table["VIGNET"], original["VIGNET"])
    assert (table["CCD_NB"] == 3).all() and (table["EXP_NAME"] == EXPOSURE).all()
    assert header["CRPIX1"] == original_header["CRPIX1"]


def test_fit_val_validates_the_model_on_test_stars_against_truth(chain):
    mosaic, field, prepared, job, summary, _ = chain
    assert summary["ccd_models"] == 8 and summary["stars"] == 120 and summary["test_stars"] == 48
    # The model's shapes at the test stars agree with the truth's there (HSM of noise-free true stamps).
    for number, (_, test) in prepared.items():
        ccd = int(number.split("-")[-1])
        out, _ = read_ldac(job.output_dir / f"validation_psf{number}.fits")
        stars, _ = read_ldac(test)
        fx, fy = mosaic.to_focal(ccd)(np.asarray(stars["XWIN_IMAGE"]), np.asarray(stars["YWIN_IMAGE"]))
        truth = hsm_shapes(np.stack([field.image(X, Y, size=31) for X, Y in zip(fx, fy)]))
        np.testing.assert_allclose(out["E1_PSF_HSM"], truth["e1"], atol=0.002)
        np.testing.assert_allclose(out["E2_PSF_HSM"], truth["e2"], atol=0.002)
        np.testing.assert_allclose(out["SIGMA_PSF_HSM"], truth["sigma"], rtol=0.003)
    # The residual statistics are the rms of the star - model differences (noisy stars: ~0.003 here).
    tables = [read_ldac(job.output_dir / f"validation_psf{n}.fits")[0] for n in prepared]
    de1 = np.concatenate([t["E1_STAR_HSM"] - t["E1_PSF_HSM"] for t in tables])
    assert summary["e1_residual_rms"] == pytest.approx(float(np.sqrt(np.mean(de1 ** 2))), rel=1e-9)
    assert 0.0 < summary["e1_residual_rms"] < 0.01 and 0.0 < summary["size_relative_residual_rms"] < 0.01


def test_mccd_val_matches_psfinterp_validation(chain, tmp_path):
    _, _, prepared, fit_val, _, _ = chain
    number = f"-{EXPOSURE}-6"
    model = fit_val.output_dir / f"fitted_model{number}.psf"
    job = _job(tmp_path, "mccd_val", runner.MCCD_OPTIONS, number=number, inputs=[model, prepared[number][1]])
    result = runner.mccd_val(job)
    ours, _ = read_ldac(job.output_dir / f"validation_psf{number}.fits")
    reference = _job(tmp_path, "psfinterp", PSFINTERP_OPTIONS, number=number, inputs=[model, prepared[number][1]],
                     MODE="VALIDATION", STAR_THRESH=0, CHI2_THRESH=CHI2_THRESH)
    psfinterp(reference)
    theirs, _ = read_ldac(reference.output_dir / f"validation_psf{number}.fits")
    for column in ("E1_PSF_HSM", "E2_PSF_HSM", "SIGMA_PSF_HSM", "E1_STAR_HSM", "X", "Y"):
        np.testing.assert_array_equal(ours[column], theirs[column])
    ds = (2 * theirs["SIGMA_STAR_HSM"] ** 2 - 2 * theirs["SIGMA_PSF_HSM"] ** 2) / (2 * theirs["SIGMA_STAR_HSM"] ** 2)
    assert result["test_stars"] == 6
    assert result["size_relative_residual_rms"] == pytest.approx(float(np.sqrt(np.mean(ds ** 2))), rel=1e-6)


def test_mccd_interp_classic_equals_psfinterp_and_the_model(chain, tmp_path):
    _, _, prepared, fit_val, _, _ = chain
    number = f"-{EXPOSURE}-2"
    catalogue = prepared[number][1]  # any catalogue with positions
    job = _job(tmp_path, "mccd_interp", runner.INTERP_OPTIONS, number=number, inputs=[catalogue],
               PSF_MODEL_DIR=str(fit_val.output_dir))
    assert runner.mccd_interp(job) == {"objects": 6, "psf_flag": 0}
    ours, _ = read_ldac(job.output_dir / f"galaxy_psf{number}.fits")
    model = fit_val.output_dir / f"fitted_model{number}.psf"
    reference = _job(tmp_path, "psfinterp", PSFINTERP_OPTIONS, number=number, inputs=[model, catalogue],
                     STAR_THRESH=0, CHI2_THRESH=CHI2_THRESH)
    psfinterp(reference)
    theirs, _ = read_ldac(reference.output_dir / f"galaxy_psf{number}.fits")
    np.testing.assert_array_equal(ours["VIGNET"], theirs["VIGNET"])
    np.testing.assert_array_equal(ours["E1_PSF_HSM"], theirs["E1_PSF_HSM"])
    stars, _ = read_ldac(catalogue)
    direct = psf_stamps(read_psf(model), np.asarray(stars["XWIN_IMAGE"]), np.asarray(stars["YWIN_IMAGE"]))
    np.testing.assert_allclose(ours["VIGNET"], direct, atol=1e-6)


def test_mccd_interp_names_the_missing_model(chain, tmp_path):
    _, _, prepared, fit_val, _, _ = chain
    number = f"-{EXPOSURE}-2"
    job = _job(tmp_path, "mccd_interp", runner.INTERP_OPTIONS, number=number, inputs=[prepared[number][1]],
               PSF_MODEL_DIR=str(fit_val.output_dir), PSF_MODEL_SEPARATOR="_")
    with pytest.raises(JobError, match="PSF_MODEL_SEPARATOR"):
        runner.mccd_interp(job)


def test_mccd_interp_multi_epoch_equals_psfinterp(tmp_path):
    from shapepipe_modules.io.stamp_store import StampStore

    tile, psf_dir, truth, _, _ = _me_setup(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    for path in psf_dir.glob("*.psf"):
        exposure, ccd = path.stem.split("-")[1:]
        shutil.copy(path, models / f"fitted_model_{exposure}_{ccd}.psf")
    store = str(tmp_path / "log_exp_headers.sqlite")
    job = _job(tmp_path, "mccd_interp", runner.INTERP_OPTIONS, number="-244-252", inputs=[tile], MODE="MULTI-EPOCH",
               PSF_MODEL_DIR=str(models), PSF_MODEL_SEPARATOR="_", ME_LOG_WCS=store)
    result = runner.mccd_interp(job)
    reference = _job(tmp_path, "psfinterp", PSFINTERP_OPTIONS, number="-244-252", inputs=[tile], MODE="MULTI-EPOCH",
                     ME_DOT_PSF_DIR=str(psf_dir), ME_LOG_WCS=store, STAR_THRESH=0, CHI2_THRESH=CHI2_THRESH)
    assert result == psfinterp(reference)
    assert result["ccds_rejected"] == 1  # the missing model only: focal-plane models are not rejected on star counts
    with StampStore(job.output_dir / "galaxy_psf-244-252.sqlite") as ours, \
            StampStore(reference.output_dir / "galaxy_psf-244-252.sqlite") as theirs:
        assert len(ours) == len(theirs) == result["objects"]
        epochs = 0
        for index in range(1, len(ours) + 1):
            a, b = ours.get(index), theirs.get(index)
            assert set(a) == set(b)
            for key in a:
                np.testing.assert_array_equal(a[key]["VIGNET"], b[key]["VIGNET"])
                exposure, ccd = key.split("-")
                assert abs(a[key]["SIGMA_PSF_HSM"] - truth[(exposure, int(ccd))]) < 5e-3
                epochs += 1
        assert epochs == result["object_epochs"] > 0


def test_interp_options_are_checked():
    assert runner._check_interp({"MODE": "MULTI-EPOCH", "POSITION_PARAMS": ["A"], "ME_LOG_WCS": ""}) == [
        "POSITION_PARAMS: expected two column names, got 1", "ME_LOG_WCS is required with MODE = MULTI-EPOCH"]


def test_every_output_is_a_declared_product(chain):
    from shapepipe.datasets import DatasetTable

    _, _, _, fit_val, _, _ = chain
    types = DatasetTable().by_module["mccd_fit_val"]
    names = sorted(p.name for p in fit_val.output_dir.iterdir())
    assert len(names) == 16  # 8 models, 8 validation catalogues
    for name in names:
        matched = [t.product.dataset for t in types if t.match(name)]
        assert len(matched) == 1, name
