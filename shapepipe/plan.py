"""Validation of a configuration into a run plan, before any job starts.

:func:`build_plan` reads the ``.ini`` file, checks every section and key
against the declarations (core options, generic module keys, each module's
options), parses every value to its type, resolves run references against
the run records, checks input folders and finds the input files of the
module runs whose inputs already exist. Every problem is collected and
raised at once in one :class:`~shapepipe.errors.ConfigError`.

Precedence of a module-run value: ``[NAME_RUN_N]``, then ``[NAME]``, then
``[FILE]`` (for the generic file keys), then the module declaration;
``[DEFAULT]`` applies last to module-specific options, as in configparser.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from .config import (
    CORE_OPTIONS,
    CORE_SECTIONS,
    MODULE_SECTION_OPTIONS,
    MODULE_SECTION_TABLE,
    IniFile,
    parse_value,
    read_ini,
)
from .errors import ConfigError, DependencyError, ReferenceError_
from .module import ModuleSpec, Registry, default_registry, normalise_ext
from .numbering import compile_scheme, discover, read_number_list, Discovery
from .options import REQUIRED, Option, option_table
from .records import Reference, parse_reference, resolve_reference, scan_runs, split_module_run


@dataclass
class ModuleRun:
    """One entry of ``[EXECUTION] MODULE``, fully configured."""

    name: str  # 'python_example' or 'python_example_run_2'
    spec: ModuleSpec
    index: int | None
    position: int
    sections: list  # sections read, most specific first (upper case, present in the file)
    options: dict = field(default_factory=dict)  # module-specific, parsed
    option_refs: dict = field(default_factory=dict)  # {KEY: [raw dir items]} for dir options
    patterns: list = field(default_factory=list)
    exts: list = field(default_factory=list)
    scheme: str = ""
    numbers: list | None = None  # NUMBER_LIST (None: every number found)
    run_method: str = "parallel"
    input_dir_items: list | None = None  # INPUT_DIR of the module section
    input_dir_where: str = ""
    input_modules: list = field(default_factory=list)
    input_modules_explicit: bool = False
    add_input_dirs: list = field(default_factory=list)
    packages: list = field(default_factory=list)
    executables: list = field(default_factory=list)
    discovery: Discovery | None = None  # inputs found at plan time (None: produced in this run)
    keep: bool = True  # KEEP: outputs kept after the run succeeded


@dataclass
class Plan:
    """A validated configuration."""

    ini: IniFile
    config_path: Path
    registry: Registry
    core: dict  # {SECTION: {KEY: value}}
    module_runs: list
    output_dir: Path
    records: list  # previous run records
    notes: list = field(default_factory=list)
    file_input_items: list = field(default_factory=list)
    module_dirs: tuple = ()
    exclusive: str | None = None
    selection: object = None  # shapepipe.selection.Selection of the command line, if any

    @property
    def run_name(self) -> str:
        return self.core["DEFAULT"]["RUN_NAME"]


def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word.upper(), [c.upper() for c in candidates], n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _module_runs_from_list(names, registry, ini, problems):
    where = ini.where("EXECUTION", "MODULE")
    specs = []
    for name in names:
        try:
            specs.append(registry.get(name))
        except KeyError as error:
            message = error.args[0]
            broken = [f"{src} ({text})" for src, text in registry.load_errors.items()]
            if broken:
                message += "; these module files failed to import: " + "; ".join(broken)
            problems.append(f"{where}: {message}")
            specs.append(None)
    counts: dict[str, int] = {}
    for spec in specs:
        if spec is not None:
            counts[spec.name] = counts.get(spec.name, 0) + 1
    seen: dict[str, int] = {}
    runs = []
    for position, spec in enumerate(specs):
        if spec is None:
            continue
        seen[spec.name] = seen.get(spec.name, 0) + 1
        index = seen[spec.name] if counts[spec.name] > 1 else None
        name = f"{spec.name}_run_{index}" if index else spec.name
        runs.append(ModuleRun(name=name, spec=spec, index=index, position=position, sections=[]))
    return runs


def _map_sections(ini, registry, runs, problems, notes):
    """Attach module sections to module runs; report unknown sections."""
    by_module: dict[str, list[ModuleRun]] = {}
    for run in runs:
        by_module.setdefault(run.spec.name, []).append(run)
    claimed: dict[tuple, str] = {}
    unused = []
    for section in ini.sections:
        if section in CORE_SECTIONS:
            continue
        base, index = split_module_run(section)
        spec = None
        if base in registry:
            spec = registry.get(base)
        elif section.lower() in registry:
            spec, index = registry.get(section.lower()), None
        if spec is None and (base.lower() in registry.retired or section.lower() in registry.retired):
            name = base.lower() if base.lower() in registry.retired else section.lower()
            notes.append(f"warning: section [{ini.spelling[section]}] is not read: {name} is no module here "
                         f"({registry.retired[name]})")
            continue
        if spec is None:
            choices = list(CORE_SECTIONS) + [n.upper() for n in registry.names()]
            problems.append(f"{ini.where(section)}: unknown section{_suggest(base, choices)}")
            continue
        module_runs = by_module.get(spec.name, [])
        if not module_runs:
            notes.append(f"section [{ini.spelling[section]}] is not used: module {spec.name} is not in "
                         "[EXECUTION] MODULE")
            unused.append((section, spec))
            continue
        if index is not None:
            if len(module_runs) == 1:
                problems.append(f"{ini.where(section)}: module {spec.name} runs once in [EXECUTION] MODULE; "
                                f"its section is [{spec.name.upper()}] (a _RUN_N suffix needs several runs)")
                continue
            if index > len(module_runs) or index < 1:
                problems.append(f"{ini.where(section)}: module {spec.name} runs {len(module_runs)} times; "
                                f"there is no run {index}")
                continue
            key = (spec.name, index)
        else:
            key = (spec.name, None)
        if key in claimed:
            problems.append(f"{ini.where(section)}: same module run as section [{ini.spelling[claimed[key]]}]")
            continue
        claimed[key] = section
    for run in runs:
        chain = []
        if run.index is not None and (run.spec.name, run.index) in claimed:
            chain.append(claimed[(run.spec.name, run.index)])
        if (run.spec.name, None) in claimed:
            chain.append(claimed[(run.spec.name, None)])
        run.sections = chain
    return unused


def _check_keys(ini, section, table, problems):
    for key in ini.sections[section]:
        if key not in table:
            problems.append(f"{ini.where(section, key)}: unknown key{_suggest(key, table)}")


def _parse_core(ini, problems, module_tables):
    core = {}
    for section, options in CORE_OPTIONS.items():
        table = option_table(options)
        if section in ini.sections and section != "DEFAULT":
            _check_keys(ini, section, table, problems)
        values = {}
        for option in options:
            text, found_in = ini.lookup([section], option.name.upper())
            if text is None:
                for alias in option.aliases:
                    text, found_in = ini.lookup([section], alias.upper())
                    if text is not None:
                        break
            if text is None:
                if option.required:
                    problems.append(f"{ini.where(section, option.name)}: required key is missing")
                values[option.name] = None if option.required else option.default
                continue
            values[option.name] = parse_value(option, text, ini.where(found_in, option.name), problems)
        core[section] = values
    if "DEFAULT" in ini.sections:
        accepted = set()
        for options in CORE_OPTIONS.values():
            accepted.update(option_table(options))
        for table in module_tables:
            accepted.update(table)
        for key in ini.sections["DEFAULT"]:
            if key not in accepted:
                problems.append(f"{ini.where('DEFAULT', key)}: unknown key{_suggest(key, accepted)}")
    return core


def _unwritable(folder: Path) -> str:
    """Why no run folder can be made in ``folder`` (empty if one can); writes nothing lasting."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return ""  # reported elsewhere (a file in the way)
    probe = existing / f".shapepipe_write_test.{os.getpid()}"
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as error:
        return f"cannot write in {existing} ({error.strerror}); nothing was run"
    return ""


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _bare_module_as_reference(item: str, registry) -> str:
    """ShapePipe names module runs bare in directory options (``ME_DOT_PSF_DIR =
    psfex_runner``): a value that is no existing path but a module name, with an
    optional ``_run_N``, means ``last:NAME``."""
    if ":" in item or os.path.exists(_absolute(item)):
        return item
    base, _ = split_module_run(item)
    if base in registry or item in registry:
        return f"last:{item}"
    return item


