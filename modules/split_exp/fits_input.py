"""Strict reading of FITS inputs: a damaged file is an error naming it, never a silent gap.

astropy is lenient with damaged files: a truncated tile-compressed file
opens with its last HDUs silently dropped (a warning only), and a truncated
plain file fails on the first data access with ``TypeError: buffer is too
small``. :class:`StrictFits` turns both into a
:class:`~shapepipe.errors.JobError` that names the file and the HDU, so the
job fails cleanly and the rest of the run goes on.

Used by ``split_exp``, ``uncompress_fits`` and ``find_exposures``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from shapepipe.errors import JobError

# Warning texts by which astropy reports a damaged (usually truncated) file.
_DAMAGE_MARKERS = (
    "truncated",
    "error validating header",
    "header missing end card",
    "buffer is too small",
    "unexpected end",
)

# Structural and bookkeeping keys that describe the container, not the CCD:
# astropy writes the right ones for the new single-HDU file itself.
STRUCTURAL_KEYS = frozenset(
    {
        "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT",
        "GCOUNT", "BSCALE", "BZERO", "CHECKSUM", "DATASUM", "END",
    }
)
# Keys that only make sense in a multi-extension file.
MOSAIC_KEYS = frozenset({"NEXTEND", "INHERIT", "EXTVER"})
# Tile-compression keys (astropy normally hides them; dropped in case a
# writer left them in the image header).
COMPRESSION_KEYS = frozenset(
    {
        "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZBLOCKED",
        "ZPCOUNT", "ZGCOUNT", "ZHECKSUM", "ZDATASUM", "ZTENSION", "ZMASKCMP",
    }
)
_COMPRESSION_PREFIXES = ("ZNAXIS", "ZTILE", "ZNAME", "ZVAL")
_COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})


def is_dropped_key(keyword: str) -> bool:
    """Whether a header key describes the file container rather than the CCD."""
    if keyword in STRUCTURAL_KEYS or keyword in MOSAIC_KEYS or keyword in COMPRESSION_KEYS:
        return True
    return keyword.startswith(_COMPRESSION_PREFIXES) and keyword[-1:].isdigit()


def _is_damage(message) -> bool:
    text = str(message).lower()
    return any(marker in text for marker in _DAMAGE_MARKERS)


class StrictFits:
    """A FITS file opened for reading, with damage reported as :class:`JobError`.

    Parameters
    ----------
    path : path-like
        The file (plain or tile-compressed ``.fits.fz``).

    Notes
    -----
    Use as a context manager. Every header is read when the file is opened,
    so a truncated header is found before any output is written.
    """

    def __init__(self, path):
        from astropy.io import fits

        self.path = Path(path)
        if not self.path.is_file():
            reason = "is a broken symbolic link" if self.path.is_symlink() else "does not exist"
            raise JobError(f"input file {self.path} {reason}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.hdul = fits.open(self.path, lazy_load_hdus=False)
            except Exception as error:  # astropy raises OSError, ValueError, TypeError...
                raise JobError(f"cannot read FITS file {self.path}: {error}") from error
        self._check(caught, "opening")
        # Notes astropy emitted while opening (card fixes...), for the job log.
        self.notes = [str(w.message) for w in caught]

    def _check(self, caught, stage: str) -> None:
        damaged = [str(w.message).splitlines()[0] for w in caught if _is_damage(w.message)]
        if damaged:
            self.close()
            raise JobError(f"FITS file {self.path} is damaged (found while {stage}): {damaged[0]}")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def close(self) -> None:
        """Close the file."""
        hdul = getattr(self, "hdul", None)
        if hdul is not None:
            hdul.close()

    def __len__(self) -> int:
        return len(self.hdul)

    def image_hdu_indices(self) -> list[int]:
        """Indices of the HDUs that hold a 2-D image (compressed or not)."""
        indices = []
        for index, hdu in enumerate(self.hdul):
            header = hdu.header
            if header.get("NAXIS", 0) == 2 and not _is_table(hdu):
                indices.append(index)
        return indices

    def is_compressed(self, index: int) -> bool:
        """Whether HDU ``index`` is a tile-compressed image."""
        from astropy.io import fits

        return isinstance(self.hdul[index], fits.CompImageHDU)

    def header(self, index: int):
        """Header of HDU ``index`` (the image header for compressed HDUs)."""
        return self.hdul[index].header

    def data(self, index: int):
        """Data of HDU ``index``, decompressed; the HDU does not keep a copy.

        Raises
        ------
        JobError
            If the data cannot be read (truncated file...).
        """
        from shapepipe_modules.io.images import fast_inflate, image_data

        fast_inflate()
        hdu = self.hdul[index]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                data = image_data(hdu)
            except Exception as error:
                self.close()
                raise JobError(f"cannot read the data of HDU {index} of FITS file {self.path}: {error}") from error
        self._check(caught, f"reading HDU {index}")
        if data is None:
            raise JobError(f"HDU {index} of FITS file {self.path} holds no data")
        # Let the HDU forget its data, so reading a mosaic CCD by CCD keeps
        # one CCD in memory, not the whole mosaic.
        try:
            del hdu.data
        except AttributeError:
            pass
        return data


def _is_table(hdu) -> bool:
    from astropy.io import fits

    if isinstance(hdu, fits.CompImageHDU):
        return False
    return isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))


def clean_header(header, primary_header=None):
    """Header of one CCD as a stand-alone single-HDU file header.

    Container keys (``XTENSION``, ``NAXISn``, ``PCOUNT``, compression keys,
    stale ``CHECKSUM``...) are dropped: astropy writes correct ones. When the
    CCD header sets ``INHERIT = T``, the primary header's keys it lacks are
    added, as a FITS reader of the mosaic would see them.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Header of the CCD HDU.
    primary_header : astropy.io.fits.Header, optional
        Header of the mosaic's primary HDU.

    Returns
    -------
    astropy.io.fits.Header
    """
    from astropy.io import fits

    cards = [card for card in header.cards if not is_dropped_key(card.keyword)]
    if primary_header is not None and header.get("INHERIT", False) is True:
        present = {card.keyword for card in cards}
        for card in primary_header.cards:
            keyword = card.keyword
            if keyword in present or keyword in _COMMENTARY or is_dropped_key(keyword):
                continue
            cards.append(card)
            present.add(keyword)
    return fits.Header(cards)
