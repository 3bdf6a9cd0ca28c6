"""Reading ``.setools`` files into checked sections.

A file is a list of sections, each opened by ``[TYPE:name]`` (``[TYPE]``
alone gives the name ``type_<i>``, as ShapePipe). ``#`` starts a comment
outside double quotes; blank lines are ignored; a value in double quotes
keeps its spaces.

``MASK``
    One cut per line (``expression COMPARE expression``), AND-ed;
    ``{name}`` lines restrict the mask to an earlier mask (bare columns in
    the cuts then refer to those rows only); ``NO_SAVE`` keeps the mask in
    memory only. ``COL{name}`` uses an earlier mask.
``PLOT``
    ``KEY = value`` or ``KEY_i = value`` (series ``i``); see
    :data:`PLOT_KEYS`. ``@expression@`` inside TITLE, LABEL, XLABEL and
    YLABEL is replaced by its value.
``STAT``
    ``"label" = expression``.
``RAND_SPLIT``
    ``RATIO`` (percent, or a fraction below 1), ``MASK`` (comma-separated
    masks, AND-ed) and optionally ``SEED`` (an integer mixed with the file
    number; without it the run seed is used).
``NEW_CAT``
    ``OUTPUT_FORMAT`` (``fits``, ``SEx_cat``, ``txt``/``ascii``; default
    ``SEx_cat``) and ``NAME = expression`` columns.

Everything is parsed and cross-checked here, before any catalogue is read,
so a mistake is reported with its file name and line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .language import NAME_PATTERN, Compare, Node, SetoolsError, parse

SECTION_TYPES = ("MASK", "PLOT", "STAT", "RAND_SPLIT", "NEW_CAT")
# ShapePipe's documentation spells STAT as STATS.
_SECTION_ALIASES = {"STATS": "STAT"}

PLOT_TYPES = {"plot": "plot", "scatter": "scatter", "hist": "hist", "histogram": "hist"}
# Key: (kind, per-series?). Kinds: expr (array expression), text (may hold
# @expr@), str, float, int, bool, limits.
PLOT_KEYS = {
    "TYPE": ("str", False),
    "FORMAT": ("str", False),
    "TITLE": ("text", False),
    "XLABEL": ("text", False),
    "YLABEL": ("text", False),
    "XLIM": ("limits", False),
    "YLIM": ("limits", False),
    "HTYPE": ("str", False),
    "LOG": ("bool", False),
    "X": ("expr", True),
    "Y": ("expr", True),
    "SCATTER": ("expr", True),
    "LABEL": ("text", True),
    "COLOR": ("str", True),
    "MARKER": ("str", True),
    "MARKERSIZE": ("float", True),
    "LINE": ("str", True),
    "ALPHA": ("float", True),
    "BIN": ("int", True),
}
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps")
HIST_TYPES = ("bar", "barstacked", "step", "stepfilled")
NEW_CAT_FORMATS = {"fits": "fits", "sex_cat": "SEx_cat", "txt": "txt", "ascii": "txt"}
_TRUE = ("true", "yes", "1", "t", "y", "on")
_FALSE = ("false", "no", "0", "f", "n", "off")


@dataclass
class Expression:
    """A parsed expression with the text and line it came from."""

    text: str
    node: Node
    line: int


@dataclass
class LabelText:
    """Text with ``@expression@`` parts: literal strings and Expressions, in order."""

    parts: list
    line: int

    def expressions(self):
        return [part for part in self.parts if isinstance(part, Expression)]


@dataclass
class MaskSection:
    name: str
    line: int
    parents: list = field(default_factory=list)  # (mask name, line)
    cuts: list = field(default_factory=list)  # Expression (comparisons)
    save: bool = True


@dataclass
class PlotSection:
    name: str
    line: int
    kind: str = ""
    # KEY -> {series id: value}; unsuffixed keys use the series id "".
    values: dict = field(default_factory=dict)

    def get(self, key: str, series: str, default=None):
        """Value of ``KEY_series``, else the unsuffixed ``KEY``, else ``default``."""
        entries = self.values.get(key, {})
        if series in entries:
            return entries[series]
        if "" in entries:
            return entries[""]
        if len(entries) == 1 and key in ("X", "Y"):
            return next(iter(entries.values()))
        return default

    def series(self) -> list[str]:
        """Series ids: those of SCATTER (scatter plots) or Y (others), in file order."""
        key = "SCATTER" if self.kind == "scatter" else "Y"
        return list(self.values.get(key, {}))


@dataclass
class StatSection:
    name: str
    line: int
    entries: list = field(default_factory=list)  # (label, Expression)


@dataclass
class RandSplitSection:
    name: str
    line: int
    ratio: Fraction | None = None
    masks: list = field(default_factory=list)
    seed: int | None = None

    @property
    def percent(self) -> int:
        """Percentage of the first sub-sample (the one named after RATIO)."""
        return int(self.ratio * 100)

    def output_names(self) -> tuple[str, str]:
        """Base names of the two sub-samples, ``<name>_ratio_<p>`` and ``..._<100-p>``."""
        return (f"{self.name}_ratio_{self.percent}", f"{self.name}_ratio_{100 - self.percent}")


@dataclass
class NewCatSection:
    name: str
    line: int
    output_format: str = "SEx_cat"
    columns: list = field(default_factory=list)  # (column name, Expression)


@dataclass
class SetoolsConfig:
    """Every section of a ``.setools`` file, in file order within each type."""

    path: str
    masks: dict = field(default_factory=dict)
    plots: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    rand_splits: dict = field(default_factory=dict)
    new_cats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------
# Line-level helpers


def strip_comment(line: str) -> str:
    """Remove a ``#`` comment that is outside double quotes."""
    in_quotes = False
    for index, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif char == "#" and not in_quotes:
            return line[:index]
    return line


