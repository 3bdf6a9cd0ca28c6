"""MULTI-EPOCH stamps: single-exposure stamps of every tile object in every epoch.

For each tile object and each exposure that saw it (the ``EPOCH_i`` HDUs of
the tile catalogue), stamps are cut from that exposure's CCD files, one file
per ``ME_IMAGE_PATTERN`` (``<dir>/<pattern>-<exposure>-<ccd><ext>``, as
ShapePipe names them), together with the local WCS Jacobian at the object's
position (from the header store, distortion included).

Work is grouped by (exposure, CCD): each CCD file is opened once per tile,
all positions on it are converted at once, all stamps cut at once. Groups
are processed in order of declination so that an object's epochs complete
close together; an object is written as soon as all its epochs are cut,
which bounds memory to about one CCD plus the objects in progress.

Outputs: one stamp store per pattern (:class:`StampStore`,
``<pattern>_vignet<number>.sqlite``, ShapePipe's names), keyed by object id
(``NUMBER``) and epoch ``'<exposure>-<ccd>'``. Each epoch record holds

``VIGNET``
    the stamp of that pattern's kind (image, weight, flag or background),
    with the CCD file's pixel type;
``JACOBIAN``
    ``(2, 2)`` local WCS Jacobian, see :func:`.stamps.local_jacobians`; in
    the image store only (the first store if no pattern is an image), as
    each stored array costs as much time as a stamp;
meta (in every store)
    ``X_CCD``, ``Y_CCD`` (FITS position on the CCD), ``CENTRE_ROW``,
    ``CENTRE_COL`` (0-based position of the object in the stamp array: the
    central pixel ``size // 2`` plus the sub-pixel offset),
    ``MASKED_FRACTION`` (pixels flagged, with zero weight or off the CCD),
    ``MISSING_FRACTION`` (pixels off the CCD), ``OFF_CCD_FLAG``, and
    ``DROPPED_EPOCHS`` (text) when other epochs of the object were dropped;
    with a neighbour mask, ``NEIGHBOUR_FRACTION`` (pixels given zero weight
    as other objects' or saturated regions', see below).

Neighbour mask (``NEIGHBOUR_MASK``): the tile's object mask (sextractor
``OBJECT_MASK``: each object's ellipse holds its ``NUMBER``, saturated
regions -1) is looked up at every exposure stamp pixel: pixel centre ->
sky (the exposure's WCS) -> tile pixel (the mask's WCS), nearest tile
pixel. Where it holds another object's ``NUMBER`` or -1 the weight stamp is
set to 0 (never on the object's own pixels nor off the tile), so ngmix
treats those pixels as masked. With the tile's own WCS on the exposure this
is exactly the CLASSIC neighbour mask. The mask is never read whole (a
10k x 10k tile is 400 MB): for each CCD only the box of tile pixels under
its stamps is read (``hdu.section``; a tile-compressed mask decompresses
only the tile rows of that box).

Pixels off the CCD: image and background 0 (ShapePipe's padding), weight 0,
flag ``OFF_CCD_FLAG`` (bit 512 by default; not used by the ``mask`` planes).
An epoch whose CCD file is missing or unreadable, or whose WCS is not in the
header store, is dropped for the objects on it (the file is named in the
log); an object left with no epoch is recorded with
:meth:`StampStore.mark_no_epoch` and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe.errors import JobError
from shapepipe_modules.io.stamp_store import EncodedMeta, StampStore, epoch_key

from .catalogue import read_epochs, read_objects
from .stamps import central_pixels, check_stamp_size, cut_stamps, local_jacobians

KINDS = ("image", "weight", "flag", "background")
#: Flag bit set on stamp pixels outside the CCD.
OFF_CCD_FLAG = 512
#: Value of image, weight and background pixels outside the CCD.
OFF_CCD_VALUE = 0


def infer_kind(pattern: str) -> str:
    """Stamp kind of a file pattern: 'weight', 'flag', 'background' or 'image'.

    ``pipeline_flag`` is a flag, ``background``/``bkg`` a background, any
    pattern mentioning ``weight`` a weight; everything else an image.
    """
    name = pattern.lower()
    for kind, words in (("weight", ("weight",)), ("flag", ("flag",)), ("background", ("background", "bkg"))):
        if any(word in name for word in words):
            return kind
    return "image"


def jacobian_store_kind(sources) -> str:
    """Kind of the store that holds ``JACOBIAN``: the image store, else the first."""
    kinds = [s.kind for s in sources]
    return "image" if "image" in kinds else kinds[0]


def store_name(pattern: str, number: str) -> str:
    """ShapePipe's store name ``<pattern>_vignet<number>.sqlite``."""
    return f"{pattern}_vignet{number}.sqlite"


