"""convert_psf_pix2world: pixel-frame HSM shapes to the sky frame, against GalSim truth.

A profile of known sky-frame shape is drawn by GalSim through a WCS
(rotation, flip, shear, scale), measured by HSM on the pixels, converted,
and compared with the shape it was given; the end-to-end script goes
through a FITS TAN header (astropy WCS) as psfinterp's catalogues do.
"""

from __future__ import annotations

import numpy as np
import pytest

from shapepipe_modules.tools.convert_psf_pix2world import shapes_pix2world


def _jacobian(scale, theta_deg, flip, g1, g2):
    """``scale * S(g) R(theta) F``: the decomposition GalSim documents for a JacobianWCS."""
    import galsim

    theta = np.deg2rad(theta_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    flip_matrix = np.array([[0.0, 1.0], [1.0, 0.0]]) if flip else np.eye(2)
    return scale * galsim.Shear(g1=g1, g2=g2).getMatrix() @ rotation @ flip_matrix


def _measure(profile, wcs, size=96, method="auto"):
    """HSM shape (g1, g2) and sigma of a profile drawn on pixels through ``wcs``."""
    moments = profile.drawImage(nx=size, ny=size, wcs=wcs, method=method).FindAdaptiveMom()
    return moments.observed_shape.g1, moments.observed_shape.g2, moments.moments_sigma


def test_galsim_truth_through_rotation_flip_and_shear():
    import galsim

    rng = np.random.default_rng(12)
    cases = []
    for flip in (False, True):
        for _ in range(4):
            jac = _jacobian(rng.uniform(0.05, 0.09), rng.uniform(-180, 180), flip, *rng.uniform(-0.08, 0.08, 2))
            truth = rng.uniform(-0.3, 0.3, 2)
            sigma = rng.uniform(0.6, 0.9)  # arcsec: 7-18 pixels, pixel response < 1e-3 on shapes
            profile = galsim.Gaussian(sigma=sigma).shear(g1=truth[0], g2=truth[1])
            measured = _measure(profile, galsim.JacobianWCS(*jac.ravel()))
            cases.append((jac, truth, sigma, measured))
    jac = np.array([c[0] for c in cases])
    pixel = np.array([c[3] for c in cases])
    e1, e2, size = shapes_pix2world(pixel[:, 0], pixel[:, 1], pixel[:, 2], jac)
    truth = np.array([c[1] for c in cases])
    # The pixel-frame shapes differ from the truth (the test is not trivial)...
    assert np.max(np.abs(pixel[:, :2] - truth)) > 0.1
    # ...the converted ones equal it.
    np.testing.assert_allclose(e1, truth[:, 0], atol=1e-3)
    np.testing.assert_allclose(e2, truth[:, 1], atol=1e-3)
    np.testing.assert_allclose(size, [c[2] for c in cases], rtol=2e-3)
    # GalSim's shear algebra on the WCS decomposition (the route ShapePipe takes, star by star) agrees.
    for (matrix, _, _, (g1, g2, _)), ours in zip(cases, zip(e1, e2)):
        scale, shear, theta, flip = galsim.JacobianWCS(*matrix.ravel()).getDecomposition()
        shape = galsim.Shear(g1=-g1 if flip else g1, g2=g2)
        shape = shear + galsim.Shear(g=shape.g, beta=shape.beta + theta)
        np.testing.assert_allclose(ours, (shape.g1, shape.g2), atol=1e-9)


def test_analytic_rotation_flip_and_frames():
    e1, e2, sigma = np.array([0.1, -0.2, 0.0]), np.array([0.05, 0.0, 0.3]), np.array([2.0, 3.0, 1.5])
    theta = np.deg2rad(25.0)
    rotation = 0.187 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    r1, r2, rs = shapes_pix2world(e1, e2, sigma, rotation)
    # A rotation by theta turns the spin-2 ellipticity by 2 theta.
    turned = (e1 + 1j * e2) * np.exp(2j * theta)
    np.testing.assert_allclose(r1, turned.real, atol=1e-12)
    np.testing.assert_allclose(r2, turned.imag, atol=1e-12)
    np.testing.assert_allclose(rs, sigma * 0.187, rtol=1e-12)
    # Swapping the axes flips e1; the east-positive frame flips e2 of the west-positive one.
    f1, f2, _ = shapes_pix2world(e1, e2, sigma, np.array([[0.0, 0.187], [0.187, 0.0]]))
    np.testing.assert_allclose([f1, f2], [-e1, e2], atol=1e-12)
    w1, w2, _ = shapes_pix2world(e1, e2, sigma, rotation, frame="radec")
    np.testing.assert_allclose([w1, w2], [r1, -r2], atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        shapes_pix2world(e1, e2, sigma, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="frame"):
        shapes_pix2world(e1, e2, sigma, rotation, frame="xy")


def _tan_header(cd, ra=150.0, dec=30.0, nx=2000, ny=4000):
    from astropy.io import fits

    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"], header["NAXIS2"] = nx, ny
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = ra, dec
    header["CRPIX1"], header["CRPIX2"] = nx / 2, ny / 2
    for (i, j), value in np.ndenumerate(cd):
        header[f"CD{i + 1}_{j + 1}"] = value
    return header


def _validation_catalogue(path, header, rng, n=6):
    """A psfinterp-like validation catalogue: HSM shapes measured on GalSim images drawn through the WCS.

    At 0.187"/pixel the pixel response would change the shapes by ~1 %
    (a measurement effect, not the conversion's): drawn without it.
    """
    import galsim
    from astropy.table import Table
    from astropy.wcs import WCS

    from shapepipe_modules.io.ldac import write_ldac

    wcs = galsim.GSFitsWCS(header=header)
    x = rng.uniform(100, header["NAXIS1"] - 100, n)
    y = rng.uniform(100, header["NAXIS2"] - 100, n)
    truth = {kind: (rng.uniform(-0.15, 0.15, (n, 2)), rng.uniform(0.6, 0.8, n)) for kind in ("PSF", "STAR")}
    columns = {"NUMBER": np.arange(1, n + 1), "X": x, "Y": y}
    columns["RA"], columns["DEC"] = WCS(header).all_pix2world(x, y, 1)
    for kind, (shape, size) in truth.items():
        measured = np.array([
            _measure(galsim.Gaussian(sigma=size[i]).shear(g1=shape[i, 0], g2=shape[i, 1]),
                     wcs.jacobian(galsim.PositionD(x[i], y[i])), method="no_pixel")
            for i in range(n)])
        columns[f"E1_{kind}_HSM"], columns[f"E2_{kind}_HSM"], columns[f"SIGMA_{kind}_HSM"] = measured.T
        columns[f"FLAG_{kind}_HSM"] = np.zeros(n, dtype=np.int16)
    columns["E1_STAR_HSM"][-1] = np.nan  # a failed star measurement stays NaN
    write_ldac(path, Table(columns), header)
    return truth


def test_script_on_validation_catalogues_and_header_store(tmp_path, capsys):
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.header_store import HeaderStore
    from shapepipe_modules.tools import convert_psf_pix2world as tool

    rng = np.random.default_rng(3)
    folder = tmp_path / "psfinterp"
    folder.mkdir()
    deg = 0.187 / 3600
    theta = np.deg2rad(70.0)
    headers = {
        # North up, east left (CFIS-like): the pixel frame is GalSim's sky frame.
        0: _tan_header(np.array([[-deg, 0.0], [0.0, deg]])),
        # Rotated by 70 degrees and east right (a flip).
        1: _tan_header(deg * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])),
    }
    truths = {ccd: _validation_catalogue(folder / f"validation_psf-2100001-{ccd}.fits", header, rng)
              for ccd, header in headers.items()}
    output = tmp_path / "conv.fits"
    assert tool.main([str(folder), "-o", str(output)]) == 0
    table = Table.read(output, hdu=1)
    assert list(table.colnames) == list(tool.OUTPUT_COLUMNS)
    assert list(table["CCD_NB"]) == [0] * 6 + [1] * 6
    assert set(table["EXP_NAME"]) == {"2100001"}
    for ccd, truth in truths.items():
        rows = np.asarray(table["CCD_NB"]) == ccd
        for kind, (shape, size) in truth.items():
            e1 = np.asarray(table[f"E1_{kind}_HSM"])[rows]
            good = np.isfinite(e1)
            assert good.sum() == (5 if kind == "STAR" else 6)
            np.testing.assert_allclose(e1[good], shape[good, 0], atol=1e-3)
            np.testing.assert_allclose(np.asarray(table[f"E2_{kind}_HSM"])[rows][good], shape[good, 1], atol=1e-3)
            np.testing.assert_allclose(np.asarray(table[f"SIGMA_{kind}_HSM"])[rows][good], size[good], rtol=2e-3)
    # A merged catalogue (merge_starcat) converted with the header store gives the same rows.
    merged = tmp_path / "full_starcat-0000000.fits"
    parts = []
    for ccd in headers:
        part = Table.read(folder / f"validation_psf-2100001-{ccd}.fits", hdu="LDAC_OBJECTS")
        part["EXP_NAME"], part["CCD_NB"] = "2100001", ccd
        parts.append(part)
    from astropy.table import vstack

    from shapepipe_modules.io.ldac import write_ldac

    write_ldac(merged, vstack(parts), fits.Header())
    store_path = tmp_path / "log_exp_headers.sqlite"
    with HeaderStore(store_path, mode="w") as store:
        store.write_exposure("2100001", [headers[0], headers[1]])
    again = tmp_path / "conv2.fits"
    assert tool.main([str(merged), "--headers", str(store_path), "-o", str(again)]) == 0
    second = Table.read(again, hdu=1)
    for name in ("E1_PSF_HSM", "E2_STAR_HSM", "SIGMA_STAR_HSM"):
        np.testing.assert_allclose(second[name], table[name], rtol=1e-9, equal_nan=True)
    # Bad input: the file is named.
    capsys.readouterr()
    assert tool.main([str(merged), "-o", str(tmp_path / "x.fits")]) == 1
    assert f"{merged}: the header in LDAC_IMHEAD has no celestial WCS" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "missing.fits")]) == 1
    assert "missing.fits does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.fits").exists()
