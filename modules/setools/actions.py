"""What the sections of a ``.setools`` file compute: masks, statistics,
random splits and new catalogues.

Plain numpy on a mapping of columns; reading and writing catalogues is the
runner's business (see :mod:`shapepipe_modules.setools.runner`).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .config import (
    Expression,
    LabelText,
    MaskSection,
    NewCatSection,
    RandSplitSection,
    SetoolsConfig,
    StatSection,
)
from .language import Evaluator, SetoolsError, format_number


def _located(error: SetoolsError, config_path: str, expression: Expression) -> SetoolsError:
    return error.located(config_path, expression.line)


def compute_mask(section: MaskSection, columns: Mapping, masks: Mapping, n_rows: int,
                 config_path: str = "") -> np.ndarray:
    """Boolean selection of one MASK section.

    The ``{mask}`` lines restrict the rows; each cut is evaluated over those
    rows (bare columns) and the cuts are AND-ed. A cut whose value is a
    single boolean (``len(X{m}) > 10``) applies to every row.

    Raises
    ------
    SetoolsError
        If a cut fails or does not give one boolean per row in scope.
    """
    rows = np.ones(n_rows, dtype=bool)
    for name, line in section.parents:
        if name not in masks:
            raise SetoolsError(f"mask {name!r} is not defined", config_path, line)
        rows &= masks[name]
    evaluator = Evaluator(columns, masks, rows=rows)
    n_scope = int(rows.sum())
    selected = np.ones(n_scope, dtype=bool)
    for cut in section.cuts:
        try:
            value = np.asarray(evaluator(cut.node))
        except SetoolsError as error:
            raise _located(error, config_path, cut) from None
        if value.ndim == 0:
            value = np.full(n_scope, bool(value))
        if value.shape != (n_scope,):
            raise SetoolsError(
                f"[MASK:{section.name}] {cut.text!r} gives {value.shape} values, not one per row "
                f"({n_scope}); a vector column needs a reduction, and COL{{mask}} must be reduced "
                "with a function such as mode()",
                config_path,
                cut.line,
            )
        selected &= value.astype(bool)
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.flatnonzero(rows)[selected]] = True
    return mask


def compute_masks(config: SetoolsConfig, columns: Mapping, n_rows: int) -> dict[str, np.ndarray]:
    """Every mask of a file, in file order (a mask may use earlier ones)."""
    masks: dict[str, np.ndarray] = {}
    for name, section in config.masks.items():
        masks[name] = compute_mask(section, columns, masks, n_rows, config.path)
    return masks


def evaluate_expression(expression: Expression, columns: Mapping, masks: Mapping, config_path: str = ""):
    """Value of an expression over the whole catalogue."""
    try:
        return Evaluator(columns, masks)(expression.node)
    except SetoolsError as error:
        raise _located(error, config_path, expression) from None


def render_label(label: LabelText | None, columns: Mapping, masks: Mapping, config_path: str = "") -> str | None:
    """Text of a label with each ``@expression@`` replaced by its value (4 significant digits)."""
    if label is None:
        return None
    pieces = []
    for part in label.parts:
        if isinstance(part, Expression):
            value = np.asarray(evaluate_expression(part, columns, masks, config_path))
            if value.ndim != 0:
                raise SetoolsError(
                    f"@{part.text}@ gives {value.size} values; a label needs one number (use mean(), len(), ...)",
                    config_path,
                    part.line,
                )
            pieces.append(f"{float(value):.4g}")
        else:
            pieces.append(part)
    return "".join(pieces)


def compute_stats(section: StatSection, columns: Mapping, masks: Mapping, config_path: str = "") -> list:
    """``(label, value)`` pairs of a STAT section; every value must be one number."""
    results = []
    for label, expression in section.entries:
        value = np.asarray(evaluate_expression(expression, columns, masks, config_path))
        if value.ndim != 0:
            raise SetoolsError(
                f"statistic {label!r} = {expression.text!r} gives {value.size} values, not one number "
                "(reduce it with mean(), len(), ...)",
                config_path,
                expression.line,
            )
        results.append((label, value.item()))
    return results


def stat_text(results: list) -> str:
    """Content of a statistics file, in ShapePipe's layout (``label = value`` lines)."""
    lines = ["# Statistics"] + [f"{label} = {format_number(value)}" for label, value in results]
    return "\n".join(lines) + "\n"


def split_sizes(n_objects: int, section: RandSplitSection) -> tuple[int, int]:
    """Sizes of the two sub-samples: ``ceil(n * ratio)`` and the rest (exact arithmetic)."""
    first = math.ceil(n_objects * section.ratio)
    return first, n_objects - first


def random_split(mask: np.ndarray, section: RandSplitSection, rng: np.random.Generator):
    """Split the rows of ``mask`` at random into two disjoint boolean masks.

    Returns
    -------
    first, second : numpy.ndarray of bool
        ``first`` holds ``ceil(n * RATIO)`` of the ``n`` selected rows (the
        ``ratio_<RATIO>`` sample), ``second`` the others.
    """
    rows = np.flatnonzero(mask)
    n_first, _ = split_sizes(rows.size, section)
    chosen = rng.permutation(rows.size)[:n_first]
    first = np.zeros(mask.size, dtype=bool)
    first[rows[chosen]] = True
    return first, mask & ~first


def combined_mask(names: list, masks: Mapping, n_rows: int) -> np.ndarray:
    """AND of several masks."""
    result = np.ones(n_rows, dtype=bool)
    for name in names:
        result &= masks[name]
    return result


def build_new_cat(section: NewCatSection, columns: Mapping, masks: Mapping, config_path: str = "") -> dict:
    """Columns of a NEW_CAT section; numbers are repeated to the length of the array columns."""
    values = {}
    for name, expression in section.columns:
        values[name] = np.asarray(evaluate_expression(expression, columns, masks, config_path))
    lengths = {len(value) for value in values.values() if value.ndim > 0}
    if len(lengths) > 1:
        described = ", ".join(f"{name}: {value.size}" for name, value in values.items() if value.ndim > 0)
        raise SetoolsError(
            f"[NEW_CAT:{section.name}] columns have different lengths ({described})", config_path, section.line
        )
    length = lengths.pop() if lengths else 1
    return {name: (np.full(length, value) if value.ndim == 0 else value) for name, value in values.items()}


def new_cat_text(table: dict) -> str:
    """A NEW_CAT in text form: a ``#`` header line of names, then one row per line."""
    names = list(table)
    lines = ["# " + " ".join(names)]
    if names:
        n_rows = len(next(iter(table.values())))
        for index in range(n_rows):
            lines.append(" ".join(format_number(table[name][index]) for name in names))
    return "\n".join(lines) + "\n"
