"""Read a tile's HISTORY cards and list the exposures stacked into it.

A CFIS tile header holds one card per input exposure, such as::

    HISTORY input image 2113737p.fits 40 extension(s)

The exposure name is the file name up to its first dot (``2113737p``),
optionally with a prefix removed; ``get_images`` takes the list as input
(``exp_numbers-244-252.txt``, one name per line).
"""

from __future__ import annotations

import re
from pathlib import Path

from shapepipe.atomic import write_text_atomic
from shapepipe.errors import JobError

OUTPUT_PREFIX = "exp_numbers"

# 'input image <file> ...', with any spacing.
_INPUT_IMAGE = re.compile(r"^\s*input\s+image\s+(?P<file>\S+)", re.IGNORECASE)


def exposure_name(file_name: str, prefix: str = "") -> str:
    """Exposure name of an input file name: ``2113737p.fits`` -> ``2113737p``.

    Raises
    ------
    ValueError
        If the name has no extension.
    """
    base = file_name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        raise ValueError(f"{file_name!r} is not a file name with an extension")
    name = base.split(".", 1)[0]
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    return name


def exposures_from_history(cards, colnum: int | None = None, prefix: str = "") -> list[str]:
    """Exposure names from HISTORY card texts, unique, in order of first appearance.

    Parameters
    ----------
    cards : iterable of str
        HISTORY card values.
    colnum : int or None
        Cards reading ``input image <file>`` always give ``<file>`` (the
        position of the word varies with leading spaces, so ShapePipe's
        column number is not needed for them). Other cards are ignored when
        ``colnum`` is None, else ShapePipe's rule applies: the word at that
        index of the card split on single spaces must be a file name.
    prefix : str
        Removed from the start of each name (ShapePipe's ``EXP_PREFIX``).

    Raises
    ------
    ValueError
        If a card does not hold a file name where expected (``colnum`` set).
    """
    names = []
    for text in cards:
        text = str(text)
        match = _INPUT_IMAGE.match(text)
        if match:
            names.append(exposure_name(match.group("file"), prefix))
            continue
        if colnum is None:
            continue
        words = text.split(" ")
        if colnum >= len(words):
            raise ValueError(f"HISTORY card {text!r} has no word {colnum} (COLNUM)")
        try:
            names.append(exposure_name(words[colnum], prefix))
        except ValueError:
            raise ValueError(
                f"word {colnum} (COLNUM) of HISTORY card {text!r} is {words[colnum]!r}, not a file name"
            ) from None
    return list(dict.fromkeys(names))


def find_exposures(tile_path, colnum: int | None = None, prefix: str = "") -> list[str]:
    """Exposures stacked into a tile, from the HISTORY cards of its primary header.

    Raises
    ------
    JobError
        Naming the tile, if it cannot be read or names no exposure.
    """
    from shapepipe_modules.split_exp.fits_input import StrictFits

    with StrictFits(tile_path) as tile:
        header = tile.header(0)
        cards = list(header["HISTORY"]) if "HISTORY" in header else []
    if not cards:
        raise JobError(f"tile {tile_path} has no HISTORY cards: cannot tell which exposures it holds")
    try:
        names = exposures_from_history(cards, colnum, prefix)
    except ValueError as error:
        raise JobError(f"tile {tile_path}: {error}") from None
    if not names:
        raise JobError(
            f"tile {tile_path}: none of its {len(cards)} HISTORY cards reads 'input image <file>'"
        )
    return names


def output_file_name(number: str) -> str:
    """``exp_numbers<number>.txt``, e.g. ``exp_numbers-244-252.txt``."""
    return f"{OUTPUT_PREFIX}{number}.txt"


def write_exposure_list(path, names) -> Path:
    """Write one exposure name per line, atomically."""
    write_text_atomic(path, "".join(f"{name}\n" for name in names))
    return Path(path)
