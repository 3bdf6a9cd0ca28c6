"""Quality of one exposure CCD, and the rules that flag bad exposures.

Per CCD (:func:`measure_ccd`):

``MJD``, ``FILTER``, ``PHOTZP_HEADER``, ``EXPTIME``
    From the CCD header (NaN / empty when a key is missing: never guessed).
``SKY``, ``SKY_RMS``
    Median and 1.4826 MAD of the usable pixels (weight > 0, flag 0) after
    three 3-sigma clips (objects removed), ADU; ``SKY_MAG`` the sky surface
    brightness, mag/arcsec^2 (with ``ZP``).
``PSF_FWHM``, ``PSF_E1``, ``PSF_E2``
    The PSF model on a 3 x 3 grid over the CCD, mean of the adaptive-moment
    measurements: FWHM = 2.3548 sigma (a Gaussian's FWHM; arcsec) and the
    ellipticity ``(e1, e2)`` (HSM's observed shape).
``N_STARS``
    Stars accepted by the PSF model.
``ZP``, ``ZP_ERR``, ``ZP_PSF``, ``APCORR``, ``N_ZP_STARS``
    Zero point measured from the reference stars on the CCD (isolated:
    no other detection within ``isolation`` arcsec; reference magnitude in
    ``mag_range``; aperture S/N above ``min_snr``): ``ZP`` the clipped
    median of ``mag_ref + 2.5 log10(F)`` with ``F`` the flux in a circle of
    ``aper_fwhm`` PSF FWHM (sky from an annulus: all but ~0.1% of a Moffat
    PSF's flux), ``ZP_PSF`` the same with the forced PSF-fit flux (it
    calibrates PSF fluxes to total magnitudes), ``APCORR = ZP_PSF - ZP``.
    Without a reference catalogue or enough stars, ``ZP = ZP_PSF =
    PHOTZP_HEADER`` and ``ZP_SOURCE = 'header'``.
``LIMMAG``
    5-sigma point-source depth of a PSF fit on the sky noise:
    ``ZP_PSF - 2.5 log10(5 SKY_RMS / sqrt(sum P^2))``.
"""

from __future__ import annotations

import math

import numpy as np

from shapepipe_modules.forced_phot.photometry import cut_stamps, forced_photometry, model_total

