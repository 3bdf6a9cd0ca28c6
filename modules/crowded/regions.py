"""ds9 region files of catalogues and mask planes (docs/crowded.md).

Catalogue objects are ellipses in image coordinates (FITS pixels; the
ellipse of :func:`.masks.object_ellipses`, angle in degrees counter-clockwise
from the x axis as in ds9), labelled with their NUMBER and coloured by a
column: by value for an integer class (e.g. PASS, BKG_METHOD), or red when
a flag column is non-zero. A selection in the SETools language (the cuts of
a ``[MASK:...]`` section, AND-ed) chooses the objects. A boolean mask plane
becomes boxes: the runs of masked pixels of each row, merged with the
identical runs of the rows above, so the boxes cover exactly the plane.
"""

from __future__ import annotations

import numpy as np

HEADER = "# Region file format: DS9 version 4.1\nglobal color=green font=\"helvetica 9 normal roman\"\nimage\n"
#: Colours of integer classes 0, 1, 2 ... (cycled).
CLASS_COLOURS = ("white", "red", "green", "cyan", "magenta", "yellow", "blue", "orange")


def select_rows(table, selection) -> np.ndarray:
    """Boolean rows of ``table`` passing every SETools comparison in ``selection`` (none: all rows).

    Raises
    ------
    shapepipe_modules.setools.language.SetoolsError
        A bad expression or an unknown column (named).
    """
    from shapepipe_modules.setools.language import SetoolsError, evaluate

    keep = np.ones(len(table), bool)
    columns = {name: np.asarray(table[name]) for name in table.colnames if np.asarray(table[name]).ndim == 1}
    for line in selection or ():
        if not line.strip():
            continue
        value = evaluate(line, columns)
        if np.ndim(value) != 1 or np.asarray(value).dtype.kind != "b":
            raise SetoolsError(f"selection {line!r} is not a comparison of columns")
        keep &= value
    return keep


def colours(table, color_by=None, mode="class"):
    """Colour name of every row: by integer class (``mode='class'``) or flag (``'flag'``: red if non-zero)."""
    if not color_by:
        return np.full(len(table), "green", dtype=object)
    values = np.asarray(table[color_by]).astype(np.int64)
    if mode == "flag":
        return np.where(values != 0, "red", "green").astype(object)
    return np.array([CLASS_COLOURS[v % len(CLASS_COLOURS)] for v in values], dtype=object)


def catalogue_regions(table, selection=None, color_by=None, color_mode="class", scale=1.0, offset=0.0,
                      label="NUMBER") -> str:
    """ds9 region text of the selected catalogue objects (ellipses)."""
    from .masks import object_ellipses

    keep = select_rows(table, selection)
    x, y, a, b, theta = object_ellipses(table, scale, offset)
    colour = colours(table, color_by, color_mode)
    labels = np.asarray(table[label]) if label in table.colnames else np.arange(1, len(table) + 1)
    lines = [HEADER.rstrip("\n")]
    for i in np.flatnonzero(keep):
        lines.append(f"ellipse({x[i]:.3f},{y[i]:.3f},{a[i]:.3f},{b[i]:.3f},{np.degrees(theta[i]):.3f}) "
                     f"# color={colour[i]} text={{{labels[i]}}}")
    return "\n".join(lines) + "\n"


def plane_boxes(plane):
    """Rectangles ``(x0, y0, x1, y1)`` (0-based, inclusive) covering exactly the True pixels of ``plane``."""
    plane = np.asarray(plane, bool)
    open_boxes = {}  # (c0, c1) -> row where the run started
    boxes = []
    padded = np.zeros((plane.shape[0] + 1, plane.shape[1] + 2), bool)
    padded[:-1, 1:-1] = plane
    for r in range(padded.shape[0]):
        edges = np.flatnonzero(np.diff(padded[r].astype(np.int8)))
        runs = set(zip(edges[0::2], edges[1::2]))  # [c0, c1) in image columns
        for run in list(open_boxes):
            if run not in runs:
                boxes.append((run[0], open_boxes.pop(run), run[1] - 1, r - 1))
        for run in runs:
            open_boxes.setdefault(run, r)
    return boxes


def plane_regions(plane, colour="red", text=None) -> str:
    """ds9 region text of a boolean mask plane (boxes in FITS pixels)."""
    lines = [HEADER.rstrip("\n")]
    tag = f" text={{{text}}}" if text else ""
    for x0, y0, x1, y1 in plane_boxes(plane):
        width, height = x1 - x0 + 1, y1 - y0 + 1
        # FITS centre of pixels x0..x1 (0-based) is (x0 + x1) / 2 + 1.
        lines.append(f"box({(x0 + x1) / 2 + 1:.1f},{(y0 + y1) / 2 + 1:.1f},{width},{height},0) # color={colour}{tag}")
    return "\n".join(lines) + "\n"


def saturated_star_regions(regions, colour="yellow") -> str:
    """ds9 region text of saturated-star regions (:func:`.masks.saturated_regions`): a box and a circle each."""
    lines = [HEADER.rstrip("\n")]
    for region in regions:
        x0, y0, x1, y1 = region.box
        lines.append(f"box({(x0 + x1) / 2:.2f},{(y0 + y1) / 2:.2f},{x1 - x0 + 1:.2f},{y1 - y0 + 1:.2f},0) "
                     f"# color={colour} text={{{region.number}}}")
        lines.append(f"circle({region.x:.2f},{region.y:.2f},{region.radius:.2f}) # color={colour}")
    return "\n".join(lines) + "\n"


def write_regions(path, text) -> None:
    """Write region text atomically."""
    from shapepipe.atomic import write_text_atomic

    write_text_atomic(path, text)
