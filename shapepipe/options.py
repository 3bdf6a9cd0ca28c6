"""Typed configuration options, declared once.

An :class:`Option` names a key, its type, its default and its help text.
The same declaration drives validation of ``.ini`` files, ``--describe``
and the generated config reference in ``docs/``.

Types
-----
``str``, ``int``, ``float``, ``bool``
    Scalars. Booleans accept true/false, yes/no, on/off, 1/0 (any case).
``list``, ``int_list``, ``float_list``, ``bool_list``
    Comma-separated values (may span several lines); empty items dropped.
``file``
    Path to an existing file (relative paths are taken from the working
    directory, as ShapePipe does).
``path``
    A path that need not exist yet (an output location).
``name``, ``name_list``
    A file-name part (prefix, suffix, pattern, log name): never a path. A
    separator, ``.``/``..`` or an absolute path is refused at validation,
    so no option can make a job or the runner write outside its folder.
``dir``
    Directory; accepts run references (``last:MODULE``, ``all:MODULE``,
    ``run:RUN_NAME:MODULE``) which the runner resolves before any job starts.
``dir_list``
    Comma-separated list of ``dir`` values.
``store``
    A file written by an earlier module (a header store, a PSF store): an
    existing file, or a folder or run reference (``last:merge_headers``, or
    a bare module name as ShapePipe writes it) holding the file named by the
    option's ``file_name``. The job receives the absolute file path.
``duration``
    ``HH:MM:SS``, ``MM:SS`` or a number of seconds; parsed to float seconds.
``choice``
    One of ``choices`` (compared case-insensitively, returned in the
    declared spelling).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import OptionError


class _Required:
    """Marker for options without a default."""

    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

OPTION_TYPES = (
    "str",
    "int",
    "float",
    "bool",
    "list",
    "int_list",
    "float_list",
    "bool_list",
    "file",
    "path",
    "name",
    "name_list",
    "dir",
    "dir_list",
    "store",
    "duration",
    "choice",
)

_TRUE = {"true", "yes", "on", "1", "t", "y"}
_FALSE = {"false", "no", "off", "0", "f", "n"}


def parse_bool(text: str) -> bool:
    """Parse a boolean written in any of the usual spellings."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise OptionError(f"expected a boolean (True/False), got {text!r}")


def split_list(text: str) -> list[str]:
    """Split a comma-separated (possibly multi-line) value into items."""
    return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]


def parse_duration(text: str) -> float:
    """Parse ``HH:MM:SS``, ``MM:SS`` or plain seconds into seconds."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d*)?", value):
        seconds = float(value)
    else:
        match = re.fullmatch(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)", value)
        if not match:
            raise OptionError(f"expected HH:MM:SS or a number of seconds, got {text!r}")
        hours = int(match.group(1) or 0)
        minutes = int(match.group(2))
        seconds_part = float(match.group(3))
        if minutes >= 60 or seconds_part >= 60:
            raise OptionError(f"minutes and seconds must be below 60 in {text!r}")
        seconds = hours * 3600 + minutes * 60 + seconds_part
    if seconds <= 0:
        raise OptionError(f"a duration must be positive, got {text!r}")
    return seconds


def check_name(text: str) -> str:
    """Return ``text`` if it is a plain file-name part, else raise :class:`OptionError`.

    A name has no path separator, is not ``.`` or ``..`` and holds no NUL:
    joined to a folder, it stays in that folder.
    """
    if "/" in text or "\\" in text or (os.sep != "/" and os.sep in text):
        raise OptionError(f"expected a name, not a path: {text!r} contains a path separator")
    if text in (".", ".."):
        raise OptionError(f"expected a name, not a path: {text!r}")
    if "\x00" in text:
        raise OptionError(f"expected a name: {text!r} contains a NUL character")
    return text


def _parse_scalar(kind: str, text: str):
    if kind in ("str", "file", "path", "dir", "store"):
        return text.strip()
    if kind == "name":
        return check_name(text.strip())
    if kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise OptionError(f"expected an integer, got {text!r}") from None
    if kind == "float":
        try:
            return float(text.strip())
        except ValueError:
            raise OptionError(f"expected a number, got {text!r}") from None
    if kind == "bool":
        return parse_bool(text)
    raise AssertionError(kind)


@dataclass(frozen=True)
class Option:
    """Declaration of one configuration key.

    Parameters
    ----------
    name : str
        Key as written in the ``.ini`` file (upper case by convention).
    type : str
        One of :data:`OPTION_TYPES`.
    default : object
        Value used when the key is absent; :data:`REQUIRED` if it must be set.
        Defaults are given already parsed (e.g. ``5`` for an ``int``).
    help : str
        One or two sentences for ``--describe`` and the docs.
    choices : tuple of str, optional
        Allowed values of a ``choice`` option.
    aliases : tuple of str, optional
        Other accepted key names (e.g. ShapePipe's spelling).
    file_name : str, optional
        For ``store`` options: the file looked up in a folder or reference.
    ignored : bool, optional
        A key of ShapePipe's configurations with no effect here: accepted,
        parsed, and named in a warning when set.
    """

    name: str
    type: str = "str"
    default: Any = REQUIRED
    help: str = ""
    choices: tuple = ()
    aliases: tuple = field(default_factory=tuple)
    file_name: str = ""
    ignored: bool = False

    def __post_init__(self):
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"option {self.name}: a choice option needs choices")
        if self.type == "store" and not self.file_name:
            raise ValueError(f"option {self.name}: a store option needs a file_name")

    @property
    def required(self) -> bool:
        """Whether the key must be set in the configuration."""
        return self.default is REQUIRED

    @property
    def is_directory(self) -> bool:
        """Whether the value may hold run references to resolve."""
        return self.type in ("dir", "dir_list", "store")

    def parse(self, text: str):
        """Parse the text of an ``.ini`` value into the declared type.

        Raises
        ------
        OptionError
            If the text does not fit the type; the message says what was expected.
        """
        kind = self.type
        if kind == "duration":
            return parse_duration(text)
        if kind == "choice":
            word = text.strip()
            for choice in self.choices:
                if word.lower() == str(choice).lower():
                    return choice
            raise OptionError(f"expected one of {', '.join(map(str, self.choices))}, got {text!r}")
        if kind in ("list", "dir_list"):
            return split_list(text)
        if kind.endswith("_list"):
            return [_parse_scalar(kind[:-5], item) for item in split_list(text)]
        value = _parse_scalar(kind, text)
        if kind in ("file", "path", "dir", "store") and not value:
            raise OptionError("expected a path, got an empty value")
        return value

    def describe(self) -> str:
        """One-paragraph description used by ``--describe``."""
        default = "required" if self.required else f"default: {self.default!r}"
        extra = f"; one of {', '.join(map(str, self.choices))}" if self.choices else ""
        alias = f"; also accepted as {', '.join(self.aliases)}" if self.aliases else ""
        return f"{self.name} ({self.type}{extra}; {default}{alias})\n    {self.help}"


def option_table(options: Iterable[Option]) -> dict[str, Option]:
    """Index options by every accepted name (upper case)."""
    table = {}
    for option in options:
        for name in (option.name, *option.aliases):
            table[name.upper()] = option
    return table
