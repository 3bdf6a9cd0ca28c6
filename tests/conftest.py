"""Shared fixtures: one simulated ``tiny`` survey per test session, and the
pipeline products built from it by the real modules (split CCDs, header
store, single-exposure and tile catalogues).

The chain helpers are plain functions, also used by
``benchmarks/report_acceptance.py`` on the ``demo`` preset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

#: Seed of the shared simulation (fixed: the measured numbers are reproducible).
TINY_SEED = 20240


def run_module(function, inputs, output_dir, number, name=None, **options):
    """Run one module job in-process, as the runner would, with option defaults.

    Parameters
    ----------
    function : callable
        A function declared with :func:`shapepipe.module.module` (has ``.spec``).
    inputs : list of path
        The job's input files, in FILE_PATTERN order.
    output_dir : path
        Created if needed; the module writes its outputs there.
    number : str
        The file number (``-2100001-0``, ``-244-252``).
    name : str, optional
        Logger name (default: the module name).
    **options
        Option values overriding the declared defaults.

    Returns
    -------
    dict
        What the module function returned (its summary).
    """
    from shapepipe.job import Job

    spec = function.spec
    values = {option.name: option.default for option in spec.options}
    values.update(options)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    job = Job(module=spec.name, module_run=spec.name, number=number, inputs=[Path(p) for p in inputs],
              output_dir=output_dir, log_dir=output_dir, options=values,
              logger=logging.getLogger(f"accept.{name or spec.name}"), run_dir=output_dir)
    return function(job) or {}


def split_exposures(sim_dir, output_dir):
    """split_exp on every simulated exposure, then merge_headers into one store.

    Returns
    -------
    ccds : dict
        ``{(exposure, ccd): {'image': path, 'weight': path, 'flag': path}}``.
    store : Path
        The header store ``log_exp_headers.sqlite``.
    """
    from shapepipe_modules.merge_headers.merge_headers import merge_header_files
    from shapepipe_modules.split_exp.split_exp import split_exposure

    sim_dir, output_dir = Path(sim_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    exposures = (sim_dir / "exposure_list.txt").read_text().split()
    ccds, header_files = {}, []
    for exposure in exposures:
        base = sim_dir / "exposures" / f"{exposure}p"
        paths = [Path(f"{base}.fits"), Path(f"{base}.weight.fits.fz"), Path(f"{base}.flag.fits.fz")]
        result = split_exposure(paths, ["image", "weight", "flag"], f"-{exposure}", output_dir)
        header_files.append(result.header_file)
        for ccd in range(result.n_ccd):
            ccds[(exposure, ccd)] = {kind: output_dir / f"{kind}-{exposure}-{ccd}.fits"
                                     for kind in ("image", "weight", "flag")}
    store = output_dir / "log_exp_headers.sqlite"
    merge_header_files(header_files, store)
    return ccds, store


def extract_ccds(ccds, output_dir, engine="sep", **options):
    """The sextractor module on every CCD; ``{(exposure, ccd): catalogue path}``."""
    from shapepipe_modules.sextractor.runner import sextractor

    catalogues = {}
    for (exposure, ccd), files in sorted(ccds.items()):
        number = f"-{exposure}-{ccd}"
        out = Path(output_dir) / engine
        run_module(sextractor, [files["image"], files["weight"], files["flag"]], out, number,
                   ENGINE=engine, BKG_RESIDUAL=False, **options)
        catalogues[(exposure, ccd)] = out / f"sexcat{number}.fits"
    return catalogues


def extract_tile(sim_dir, tile, store, output_dir, ccd_shape, **options):
    """The sextractor module on a simulated tile with the multi-epoch bookkeeping.

    ``ccd_shape = (nx, ny)`` of the exposure CCDs: the whole CCD is usable
    (CCD_SIZE). Returns the catalogue path.
    """
    from shapepipe_modules.sextractor.runner import DATA_DIR, sextractor

    xxx, yyy = tile.split(".")
    paths = [Path(sim_dir) / "tiles" / f"CFIS.{tile}.r.fits", Path(sim_dir) / "tiles" / f"CFIS.{tile}.r.weight.fits.fz"]
    nx, ny = ccd_shape
    number = f"-{xxx}-{yyy}"
    run_module(sextractor, paths, output_dir, number, DOT_SEX_FILE=str(DATA_DIR / "default_tile.sex"),
               FLAG_IMAGE=False, MAKE_POST_PROCESS=True, LOG_WCS=str(store), BKG_RESIDUAL=False,
               CCD_SIZE=[-0.5, nx - 0.5, -0.5, ny - 0.5], **options)
    return Path(output_dir) / f"sexcat{number}.fits"


def simulate_cluster_tile(directory, seed, preset="cluster_knotty"):
    """A cluster preset simulated in ``directory`` with a plain weight and an empty flag image beside it.

    The SExtractor binary reads neither a GZIP-tiled weight nor no flag image.
    """
    import numpy as np
    from astropy.io import fits

    from shapepipe_modules.simulate import simulate

    sim = simulate(preset, Path(directory) / "sim", seed=seed, n_workers=1)
    header = fits.getheader(sim / "tiles" / "CFIS.244.252.r.fits")
    weight = fits.getdata(sim / "tiles" / "CFIS.244.252.r.weight.fits.fz", 1)
    fits.PrimaryHDU(weight, header=header).writeto(sim / "weight.fits")
    fits.PrimaryHDU(np.zeros(weight.shape, np.int16), header=header).writeto(sim / "flag.fits")
    return sim


def pool_cluster_scores(pool, scores):
    """Add one tile's :func:`validate.crowded.cluster_scores` to ``pool`` (counts, not fractions)."""
    for key, value in (("found", scores["background_found"] * scores["n_background"]),
                       ("background", scores["n_background"]), ("whole", scores["members_whole"] * scores["n_members"]),
                       ("members", scores["n_members"]), ("shredded", scores["members_shredded"]),
                       ("both", scores.get("duplicated_across_passes", 0)), ("dup", scores["duplicated_truth"])):
        pool[key] = pool.get(key, 0.0) + value
    return pool


