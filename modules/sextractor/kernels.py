"""Per-object measurement loops (numba), following SExtractor's definitions.

Each loop visits only the pixels of one object's aperture; everything
else in the engine is vectorised numpy. Pixels that are unusable for an
object ("blocked": zero weight, or belonging to another detected object)
are replaced by the pixel symmetric about the object centre when that one
is usable, else by zero, as SExtractor does with ``MASK_TYPE CORRECT``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

KRON_NSIG = 6.0  # Kron first moment measured within 6 isophotal radii
CROWD_THRESHOLD = 0.1  # blocked fraction of the AUTO aperture that sets FLAGS bit 1
WIN_NSIG = 4.0  # windowed measurements integrate to 4 sigma of the window
WIN_OVERSAMP = 11  # sub-sampling of the pixels crossed by the window edge
WIN_NITERMAX = 16
WIN_STEPMIN = 1e-4
WIN_FAC = 2.0  # centroid step factor (exact for a Gaussian profile)
FLAG_CROWDED = 1
FLAG_APERTURE = 16


@numba.njit(cache=True, inline="always")
def _blocked(bad, seg, xx, yy, label):
    s = seg[yy, xx]
    return bad[yy, xx] or (s > 0 and s != label)


@numba.njit(cache=True, inline="always")
def _rint(value):
    return int(math.floor(value + 0.5))


@numba.njit(cache=True, inline="always")
def _ellipse_box(mx, my, c2x, c2y, c2xy, scale, width, height):
    """Pixel range [xmin, xmax) x [ymin, ymax) of the ellipse
    ``c2x dx^2 + c2y dy^2 + c2xy dx dy <= scale^2``, clipped to the image;
    ``clipped`` tells whether the image edge cut it (FLAGS bit 16)."""
    dxlim = c2x - c2xy * c2xy / (4.0 * c2y)
    dxlim = scale / math.sqrt(dxlim) if dxlim > 0 else 0.0
    dylim = c2y - c2xy * c2xy / (4.0 * c2x)
    dylim = scale / math.sqrt(dylim) if dylim > 0 else 0.0
    xmin = _rint(mx - dxlim)
    xmax = _rint(mx + dxlim) + 1
    ymin = _rint(my - dylim)
    ymax = _rint(my + dylim) + 1
    clipped = xmin < 0 or xmax > width or ymin < 0 or ymax > height
    return max(xmin, 0), min(xmax, width), max(ymin, 0), min(ymax, height), clipped


@numba.njit(cache=True)
def auto_photometry(sub, var, bad, seg, x, y, cxx, cyy, cxy, a, b, kron_fact, kron_min,
                    gain, backnoise2, weight_gain):
    """Kron factor, AUTO flux and its error, and FLAGS bits 1 and 16.

    Parameters
    ----------
    sub, var : 2-d float arrays
        Background-subtracted image and per-pixel noise variance.
    bad : 2-d bool array
        Unusable pixels (zero weight).
    seg : 2-d int32 array
        Segmentation map; object ``i`` has label ``i + 1``.
    x, y, cxx, cyy, cxy, a, b : 1-d arrays
        0-based barycentres and isophotal ellipse parameters.
    kron_fact, kron_min : float
        ``PHOT_AUTOPARAMS``: Kron factor and minimum radius (units of A, B).
    gain : float
        e-/ADU; 0 means no Poisson term.
    backnoise2 : float
        Global background variance (for gain modulation by the weights).
    weight_gain : bool
        Scale the Poisson term with the local variance (``WEIGHT_GAIN``).
    """
    n = x.size
    height, width = sub.shape
    kron = np.zeros(n)
    flux = np.zeros(n)
    fluxerr = np.zeros(n)
    flags = np.zeros(n, np.int16)
    for i in range(n):
        label = i + 1
        mx = x[i]
        my = y[i]
        flag = 0
        c2x, c2y, c2xy = cxx[i], cyy[i], cxy[i]
        # Step 1: first moment of the radius within KRON_NSIG isophotal radii.
        klim2 = KRON_NSIG * KRON_NSIG
        xmin, xmax, ymin, ymax, clipped = _ellipse_box(mx, my, c2x, c2y, c2xy, KRON_NSIG, width, height)
        if clipped:
            flag |= FLAG_APERTURE
        r1 = 0.0
        v1 = 0.0
        area = 0
        areab = 0
        for yy in range(ymin, ymax):
            dy = yy - my
            for xx in range(xmin, xmax):
                dx = xx - mx
                r2 = c2x * dx * dx + c2y * dy * dy + c2xy * dx * dy
                if r2 <= klim2:
                    if _blocked(bad, seg, xx, yy, label):
                        areab += 1
                    else:
                        area += 1
                        pix = sub[yy, xx]
                        r1 += math.sqrt(r2) * pix
                        v1 += pix
        area += areab
        if area == 0:
            flags[i] = flag
            continue
        if r1 > 0.0 and v1 > 0.0:
            factor = max(kron_fact * r1 / v1, kron_min)
        else:
            factor = kron_min
        if areab > CROWD_THRESHOLD * area:
            flag |= FLAG_CROWDED
        # Step 2: integrate within the Kron ellipse.
        klim2 = factor * factor
        xmin, xmax, ymin, ymax, clipped = _ellipse_box(mx, my, c2x, c2y, c2xy, factor, width, height)
        if clipped:
            flag |= FLAG_APERTURE
        area = 0
        areab = 0
        total = 0.0
        variance = 0.0
        for yy in range(ymin, ymax):
            dy = yy - my
            for xx in range(xmin, xmax):
                dx = xx - mx
                if c2x * dx * dx + c2y * dy * dy + c2xy * dx * dy <= klim2:
                    area += 1
                    pix = sub[yy, xx]
                    v = var[yy, xx]
                    if _blocked(bad, seg, xx, yy, label):
                        areab += 1
                        x2 = int(2.0 * mx + 0.49999 - xx)
                        y2 = int(2.0 * my + 0.49999 - yy)
                        if 0 <= x2 < width and 0 <= y2 < height and not _blocked(bad, seg, x2, y2, label):
                            pix = sub[y2, x2]
                            v = var[y2, x2]
                        else:
                            pix = 0.0
                            v = 0.0
                    variance += v
                    total += pix
                    if weight_gain and pix > 0.0 and gain > 0.0:
                        variance += pix / gain * v / backnoise2
        if areab > CROWD_THRESHOLD * area:
            flag |= FLAG_CROWDED
        if not weight_gain and gain > 0.0 and total > 0.0:
            variance += total / gain
        kron[i] = factor if total > 0.0 else 0.0
        flux[i] = total
        fluxerr[i] = math.sqrt(variance)
        flags[i] = flag
    return kron, flux, fluxerr, flags


@numba.njit(cache=True)
def _chord_halves(y0, radius2, halves):
    """Half-lengths of the circle's chords along the WIN_OVERSAMP sub-rows starting at ``y0``.

    ``halves[j]`` is set to -1 when sub-row ``j`` misses the circle.
    """
    step = 1.0 / WIN_OVERSAMP
    sy = y0
    for j in range(WIN_OVERSAMP):
        room = radius2 - sy * sy
        halves[j] = math.sqrt(room) if room > 0.0 else -1.0
        sy += step


@numba.njit(cache=True, inline="always")
def _subpixel_fraction(x0, halves):
    """Fraction of a pixel within a circle, on a WIN_OVERSAMP x WIN_OVERSAMP grid.

    ``x0``: offset of the pixel's first sub-pixel column from the circle
    centre; ``halves``: chord half-lengths of the pixel row's sub-rows
    (:func:`_chord_halves`). Counts the sub-pixels strictly inside the
    circle, as SExtractor's windowed measurements do, from the chord ends
    instead of testing every sub-pixel.
    """
    last = WIN_OVERSAMP - 1
    count = 0
    for j in range(WIN_OVERSAMP):
        half = halves[j]
        if half <= 0.0:
            continue
        # Sub-pixel k is inside when -half < x0 + k / WIN_OVERSAMP < half.
        low = int(math.floor((-half - x0) * WIN_OVERSAMP)) + 1
        high = int(math.ceil((half - x0) * WIN_OVERSAMP)) - 1
        if low < 0:
            low = 0
        if high > last:
            high = last
        if high >= low:
            count += high - low + 1
    return count / (WIN_OVERSAMP * WIN_OVERSAMP)


@numba.njit(cache=True)
def vignets(sub, bad, seg, ix, iy, width, height, masked):
    """Stamps of ``sub`` of shape ``(height, width)`` centred on ``(iy, ix)``.

    Pixels off the image, unusable (``bad``) or belonging to another object
    than ``i + 1`` keep the value ``masked``.
    """
    n = ix.size
    ny, nx = sub.shape
    out = np.empty((n, height, width), np.float32)
    out[:] = masked
    for i in range(n):
        label = i + 1
        for j in range(height):
            yy = iy[i] + j - height // 2
            if yy < 0 or yy >= ny:
                continue
            for k in range(width):
                xx = ix[i] + k - width // 2
                if 0 <= xx < nx and not _blocked(bad, seg, xx, yy, label):
                    out[i, j, k] = sub[yy, xx]
    return out


@numba.njit(cache=True)
def _window_sums(sub, var, bad, seg, label, mx, my, sig, gain, backnoise2, weight_gain, full,
                 column_weight, halves):
    """One pass of the windowed measurements over the window centred on ``(mx, my)``.

    With ``full`` False only the flux and first moments are summed (what the
    centroid iterations need); the moments and errors then stay 0.

    Returns
    -------
    tuple
        ``tv, dxpos, dypos, esum, emx2, emy2, emxy, mx2, my2, mxy, flag``
        (unnormalised sums; ``flag`` is FLAGS bit 16 when the window is
        cut by the image edge).
    """
    height, width = sub.shape
    inv2sig2 = 1.0 / (2.0 * sig * sig)
    raper = WIN_NSIG * sig
    raper2 = raper * raper
    rint_lim = raper - 0.75
    rint_lim2 = rint_lim * rint_lim if rint_lim > 0.0 else 0.0
    rext_lim2 = (raper + 0.75) * (raper + 0.75)
    offset = 0.5 * (1.0 / WIN_OVERSAMP - 1.0)
    flag = 0
    xmin = int(mx - raper + 0.499999)
    xmax = int(mx + raper + 1.499999)
    ymin = int(my - raper + 0.499999)
    ymax = int(my + raper + 1.499999)
    if xmin < 0:
        xmin = 0
        flag |= FLAG_APERTURE
    if xmax > width:
        xmax = width
        flag |= FLAG_APERTURE
    if ymin < 0:
        ymin = 0
        flag |= FLAG_APERTURE
    if ymax > height:
        ymax = height
        flag |= FLAG_APERTURE
    tv = esum = emx2 = emy2 = emxy = mx2 = my2 = mxy = 0.0
    dxpos = dypos = 0.0
    mx2ph = mx * 2.0 + 0.49999
    my2ph = my * 2.0 + 0.49999
    # The Gaussian window is separable: one exp per column and per row.
    for xx in range(xmin, xmax):
        dx = xx - mx
        column_weight[xx - xmin] = math.exp(-dx * dx * inv2sig2)
    for yy in range(ymin, ymax):
        dy = yy - my
        row_weight = math.exp(-dy * dy * inv2sig2)
        _chord_halves(dy + offset, raper2, halves)
        for xx in range(xmin, xmax):
            dx = xx - mx
            r2 = dx * dx + dy * dy
            if r2 >= rext_lim2:
                continue
            if r2 > rint_lim2:
                locarea = _subpixel_fraction(dx + offset, halves)
            else:
                locarea = 1.0
            locarea *= column_weight[xx - xmin] * row_weight
            pix = sub[yy, xx]
            v = var[yy, xx]
            if _blocked(bad, seg, xx, yy, label):
                x2 = int(mx2ph - xx)
                y2 = int(my2ph - yy)
                if 0 <= x2 < width and 0 <= y2 < height and not _blocked(bad, seg, x2, y2, label):
                    pix = sub[y2, x2]
                    v = var[y2, x2]
                else:
                    pix = 0.0
                    v = 0.0
            locpix = locarea * pix
            tv += locpix
            dxpos += locpix * dx
            dypos += locpix * dy
            if not full:
                continue
            err = v
            if gain > 0.0 and pix > 0.0:
                if weight_gain:
                    err += pix / gain * v / backnoise2
                else:
                    err += pix / gain
            err2 = locarea * locarea * err
            esum += err2
            emx2 += err2 * (dx * dx + 0.0833)
            emy2 += err2 * (dy * dy + 0.0833)
            emxy += err2 * dx * dy
            mx2 += locpix * dx * dx
            my2 += locpix * dy * dy
            mxy += locpix * dx * dy
    return tv, dxpos, dypos, esum, emx2, emy2, emxy, mx2, my2, mxy, flag


@numba.njit(cache=True)
def windowed(sub, var, bad, seg, x, y, hl_radius, gain, backnoise2, weight_gain):
    """Windowed (Gaussian-weighted) position, flux, moments and their errors.

    The window is a circular Gaussian of sigma ``2 * hl_radius / 2.35``;
    the centre is iterated from the barycentre. Returns 0-based positions.
    The centroid iterations sum only the flux and first moments; the
    second moments and errors come from one full pass at the last
    iteration's centre, which gives exactly the values of summing
    everything at every iteration (as SExtractor does) at a fraction of
    the cost.

    Returns
    -------
    tuple of arrays
        ``xwin, ywin, flux, fluxerr, mx2, my2, mxy, emx2, emy2, emxy,
        win_flag, flags`` where ``win_flag`` holds FLAGS_WIN (1: singular
        moments, 2: negative moments, 4: non-positive flux) and ``flags``
        FLAGS bit 16 (window off the image).
    """
    n = x.size
    height, width = sub.shape
    out_x = np.zeros(n)
    out_y = np.zeros(n)
    out_flux = np.zeros(n)
    out_fluxerr = np.zeros(n)
    out_m = np.zeros((n, 3))
    out_e = np.zeros((n, 3))
    win_flag = np.zeros(n, np.int16)
    flags = np.zeros(n, np.int16)
    column_weight = np.empty(width + 1)
    halves = np.empty(WIN_OVERSAMP)
    for i in range(n):
        label = i + 1
        sig = hl_radius[i] * 2.0 / 2.35
        mx = x[i]
        my = y[i]
        tv = esum = emx2 = emy2 = emxy = mx2 = my2 = mxy = 0.0
        dxpos = dypos = 0.0
        flag = 0
        for iteration in range(WIN_NITERMAX):
            tv, dxpos, dypos, _, _, _, _, _, _, _, pass_flag = _window_sums(
                sub, var, bad, seg, label, mx, my, sig, gain, backnoise2, weight_gain, False,
                column_weight, halves)
            flag |= pass_flag
            step_x = dxpos / tv if tv > 0.0 else 0.0
            step_y = dypos / tv if tv > 0.0 else 0.0
            last = (tv <= 0.0 or step_x * step_x + step_y * step_y < WIN_STEPMIN * WIN_STEPMIN
                    or iteration == WIN_NITERMAX - 1)
            if last:
                # The same sums again, complete, at this centre.
                tv, dxpos, dypos, esum, emx2, emy2, emxy, mx2, my2, mxy, _ = _window_sums(
                    sub, var, bad, seg, label, mx, my, sig, gain, backnoise2, weight_gain, True,
                    column_weight, halves)
            if tv > 0.0:
                dxpos /= tv
                dypos /= tv
                mx += dxpos * WIN_FAC
                my += dypos * WIN_FAC
            if last:
                break
        out_x[i] = mx
        out_y[i] = my
        out_flux[i] = tv
        out_fluxerr[i] = math.sqrt(esum)
        flags[i] = flag
        if tv > 0.0:
            mx2 = mx2 / tv - dxpos * dxpos
            my2 = my2 / tv - dypos * dypos
            mxy = mxy / tv - dxpos * dypos
        else:
            mx2 = my2 = mxy = -1.0
        det = mx2 * my2 - mxy * mxy
        wf = 0
        if tv <= 0.0:
            wf |= 4
        if mx2 < 0.0 or my2 < 0.0:
            wf |= 2
        if det < 0.0:
            wf |= 1
        win_flag[i] = wf
        if wf == 0:
            norm = WIN_FAC * WIN_FAC / (tv * tv)
            emx2 *= norm
            emy2 *= norm
            emxy *= norm
            if det < 0.00694:
                # Fully correlated (point-like) profile: add the pixel variance.
                mx2 += 0.0833333
                my2 += 0.0833333
            out_m[i, 0] = mx2
            out_m[i, 1] = my2
            out_m[i, 2] = mxy
            out_e[i, 0] = emx2
            out_e[i, 1] = emy2
            out_e[i, 2] = emxy
        else:
            out_m[i, 0] = np.nan
    return (out_x, out_y, out_flux, out_fluxerr, out_m[:, 0], out_m[:, 1], out_m[:, 2],
            out_e[:, 0], out_e[:, 1], out_e[:, 2], win_flag, flags)


GROWTH_NSTEP = 64  # bins of the growth curve (SExtractor)
GROWTH_OVERSAMP = 5  # sub-sampling of pixels near a bin boundary
GROWTH_MINHLRAD = 0.5  # smallest half-light radius used by the windowed measurements
_GROWTH_NSTEP2 = GROWTH_NSTEP * GROWTH_NSTEP
_ISQRT = np.floor(np.sqrt(np.arange(_GROWTH_NSTEP2) + 0.5)).astype(np.int64)  # isqrt(m), m < NSTEP^2


@numba.njit(cache=True)
def flux_radius(sub, bad, x, y, a, fractions, flux_auto, min_radius):
    """FLUX_RADIUS and the half-light radius (:func:`_flux_radius`, compiled with ``fastmath``).

    The kernel itself has numba's default options, as the functions of an
    ahead-of-time build (:mod:`shapepipe_modules.io.aot`) have: the inner
    function keeps its ``fastmath`` there too.
    """
    return _flux_radius(sub, bad, x, y, a, fractions, flux_auto, min_radius)


@numba.njit(cache=True, fastmath=True)
def _flux_radius(sub, bad, x, y, a, fractions, flux_auto, min_radius):
    """FLUX_RADIUS and the half-light radius from each object's growth curve.

    SExtractor's definition: the flux is accumulated in ``GROWTH_NSTEP``
    circular bins out to ``rlim = KRON_NSIG * A`` (at least ``min_radius``),
    pixels within 0.75 pixel of a bin boundary split over a
    ``GROWTH_OVERSAMP`` grid; unusable pixels take the value of the pixel
    symmetric about the centre (else 0). The radius enclosing
    ``fraction * FLUX_AUTO`` is interpolated linearly in the cumulative
    curve and capped at ``rlim``.

    Returns
    -------
    radii : (n, len(fractions)) array
        FLUX_RADIUS.
    half_light : (n,) array
        Half-light radius, at least ``GROWTH_MINHLRAD`` (window size of
        the windowed measurements).
    """
    n = x.size
    nfrac = fractions.size
    height, width = sub.shape
    radii = np.zeros((n, nfrac))
    half_light = np.zeros(n)
    growth = np.empty(GROWTH_NSTEP)
    sub_scale = 1.0 / GROWTH_OVERSAMP
    sub_area = sub_scale * sub_scale
    sub_offset = 0.5 * (sub_scale - 1.0)
    for i in range(n):
        mx = x[i]
        my = y[i]
        rlim = KRON_NSIG * a[i]
        if rlim < min_radius:
            rlim = min_radius
        raper = rlim + 1.5
        rext2 = raper * raper
        stepdens = GROWTH_NSTEP / rlim
        step = 1.0 / stepdens
        sub_step = sub_scale * stepdens
        next_margin = step - 0.75
        growth[:] = 0.0
        xmin = max(int(mx - raper + 0.499999), 0)
        xmax = min(int(mx + raper + 1.499999), width)
        ymin = max(int(my - raper + 0.499999), 0)
        ymax = min(int(my + raper + 1.499999), height)
        for yy in range(ymin, ymax):
            dy = yy - my
            for xx in range(xmin, xmax):
                dx = xx - mx
                r2 = dx * dx + dy * dy
                if r2 >= rext2:
                    continue
                pix = sub[yy, xx]
                if bad[yy, xx]:
                    x2 = int(2.0 * mx + 0.49999 - xx)
                    y2 = int(2.0 * my + 0.49999 - yy)
                    if 0 <= x2 < width and 0 <= y2 < height and not bad[y2, x2]:
                        pix = sub[y2, x2]
                    else:
                        pix = 0.0
                r = math.sqrt(r2)
                d = r - step * math.floor(r * stepdens)
                if d < 0.75 or d > next_margin:
                    # Bin of a sub-pixel: floor(r * stepdens) = isqrt(floor(r^2 * stepdens^2)),
                    # a table look-up instead of a square root.
                    spix = sub_area * pix
                    sy = (dy + sub_offset) * stepdens
                    for _ in range(GROWTH_OVERSAMP):
                        sx = (dx + sub_offset) * stepdens
                        sy2 = sy * sy
                        for _ in range(GROWTH_OVERSAMP):
                            q = sx * sx + sy2
                            if q < _GROWTH_NSTEP2:
                                growth[_ISQRT[int(q)]] += spix
                            sx += sub_step
                        sy += sub_step
                else:
                    j = int(r * stepdens)
                    if j < GROWTH_NSTEP:
                        growth[j] += pix
        for j in range(1, GROWTH_NSTEP):
            growth[j] += growth[j - 1]
        for k in range(nfrac + 1):
            target = (fractions[k] if k < nfrac else 0.5) * flux_auto[i]
            j = 0
            while j < GROWTH_NSTEP - 1 and growth[j] < target:
                j += 1
            if j > 0:
                dg = growth[j] - growth[j - 1]
                radius = step * (j + (target - growth[j - 1]) / dg if dg != 0.0 else j)
            else:
                radius = step * target / growth[0] if growth[0] != 0.0 else 0.0
            if k < nfrac:
                radii[i, k] = min(radius, rlim)
            else:
                half_light[i] = max(min(abs(radius), rlim), GROWTH_MINHLRAD)
    return radii, half_light


@numba.njit(cache=True)
def isophotal_measures(seg, xmin, xmax, ymin, ymax, sub, var, has_var, flag_image, has_flags,
                       global_rms, thresh_absolute, analysis_thresh, satur, x, y, a, b, peak, bkg_at):
    """Reductions over each object's isophotal pixels (:func:`_isophotal_measures`).

    A call of the numba-compiled function: the ahead-of-time build
    (:mod:`shapepipe_modules.io.aot`) compiles only this call, the body is
    numba's JIT compilation (pycc's own typing rejects ``np.int64(value)``).
    """
    return _isophotal_measures(seg, xmin, xmax, ymin, ymax, sub, var, has_var, flag_image, has_flags,
                               global_rms, thresh_absolute, analysis_thresh, satur, x, y, a, b, peak, bkg_at)


@numba.njit(cache=True)
def _isophotal_measures(seg, xmin, xmax, ymin, ymax, sub, var, has_var, flag_image, has_flags,
                        global_rms, thresh_absolute, analysis_thresh, satur, x, y, a, b, peak, bkg_at):
    """Reductions over each object's isophotal pixels (label ``i + 1`` in ``seg``).

    Only each object's bounding box ``[xmin, xmax] x [ymin, ymax]``
    (inclusive, as sep gives it) is visited.

    Returns
    -------
    threshold : (n,) array
        THRESHOLD: ``analysis_thresh`` times the lowest noise over the
        isophote (or ``analysis_thresh`` itself when absolute).
    imaflags, nimaflags : (n,) int64 arrays
        IMAFLAGS_ISO (flag values OR-ed) and NIMAFLAGS_ISO (flagged pixels).
    fwhm : (n,) array
        FWHM_IMAGE: weighted fit of log(pixel) against r^2 over the isophotal
        pixels above ``max(peak / 5, threshold)`` and below saturation,
        assuming a Gaussian core (SExtractor's definition).
    """
    n = x.size
    threshold = np.empty(n)
    imaflags = np.zeros(n, np.int64)
    nimaflags = np.zeros(n, np.int64)
    fwhm = np.zeros(n)
    for i in range(n):
        label = i + 1
        lowest = np.inf
        found = False
        flags = 0
        nflags = 0
        for yy in range(ymin[i], ymax[i] + 1):
            for xx in range(xmin[i], xmax[i] + 1):
                if seg[yy, xx] != label:
                    continue
                found = True
                if has_var:
                    rms = math.sqrt(var[yy, xx])
                    if rms < lowest:
                        lowest = rms
                if has_flags:
                    value = np.int64(flag_image[yy, xx])
                    flags |= value
                    if value > 0:
                        nflags += 1
        if not has_var or not found:
            lowest = global_rms
        threshold[i] = analysis_thresh if thresh_absolute else analysis_thresh * lowest
        imaflags[i] = flags
        nimaflags[i] = nflags

        thresh0 = max(peak[i] / 5.0, threshold[i])
        if not thresh0 > 0.0:
            continue
        ceiling = satur - bkg_at[i]
        s = sx = sxx = sy = sxy = 0.0
        for yy in range(ymin[i], ymax[i] + 1):
            dy = yy - y[i]
            for xx in range(xmin[i], xmax[i] + 1):
                if seg[yy, xx] != label:
                    continue
                value = np.float64(sub[yy, xx])
                if value > thresh0 and value < ceiling:
                    dx = xx - x[i]
                    d2 = dx * dx + dy * dy
                    w2 = value * value
                    lpix = math.log(value)
                    s += w2
                    sx += d2 * w2
                    sxx += d2 * d2 * w2
                    sy += lpix * w2
                    sxy += lpix * d2 * w2
        det = s * sxx - sx * sx
        if det == 0.0:
            continue
        slope = -(s * sxy - sx * sy) / det
        slope = max(slope, 1.0 / (13.0 * a[i] * b[i]))
        width = 1.6651 / math.sqrt(slope)
        if width > 0.0:
            width -= 1.0 / (4.0 * width)
        if math.isfinite(width):
            fwhm[i] = width
    return threshold, imaflags, nimaflags, fwhm
