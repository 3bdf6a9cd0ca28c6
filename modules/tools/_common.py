"""Shared helpers of the auxiliary scripts: errors, warnings, list files, exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

from shapepipe.errors import ShapePipeError


class ToolError(ShapePipeError, ValueError):
    """A script cannot do its work; the message names the file (and line)."""


def warn(program: str, message: str) -> None:
    """Print a warning on standard error."""
    print(f"{program}: warning: {message}", file=sys.stderr)


def read_lines(path) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines of a text file with their 1-based numbers.

    Raises
    ------
    ToolError
        If the file cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ToolError(f"cannot read {path}: {error}") from error
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if content:
            lines.append((number, content))
    return lines


def run(program: str, function, args) -> int:
    """Call ``function(args)`` and turn expected errors into a message and exit status 1."""
    from shapepipe_modules.io.arrays import StoreError
    from shapepipe_modules.io.tables import FitsTableError

    try:
        result = function(args)
    except (ToolError, FitsTableError, StoreError, OSError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 1
    return 0 if result is None else int(result)
