"""``shapepipe_stamps``: postage-stamp archives of a target list (see ``docs/stamps.md``).

Subcommands::

    shapepipe_stamps run TARGETS -o ARCHIVE --run-output $SP_RUN/output [options]
    shapepipe_stamps assign TARGETS -o ARCHIVE ...   # check the table, assign tiles, stop
    shapepipe_stamps status ARCHIVE
    shapepipe_stamps export ARCHIVE OUTDIR [ID ... | IDFILE]
    shapepipe_stamps quicklook ARCHIVE OUT.png [-n 36]

``run`` on an existing archive resumes it (only targets not done are cut;
``--retry-failed`` also retries the failed ones). The options are those of
the ``stamps`` module (``--tile-dir`` for ``TILE_DIR``...). With
``--run-output`` (the ``OUTPUT_DIR`` of a ShapePipe run, ``$SP_RUN/output``
for the GOLD chain), the folders not given are found as in the GOLD
configurations (``last:get_images_runner_run_1``...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shapepipe.arguments import ArgumentParser

from .runner import OPTIONS

#: Folders of a GOLD-chain run, as the GOLD configurations reference them.
GOLD_REFERENCES = {
    "TILE_DIR": ["last:get_images_runner_run_1", "last:uncompress_fits_runner", "last:mask_runner_run_1"],
    "EXP_DIR": ["last:split_exp_runner", "last:mask_runner_run_2"],
    "PSF_DIR": ["last:psfex_runner"],
    "HEADER_STORE": ["last:merge_headers_runner"],
}
_LAYOUT_OPTIONS = {"TILE_RULE", "TILE_DIR", "BANDS", "TILE_IMAGE_PATTERN", "TILE_WEIGHT_PATTERN",
                   "TILE_FLAG_PATTERN", "EXPOSURE_STAMPS", "EXP_DIR", "EXP_IMAGE_PATTERN", "EXP_WEIGHT_PATTERN",
                   "EXP_FLAG_PATTERN", "PSF_DIR", "PSF_PATTERN", "HEADER_STORE", "ID_COLUMN", "RA_COLUMN",
                   "DEC_COLUMN", "STAMP_SIZE", "PSF_SIZE", "BATCH_SIZE", "N_WORKERS", "COMPRESSION",
                   "COMPRESSION_LEVEL", "RETRY_FAILED", "QUICKLOOK"}


def _flag(option) -> str:
    return "--" + option.name.lower().replace("_", "-")


def _add_options(parser):
    for option in OPTIONS:
        if option.name not in _LAYOUT_OPTIONS:
            continue
        if option.name == "RETRY_FAILED":
            parser.add_argument("--retry-failed", action="store_true", help=option.help)
            continue
        parser.add_argument(_flag(option), dest=option.name, default=None, metavar=option.type.upper(),
                            help=f"{option.help} (default {option.default!r})")
    parser.add_argument("--run-output", type=Path, default=None,
                        help="OUTPUT_DIR of a ShapePipe run: folders not given are found as in the GOLD chain")


def _resolve(values, run_output: Path) -> list[str]:
    """Plain folders stay; ``last:``/``all:``/``run:`` references are resolved against the run's records."""
    from shapepipe.errors import ReferenceError_
    from shapepipe.module import default_registry
    from shapepipe.records import parse_reference, resolve_reference, scan_runs

    registry = default_registry()
    resolved = []
    records = None
    for value in values:
        try:
            reference = parse_reference(value, registry.canonical)
        except KeyError as error:
            raise SystemExit(f"shapepipe_stamps: {value}: {error}") from None
        if reference is None:
            resolved.append(value)
            continue
        if run_output is None:
            raise SystemExit(f"shapepipe_stamps: {value} is a run reference: give --run-output")
        records = scan_runs(run_output) if records is None else records
        try:
            resolved.extend(resolve_reference(reference, records, run_output))
        except ReferenceError_ as error:
            raise SystemExit(f"shapepipe_stamps: {error}") from None
    return resolved


