"""Algorithm of the execute example: the command line it runs."""

from __future__ import annotations


def head_command(path, lines: int = 10) -> list[str]:
    """Arguments of ``head`` printing the first lines of a file."""
    return ["head", "-n", str(lines), str(path)]
