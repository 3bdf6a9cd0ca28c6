"""Acceptance (issues 5 and 19): halo and spike masks sized by the star
profile cover every pixel where a simulated bright star's light exceeds the
chosen fraction of the noise; the default configuration masks every
deep-sky object.

Truth of the simulator (``modules/simulate/render.py``): a star brighter than
``halo_mag`` (17) is drawn with a halo and diffraction spikes along the pixel
axes of fixed shapes (``star_surface_brightness`` evaluates them without
noise); the drawing stamp ends where the light falls to 0.01 of the noise
(``bright_star_extent``), which :func:`coverage_of_image` uses as the disc of
a star. A deep-sky object is drawn out to 4.5 disk half-light
radii plus 1.5 PSF FWHM (its light there is a few per cent of the noise);
``deep_sky.fits`` lists it with radius = 6 half-light radii of the
composite profile, which must exceed that drawn radius and is the disc to
mask.

The mask module runs as in the pipeline: the default ``config.mask`` on the
CCD files written by split_exp, the simulator's ``bright_stars.fits`` as
STAR_CAT_PATH and ``deep_sky.fits`` as DEEP_SKY_CAT_PATH; the tile is
masked with ``config_tile.mask``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from conftest import run_module, split_exposures

#: The mask must also cover this much beyond the simulated halo radius.
MARGIN = 1.1


def halo_radius_pixels(sim_dir, mag, fwhm=0.8):
    """The simulator's drawn halo and spike radius (pixels) of stars of magnitude ``mag`` (zero point 30)."""
    from shapepipe_modules.simulate.render import STAMP_NOISE_FRACTION, background_variance, bright_star_extent

    params = json.loads((Path(sim_dir) / "simulation.json").read_text())["parameters"]
    flux = 10.0 ** (-0.4 * (np.asarray(mag, float) - 30.0))
    level = STAMP_NOISE_FRACTION * np.sqrt(background_variance(params))
    halo, spike = bright_star_extent(flux, fwhm, params["pixel_scale"], level)
    return np.where(np.asarray(mag) < params["halo_mag"], np.maximum(halo, spike), 0.0)


def _disc_pixels(x, y, radius, shape):
    """Boolean image of the pixels (0-based centres) within ``radius`` of (x, y) (0-based)."""
    ny, nx = shape
    yy, xx = np.ogrid[:ny, :nx]
    return (xx - x) ** 2 + (yy - y) ** 2 <= radius**2


def coverage_of_image(flag_path, sim_dir, margin=MARGIN, deep_sky_margin=1.0):
    """Coverage of the truth halo/spike discs and deep-sky discs by one flag image.

    Returns
    -------
    dict
        ``n_stars`` (bright stars whose disc reaches the image),
        ``star_uncovered`` (pixels of those discs, radius times ``margin``,
        with neither MP_HALO nor MP_SPIKE set), ``star_pixels``,
        ``n_deep_sky``, ``deep_sky_uncovered`` (pixels of the deep-sky
        discs, radius times ``deep_sky_margin`` less one pixel for the
        rasterisation and the distortion of the local pixel scale, without
        MP_MESSIER),
        ``deep_sky_pixels`` and
        ``masked_fraction`` (pixels with any halo, spike or deep-sky bit).
    """
    from shapepipe_modules.mask import mask_bits

    from shapepipe_modules.io.images import image_hdu

    with fits.open(flag_path) as hdus:  # plain, or tile-compressed (mask COMPRESS)
        flag = image_hdu(hdus).data.astype(np.int64)
        header = image_hdu(hdus).header
    wcs = WCS(header)
    star_bits = mask_bits(header, ["MP_HALO", "MP_SPIKE"])
    deep_bit = mask_bits(header, "MP_MESSIER")
    stars = Table.read(Path(sim_dir) / "catalogues" / "bright_stars.fits")
    deep = Table.read(Path(sim_dir) / "catalogues" / "deep_sky.fits")
    result = {"n_stars": 0, "star_uncovered": 0, "star_pixels": 0, "n_deep_sky": 0, "deep_sky_uncovered": 0,
              "deep_sky_pixels": 0}
    radius = halo_radius_pixels(sim_dir, stars["mag"]) * margin
    x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
    ny, nx = flag.shape
    reaches = (radius > 0) & (x + radius > -0.5) & (x - radius < nx - 0.5) & (y + radius > -0.5) & (y - radius < ny - 0.5)
    for xs, ys, rs in zip(x[reaches], y[reaches], radius[reaches]):
        disc = _disc_pixels(xs, ys, rs, flag.shape)
        if disc.any():
            result["n_stars"] += 1
            result["star_pixels"] += int(disc.sum())
            result["star_uncovered"] += int(np.count_nonzero(disc & (flag & star_bits == 0)))
    if len(deep):
        x, y = wcs.all_world2pix(deep["ra"], deep["dec"], 0)
        scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
        for xs, ys, rs in zip(x, y, np.asarray(deep["radius"]) * 3600.0 / scale * deep_sky_margin - 1):
            disc = _disc_pixels(xs, ys, rs, flag.shape)
            if disc.any():
                result["n_deep_sky"] += 1
                result["deep_sky_pixels"] += int(disc.sum())
                result["deep_sky_uncovered"] += int(np.count_nonzero(disc & (flag & deep_bit == 0)))
    result["masked_fraction"] = float(np.mean(flag & (star_bits | deep_bit) != 0))
    return result


