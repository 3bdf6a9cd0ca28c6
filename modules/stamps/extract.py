"""Cutting the stamps of a batch of tiles into one HDF5 file.

For every target of a tile, and every *slot* of that tile (per band: the
tile image, then each exposure named by the tile's ``HISTORY`` and found in
the header store), the file holds

``data``, ``weight``, ``flag``
    ``(n, slots, size, size)`` stamps of the image, weight and flag, cut
    with the project's centre convention
    (:mod:`shapepipe_modules.vignetmaker.stamps`: the central pixel
    ``size // 2`` contains the target); pixel values are the file's own
    (exactly; ``data`` keeps the image type, ``weight`` float32, ``flag``
    int32). Pixels beyond the image border are padded with image 0,
    weight 0 and flag :data:`PADDED_FLAG`;
``psf``
    ``(n, slots, psf_size, psf_size)`` float32 PSF model at the target,
    centred on it (the same sub-pixel offset as the object in the stamp),
    unit sum. Exposure slots: the PSFEx model of the CCD
    (:func:`shapepipe_modules.psfinterp.interpolate.psf_stamps`). Tile
    slots: the mean of the exposure PSFs of the target in that band (the
    stacks are mean stacks; there is no PSF model of a tile);
``masked``
    ``(n, slots)`` pixels flagged, with zero weight or padded;
``present``, ``psf_present``
    ``(n, slots)`` whether the slot has a stamp (an exposure that did not
    see the target has none) and a PSF;
``ccd``
    ``(n, slots)`` CCD of the exposure slots (-1: tile slot or absent);
``x``, ``y``
    ``(n, slots)`` FITS (1-based) position of the target in the source
    image; in the stamp it is at ``x - x0`` where ``x0 = floor(x - 0.5) -
    size // 2`` is the stamp's offset;
``headers``
    ``(n, slots)`` the stamp's WCS as FITS header text (80-character
    cards): the source image's WCS, distortion (TPV, SIP) included, with
    ``CRPIX`` moved to the stamp;
``ids``, ``ra``, ``dec``
    the targets (ids as UTF-8 text); group attributes ``images`` (slot
    names, ``tile r``, ``exposure 2100001 r``), ``bands``, ``exposures``.

One group per tile (``/244.252``) and a ``/failed`` group (``ids``,
``reasons``) for the targets of the batch that got no stamp.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path
from shapepipe_modules.vignetmaker.multi_epoch import OFF_CCD_FLAG
from shapepipe_modules.vignetmaker.stamps import central_pixels, check_stamp_size, cut_stamps

from .kernels import cut_into_cube, fill_inside, masked_counts

FORMAT = "shapepipe_stamps"
FORMAT_VERSION = 1
#: Flag bit of stamp pixels beyond the image border (the MULTI-EPOCH stamps' bit).
PADDED_FLAG = OFF_CCD_FLAG
#: Target size of an HDF5 chunk in bytes (stamps are chunked whole, several per chunk).
CHUNK_BYTES = 1 << 18
COMPRESSIONS = ("gzip", "lzf", "none")


class ExtractionError(RuntimeError):
    """A tile cannot be cut (the message names the file)."""


@dataclass(frozen=True)
class Settings:
    """What is cut and how it is stored."""

    stamp_size: int = 51
    psf_size: int = 51
    compression: str = "gzip"
    compression_level: int = 1

    def __post_init__(self):
        check_stamp_size(self.stamp_size)
        check_stamp_size(self.psf_size)
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"COMPRESSION must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")


# ---------------------------------------------------------------------------
# Per-stamp WCS headers.


def _crpix_card(name: str, value: float) -> str:
    text = repr(float(value))
    if "e" in text or "n" in text or len(text) > 20:
        from astropy.io import fits

        return fits.Card(name, float(value)).image
    return f"{name:<8}= {text:>20}".ljust(80)


class StampWCS:
    """The WCS of an image as header text, re-centred on stamps.

    Parameters
    ----------
    header : astropy.io.fits.Header or str
        The image header (or its text, as the header store holds it), whose
        celestial WCS (with SIP or TPV distortion) the stamps inherit. Treat
        ``self.wcs`` as read-only (it may be the store's cached WCS).
    """

    def __init__(self, header):
        import warnings

        from astropy.wcs import WCS, FITSFixedWarning

        from shapepipe_modules.io.header_store import wcs_from_header_text

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            if isinstance(header, str):
                # The header store's per-process cache: the multi-epoch bookkeeping built it already.
                self.wcs = wcs_from_header_text(header)
            else:
                self.wcs = WCS(header)
            if self.wcs.naxis != 2:
                self.wcs = self.wcs.celestial
            cards = self.wcs.to_header(relax=True)
        self.crpix = (float(cards["CRPIX1"]), float(cards["CRPIX2"]))
        images = [card.image for card in cards.cards]
        names = [card.keyword for card in cards.cards]
        first, second = sorted((names.index("CRPIX1"), names.index("CRPIX2")))
        self._swap = names[first] == "CRPIX2"
        # The text around the two CRPIX cards, joined once: a stamp's text is then five pieces.
        self._pieces = ("".join(images[:first]), "".join(images[first + 1:second]), "".join(images[second + 1:]))
        self.length = 80 * len(images)

    def text(self, x0: int, y0: int) -> str:
        """Header text of a stamp whose first pixel is image pixel ``(x0 + 1, y0 + 1)`` (FITS)."""
        one = _crpix_card("CRPIX1", self.crpix[0] - x0)
        two = _crpix_card("CRPIX2", self.crpix[1] - y0)
        if self._swap:
            one, two = two, one
        return self._pieces[0] + one + self._pieces[1] + two + self._pieces[2]

    def texts(self, x0, y0) -> np.ndarray:
        """Header texts of many stamps (:meth:`text`), as an array of ASCII bytes (``S<80 * cards>``).

        Every stamp's text is the same but for the two ``CRPIX`` values: a copy of one template with
        the two 20-character value fields written in, the values formatted as :meth:`text` does.
        """
        x0 = np.atleast_1d(np.asarray(x0))
        y0 = np.atleast_1d(np.asarray(y0))
        n = x0.size
        if n == 0:
            return np.zeros(0, dtype=f"S{self.length}")
        template = np.frombuffer(self.text(0, 0).encode("ascii"), dtype=np.uint8)
        out = np.empty((n, template.size), dtype=np.uint8)
        out[:] = template
        first = len(self._pieces[0])
        second = first + 80 + len(self._pieces[1])
        columns = (first, second) if not self._swap else (second, first)
        for axis, (column, values) in enumerate(zip(columns, (self.crpix[0] - x0, self.crpix[1] - y0))):
            texts = [repr(v) for v in values.tolist()]
            plain = [t for t in texts if len(t) <= 20 and "e" not in t and "n" not in t]
            if len(plain) == n:
                field = np.frombuffer("".join(f"{t:>20}" for t in texts).encode("ascii"), dtype=np.uint8)
                out[:, column + 10:column + 30] = field.reshape(n, 20)
                continue
            name = f"CRPIX{axis + 1}"
            for i, value in enumerate(values.tolist()):
                out[i, column:column + 80] = np.frombuffer(_crpix_card(name, value).encode("ascii"), np.uint8)
        return out.view(f"S{template.size}").reshape(n)


def world_to_pixel(wcs, ra, dec):
    """FITS (1-based) positions, distortion included (best solution if the inversion stalls)."""
    from astropy.wcs import NoConvergence

    if np.size(ra) == 0:
        return np.zeros(0), np.zeros(0)
    try:
        x, y = wcs.all_world2pix(ra, dec, 1, quiet=True)
    except NoConvergence as error:
        x, y = error.best_solution.T
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


# ---------------------------------------------------------------------------
# Reading images.


_FITS_BLOCK = 2880
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _primary_image(path):
    """``(header text, data offset, shape, dtype)`` of a plain 2-D primary image, else None.

    Plain: ``SIMPLE = T``, ``NAXIS = 2``, no scaling (``BSCALE`` 1 and
    ``BZERO`` 0 or absent), so that the file's bytes are the pixel values
    and a memory map gives exactly what astropy would. Anything else (image
    in an extension, compressed, scaled) returns None and is left to
    astropy. Parsing these few cards costs microseconds, astropy's full
    header parse milliseconds per file, which matters for thousands of CCDs.
    """
    values = {}
    text = []
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_FITS_BLOCK)
            if len(block) < _FITS_BLOCK:
                return None
            text.append(block)
            for start in range(0, _FITS_BLOCK, 80):
                card = block[start:start + 80]
                key = card[:8].rstrip()
                if key == b"END":
                    header = b"".join(text)
                    return _plain_layout(values, header, len(header))
                if card[8:10] == b"= " and key in (b"SIMPLE", b"BITPIX", b"NAXIS", b"NAXIS1", b"NAXIS2",
                                                   b"BSCALE", b"BZERO", b"GROUPS"):
                    values[key.decode()] = card[10:].split(b"/")[0].strip().decode("ascii", "replace")
            if len(text) > 1000:  # no END in 2.9 MB: not a header worth a fast path
                return None


def _plain_layout(values, header, offset):
    try:
        if values.get("SIMPLE") != "T" or int(values["NAXIS"]) != 2 or values.get("GROUPS", "F") != "F":
            return None
        if float(values.get("BSCALE", "1").replace("D", "E")) != 1.0:
            return None
        if float(values.get("BZERO", "0").replace("D", "E")) != 0.0:
            return None
        dtype = np.dtype(_BITPIX[int(values["BITPIX"])])
        shape = (int(values["NAXIS2"]), int(values["NAXIS1"]))
    except (KeyError, ValueError):
        return None
    return header, offset, shape, dtype


class _Image:
    """A 2-D FITS image opened with memory mapping (pages read only where stamps are cut).

    Plain primary images are mapped directly (:func:`_primary_image`); the
    header is then parsed by astropy only if asked for. Tile-compressed
    images (the split exposures are written so) are decompressed by fitsio
    (cfitsio) in row bands, only the rows the stamps cover
    (:meth:`need_rows`): decompression is most of the cost of reading them,
    and astropy's per-tile decoding of a section costs ~0.3 ms a row. Other
    files go through astropy.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._hdus = None
        self._header = None
        self._text = None
        self._compressed = None  # (fitsio HDU, extension number) of a compressed image
        try:
            plain = _primary_image(self.path)
            if plain is not None:
                self._text, offset, shape, dtype = plain
                if shape[0] * shape[1] * dtype.itemsize + offset > self.path.stat().st_size:
                    raise ExtractionError(f"{self.path}: truncated (data of {shape[1]} x {shape[0]} {dtype} "
                                          f"beyond the end of the file)")
                self.data = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)
                return
            if self._open_compressed():
                return
            self._open_astropy()
        except OSError as error:
            raise ExtractionError(f"{self.path}: cannot read ({error})") from error

    def _open_compressed(self) -> bool:
        """Open the first 2-D image with fitsio if it is tile-compressed; False otherwise."""
        try:
            import fitsio
        except ImportError:  # a pip-only install without it: astropy decompresses whole images
            return False
        try:
            handle = fitsio.FITS(str(self.path))
        except OSError:
            return False
        for hdu in handle:
            if hdu.get_exttype() != "IMAGE_HDU" or len(hdu.get_dims()) != 2:
                continue
            if not hdu.is_compressed():
                break
            # Rows are filled on demand; untouched rows of the zeroed array cost no memory. The first
            # row gives the type cfitsio decompresses to (scaling applied).
            first = hdu[0:1, :]
            self.data = np.zeros((hdu.get_dims()[0], first.shape[1]), dtype=first.dtype.newbyteorder("="))
            self.data[0] = first[0]
            self._loaded = np.zeros(self.data.shape[0], dtype=bool)
            self._loaded[0] = True
            self._compressed = (hdu, hdu.get_extnum(), handle)
            return True
        handle.close()
        return False

    def need_rows(self, iy, size):
        """Decompress the rows covered by stamps of ``size`` centred on 0-based rows ``iy`` (compressed images)."""
        if self._compressed is None:
            return
        ny = self.data.shape[0]
        iy = np.asarray(iy, dtype=np.int64)
        low = np.clip(iy - size // 2, 0, ny)
        high = np.clip(iy - size // 2 + size, 0, ny)
        cover = np.zeros(ny + 1, dtype=np.int64)
        np.add.at(cover, low, 1)
        np.add.at(cover, high, -1)
        wanted = (np.cumsum(cover[:-1]) > 0) & ~self._loaded
        if not wanted.any():
            return
        hdu = self._compressed[0]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], wanted.view(np.int8), [0]])))
        for start, stop in zip(edges[0::2], edges[1::2]):
            self.data[start:stop] = hdu[int(start):int(stop), :]
        self._loaded |= wanted

    def _open_astropy(self):
        from astropy.io import fits

        self._hdus = fits.open(self.path, memmap=True)
        for hdu in self._hdus:
            if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
                self._header = hdu.header
                self.data = hdu.data
                return
        self._hdus.close()
        raise ExtractionError(f"{self.path}: no 2-D image HDU")

    @property
    def header(self):
        if self._header is None:
            from astropy.io import fits

            if self._compressed is not None:  # astropy's image header (compression cards translated)
                self._header = fits.getheader(self.path, self._compressed[1])
            else:
                self._header = fits.Header.fromstring(self._text.decode("ascii", "replace"))
        return self._header

    def prefetch(self, rows):
        """Ask the kernel to start reading image rows ``rows[0]:rows[1]`` (cold cache: the reads
        of several files then overlap the cutting instead of faulting page by page)."""
        if self._hdus is not None or self._compressed is not None or not hasattr(os, "posix_fadvise"):
            return
        ny, nx = self.data.shape
        first, last = max(0, int(rows[0])), min(ny, int(rows[1]))
        if last <= first:
            return
        row_bytes = nx * self.data.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, self.data.offset + first * row_bytes, (last - first) * row_bytes,
                             os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def cut(self, ix, iy, size, fill, dtype=None):
        self.need_rows(iy, size)
        dtype = np.dtype(dtype or self.data.dtype).newbyteorder("=")
        return cut_stamps(self.data, ix, iy, size, fill=fill, dtype=dtype)

    def close(self):
        self.data = None
        if self._compressed is not None:
            self._compressed[2].close()
            self._compressed = None
        if self._hdus is not None:
            self._hdus.close()


