"""The MCCD steps around ``mccd_fit``: star preparation, validation and interpolation.

Each reuses another module's functions: the validation is ``psfinterp``'s
VALIDATION on the test stars (the columns ``psf_validation`` reads) and
its statistics are :mod:`shapepipe_modules.psf_validation.stats`'; the
interpolation is ``psfinterp``'s CLASSIC and MULTI-EPOCH on the per-CCD
PSFEx models ``mccd_fit`` writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

#: Columns the fit and the validation (psfinterp VALIDATION) read from every star catalogue.
STAR_COLUMNS = ("XWIN_IMAGE", "YWIN_IMAGE", "XWIN_WORLD", "YWIN_WORLD", "MAG_AUTO", "SNR_WIN", "VIGNET")

#: Model rejection thresholds for focal-plane models: a CCD's model borrows
#: the exposure's stars, so its own star count rejects nothing; nor does its chi2
#: (finite: the value is written to FITS headers); a non-finite chi2 still rejects.
STAR_THRESH, CHI2_THRESH = 0, 1e30


class StepError(ValueError):
    """Bad input to an MCCD step (the message names the file)."""


def prepare_stars(path, number: str):
    """Stars of one CCD ready for the fit: ``(table, header)``.

    Rows with a non-finite position are dropped; ``EXP_NAME`` and
    ``CCD_NB`` (from ``number`` = ``-<exposure>-<ccd>``) are added, so
    the catalogue places each star in the focal plane on its own.

    Raises
    ------
    StepError
        Unreadable file, missing column, bad number.
    """
    from shapepipe_modules.io.ldac import LDACError, read_ldac
    from shapepipe_modules.merge_starcat.merge import MergeError, split_number

    try:
        exposure, ccd = split_number(number)
        table, header = read_ldac(path)
    except (LDACError, MergeError) as error:
        raise StepError(f"{path}: {error}") from None
    missing = [c for c in STAR_COLUMNS if c not in table.colnames]
    if missing:
        raise StepError(f"{path}: missing column(s) {', '.join(missing)}")
    keep = np.isfinite(np.asarray(table["XWIN_IMAGE"], float)) & np.isfinite(np.asarray(table["YWIN_IMAGE"], float))
    table = table[keep]
    table["EXP_NAME"] = np.full(len(table), str(exposure))
    table["CCD_NB"] = np.full(len(table), int(ccd), dtype=np.int32)
    return table, header


def validate_ccd(job, psf_path, stars_path, number: str) -> Path:
    """``psfinterp`` VALIDATION of one CCD's model on its test stars: ``validation_psf<number>.fits``."""
    from shapepipe_modules.psfinterp.runner import _run_single

    options = {"POSITION_PARAMS": ["XWIN_IMAGE", "YWIN_IMAGE"], "STAR_THRESH": STAR_THRESH,
               "CHI2_THRESH": CHI2_THRESH, "STAMP_SIZE": 0, "CENTRE_ON_OBJECT": False, "GET_SHAPES": True}
    shim = dataclasses.replace(job, number=number, inputs=[Path(psf_path), Path(stars_path)], options=options)
    _run_single(shim, "VALIDATION")
    return job.output_path(f"validation_psf{number}.fits")


def residual_summary(paths) -> dict:
    """``psf_validation``'s star/model statistics over validation catalogues (every row is a test star)."""
    from astropy.table import vstack

    from shapepipe_modules.io.ldac import read_ldac
    from shapepipe_modules.psf_validation.stats import select_stars, summary

    table = vstack([read_ldac(p)[0] for p in paths], metadata_conflicts="silent")
    # Test stars were never in the fit; ACCEPTED (PSFEx's list) does not apply.
    sample = select_stars(table, reserved_only=False)
    result = summary(sample)
    result["cuts"] = sample.counts
    return result


def interp_model_path(options, exposure: str, ccd: int) -> Path:
    """``<PSF_MODEL_DIR>/<PSF_MODEL_PATTERN><SEP><exposure><SEP><ccd>.psf`` (``mccd_interp``)."""
    sep = options["PSF_MODEL_SEPARATOR"]
    return Path(options["PSF_MODEL_DIR"]) / f"{options['PSF_MODEL_PATTERN']}{sep}{exposure}{sep}{ccd}.psf"


def psfinterp_options(options) -> dict:
    """``psfinterp`` options from ``mccd_interp``'s."""
    return {"MODE": options["MODE"], "POSITION_PARAMS": list(options.get("POSITION_PARAMS") or []),
            "GET_SHAPES": options["GET_SHAPES"], "STAR_THRESH": STAR_THRESH, "CHI2_THRESH": CHI2_THRESH,
            "STAMP_SIZE": 0, "CENTRE_ON_OBJECT": False, "ME_STAMPS_FROM_MODEL": False,
            "ME_DOT_PSF_DIR": options["PSF_MODEL_DIR"], "ME_DOT_PSF_PATTERN": options["PSF_MODEL_PATTERN"],
            "ME_LOG_WCS": options.get("ME_LOG_WCS") or None}