def mask_simulation(sim_dir, work_dir, ccds=None, **options):
    """Run the mask module on every CCD and tile of a simulation.

    Returns ``{image name: flag path}``; CCDs are split first unless
    ``ccds`` (from :func:`conftest.split_exposures`) is given.
    """
    from shapepipe_modules.mask.runner import mask

    sim_dir, work_dir = Path(sim_dir), Path(work_dir)
    if ccds is None:
        ccds, _ = split_exposures(sim_dir, work_dir / "split")
    catalogues = {"STAR_CAT_PATH": str(sim_dir / "catalogues" / "bright_stars.fits"),
                  "DEEP_SKY_CAT_PATH": str(sim_dir / "catalogues" / "deep_sky.fits")}
    flags = {}
    for (exposure, ccd), files in sorted(ccds.items()):
        number = f"-{exposure}-{ccd}"
        # Without the input flag: its bits (2 = cosmic ray) share values with
        # MP_HALO and would count as coverage.
        run_module(mask, [files["image"], files["weight"]], work_dir / "mask", number, USE_EXT_FLAG=False,
                   **catalogues, **options)
        flags[f"{exposure}-{ccd}"] = work_dir / "mask" / f"pipeline_flag{number}.fits"
    for tile in (sim_dir / "tile_list.txt").read_text().split():
        number = "-" + tile.replace(".", "-")
        # The pipeline uncompresses the tile weight first (uncompress_fits): same here.
        weight = work_dir / "mask" / f"tile_weight{number}.fits"
        with fits.open(sim_dir / "tiles" / f"CFIS.{tile}.r.weight.fits.fz") as hdus:
            fits.PrimaryHDU(hdus[1].data, hdus[1].header).writeto(weight, overwrite=True)
        run_module(mask, [sim_dir / "tiles" / f"CFIS.{tile}.r.fits", weight], work_dir / "mask", number,
                   MASK_DEFAULTS="tile", USE_EXT_FLAG=False, **catalogues, **options)
        flags[f"tile {tile}"] = work_dir / "mask" / f"pipeline_flag{number}.fits"
    return flags


def coverage_table(rows) -> str:
    """Text table of :func:`coverage_of_image` results: ``{image: result}``."""
    lines = ["image            stars  uncovered/pixels   deep-sky  uncovered/pixels  masked"]
    for name, r in rows.items():
        lines.append(f"{name:15s}  {r['n_stars']:5d}  {r['star_uncovered']:7d}/{r['star_pixels']:<8d}  "
                     f"{r['n_deep_sky']:8d}  {r['deep_sky_uncovered']:7d}/{r['deep_sky_pixels']:<8d}  "
                     f"{r['masked_fraction']:6.3f}")
    return "\n".join(lines)