def _check_plain_dir(item, where, problems):
    path = _absolute(item)
    if not os.path.isdir(path):
        problems.append(f"{where}: directory {item} does not exist")
    return path


def _earlier_runs(runs, before: ModuleRun, name: str, registry):
    """Module runs of this run, before ``before``, matching ``name`` (NAME or NAME_RUN_N)."""
    base, index = split_module_run(name)
    try:
        canonical = registry.canonical(base)
    except KeyError:
        canonical, index = registry.canonical(name), None
    matches = [r for r in runs if r.position < before.position and r.spec.name == canonical]
    if index is not None:
        matches = [r for r in matches if r.index == index or (index == 1 and r.index is None)]
    return canonical, index, matches


def _check_reference_item(item, where, plan_ctx, before, problems):
    """Validate one dir item: a path, or a reference resolvable now or later in this run."""
    registry, runs, records, output_dir = plan_ctx
    try:
        reference = parse_reference(item, registry.canonical)
    except KeyError as error:
        problems.append(f"{where}: {error.args[0]}")
        return
    if reference is None:
        _check_plain_dir(item, where, problems)
        return
    if reference.kind != "run":
        earlier = [r for r in runs if r.position < before.position and r.spec.name == reference.module
                   and (reference.index is None or r.index == reference.index
                        or (reference.index == 1 and r.index is None))]
        if earlier:
            return  # produced earlier in this run; resolved when the module starts
    try:
        resolve_reference(reference, records, output_dir)
    except ReferenceError_ as error:
        problems.append(f"{where}: {error}")


