"""Bring raw CFIS files into the run, by copy or symbolic link, under pipeline names.

Inputs are lists of image IDs (tile IDs ``244.252``, exposure names
``2113737p``), one per line. For each ID and each file type ``k``:

- the input name is ``INPUT_FILE_PATTERN[k]`` with every match of the
  ``INPUT_NUMBERING`` regex replaced by the ID, plus ``INPUT_FILE_EXT[k]``,
  looked up in ``INPUT_PATH[k]`` (``CFIS.000.000.r`` + ``244.252`` ->
  ``CFIS.244.252.r.fits``); a ``*`` in the name is a wildcard;
- the output name is ``OUTPUT_FILE_PATTERN[k]`` + the pipeline number of the
  ID (dots become dashes, letters and underscores are dropped: ``244-252``,
  ``2113737``) + the extension, kept whole (``flag-2113737.fits.fz``; ShapePipe
  wrote ``.fitsfz``). ``OUTPUT_FILE_PATTERN = *`` keeps the input names.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shapepipe.atomic import atomic_path
from shapepipe.errors import JobError

RETRIEVE_METHODS = ("symlink", "copy")
KEEP_NAME = "*"


def read_id_lists(paths) -> list[str]:
    """IDs from text files, one per line (blank lines and ``#`` comments skipped).

    Returns the unique IDs in order of first appearance.

    Raises
    ------
    JobError
        If a file cannot be read.
    """
    ids = []
    for path in paths:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise JobError(f"cannot read the ID list {path}: {error}") from error
        for line in text.splitlines():
            word = line.split("#", 1)[0].strip()
            if word:
                ids.append(word)
    return list(dict.fromkeys(ids))


def pipeline_number(identifier: str) -> str:
    """Pipeline number of an image ID: ``244.252`` -> ``244-252``, ``2113737p`` -> ``2113737``.

    Dots become dashes (a dot would read as an extension), letters and
    underscores are removed, as ShapePipe does.
    """
    if not isinstance(identifier, str):
        raise TypeError(f"an image ID is a string, not {type(identifier).__name__}")
    number = identifier.replace(".", "-")
    return re.sub(r"[A-Za-z_]", "", number)


def input_name(pattern: str, numbering: str, identifier: str, ext: str) -> str:
    """Input file name: every match of ``numbering`` in ``pattern`` replaced by the ID."""
    return re.sub(numbering, lambda _: identifier, pattern) + ext


def output_name(pattern: str, identifier: str, ext: str) -> str:
    """Output file name ``<pattern><pipeline number><ext>``."""
    return f"{pattern}{pipeline_number(identifier)}{ext}"


@dataclass(frozen=True)
class FileType:
    """One kind of file to retrieve (e.g. the tile images, or the exposure flags)."""

    input_dir: Path
    input_pattern: str
    ext: str
    output_pattern: str


def file_types(input_paths, input_patterns, exts, output_patterns) -> list[FileType]:
    """Zip the per-type option lists; a single INPUT_PATH or extension applies to every type.

    Raises
    ------
    ValueError
        If the list lengths differ.
    """
    n = len(input_patterns)
    input_paths = list(input_paths) * n if len(input_paths) == 1 else list(input_paths)
    exts = list(exts) * n if len(exts) == 1 else list(exts)
    lengths = {"INPUT_PATH": len(input_paths), "INPUT_FILE_PATTERN": n,
               "INPUT_FILE_EXT": len(exts), "OUTPUT_FILE_PATTERN": len(output_patterns)}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{key} ({value})" for key, value in lengths.items())
        raise ValueError(f"the lists {described} must have the same length")
    return [
        FileType(Path(os.path.abspath(os.path.expanduser(d))), p, normalise(e), o)
        for d, p, e, o in zip(input_paths, input_patterns, exts, output_patterns)
    ]


def normalise(ext: str) -> str:
    """Extension with one leading dot; ShapePipe's ``.fitsfz`` is ``.fits.fz``."""
    from shapepipe.module import normalise_ext

    return normalise_ext(ext)


@dataclass(frozen=True)
class Transfer:
    """One file to bring in."""

    identifier: str
    source: Path
    target_name: str


def plan_transfers(identifiers, types, numbering: str) -> list[Transfer]:
    """Every (source, output name) pair, checked before anything is retrieved.

    Raises
    ------
    JobError
        Listing the missing input files, or two files given the same output name.
    """
    transfers, missing = [], []
    for kind in types:
        for identifier in identifiers:
            name = input_name(kind.input_pattern, numbering, identifier, kind.ext)
            if "*" in name:
                sources = sorted(kind.input_dir.glob(name))
            else:
                candidate = kind.input_dir / name
                sources = [candidate] if candidate.is_file() else []
            if not sources:
                missing.append(str(kind.input_dir / name))
                continue
            if kind.output_pattern == KEEP_NAME:
                transfers.extend(Transfer(identifier, s, s.name) for s in sources)
                continue
            if len(sources) > 1:
                shown = ", ".join(s.name for s in sources[:3])
                raise JobError(
                    f"{len(sources)} files match {kind.input_dir / name} for ID {identifier} ({shown}); "
                    "a single output name cannot hold them (use OUTPUT_FILE_PATTERN = * to keep input names)"
                )
            transfers.append(Transfer(identifier, sources[0], output_name(kind.output_pattern, identifier, kind.ext)))
    if missing:
        shown = "; ".join(missing[:5]) + ("; ..." if len(missing) > 5 else "")
        raise JobError(f"{len(missing)} input file(s) not found: {shown}")
    seen: dict[str, Transfer] = {}
    for transfer in transfers:
        other = seen.get(transfer.target_name)
        if other is not None and other.source != transfer.source:
            raise JobError(
                f"{other.source} and {transfer.source} would both become {transfer.target_name} "
                f"(IDs {other.identifier} and {transfer.identifier})"
            )
        seen[transfer.target_name] = transfer
    return list(seen.values())


def existing_names(directory, exclude=()) -> dict[str, int]:
    """How many files of each name lie anywhere below ``directory``."""
    counts: dict[str, int] = {}
    excluded = {os.path.realpath(e) for e in exclude}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in excluded]
        for name in files:
            counts[name] = counts.get(name, 0) + 1
    return counts


