"""sep engine against the SExtractor binary on the same simulated CCDs, and PSFEx on a sep catalogue."""

import shutil
import subprocess

import numpy as np
import pytest
from scipy.spatial import cKDTree

from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.runner import sextractor
from test_sextractor_engine import NUMBER, make_job
from test_sextractor_sim import make_ccd, write_ccd

pytestmark = [
    pytest.mark.external,
    pytest.mark.skipif(shutil.which("source-extractor") is None and shutil.which("sex") is None,
                       reason="SExtractor binary not installed"),
]


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    runs = []
    for seed in (21, 22):
        directory = tmp_path_factory.mktemp(f"ccd{seed}")
        ccd = make_ccd(np.random.default_rng(seed), nx=640, ny=640, n_stars=70, n_galaxies=160)
        paths = write_ccd(ccd, directory)
        catalogues = {}
        for engine in ("sep", "sextractor"):
            job = make_job(directory, paths, name=engine, ENGINE=engine, CHECKIMAGE=["BACKGROUND", "SEGMENTATION"])
            summary = sextractor(job)
            catalogues[engine] = read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")[0]
            catalogues[engine + "_summary"] = summary
            catalogues[engine + "_dir"] = job.output_dir
        runs.append((ccd, catalogues))
    return runs


def _pairs(runs):
    """Matched (sep row, SExtractor row) tables over all CCDs, within 0.5 pixel."""
    matched, total_bright, matched_bright = [], 0, 0
    for _, cats in runs:
        sep_cat, sex_cat = cats["sep"], cats["sextractor"]
        distance, index = cKDTree(np.c_[sep_cat["X_IMAGE"], sep_cat["Y_IMAGE"]]).query(
            np.c_[sex_cat["X_IMAGE"], sex_cat["Y_IMAGE"]])
        ok = distance < 0.5
        bright = sex_cat["SNR_WIN"] > 10
        total_bright += bright.sum()
        matched_bright += (ok & bright).sum()
        matched.append((sep_cat[index[ok]], sex_cat[ok]))
    return matched, matched_bright / total_bright


def test_detections_photometry_sizes_and_flags_agree(both_engines):
    matched, fraction = _pairs(both_engines)
    assert fraction >= 0.98
    sep_rows = np.concatenate([np.asarray(s["MAG_AUTO"]) for s, _ in matched])
    sex_rows = np.concatenate([np.asarray(r["MAG_AUTO"]) for _, r in matched])
    assert abs(np.median(sep_rows - sex_rows)) < 0.02
    flags_equal = np.concatenate([np.asarray(s["FLAGS"]) == np.asarray(r["FLAGS"]) for s, r in matched])
    assert flags_equal.mean() >= 0.95
    # Stars: truth-matched, unflagged.
    ratios = []
    for (ccd, _), (s, r) in zip(both_engines, matched):
        truth = ccd["truth"]
        distance, index = cKDTree(np.c_[truth["x"], truth["y"]]).query(np.c_[r["X_IMAGE"], r["Y_IMAGE"]])
        star = (distance < 1) & truth["is_star"][index] & (r["FLAGS"] == 0) & (r["SNR_WIN"] > 20)
        ratios.append(np.asarray(s["FWHM_IMAGE"])[star] / np.asarray(r["FWHM_IMAGE"])[star])
    ratios = np.concatenate(ratios)
    assert ratios.size > 50
    assert abs(np.median(ratios) - 1) < 0.03
    for name in ("XWIN_IMAGE", "FLUX_RADIUS", "SNR_WIN", "MU_MAX", "X2WIN_IMAGE", "IMAFLAGS_ISO"):
        a = np.concatenate([np.asarray(s[name], float) for s, _ in matched])
        b = np.concatenate([np.asarray(r[name], float) for _, r in matched])
        scale = np.where(b != 0, np.abs(b), 1.0)
        assert np.median(np.abs(a - b) / scale) < 0.01, name


