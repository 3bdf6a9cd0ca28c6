"""The SETools expression language: tokenizer, parser and evaluator.

Grammar (lowest precedence first)::

    line       := expression [COMPARE expression]
    expression := term (('+' | '-') term)*
    term       := unary (('*' | '/') unary)*
    unary      := ('-' | '+') unary | power
    power      := primary [('^' | '**') unary]        # right-associative
    primary    := NUMBER | COLUMN | NAME '(' [expression (',' expression)*] ')'
                | '(' expression ')'
    COLUMN     := NAME ['{' MASK_NAME '}']
    COMPARE    := '<' | '>' | '<=' | '>=' | '==' | '!='

``-x^2`` is ``-(x^2)`` and ``2^3^2`` is ``2^9``, as in mathematics.
``COL{mask}`` is the column restricted to the rows of an earlier mask.

Values are numpy arrays (columns) or floats. Functions either reduce an
array to a number (:data:`REDUCERS`: ``mean``, ``median``, ``mode``, ``std``,
``var``, ``sigma_mad``, ``len``, ``min``, ``max``) or apply element-wise
(``sqrt``, ``pow``, ``log``, ``log10``, ``exp``, ``abs``). Reductions use the
finite values only (``len`` counts every element) and give NaN for an empty
array, so a cut against them selects nothing instead of crashing.

The text is parsed into a small tree and evaluated node by node: nothing
is ever passed to Python's ``eval``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from shapepipe.errors import ShapePipeError

COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")
# Mask and section names may appear in file names: keep them plain.
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*"


class SetoolsError(ShapePipeError, ValueError):
    """An error in a SETools file or in evaluating one of its lines.

    Parameters
    ----------
    message : str
        What is wrong.
    path : str, optional
        The ``.setools`` file.
    line : int, optional
        1-based line number in that file.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)

    def located(self, path: str | None, line: int | None) -> "SetoolsError":
        """The same error with a file name and line number attached."""
        return SetoolsError(self.message, path if self.path is None else self.path,
                            line if self.line is None else self.line)


# ----------------------------------------------------------------------------
# Functions of the language


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def sigma_mad(values) -> float:
    """Robust standard deviation: 1.4826 times the median absolute deviation."""
    data = _finite(values)
    if data.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(data - np.median(data))))


def histogram_mode(values, min_count: int = 20, max_iterations: int = 64) -> float:
    """Most frequent value of a continuous sample, by iterated histograms.

    The sample is binned (``n/10`` bins above 100 values, ``n/5`` below, as
    ShapePipe), narrowed to its most populated bin, and binned again, until
    fewer than ``min_count`` values remain; the median of what remains is the
    mode. A sample smaller than ``min_count`` from the start is binned once
    when it has at least 10 values (two bins). Never raises: an empty sample
    gives NaN; a sample too small to bin, constant, or so narrow that the
    floating-point grid cannot split it (the data of ShapePipe issue #808)
    gives the median of the values left.

    Parameters
    ----------
    values : array_like
        Sample; non-finite values are ignored.
    min_count : int
        Stop refining when the sample has fewer values than this.
    max_iterations : int
        Safety bound on the refinements (each one strictly shrinks the sample).

    Returns
    -------
    float
        The mode estimate.
    """
    data = _finite(values)
    if data.size == 0:
        return float("nan")
    for iteration in range(max_iterations):
        low, high = data.min(), data.max()
        spread = high - low
        # A sample that starts below min_count is still binned once when it makes two bins: in a cluster
        # field 8 stars among 19 bright objects would otherwise give the median, a galaxy size.
        too_small = data.size < min_count and (iteration > 0 or data.size < 10)
        if too_small or not (np.isfinite(spread) and spread > 0):
            break
        n_bins = data.size // 10 if data.size > 100 else data.size // 5
        width = spread / n_bins
        if not width > 0:
            break
        # Own binning (not np.histogram) so that the members of the peak bin
        # are exactly the values counted in it: the sample can never empty.
        index = np.minimum(((data - low) / width).astype(np.intp), n_bins - 1)
        counts = np.bincount(index, minlength=n_bins)
        peak = int(np.argmax(counts))
        if counts[peak] == data.size:
            break
        data = data[index == peak]
    return float(np.median(data))


