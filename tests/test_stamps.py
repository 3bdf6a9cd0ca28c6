"""Stamp archives (``shapepipe_stamps``, module ``stamps``) on the tiny simulation, against the truth.

The run layout is built from the shared tiny simulation as the GOLD chain
names its files: tile image and weight (``CFIS_image-244-252.fits``...), a
tile flag with a known flagged block, the split exposure CCDs and their
header store, and Gaussian PSFEx models of known width per CCD.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe_modules.stamps.archive import Archive, batch_files
from shapepipe_modules.stamps.cli import main as stamps_main
from shapepipe_modules.stamps.extract import PADDED_FLAG
from shapepipe_modules.stamps.runner import OPTIONS, make_archive
from shapepipe_modules.stamps.targets import TargetTableError, read_status_table, read_targets

SIZE = 21
FLAG_BLOCK = (slice(100, 160), slice(200, 260))  # rows, cols of the tile flag set to 4


def _options(run, **changes):
    values = {option.name: option.default for option in OPTIONS}
    values.update(TILE_DIR=[str(run["tiles"])], EXP_DIR=[str(run["ccds"])], PSF_DIR=[str(run["psf"])],
                  HEADER_STORE=str(run["store"]), EXP_FLAG_PATTERN="flag", PSF_PATTERN="psf",
                  STAMP_SIZE=SIZE, PSF_SIZE=SIZE, QUICKLOOK=0)
    values.update(changes)
    return values


@pytest.fixture(scope="module")
def stamps_run(tiny_sim, tiny_split, tmp_path_factory):
    from shapepipe_modules.io.psfex_file import write_psf
    from shapepipe_modules.psfinterp.synthetic import gaussian_model

    ccds, store = tiny_split
    root = tmp_path_factory.mktemp("stamps_run")
    tiles = root / "tiles"
    tiles.mkdir()
    tile = (tiny_sim / "tile_list.txt").read_text().split()[0]
    number = tile.replace(".", "-")
    os.symlink(tiny_sim / "tiles" / f"CFIS.{tile}.r.fits", tiles / f"CFIS_image-{number}.fits")
    with fits.open(tiny_sim / "tiles" / f"CFIS.{tile}.r.weight.fits.fz") as hdus:
        weight = np.asarray(hdus[1].data, dtype=np.float32)
    header = fits.getheader(tiles / f"CFIS_image-{number}.fits")
    fits.PrimaryHDU(weight, header=header).writeto(tiles / f"CFIS_weight-{number}.fits")
    flag = np.zeros(weight.shape, dtype=np.int16)
    flag[FLAG_BLOCK] = 4
    fits.PrimaryHDU(flag, header=header).writeto(tiles / f"pipeline_flag-{number}.fits")
    psf = root / "psf"
    psf.mkdir()
    sigmas = {}
    first = None
    for index, (exposure, ccd) in enumerate(sorted(ccds)):
        if first is None:
            first = (exposure, ccd)
            continue  # one CCD without a PSF model
        sigmas[(exposure, ccd)] = 1.6 + 0.1 * index
        write_psf(psf / f"psf-{exposure}-{ccd}.psf", gaussian_model(sigmas[(exposure, ccd)], size=31))
    folder = next(iter(ccds.values()))["image"].parent
    return {"sim": tiny_sim, "tile": tile, "tiles": tiles, "ccds": folder, "store": store, "psf": psf,
            "sigmas": sigmas, "no_psf": first, "shape": weight.shape, "root": root}


def _targets(run, path):
    """Truth objects of the tile, 4 at the tile corners (borders), 3 off the tile; CSV with string ids."""
    truth = Table.read(run["sim"] / "truth" / f"truth_tile-{run['tile'].replace('.', '-')}.fits")
    rng = np.random.default_rng(3)
    pick = np.sort(rng.choice(len(truth), size=min(120, len(truth)), replace=False))
    ny, nx = run["shape"]
    wcs = WCS(fits.getheader(run["tiles"] / f"CFIS_image-{run['tile'].replace('.', '-')}.fits"))
    border_x = np.array([1.2, nx - 0.2, 3.7, nx / 2])
    border_y = np.array([1.3, ny - 0.3, ny / 2, 2.6])
    b_ra, b_dec = wcs.all_pix2world(border_x, border_y, 1)
    o_ra, o_dec = wcs.all_pix2world([-30.0, nx + 40.0, nx / 2], [ny / 2, -20.0, ny + 60.0], 1)
    lines = ["name,ra_deg,dec_deg,mag"]
    lines += [f"obj{i},{r!r},{d!r},{m:.2f}" for i, r, d, m in zip(truth["id"][pick], truth["ra"][pick].tolist(),
                                                                  truth["dec"][pick].tolist(), truth["mag"][pick])]
    lines += [f"border{i},{r!r},{d!r},0" for i, (r, d) in enumerate(zip(b_ra.tolist(), b_dec.tolist()))]
    lines += [f"off{i},{r!r},{d!r},0" for i, (r, d) in enumerate(zip(o_ra.tolist(), o_dec.tolist()))]
    f_ra, f_dec = wcs.all_pix2world([231.0], [131.0], 1)  # inside the flagged block of the tile flag
    lines += [f"flagged,{float(f_ra[0])!r},{float(f_dec[0])!r},0"]
    Path(path).write_text("\n".join(lines) + "\n")
    return truth[pick], (border_x, border_y)


@pytest.fixture(scope="module")
def archive(stamps_run):
    root = stamps_run["root"]
    truth, border = _targets(stamps_run, root / "targets.csv")
    options = _options(stamps_run, ID_COLUMN="name", RA_COLUMN="ra_deg", DEC_COLUMN="dec_deg", QUICKLOOK=16)
    summary = make_archive(root / "targets.csv", root / "archive", options)
    return root / "archive", truth, border, summary


# ---------------------------------------------------------------------------
# Target tables: every problem named by file, line and column, before any extraction.


@pytest.mark.parametrize("body, line, column, words", [
    ("id,ra,dec\n1,10.0,20.0\n2,abc,20.0\n", 3, "ra", "not a number"),
    ("id,ra,dec\n1,10.0,20.0\n2,11.0\n", 3, "dec", "2 fields"),
    ("id,ra,dec\n1,10.0,20.0\n\n1,11.0,21.0\n", 4, "id", "duplicates line 2"),
    ("id,ra,dec\n1,10.0,95.0\n", 2, "dec", "outside [-90, 90]"),
    ("id,ra,dec\n1,nan,20.0\n", 2, "ra", "not a finite number"),
    ("id,ra,dec\n,10.0,20.0\n", 2, "id", "empty id"),
])
def test_csv_errors_name_file_line_column(tmp_path, body, line, column, words):
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(TargetTableError) as error:
        read_targets(path)
    message = str(error.value)
    assert str(path) in message and f"line {line}" in message and f"column {column!r}" in message
    assert words in message


def test_missing_column_and_fits_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ident,ra,dec\n1,10,20\n")
    with pytest.raises(TargetTableError, match=r"t\.csv: line 1 \(header\): no column 'id'"):
        read_targets(path)
    fits_path = tmp_path / "t.fits"
    Table({"ID": [5, 6, 7], "RA": [1.0, 2.0, 3.0], "DEC": [0.0, np.inf, 1.0]}).write(fits_path)
    with pytest.raises(TargetTableError, match=r"t\.fits: row 2, column 'DEC'"):
        read_targets(fits_path)
    Table({"ID": [5, 6, 5], "RA": [1.0, 2.0, 3.0], "DEC": [0.0, 1.0, 1.0]}).write(fits_path, overwrite=True)
    with pytest.raises(TargetTableError, match=r"row 3, column 'ID': id '5' duplicates row 1"):
        read_targets(fits_path)
    Table({"ID": [5, 6], "RA": [361.0, -1.0], "DEC": [0.0, 1.0]}).write(fits_path, overwrite=True)
    targets = read_targets(fits_path)  # case-insensitive names, RA wrapped
    assert targets.ids.tolist() == ["5", "6"] and np.allclose(targets.ra, [1.0, 359.0])


def test_cli_fails_before_extraction(stamps_run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,ra,dec\n1,244.0,36.0\n2,244.1,oops\n")
    code = stamps_main(["run", str(bad), "-o", str(tmp_path / "a"), "--tile-dir", str(stamps_run["tiles"]),
                        "--exposure-stamps", "false"])
    assert code == 2
    assert f"{bad}: line 3, column 'dec'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------
# The archive against the images and the truth.


def test_status_and_outside(archive):
    folder, truth, _, summary = archive
    table = read_status_table(folder / "targets.csv")
    status = dict(zip(table.ids.tolist(), table.status.tolist()))
    assert summary["done"] == len(truth) + 5 and summary["failed"] == 3 and summary["new"] == 0
    assert all(status[f"off{i}"] == "failed: outside every tile of the run" for i in range(3))
    assert all(status[f"border{i}"] == "done" for i in range(4))
    assert (folder / "quicklook.png").stat().st_size > 1000


def test_tile_stamps_equal_pixels_and_wcs(archive, stamps_run):
    folder, truth, _, _ = archive
    number = stamps_run["tile"].replace(".", "-")
    image = fits.getdata(stamps_run["tiles"] / f"CFIS_image-{number}.fits")
    weight = fits.getdata(stamps_run["tiles"] / f"CFIS_weight-{number}.fits")
    half = SIZE // 2
    worst = 0.0
    with Archive(folder) as stamps:
        for row in truth:
            record = stamps.target(f"obj{row['id']}")
            assert record["images"][0] == "tile r"
            # Independent cut from the truth position (pixel containing it).
            ix, iy = int(np.floor(row["x"] - 0.5)), int(np.floor(row["y"] - 0.5))
            if half <= ix < image.shape[1] - half and half <= iy < image.shape[0] - half:
                assert np.array_equal(record["data"][0], image[iy - half:iy + half + 1, ix - half:ix + half + 1])
                assert np.array_equal(record["weight"][0], weight[iy - half:iy + half + 1, ix - half:ix + half + 1])
            # The stamp's WCS puts the truth position where it is in the stamp.
            x, y = WCS(fits.Header.fromstring(record["headers"][0])).all_world2pix(row["ra"], row["dec"], 1)
            expected = (row["x"] - (ix - half), row["y"] - (iy - half))
            worst = max(worst, abs(float(x) - expected[0]), abs(float(y) - expected[1]))
            assert abs(float(x) - (half + 1)) <= 0.5 and abs(float(y) - (half + 1)) <= 0.5
    assert worst < 0.05


def test_border_padding_and_masked_counts(archive, stamps_run):
    folder, _, (bx, by), _ = archive
    half = SIZE // 2
    ny, nx = stamps_run["shape"]
    with Archive(folder) as stamps:
        for i in range(4):
            record = stamps.target(f"border{i}")
            ix, iy = int(np.floor(bx[i] - 0.5)), int(np.floor(by[i] - 0.5))
            cols = np.arange(ix - half, ix + half + 1)
            rows = np.arange(iy - half, iy + half + 1)
            outside = ~(((rows >= 0) & (rows < ny))[:, None] & ((cols >= 0) & (cols < nx))[None, :])
            assert outside.any()
            padded = (record["flag"][0] & PADDED_FLAG) != 0
            assert np.array_equal(padded, outside)
            assert np.all(record["weight"][0][outside] == 0) and np.all(record["data"][0][outside] == 0)
            masked = outside | (record["flag"][0] != 0) | (record["weight"][0] <= 0)
            assert record["masked"][0] == masked.sum()
    # A stamp inside the flagged block: every pixel keeps the file's flag and counts as masked.
    with Archive(folder) as stamps:
        record = stamps.target("flagged")
        assert np.all(record["flag"][0] == 4) and record["masked"][0] == SIZE * SIZE


def test_exposure_stamps_and_psf(archive, stamps_run):
    folder, truth, _, _ = archive
    from shapepipe_modules.simulate.truth import load_truth

    half = SIZE // 2
    checked = psf_checked = 0
    with Archive(folder) as stamps:
        names = stamps.target(f"obj{truth['id'][0]}")["images"]
        exposures = [name.split()[1] for name in names[1:]]
        assert len(exposures) == 2
        truths = {e: load_truth(stamps_run["sim"], exposure=e) for e in exposures}
        position = {e: {int(i): k for k, i in enumerate(t["id"])} for e, t in truths.items()}
        for row in truth[:40]:
            record = stamps.target(f"obj{row['id']}")
            for slot, exposure in enumerate(exposures, start=1):
                k = position[exposure].get(int(row["id"]))
                seen = k is not None and truths[exposure]["ccd"][k] >= 0
                if not record["present"][slot]:
                    continue
                assert seen and record["ccd"][slot] == truths[exposure]["ccd"][k]
                ccd = int(record["ccd"][slot])
                x, y = truths[exposure]["x"][k], truths[exposure]["y"][k]
                assert abs(record["x"][slot] - x) < 0.05 and abs(record["y"][slot] - y) < 0.05
                data = fits.getdata(stamps_run["ccds"] / f"image-{exposure}-{ccd}.fits")
                ix, iy = int(np.floor(record["x"][slot] - 0.5)), int(np.floor(record["y"][slot] - 0.5))
                if half <= ix < data.shape[1] - half and half <= iy < data.shape[0] - half:
                    assert np.array_equal(record["data"][slot], data[iy - half:iy + half + 1, ix - half:ix + half + 1])
                    checked += 1
                # The stamp's WCS (the CCD's TPV WCS moved to the stamp) puts the truth where it is.
                stamp_header = fits.Header.fromstring(record["headers"][slot])
                assert "PV1_7" in stamp_header  # the TPV terms (astropy writes TPV as SCAMP's TAN + PV)
                wcs = WCS(stamp_header)
                sx, sy = wcs.all_world2pix(row["ra"], row["dec"], 1)
                assert abs(float(sx) - (x - (ix - half))) < 0.05 and abs(float(sy) - (y - (iy - half))) < 0.05
                if (exposure, ccd) == stamps_run["no_psf"]:
                    assert not record["psf_present"][slot]
                    continue
                assert record["psf_present"][slot]
                psf = record["psf"][slot].astype(float)
                grid = np.arange(SIZE)
                centre_x = (psf.sum(axis=0) * grid).sum() / psf.sum()
                dx = record["x"][slot] - (ix + 1)
                assert abs(psf.sum() - 1) < 1e-5 and abs(centre_x - (half + dx)) < 0.02
                second = (psf.sum(axis=0) * (grid - centre_x) ** 2).sum() / psf.sum()
                assert abs(np.sqrt(second) - stamps_run["sigmas"][(exposure, ccd)]) < 0.05
                psf_checked += 1
            have = record["psf_present"][1:]
            if have.any():
                expected = record["psf"][1:][have].astype(float).mean(axis=0)
                assert np.allclose(record["psf"][0], expected, atol=1e-7)
    assert checked > 30 and psf_checked > 30


def test_export_round_trip(archive, tmp_path):
    folder, truth, _, _ = archive
    ids = [f"obj{truth['id'][0]}", "border1"]
    id_file = tmp_path / "ids.txt"
    id_file.write_text("\n".join(ids) + "\n")
    assert stamps_main(["export", str(folder), str(tmp_path / "fits"), str(id_file)]) == 0
    with Archive(folder) as stamps:
        for target in ids:
            record = stamps.target(target)
            files = sorted((tmp_path / "fits").glob(f"{target}.*.fits"))
            assert len(files) == int(record["present"].sum())
            with fits.open(tmp_path / "fits" / f"{target}.tile-r.fits") as hdus:
                assert np.array_equal(hdus[0].data, record["data"][0])
                assert hdus[0].data.dtype.newbyteorder("=") == record["data"].dtype
                assert np.array_equal(hdus["WEIGHT"].data, record["weight"][0])
                assert np.array_equal(hdus["FLAG"].data, record["flag"][0])
                assert np.array_equal(hdus["PSF"].data, record["psf"][0])
                ra, dec = WCS(hdus[0].header).all_pix2world([3.0], [7.0], 1)
                ref_ra, ref_dec = WCS(fits.Header.fromstring(record["headers"][0])).all_pix2world([3.0], [7.0], 1)
                assert abs(ra[0] - ref_ra[0]) < 1e-10 and abs(dec[0] - ref_dec[0]) < 1e-10
    assert stamps_main(["export", str(folder), str(tmp_path / "x"), "no_such_id"]) == 2


def test_restart_skips_done_and_recovers_lost_status(archive, stamps_run):
    """A status table lost after the batch file was renamed: the rerun cuts nothing and restores it."""
    from shapepipe_modules.stamps.targets import write_status_table

    folder = archive[0]
    files = batch_files(folder)
    stamp = [(p, p.stat().st_mtime_ns) for p in files]
    table = read_status_table(folder / "targets.csv")
    before = table.status.copy()
    table.status[table.status == "done"] = "new"
    write_status_table(folder / "targets.csv", table)
    (folder / ".stamps-b00000-p1.h5.x.tmp.h5").write_bytes(b"partial")
    summary = make_archive(stamps_run["root"] / "targets.csv", folder, _options(stamps_run))
    assert summary["batches"] == 0 and summary["stamps"] == 0
    assert read_status_table(folder / "targets.csv").status.tolist() == before.tolist()
    assert [(p, p.stat().st_mtime_ns) for p in batch_files(folder)] == stamp
    assert not list(folder.glob(".stamps-*"))


def test_module_form_two_bands(stamps_run, tmp_path):
    """The runner job, with two bands (the same files): slots per band, tile stamps identical."""
    from conftest import run_module

    from shapepipe_modules.stamps.runner import stamps

    truth = Table.read(stamps_run["sim"] / "truth" / f"truth_tile-{stamps_run['tile'].replace('.', '-')}.fits")
    table = tmp_path / "in" / "targets.csv"
    table.parent.mkdir()
    table.write_text("id,ra,dec\n" + "".join(f"{i},{r!r},{d!r}\n" for i, r, d in
                                             zip(truth["id"][:10], truth["ra"][:10].tolist(), truth["dec"][:10].tolist())))
    options = _options(stamps_run, BANDS=["r", "s"], TILE_IMAGE_PATTERN=["CFIS_image", "CFIS_image"],
                       EXPOSURE_STAMPS=False, N_WORKERS=2)
    summary = run_module(stamps, [table], tmp_path / "out", "", **options)
    assert summary["done"] == 10 and summary["failed"] == 0
    with Archive(tmp_path / "out" / "stamps") as archive:
        record = archive.target(str(truth["id"][3]))
        assert record["images"] == ["tile r", "tile s"]
        assert np.array_equal(record["data"][0], record["data"][1])


@pytest.mark.parametrize("distortion", ["sip", "tpv"])
def test_stamp_wcs_keeps_distortion(distortion):
    """A stamp's header maps its pixels to the sky as the parent image does at the shifted pixels."""
    from shapepipe_modules.stamps.extract import StampWCS

    header = fits.Header()
    header.update({"NAXIS": 2, "NAXIS1": 2000, "NAXIS2": 4000, "CRPIX1": 1012.3, "CRPIX2": -205.7,
                   "CRVAL1": 244.1, "CRVAL2": 36.2, "CD1_1": -5.2e-5, "CD1_2": 1e-7, "CD2_1": -2e-7,
                   "CD2_2": 5.2e-5})
    if distortion == "sip":
        header.update({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "A_ORDER": 2, "B_ORDER": 2,
                       "A_2_0": 3e-6, "A_0_2": -2e-6, "A_1_1": 1e-6, "B_2_0": 1e-6, "B_0_2": 4e-6})
    else:
        header.update({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "PV1_1": 1.0, "PV2_1": 1.0,
                       "PV1_4": 2e-3, "PV1_7": 5e-3, "PV2_5": -3e-3, "PV2_9": 4e-3})
    parent = WCS(header)
    stamp_wcs = StampWCS(header)
    x0, y0 = 1500, 3100
    stamp = WCS(fits.Header.fromstring(stamp_wcs.text(x0, y0)))
    px = np.array([1.0, 26.0, 51.0, 13.3])
    py = np.array([1.0, 26.0, 51.0, 40.7])
    a = np.array(stamp.all_pix2world(px, py, 1))
    b = np.array(parent.all_pix2world(px + x0, py + y0, 1))
    assert np.max(np.abs(a - b)) * 3600 < 1e-6  # arcsec
    moved = np.array(parent.all_pix2world(px + x0 + 0.01, py + y0, 1))
    assert np.max(np.abs(moved - a)) * 3600 > 1e-4  # the comparison can tell 0.01 px