def options_from_args(args) -> dict:
    """The module's options from the command line (parsed as the configuration would be)."""
    from shapepipe.errors import OptionError

    values = {}
    for option in OPTIONS:
        if option.name == "RETRY_FAILED":
            values[option.name] = bool(getattr(args, "retry_failed", False))
            continue
        text = getattr(args, option.name, None)
        if text is None:
            value = option.default
            if option.name in GOLD_REFERENCES and args.run_output is not None and not value:
                value = list(GOLD_REFERENCES[option.name])
        else:
            try:
                value = option.parse(text)
            except OptionError as error:
                raise SystemExit(f"shapepipe_stamps: {_flag(option)}: {error}") from None
        if option.type in ("dir_list", "store") and value:
            items = _resolve(value if isinstance(value, list) else [value], args.run_output)
            if option.type == "store":
                path = Path(items[0])
                value = str(path / option.file_name if path.is_dir() else path)
            else:
                value = items
        values[option.name] = value
    return values


def _print_counts(prefix, counts):
    print(f"{prefix}: {counts['targets']} targets: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['new']} new")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="shapepipe_stamps", description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "make or resume an archive"), ("assign", "check the table and assign tiles only")):
        command = sub.add_parser(name, help=text)
        command.add_argument("targets", type=Path, help="target table (CSV or FITS)")
        command.add_argument("-o", "--output", type=Path, required=True, help="archive folder")
        _add_options(command)
    status = sub.add_parser("status", help="counts of done, failed and new targets; the failure reasons")
    status.add_argument("archive", type=Path)
    export = sub.add_parser("export", help="FITS files of chosen targets (all when no id is given)")
    export.add_argument("archive", type=Path)
    export.add_argument("outdir", type=Path)
    export.add_argument("ids", nargs="*", help="target ids, or one file of ids (one per line)")
    look = sub.add_parser("quicklook", help="a grid of the first N stamps with their ids")
    look.add_argument("archive", type=Path)
    look.add_argument("output", type=Path, help="figure file (.png, .pdf)")
    look.add_argument("-n", "--count", type=int, default=36)
    look.add_argument("--slot", type=int, default=0, help="slot shown (0: the tile of the first band)")
    args = parser.parse_args(argv)

    from .archive import ArchiveError
    from .extract import ExtractionError
    from .layout import LayoutError
    from .pipeline import ArchiveBusy
    from .targets import TargetTableError, read_status_table

    try:
        if args.command in ("run", "assign"):
            import logging

            from .layout import layout_from_options
            from .pipeline import prepare
            from .runner import make_archive, settings_from_options

            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
            options = options_from_args(args)
            if args.command == "assign":
                table = prepare(args.targets, args.output, layout_from_options(options),
                                settings_from_options(options),
                                columns=(options["ID_COLUMN"], options["RA_COLUMN"], options["DEC_COLUMN"]),
                                rule=options["TILE_RULE"], batch_size=options["BATCH_SIZE"])
                _print_counts(str(args.output), table.counts())
                return 0
            summary = make_archive(args.targets, args.output, options)
            _print_counts(str(args.output), summary)
            print(f"{summary['batches']} batch file(s), {summary['stamps']} stamps, "
                  f"{summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s")
            return 0
        if args.command == "status":
            table = read_status_table(Path(args.archive) / "targets.csv")
            _print_counts(str(args.archive), table.counts())
            reasons = {}
            for text in table.status[table.failed()].tolist():
                reasons[text] = reasons.get(text, 0) + 1
            for text, count in sorted(reasons.items(), key=lambda item: -item[1])[:20]:
                print(f"  {count:6d}  {text}")
            return 0
        if args.command == "export":
            from .export import export_fits, read_id_list

            ids = read_id_list(args.ids) or None
            written = export_fits(args.archive, args.outdir, ids)
            print(f"{len(written)} FITS file(s) in {args.outdir}")
            return 0
        if args.command == "quicklook":
            from .export import quicklook

            print(quicklook(args.archive, args.output, count=args.count, slot=args.slot))
            return 0
    except (TargetTableError, LayoutError, ArchiveError, ArchiveBusy, ExtractionError, FileNotFoundError,
            ValueError) as error:
        print(f"shapepipe_stamps: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