def _gather_generic(ini, run, problems):
    values = {}
    for option in MODULE_SECTION_OPTIONS:
        text, found_in = ini.lookup(run.sections, option.name, use_default=False)
        if text is not None:
            values[option.name] = (parse_value(option, text, ini.where(found_in, option.name), problems),
                                   ini.where(found_in, option.name))
    return values


def _configure_run(ini, run, core, registry, runs, records, output_dir, exclusive, problems, notes):
    spec = run.spec
    table = spec.option_table
    for section in run.sections:
        for key in ini.sections[section]:
            if key not in table and key not in MODULE_SECTION_TABLE:
                problems.append(f"{ini.where(section, key)}: unknown key for module {spec.name}"
                                f"{_suggest(key, list(table) + list(MODULE_SECTION_TABLE))}")
    ctx = (registry, runs, records, output_dir)
    problems_before = len(problems)
    where_default = f"{ini.path.name}: [{(run.sections or [run.name.upper()])[0]}]"
    # Module-specific options.
    for option in spec.options:
        text, found_in = None, None
        for key in (option.name.upper(), *[a.upper() for a in option.aliases]):
            text, found_in = ini.lookup(run.sections, key)
            if text is not None:
                break
        if text is None:
            if option.required:
                problems.append(f"{where_default} {option.name}: required key of module {spec.name} is missing")
            run.options[option.name] = None if option.required else option.default
            continue
        where = ini.where(found_in, option.name)
        value = parse_value(option, text, where, problems)
        if option.ignored and found_in != "DEFAULT":
            notes.append(f"warning: {where} is a ShapePipe key with no effect here ({option.help})")
        if value is None:
            run.options[option.name] = None
            continue
        if option.is_directory:
            items = value if option.type == "dir_list" else [value]
            items = [_bare_module_as_reference(item, registry) for item in items]
            for item in items:
                if option.type == "store" and os.path.isfile(_absolute(item)):
                    continue
                if option.type == "store" and os.path.isdir(_absolute(item)):
                    if not os.path.isfile(os.path.join(_absolute(item), option.file_name)):
                        problems.append(f"{where}: folder {item} holds no {option.file_name}")
                    continue
                if option.type == "store" and ":" not in item:
                    problems.append(f"{where}: file {item} does not exist")
                    continue
                _check_reference_item(item, where, ctx, run, problems)
            run.option_refs[option.name] = (list(items), where)
        elif option.type == "file":
            path = _absolute(value)
            if not os.path.isfile(path):
                problems.append(f"{where}: file {value} does not exist")
            value = path
        elif option.type == "path":
            value = _absolute(value)
        run.options[option.name] = value
    # Cross-field checks only on options that parsed cleanly (no repeated messages).
    options_clean = len(problems) == problems_before
    if spec.validate is not None and options_clean:
        for problem in spec.validate(dict(run.options)) or []:
            problems.append(f"{where_default}: {problem}")

    generic = _gather_generic(ini, run, problems)
    file_core = core["FILE"]

    def pick(key, declared):
        if key in generic:
            return generic[key][0], generic[key][1]
        if file_core.get(key) is not None:
            return file_core[key], ini.where("FILE", key)
        return declared, f"module {spec.name} declaration"

    patterns, pattern_where = pick("FILE_PATTERN", list(spec.file_patterns))
    exts, ext_where = pick("FILE_EXT", list(spec.file_exts))
    patterns = list(patterns or []) + list(generic.get("ADD_FILE_PATTERN", ([], ""))[0] or [])
    exts = [normalise_ext(e) for e in (exts or [])] + [
        normalise_ext(e) for e in (generic.get("ADD_FILE_EXT", ([], ""))[0] or [])
    ]
    if len(exts) == 1 and len(patterns) > 1:
        exts = exts * len(patterns)
    if len(exts) != len(patterns):
        problems.append(f"{ini.path.name}: module run {run.name}: {len(patterns)} file patterns "
                        f"(from {pattern_where}) but {len(exts)} extensions (from {ext_where})")
    run.patterns, run.exts = patterns, exts

    scheme, scheme_where = pick("NUMBERING_SCHEME", spec.numbering_scheme)
    if scheme is None:
        scheme = r"RE:_\d+"  # ShapePipe's default
    try:
        compile_scheme(scheme)
    except ValueError as error:
        problems.append(f"{scheme_where}: {error}")
        scheme = None
    run.scheme = scheme
    numbers, numbers_where = pick("NUMBER_LIST", None)
    if numbers is not None and scheme is not None:
        try:
            run.numbers = read_number_list(numbers, scheme, numbers_where)
        except ConfigError as error:
            problems.extend(error.problems)
    if exclusive is not None:  # the command line's selection (-e, --numbers, --array-index)
        chosen = set(exclusive)
        run.numbers = [n for n in (exclusive if run.numbers is None else run.numbers) if n in chosen]
    keep = generic.get("KEEP", (None, ""))[0]
    run.keep = True if keep is None else bool(keep)
    method = generic.get("RUN_METHOD", (None, ""))[0]
    run.run_method = method or spec.run_method

    if "INPUT_DIR" in generic and generic["INPUT_DIR"][0] is not None:
        run.input_dir_items, run.input_dir_where = generic["INPUT_DIR"]
        for item in run.input_dir_items:
            _check_reference_item(item, run.input_dir_where, ctx, run, problems)
    if "INPUT_MODULE" in generic and generic["INPUT_MODULE"][0] is not None:
        # 'last:NAME' (written in ShapePipe's configs) means NAME: an input module not run
        # earlier in this run is taken from its last successful run anyway.
        run.input_modules = [m[len("last:"):] if m.lower().startswith("last:") else m
                             for m in generic["INPUT_MODULE"][0]]
        run.input_modules_explicit = True
    else:
        run.input_modules = list(spec.input_modules)
    extra_modules = generic.get("ADD_INPUT_MODULE", (None, ""))[0]
    if extra_modules:
        run.input_modules += list(extra_modules)
        run.input_modules_explicit = True
    for name in run.input_modules:
        where = generic.get("INPUT_MODULE", (None, f"module {spec.name} declaration"))[1]
        try:
            _, _, earlier = _earlier_runs(runs, run, name, registry)
        except KeyError as error:
            problems.append(f"{where}: {error.args[0]}")
            continue
        if not earlier and run.input_modules_explicit and run.input_dir_items is None:
            _check_reference_item(f"last:{name}", where, ctx, run, problems)
    add_dirs = generic.get("ADD_INPUT_DIR", (None, ""))
    if add_dirs[0]:
        run.add_input_dirs = list(add_dirs[0])
        for item in run.add_input_dirs:
            _check_reference_item(item, add_dirs[1], ctx, run, problems)

    packages = list(spec.depends)
    executables = list(spec.executes)
    for key in ("DEPENDS", "ADD_DEPENDS"):
        packages += list(generic.get(key, (None, ""))[0] or [])
    for key in ("EXECUTES", "ADD_EXECUTES"):
        executables += list(generic.get(key, (None, ""))[0] or [])
    # Options may default to None (unset); only a parse failure keeps the requirements from being asked.
    if spec.requirements is not None and options_clean:
        try:
            more_packages, more_executables = spec.requirements(dict(run.options))
            packages += list(more_packages)
            executables += list(more_executables)
        except Exception as error:  # a declaration bug must not hide config problems
            problems.append(f"{where_default}: module {spec.name} could not list its requirements: {error}")
    run.packages = list(dict.fromkeys(packages))
    run.executables = list(dict.fromkeys(executables))


