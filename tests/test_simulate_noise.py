"""Noise that does not depend on the signal (preset ``tiny``).

Same seed, opposite shear (``simulate_paired``): every pixel outside the
galaxies' drawing stamps is identical bit for bit, in every exposure CCD
(image, weight, flag) and in the tile (image, weight); pixels inside differ.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
from astropy.io import fits  # noqa: E402

from shapepipe_modules import cfis  # noqa: E402
from shapepipe_modules.simulate import load_truth, simulate_paired  # noqa: E402
from shapepipe_modules.simulate import geometry, streams  # noqa: E402
from shapepipe_modules.simulate.cli import build_parser, main as cli_main  # noqa: E402
from shapepipe_modules.simulate.psf import draw_exposure_psf, psf_shape_at  # noqa: E402
from shapepipe_modules.simulate.render import footprint_mask, render_ccd, stamp_radius  # noqa: E402
from shapepipe_modules.simulate.scene import make_scene  # noqa: E402

SEED = 3


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return simulate_paired("tiny", tmp_path_factory.mktemp("pair"), seed=SEED)


def _scene(sim):
    record = json.loads((sim / "simulation.json").read_text())
    params = record["parameters"]
    return record, params, make_scene(params, record["seed"], tuple(record["sky_box_deg"]))


def _galaxies(scene):
    keep = ~scene["is_star"]
    return {name: column[keep] for name, column in scene.items()}


def _ccd_footprints(sim):
    """Galaxy stamp mask of every (exposure, CCD), from the scene and the same geometry as the renderer."""
    record, params, scene = _scene(sim)
    galaxies = _galaxies(scene)
    mosaic = geometry.Mosaic(params)
    masks = {}
    for p in geometry.exposure_pointings(params, record["seed"]):
        model = draw_exposure_psf(params, record["seed"], p["exposure"])
        for k in range(mosaic.n_ccd):
            wcs = geometry.make_wcs(geometry.ccd_wcs_cards(params, mosaic, k, p["ra"], p["dec"]))
            x, y = geometry.world_to_pixel(wcs, galaxies["ra"], galaxies["dec"])
            fwhm = psf_shape_at(model, mosaic.x0[k] + x - 1.0, mosaic.y0[k] + y - 1.0, mosaic.half_extent)[0]
            radius = stamp_radius(galaxies, fwhm, params, 1.0)
            masks[(f"{p['exposure']:07d}", k)] = footprint_mask(x, y, radius, params["ccd_nx"], 0, params["ccd_ny"])
    return masks


def _tile_footprint(sim, tile):
    record, params, scene = _scene(sim)
    galaxies = _galaxies(scene)
    psf = json.loads((sim / "truth" / "psf.json").read_text())["tiles"][tile]
    wcs = geometry.make_wcs(geometry.tile_wcs_cards(params, *cfis.parse_tile_id(tile)))
    x, y = geometry.world_to_pixel(wcs, galaxies["ra"], galaxies["dec"])
    radius = stamp_radius(galaxies, np.full(x.size, psf["fwhm"]), params, 1.0)
    size = params["tile_size"]
    return footprint_mask(x, y, radius, size, 0, size)


def _bits(array):
    array = np.ascontiguousarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def _compare(a, b, mask, label, fractions):
    same = _bits(a) == _bits(b)
    assert same[~mask].all(), f"{label}: {np.count_nonzero(~same[~mask])} pixels outside the galaxy stamps differ"
    fractions.append((label, same[mask].mean()))


def test_records_differ_in_shear_only(pair):
    plus, minus = (json.loads((d / "simulation.json").read_text()) for d in pair)
    assert (plus["pair"], minus["pair"]) == (
        {"member": "plus", "shear_sign": 1, "pairing": "shear", "partner": "minus"},
        {"member": "minus", "shear_sign": -1, "pairing": "shear", "partner": "plus"})
    assert plus["parameters"]["shear"] == [[0.02, 0.0]] and minus["parameters"]["shear"] == [[-0.02, 0.0]]
    assert plus["overrides"] == {"shear": [[0.02, 0.0]]}
    assert minus["shear"] == {"244.252": [-0.02, 0.0]}
    strip = lambda record: {k: v for k, v in record["parameters"].items() if k != "shear"}  # noqa: E731
    assert strip(plus) == strip(minus)
    assert plus["random_streams"] == minus["random_streams"] == streams.RANDOM_STREAMS_VERSION
    assert plus["seed"] == minus["seed"] == SEED


def test_pixels_outside_galaxy_stamps_identical(pair):
    plus, minus = pair
    masks = _ccd_footprints(plus)
    inside_image = []
    for (number, k), mask in masks.items():
        assert 0.01 < mask.mean() < 0.9, "the footprint mask should cover part of the CCD"
        for kind in ("image", "weight", "flag"):
            name = cfis.exposure_file_name(number, kind)
            a = fits.getdata(plus / "exposures" / name, k + 1)
            b = fits.getdata(minus / "exposures" / name, k + 1)
            fractions = inside_image if kind == "image" else []
            _compare(a, b, mask, f"{name}[{k}]", fractions)
    # The test can fail: pixels inside the galaxy stamps do change with the shear
    # (not all: far out in a stamp the galaxy adds ~0 photons, drawn from the same stream).
    print("identical fraction inside the galaxy stamps:", inside_image)
    assert max(f for _, f in inside_image) < 0.9, inside_image

    tile = "244.252"
    mask = _tile_footprint(plus, tile)
    fractions = []
    for kind in ("image", "weight"):
        name = cfis.tile_file_name(*cfis.parse_tile_id(tile), kind=kind)
        with fits.open(plus / "tiles" / name) as a, fits.open(minus / "tiles" / name) as b:
            _compare(a[-1].data, b[-1].data, mask, name, fractions)
    print("identical fraction inside the galaxy stamps:", fractions)
    assert fractions[0][1] < 0.9, fractions  # tile image inside the stamps


def test_star_truth_identical_and_galaxies_only_sheared(pair):
    plus, minus = pair
    tables = [(load_truth(plus, exposure=e), load_truth(minus, exposure=e)) for e in ("2100001", "2100002")]
    tables.append((load_truth(plus, tile="244.252"), load_truth(minus, tile="244.252")))
    for a, b in tables:
        assert len(a) == len(b) and np.array_equal(a["id"], b["id"])
        star = np.asarray(a["is_star"])
        assert star.sum() > 10 and (~star).sum() > 10
        for name in a.colnames:
            if name in ("g1", "g2"):
                assert np.array_equal(a[name][star], b[name][star])
                assert np.array_equal(a[name][~star], -b[name][~star])
            else:
                assert np.array_equal(a[name], b[name]), name
    assert np.all(tables[-1][0]["g1"][~np.asarray(tables[-1][0]["is_star"])] == 0.02)
    # The guarantee for saturation trails assumes galaxies never saturate.
    for a, _ in tables[:2]:
        assert not np.any(a["saturated"][~np.asarray(a["is_star"])]) and np.any(a["saturated"])


def test_scene_changes_only_the_galaxies_shear():
    from shapepipe_modules.simulate import resolve_parameters

    ra0, dec0 = cfis.tile_centre(244, 252)
    box = (ra0 - 0.03, ra0 + 0.03, dec0 - 0.03, dec0 + 0.03)
    a = make_scene(resolve_parameters("tiny", shear=[[0.02, 0.0]]), 5, box)
    b = make_scene(resolve_parameters("tiny", shear=[[0.0, 0.04]]), 5, box)
    c = make_scene(resolve_parameters("tiny", shear=[[0.02, 0.0]], galaxy_density=30.0), 5, box)
    star = a["is_star"]
    for name in a:
        if name in ("g1", "g2"):
            assert not np.array_equal(a[name][~star], b[name][~star])
        else:
            assert np.array_equal(a[name], b[name]), name
    # More galaxies: every star keeps all its properties and its id.
    for name in a:
        assert np.array_equal(a[name][star], c[name][c["is_star"]]), name


def test_one_galaxy_changes_only_its_own_stamp():
    """Rendering one CCD twice, one galaxy's shape changed: only that galaxy's stamp differs."""
    from shapepipe_modules.simulate import resolve_parameters

    params = resolve_parameters("tiny")
    mosaic = geometry.Mosaic(params)
    ra0, dec0 = cfis.tile_centre(244, 252)
    cards = geometry.ccd_wcs_cards(params, mosaic, 0, ra0, dec0)
    wcs = geometry.make_wcs(cards)
    corners = geometry.pixel_to_world(wcs, np.array([0.5, params["ccd_nx"] + 0.5]), np.array([0.5, params["ccd_ny"] + 0.5]))
    box = (min(corners[0]) - 0.01, max(corners[0]) + 0.01, min(corners[1]) - 0.01, max(corners[1]) + 0.01)
    scene = make_scene(params, SEED, box)
    model = draw_exposure_psf(params, SEED, 2100001)
    task = {"params": params, "seed": SEED, "exposure": 2100001, "ccd": 0, "wcs_cards": cards, "psf_model": model,
            "half_extent": mosaic.half_extent, "focal_x0": mosaic.x0[0], "focal_y0": mosaic.y0[0], "objects": scene}
    first = render_ccd(task)
    x, y = geometry.world_to_pixel(wcs, scene["ra"], scene["dec"])
    inside = ~scene["is_star"] & (x > 50) & (x < params["ccd_nx"] - 50) & (y > 50) & (y < params["ccd_ny"] - 50)
    target = np.flatnonzero(inside)[np.argmax(scene["flux"][inside])]
    changed = {name: column.copy() for name, column in scene.items()}
    changed["e1_int"][target] = -changed["e1_int"][target]
    changed["e2_int"][target] = 0.5 - changed["e2_int"][target]
    second = render_ccd(dict(task, objects=changed))
    fwhm = psf_shape_at(model, mosaic.x0[0] + x[target] - 1.0, mosaic.y0[0] + y[target] - 1.0, mosaic.half_extent)[0]
    one = {name: column[[target]] for name, column in scene.items()}
    mask = footprint_mask(x[[target]], y[[target]], stamp_radius(one, np.atleast_1d(fwhm), params, 1.0),
                          params["ccd_nx"], 0, params["ccd_ny"])
    same = _bits(first["image"]) == _bits(second["image"])
    assert same[~mask].all() and mask.sum() > 100
    assert same[mask].mean() < 0.5
    for name in ("weight", "flag"):
        assert np.array_equal(first[name], second[name])


def test_photon_noise_sums_to_poisson():
    """numpy's Poisson draws nothing for a zero mean, so one stream per object cannot shift another."""
    lam = np.array([0.0, 0.0, 3.3, 0.0, 12.0, 0.0])
    a = np.random.default_rng(9).poisson(lam)
    b = np.random.default_rng(9).poisson(lam[lam > 0])
    assert np.array_equal(a[lam > 0], b) and np.all(a[lam == 0] == 0)


