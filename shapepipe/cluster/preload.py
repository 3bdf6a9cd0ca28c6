"""Imported by the fork server of the SMP process pool (:mod:`.pool`), before it forks any worker.

It runs the ``preload`` entries of the run's modules (astropy, numba and
the modules' compiled kernels, ...) named in the environment variable
:data:`.pool.PRELOAD_VARIABLE`, once per ``shapepipe_run``: every worker
forked from the server inherits them, instead of each worker paying them
again (about a second of CPU per worker and stage).
"""

from __future__ import annotations

import os

from ..jobs import preload_for_children

PRELOADED = preload_for_children(
    [name.strip() for name in os.environ.get("SHAPEPIPE_FORKSERVER_PRELOAD", "").split(",") if name.strip()])
