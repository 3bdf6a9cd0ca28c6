"""``shapepipe_butler``: the pipeline's products in an LSST data butler.

    shapepipe_butler ingest OUTPUT_DIR REPO [--run RUN ...]
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from shapepipe.arguments import ArgumentParser

    parser = ArgumentParser(prog="shapepipe_butler", description="Register ShapePipe products in an LSST data "
                            "butler (files in place, one RUN collection per run).")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("ingest", help="register every product of the runs under OUTPUT_DIR in REPO "
                                  "(created with a SQLite registry if absent); idempotent")
    command.add_argument("output_dir", help="folder holding the run folders")
    command.add_argument("repo", help="butler repository folder")
    command.add_argument("--run", action="append", help="only this run folder or RUN_NAME (repeatable)")
    command.add_argument("--module-dir", action="append", default=[],
                         help="folder of user modules (MODULE_DIR) whose products to register (repeatable)")
    args = parser.parse_args(argv)
    try:
        from .ingest import IngestError, ingest
    except ImportError as error:
        print(f"shapepipe_butler: the LSST data butler is not installed ({error}); "
              f"install it with: pip install \"shapepipe[butler]\"", file=sys.stderr)
        return 3
    try:
        report = ingest(args.output_dir, args.repo, runs=args.run, module_dirs=args.module_dir)
    except IngestError as error:
        print(f"shapepipe_butler: {error}", file=sys.stderr)
        return 1
    for name, count in sorted(report.registered.items()):
        print(f"  {name:<24} {count:>6}")
    skipped = ", ".join(f"{name} {count}" for name, count in sorted(report.skipped.items()))
    print(f"{report.files} products of {len(report.runs)} run(s) registered in {args.repo} (those already there skipped) "
          f"in {report.seconds:.2f} s" + (f"; not registered (no dimensions): {skipped}" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