def _reduce(function: Callable) -> Callable:
    def reducer(values):
        data = _finite(values)
        if data.size == 0:
            return float("nan")
        return float(function(data))

    reducer.__name__ = function.__name__
    return reducer


def _length(values) -> int:
    return int(np.size(values))


def _extremum(reduce_one: Callable, elementwise: Callable) -> Callable:
    def extremum(*args):
        if len(args) == 1:
            return reduce_one(args[0])
        result = np.asarray(args[0], dtype=float)
        for other in args[1:]:
            result = elementwise(result, np.asarray(other, dtype=float))
        return result

    return extremum


def _elementwise(function: Callable) -> Callable:
    def apply(values):
        return function(np.asarray(values, dtype=float))

    return apply


def _power(base, exponent):
    return np.power(np.asarray(base, dtype=float), np.asarray(exponent, dtype=float))


@dataclass(frozen=True)
class Function:
    """A function of the language: implementation and allowed argument counts."""

    implementation: Callable
    min_args: int
    max_args: int | None
    reduces: bool


FUNCTIONS: dict[str, Function] = {
    "mean": Function(_reduce(np.mean), 1, 1, True),
    "median": Function(_reduce(np.median), 1, 1, True),
    "mode": Function(histogram_mode, 1, 1, True),
    "std": Function(_reduce(np.std), 1, 1, True),
    "var": Function(_reduce(np.var), 1, 1, True),
    "sigma_mad": Function(sigma_mad, 1, 1, True),
    "len": Function(_length, 1, 1, True),
    "min": Function(_extremum(_reduce(np.min), np.fmin), 1, None, True),
    "max": Function(_extremum(_reduce(np.max), np.fmax), 1, None, True),
    "sqrt": Function(_elementwise(np.sqrt), 1, 1, False),
    "pow": Function(_power, 2, 2, False),
    "log": Function(_elementwise(np.log), 1, 1, False),
    "log10": Function(_elementwise(np.log10), 1, 1, False),
    "exp": Function(_elementwise(np.exp), 1, 1, False),
    "abs": Function(_elementwise(np.abs), 1, 1, False),
}
REDUCERS = tuple(name for name, f in FUNCTIONS.items() if f.reduces)


# ----------------------------------------------------------------------------
# Tokens

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<column>[A-Za-z_][A-Za-z0-9_]*)(?:\s*\{\s*(?P<mask>[^{}\s]*)\s*\})?
  | (?P<operator>\*\*|<=|>=|==|!=|[-+*/^()<>,])
  | (?P<brace>\{[^{}]*\}?)
  | (?P<other>.)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    """One token: kind ('number', 'name', 'op', 'end'), text, position and mask."""

    kind: str
    text: str
    position: int
    mask: str | None = None


def tokenize(text: str) -> list[Token]:
    """Split an expression into tokens.

    Raises
    ------
    SetoolsError
        On a character that belongs to no token.
    """
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        start = match.start()
        if match.group("space"):
            continue
        if match.group("number") is not None:
            tokens.append(Token("number", match.group("number"), start))
        elif match.group("column") is not None:
            mask = match.group("mask")
            if mask is not None and not re.fullmatch(NAME_PATTERN, mask):
                raise SetoolsError(f"bad mask name {{{mask}}} after {match.group('column')} in {text!r}")
            tokens.append(Token("name", match.group("column"), start, mask))
        elif match.group("operator") is not None:
            tokens.append(Token("op", match.group("operator"), start))
        elif kind == "brace":
            raise SetoolsError(
                f"{match.group('brace')!r} at column {start + 1} of {text!r} must follow a "
                "column name (COLUMN{mask}), or stand alone on a MASK line"
            )
        else:
            char = match.group("other")
            hint = "; write == for equality" if char == "=" else ""
            raise SetoolsError(f"unexpected character {char!r} at column {start + 1} of {text!r}{hint}")
    tokens.append(Token("end", "", len(text)))
    return tokens


# ----------------------------------------------------------------------------
# Syntax tree


