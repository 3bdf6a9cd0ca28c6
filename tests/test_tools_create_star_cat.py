"""Tests of create_star_cat (offline bright-star catalogues per image)."""

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from shapepipe_modules.io.tables import read_fits_table
from shapepipe_modules.tools import create_star_cat as csc
from test_tools_cfis_field_select import make_exposure, make_tile


def gnomonic_pixels(header, ra, dec):
    """Independent TAN projection: sky (deg) -> 1-based pixels."""
    ra0, dec0 = np.radians(header["CRVAL1"]), np.radians(header["CRVAL2"])
    a, d = np.radians(ra), np.radians(dec)
    cos_c = np.sin(dec0) * np.sin(d) + np.cos(dec0) * np.cos(d) * np.cos(a - ra0)
    xi = np.degrees(np.cos(d) * np.sin(a - ra0) / cos_c)
    eta = np.degrees((np.cos(dec0) * np.sin(d) - np.sin(dec0) * np.cos(d) * np.cos(a - ra0)) / cos_c)
    cd = np.array([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]])
    u, v = np.linalg.solve(cd, np.vstack([xi, eta]))
    return u + header["CRPIX1"], v + header["CRPIX2"], cos_c > 0


def expected_stars(header, stars, margin_pixels=0.0):
    x, y, front = gnomonic_pixels(header, stars["ra"], stars["dec"])
    nx, ny = header["NAXIS1"], header["NAXIS2"]
    low = 0.5 - margin_pixels
    return front & (x >= low) & (x <= nx + 0.5 + margin_pixels) & (y >= low) & (y <= ny + 0.5 + margin_pixels)


