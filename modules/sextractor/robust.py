"""Exact medians of large arrays, fast.

``numpy.median`` partitions a copy of the whole array (about 0.2 s for the
9.4 million pixels of a CCD). :func:`median` finds, from a strided
subsample, a narrow value window that holds the middle order statistics,
checks that it does by counting, and partitions only the values inside:
the result is the exact median, in a few vectorised passes.
"""

from __future__ import annotations

import numpy as np

_SMALL = 200_000  # below this size numpy.median is as fast
_SAMPLE = 50_000  # subsample size used to place the window
_WINDOW = 0.025  # half-width of the window in quantile (about 5.6 sigma of the subsample quantile)


def median(values, where=None) -> float:
    """Median of an array (mean of the two middle values for an even count).

    Parameters
    ----------
    values : array-like
        Values (finite where used); not modified.
    where : bool array of the same shape, optional
        Use only these elements (saves copying them out first).

    Returns
    -------
    float
        Exactly ``numpy.median(values[where])`` up to the rounding of the
        final mean (taken in float64).
    """
    values = np.asarray(values)
    if where is not None:
        where = np.asarray(where, dtype=bool)
        if where.shape != values.shape:
            raise ValueError(f"where has shape {where.shape}, values {values.shape}")
        size = int(np.count_nonzero(where))
    else:
        size = values.size
    if size == 0:
        raise ValueError("median of an empty selection")
    if size < _SMALL:
        return float(np.median(values if where is None else values[where]))
    flat = values.ravel()
    used = None if where is None else where.ravel()
    low_rank, high_rank = (size - 1) // 2, size // 2
    stride = max(flat.size // _SAMPLE, 1)
    sample = flat[::stride] if used is None else flat[::stride][used[::stride]]
    if sample.size < 100:
        return float(np.median(values if where is None else values[where]))
    low, high = np.quantile(sample, [0.5 - _WINDOW, 0.5 + _WINDOW])
    below_mask = flat < low
    window = (flat >= low) & (flat <= high)
    if used is not None:
        below_mask &= used
        window &= used
    below = int(np.count_nonzero(below_mask))
    del below_mask
    inside = flat[window]
    if not below <= low_rank or below + inside.size <= high_rank:
        # The window missed the middle (a pathological sample): partition all.
        return float(np.median(values if where is None else values[where]))
    ranks = (low_rank - below, high_rank - below)
    inside.partition(ranks)
    return 0.5 * (float(inside[ranks[0]]) + float(inside[ranks[1]]))
