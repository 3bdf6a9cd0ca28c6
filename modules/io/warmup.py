"""One-off start-up work that forked jobs should inherit rather than repeat.

Modules list these in their ``preload`` declaration: a worker runs them once
before it forks jobs (see :mod:`shapepipe.jobs`).
"""

from __future__ import annotations


def numba() -> None:
    """Start numba's compiler machinery (LLVM, type system), about 0.5 s of CPU per process."""
    import numba as _numba
    import numpy as np

    @_numba.njit(cache=False)
    def _add_one(values):
        return values + 1.0

    _add_one(np.zeros(1))


def matplotlib_agg() -> None:
    """Select the non-interactive backend and import pyplot (about 0.3 s per process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
