"""Forced photometry of every tile object on every exposure CCD that saw it.

The epochs of each object come from the tile catalogue's ``EPOCH_i`` HDUs
(the multi-epoch bookkeeping of ``sextractor``, read with
:func:`shapepipe_modules.psfinterp.multi_epoch.read_tile_catalogue`). Work is
grouped by (exposure, CCD): the CCD's image, weight, flag and PSF model are
read once, the objects' world positions converted with the CCD header's WCS
(distortion included), and all of them measured at once
(:func:`.photometry.forced_photometry`).

Calibration: ``MAG_PSF = ZP_PSF - 2.5 log10(FLUX_PSF)`` and
``MAG_APER = ZP - 2.5 log10(FLUX_APER)``, with the zero points of the
``exposure_quality`` table when given (``ZP_PSF`` includes the PSF model's
aperture correction), else the header's ``PHOTZP`` for both.
``FLUX_PSF_CAL``, ``FLUXERR_PSF_CAL`` are the PSF fluxes on the common scale
of zero point 30 (``FLUX_PSF * 10^(-0.4 (ZP_PSF - 30))``): comparable
between epochs, negative values kept. An object with another tile object
within the blend radius has ``FLAG_BLENDED`` (16) in every epoch: its
single-source fit takes some of its neighbour's light, more in poorer
seeing, so its light curve is not that of the object alone.

An epoch is left out (its objects get no row) when its exposure is on the
exclusion list, when the CCD header has no ``MJD-OBS`` or no ``PHOTZP``
(named in the log: no date or zero point is made up), or when a file is
missing; every (exposure, CCD) is listed in the ``EPOCHS`` table with
``USED`` and the reason.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .photometry import FLAG_BLENDED, forced_photometry, magnitudes

ROW_COLUMNS = (("NUMBER", np.int64), ("EXP_NAME", "U16"), ("CCD_N", np.int32), ("MJD", np.float64),
               ("X_CCD", np.float64), ("Y_CCD", np.float64), ("FLUX_PSF", np.float64), ("FLUXERR_PSF", np.float64),
               ("BKG_PSF", np.float64), ("CHI2_PSF", np.float64), ("FLUX_APER", np.float64),
               ("FLUXERR_APER", np.float64), ("ZP_PSF", np.float64), ("ZP", np.float64),
               ("FLUX_PSF_CAL", np.float64), ("FLUXERR_PSF_CAL", np.float64), ("MAG_PSF", np.float64),
               ("MAGERR_PSF", np.float64), ("MAG_APER", np.float64), ("MAGERR_APER", np.float64),
               ("FLAGS", np.int16))
EPOCH_COLUMNS = (("EXP_NAME", "U16"), ("CCD_N", np.int32), ("MJD", np.float64), ("ZP_PSF", np.float64),
                 ("ZP", np.float64), ("ZP_SOURCE", "U8"), ("N_OBJECTS", np.int32), ("USED", bool),
                 ("REASON", "U200"))


@dataclass
class Calibration:
    """Zero points of the exposure CCDs: ``{(exposure, ccd): (zp_psf, zp)}`` from the quality table."""

    zero_points: dict = field(default_factory=dict)

    @classmethod
    def from_quality_table(cls, table):
        out = {}
        for row in table:
            out[(str(row["EXPOSURE"]).strip(), int(row["CCD"]))] = (float(row["ZP_PSF"]), float(row["ZP"]))
        return cls(out)


@dataclass
class Result:
    """Rows of the per-epoch table and of the epoch table."""

    rows: dict
    epochs: list
    n_objects_measured: int = 0


def _header_number(header, key):
    value = header.get(key)
    try:
        value = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        value = math.nan
    return value


def blended(ra, dec, radius_arcsec: float) -> np.ndarray:
    """Objects with another object within ``radius_arcsec`` (their single-source fits depend on the seeing)."""
    from scipy.spatial import cKDTree

    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size < 2 or radius_arcsec <= 0:
        return np.zeros(ra.size, bool)
    cos_dec = np.cos(np.radians(np.mean(dec)))
    ra_ref = ra[0]
    points = np.c_[(np.mod(ra - ra_ref + 180.0, 360.0) - 180.0) * cos_dec, dec] * 3600.0
    distance = cKDTree(points).query(points, k=2)[0][:, 1]
    return distance < radius_arcsec


def measure_tile(catalogue, ccd_paths, psf_path, calibration: Calibration | None = None, excluded=None,
                 stamp_size: int = 21, aperture_radius_arcsec: float = 1.0, blend_radius_arcsec: float = 3.0,
                 logger=None) -> Result:
    """Forced photometry of every object of a tile catalogue in every epoch.

    Parameters
    ----------
    catalogue : TileCatalogue
        :func:`shapepipe_modules.psfinterp.multi_epoch.read_tile_catalogue`.
    ccd_paths : callable
        ``ccd_paths(exposure, ccd) -> (image, weight, flag)`` paths.
    psf_path : callable
        ``psf_path(exposure, ccd) -> Path`` of the CCD's PSFEx model.
    calibration : Calibration, optional
        Zero points from the quality table; the header's PHOTZP otherwise.
    excluded : dict, optional
        ``{exposure: reason}`` of the exposures to leave out.
    stamp_size : int
        Side of the fitted stamps (odd).
    aperture_radius_arcsec : float
        Radius of the aperture fluxes.
    blend_radius_arcsec : float
        Objects with another tile object this close get ``FLAG_BLENDED`` in every epoch.
    logger : logging.Logger, optional

    Returns
    -------
    Result
    """
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe_modules.io.psfex_file import PSFFileError, read_psf

    excluded = excluded or {}
    epochs = catalogue.epochs
    is_blended = blended(catalogue.ra, catalogue.dec, blend_radius_arcsec)
    parts = {name: [] for name, _ in ROW_COLUMNS}
    epoch_rows = []
    measured = np.zeros(len(catalogue.number), bool)
    order = np.lexsort((epochs.ccd, epochs.exposure))
    exposure_sorted, ccd_sorted = epochs.exposure[order], epochs.ccd[order]
    change = np.ones(len(order), bool)
    change[1:] = (exposure_sorted[1:] != exposure_sorted[:-1]) | (ccd_sorted[1:] != ccd_sorted[:-1])
    starts = np.flatnonzero(change)
    for start, end in zip(starts, np.append(starts[1:], len(order))):
        rows = epochs.row[order[start:end]]
        exposure, ccd = str(exposure_sorted[start]), int(ccd_sorted[start])
        info = {"EXP_NAME": exposure, "CCD_N": ccd, "MJD": math.nan, "ZP_PSF": math.nan, "ZP": math.nan,
                "ZP_SOURCE": "", "N_OBJECTS": len(rows), "USED": False, "REASON": ""}
        epoch_rows.append(info)
        if exposure in excluded:
            info["REASON"] = f"excluded by the quality list: {excluded[exposure]}"
            continue
        image_path, weight_path, flag_path = (Path(p) for p in ccd_paths(exposure, ccd))
        try:
            with fits.open(image_path, memmap=False) as hdus:
                image, header = hdus[0].data.astype(np.float64), hdus[0].header
            weight = fits.getdata(weight_path).astype(np.float64)
            flag = fits.getdata(flag_path) if flag_path is not None else None
            model = read_psf(psf_path(exposure, ccd))
        except (OSError, PSFFileError, TypeError) as error:
            info["REASON"] = f"unreadable files: {error}"
            if logger is not None:
                logger.warning("exposure %s CCD %d left out: %s", exposure, ccd, info["REASON"])
            continue
        info["MJD"] = _header_number(header, "MJD-OBS")
        header_zp = _header_number(header, "PHOTZP")
        missing = [key for key, value in (("MJD-OBS", info["MJD"]), ("PHOTZP", header_zp)) if not np.isfinite(value)]
        if missing:
            info["REASON"] = f"no {' or '.join(missing)} in the header of {image_path.name}"
            if logger is not None:
                logger.warning("exposure %s CCD %d left out of the light curves: %s", exposure, ccd, info["REASON"])
            continue
        zp_psf, zp = (calibration.zero_points.get((exposure, ccd), (math.nan, math.nan))
                      if calibration is not None else (math.nan, math.nan))
        info["ZP_SOURCE"] = "quality" if np.isfinite(zp_psf) and np.isfinite(zp) else "header"
        if info["ZP_SOURCE"] == "header":
            zp_psf = zp = header_zp
        info["ZP_PSF"], info["ZP"] = zp_psf, zp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
        pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)
        x, y = wcs.all_world2pix(catalogue.ra[rows], catalogue.dec[rows], 1)
        gain = _header_number(header, "GAIN")
        phot = forced_photometry(image, weight, model, x, y, gain if np.isfinite(gain) else 0.0, stamp_size,
                                 aperture_radius_arcsec / pixel_scale, flag)
        phot["FLAGS"] = phot["FLAGS"] | np.where(is_blended[rows], FLAG_BLENDED, 0).astype(np.int16)
        mag_psf, magerr_psf = magnitudes(phot["FLUX_PSF"], phot["FLUXERR_PSF"], zp_psf)
        mag_aper, magerr_aper = magnitudes(phot["FLUX_APER"], phot["FLUXERR_APER"], zp)
        to_common = 10.0 ** (-0.4 * (zp_psf - 30.0))
        n = len(rows)
        columns = dict(phot, NUMBER=catalogue.number[rows], EXP_NAME=np.full(n, exposure), CCD_N=np.full(n, ccd),
                       MJD=np.full(n, info["MJD"]), X_CCD=x, Y_CCD=y, ZP_PSF=np.full(n, zp_psf), ZP=np.full(n, zp),
                       FLUX_PSF_CAL=phot["FLUX_PSF"] * to_common, FLUXERR_PSF_CAL=phot["FLUXERR_PSF"] * to_common,
                       MAG_PSF=mag_psf, MAGERR_PSF=magerr_psf, MAG_APER=mag_aper, MAGERR_APER=magerr_aper)
        for name, _ in ROW_COLUMNS:
            parts[name].append(np.asarray(columns[name]))
        info["USED"] = True
        measured[rows] = True
    table = {name: (np.concatenate(parts[name]).astype(dtype) if parts[name] else np.zeros(0, dtype))
             for name, dtype in ROW_COLUMNS}
    order = np.lexsort((table["MJD"], table["NUMBER"]))
    table = {name: column[order] for name, column in table.items()}
    return Result(table, epoch_rows, int(measured.sum()))


def epoch_table(rows):
    """The ``EPOCHS`` rows as an astropy Table."""
    from astropy.table import Table

    return Table({name: np.array([row[name] for row in rows], dtype=dtype) if rows else np.zeros(0, dtype)
                  for name, dtype in EPOCH_COLUMNS})