#: Flag bits of a quality row.
FLAGS = {
    "NO_DATE": 1,           # no MJD-OBS in the header
    "NO_ZERO_POINT": 2,     # no PHOTZP in the header
    "LOW_ZP": 4,            # zero point below the median by more than MAX_ZP_LOSS (clouds)
    "BAD_SEEING": 8,        # PSF FWHM above MAX_FWHM_RATIO times the median
    "BRIGHT_SKY": 16,       # sky brighter than the median by more than MAX_SKY_BRIGHTENING mag/arcsec^2
    "PSF_ELLIPTICITY": 32,  # |e| of the PSF above MAX_PSF_E
    "FEW_STARS": 64,        # fewer PSF stars than MIN_STARS
    "SHALLOW": 128,         # 5-sigma depth shallower than the median by more than MAX_DEPTH_LOSS
}
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in a quality flag."""
    return [name for name, bit in FLAGS.items() if int(flags) & bit]


def header_info(header) -> dict:
    """Date, filter, header zero point and exposure time of a CCD header (NaN when missing)."""
    def number(key):
        value = header.get(key)
        try:
            return float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            return math.nan

    return {"MJD": number("MJD-OBS"), "FILTER": str(header.get("FILTER", "")).strip(),
            "PHOTZP_HEADER": number("PHOTZP"), "EXPTIME": number("EXPTIME"), "GAIN": number("GAIN")}


def sky_statistics(image, weight, flag=None, step: int = 2) -> tuple[float, float]:
    """Clipped median and robust rms (1.4826 MAD) of the usable pixels (every ``step``-th row and column)."""
    pixels = image[::step, ::step]
    usable = weight[::step, ::step] > 0
    if flag is not None:
        usable &= flag[::step, ::step] == 0
    values = pixels[usable & np.isfinite(pixels)].astype(np.float64)
    if values.size < 10:
        return math.nan, math.nan
    for _ in range(3):
        median = np.median(values)
        rms = 1.4826 * np.median(np.abs(values - median))
        values = values[np.abs(values - median) < 3.0 * rms]
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))


def psf_shape(model, nx: int, ny: int, pixel_scale: float) -> dict:
    """Mean FWHM (arcsec), e1, e2 of the PSF model over a 3 x 3 grid, and sum(P^2) at the centre."""
    from shapepipe_modules.psfinterp.interpolate import hsm_shapes

    gx, gy = np.meshgrid(np.linspace(1, nx, 5)[1:4], np.linspace(1, ny, 5)[1:4])
    stamps = model.evaluate(gx.ravel(), gy.ravel(), normalise=False)
    stamps /= model_total(model, gx.ravel(), gy.ravel())[:, None, None]
    shapes = hsm_shapes(stamps)
    good = shapes["flag"] == 0
    if not good.any():
        return {"PSF_FWHM": math.nan, "PSF_E1": math.nan, "PSF_E2": math.nan, "PSF_SUM_P2": math.nan}
    return {"PSF_FWHM": float(np.mean(shapes["sigma"][good]) * FWHM_PER_SIGMA * pixel_scale),
            "PSF_E1": float(np.mean(shapes["e1"][good])), "PSF_E2": float(np.mean(shapes["e2"][good])),
            "PSF_SUM_P2": float(np.sum(stamps[4] ** 2))}


#: Sky annulus of the zero-point apertures: from radius + gap to radius + gap + width (pixels).
ANNULUS_GAP, ANNULUS_WIDTH = 4.0, 8.0


def sky_mode(values, n_sigma: float = 3.0) -> float:
    """Sky of a set of pixels: ``2.5 median - 1.5 mean`` after sigma clipping (SExtractor's mode
    estimate: less pulled up than the median by faint sources and wings)."""
    values = np.asarray(values, float)
    if values.size < 5:
        return math.nan
    for _ in range(3):
        median = np.median(values)
        sigma = np.std(values)
        values = values[np.abs(values - median) < n_sigma * sigma]
    return float(2.5 * np.median(values) - 1.5 * np.mean(values))


def aperture_fluxes(image, weight, x, y, radius: float, flag=None, annulus=(ANNULUS_GAP, ANNULUS_WIDTH)):
    """Sky-subtracted flux in circles of ``radius`` pixels, sky the median of an annulus (``annulus``:
    gap and width, pixels).

    Returns
    -------
    flux, flux_err, bad : ndarray (n,)
        ``bad``: a masked pixel or the CCD edge inside the circle.
    """
    inner = radius + annulus[0]
    outer = inner + annulus[1]
    size = 2 * int(math.ceil(outer)) + 1
    data, inside = cut_stamps(image, x, y, size)
    w, _ = cut_stamps(weight, x, y, size)
    usable = inside & (w > 0)
    if flag is not None:
        usable &= cut_stamps(flag, x, y, size, fill=1)[0] == 0
    offsets = np.arange(size) - size // 2
    dx = np.asarray(x) - np.rint(x)
    dy = np.asarray(y) - np.rint(y)
    r2 = (offsets[None, None, :] - dx[:, None, None]) ** 2 + (offsets[None, :, None] - dy[:, None, None]) ** 2
    circle = r2 <= radius**2
    ring = (r2 >= inner**2) & (r2 <= outer**2) & usable
    sky = np.array([sky_mode(d[a]) for d, a in zip(data, ring)])
    n_circle = circle.sum(axis=(1, 2))
    flux = np.where(circle, data, 0.0).sum(axis=(1, 2)) - n_circle * sky
    variance = np.where(circle & usable, 1.0 / np.where(usable, w, 1.0), 0.0).sum(axis=(1, 2))
    bad = (circle & ~usable).any(axis=(1, 2)) | ~np.isfinite(sky)
    return flux, np.sqrt(variance), bad


def clipped_median(values, n_sigma: float = 3.0, iterations: int = 3):
    """Median, its error (1.2533 sigma / sqrt(n)) and count after sigma clipping (robust sigma)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    for _ in range(iterations):
        if values.size < 3:
            break
        median = np.median(values)
        sigma = 1.4826 * np.median(np.abs(values - median))
        if sigma == 0:
            break
        values = values[np.abs(values - median) <= n_sigma * sigma]
    if values.size == 0:
        return math.nan, math.nan, 0
    sigma = 1.4826 * np.median(np.abs(values - np.median(values))) if values.size > 1 else math.nan
    return float(np.median(values)), float(1.2533 * sigma / math.sqrt(values.size)), int(values.size)


