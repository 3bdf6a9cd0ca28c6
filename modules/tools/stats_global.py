"""``stats_global``: histograms and summary numbers over all CCDs of a run.

Reads the statistics files of ``setools`` (``stat/<name><number>.txt``,
e.g. ``stat/star_stat-2113737-6.txt``: ``# Statistics`` then ``label =
value`` lines such as ``Nb stars = 57`` or ``Mean star fwhm selected
(arcsec) = 0.71``), found recursively under the input directories, and
writes into the output directory:

- ``stats_summary.txt``: per label, the number of CCDs with a finite value,
  the mean, standard deviation, median, minimum and maximum;
- ``stats_per_ccd.csv``: one row per statistics file (its number), one
  column per label;
- ``hist_<label>.png`` and ``hist_<label>.txt`` (bin left edges and counts)
  per label.

A file name found in several runs is read once (the most recently modified
copy). NaN values are left out of the statistics; a line that is not
``label = number`` is reported with its file and line number and skipped.

Python API: :func:`find_stat_files`, :func:`read_stat_file`,
:func:`gather_values`, :func:`summarise`, :func:`write_outputs`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path, write_text_atomic

from ._common import ToolError, run, warn
from shapepipe.arguments import ArgumentParser

PROGRAM = "stats_global"
DEFAULT_PATTERN = "star_stat-"


def find_stat_files(inputs, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """Statistics files ``stat/<pattern>*.txt`` under the inputs (files are taken as given).

    Duplicated file names keep the most recently modified copy; the result is
    sorted by name.
    """
    by_name: dict[str, Path] = {}
    for source in inputs:
        source = Path(source)
        if source.is_file():
            candidates = [source]
        elif source.is_dir():
            candidates = [p for p in source.rglob(f"{pattern}*.txt") if p.parent.name == "stat"]
        else:
            raise ToolError(f"input {source} does not exist")
        for path in candidates:
            kept = by_name.get(path.name)
            if kept is None or path.stat().st_mtime_ns > kept.stat().st_mtime_ns:
                by_name[path.name] = path
    return [by_name[name] for name in sorted(by_name)]


def read_stat_file(path, program: str = PROGRAM) -> dict[str, float]:
    """``label -> value`` of one statistics file (NaN kept; bad lines warned and skipped)."""
    values = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ToolError(f"cannot read statistics file {path}: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        label, separator, value = line.rpartition("=")
        label = label.strip()
        try:
            if not separator or not label:
                raise ValueError
            values[label] = float(value)
        except ValueError:
            warn(program, f"{path}:{number}: not 'label = number': {line.strip()!r}; line skipped")
    return values


def gather_values(paths, program: str = PROGRAM) -> tuple[list[str], dict[str, np.ndarray]]:
    """Values per label over all files (NaN where a file lacks the label).

    Returns
    -------
    labels : list of str
        In order of first appearance.
    values : dict of str to numpy.ndarray
        One entry per file, in the order of ``paths``.
    """
    per_file = [read_stat_file(path, program) for path in paths]
    labels: list[str] = []
    for values in per_file:
        labels += [label for label in values if label not in labels]
    table = {label: np.array([values.get(label, np.nan) for values in per_file], dtype=float) for label in labels}
    return labels, table


def summarise(values: np.ndarray) -> dict[str, float]:
    """Count, mean, std, median, min, max of the finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    return {"n": int(finite.size), "mean": float(finite.mean()), "std": float(finite.std()),
            "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}


def slug(label: str) -> str:
    """File-name-safe form of a label: ``Mean star fwhm (arcsec)`` -> ``mean_star_fwhm_arcsec``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "value"


def _file_number(path: Path, pattern: str) -> str:
    """Pipeline number of a statistics file: ``star_stat-2113737-6.txt`` -> ``-2113737-6``."""
    stem = path.name[:-4] if path.name.endswith(".txt") else path.name
    prefix = pattern.rstrip("-")
    return stem[len(prefix):] if stem.startswith(prefix) else stem


def write_outputs(output_dir, paths, labels, values, pattern: str = DEFAULT_PATTERN, bins: int = 50) -> list[Path]:
    """Write the summary table, the per-CCD table and one histogram per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ToolError(f"output {output_dir} is a file, not a directory")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    width = max([len(label) for label in labels] + [5])
    lines = [f"# {len(paths)} statistics files", f"# {'label':<{width}} {'n':>6} {'mean':>12} {'std':>12} "
             f"{'median':>12} {'min':>12} {'max':>12}"]
    slugs: dict[str, str] = {}
    for label in labels:
        stats = summarise(values[label])
        lines.append(f"  {label:<{width}} {stats['n']:>6d} {stats['mean']:>12.6g} {stats['std']:>12.6g} "
                     f"{stats['median']:>12.6g} {stats['min']:>12.6g} {stats['max']:>12.6g}")
        name = slug(label)
        while name in slugs.values():
            name += "_"
        slugs[label] = name
    summary = output_dir / "stats_summary.txt"
    write_text_atomic(summary, "\n".join(lines) + "\n")
    written.append(summary)

    def csv_field(text):
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text

    rows = ["number," + ",".join(csv_field(label) for label in labels)]
    for index, path in enumerate(paths):
        rows.append(csv_field(_file_number(path, pattern)) + "," + ",".join(
            repr(float(values[label][index])) for label in labels))
    per_ccd = output_dir / "stats_per_ccd.csv"
    write_text_atomic(per_ccd, "\n".join(rows) + "\n")
    written.append(per_ccd)

    for label in labels:
        finite = values[label][np.isfinite(values[label])]
        if finite.size == 0:
            warn(PROGRAM, f"label {label!r}: no finite value, no histogram")
            continue
        counts, edges = np.histogram(finite, bins=bins)
        base = output_dir / f"hist_{slugs[label]}"
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.stairs(counts, edges, fill=True)
        axes.set_xlabel(label)
        axes.set_ylabel("number of CCDs")
        axes.set_title(f"{label}: median {np.median(finite):.4g} over {finite.size} CCDs", fontsize=9)
        with atomic_path(base.with_suffix(".png")) as temporary:
            figure.savefig(temporary, format="png", bbox_inches="tight")
        plt.close(figure)
        text = f"# [{label}] bin left edge, count\n" + "".join(
            f"{edge:12.6g} {count:8d}\n" for edge, count in zip(edges[:-1], counts))
        write_text_atomic(base.with_suffix(".txt"), text)
        written += [base.with_suffix(".png"), base.with_suffix(".txt")]
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM, description="Histograms and summary numbers over all CCDs from setools statistics files.")
    parser.add_argument("inputs", nargs="+", help="run directories (searched for stat/<pattern>*.txt) or files")
    parser.add_argument("-o", "--output-dir", default="stats_global", help="output directory (default stats_global)")
    parser.add_argument("-p", "--pattern", default=DEFAULT_PATTERN,
                        help=f"statistics file name start (default {DEFAULT_PATTERN})")
    parser.add_argument("--bins", type=int, default=50, help="histogram bins (default 50)")
    return parser


def _main(args) -> int:
    if args.bins < 1:
        raise ToolError("--bins must be positive")
    paths = find_stat_files(args.inputs, args.pattern)
    if not paths:
        raise ToolError(f"no stat/{args.pattern}*.txt under {', '.join(args.inputs)}")
    labels, values = gather_values(paths)
    if not labels:
        raise ToolError(f"no 'label = value' line in the {len(paths)} statistics files")
    write_outputs(args.output_dir, paths, labels, values, args.pattern, args.bins)
    print(f"{PROGRAM}: {len(paths)} files, {len(labels)} labels, outputs in {args.output_dir}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
