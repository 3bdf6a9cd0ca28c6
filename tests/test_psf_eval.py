"""PSFEx .psf files: round trip, evaluation against galsim's independent reader."""

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
import galsim.des  # noqa: E402

from shapepipe_modules.io.psfex_file import (  # noqa: E402
    PSFFileError, PSFModel, lanczos, n_terms, read_psf, write_psf,
)


def _model(sampling=1.0, size=31, degree=2):
    """A varying elliptical Gaussian written as a PSFEx basis (fitted exactly per pixel)."""
    rng = np.random.default_rng(3)
    u = rng.uniform(-0.5, 0.5, 60)
    v = rng.uniform(-0.5, 0.5, 60)
    grid = (np.arange(size) - size // 2) * sampling
    images = []
    for a, b in zip(u, v):
        profile = galsim.Gaussian(sigma=1.6 + 0.2 * a).shear(e1=0.05 * b, e2=0.03 * a)
        images.append(profile.drawImage(nx=size, ny=size, scale=sampling, method="no_pixel").array)
    terms = np.stack([u**i * v**j for j in range(degree + 1) for i in range(degree + 1 - j)], axis=1)
    basis, *_ = np.linalg.lstsq(terms, np.array(images).reshape(60, -1), rcond=None)
    return PSFModel(basis=basis.reshape(n_terms(degree), size, size), degree=degree, zero=(500.0, 1000.0),
                    scale=(900.0, 1900.0), sampling=sampling, loaded=60, accepted=58, chi2=1.1, fwhm=3.8)


def test_kernel_matches_galsim_lanczos3():
    x = np.linspace(-3.5, 3.5, 701)
    reference = np.array([galsim.Lanczos(3).xval(t) for t in x])
    assert np.abs(lanczos(x) - reference).max() < 1e-12


@pytest.mark.parametrize("sampling", [1.0, 0.8])
def test_evaluation_matches_des_psfex(tmp_path, sampling):
    path = tmp_path / "model.psf"
    write_psf(path, _model(sampling))
    model = read_psf(path)
    assert model.sampling == sampling and model.accepted == 58 and model.degree == 2
    reader = galsim.des.DES_PSFEx(str(path))
    positions = [(120.3, 300.8, 0.3, -0.2), (880.0, 1800.5, -0.45, 0.1), (500.0, 1000.0, 0.0, 0.0)]
    x, y, dx, dy = (np.array(column) for column in zip(*positions))
    stamps = model.evaluate(x, y, size=33, centre=(dx, dy))
    for stamp, (px, py, ox, oy) in zip(stamps, positions):
        image = galsim.ImageD(33, 33, scale=1.0)
        reader.getPSF(galsim.PositionD(px, py)).drawImage(image, method="no_pixel", offset=(ox, oy))
        reference = image.array / image.array.sum()
        assert np.abs(stamp - reference).max() < 1e-4 * reference.max()
        assert stamp.sum() == pytest.approx(1.0, abs=1e-12)


def test_recentring_and_vectorised_matches_single():
    model = _model()
    stamps = model.evaluate([400.0, 400.0], [900.0, 900.0], size=41, centre=([0.0, 0.37], [0.0, -0.21]))
    yy, xx = np.mgrid[:41, :41] - 20
    # The centroid moves by the requested sub-pixel shift (to Lanczos-3 accuracy).
    shift_x = (stamps[1] * xx).sum() - (stamps[0] * xx).sum()
    shift_y = (stamps[1] * yy).sum() - (stamps[0] * yy).sum()
    assert shift_x == pytest.approx(0.37, abs=0.02)
    assert shift_y == pytest.approx(-0.21, abs=0.02)
    single = model.evaluate(400.0, 900.0, size=41, centre=(0.37, -0.21))
    assert np.abs(single[0] - stamps[1]).max() < 1e-14
    # Many positions take the compiled path; it must agree with the matrix path.
    many = model.evaluate(np.full(100, 400.0), np.full(100, 900.0), size=41, centre=(0.37, -0.21))
    assert np.abs(many[-1] - stamps[1]).max() < 1e-12


def test_clamping_stops_extrapolation():
    model = _model()
    corner = model.evaluate(-5000.0, -5000.0)
    edge = model.evaluate(500.0 - 450.0, 1000.0 - 950.0)
    assert np.abs(corner - edge).max() < 1e-15
    wild = model.evaluate(-5000.0, -5000.0, clamp=False, normalise=False)
    assert np.abs(wild - corner).max() > 1e-3


def test_bad_file_is_named(tmp_path):
    path = tmp_path / "broken.psf"
    path.write_text("not fits")
    with pytest.raises(PSFFileError, match="broken.psf"):
        read_psf(path)


def test_psfex_layout_read_directly_equals_astropy(tmp_path):
    """The direct read of PSFEx's layout gives astropy's header and basis; other layouts go through astropy."""
    from astropy.io import fits

    from shapepipe_modules.io.psfex_file import _read_plain_psf_data

    path = tmp_path / "model.psf"
    model = _model(0.8)
    write_psf(path, model)
    header, basis = _read_plain_psf_data(path)
    with fits.open(path) as hdus:
        table = hdus["PSF_DATA"]
        assert np.array_equal(basis, np.asarray(table.data["PSF_MASK"][0], dtype=float))
        assert header.tostring() == table.header.tostring()
        columns = fits.ColDefs(list(table.columns) + [fits.Column(name="EXTRA", format="J", array=np.array([7]))])
        other = fits.BinTableHDU.from_columns(columns, header=table.header, name="PSF_DATA")
    fits.HDUList([fits.PrimaryHDU(), other]).writeto(tmp_path / "two_columns.psf")
    assert _read_plain_psf_data(tmp_path / "two_columns.psf") is None
    direct, general = read_psf(path), read_psf(tmp_path / "two_columns.psf")
    assert np.abs(direct.basis - model.basis).max() < 1e-6 * np.abs(model.basis).max()  # float32 on disk
    assert np.array_equal(direct.basis, general.basis)
    assert (direct.degree, direct.zero, direct.scale, direct.sampling, direct.accepted, direct.chi2) == (
        general.degree, general.zero, general.scale, general.sampling, general.accepted, general.chi2)
