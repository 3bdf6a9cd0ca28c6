"""Orchestration of a simulation: scene, parallel rendering, files on disk."""

from __future__ import annotations

import io
import json
import platform
import shutil
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path, write_text_atomic
from shapepipe_modules import cfis

from . import geometry, presets
from .psf import draw_exposure_psf
from .render import render_ccd, render_tile_block, stamp_radius
from .scene import mag_to_flux, make_scene
from .streams import MAX_SEED, RANDOM_STREAMS_VERSION
from .variability import VARIABLE_COLUMNS, delta_mag, exposure_mjd, exposure_zero_point, make_variables

EXPOSURE_TRUTH_COLUMNS = [
    "id", "ra", "dec", "ccd", "x", "y", "mag", "flux", "is_star", "is_deep_sky", "hlr",
    "disk_hlr", "bulge_hlr", "bulge_frac", "disk_n", "bulge_n", "e1_int", "e2_int", "g1", "g2",
    "pair_id", "psf_fwhm", "psf_e1", "psf_e2", "saturated", "flag",
]
TILE_TRUTH_COLUMNS = [
    "id", "ra", "dec", "x", "y", "mag", "flux", "is_star", "is_deep_sky", "hlr", "disk_hlr",
    "bulge_hlr", "bulge_frac", "disk_n", "bulge_n", "e1_int", "e2_int", "g1", "g2", "pair_id",
    "n_exposures",
]
BRIGHT_STAR_MAG = 18.0
REFERENCE_STAR_MAG = 22.5
EXPOSURE_CONDITION_COLUMNS = ["exposure", "index", "tile", "mjd", "zero_point", "psf_fwhm0", "bad_zero_point",
                              "bad_seeing"]
VARIABLE_TRUTH_COLUMNS = ["id", "ra", "dec", "mag", *VARIABLE_COLUMNS]
_OBJECT_COLUMNS = ("id", "ra", "dec", "mag", "flux", "is_star", "is_deep_sky", "hlr", "disk_hlr", "bulge_hlr",
                   "bulge_frac", "disk_n", "bulge_n", "e1_int", "e2_int", "g1", "g2", "pair_id")


def hdu_bytes(hdu) -> bytes:
    """Bytes of one extension HDU as it appears inside a multi-extension file."""
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    data = buffer.getvalue()
    primary_size = len(fits.PrimaryHDU().header.tostring())
    return data[primary_size:]


def weight_hdu(weight, header):
    """Tile-compressed weight HDU, deterministic and accurate to 1e-5 relative.

    GZIP tiles would embed the compression time; RICE with an absolute
    quantization step (1e-5 of the median weight), a fixed dither seed and
    SUBTRACTIVE_DITHER_2 (zeros kept exact) gives identical bytes every time.
    """
    from astropy.io import fits

    positive = weight[weight > 0]
    step = 1e-5 * float(np.median(positive)) if positive.size else 1e-6
    return fits.CompImageHDU(weight, header=header, compression_type="RICE_1", quantize_level=-step,
                             quantize_method=2, dither_seed=1)


def _header(cards):
    from astropy.io import fits

    header = fits.Header()
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


def _ccd_cards(params, exposure, ccd, wcs_cards, zero_point=30.0):
    return [
        ("EXTNAME", f"ccd{ccd:02d}", "CCD name"),
        ("CCDNUM", ccd, "0-based CCD index (HDU index - 1)"),
        ("EXPNUM", exposure, "exposure number"),
        ("BUNIT", "ADU", ""),
        ("GAIN", params["gain"], "e-/ADU"),
        ("RDNOISE", params["read_noise"], "read noise, e-"),
        ("SATURATE", params["saturate"], "saturation level, ADU"),
        ("PHOTZP", zero_point, "mag = PHOTZP - 2.5 log10(ADU * FSCALE)"),
        ("FSCALE", 1.0, "flux scale to PHOTZP"),
        ("EXPTIME", params["exptime"], "s"),
        ("FILTER", params["filter"], ""),
    ] + list(wcs_cards)


