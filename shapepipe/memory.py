"""Peak memory of a job: real (anonymous) memory of its process tree, sampled.

``ru_maxrss`` counts every resident page, including the pages of files a job
reads through ``mmap`` (a memory-mapped 400 MB tile counts 400 MB although
the kernel can drop those pages at any time, and a batch system's memory
limit does not charge them as the job's own). What a worker needs from its
node is its *anonymous* memory (heap, numpy arrays) plus shared memory:
``RssAnon + RssShmem`` in ``/proc/PID/status`` (Linux). No counter keeps the
peak of those, so a thread samples them every :data:`INTERVAL` seconds for
the job's process and all its descendants (external programs included) and
keeps the largest sum. The interval starts at :data:`INTERVAL` and grows by
:data:`GROWTH` per sample to :data:`MAX_INTERVAL` (reached after about 0.7 s):
a sample costs about 0.1 ms of CPU, and at a fixed 20 ms a long job's
sampler took 6 ms of CPU per second of wall time (seconds of CPU per stage
on a loaded machine). Allocations shorter than the interval can be missed;
a large array takes longer than that to fill.

Elsewhere (no ``/proc``) the sampler reports nothing and callers fall back to
``ru_maxrss``.
"""

from __future__ import annotations

import os
import threading

#: Seconds between the first two samples.
INTERVAL = 0.02
#: Longest interval between two samples (s).
MAX_INTERVAL = 0.1
#: Factor by which the interval grows after every sample.
GROWTH = 1.1
_PROC = "/proc"


def _status_kb(pid: int, keys=(b"RssAnon:", b"RssShmem:")) -> int:
    """Sum of the given ``/proc/PID/status`` fields (kB); 0 if the process is gone."""
    try:
        with open(f"{_PROC}/{pid}/status", "rb") as handle:
            text = handle.read()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(keys):
            total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (``/proc/PID/task/TID/children``)."""
    found = []
    try:
        tasks = os.listdir(f"{_PROC}/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"{_PROC}/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return found


def tree_real_kb(pid: int) -> int:
    """Anonymous plus shared resident memory (kB) of ``pid`` and its descendants."""
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _status_kb(current)
        stack.extend(_children(current))
    return total


def available() -> bool:
    """Whether real memory can be sampled here (Linux ``/proc`` with ``RssAnon``)."""
    return _status_kb(os.getpid()) > 0


class PeakSampler:
    """Sample the real memory of a process tree in a thread; :meth:`stop` returns the peak in MB.

    Parameters
    ----------
    pid : int, optional
        Root of the tree (default: this process).
    interval : float, optional
        Seconds between the first samples; it grows by :data:`GROWTH` per
        sample up to ``max(interval, MAX_INTERVAL)``.

    Examples
    --------
    >>> sampler = PeakSampler().start()
    >>> peak_mb = sampler.stop()
    """

    def __init__(self, pid: int | None = None, interval: float = INTERVAL):
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = None

    def sample(self) -> int:
        """Take one sample now; return it (kB)."""
        value = tree_real_kb(self.pid)
        self.peak_kb = max(self.peak_kb, value)
        return value

    def _loop(self):
        interval, longest = self.interval, max(self.interval, MAX_INTERVAL)
        while not self._stop.wait(interval):
            self.sample()
            interval = min(interval * GROWTH, longest)

    def start(self) -> "PeakSampler":
        if available():
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="shapepipe-memory", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> float | None:
        """Stop sampling; the peak in MB, or None where sampling is unavailable."""
        if self._thread is None:
            return None
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` (peak resident size, file pages included) to its current RSS.

    Linux >= 4.0 (``/proc/self/clear_refs``, value 5); False where unsupported.
    """
    try:
        with open(f"{_PROC}/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """This process's ``VmHWM`` in MB (every resident page), None where unknown."""
    try:
        with open(f"{_PROC}/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None
