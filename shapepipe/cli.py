"""Command line: ``shapepipe_run -c config.ini`` (also ``python -m shapepipe.cli``).

Exit status: 0 every job ok; 1 some job failed or timed out; 2 the
configuration is invalid (nothing written); 3 packages or executables are
missing (nothing written); 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM):
finished jobs are recorded and ``--resume`` continues the run.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .arguments import ArgumentParser
from .errors import ConfigError, DependencyError
from .threads import single_threaded_blas_by_default

# Before anything imports numpy: the runner, its workers and jobs use one BLAS thread each (see .threads).
single_threaded_blas_by_default()

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DEPENDENCY = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="shapepipe_run",
        description="Run the pipeline modules listed in a configuration file.",
    )
    parser.add_argument("-c", "--config", help="configuration file (.ini)")
    parser.add_argument("-v", "--version", action="version", version=f"shapepipe {__version__}")
    parser.add_argument("-l", "--list-modules", "--list_modules", action="store_true",
                        help="list the available modules (with -c, including its MODULE_DIR)")
    parser.add_argument("--describe", metavar="MODULE", help="print a module's declaration and options")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, resolve inputs and print the job table; run nothing")
    parser.add_argument("-e", "--exclusive", metavar="NUMBER", help="process this file number only")
    parser.add_argument("--numbers", metavar="LIST_OR_FILE",
                        help="process these file numbers only: a comma list or a file with one per line")
    parser.add_argument("--array-index", nargs="?", const="env", metavar="K",
                        help="process slice K of the number list (--numbers, else [FILE] NUMBER_LIST): "
                             "numbers K*N to K*N+N-1 for --per-task N; without K, the index of the batch "
                             "array task (SLURM_ARRAY_TASK_ID, PBS_ARRAY_INDEX, PBS_ARRAYID, or SGE_TASK_ID - 1)")
    parser.add_argument("--per-task", type=int, default=1, metavar="N",
                        help="numbers per array task (default 1)")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                        help="continue the newest run of RUN_NAME (or RUN_DIR): done jobs are skipped")
    parser.add_argument("--resume-if-any", action="store_true",
                        help="continue the newest run of RUN_NAME if there is one, else start a new run "
                             "(idempotent batch tasks: resubmitting a task never redoes finished jobs)")
    return parser


def _registry_for(config):
    """Registry with built-in modules plus the config's MODULE_DIR, if any."""
    from .config import read_ini
    from .module import default_registry
    from .options import split_list
    import os

    directories = []
    if config:
        ini = read_ini(config)
        text, _ = ini.lookup(["EXECUTION"], "MODULE_DIR")
        if text:
            from .config import expand_vars

            directories = [os.path.abspath(d) for d in split_list(expand_vars(text))]
    return default_registry(directories)


def _selection(args):
    """The command line's selection of numbers; a resumed run keeps its own."""
    from .selection import Selection, make_selection

    if args.resume and not (args.exclusive or args.numbers or args.array_index is not None):
        from .records import read_record

        record = read_record(args.resume)
        if record is not None and record.get("selection"):
            return Selection.from_record(record["selection"])
    config_numbers = None
    if args.array_index is not None and args.numbers is None:
        from .config import expand_vars, read_ini
        from .options import split_list

        text, _ = read_ini(args.config).lookup(["FILE"], "NUMBER_LIST")
        if text:
            from .selection import read_numbers_argument

            items = split_list(expand_vars(text))
            config_numbers = read_numbers_argument(items[0])[0] if len(items) == 1 else items
    return make_selection(args.exclusive, args.numbers, args.array_index, args.per_task, config_numbers)


def _list_modules(registry) -> str:
    lines = []
    for spec in registry:
        lines.append(f"{spec.name:<24} {spec.version:<8} {spec.description}")
        if spec.aliases:
            lines.append(f"{'':<24} {'':<8} also: {', '.join(spec.aliases)}")
    for source, error in registry.load_errors.items():
        lines.append(f"(could not import {source}: {error})")
    return "\n".join(lines) if lines else "no module found"


def _stop_idle_workers() -> None:
    """Stop joblib's reusable loky workers, which would otherwise idle for minutes after exit."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None) if module else None
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def main(argv=None) -> int:
    """Entry point of ``shapepipe_run``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.list_modules or args.describe:
            registry = _registry_for(args.config)
            if args.list_modules:
                print(_list_modules(registry))
            if args.describe:
                from .config import MODULE_SECTION_OPTIONS

                try:
                    spec = registry.get(args.describe)
                except KeyError as error:
                    print(f"shapepipe_run: {error.args[0]}", file=sys.stderr)
                    return EXIT_CONFIG
                print(spec.describe())
                print("  keys every module section accepts: "
                      + ", ".join(o.name for o in MODULE_SECTION_OPTIONS))
            return EXIT_OK
        if not args.config:
            print("shapepipe_run: give a configuration file with -c config.ini (see --help)", file=sys.stderr)
            return EXIT_CONFIG
        from .plan import build_plan
        from .runner import Runner, dry_run, find_resume_dir

        selection = _selection(args)
        plan = build_plan(args.config, selection=selection)
        if args.dry_run:
            print(dry_run(plan))
            return EXIT_OK
        resume_dir = None
        if args.resume is not None:
            resume_dir = find_resume_dir(plan, args.resume or None)
        elif args.resume_if_any:
            resume_dir = find_resume_dir(plan, None, missing_ok=True)
        runner = Runner(plan)
        try:
            status = runner.run(resume_dir)
        finally:
            _stop_idle_workers()
        if runner.interrupted is not None:
            import signal

            name = signal.Signals(runner.interrupted).name
            if runner.run_dir is not None:
                print(f"shapepipe_run: interrupted by {name}: finished jobs are recorded, running jobs were "
                      f"stopped.\nresume with: {runner.resume_command()}", file=sys.stderr)
            else:
                print(f"shapepipe_run: interrupted by {name} before the run started", file=sys.stderr)
            return status
        if not plan.core["DEFAULT"]["VERBOSE"]:
            print(runner.summary())
        print(f"run folder: {runner.run_dir}")
        return status
    except ConfigError as error:
        print(f"shapepipe_run: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except DependencyError as error:
        print(f"shapepipe_run: {error}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except KeyboardInterrupt:
        print("shapepipe_run: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    exit_status = main()
    if exit_status and "shapepipe.cluster.mpi_executor" in sys.modules:
        # Under mpirun: leave MPI cleanly instead of through mpi4py's MPI_Abort (mpi_executor).
        sys.modules["shapepipe.cluster.mpi_executor"].exit_without_abort(exit_status)
    sys.exit(exit_status)