def unquote(text: str) -> str:
    """Strip spaces, then one pair of surrounding double quotes."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def split_key_value(text: str) -> tuple[str, str]:
    """Split ``KEY = value`` (or ``"label" = value``) at the first lone ``=``."""
    text = text.strip()
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise SetoolsError(f"unclosed double quote in {text!r}")
        rest = text[end + 1:].lstrip()
        if not rest.startswith("=") or rest.startswith("=="):
            raise SetoolsError(f'expected "label" = expression, got {text!r}')
        return text[1:end], rest[1:].strip()
    for match in re.finditer("=", text):
        index = match.start()
        before = text[index - 1] if index > 0 else ""
        after = text[index + 1] if index + 1 < len(text) else ""
        if before not in "<>=!" and after != "=":
            key, value = text[:index].strip(), text[index + 1:].strip()
            if not key:
                raise SetoolsError(f"missing key before '=' in {text!r}")
            return key, value
    raise SetoolsError(f"expected KEY = value, got {text!r}")


def parse_label(text: str, line: int) -> LabelText:
    """Split a label into literal text and ``@expression@`` parts."""
    pieces = text.split("@")
    if len(pieces) % 2 == 0:
        raise SetoolsError(f"unpaired '@' in {text!r}: write @expression@")
    parts = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            if piece:
                parts.append(piece)
        else:
            parts.append(Expression(piece, parse(piece), line))
    return LabelText(parts, line)


def _parse_ratio(text: str) -> Fraction:
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise SetoolsError(f"RATIO must be a number, got {text!r}") from None
    # ShapePipe: a value of 1 or more is a percentage.
    ratio = value / 100 if value >= 1 else value
    if not 0 < ratio < 1:
        raise SetoolsError(f"RATIO must lie between 0 and 100 (percent), got {text!r}")
    if (ratio * 100).denominator != 1:
        raise SetoolsError(f"RATIO must be a whole percentage (it names the output files), got {text!r}")
    if ratio == Fraction(1, 2):
        raise SetoolsError("RATIO = 50 would give both sub-samples the same file name (ratio_50)")
    return ratio


# ----------------------------------------------------------------------------
# Reading


_SECTION = re.compile(r"\[\s*([A-Za-z_]+)\s*(?::\s*(.*?)\s*)?\]")


def read_setools(path) -> SetoolsConfig:
    """Read and check a ``.setools`` file.

    Raises
    ------
    SetoolsError
        On the first problem, naming the file and line; use
        :func:`check_setools` to collect every problem.
    """
    config, problems = load_setools(path)
    if problems:
        raise problems[0]
    return config


def check_setools(path) -> list[str]:
    """Every problem found in a ``.setools`` file, one string each (empty if none)."""
    _, problems = load_setools(path)
    return [str(problem) for problem in problems]


def load_setools(path) -> tuple[SetoolsConfig, list[SetoolsError]]:
    """Read a ``.setools`` file, collecting every problem instead of stopping at the first.

    Returns
    -------
    config : SetoolsConfig
        The sections read (incomplete when there are problems).
    problems : list of SetoolsError
        Each naming the file and line.
    """
    path = str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        return SetoolsConfig(path), [SetoolsError(f"cannot read the file ({error})", path)]
    reader = _Reader(path)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw).strip()
        if not line:
            continue
        try:
            reader.line(line, number)
        except SetoolsError as error:
            reader.problems.append(error.located(path, number))
            if reader.section is not None:
                # Completeness checks of this section would only repeat the error.
                reader.broken.add(id(reader.section))
    reader.finish()
    return reader.config, reader.problems


class _Reader:
    def __init__(self, path: str):
        self.config = SetoolsConfig(path)
        self.problems: list[SetoolsError] = []
        self.section = None
        self.kind = None
        self.broken: set[int] = set()

    def line(self, line: str, number: int) -> None:
        if line.startswith("["):
            self.open_section(line, number)
            return
        if self.section is None:
            raise SetoolsError(f"{line!r} is outside any section; start with [MASK:name], [PLOT:name], ...")
        getattr(self, f"line_{self.kind.lower()}")(line, number)

    def open_section(self, line: str, number: int) -> None:
        match = _SECTION.fullmatch(line)
        if not match:
            self.section = None
            raise SetoolsError(f"bad section header {line!r}; expected [TYPE:name]")
        kind = match.group(1).upper()
        kind = _SECTION_ALIASES.get(kind, kind)
        if kind not in SECTION_TYPES:
            self.section = None
            raise SetoolsError(f"unknown section type {match.group(1)!r}; expected one of {', '.join(SECTION_TYPES)}")
        store = self.store(kind)
        name = match.group(2) or f"{kind.lower()}_{len(store) + 1}"
        if not re.fullmatch(NAME_PATTERN, name):
            self.section = None
            raise SetoolsError(f"bad section name {name!r} (letters, digits, _ . + - only)")
        if name in store:
            self.section = None
            raise SetoolsError(f"section [{kind}:{name}] defined twice (first on line {store[name].line})")
        section_class = {
            "MASK": MaskSection,
            "PLOT": PlotSection,
            "STAT": StatSection,
            "RAND_SPLIT": RandSplitSection,
            "NEW_CAT": NewCatSection,
        }[kind]
        self.section = section_class(name, number)
        self.kind = kind
        store[name] = self.section

    def store(self, kind: str) -> dict:
        return {
            "MASK": self.config.masks,
            "PLOT": self.config.plots,
            "STAT": self.config.stats,
            "RAND_SPLIT": self.config.rand_splits,
            "NEW_CAT": self.config.new_cats,
        }[kind]

    # -- MASK ----------------------------------------------------------------

    def line_mask(self, line: str, number: int) -> None:
        section = self.section
        if line == "NO_SAVE":
            section.save = False
            return
        reference = re.fullmatch(r"\{\s*(.*?)\s*\}", line)
        if reference:
            name = reference.group(1)
            self.check_earlier_mask(name, section)
            section.parents.append((name, number))
            return
        node = parse(line, allow_compare=True)
        if not isinstance(node, Compare):
            raise SetoolsError(f"a MASK line must be a comparison (< > <= >= == !=), {{mask}} or NO_SAVE; got {line!r}")
        for name in node.masks():
            self.check_earlier_mask(name, section)
        section.cuts.append(Expression(line, node, number))

    def check_earlier_mask(self, name: str, section: MaskSection) -> None:
        if name == section.name:
            raise SetoolsError(f"mask {name!r} refers to itself")
        if name not in self.config.masks:
            raise SetoolsError(f"mask {name!r} is not defined before [MASK:{section.name}]")

    # -- PLOT ----------------------------------------------------------------

    def line_plot(self, line: str, number: int) -> None:
        key, value = split_key_value(line)
        match = re.fullmatch(r"([A-Za-z]+)(?:_(\w+))?", key)
        if not match or match.group(1).upper() not in PLOT_KEYS:
            raise SetoolsError(f"unknown PLOT key {key!r}; known keys: {', '.join(PLOT_KEYS)} (with _i for series)")
        name, series = match.group(1).upper(), match.group(2) or ""
        kind, per_series = PLOT_KEYS[name]
        if series and not per_series:
            raise SetoolsError(f"PLOT key {name} applies to the whole plot; it takes no _{series} suffix")
        value = unquote(value)
        entries = self.section.values.setdefault(name, {})
        if series in entries:
            raise SetoolsError(f"PLOT key {key} given twice")
        entries[series] = self.plot_value(name, kind, value, number)
        if name == "TYPE":
            self.section.kind = entries[series]

    def plot_value(self, name: str, kind: str, value: str, number: int):
        if kind == "expr":
            node = parse(value)
            return Expression(value, node, number)
        if kind == "text":
            return parse_label(value, number)
        if kind == "float":
            try:
                return float(value)
            except ValueError:
                raise SetoolsError(f"PLOT key {name} needs a number, got {value!r}") from None
        if kind == "int":
            try:
                result = int(value)
            except ValueError:
                raise SetoolsError(f"PLOT key {name} needs an integer, got {value!r}") from None
            if result < 1:
                raise SetoolsError(f"PLOT key {name} must be at least 1, got {value!r}")
            return result
        if kind == "bool":
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise SetoolsError(f"PLOT key {name} needs True or False, got {value!r}")
        if kind == "limits":
            items = [item.strip() for item in value.split(",")]
            try:
                low, high = (float(item) for item in items)
            except ValueError:
                raise SetoolsError(f"PLOT key {name} needs 'lower, upper', got {value!r}") from None
            return (low, high)
        if name == "TYPE":
            if value.lower() not in PLOT_TYPES:
                raise SetoolsError(f"PLOT TYPE must be one of {', '.join(PLOT_TYPES)}, got {value!r}")
            return PLOT_TYPES[value.lower()]
        if name == "FORMAT":
            if value.lower() not in PLOT_FORMATS:
                raise SetoolsError(f"PLOT FORMAT must be one of {', '.join(PLOT_FORMATS)}, got {value!r}")
            return value.lower()
        if name == "HTYPE" and value not in HIST_TYPES:
            raise SetoolsError(f"PLOT HTYPE must be one of {', '.join(HIST_TYPES)}, got {value!r}")
        return value

    # -- STAT ----------------------------------------------------------------

    def line_stat(self, line: str, number: int) -> None:
        label, text = split_key_value(line)
        if not text:
            raise SetoolsError(f"missing expression after {label!r} =")
        if any(label == existing for existing, _ in self.section.entries):
            raise SetoolsError(f"statistic {label!r} given twice")
        self.section.entries.append((label, Expression(text, parse(text), number)))

    # -- RAND_SPLIT ----------------------------------------------------------

    def line_rand_split(self, line: str, number: int) -> None:
        key, value = split_key_value(line)
        key = key.upper()
        section = self.section
        if key == "RATIO":
            section.ratio = _parse_ratio(value)
        elif key == "MASK":
            section.masks = [name.strip() for name in value.split(",") if name.strip()]
            if not section.masks:
                raise SetoolsError("RAND_SPLIT MASK needs at least one mask name")
        elif key == "SEED":
            try:
                section.seed = int(value)
            except ValueError:
                raise SetoolsError(f"RAND_SPLIT SEED must be an integer, got {value!r}") from None
        else:
            raise SetoolsError(f"unknown RAND_SPLIT key {key!r}; expected RATIO, MASK or SEED")

    # -- NEW_CAT -------------------------------------------------------------

    def line_new_cat(self, line: str, number: int) -> None:
        key, value = split_key_value(line)
        section = self.section
        if key.upper() == "OUTPUT_FORMAT":
            fmt = unquote(value).lower()
            if fmt not in NEW_CAT_FORMATS:
                raise SetoolsError(f"NEW_CAT OUTPUT_FORMAT must be fits, SEx_cat or txt, got {value!r}")
            section.output_format = NEW_CAT_FORMATS[fmt]
            return
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SetoolsError(f"bad NEW_CAT column name {key!r}")
        if any(key == existing for existing, _ in section.columns):
            raise SetoolsError(f"NEW_CAT column {key!r} given twice")
        section.columns.append((key, Expression(value, parse(value, allow_compare=True), number)))

    # -- checks once the whole file is read -----------------------------------

    def finish(self) -> None:
        config = self.config
        for plot in config.plots.values():
            if id(plot) not in self.broken:
                self.check_plot(plot)
        for split in config.rand_splits.values():
            if id(split) in self.broken:
                continue
            if split.ratio is None:
                self.problem("RAND_SPLIT needs RATIO", split)
            if not split.masks:
                self.problem("RAND_SPLIT needs MASK", split)
            for name in split.masks:
                if name not in config.masks:
                    self.problem(f"RAND_SPLIT MASK {name!r} is not a mask of this file", split)
        for new_cat in config.new_cats.values():
            if not new_cat.columns:
                self.problem("NEW_CAT has no column", new_cat)
        # COL{mask} outside MASK sections may use any mask of the file.
        for expression in self.expressions_outside_masks():
            for name in expression.node.masks():
                if name not in config.masks:
                    self.problems.append(
                        SetoolsError(f"mask {name!r} used in {expression.text!r} is not defined", config.path,
                                     expression.line)
                    )

    def problem(self, message: str, section) -> None:
        kind = type(section).__name__.replace("Section", "").upper()
        self.problems.append(SetoolsError(f"[{kind}:{section.name}]: {message}", self.config.path, section.line))

    def check_plot(self, plot: PlotSection) -> None:
        if not plot.kind:
            self.problem("PLOT needs TYPE (plot, scatter or hist)", plot)
            return
        required = {"plot": ("X", "Y"), "scatter": ("X", "Y", "SCATTER"), "hist": ("Y",)}[plot.kind]
        for key in required:
            if key not in plot.values:
                self.problem(f"a {plot.kind} PLOT needs {key}", plot)
        if plot.kind != "hist":
            x_series = plot.values.get("X", {})
            for series in plot.series():
                if series not in x_series and "" not in x_series and len(x_series) != 1:
                    self.problem(f"no X for series {series!r} (give X_{series} or a single X)", plot)
        if plot.kind == "scatter":
            y_series = plot.values.get("Y", {})
            for series in plot.series():
                if series not in y_series and "" not in y_series and len(y_series) != 1:
                    self.problem(f"no Y for series {series!r} (give Y_{series} or a single Y)", plot)

    def expressions_outside_masks(self):
        config = self.config
        for plot in config.plots.values():
            for entries in plot.values.values():
                for value in entries.values():
                    if isinstance(value, Expression):
                        yield value
                    elif isinstance(value, LabelText):
                        yield from value.expressions()
        for stat in config.stats.values():
            for _, expression in stat.entries:
                yield expression
        for new_cat in config.new_cats.values():
            for _, expression in new_cat.columns:
                yield expression
