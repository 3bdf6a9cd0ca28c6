"""Both psfex engines on a SExtractor catalogue of a simulated CCD, against the true PSF.

Needs the source-extractor and psfex executables.
"""

import logging
import shutil

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
import galsim.des  # noqa: E402

from shapepipe.errors import JobError  # noqa: E402
from shapepipe.job import Job  # noqa: E402
from shapepipe_modules.io.ldac import read_ldac, write_ldac  # noqa: E402
from shapepipe_modules.io.psfex_file import read_psf  # noqa: E402
from shapepipe_modules.psfex.runner import DATA_DIR, psfex  # noqa: E402
from shapepipe_modules.psfex.synthetic import SmoothPSFField, draw_ccd, write_star_catalogue  # noqa: E402

pytestmark = [
    pytest.mark.external,
    pytest.mark.skipif(not (shutil.which("psfex") and shutil.which("source-extractor")),
                       reason="needs psfex and source-extractor"),
]
NUMBER = "-0000000-0"
SIZE = 25  # PSF_SIZE of the test: keeps the PSFEx run to a few seconds


def _job(tmp_path, catalogue, engine, config, name):
    options = {"ENGINE": engine, "EXEC_PATH": "psfex", "DOT_PSFEX_FILE": str(config), "OUTPUT_FILE_PATTERN": "",
               "CHECKIMAGE": [], "MIN_STARS": 10, "INTERPOLANT_ORDER": 7, "SHAPE_CLIP": 5.0}
    out = tmp_path / name
    out.mkdir()
    return Job(module="psfex", module_run="psfex", number=NUMBER, inputs=[catalogue], output_dir=out,
               log_dir=tmp_path, options=options, logger=logging.getLogger("test_psfex"), run_dir=tmp_path)


@pytest.fixture(scope="module")
def ccd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ccd")
    rng = np.random.default_rng(2024)
    field = SmoothPSFField.random(rng)
    image, stars = draw_ccd(field, rng, n_stars=100)
    catalogue = write_star_catalogue(image, stars, directory, name=f"star_selection{NUMBER}")
    config = directory / "test.psfex"
    text = (DATA_DIR / "default.psfex").read_text().replace("PSF_SIZE        51,51", f"PSF_SIZE        {SIZE},{SIZE}")
    config.write_text(text)
    models = {}
    for engine in ("builtin", "psfex"):
        job = _job(directory, catalogue, engine, config, engine)
        summary = psfex(job)
        models[engine] = (job.output_dir / f"star_selection{NUMBER}.psf", job.output_dir / f"psfex_cat{NUMBER}.cat",
                          summary)
    return field, catalogue, config, models, directory


def _errors(model, field):
    x, y = np.meshgrid(np.linspace(1, 1024, 5), np.linspace(1, 2048, 9))
    x, y = x.ravel(), y.ravel()
    stamps = model.evaluate(x, y, size=SIZE)
    size_error, e_error = [], []
    for stamp, px, py in zip(stamps, x, y):
        ours = galsim.hsm.FindAdaptiveMom(galsim.Image(stamp))
        true = galsim.hsm.FindAdaptiveMom(galsim.Image(field.image(px, py, SIZE)))
        size_error.append(ours.moments_sigma / true.moments_sigma - 1)
        e_error.append([ours.observed_shape.e1 - true.observed_shape.e1,
                        ours.observed_shape.e2 - true.observed_shape.e2])
    return np.array(size_error), np.array(e_error)


def test_builtin_matches_truth_and_psfex(ccd):
    field, _, _, models, _ = ccd
    errors = {engine: _errors(read_psf(path), field) for engine, (path, _, _) in models.items()}
    size, e = errors["builtin"]
    assert abs(size.mean()) < 0.003
    assert np.sqrt(np.mean(e**2)) < 0.005
    assert np.abs(e).max() < 0.01
    psfex_size, psfex_e = errors["psfex"]
    assert np.sqrt(np.mean(e**2)) <= 1.2 * np.sqrt(np.mean(psfex_e**2))
    # Size: 1.2 times PSFEx's bias, or 0.05% when PSFEx happens to be unbiased on this CCD.
    assert abs(size.mean()) <= max(1.2 * abs(psfex_size.mean()), 0.0005)