def _ccd_job(task, work_dir):
    """Render one CCD and write its three extension HDUs as raw bytes."""
    from astropy.io import fits

    result = render_ccd(task)
    cards = _ccd_cards(task["params"], task["exposure"], task["ccd"], task["wcs_cards"],
                       task["zero_point"]) + [("MJD-OBS", task["mjd"], "")]
    stem = Path(work_dir) / f"{task['exposure']}-{task['ccd']:03d}"
    image = fits.ImageHDU(result["image"], header=_header(cards))
    Path(f"{stem}.image").write_bytes(hdu_bytes(image))
    weight = weight_hdu(result["weight"], _header(cards))
    Path(f"{stem}.weight").write_bytes(hdu_bytes(weight))
    flag = fits.CompImageHDU(result["flag"], header=_header(cards), compression_type="RICE_1")
    Path(f"{stem}.flag").write_bytes(hdu_bytes(flag))
    truth = result["truth"]
    truth["ccd"] = np.full(truth["id"].size, task["ccd"], np.int16)
    return truth


def _tile_job(task, work_dir):
    """Render one block of tile rows and store it as .npy files."""
    task = dict(task)
    task["coverage"] = tile_coverage(task)
    result = render_tile_block(task)
    stem = Path(work_dir) / f"tile{task['tile_index']:03d}-{task['row0']:06d}"
    np.save(f"{stem}.image.npy", result["image"], allow_pickle=False)
    np.save(f"{stem}.weight.npy", result["weight"], allow_pickle=False)
    return result["truth"]


def tile_coverage(task):
    """Number of exposures covering each pixel of a block of tile rows.

    Evaluated on a grid of ``coverage_step`` pixels (cell centres) and
    repeated to full resolution: an approximation within a few pixels of
    the CCD edges.
    """
    params = task["params"]
    size, step = params["tile_size"], params["coverage_step"]
    row0, row1 = task["row0"], task["row1"]
    tile_wcs = geometry.make_wcs(task["wcs_cards"])
    gx = np.arange(0, size, step) + step / 2.0 + 0.5
    gy = np.arange(row0, row1, step) + step / 2.0 + 0.5
    grid_x, grid_y = np.meshgrid(gx, gy)
    ra, dec = geometry.pixel_to_world(tile_wcs, grid_x.ravel(), grid_y.ravel())
    count = np.zeros(ra.size, np.int16)
    nx, ny = params["ccd_nx"], params["ccd_ny"]
    for exposure_cards in task["exposure_ccds"]:
        seen = np.zeros(ra.size, bool)
        for cards in exposure_cards:
            x, y = geometry.world_to_pixel(geometry.make_wcs(cards), ra, dec)
            seen |= (x >= 0.5) & (x < nx + 0.5) & (y >= 0.5) & (y < ny + 0.5)
        count += seen
    count = count.reshape(grid_y.shape)
    full = np.repeat(np.repeat(count, step, axis=0), step, axis=1)
    return full[: row1 - row0, :size]


def _sky_box(points_ra, points_dec, ra_ref, margin_deg):
    """RA/Dec box around points, RA unwrapped about ra_ref."""
    ra = ra_ref + np.mod(np.asarray(points_ra) - ra_ref + 180.0, 360.0) - 180.0
    dec = np.asarray(points_dec)
    cos_dec = max(np.cos(np.radians(np.max(np.abs(dec)))), 1e-3)
    return (ra.min() - margin_deg / cos_dec, ra.max() + margin_deg / cos_dec, dec.min() - margin_deg, dec.max() + margin_deg)


def _candidates(scene, bound_radius, ra0, dec0, x_range, y_range, scale):
    """Indices of objects whose stamps may touch a pixel rectangle of a TAN-like frame.

    Gnomonic projection about (ra0, dec0) with x = -xi, y = eta (pixels);
    the distortion (a few pixels at most) is absorbed by a 20-pixel margin.
    """
    ra = np.radians(scene["ra"])
    dec = np.radians(scene["dec"])
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cos_c = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cos_c
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cos_c
    px = -np.degrees(xi) * 3600.0 / scale
    py = np.degrees(eta) * 3600.0 / scale
    margin = bound_radius + 20.0
    keep = (cos_c > 0) & (px + margin > x_range[0]) & (px - margin < x_range[1]) & (py + margin > y_range[0]) & (py - margin < y_range[1])
    return np.flatnonzero(keep)


