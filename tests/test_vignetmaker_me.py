"""vignetmaker MULTI-EPOCH and CLASSIC on synthetic CCDs, header store and tile catalogue."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.errors import JobError
from shapepipe.job import Job
from shapepipe_modules.io.header_store import write_header_store
from shapepipe_modules.io.ldac import read_ldac, write_ldac
from shapepipe_modules.io.stamp_store import StampStore, split_epoch_key
from shapepipe_modules.vignetmaker.multi_epoch import OFF_CCD_FLAG, make_multi_epoch_stamps, make_sources
from shapepipe_modules.vignetmaker.runner import OPTIONS, validate, vignetmaker
from test_vignetmaker_stamps import sip_header

NX, NY, GAP = 300, 500, 25
EXPOSURES = {"2100001": (0.0, 0.0, 0.0), "2100002": (9.0, -6.0, 0.3)}  # dither in arcsec, rotation in deg
RA0, DEC0 = 150.0, 2.0
SIZE = 21
PATTERNS = ["image", "weight", "flag", "background"]


def ccd_header(exposure, ccd):
    dra, ddec, rot = EXPOSURES[exposure]
    header = sip_header(NX, NY, RA0 + dra / 3600 / np.cos(np.deg2rad(DEC0)), DEC0 + ddec / 3600, rotation_deg=rot)
    # CCD 0 on the left, CCD 1 on the right of the tangent point, GAP pixels apart.
    header["CRPIX1"] = (NX + GAP / 2) if ccd == 0 else -GAP / 2
    header["CRPIX2"] = NY / 2
    return header


def true_epochs(ra, dec):
    """Truth: (exposure, ccd, x, y) of the CCDs whose footprint contains each position."""
    found = [[] for _ in ra]
    for exposure in EXPOSURES:
        for ccd in (0, 1):
            x, y = WCS(ccd_header(exposure, ccd)).all_world2pix(ra, dec, 1)
            inside = (x >= 0.5) & (x < NX + 0.5) & (y >= 0.5) & (y < NY + 0.5)
            for k in np.flatnonzero(inside):
                found[k].append((exposure, ccd, x[k], y[k]))
    return found


def build_tile(folder, n_objects=120, seed=5):
    """Write CCD files, the header store and the tile catalogue; return truth."""
    rng = np.random.default_rng(seed)
    ccd_dir = folder / "ccds"
    ccd_dir.mkdir()
    for exposure in EXPOSURES:
        for ccd in (0, 1):
            header = ccd_header(exposure, ccd)
            image = rng.normal(100, 10, (NY, NX)).astype(np.float32)
            weight = rng.uniform(0.5, 2.0, (NY, NX)).astype(np.float32)
            flag = np.zeros((NY, NX), np.int16)
            flag[:, 40] = 1
            flag[200:210, 100:110] = 4
            background = rng.normal(100, 0.1, (NY, NX)).astype(np.float32)
            for name, data in zip(PATTERNS, (image, weight, flag, background)):
                fits.PrimaryHDU(data, header).writeto(ccd_dir / f"{name}-{exposure}-{ccd}.fits")
    store = folder / "log_exp_headers.sqlite"
    write_header_store(store, {e: [ccd_header(e, 0), ccd_header(e, 1)] for e in EXPOSURES})

    # Positions drawn on exposure 1's CCDs (plus margins), some off every CCD.
    wcs0 = WCS(ccd_header("2100001", 0))
    x = rng.uniform(-30, 2 * NX + GAP + 30, n_objects)
    y = rng.uniform(-30, NY + 30, n_objects)
    x[:4] = [1.2, 5.0, NX - 2.0, 2 * NX + GAP - 3.0]  # stamps crossing CCD edges
    y[:4] = [250.0, 3.0, NY - 1.0, 100.0]
    ra, dec = wcs0.all_pix2world(x, y, 1)
    truth = true_epochs(ra, dec)
    ids = np.arange(1, n_objects + 1)
    objects = Table({"NUMBER": ids.astype(np.int32), "XWIN_WORLD": ra, "YWIN_WORLD": dec,
                     "N_EPOCH": np.array([len({e for e, *_ in t}) for t in truth], np.int32)})
    epoch_hdus = []
    for i, exposure in enumerate(EXPOSURES):
        ccd = np.full(n_objects, -1, np.int32)
        for k, t in enumerate(truth):
            for e, c, *_ in t:
                if e == exposure:
                    ccd[k] = c
        hdu = fits.BinTableHDU(Table({"NUMBER": ids.astype(np.int32),
                                      "EXP_NAME": np.array([exposure] * n_objects),
                                      "CCD_N": ccd}))
        hdu.name = f"EPOCH_{i}"
        epoch_hdus.append(hdu)
    catalogue = folder / "sexcat-244-252.fits"
    write_ldac(catalogue, objects, wcs0.to_header(relax=True), extra_hdus=epoch_hdus)
    return {"catalogue": catalogue, "store": store, "ccd_dir": ccd_dir, "ids": ids, "ra": ra, "dec": dec,
            "truth": truth}


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    return build_tile(tmp_path_factory.mktemp("tile"))


def run_me(tile, out, logger=None):
    sources = make_sources([tile["ccd_dir"]], PATTERNS)
    return make_multi_epoch_stamps(tile["catalogue"], tile["store"], sources, out, "-244-252", SIZE,
                                   logger=logger)


def open_stores(out):
    return {p: StampStore(out / f"{p}_vignet-244-252.sqlite") for p in PATTERNS}


def test_multi_epoch_against_truth(tile, tmp_path):
    summary = run_me(tile, tmp_path)
    half = SIZE // 2
    stores = open_stores(tmp_path)
    ccd_data = {}
    for p in PATTERNS:
        for e in EXPOSURES:
            for c in (0, 1):
                ccd_data[p, e, c] = fits.getdata(tile["ccd_dir"] / f"{p}-{e}-{c}.fits")
    n_inside = n_edge = 0
    for k, object_id in enumerate(tile["ids"]):
        truth = {f"{e}-{c}": (x, y) for e, c, x, y in tile["truth"][k]}
        record = stores["image"].get(object_id)
        assert set(record) == set(truth), object_id
        if not truth:
            assert record.reason and "no exposure" in record.reason
            continue
        for key, (x_true, y_true) in truth.items():
            exposure, ccd = split_epoch_key(key)
            epoch = record[key]
            centre_x = np.floor(x_true - 0.5) + epoch["CENTRE_COL"] - half + 1
            centre_y = np.floor(y_true - 0.5) + epoch["CENTRE_ROW"] - half + 1
            # The stamp's centre (central pixel + stored offset) is the true position.
            assert abs(centre_x - x_true) < 0.05 and abs(centre_y - y_true) < 0.05
            ix, iy = int(np.floor(x_true - 0.5)), int(np.floor(y_true - 0.5))
            inside = half <= ix < NX - half and half <= iy < NY - half
            for p in PATTERNS:
                stamp = stores[p].get(object_id)[key]["VIGNET"]
                data = ccd_data[p, exposure, ccd]
                assert stamp.dtype == data.dtype.newbyteorder("=")
                if inside:
                    np.testing.assert_array_equal(stamp, data[iy - half:iy + half + 1, ix - half:ix + half + 1])
            weight = stores["weight"].get(object_id)[key]["VIGNET"]
            flag = stores["flag"].get(object_id)[key]["VIGNET"]
            if inside:
                n_inside += 1
                assert epoch["MISSING_FRACTION"] == 0
            else:
                n_edge += 1
                off = (flag & OFF_CCD_FLAG) != 0
                assert off.any()
                assert np.all(weight[off] == 0) and np.all(epoch["VIGNET"][off] == 0)
                assert epoch["MISSING_FRACTION"] == pytest.approx(off.mean())
            masked = (flag != 0) | (weight <= 0)
            assert epoch["MASKED_FRACTION"] == pytest.approx(masked.mean())
            assert "JACOBIAN" not in stores["weight"].get(object_id)[key]
            assert epoch["JACOBIAN"].shape == (2, 2)
            assert abs(abs(np.linalg.det(epoch["JACOBIAN"])) - 0.187 ** 2) < 2e-3
    assert n_inside > 50 and n_edge >= 4
    assert summary["n_epochs"] == sum(len(t) for t in tile["truth"])
    assert summary["n_no_epoch"] == sum(1 for t in tile["truth"] if not t)
    assert summary["n_ccds"] == 4


def test_missing_ccd_file_drops_that_epoch(tile, tmp_path, caplog):
    victim = tile["ccd_dir"] / "weight-2100002-1.fits"
    hidden = victim.with_suffix(".hidden")
    victim.rename(hidden)
    try:
        with caplog.at_level(logging.ERROR):
            summary = run_me(tile, tmp_path, logging.getLogger("vignet-test"))
    finally:
        hidden.rename(victim)
    assert any(str(victim) in r.getMessage() for r in caplog.records)
    assert summary["missing_files"] and str(victim) in summary["missing_files"][0]
    stores = open_stores(tmp_path)
    lost_all = 0
    for k, object_id in enumerate(tile["ids"]):
        expected = {f"{e}-{c}" for e, c, *_ in tile["truth"][k]}
        record = stores["flag"].get(object_id)
        if expected == {"2100002-1"}:
            lost_all += 1
            assert str(victim) in record.reason
        else:
            assert set(record) == expected - {"2100002-1"}
    assert lost_all > 0


def make_job(tmp_path, inputs, **options):
    values = {option.name: option.default for option in OPTIONS}
    values.update(options)
    output = tmp_path / "output"
    output.mkdir(exist_ok=True)
    return Job(module="vignetmaker", module_run="vignetmaker", number="-244-252", inputs=list(inputs),
               output_dir=output, log_dir=tmp_path, options=values,
               logger=logging.getLogger("vignetmaker-test"), run_dir=tmp_path)


def test_runner_multi_epoch(tile, tmp_path):
    options = dict(MODE="MULTI-EPOCH", COORD="SPHE", POSITION_PARAMS=["XWIN_WORLD", "YWIN_WORLD"],
                   STAMP_SIZE=SIZE, ME_IMAGE_DIR=[str(tile["ccd_dir"])], ME_IMAGE_PATTERN=PATTERNS,
                   ME_LOG_WCS=str(tile["store"]))
    assert validate(options | {k: v for k, v in ((o.name, o.default) for o in OPTIONS) if k not in options}) == []
    job = make_job(tmp_path, [tile["catalogue"]], **options)
    result = vignetmaker(job)
    assert result["n_epochs"] == sum(len(t) for t in tile["truth"])
    assert result["bytes_per_object"] > 0
    names = sorted(p.name for p in job.output_dir.iterdir())
    assert names == sorted(f"{p}_vignet-244-252.sqlite" for p in PATTERNS)


def test_validate_rejects_bad_settings():
    base = {o.name: o.default for o in OPTIONS}
    assert any("odd" in p for p in validate(base | {"STAMP_SIZE": 50}))
    problems = validate(base | {"MODE": "MULTI-EPOCH", "COORD": "PIX"})
    assert any("COORD = SPHE" in p for p in problems)
    assert any("ME_IMAGE_PATTERN" in p for p in problems)
    assert any("ME_LOG_WCS" in p for p in problems)


@pytest.mark.parametrize("coord", ["PIX", "SPHE"])
def test_runner_classic(tile, tmp_path, coord):
    """Weight stamps of a 'tile' image from pixel or sky positions give the same stamps."""
    header = ccd_header("2100001", 0)
    weight = np.random.default_rng(2).uniform(0, 1, (NY, NX)).astype(np.float32)
    image_path = tmp_path / "CFIS_weight-244-252.fits"
    fits.PrimaryHDU(weight, header).writeto(image_path)
    x, y = WCS(header).all_world2pix(tile["ra"], tile["dec"], 1)
    table, _ = read_ldac(tile["catalogue"])
    table["XWIN_IMAGE"] = x
    table["YWIN_IMAGE"] = y
    catalogue = tmp_path / "sexcat-244-252.fits"
    write_ldac(catalogue, table, fits.Header())
    params = ["XWIN_IMAGE", "YWIN_IMAGE"] if coord == "PIX" else ["XWIN_WORLD", "YWIN_WORLD"]
    job = make_job(tmp_path, [catalogue, image_path], MODE="CLASSIC", COORD=coord, POSITION_PARAMS=params,
                   STAMP_SIZE=SIZE, PREFIX=["weight"])
    vignetmaker(job)
    out, _ = read_ldac(job.output_dir / "weight_vignet-244-252.fits")
    np.testing.assert_array_equal(out["NUMBER"], tile["ids"])
    half = SIZE // 2
    padded = np.pad(weight, SIZE)
    for k in range(len(x)):
        ix, iy = int(np.floor(x[k] - 0.5)), int(np.floor(y[k] - 0.5))
        if -half <= ix < NX + half and -half <= iy < NY + half:
            expected = padded[iy + SIZE - half:iy + SIZE + half + 1, ix + SIZE - half:ix + SIZE + half + 1]
            np.testing.assert_array_equal(out["VIGNET"][k], expected)


def test_runner_classic_masking(tmp_path):
    vignet = np.ones((3, 5, 5), np.float32)
    vignet[0, 0, 0] = -1e30
    vignet[2, 4, :] = -1e30
    catalogue = tmp_path / "sexcat-244-252.fits"
    write_ldac(catalogue, Table({"NUMBER": np.arange(1, 4), "VIGNET": vignet}), fits.Header())
    job = make_job(tmp_path, [catalogue], MASKING=True, MASK_VALUE=-5.0)
    vignetmaker(job)
    out, _ = read_ldac(job.output_dir / "cat_vignet-244-252.fits")
    assert np.sum(out["VIGNET"] == -5.0) == 6
    assert np.sum(out["VIGNET"] == 1.0) == 75 - 6


def test_missing_header_store_is_named(tile, tmp_path):
    sources = make_sources([tile["ccd_dir"]], PATTERNS)
    with pytest.raises(JobError, match="nowhere.sqlite"):
        make_multi_epoch_stamps(tile["catalogue"], tmp_path / "nowhere.sqlite", sources, tmp_path, "-1-1", SIZE)


def test_catalogue_without_epochs_is_named(tmp_path):
    catalogue = tmp_path / "sexcat-1-1.fits"
    write_ldac(catalogue, Table({"NUMBER": [1], "XWIN_WORLD": [1.0], "YWIN_WORLD": [2.0]}), fits.Header())
    sources = make_sources([tmp_path], PATTERNS)
    with pytest.raises(JobError, match="sexcat-1-1.fits.*EPOCH"):
        make_multi_epoch_stamps(catalogue, tmp_path / "x.sqlite", sources, tmp_path, "-1-1", SIZE)