@pytest.mark.parametrize("engine", ["builtin", "psfex"])
def test_des_psfex_reader_agrees(ccd, engine):
    path = ccd[3][engine][0]
    model = read_psf(path)
    reader = galsim.des.DES_PSFEx(str(path))
    for x, y, dx, dy in [(100.5, 200.2, 0.2, -0.4), (700.0, 1500.0, -0.3, 0.35), (512.0, 1024.0, 0.0, 0.0)]:
        ours = model.evaluate(x, y, size=SIZE, centre=(dx, dy), clamp=False)[0]
        image = galsim.ImageD(SIZE, SIZE, scale=1.0)
        reader.getPSF(galsim.PositionD(x, y)).drawImage(image, method="no_pixel", offset=(dx, dy))
        reference = image.array / image.array.sum()
        assert np.abs(ours - reference).max() < 1e-4 * reference.max()


@pytest.mark.parametrize("engine", ["builtin", "psfex"])
def test_outputs(ccd, engine):
    _, catalogue, _, models, _ = ccd
    path, outcat, summary = models[engine]
    model = read_psf(path)
    stars, _ = read_ldac(catalogue)
    assert model.loaded == len(stars) and summary["accepted"] == model.accepted >= 0.9 * len(stars)
    assert (model.basis.shape[1:] == (SIZE, SIZE)) and model.degree == 2
    residuals, _ = read_ldac(outcat)
    assert len(residuals) == len(stars)
    for name in ("FLAGS_PSF", "NORM_PSF", "CHI2_PSF", "RESI_PSF", "DELTAX_IMAGE", "FWHM_PSF"):
        assert name in residuals.colnames
    good = residuals["FLAGS_PSF"] == 0
    # Normalisations follow the catalogue fluxes.
    ratio = np.asarray(residuals["NORM_PSF"])[good] / np.asarray(stars["FLUX_AUTO"])[good]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)


def test_too_few_stars_is_a_job_error(ccd, tmp_path):
    _, catalogue, config, _, _ = ccd
    table, header = read_ldac(catalogue)
    small = tmp_path / f"star_selection{NUMBER}.fits"
    write_ldac(small, table[:5], header)
    with pytest.raises(JobError, match=f"star_selection{NUMBER}.fits"):
        psfex(_job(tmp_path, small, "builtin", config, "few"))


@pytest.mark.parametrize("engine", ["builtin", "psfex"])
def test_catalogue_with_vignets_stored_by_rows(ccd, tmp_path, engine):
    """A catalogue keeping VIGNET for some rows only (sextractor VIGNET_ROWS): a clear error, not a bad model."""
    _, catalogue, config, _, _ = ccd
    table, header = read_ldac(catalogue)
    rows = np.arange(len(table)) % 3 != 0
    sparse = tmp_path / f"star_selection{NUMBER}.fits"
    write_ldac(sparse, table, header, vignet_rows=rows, vignet_selection="every third row left out")
    with pytest.raises(JobError, match=f"star_selection{NUMBER}.fits.*VIGNET") as error:
        psfex(_job(tmp_path, sparse, engine, config, "sparse"))
    if engine == "builtin":
        assert f"{(~rows).sum()} objects" in str(error.value)


def test_option_checks_name_the_key():
    """Bad numeric options fail before any job, naming the key."""
    from shapepipe_modules.psfex.runner import validate

    assert validate({"SHAPE_CLIP": 5.0, "MIN_STARS": 10, "INTERPOLANT_ORDER": 7}) == []
    problems = validate({"SHAPE_CLIP": -1.0, "MIN_STARS": 0, "INTERPOLANT_ORDER": 7})
    assert any("SHAPE_CLIP" in p for p in problems) and any("MIN_STARS" in p for p in problems)
