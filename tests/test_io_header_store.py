"""Tests of the merge_headers header store (text headers, cached WCS, TPV/SIP)."""

import os
import sqlite3
import time

import numpy as np
import pytest
from astropy.io import fits

from shapepipe_modules.io.arrays import StoreError
from shapepipe_modules.io.header_store import HeaderStore, exposure_key, write_header_store

NX, NY = 2048, 4612
CRVAL = (255.66, 34.05)
CD = np.array([[-5.19e-5, 2.0e-7], [1.5e-7, 5.19e-5]])  # deg/pixel, ~0.187 arcsec


def base_header(ctype=("RA---TAN", "DEC--TAN"), crval=CRVAL):
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = NX
    header["NAXIS2"] = NY
    header["CTYPE1"], header["CTYPE2"] = ctype
    header["CUNIT1"] = header["CUNIT2"] = "deg"
    header["CRVAL1"], header["CRVAL2"] = crval
    header["CRPIX1"], header["CRPIX2"] = 1024.5, 2306.5
    header["CD1_1"], header["CD1_2"] = CD[0]
    header["CD2_1"], header["CD2_2"] = CD[1]
    return header


# TPV coefficients (deg units); axis 2 swaps the roles of xi and eta.
TPV = {1: {0: 1e-5, 1: 1.0, 2: 2e-4, 4: 3e-3, 5: -2e-3, 6: 1e-3, 7: 4e-2, 10: -3e-2},
       2: {0: -2e-5, 1: 1.0, 2: -1e-4, 4: -2e-3, 5: 1.5e-3, 6: 2e-3, 7: 3e-2, 10: 1e-2}}
SIP_A = {(2, 0): 2e-7, (1, 1): -1e-7, (0, 2): 3e-8, (3, 0): 1e-11}
SIP_B = {(2, 0): -1e-7, (1, 1): 2e-7, (0, 2): 1e-7, (0, 3): -2e-11}


def tpv_header():
    header = base_header(("RA---TPV", "DEC--TPV"))
    for axis, terms in TPV.items():
        for index, value in terms.items():
            header[f"PV{axis}_{index}"] = value
    return header


def sip_header():
    header = base_header(("RA---TAN-SIP", "DEC--TAN-SIP"))
    header["A_ORDER"] = header["B_ORDER"] = 3
    for (p, q), value in SIP_A.items():
        header[f"A_{p}_{q}"] = value
    for (p, q), value in SIP_B.items():
        header[f"B_{p}_{q}"] = value
    return header


def gnomonic_inverse(xi_deg, eta_deg, crval):
    """Independent TAN deprojection (standard gnomonic formulae)."""
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    ra0, dec0 = np.radians(crval)
    denominator = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denominator)
    dec = np.arctan2(eta * np.cos(dec0) + np.sin(dec0), np.hypot(xi, denominator))
    return np.degrees(ra) % 360, np.degrees(dec)


def tpv_pix2world(x, y):
    u, v = x - 1024.5, y - 2306.5
    xi, eta = CD @ np.vstack([u, v])

    def poly(a, b, terms):
        basis = {0: 1.0, 1: a, 2: b, 4: a * a, 5: a * b, 6: b * b, 7: a**3, 10: b**3}
        return sum(c * basis[i] for i, c in terms.items())

    return gnomonic_inverse(poly(xi, eta, TPV[1]), poly(eta, xi, TPV[2]), CRVAL)


def sip_pix2world(x, y):
    u, v = x - 1024.5, y - 2306.5
    du = sum(c * u**p * v**q for (p, q), c in SIP_A.items())
    dv = sum(c * u**p * v**q for (p, q), c in SIP_B.items())
    xi, eta = CD @ np.vstack([u + du, v + dv])
    return gnomonic_inverse(xi, eta, CRVAL)


GRID_X, GRID_Y = [g.ravel() for g in np.meshgrid(np.linspace(1, NX, 7), np.linspace(1, NY, 9))]


@pytest.fixture
def store_path(tmp_path):
    headers = {
        "2113737": [base_header(), tpv_header(), sip_header()],
        "-2113738": [base_header(crval=(10.0, -5.0)), None, base_header(crval=(10.1, -5.0))],
    }
    return write_header_store(tmp_path / "log_exp_headers.sqlite", headers)


