"""One-off start-up work that forked jobs should inherit rather than repeat.

Modules list these in their ``preload`` declaration: a worker runs them once
before it forks jobs (see :mod:`shapepipe.jobs`).
"""

from __future__ import annotations


def _add_one(values):
    return values + 1.0


def numba() -> None:
    """Start numba's code generator (LLVM, type system) for the compiled kernels jobs load.

    The tiny function comes from numba's on-disk cache (next to this file, or
    the user's cache folder or ``NUMBA_CACHE_DIR`` when the package folder is
    read-only): 0.35 s of CPU per process instead of 0.62 s to compile it.
    """
    import numba as _numba
    import numpy as np

    # Defined at module level: numba caches only functions it can find again by name.
    _numba.njit(cache=True)(_add_one)(np.zeros(1))


def matplotlib_agg() -> None:
    """Select the non-interactive backend and import pyplot (about 0.3 s per process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