@pytest.fixture
def field(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    make_exposure(images, "2113737", 150.0, 2.0)
    make_exposure(images, "2113738", 359.95, -10.0, nccd=3)  # crosses RA 0
    make_tile(images, 300, 180, ["2113737"], n=60)
    (images / "2113737p.weight.fits").write_bytes(b"")  # weights are not images
    rng = np.random.default_rng(5)
    ra = np.concatenate([rng.uniform(149.5, 150.5, 3000), rng.uniform(-0.5, 0.5, 3000) % 360,
                         rng.uniform(149.7, 150.3, 500), [330.0]])
    dec = np.concatenate([rng.uniform(1.8, 2.2, 3000), rng.uniform(-10.2, -9.8, 3000),
                          rng.uniform(-0.3, 0.3, 500), [-80.0]])
    stars = Table({"ra": ra, "dec": dec, "mag": rng.uniform(8, 16, ra.size)})
    reference = tmp_path / "bright_stars.fits"
    stars.write(reference)
    return images, reference, stars


def test_outputs_hold_exactly_the_stars_on_each_image(field, tmp_path):
    images, reference, stars = field
    output = tmp_path / "star_cat"
    assert csc.main([str(images), str(output), "-r", str(reference), "-q"]) == 0
    names = sorted(os.listdir(output))
    assert names == [f"star_cat-2113737-{k}.fits" for k in range(4)] + [
        f"star_cat-2113738-{k}.fits" for k in range(3)] + ["star_cat-300-180.fits"]
    total = 0
    for name in names:
        table = read_fits_table(output / name, hdu="STAR_CAT")
        assert table.colnames == ["ra", "dec", "mag", "x", "y"]
        number = name[len("star_cat-"):-len(".fits")]
        if number == "300-180":
            header = fits.getheader(images / "CFIS.300.180.r.fits", 0)
        else:
            exposure, ccd = number.split("-")
            header = fits.getheader(images / f"{exposure}p.fits", int(ccd) + 1)
        inside = expected_stars(header, stars)
        assert inside.sum() > 5
        assert sorted(zip(table["ra"], table["dec"])) == sorted(zip(stars["ra"][inside], stars["dec"][inside]))
        x, y, _ = gnomonic_pixels(header, table["ra"], table["dec"])
        np.testing.assert_allclose(table["x"], x, atol=1e-6)
        np.testing.assert_allclose(table["y"], y, atol=1e-6)
        mags = dict(zip(zip(stars["ra"], stars["dec"]), stars["mag"]))
        assert all(mags[(r, d)] == m for r, d, m in zip(table["ra"], table["dec"], table["mag"]))
        total += len(table)
    assert total > 100


def test_margin_csv_reference_and_resume(field, tmp_path, capsys):
    images, reference, stars = field
    csv = tmp_path / "stars.csv"
    Table({"RA": stars["ra"], "Dec": stars["dec"], "Mag": stars["mag"]}).write(csv, format="ascii.csv")
    output = tmp_path / "out"
    margin_arcsec = 5 * 0.187 * 50  # five pixels of the test images
    counts = csc.create_star_catalogues(images, output, csc.read_reference_catalogue(csv), margin_arcsec)
    assert counts["written"] == 8 and counts["skipped"] == 0
    header = fits.getheader(images / "2113737p.fits", 2)
    with_margin = expected_stars(header, stars, margin_pixels=5.0)
    table = read_fits_table(output / "star_cat-2113737-1.fits")
    assert len(table) == with_margin.sum() > expected_stars(header, stars).sum()
    # Resume: an existing output is kept, a missing one is written again.
    (output / "star_cat-2113737-1.fits").unlink()
    before = (output / "star_cat-2113737-0.fits").stat().st_mtime_ns
    counts = csc.create_star_catalogues(images, output, csc.read_reference_catalogue(csv), margin_arcsec)
    assert counts == {"written": 1, "skipped": 7, "stars": len(table)}
    assert (output / "star_cat-2113737-0.fits").stat().st_mtime_ns == before


def test_pipeline_names_and_errors(tmp_path, field, capsys):
    images, reference, stars = field
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    hdul = fits.open(images / "2113737p.fits")
    fits.PrimaryHDU(hdul[2].data, header=hdul[2].header).writeto(pipeline / "image-2113737-1.fits")
    hdul.writeto(pipeline / "image-2113737.fits")
    jobs = csc.image_jobs(pipeline, kind="exposure")
    assert [job.output_name for job in jobs] == ["star_cat-2113737-1-0.fits"] + [
        f"star_cat-2113737-{k}.fits" for k in range(4)]
    jobs = csc.image_jobs(pipeline)
    assert [job.number for job in jobs] == ["-2113737-1", "-2113737"]
    assert "4 image HDUs" in capsys.readouterr().err
    assert csc.main([str(images), str(tmp_path / "o"), "-r", str(tmp_path / "none.fits")]) == 1
    assert "none.fits does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("ra,dec\n1,2\n")
    assert csc.main([str(images), str(tmp_path / "o"), "-r", str(bad)]) == 1
    assert "bad.csv has no column 'mag'" in capsys.readouterr().err
    assert csc.main([str(tmp_path / "missing"), str(tmp_path / "o"), "-r", str(reference)]) == 1
    assert "missing does not exist" in capsys.readouterr().err


def test_with_the_simulator(tmp_path):
    simulate = pytest.importorskip("shapepipe_modules.simulate")
    if not hasattr(simulate, "simulate"):
        pytest.skip("shapepipe_modules.simulate.simulate is not available yet")
    out = tmp_path / "sim"
    simulate.simulate(preset="tiny", output_dir=out)
    stars = Table.read(out / "catalogues" / "bright_stars.fits")
    output = tmp_path / "star_cat"
    counts = csc.create_star_catalogues(out / "exposures", output, out / "catalogues" / "bright_stars.fits")
    counts_tiles = csc.create_star_catalogues(out / "tiles", output, out / "catalogues" / "bright_stars.fits")
    assert counts["written"] > 0 and counts_tiles["written"] > 0
    from astropy.wcs import WCS

    for path in sorted(output.iterdir()):
        number = path.name[len("star_cat-"):-len(".fits")]
        parts = number.split("-")
        if len(parts) == 2 and len(parts[0]) == 3:
            header = fits.getheader(out / "tiles" / f"CFIS.{parts[0]}.{parts[1]}.r.fits", 0)
        else:
            header = fits.getheader(out / "exposures" / f"{parts[0]}p.fits", int(parts[1]) + 1)
        wcs = WCS(header)
        x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 1, quiet=True)
        inside = (x >= 0.5) & (x <= header["NAXIS1"] + 0.5) & (y >= 0.5) & (y <= header["NAXIS2"] + 0.5)
        table = read_fits_table(path)
        assert sorted(table["ra"]) == sorted(stars["ra"][inside])