def simulator_fingerprint() -> str:
    """A digest of this simulator's source (every module of the package), recorded in ``simulation.json``.

    Data simulated by other simulator code (a changed star profile, noise,
    scene) differ in their pixels even with the same preset, seed and
    parameters; the digest lets a driver see that without a version number
    someone has to remember to bump.
    """
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _versions():
    import astropy
    import galsim
    import joblib
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "astropy": astropy.__version__, "galsim": galsim.__version__, "joblib": joblib.__version__}


def _run_parallel(function, tasks, work_dir, n_workers, label, progress):
    from joblib import Parallel, delayed
    from tqdm import tqdm

    jobs = (delayed(function)(task, str(work_dir)) for task in tasks)
    if n_workers == 1:
        results = (function(task, str(work_dir)) for task in tasks)
    else:
        results = Parallel(n_jobs=n_workers, return_as="generator")(jobs)
    return list(tqdm(results, total=len(tasks), desc=label, disable=not progress, leave=False))


def _write_table(path, columns, names):
    from astropy.table import Table

    table = Table({name: columns[name] for name in names})
    with atomic_path(path) as temporary:
        table.write(temporary, format="fits")


def _concat(parts, names):
    if not parts:
        return {name: np.zeros(0) for name in names}
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def simulate(preset="demo", output_dir="simulation", seed=1, n_workers=1, progress=False, **overrides):
    """Simulate a CFIS-like survey with its truth.

    Parameters
    ----------
    preset : {"tiny", "demo", "cfis", "sp_field"}
        Base parameters; see :mod:`shapepipe_modules.simulate.presets`.
    output_dir : path-like
        Directory to write (created; existing files of the same names are replaced).
    seed : int
        Seed of every random stream; the same seed gives byte-identical files
        for any ``n_workers``.
    n_workers : int
        Parallel processes (joblib) over CCDs and tile blocks.
    progress : bool
        Show progress bars.
    **overrides
        Any preset parameter by name.

    Returns
    -------
    pathlib.Path
        The output directory.
    """
    return _simulate(preset, output_dir, seed, n_workers, progress, overrides, {})


#: Sub-folders of a paired simulation: the shear as given, and negated.
PAIR_MEMBERS = ("plus", "minus")


#: How the two members of a paired simulation differ.
PAIRINGS = ("shear", "rotate")