def input_sources(run: ModuleRun, runs, registry, file_items):
    """Where a module run reads: a list of ('item', text) and ('run', ModuleRun).

    Module-section INPUT_DIR wins; otherwise the outputs of its input modules
    that ran earlier in this run (explicit INPUT_MODULE entries that did not
    are taken as ``last:NAME``); otherwise ``[FILE] INPUT_DIR``. ADD_INPUT_DIR
    is always added.
    """
    sources = []
    if run.input_dir_items is not None:
        sources = [("item", item) for item in run.input_dir_items]
    else:
        for name in run.input_modules:
            try:
                _, _, earlier = _earlier_runs(runs, run, name, registry)
            except KeyError:  # a declared input module that is not installed cannot have run
                earlier = []
            if earlier:
                sources.append(("run", earlier[-1]))
            elif run.input_modules_explicit:
                sources.append(("item", f"last:{name}"))
        if not sources:
            sources = [("item", item) for item in file_items]
    sources += [("item", item) for item in run.add_input_dirs]
    return sources


def check_dependencies(runs) -> list[str]:
    """Missing packages and executables of the configured module runs, with install hints."""
    missing = []
    hints = {"sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml", "cv2": "opencv-python"}
    exec_hints = {"source-extractor": "apt-get install source-extractor", "sex": "apt-get install source-extractor",
                  "psfex": "apt-get install psfex"}
    seen = set()
    for run in runs:
        for package in run.packages:
            name = re.split(r"[<>=!~\[ ]", package.strip(), maxsplit=1)[0]
            if (name, "p") in seen:
                continue
            seen.add((name, "p"))
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(f"module {run.spec.name}: Python package {name} is not installed "
                               f"(install it with: pip install {hints.get(name, name)})")
        for executable in run.executables:
            if (executable, "e") in seen:
                continue
            seen.add((executable, "e"))
            if os.sep in executable:
                ok = os.path.isfile(executable) and os.access(executable, os.X_OK)
            else:
                ok = shutil.which(executable) is not None
            if not ok:
                hint = exec_hints.get(os.path.basename(executable), f"install {executable} and put it on PATH")
                missing.append(f"module {run.spec.name}: executable {executable} not found ({hint})")
    return missing


