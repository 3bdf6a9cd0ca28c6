"""World-coordinate shape parameters (A_WORLD, B_WORLD, THETA_J2000, ...) of the sep engine:
against spherical geometry computed independently (astropy SkyCoord), and against the
SExtractor binary on a CCD with a rotated, sheared WCS, with ShapePipe v1.4's default.param."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.columns import COLUMNS
from shapepipe_modules.sextractor.config_files import read_dot_param
from shapepipe_modules.sextractor.runner import sextractor
from shapepipe_modules.sextractor.world_shapes import local_jacobian, world_ellipse, world_moments
from test_sextractor_engine import NUMBER, make_job
from test_sextractor_sim import PIXEL_SCALE, make_ccd, write_ccd

V14_PARAM = Path(__file__).resolve().parent / "data" / "shapepipe_configs" / "v1.4" / "cfis" / "default.param"


def rotated_header(angle_deg=30.0, skew=1.02, dec=45.0):
    scale = PIXEL_SCALE / 3600.0
    t = np.radians(angle_deg)
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=dec, CRPIX1=320.0, CRPIX2=320.0,
                  CD1_1=-scale * np.cos(t) * skew, CD1_2=scale * np.sin(t), CD2_1=scale * np.sin(t),
                  CD2_2=scale * np.cos(t), EQUINOX=2000.0, RADESYS="ICRS")
    return header


@pytest.mark.parametrize("axis", ["x", "y"])
def test_world_ellipse_of_an_axis_aligned_object_matches_sky_geometry(axis):
    """An object elongated along image x (or y) under a rotated WCS (conformal: rotation and
    scale): its major axis is the sky direction of that pixel axis; A_WORLD and B_WORLD are the
    sky lengths of the axes (SkyCoord separations)."""
    wcs = WCS(rotated_header(angle_deg=37.0, skew=1.0, dec=60.0))
    x, y = np.array([100.0, 500.0]), np.array([80.0, 410.0])
    sig_major, sig_minor = 3.0, 1.2
    x2, y2 = (sig_major**2, sig_minor**2) if axis == "x" else (sig_minor**2, sig_major**2)
    a, b, _, theta_sky = world_ellipse(*world_moments(np.full(2, x2), np.full(2, y2), np.zeros(2),
                                                      local_jacobian(wcs, x, y)))
    origin = SkyCoord(*wcs.all_pix2world(x, y, 1), unit="deg")
    along = SkyCoord(*wcs.all_pix2world(x + (axis == "x"), y + (axis == "y"), 1), unit="deg")
    across = SkyCoord(*wcs.all_pix2world(x + (axis == "y"), y + (axis == "x"), 1), unit="deg")
    pa = origin.position_angle(along).deg  # east of north
    expected_theta = (pa + 90.0) % 180.0 - 90.0
    np.testing.assert_allclose(((theta_sky - expected_theta) + 90.0) % 180.0 - 90.0, 0.0, atol=1e-3)
    np.testing.assert_allclose(a, sig_major * origin.separation(along).deg, rtol=1e-4)
    np.testing.assert_allclose(b, sig_minor * origin.separation(across).deg, rtol=1e-4)


def test_v14_default_param_is_accepted_by_the_sep_engine():
    parameters = read_dot_param(V14_PARAM)
    names = {p.name for p in parameters}
    assert {"A_WORLD", "B_WORLD", "THETA_J2000"} <= names
    assert not [p.name for p in parameters if p.name not in COLUMNS]


@pytest.fixture(scope="module")
def rotated_ccd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rotated")
    ccd = make_ccd(np.random.default_rng(5), nx=640, ny=640, n_stars=40, n_galaxies=200)
    ccd["header"].update(rotated_header())
    param = directory / "v14_plus.param"
    param.write_text(V14_PARAM.read_text() + "A_IMAGE\nB_IMAGE\nTHETA_IMAGE\nTHETA_WORLD\nX2_WORLD\nY2_WORLD\n"
                     "XY_WORLD\n")
    return directory, write_ccd(ccd, directory), param


def _run(directory, paths, param, engine, tag):
    job = make_job(directory, paths, name=f"{engine}_{tag}", ENGINE=engine, DOT_PARAM_FILE=str(param))
    sextractor(job)
    return read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")[0]


def test_sep_writes_every_v14_column_with_consistent_world_shapes(rotated_ccd):
    directory, paths, param = rotated_ccd
    cat = _run(directory, paths, param, "sep", "columns")
    for parameter in read_dot_param(V14_PARAM):
        assert parameter.name in cat.colnames
    good = (cat["FLAGS"] == 0) & (cat["SNR_WIN"] > 10)
    assert good.sum() > 30
    # Rotation + 2 % skew: A_WORLD / A_IMAGE is the pixel scale to within the skew (and SExtractor's
    # single cross term in X2_WORLD, followed here, which moves it by a few per cent for tilted objects).
    ratio = np.asarray(cat["A_WORLD"][good]) * 3600.0 / np.asarray(cat["A_IMAGE"][good]) / PIXEL_SCALE
    assert abs(np.median(ratio) - 1.0) < 0.02 and np.all(np.abs(ratio - 1.0) < 0.1)
    assert np.all(np.abs(cat["THETA_J2000"]) <= 90.0) and np.all(cat["B_WORLD"] <= cat["A_WORLD"])


@pytest.mark.external
@pytest.mark.skipif(shutil.which("source-extractor") is None and shutil.which("sex") is None,
                    reason="SExtractor binary not installed")
def test_world_shapes_equal_the_sextractor_binary(rotated_ccd):
    directory, paths, param = rotated_ccd
    sep_cat, sex_cat = (_run(directory, paths, param, engine, "binary") for engine in ("sep", "sextractor"))
    distance, index = cKDTree(np.c_[sep_cat["X_IMAGE"], sep_cat["Y_IMAGE"]]).query(
        np.c_[sex_cat["X_IMAGE"], sex_cat["Y_IMAGE"]])
    # Objects both engines measure alike (same position and image moments).
    same = (distance < 0.01) & (sex_cat["FLAGS"] == 0)
    same &= np.isclose(np.asarray(sep_cat["A_IMAGE"])[index], sex_cat["A_IMAGE"], rtol=1e-5)
    assert same.sum() > 30
    mine, theirs = sep_cat[index[same]], sex_cat[same]
    for name in ("A_WORLD", "B_WORLD", "X2_WORLD", "Y2_WORLD", "XY_WORLD"):
        np.testing.assert_allclose(np.asarray(mine[name], float), np.asarray(theirs[name], float), rtol=1e-4,
                                   atol=1e-14, err_msg=name)
    for name in ("THETA_WORLD", "THETA_J2000"):
        difference = (np.asarray(mine[name], float) - np.asarray(theirs[name], float) + 90.0) % 180.0 - 90.0
        assert np.max(np.abs(difference)) < 0.01, name
