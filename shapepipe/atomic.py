"""Atomic file writing: a file appears under its final name only when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file lives in the same directory (so the rename is atomic)
    and keeps the final extension (so libraries that look at it, such as
    astropy for ``.fits.fz``, behave the same). On an exception the temporary
    file is removed and ``path`` is left untouched.

    Parameters
    ----------
    path : path-like
        Final file name.
    suffix : str, optional
        Extension given to the temporary file; defaults to everything after
        the first dot of the final name.

    Examples
    --------
    >>> with atomic_path("cat.fits") as tmp:
    ...     table.write(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        name = path.name
        suffix = name[name.index("."):] if "." in name else ""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(handle)
    os.unlink(temporary)  # writers such as astropy refuse to overwrite
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
