"""The ``sep`` engine: SExtractor's detection and measurements in Python.

Detection and the background map use `sep` (the SExtractor core as a
library); the per-object measurements (AUTO photometry with neighbour
correction, growth-curve FLUX_RADIUS, windowed parameters, FWHM, flags)
are compiled loops over each object's own pixels that follow SExtractor's
definitions (see :mod:`.kernels`). Every column of
:data:`.columns.COLUMNS` is computed; pixel positions are 1-based, angles
in degrees, magnitudes ``-2.5 log10(flux) + ZP`` (99 for non-positive flux).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shapepipe_modules.io.aot import Kernels

from . import robust
from .columns import (
    COLUMNS,
    FLAG_APERTURE,
    FLAG_DEBLEND_OVERFLOW,
    FLAG_MERGED,
    FLAG_SATURATED,
    FLAG_TRUNCATED,
    column_shape,
    magnitude,
    magnitude_error,
)
from .config_files import ExtractionSettings
from .world_shapes import is_j2000, local_jacobian, world_ellipse, world_moments

_IMAGE, _MASK, _SEGMENT, _VECTOR, _INDEX = "f4[2]", "b1[2]", "i4[2]", "f8[1]", "i8[1]"
#: The measurement kernels (:mod:`.kernels`), from their ahead-of-time build for the argument types a
#: CCD or tile job passes (16- and 32-bit flag images): a fresh process loads them without numba.
kernels = Kernels("shapepipe_modules.sextractor.kernels", {
    "isophotal_measures": [
        (_SEGMENT, _INDEX, _INDEX, _INDEX, _INDEX, _IMAGE, _IMAGE, "b1", flag, "b1", "f8", "b1", "f8", "f8",
         *[_VECTOR] * 6)
        for flag in ("i2[2]", "i4[2]")],
    "auto_photometry": [(_IMAGE, _IMAGE, _MASK, _SEGMENT, *[_VECTOR] * 7, "f8", "f8", "f8", "f8", "b1")],
    "flux_radius": [(_IMAGE, _MASK, *[_VECTOR] * 5, "f8")],
    "windowed": [(_IMAGE, _IMAGE, _MASK, _SEGMENT, *[_VECTOR] * 3, "f8", "f8", "b1")],
    "vignets": [(_IMAGE, _MASK, _SEGMENT, _INDEX, _INDEX, "i8", "i8", "f4")],
})

MASKED_PIXEL = -1e30  # SExtractor's value for unusable VIGNET pixels

# sep's own object flag bits.
_SEP_MERGED = 0x0001
_SEP_TRUNC = 0x0002
_SEP_DOVERFLOW = 0x0004


class ExtractionError(RuntimeError):
    """The image cannot be processed (no valid pixels, sep failure)."""


@dataclass
class Extraction:
    """Result of one extraction.

    Attributes
    ----------
    table : astropy.table.Table
        One row per object, columns in ``.param`` order.
    header_keys : dict
        ``SEX*`` keys for the ``LDAC_IMHEAD`` header (background level and
        noise, threshold, gain, ...), as SExtractor writes them.
    background : 2-d float32 array or None
        Background map (check image BACKGROUND); None unless asked for with
        ``keep_background``.
    segmentation : 2-d int32 array
        Object label per pixel (check image SEGMENTATION; label = NUMBER).
    subtracted : 2-d float32 array
        Background-subtracted image, unusable pixels set to 0 (check image
        -BACKGROUND).
    residual : 1-d float32 array
        Background-subtracted values of the usable pixels outside every
        detection (for the background-residual diagnostic): at most
        :data:`RESIDUAL_MAX_PIXELS`, a regular subsample (:func:`sky_sample`).
    timings : dict
        Seconds spent in each step (``background``, ``detection``,
        ``measurement``, ``table``), for benchmarks and logs.
    """

    table: object
    header_keys: dict
    background: np.ndarray | None
    segmentation: np.ndarray
    subtracted: np.ndarray = field(repr=False, default=None)
    residual: np.ndarray = field(repr=False, default=None)
    timings: dict = field(default_factory=dict)
    _mesh: object = field(repr=False, default=None)

    def background_rms(self) -> np.ndarray:
        """Background noise map (check image BACKGROUND_RMS), computed on demand."""
        return self._mesh.rms()


def _native(array, dtype=np.float32, copy=True):
    """C-contiguous array of ``dtype`` in native byte order, as sep needs.

    With ``copy=False`` an array that already qualifies is returned as is
    (and may then be modified by the caller of :func:`extract`).
    """
    target = np.dtype(dtype).newbyteorder("=")
    array = np.asarray(array)
    if not copy and array.dtype == target and array.flags.c_contiguous and array.flags.writeable:
        return array
    # One pass: byte swap and type conversion happen during the copy.
    return np.array(array, dtype=target, order="C", copy=True)


def _checked_flags(flag_image, shape):
    """An integer flag image of this shape in native byte order (compiled kernels), or ExtractionError."""
    flag_image = np.asarray(flag_image)
    if flag_image.shape != shape:
        raise ExtractionError(f"flag shape {flag_image.shape} differs from image shape {shape}")
    if flag_image.dtype.kind not in "iub":
        raise ExtractionError(f"flag image must hold integers, got {flag_image.dtype}")
    # Native byte order for the compiled kernels (FITS data are big-endian).
    return flag_image.astype(flag_image.dtype.newbyteorder("="), copy=False)


def _pixel_scale_deg(wcs, x, y):
    """Local pixel scale (deg/pixel, sqrt of the Jacobian determinant) at 1-based positions."""
    step = 0.5
    ra0, dec0 = wcs.all_pix2world(x, y, 1)
    ra1, dec1 = wcs.all_pix2world(x + step, y, 1)
    ra2, dec2 = wcs.all_pix2world(x, y + step, 1)
    cosd = np.cos(np.radians(dec0))
    dra1 = ((ra1 - ra0 + 180) % 360 - 180) * cosd
    dra2 = ((ra2 - ra0 + 180) % 360 - 180) * cosd
    det = np.abs(dra1 * (dec2 - dec0) - dra2 * (dec1 - dec0)) / step**2
    return np.sqrt(det)


#: Most sky pixels handed to the background-residual fit (its own subsampling limit, so that the
#: fit sees the same pixels as from the full list).
RESIDUAL_MAX_PIXELS = 2_000_000


def sky_sample(sub, seg, bad, max_pixels=RESIDUAL_MAX_PIXELS, block_rows=512):
    """Usable undetected pixels ``sub[(seg == 0) & ~bad]``, every k-th (k = ceil(n / max_pixels)).

    The same values as selecting them all and taking every k-th, computed by
    blocks of rows: a full tile's selection would otherwise hold 3.6 bytes per
    pixel plus image-size masks (0.5 GB) at the end of the extraction.
    """
    height = sub.shape[0]
    blocks = [(r0, min(r0 + block_rows, height)) for r0 in range(0, height, block_rows)]

    def usable(r0, r1):
        mask = seg[r0:r1] == 0
        mask &= ~bad[r0:r1]
        return mask

    n = sum(int(np.count_nonzero(usable(r0, r1))) for r0, r1 in blocks)
    step = 1 if n <= max_pixels else -(-n // max_pixels)
    parts, seen = [], 0
    for r0, r1 in blocks:
        values = sub[r0:r1][usable(r0, r1)]
        parts.append(values[(-seen) % step::step].copy())  # a view would keep the whole block alive
        seen += values.size
    return np.concatenate(parts) if parts else np.empty(0, sub.dtype)


#: Images at least this large keep their background map in an unlinked temporary file, memory-mapped:
#: it is needed again only at the objects' positions (and for a BACKGROUND check image), and a full
#: 10,000 x 10,000 tile would otherwise hold 400 MB more of the worker's own memory during detection.
FILE_BACKED_PIXELS = 25_000_000


def _file_backed(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` in a memory-mapped, already unlinked temporary file (same values, file pages)."""
    import tempfile

    with tempfile.TemporaryFile(prefix="shapepipe_sep_") as handle:
        handle.truncate(array.nbytes)
        mapped = np.memmap(handle, dtype=array.dtype, mode="r+", shape=array.shape)
    # The map keeps the (unlinked) file alive; its space is freed with the last view.
    mapped[...] = array
    return mapped


