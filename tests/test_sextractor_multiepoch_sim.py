"""Multi-epoch bookkeeping on a simulated tile, against the simulator's per-exposure truth."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe_modules.io.header_store import write_header_store
from shapepipe_modules.io.ldac import read_ldac
from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor
from test_sextractor_engine import NUMBER, make_job

simulate_module = pytest.importorskip("shapepipe_modules.simulate")

EDGE = 1.0  # pixels: objects this close to a CCD edge are not compared


@pytest.fixture(scope="module")
def simulated_tile(tmp_path_factory):
    from shapepipe_modules.cfis import parse_exposure_name

    out = tmp_path_factory.mktemp("sim")
    simulate_module.simulate(preset="tiny", output_dir=out)
    headers, shapes = {}, {}
    for path in sorted((out / "exposures").glob("*p.fits")):
        with fits.open(path) as hdus:
            headers[parse_exposure_name(path.name)] = [hdu.header.copy() for hdu in hdus[1:]]
            shapes = {(hdu.header["NAXIS1"], hdu.header["NAXIS2"]) for hdu in hdus[1:]}
    assert len(shapes) == 1
    nx, ny = shapes.pop()
    store = write_header_store(out / "log_exp_headers.sqlite", headers)
    tile = sorted((out / "tiles").glob("CFIS.*.r.fits"))[0]
    weight = sorted((out / "tiles").glob("CFIS.*.r.weight.fits.fz"))[0]
    ccd_size = [-0.5, nx - 0.5, -0.5, ny - 0.5]  # the whole CCD, 0-based pixel edges
    job = make_job(out, [tile, weight], name="tile", DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"),
                   FLAG_IMAGE=False, MAKE_POST_PROCESS=True, LOG_WCS=str(store), CCD_SIZE=ccd_size)
    summary = sextractor(job)
    return out, headers, (nx, ny), job, summary


def test_epochs_agree_with_the_exposure_truth(simulated_tile):
    out, headers, (nx, ny), job, summary = simulated_tile
    exposures = list(headers)
    assert summary["n_epochs"] == len(exposures) and summary["n_exposures_unavailable"] == 0
    catalogue = job.output_dir / f"sexcat{NUMBER}.fits"
    table, _ = read_ldac(catalogue)
    tile_truth = Table.read(next((out / "truth").glob("truth_tile-*.fits")))
    # Match detections to the truth on the sky (small field: flat-sky distances).
    cos_dec = np.cos(np.radians(np.median(tile_truth["dec"])))
    dx = (table["XWIN_WORLD"][:, None] - tile_truth["ra"][None, :]) * cos_dec
    dy = table["YWIN_WORLD"][:, None] - tile_truth["dec"][None, :]
    distance = np.hypot(dx, dy) * 3600.0
    nearest = np.argmin(distance, axis=1)
    matched = distance[np.arange(len(table)), nearest] < 0.3
    assert matched.sum() > 100
    ids = np.asarray(tile_truth["id"])[nearest[matched]]
    ra = np.asarray(tile_truth["ra"])[nearest[matched]]
    dec = np.asarray(tile_truth["dec"])[nearest[matched]]

    comparable = np.ones(ids.size, bool)
    expected = np.full((len(exposures), ids.size), -1)
    with fits.open(catalogue) as hdus:
        found = np.array([hdus[f"EPOCH_{k}"].data["CCD_N"][matched] for k in range(len(exposures))])
        names = [hdus[f"EPOCH_{k}"].data["EXP_NAME"][0] for k in range(len(exposures))]
    for k, exposure in enumerate(names):
        truth = Table.read(out / "truth" / f"truth_exp-{exposure}.fits")
        # The simulator puts an object on a CCD when its 1-based centre is in [0.5, n + 0.5).
        row = {int(i): r for r, i in enumerate(truth["id"])}
        for j, identifier in enumerate(ids):
            if identifier in row:
                expected[k, j] = truth["ccd"][row[identifier]]
        # Objects near any CCD edge (on it or just off it) are left out: a
        # measured position may fall on either side.
        for ccd, header in enumerate(headers[exposure]):
            x, y = WCS(header).all_world2pix(ra, dec, 0)
            margin = np.min([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y], axis=0)
            comparable &= np.abs(margin) > EDGE
    assert comparable.sum() > 0.8 * ids.size
    np.testing.assert_array_equal(found[:, comparable], expected[:, comparable])
    n_epoch = np.asarray(table["N_EPOCH"])[matched]
    np.testing.assert_array_equal(n_epoch[comparable], (expected[:, comparable] >= 0).sum(axis=0))
    # Both single- and double-epoch objects (CCD gaps, dithers) are compared.
    assert {1, 2} <= set(n_epoch[comparable].tolist())
    # The tile truth counts the exposures covering each object's pixel.
    np.testing.assert_array_equal(n_epoch[comparable],
                                  np.asarray(tile_truth["n_exposures"])[nearest[matched]][comparable])
    # Every CCD of every exposure holds objects of the tile.
    for k in range(len(exposures)):
        assert set(np.unique(found[k])) >= set(range(len(headers[names[k]])))