def test_streams_keys_are_checked():
    with pytest.raises(ValueError, match="keyed by"):
        streams.stream(1, streams.OBJECT_PHOTONS, 2100001, 0)
    with pytest.raises(ValueError, match="seed"):
        streams.stream(2**32, streams.SKY_PHOTONS, 1, 0)
    a = streams.stream(1, streams.SKY_PHOTONS, 2100001, 0).normal(size=4)
    assert not np.array_equal(a, streams.stream(1, streams.READ_NOISE, 2100001, 0).normal(size=4))
    assert np.array_equal(a, streams.stream(1, streams.SKY_PHOTONS, 2100001, 0).normal(size=4))


def test_cli_paired_and_negative_shear(tmp_path, monkeypatch):
    args = build_parser().parse_args(["--paired", "--shear", "-0.02,0.01", "-o", str(tmp_path)])
    assert args.paired and args.shear == [[-0.02, 0.01]]
    calls = []
    import shapepipe_modules.simulate.core as core

    monkeypatch.setattr(core, "simulate_paired", lambda **kw: calls.append(kw) or (tmp_path / "plus", tmp_path / "minus"))
    assert cli_main(["--paired", "--preset", "tiny", "--shear", "-0.02,0.01", "-o", str(tmp_path), "--no-progress"]) == 0
    assert calls[0]["shear"] == [[-0.02, 0.01]] and calls[0]["preset"] == "tiny"


