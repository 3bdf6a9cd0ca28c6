"""Tests of cfis_field_select (tile rule selections, HISTORY, list parsing)."""

import numpy as np
import pytest
from astropy.io import fits

from shapepipe_modules import cfis
from shapepipe_modules.tools import cfis_field_select as cfs

PIXEL_DEG = 0.187 / 3600


def tan_header(ra, dec, nx, ny, scale=PIXEL_DEG):
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = ra, dec
    header["CRPIX1"], header["CRPIX2"] = (nx + 1) / 2, (ny + 1) / 2
    header["CD1_1"], header["CD2_2"] = -scale, scale
    header["CD1_2"] = header["CD2_1"] = 0.0
    return header


def make_exposure(directory, name, ra, dec, nccd=4, nx=40, ny=80, scale=PIXEL_DEG * 50):
    """A small MEF exposure: CCDs side by side in RA, each with its own WCS."""
    hdus = [fits.PrimaryHDU()]
    width = nx * scale / np.cos(np.radians(dec))
    for ccd in range(nccd):
        ccd_ra = ra + (ccd - (nccd - 1) / 2) * width * 1.02
        hdus.append(fits.ImageHDU(np.zeros((ny, nx), dtype=np.float32), header=tan_header(ccd_ra, dec, nx, ny, scale)))
    path = directory / f"{name}p.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def make_tile(directory, xxx, yyy, exposures, n=100):
    ra, dec = cfis.tile_centre(xxx, yyy)
    header = tan_header(ra, dec, n, n, 0.5 / n)
    for exposure in exposures:
        header.add_history(f"input image {exposure}p.fits 6 extension(s)")
    header.add_history("SWarp resampled the images")  # unrelated history is ignored
    path = directory / cfis.tile_file_name(xxx, yyy)
    fits.PrimaryHDU(np.zeros((n, n), dtype=np.float32), header=header).writeto(path)
    return path


def test_coord_returns_the_nearest_centre_even_where_the_rule_differs(capsys):
    assert cfs.main(["--coord", "255.66deg_34.05deg"]) == 0
    assert capsys.readouterr().out == "CFIS.424.248.r.fits\n"
    # At RA 300, Dec 45.2 the rule names a tile whose centre is 0.6 deg away.
    rule = cfis.tile_number(300.0, 45.2)
    assert cfs.main(["--coord", "20h00m00s_45d12m00s", "-t", "weight.fz"]) == 0
    nearest = cfis.nearest_tile(300.0, 45.2)
    assert nearest != rule
    assert capsys.readouterr().out == f"CFIS.{cfis.tile_id(*nearest)}.r.weight.fits.fz\n"


def test_coord_restricted_to_listed_tiles_and_malformed_lines(tmp_path, capsys):
    listing = tmp_path / "tiles.txt"
    listing.write_text("# my tiles\n424.248\nCFIS.425.248.r.fits\nnot a tile\n\n  244-252  extra words\n")
    assert cfs.main(["-i", str(listing), "--coord", "255.66_34.05", "-o", str(tmp_path / "out.txt")]) == 0
    assert (tmp_path / "out.txt").read_text() == "CFIS.424.248.r.fits\n"
    err = capsys.readouterr().err
    assert f"{listing}:4:" in err and "'not'" in err and "line skipped" in err
    entries = cfs.read_image_list(listing)
    assert [e.ident for e in entries] == [(424, 248), (425, 248), (244, 252)]
    # A coordinate whose nearest tile is not listed: nothing found, status 1.
    assert cfs.main(["-i", str(listing), "--coord", "10_10"]) == 1


def test_area_returns_exactly_the_tiles_with_centres_inside(tmp_path, capsys):
    # Whole-sky mode across RA 0 against a brute-force check.
    assert cfs.main(["--area", "359.0_-1.2_1.0_0.4"]) == 0
    names = capsys.readouterr().out.split()
    xxx, yyy = np.meshgrid(np.arange(720), np.arange(170, 185))
    ra, dec = cfis.tile_centre(xxx.ravel(), yyy.ravel())
    inside = ((ra >= 359.0) | (ra <= 1.0)) & (dec >= -1.2) & (dec <= 0.4)
    expected = {cfis.tile_file_name(x, y) for x, y in zip(xxx.ravel()[inside], yyy.ravel()[inside])}
    assert set(names) == expected and len(names) == len(expected) == 13
    # With a list: only listed tiles, ShapePipe's RA1 > 360 convention.
    listing = tmp_path / "tiles.txt"
    listing.write_text("000.180\n719.180\n002.180\n000.181\n")
    assert cfs.main(["-i", str(listing), "--area", "359.5deg_-0.1deg_360.6deg_0.1deg"]) == 0
    assert capsys.readouterr().out.split() == ["CFIS.000.180.r.fits", "CFIS.719.180.r.fits"]