@dataclass(frozen=True)
class Source:
    """One kind of single-exposure file: where it is and what it holds."""

    pattern: str
    directory: Path
    kind: str
    ext: str = ".fits"

    def path(self, exposure: str, ccd: int) -> Path:
        """``<dir>/<pattern>-<exposure>-<ccd><ext>``."""
        return self.directory / f"{self.pattern}-{exposure}-{int(ccd)}{self.ext}"


def make_sources(directories, patterns, kinds=None, ext=".fits") -> list[Source]:
    """Pair directories and patterns (one directory for all, or one each).

    Raises
    ------
    ValueError
        If the counts do not match, or a kind is unknown or repeated.
    """
    directories = [Path(d) for d in directories]
    patterns = list(patterns)
    if not patterns:
        raise ValueError("ME_IMAGE_PATTERN is empty")
    if len(directories) == 1:
        directories = directories * len(patterns)
    if len(directories) != len(patterns):
        raise ValueError(f"ME_IMAGE_DIR gives {len(directories)} folders for {len(patterns)} "
                         "ME_IMAGE_PATTERN entries (give one folder, or one per pattern)")
    kinds = list(kinds) if kinds else [infer_kind(p) for p in patterns]
    if len(kinds) != len(patterns):
        raise ValueError(f"ME_IMAGE_KIND has {len(kinds)} entries for {len(patterns)} patterns")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown stamp kind {kind!r}; use one of {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"each stamp kind may appear once, got {kinds} for patterns {patterns}")
    return [Source(p, d, k, ext) for p, d, k in zip(patterns, directories, kinds)]


def read_ccd(path: Path) -> np.ndarray:
    """Pixels of a CCD file (first HDU holding a 2-D image), memory-mapped when possible.

    Raises
    ------
    OSError
        If the file is unreadable or holds no 2-D image.
    """
    from astropy.io import fits

    from shapepipe_modules.io.images import fast_inflate, image_data

    fast_inflate()
    with fits.open(path, memmap=True) as hdus:
        for hdu in hdus:
            if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
                # One copy, in native byte order (FITS is big-endian): the file is closed on
                # return, and stamps are cut from native pixels without a swap each.
                data = image_data(hdu)
                return data.astype(data.dtype.newbyteorder("="), copy=True)
    raise OSError(f"{path}: no 2-D image HDU")


#: Stamps whose pixels are converted to tile pixels at once: 128 stamps of 51 x 51 keep the WCS arrays near
#: 90 MB (1024: 380 MB) and run as fast (benchmarks/bench_objmask_section.py --chunks).
NEIGHBOUR_CHUNK = 128
#: Margin (pixels) of the object mask section around the tile footprint of a CCD's stamps.
MASK_MARGIN = 2
#: Tile rows of the object mask read at once: a tile-compressed mask decompresses whole-width tile rows,
#: so a band bounds the transient memory to ``MASK_BAND_ROWS`` full rows plus the section itself.
MASK_BAND_ROWS = 512

#: dtype of integer images scaled by the FITS unsigned convention (BITPIX, BZERO), as astropy reads them.
_PSEUDO_INTEGERS = {(8, -128): "i1", (16, 1 << 15): "u2", (32, 1 << 31): "u4", (64, 1 << 63): "u8"}
_BITPIX_DTYPES = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}


def image_dtype(header) -> np.dtype:
    """dtype astropy gives the data of an image HDU, from its header alone (native byte order).

    ``BITPIX`` with ``BSCALE``, ``BZERO`` and ``BLANK`` as astropy applies
    them (unsigned-integer convention on, the default). For a ``CompImageHDU``
    the image header's ``BITPIX`` is astropy's copy of ``ZBITPIX``.
    """
    bitpix = int(header["BITPIX"])
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    if bitpix < 0 or (bscale == 1 and bzero == 0 and "BLANK" not in header):
        return np.dtype(_BITPIX_DTYPES[bitpix])
    if bscale == 1 and (bitpix, bzero) in _PSEUDO_INTEGERS:
        return np.dtype(_PSEUDO_INTEGERS[bitpix, bzero])
    # Other scaled or BLANK integers are read as floats.
    return np.dtype("f8" if bitpix > 16 else "f4")


