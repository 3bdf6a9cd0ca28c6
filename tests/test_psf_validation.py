"""psf_validation: rho statistics against pair counts, reserved stars only, focal plane, full chain."""

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.job import Job
from shapepipe_modules.io.header_store import HeaderStore, write_header_store
from shapepipe_modules.io.ldac import write_ldac
from shapepipe_modules.io.psfex_file import write_psf
from shapepipe_modules.merge_starcat.runner import merge_starcat
from shapepipe_modules.psf_validation.focal_plane import FocalPlane, binned_maps, megacam_slot
from shapepipe_modules.psf_validation.report import ReportSettings, focal_plane_for, make_report
from shapepipe_modules.psf_validation.runner import OPTIONS, psf_validation
from shapepipe_modules.psf_validation.stats import StarSample, rho_statistics, select_stars
from shapepipe_modules.psfinterp.runner import OPTIONS as INTERP_OPTIONS
from shapepipe_modules.psfinterp.runner import psfinterp
from shapepipe_modules.psfinterp.synthetic import ccd_header, gaussian_model, star_catalogue


def job_for(tmp_path, module, options, inputs=(), input_table=None, number=""):
    output = Path(tempfile.mkdtemp(prefix="out", dir=tmp_path))
    return Job(module=module, module_run=module, number=number, inputs=[Path(p) for p in inputs],
               input_table=input_table or {}, output_dir=output, log_dir=tmp_path, options=options,
               logger=logging.getLogger(f"test_{module}"), run_dir=tmp_path)


def random_sample(rng, n, spread=0.3, residual=0.01):
    ra = 150 + rng.uniform(-spread, spread, n)
    dec = rng.uniform(-spread, spread, n)
    e1p, e2p = rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)
    return StarSample(ra=ra, dec=dec, x=rng.uniform(1, 256, n), y=rng.uniform(1, 512, n),
                      ccd=rng.integers(0, 4, n), exposure=np.full(n, "1"),
                      e1_star=e1p + rng.normal(0, residual, n), e2_star=e2p + rng.normal(0, residual, n),
                      size_star=8 + rng.normal(0, 0.2, n), e1_psf=e1p, e2_psf=e2p, size_psf=8 + rng.normal(0, 0.05, n))


def pair_correlation(ra, dec, a, b, edges):
    """Direct pair sums of Re(a_i conj(b_j)) per separation bin (arcmin), ordered pairs i != j for a != b."""
    r, d = np.radians(ra), np.radians(dec)
    cosine = np.sin(d)[:, None] * np.sin(d)[None] + np.cos(d)[:, None] * np.cos(d)[None] * np.cos(r[:, None] - r[None])
    separation = np.degrees(np.arccos(np.clip(cosine, -1, 1))) * 60
    product = (a[:, None] * np.conj(b)[None]).real
    if a is b:
        i, j = np.triu_indices(len(ra), 1)
    else:
        i, j = np.nonzero(~np.eye(len(ra), dtype=bool))
    bins = np.digitize(separation[i, j], edges) - 1
    values, counts = [], []
    for k in range(len(edges) - 1):
        sel = bins == k
        counts.append(sel.sum())
        values.append(product[i, j][sel].mean() if sel.any() else 0.0)
    return np.array(values), np.array(counts)


def test_rho1_and_rho2_match_direct_pair_counts():
    rng = np.random.default_rng(2)
    # Near the equator the tangent-plane projections of a pair's shears agree: no rotation to apply.
    sample = random_sample(rng, 250)
    rho = rho_statistics(sample, min_sep=1.0, max_sep=30.0, nbins=6, bin_slop=0.0)
    edges = np.exp(np.linspace(0, np.log(30), 7))
    p = sample.e1_psf + 1j * sample.e2_psf
    q = sample.de1 + 1j * sample.de2
    expected, counts = pair_correlation(sample.ra, sample.dec, q, q, edges)
    np.testing.assert_array_equal(rho["rho1"]["npairs"], counts)
    np.testing.assert_allclose(rho["rho1"]["xip"], expected, rtol=1e-4, atol=1e-10)
    expected, counts = pair_correlation(sample.ra, sample.dec, p, q, edges)
    np.testing.assert_array_equal(rho["rho2"]["npairs"], counts)
    np.testing.assert_allclose(rho["rho2"]["xip"], expected, rtol=1e-4, atol=1e-10)
    assert set(rho) == {"rho0", "rho1", "rho2", "rho3", "rho4", "rho5"}
    # rho3 correlates w = p dT/T: with a known constant dT/T = 0.1 it equals 0.01 rho0.
    sample.size_psf = np.full(len(sample), 8.0)
    sample.size_star = np.full(len(sample), 8.8)
    rho = rho_statistics(sample, min_sep=1.0, max_sep=30.0, nbins=6, bin_slop=0.0)
    np.testing.assert_allclose(rho["rho3"]["xip"], 0.01 * rho["rho0"]["xip"], rtol=1e-5)
    np.testing.assert_allclose(rho["rho5"]["xip"], 0.1 * rho["rho0"]["xip"], rtol=1e-5)


