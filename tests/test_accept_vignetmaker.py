"""Acceptance (issue 8, vignetmaker MULTI-EPOCH) on the simulated ``tiny`` survey.

Inputs built by the real modules: split_exp and merge_headers on the
exposures, sextractor (sep) on the tile with MAKE_POST_PROCESS (EPOCH_i
tables). Then vignetmaker MULTI-EPOCH cuts image, weight and flag stamps.

Checks against the truth (``truth_exp-*.fits``):

- stamp centres: run on a copy of the tile catalogue whose positions are
  the truth positions of the matched objects, every stamp's centre (the
  stored ``X_CCD, Y_CCD`` and the stamp geometry ``CENTRE_COL, CENTRE_ROW``)
  lies within 0.05 pixel of the object's truth position on that exposure;
  with the measured positions, the offsets are the tile catalogue's
  position errors (reported, and checked for bright stars);
- stamps fully inside a CCD equal the CCD's pixels exactly;
- the epochs of every object are the exposures and CCDs on which the truth
  places it (objects within 1 pixel of a CCD edge left out: a measured
  position may fall on either side).
"""

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from conftest import ccd_shape, run_module

STAMP_SIZE = 51
EDGE = 1.0
MATCH_ARCSEC = 0.3


def match_to_truth(catalogue, tile_truth):
    """Row of the tile truth nearest to each catalogue object (-1 beyond 0.3")."""
    from scipy.spatial import cKDTree

    from shapepipe_modules.io.ldac import read_ldac

    table = read_ldac(catalogue)[0]
    cos_dec = np.cos(np.radians(np.median(tile_truth["dec"])))
    tree = cKDTree(np.c_[np.asarray(tile_truth["ra"]) * cos_dec, tile_truth["dec"]])
    distance, index = tree.query(np.c_[np.asarray(table["XWIN_WORLD"]) * cos_dec, table["YWIN_WORLD"]])
    return table, np.where(distance * 3600.0 < MATCH_ARCSEC, index, -1)


def with_truth_positions(catalogue, tile_truth, output_path):
    """Copy of a tile catalogue whose XWIN_WORLD, YWIN_WORLD are the truth positions of matched objects."""
    _, match = match_to_truth(catalogue, tile_truth)
    with fits.open(catalogue) as hdus:
        objects = hdus["LDAC_OBJECTS"].data
        found = match >= 0
        objects["XWIN_WORLD"][found] = np.asarray(tile_truth["ra"])[match[found]]
        objects["YWIN_WORLD"][found] = np.asarray(tile_truth["dec"])[match[found]]
        hdus.writeto(output_path, overwrite=True)
    return Path(output_path)


def run_multi_epoch(catalogue, ccd_dir, store, output_dir, number):
    """vignetmaker MULTI-EPOCH (image, weight, flag); returns the store paths by kind."""
    from shapepipe_modules.vignetmaker.runner import vignetmaker

    summary = run_module(vignetmaker, [catalogue], output_dir, number, MODE="MULTI-EPOCH", COORD="SPHE",
                         POSITION_PARAMS=["XWIN_WORLD", "YWIN_WORLD"], STAMP_SIZE=STAMP_SIZE,
                         ME_IMAGE_DIR=[str(ccd_dir)], ME_IMAGE_PATTERN=["image", "weight", "flag"],
                         ME_LOG_WCS=str(store))
    stores = {kind: Path(output_dir) / f"{kind}_vignet{number}.sqlite" for kind in ("image", "weight", "flag")}
    return stores, summary


def tile_truth_path(sim_dir, catalogue):
    """The tile truth file of a tile catalogue ``sexcat-XXX-YYY.fits``."""
    number = Path(catalogue).name[len("sexcat"):].split(".")[0]
    return Path(sim_dir) / "truth" / f"truth_tile{number}.fits"