class Node:
    """Base of the syntax-tree nodes."""

    def children(self) -> tuple:
        return ()

    def walk(self):
        """This node and every node below it."""
        yield self
        for child in self.children():
            yield from child.walk()

    def columns(self) -> set[str]:
        """Names of the catalogue columns used."""
        return {node.name for node in self.walk() if isinstance(node, Column)}

    def masks(self) -> set[str]:
        """Names of the masks used as ``COL{mask}``."""
        return {node.mask for node in self.walk() if isinstance(node, Column) and node.mask}


@dataclass(frozen=True)
class Number(Node):
    value: float


@dataclass(frozen=True)
class Column(Node):
    name: str
    mask: str | None = None


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple

    def children(self):
        return self.args


@dataclass(frozen=True)
class Unary(Node):
    operator: str
    operand: Node

    def children(self):
        return (self.operand,)


@dataclass(frozen=True)
class Binary(Node):
    operator: str
    left: Node
    right: Node

    def children(self):
        return (self.left, self.right)


@dataclass(frozen=True)
class Compare(Node):
    operator: str
    left: Node
    right: Node

    def children(self):
        return (self.left, self.right)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def error(self, message: str, token: Token | None = None) -> SetoolsError:
        token = token or self.current
        found = "end of line" if token.kind == "end" else repr(token.text)
        return SetoolsError(f"{message} at column {token.position + 1} of {self.text!r} (found {found})")

    def accept(self, *operators: str) -> Token | None:
        token = self.current
        if token.kind == "op" and token.text in operators:
            self.index += 1
            return token
        return None

    def expect(self, operator: str, message: str) -> Token:
        token = self.accept(operator)
        if token is None:
            raise self.error(message)
        return token

    def line(self, allow_compare: bool) -> Node:
        node = self.expression()
        token = self.accept(*COMPARISONS)
        if token is not None:
            if not allow_compare:
                raise self.error("a comparison is not allowed here", token)
            node = Compare(token.text, node, self.expression())
            if self.current.kind == "op" and self.current.text in COMPARISONS:
                raise self.error("only one comparison per line (write one cut per line; lines are AND-ed)")
        if self.current.kind != "end":
            raise self.error("unexpected text")
        return node

    def expression(self) -> Node:
        node = self.term()
        while (token := self.accept("+", "-")) is not None:
            node = Binary(token.text, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while (token := self.accept("*", "/")) is not None:
            node = Binary(token.text, node, self.unary())
        return node

    def unary(self) -> Node:
        token = self.accept("-", "+")
        if token is not None:
            operand = self.unary()
            return Unary("-", operand) if token.text == "-" else operand
        return self.power()

    def power(self) -> Node:
        node = self.primary()
        if self.accept("^", "**") is not None:
            node = Binary("^", node, self.unary())
        return node

    def primary(self) -> Node:
        token = self.current
        if token.kind == "number":
            self.index += 1
            return Number(float(token.text))
        if token.kind == "name":
            self.index += 1
            if self.current.kind == "op" and self.current.text == "(":
                if token.mask is not None:
                    raise self.error(f"a function name cannot carry a mask ({token.text}{{{token.mask}}})", token)
                return self.call(token)
            return Column(token.text, token.mask)
        if self.accept("(") is not None:
            node = self.expression()
            self.expect(")", "missing ')'")
            return node
        raise self.error("expected a number, a column, a function call or '('")

    def call(self, name: Token) -> Node:
        function = FUNCTIONS.get(name.text)
        if function is None:
            raise self.error(
                f"unknown function {name.text!r}; known functions: {', '.join(sorted(FUNCTIONS))}", name
            )
        self.expect("(", "expected '('")
        args = []
        if self.accept(")") is None:
            args.append(self.expression())
            while self.accept(",") is not None:
                args.append(self.expression())
            self.expect(")", f"missing ')' closing {name.text}(")
        n_args = len(args)
        if n_args < function.min_args or (function.max_args is not None and n_args > function.max_args):
            wanted = (
                str(function.min_args)
                if function.max_args == function.min_args
                else f"at least {function.min_args}"
                if function.max_args is None
                else f"{function.min_args} to {function.max_args}"
            )
            raise self.error(f"{name.text}() takes {wanted} argument(s), got {n_args}", name)
        return Call(name.text, tuple(args))


def parse(text: str, allow_compare: bool = False) -> Node:
    """Parse one expression (or one comparison if ``allow_compare``).

    Raises
    ------
    SetoolsError
        With the column of the offending token.
    """
    if not text.strip():
        raise SetoolsError("empty expression")
    return _Parser(text).line(allow_compare)


# ----------------------------------------------------------------------------
# Evaluation

_ARITHMETIC = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
    "^": np.power,
}
_COMPARE = {
    "<": np.less,
    ">": np.greater,
    "<=": np.less_equal,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


class Evaluator:
    """Evaluates syntax trees against catalogue columns and masks.

    Parameters
    ----------
    columns : Mapping
        Column name to array (one value per catalogue row).
    masks : Mapping
        Mask name to boolean array over the catalogue rows.
    rows : numpy.ndarray of bool, optional
        Rows a bare column refers to (the ``{mask}`` lines of a MASK section);
        ``COL{mask}`` always refers to the whole catalogue restricted to the
        mask.
    """

    def __init__(self, columns: Mapping, masks: Mapping, rows: np.ndarray | None = None):
        self.columns = columns
        self.masks = masks
        self.rows = rows

    def column(self, name: str, mask: str | None) -> np.ndarray:
        if name not in self.columns:
            close = difflib.get_close_matches(name, list(self.columns.keys()), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SetoolsError(f"no column {name!r} in the catalogue{hint}")
        values = np.asarray(self.columns[name])
        if mask is not None:
            if mask not in self.masks:
                raise SetoolsError(f"mask {mask!r} is not defined (yet) where {name}{{{mask}}} is used")
            return values[self.masks[mask]]
        if self.rows is not None:
            return values[self.rows]
        return values

    def __call__(self, node: Node):
        """Value of a tree: a float or a numpy array."""
        with np.errstate(all="ignore"):
            return self._evaluate(node)

    def _evaluate(self, node: Node):
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Column):
            values = self.column(node.name, node.mask)
            if values.dtype.kind == "b":
                return values.astype(float)
            if values.dtype.kind not in "iuf":
                raise SetoolsError(f"column {node.name!r} is not numeric (dtype {values.dtype})")
            return values
        if isinstance(node, Unary):
            return np.negative(self._evaluate(node.operand))
        if isinstance(node, Binary):
            left = self._evaluate(node.left)
            right = self._evaluate(node.right)
            if node.operator in ("/", "^"):
                # Integer columns: true division and real powers.
                left = np.asarray(left, dtype=float)
            return self._combine(_ARITHMETIC[node.operator], left, right, node.operator)
        if isinstance(node, Compare):
            left = self._evaluate(node.left)
            right = self._evaluate(node.right)
            return self._combine(_COMPARE[node.operator], left, right, node.operator)
        if isinstance(node, Call):
            args = [self._evaluate(arg) for arg in node.args]
            return FUNCTIONS[node.function].implementation(*args)
        raise TypeError(f"unknown node {node!r}")

    @staticmethod
    def _combine(operation, left, right, symbol):
        try:
            return operation(left, right)
        except ValueError:
            raise SetoolsError(
                f"cannot combine arrays of {np.size(left)} and {np.size(right)} values with "
                f"{symbol!r}: COL{{mask}} selects fewer rows than a bare column; reduce it "
                "with a function such as mode() or mean()"
            ) from None


def evaluate(text_or_node, columns: Mapping, masks: Mapping | None = None):
    """Parse (if needed) and evaluate an expression over whole-catalogue columns."""
    node = parse(text_or_node, allow_compare=True) if isinstance(text_or_node, str) else text_or_node
    return Evaluator(columns, masks or {})(node)


def format_number(value) -> str:
    """Text of a result for statistics files: ints as ints, floats in full precision."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    array = np.asarray(value)
    if array.ndim == 0:
        return repr(float(array))
    return " ".join(format_number(v) for v in array.ravel())