def star_table(sample, accepted):
    """A merged-catalogue table from a sample."""
    n = len(sample)
    return Table({
        "RA": sample.ra, "DEC": sample.dec, "X": sample.x, "Y": sample.y, "CCD_NB": sample.ccd,
        "EXP_NAME": sample.exposure, "E1_STAR_HSM": sample.e1_star, "E2_STAR_HSM": sample.e2_star,
        "SIGMA_STAR_HSM": np.sqrt(sample.size_star / 2), "E1_PSF_HSM": sample.e1_psf, "E2_PSF_HSM": sample.e2_psf,
        "SIGMA_PSF_HSM": np.sqrt(sample.size_psf / 2), "FLAG_STAR_HSM": np.zeros(n, int),
        "FLAG_PSF_HSM": np.zeros(n, int), "ACCEPTED": accepted, "PSF_FLAG": np.zeros(n, int)})


def test_only_reserved_stars_feed_the_rho_statistics(tmp_path):
    rng = np.random.default_rng(8)
    reserved = random_sample(rng, 120)
    fitted = random_sample(rng, 200, residual=0.2)  # stars of the fit: large residuals
    table = Table(np.concatenate([np.asarray(star_table(reserved, np.zeros(120, int))),
                                  np.asarray(star_table(fitted, np.ones(200, int)))]))
    # A rejected CCD's rows and an HSM failure must not enter either.
    table["PSF_FLAG"][5] = 1
    table["FLAG_STAR_HSM"][6] = 1
    sample = select_stars(table)
    assert sample.counts == {"rows": 320, "model_rejected": 1, "used_in_fit": 200, "hsm_failed": 1,
                             "bad_values": 0, "kept": 118}
    settings = ReportSettings(plot_maps=False, plot_histograms=False, rho_min_sep=1.0, rho_max_sep=30.0,
                              rho_nbins=5, rho_bin_slop=0.0)
    stats = make_report(table, tmp_path, settings)
    keep = np.setdiff1d(np.arange(120), [5, 6])
    q = reserved.de1[keep] + 1j * reserved.de2[keep]
    expected, _ = pair_correlation(reserved.ra[keep], reserved.dec[keep], q, q, np.exp(np.linspace(0, np.log(30), 6)))
    written = Table.read(tmp_path / "rho_stats.fits")
    np.testing.assert_allclose(written["RHO1_XIP"], expected, rtol=1e-4, atol=1e-10)
    assert stats["n_stars"] == 118 and stats["selection"]["used_in_fit"] == 200
    assert json.loads((tmp_path / "psf_validation_stats.json").read_text())["n_stars"] == 118


def test_megacam_layout():
    assert megacam_slot(0) == (0, 1) and megacam_slot(17) == (1, 9) and megacam_slot(35) == (3, 9)
    assert megacam_slot(36) == (1, 0) and megacam_slot(39) == (2, 10)
    plane = FocalPlane.megacam()
    # Upper CCDs are rotated by 180 degrees: pixel (1, 1) of CCD 0 is at its top right (East left: u decreasing).
    u0, v0 = plane[0]([1.0, 2048.0], [1.0, 4612.0])
    assert v0[0] > v0[1]
    u27, v27 = plane[27]([1.0, 2048.0], [1.0, 4612.0])
    assert v27[0] < v27[1] and v27.max() < v0.min()


