"""Merge the per-exposure header files of ``split_exp`` into one header store.

The store (``log_exp_headers.sqlite``, see
:mod:`shapepipe_modules.io.header_store`) keeps every CCD header as text,
keyed by exposure name (``2113737``) and CCD number; later stages get a CCD's
WCS with ``HeaderStore(path).wcs(exposure, ccd)``.
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.errors import JobError
from shapepipe_modules.io.header_store import DEFAULT_NAME, HeaderStore, exposure_key
from shapepipe_modules.split_exp.split_exp import HEADER_PREFIX, read_header_file


def exposure_from_file_name(path) -> str:
    """Exposure name of a header file: ``headers-2113737.npy`` -> ``2113737``.

    Raises
    ------
    JobError
        If the name does not start with ``headers``.
    """
    name = Path(path).name
    if not name.startswith(HEADER_PREFIX):
        raise JobError(f"header file {path}: name does not start with {HEADER_PREFIX!r}")
    stem = name[len(HEADER_PREFIX):]
    stem = stem.split(".", 1)[0]
    return exposure_key(stem)


def merge_header_files(files, store_path, logger=None) -> dict:
    """Write one header store from per-exposure header files.

    Parameters
    ----------
    files : dict or list
        ``{exposure: path}``, or paths named ``headers<number>.npy`` (the
        exposure is read from the name).
    store_path : path
        The store to create (written atomically).
    logger : logging.Logger, optional

    Returns
    -------
    dict
        ``{'exposures': n, 'ccds': total CCD headers}``.

    Raises
    ------
    JobError
        Naming the file, if a header file is unreadable or empty, or two
        files give the same exposure.
    """
    if not isinstance(files, dict):
        mapping = {}
        for path in files:
            exposure = exposure_from_file_name(path)
            if exposure in mapping:
                raise JobError(f"header files {mapping[exposure]} and {path} are both for exposure {exposure}")
            mapping[exposure] = path
        files = mapping
    if not files:
        raise JobError("no header file to merge")
    n_ccd = 0
    with HeaderStore(store_path, mode="w") as store:
        for exposure, path in files.items():
            texts = read_header_file(path)
            if not any(texts):
                raise JobError(f"header file {path} holds no CCD header")
            store.write_exposure(exposure, texts)
            n_ccd += sum(text is not None for text in texts)
            if logger is not None:
                logger.info("exposure %s: %d CCD headers from %s", exposure_key(exposure), len(texts), path)
    return {"exposures": len(files), "ccds": n_ccd}


__all__ = ["DEFAULT_NAME", "exposure_from_file_name", "merge_header_files"]