def build_plan(config_path, exclusive: str | None = None, registry: Registry | None = None,
               selection=None) -> Plan:
    """Read and validate a configuration.

    ``exclusive`` (``-e NUMBER``) or ``selection`` (a
    :class:`~shapepipe.selection.Selection`) restrict every module run to
    the chosen file numbers.

    Raises
    ------
    ConfigError
        Listing every problem found.
    DependencyError
        If the configuration is valid but packages or executables are missing.
    """
    config_path = Path(config_path)
    ini = read_ini(config_path)
    problems: list[str] = []
    notes: list[str] = []

    # MODULE_DIR first: it decides which modules (and keys) exist.
    module_dirs = []
    text, found_in = ini.lookup(["EXECUTION"], "MODULE_DIR")
    if text is not None:
        option = option_table(CORE_OPTIONS["EXECUTION"])["MODULE_DIR"]
        for item in parse_value(option, text, ini.where(found_in, "MODULE_DIR"), problems) or []:
            module_dirs.append(_check_plain_dir(item, ini.where(found_in, "MODULE_DIR"), problems))
    if registry is None:
        registry = default_registry()
        for directory in module_dirs:
            if os.path.isdir(directory):
                try:
                    registry.load_directory(directory)
                except Exception as error:
                    problems.append(f"{ini.where('EXECUTION', 'MODULE_DIR')}: cannot import the modules of "
                                    f"{directory}: {type(error).__name__}: {error}")

    module_names = []
    text, _ = ini.lookup(["EXECUTION"], "MODULE")
    if text is not None:
        option = option_table(CORE_OPTIONS["EXECUTION"])["MODULE"]
        module_names = parse_value(option, text, ini.where("EXECUTION", "MODULE"), []) or []
    runs = _module_runs_from_list(module_names, registry, ini, problems)
    unused = _map_sections(ini, registry, runs, problems, notes)
    for section, spec in unused:
        _check_keys(ini, section, {**spec.option_table, **MODULE_SECTION_TABLE}, problems)
    core = _parse_core(ini, problems, [r.spec.option_table for r in runs])
    if text is not None and not module_names:
        problems.append(f"{ini.where('EXECUTION', 'MODULE')}: no module given")

    execution, job = core["EXECUTION"], core["JOB"]
    if selection is None and exclusive is not None:
        from .selection import Selection

        selection = Selection(numbers=[exclusive], source="-e")
    chosen = list(selection.numbers) if selection is not None else None
    if (execution.get("MODE") or "").upper() == "MPI":
        from .cluster.mpi_executor import mpi_launcher_detected

        if not mpi_launcher_detected():
            notes.append("[EXECUTION] MODE = MPI but no MPI launcher started this process: jobs run with SMP "
                         "(launch with: mpirun -np N python -m mpi4py.futures -m shapepipe.cli -c CONFIG)")
        else:
            from .cluster.mpi_executor import launch_problem

            problem = launch_problem()
            if problem:
                problems.append(f"{ini.where('EXECUTION', 'MODE')}: {problem}")
    if core["WORKER"].get("PROCESS_PRINT_LIMIT") not in (None, 200):
        notes.append("[WORKER] PROCESS_PRINT_LIMIT is ignored: job output goes to the job logs in full")
    if job.get("SMP_BATCH_SIZE") is not None and job["SMP_BATCH_SIZE"] < 1:
        problems.append(f"{ini.where('JOB', 'SMP_BATCH_SIZE')}: must be at least 1")

    output_dir = Path(_absolute(core["FILE"]["OUTPUT_DIR"])) if core["FILE"].get("OUTPUT_DIR") else None
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        problems.append(f"{ini.where('FILE', 'OUTPUT_DIR')}: {output_dir} exists and is not a directory")
    elif output_dir is not None:
        problem = _unwritable(output_dir)
        if problem:
            problems.append(f"{ini.where('FILE', 'OUTPUT_DIR')}: {problem}")
    records = scan_runs(output_dir) if output_dir is not None else []

    file_items = core["FILE"].get("INPUT_DIR") or []
    for run in runs:
        _configure_run(ini, run, core, registry, runs, records, output_dir, chosen, problems, notes)
    if chosen is not None and runs:
        schemes = [compile_scheme(r.scheme).fullmatch for r in runs if r.scheme is not None]
        strangers = [n for n in chosen if schemes and not any(fits(n) for fits in schemes)]
        if strangers:
            problems.append(f"{selection.source}: {len(strangers)} selected number(s) fit no module's numbering "
                            "scheme: " + ", ".join(strangers[:5]))
    # [FILE] INPUT_DIR is checked only if some module run reads it.
    readers = [r for r in runs if any(src == ("item", i) for i in file_items
                                      for src in input_sources(r, runs, registry, file_items))]
    for item in file_items:
        if readers:
            _check_reference_item(item, ini.where("FILE", "INPUT_DIR"), (registry, runs, records, output_dir),
                                  readers[0], problems)
    for run in runs:
        if not input_sources(run, runs, registry, file_items) and (run.patterns or run.run_method == "parallel") \
                and not (run.numbers is not None and not run.patterns):
            problems.append(f"{ini.path.name}: module run {run.name} has no input directory: set INPUT_DIR in "
                            f"[FILE] or [{run.name.upper()}], or INPUT_MODULE")
        if run.run_method == "parallel" and not run.patterns and run.numbers is None:
            problems.append(f"{ini.path.name}: module run {run.name} has no file pattern: set FILE_PATTERN "
                            "or give the numbers to process in NUMBER_LIST")

    plan = Plan(ini=ini, config_path=config_path, registry=registry, core=core, module_runs=runs,
                output_dir=output_dir, records=records, notes=notes, file_input_items=file_items,
                module_dirs=tuple(module_dirs), exclusive=exclusive, selection=selection)
    if not problems:
        _discover_existing_inputs(plan, problems)
    if problems:
        raise ConfigError(problems)
    missing = check_dependencies(runs)
    if (execution.get("MODE") or "").upper() == "DASK":
        from .cluster.dask_executor import missing_packages

        missing += missing_packages(core.get("DASK") or {})
    if missing:
        raise DependencyError("missing dependencies of the configured modules:\n  - " + "\n  - ".join(missing))
    return plan