def read_image_header(path):
    """Header of the first 2-D image HDU of a FITS file (the pixels are not read)."""
    image = _Image(path)
    try:
        return image.header.copy()
    finally:
        image.close()


# ---------------------------------------------------------------------------
# Slots.


class TileCubes:
    """The stamps of one tile, every slot of a target together: arrays ``(n, slots, ...)``.

    This is the layout of the batch file (a chunk holds every slot of a few
    targets), so the arrays are written out without rearranging. Rows
    without a stamp in a slot keep image 0, weight 0, flag
    :data:`PADDED_FLAG` (set by :meth:`finish`), every pixel masked.
    """

    def __init__(self, n: int, slots: int, size: int, psf_size: int, data_dtype=np.float32):
        self.n, self.k, self.size, self.psf_size = n, slots, size, psf_size
        shape = (n, slots, size, size)
        self.data = np.zeros(shape, dtype=data_dtype)
        self.weight = np.zeros(shape, dtype=np.float32)
        self.flag = np.zeros(shape, dtype=np.int32)
        self.psf = np.zeros((n, slots, psf_size, psf_size), dtype=np.float32)
        self.present = np.zeros((n, slots), dtype=bool)
        self.psf_present = np.zeros((n, slots), dtype=bool)
        self.masked = np.full((n, slots), size * size, dtype=np.int32)
        self.ccd = np.full((n, slots), -1, dtype=np.int16)
        self.x = np.full((n, slots), np.nan)
        self.y = np.full((n, slots), np.nan)
        self.headers = [[] for _ in range(slots)]  # per slot: (rows, S-array of header texts)
        # Type of the image each slot was cut from (the data cube's type is the common type of all).
        self.slot_dtypes = [None] * slots

    def slot(self, j: int) -> "SlotStamps":
        return SlotStamps(self, j)

    def data_type_for(self, j: int, dtype):
        """Record that slot ``j`` holds pixels of ``dtype``; widen the data cube if it cannot hold them
        exactly (the values already cut convert exactly)."""
        dtype = np.dtype(dtype).newbyteorder("=")
        if self.slot_dtypes[j] is None:
            self.slot_dtypes[j] = dtype
        common = np.result_type(self.data.dtype, dtype)
        if common != self.data.dtype:
            self.data = self.data.astype(common)

    def finish(self):
        """Padding flag on the rows of absent slots; the data cube in the common type of the slots
        (a slot that got no stamp counts as float32)."""
        absent = ~self.present
        if absent.any():
            self.flag[absent] = PADDED_FLAG
        kinds = [d if d is not None else np.dtype(np.float32) for d in self.slot_dtypes]
        common = np.result_type(*kinds) if kinds else self.data.dtype
        if common != self.data.dtype:
            self.data = self.data.astype(common)

    def header_array(self) -> np.ndarray:
        """``(n, slots)`` header texts (empty where no stamp), as wide as the longest."""
        length = max([texts.dtype.itemsize for pieces in self.headers for _, texts in pieces] + [80])
        headers = np.zeros((self.n, self.k), dtype=f"S{length}")
        for j, pieces in enumerate(self.headers):
            for rows, texts in pieces:
                headers[rows, j] = texts
        return headers