def retrieve(transfers, output_dir, method: str = "symlink", n_try: int = 3,
             existing: dict | None = None, n_expected: int = 1, logger=None) -> dict:
    """Link or copy every planned file into ``output_dir``.

    Parameters
    ----------
    transfers : list of Transfer
    output_dir : path
    method : {'symlink', 'copy'}
        A symbolic link to the absolute input path, or a copy written
        atomically.
    n_try : int
        Attempts per copy (network file systems fail now and then).
    existing : dict, optional
        Names already present elsewhere (:func:`existing_names`); a file
        whose output or input name is found ``n_expected`` times is skipped.
    n_expected : int
    logger : logging.Logger, optional

    Returns
    -------
    dict
        ``{'retrieved': n, 'skipped': n}``.
    """
    if method not in RETRIEVE_METHODS:
        raise JobError(f"RETRIEVE = {method} is not supported; use one of {', '.join(RETRIEVE_METHODS)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = skipped = 0
    for transfer in transfers:
        if existing:
            found = max(existing.get(transfer.target_name, 0), existing.get(transfer.source.name, 0))
            if found == n_expected:
                skipped += 1
                if logger is not None:
                    logger.info("%s already present (%d found), not retrieved", transfer.target_name, found)
                continue
        target = output_dir / transfer.target_name
        source = Path(os.path.abspath(transfer.source))
        if method == "symlink":
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(source, target)
        else:
            _copy(source, target, n_try, logger)
        done += 1
        if logger is not None:
            logger.info("%s %s -> %s", method, source, transfer.target_name)
    return {"retrieved": done, "skipped": skipped}


def _copy(source: Path, target: Path, n_try: int, logger) -> None:
    for attempt in range(1, max(n_try, 1) + 1):
        try:
            with atomic_path(target) as temporary:
                shutil.copyfile(source, temporary)
            return
        except OSError as error:
            if attempt >= n_try:
                raise JobError(f"cannot copy {source} after {attempt} attempt(s): {error}") from error
            if logger is not None:
                logger.warning("copy of %s failed (attempt %d/%d): %s", source, attempt, n_try, error)
            time.sleep(min(2.0 ** (attempt - 1), 10.0))