def check_stamps(sim_dir, catalogue, stores, header_store, truth_catalogue=None):
    """Compare the stamps of every truth-matched object with the truth.

    Returns
    -------
    dict
        ``n_objects`` (matched), ``n_stamps`` (their epochs), ``n_inside``
        (stamps fully on the CCD), ``offset`` (array of stamp-centre minus
        truth distances, pixels, stamps fully inside), ``geometry_offset``
        (largest difference between the stamp geometry's centre and
        X_CCD, Y_CCD), ``pixel_mismatch`` (inside stamps differing from the
        CCD pixels, any kind), ``n_epoch_checked``, ``epoch_mismatch``
        (objects whose epochs differ from the truth), ``snr`` (SNR_WIN of
        the object of each inside stamp).
    """
    from shapepipe_modules.io.header_store import HeaderStore
    from shapepipe_modules.io.stamp_store import StampStore, split_epoch_key

    sim_dir = Path(sim_dir)
    nx, ny = ccd_shape(sim_dir)
    tile_truth = Table.read(tile_truth_path(sim_dir, truth_catalogue or catalogue))
    table, match = match_to_truth(catalogue, tile_truth)
    exposures = (sim_dir / "exposure_list.txt").read_text().split()
    truth_exp = {}
    for exposure in exposures:
        truth = Table.read(sim_dir / "truth" / f"truth_exp-{exposure}.fits")
        for row in truth:
            truth_exp.setdefault(int(row["id"]), {})[(exposure, int(row["ccd"]))] = (float(row["x"]), float(row["y"]))
    half = STAMP_SIZE // 2
    result = {"n_objects": 0, "n_stamps": 0, "n_inside": 0, "offset": [], "snr": [], "geometry_offset": 0.0,
              "pixel_mismatch": 0, "n_epoch_checked": 0, "epoch_mismatch": 0}
    ccd_cache = {}

    def ccd_pixels(kind, exposure, ccd):
        key = (kind, exposure, ccd)
        if key not in ccd_cache:
            ccd_cache[key] = fits.getdata(Path(stores["dir"]) / f"{kind}-{exposure}-{ccd}.fits")
        return ccd_cache[key]

    opened = {kind: StampStore(path) for kind, path in stores.items() if kind != "dir"}
    headers = HeaderStore(header_store)
    wcs = {(e, c): headers.wcs(e, c) for e in exposures for c in headers.ccds(e)}
    try:
        for row in np.flatnonzero(match >= 0):
            identifier = int(table["NUMBER"][row])
            truth_id = int(tile_truth["id"][match[row]])
            truth_epochs = truth_exp.get(truth_id, {})
            records = {kind: store.get(identifier) for kind, store in opened.items()}
            image_record = records["image"]
            result["n_objects"] += 1
            stored = {(e, c) for e, c in map(split_epoch_key, image_record)}
            # Epochs: compared unless the object is within EDGE of a CCD edge somewhere.
            ra, dec = float(tile_truth["ra"][match[row]]), float(tile_truth["dec"][match[row]])
            near_edge = False
            for world in wcs.values():
                x, y = world.all_world2pix([[ra, dec]], 1)[0]
                margin = min(x - 0.5, nx + 0.5 - x, y - 0.5, ny + 0.5 - y)
                near_edge |= abs(margin) <= EDGE
            if not near_edge:
                result["n_epoch_checked"] += 1
                result["epoch_mismatch"] += stored != set(truth_epochs)
            for key, epoch in image_record.items():
                exposure, ccd = split_epoch_key(key)
                result["n_stamps"] += 1
                if (exposure, ccd) not in truth_epochs or epoch["MISSING_FRACTION"] > 0:
                    continue
                result["n_inside"] += 1
                x_true, y_true = truth_epochs[(exposure, ccd)]
                x_ccd, y_ccd = float(epoch["X_CCD"]), float(epoch["Y_CCD"])
                result["offset"].append(np.hypot(x_ccd - x_true, y_ccd - y_true))
                result["snr"].append(float(table["SNR_WIN"][row]))
                # The stamp's own geometry: its first pixel and the centre inside it.
                ix = int(np.floor(x_ccd - 0.5))
                iy = int(np.floor(y_ccd - 0.5))
                centre_x = ix - half + float(epoch["CENTRE_COL"]) + 1.0
                centre_y = iy - half + float(epoch["CENTRE_ROW"]) + 1.0
                result["geometry_offset"] = max(result["geometry_offset"], abs(centre_x - x_ccd),
                                                abs(centre_y - y_ccd))
                for kind, record in records.items():
                    stamp = record[key]["VIGNET"]
                    expected = ccd_pixels(kind, exposure, ccd)[iy - half:iy + half + 1, ix - half:ix + half + 1]
                    result["pixel_mismatch"] += not np.array_equal(stamp, expected)
    finally:
        for store in opened.values():
            store.close()
        headers.close()
    result["offset"] = np.array(result["offset"])
    result["snr"] = np.array(result["snr"])
    return result