class SlotStamps:
    """One slot of a :class:`TileCubes`: views ``(n, ...)`` of its arrays."""

    def __init__(self, cubes: TileCubes, j: int):
        self.cubes, self.j = cubes, j
        self.n, self.size, self.psf_size = cubes.n, cubes.size, cubes.psf_size

    def __getattr__(self, name):
        if name in ("data", "weight", "flag", "psf", "present", "psf_present", "masked", "ccd", "x", "y"):
            return getattr(self.cubes, name)[:, self.j]
        raise AttributeError(name)


def cut_into(slot: SlotStamps, rows, image: _Image, weight: _Image | None, flag: _Image | None,
             x, y, stamp_wcs: StampWCS):
    """Cut the stamps of targets ``rows`` at FITS positions ``(x, y)`` into a slot.

    Weight without a weight file: 1 on the image, 0 beyond it. Returns the
    0-based central pixels ``(ix, iy)``. Nothing is written when a file
    does not fit (ExtractionError).
    """
    cubes, j = slot.cubes, slot.j
    size = cubes.size
    half = size // 2
    rows = np.asarray(rows, dtype=np.int64)
    ix, iy, _, _ = central_pixels(x, y)
    shape = image.data.shape
    for other in (weight, flag):
        if other is not None and other.data.shape != shape:
            raise ExtractionError(f"{other.path}: shape {other.data.shape}, image {image.path} {shape}")
    if flag is not None and not np.issubdtype(flag.data.dtype, np.integer):
        raise ExtractionError(f"{flag.path}: holds {flag.data.dtype} values; a flag image must hold integers")
    cubes.data_type_for(j, image.data.dtype)
    _cut(image, ix, iy, size, 0, cubes.data, rows, j)
    if weight is not None:
        _cut(weight, ix, iy, size, 0, cubes.weight, rows, j)
    else:
        fill_inside(shape, ix, iy, size, 1, 0, cubes.weight, rows, j)
    if flag is not None:
        _cut(flag, ix, iy, size, PADDED_FLAG, cubes.flag, rows, j)
    else:
        fill_inside(shape, ix, iy, size, 0, PADDED_FLAG, cubes.flag, rows, j)
    masked_counts(cubes.flag, cubes.weight, rows, j, cubes.masked)
    cubes.present[rows, j] = True
    cubes.x[rows, j] = x
    cubes.y[rows, j] = y
    cubes.headers[j].append((rows, stamp_wcs.texts(ix - half, iy - half)))
    return ix, iy


