"""File numbering templates and input-file discovery.

A numbering scheme says what the *number* part of a file name looks like.
Input files are named ``<pattern><number><ext>``, for example
``image-2113737-10.fits`` has pattern ``image``, number ``-2113737-10`` and
extension ``.fits``.

Templates follow ShapePipe:

- every run of letters or digits stands for digits; a run of ``n > 1``
  characters is exactly ``n`` digits, a single character is one or more
  digits (``-0000000-0`` matches ``-2113737-10``);
- every other character stands for itself (``_``, ``-``, ``.``);
- ``RE:<regex>`` gives the regular expression directly;
- the empty template means "no number" (files named ``<pattern><ext>``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


def scheme_regex(template: str) -> str:
    """Regular expression (unanchored text) of a numbering template.

    Examples
    --------
    >>> scheme_regex("-0000000-0")
    '\\\\-\\\\d{7}\\\\-\\\\d+'
    """
    if template.startswith("RE:"):
        return template[3:]
    parts = []
    for run in re.findall(r"[A-Za-z0-9]+|[^A-Za-z0-9]", template):
        if run[0].isalnum():
            parts.append(r"\d+" if len(run) == 1 else rf"\d{{{len(run)}}}")
        else:
            parts.append(re.escape(run))
    return "".join(parts)


def compile_scheme(template: str) -> re.Pattern:
    """Compiled full-match regex of a template; ConfigError text on a bad RE."""
    try:
        return re.compile(f"(?:{scheme_regex(template)})")
    except re.error as error:
        raise ValueError(f"invalid regular expression in numbering scheme {template!r}: {error}") from None


def number_matches(template: str, number: str) -> bool:
    """Whether a number string fits a numbering template exactly."""
    return compile_scheme(template).fullmatch(number) is not None


@dataclass
class Discovery:
    """Input files of one module run, grouped by number.

    Attributes
    ----------
    complete : dict
        ``{number: [path per pattern]}`` for numbers found for every pattern,
        in number order.
    missing : dict
        ``{number: [pattern, ...]}``: numbers lacking some input types.
    patterns : list of str
        The ``pattern*ext`` labels, in order.
    duplicates : list of str
        One message per number with two files for one pattern.
    """

    complete: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    patterns: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)


def _sort_key(number: str):
    # Natural order: _2 before _10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", number)]


def sort_numbers(numbers) -> list:
    """Numbers in natural order (``_2`` before ``_10``)."""
    return sorted(numbers, key=_sort_key)


def list_files(directory: Path, exclude: tuple = ()) -> list[str]:
    """Relative paths (POSIX) of every file below ``directory``.

    Hidden folders (``.staging`` of running jobs) and the ``exclude``
    folders are skipped.
    """
    directory = Path(directory)
    excluded = {os.path.realpath(e) for e in exclude}
    found = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in excluded
        )
        rel_root = os.path.relpath(root, directory)
        for name in files:
            if name.startswith("."):
                continue
            found.append(name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/"))
    return found


def discover(
    directories,
    patterns,
    extensions,
    template: str,
    correct_pattern: bool = True,
    exclude: tuple = (),
    listings: dict | None = None,
) -> Discovery:
    """Find input files per (pattern, extension) across directories.

    A file matches when its name is ``<pattern><number><ext>`` with the
    number fitting ``template``. Files in sub-folders are found too (a
    module may write ``mask/star_selection-1.fits``). When no file matches a
    pattern exactly and ``correct_pattern`` is true, names that merely
    contain the pattern before the number are accepted (ShapePipe's
    ``CORRECT_FILE_PATTERN``).

    Parameters
    ----------
    directories : list of path
        Searched together (a union).
    patterns, extensions : list of str
        Pairwise; extensions include their leading dot.
    template : str
        Numbering template.
    correct_pattern : bool
        Accept names containing the pattern when none match exactly.
    exclude : tuple of path
        Folders never searched (the run's output folder).
    listings : dict, optional
        Cache ``{directory: [relative paths]}`` shared between calls.

    Returns
    -------
    Discovery
    """
    number_re = scheme_regex(template)
    splitter = re.compile(f"^(?P<prefix>.*?)(?P<number>{number_re})$" if number_re else "^(?P<prefix>.*)(?P<number>)$")
    listings = {} if listings is None else listings
    per_pattern = []
    for pattern, ext in zip(patterns, extensions):
        exact: dict[str, list[str]] = {}
        loose: dict[str, list[str]] = {}
        for directory in directories:
            key = str(directory)
            if key not in listings:
                listings[key] = list_files(Path(directory), exclude)
            for rel in listings[key]:
                name = rel.rsplit("/", 1)[-1]
                if ext and not name.endswith(ext):
                    continue
                stem = name[: len(name) - len(ext)] if ext else name
                match = splitter.match(stem)
                if not match:
                    continue
                prefix, number = match.group("prefix"), match.group("number")
                full_prefix = rel[: len(rel) - len(name)] + prefix
                path = str(Path(directory) / rel)
                if prefix == pattern or full_prefix == pattern:
                    exact.setdefault(number, []).append(path)
                elif correct_pattern and pattern in full_prefix:
                    loose.setdefault(number, []).append(path)
        per_pattern.append(exact if exact else loose)

    result = Discovery(patterns=[f"{p}*{e}" for p, e in zip(patterns, extensions)])
    all_numbers = set()
    for label, found in zip(result.patterns, per_pattern):
        for number, paths in found.items():
            if len(paths) > 1:
                shown = " and ".join(sorted(paths)[:2])
                result.duplicates.append(
                    f"two files have number {number!r} for {label}: {shown}"
                )
        all_numbers.update(found)
    for number in sort_numbers(all_numbers):
        lacking = [label for label, found in zip(result.patterns, per_pattern) if number not in found]
        if lacking:
            result.missing[number] = lacking
        else:
            result.complete[number] = [sorted(found[number])[0] for found in per_pattern]
    return result


def read_number_list(values: list[str], template: str, where: str) -> list[str]:
    """Numbers of a ``NUMBER_LIST`` value: inline numbers or one file of them.

    Raises
    ------
    ConfigError
        If the file is missing or a number does not fit the template.
    """
    numbers = list(values)
    if len(values) == 1 and os.path.isfile(values[0]):
        lines = Path(values[0]).read_text().splitlines()
        numbers = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        where = f"{where} (file {values[0]})"
    elif len(values) == 1 and not number_matches(template, values[0]) and (
        "/" in values[0] or values[0].endswith(".txt")
    ):
        raise ConfigError(f"{where}: number list file {values[0]} not found")
    bad = [n for n in numbers if not number_matches(template, n)]
    if bad:
        raise ConfigError(
            f"{where}: {len(bad)} number(s) do not fit the numbering scheme {template!r}: "
            + ", ".join(bad[:5])
        )
    return numbers