def measure_multi_epoch(sim_dir, catalogue, ccd_dir, header_store, work_dir):
    """Run vignetmaker MULTI-EPOCH on the truth-position copy and on the measured catalogue; both checks."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tile_truth = Table.read(tile_truth_path(sim_dir, catalogue))
    number = Path(catalogue).name[len("sexcat"):-len(".fits")]
    results = {}
    inputs = {"truth positions": with_truth_positions(catalogue, tile_truth, work_dir / f"truthpos{number}.fits"),
              "measured positions": Path(catalogue)}
    for name, path in inputs.items():
        stores, summary = run_multi_epoch(path, ccd_dir, header_store, work_dir / name.replace(" ", "_"), number)
        stores["dir"] = ccd_dir
        results[name] = check_stamps(sim_dir, path, stores, header_store, truth_catalogue=catalogue)
        results[name]["summary"] = summary
    return results


def multi_epoch_table(results) -> str:
    """Text summary of :func:`measure_multi_epoch`."""
    lines = ["positions            objects  stamps  inside  |d| median   |d| p99   |d| max  SNR>100 max  "
             "pixels!=  epochs checked/wrong"]
    for name, r in results.items():
        d = r["offset"]
        bright = d[r["snr"] > 100]
        lines.append(f"{name:19s}  {r['n_objects']:7d}  {r['n_stamps']:6d}  {r['n_inside']:6d}  "
                     f"{np.median(d):10.4f}  {np.percentile(d, 99):8.4f}  {d.max():8.4f}  "
                     f"{bright.max() if bright.size else np.nan:11.4f}  {r['pixel_mismatch']:8d}  "
                     f"{r['n_epoch_checked']:7d}/{r['epoch_mismatch']}")
    return "\n".join(lines)


def test_multi_epoch_stamps_against_truth(tiny_sim, tiny_split, tiny_tile_catalogue, tmp_path):
    ccds, store = tiny_split
    ccd_dir = next(iter(ccds.values()))["image"].parent
    results = measure_multi_epoch(tiny_sim, tiny_tile_catalogue, ccd_dir, store, tmp_path)
    print("\n" + multi_epoch_table(results))
    exact = results["truth positions"]
    assert exact["n_objects"] > 300 and exact["n_inside"] > 400
    assert exact["offset"].max() < 0.05
    assert exact["geometry_offset"] < 1e-6
    assert exact["pixel_mismatch"] == 0
    assert exact["n_epoch_checked"] > 0.9 * exact["n_objects"] and exact["epoch_mismatch"] == 0
    measured = results["measured positions"]
    assert measured["pixel_mismatch"] == 0 and measured["epoch_mismatch"] == 0
    # Measured tile positions of bright stars are good to a few hundredths of a pixel.
    bright = measured["offset"][measured["snr"] > 100]
    assert bright.size > 50 and np.percentile(bright, 90) < 0.05
