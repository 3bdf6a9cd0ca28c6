"""Algorithm of the Python example: join the contents of two text files."""

from __future__ import annotations

import time
from pathlib import Path


def read_content(path: str | Path) -> str:
    """Content of a text file with its line breaks removed."""
    return Path(path).read_text().replace("\n", "")


def combine(first: str | Path, second: str | Path, sleep: float = 0.0) -> str:
    """``'<content of first> and <content of second>'``.

    Parameters
    ----------
    first, second : path
        Text files to read.
    sleep : float
        Seconds to wait first (to try time-outs and progress display).
    """
    if sleep > 0:
        time.sleep(sleep)
    return f"{read_content(first)} and {read_content(second)}"


def write_output(path: str | Path, message: str, content: str) -> None:
    """Write the message followed by the content (no trailing newline, as ShapePipe)."""
    Path(path).write_text(message + content)
