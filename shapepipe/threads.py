"""One BLAS thread per pipeline process, unless the user chose otherwise.

numpy's OpenBLAS starts a thread per core when it is loaded, and those
threads spin for a while before sleeping, after loading and after every
threaded call: about 0.05 s of CPU per process on 2 cores (more on a
larger node), paid by every runner, worker and forked job although the
executors already run one job per core. The pipeline's jobs make small
BLAS calls (the PSF fit limits itself to one thread already), so a
single BLAS thread per process gives the same results and saves that CPU.
A variable already in the environment is kept (``OPENBLAS_NUM_THREADS=4
shapepipe_run ...`` for threaded BLAS).
"""

from __future__ import annotations

import os

#: The thread-count variables of the BLAS libraries numpy is built with (OpenBLAS wheels, MKL).
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_blas_by_default(environ=None) -> dict:
    """Set every BLAS thread-count variable that is not set to 1; return the ones set.

    Effective in this process only if numpy is not imported yet; the
    processes it starts (workers, fork servers, array tasks) inherit it.
    """
    environ = os.environ if environ is None else environ
    added = {name: "1" for name in BLAS_THREAD_VARIABLES if name not in environ}
    environ.update(added)
    return added
