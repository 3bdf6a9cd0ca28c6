"""Multi-epoch bookkeeping of tile catalogues (sextractor MAKE_POST_PROCESS) on a synthetic header store."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.errors import JobError
from shapepipe_modules.io.header_store import HeaderStore, write_header_store
from shapepipe_modules.io.ldac import read_ldac, update_ldac, write_ldac
from shapepipe_modules.sextractor.multi_epoch import (
    MultiEpochError,
    add_epochs,
    assign_ccds,
    history_exposures,
    resolve_store_path,
)
from shapepipe_modules.sextractor.runner import sextractor, validate
from test_sextractor_engine import NUMBER, make_job
from test_sextractor_sim import SKY, make_ccd, write_ccd

RA0, DEC0 = 150.0, 2.0
SCALE = 0.2 / 3600.0  # deg per pixel
NX, NY = 300, 600
CCD_SIZE = (2.0, 298.0, 1.0, 598.0)  # 0-based, bounds excluded


def ccd_header(ra, dec, rotation_deg=0.0):
    """TAN header of one NX x NY CCD centred on (ra, dec)."""
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = NX
    header["NAXIS2"] = NY
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRVAL1"] = ra
    header["CRVAL2"] = dec
    header["CRPIX1"] = (NX + 1) / 2.0
    header["CRPIX2"] = (NY + 1) / 2.0
    angle = np.radians(rotation_deg)
    header["CD1_1"] = -SCALE * np.cos(angle)
    header["CD1_2"] = SCALE * np.sin(angle)
    header["CD2_1"] = SCALE * np.sin(angle)
    header["CD2_2"] = SCALE * np.cos(angle)
    return header


def offset(ra_pixels, dec_pixels):
    """(RA, Dec) of a point offset by a number of pixels from the field centre."""
    return RA0 - ra_pixels * SCALE / np.cos(np.radians(DEC0)), DEC0 + dec_pixels * SCALE


# Exposure -> CCD centres in pixels from the field centre. Exposure 2000001
# has CCDs 0 and 1 overlapping by 100 pixels (x from -50 to +50 on both);
# 2000003 has a CCD without header (None) and a rotated CCD.
LAYOUT = {
    "2000001": [(-100, 0, 0), (100, 0, 0)],
    "2000002": [(-160, -310, 0), (150, -310, 0), (-160, 300, 0), (150, 300, 0)],
    "2000003": [(-10, 20, 0), None, (0, 610, 30.0)],
}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    headers = {}
    for exposure, ccds in LAYOUT.items():
        headers[exposure] = [None if c is None else ccd_header(*offset(c[0], c[1]), rotation_deg=c[2]) for c in ccds]
    path = tmp_path_factory.mktemp("store") / "log_exp_headers.sqlite"
    write_header_store(path, headers)
    return path


def tile_header(exposures):
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = 2000
    header["NAXIS2"] = 2000
    for exposure in exposures:
        header.add_history(f"input image {exposure}p.fits 2 extension(s)")
    header.add_history("some other processing note 1234567p.fits")
    return header


def reference_ccds(ra, dec, exposure, ccd_size):
    """Independent per-object computation: loop over objects and CCDs, pure TAN WCS."""
    xmin, xmax, ymin, ymax = ccd_size
    wcss = [None if c is None else WCS(ccd_header(*offset(c[0], c[1]), rotation_deg=c[2]))
            for c in LAYOUT[exposure]]
    out = []
    for r, d in zip(ra, dec):
        best, best_margin = -1, 0.0
        for ccd, wcs in enumerate(wcss):
            if wcs is None:
                continue
            x, y = wcs.wcs_world2pix([[r, d]], 0)[0]
            margin = min(x - xmin, xmax - x, y - ymin, ymax - y)
            if margin > best_margin:
                best, best_margin = ccd, margin
        out.append(best)
    return np.array(out)


def random_positions(rng, n):
    ra, dec = offset(rng.uniform(-450, 450, n), rng.uniform(-1000, 1000, n))
    return ra, dec


def test_assign_ccds_matches_per_object_computation(store_path):
    rng = np.random.default_rng(7)
    ra, dec = random_positions(rng, 3000)
    exposures = list(LAYOUT)
    with HeaderStore(store_path) as store:
        ccds = assign_ccds(ra, dec, store, exposures, CCD_SIZE)
    assert ccds.shape == (3, 3000) and ccds.dtype == np.int32
    for row, exposure in enumerate(exposures):
        np.testing.assert_array_equal(ccds[row], reference_ccds(ra, dec, exposure, CCD_SIZE))
    # Every CCD with a header receives objects; the missing CCD 1 of 2000003 none.
    assert set(np.unique(ccds[1])) == {-1, 0, 1, 2, 3}
    assert set(np.unique(ccds[2])) == {-1, 0, 2}
    assert 0.2 < np.mean(ccds >= 0) < 0.8


def test_object_on_two_ccds_goes_where_it_is_farthest_from_the_edges(store_path):
    # CCD 0 of 2000001 spans x in [-250, 50], CCD 1 [-50, 250] (pixels from the centre).
    ra, dec = offset(np.array([-40.0, 40.0, 5.0, -5.0, -30.0]), np.array([0.0, 0.0, 0.0, 0.0, 296.0]))
    with HeaderStore(store_path) as store:
        ccds = assign_ccds(ra, dec, store, ["2000001"], CCD_SIZE)[0]
    # x = -40: 10 px inside CCD 1, 90 px inside CCD 0 -> 0; x = +40 -> 1; near the middle
    # of the overlap the nearer x edge still decides. Close to the top edge (y = 296 of
    # +-300, 1 px inside CCD_SIZE) the y margin is smaller than both x margins, equal for
    # both CCDs up to rounding: either CCD is right, but the object is on one.
    np.testing.assert_array_equal(ccds[:4], [0, 1, 1, 0])
    assert ccds[4] in (0, 1)
    # The order of the CCDs in the store does not matter (ShapePipe kept the last one).
    reversed_path = store_path.parent / "reversed.sqlite"
    with HeaderStore(store_path) as store:
        swapped = [store.header("2000001", 1), store.header("2000001", 0)]
    write_header_store(reversed_path, {"2000001": swapped})
    with HeaderStore(reversed_path) as store:
        swapped_ccds = assign_ccds(ra, dec, store, ["2000001"], CCD_SIZE)[0]
    np.testing.assert_array_equal(swapped_ccds[:4], [1, 0, 0, 1])


def test_history_exposures_reads_input_image_cards():
    header = tile_header(["2000002", "2000001", "2000002"])
    assert history_exposures(header) == ["2000002", "2000001"]
    assert history_exposures(fits.Header()) == []


def write_tile_catalogue(path, ra, dec, exposures):
    table = Table()
    table["NUMBER"] = np.arange(1, ra.size + 1, dtype="i4")
    table["XWIN_WORLD"] = ra
    table["YWIN_WORLD"] = dec
    table["FLUX_APER"] = np.ones((ra.size, 3), dtype="f4")
    write_ldac(path, table, tile_header(exposures))


def test_add_epochs_writes_epoch_tables_and_reports_missing_exposures(store_path, tmp_path, caplog):
    rng = np.random.default_rng(8)
    ra, dec = random_positions(rng, 500)
    catalogue = tmp_path / f"sexcat{NUMBER}.fits"
    write_tile_catalogue(catalogue, ra, dec, ["2000002", "4444444", "2000001", "2000003"])
    logger = logging.getLogger("test_multiepoch")
    with caplog.at_level(logging.WARNING, logger="test_multiepoch"):
        result = add_epochs(catalogue, store_path.parent, ["XWIN_WORLD", "YWIN_WORLD"], CCD_SIZE, logger=logger)
    assert result.exposures == ["2000002", "2000001", "2000003"]
    assert result.unavailable == ["4444444"]
    assert "4444444" in caplog.text
    with fits.open(catalogue) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS", "EPOCH_0", "EPOCH_1", "EPOCH_2"]
        assert hdus[0].header["NEPOCH"] == 3 and hdus[0].header["NEXPMISS"] == 1
        assert hdus[0].header["EXPMISS"] == "4444444"
        expected_n = np.zeros(ra.size, int)
        for index, exposure in enumerate(result.exposures):
            epoch = hdus[f"EPOCH_{index}"].data
            assert hdus[f"EPOCH_{index}"].header["EXPNAME"] == exposure
            np.testing.assert_array_equal(epoch["NUMBER"], np.arange(1, ra.size + 1))
            assert set(epoch["EXP_NAME"]) == {exposure}
            assert epoch["CCD_N"].dtype.kind == "i"
            expected = reference_ccds(ra, dec, exposure, CCD_SIZE)
            np.testing.assert_array_equal(epoch["CCD_N"], expected)
            expected_n += expected >= 0
    table, header = read_ldac(catalogue)
    np.testing.assert_array_equal(table["N_EPOCH"], expected_n)
    assert table["FLUX_APER"].shape == (ra.size, 3)
    assert header["HISTORY"][0].startswith("input image 2000002p.fits")
    assert not list(tmp_path.glob("*.tmp*"))


def test_update_ldac_keeps_imhead_bytes_and_replaces_columns(tmp_path):
    rng = np.random.default_rng(9)
    ra, dec = random_positions(rng, 20)
    path = tmp_path / "cat.fits"
    write_tile_catalogue(path, ra, dec, ["2000001"])
    with fits.open(path) as hdus:
        location = hdus.fileinfo(1)["datLoc"]
        size = hdus[1].header["NAXIS1"]
    before = path.read_bytes()[location:location + size]
    assert b"\x00" not in before
    update_ldac(path, columns={"N_EPOCH": np.arange(20, dtype="i4")})
    update_ldac(path, columns={"N_EPOCH": np.full(20, 7, dtype="i4")}, primary_cards=[("NEPOCH", 1, "")])
    with fits.open(path) as hdus:
        location = hdus.fileinfo(1)["datLoc"]
        assert hdus[2].columns.names == ["NUMBER", "XWIN_WORLD", "YWIN_WORLD", "FLUX_APER", "N_EPOCH"]
        assert hdus[0].header["NEPOCH"] == 1
    assert path.read_bytes()[location:location + size] == before
    table, _ = read_ldac(path)
    assert np.all(table["N_EPOCH"] == 7)
    np.testing.assert_array_equal(table["XWIN_WORLD"], ra)
    with pytest.raises(ValueError, match="rows"):
        update_ldac(path, columns={"N_EPOCH": np.zeros(3)})


def test_bad_inputs_name_the_file(store_path, tmp_path):
    with pytest.raises(MultiEpochError, match="does not exist"):
        resolve_store_path(tmp_path)
    assert resolve_store_path(store_path) == store_path
    ra, dec = random_positions(np.random.default_rng(1), 5)
    catalogue = tmp_path / "nohistory.fits"
    write_tile_catalogue(catalogue, ra, dec, [])
    with pytest.raises(MultiEpochError, match="nohistory.fits.*HISTORY"):
        add_epochs(catalogue, store_path, ["XWIN_WORLD", "YWIN_WORLD"], CCD_SIZE)
    with pytest.raises(MultiEpochError, match="nohistory.fits.*ALPHA_J2000"):
        add_epochs(catalogue, store_path, ["ALPHA_J2000", "DELTA_J2000"], CCD_SIZE)


def test_validate_checks_post_process_options():
    from shapepipe_modules.sextractor.runner import OPTIONS

    options = {o.name: o.default for o in OPTIONS}
    options.update(MAKE_POST_PROCESS=True, LOG_WCS="", CCD_SIZE=[10.0, 5.0, 1.0, 4612.0],
                   WORLD_POSITION=["XWIN_WORLD", "NOT_A_COLUMN"])
    problems = "\n".join(validate(options))
    assert "needs LOG_WCS" in problems
    assert "CCD_SIZE" in problems
    assert "NOT_A_COLUMN" in problems
    options.update(LOG_WCS="/some/dir", CCD_SIZE=[33.0, 2080.0, 1.0, 4612.0], WORLD_POSITION=["XWIN_WORLD", "YWIN_WORLD"])
    assert validate(options) == []


def test_sextractor_job_with_post_process(store_path, tmp_path):
    """The module job on a tile image: sep extraction then the bookkeeping."""
    ccd = make_ccd(np.random.default_rng(12), nx=400, ny=400, n_stars=30, n_galaxies=30)
    ccd["header"]["CRVAL1"], ccd["header"]["CRVAL2"] = RA0, DEC0
    ccd["image"] -= SKY  # tiles are background-subtracted (BACK_TYPE MANUAL in default_tile.sex)
    for exposure in ("2000001", "2000003", "5555555"):
        ccd["header"].add_history(f"input image {exposure}p.fits 2 extension(s)")
    paths = write_ccd(ccd, tmp_path, number=NUMBER)
    job = make_job(tmp_path, paths, name="tile", DOT_SEX_FILE=str(_tile_sex()), MAKE_POST_PROCESS=True,
                   LOG_WCS=str(store_path.parent), CCD_SIZE=list(CCD_SIZE))
    summary = sextractor(job)
    assert summary["n_epochs"] == 2 and summary["n_exposures_unavailable"] == 1
    table, _ = read_ldac(job.output_dir / f"sexcat{NUMBER}.fits")
    assert len(table) > 30
    with fits.open(job.output_dir / f"sexcat{NUMBER}.fits") as hdus:
        for index, exposure in enumerate(("2000001", "2000003")):
            expected = reference_ccds(table["XWIN_WORLD"], table["YWIN_WORLD"], exposure, CCD_SIZE)
            np.testing.assert_array_equal(hdus[f"EPOCH_{index}"].data["CCD_N"], expected)
    assert np.all(table["N_EPOCH"] >= 1)
    broken = make_job(tmp_path, paths, name="broken", MAKE_POST_PROCESS=True, LOG_WCS=str(tmp_path / "nowhere"))
    with pytest.raises(JobError, match="nowhere"):
        sextractor(broken)


def _tile_sex():
    from shapepipe_modules.sextractor.runner import DATA_DIR

    return DATA_DIR / "default_tile.sex"