def zero_point_stars(image, weight, flag, model, wcs, detections_xy, reference, gain: float, fwhm_pixels: float,
                     mag_range=(17.0, 21.5), min_snr: float = 20.0, aper_fwhm: float = 4.0,
                     stamp_size: int = 21) -> dict:
    """Zero-point measurements of the reference stars of one CCD (see the module docstring).

    A star is used when no other detection lies within the aperture radius
    plus 3 pixels (a neighbour in the sky annulus barely moves its median).

    Parameters
    ----------
    reference : dict
        ``ra, dec, mag`` arrays.
    detections_xy : ndarray (m, 2)
        Positions of every detection on the CCD (isolation test).

    Returns
    -------
    dict
        ``zp``, ``zp_psf``: ``mag_ref + 2.5 log10(flux)`` of every star used,
        aperture and PSF fluxes.
    """
    from scipy.spatial import cKDTree

    empty = {"zp": np.zeros(0), "zp_psf": np.zeros(0)}
    ny, nx = image.shape
    x, y = wcs.all_world2pix(np.asarray(reference["ra"], float), np.asarray(reference["dec"], float), 1)
    mag = np.asarray(reference["mag"], float)
    radius = aper_fwhm * fwhm_pixels
    margin = radius + 10.0
    keep = ((x > margin) & (x < nx + 1 - margin) & (y > margin) & (y < ny + 1 - margin)
            & (mag >= mag_range[0]) & (mag <= mag_range[1]))
    if len(detections_xy) >= 2 and keep.any():
        # The nearest detection is the star itself; the second must be far.
        distance = cKDTree(detections_xy).query(np.c_[x[keep], y[keep]], k=2)[0]
        isolated = (distance[:, 0] < 2.0) & (distance[:, 1] > radius + 3.0)
        keep[np.flatnonzero(keep)[~isolated]] = False
    if not keep.any():
        return empty
    x, y, mag = x[keep], y[keep], mag[keep]
    flux, flux_err, bad = aperture_fluxes(image, weight, x, y, radius, flag)
    fit = forced_photometry(image, weight, model, x, y, gain, stamp_size, flag=flag)
    good = ~bad & (flux > min_snr * flux_err) & (fit["FLAGS"] == 0) & (fit["FLUX_PSF"] > 0)
    return {"zp": mag[good] + 2.5 * np.log10(flux[good]), "zp_psf": mag[good] + 2.5 * np.log10(fit["FLUX_PSF"][good])}


def exposure_zero_points(rows, min_stars: int = 5) -> None:
    """Set ``ZP, ZP_ERR, ZP_PSF, APCORR, N_ZP_STARS, ZP_SOURCE`` of every row, per exposure.

    The zero point is a property of the exposure (its transparency): the
    stars of all its CCDs are pooled (clipped medians). With fewer than
    ``min_stars``, the header's ``PHOTZP`` is used (``ZP_SOURCE = 'header'``,
    ``APCORR = 0``); NaN when the header has none.
    """
    by_exposure: dict = {}
    for row in rows:
        by_exposure.setdefault(row["EXPOSURE"], []).append(row)
    for members in by_exposure.values():
        zp = np.concatenate([row.pop("_zp", np.zeros(0)) for row in members])
        zp_psf = np.concatenate([row.pop("_zp_psf", np.zeros(0)) for row in members])
        value, error, count = clipped_median(zp)
        value_psf = clipped_median(zp_psf)[0]
        for row in members:
            if count >= min_stars:
                row.update(ZP=value, ZP_ERR=error, ZP_PSF=value_psf, APCORR=value_psf - value, N_ZP_STARS=count,
                           ZP_SOURCE="stars")
            else:
                header_zp = row["PHOTZP_HEADER"]
                row.update(ZP=header_zp, ZP_ERR=math.nan, ZP_PSF=header_zp, N_ZP_STARS=count, ZP_SOURCE="header",
                           APCORR=0.0 if np.isfinite(header_zp) else math.nan)
            finish_row(row)


