"""The exposure chain of the light-curve tests: split_exp, sextractor, star
selection, psfex, the tile catalogue with its epochs.

Plain functions (used by ``tests/conftest.py`` and ``benchmarks/bench_forced_phot.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import ccd_shape, extract_ccds, extract_tile, run_module, split_exposures

#: PSF_SIZE of the models: 41 pixels (7.7 arcsec) hold all but ~0.3% of the flux of the
#: worst seeing of the lightcurve preset (FWHM 1.2 arcsec), so that PSF fluxes are total fluxes.
PSF_SIZE = 41


def setools_stars(catalogue, output_path):
    """The setools default ``star_selection`` of a catalogue (FITS-LDAC); returns the count."""
    from shapepipe_modules.io.ldac import read_ldac, write_ldac
    from shapepipe_modules.setools.actions import compute_masks
    from shapepipe_modules.setools.config import read_setools
    from shapepipe_modules.setools.runner import DEFAULT_SELECTION

    table, header = read_ldac(catalogue)
    selection = read_setools(DEFAULT_SELECTION)
    columns = {name: np.asarray(table[name]) for name in table.colnames}
    stars = compute_masks(selection, columns, len(table))["star_selection"]
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    write_ldac(output_path, table[stars], header)
    return int(stars.sum())


def psfex_config(work_dir, psf_size=PSF_SIZE):
    """The psfex module's default .psfex file with another PSF_SIZE."""
    from shapepipe_modules.psfex.runner import DATA_DIR

    text = (DATA_DIR / "default.psfex").read_text()
    path = Path(work_dir) / f"psf{psf_size}.psfex"
    path.write_text(text.replace("PSF_SIZE        51,51", f"PSF_SIZE        {psf_size},{psf_size}"))
    return path


def run_exposure_chain(sim_dir, work_dir):
    """split_exp, merge_headers, sextractor (sep), setools stars and psfex (builtin) on every CCD.

    Returns
    -------
    dict
        ``ccds`` (:func:`conftest.split_exposures`), ``store`` (header store),
        ``split_dir``, ``psf_dir`` (models ``star_selection-<exp>-<ccd>.psf``),
        ``catalogues``.
    """
    from shapepipe_modules.psfex.runner import psfex

    work_dir = Path(work_dir)
    split_dir = work_dir / "split"
    ccds, store = split_exposures(sim_dir, split_dir)
    catalogues = extract_ccds(ccds, work_dir / "sexcat", engine="sep")
    config = psfex_config(work_dir)
    psf_dir = work_dir / "psfex"
    for (exposure, ccd), catalogue in sorted(catalogues.items()):
        number = f"-{exposure}-{ccd}"
        stars = work_dir / "stars" / f"star_selection{number}.fits"
        setools_stars(catalogue, stars)
        run_module(psfex, [stars], psf_dir, number, DOT_PSFEX_FILE=str(config))
    return {"ccds": ccds, "store": store, "split_dir": split_dir, "psf_dir": psf_dir, "catalogues": catalogues}


def run_tile_catalogue(sim_dir, store, work_dir):
    """sextractor on the tile with the multi-epoch bookkeeping; the catalogue path."""
    tile = (Path(sim_dir) / "tile_list.txt").read_text().split()[0]
    return extract_tile(sim_dir, tile, store, Path(work_dir) / "tile", ccd_shape(sim_dir))


def run_serial_module(function, input_table, output_dir, **options):
    """Run a serial module's single job in-process on ``{number: [paths]}``; its summary."""
    import logging

    from shapepipe.job import Job

    spec = function.spec
    values = {option.name: option.default for option in spec.options}
    values.update(options)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    first = sorted(input_table)[0]
    job = Job(module=spec.name, module_run=spec.name, number="", inputs=[Path(p) for p in input_table[first]],
              output_dir=output_dir, log_dir=output_dir, options=values,
              logger=logging.getLogger(f"accept.{spec.name}"), run_dir=output_dir,
              input_table={n: [Path(p) for p in paths] for n, paths in input_table.items()})
    return function(job) or {}


def quality_inputs(chain) -> dict:
    """``{number: [image, weight, flag, sexcat, psf]}`` of every CCD of :func:`run_exposure_chain`."""
    table = {}
    for (exposure, ccd), files in sorted(chain["ccds"].items()):
        number = f"-{exposure}-{ccd}"
        psf = Path(chain["psf_dir"]) / f"star_selection{number}.psf"
        if psf.is_file():
            table[number] = [files["image"], files["weight"], files["flag"], chain["catalogues"][(exposure, ccd)], psf]
    return table