def test_missing_file_fails_then_retry_failed(stamps_run, tmp_path):
    """A missing tile flag fails the tile's targets naming the file; --retry-failed cuts them into part 1."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    number = stamps_run["tile"].replace(".", "-")
    for name in (f"CFIS_image-{number}.fits", f"CFIS_weight-{number}.fits"):
        os.symlink(stamps_run["tiles"] / name, tiles / name)
    truth = Table.read(stamps_run["sim"] / "truth" / f"truth_tile-{number}.fits")[:6]
    table = tmp_path / "t.csv"
    table.write_text("id,ra,dec\n" + "".join(f"{i},{r!r},{d!r}\n" for i, r, d in
                                             zip(truth["id"], truth["ra"].tolist(), truth["dec"].tolist())))
    args = ["run", str(table), "-o", str(tmp_path / "a"), "--tile-dir", str(tiles), "--exposure-stamps", "false",
            "--stamp-size", "11", "--quicklook", "0"]
    assert stamps_main(args) == 0
    status = read_status_table(tmp_path / "a" / "targets.csv")
    assert status.counts()["failed"] == 6
    assert f"tile flag pipeline_flag-{number}.fits not found in {tiles}" in status.status[0]
    assert stamps_main(args) == 0  # a plain rerun leaves failed targets alone
    assert [p.name for p in batch_files(tmp_path / "a")] == ["stamps-b00000-p0.h5"]
    os.symlink(stamps_run["tiles"] / f"pipeline_flag-{number}.fits", tiles / f"pipeline_flag-{number}.fits")
    assert stamps_main(args + ["--retry-failed"]) == 0
    assert read_status_table(tmp_path / "a" / "targets.csv").counts()["done"] == 6
    assert [p.name for p in batch_files(tmp_path / "a")] == ["stamps-b00000-p0.h5", "stamps-b00000-p1.h5"]
    flag = fits.getdata(stamps_run["tiles"] / f"pipeline_flag-{number}.fits")
    with Archive(tmp_path / "a") as archive:
        assert len(archive) == 6 and not archive.failed()
        record = archive.target(str(truth["id"][2]))
        ix, iy = int(np.floor(truth["x"][2] - 0.5)), int(np.floor(truth["y"][2] - 0.5))
        if 5 <= ix < flag.shape[1] - 5 and 5 <= iy < flag.shape[0] - 5:
            assert np.array_equal(record["flag"][0], flag[iy - 5:iy + 6, ix - 5:ix + 6])


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_chunk_writer_round_trip(tmp_path, compression):
    """Chunks compressed outside HDF5 (shuffle + deflate) read back through HDF5's own filters, whatever
    the type, with a last chunk shorter than the others."""
    import h5py

    from shapepipe_modules.stamps.extract import Settings, _ChunkWriter

    rng = np.random.default_rng(5)
    arrays = {"f4": rng.normal(size=(23, 3, 5, 5)).astype(np.float32),
              "i4": rng.integers(-600, 600, size=(23, 3, 5, 5)).astype(np.int32),
              "b": rng.random((23, 3)) < 0.5,
              "text": np.array([[f"card {i} {j}".ljust(40) for j in range(3)] for i in range(23)], dtype="S40")}
    writer = _ChunkWriter(Settings(stamp_size=5, psf_size=5, compression=compression))
    with h5py.File(tmp_path / "chunks.h5", "w") as h5:
        for name, values in arrays.items():
            dataset = writer.create(h5, name, values.shape, values.dtype, (4,) + values.shape[1:])
            for start in range(0, len(values), 4):
                writer.write(dataset, start, lambda v=values, s=start: v[s:s + 4])
        writer.drain()
    writer.close()
    with h5py.File(tmp_path / "chunks.h5", "r") as h5:
        for name, values in arrays.items():
            assert h5[name].compression == {"gzip": "gzip", "lzf": "lzf", "none": None}[compression]
            assert np.array_equal(h5[name][...], values), name


def test_compressed_images_are_cut_from_decompressed_row_bands(tmp_path):
    """Tile-compressed images (quantised float, integer flags) cut by row bands equal cuts of the whole
    image decompressed by astropy, at borders too; rows no stamp covers are never decompressed."""
    from shapepipe_modules.stamps.extract import _Image

    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 5.0, (300, 120)).astype(np.float32)
    flag = (rng.uniform(size=(300, 120)) < 0.05).astype(np.int16) * 4
    paths = {}
    for name, data in (("image", image), ("flag", flag)):
        paths[name] = tmp_path / f"{name}.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]).writeto(paths[name])
    ix = np.array([0, 60, 119, 30, 90])
    iy = np.array([0, 150, 299, 40, 45])
    for name, path in paths.items():
        with fits.open(path) as hdus:
            whole = np.asarray(hdus[1].data)
        opened = _Image(path)
        stamps, missing = opened.cut(ix, iy, 11, fill=0)
        padded = np.pad(whole, 5)  # independent: slices of the zero-padded whole image
        inside = np.pad(np.ones(whole.shape, bool), 5)
        for k in range(ix.size):
            np.testing.assert_array_equal(stamps[k], padded[iy[k]:iy[k] + 11, ix[k]:ix[k] + 11])
            np.testing.assert_array_equal(missing[k], ~inside[iy[k]:iy[k] + 11, ix[k]:ix[k] + 11])
        covered = np.zeros(300, bool)
        for y in iy:
            covered[max(y - 5, 0):y + 6] = True
        covered[0] = True  # read at opening, for the type
        np.testing.assert_array_equal(opened._loaded, covered)
        assert not np.any(opened.data[~covered])  # untouched rows stay zero (never decompressed)
        opened.close()
