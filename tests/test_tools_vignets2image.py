"""vignets2image: every stamp of a catalogue or stamp store at its place in the mosaic (read back)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe_modules.tools import vignets2image as tool


def _cell(image, row, col, shape):
    ny, nx = shape
    return image[row * ny:(row + 1) * ny, col * nx:(col + 1) * nx]


def test_mosaic_places_each_stamp():
    rng = np.random.default_rng(4)
    stamps = rng.normal(size=(7, 5, 4)).astype(np.float32)  # not square: rows and columns cannot be swapped
    stamps[2, 1, 3] = -1e30
    image, side = tool.mosaic(stamps, fill=-7.0)
    assert side == 3 and image.shape == (15, 12)
    for i in range(7):
        row, col = divmod(i, 3)
        expected = stamps[i].copy()
        if i == 2:
            expected[1, 3] = -7.0  # SExtractor's unusable pixel takes the fill value
        np.testing.assert_array_equal(_cell(image, row, col, (5, 4)), expected)
    for i in (7, 8):
        assert np.all(_cell(image, *divmod(i, 3), (5, 4)) == -7.0)
    assert [tool.grid_side(n) for n in (0, 1, 4, 5, 9, 10)] == [1, 1, 2, 3, 3, 4]


def _check_file(path, stamps, ids, epochs=None):
    with fits.open(path) as hdus:
        image = np.array(hdus[0].data)
        table = Table(hdus["STAMPS"].data)
        assert hdus[0].header["NSTAMP"] == len(ids)
    ny, nx = stamps.shape[1:]
    assert list(table["NUMBER"]) == list(ids)
    if epochs is not None:
        assert list(table["EPOCH"]) == list(epochs)
    for i, row in enumerate(table):
        x0, y0 = int(row["X0"]), int(row["Y0"])
        np.testing.assert_array_equal(image[y0 - 1:y0 - 1 + ny, x0 - 1:x0 - 1 + nx], stamps[i])


def test_script_on_catalogues_and_stamp_store(tmp_path, capsys):
    from shapepipe_modules.io.ldac import write_ldac
    from shapepipe_modules.io.stamp_store import StampStore

    rng = np.random.default_rng(8)
    stamps = rng.normal(size=(11, 9, 9)).astype(np.float32)
    numbers = np.arange(101, 112)
    catalogue = tmp_path / "weight_vignet-244-252.fits"
    write_ldac(catalogue, Table({"NUMBER": numbers, "VIGNET": stamps}), fits.Header())
    # Stamps kept only for some rows (LDAC_VIGNET): the others are SExtractor's -1e30, shown as the fill.
    by_rows = tmp_path / "sexcat-244-252.fits"
    keep = np.zeros(11, bool)
    keep[[0, 4, 10]] = True
    write_ldac(by_rows, Table({"NUMBER": numbers, "VIGNET": stamps}), fits.Header(), vignet_rows=keep)
    store_path = tmp_path / "image_vignet-244-252.sqlite"
    store_stamps, store_ids, store_epochs = [], [], []
    with StampStore(store_path, mode="w") as store:
        for object_id in (12, 5, 30):  # written out of order: laid out by id, then epoch key
            for epoch in ("2100002-3", "2100001-10"):
                stamp = rng.normal(size=(9, 9)).astype(np.float32)
                store.put(object_id, epoch, {"VIGNET": stamp, "WEIGHT": np.ones((9, 9), np.float32)})
        store.mark_no_epoch(40, "outside every CCD")
    with StampStore(store_path) as store:
        for object_id in (5, 12, 30):
            for epoch in ("2100001-10", "2100002-3"):
                store_stamps.append(store.get(object_id)[epoch]["VIGNET"])
                store_ids.append(object_id)
                store_epochs.append(epoch)
    out = tmp_path / "out"
    assert tool.main([str(catalogue), str(by_rows), str(store_path), "-o", str(out)]) == 0
    _check_file(out / "img_weight_vignet-244-252.fits", stamps, numbers)
    partial = np.where(keep[:, None, None], stamps, 0.0)
    _check_file(out / "img_sexcat-244-252.fits", partial, numbers)
    _check_file(out / "img_image_vignet-244-252.fits", np.array(store_stamps), store_ids, store_epochs)
    # The first stamps only.
    assert tool.main([str(store_path), "-n", "3", "-p", "first_", "-o", str(out)]) == 0
    _check_file(out / "first_image_vignet-244-252.fits", np.array(store_stamps[:3]), store_ids[:3], store_epochs[:3])
    # Errors name the file.
    capsys.readouterr()
    assert tool.main([str(catalogue), "-c", "FLUX", "-o", str(out)]) == 1
    assert f"{catalogue}: no column 'FLUX'" in capsys.readouterr().err
    assert tool.main([str(store_path), "-c", "FLAG", "-o", str(out)]) == 1
    assert f"{store_path}: no 'FLAG' stamp in the store" in capsys.readouterr().err
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"not a fits file")
    assert tool.main([str(broken), "-o", str(out)]) == 1
    assert f"cannot read catalogue {broken}" in capsys.readouterr().err
    assert not (out / "img_broken.fits").exists()


def test_mosaic_rejects_flat_input():
    with pytest.raises(ValueError, match="stamps must be"):
        tool.mosaic(np.zeros((3, 4)))