def run_quality(sim_dir, chain, output_dir, **options):
    """exposure_quality on every CCD of the chain, with the simulation's reference stars."""
    from shapepipe_modules.exposure_quality.runner import exposure_quality

    options.setdefault("REF_CATALOGUE", str(Path(sim_dir) / "catalogues" / "reference_stars.fits"))
    return run_serial_module(exposure_quality, quality_inputs(chain), output_dir, **options)


def run_forced_phot(chain, quality_dir, output_dir, **options):
    """forced_phot on the chain's tile catalogue; the output table path."""
    from shapepipe_modules.forced_phot.runner import forced_phot

    catalogue = Path(chain["tile_catalogue"])
    number = catalogue.stem.removeprefix("sexcat")
    if quality_dir is not None:
        options.setdefault("QUALITY_TABLE", str(Path(quality_dir) / "exposure_quality-0000000.fits"))
        options.setdefault("EXCLUDE_LIST", str(Path(quality_dir) / "exposure_exclude-0000000.txt"))
    run_module(forced_phot, [catalogue], output_dir, number, ME_IMAGE_DIR=str(chain["split_dir"]),
               ME_DOT_PSF_DIR=str(chain["psf_dir"]), **options)
    return Path(output_dir) / f"forced_phot{number}.fits"


def match_tile_truth(sim_dir, catalogue_path, radius_arcsec=0.5):
    """Tile truth row of every tile-catalogue object (-1: none within the radius).

    Returns
    -------
    number : ndarray
        The catalogue's ``NUMBER``.
    index : ndarray
        Row in the tile truth, or -1.
    truth : astropy.table.Table
    """
    from astropy.table import Table
    from scipy.spatial import cKDTree

    from shapepipe_modules.io.ldac import read_ldac

    catalogue, _ = read_ldac(catalogue_path)
    tile = (Path(sim_dir) / "tile_list.txt").read_text().split()[0]
    truth = Table.read(Path(sim_dir) / "truth" / f"truth_tile-{tile.replace('.', '-')}.fits")
    dec0 = np.radians(np.mean(truth["dec"]))

    def plane(ra, dec):
        return np.c_[np.asarray(ra) * np.cos(dec0), np.asarray(dec)] * 3600.0

    distance, index = cKDTree(plane(truth["ra"], truth["dec"])).query(
        plane(catalogue["XWIN_WORLD"], catalogue["YWIN_WORLD"]))
    return np.asarray(catalogue["NUMBER"]), np.where(distance < radius_arcsec, index, -1), truth


def isolated_in_truth(sim: Path, ids, radius_arcsec: float = 3.0, faintest: float = 25.0):
    """Objects with no other simulated object brighter than ``faintest`` within the radius.

    Every object of the exposures' truth (the tile truth may miss some that the exposures draw).

    The forced_phot blend flag sees only the detected neighbours; a neighbour
    merged with the star in detection makes its light curve that of two
    objects, whatever the error model.
    """
    from astropy.table import Table, unique, vstack
    from scipy.spatial import cKDTree

    truth = unique(vstack([Table.read(path)["id", "ra", "dec", "mag"]
                           for path in sorted((Path(sim) / "truth").glob("truth_exp-*.fits"))]), keys="id")
    dec0 = np.radians(np.mean(truth["dec"]))
    points = np.c_[np.asarray(truth["ra"]) * np.cos(dec0), np.asarray(truth["dec"])] * 3600.0
    bright = np.asarray(truth["mag"]) < faintest
    tree = cKDTree(points[bright])
    row_of = {int(i): k for k, i in enumerate(truth["id"])}
    rows = np.array([row_of[int(i)] for i in ids])
    counts = np.array([len(found) for found in tree.query_ball_point(points[rows], radius_arcsec)])
    return counts <= np.where(bright[rows], 1, 0)


def run_lightcurve(forced_path, output_dir, **options):
    """The lightcurve module on a forced_phot table; the statistics path."""
    from shapepipe_modules.lightcurve.runner import lightcurve

    forced_path = Path(forced_path)
    number = forced_path.stem.removeprefix("forced_phot")
    run_module(lightcurve, [forced_path], output_dir, number, **options)
    return Path(output_dir) / f"lightcurve_stats{number}.fits"
