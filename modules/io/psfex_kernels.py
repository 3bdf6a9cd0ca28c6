"""Numba kernels of :mod:`.psfex_file` (Lanczos taps, PSF resampling), kept apart so that
:mod:`.psfex_file` loads them from their ahead-of-time build without importing numba
(:mod:`shapepipe_modules.io.aot`)."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def taps(offsets, grid_size, step, dc_terms, first, values):
    """:func:`_taps` (the exported kernel of the ahead-of-time build: a call, its body numba's JIT code)."""
    _taps(offsets, grid_size, step, dc_terms, first, values)


@numba.njit(cache=True)
def resample(basis, terms, first_x, values_x, first_y, values_y, out):
    """:func:`_resample` (the exported kernel of the ahead-of-time build)."""
    _resample(basis, terms, first_x, values_x, first_y, values_y, out)


@numba.njit(cache=True)
def _taps(offsets, grid_size, step, dc_terms, first, values):
    count, size = first.shape
    ntap = values.shape[2]
    order = ntap // 2
    # Tap x = h + k, with h the offset from the nearest integer (|h| <= 1/2) and k an integer, so
    # that sin(pi x) = (-1)**k sin(pi h) and sin(pi x / order) follows from the sine and cosine of
    # pi h / order and of pi k / order: three trigonometric calls per output pixel instead of
    # seventeen, each sine small only where its argument is (k = 0), hence accurate relatively.
    sin_k = np.empty(2 * order + 1)
    cos_k = np.empty(2 * order + 1)
    sign_k = np.empty(2 * order + 1)
    for k in range(-order, order + 1):
        sin_k[k + order] = math.sin(math.pi * k / order)
        cos_k[k + order] = math.cos(math.pi * k / order)
        sign_k[k + order] = 1.0 if k % 2 == 0 else -1.0
    for n in range(count):
        for c in range(size):
            coordinate = grid_size // 2 + (c - size // 2 - offsets[n]) / step
            base = math.floor(coordinate)
            start = int(base) - (order - 1)
            first[n, c] = start
            nearest = math.floor(coordinate + 0.5)
            h = coordinate - nearest
            # The flux-conserving correction depends on x only modulo 1; cos(2 pi j h) by the
            # Chebyshev recurrence from cos(2 pi h).
            cosine = math.cos(2.0 * math.pi * h)
            previous, current = 1.0, cosine
            correction = 1.0
            for j in range(1, 6):
                correction -= 2.0 * dc_terms[j] * (1.0 - current)
                previous, current = current, 2.0 * cosine * current - previous
            sin_h = math.sin(math.pi * h)
            angle = math.pi * h / order
            sin_a, cos_a = math.sin(angle), math.cos(angle)
            for t in range(ntap):
                index = start + t
                x = coordinate - index
                if index < 0 or index >= grid_size or abs(x) >= order:
                    values[n, c, t] = 0.0
                elif abs(x) < 1e-12:
                    values[n, c, t] = 1.0 / correction
                else:
                    k = int(nearest) - index + order
                    px = math.pi * x
                    sin_x = sign_k[k] * sin_h
                    sin_x_order = sin_a * cos_k[k] + cos_a * sin_k[k]
                    values[n, c, t] = sin_x * sin_x_order * order / (px * px) / correction


@numba.njit(cache=True, fastmath=False)
def _resample(basis, terms, first_x, values_x, first_y, values_y, out):
    # Every sum runs over the same terms in the same order as the plain triple loops (taps off the
    # grid skipped, the grid summed over components in order), so results are bitwise those of the
    # plain loops; the loops are only arranged so that the innermost one runs along contiguous
    # memory without a branch (vectorised by the compiler).
    ncomp, ny, nx = basis.shape
    count, size, _ = out.shape
    ntap = values_x.shape[2]
    grid = np.empty((ny, nx))
    rows = np.empty((ny, size))
    low = np.empty(size, dtype=np.int64)
    high = np.empty(size, dtype=np.int64)
    for n in range(count):
        # PSF on its grid at this position.
        for j in range(ny):
            for i in range(nx):
                grid[j, i] = 0.0
            for k in range(ncomp):
                term = terms[n, k]
                for i in range(nx):
                    grid[j, i] += term * basis[k, j, i]
        # Resample along x for every grid row (taps on the grid: low <= t < high).
        for c in range(size):
            start = first_x[n, c]
            low[c] = min(max(0, -start), ntap)
            high[c] = max(min(ntap, nx - start), low[c])
        for j in range(ny):
            for c in range(size):
                start = first_x[n, c]
                total = 0.0
                for t in range(low[c], high[c]):
                    total += values_x[n, c, t] * grid[j, start + t]
                rows[j, c] = total
        # Then along y, a whole output row at a time.
        for r in range(size):
            start = first_y[n, r]
            for c in range(size):
                out[n, r, c] = 0.0
            for t in range(ntap):
                index = start + t
                if 0 <= index < ny:
                    weight = values_y[n, r, t]
                    for c in range(size):
                        out[n, r, c] += weight * rows[index, c]