def _cut(image: _Image, ix, iy, size, fill, cube, rows, j):
    """Stamps of an image into ``cube[rows, j]``: the compiled one-pass copy when it handles the types,
    else numpy (cast to the cube's type; ``fill`` on pixels beyond the border, where a flag stamp also
    gets the padding bit: ``fill`` is :data:`PADDED_FLAG` for flags)."""
    image.need_rows(iy, size)
    if cut_into_cube(image.data, ix, iy, size, fill, cube, rows, j):
        return
    stamps, missing = cut_stamps(image.data, ix, iy, size, fill=0, dtype=cube.dtype)
    if fill:
        stamps[missing] |= fill
    cube[rows, j] = stamps


# ---------------------------------------------------------------------------
# One tile.


@dataclass
class TileResult:
    """What :func:`extract_tile` produced."""

    slots: list               # SlotStamps views of ``cubes``
    names: list
    bands: list
    exposures: list
    rows: np.ndarray          # targets (indices into the tile's list) that got stamps
    failed: dict              # index -> reason
    notes: list = field(default_factory=list)
    files_read: set = field(default_factory=set)
    cubes: TileCubes = None


def _open(path, files_read):
    image = _Image(path)
    files_read.add(str(path))
    return image


def extract_tile(tile: str, ra, dec, layout, settings: Settings, store=None, logger=None) -> TileResult:
    """Stamps of every slot for targets ``(ra, dec)`` of one tile.

    Targets whose position falls outside the tile image of the first band
    fail (reason given); a band or exposure whose file is missing leaves
    its slot absent (noted). A missing tile file of the first band, or a
    declared weight or flag file missing, fails every target of the tile.

    Parameters
    ----------
    tile : str
        Tile id ``XXX.YYY``.
    ra, dec : arrays
        Target positions (degrees).
    layout : Layout
    settings : Settings
    store : HeaderStore, optional
        Open header store (exposure slots need it).
    logger : logging.Logger, optional
    """
    from shapepipe_modules.sextractor.multi_epoch import assign_ccds, history_exposures

    logger = logger or logging.getLogger(__name__)
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    n = ra.size
    size, psf_size = settings.stamp_size, settings.psf_size
    files_read: set = set()
    notes = []

    # Tiles of every band; the first band decides which targets are on the tile.
    band_files = []
    for band in layout.bands:
        paths = {}
        for kind in ("image", "weight", "flag"):
            pattern = getattr(band, kind)
            if pattern is None:
                paths[kind] = None
                continue
            path = layout.tile_file(band, kind, tile)
            if path is None:
                message = (f"tile {kind} {pattern}-{tile.replace('.', '-')}{layout.ext} not found in "
                           f"{', '.join(str(d) for d in layout.tile_dirs)}")
                if band is layout.bands[0]:
                    return TileResult([], [], [], [], np.zeros(0, dtype=np.int64), dict.fromkeys(range(n), message),
                                      [message], files_read)
                notes.append(message + f"; band {band.name} has no tile slot")
                paths = None
                break
            paths[kind] = path
        band_files.append(paths)

    images = {}
    try:
        first = band_files[0]
        images[(0, "image")] = _open(first["image"], files_read)
        tile_header = images[(0, "image")].header
        wcs0 = StampWCS(tile_header)
        x0, y0 = world_to_pixel(wcs0.wcs, ra, dec)
        ny, nx = images[(0, "image")].data.shape
        ix, iy, _, _ = central_pixels(x0, y0)
        on = np.isfinite(x0) & np.isfinite(y0) & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        failed = {int(i): f"outside the image of tile {tile} (x = {x0[i]:.1f}, y = {y0[i]:.1f}, "
                  f"image {nx} x {ny})" for i in np.flatnonzero(~on)}
        rows = np.flatnonzero(on)
        m = rows.size
        ra_on, dec_on = ra[rows], dec[rows]

        # The slots first (per band: the tile, then the exposures stacked into it), so that the
        # stamps of every slot are cut straight into one array per kind.
        plan = []  # (band index, band, paths, exposures, notes on missing exposures)
        for b, (band, paths) in enumerate(zip(layout.bands, band_files)):
            available, missing = [], []
            if layout.exposures and store is not None and m and paths is not None:
                header = tile_header if b == 0 else read_image_header(paths["image"])
                history = history_exposures(header)
                available = [e for e in history if e in store]
                missing = [f"exposure {e} of tile {tile} is not in header store {store.path}"
                           for e in history if e not in store]
            plan.append((b, band, paths, available, missing))
        names, bands, exposures_of_slot = [], [], []
        for _, band, paths, available, _ in plan:
            if paths is not None:
                names.append(f"tile {band.name}")
                bands.append(band.name)
                exposures_of_slot.append("")
            for exposure in available:
                names.append(f"exposure {exposure} {band.name}")
                bands.append(band.name)
                exposures_of_slot.append(exposure)
        cubes = TileCubes(m, len(names), size, psf_size,
                          data_dtype=images[(0, "image")].data.dtype.newbyteorder("="))
        slots = [cubes.slot(j) for j in range(len(names))]

        j = 0
        for b, band, paths, available, missing in plan:
            band_slots = []
            # Tile slot.
            if paths is not None:
                for kind in ("image", "weight", "flag"):
                    if paths[kind] is not None and (b, kind) not in images:
                        images[(b, kind)] = _open(paths[kind], files_read)
                image = images[(b, "image")]
                stamp_wcs = wcs0 if b == 0 else StampWCS(image.header)
                tile_slot = slots[j]
                j += 1
                cubes.data_type_for(tile_slot.j, image.data.dtype)
                x, y = (x0[rows], y0[rows]) if b == 0 else world_to_pixel(stamp_wcs.wcs, ra_on, dec_on)
                bix, biy, _, _ = central_pixels(x, y)
                bny, bnx = image.data.shape
                inside = np.flatnonzero((bix >= 0) & (bix < bnx) & (biy >= 0) & (biy < bny))
                cut_into(tile_slot, inside, image, images.get((b, "weight")), images.get((b, "flag")),
                         x[inside], y[inside], stamp_wcs)
                for kind in ("image", "weight", "flag"):
                    if (b, kind) in images and b > 0:
                        images.pop((b, kind)).close()
            else:
                tile_slot = None
            # Exposure slots: the exposures stacked into this band's tile.
            notes.extend(missing)
            for exposure in available:
                slot = slots[j]
                j += 1
                _exposure_slot(slot, exposure, ra_on, dec_on, layout, settings, store, files_read, notes,
                               assign_ccds, logger)
                band_slots.append(slot)
            if tile_slot is not None and band_slots:
                _mean_psf(tile_slot, band_slots)
        cubes.finish()
    finally:
        for image in images.values():
            image.close()
    return TileResult(slots, names, bands, exposures_of_slot, rows, failed, notes, files_read, cubes)


