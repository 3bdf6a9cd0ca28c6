"""spread_model: models against GalSim, the formula against a direct sum,
star/galaxy separation on simulated stamps, and the module's inputs/outputs."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.ldac import read_ldac, write_ldac
from shapepipe_modules.io.stamp_store import StampStore
from shapepipe_modules.spread_model.spread_model import classify, decode_flags, gaussian_models, spread_model, stamp_models
from shapepipe_modules.spread_model.runner import OPTIONS, spread_model_module, validate

galsim = pytest.importorskip("galsim")

SIZE = 51
SCALE = 0.187


def galsim_models(sigma, dx, dy, size=SIZE):
    psf = galsim.Gaussian(sigma=sigma)
    galaxy = galsim.Convolve(galsim.Exponential(scale_radius=2.3548200450309493 * sigma / 16), psf)
    draw = dict(nx=size, ny=size, scale=1.0, offset=(dx, dy))
    return psf.drawImage(**draw).array, galaxy.drawImage(**draw).array


@pytest.mark.parametrize("sigma,dx,dy", [(1.7, 0.0, 0.0), (2.3, 0.31, -0.45), (1.2, -0.5, 0.2)])
def test_models_match_galsim(sigma, dx, dy):
    psf_ref, gal_ref = galsim_models(sigma, dx, dy)
    psf, galaxy = gaussian_models([sigma], SIZE, [dx], [dy])
    np.testing.assert_allclose(psf[0], psf_ref, atol=2e-4 * psf_ref.max())  # GalSim draws by FFT: ~1e-4 ringing
    np.testing.assert_allclose(galaxy[0], gal_ref, atol=2e-4 * gal_ref.max())
    # From a PSF stamp (GalSim's centred Gaussian): the same models.
    stamp = galsim.Gaussian(sigma=sigma).drawImage(nx=41, ny=41, scale=1.0).array
    psf2, galaxy2 = stamp_models(stamp[None], [sigma], SIZE, [dx], [dy])
    np.testing.assert_allclose(psf2[0], psf_ref, atol=2e-4 * psf_ref.max())
    np.testing.assert_allclose(galaxy2[0], gal_ref, atol=2e-4 * gal_ref.max())


def direct_spread_model(g, weight, p, t):
    """The definition written out pixel by pixel (ShapePipe's get_sm, without its fake values)."""
    tg = pg = tp = pp = tvt = pvp = tvp = 0.0
    # Double precision throughout (the models are float32: float32 products would round).
    g, weight, p, t = (np.asarray(a, dtype=np.float64).ravel().tolist() for a in (g, weight, p, t))
    for value, w, pv, tv in zip(g, weight, p, t):
        if value > -1e29 and w > 0:
            tg += tv * value
            pg += pv * value
            tp += tv * pv
            pp += pv * pv
            tvt += tv * tv / w
            pvp += pv * pv / w
            tvp += tv * pv / w
    sm = tg / pg - tp / pp
    err = np.sqrt(tvt * pg ** 2 + pvp * tg ** 2 - 2 * tvp * pg * tg) / pg ** 2
    return sm, err


def test_formula_matches_direct_sum():
    rng = np.random.default_rng(4)
    size = 15
    psf, galaxy = gaussian_models([1.5, 1.8, 1.6], size, [0.1, -0.3, 0.0], [0.2, 0.0, -0.1])
    stamps = 1000 * galaxy + rng.normal(0, 1, galaxy.shape)
    weights = rng.uniform(0.5, 2.0, stamps.shape)
    stamps[0, 0, :] = -1e30
    weights[1, 3:5, 3:5] = 0
    sm, err, flags = spread_model(stamps, weights, psf, galaxy)
    for k in range(3):
        ref_sm, ref_err = direct_spread_model(stamps[k], weights[k], psf[k], galaxy[k])
        assert sm[k] == pytest.approx(ref_sm, rel=1e-9)
        assert err[k] == pytest.approx(ref_err, rel=1e-9)
    assert np.all(flags == 0)
    # A pure PSF gives 0, the galaxy model a positive value.
    # (Scaled in double precision: the float32 models times 100 in float32 would round, ~1e-10 in SM.)
    sm, _, _ = spread_model(np.concatenate([psf, galaxy]).astype(np.float64) * 100, np.ones((6, size, size)),
                            np.concatenate([psf, psf]), np.concatenate([galaxy, galaxy]))
    assert np.all(np.abs(sm[:3]) < 1e-12) and np.all(sm[3:] > 5e-4)


def test_unusable_objects_are_flagged():
    psf, galaxy = gaussian_models([1.5, 1.5], 11)
    stamps = np.stack([np.full((11, 11), -1e30), -psf[1]])
    sm, err, flags = spread_model(stamps, np.ones((2, 11, 11)), psf, galaxy)
    assert np.all(np.isnan(sm)) and np.all(np.isnan(err))
    assert flags.tolist() == [2, 2]
    assert "no usable pixel" in decode_flags(flags[0])[0]


def simulate_stamps(n_star, n_gal, seed, fwhm=0.7, zero_point=30.0, sky_sigma=2.6, gain=24.0):
    """Noisy tile stamps of Moffat stars and exponential galaxies (the simulator's
    size-magnitude relation), a PSF stamp and its HSM sigma."""
    rng = np.random.default_rng(seed)
    psf = galsim.Moffat(beta=3.0, fwhm=fwhm).shear(g1=0.02, g2=-0.01)
    mags = np.concatenate([rng.uniform(18, 22.5, n_star), rng.uniform(20, 22.5, n_gal)])
    is_star = np.arange(mags.size) < n_star
    offsets = rng.uniform(-0.5, 0.5, (mags.size, 2))
    stamps = np.empty((mags.size, SIZE, SIZE))
    for k, mag in enumerate(mags):
        flux = 10 ** (-0.4 * (mag - zero_point))
        if is_star[k]:
            profile = psf.withFlux(flux)
        else:
            hlr = 0.55 * 10 ** (-0.1 * (mag - 22) + rng.normal(0, 0.15))
            shape = rng.normal(0, 0.18, 2)
            galaxy = galsim.Exponential(half_light_radius=hlr, flux=flux).shear(g1=shape[0], g2=shape[1])
            profile = galsim.Convolve(galaxy, psf)
        image = profile.drawImage(nx=SIZE, ny=SIZE, scale=SCALE, offset=tuple(offsets[k])).array
        variance = sky_sigma ** 2 + np.clip(image, 0, None) / gain
        stamps[k] = image + rng.normal(size=image.shape) * np.sqrt(variance)
    weights = np.full(stamps.shape, 1 / sky_sigma ** 2)
    psf_stamp = psf.drawImage(nx=41, ny=41, scale=SCALE).array
    sigma = galsim.hsm.FindAdaptiveMom(galsim.Image(psf_stamp)).moments_sigma
    return stamps, weights, psf_stamp, sigma, offsets, mags, is_star


def separation_table(classes, mags, is_star, bins=(18, 19, 20, 21, 22, 22.5)):
    """Per magnitude bin: stars, galaxies, galaxy purity, star completeness."""
    rows = []
    for low, high in zip(bins[:-1], bins[1:]):
        sel = (mags >= low) & (mags < high)
        as_galaxy = sel & (classes == 1)
        stars = sel & is_star
        purity = np.sum(as_galaxy & ~is_star) / as_galaxy.sum() if as_galaxy.any() else np.nan
        completeness = np.sum(stars & (classes == 0)) / stars.sum() if stars.any() else np.nan
        rows.append((low, high, int(stars.sum()), int((sel & ~is_star).sum()), purity, completeness))
    return rows


@pytest.mark.parametrize("psf_model", ["gaussian", "stamp"])
def test_star_galaxy_separation(psf_model):
    stamps, weights, psf_stamp, sigma, offsets, mags, is_star = simulate_stamps(150, 150, seed=11)
    n = mags.size
    if psf_model == "gaussian":
        psf, galaxy = gaussian_models(np.full(n, sigma), SIZE, offsets[:, 0], offsets[:, 1])
    else:
        psf, galaxy = stamp_models(np.repeat(psf_stamp[None], n, 0), np.full(n, sigma), SIZE,
                                   offsets[:, 0], offsets[:, 1])
    sm, err, flags = spread_model(stamps, weights, psf, galaxy)
    assert np.all(flags == 0)
    classes = classify(sm, err)
    print(f"\nPSF_MODEL = {psf_model}: mag bin, true stars, true galaxies, galaxy purity, star completeness")
    for row in separation_table(classes, mags, is_star):
        print("  %4.1f-%4.1f %4d %4d %6.3f %6.3f" % row)
    bright = mags < 22.5
    as_galaxy = bright & (classes == 1)
    assert np.sum(as_galaxy & ~is_star) / as_galaxy.sum() >= 0.98
    assert np.sum(bright & is_star & (classes == 0)) / np.sum(bright & is_star) >= 0.95
    # Galaxies are mostly recognised too (the classifier is not trivially 'star').
    assert np.mean(classes[~is_star] == 1) > 0.8


def classify_reference():
    # ShapePipe's make_cat rule on hand-picked values.
    classes = classify([0.0, 0.001, 0.02, 0.005, np.nan], [0.0005, 0.0012, 0.001, 0.0, 0.1])
    assert classes.tolist() == [0, 2, 1, 2, 2]


def test_classify_rule():
    classify_reference()


# The module through its declaration.

def make_job(tmp_path, inputs, **options):
    values = {option.name: option.default for option in OPTIONS}
    values.update(options)
    output = tmp_path / "output"
    output.mkdir(exist_ok=True)
    return Job(module="spread_model", module_run="spread_model", number="-244-252", inputs=list(inputs),
               output_dir=output, log_dir=tmp_path, options=values,
               logger=logging.getLogger("spread-model-test"), run_dir=tmp_path)


def write_inputs(tmp_path, n_star=6, n_gal=6):
    stamps, weights, psf_stamp, sigma, offsets, mags, is_star = simulate_stamps(n_star, n_gal, seed=3)
    n = mags.size
    ids = np.arange(1, n + 1)
    centre = 200.0
    x_image = centre + np.zeros(n)  # VIGNET centred on pixel 199 (0-based) ...
    table = Table({"NUMBER": ids.astype(np.int32), "MAG_AUTO": mags, "X_IMAGE": x_image, "Y_IMAGE": x_image,
                   "XWIN_IMAGE": centre + offsets[:, 0], "YWIN_IMAGE": centre + offsets[:, 1],
                   "VIGNET": stamps.astype(np.float32)})
    epoch = fits.BinTableHDU(Table({"NUMBER": ids, "EXP_NAME": ["2100001"] * n, "CCD_N": np.zeros(n, int)}))
    epoch.name = "EPOCH_0"
    catalogue = tmp_path / "sexcat-244-252.fits"
    write_ldac(catalogue, table, fits.Header({"NAXIS1": 400, "NAXIS2": 400}), extra_hdus=[epoch])
    weight_path = tmp_path / "weight_vignet-244-252.fits"
    write_ldac(weight_path, Table({"NUMBER": ids.astype(np.int32), "VIGNET": weights.astype(np.float32)}),
               fits.Header())
    psf_path = tmp_path / "galaxy_psf-244-252.sqlite"
    with StampStore(psf_path, mode="w") as store:
        for object_id in ids[:-1]:
            for key, scale in (("2100001-0", 1.0), ("2100002-3", 1.0)):
                store.put(object_id, key, {"VIGNET": psf_stamp * scale},
                          {"SIGMA_PSF_HSM": sigma, "E1_PSF_HSM": 0.0, "E2_PSF_HSM": 0.0, "FLAG_PSF_HSM": 0})
        store.mark_no_epoch(ids[-1], "outside every CCD")
    return catalogue, psf_path, weight_path, is_star


@pytest.mark.parametrize("psf_model", ["gaussian", "stamp"])
def test_runner_new_mode(tmp_path, psf_model):
    catalogue, psf_path, weight_path, is_star = write_inputs(tmp_path)
    job = make_job(tmp_path, [catalogue, psf_path, weight_path], PSF_MODEL=psf_model)
    result = spread_model_module(job)
    assert result == {"n_objects": 12, "n_no_psf": 1, "n_flagged": 1}
    out, _ = read_ldac(job.output_dir / "sexcat_sm-244-252.fits")
    assert out.colnames == ["NUMBER", "MAG", "SPREAD_MODEL", "SPREADERR_MODEL", "SPREAD_FLAGS"]
    sm = np.ma.filled(out["SPREAD_MODEL"], np.nan)
    sm_err = np.ma.filled(out["SPREADERR_MODEL"], np.nan)
    assert out["SPREAD_FLAGS"][-1] == 1 and np.isnan(sm[-1]) and np.isnan(sm_err[-1])
    assert np.all(out["SPREAD_FLAGS"][:-1] == 0)
    classes = classify(sm[:-1], sm_err[:-1])
    assert np.all(classes[is_star[:-1]] == 0)
    assert np.mean(classes[~is_star[:-1]] == 1) >= 0.8
    # The same numbers through the Python API (offsets from XWIN relative to the VIGNET centre).
    table, _ = read_ldac(catalogue)
    dx = np.asarray(table["XWIN_IMAGE"] - 200.0)[:-1]
    dy = np.asarray(table["YWIN_IMAGE"] - 200.0)[:-1]
    with StampStore(psf_path) as store:
        record = store.get(1)
        sigma = record["2100001-0"]["SIGMA_PSF_HSM"]
        stamp = record["2100001-0"]["VIGNET"]
    n = dx.size
    if psf_model == "gaussian":
        psf, galaxy = gaussian_models(np.full(n, sigma), SIZE, dx, dy)
    else:
        psf, galaxy = stamp_models(np.repeat(stamp[None], n, 0), np.full(n, sigma), SIZE, dx, dy)
    weights, _ = read_ldac(weight_path)
    ref_sm, ref_err, _ = spread_model(np.asarray(table["VIGNET"])[:-1], np.asarray(weights["VIGNET"])[:-1],
                                      psf, galaxy)
    # Same computation; with stamps, the runner normalises the epochs' mean stamp first, which
    # changes the single-precision FFT rounding (~1e-7 of the models, far below SPREADERR_MODEL).
    tolerance = {"rtol": 1e-10} if psf_model == "gaussian" else {"rtol": 1e-4, "atol": 1e-7}
    np.testing.assert_allclose(sm[:-1], ref_sm, **tolerance)
    np.testing.assert_allclose(sm_err[:-1], ref_err, **tolerance)


def test_runner_add_mode_keeps_catalogue(tmp_path):
    catalogue, psf_path, weight_path, _ = write_inputs(tmp_path, 2, 2)
    job = make_job(tmp_path, [catalogue, psf_path, weight_path], OUTPUT_MODE="add", PREFIX="sp")
    spread_model_module(job)
    path = job.output_dir / "sp_sexcat_sm-244-252.fits"
    out, _ = read_ldac(path)
    original, _ = read_ldac(catalogue)
    for name in original.colnames:
        np.testing.assert_array_equal(out[name], original[name])
    assert {"SPREAD_MODEL", "SPREADERR_MODEL", "SPREAD_FLAGS"} <= set(out.colnames)
    with fits.open(path) as hdus:
        assert "EPOCH_0" in [h.name for h in hdus]


def test_runner_errors_name_the_file(tmp_path):
    catalogue, psf_path, weight_path, _ = write_inputs(tmp_path, 2, 2)
    bad = tmp_path / "weight_small-244-252.fits"
    write_ldac(bad, Table({"VIGNET": np.ones((4, 5, 5), np.float32)}), fits.Header())
    with pytest.raises(JobError, match="weight_small"):
        spread_model_module(make_job(tmp_path, [catalogue, psf_path, bad]))
    assert validate({o.name: o.default for o in OPTIONS} | {"BATCH_SIZE": 0})


def test_psf_input_reads_sigmas_without_stamps_and_measures_missing_ones(tmp_path):
    """Combined sigmas from a PSF store: mean of the stored HSM sigmas over usable epochs; an epoch
    without a stored sigma gets its stamp's HSM sigma (checked against galsim.hsm)."""
    from shapepipe_modules.spread_model.psf_input import read_object_psfs

    stamp = galsim.Gaussian(sigma=2.1).shear(g1=0.05, g2=-0.02).drawImage(nx=41, ny=41, scale=1.0).array
    reference = galsim.hsm.FindAdaptiveMom(galsim.Image(stamp, scale=1.0)).moments_sigma
    path = tmp_path / "galaxy_psf-244-252.sqlite"
    with StampStore(path, mode="w") as store:
        store.put(1, "2100001-0", {"VIGNET": stamp}, {"SIGMA_PSF_HSM": 1.8, "FLAG_PSF_HSM": 0})
        store.put(1, "2100002-3", {"VIGNET": stamp}, {"SIGMA_PSF_HSM": 2.2, "FLAG_PSF_HSM": 0})
        store.put(1, "2100003-1", {"VIGNET": stamp}, {"SIGMA_PSF_HSM": 9.0, "FLAG_PSF_HSM": 1})  # HSM failed
        store.put(2, "2100001-0", {"VIGNET": stamp}, {})  # no stored sigma
        store.put(2, "2100002-3", {"VIGNET": stamp}, {"SIGMA_PSF_HSM": 2.0, "FLAG_PSF_HSM": 0})
        store.mark_no_epoch(3, "outside every CCD")
    with StampStore(path) as store:
        sigma, stamps = read_object_psfs(store, [2, 1, 3, 4])
        assert stamps is None
        np.testing.assert_allclose(sigma[:2], [(reference + 2.0) / 2, 2.0], rtol=1e-6)
        assert np.isnan(sigma[2:]).all()
        sigma, stamps = read_object_psfs(store, [1, 3], want_stamps=True)
        np.testing.assert_allclose(stamps[0], stamp / stamp.sum())
        assert sigma[0] == pytest.approx(2.0) and (stamps[1] == 0).all()
