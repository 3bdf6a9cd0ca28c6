"""Tangential shear of the simulated cluster through the whole chain (not a test: prints tables; docs/crowded.md).

Usage::

    python benchmarks/bench_cluster_shear.py [--seeds 1-5] [--workdir DIR] [--n-boot 200] [--no-paired]
                                             [--pairing rotate|shear] [--positions lensed|drawn]
                                             [--neighbour-mask on|off] [--set NAME=VALUE ...]
                                             [--ngmix KEY=VALUE ...] [--exposure-sextractor KEY=VALUE ...]

For each seed the ``cluster`` preset is simulated twice
(``simulate_paired``: same scene, same noise; ``WORKDIR/seedN/plus``,
``.../minus``, reused when present): by default with the background
galaxies at their lensed positions (``nfw_lensed_positions``, so that a
blend is a sheared image) and the ``-`` member holding every background
galaxy's intrinsic ellipticity negated at the same shear (``--pairing
rotate``); ``--pairing shear --positions drawn`` is the design of
sessions 16-19 (the NFW shear and its opposite, positions as drawn,
whose blends metacal cannot calibrate: docs/crowded.md, "A lensed
sky"). Each member is run through the GOLD chain (``shapepipe_gold``'s stages,
:func:`shapepipe_modules.gold.chain.run_chain`) with the configuration
folder ``WORKDIR/config``: ``example/GOLD`` with the files of
``example/crowded`` on top (dual-pass detection of the tile, halo masks
sized by the simulated star profile) and the mask module's templates. A
run whose final catalogue exists is not run again (``--rerun`` to force).
``example/crowded`` masks the neighbours in the exposure stamps (the
tile's object mask, vignetmaker ``NEIGHBOUR_MASK``): ngmix fits stamps
whose pixels on other objects have zero weight; ``--neighbour-mask off``
runs GOLD's stamps instead (:func:`neighbour_mask_config`).

Printed: per run the masked fraction of the tile, the PSF residuals of the
reserved stars (size, from the run's psf_validation), the background galaxies
of the final catalogue (truth ``cluster_role`` 0, matched within 1
arcsec), how many pass the selection within 90 arcsec and the amplitude of
their tangential shear; then, pooled over the seeds, the metacal
tangential shear profile of the background galaxies (shapes calibrated by
the sample's response ``R + R_sel``, :mod:`shapepipe_modules.validate.crowded`)
in radial bins against the input NFW reduced shear of the same galaxies,
with bootstrap errors (galaxies resampled within each seed, the response
redone), and the fitted amplitude ``g_t = A x input``: once for the
``+`` runs alone (what a survey measures) and once paired, per galaxy
the mean of its two members' ``g_t`` (each times the sign of its shear:
``(g_t(+) - g_t(-)) / 2`` with shear pairs), where its own shape
cancels; each of the two calibrated twice, by the sample's response and
by each bin's own response in the tangential frame of its galaxies
(``bin_response``; over 90 seeds of the cluster preset the two agree:
the response there is isotropic, docs/crowded.md "Ninety seeds"). The paired profile is then split into
the galaxies selected in both runs and those selected in one run only
(whose whole intrinsic shape enters; a diagnostic, not an estimator:
being selected in both runs is itself a selection on the shear). Also printed: per run, the truth objects with two or more entries
in the final catalogue and among those the shear selection keeps, and,
paired, the amplitude of the galaxies by their distance to the nearest
member (in its half-light radii; where blending with the members
biases the shapes).

With rotation pairs both members hold the same lensed positions, so
blends keep their neighbours and their radius (with the sign of the lens
flipped they would not), and the paired profile is the mean of the two
runs (the pixel noise does not cancel: twice the error per seed of
shear pairs). Printed last, paired: the amplitude by the distance to the
nearest other object of the truth, lensed galaxies at their source
positions (blends).

``--set`` overrides a parameter of the simulations it makes (existing ones
are reused as they are), e.g. ``--set cluster_members=1 --set
cluster_bcg_mag=40 --set icl_mag=0``: the same NFW shear without the
cluster's light.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EDGES = (0.0, 20.0, 35.0, 50.0, 65.0, 90.0)


def _parse_set(text):
    from shapepipe_modules.simulate.cli import _parse_set as parse

    return parse(text)


def _seeds(text):
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def cluster_config_dir(destination: Path) -> Path:
    """``example/GOLD`` + ``example/crowded`` + the mask templates, in ``destination``."""
    import shapepipe_modules.mask as mask_module

    destination.mkdir(parents=True, exist_ok=True)
    for folder in (REPO / "example" / "GOLD", REPO / "example" / "crowded"):
        for path in folder.iterdir():
            if path.is_file() and path.suffix in (".ini", ".mask", ".sex", ".setools", ".param", ".conv"):
                shutil.copy(path, destination / path.name)
    for name in ("halo.reg", "spike.reg"):
        shutil.copy(Path(mask_module.__file__).parent / "data" / name, destination / name)
    return destination


def _set_options(path: Path, section: str, values: dict) -> None:
    """Set options of one section of a configuration file (comments are not kept)."""
    import configparser

    parser = configparser.RawConfigParser()
    parser.optionxform = str
    parser.read(path)
    if not parser.has_section(section):
        raise ValueError(f"{path}: no section [{section}]")
    for key, value in values.items():
        parser.set(section, key, value)
    with path.open("w") as handle:
        parser.write(handle)


def neighbour_mask_config(config: Path, on: bool = True) -> Path:
    """Turn the neighbour mask of the MULTI-EPOCH stamps on or off in a GOLD configuration folder.

    On: the tile sextractor writes its object mask (``OBJECT_MASK``) and the
    MULTI-EPOCH vignetmaker reads it after the catalogue (``NEIGHBOUR_MASK``):
    the weight of the exposure stamp pixels on other objects is 0. Off:
    GOLD's settings.
    """
    _set_options(config / "config_tile_Sx_exp_psfex.ini", "SEXTRACTOR_RUNNER_RUN_1", {"OBJECT_MASK": str(on)})
    _set_options(config / "config_tile_PiViSmVi.ini", "VIGNETMAKER_RUNNER_RUN_2",
                 {"FILE_PATTERN": "sexcat, objmask" if on else "sexcat", "FILE_EXT": ".fits, .fits" if on else ".fits",
                  "NEIGHBOUR_MASK": str(on)})
    return config


def final_catalogue(run_root: Path):
    """The final catalogue of the newest make_catalog run, or None."""
    from shapepipe_modules.gold.chain import ChainError, module_output, newest_run

    try:
        folder = module_output(newest_run(run_root / "output", "run_sp_Mc"), "make_catalog")
    except ChainError:
        return None
    found = sorted(folder.glob("final_cat*.fits"))
    return found[0] if found else None


def duplicated_in_catalogue(columns, truth, sim=None):
    """Truth objects with two or more entries in a final catalogue: all its entries, and those the shear selection keeps.

    Entries are given to the truth as :func:`shapepipe_modules.validate.crowded.cluster_scores` gives
    detections (tile pixel positions, size-scaled distance; the intracluster light left out). With ``sim``
    (the simulation folder) also the same two counts by light
    (:func:`shapepipe_modules.validate.crowded.duplicated_by_light`: two entries each holding >= 10 % of the
    object's flux within its FLUX_RADIUS circle, matched one to one first).
    """
    from shapepipe_modules.simulate import resolve_parameters
    from shapepipe_modules.simulate.cluster import ROLE_ICL
    from shapepipe_modules.validate import crowded
    from shapepipe_modules.validate.shear import Selection, branch_tables

    params = resolve_parameters("cluster")
    objects = truth[np.asarray(truth["cluster_role"]) != ROLE_ICL]
    x, y = np.asarray(columns["X_IMAGE"], float), np.asarray(columns["Y_IMAGE"], float)
    owner = crowded.assign_detections(x, y, objects, params["pixel_scale"])
    selected = np.asarray(Selection()(branch_tables(columns)["noshear"]), bool)
    counts = tuple(int(np.sum(crowded.detections_per_truth(o, len(objects)) > 1)) for o in (owner, owner[selected]))
    if sim is None:
        return counts
    from astropy.io import fits
    from astropy.wcs import WCS

    from shapepipe_modules.simulate import TruePSF

    wcs = WCS(fits.getheader(Path(sim) / "tiles" / "CFIS.244.252.r.fits"))
    psf_model = TruePSF(sim).tiles["244.252"]
    radius = np.maximum(np.nan_to_num(np.asarray(columns["FLUX_RADIUS"], float)), 2.0)
    one = crowded.assign_detections(x, y, objects, params["pixel_scale"], one_to_one=True)
    light = tuple(crowded.duplicated_by_light(one[rows], objects, x[rows], y[rows], radius[rows], wcs, psf_model,
                                              params).size
                  for rows in (np.ones(len(x), bool), selected))
    return counts + light


def nearest_member(truth, rows):
    """Distance (in that member's half-light radii) from each truth row to the nearest cluster member."""
    from shapepipe_modules.simulate import resolve_parameters
    from shapepipe_modules.simulate.cluster import ROLE_MEMBER

    pixel_scale = resolve_parameters("cluster")["pixel_scale"]  # truth x, y in tile pixels, hlr in arcsec
    members = truth[np.asarray(truth["cluster_role"]) == ROLE_MEMBER]
    if not len(members):
        return np.full(len(rows), np.inf)
    x, y = np.asarray(truth["x"], float)[rows], np.asarray(truth["y"], float)[rows]
    distance = np.hypot(x[:, None] - np.asarray(members["x"], float)[None], y[:, None] - np.asarray(members["y"], float)[None])
    return (distance / (np.asarray(members["hlr"], float)[None] / pixel_scale)).min(axis=1)


def nearest_object(truth, rows, params):
    """Distance (arcsec) from each truth row to the nearest other object of the truth (intracluster light excepted).

    With ``nfw_lensed_positions`` the background galaxies are taken at their
    source positions: image-plane separations are sheared (a pair along the
    tangential direction is stretched, one along the radius squeezed), so a
    cut on them would select blends by their orientation to the lens, which
    is a selection on the shear.
    """
    from scipy.spatial import cKDTree

    from shapepipe_modules.simulate.cluster import (ROLE_FIELD, ROLE_ICL, cluster_centre, offsets_arcsec,
                                                    source_positions)

    ra, dec = np.asarray(truth["ra"], float).copy(), np.asarray(truth["dec"], float).copy()
    role = np.asarray(truth["cluster_role"])
    if params.get("nfw_lensed_positions", False):
        lensed = (role == ROLE_FIELD) & ~np.asarray(truth["is_star"], bool)
        ra[lensed], dec[lensed] = source_positions(params, ra[lensed], dec[lensed])
    xy = np.column_stack(offsets_arcsec(ra, dec, *cluster_centre(params)))
    others = role != ROLE_ICL
    distance, _ = cKDTree(xy[others]).query(xy[rows], k=2)  # the first is the object itself
    return distance[:, 1]


def masked_fraction(run_root: Path) -> float:
    from astropy.io import fits

    from shapepipe_modules.gold.chain import module_output, newest_run

    folder = module_output(newest_run(run_root / "output", "run_sp_MaMa"), "mask_run_1")
    return float(np.mean(fits.getdata(next(folder.glob("*flag*.fits"))) != 0))


def psf_check(run_root: Path) -> dict:
    """PSF residuals of the reserved stars of one run (its psf_validation output)."""
    from shapepipe_modules.gold.chain import module_output, newest_run
    from shapepipe_modules.gold.summary import psf_residuals

    return psf_residuals(module_output(newest_run(run_root / "output", "run_sp_MsPl"), "psf_validation")
                         / "psf_validation_stats.json")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--rerun", action="store_true", help="run the chain even where a final catalogue exists")
    parser.add_argument("--no-paired", dest="paired", action="store_false",
                        help="only the + member of each seed (default: + and - members)")
    parser.add_argument("--pairing", choices=("shear", "rotate"), default="rotate",
                        help="what differs in the - member of a new simulation: every background galaxy's "
                             "intrinsic ellipticity, at the same shear and positions (rotate, default), or the "
                             "shear's sign (shear: the lens flips too, so lensed positions move between members)")
    parser.add_argument("--positions", choices=("lensed", "drawn"), default="lensed",
                        help="background galaxies of new simulations at their lensed positions (default; blends "
                             "are sheared images) or as drawn (the preset's default: blends' separations "
                             "unsheared, which metacal cannot calibrate); a --set nfw_lensed_positions wins")
    parser.add_argument("--set", type=_parse_set, action="append", default=[], metavar="NAME=VALUE",
                        help="simulation parameter override (as shapepipe_simulate --set), e.g. cluster_members=1")
    parser.add_argument("--ngmix", type=_parse_set, action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the ngmix stage ([NGMIX_RUNNER] of config_tile_Ng.ini), e.g. "
                             "EPOCH_LOCAL_SKY_WIDTH=4")
    parser.add_argument("--exposure-sextractor", type=_parse_set, action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the exposures' extraction ([SEXTRACTOR_RUNNER_RUN_2] of "
                             "config_tile_Sx_exp_psfex.ini), e.g. BACKGROUND_MODEL_MAG=20.5")
    parser.add_argument("--neighbour-mask", choices=("on", "off"), default=None,
                        help="zero weight on other objects in the exposure stamps (tile OBJECT_MASK, vignetmaker "
                             "NEIGHBOUR_MASK): on or off (default: as example/crowded, on)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from shapepipe_modules.gold.chain import run_chain
    from shapepipe_modules.simulate import load_truth
    from shapepipe_modules.simulate.core import simulate_paired
    from shapepipe_modules.simulate.cluster import cluster_centre, tangential_shear
    from shapepipe_modules.validate import crowded
    from shapepipe_modules.validate.shear import Selection, read_final_catalogue

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_cluster_shear_"))
    config = cluster_config_dir(work / "config")
    if args.neighbour_mask is not None:
        neighbour_mask_config(config, args.neighbour_mask == "on")
    if args.ngmix:
        _set_options(config / "config_tile_Ng.ini", "NGMIX_RUNNER", {key: str(value) for key, value in args.ngmix})
    if args.exposure_sextractor:
        _set_options(config / "config_tile_Sx_exp_psfex.ini", "SEXTRACTOR_RUNNER_RUN_2",
                     {key: str(value) for key, value in args.exposure_sextractor})
    pooled = {"tables": [], "dx": [], "dy": [], "g_t_true": [], "group": [], "sign": [], "unit": [], "near": [],
              "member": [], "nearest": []}
    per_seed = []
    for seed in _seeds(args.seeds):
        members = (("plus", 1), ("minus", -1)) if args.paired else (("plus", 1),)
        if not all((work / f"seed{seed}" / m / "simulation.json").exists() for m, _ in members):
            overrides = {"nfw_lensed_positions": args.positions == "lensed", **dict(args.set)}
            simulate_paired("cluster", work / f"seed{seed}", seed=seed, n_workers=1, pairing=args.pairing,
                            **overrides)
        for member, member_code in members:
            sim, run_root = work / f"seed{seed}" / member, work / f"chain{seed}" / member
            record = json.loads((sim / "simulation.json").read_text())
            # The shear's sign relative to the + member: -1 in a shear pairing, +1 in a rotate pairing.
            sign = record.get("pair", {}).get("shear_sign", 1)
            catalogue = final_catalogue(run_root)
            if catalogue is None or args.rerun:
                clock = time.perf_counter()
                run_chain(sim, run_root, config, log=lambda *a: None)
                print(f"seed {seed} {member}: chain in {time.perf_counter() - clock:.0f} s (wall)", file=sys.stderr)
                catalogue = final_catalogue(run_root)
            params = record["parameters"]
            columns, truth = read_final_catalogue(catalogue), load_truth(sim, tile="244.252")
            data = crowded.background_shapes(columns, truth, cluster_centre(params))
            one = crowded.metacal_tangential_profile(data["tables"], data["dx"], data["dy"], data["g_t_true"],
                                                     np.array([0.0, 90.0]), n_boot=50)
            per_seed.append((seed, member, masked_fraction(run_root), len(data["dx"]), one, psf_check(run_root),
                             duplicated_in_catalogue(columns, truth, sim)))
            for key in ("tables", "dx", "dy", "g_t_true"):
                pooled[key].append(data[key])
            pooled["group"].append(np.full(len(data["dx"]), seed))
            pooled["sign"].append(np.full(len(data["dx"]), sign))
            pooled["unit"].append(data["truth_id"])  # the same galaxy in both runs (lensed positions move rows)
            pooled["near"].append(nearest_member(truth, data["truth_index"]))
            pooled["nearest"].append(nearest_object(truth, data["truth_index"], params))
            pooled["member"].append(np.full(len(data["dx"]), member_code))

    print(f"\nCluster preset through the GOLD chain (config {config}), per seed "
          "(A: amplitude g_t / input of that run alone, r < 90 arcsec)")
    print(f"{'seed':>4s} {'run':>6s} {'tile masked':>12s} {'background in cat':>18s} {'selected':>9s} {'A':>7s} "
          f"{'error':>6s} {'PSF stars':>10s} {'size resid':>11s} {'rms':>6s} {'dup cat':>8s} {'dup sel':>8s} {'light cat':>10s} {'light sel':>10s}")
    for seed, member, masked, n, one, psf, dup in per_seed:
        print(f"{seed:4d} {member:>6s} {masked:12.3f} {n:18d} {one['n_total']:9d} {one['A']:7.3f} {one['A_error']:6.3f} "
              f"{psf['n_stars']:10d} {psf['size_relative_residual']['mean']:11.4f} "
              f"{psf['size_relative_residual']['rms']:6.3f} {dup[0]:8d} {dup[1]:8d} {dup[2]:10d} {dup[3]:10d}")
    duplicates = np.array([dup for *_, dup in per_seed]).sum(axis=0)
    print(f"(dup cat: truth objects with two or more entries in the final catalogue, as validate.crowded.cluster_scores "
          f"counts them; dup sel: among the entries the shear selection keeps ({Selection().describe()})); "
          f"all runs: {duplicates[0]} and {duplicates[1]} in {len(per_seed)} runs; light cat, light sel: the same held "
          f"twice by light (validate.crowded.duplicated_by_light, 10 % of the flux each): {duplicates[2]} and "
          f"{duplicates[3]})")
    stars = np.array([psf["n_stars"] for *_, psf, _ in per_seed], float)
    sizes = np.array([[psf["size_relative_residual"]["mean"], psf["size_relative_residual"]["rms"]]
                      for *_, psf, _ in per_seed])
    print(f"PSF size residual of the reserved stars, all runs (star-weighted): mean "
          f"{np.sum(stars * sizes[:, 0]) / stars.sum():+.4f}, rms {np.sqrt(np.sum(stars * sizes[:, 1] ** 2) / stars.sum()):.4f} "
          f"({int(stars.sum())} stars)")

    def pool(keep):
        tables = {branch: {key: np.concatenate([t[branch][key] for t, k in zip(pooled["tables"], keep) if k])
                           for key in pooled["tables"][0][branch]} for branch in pooled["tables"][0]}
        rest = {key: np.concatenate([v for v, k in zip(pooled[key], keep) if k])
                for key in ("dx", "dy", "g_t_true", "group", "sign", "unit", "near", "member", "nearest")}
        return tables, rest

    plus_only = [member == "plus" for _, member, *_ in per_seed]
    estimates = [("the + runs alone (what a survey measures)", plus_only)]
    if args.paired:
        estimates.append(("paired (shape noise cancelled: the mean of the two members, each by its shear's sign)",
                          [True] * len(per_seed)))
    n_seeds = len({seed for seed, *_ in per_seed})
    for (title, keep), bin_response in ((estimate, by_bin) for estimate in estimates for by_bin in (False, True)):
        tables, rest = pool(keep)
        result = crowded.metacal_tangential_profile(tables, rest["dx"], rest["dy"], rest["g_t_true"], np.array(EDGES),
                                                    group=rest["group"], sign=rest["sign"], unit=rest["unit"],
                                                    n_boot=args.n_boot, rng=np.random.default_rng(1),
                                                    bin_response=bin_response)
        calibration = ("each bin's own response in its galaxies' tangential frame, R_tt + R_sel (R_sel: the "
                       "sample's, isotropic part)" if bin_response else "R + R_sel of the sample")
        print(f"\nTangential shear of the background galaxies, {title}: {n_seeds} seed(s), metacal with "
              f"{calibration}, bootstrap errors ({args.n_boot} draws of galaxies within seeds)")
        print(f"R + R_sel = [[{result['R'][0, 0]:.3f}, {result['R'][0, 1]:.3f}], [{result['R'][1, 0]:.3f}, "
              f"{result['R'][1, 1]:.3f}]]")
        print(f"{'r (arcsec)':>12s} {'n':>5s} {'g_t':>8s} {'error':>7s} {'input':>7s} {'g_t/input':>10s} "
              f"{'(g_t-in)/err':>13s} {'g_x':>8s} {'error':>7s} {'R_t':>6s} {'R_x':>6s}")
        for i in range(len(result["n"])):
            pull = (result["g_t"][i] - result["true"][i]) / result["g_t_error"][i]
            print(f"{result['r_min'][i]:5.0f}-{result['r_max'][i]:<5.0f} {result['n'][i]:6d} {result['g_t'][i]:8.4f} "
                  f"{result['g_t_error'][i]:7.4f} {result['true'][i]:7.4f} {result['g_t'][i] / result['true'][i]:10.2f} "
                  f"{pull:13.2f} {result['g_x'][i]:8.4f} {result['g_x_error'][i]:7.4f} {result['R_t'][i]:6.3f} {result['R_x'][i]:6.3f}")
        print(f"amplitude g_t / input: {result['A']:.3f} +- {result['A_error']:.3f} ({result['n_total']} "
              f"measurements); mean cross shear {result['cross']:.4f} +- {result['cross_error']:.4f}")
    if args.paired:
        from shapepipe_modules.validate.shear import _subset

        tables, rest = pool([True] * len(per_seed))
        # Galaxies selected in one run only bring their whole intrinsic shape (and any shear-dependent
        # detection or blending): the paired profile split into the two kinds of galaxies.
        both = crowded.selected_in_both(Selection()(tables["noshear"]), rest["member"], rest["unit"], rest["group"])
        rows = np.flatnonzero(both)
        pairs = crowded.metacal_tangential_profile(
            _subset(tables, rows), rest["dx"][rows], rest["dy"][rows], rest["g_t_true"][rows], np.array(EDGES),
            group=rest["group"][rows], sign=rest["sign"][rows], unit=rest["unit"][rows], n_boot=args.n_boot,
            rng=np.random.default_rng(3))
        single = Selection()(tables["noshear"]) & ~both
        radius = np.hypot(rest["dx"], rest["dy"])
        g = np.linalg.solve(pairs["R"], np.stack([tables["noshear"]["g1"], tables["noshear"]["g2"]]))
        g_t_single = tangential_shear(g[0], g[1], rest["dx"], rest["dy"])[0] * rest["sign"]
        print("\nPaired, split: galaxies selected in both runs (their shapes cancel; response of that sample) and "
              "the measurements of galaxies selected in one run only (shape noise; the same response)")
        print(f"{'r (arcsec)':>12s} {'n both':>7s} {'g_t':>8s} {'error':>7s} {'input':>7s} {'g_t/input':>10s} "
              f"{'n one':>6s} {'g_t one':>8s} {'input':>7s}")
        for i, (low, high) in enumerate(zip(EDGES[:-1], EDGES[1:])):
            ones = single & (radius >= low) & (radius < high)
            print(f"{low:5.0f}-{high:<5.0f} {pairs['n'][i]:8d} {pairs['g_t'][i]:8.4f} {pairs['g_t_error'][i]:7.4f} "
                  f"{pairs['true'][i]:7.4f} {pairs['g_t'][i] / pairs['true'][i]:10.2f} {ones.sum():6d} "
                  f"{g_t_single[ones].mean() if ones.any() else np.nan:8.4f} "
                  f"{(rest['g_t_true'] * rest['sign'])[ones].mean() if ones.any() else np.nan:7.4f}")
        print(f"amplitude, galaxies selected in both runs: {pairs['A']:.3f} +- {pairs['A_error']:.3f}")

        # Where the deficit lies: the paired amplitude of the galaxies by their distance to the nearest member.
        print("\nPaired amplitude by the distance to the nearest member (truth; in that member's half-light radii), "
              "r < 35 and 35-90 arcsec, the response of each subsample:")
        for low_r, high_r in ((0.0, 35.0), (35.0, 90.0)):
            for low, high in ((0.0, 3.0), (3.0, 6.0), (6.0, np.inf)):
                rows = np.flatnonzero((radius >= low_r) & (radius < high_r) & (rest["near"] >= low)
                                      & (rest["near"] < high))
                if rows.size < 100:  # the subsample's own response is noise below that (36 gave A = -22)
                    continue
                part = crowded.metacal_tangential_profile(
                    _subset(tables, rows), rest["dx"][rows], rest["dy"][rows], rest["g_t_true"][rows],
                    np.array([low_r, high_r]), group=rest["group"][rows], sign=rest["sign"][rows],
                    unit=rest["unit"][rows], n_boot=args.n_boot, rng=np.random.default_rng(2))
                print(f"  r {low_r:2.0f}-{high_r:2.0f} arcsec, nearest member {low:.0f}-{high:.0f} hlr: "
                      f"A = {part['A']:.3f} +- {part['A_error']:.3f} ({part['n_total']} measurements)")
        # Blends: the paired amplitude by the distance to the nearest other object of the truth.
        print("\nPaired amplitude by the distance to the nearest other object (truth, any kind but the intracluster "
              "light; lensed galaxies at their source positions), r < 90 arcsec, the response of each subsample:")
        for low, high in ((0.0, 1.5), (1.5, 2.5), (2.5, 4.0), (4.0, np.inf)):
            rows = np.flatnonzero((rest["nearest"] >= low) & (rest["nearest"] < high))
            if rows.size < 100:
                continue
            part = crowded.metacal_tangential_profile(
                _subset(tables, rows), rest["dx"][rows], rest["dy"][rows], rest["g_t_true"][rows], np.array([0.0, 90.0]),
                group=rest["group"][rows], sign=rest["sign"][rows], unit=rest["unit"][rows], n_boot=args.n_boot,
                rng=np.random.default_rng(4))
            print(f"  nearest object {low:.1f}-{high:.1f} arcsec: A = {part['A']:.3f} +- {part['A_error']:.3f} "
                  f"({part['n_total']} measurements)")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