def test_completeness_per_magnitude_bin(both_engines):
    edges = np.arange(17.5, 25.0, 1.0)
    report = {}
    for engine in ("sep", "sextractor"):
        found = []
        mags = []
        for ccd, cats in both_engines:
            truth = ccd["truth"]
            catalogue = cats[engine]
            distance, _ = cKDTree(np.c_[catalogue["X_IMAGE"], catalogue["Y_IMAGE"]]).query(
                np.c_[truth["x"], truth["y"]])
            found.append(distance < 2.0)
            mags.append(truth["mag"])
        found, mags = np.concatenate(found), np.concatenate(mags)
        which = np.digitize(mags, edges)
        report[engine] = [found[which == k].mean() if np.any(which == k) else np.nan
                          for k in range(1, len(edges))]
    print("\ncompleteness per magnitude bin (truth match within 2 px)")
    print("bin          sep    sextractor")
    for k in range(len(edges) - 1):
        print(f"{edges[k]:.1f}-{edges[k + 1]:.1f}  {report['sep'][k]:.3f}  {report['sextractor'][k]:.3f}")
    # Both engines complete for bright sources, and within 5 % of each other everywhere.
    assert min(report["sep"][:3]) > 0.9 and min(report["sextractor"][:3]) > 0.9
    assert np.nanmax(np.abs(np.subtract(report["sep"], report["sextractor"]))) < 0.05


def test_background_residuals_agree(both_engines):
    for _, cats in both_engines:
        sep_summary, sex_summary = cats["sep_summary"], cats["sextractor_summary"]
        assert abs(sep_summary["bkg_resid_mean"] - sex_summary["bkg_resid_mean"]) < 0.5
        assert abs(sep_summary["bkg_resid_sigma"] / sex_summary["bkg_resid_sigma"] - 1) < 0.02


@pytest.mark.skipif(shutil.which("psfex") is None, reason="psfex not installed")
def test_psfex_reads_a_sep_catalogue(tmp_path):
    ccd = make_ccd(np.random.default_rng(5), nx=768, ny=768, n_stars=90, n_galaxies=40, star_mag=(18.0, 21.0))
    paths = write_ccd(ccd, tmp_path)
    config = tmp_path / "test.psfex"
    config.write_text(
        "BASIS_TYPE PIXEL_AUTO\nPSF_SIZE 25,25\nPSF_SAMPLING 1.0\nPSFVAR_DEGREES 0\n"
        "SAMPLE_AUTOSELECT Y\nSAMPLE_FWHMRANGE 2.0,10.0\nSAMPLE_VARIABILITY 0.3\nSAMPLE_MINSN 20\n"
        "SAMPLE_MAXELLIP 0.3\nCHECKPLOT_TYPE NONE\nCHECKIMAGE_TYPE NONE\nWRITE_XML N\nVERBOSE_TYPE QUIET\n")
    models = {}
    for engine in ("sep", "sextractor"):
        job = make_job(tmp_path, paths, name=engine, ENGINE=engine)
        sextractor(job)
        catalogue = job.output_dir / f"sexcat{NUMBER}.fits"
        completed = subprocess.run(["psfex", str(catalogue), "-c", str(config), "-PSF_DIR", str(job.output_dir)],
                                   cwd=tmp_path, capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr
        from astropy.io import fits

        with fits.open(job.output_dir / f"sexcat{NUMBER}.psf") as hdus:
            models[engine] = dict(hdus[1].header)
    assert models["sep"]["ACCEPTED"] >= 50
    # The PSF model from the sep catalogue matches the one from SExtractor's.
    assert abs(models["sep"]["PSF_FWHM"] / models["sextractor"]["PSF_FWHM"] - 1) < 0.03
    assert abs(models["sep"]["ACCEPTED"] / models["sextractor"]["ACCEPTED"] - 1) < 0.1