def _exposure_slot(slot, exposure, ra, dec, layout, settings, store, files_read, notes, assign_ccds, logger):
    """Stamps and PSFs of one exposure for targets (ra, dec), into ``slot``."""
    from shapepipe_modules.io.psfex_file import PSFFileError, read_psf
    from shapepipe_modules.psfinterp.interpolate import psf_stamps

    size, psf_size = settings.stamp_size, settings.psf_size
    cubes, j = slot.cubes, slot.j
    ccds = store.ccds(exposure)
    if not ccds:
        return
    first = store.header(exposure, ccds[0])
    nx, ny = int(first.get("NAXIS1", 0)), int(first.get("NAXIS2", 0))
    if nx <= 0 or ny <= 0:
        notes.append(f"exposure {exposure}: header store {store.path} has no NAXIS1/NAXIS2; exposure skipped")
        return
    ccd_of = assign_ccds(ra, dec, store, [exposure], (-0.5, nx - 0.5, -0.5, ny - 0.5))[0]
    # First the positions on every CCD, so that the next CCD's files can be read ahead while one is cut.
    plans = []
    for ccd in np.unique(ccd_of[ccd_of >= 0]).tolist():
        rows = np.flatnonzero(ccd_of == ccd)
        paths = {kind: layout.exposure_file(kind, exposure, ccd) for kind in ("image", "weight", "flag")}
        lost = [kind for kind in ("image", "weight", "flag")
                if getattr(layout, f"exp_{kind}") is not None and paths[kind] is None]
        if lost:
            notes.append(f"exposure {exposure} CCD {ccd}: no {' or '.join(lost)} file "
                         f"({getattr(layout, 'exp_' + lost[0])}-{exposure}-{ccd}{layout.ext}) in "
                         f"{', '.join(str(d) for d in layout.exp_dirs)}; {rows.size} stamp(s) absent")
            continue
        stamp_wcs = StampWCS(store.header_text(exposure, ccd))
        x, y = world_to_pixel(stamp_wcs.wcs, ra[rows], dec[rows])
        plans.append((ccd, rows, paths, stamp_wcs, x, y))
    opened_next = _open_plan(plans[0], files_read, notes, exposure, size) if plans else None
    for index, (ccd, rows, paths, stamp_wcs, x, y) in enumerate(plans):
        opened = opened_next
        opened_next = (_open_plan(plans[index + 1], files_read, notes, exposure, size)
                       if index + 1 < len(plans) else None)
        if opened is None:
            continue
        try:
            cut_into(slot, rows, opened["image"], opened.get("weight"), opened.get("flag"), x, y, stamp_wcs)
            cubes.ccd[rows, j] = ccd
        except ExtractionError as error:
            notes.append(f"exposure {exposure} CCD {ccd}: {error}; {rows.size} stamp(s) absent")
            continue
        finally:
            for image in opened.values():
                image.close()
        psf_path = layout.psf_file(exposure, ccd)
        if psf_path is None:
            if layout.psf_pattern is not None:
                notes.append(f"exposure {exposure} CCD {ccd}: no PSF model {layout.psf_pattern}-{exposure}-{ccd}"
                             f"{layout.psf_ext}; {rows.size} stamp(s) without PSF")
            continue
        try:
            model = read_psf(psf_path)
        except (PSFFileError, OSError, KeyError, ValueError) as error:
            notes.append(f"{psf_path}: unreadable PSF model ({error}); {rows.size} stamp(s) without PSF")
            continue
        files_read.add(str(psf_path))
        _, _, dx, dy = central_pixels(x, y)
        cubes.psf[rows, j] = psf_stamps(model, x, y, size=psf_size, dx=dx, dy=dy, dtype=np.float32)
        cubes.psf_present[rows, j] = True
    if opened_next is not None:  # only when the loop was left early; never in practice
        for image in opened_next.values():
            image.close()


