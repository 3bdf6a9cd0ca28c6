"""Datasets: what each module writes, by name, and how to read it back.

A module declares its products beside its inputs::

    @module(name="sextractor", ...,
            products=(Product("sexcat", "*sexcat{number}.fits", "ldac", ids=("tile", "exposure_ccd")),))

Each :class:`Product` gives a **dataset type** name, the path template of its
files inside the module run's output folder, the **reader** that loads it and
the **id schemes** its file number may follow. A path template is the
relative path with

- ``{number}``: the file number, which must follow one of ``ids`` (it is
  parsed into the data id: ``-244-252`` -> ``{"tile": "244.252"}``);
- ``{KEY}`` (upper or lower case letters): any text without ``/`` or ``.``,
  which becomes an extra data-id key (``{image}_vignet{number}.fits``);
- ``*``: any text without ``/`` (an option-dependent prefix, not a key).

Id schemes and readers are named objects registered through entry points,
so the core stays free of astronomy: ``shapepipe.id_schemes`` (an
:class:`IdScheme`) and ``shapepipe.readers`` (a :class:`Reader`). The
built-in ones live in ``shapepipe_modules`` (``cfis.py`` and ``io/readers.py``)
and are found even without installed entry-point metadata. Two schemes are
always known: ``number`` (any ShapePipe number, key ``number``) and, for
templates without ``{number}``, no key at all.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Callable

#: Entry-point groups of id schemes and readers.
ID_SCHEME_GROUP = "shapepipe.id_schemes"
READER_GROUP = "shapepipe.readers"
#: Modules holding the built-in schemes and readers (imported if no entry point names them).
_BUILTIN = ("shapepipe_modules.cfis", "shapepipe_modules.io.readers")

_KEY = re.compile(r"\{([A-Za-z][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: Suffixes of derived dataset names (``sexcat_filename``, ``sexcat_md``).
DERIVED = ("_filename", "_md")


@dataclass(frozen=True)
class IdScheme:
    """How a file number maps to data-id keys.

    Parameters
    ----------
    name : str
        Name used in :attr:`Product.ids`.
    keys : tuple of str
        Data-id keys, in order.
    regex : str
        Regular expression of the number as it appears in file names.
    parse : callable
        ``parse(number) -> dict`` (called on numbers matching ``regex``).
    format : callable
        ``format(**data_id) -> number``; accepts the values as a user types
        them (``"2113737"`` or ``2113737``) and raises ValueError otherwise.
    description : str
        One line for the dataset table.
    """

    name: str
    keys: tuple
    regex: str
    parse: Callable
    format: Callable
    description: str = ""

    def match(self, number: str) -> dict | None:
        """Data id of a number, or None if it does not follow this scheme."""
        if re.fullmatch(self.regex, number):
            return self.parse(number)
        return None


def _number_format(number):
    return str(number)


NUMBER_SCHEME = IdScheme("number", ("number",), r"[-_.]?[A-Za-z0-9][A-Za-z0-9_.\-]*",
                         lambda number: {"number": number}, _number_format,
                         "any ShapePipe file number, as written")


@dataclass(frozen=True)
class Reader:
    """Loads one storage form.

    Parameters
    ----------
    name : str
        Name used in :attr:`Product.reader`.
    read : callable
        ``read(path) -> object``, the product.
    metadata : callable
        ``metadata(path) -> object``: the header or a summary, without
        reading pixels or rows.
    storage : str
        What the file holds, for the dataset table.
    python_type : str
        Dotted name of the type ``read`` returns (``astropy.table.Table``).
    """

    name: str
    read: Callable
    metadata: Callable
    storage: str
    python_type: str


@dataclass(frozen=True)
class Product:
    """One kind of file a module writes.

    Parameters
    ----------
    dataset : str
        Dataset type name (lower case; ShapePipe's file prefix where it has one).
    path : str
        Template of the path relative to the module run's output folder
        (see the module docstring).
    reader : str or Reader
        Reader name (``shapepipe.readers`` entry point) or a reader.
    ids : tuple of str
        Id schemes the ``{number}`` may follow, tried in order.
    description : str
        One line for the dataset table.
    """

    dataset: str
    path: str
    reader: str | Reader
    ids: tuple = ()
    description: str = ""
    extra_keys: tuple = field(init=False, compare=False)

    def __post_init__(self):
        if not _NAME.match(self.dataset) or self.dataset.endswith(DERIVED):
            raise ValueError(f"dataset name {self.dataset!r}: lower-case letters, digits and '_', "
                             f"not ending in {' or '.join(DERIVED)}")
        has_number = "{number}" in self.path
        if has_number != bool(self.ids):
            raise ValueError(f"dataset {self.dataset}: a path with {{number}} needs ids, and ids need "
                             f"{{number}} in the path ({self.path!r})")
        if isinstance(self.ids, str):
            object.__setattr__(self, "ids", (self.ids,))
        extra = []
        for key in _KEY.findall(self.path):
            if key != "number":
                if key in extra:
                    raise ValueError(f"dataset {self.dataset}: key {{{key}}} twice in {self.path!r}")
                extra.append(key)
        object.__setattr__(self, "extra_keys", tuple(extra))

    def regex(self, schemes: dict) -> re.Pattern:
        """The expression of this product's relative paths (numbers as the schemes write them)."""
        parts, position = [], 0
        numbers = "|".join(f"(?:{schemes[name].regex})" for name in self.ids)
        for match in re.finditer(r"\{([A-Za-z][A-Za-z0-9_]*)\}|\*", self.path):
            parts.append(re.escape(self.path[position:match.start()]))
            key = match.group(1)
            if match.group(0) == "*":
                parts.append(r"[^/]*?")
            elif key == "number":
                parts.append(f"(?P<number>{numbers})")
            else:
                parts.append(rf"(?P<{key}>[^/.]+?)")
            position = match.end()
        parts.append(re.escape(self.path[position:]))
        return re.compile("".join(parts))


@dataclass(frozen=True)
class DatasetType:
    """A dataset type of the table: a product and the module that writes it."""

    product: Product
    module: str
    module_version: str
    reader: Reader
    schemes: tuple  # of IdScheme, in the order of product.ids
    regex: re.Pattern = field(repr=False, compare=False)

    def match(self, relative: str) -> tuple[dict, str] | None:
        """``(data id, number)`` if ``relative`` is a file of this type, else None."""
        found = self.regex.fullmatch(relative)
        if found is None:
            return None
        groups = found.groupdict()
        number = groups.pop("number", None)
        data_id = {}
        if number is not None:
            for scheme in self.schemes:
                parsed = scheme.match(number)
                if parsed is not None:
                    data_id.update(parsed)
                    break
            else:
                return None
        data_id.update(groups)
        return data_id, number or ""

    @property
    def name(self) -> str:
        return self.product.dataset

    @property
    def key_sets(self) -> list[tuple]:
        """Every possible tuple of data-id keys (one per id scheme)."""
        extra = self.product.extra_keys
        if not self.schemes:
            return [extra]
        return [tuple(scheme.keys) + extra for scheme in self.schemes]

    @property
    def keys(self) -> tuple:
        """Every key any data id of this type may have."""
        seen = []
        for key_set in self.key_sets:
            seen += [k for k in key_set if k not in seen]
        return tuple(seen)

    def number_of(self, data_id: dict) -> tuple[str, dict] | None:
        """``(number, extra keys)`` of a data id given by a user, or None if it fits no scheme."""
        extra = {key: str(data_id[key]) for key in self.product.extra_keys if key in data_id}
        if len(extra) != len(self.product.extra_keys):
            return None
        rest = {k: v for k, v in data_id.items() if k not in self.product.extra_keys}
        if not self.schemes:
            return ("", extra) if not rest else None
        for scheme in self.schemes:
            if set(rest) == set(scheme.keys):
                try:
                    return str(scheme.format(**rest)), extra
                except (ValueError, TypeError):
                    return None
        return None


class UnknownDataset(LookupError):
    """A dataset type name nobody declares."""


def _entry_points(group: str):
    from importlib.metadata import entry_points

    try:
        return list(entry_points(group=group))
    except Exception:  # broken metadata of an unrelated distribution
        return []


_CACHE: dict[str, dict] = {}


def _load(group: str, kind: type) -> dict:
    if group in _CACHE:
        return _CACHE[group]
    found = {}
    for entry in _entry_points(group):
        value = entry.load()
        if isinstance(value, kind):
            found[value.name] = value
    # The built-in ones also without installed metadata (a source tree on sys.path).
    if True:
        for name in _BUILTIN:
            try:
                python_module = importlib.import_module(name)
            except ImportError:
                continue
            for value in vars(python_module).values():
                if isinstance(value, kind) and value.name not in found:
                    found[value.name] = value
    if kind is IdScheme:
        found.setdefault("number", NUMBER_SCHEME)
    _CACHE[group] = found
    return found


def id_schemes() -> dict[str, IdScheme]:
    """Every registered id scheme by name."""
    return _load(ID_SCHEME_GROUP, IdScheme)


def readers() -> dict[str, Reader]:
    """Every registered reader by name."""
    return _load(READER_GROUP, Reader)


class DatasetTable:
    """Every dataset type declared by the modules of a registry.

    Parameters
    ----------
    registry : shapepipe.module.Registry, optional
        Default: the built-in modules and entry points.

    Raises
    ------
    ValueError
        Two modules declare one dataset name, or a product names an
        unknown reader or id scheme.
    """

    def __init__(self, registry=None):
        from .module import default_registry

        registry = registry or default_registry()
        schemes, known_readers = id_schemes(), readers()
        self.types: dict[str, DatasetType] = {}
        self.by_module: dict[str, list[DatasetType]] = {}
        for spec in registry:
            for product in spec.products:
                reader = product.reader
                if isinstance(reader, str):
                    if reader not in known_readers:
                        raise ValueError(f"module {spec.name}, dataset {product.dataset}: unknown reader "
                                         f"{reader!r} (known: {', '.join(sorted(known_readers))})")
                    reader = known_readers[reader]
                missing = [name for name in product.ids if name not in schemes]
                if missing:
                    raise ValueError(f"module {spec.name}, dataset {product.dataset}: unknown id scheme(s) "
                                     f"{', '.join(missing)} (known: {', '.join(sorted(schemes))})")
                if product.dataset in self.types:
                    other = self.types[product.dataset].module
                    raise ValueError(f"dataset {product.dataset} declared by modules {other} and {spec.name}")
                dataset = DatasetType(product, spec.name, spec.version, reader,
                                      tuple(schemes[name] for name in product.ids), product.regex(schemes))
                self.types[product.dataset] = dataset
                self.by_module.setdefault(spec.name, []).append(dataset)
        self._schemes = schemes

    def names(self) -> list[str]:
        """Dataset type names, sorted."""
        return sorted(self.types)

    def get(self, name: str) -> DatasetType:
        """The dataset type of a name (without ``_filename``/``_md``).

        Raises
        ------
        UnknownDataset
            With close matches.
        """
        if name in self.types:
            return self.types[name]
        import difflib

        close = difflib.get_close_matches(name, list(self.types), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownDataset(f"unknown dataset type {name!r}{hint}")

    def classify(self, module: str, relative: str):
        """``(dataset type, data id, number)`` of an output file of a module, or None."""
        for dataset in self.by_module.get(module, ()):
            found = dataset.match(relative)
            if found is not None:
                return dataset, found[0], found[1]
        return None

    def markdown(self) -> list[str]:
        """The dataset table as Markdown lines."""
        lines = ["| dataset type | data-id keys | module | file | reader | storage | Python type | what |",
                 "|---|---|---|---|---|---|---|---|"]
        for name in self.names():
            dataset = self.types[name]
            keys = " or ".join(", ".join(k) if k else "(none)" for k in dataset.key_sets)
            reader = dataset.reader
            lines.append(f"| `{name}` | {keys} | {dataset.module} | `{dataset.product.path}` | {reader.name} "
                         f"| {reader.storage} | `{reader.python_type}` | {dataset.product.description} |")
        return lines

    def scheme_markdown(self) -> list[str]:
        """The id schemes as Markdown lines."""
        lines = ["| id scheme | keys | number in file names | meaning |", "|---|---|---|---|"]
        for name in sorted(self._schemes):
            scheme = self._schemes[name]
            lines.append(f"| `{name}` | {', '.join(scheme.keys)} | `{scheme.regex}` | {scheme.description} |")
        return lines
