"""Numba kernels of :mod:`.moments` (HSM's adaptive moments), kept apart so that
:mod:`.moments` loads them from their ahead-of-time build without importing numba
(:mod:`shapepipe_modules.io.aot`)."""

from __future__ import annotations

import math

import numba
import numpy as np

from .moments import (BOUND_CORRECT_WT, FLAG_DIVERGED, FLAG_MAX_ITER, FLAG_NAN, FLAG_NOT_POSITIVE,
                      MAX_AMOMENT, MAX_ASHIFT, MAX_MOMENT_NSIG2)


@numba.njit(cache=True)
def adaptive(images, guess_sigma, precision, max_iter, out, n_iter, flags):
    """:func:`_adaptive` (the exported kernel of the ahead-of-time build: a call, its body numba's JIT code)."""
    _adaptive(images, guess_sigma, precision, max_iter, out, n_iter, flags)


@numba.njit(cache=True)
def _weighted_sums(image, x0, y0, mxx, mxy, myy, nsig2, sums):
    """Weighted flux, first and second moments about (x0, y0); False if M is not positive."""
    det = mxx * myy - mxy * mxy
    for k in range(6):
        sums[k] = 0.0
    if det <= 0.0 or mxx <= 0.0 or myy <= 0.0:
        return False
    inv_xx = myy / det
    two_inv_xy = -2.0 * mxy / det
    inv_yy = mxx / det
    half_inv_a = 0.5 / inv_xx
    ny, nx = image.shape
    # Rows crossing the ellipse rho^2 = nsig2 (its y extent is sqrt(nsig2 Myy)).
    y_extent = math.sqrt(nsig2 * myy)
    iy1 = max(int(math.ceil(y0 - y_extent)), 0)
    iy2 = min(int(math.floor(y0 + y_extent)), ny - 1)
    # Second differences of -rho^2/2 along a row are constant: the weight of the
    # next pixel is the previous one times a ratio itself updated by a constant
    # factor, which replaces an exp per pixel by two products.
    step_factor = math.exp(-inv_xx)
    total = sx = sy = sxx = sxy = syy = 0.0
    for iy in range(iy1, iy2 + 1):
        dy = iy - y0
        b = two_inv_xy * dy
        c = inv_yy * dy * dy
        disc = b * b - 4.0 * inv_xx * (c - nsig2)
        if disc <= 0.0:
            continue
        root = math.sqrt(disc)
        ix1 = max(int(math.ceil(half_inv_a * (-b - root) + x0)), 0)
        ix2 = min(int(math.floor(half_inv_a * (-b + root) + x0)), nx - 1)
        if ix1 > ix2:
            continue
        dx = ix1 - x0
        weight = math.exp(-0.5 * (c + b * dx + inv_xx * dx * dx))
        ratio = math.exp(-0.5 * (b + inv_xx * (2.0 * dx + 1.0)))
        row_total = row_x = row_xx = 0.0
        for ix in range(ix1, ix2 + 1):
            value = weight * image[iy, ix]
            row_total += value
            row_x += value * dx
            row_xx += value * dx * dx
            weight *= ratio
            ratio *= step_factor
            dx += 1.0
        total += row_total
        sx += row_x
        sy += row_total * dy
        sxx += row_xx
        sxy += row_x * dy
        syy += row_total * dy * dy
    sums[0] = total
    sums[1] = sx
    sums[2] = sy
    sums[3] = sxx
    sums[4] = sxy
    sums[5] = syy
    return True

@numba.njit(cache=True)
def _adaptive(images, guess_sigma, precision, max_iter, out, n_iter, flags):
    count, ny, nx = images.shape
    sums = np.empty(6)
    for n in range(count):
        image = images[n]
        x0 = 0.5 * (nx - 1)
        y0 = 0.5 * (ny - 1)
        x_start = x0
        y_start = y0
        mxx = guess_sigma[n] * guess_sigma[n]
        myy = mxx
        mxy = 0.0
        amplitude = 0.0
        flag = 0
        shift_scale0 = 0.0
        iteration = 0
        converge = 1.0 + precision
        while converge > precision:
            if not _weighted_sums(image, x0, y0, mxx, mxy, myy, MAX_MOMENT_NSIG2, sums):
                flag = FLAG_NOT_POSITIVE
                break
            amplitude = sums[0]
            if not amplitude > 0.0:
                flag = FLAG_NOT_POSITIVE if amplitude == amplitude else FLAG_NAN
                break
            # Semi-minor axis of the weight: the scale of the steps.
            two_psi = math.atan2(2.0 * mxy, mxx - myy)
            semi_a2 = 0.5 * ((mxx + myy) + (mxx - myy) * math.cos(two_psi)) + mxy * math.sin(two_psi)
            semi_b2 = mxx + myy - semi_a2
            if semi_b2 <= 0.0:
                flag = FLAG_NOT_POSITIVE
                break
            shift_scale = math.sqrt(semi_b2)
            if iteration == 0:
                shift_scale0 = shift_scale
            dx = 2.0 * sums[1] / (amplitude * shift_scale)
            dy = 2.0 * sums[2] / (amplitude * shift_scale)
            dxx = 4.0 * (sums[3] / amplitude - 0.5 * mxx) / semi_b2
            dxy = 4.0 * (sums[4] / amplitude - 0.5 * mxy) / semi_b2
            dyy = 4.0 * (sums[5] / amplitude - 0.5 * myy) / semi_b2
            dx = min(max(dx, -BOUND_CORRECT_WT), BOUND_CORRECT_WT)
            dy = min(max(dy, -BOUND_CORRECT_WT), BOUND_CORRECT_WT)
            dxx = min(max(dxx, -BOUND_CORRECT_WT), BOUND_CORRECT_WT)
            dxy = min(max(dxy, -BOUND_CORRECT_WT), BOUND_CORRECT_WT)
            dyy = min(max(dyy, -BOUND_CORRECT_WT), BOUND_CORRECT_WT)
            converge = max(abs(dx), abs(dy))
            converge *= converge
            converge = max(converge, abs(dxx), abs(dxy), abs(dyy))
            x0 += dx * shift_scale
            y0 += dy * shift_scale
            mxx += dxx * semi_b2
            mxy += dxy * semi_b2
            myy += dyy * semi_b2
            if (abs(mxx) > MAX_AMOMENT or abs(mxy) > MAX_AMOMENT or abs(myy) > MAX_AMOMENT
                    or abs(x0 - x_start) > MAX_ASHIFT * shift_scale0
                    or abs(y0 - y_start) > MAX_ASHIFT * shift_scale0):
                flag = FLAG_DIVERGED
                break
            iteration += 1
            if iteration > max_iter:
                flag = FLAG_MAX_ITER
                break
            if not (converge == converge and mxx == mxx and myy == myy and mxy == mxy
                    and x0 == x0 and y0 == y0):
                flag = FLAG_NAN
                break
        n_iter[n] = iteration
        flags[n] = flag
        if flag != 0:
            for k in range(out.shape[1]):
                out[n, k] = np.nan
            continue
        trace = mxx + myy
        e1 = (mxx - myy) / trace
        e2 = 2.0 * mxy / trace
        shear = 1.0 / (1.0 + math.sqrt(max(1.0 - e1 * e1 - e2 * e2, 0.0)))
        out[n, 0] = (mxx * myy - mxy * mxy) ** 0.25
        out[n, 1] = e1
        out[n, 2] = e2
        out[n, 3] = e1 * shear
        out[n, 4] = e2 * shear
        out[n, 5] = x0
        out[n, 6] = y0
        out[n, 7] = amplitude