def resolve_sources(plan: Plan, run: ModuleRun, current_record: dict | None, produced: dict):
    """Input folders of a module run, and the module runs of this run they come from.

    Parameters
    ----------
    current_record : dict or None
        Record of the current run (its done/partial module runs resolve).
    produced : dict
        ``{module_run name: output dir}`` of this run's module runs.

    Raises
    ------
    ReferenceError_
    """
    records = list(plan.records) + ([current_record] if current_record else [])
    dirs, upstream = [], []
    for kind, value in input_sources(run, plan.module_runs, plan.registry, plan.file_input_items):
        if kind == "run":
            dirs.append(produced[value.name])
            upstream.append(value.name)
            continue
        reference = parse_reference(value, plan.registry.canonical)
        if reference is None:
            dirs.append(_absolute(value))
            continue
        found = resolve_reference(reference, records, plan.output_dir)
        dirs.extend(found)
        if current_record:
            for entry in current_record.get("modules", []):
                if entry.get("output_dir") in found:
                    upstream.append(entry["module_run"])
    return list(dict.fromkeys(dirs)), upstream


def resolve_option_dirs(plan: Plan, run: ModuleRun, current_record: dict | None) -> dict:
    """Options of a module run with directory references replaced by folders."""
    records = list(plan.records) + ([current_record] if current_record else [])
    options = dict(run.options)
    for key, (items, where) in run.option_refs.items():
        folders = []
        for item in items:
            reference = parse_reference(item, plan.registry.canonical)
            if reference is None:
                folders.append(_absolute(item))
            else:
                try:
                    folders.extend(resolve_reference(reference, records, plan.output_dir))
                except ReferenceError_ as error:
                    raise ReferenceError_(f"{where}: {error}") from None
        option = run.spec.option_table[key.upper()]
        if option.type == "store":
            options[key] = _store_file(option, items[0], folders, where)
        elif option.type == "dir":
            if len(folders) != 1:
                raise ReferenceError_(f"{where}: {items[0]} gives {len(folders)} folders but {key} takes one")
            options[key] = folders[0]
        else:
            options[key] = folders
    return options