def test_profile_masks_cover_the_light_of_every_bright_star(tiny_sim, tiny_split, tmp_path):
    """STAR_MASK_SIZING = profile at 0.1 sigma masks every pixel where the true light exceeds 0.105 sigma."""
    from shapepipe_modules.gold.truth_checks import star_light_coverage

    ccds, _ = tiny_split
    truth = Table.read(next((Path(tiny_sim) / "truth").glob("truth_exp-*.fits")))
    fwhm = float(np.max(truth["psf_fwhm"]))  # the broadest PSF: its halo is the widest
    flags = mask_simulation(tiny_sim, tmp_path, ccds, STAR_MASK_SIZING="profile", STAR_MASK_NOISE_FRACTION=0.1,
                            STAR_PROFILE_PSF_FWHM=fwhm, STAR_PROFILE_HALO_FWHM=8.0 * fwhm,
                            STAR_PROFILE_SPIKE_WIDTH=0.25 * fwhm)
    exposure_flags = [path for name, path in flags.items() if not name.startswith("tile")]
    # 5 % above the mask level: the noise the mask reads from the weight follows the 3 % sky gradient.
    rows = star_light_coverage(exposure_flags, tiny_sim, noise_fraction=0.105, step=1)
    # Each halo and each spike is sized alone: where two of them (of one star or of neighbours) overlap,
    # their sum exceeds the level a little beyond both masks. And the mask assumes one PSF for the CCD:
    # a star with a narrower PSF has a narrower, brighter spike that reaches a few pixels further.
    # Above twice the level, at most 0.1 % of the light area is left.
    strong = star_light_coverage(exposure_flags, tiny_sim, noise_fraction=0.21, step=1)
    for row, row_strong in zip(rows, strong):
        print(row, row_strong["light_masked"])
    lit = [(row, row_strong) for row, row_strong in zip(rows, strong) if row["light"] > 0]
    assert len(lit) >= 2
    for row, row_strong in lit:
        assert row_strong["light_masked"] > 0.999, row_strong
        assert row["light_masked"] > 0.95, row
        # Not much more than the light: the mask ends at 0.1 sigma, the light area at 0.105 sigma and
        # the narrowest PSF of the CCD has a narrower halo than the broadest one the mask assumes.
        assert row["star_masked_dark"] < 0.3, row
        assert row["star_masked"] < 2.0 * row["light"], row


@pytest.fixture(scope="module")
def deep_sky_sim(tmp_path_factory):
    """A one-exposure tiny simulation with the large bright galaxy (and few other objects)."""
    from shapepipe_modules.simulate import simulate

    out = tmp_path_factory.mktemp("deep_sky_sim")
    return Path(simulate(preset="tiny", output_dir=out, seed=7, n_workers=2, deep_sky=True, exposures_per_tile=1,
                         star_density=6.0, galaxy_density=2.0))


def test_deep_sky_object_and_halos_masked(deep_sky_sim, tmp_path):
    flags = mask_simulation(deep_sky_sim, tmp_path)
    rows = {name: coverage_of_image(path, deep_sky_sim) for name, path in flags.items()}
    print("\n" + coverage_table(rows))
    # The galaxy lies on one CCD of the exposure and on the tile.
    assert sum(r["n_deep_sky"] for r in rows.values()) >= 2
    # The catalogue disc encloses the galaxy as drawn.
    truth = Table.read(next((deep_sky_sim / "truth").glob("truth_tile-*.fits")))
    galaxy = truth[truth["is_deep_sky"]][0]
    drawn = 4.5 * max(galaxy["disk_hlr"], galaxy["bulge_hlr"]) + 1.5 * 0.8
    listed = Table.read(deep_sky_sim / "catalogues" / "deep_sky.fits")["radius"][0] * 3600.0
    assert listed > drawn
    for name, r in rows.items():
        assert r["deep_sky_uncovered"] == 0, (name, r)
