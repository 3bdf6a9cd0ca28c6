"""Generate ``docs/config_reference.md`` from the declarations.

Usage: ``python -m shapepipe.docs [OUTPUT]`` (default ``docs/config_reference.md``).
The file lists the core sections, the keys every module section accepts and
every registered module with its options, so it never drifts from the code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .atomic import write_text_atomic
from .config import CORE_OPTIONS, MODULE_SECTION_OPTIONS
from .module import default_registry


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _packaged_name(path: str) -> str | None:
    """``package/relative/path`` of a file inside an imported top-level package
    (``shapepipe`` or the module packages), so defaults that point at packaged
    files read the same wherever the package is installed."""
    real = os.path.realpath(path)
    names = {name.split(".")[0] for name in sys.modules if name.startswith("shapepipe")}
    for name in sorted(names):
        for folder in getattr(sys.modules.get(name), "__path__", None) or []:
            folder = os.path.realpath(folder)
            if real.startswith(folder + os.sep):
                return f"{name}/{os.path.relpath(real, folder)}"
    return None


def _default(option) -> str:
    if option.required:
        return "**required**"
    if option.default is None or option.default == []:
        return "-"
    value = option.default
    if isinstance(value, str) and os.path.isabs(value):
        packaged = _packaged_name(value)
        if packaged:
            return f"`{packaged}` (installed with the package)"
    return f"`{value}`"


def _table(options) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for option in options:
        kind = option.type + (f" ({', '.join(map(str, option.choices))})" if option.choices else "")
        aliases = f" (also {', '.join(option.aliases)})" if option.aliases else ""
        lines.append(f"| `{option.name}`{aliases} | {kind} | {_default(option)} | {_cell(option.help)} |")
    return lines


def config_reference(registry=None) -> str:
    """Markdown text of the configuration reference."""
    registry = registry or default_registry()
    out = [
        "# Configuration reference",
        "",
        "Generated from the declarations by `python -m shapepipe.docs`; do not edit by hand.",
        "",
        "Values may use `$VAR` and `${VAR}` (environment variables). Keys of `[DEFAULT]` are defaults "
        "for every section. Directory values accept `last:MODULE`, `last:MODULE_RUN_N`, `all:MODULE` "
        "and `run:RUN_NAME:MODULE`.",
        "",
    ]
    for section, options in CORE_OPTIONS.items():
        out += [f"## [{section}]", ""] + _table(options) + [""]
    out += [
        "## Keys of every module section",
        "",
        "A module section is `[NAME]` (ShapePipe's `[NAME_RUNNER]` too) or, for a module listed several "
        "times, `[NAME_RUN_N]`, which falls back to `[NAME]` for keys it does not set. Precedence: module "
        "section, then `[FILE]`, then the module declaration.",
        "",
    ] + _table(MODULE_SECTION_OPTIONS) + [""]
    out += ["## Modules", ""]
    for spec in registry:
        out += [f"### {spec.name} {spec.version}", "", spec.description, ""]
        facts = [
            ("run method", spec.run_method),
            ("also accepted as", ", ".join(spec.aliases) or "-"),
            ("input modules", ", ".join(spec.input_modules) or "-"),
            ("inputs", ", ".join(f"`{p}<number>{e}`" for p, e in zip(spec.file_patterns, spec.file_exts)) or "-"),
            ("numbering scheme", f"`{spec.numbering_scheme}`" if spec.numbering_scheme else "-"),
            ("Python packages", ", ".join(spec.depends) or "-"),
            ("executables", ", ".join(spec.executes) or "-"),
            ("dataset types", ", ".join(f"`{p.dataset}`" for p in spec.products) or "-"),
        ]
        out += [f"- {name}: {value}" for name, value in facts] + [""]
        out += (_table(spec.options) if spec.options else ["No module-specific option."]) + [""]
    for source, error in registry.load_errors.items():
        out += [f"(Module file {source} could not be imported: {_cell(error)})", ""]
    out += _datasets(registry)
    return "\n".join(out)


def _datasets(registry) -> list[str]:
    """The dataset table of the data butler (``shapepipe.Repository``, docs/butler.md)."""
    from .datasets import DatasetTable

    table = DatasetTable(registry)
    return [
        "## Datasets",
        "",
        "What the modules write, by name (declared with `products=` in `@module`), for "
        "`shapepipe.Repository`, `shapepipe_datasets` and `shapepipe_butler` (docs/butler.md). "
        "`repo.get(TYPE, **data_id)` reads a product, `TYPE_filename` gives its path and `TYPE_md` "
        "its header or summary. In a file template, `{number}` is the file number (parsed into the "
        "data-id keys by the id schemes below), `{key}` an extra data-id key and `*` any prefix.",
        "",
    ] + table.markdown() + ["", "### Id schemes", ""] + table.scheme_markdown() + [""]


def main(argv=None) -> int:
    """Write the reference to the given path (default docs/config_reference.md)."""
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else Path("docs") / "config_reference.md"
    write_text_atomic(target, config_reference())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