#: Largest initial active-pixel stack of sep.extract (it doubles on overflow).
PIXSTACK_START_MAX = 2_000_000


def _detect(sub, thresh, var, bad, settings, filter_kernel, gain):
    """sep.extract, growing the active-pixel stack when it overflows.

    The stack starts small (SExtractor's 300000 pixels, more on large
    images) and doubles on overflow: a large fixed stack costs ~40 bytes
    per pixel of memory on every image.
    """
    import sep

    # At most 2 million pixels to start with (~80 MB): a full 10,000 x 10,000 tile would
    # otherwise allocate 250 MB of stack it does not use.
    pixstack = min(max(300000, sub.size // 16), PIXSTACK_START_MAX)
    while True:
        sep.set_extract_pixstack(pixstack)
        try:
            return sep.extract(
                sub, thresh, var=var, mask=bad, minarea=settings.detect_minarea,
                filter_kernel=filter_kernel, filter_type="conv",
                deblend_nthresh=settings.deblend_nthresh, deblend_cont=settings.deblend_mincont,
                clean=settings.clean, clean_param=settings.clean_param, segmentation_map=True,
                gain=gain if gain > 0 else None,
            )
        except Exception as error:  # sep raises plain Exceptions on overflow
            if "pixel buffer full" in str(error) and pixstack < sub.size:
                pixstack = min(2 * pixstack, sub.size)
                continue
            raise ExtractionError(f"sep.extract failed: {error}") from error


def extract(
    image,
    header,
    settings: ExtractionSettings,
    parameters,
    kernel=None,
    weight=None,
    flag_image=None,
    zero_point=None,
    background_value=None,
    ext_number=1,
    overwrite_input=False,
    keep_background=True,
    forced=None,
):
    """Detect and measure the sources of one image.

    Parameters
    ----------
    image : 2-d array
        Science image (ADU).
    header : astropy.io.fits.Header
        Its header (WCS, ``GAIN``/``SATURATE`` keys named in the settings).
    settings : ExtractionSettings
        The ``.sex`` settings.
    parameters : list of Parameter
        The ``.param`` columns to compute, in output order.
    kernel : 2-d array, optional
        Detection filter (``.conv``); used when ``settings.filter``.
    weight : 2-d array, optional
        Inverse-variance map; pixels with weight 0 are unusable.
    flag_image : 2-d int array or callable, optional
        Flags OR-ed into IMAFLAGS_ISO; a callable returning them is called
        only after detection, once the full-size background map is freed
        (a full tile's flags then never coexist with it).
    zero_point : float, optional
        Overrides ``MAG_ZEROPOINT`` (ZP_FROM_HEADER).
    background_value : float, optional
        Constant background (BKG_FROM_HEADER); overrides BACK_TYPE.
    ext_number : int
        Value of EXT_NUMBER.
    overwrite_input : bool
        Reuse ``image`` and ``weight`` as work space when they are native
        float32 arrays (saves two image-size copies); their content is then
        lost.
    keep_background : bool
        Return the background map in ``Extraction.background``.
    forced : tuple of 3 arrays, optional
        ``(x, y, number)``: measure at these 0-based pixel positions instead of
        the detections (:mod:`.forced`), one row each in this order, with
        these NUMBER values.

    Returns
    -------
    Extraction
    """
    import time

    import sep
    from astropy.table import Table
    from astropy.wcs import WCS

    clock = time.perf_counter()
    timings = {}
    data = _native(image, copy=not overwrite_input)
    if data.ndim != 2:
        raise ExtractionError(f"expected a 2-d image, got shape {data.shape}")
    bad = ~np.isfinite(data)
    if weight is not None:
        weight = _native(weight, copy=not overwrite_input)
        if weight.shape != data.shape:
            raise ExtractionError(f"weight shape {weight.shape} differs from image shape {data.shape}")
        bad |= ~(weight > 0)
    flag_loader = flag_image if callable(flag_image) else None
    if flag_loader is not None:
        flag_image = None
    if flag_image is not None:
        flag_image = _checked_flags(flag_image, data.shape)
    if bad.all():
        raise ExtractionError("no usable pixel (all weights are zero or values non-finite)")
    data[bad] = 0.0

    gain = float(header.get(settings.gain_key, settings.gain) or 0.0) if settings.gain_key else settings.gain
    satur = float(header.get(settings.satur_key, settings.satur_level)) if settings.satur_key else settings.satur_level
    zp = settings.mag_zeropoint if zero_point is None else float(zero_point)

    # Background and noise maps.
    sep.set_sub_object_limit(4096)
    bw, bh = settings.back_size
    fw, fh = settings.back_filtersize
    mesh = sep.Background(data, mask=bad, bw=bw, bh=bh, fw=fw, fh=fh, fthresh=settings.back_filtthresh)
    global_rms = float(mesh.globalrms)
    backnoise2 = global_rms**2

    # Per-pixel variance: the weight map rescaled to the measured noise
    # (SExtractor's RESCALE_WEIGHTS), else the global background noise.
    # Computed in place in the weight array: no further image-size copy.
    if weight is not None:
        good = ~bad
        # The scale is a median over millions of pixels of a smooth ratio: a
        # 3x3-strided subsample gives it to ~1e-5 at a tenth of the cost.
        ratio = mesh.rms()[::3, ::3]
        ratio *= ratio
        ratio *= weight[::3, ::3]
        sample_good = good[::3, ::3]
        scale = robust.median(ratio, where=sample_good) if sample_good.any() else robust.median(
            (mesh.rms() ** 2 * weight)[good])
        del ratio, sample_good
        var = weight
        np.divide(np.float32(scale), var, out=var, where=good)
        del good
        var[bad] = 0.0
        var_measure = var
    else:
        scale = 1.0
        var = None
        # A read-only broadcast view: one value for every pixel, no memory.
        var_measure = np.broadcast_to(np.float32(backnoise2), data.shape)

    constant_background = background_value
    if constant_background is None and settings.back_type == "MANUAL":
        constant_background = settings.back_value
    # Saturated pixels, found before the background is subtracted in place.
    # (flat indices: np.nonzero on a 2-d mask costs 20 ms per CCD even when empty)
    saturated_pixels = np.flatnonzero(data.ravel() >= satur)
    if constant_background is None:
        back = mesh.back()
        if back.size >= FILE_BACKED_PIXELS:
            back = _file_backed(back)
        data -= back
        # SExtractor's SEXBKGND: the median of the background meshes.
        median_background = float(mesh.globalback)
    else:
        back = None
        data -= np.float32(constant_background)
        median_background = float(constant_background)
    sub = data
    sub[bad] = 0.0
    timings["background"] = time.perf_counter() - clock

    # Detection.
    clock = time.perf_counter()
    filter_kernel = np.asarray(kernel, dtype=np.float32) if (settings.filter and kernel is not None) else None
    if settings.thresh_absolute:
        thresh, var_arg = settings.detect_thresh, None
    elif var is not None:
        thresh, var_arg = settings.detect_thresh, var
    else:
        thresh, var_arg = settings.detect_thresh * global_rms, None
    objects, seg = _detect(sub, thresh, var_arg, bad, settings, filter_kernel, gain)
    seg = np.asarray(seg, dtype=np.int32)
    if forced is not None:
        from . import forced as forced_positions

        forced_x, forced_y = (np.asarray(v, dtype=np.float64) for v in forced[:2])
        seg = forced_positions.relabel(seg, forced_x, forced_y)
        objects = forced_positions.forced_objects(seg, sub, var if var is not None else backnoise2,
                                                  forced_x, forced_y)
    n = len(objects["x"])
    height, width = data.shape
    timings["detection"] = time.perf_counter() - clock
    clock = time.perf_counter()

    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    a = np.maximum(objects["a"].astype(np.float64), 1e-3)
    b = np.clip(objects["b"].astype(np.float64), 1e-3, a)
    theta = objects["theta"].astype(np.float64)

    peak = objects["peak"].astype(np.float64)
    nearest = (np.clip(np.floor(y + 0.5).astype(int), 0, height - 1), np.clip(np.floor(x + 0.5).astype(int), 0, width - 1))
    if back is not None:
        bkg_at = back[nearest].astype(np.float64)
        if not keep_background:
            back = None
    else:
        bkg_at = np.full(n, float(constant_background))
    if flag_loader is not None:
        flag_image = _checked_flags(flag_loader(), data.shape)
    saturated = np.zeros(n + 1, bool)
    saturated[seg.ravel()[saturated_pixels]] = True
    saturated = saturated[1:]
    threshold, imaflags, nimaflags, fwhm = kernels.isophotal_measures(
        seg, objects["xmin"].astype(np.int64), objects["xmax"].astype(np.int64),
        objects["ymin"].astype(np.int64), objects["ymax"].astype(np.int64), sub,
        var if var is not None else np.zeros((1, 1), np.float32), var is not None,
        flag_image if flag_image is not None else np.zeros((1, 1), np.int32), flag_image is not None,
        global_rms, bool(settings.thresh_absolute), float(settings.analysis_thresh), float(satur),
        x, y, a, b, peak, bkg_at)

    # AUTO photometry (Kron), with neighbours and bad pixels corrected.
    kron_fact, kron_min = settings.phot_autoparams
    weight_gain = bool(settings.weight_gain and weight is not None)
    kron, flux_auto, fluxerr_auto, auto_flags = kernels.auto_photometry(
        sub, var_measure, bad, seg, x, y,
        objects["cxx"].astype(np.float64), objects["cyy"].astype(np.float64), objects["cxy"].astype(np.float64),
        a, b, float(kron_fact), float(kron_min), float(gain), backnoise2, weight_gain,
    )

    # Fraction-of-light radii from the growth curve within 6 A, normalised to FLUX_AUTO.
    fracs = np.asarray(settings.phot_fluxfrac, dtype=float)
    flux_radius, hl_radius = kernels.flux_radius(sub, bad, x, y, a, fracs, flux_auto, 0.0)

    # Windowed parameters.
    (xwin, ywin, flux_win, fluxerr_win, x2win, y2win, xywin, ex2win, ey2win, exywin,
     flags_win, win_aper_flags) = kernels.windowed(
        sub, var_measure, bad, seg, x, y, hl_radius, float(gain), backnoise2, weight_gain)
    revert = flags_win != 0
    x2win = np.where(revert, objects["x2"], x2win)
    y2win = np.where(revert, objects["y2"], y2win)
    xywin = np.where(revert, objects["xy"], xywin)
    ex2win = np.where(revert, objects["errx2"], ex2win)
    ey2win = np.where(revert, objects["erry2"], ey2win)
    exywin = np.where(revert, objects["errxy"], exywin)

    # Fixed circular apertures (diameters in pixels).
    diameters = np.asarray(settings.phot_apertures, dtype=float)
    flux_aper = np.zeros((n, diameters.size))
    fluxerr_aper = np.zeros((n, diameters.size))
    aper_flags = np.zeros(n, np.int16)
    var_aper = var if var is not None else backnoise2
    for k, diameter in enumerate(diameters):
        if n == 0:
            break
        radius = diameter / 2.0
        flux_k, fluxerr_k, _ = sep.sum_circle(sub, x, y, radius, var=var_aper,
                                              gain=gain if gain > 0 else None, subpix=5)
        flux_aper[:, k] = flux_k
        fluxerr_aper[:, k] = fluxerr_k
        off = ((np.floor(x - radius + 0.5) < 0) | (np.floor(x + radius + 0.5) + 1 > width)
               | (np.floor(y - radius + 0.5) < 0) | (np.floor(y + radius + 0.5) + 1 > height))
        aper_flags |= np.where(off, FLAG_APERTURE, 0).astype(np.int16)

    # FLAGS.
    sep_flags = objects["flag"].astype(int)
    flags = (auto_flags.astype(int) | win_aper_flags.astype(int) | aper_flags.astype(int)
             | np.where(sep_flags & _SEP_MERGED, FLAG_MERGED, 0)
             | np.where(sep_flags & _SEP_TRUNC, FLAG_TRUNCATED, 0)
             | np.where(sep_flags & _SEP_DOVERFLOW, FLAG_DEBLEND_OVERFLOW, 0)
             | np.where(saturated, FLAG_SATURATED, 0))

    # World coordinates and surface brightness.
    try:
        wcs = WCS(header, naxis=2)
        has_wcs = wcs.has_celestial
    except Exception:
        has_wcs = False
    x1, y1 = x + 1.0, y + 1.0
    xwin1, ywin1 = xwin + 1.0, ywin + 1.0
    if has_wcs and n:
        ra, dec = wcs.all_pix2world(x1, y1, 1)
        rawin, decwin = wcs.all_pix2world(xwin1, ywin1, 1)
        scale_deg = _pixel_scale_deg(wcs, x1, y1)
    else:
        ra = dec = rawin = decwin = np.zeros(n)
        scale_deg = np.full(n, settings.pixel_scale / 3600.0)
    if settings.pixel_scale > 0:
        scale_deg = np.full(n, settings.pixel_scale / 3600.0)
    pixel_area = (scale_deg * 3600.0) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_max = np.where((peak > 0) & (pixel_area > 0), -2.5 * np.log10(peak / pixel_area) + zp, 99.0)
        mu_threshold = np.where((threshold > 0) & (pixel_area > 0), -2.5 * np.log10(threshold / pixel_area) + zp, 99.0)

    # Position-angle and ellipse quantities.
    theta_deg = np.degrees(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        win_theta = 0.5 * np.arctan2(2.0 * xywin, x2win - y2win)
        half_diff = np.sqrt(0.25 * (x2win - y2win) ** 2 + xywin**2)
        awin = np.sqrt(0.5 * (x2win + y2win) + half_diff)
        bwin = np.sqrt(np.maximum(0.5 * (x2win + y2win) - half_diff, 0.0))

    # World-coordinate shapes through the local WCS Jacobian (see world_shapes).
    if has_wcs and n:
        jacobian = local_jacobian(wcs, x1, y1)
        moments_world = world_moments(objects["x2"], objects["y2"], objects["xy"], jacobian)
        longitude_first = not (0 <= wcs.wcs.lat < wcs.wcs.lng)
        a_world, b_world, theta_world, theta_sky = world_ellipse(*moments_world, longitude_first)
        awin_world, bwin_world, _, thetawin_sky = world_ellipse(
            *world_moments(x2win, y2win, xywin, local_jacobian(wcs, xwin1, ywin1)), longitude_first)
        j2000 = is_j2000(header)
    else:
        moments_world = (np.zeros(n),) * 3
        a_world = b_world = theta_world = theta_sky = awin_world = bwin_world = thetawin_sky = np.zeros(n)
        j2000 = True
    if not j2000 and any(p.name in ("THETA_J2000", "THETAWIN_J2000") for p in parameters):
        raise ExtractionError("THETA_J2000 needs a J2000 or ICRS WCS (RADESYS/EQUINOX); this image's is "
                              f"{header.get('RADESYS', header.get('RADECSYS', '?'))} "
                              f"{header.get('EQUINOX', '')}")

    snr_win = np.where(fluxerr_win > 0, flux_win / np.where(fluxerr_win > 0, fluxerr_win, 1.0), 1e30)
    values = {
        "NUMBER": np.arange(1, n + 1) if forced is None else np.asarray(forced[2]),
        "EXT_NUMBER": np.full(n, ext_number),
        "FLUX_AUTO": flux_auto,
        "FLUXERR_AUTO": fluxerr_auto,
        "MAG_AUTO": magnitude(flux_auto, zp),
        "MAGERR_AUTO": magnitude_error(flux_auto, fluxerr_auto),
        "KRON_RADIUS": kron,
        "FLUX_WIN": flux_win,
        "FLUXERR_WIN": fluxerr_win,
        "MAG_WIN": magnitude(flux_win, zp),
        "MAGERR_WIN": magnitude_error(flux_win, fluxerr_win),
        "SNR_WIN": snr_win,
        "FLUX_APER": flux_aper,
        "FLUXERR_APER": fluxerr_aper,
        "MAG_APER": magnitude(flux_aper, zp),
        "MAGERR_APER": magnitude_error(flux_aper, fluxerr_aper),
        "FLUX_RADIUS": flux_radius,
        "FLUX_MAX": peak,
        "ISOAREA_IMAGE": objects["npix"],
        "BACKGROUND": bkg_at,
        "THRESHOLD": threshold,
        "X_IMAGE": x1,
        "Y_IMAGE": y1,
        "X_WORLD": ra,
        "Y_WORLD": dec,
        "ALPHA_J2000": ra,
        "DELTA_J2000": dec,
        "X2_IMAGE": objects["x2"],
        "Y2_IMAGE": objects["y2"],
        "XY_IMAGE": objects["xy"],
        "ERRX2_IMAGE": objects["errx2"],
        "ERRY2_IMAGE": objects["erry2"],
        "ERRXY_IMAGE": objects["errxy"],
        "CXX_IMAGE": objects["cxx"],
        "CYY_IMAGE": objects["cyy"],
        "CXY_IMAGE": objects["cxy"],
        "A_IMAGE": a,
        "B_IMAGE": b,
        "THETA_IMAGE": theta_deg,
        "X2_WORLD": moments_world[0],
        "Y2_WORLD": moments_world[1],
        "XY_WORLD": moments_world[2],
        "A_WORLD": a_world,
        "B_WORLD": b_world,
        "THETA_WORLD": theta_world,
        "THETA_SKY": theta_sky,
        "THETA_J2000": theta_sky,
        "AWIN_WORLD": awin_world,
        "BWIN_WORLD": bwin_world,
        "THETAWIN_J2000": thetawin_sky,
        "XWIN_IMAGE": xwin1,
        "YWIN_IMAGE": ywin1,
        "XWIN_WORLD": rawin,
        "YWIN_WORLD": decwin,
        "ALPHAWIN_J2000": rawin,
        "DELTAWIN_J2000": decwin,
        "X2WIN_IMAGE": x2win,
        "Y2WIN_IMAGE": y2win,
        "XYWIN_IMAGE": xywin,
        "ERRX2WIN_IMAGE": ex2win,
        "ERRY2WIN_IMAGE": ey2win,
        "ERRXYWIN_IMAGE": exywin,
        "AWIN_IMAGE": awin,
        "BWIN_IMAGE": bwin,
        "THETAWIN_IMAGE": np.degrees(win_theta),
        "MU_THRESHOLD": mu_threshold,
        "MU_MAX": mu_max,
        "FLAGS": flags,
        "FLAGS_WIN": flags_win,
        "IMAFLAGS_ISO": imaflags,
        "NIMAFLAGS_ISO": nimaflags,
        "FWHM_IMAGE": fwhm,
        "FWHM_WORLD": fwhm * scale_deg,
        "ELONGATION": a / b,
        "ELLIPTICITY": 1.0 - b / a,
    }

    timings["measurement"] = time.perf_counter() - clock
    clock = time.perf_counter()
    table = Table()
    for parameter in parameters:
        dtype, unit, description = COLUMNS[parameter.name]
        shape = column_shape(parameter, settings)
        if parameter.name == "VIGNET":
            column = vignets(sub, bad, seg, x, y, shape[1], shape[0])
        else:
            column = np.asarray(values[parameter.name])
            if column.ndim == 2:
                column = column[:, : (shape[0] if shape else 1)]
                if not shape:
                    column = column[:, 0]
        table[parameter.name] = np.asarray(column).astype(dtype, copy=False)
        table[parameter.name].unit = unit or None
        table[parameter.name].description = description

    residual = sky_sample(sub, seg, bad)
    header_keys = {
        "SEXBKGND": (median_background, "Median background level (ADU)"),
        "SEXBKDEV": (global_rms, "Median background RMS (ADU)"),
        "SEXTHLD": (settings.detect_thresh * global_rms, "Extraction threshold (ADU)"),
        "SEXATHLD": (settings.analysis_thresh * global_rms, "Analysis threshold (ADU)"),
        "SEXNFIN": (n, "Final number of extracted sources"),
        "SEXNPARA": (len(parameters), "Number of parameters per source"),
        "SEXPXSCL": (float(np.median(scale_deg) * 3600.0) if n else settings.pixel_scale,
                     "Pixel scale used for measurements (arcsec)"),
        "SEXGAIN": (gain, "Gain used (e-/ADU)"),
        "SEXSATLV": (satur, "Saturation level used for flagging (ADU)"),
        "SEXMGZPT": (zp, "Zero-point used for magnitudes"),
        "SEXFLTR": (filter_kernel is not None, "Detection filtering activated (flag)"),
        "SEXMINAR": (settings.detect_minarea, "Minimum area used for detection (pixels)"),
        "SEXDBLDN": (settings.deblend_nthresh, "Number of deblending thresholds"),
        "SEXDBLDC": (settings.deblend_mincont, "Minimum contrast used for deblending"),
        "SEXCLN": (settings.clean, "Cleaning activated (flag)"),
        "SEXCLNPA": (settings.clean_param, "Cleaning parameter"),
        "SEXAUTP1": (float(kron_fact), "Parameter #1 used for automatic magnitudes"),
        "SEXAUTP2": (float(kron_min), "Parameter #2 used for automatic magnitudes"),
        "SEXBKGSX": (bw, "Mesh width used for background mapping (pixels)"),
        "SEXBKGSY": (bh, "Mesh height used for background mapping (pixels)"),
        "SEXMWSCL": (scale / backnoise2 if weight is not None and backnoise2 > 0 else 1.0,
                     "Measurement-weight re-scaling factor"),
    }
    for k, diameter in enumerate(diameters[:9], start=1):
        header_keys[f"SEXAPED{k}"] = (float(diameter), f"Fixed photometric aperture #{k} (pixels)")
    timings["table"] = time.perf_counter() - clock
    if keep_background and back is None:
        back = np.full(data.shape, np.float32(constant_background))
    return Extraction(table, header_keys, back, seg, subtracted=sub, residual=residual, timings=timings,
                      _mesh=mesh)


def vignets(sub, bad, seg, x, y, width, height):
    """Stamps of the background-subtracted image around each object.

    The stamp of size ``(height, width)`` is centred on the pixel nearest
    the barycentre (``int(x + 0.49999)`` as SExtractor); pixels off the
    image, with zero weight, or belonging to another object are set to
    ``-1e30``.
    """
    ix = (np.asarray(x) + 0.49999).astype(np.int64)
    iy = (np.asarray(y) + 0.49999).astype(np.int64)
    return kernels.vignets(sub, bad, seg, ix, iy, int(width), int(height), np.float32(MASKED_PIXEL))


def warm_up() -> None:
    """Run the engine once on a small synthetic image (a worker's ``preload``).

    Loads every compiled kernel with the argument types a CCD job uses
    (16- and 32-bit flag images), so jobs forked from the worker do not each
    load them again.
    """
    from astropy.io import fits

    from .config_files import ExtractionSettings, Parameter

    rng = np.random.default_rng(0)
    size = 96
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(100.0, 5.0, (size, size)).astype(np.float32)
    for x0, y0 in ((30.0, 30.0), (60.0, 64.0)):
        image += np.float32(500.0) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0).astype(np.float32)
    settings = ExtractionSettings(back_size=(32, 32), phot_apertures=(5.0, 10.0), phot_fluxfrac=(0.5,))
    parameters = [Parameter(name) for name in COLUMNS if name != "VIGNET"] + [Parameter("VIGNET", (9, 9))]
    kernel = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    for flag_type in (np.int16, np.int32):
        extract(image, fits.Header(), settings, parameters, kernel, weight=np.ones_like(image),
                flag_image=np.zeros((size, size), flag_type), keep_background=False)