@pytest.mark.parametrize("ccd, reference", [(1, tpv_pix2world), (2, sip_pix2world)])
def test_distorted_wcs_matches_independent_formula_and_round_trips(store_path, ccd, reference):
    with HeaderStore(store_path) as store:
        wcs = store.wcs("2113737", ccd)
        ra, dec = wcs.all_pix2world(GRID_X, GRID_Y, 1)
        ra_ref, dec_ref = reference(GRID_X, GRID_Y)
        # The distortion is applied (it moves corners by tenths of arcseconds) and matches.
        ra_tan, dec_tan = store.wcs("2113737", 0).all_pix2world(GRID_X, GRID_Y, 1)
        assert np.max(np.hypot((ra - ra_tan) * np.cos(np.radians(dec)), dec - dec_tan)) * 3600 > 0.1
        assert np.max(np.abs(((ra - ra_ref + 180) % 360 - 180) * np.cos(np.radians(dec)))) * 3600 < 1e-4
        assert np.max(np.abs(dec - dec_ref)) * 3600 < 1e-4
        # sky -> pixel -> sky to 1e-3 pixel.
        x, y = wcs.all_world2pix(ra, dec, 1, tolerance=1e-8, maxiter=50)
        assert np.max(np.hypot(x - GRID_X, y - GRID_Y)) < 1e-3


def test_scamp_tan_with_pv_is_read_as_tpv(tmp_path):
    header = tpv_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    write_header_store(tmp_path / "h.sqlite", {"1": [header]})
    with HeaderStore(tmp_path / "h.sqlite") as store:
        ra, dec = store.wcs("1", 0).all_pix2world(GRID_X, GRID_Y, 1)
    ra_ref, dec_ref = tpv_pix2world(GRID_X, GRID_Y)
    assert np.max(np.abs(dec - dec_ref)) * 3600 < 1e-4
    assert np.max(np.abs(ra - ra_ref) * np.cos(np.radians(dec))) * 3600 < 1e-4


def test_layout_keys_and_headers(store_path):
    with HeaderStore(store_path) as store:
        assert store.exposures() == ["2113737", "2113738"]
        assert store.ccds("2113737") == [0, 1, 2]
        assert store.ccds(2113738) == [0, 2]
        assert "2113737" in store and "-2113737" in store and "999" not in store
        header = store.header("2113737", 1)
        assert header["CTYPE1"] == "RA---TPV" and header["PV1_7"] == pytest.approx(4e-2)
        assert store.header_text("2113738", 2) == base_header(crval=(10.1, -5.0)).tostring()
        with pytest.raises(KeyError, match="no CCD 1"):
            store.header("2113738", 1)
        with pytest.raises(KeyError, match="999"):
            store.header("999", 0)
    # The stored values are text (JSON), never pickles.
    with sqlite3.connect(store_path) as connection:
        rows = connection.execute("SELECT key, value FROM headers").fetchall()
    assert {row[0] for row in rows} == {"2113737", "2113738"}
    assert all(bytes(row[1]).startswith(b'{"ccds": ["') for row in rows)


def test_wcs_is_cached_per_process(store_path):
    with HeaderStore(store_path) as first, HeaderStore(store_path) as second:
        assert first.wcs("2113737", 1) is second.wcs("2113737", 1)
        assert first.wcs("2113737", 1) is not first.wcs("2113737", 2)
        start = time.perf_counter()
        for _ in range(2000):
            first.wcs("2113737", 1)
        assert (time.perf_counter() - start) / 2000 < 2e-4  # seconds per cached look-up


def test_write_is_atomic_and_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "h.sqlite"
    with pytest.raises(RuntimeError):
        with HeaderStore(path, mode="w") as store:
            store.write_exposure("1", [base_header()])
            assert not path.exists()
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    write_header_store(path, {"1": [base_header()]})
    with pytest.raises(RuntimeError):
        with HeaderStore(path, mode="w") as store:
            store.write_exposure("2", [base_header()])
            raise RuntimeError("boom")
    with HeaderStore(path) as store:  # the previous store is untouched
        assert store.exposures() == ["1"]
    assert os.listdir(tmp_path) == ["h.sqlite"]


def test_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="missing.sqlite"):
        HeaderStore(tmp_path / "missing.sqlite")
    with pytest.raises(StoreError, match="read-only"):
        write_header_store(tmp_path / "h.sqlite", {"1": [base_header()]})
        with HeaderStore(tmp_path / "h.sqlite") as store:
            store.write_exposure("2", [base_header()])
    # A ShapePipe-style pickled store is reported, not unpickled.
    from sqlitedict import SqliteDict

    with SqliteDict(str(tmp_path / "pickled.sqlite"), tablename="headers") as legacy:
        legacy["5"] = [{"header": "x"}]
        legacy.commit()
    with HeaderStore(tmp_path / "pickled.sqlite") as store:
        with pytest.raises(StoreError, match="pickled.sqlite.*ShapePipe"):
            store.header("5", 0)
    assert exposure_key(" -2113737 ") == "2113737"