@dataclass(frozen=True, eq=False)
class ObjectMask:
    """The tile's object mask: file, celestial WCS and shape; pixels are read by section (:meth:`read`).

    Attributes
    ----------
    path : pathlib.Path or None
        Mask file (None for an in-memory mask).
    wcs : astropy.wcs.WCS
        WCS of the mask header.
    shape : (int, int)
        ``(ny, nx)``.
    dtype : numpy.dtype
        Integer type of the pixels (native byte order).
    hdu : int
        Index of the image HDU in the file.
    pixels : numpy.ndarray, optional
        The whole mask when already in memory (:meth:`from_array`); never set by :func:`read_object_mask`.
    """

    path: Path | None
    wcs: object
    shape: tuple
    dtype: np.dtype
    hdu: int = 0
    pixels: np.ndarray | None = None

    @classmethod
    def from_array(cls, pixels, wcs) -> "ObjectMask":
        """An in-memory mask (tests, or a mask already read)."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.integer):
            raise ValueError(f"an object mask is a 2-D integer image, got {pixels.ndim}-D {pixels.dtype}")
        return cls(None, wcs, pixels.shape, pixels.dtype.newbyteorder("="), 0, pixels)

    def read(self, y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
        """Pixels ``[y1:y2, x1:x2]`` (0-based, inside the image) in native byte order; read-only use.

        From a file only that box is read (``hdu.section``), in bands of
        :data:`MASK_BAND_ROWS` rows aligned on the compression tiles (each
        tile decompressed once).

        Raises
        ------
        JobError
            If the file cannot be read (names it).
        """
        if self.pixels is not None:
            # A view when already native: the caller only reads it.
            return self.pixels[y1:y2, x1:x2].astype(self.dtype, copy=False)
        from astropy.io import fits

        out = np.empty((y2 - y1, x2 - x1), self.dtype)
        try:
            with fits.open(self.path, memmap=True) as hdus:
                hdu = hdus[self.hdu]
                tile_rows = int(hdu.tile_shape[0]) if isinstance(hdu, fits.CompImageHDU) else 1
                band = max(MASK_BAND_ROWS // tile_rows, 1) * tile_rows
                start = y1
                while start < y2:
                    stop = min((start // band + 1) * band, y2)
                    # Assignment converts the (big-endian) section to native order, band by band.
                    out[start - y1:stop - y1] = hdu.section[start:stop, x1:x2]
                    start = stop
        except (OSError, ValueError) as error:
            raise JobError(f"{self.path}: cannot read the object mask ({error})") from error
        return out


def read_object_mask(path) -> ObjectMask:
    """Object mask (int, first 2-D HDU) of a file: its header, WCS, shape and type; no pixel is read.

    Raises
    ------
    JobError
        If the file is unreadable, holds no 2-D integer image or no celestial WCS (names the file).
    """
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    path = Path(path)
    found = None
    try:
        with fits.open(path, memmap=True) as hdus:
            for index, hdu in enumerate(hdus):
                if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
                    found = index, hdu.header.copy()
                    break
    except OSError as error:
        raise JobError(f"{path}: cannot read image ({error})") from error
    if found is None:
        raise JobError(f"{path}: no 2-D image HDU")
    index, header = found
    dtype = image_dtype(header)
    if not np.issubdtype(dtype, np.integer):
        raise JobError(f"{path}: the object mask holds {dtype} values, expected integers "
                       "(sextractor OBJECT_MASK)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise JobError(f"{path}: the object mask has no celestial WCS in its header")
    return ObjectMask(path, wcs, (int(header["NAXIS2"]), int(header["NAXIS1"])), dtype, index)


def _tile_pixels(object_mask: ObjectMask, wcs, x, y):
    """0-based nearest tile column and row (float, NaN where undefined) of FITS CCD positions."""
    from astropy.wcs import NoConvergence

    ra, dec = wcs.all_pix2world(x, y, 1)
    try:
        tx, ty = object_mask.wcs.all_world2pix(ra, dec, 1)
    except NoConvergence as error:
        tx, ty = error.best_solution.T
    with np.errstate(invalid="ignore"):
        return np.floor(tx - 0.5), np.floor(ty - 0.5)


def _clip_box(col_min, col_max, row_min, row_max, shape, margin=MASK_MARGIN):
    """``(y1, y2, x1, x2)`` of a tile-pixel range plus ``margin``, clipped to the image; None if the range is
    off the image."""
    ny, nx = shape
    if col_max < 0 or row_max < 0 or col_min >= nx or row_min >= ny:
        return None
    x1, x2 = max(int(col_min) - margin, 0), min(int(col_max) + margin + 1, nx)
    y1, y2 = max(int(row_min) - margin, 0), min(int(row_max) + margin + 1, ny)
    return (y1, y2, x1, x2) if x1 < x2 and y1 < y2 else None


def stamps_tile_box(object_mask: ObjectMask, wcs, ix, iy, size, chunk=NEIGHBOUR_CHUNK):
    """Tile-pixel box ``(y1, y2, x1, x2)`` under all the stamps of a CCD (plus :data:`MASK_MARGIN`), or None.

    Only each stamp's border pixels are converted: CCD -> tile is a smooth
    one-to-one map, so the tile pixels of a stamp's inside lie within the
    range of its border's (up to the curvature between two border pixels,
    far below the margin). :func:`neighbour_stamp_pixels` still checks every
    pixel against the box and widens it if ever needed.
    """
    half = size // 2
    edge = np.arange(size) - half
    side = edge[1:-1]
    bx = np.concatenate([edge, edge, np.full(side.size, -half), np.full(side.size, half)])
    by = np.concatenate([np.full(size, -half), np.full(size, half), side, side])
    low = np.array([np.inf, np.inf])
    high = -low
    for start in range(0, ix.size, chunk):
        part = slice(start, start + chunk)
        x = (ix[part, None] + bx + 1).astype(float).ravel()
        y = (iy[part, None] + by + 1).astype(float).ravel()
        col, row = _tile_pixels(object_mask, wcs, x, y)
        good = np.isfinite(col) & np.isfinite(row)
        if good.any():
            low = np.minimum(low, [col[good].min(), row[good].min()])
            high = np.maximum(high, [col[good].max(), row[good].max()])
    if not np.all(np.isfinite(low)):
        return None
    # Clip in float first: a border far off the tile must not overflow int().
    ny, nx = object_mask.shape
    low = np.clip(low, -1, [nx, ny])
    high = np.clip(high, -1, [nx, ny])
    return _clip_box(low[0], high[0], low[1], high[1], object_mask.shape)


def neighbour_stamp_pixels(object_mask: ObjectMask, wcs, ix, iy, size, numbers, chunk=NEIGHBOUR_CHUNK) -> np.ndarray:
    """Exposure stamp pixels that fall on another object or a saturated region of the tile mask.

    Only the part of the mask under the stamps is read
    (:func:`stamps_tile_box`, :meth:`ObjectMask.read`), once per call.

    Parameters
    ----------
    object_mask : ObjectMask
        Tile object mask (NUMBER inside each object's ellipse, -1 saturated regions, 0 sky).
    wcs : astropy.wcs.WCS
        WCS of the exposure CCD.
    ix, iy : array_like of int
        0-based central column and row of each stamp on the CCD (:func:`.stamps.central_pixels`).
    size : int
        Odd stamp side.
    numbers : array_like of int
        NUMBER of each stamp's object (its own pixels are never masked).
    chunk : int
        Objects converted at once (bounds memory: ``chunk * size**2`` positions).

    Returns
    -------
    numpy.ndarray of bool
        ``(n, size, size)``: True where the nearest tile pixel to the stamp
        pixel's sky position holds another object's NUMBER or -1; pixels
        off the tile are False.
    """
    from shapepipe_modules.crowded.masks import neighbour_pixels

    ix = np.atleast_1d(np.asarray(ix, dtype=np.int64))
    iy = np.atleast_1d(np.asarray(iy, dtype=np.int64))
    numbers = np.atleast_1d(np.asarray(numbers))
    n = ix.size
    half = size // 2
    offsets = np.arange(size) - half
    ny, nx = object_mask.shape
    out = np.zeros((n, size, size), bool)
    box = stamps_tile_box(object_mask, wcs, ix, iy, size, chunk)
    section = object_mask.read(*box) if box is not None else None
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        # FITS (1-based) centres of the stamp pixels on the CCD.
        x = np.broadcast_to((ix[part, None, None] + offsets[None, None, :] + 1).astype(float),
                            (part.stop - start, size, size)).ravel()
        y = np.broadcast_to((iy[part, None, None] + offsets[None, :, None] + 1).astype(float),
                            (part.stop - start, size, size)).ravel()
        col, row = _tile_pixels(object_mask, wcs, x, y)
        with np.errstate(invalid="ignore"):
            inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        cols = col[inside].astype(np.int64)
        rows = row[inside].astype(np.int64)
        values = np.zeros(x.size, object_mask.dtype)
        if rows.size:
            lo_c, hi_c, lo_r, hi_r = cols.min(), cols.max(), rows.min(), rows.max()
            if box is None or lo_r < box[0] or hi_r >= box[1] or lo_c < box[2] or hi_c >= box[3]:
                # Not expected (see stamps_tile_box); read a box that holds these pixels too.
                if box is not None:
                    lo_r, hi_r = min(lo_r, box[0]), max(hi_r, box[1] - 1)
                    lo_c, hi_c = min(lo_c, box[2]), max(hi_c, box[3] - 1)
                box = _clip_box(lo_c, hi_c, lo_r, hi_r, object_mask.shape)
                section = object_mask.read(*box)
            values[inside] = section[rows - box[0], cols - box[2]]
        out[part] = neighbour_pixels(values.reshape(-1, size, size), numbers[part])
    return out


class _Pending:
    """Epochs cut for objects whose other epochs are not cut yet."""

    def __init__(self, expected: np.ndarray):
        self.remaining = expected.astype(np.int64).copy()
        self.epochs: dict[int, dict] = {}
        self.problems: dict[int, list[str]] = {}

    def add(self, row: int, key: str, arrays: dict, meta: dict) -> None:
        self.epochs.setdefault(row, {})[key] = (arrays, meta)

    def drop(self, row: int, key: str, reason: str) -> None:
        self.problems.setdefault(row, []).append(f"{key}: {reason}")


def make_multi_epoch_stamps(
    catalogue_path,
    header_store_path,
    sources: list[Source],
    output_dir,
    number: str,
    stamp_size: int,
    position_params=("XWIN_WORLD", "YWIN_WORLD"),
    logger: logging.Logger | None = None,
    off_ccd_flag: int = OFF_CCD_FLAG,
    batch_bytes: int = 64 * 2**20,
    compress: bool = False,
    object_mask=None,
) -> dict:
    """Cut the single-exposure stamps of every object of a tile catalogue.

    Parameters
    ----------
    catalogue_path : path-like
        Tile catalogue with ``NUMBER``, the position columns and ``EPOCH_i`` HDUs.
    header_store_path : path-like
        Header store of the exposures (``log_exp_headers.sqlite``).
    sources : list of Source
        Kinds of CCD files to cut (see :func:`make_sources`).
    output_dir : path-like
        Folder of the stores.
    number : str
        File number of the tile (``-244-252``), used in the store names.
    stamp_size : int
        Odd stamp side in pixels.
    position_params : (str, str)
        RA and Dec columns (degrees).
    logger : logging.Logger, optional
    off_ccd_flag : int
        Flag value of pixels off the CCD.
    batch_bytes : int
        Buffered bytes per store before a write transaction.
    compress : bool
        zlib-compress the store records (flag stamps 35x, weight and
        background 2x, image 1.3x smaller).
    object_mask : path-like or ObjectMask, optional
        Tile object mask: the weight of stamp pixels on other objects and
        saturated regions is set to 0 (module docstring); needs a weight source.

    Returns
    -------
    dict
        ``n_objects``, ``n_epochs`` (written), ``n_epochs_dropped``,
        ``n_no_epoch``, ``n_ccds``, ``missing_files`` (list of str) and
        ``bytes_written``; with ``object_mask``, ``neighbour_fraction``
        (mean over the epochs written).
    """
    from shapepipe_modules.io.header_store import HeaderStore

    logger = logger or logging.getLogger(__name__)
    size = check_stamp_size(stamp_size)
    catalogue_path = Path(catalogue_path)
    ra_col, dec_col = position_params
    columns = read_objects(catalogue_path, ["NUMBER", ra_col, dec_col])
    ids = columns["NUMBER"].astype(np.int64)
    ra = columns[ra_col].astype(float)
    dec = columns[dec_col].astype(float)
    epochs = read_epochs(catalogue_path, ids.size)
    if object_mask is not None:
        if "weight" not in [s.kind for s in sources]:
            raise ValueError("a neighbour mask needs a weight pattern in ME_IMAGE_PATTERN (its stamps get "
                             "zero weight)")
        if not isinstance(object_mask, ObjectMask):
            object_mask = read_object_mask(object_mask)

    try:
        headers = HeaderStore(header_store_path)
    except Exception as error:  # StoreError, or an unreadable SQLite file
        raise JobError(f"header store {header_store_path}: {error}") from error

    output_dir = Path(output_dir)
    paths = [output_dir / store_name(s.pattern, number) for s in sources]
    stores = [StampStore(p, mode="w", batch_bytes=batch_bytes, compress=compress) for p in paths]
    pending = _Pending(np.bincount(epochs.row, minlength=ids.size))
    summary = {"n_objects": int(ids.size), "n_epochs": 0, "n_epochs_dropped": 0, "n_no_epoch": 0,
               "n_ccds": 0, "missing_files": []}
    success = False
    neighbour_sum = 0.0
    try:
        for row in np.flatnonzero(pending.remaining == 0):
            for store in stores:
                store.mark_no_epoch(ids[row], "no exposure saw the object (no EPOCH_i entry)")
            summary["n_no_epoch"] += 1

        for exposure, ccd, rows in _groups(epochs, dec):
            summary["n_ccds"] += 1
            key = epoch_key(exposure, ccd)
            cut = _cut_group(headers, sources, exposure, ccd, ra[rows], dec[rows], size, off_ccd_flag, logger,
                             object_mask, ids[rows])
            if isinstance(cut, str):
                summary["n_epochs_dropped"] += rows.size
                if "file" in cut:
                    summary["missing_files"].append(cut)
                for row in rows:
                    pending.drop(row, key, cut)
            else:
                arrays_by_kind, jac, meta = cut
                names = list(meta)
                # Python floats once per group (JSON-ready), not numpy scalars per object.
                meta_rows = zip(*(np.asarray(values, dtype=float).tolist() for values in meta.values()))
                for i, (row, values) in enumerate(zip(rows.tolist(), meta_rows)):
                    arrays = {kind: stamps[i] for kind, stamps in arrays_by_kind.items()}
                    arrays["JACOBIAN"] = jac[i]
                    pending.add(row, key, arrays, dict(zip(names, values)))
                summary["n_epochs"] += rows.size
                if object_mask is not None:
                    neighbour_sum += float(np.sum(meta["NEIGHBOUR_FRACTION"]))
            pending.remaining[rows] -= 1
            for row in rows[pending.remaining[rows] == 0]:
                if _write_object(stores, sources, ids[row], pending.epochs.pop(row, {}),
                                 pending.problems.pop(row, []), off_ccd_flag):
                    summary["n_no_epoch"] += 1
        success = True
    finally:
        for store in stores:
            store.close(success=success)
        headers.close()
    summary["bytes_written"] = int(sum(p.stat().st_size for p in paths))
    if object_mask is not None:
        summary["neighbour_fraction"] = neighbour_sum / max(summary["n_epochs"], 1)
    return summary


def _groups(epochs, dec):
    """(exposure, ccd, object rows) per CCD, in order of mean declination."""
    if epochs.row.size == 0:
        return []
    labels, inverse = np.unique(np.char.add(np.char.add(epochs.exposure, "\x1f"), epochs.ccd.astype(str)),
                                return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    groups = []
    for members in np.split(order, bounds):
        rows = epochs.row[members]
        groups.append((float(np.mean(dec[rows])), epochs.exposure[members[0]], int(epochs.ccd[members[0]]), rows))
    groups.sort(key=lambda g: g[0])
    return [(exposure, ccd, rows) for _, exposure, ccd, rows in groups]


def _cut_group(headers, sources, exposure, ccd, ra, dec, size, off_ccd_flag, logger, object_mask=None,
               numbers=None):
    """Stamps of the objects of one CCD; a string saying why the epoch is unusable."""
    from astropy.wcs import NoConvergence

    key = epoch_key(exposure, ccd)
    try:
        wcs = headers.wcs(exposure, ccd)
    except KeyError as error:
        message = f"no WCS for epoch {key} in header store {headers.path} ({error.args[0]})"
        logger.error("epoch %s dropped for %d objects: %s", key, ra.size, message)
        return message
    try:
        x, y = wcs.all_world2pix(ra, dec, 1)
    except NoConvergence as error:
        x, y = error.best_solution.T
    ix, iy, dx, dy = central_pixels(x, y)
    arrays = {}
    missing = None
    shape = None
    for source in sources:
        path = source.path(exposure, ccd)
        try:
            data = read_ccd(path)
        except (OSError, ValueError) as error:
            reason = "missing" if not path.exists() else f"unreadable ({error})"
            message = f"file {path} {reason}"
            logger.error("epoch %s dropped for %d objects: %s", key, ra.size, message)
            return message
        if shape is None:
            shape = data.shape
        elif data.shape != shape:
            message = f"file {path} has shape {data.shape}, other files of epoch {key} {shape}"
            logger.error("epoch %s dropped for %d objects: %s", key, ra.size, message)
            return message
        # Stamps in native byte order (FITS is big-endian), same type and values.
        stamps, missing = cut_stamps(data, ix, iy, size, fill=OFF_CCD_VALUE, dtype=data.dtype.newbyteorder("="))
        del data
        if source.kind == "flag":
            if not np.issubdtype(stamps.dtype, np.integer):
                message = f"file {path} holds {stamps.dtype} values; a flag image must hold integers"
                logger.error("epoch %s dropped for %d objects: %s", key, ra.size, message)
                return message
            if np.iinfo(stamps.dtype).max < off_ccd_flag:
                stamps = stamps.astype(np.int32)
            stamps[missing] |= off_ccd_flag
        arrays[source.kind] = stamps
    jac = local_jacobians(wcs, x, y)
    n_pix = size * size
    neighbours = None
    if object_mask is not None:
        neighbours = neighbour_stamp_pixels(object_mask, wcs, ix, iy, size, numbers)
        arrays["weight"][neighbours] = 0
    masked = missing.copy()
    if "flag" in arrays:
        masked |= arrays["flag"] != 0
    if "weight" in arrays:
        masked |= arrays["weight"] <= 0
    half = size // 2
    meta = {
        "X_CCD": x, "Y_CCD": y,
        "CENTRE_ROW": half + dy, "CENTRE_COL": half + dx,
        "MASKED_FRACTION": masked.reshape(len(x), -1).sum(axis=1) / n_pix,
        "MISSING_FRACTION": missing.reshape(len(x), -1).sum(axis=1) / n_pix,
    }
    if neighbours is not None:
        meta["NEIGHBOUR_FRACTION"] = neighbours.reshape(len(x), -1).sum(axis=1) / n_pix
    return arrays, jac, meta


def _write_object(stores, sources, object_id, epochs: dict, problems: list, off_ccd_flag) -> bool:
    """Write one object's epochs to every store; True if it had none (recorded with the reason)."""
    if not epochs:
        reason = "no usable epoch: " + "; ".join(problems)
        for store in stores:
            store.mark_no_epoch(object_id, reason)
        return True
    jacobian_kind = jacobian_store_kind(sources)
    dropped = "; ".join(problems)
    encoded = {}
    for key, (_, meta) in epochs.items():
        record_meta = dict(meta)
        record_meta["OFF_CCD_FLAG"] = int(off_ccd_flag)
        if problems:
            record_meta["DROPPED_EPOCHS"] = dropped
        # The same metadata goes to every store: encoded once.
        encoded[key] = EncodedMeta(record_meta)
    for store, source in zip(stores, sources):
        kind = source.kind
        with_jacobian = kind == jacobian_kind
        store.put_object(object_id, {
            key: ({"VIGNET": arrays[kind], "JACOBIAN": arrays["JACOBIAN"]} if with_jacobian
                  else {"VIGNET": arrays[kind]}, encoded[key])
            for key, (arrays, _) in epochs.items()})
    return False
