"""The fast paths of the sextractor module against the plain computations they replace."""

import filecmp
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe_modules.io import ldac
from shapepipe_modules.sextractor import kernels, robust
from shapepipe_modules.sextractor.background_residual import fit_gaussian, fit_residuals
from shapepipe_modules.sextractor.sep_engine import _native


@pytest.mark.parametrize("size", [7, 250_001, 400_000])
def test_median_is_exact(size):
    rng = np.random.default_rng(size)
    for values in (rng.normal(5.0, 3.0, size).astype(np.float32),
                   np.round(rng.normal(0.0, 2.0, size)),  # many ties
                   np.sort(rng.exponential(1.0, size))):  # sorted, skewed
        copy = values.copy()
        ordered = np.sort(values)
        expected = 0.5 * (float(ordered[(size - 1) // 2]) + float(ordered[size // 2]))
        assert robust.median(values) == pytest.approx(expected, rel=1e-7, abs=1e-12)
        np.testing.assert_array_equal(values, copy)  # input untouched


def test_median_falls_back_when_the_sample_misleads():
    # A strided sample that sees only one half of a bimodal array.
    values = np.zeros(1_000_000)
    values[1::2] = 100.0
    values[: 1_000_000 // 20 * 20: 20] = -1.0
    assert robust.median(values) == float(np.median(values))


def test_gaussian_fit_matches_scipy_curve_fit():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(3)
    values = rng.normal(1.3, 20.0, 300_000)
    edges = np.linspace(-100, 100, 102)
    counts, _ = np.histogram(values, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    errors = np.sqrt(np.maximum(counts, 1.0))

    def gaussian(x, amplitude, mean, sigma):
        return amplitude * np.exp(-0.5 * ((x - mean) / sigma) ** 2)

    expected, expected_covariance = curve_fit(gaussian, centres, counts, p0=(counts.max(), 0.0, 25.0),
                                              sigma=errors, absolute_sigma=True)
    parameters, covariance = fit_gaussian(centres, counts, errors, (counts.max(), 0.0, 25.0))
    np.testing.assert_allclose(parameters, expected, rtol=1e-6)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-2)
    result = fit_residuals(values.astype(np.float32))
    assert abs(result["mean"] - 1.3) < 5 * result["mean_error"]
    assert abs(result["sigma"] / 20.0 - 1) < 0.01


def _subpixel_brute_force(x0, y0, radius2):
    """SExtractor's loop: every sub-pixel of the 11 x 11 grid tested."""
    step = 1.0 / kernels.WIN_OVERSAMP
    count = 0
    for j in range(kernels.WIN_OVERSAMP):
        for k in range(kernels.WIN_OVERSAMP):
            sx, sy = x0 + k * step, y0 + j * step
            count += sx * sx + sy * sy < radius2
    return count * step * step


def test_subpixel_fraction_equals_brute_force():
    rng = np.random.default_rng(5)
    halves = np.empty(kernels.WIN_OVERSAMP)
    offset = 0.5 * (1.0 / kernels.WIN_OVERSAMP - 1.0)
    partial = 0
    for _ in range(3000):
        radius = rng.uniform(0.5, 12.0)
        # Pixels near the circle edge, where the fraction is partial.
        angle = rng.uniform(0, 2 * np.pi)
        dx = radius * math.cos(angle) + rng.uniform(-1.5, 1.5)
        dy = radius * math.sin(angle) + rng.uniform(-1.5, 1.5)
        kernels._chord_halves(dy + offset, radius**2, halves)
        fast = kernels._subpixel_fraction(dx + offset, halves)
        assert fast == pytest.approx(_subpixel_brute_force(dx + offset, dy + offset, radius**2), abs=1e-12)
        partial += 0 < fast < 1
    assert partial > 1000


def test_vignets_kernel_matches_numpy_indexing():
    rng = np.random.default_rng(6)
    sub = rng.normal(size=(40, 50)).astype(np.float32)
    bad = rng.uniform(size=sub.shape) < 0.05
    seg = np.zeros(sub.shape, np.int32)
    seg[10:15, 10:15] = 1
    seg[12:20, 30:38] = 2
    ix = np.array([12, 33, 0, 49])
    iy = np.array([12, 15, 0, 39])
    stamps = kernels.vignets(sub, bad, seg, ix, iy, 7, 5, np.float32(-1e30))
    for i in range(ix.size):
        for j in range(5):
            for k in range(7):
                yy, xx = iy[i] + j - 2, ix[i] + k - 3
                on = 0 <= yy < 40 and 0 <= xx < 50
                usable = on and not bad[yy, xx] and seg[yy, xx] in (0, i + 1)
                assert stamps[i, j, k] == (sub[yy, xx] if usable else np.float32(-1e30))


def test_native_conversion_copies_once_and_only_when_needed():
    big_endian = np.arange(12, dtype=">f4").reshape(3, 4)
    native = _native(big_endian, copy=False)
    assert native.dtype == np.dtype("=f4") and native.flags.c_contiguous
    np.testing.assert_array_equal(native, big_endian)
    assert _native(native, copy=False) is native
    assert _native(native) is not native


def test_fast_ldac_writer_is_byte_identical_to_astropy(tmp_path):
    rng = np.random.default_rng(7)
    table = Table()
    table["NUMBER"] = np.arange(1, 101, dtype="i4")
    table["FLAGS"] = rng.integers(0, 64, 100).astype("i2")
    table["X_WORLD"] = rng.uniform(0, 360, 100)
    table["X_WORLD"].unit = "deg"
    table["FLUX_APER"] = rng.normal(size=(100, 3)).astype("f4")
    table["VIGNET"] = rng.normal(size=(100, 5, 7)).astype("f4")
    header = fits.Header()
    header["NAXIS1"] = 100
    header["SEXBKDEV"] = (12.5, "Median background RMS (ADU)")
    fast, slow = tmp_path / "fast.fits", tmp_path / "slow.fits"
    ldac.write_ldac(fast, table, header)
    hdus = fits.HDUList([fits.PrimaryHDU(), ldac.imhead_hdu(header), ldac.objects_hdu(table)])
    ldac._write_hdus(slow, hdus, b"".join(ldac.header_to_cards(header)))
    assert filecmp.cmp(fast, slow, shallow=False)
    # A string column takes astropy's writer.
    table["NAME"] = np.array(["a"] * 100)
    ldac.write_ldac(fast, table, header)
    back, _ = ldac.read_ldac(fast)
    assert list(back["NAME"][:2]) == ["a", "a"]
    np.testing.assert_array_equal(back["VIGNET"], table["VIGNET"])


def test_median_with_where_equals_median_of_the_selection():
    rng = np.random.default_rng(11)
    values = rng.normal(2.0, 1.0, (700, 900)).astype(np.float32)
    where = rng.uniform(size=values.shape) > 0.3
    values[~where] = 1e6  # excluded values must not count
    assert robust.median(values, where=where) == pytest.approx(float(np.median(values[where].astype(float))),
                                                                rel=1e-7)
    with pytest.raises(ValueError, match="shape"):
        robust.median(values, where=where[:10])


@pytest.fixture(scope="module")
def small_ccd():
    from test_sextractor_sim import make_ccd

    return make_ccd(np.random.default_rng(13), nx=300, ny=300, n_stars=25, n_galaxies=25)


def _settings():
    from shapepipe_modules.sextractor.config_files import (
        ExtractionSettings, read_dot_conv, read_dot_param, read_dot_sex)
    from shapepipe_modules.sextractor.runner import DATA_DIR

    settings = ExtractionSettings.from_dot_sex(read_dot_sex(DATA_DIR / "default_exp.sex"))
    return settings, read_dot_param(DATA_DIR / "default.param"), read_dot_conv(DATA_DIR / "default.conv")


def test_engine_inputs_are_untouched_unless_handed_over(small_ccd):
    from shapepipe_modules.sextractor.sep_engine import extract

    settings, parameters, kernel = _settings()
    image, weight = small_ccd["image"].copy(), small_ccd["weight"].copy()
    first = extract(image, small_ccd["header"], settings, parameters, kernel, weight=weight,
                    flag_image=small_ccd["flag"])
    np.testing.assert_array_equal(image, small_ccd["image"])
    np.testing.assert_array_equal(weight, small_ccd["weight"])
    second = extract(image, small_ccd["header"], settings, parameters, kernel, weight=weight,
                     flag_image=small_ccd["flag"], overwrite_input=True, keep_background=False)
    assert second.background is None and first.background.shape == image.shape
    assert second.subtracted is image  # the image array became the work space
    for name in ("FLUX_AUTO", "XWIN_IMAGE", "FLUXERR_WIN", "FLAGS", "VIGNET"):
        np.testing.assert_array_equal(first.table[name], second.table[name])


def test_weightless_extraction_agrees_with_a_constant_weight(small_ccd):
    from shapepipe_modules.sextractor.sep_engine import extract

    settings, parameters, kernel = _settings()
    weight = np.full(small_ccd["image"].shape, 1 / 20.0**2, np.float32)
    with_weight = extract(small_ccd["image"], small_ccd["header"], settings, parameters, kernel, weight=weight)
    without = extract(small_ccd["image"], small_ccd["header"], settings, parameters, kernel)
    # The dead column (image 0) is usable without a weight map, so objects may differ near it.
    assert abs(len(with_weight.table) - len(without.table)) <= 2
    distance = np.hypot(with_weight.table["X_IMAGE"][:, None] - without.table["X_IMAGE"][None, :],
                        with_weight.table["Y_IMAGE"][:, None] - without.table["Y_IMAGE"][None, :])
    nearest = distance.argmin(axis=1)
    same = (distance.min(axis=1) < 0.01) & (np.abs(with_weight.table["X_IMAGE"] - 101) > 15)
    assert same.sum() > 20
    np.testing.assert_allclose(with_weight.table["FLUX_AUTO"][same], without.table["FLUX_AUTO"][nearest[same]],
                               rtol=1e-3)
    np.testing.assert_allclose(with_weight.table["FLUXERR_WIN"][same],
                               without.table["FLUXERR_WIN"][nearest[same]], rtol=0.02)


def test_map_rms_weight_gives_the_map_weight_catalogue(small_ccd, tmp_path):
    from test_sextractor_engine import NUMBER, make_job
    from test_sextractor_sim import write_ccd

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor

    paths = write_ccd(small_ccd, tmp_path)
    rms = small_ccd.copy()
    with np.errstate(divide="ignore"):
        rms["weight"] = np.where(small_ccd["weight"] > 0, 1 / np.sqrt(small_ccd["weight"]), 0).astype(np.float32)
    rms_dir = tmp_path / "rms_inputs"
    rms_dir.mkdir()
    rms_paths = write_ccd(rms, rms_dir)
    dot_sex = tmp_path / "rms.sex"
    dot_sex.write_text((DATA_DIR / "default_exp.sex").read_text().replace("MAP_WEIGHT", "MAP_RMS"))
    catalogues = []
    for name, inputs, extra in (("weight", paths, {}), ("rms", rms_paths, {"DOT_SEX_FILE": str(dot_sex)})):
        job = make_job(tmp_path, inputs, name=name, **extra)
        summary = sextractor(job)
        assert summary["extraction_cpu_seconds"] > 0
        catalogues.append(read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")[0])
    assert len(catalogues[0]) == len(catalogues[1])
    np.testing.assert_allclose(catalogues[0]["FLUXERR_AUTO"], catalogues[1]["FLUXERR_AUTO"], rtol=1e-5)


def test_pixel_stack_grows_when_a_large_object_overflows_it():
    from shapepipe_modules.sextractor.config_files import ExtractionSettings
    from shapepipe_modules.sextractor.sep_engine import _detect

    rng = np.random.default_rng(14)
    image = rng.normal(0.0, 1.0, (1000, 1000)).astype(np.float32)
    image[200:800, 200:800] += 100.0  # 360000 pixels above threshold: more than the first stack
    bad = np.zeros(image.shape, bool)
    objects, seg = _detect(image, 1.5, None, bad, ExtractionSettings(), None, 0.0)
    big = np.argmax(objects["npix"])
    assert objects["npix"][big] >= 360000
    assert np.all(seg[250:750, 250:750] == big + 1)