def test_noise_realisation_redraws_the_noise_of_the_same_scene(pair, tmp_path):
    """noise_realisation = 1: the same truth and noise-free sky, an independent noise draw of the variance the weight gives."""
    from shapepipe_modules.simulate import simulate

    plus = pair[0]
    other = simulate("tiny", tmp_path / "r1", seed=SEED, noise_realisation=1)
    record = json.loads((other / "simulation.json").read_text())
    assert record["parameters"]["noise_realisation"] == 1
    tile = record["parameters"]["tiles"][0]
    a, b = load_truth(plus, tile=tile), load_truth(other, tile=tile)
    assert a.colnames == b.colnames and len(a) == len(b) > 0
    for name in a.colnames:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name
    name = cfis.tile_file_name(*cfis.parse_tile_id(tile), kind="image")
    first, second = fits.getdata(plus / "tiles" / name), fits.getdata(other / "tiles" / name)
    weight = fits.getdata(plus / "tiles" / name.replace(".fits", ".weight.fits.fz"), 1)
    blank = weight > 0
    # Far from the objects the difference of two draws has twice the weight's variance; near them more
    # (the objects' photons), so the robust scatter is taken.
    z = ((second - first) * np.sqrt(weight / 2.0))[blank]
    scatter = 1.4826 * np.median(np.abs(z - np.median(z)))
    assert abs(np.median(z)) < 0.02 and abs(scatter - 1.0) < 0.05
    assert np.corrcoef(first[blank], second[blank])[0, 1] > 0  # the same objects in both
    # The exposures' noise is redrawn too; their weight (the sky's variance) is the same.
    exposure = sorted((plus / "exposures").glob("*p.fits"))[0]
    assert not np.array_equal(fits.getdata(exposure, 1), fits.getdata(other / "exposures" / exposure.name, 1))
    weight_name = exposure.name.replace(".fits", ".weight.fits.fz")
    assert np.array_equal(fits.getdata(plus / "exposures" / weight_name, 1),
                          fits.getdata(other / "exposures" / weight_name, 1))


def test_noise_streams_realisation_zero_is_the_seed_own():
    key = (2100001, 0)
    assert np.array_equal(streams.noise_stream(1, streams.SKY_PHOTONS, 0, *key).normal(size=4),
                          streams.stream(1, streams.SKY_PHOTONS, *key).normal(size=4))
    assert not np.array_equal(streams.noise_stream(1, streams.SKY_PHOTONS, 1, *key).normal(size=4),
                              streams.stream(1, streams.SKY_PHOTONS, *key).normal(size=4))
    with pytest.raises(ValueError, match="not noise"):
        streams.noise_stream(1, streams.GALAXY_SCENE, 1)
    with pytest.raises(ValueError, match=">= 0"):
        streams.noise_stream(1, streams.SKY_PHOTONS, -1, *key)
