"""Algorithm of the serial example: concatenate many text files."""

from __future__ import annotations

from pathlib import Path


def concatenate(groups) -> str:
    """Contents of every file, line breaks removed, group after group.

    Parameters
    ----------
    groups : iterable of iterable of path
        Files grouped by file number (in number order).
    """
    return "".join(Path(path).read_text().replace("\n", "") for group in groups for path in group)