def _store_file(option: Option, item: str, folders: list, where: str) -> str:
    """The file of a ``store`` option: the path itself, or ``file_name`` in its folder."""
    if len(folders) != 1:
        raise ReferenceError_(f"{where}: {item} gives {len(folders)} folders but {option.name} takes one")
    location = folders[0]
    if os.path.isfile(location):
        return location
    path = os.path.join(location, option.file_name)
    if not os.path.isfile(path):
        raise ReferenceError_(f"{where}: {item} resolves to {location}, which holds no {option.file_name}")
    return path


def _discover_existing_inputs(plan: Plan, problems):
    """Find input files of module runs whose inputs exist before the run."""
    correct = plan.core["FILE"]["CORRECT_FILE_PATTERN"]
    listings: dict = {}
    for run in plan.module_runs:
        sources = input_sources(run, plan.module_runs, plan.registry, plan.file_input_items)
        produced_here = any(kind == "run" for kind, _ in sources)
        for kind, value in sources:
            if kind == "item":
                reference = parse_reference(value, plan.registry.canonical)
                if reference is not None and reference.kind != "run" and any(
                    r.position < run.position and r.spec.name == reference.module for r in plan.module_runs
                ):
                    produced_here = True
        if produced_here or not run.patterns:
            continue
        try:
            dirs, _ = resolve_sources(plan, run, None, {})
        except ReferenceError_ as error:
            problems.append(str(error))
            continue
        found = discover(dirs, run.patterns, run.exts, run.scheme, correct,
                         exclude=(str(plan.output_dir),), listings=listings)
        if found.duplicates:
            problems.extend(f"module run {run.name}: {d}" for d in found.duplicates)
        if not found.complete and not found.missing:
            labels = ", ".join(found.patterns)
            problems.append(f"module run {run.name}: no input file matches {labels} with numbering "
                            f"scheme {run.scheme!r} in {', '.join(dirs)}")
        run.discovery = found