def _open_plan(plan, files_read, notes, exposure, size):
    """Open the files of one CCD and ask for the rows its stamps need (None, noted, if a file fails)."""
    ccd, rows, paths, _, _, y = plan
    opened = {}
    try:
        for kind, path in paths.items():
            if path is not None:
                opened[kind] = _open(path, files_read)
    except ExtractionError as error:
        notes.append(f"exposure {exposure} CCD {ccd}: {error}; {rows.size} stamp(s) absent")
        for image in opened.values():
            image.close()
        return None
    if y.size:
        _, iy, _, _ = central_pixels(y, y)
        span = (iy.min() - size // 2, iy.max() + size // 2 + 1)
        for image in opened.values():
            image.prefetch(span)
    return opened


def _mean_psf(tile_slot: SlotStamps, exposure_slots):
    """Tile PSF: the mean of the target's exposure PSFs in the band (unit sum kept)."""
    cubes = tile_slot.cubes
    total = np.zeros((cubes.n, cubes.psf_size, cubes.psf_size), dtype=np.float64)
    count = np.zeros(cubes.n, dtype=np.int64)
    for slot in exposure_slots:
        # In place, without copying the selected stamps (absent PSFs are zero).
        present = cubes.psf_present[:, slot.j]
        np.add(total, cubes.psf[:, slot.j], out=total, where=present[:, None, None])
        count += present
    have = count > 0
    np.divide(total, np.maximum(count, 1)[:, None, None], out=total)
    cubes.psf[:, tile_slot.j] = total
    cubes.psf_present[:, tile_slot.j] = have & cubes.present[:, tile_slot.j]


# ---------------------------------------------------------------------------
# One batch: one HDF5 file.


def _filters(settings: Settings) -> dict:
    if settings.compression == "none":
        return {}
    if settings.compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    return {"compression": "gzip", "compression_opts": int(settings.compression_level), "shuffle": True}


def deflate_function(level: int):
    """``bytes -> bytes`` giving a zlib stream, as HDF5's deflate filter writes and reads it.

    ISA-L (the ``isal`` package) for levels 1 to 3: the same format, ten
    times faster than zlib at level 1 with the same ratio on stamps; zlib
    otherwise (or when ``isal`` is not installed).
    """
    import zlib

    level = int(level)
    if 1 <= level <= 3:
        try:
            from isal import isal_zlib
        except ImportError:
            pass
        else:
            return lambda data: isal_zlib.compress(data, level)
    return lambda data: zlib.compress(data, level)


def shuffle_bytes(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` through HDF5's shuffle filter (byte ``j`` of every element together)."""
    array = np.ascontiguousarray(array)
    size = array.dtype.itemsize
    if size == 1:
        return array.data
    return np.ascontiguousarray(array.view(np.uint8).reshape(-1, size).T).data


#: Threads compressing chunks in each process cutting a batch (zlib and ISA-L release the GIL).
COMPRESSION_THREADS = 2


class _ChunkWriter:
    """Writes whole chunks: compressed here (gzip: shuffle and deflate, as HDF5's filters would, in one
    call per chunk, on :data:`COMPRESSION_THREADS` threads) or left to h5py (``lzf``), or raw (``none``).

    Compressed chunks are written to the file in the order they were handed over, by
    :meth:`drain` (called by the thread that owns the file), so the file layout does not
    depend on thread timing; a tile's chunks compress while the next tile is cut.
    """

    def __init__(self, settings: Settings, threads: int = COMPRESSION_THREADS):
        from concurrent.futures import ThreadPoolExecutor

        self.filters = _filters(settings)
        self.direct = settings.compression in ("gzip", "none")
        self.deflate = deflate_function(settings.compression_level) if settings.compression == "gzip" else None
        self.pool = ThreadPoolExecutor(threads) if self.deflate is not None and threads > 0 else None
        self.pending = []

    def create(self, group, name, shape, dtype, chunks):
        return group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **self.filters)

    def _chunk(self, block, dtype, rows):
        block = np.ascontiguousarray(block() if callable(block) else block, dtype=dtype)
        if block.shape[0] < rows:
            padded = np.zeros((rows,) + block.shape[1:], dtype=dtype)
            padded[: block.shape[0]] = block
            block = padded
        return block

    def _compress(self, block, dtype, rows):
        return self.deflate(shuffle_bytes(self._chunk(block, dtype, rows)))

    def write(self, dataset, start: int, block):
        """Chunk of ``dataset`` beginning at row ``start`` (a multiple of the chunk rows), from ``block``
        (its rows, or a function returning them; a last, shorter block is padded to the chunk with
        zeros, the fill value). Compressed chunks reach the file at the next :meth:`drain`."""
        offset = (start,) + (0,) * (len(dataset.shape) - 1)
        if self.pool is not None:
            self.pending.append((dataset, offset, self.pool.submit(self._compress, block, dataset.dtype,
                                                                   dataset.chunks[0])))
            return
        if not self.direct:
            block = np.ascontiguousarray(block() if callable(block) else block, dtype=dataset.dtype)
            dataset[start:start + block.shape[0]] = block
            return
        chunk = self._chunk(block, dataset.dtype, dataset.chunks[0])
        payload = chunk.data if self.deflate is None else self.deflate(shuffle_bytes(chunk))
        dataset.id.write_direct_chunk(offset, payload)

    def drain(self):
        """Write every chunk handed over so far, in order."""
        pending, self.pending = self.pending, []
        for dataset, offset, future in pending:
            dataset.id.write_direct_chunk(offset, future.result())

    def close(self):
        self.pending = []
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _write_tile(group, ids, ra, dec, result: TileResult, settings: Settings, writer: _ChunkWriter):
    import h5py

    rows = result.rows
    n, k = rows.size, len(result.slots)
    size = settings.stamp_size
    filters = _filters(settings)
    text = h5py.string_dtype("utf-8")
    group.create_dataset("ids", data=np.asarray(ids)[rows].astype(object), dtype=text)
    group.create_dataset("ra", data=np.asarray(ra)[rows])
    group.create_dataset("dec", data=np.asarray(dec)[rows])
    group.attrs["images"] = np.asarray(result.names, dtype=object).astype(str).tolist()
    group.attrs["bands"] = list(result.bands)
    group.attrs["exposures"] = list(result.exposures)
    cubes = result.cubes
    # A chunk holds every slot of a few targets: reading a target (the access pattern of the archive,
    # export and quick look) decompresses one chunk per array. The cubes have that layout already: a
    # chunk is a contiguous block of rows.
    per_chunk = max(1, min(n, CHUNK_BYTES // (k * size * size * 4)))
    for name in ("data", "weight", "flag", "psf"):
        values = getattr(cubes, name)
        dataset = writer.create(group, name, values.shape, values.dtype, (per_chunk,) + values.shape[1:])
        for start in range(0, n, per_chunk):
            writer.write(dataset, start, values[start:start + per_chunk])
    for name in ("masked", "present", "psf_present", "ccd", "x", "y"):
        group.create_dataset(name, data=getattr(cubes, name), **filters)
    headers = cubes.header_array()
    per_chunk = max(1, min(n, CHUNK_BYTES // (k * headers.dtype.itemsize)))
    dataset = writer.create(group, "headers", (n, k), headers.dtype, (per_chunk, k))
    for start in range(0, n, per_chunk):
        writer.write(dataset, start, headers[start:start + per_chunk])


def write_batch(path, tiles, layout, settings: Settings, batch: int = 0, logger=None) -> dict:
    """Cut every target of a batch of tiles and write one HDF5 file, atomically.

    Parameters
    ----------
    path : path-like
        The batch file (``.h5``); it appears only when complete.
    tiles : list of (tile, ids, ra, dec)
        The targets of each tile of the batch.
    layout : Layout
    settings : Settings
    batch : int
        Batch number (recorded in the file).

    Returns
    -------
    dict
        ``done`` (ids with stamps), ``failed`` ({id: reason}), ``notes``,
        ``files_read``, ``bytes``, ``stamps`` (stamps present), ``seconds``
        (wall) and ``cpu_seconds`` (of the process cutting the batch).
    """
    import h5py

    from shapepipe_modules.io.header_store import HeaderStore

    start = time.perf_counter()
    cpu_start = time.process_time()
    logger = logger or logging.getLogger(__name__)
    done, failed, notes, files_read = [], {}, [], set()
    stamps = 0
    store = HeaderStore(layout.header_store) if layout.exposures else None
    writer = _ChunkWriter(settings)
    try:
        with atomic_path(path) as temporary:
            with h5py.File(temporary, "w") as h5:
                h5.attrs["format"] = FORMAT
                h5.attrs["version"] = FORMAT_VERSION
                h5.attrs["batch"] = int(batch)
                h5.attrs["stamp_size"] = settings.stamp_size
                h5.attrs["psf_size"] = settings.psf_size
                h5.attrs["padded_flag"] = PADDED_FLAG
                for tile, ids, ra, dec in tiles:
                    ids = np.asarray(ids).astype(str)
                    try:
                        result = extract_tile(tile, ra, dec, layout, settings, store, logger)
                    except ExtractionError as error:
                        failed.update(dict.fromkeys(ids.tolist(), f"tile {tile}: {error}"))
                        notes.append(f"tile {tile}: {error}")
                        continue
                    failed.update({ids[i]: reason for i, reason in result.failed.items()})
                    notes.extend(result.notes)
                    files_read |= result.files_read
                    writer.drain()  # the previous tile's chunks, compressed while this tile was cut
                    if result.rows.size and result.slots:
                        _write_tile(h5.create_group(tile), ids, ra, dec, result, settings, writer)
                        done.extend(ids[result.rows].tolist())
                        stamps += int(result.cubes.present.sum())
                writer.drain()
                group = h5.create_group("failed")
                text = h5py.string_dtype("utf-8")
                group.create_dataset("ids", data=np.asarray(list(failed), dtype=object), dtype=text)
                group.create_dataset("reasons", data=np.asarray(list(failed.values()), dtype=object), dtype=text)
    finally:
        writer.close()
        if store is not None:
            store.close()
    for note in notes:
        logger.warning("batch %d: %s", batch, note)
    return {"done": done, "failed": failed, "notes": notes, "files_read": sorted(files_read),
            "bytes": Path(path).stat().st_size, "stamps": stamps, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start}
