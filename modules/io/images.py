"""Single-image FITS files, plain or tile-compressed without loss.

A compressed file follows the fpack convention: an empty primary HDU, then
the image in a ``CompImageHDU`` whose header is the image's. Integers use
RICE_1 (flag images: 60-90x smaller), floats GZIP_2 with no quantisation
(byte-shuffled gzip: every value is kept exactly; weights 3x, images 1.5x,
smooth backgrounds 3x), in blocks of 64 rows; a float map may instead be
quantised with a fixed step (RICE_1, e.g. a background to 0.01 ADU: 17x).
Readers find the image with :func:`image_hdu`, which accepts both layouts.

The GZIP_2 tiles are deflated by ISA-L (the ``isal`` package) at its level 1
instead of astropy's ``gzip.compress`` at level 9: 12x less CPU (0.06
instead of 0.74 s for a 2048 x 4612 CCD image) and as small (ratio 1.52
against 1.51); the same gzip format, so every reader (astropy, cfitsio,
funpack) decodes the same values. Readers of these files call
:func:`fast_inflate` first: astropy then inflates GZIP tiles with ISA-L too
(the same bytes as ``gzip.decompress``, in less than half its CPU).
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path


#: Rows per compression tile: whole rows in blocks of 64 cost a tenth of astropy's row-by-row tiles
#: to read (per-tile overhead) and compress better.
TILE_ROWS = 64


def compressed_hdu(data, header=None, quantize: float = 0.0):
    """A ``CompImageHDU`` of ``data``: RICE_1 for integers; for floats unquantised GZIP_2 (lossless) or,
    with ``quantize`` > 0, RICE_1 of the values rounded to multiples of ``quantize`` (no dither: the
    same file every time; smooth maps such as backgrounds, 17x smaller with 0.01 ADU)."""
    from astropy.io import fits

    data = np.asarray(data)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    tile = (min(TILE_ROWS, data.shape[0]), data.shape[1]) if data.ndim == 2 else None
    if data.dtype.kind in "iu":
        return fits.CompImageHDU(data=data, header=header, compression_type="RICE_1", tile_shape=tile)
    if quantize > 0:
        return fits.CompImageHDU(data=data, header=header, compression_type="RICE_1", tile_shape=tile,
                                 quantize_level=-float(quantize), quantize_method=-1)
    return fits.CompImageHDU(data=data, header=header, compression_type="GZIP_2", quantize_level=0.0,
                             tile_shape=tile)


#: ISA-L deflate level of the GZIP_2 tiles (0-3; 1 compresses shuffled float images as well as zlib's 9).
GZIP_LEVEL = 1


def _fast_gzip_compress(data: bytes) -> bytes:
    from isal import igzip

    return igzip.compress(data, GZIP_LEVEL, mtime=0)  # mtime 0: the same bytes for the same data


@contextlib.contextmanager
def fast_gzip():
    """Within the block, astropy deflates GZIP tiles with ISA-L (:data:`GZIP_LEVEL`) instead of zlib's level 9.

    astropy's tile codecs call the module-level ``gzip_compress`` of
    ``astropy.io.fits.hdu.compressed._codecs``; it is swapped for the block
    only (a job writes its files one at a time). Without ``isal``, or if
    astropy's layout changes, astropy's own compressor runs: the same format.
    """
    try:
        import isal.igzip  # noqa: F401
        from astropy.io.fits.hdu.compressed import _codecs
    except ImportError:
        yield
        return
    original = getattr(_codecs, "gzip_compress", None)
    if original is None:
        yield
        return
    _codecs.gzip_compress = _fast_gzip_compress
    try:
        yield
    finally:
        _codecs.gzip_compress = original


def _isal_gzip_decompress(data: bytes) -> bytes:
    from isal import igzip

    return igzip.decompress(data)


def fast_inflate() -> None:
    """From now on in this process, astropy inflates GZIP image tiles with ISA-L (idempotent).

    A tile's bytes are the same as from ``gzip.decompress`` (ISA-L checks the
    CRC and the length too, and raises on a damaged tile); only the CPU
    differs: a 2048 x 4612 GZIP_2 CCD image inflates in 0.04-0.07 instead of
    0.10 s. Without ``isal``, or if astropy's layout changes, nothing changes.
    """
    try:
        import isal.igzip  # noqa: F401
        from astropy.io.fits.hdu.compressed import _codecs
    except ImportError:
        return
    if getattr(_codecs, "gzip_decompress", None) is not None:
        _codecs.gzip_decompress = _isal_gzip_decompress


#: Compression keys of the images :func:`image_data` decodes itself (others: astropy's decoder).
_FAST_TYPES = {("GZIP_2", -32), ("RICE_1", 8), ("RICE_1", 16), ("RICE_1", 32), ("RICE_1", -32)}


def image_data(hdu):
    """The data of an image HDU; a tile-compressed image of the pipeline's kinds decoded without astropy's
    per-tile overhead.

    The kinds written here and by fpack for CFIS (whole-row tiles): GZIP_2
    lossless float32 (split CCD images, check images), RICE_1 integers
    (flags) and RICE_1 quantised float32 (fpack's weights, one row per tile).
    The tiles are decoded by the same codecs as astropy's (ISA-L for GZIP,
    astropy's RICE and unquantisation functions with the same dither seeds)
    in one loop, each GZIP tile inflated once (astropy inflates GZIP_2 tiles
    twice) and un-shuffled into the output without intermediate copies: the
    same array, in about half the CPU for images, a third for row-tiled
    weights. Anything else (blank values, scaled integers, other codecs or
    tile shapes, astropy changes) is decoded by astropy (``hdu.data``).
    """
    from astropy.io import fits

    if isinstance(hdu, fits.CompImageHDU) and not getattr(hdu, "_data_loaded", True):
        try:
            data = _decode_tiles(hdu)
        except Exception:  # noqa: BLE001  an unexpected layout or an astropy change: astropy decodes it
            data = None
        if data is not None:
            return data
    return hdu.data


def _setting(header, name, default):
    for i in range(1, 1000):
        if f"ZNAME{i}" not in header:
            break
        if str(header[f"ZNAME{i}"]).lower() == name.lower():
            return header[f"ZVAL{i}"]
    return default


def _decode_tiles(hdu):
    """The image of a CompImageHDU of a supported kind (see :func:`image_data`), or None."""
    from astropy.io.fits.hdu.compressed._compression import decompress_rice_1_c
    from astropy.io.fits.hdu.compressed._quantization import DITHER_METHODS, Quantize
    from isal import igzip

    table = hdu._bintable
    header = table.header
    kind, zbitpix = header.get("ZCMPTYPE"), header.get("ZBITPIX")
    if (kind, zbitpix) not in _FAST_TYPES or header.get("ZNAXIS") != 2:
        return None
    nx, ny = int(header["ZNAXIS1"]), int(header["ZNAXIS2"])
    if int(header.get("ZTILE1", nx)) != nx:
        return None
    rows_per_tile = int(header.get("ZTILE2", 1))
    names = table.columns.names
    quantized = "ZSCALE" in names
    # Tiles stored raw or by GZIP in the other columns have an empty COMPRESSED_DATA cell: astropy reads those.
    if set(names) - {"COMPRESSED_DATA", "GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA", "ZSCALE", "ZZERO"} \
            or (quantized and "ZZERO" not in names):
        return None
    if (zbitpix < 0) != (quantized or kind == "GZIP_2") or (kind == "GZIP_2" and quantized):
        return None
    if any(key in header for key in ("ZBLANK", "BLANK", "BSCALE", "BZERO", "ZSCALE", "ZZERO")) \
            or any(key in hdu.header for key in ("BLANK", "BSCALE", "BZERO")):
        return None
    column = table.columns["COMPRESSED_DATA"]
    if column.format.p_format not in ("B",):
        return None
    descriptors = np.array(table.data["COMPRESSED_DATA"])  # (size, offset) per tile: the heap is not read
    if descriptors.ndim != 2 or len(descriptors) != -(-ny // rows_per_tile):
        return None
    heap = table._get_raw_data(header["PCOUNT"], np.uint8, table._data_offset + table._theap)
    if heap is None or heap.size < int(header["PCOUNT"]) or np.any(descriptors.sum(axis=1) > heap.size):
        return None  # a truncated file: astropy's decoder says so
    dtype = {8: np.uint8, 16: np.int16, 32: np.int32, -32: np.float32}[zbitpix]
    out = np.empty((ny, nx), dtype=dtype)
    flat = out.reshape(-1)
    if kind == "GZIP_2":
        planes = out.view(np.uint8).reshape(-1, 4)
        order = range(4) if sys.byteorder == "big" else range(3, -1, -1)
        for tile, (size, offset) in enumerate(descriptors):
            start = tile * rows_per_tile * nx
            count = min(rows_per_tile, ny - tile * rows_per_tile) * nx
            if size == 0:
                return None
            raw = igzip.decompress(heap[offset:offset + size])
            if len(raw) != 4 * count:
                return None
            shuffled = np.frombuffer(raw, np.uint8).reshape(4, count)
            target = planes[start:start + count]
            for plane, byte in zip(shuffled, order):  # byte planes of the big-endian values
                target[:, byte] = plane
        return out
    blocksize = int(_setting(header, "BLOCKSIZE", 32))
    bytepix = int(_setting(header, "BYTEPIX", 4))
    if quantized:
        method = DITHER_METHODS[header.get("ZQUANTIZ", "NO_DITHER")]
        seed = int(header.get("ZDITHER0", 0))
        scales = np.array(table.data["ZSCALE"], dtype=np.float64)
        zeros = np.array(table.data["ZZERO"], dtype=np.float64)
    for tile, (size, offset) in enumerate(descriptors):
        start = tile * rows_per_tile * nx
        count = min(rows_per_tile, ny - tile * rows_per_tile) * nx
        if size == 0:
            return None  # a tile in GZIP_COMPRESSED_DATA or UNCOMPRESSED_DATA
        values = np.frombuffer(decompress_rice_1_c(heap[offset:offset + size].tobytes(), blocksize, bytepix, count),
                               dtype=f"i{bytepix}")[:count]
        if quantized:
            values = Quantize(row=(tile + seed) if method != -1 else 0, dither_method=method,
                              quantize_level=None, bitpix=zbitpix).decode_quantized(values, scales[tile], zeros[tile])
        flat[start:start + count] = values
    return out


def write_image(path, data, header=None, compress: bool = False, output_verify: str = "silentfix",
                quantize: float = 0.0) -> Path:
    """Write one image with its header, atomically; tile-compressed without loss if ``compress``.

    Parameters
    ----------
    path : path-like
        Output file (``.fits``; a compressed file keeps the name).
    data : numpy.ndarray
    header : astropy.io.fits.Header, optional
    compress : bool
        Empty primary HDU plus a ``CompImageHDU`` (fpack layout) instead of a
        single primary HDU; lossless unless ``quantize``.
    quantize : float
        Float images: step of the values kept (0: lossless); see
        :func:`compressed_hdu`.
    """
    from astropy.io import fits

    if compress:
        hdus = fits.HDUList([fits.PrimaryHDU(), compressed_hdu(data, header, quantize)])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    with atomic_path(path) as temporary, fast_gzip():
        hdus.writeto(temporary, output_verify=output_verify)
    return Path(path)


def image_hdu(hdus, index: int = 0):
    """HDU ``index`` of an open file, or, for ``index`` 0 of an fpack-layout file, its compressed image.

    An empty primary HDU followed by a ``CompImageHDU`` is read as the image
    (as fpack/funpack and astropy's ``getdata`` do).
    """
    from astropy.io import fits

    fast_inflate()
    hdu = hdus[index]
    if index == 0 and hdu.header.get("NAXIS", 0) == 0 and len(hdus) > 1 and isinstance(hdus[1], fits.CompImageHDU):
        return hdus[1]
    return hdu


def is_compressed(path) -> bool:
    """Whether a FITS file holds a tile-compressed image HDU."""
    from astropy.io import fits

    with fits.open(path) as hdus:
        return any(isinstance(hdu, fits.CompImageHDU) for hdu in hdus)


# Keys of a compressed image's binary table that describe the compression (kept by
# :func:`copy_compressed`); checksums are dropped, the header changes.
_TABLE_KEY = re.compile(r"^(XTENSION|BITPIX|NAXIS\d?|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|DIM|UNIT|NULL|SCAL|ZERO)\d+"
                        r"|ZIMAGE|ZBITPIX|ZCMPTYPE|ZQUANTIZ|ZDITHER0|ZSIMPLE|ZEXTEND|ZBLOCKED|ZPCOUNT|ZGCOUNT"
                        r"|ZTENSION|ZMASKCMP|ZBLANK|ZSCALE|ZZERO|ZNAXIS\d*|ZTILE\d+|ZNAME\d+|ZVAL\d+)$")


def copy_compressed(source, index: int, target, header=None) -> Path:
    """Write HDU ``index`` of ``source``, a tile-compressed image, to ``target`` without recompressing it.

    The compressed tiles are copied byte for byte (fpack layout: empty primary HDU, then the
    compressed HDU), so the image read back is the source's, bit for bit, at the source's size
    (quantised inputs stay as small as given, where a recompression would be lossy or larger).

    Parameters
    ----------
    source : path-like
        A FITS file whose HDU ``index`` is a ``CompImageHDU``.
    index : int
    target : path-like
        Output file, written atomically.
    header : astropy.io.fits.Header, optional
        Image header to store instead of the source's (structural and
        compression keys in it are ignored).

    Raises
    ------
    ValueError
        If the HDU is not a tile-compressed image.
    """
    from astropy.io import fits

    with fits.open(source, disable_image_compression=True) as hdus:
        table = hdus[index]
        if not table.header.get("ZIMAGE", False):
            raise ValueError(f"HDU {index} of {source} is not a tile-compressed image")
        info = table.fileinfo()
        kept = [card for card in table.header.cards if _TABLE_KEY.match(card.keyword)]
        image = header if header is not None else [card for card in table.header.cards
                                                   if not _TABLE_KEY.match(card.keyword)]
        image_cards = image.cards if hasattr(image, "cards") else image
        names = {card.keyword for card in kept}
        extra = [card for card in image_cards
                 if card.keyword not in names and not _TABLE_KEY.match(card.keyword)
                 and card.keyword not in ("SIMPLE", "EXTEND", "CHECKSUM", "DATASUM", "ZHECKSUM", "ZDATASUM", "END")
                 and not (card.keyword.startswith("NAXIS") or card.keyword in ("BSCALE", "BZERO"))]
        new_header = fits.Header(kept + extra)
        with open(source, "rb") as handle:
            handle.seek(info["datLoc"])
            data = handle.read(info["datSpan"])
    primary = fits.PrimaryHDU().header.tostring(padding=True)
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(primary.encode("ascii"))
            handle.write(new_header.tostring(padding=True).encode("ascii"))
            handle.write(data)
    return Path(target)