def test_tile_mode_returns_exactly_the_history_exposures(tmp_path, capsys):
    make_tile(tmp_path, 244, 252, ["2113737", "2113738", "2200001"])
    make_tile(tmp_path, 245, 252, ["2113738", "2300002"])
    (tmp_path / "CFIS.244.252.r.weight.fits.fz").write_bytes(b"")  # not an image: ignored
    assert cfs.main(["-i", str(tmp_path), "--tile", "-t", "exposure_flag.fz"]) == 0
    assert capsys.readouterr().out.split() == [
        f"{e}p.flag.fits.fz" for e in ["2113737", "2113738", "2200001", "2300002"]]
    listing = tmp_path / "list.txt"
    listing.write_text("CFIS.245.252.r.fits\n")
    assert cfs.main(["-i", str(listing), "--tile"]) == 0
    assert capsys.readouterr().out.split() == ["2113738p.fits", "2300002p.fits"]
    assert cfs.main(["-i", str(listing), "--tile", "-t", "weight"]) == 1
    assert "-t must be one of" in capsys.readouterr().err


def test_exposure_modes_use_ccd_footprints(tmp_path, capsys):
    make_exposure(tmp_path, "2113737", 150.0, 2.0)
    make_exposure(tmp_path, "2113738", 150.3, 2.0)
    make_exposure(tmp_path, "2113739", 10.0, -30.0)
    # Exposure 1 spans about 150 +- 0.27 deg in RA: 150.2 is on its last CCD
    # and on exposure 2; 149.8 only on exposure 1.
    assert cfs.main(["-i", str(tmp_path), "--coord", "150.2_2.0", "-t", "exposure_weight"]) == 0
    assert capsys.readouterr().out.split() == ["2113737p.weight.fits", "2113738p.weight.fits"]
    assert cfs.main(["-i", str(tmp_path), "--coord", "149.8_2.0", "-t", "exposure"]) == 0
    assert capsys.readouterr().out.split() == ["2113737p.fits"]
    assert cfs.main(["-i", str(tmp_path), "--coord", "150.0_2.3", "-t", "exposure"]) == 1  # gap above
    assert cfs.main(["-i", str(tmp_path), "--area", "149_1_150.1_3", "-t", "exposure"]) == 0
    assert capsys.readouterr().out.split() == ["2113737p.fits"]
    assert cfs.main(["-i", str(tmp_path), "--number", "2113739", "-t", "exposure"]) == 0
    name, ra, dec = capsys.readouterr().out.split()
    assert name == "2113739p.fits" and float(ra) == pytest.approx(10.0, abs=1e-6)
    assert float(dec) == pytest.approx(-30.0, abs=1e-3)


def test_number_plot_and_errors(tmp_path, capsys):
    assert cfs.main(["--number", "244.252"]) == 0
    name, ra, dec = capsys.readouterr().out.split()
    assert name == "CFIS.244.252.r.fits"
    assert (float(ra), float(dec)) == pytest.approx(cfis.tile_centre(244, 252))
    plot = tmp_path / "area.png"
    assert cfs.main(["--area", "10_20_12_21", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cfs.main(["--coord", "10deg"]) == 1
    assert "expected 2 angles" in capsys.readouterr().err
    assert cfs.main(["--coord", "10_95"]) == 1
    assert "outside [-90, 90]" in capsys.readouterr().err
    assert cfs.main(["-i", str(tmp_path / "nope.txt"), "--coord", "1_1"]) == 1
    assert "nope.txt does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cfs.main(["--help"])
    assert stop.value.code == 0
    assert "--coord" in capsys.readouterr().out


def test_tile_mode_on_the_simulator(tmp_path, capsys):
    simulate = pytest.importorskip("shapepipe_modules.simulate")
    if not hasattr(simulate, "simulate"):
        pytest.skip("shapepipe_modules.simulate.simulate is not available yet")
    out = tmp_path / "sim"
    simulate.simulate(preset="tiny", output_dir=out)
    tiles = sorted((out / "tiles").glob("CFIS.*.r.fits"))
    assert tiles
    for tile in tiles:
        history = [str(card) for card in fits.getheader(tile, 0)["HISTORY"]]
        expected = sorted({card.split()[2] for card in history if card.startswith("input image ")})
        listing = tmp_path / "one.txt"
        listing.write_text(f"{tile}\n")
        assert cfs.main(["-i", str(listing), "--tile"]) == 0
        found = capsys.readouterr().out.split()
        assert found == expected
        assert all((out / "exposures" / name).exists() for name in found)