def measure_ccd(image, weight, flag, header, model, detections_xy=None, reference=None, **zp_options) -> dict:
    """Quality numbers of one CCD (see the module docstring); the zero points wait for
    :func:`exposure_zero_points` (the stars' values are kept in ``_zp``, ``_zp_psf``)."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    row = header_info(header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)
    ny, nx = image.shape
    row["SKY"], row["SKY_RMS"] = sky_statistics(image, weight, flag)
    row.update(psf_shape(model, nx, ny, pixel_scale))
    row["N_STARS"] = int(model.accepted)
    row["PIXEL_SCALE"] = pixel_scale
    gain = row["GAIN"] if np.isfinite(row["GAIN"]) else 0.0
    if reference is not None and np.isfinite(row["PSF_FWHM"]):
        detections = np.zeros((0, 2)) if detections_xy is None else np.asarray(detections_xy, float)
        stars = zero_point_stars(image, weight, flag, model, wcs, detections, reference, gain,
                                 row["PSF_FWHM"] / pixel_scale, **zp_options)
        row["_zp"], row["_zp_psf"] = stars["zp"], stars["zp_psf"]
    return row


def finish_row(row) -> None:
    """Sky brightness and depth of a row once its zero points are known."""
    pixel_scale = row["PIXEL_SCALE"]
    row["SKY_MAG"] = (row["ZP"] - 2.5 * math.log10(row["SKY"] / pixel_scale**2)
                      if row["SKY"] > 0 and np.isfinite(row["ZP"]) else math.nan)
    noise = row["SKY_RMS"] / math.sqrt(row["PSF_SUM_P2"]) if row["PSF_SUM_P2"] > 0 else math.nan
    row["LIMMAG"] = row["ZP_PSF"] - 2.5 * math.log10(5.0 * noise) if noise > 0 else math.nan


def flag_rows(rows, max_zp_loss=0.25, max_fwhm_ratio=1.3, max_sky_brightening=0.5, max_psf_e=0.1,
              min_stars=10, max_depth_loss=0.5):
    """Quality flags of every CCD row, by rules relative to the medians over all rows.

    Parameters
    ----------
    rows : list of dict
        :func:`measure_ccd` results (every CCD of every exposure).

    Returns
    -------
    numpy.ndarray of int
        One flag per row (bits :data:`FLAGS`).
    """
    def column(name):
        return np.array([row[name] for row in rows], dtype=float)

    def median(values):
        finite = values[np.isfinite(values)]
        return np.median(finite) if finite.size else math.nan

    flags = np.zeros(len(rows), np.int32)
    if not rows:
        return flags
    zp, fwhm, sky, depth = column("ZP"), column("PSF_FWHM"), column("SKY_MAG"), column("LIMMAG")
    e = np.hypot(column("PSF_E1"), column("PSF_E2"))
    with np.errstate(invalid="ignore"):
        flags[~np.isfinite(column("MJD"))] |= FLAGS["NO_DATE"]
        flags[~np.isfinite(column("PHOTZP_HEADER"))] |= FLAGS["NO_ZERO_POINT"]
        flags[zp < median(zp) - max_zp_loss] |= FLAGS["LOW_ZP"]
        flags[fwhm > max_fwhm_ratio * median(fwhm)] |= FLAGS["BAD_SEEING"]
        flags[sky < median(sky) - max_sky_brightening] |= FLAGS["BRIGHT_SKY"]
        flags[e > max_psf_e] |= FLAGS["PSF_ELLIPTICITY"]
        flags[column("N_STARS") < min_stars] |= FLAGS["FEW_STARS"]
        flags[depth < median(depth) - max_depth_loss] |= FLAGS["SHALLOW"]
    return flags


def exclusion_list(exposures, flags, exclude_mask: int) -> dict:
    """``{exposure: [flag names]}`` of the exposures with any CCD flagged by a bit of ``exclude_mask``."""
    out: dict = {}
    for exposure, flag in zip(exposures, flags):
        names = flag_names(int(flag) & exclude_mask)
        if names:
            out.setdefault(str(exposure), set()).update(names)
    return {exposure: sorted(names) for exposure, names in sorted(out.items())}


def write_exclusion_list(path, excluded: dict) -> None:
    """Text file: one ``EXPOSURE  REASON,REASON`` line per excluded exposure (``#`` comments)."""
    from shapepipe.atomic import write_text_atomic

    lines = ["# exposures to exclude (exposure_quality): EXPOSURE FLAGS\n"]
    lines += [f"{exposure} {','.join(names)}\n" for exposure, names in excluded.items()]
    write_text_atomic(path, "".join(lines))


def read_exclusion_list(path) -> dict:
    """``{exposure: reason}`` from an exclusion list (first word of each non-comment line)."""
    from pathlib import Path

    out = {}
    for line in Path(path).read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            words = text.split(None, 1)
            out[words[0]] = words[1] if len(words) > 1 else "excluded"
    return out


def plot_quality(table, flags, path, title="") -> None:
    """One panel per quantity against MJD; flagged CCDs in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shapepipe.atomic import atomic_path

    panels = [("ZP", "zero point (mag)"), ("PSF_FWHM", "PSF FWHM (arcsec)"), ("SKY_MAG", "sky (mag/arcsec$^2$)"),
              ("SKY_RMS", "sky rms (ADU)"), ("PSF_E", "PSF |e|"), ("LIMMAG", "5$\\sigma$ depth (mag)"),
              ("N_STARS", "PSF stars"), ("APCORR", "ZP_PSF - ZP (mag)")]
    mjd = np.asarray(table["MJD"], float)
    bad = np.asarray(flags) != 0
    fig, axes = plt.subplots(4, 2, figsize=(10, 11), sharex=True)
    for ax, (name, label) in zip(axes.ravel(), panels):
        values = (np.hypot(np.asarray(table["PSF_E1"], float), np.asarray(table["PSF_E2"], float))
                  if name == "PSF_E" else np.asarray(table[name], float))
        ax.plot(mjd[~bad], values[~bad], "o", color="C0", ms=4, label="kept")
        ax.plot(mjd[bad], values[bad], "o", color="C3", ms=5, label="flagged")
        ax.set_ylabel(label)
    for ax in axes[-1]:
        ax.set_xlabel("MJD")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title or "exposure quality")
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=80)
    plt.close(fig)
