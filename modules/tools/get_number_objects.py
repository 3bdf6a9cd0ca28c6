"""``get_number_objects``: the number of objects detected per tile.

As ShapePipe's script: the SExtractor catalogues (``sexcat*.fits``) of the
newest successful run of the tile detection (``sextractor_runner_run_1``)
under a run output folder are read, and the mean number of rows per
catalogue is printed as an integer (one catalogue per tile run: the tile's
number of objects). Campaign scripts use it to split the shape measurement
of a tile into object-id ranges (ShapePipe's ``job_sp`` with ``nsh_step =
-1``: ``n_obj / nsh_jobs`` objects per ``ID_OBJ_MIN``/``ID_OBJ_MAX`` range).

The run is found from the run records (``OUTPUT_DIR/*/run.json``), with the
run references of the configurations (``last:MODULE``, ``run:NAME:MODULE``;
a bare module name means ``last:``). Catalogues may be given instead. Rows
are counted from the headers of the ``LDAC_OBJECTS`` table (the catalogue
is not read; ``EPOCH_i`` and ``LDAC_VIGNET`` tables after it are not
objects), or of ``--hdu``. ``--per-file`` lists each catalogue's count.

Python API: :func:`find_catalogues`, :func:`count_objects`,
:func:`number_of_objects`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shapepipe.arguments import ArgumentParser

from ._common import ToolError, run

PROGRAM = "get_number_objects"
DEFAULT_MODULE = "last:sextractor_runner_run_1"


def find_catalogues(output_dir, module: str = DEFAULT_MODULE, pattern: str = "sexcat") -> list[Path]:
    """``<pattern>*.fits`` of the run a reference names under a run output folder.

    Parameters
    ----------
    output_dir : path-like
        ``OUTPUT_DIR`` of the runs.
    module : str
        Run reference (``last:sextractor``, ``run:NAME:sextractor_run_2``)
        or module name (``last:`` implied).
    pattern : str
        Catalogue name start.

    Raises
    ------
    ToolError
        No run record, no successful run of the module, or no catalogue.
    """
    from shapepipe.errors import ReferenceError_
    from shapepipe.module import default_registry
    from shapepipe.records import parse_reference, resolve_reference, scan_runs

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ToolError(f"run output folder {output_dir} does not exist")
    text = module if ":" in module else f"last:{module}"
    try:
        reference = parse_reference(text, default_registry().canonical)
    except KeyError as error:
        raise ToolError(f"{module}: {error}") from None
    records = scan_runs(output_dir)
    if not records:
        raise ToolError(f"no run record (*/run.json) under {output_dir}")
    try:
        folders = resolve_reference(reference, records, output_dir)
    except ReferenceError_ as error:
        raise ToolError(str(error)) from None
    paths = sorted(p for folder in folders for p in Path(folder).glob(f"{pattern}*.fits")
                   if not p.name.startswith("."))
    if not paths:
        raise ToolError(f"no {pattern}*.fits in {', '.join(str(f) for f in folders)}")
    return paths


def count_objects(path, hdu=None) -> int:
    """Rows of a catalogue's objects table, from its header.

    Parameters
    ----------
    path : path-like
    hdu : int or str, optional
        Default: ``LDAC_OBJECTS`` of a FITS-LDAC catalogue, else the last HDU
        (ShapePipe's choice).

    Raises
    ------
    ToolError
        Naming the file: unreadable, no such HDU, not a table.
    """
    from astropy.io import fits

    from shapepipe_modules.io.ldac import OBJECTS_EXTNAME

    path = Path(path)
    try:
        with fits.open(path) as hdus:
            if hdu is None:
                hdu = OBJECTS_EXTNAME if OBJECTS_EXTNAME in hdus else len(hdus) - 1
            header = hdus[hdu].header
    except (KeyError, IndexError):
        raise ToolError(f"{path}: no HDU {hdu!r}") from None
    except OSError as error:
        raise ToolError(f"cannot read catalogue {path}: {error}") from error
    if header.get("XTENSION") != "BINTABLE":
        raise ToolError(f"{path}: HDU {hdu!r} is not a binary table")
    return int(header["NAXIS2"])


def number_of_objects(paths, hdu=None) -> tuple[int, dict]:
    """ShapePipe's number: the mean row count of the catalogues, rounded down.

    Returns
    -------
    mean : int
    counts : dict
        Path -> row count.
    """
    if not paths:
        raise ToolError("no catalogue given")
    counts = {Path(p): count_objects(p, hdu) for p in paths}
    return sum(counts.values()) // len(counts), counts


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Number of objects of the tile SExtractor catalogue(s) of the newest detection run (the "
                    "mean over the catalogues found, as an integer).")
    parser.add_argument("catalogues", nargs="*", help="catalogues to count (default: found from the run records)")
    parser.add_argument("-i", "--input-path", default="output",
                        help="OUTPUT_DIR of the runs (default output)")
    parser.add_argument("-m", "--module", default=DEFAULT_MODULE,
                        help=f"run reference of the detection (default {DEFAULT_MODULE})")
    parser.add_argument("-n", "--input-name-base", default="sexcat", help="catalogue name start (default sexcat)")
    parser.add_argument("--hdu", help="HDU of the objects (default LDAC_OBJECTS, else the last)")
    parser.add_argument("--per-file", action="store_true", help="one line per catalogue: name and count")
    parser.add_argument("-o", "--output", help="write the result to this text file too")
    return parser


def _main(args) -> int:
    from shapepipe.atomic import write_text_atomic

    hdu = None if args.hdu is None else (int(args.hdu) if str(args.hdu).isdigit() else args.hdu)
    paths = [Path(p) for p in args.catalogues] or find_catalogues(args.input_path, args.module,
                                                                  args.input_name_base)
    mean, counts = number_of_objects(paths, hdu)
    if args.per_file:
        text = "".join(f"{path.name} {count}\n" for path, count in counts.items())
    else:
        text = f"{mean}\n"
    sys.stdout.write(text)
    if args.output:
        write_text_atomic(args.output, text)
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
