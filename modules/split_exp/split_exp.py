"""Split exposure mosaics (image, weight, flag) into one FITS file per CCD.

For exposure number ``-2113737`` and output prefixes ``image, weight,
flag``, CCD ``k`` (0-based: HDU ``k + 1`` of the mosaic) is written as
``image-2113737-k.fits``, ``weight-2113737-k.fits`` and
``flag-2113737-k.fits``: a single primary HDU with the CCD's data and header
(container keys dropped, see :func:`~.fits_input.clean_header`), its WCS
kept exactly as written, TPV or SIP distortion included (astropy and
SExtractor read both; no conversion).

The headers of the ``image`` mosaic are also written to
``headers-2113737.npy`` for ``merge_headers``: a 1-D array of ASCII bytes,
one ``Header.tostring()`` per CCD (with its ``NAXIS1``, ``NAXIS2``), saved
with ``allow_pickle=False``
(ShapePipe pickled astropy WCS objects in the same file name; keeping the
name lets ShapePipe configs chain unchanged). Read it with
:func:`read_header_file`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path
from shapepipe.errors import JobError

from shapepipe_modules.io.images import copy_compressed

from .fits_input import StrictFits, clean_header

HEADER_PREFIX = "headers"
HEADER_EXT = ".npy"


@dataclass
class SplitResult:
    """What :func:`split_exposure` wrote.

    Attributes
    ----------
    n_ccd : int
        CCDs per mosaic.
    files : list of Path
        Every CCD file written.
    header_file : Path or None
        The per-exposure header file (None when no prefix names the image).
    """

    n_ccd: int
    files: list = field(default_factory=list)
    header_file: Path | None = None


def ccd_file_name(prefix: str, number: str, ccd: int, ext: str = ".fits") -> str:
    """Name of one CCD file: ``image`` + ``-2113737`` + CCD 3 -> ``image-2113737-3.fits``."""
    return f"{prefix}{number}-{int(ccd)}{ext}"


def header_file_name(number: str) -> str:
    """Name of the per-exposure header file: ``headers-2113737.npy``."""
    return f"{HEADER_PREFIX}{number}{HEADER_EXT}"


def as_flag_array(data: np.ndarray, where: str) -> np.ndarray:
    """Flag data as integers: int16 when the values fit (ShapePipe's type), else int32.

    Raises
    ------
    JobError
        If the values are not integers or do not fit in int32.
    """
    data = np.asarray(data)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise JobError(f"{where}: flag values are not integers")
    elif data.dtype.kind not in "iub":
        raise JobError(f"{where}: flag data of type {data.dtype} cannot be stored as integers")
    if data.size == 0:
        return data.astype(np.int16)
    low, high = data.min(), data.max()
    for kind in (np.int16, np.int32):
        info = np.iinfo(kind)
        if low >= info.min and high <= info.max:
            return data.astype(kind, copy=False)
    raise JobError(f"{where}: flag values from {low} to {high} do not fit in 32-bit integers")


def check_wcs(header, where: str) -> None:
    """Build the WCS of a header (TAN, TPV or SIP) to make sure it is usable.

    Raises
    ------
    JobError
        If astropy cannot build a celestial WCS from the header.
    """
    from astropy.wcs import FITSFixedWarning, WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception as error:
            raise JobError(f"{where}: invalid WCS: {error}") from error
    if not wcs.has_celestial:
        raise JobError(f"{where}: the header has no celestial WCS (CTYPE1/CTYPE2)")


def _ccd_indices(mosaic: StrictFits, n_hdu: int) -> list[int]:
    indices = [i for i in mosaic.image_hdu_indices() if i > 0]
    if not indices:
        raise JobError(f"FITS file {mosaic.path} has no CCD extension (image HDU after the primary)")
    if n_hdu > 0:
        if len(mosaic) - 1 < n_hdu:
            raise JobError(f"FITS file {mosaic.path} has {len(mosaic) - 1} extensions, N_HDU = {n_hdu} expected")
        indices = list(range(1, n_hdu + 1))
        not_images = [i for i in indices if i not in mosaic.image_hdu_indices()]
        if not_images:
            raise JobError(f"FITS file {mosaic.path}: HDU {not_images[0]} is not a 2-D image")
    return indices


def split_exposure(
    paths,
    prefixes,
    number: str,
    output_dir,
    n_hdu: int = 0,
    header_prefix: str | None = "image",
    logger=None,
    compress=(),
) -> SplitResult:
    """Write every CCD of the given mosaics as its own FITS file.

    Parameters
    ----------
    paths : list of path
        The mosaics of one exposure (e.g. image, weight, flag), plain or
        ``.fits.fz``.
    prefixes : list of str
        Output name prefix of each mosaic (ShapePipe's ``OUTPUT_SUFFIX``); a
        prefix containing ``flag`` stores integer data.
    number : str
        Exposure number string, e.g. ``-2113737``.
    output_dir : path
        Folder for the outputs.
    n_hdu : int
        CCDs to split (HDUs 1 to ``n_hdu``); 0 means every image extension.
    header_prefix : str or None
        The mosaic whose prefix contains this word gives the per-CCD headers
        saved for ``merge_headers`` (its WCS is checked); None: none saved.
    logger : logging.Logger, optional
    compress : collection of str
        Prefixes whose CCD files are tile-compressed without loss
        (:func:`shapepipe_modules.io.images.write_image`); a CCD that is
        tile-compressed in the mosaic keeps its compressed tiles, copied byte
        for byte (:func:`~shapepipe_modules.io.images.copy_compressed`: the
        same values, at the input's size).

    Returns
    -------
    SplitResult

    Raises
    ------
    JobError
        Naming the file, for a missing, damaged or inconsistent mosaic or an
        unusable WCS. No output is left half-written.
    """
    paths = [Path(p) for p in paths]
    if len(prefixes) != len(paths):
        raise JobError(f"{len(paths)} input files but {len(prefixes)} output prefixes (OUTPUT_SUFFIX)")
    output_dir = Path(output_dir)
    header_index = None
    if header_prefix:
        matches = [i for i, prefix in enumerate(prefixes) if header_prefix in prefix]
        header_index = matches[0] if matches else None
        if header_index is None and logger is not None:
            logger.info("no output prefix contains %r: no %s file written", header_prefix, HEADER_PREFIX)

    mosaics = []
    try:
        # Open everything first: every header is read and checked before the
        # first CCD is written.
        for path in paths:
            mosaics.append(StrictFits(path))
        ccd_lists = [_ccd_indices(mosaic, n_hdu) for mosaic in mosaics]
        counts = {len(ccds) for ccds in ccd_lists}
        if len(counts) > 1:
            described = ", ".join(f"{m.path.name}: {len(c)}" for m, c in zip(mosaics, ccd_lists))
            raise JobError(f"exposure {number}: the mosaics have different numbers of CCDs ({described})")
        shapes = None
        result = SplitResult(n_ccd=len(ccd_lists[0]))
        header_texts = []
        for which, (mosaic, prefix, ccds) in enumerate(zip(mosaics, prefixes, ccd_lists)):
            for note in mosaic.notes:
                if logger is not None:
                    logger.info("%s: %s", mosaic.path.name, note)
            primary = mosaic.header(0)
            is_flag = "flag" in prefix
            these_shapes = []
            for ccd, hdu_index in enumerate(ccds):
                where = f"FITS file {mosaic.path}, HDU {hdu_index} (CCD {ccd})"
                header = clean_header(mosaic.header(hdu_index), primary)
                data = mosaic.data(hdu_index)
                these_shapes.append(data.shape)
                if shapes is not None and shapes[ccd] != data.shape:
                    raise JobError(
                        f"{where}: shape {data.shape} differs from {shapes[ccd]} of {mosaics[0].path.name}"
                    )
                source_type = data.dtype
                if is_flag:
                    data = as_flag_array(data, where)
                if which == header_index:
                    check_wcs(header, where)
                    header_texts.append(stored_header(header, data.shape).tostring())
                target = output_dir / ccd_file_name(prefix, number, ccd)
                if (prefix in compress and mosaic.is_compressed(hdu_index) and data.dtype == source_type
                        and data.dtype.kind == "f"):
                    # A float CCD keeps the input's own tiles, byte for byte: the same values at the
                    # input's size (recompressing quantised floats without loss is 2-3x larger);
                    # integers are recompressed in 64-row tiles, smaller than fpack's rows.
                    copy_compressed(mosaic.path, hdu_index, target, header)
                else:
                    write_single_hdu(target, data, header, compress=prefix in compress)
                result.files.append(target)
            shapes = shapes or these_shapes
        if header_index is not None:
            result.header_file = write_header_file(output_dir / header_file_name(number), header_texts)
        return result
    finally:
        for mosaic in mosaics:
            mosaic.close()


def stored_header(header, shape):
    """CCD header for the header store, with the CCD size (``NAXIS1``, ``NAXIS2``).

    :func:`~.fits_input.clean_header` drops the container keys; consumers of
    the store (focal-plane layouts, CCD footprints) need the size, which
    ShapePipe's stored headers carried too.
    """
    stored = header.copy()
    stored.insert(0, ("NAXIS", 2, "number of data axes"))
    stored.insert(1, ("NAXIS1", int(shape[1]), "length of data axis 1"))
    stored.insert(2, ("NAXIS2", int(shape[0]), "length of data axis 2"))
    return stored


def write_single_hdu(path, data, header, compress: bool = False) -> Path:
    """Write one image with its header as a single-HDU FITS file (or, with ``compress``, tile-compressed
    without loss after an empty primary HDU), atomically."""
    from shapepipe_modules.io.images import write_image

    return write_image(path, data, header, compress=compress)


def write_header_file(path, header_texts) -> Path:
    """Save per-CCD header texts as a ``.npy`` array of ASCII bytes (no pickle).

    Parameters
    ----------
    path : path
        Output file (``headers-NNNNNNN.npy``).
    header_texts : list of str or None
        ``Header.tostring()`` per CCD, in CCD order; None (a CCD without
        header) is saved as an empty string.
    """
    encoded = [(text or "").encode("ascii") for text in header_texts]
    array = np.array(encoded, dtype=bytes)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return Path(path)


def read_header_file(path) -> list:
    """Per-CCD header texts of a file written by :func:`write_header_file`.

    Returns
    -------
    list of str or None
        One entry per CCD; None for a CCD saved without header.

    Raises
    ------
    JobError
        If the file is missing, damaged or holds pickled objects (ShapePipe's
        format, which this pipeline never loads).
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise JobError(
                f"header file {path} holds pickled Python objects (ShapePipe's split_exp format); "
                "it is not loaded: run this pipeline's split_exp to write text headers"
            ) from error
        raise JobError(f"cannot read header file {path}: {error}") from error
    except (OSError, EOFError) as error:
        raise JobError(f"cannot read header file {path}: {error}") from error
    if array.ndim != 1 or array.dtype.kind not in "SU":
        raise JobError(f"header file {path}: expected a 1-D array of header texts, got {array.dtype} {array.shape}")
    texts = []
    for item in array:
        text = item.decode("ascii") if isinstance(item, bytes) else str(item)
        texts.append(text if text else None)
    return texts
