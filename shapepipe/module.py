"""Module declarations and the module registry.

A pipeline module is a function that processes one job, declared once with
:func:`module`::

    from shapepipe.module import module
    from shapepipe.options import Option

    @module(
        name="python_example",
        version="1.1",
        description="Concatenate a number file and a letter file.",
        aliases=("python_example_runner",),
        file_pattern=("numbers", "letters"),
        file_ext=(".txt", ".txt"),
        numbering_scheme="_0",
        options=(Option("MESSAGE", "str", "", "Text written before the content."),),
    )
    def python_example(job):
        ...

The declaration is everything the runner needs to validate a configuration,
resolve inputs, check dependencies and document the module; the function
receives a :class:`shapepipe.job.Job` and writes its outputs into
``job.output_dir``.

Built-in modules live in the ``shapepipe_modules`` package, one sub-package
per module with a ``runner.py`` that holds the declaration. Users add
modules with ``[EXECUTION] MODULE_DIR`` (folders of Python files or
packages) or with the ``shapepipe.modules`` entry-point group. Runner files
must import heavy libraries inside the job function, so that listing modules
stays fast.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .options import Option, option_table

RUN_METHODS = ("parallel", "serial")


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def normalise_ext(ext: str) -> str:
    """Return a file extension with exactly one leading dot ('' stays '')."""
    ext = ext.strip()
    if not ext:
        return ""
    # ShapePipe wrote '.fitsfz' for '.fits.fz'; accept it as an alias.
    if ext.lstrip(".").lower() == "fitsfz":
        return ".fits.fz"
    return "." + ext.lstrip(".")


@dataclass(frozen=True)
class ModuleSpec:
    """Everything declared about one module.

    Attributes
    ----------
    name : str
        Canonical lower-case name used in ``[EXECUTION] MODULE``.
    version : str
        Module version, recorded in run records.
    run : callable
        ``run(job) -> dict | None``; the optional dict holds small
        JSON-serialisable numbers recorded in the job table.
    description : str
        One line for ``--list-modules``.
    input_modules : tuple of str
        Modules whose outputs are this module's default inputs.
    file_patterns, file_exts : tuple of str
        Input file name patterns and their extensions, pairwise.
    numbering_scheme : str or None
        Default numbering template (see :mod:`shapepipe.numbering`).
    run_method : {'parallel', 'serial'}
        One job per file number, or one job over all numbers.
    depends : tuple of str
        Importable Python packages the module needs.
    executes : tuple of str
        Executables the module runs.
    options : tuple of Option
        Module-specific configuration keys.
    aliases : tuple of str
        Other accepted names (ShapePipe's ``*_runner`` names).
    requirements : callable, optional
        ``requirements(options) -> (packages, executables)`` for needs that
        depend on configuration (an engine option, an EXEC_PATH).
    validate : callable, optional
        ``validate(options) -> list[str]``: cross-field problems, reported
        with the configuration errors before any job starts. ``options``
        maps option names to parsed values.
    preload : tuple of str
        Python modules a worker imports once before it forks a job (jobs with
        a ``[JOB] TIMEOUT`` each run in a forked child, which inherits them
        instead of importing them again). ``"package.module:function"`` also
        calls ``function()`` once, e.g. to start numba.
    products : tuple of shapepipe.datasets.Product
        What the module writes, by dataset type (see :mod:`shapepipe.datasets`);
        the data butler (:class:`shapepipe.Repository`) finds them by name.
    """

    name: str
    version: str
    run: Callable
    description: str = ""
    input_modules: tuple = ()
    file_patterns: tuple = ()
    file_exts: tuple = ()
    numbering_scheme: str | None = None
    run_method: str = "parallel"
    depends: tuple = ()
    executes: tuple = ()
    options: tuple = ()
    aliases: tuple = ()
    requirements: Callable | None = None
    validate: Callable | None = None
    preload: tuple = ()
    products: tuple = ()
    source: str = field(default="", compare=False)

    @property
    def option_table(self) -> dict[str, Option]:
        """Options indexed by every accepted (upper-case) name."""
        return option_table(self.options)

    def describe(self) -> str:
        """Multi-line help text for ``--describe``."""
        lines = [
            f"{self.name} {self.version}: {self.description}",
            f"  run method: {self.run_method}",
            f"  input modules: {', '.join(self.input_modules) or '-'}",
            "  file patterns: "
            + (", ".join(f"{p}*{e}" for p, e in zip(self.file_patterns, self.file_exts)) or "-"),
            f"  numbering scheme: {self.numbering_scheme or '-'}",
            f"  python packages: {', '.join(self.depends) or '-'}",
            f"  executables: {', '.join(self.executes) or '-'}",
        ]
        if self.aliases:
            lines.append(f"  also known as: {', '.join(self.aliases)}")
        if self.products:
            lines.append("  dataset types: " + ", ".join(f"{p.dataset} ({p.path})" for p in self.products))
        lines.append("  options:")
        if not self.options:
            lines.append("    (none)")
        for option in self.options:
            lines.append("    " + option.describe().replace("\n", "\n    "))
        return "\n".join(lines)


def module(
    *,
    name: str,
    version: str,
    description: str = "",
    input_module: Iterable[str] | str | None = None,
    file_pattern: Iterable[str] | str = (),
    file_ext: Iterable[str] | str = (),
    numbering_scheme: str | None = None,
    run_method: str = "parallel",
    depends: Iterable[str] | str = (),
    executes: Iterable[str] | str = (),
    options: Iterable[Option] = (),
    aliases: Iterable[str] | str = (),
    requirements: Callable | None = None,
    validate: Callable | None = None,
    preload: Iterable[str] | str = (),
    products: Iterable = (),
):
    """Declare a module; see :class:`ModuleSpec` for the meaning of each field.

    A single ``file_ext`` is applied to every pattern. The decorated function
    is returned unchanged, with the spec attached as ``.spec``, and the spec
    is added to the default registry when the defining file is imported.
    """
    patterns = _as_tuple(file_pattern)
    exts = tuple(normalise_ext(e) for e in _as_tuple(file_ext))
    if len(exts) == 1 and len(patterns) > 1:
        exts = exts * len(patterns)
    if len(exts) != len(patterns):
        raise ValueError(f"module {name}: {len(patterns)} file patterns but {len(exts)} extensions")
    if run_method not in RUN_METHODS:
        raise ValueError(f"module {name}: run_method must be one of {RUN_METHODS}")
    options = tuple(options)
    aliases = _alias_variants(name, aliases)
    names = [o.name.upper() for o in options]
    if len(set(names)) != len(names):
        raise ValueError(f"module {name}: duplicate option names")

    def decorate(function):
        spec = ModuleSpec(
            name=name.lower(),
            version=version,
            run=function,
            description=description or (function.__doc__ or "").strip().split("\n")[0],
            input_modules=tuple(m.lower() for m in _as_tuple(input_module)),
            file_patterns=patterns,
            file_exts=exts,
            numbering_scheme=numbering_scheme,
            run_method=run_method,
            depends=_as_tuple(depends),
            executes=_as_tuple(executes),
            options=options,
            aliases=aliases,
            requirements=requirements,
            validate=validate,
            preload=_as_tuple(preload),
            products=tuple(products),
            source=getattr(function, "__module__", ""),
        )
        function.spec = spec
        _DECLARED.append(spec)
        return function

    return decorate


def _alias_variants(name: str, aliases) -> tuple:
    """Declared aliases plus each name with and without ShapePipe's ``_runner`` suffix.

    ShapePipe's configs write ``make_cat_runner``, its documentation and users
    ``make_cat``: both spellings of every name are accepted.
    """
    out = []
    for item in (name, *_as_tuple(aliases)):
        item = item.lower()
        base = item[: -len("_runner")] if item.endswith("_runner") else item
        for variant in (base, f"{base}_runner"):
            if variant != name.lower() and variant not in out:
                out.append(variant)
    return tuple(out)


# Every spec declared by an imported file; registries pick theirs by source.
_DECLARED: list[ModuleSpec] = []


class Registry:
    """Known modules, indexed by name and alias (case-insensitive)."""

    def __init__(self):
        self._specs: dict[str, ModuleSpec] = {}
        self._names: dict[str, str] = {}
        # Module files that failed to import: {python module: error text}.
        # Reported only when a configuration uses a name they might define.
        self.load_errors: dict[str, str] = {}
        # Sections of modules ShapePipe configs hold but no module here runs:
        # {name: why}. Such a section is accepted with a note.
        self.retired: dict[str, str] = {}

    def add(self, spec: ModuleSpec) -> None:
        """Register a spec; a name clash with a different module is an error."""
        for key in (spec.name, *spec.aliases):
            owner = self._names.get(key)
            if owner is not None and self._specs[owner].source != spec.source:
                raise ValueError(
                    f"module name {key!r} declared twice: in {self._specs[owner].source} "
                    f"and in {spec.source}"
                )
            self._names[key] = spec.name
        self._specs[spec.name] = spec

    def get(self, name: str) -> ModuleSpec:
        """Return the spec of a module by name or alias.

        Raises
        ------
        KeyError
            With close-match suggestions when the name is unknown.
        """
        key = name.strip().lower()
        if key in self._names:
            return self._specs[self._names[key]]
        close = difflib.get_close_matches(key, list(self._names), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown module {name!r}{hint}")

    def canonical(self, name: str) -> str:
        """Canonical name of a module given by name or alias."""
        return self.get(name).name

    def __contains__(self, name: str) -> bool:
        return name.strip().lower() in self._names

    def __iter__(self):
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def names(self) -> list[str]:
        """Every accepted name and alias."""
        return sorted(self._names)

    def _collect(self, sources) -> None:
        sources = set(sources)
        for spec in _DECLARED:
            if spec.source in sources:
                self.add(spec)

    def load_builtin(self) -> None:
        """Import every ``shapepipe_modules.<name>.runner``."""
        try:
            package = importlib.import_module("shapepipe_modules")
        except ImportError:
            return
        for retired, why in getattr(package, "RETIRED_SECTIONS", {}).items():
            self.retired[retired.lower()] = why
            self.retired[f"{retired.lower()}_runner"] = why
        sources = []
        for info in pkgutil.iter_modules(package.__path__):
            if not info.ispkg:
                continue
            runner = f"shapepipe_modules.{info.name}.runner"
            # Look for the runner file without importing the package: find_spec of a submodule
            # imports its package, and some (simulate: galsim, astropy) cost a second to import.
            folder = getattr(info.module_finder, "path", None)
            if folder is not None and not any(
                    (Path(folder) / info.name / name).exists() for name in ("runner.py", "runner")):
                continue
            try:
                if folder is None and importlib.util.find_spec(runner) is None:
                    continue
                importlib.import_module(runner)
            except Exception as error:  # one broken module must not hide the others
                self.load_errors[runner] = f"{type(error).__name__}: {error}"
                continue
            sources.append(runner)
        self._collect(sources)

    def load_directory(self, directory: str | Path) -> None:
        """Import user module files from a folder (``[EXECUTION] MODULE_DIR``).

        Every ``*.py`` file and every package with a ``runner.py`` in the
        folder is imported; their ``@module`` declarations are registered.
        """
        directory = Path(directory).resolve()
        if not directory.is_dir():
            raise FileNotFoundError(f"module directory {directory} does not exist")
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
        sources = []
        for path in sorted(directory.iterdir()):
            if path.suffix == ".py" and path.stem != "__init__":
                sources.append(path.stem)
            elif path.is_dir() and (path / "runner.py").exists():
                sources.append(f"{path.name}.runner")
        for source in sources:
            importlib.import_module(source)
        self._collect(sources)

    def load_entry_points(self) -> None:
        """Import modules advertised in the ``shapepipe.modules`` entry-point group."""
        from importlib.metadata import entry_points

        sources = []
        for entry in entry_points(group="shapepipe.modules"):
            loaded = entry.load()
            sources.append(getattr(loaded, "__name__", entry.module))
            sources.append(entry.module)
        self._collect(sources)


def default_registry(module_dirs: Iterable[str | Path] = ()) -> Registry:
    """Registry with the built-in modules, entry points and the given folders."""
    registry = Registry()
    registry.load_builtin()
    registry.load_entry_points()
    for directory in module_dirs:
        registry.load_directory(directory)
    return registry