def test_focal_plane_from_wcs_and_binned_maps(tmp_path):
    headers = [ccd_header(c, nx=256, ny=512, gap=20) for c in range(4)]
    plane = FocalPlane.from_wcs({c: WCS(h) for c, h in enumerate(headers)}, {c: (256, 512) for c in range(4)})
    centres = np.array([plane[c]([128.5], [256.5]) for c in range(4)])[:, :, 0]
    scale = 0.187 / 3600
    # CCD 1 is right of CCD 0 in pixels, so East-West flips it to smaller xi; CCD 2 is above CCD 0.
    np.testing.assert_allclose(centres[0] - centres[1], [276 * scale, 0], atol=1e-6)
    np.testing.assert_allclose(centres[2] - centres[0], [0, 532 * scale], atol=1e-6)
    rng = np.random.default_rng(3)
    sample = random_sample(rng, 400)
    sample.e1_star = np.where(sample.x > 128.5, 0.05, -0.05)
    maps = binned_maps(sample, plane, (2, 4))
    assert sum(m.sum() for m in maps["count"].values()) == 400
    for ccd in range(4):
        np.testing.assert_allclose(maps["e1_star"][ccd][0], -0.05)
        np.testing.assert_allclose(maps["e1_star"][ccd][1], 0.05)
        sel = (sample.ccd == ccd) & (sample.x <= 128.5) & (sample.y <= 128.5)
        assert maps["count"][ccd][0, 0] == sel.sum()
        np.testing.assert_allclose(maps["e1_psf"][ccd][0, 0], sample.e1_psf[sel].mean())


def test_full_chain_psfinterp_merge_validation(tmp_path):
    """Reserved-star catalogues -> psfinterp VALIDATION -> merge_starcat -> psf_validation."""
    rng = np.random.default_rng(21)
    exposures = {"2113737": (150.0, 2.0), "2113740": (150.01, 2.005)}
    write_header_store(tmp_path / "log_exp_headers.sqlite",
                       {e: [ccd_header(c, centre) for c in range(4)] for e, centre in exposures.items()})
    interp_options = {o.name: o.default for o in INTERP_OPTIONS}
    interp_options.update(MODE="VALIDATION")
    input_table = {}
    for exposure, centre in exposures.items():
        for ccd in range(4):
            number = f"-{exposure}-{ccd}"
            header = ccd_header(ccd, centre)
            # Stars follow e1 = 0.02 (x - 128) / 128; the constant model misses the gradient.
            truth_e1 = lambda x, y: 0.02 * (x - 128) / 128  # noqa: E731
            stars = tmp_path / f"star_split_ratio_20{number}.fits"
            star_catalogue(stars, header, 2.0, truth_e1, 0.0, rng, n_stars=12)
            model = gaussian_model(2.0, 0.0, 0.0, size=41, nx=256, ny=512,
                                   accepted=5 if (exposure, ccd) == ("2113740", 1) else 40)
            psf = tmp_path / f"star_split_ratio_80{number}.psf"
            write_psf(psf, model)
            job = job_for(tmp_path, "psfinterp", interp_options, [psf, stars], number=number)
            psfinterp(job)
            input_table[number] = [job.output_dir / f"validation_psf{number}.fits"]
    merge = job_for(tmp_path, "merge_starcat", {"PSF_MODEL": "psfex"}, input_table=input_table)
    merge_starcat(merge)
    full = merge.output_dir / "full_starcat-0000000.fits"
    options = {o.name: o.default for o in OPTIONS}
    options.update(HEADER_STORE=str(tmp_path / "log_exp_headers.sqlite"), X_GRID=2, Y_GRID=2, RHO_MIN_SEP=0.2,
                   RHO_MAX_SEP=3.0, RHO_NBINS=4, RHO_BIN_SLOP=0.0)
    job = job_for(tmp_path, "psf_validation", options, [full], input_table={"-0000000": [full]})
    result = psf_validation(job)
    stats = json.loads((job.output_dir / "psf_validation_stats.json").read_text())
    # 8 CCDs x 12 stars, minus the 12 of the rejected model and a star with HSM trouble at most.
    assert stats["selection"]["model_rejected"] == 12 and stats["selection"]["used_in_fit"] == 0
    assert 82 <= result["stars"] <= 84 and stats["focal_plane_layout"] == "wcs"
    # Residual e1 follows the stars' gradient that the constant model misses.
    assert abs(stats["e1_residual"]["rms"] - 0.02 / np.sqrt(3) * 100 / 128) < 0.004
    for name in ("focal_plane_e1.png", "focal_plane_e2.png", "focal_plane_size.png", "focal_plane_nstar.png",
                 "histograms.png", "rho_stats.png", "rho_stats.fits", "psf_validation_stats.txt"):
        assert (job.output_dir / name).stat().st_size > 1000, name
    with HeaderStore(tmp_path / "log_exp_headers.sqlite") as store:
        table = Table.read(full, hdu=2)
        assert focal_plane_for(select_stars(table), store).source == "wcs"