def ccd_shape(sim_dir):
    """(nx, ny) of the simulated CCDs."""
    import json

    params = json.loads((Path(sim_dir) / "simulation.json").read_text())["parameters"]
    return int(params["ccd_nx"]), int(params["ccd_ny"])


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory):
    """Folder of one ``tiny`` simulation (seed :data:`TINY_SEED`), shared by the session."""
    from shapepipe_modules.simulate import simulate

    out = tmp_path_factory.mktemp("tiny_sim")
    return Path(simulate(preset="tiny", output_dir=out, seed=TINY_SEED, n_workers=2))


@pytest.fixture(scope="session")
def tiny_split(tiny_sim, tmp_path_factory):
    """split_exp + merge_headers on the tiny exposures: ``(ccds, store)``."""
    return split_exposures(tiny_sim, tmp_path_factory.mktemp("tiny_split"))


@pytest.fixture(scope="session")
def tiny_sep_catalogues(tiny_split, tmp_path_factory):
    """sextractor (sep engine, default exposure configuration) on every tiny CCD."""
    ccds, _ = tiny_split
    return extract_ccds(ccds, tmp_path_factory.mktemp("tiny_sexcat"), engine="sep")


@pytest.fixture(scope="session")
def tiny_tile_catalogue(tiny_sim, tiny_split, tmp_path_factory):
    """sextractor (sep) on the tiny tile with MAKE_POST_PROCESS (EPOCH_i tables)."""
    _, store = tiny_split
    tile = (tiny_sim / "tile_list.txt").read_text().split()[0]
    return extract_tile(tiny_sim, tile, store, tmp_path_factory.mktemp("tiny_tile"), ccd_shape(tiny_sim))


@pytest.fixture(scope="session")
def tiny_gold_run(tmp_path_factory):
    """The whole GOLD chain (get_images ... make_catalog) on a ``tiny`` survey: its OUTPUT_DIR.

    As ``tests/test_gold.py``: seed 1, no star brighter than 17 (their halos
    would leave too few PSF stars on tiny's small CCDs). About 55 s of CPU.
    """
    from shapepipe_modules.gold import chain
    from shapepipe_modules.simulate import simulate

    sim = tmp_path_factory.mktemp("gold_tiny_sim")
    simulate(preset="tiny", output_dir=sim, seed=1, n_workers=2, star_mag_range=[17.0, 24.0])
    root = tmp_path_factory.mktemp("gold_tiny_run")
    chain.run_chain(sim, root, chain.gold_folder(), log=lambda *args: None)
    return root / "output"


#: Seed of the shared ``lightcurve`` simulation (tests/test_exposure_quality.py, tests/test_lightcurve.py).
LIGHTCURVE_SEED = 7


@pytest.fixture(scope="session")
def lightcurve_sim(tmp_path_factory):
    """Folder of one ``lightcurve`` simulation (8 exposures over 4 nights, variable stars)."""
    from shapepipe_modules.simulate import simulate

    out = tmp_path_factory.mktemp("lightcurve_sim")
    return Path(simulate(preset="lightcurve", output_dir=out, seed=LIGHTCURVE_SEED, n_workers=2))


@pytest.fixture(scope="session")
def lightcurve_chain(lightcurve_sim, tmp_path_factory):
    """The exposure chain (split, sextractor, psfex) and the tile catalogue of :func:`lightcurve_sim`."""
    from lightcurve_chain import run_exposure_chain, run_tile_catalogue

    work = tmp_path_factory.mktemp("lightcurve_chain")
    chain = run_exposure_chain(lightcurve_sim, work)
    chain["tile_catalogue"] = run_tile_catalogue(lightcurve_sim, chain["store"], work)
    return chain


@pytest.fixture(scope="session")
def lightcurve_quality(lightcurve_sim, lightcurve_chain, tmp_path_factory):
    """Output folder of exposure_quality on every CCD of :func:`lightcurve_chain`."""
    from lightcurve_chain import run_quality

    out = tmp_path_factory.mktemp("lightcurve_quality")
    run_quality(lightcurve_sim, lightcurve_chain, out)
    return out


@pytest.fixture(scope="session")
def lightcurve_forced(lightcurve_chain, lightcurve_quality, tmp_path_factory):
    """forced_phot (quality zero points, exclusion list) and lightcurve on :func:`lightcurve_chain`:
    ``(forced_phot path, lightcurve_stats path)``."""
    from lightcurve_chain import run_forced_phot, run_lightcurve

    out = tmp_path_factory.mktemp("lightcurve_forced")
    forced = run_forced_phot(lightcurve_chain, lightcurve_quality, out)
    return forced, run_lightcurve(forced, out)


def record_only_simulate(preset, output_dir, seed, n_workers, progress, overrides, extra_record):
    """Stand-in for ``simulate.core._simulate``: writes the ``simulation.json`` it would, draws nothing."""
    import json

    from shapepipe_modules.simulate.presets import resolve_parameters

    output_dir.mkdir(parents=True)
    record = {"preset": preset, "seed": seed, "parameters": resolve_parameters(preset, **overrides),
              "overrides": overrides, **extra_record}
    (output_dir / "simulation.json").write_text(json.dumps(record))
    return output_dir
