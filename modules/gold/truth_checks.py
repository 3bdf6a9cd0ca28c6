"""Checks of pipeline outputs against the simulator's truth.

- :func:`star_selection_quality`: completeness and purity of the setools star
  selection of exposure CCDs, against ``truth_exp-NNNNNNN.fits``.
- :func:`spread_model_quality`: star/galaxy classification with
  SPREAD_MODEL per magnitude bin, against ``truth_tile-XXX-YYY.fits``.

Detections are matched to the truth by pixel position (nearest true object
within ``max_distance`` pixels); an unmatched detection counts as impure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CCD_NUMBER = re.compile(r"-(\d+)-(\d+)\.fits$")
TILE_NUMBER = re.compile(r"-(\d{3})-(\d{3})\.fits$")


def match_positions(x, y, truth_x, truth_y, max_distance):
    """Index of the nearest truth position of each detection, -1 beyond ``max_distance``."""
    from scipy.spatial import cKDTree

    x = np.asarray(x, dtype=float)
    if x.size == 0 or len(truth_x) == 0:
        return np.full(x.size, -1, dtype=int)
    tree = cKDTree(np.column_stack([truth_x, truth_y]))
    distance, index = tree.query(np.column_stack([x, y]), distance_upper_bound=max_distance)
    return np.where(np.isfinite(distance), index, -1)


@dataclass
class SelectionQuality:
    """Star selection against the truth, over every CCD."""

    n_selected: int
    n_selected_stars: int
    n_true_stars: int
    n_true_stars_found: int
    n_true_stars_unflagged: int
    n_true_stars_unflagged_found: int
    mag_range: tuple
    #: With the detection catalogues: the true stars not selected, by the first cut each fails (LOSS_REASONS).
    losses: dict | None = None

    @property
    def purity(self) -> float:
        """Fraction of the selected objects that are true stars."""
        return self.n_selected_stars / self.n_selected if self.n_selected else float("nan")

    @property
    def completeness(self) -> float:
        """Fraction of the true stars in ``mag_range`` that are selected."""
        return self.n_true_stars_found / self.n_true_stars if self.n_true_stars else float("nan")

    @property
    def completeness_unflagged(self) -> float:
        """The same, over true stars whose centre pixel has no pipeline flag (the selection asks FLAGS == 0)."""
        n = self.n_true_stars_unflagged
        return self.n_true_stars_unflagged_found / n if n else float("nan")

    def as_dict(self) -> dict:
        return {
            "n_selected": self.n_selected, "n_selected_stars": self.n_selected_stars,
            "n_true_stars": self.n_true_stars, "n_true_stars_found": self.n_true_stars_found,
            "n_true_stars_unflagged": self.n_true_stars_unflagged,
            "n_true_stars_unflagged_found": self.n_true_stars_unflagged_found,
            "mag_range": list(self.mag_range), "purity": self.purity, "completeness": self.completeness,
            "completeness_unflagged": self.completeness_unflagged, "losses": self.losses,
        }


#: Why a true star was not selected, in the order the reasons are tried (star_selection_quality).
LOSS_REASONS = {
    "not_detected": "no detection within the matching radius",
    "centre_masked": "IMAFLAGS_ISO != 0 and its centre pixel flagged",
    "isophote_masked": "IMAFLAGS_ISO != 0, centre pixel clean (a flagged pixel in its isophote)",
    "flags": "SExtractor FLAGS != 0 (neighbours, deblended, ...)",
    "magnitude": "MAG_AUTO outside the magnitude range",
    "size": "passes the cuts above but not selected (the size window)",
}


def _loss_reasons(truth_x, truth_y, centre_flag, catalogue, max_distance, mag_range, position_columns):
    """Reason (a LOSS_REASONS key) for each true star, from its nearest detection in ``catalogue``."""
    reasons = np.full(len(truth_x), "size", dtype=object)
    if len(catalogue) == 0:
        reasons[:] = "not_detected"
        return reasons
    index = match_positions(truth_x, truth_y, catalogue[position_columns[0]], catalogue[position_columns[1]],
                            max_distance)
    found = index >= 0
    row = np.where(found, index, 0)
    imaflags = np.asarray(catalogue["IMAFLAGS_ISO"])[row] != 0
    flags = np.asarray(catalogue["FLAGS"])[row] != 0
    mag = np.asarray(catalogue["MAG_AUTO"], float)[row]
    outside = ~((mag > mag_range[0]) & (mag < mag_range[1]))
    # Last assignment wins: write the reasons in reverse order of precedence.
    for name, hit in (("magnitude", outside), ("flags", flags), ("isophote_masked", imaflags),
                      ("centre_masked", imaflags & centre_flag), ("not_detected", ~found)):
        reasons[hit & (found | (name == "not_detected"))] = name
    return reasons


def star_selection_quality(selection_files, truth_dir, flag_dir=None, mag_range=(18.0, 22.0),
                           max_distance=1.5, position_columns=("XWIN_IMAGE", "YWIN_IMAGE"),
                           catalogue_dir=None) -> SelectionQuality:
    """Completeness and purity of a star selection, over CCD catalogues ``<name>-NNNNNNN-C.fits``.

    Parameters
    ----------
    selection_files : iterable of path-like
        Selected-star catalogues (FITS-LDAC), one per CCD (setools'
        ``star_selection-NNNNNNN-C.fits``).
    truth_dir : path-like
        The simulation's ``truth`` folder (``truth_exp-NNNNNNN.fits``).
    flag_dir : path-like, optional
        Folder of the pipeline flag images ``pipeline_flag-NNNNNNN-C.fits``;
        gives the completeness over unflagged true stars.
    mag_range : (float, float)
        True magnitudes of the stars the selection should keep.
    max_distance : float
        Matching radius in pixels.
    position_columns : (str, str)
        Catalogue columns of the 1-based pixel positions (same convention as the truth).
    catalogue_dir : path-like, optional
        Folder of the detection catalogues the selection was made from
        (``sexcat-NNNNNNN-C.fits``, with FLAGS, IMAFLAGS_ISO, MAG_AUTO);
        with ``flag_dir``, ``losses`` counts the true stars not selected
        by the first of :data:`LOSS_REASONS` they fail (the magnitude
        window is ``mag_range`` applied to MAG_AUTO, as in the GOLD
        selection).

    Raises
    ------
    ValueError
        If a file name has no exposure and CCD number, or a truth file is missing.
    """
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import read_ldac

    totals = dict(n_selected=0, n_selected_stars=0, n_true_stars=0, n_true_stars_found=0,
                  n_true_stars_unflagged=0, n_true_stars_unflagged_found=0)
    losses = dict.fromkeys(LOSS_REASONS, 0) if catalogue_dir is not None and flag_dir is not None else None
    truths = {}
    for path in sorted(Path(p) for p in selection_files):
        found = CCD_NUMBER.search(path.name)
        if found is None:
            raise ValueError(f"{path}: no -NNNNNNN-C exposure and CCD number in the name")
        exposure, ccd = found.group(1), int(found.group(2))
        if exposure not in truths:
            truth_path = Path(truth_dir) / f"truth_exp-{exposure}.fits"
            if not truth_path.is_file():
                raise ValueError(f"{path}: truth file {truth_path} not found")
            truths[exposure] = Table.read(truth_path)
        truth = truths[exposure]
        truth = truth[np.asarray(truth["ccd"]) == ccd]
        table, _ = read_ldac(path)
        index = match_positions(table[position_columns[0]], table[position_columns[1]],
                                truth["x"], truth["y"], max_distance)
        is_star = np.asarray(truth["is_star"], dtype=bool)
        matched = index >= 0
        totals["n_selected"] += len(table)
        totals["n_selected_stars"] += int(np.count_nonzero(is_star[index[matched]]))
        mag = np.asarray(truth["mag"])
        wanted = is_star & (mag > mag_range[0]) & (mag < mag_range[1])
        selected = np.zeros(len(truth), dtype=bool)
        selected[index[matched]] = True
        totals["n_true_stars"] += int(wanted.sum())
        totals["n_true_stars_found"] += int((wanted & selected).sum())
        if flag_dir is not None:
            flag_path = Path(flag_dir) / f"pipeline_flag-{exposure}-{ccd}.fits"
            flags = fits.getdata(flag_path)
            column = np.clip(np.rint(np.asarray(truth["x"])).astype(int) - 1, 0, flags.shape[1] - 1)
            row = np.clip(np.rint(np.asarray(truth["y"])).astype(int) - 1, 0, flags.shape[0] - 1)
            unflagged = wanted & (flags[row, column] == 0)
            totals["n_true_stars_unflagged"] += int(unflagged.sum())
            totals["n_true_stars_unflagged_found"] += int((unflagged & selected).sum())
            if losses is not None:
                lost = wanted & ~selected
                catalogue_path = Path(catalogue_dir) / f"sexcat-{exposure}-{ccd}.fits"
                if not catalogue_path.is_file():
                    raise ValueError(f"{path}: detection catalogue {catalogue_path} not found")
                catalogue, _ = read_ldac(catalogue_path)
                reasons = _loss_reasons(np.asarray(truth["x"])[lost], np.asarray(truth["y"])[lost],
                                        flags[row, column][lost] != 0, catalogue, max_distance, mag_range,
                                        position_columns)
                for name in LOSS_REASONS:
                    losses[name] += int(np.count_nonzero(reasons == name))
    return SelectionQuality(mag_range=tuple(mag_range), losses=losses, **totals)


def classify(spread_model, spread_error, star_thresh=0.003, gal_thresh=0.01):
    """ShapePipe's class from SPREAD_MODEL: 0 star, 1 galaxy, 2 neither.

    ``s = SPREAD_MODEL + 2 SPREADERR_MODEL``; star if ``|s| < star_thresh``,
    galaxy if ``s > gal_thresh``.
    """
    s = np.asarray(spread_model, dtype=float) + 2.0 * np.asarray(spread_error, dtype=float)
    label = np.full(s.shape, 2, dtype=np.int16)
    label[np.abs(s) < star_thresh] = 0
    label[s > gal_thresh] = 1
    return label


def spread_model_quality(pairs, truth_dir, mag_edges=(16.0, 20.0, 21.0, 22.0, 22.5, 23.5, 25.0),
                         mag_limit=22.5, star_thresh=0.003, gal_thresh=0.01, max_distance=1.5,
                         position_columns=("XWIN_IMAGE", "YWIN_IMAGE")) -> dict:
    """Star/galaxy classification with SPREAD_MODEL per measured-magnitude bin, against the tile truth.

    Parameters
    ----------
    pairs : iterable of (path-like, path-like)
        (tile detection catalogue ``sexcat-XXX-YYY.fits``, spread_model
        catalogue ``sexcat_sm-XXX-YYY.fits``) per tile; rows are joined on NUMBER.
    truth_dir : path-like
        The simulation's ``truth`` folder (``truth_tile-XXX-YYY.fits``).
    mag_edges : sequence of float
        Bin edges of the measured magnitude (the spread_model catalogue's MAG).
    mag_limit : float
        The summary line covers ``MAG < mag_limit``.

    Returns
    -------
    dict
        ``bins``: per bin the counts and ``galaxy_purity`` (true galaxies
        among objects classified as galaxies) and ``star_completeness``
        (true stars classified as stars); ``bright``: the same below
        ``mag_limit``; ``n_unmatched``: detections without a true object.
    """
    from astropy.table import Table

    from shapepipe_modules.io.ldac import read_ldac

    mags, labels, stars = [], [], []
    n_unmatched = 0
    for catalogue_path, sm_path in pairs:
        found = TILE_NUMBER.search(Path(catalogue_path).name)
        if found is None:
            raise ValueError(f"{catalogue_path}: no -XXX-YYY tile number in the name")
        truth_path = Path(truth_dir) / f"truth_tile-{found.group(1)}-{found.group(2)}.fits"
        if not truth_path.is_file():
            raise ValueError(f"{catalogue_path}: truth file {truth_path} not found")
        truth = Table.read(truth_path)
        detections, _ = read_ldac(catalogue_path)
        sm, _ = read_ldac(sm_path)
        order = np.searchsorted(np.asarray(detections["NUMBER"]), np.asarray(sm["NUMBER"]))
        if np.any(np.asarray(detections["NUMBER"])[np.clip(order, 0, len(detections) - 1)] != sm["NUMBER"]):
            raise ValueError(f"{sm_path}: NUMBER values not found in {catalogue_path}")
        x = np.asarray(detections[position_columns[0]])[order]
        y = np.asarray(detections[position_columns[1]])[order]
        index = match_positions(x, y, truth["x"], truth["y"], max_distance)
        matched = index >= 0
        n_unmatched += int((~matched).sum())
        mags.append(np.asarray(sm["MAG"], dtype=float)[matched])
        labels.append(classify(sm["SPREAD_MODEL"], sm["SPREADERR_MODEL"], star_thresh, gal_thresh)[matched])
        stars.append(np.asarray(truth["is_star"], dtype=bool)[index[matched]])
    mag = np.concatenate(mags) if mags else np.zeros(0)
    label = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int16)
    star = np.concatenate(stars) if stars else np.zeros(0, dtype=bool)

    def counts(keep):
        as_galaxy = keep & (label == 1)
        true_stars = keep & star
        n_gal = int(as_galaxy.sum())
        n_star = int(true_stars.sum())
        return {
            "n": int(keep.sum()), "n_true_stars": n_star, "n_true_galaxies": int((keep & ~star).sum()),
            "n_classified_galaxies": n_gal, "n_classified_stars": int((keep & (label == 0)).sum()),
            "galaxy_purity": float((as_galaxy & ~star).sum() / n_gal) if n_gal else float("nan"),
            "star_completeness": float((true_stars & (label == 0)).sum() / n_star) if n_star else float("nan"),
        }

    bins = []
    for low, high in zip(mag_edges[:-1], mag_edges[1:]):
        row = counts((mag >= low) & (mag < high))
        row["mag_range"] = [float(low), float(high)]
        bins.append(row)
    bright = counts(np.isfinite(mag) & (mag < mag_limit))
    bright["mag_limit"] = float(mag_limit)
    return {"bins": bins, "bright": bright, "n_unmatched": n_unmatched,
            "star_thresh": star_thresh, "gal_thresh": gal_thresh}


def overlap_duplicates(joined, final, truth_dir, ra_column="XWIN_WORLD", dec_column="YWIN_WORLD",
                       max_distance_arcsec=2.0) -> dict:
    """Duplicates across tile overlaps before and after ``shapepipe_campaign final-cat``, by truth id.

    ``joined`` holds every tile row (``final-cat --keep-duplicates``), ``final``
    the rows kept; both have ``TILE``. Rows are matched to the union of the
    ``truth_tile-*.fits`` objects (nearest on the sky within the distance).

    Returns
    -------
    dict
        ``joined_rows``, ``final_rows``, ``matched`` (joined rows with a true
        object), ``truth_in_several_tiles`` (true objects matched by rows of
        two or more tiles before), ``final_in_several_tiles`` (the same in the
        final catalogue: 0 when every duplicate is gone), ``lost`` (true
        objects matched before and not after), ``removed`` (rows).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table, unique, vstack

    truth = unique(vstack([Table.read(p)["id", "ra", "dec"] for p in sorted(Path(truth_dir).glob("truth_tile-*.fits"))]),
                   keys="id")
    sky = SkyCoord(np.asarray(truth["ra"]) * u.deg, np.asarray(truth["dec"]) * u.deg)

    def truth_ids(table):
        coords = SkyCoord(np.asarray(table[ra_column], float) * u.deg, np.asarray(table[dec_column], float) * u.deg)
        index, distance, _ = coords.match_to_catalog_sky(sky)
        ids = np.asarray(truth["id"])[index]
        return np.where(distance.arcsec <= max_distance_arcsec, ids, -1)

    def several_tiles(ids, tiles):
        pairs = {(i, t) for i, t in zip(ids.tolist(), np.asarray(tiles).astype(str).tolist()) if i >= 0}
        per_id = {}
        for i, _ in pairs:
            per_id[i] = per_id.get(i, 0) + 1
        return {i for i, n in per_id.items() if n > 1}

    before, after = truth_ids(joined), truth_ids(final)
    return {
        "joined_rows": len(joined), "final_rows": len(final), "removed": len(joined) - len(final),
        "matched": int(np.sum(before >= 0)),
        "truth_in_several_tiles": len(several_tiles(before, joined["TILE"])),
        "final_in_several_tiles": len(several_tiles(after, final["TILE"])),
        "lost": len(set(before[before >= 0].tolist()) - set(after[after >= 0].tolist())),
    }


def star_light_coverage(flag_files, sim_dir, noise_fraction=0.1, step=4):
    """Per CCD: the masked fractions against the area the true light of bright stars covers.

    The true light is the simulator's noise-free profile of every star
    brighter than ``halo_mag`` (core, halo and spikes,
    :func:`shapepipe_modules.simulate.render.star_surface_brightness`), summed
    over the stars of ``catalogues/bright_stars.fits`` (on the CCD or off it),
    at the CCD's zero point (median of ``mag + 2.5 log10 flux`` of its truth)
    and PSF FWHM (median of the truth ``psf_fwhm``); the pixel noise is the
    simulated background's. Evaluated on every ``step``-th pixel.

    Parameters
    ----------
    flag_files : iterable of path-like
        The mask module's ``pipeline_flag-NNNNNNN-C.fits`` of exposure CCDs.
    sim_dir : path-like
        The simulation folder (``simulation.json``, ``truth/``, ``catalogues/``).
    noise_fraction : float
        The light area is where the star light exceeds this fraction of the noise.
    step : int
        Sampling step in pixels.

    Returns
    -------
    list of dict
        Per CCD: ``ccd`` (``NNNNNNN-C``), ``masked`` (any flag bit),
        ``star_masked`` (halo or spike bits), ``light`` (true light above the
        level), ``light_masked`` (fraction of the light area with a halo or
        spike bit), ``star_masked_dark`` (fraction of the halo/spike mask
        where the light is below the level): fractions of the CCD area.
    """
    import json

    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    from shapepipe_modules.io.images import image_hdu
    from shapepipe_modules.mask import mask_bits
    from shapepipe_modules.simulate.render import background_variance, sky_level, star_surface_brightness

    sim_dir = Path(sim_dir)
    params = json.loads((sim_dir / "simulation.json").read_text())["parameters"]
    stars = Table.read(sim_dir / "catalogues" / "bright_stars.fits")
    stars = stars[np.asarray(stars["mag"]) < params["halo_mag"]]
    scale = params["pixel_scale"]
    rows = []
    truths = {}
    for path in sorted(Path(p) for p in flag_files):
        found = CCD_NUMBER.search(path.name)
        if found is None:
            raise ValueError(f"{path}: no -NNNNNNN-C exposure and CCD number in the name")
        exposure, ccd = found.group(1), int(found.group(2))
        if exposure not in truths:
            truths[exposure] = Table.read(sim_dir / "truth" / f"truth_exp-{exposure}.fits")
        truth = truths[exposure]
        on = np.asarray(truth["ccd"]) == ccd
        good = np.asarray(truth["flux"]) > 0
        zero_point = float(np.median(np.asarray(truth["mag"])[good] + 2.5 * np.log10(np.asarray(truth["flux"])[good])))
        fwhm = float(np.median(np.asarray(truth["psf_fwhm"])[on])) if on.any() else float(
            np.median(truth["psf_fwhm"]))
        gain_factor = 10.0 ** (0.4 * (zero_point - 30.0))
        sigma = float(np.sqrt(background_variance(params) + sky_level(params) * (gain_factor - 1.0) / params["gain"]))
        with fits.open(path) as hdus:
            hdu = image_hdu(hdus)
            flag = hdu.data[::step, ::step].astype(np.int64)
            header = hdu.header
            ny, nx = hdu.data.shape
        star_bits = mask_bits(header, ["MP_HALO", "MP_SPIKE"])
        gx = np.arange(0, nx, step, dtype=float)
        gy = np.arange(0, ny, step, dtype=float)
        x, y = WCS(header).all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
        flux = 10.0 ** (-0.4 * (np.asarray(stars["mag"]) - zero_point))
        light = np.zeros((gy.size, gx.size))
        reach = 1500.0
        for k in np.flatnonzero((x > -reach) & (x < nx + reach) & (y > -reach) & (y < ny + reach)):
            dx = (gx - x[k]) * scale
            dy = (gy - y[k]) * scale
            light += star_surface_brightness(dx[None, :], dy[:, None], flux[k], fwhm, True, params)
        lit = light > noise_fraction * sigma
        star_masked = (flag & star_bits) != 0
        n = lit.size
        rows.append({
            "ccd": f"{exposure}-{ccd}",
            "masked": float(np.count_nonzero(flag)) / n,
            "star_masked": float(star_masked.sum()) / n,
            "light": float(lit.sum()) / n,
            "light_masked": float((lit & star_masked).sum()) / max(int(lit.sum()), 1),
            "star_masked_dark": float((star_masked & ~lit).sum()) / max(int(star_masked.sum()), 1),
        })
    return rows