def simulate_paired(preset="demo", output_dir="simulation", seed=1, n_workers=1, progress=False, pairing="shear",
                    **overrides):
    """Two simulations whose mean cancels the shape noise of every galaxy.

    ``pairing = "shear"``: they differ only in the sign of the shear.
    ``output_dir/plus`` is :func:`simulate` with the given parameters;
    ``output_dir/minus`` has every tile's shear ``(g1, g2)`` replaced by
    ``(-g1, -g2)`` (with a cluster, its NFW shear too: ``nfw_sign = -1``)
    and every other parameter, the seed and so the scene,
    the PSFs, the pointings and every noise stream identical: outside the
    galaxies' drawing stamps the two are identical pixel for pixel.

    ``pairing = "rotate"``: the same shear in both, and in ``minus`` every
    field galaxy's intrinsic ellipticity negated (``intrinsic_rotated``).
    Positions are the same in both members, also when the cluster lenses
    them (``nfw_lensed_positions``), which a sign flip of the lens would
    move; blends then keep their neighbours and their radius.

    Each folder's ``simulation.json`` records the full resolved
    ``parameters``, the ``overrides`` that made it and ``pair``
    (``member``, ``shear_sign`` +1 / -1, the sign of the shear relative
    to ``plus``, ``pairing`` and ``partner`` folder name).

    Parameters
    ----------
    preset, seed, n_workers, progress, **overrides
        As for :func:`simulate` (``shear`` may be overridden too).
    output_dir : path-like
        Parent directory of ``plus`` and ``minus``.
    pairing : {"shear", "rotate"}

    Returns
    -------
    tuple of pathlib.Path
        ``(plus_dir, minus_dir)``.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"simulate_paired: pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    params = presets.resolve_parameters(preset, **overrides)
    # 0.0 rather than -0.0: the negated record compares equal and prints plainly.
    negated = [[-g if g != 0 else 0.0 for g in pair] for pair in params["shear"]]
    out = Path(output_dir)
    done = []
    for member, sign in (("plus", 1), ("minus", -1)):
        partner = "minus" if member == "plus" else "plus"
        if pairing == "shear":
            member_overrides = dict(overrides, shear=params["shear"] if sign > 0 else negated)
            if params["cluster"]:  # the cluster's NFW shear changes sign with the tiles' shear
                member_overrides["nfw_sign"] = sign
        else:
            member_overrides = dict(overrides, intrinsic_rotated=sign < 0)
        shear_sign = sign if pairing == "shear" else 1
        record = {"pair": {"member": member, "shear_sign": shear_sign, "pairing": pairing, "partner": partner}}
        done.append(_simulate(preset, out / member, seed, n_workers, progress, member_overrides, record))
    return done[0], done[1]


def _simulate(preset, output_dir, seed, n_workers, progress, overrides, extra_record):
    """:func:`simulate`, with extra entries for ``simulation.json``."""
    from astropy.io import fits

    params = presets.resolve_parameters(preset, **overrides)
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"simulate: seed must be an integer in 0..{MAX_SEED}, got {seed}")
    n_workers = max(int(n_workers), 1)
    out = Path(output_dir)
    for sub in ("exposures", "tiles", "truth", "catalogues"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    work_dir = out / ".work"
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir()

    mosaic = geometry.Mosaic(params)
    scale = params["pixel_scale"]
    pointings = geometry.exposure_pointings(params, seed)
    tiles = [cfis.parse_tile_id(tile) for tile in params["tiles"]]
    tile_ids = [cfis.tile_id(*t) for t in tiles]
    ccd_cards = {(p["exposure"], k): geometry.ccd_wcs_cards(params, mosaic, k, p["ra"], p["dec"]) for p in pointings for k in range(mosaic.n_ccd)}
    ccd_wcs = {key: geometry.make_wcs(cards) for key, cards in ccd_cards.items()}
    tile_cards = [geometry.tile_wcs_cards(params, *t) for t in tiles]
    tile_wcs = [geometry.make_wcs(cards) for cards in tile_cards]

    # Sky box covering every CCD and tile.
    bx, by = geometry.ccd_boundary(mosaic, 4)
    sky_points = [geometry.pixel_to_world(w, bx, by) for w in ccd_wcs.values()]
    n = params["tile_size"]
    for w in tile_wcs:
        sky_points.append(geometry.pixel_to_world(w, np.array([0.5, n + 0.5, 0.5, n + 0.5]), np.array([0.5, 0.5, n + 0.5, n + 0.5])))
    ra_ref = cfis.tile_centre(*tiles[0])[0]
    box = _sky_box(np.concatenate([p[0] for p in sky_points]), np.concatenate([p[1] for p in sky_points]), ra_ref, 10.0 / 3600.0)
    scene = make_scene(params, seed, box)
    # The cluster's truth column, only when there is a cluster (other simulations keep their files).
    extra_columns = ["cluster_role", "knot_frac", "knot_n", "knot_seed"] if "cluster_role" in scene else []
    object_columns = _OBJECT_COLUMNS + tuple(extra_columns)
    exposure_truth_columns = EXPOSURE_TRUTH_COLUMNS + extra_columns
    tile_truth_columns = TILE_TRUTH_COLUMNS + extra_columns
    bound = stamp_radius(scene, np.full(scene["ra"].size, params["psf_fwhm_range"][1] * 1.2), params, 1.0)

    psf_models = {p["exposure"]: draw_exposure_psf(params, seed, p["exposure"]) for p in pointings}
    # Observing conditions (variability.py); the defaults leave the dates, zero points and PSFs as before.
    mjds = {p["exposure"]: exposure_mjd(params, p["index"]) for p in pointings}
    zero_points = {p["exposure"]: exposure_zero_point(params, seed, p["exposure"], p["index"]) for p in pointings}
    for p in pointings:
        if p["index"] in params["bad_seeing_exposures"]:
            psf_models[p["exposure"]]["fwhm0"] *= params["bad_seeing_factor"]
    variable = params["variable_fraction"] > 0
    object_columns = object_columns + (VARIABLE_COLUMNS + ("mag_ref",) if variable else ())
    exposure_truth_columns = exposure_truth_columns + (list(VARIABLE_COLUMNS) + ["mag_ref"] if variable else [])
    tile_truth_columns = tile_truth_columns + (list(VARIABLE_COLUMNS) if variable else [])
    scene.update(make_variables(params, seed, scene["is_star"], (min(mjds.values()), max(mjds.values()))))
    scene["mag_ref"] = scene["mag"]

    # Which CCDs of which exposure overlap each tile.
    overlaps = []
    for t_wcs in tile_wcs:
        per_exposure = {}
        for p in pointings:
            ccds = [k for k in range(mosaic.n_ccd) if geometry.ccd_tile_overlap(ccd_wcs[(p["exposure"], k)], t_wcs, mosaic, n)]
            if ccds:
                per_exposure[p["exposure"]] = ccds
        overlaps.append(per_exposure)

    # Exposures, one task per CCD.
    tasks = []
    for p in pointings:
        mjd = mjds[p["exposure"]]
        for k in range(mosaic.n_ccd):
            x_range = (mosaic.x0[k] - 0.5, mosaic.x0[k] + mosaic.nx - 0.5)
            y_range = (mosaic.y0[k] - 0.5, mosaic.y0[k] + mosaic.ny - 0.5)
            idx = _candidates(scene, bound, p["ra"], p["dec"], x_range, y_range, scale)
            objects = {name: scene[name][idx] for name in object_columns}
            if variable:  # the magnitude of this date
                dmag = delta_mag(objects, mjd, params["mjd_start"])
                objects["mag"] = objects["mag_ref"] + dmag
                objects["flux"] = np.where(dmag != 0, mag_to_flux(objects["mag"]), objects["flux"])
            tasks.append({
                "params": params, "seed": seed, "exposure": p["exposure"], "ccd": k, "mjd": mjd,
                "zero_point": zero_points[p["exposure"]],
                "wcs_cards": ccd_cards[(p["exposure"], k)], "psf_model": psf_models[p["exposure"]],
                "half_extent": mosaic.half_extent, "focal_x0": mosaic.x0[k], "focal_y0": mosaic.y0[k],
                "objects": objects,
            })
    truths = _run_parallel(_ccd_job, tasks, work_dir, n_workers, "exposure CCDs", progress)

    exposure_names = []
    for p in pointings:
        number = f"{p['exposure']:07d}"
        exposure_names.append(number)
        mjd = mjds[p["exposure"]]
        primary = fits.PrimaryHDU(header=_header([
            ("EXPNUM", p["exposure"], "exposure number"),
            ("OBJECT", f"CFIS sim {p['tile']}", ""),
            ("TELESCOP", "CFHT 3.6m", "simulated"),
            ("INSTRUME", "MegaPrime", "simulated (reduced mosaic unless preset cfis)"),
            ("RA_DEG", p["ra"], "pointing RA, deg"),
            ("DEC_DEG", p["dec"], "pointing Dec, deg"),
            ("EXPTIME", params["exptime"], "s"),
            ("MJD-OBS", mjd, ""),
            ("FILTER", params["filter"], ""),
            ("PHOTZP", zero_points[p["exposure"]], "mag zero point"),
            ("NEXTEND", mosaic.n_ccd, "number of CCD extensions"),
            ("SIMSEED", seed, "shapepipe_simulate seed"),
            ("ORIGIN", "shapepipe_simulate", ""),
        ]))
        head = hdu_bytes_primary(primary)
        for kind in ("image", "weight", "flag"):
            path = out / "exposures" / cfis.exposure_file_name(number, kind)
            with atomic_path(path) as temporary, open(temporary, "wb") as handle:
                handle.write(head)
                for k in range(mosaic.n_ccd):
                    with open(work_dir / f"{p['exposure']}-{k:03d}.{kind}", "rb") as part:
                        shutil.copyfileobj(part, handle)
        parts = [truths[p["index"] * mosaic.n_ccd + k] for k in range(mosaic.n_ccd)]
        columns = _concat(parts, exposure_truth_columns)
        _write_table(out / "truth" / f"truth_exp-{number}.fits", columns, exposure_truth_columns)

    # Tiles, one task per block of rows.
    tile_psf = {}
    tile_tasks = []
    for t_index, (t, cards) in enumerate(zip(tiles, tile_cards)):
        contributing = sorted(overlaps[t_index])
        models = [psf_models[e] for e in contributing] or list(psf_models.values())
        tile_psf[tile_ids[t_index]] = {
            "beta": params["psf_beta"],
            "fwhm": float(np.mean([m["fwhm0"] for m in models])),
            "e1": float(np.mean([m["e1_0"] for m in models])),
            "e2": float(np.mean([m["e2_0"] for m in models])),
            "exposures": contributing,
        }
        ra0, dec0 = cfis.tile_centre(*t)
        half = n / 2.0 + 0.5
        idx = _candidates(scene, bound, ra0, dec0, (-half, half), (-half, half), scale)
        objects = {name: scene[name][idx] for name in object_columns}
        exposure_ccds = [[ccd_cards[(e, k)] for k in overlaps[t_index][e]] for e in contributing]
        for row0 in range(0, n, params["tile_block_rows"]):
            tile_tasks.append({
                "params": params, "seed": seed, "tile_index": t_index, "tile": t, "row0": row0,
                "row1": min(row0 + params["tile_block_rows"], n), "wcs_cards": cards,
                "psf": tile_psf[tile_ids[t_index]], "n_exposures": len(contributing),
                "exposure_ccds": exposure_ccds, "objects": objects,
            })
    tile_truths = _run_parallel(_tile_job, tile_tasks, work_dir, n_workers, "tile blocks", progress)

    for t_index, (t, cards) in enumerate(zip(tiles, tile_cards)):
        contributing = sorted(overlaps[t_index])
        header_cards = [
            ("OBJECT", f"CFIS.{tile_ids[t_index]}.r", ""),
            ("FILTER", params["filter"], ""),
            ("PHOTZP", 30.0, "mag zero point"),
            ("EXPTIME", params["exptime"], "s, per input exposure (mean stack)"),
            ("GAIN", params["gain"] * max(len(contributing), 1), "e-/ADU of the mean stack"),
            ("SATURATE", params["saturate"], "ADU"),
            ("NCOMBINE", len(contributing), "input exposures"),
            ("SIMSEED", seed, "shapepipe_simulate seed"),
            ("ORIGIN", "shapepipe_simulate", ""),
        ] + list(cards)
        header = _header(header_cards)
        for e in contributing:
            header.add_history(f"input image {cfis.exposure_file_name(f'{e:07d}')} {len(overlaps[t_index][e])} extension(s)")
        _write_tile_image(out / "tiles" / cfis.tile_file_name(*t, kind="image"), header, work_dir, t_index, n, params["tile_block_rows"])
        blocks = [np.load(work_dir / f"tile{t_index:03d}-{row0:06d}.weight.npy", allow_pickle=False) for row0 in range(0, n, params["tile_block_rows"])]
        weight = np.concatenate(blocks, axis=0)
        del blocks
        compressed = weight_hdu(weight, _header(header_cards))
        path = out / "tiles" / cfis.tile_file_name(*t, kind="weight")
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            handle.write(hdu_bytes_primary(fits.PrimaryHDU()))
            handle.write(hdu_bytes(compressed))
        del weight, compressed
        parts = [tile_truths[i] for i, task in enumerate(tile_tasks) if task["tile_index"] == t_index]
        columns = _concat(parts, tile_truth_columns)
        _write_table(out / "truth" / f"truth_tile-{cfis.tile_id(*t, sep='-')}.fits", columns, tile_truth_columns)

    # Catalogues for masking.
    bright = scene["is_star"] & (scene["mag"] < BRIGHT_STAR_MAG)
    _write_table(out / "catalogues" / "bright_stars.fits", {"ra": scene["ra"][bright], "dec": scene["dec"][bright], "mag": scene["mag"][bright]}, ["ra", "dec", "mag"])
    # A photometric reference catalogue (as Gaia or Pan-STARRS would be): every star to mag 22.5, at its
    # constant magnitude (a variable at its reference magnitude).
    reference = scene["is_star"] & (scene["mag"] <= REFERENCE_STAR_MAG)
    _write_table(out / "catalogues" / "reference_stars.fits", {"ra": scene["ra"][reference], "dec": scene["dec"][reference],
                 "mag": scene["mag"][reference]}, ["ra", "dec", "mag"])
    deep = scene["is_deep_sky"]
    _write_table(out / "catalogues" / "deep_sky.fits", {
        "name": np.array([f"SIMGAL{int(i)}" for i in scene["id"][deep]], dtype="U16"),
        "ra": scene["ra"][deep], "dec": scene["dec"][deep], "radius": 6.0 * scene["hlr"][deep] / 3600.0,
    }, ["name", "ra", "dec", "radius"])

    # Observing conditions of every exposure, and the variables' light curves.
    _write_table(out / "truth" / "exposures.fits", {
        "exposure": np.array([p["exposure"] for p in pointings], np.int64),
        "index": np.array([p["index"] for p in pointings], np.int32),
        "tile": np.array([p["tile"] for p in pointings], dtype="U16"),
        "mjd": np.array([mjds[p["exposure"]] for p in pointings]),
        "zero_point": np.array([zero_points[p["exposure"]] for p in pointings]),
        "psf_fwhm0": np.array([psf_models[p["exposure"]]["fwhm0"] for p in pointings]),
        "bad_zero_point": np.array([p["index"] in params["bad_zero_point_exposures"] for p in pointings]),
        "bad_seeing": np.array([p["index"] in params["bad_seeing_exposures"] for p in pointings]),
    }, EXPOSURE_CONDITION_COLUMNS)
    if variable:
        chosen = scene["var_type"] > 0
        _write_table(out / "truth" / "variables.fits", {name: scene[name][chosen] for name in VARIABLE_TRUTH_COLUMNS},
                     VARIABLE_TRUTH_COLUMNS)

    psf_record = {
        "model": "Moffat(beta, fwhm).shear(e1=e1, e2=e2); see shapepipe_modules.simulate.psf",
        "mosaic": mosaic.as_dict(),
        "exposures": {str(e): m for e, m in psf_models.items()},
        "tiles": tile_psf,
    }
    write_text_atomic(out / "truth" / "psf.json", json.dumps(psf_record, indent=1, sort_keys=True) + "\n")
    record = {
        "preset": preset,
        "parameters": params,
        "overrides": {name: params[name] for name in sorted(overrides) if overrides[name] is not None},
        "seed": seed,
        "versions": _versions(),
        "exposures": exposure_names,
        "tiles": tile_ids,
        "shear": {tile_ids[i]: params["shear"][i] for i in range(len(tiles))},
        "tile_exposures": {tile_ids[i]: [f"{e:07d}" for e in sorted(overlaps[i])] for i in range(len(tiles))},
        "pointings": pointings,
        "n_objects": int(scene["id"].size),
        "sky_box_deg": [float(v) for v in box],
        "random_streams": RANDOM_STREAMS_VERSION,
        "simulator": simulator_fingerprint(),
    }
    record.update(extra_record)
    write_text_atomic(out / "simulation.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    write_text_atomic(out / "tile_list.txt", "".join(f"{t}\n" for t in tile_ids))
    write_text_atomic(out / "exposure_list.txt", "".join(f"{e}\n" for e in exposure_names))
    shutil.rmtree(work_dir)
    return out


def hdu_bytes_primary(primary) -> bytes:
    """Bytes of a primary HDU (header and data)."""
    buffer = io.BytesIO()
    primary.writeto(buffer)
    return buffer.getvalue()


def _write_tile_image(path, header, work_dir, t_index, size, block_rows):
    """Write a tile image block by block (never the whole tile in memory)."""
    from astropy.io import fits

    with atomic_path(path) as temporary:
        stream_header = fits.Header()
        stream_header["SIMPLE"] = True
        stream_header["BITPIX"] = -32
        stream_header["NAXIS"] = 2
        stream_header["NAXIS1"] = size
        stream_header["NAXIS2"] = size
        for card in header.cards:
            if card.keyword in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
                continue
            stream_header.append(card)
        stream = fits.StreamingHDU(str(temporary), stream_header)
        for row0 in range(0, size, block_rows):
            stream.write(np.load(work_dir / f"tile{t_index:03d}-{row0:06d}.image.npy", allow_pickle=False))
        stream.close()
