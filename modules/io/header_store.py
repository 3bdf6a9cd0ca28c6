"""The header store written by ``merge_headers``: every exposure's per-CCD FITS headers.

Layout (one SQLite file, ShapePipe's ``log_exp_headers.sqlite``):

- table ``headers``: one row per exposure, keyed by the exposure name as
  ShapePipe keys it (the file number without its leading dash:
  ``'2113737'``); the value is UTF-8 JSON text ``{"ccds": [text0, text1,
  ...]}`` where ``textN`` is ``Header.tostring()`` of CCD ``N`` (0-based, the
  HDU index minus one, as ``split_exp`` numbers CCDs) or ``null`` for a CCD
  without header. ShapePipe stored pickled ``{'WCS': WCS, 'header': str}``
  dicts; this store keeps the same facts as text and rebuilds the WCS on
  demand.

Epoch keys of the stamp stores (``'2113737-12'``) are ``exposure-ccd`` with
these names (see :mod:`shapepipe_modules.io.stamp_store`).

WCS objects are built once per distinct header text in each process (an LRU
cache shared by every :class:`HeaderStore`): later stages query the WCS of
the same CCD for thousands of objects. Treat the returned WCS as read-only.

Distortions: astropy (wcslib) reads SIP (``-SIP`` CTYPEs with ``A_p_q``...)
and TPV (``RA---TPV`` with ``PVi_m``, and SCAMP's ``RA---TAN`` with
``PVi_m``, which astropy treats as TPV) natively, so no conversion to SIP
(ShapePipe's ``sip_tpv`` step) is needed; use ``all_world2pix`` /
``all_pix2world`` (or the high-level API) so the distortion is applied.

Example
-------
>>> with HeaderStore("log_exp_headers.sqlite", mode="w") as store:
...     store.write_exposure("2113737", [hdu.header for hdu in hdul[1:]])
>>> with HeaderStore("log_exp_headers.sqlite") as store:
...     x, y = store.wcs("2113737", 6).all_world2pix(ra, dec, 1)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ._sqlite import SqliteFile
from .arrays import StoreError

TABLE = "headers"
DEFAULT_NAME = "log_exp_headers.sqlite"
WCS_CACHE_SIZE = 4096


def exposure_key(exposure) -> str:
    """Store key of an exposure: ``2113737``, ``'2113737'``, ``'-2113737'`` -> ``'2113737'``."""
    key = str(exposure).strip().lstrip("-")
    if not key:
        raise ValueError(f"empty exposure name {exposure!r}")
    return key


def _encode(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def _decode(data) -> dict:
    return json.loads(bytes(data).decode("utf-8"))


@functools.lru_cache(maxsize=WCS_CACHE_SIZE)
def wcs_from_header_text(text: str):
    """WCS of a header given as text; cached per process, keyed by the text."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import FITSFixedWarning, WCS

    header = fits.Header.fromstring(text)
    with warnings.catch_warnings():
        # Date and RADECSYS fixes are harmless; they flood logs otherwise.
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def _header_text(header) -> str | None:
    if header is None:
        return None
    if isinstance(header, str):
        return header
    return header.tostring()


class HeaderStore:
    """Per-exposure, per-CCD FITS headers in one SQLite file.

    Parameters
    ----------
    path : path-like
        Store file (ShapePipe's name: ``log_exp_headers.sqlite``).
    mode : {'r', 'w'}
        ``'r'`` (default) reads; ``'w'`` creates the file atomically: it
        appears under ``path`` only when the store is closed without error.

    Notes
    -----
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path, mode: str = "r"):
        self._file = SqliteFile(path, mode, "header store")
        self.path = self._file.path
        self.mode = mode
        self._table = self._file.table(TABLE, _encode, _decode)
        self._cache: dict[str, list] = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(success=exc_type is None)

    def close(self, success: bool = True) -> None:
        """Close the store; in write mode publish it (or discard it if not ``success``)."""
        self._file.close(success)

    def write_exposure(self, exposure, headers) -> None:
        """Store the headers of one exposure.

        Parameters
        ----------
        exposure : str or int
            Exposure name, e.g. ``'2113737'``.
        headers : sequence of astropy.io.fits.Header, str or None
            One per CCD in CCD order (index = CCD number); ``None`` for a
            CCD without header.
        """
        if self.mode != "w":
            raise StoreError(f"header store {self.path} is open read-only")
        texts = [_header_text(header) for header in headers]
        if not texts:
            raise ValueError(f"header store {self.path}: exposure {exposure!r} has no CCD header")
        key = exposure_key(exposure)
        self._table[key] = {"ccds": texts}
        self._cache[key] = texts

    def _texts(self, exposure) -> list:
        key = exposure_key(exposure)
        texts = self._cache.get(key)
        if texts is None:
            try:
                record = self._table[key]
            except KeyError:
                raise KeyError(f"exposure {key!r} is not in header store {self.path}") from None
            except (ValueError, UnicodeDecodeError) as error:
                raise StoreError(
                    f"header store {self.path}: exposure {key!r} is not text ({error}); "
                    "was the file written by ShapePipe (pickles)?"
                ) from error
            texts = record["ccds"]
            self._cache[key] = texts
        return texts

    def header_text(self, exposure, ccd: int) -> str:
        """Header of CCD ``ccd`` of ``exposure`` as stored (``Header.tostring()``)."""
        texts = self._texts(exposure)
        ccd = int(ccd)
        if not 0 <= ccd < len(texts) or texts[ccd] is None:
            raise KeyError(
                f"header store {self.path}: exposure {exposure_key(exposure)!r} has no CCD {ccd} "
                f"({len(texts)} CCD slots)"
            )
        return texts[ccd]

    def header(self, exposure, ccd: int):
        """Header of one CCD as an :class:`astropy.io.fits.Header` (a new object each call)."""
        from astropy.io import fits

        return fits.Header.fromstring(self.header_text(exposure, ccd))

    def wcs(self, exposure, ccd: int):
        """WCS of one CCD (cached per process; do not modify it)."""
        return wcs_from_header_text(self.header_text(exposure, ccd))

    def exposures(self) -> list[str]:
        """Exposure names in the store, sorted."""
        return sorted(self._table.keys())

    def ccds(self, exposure) -> list[int]:
        """CCD numbers of ``exposure`` that have a header."""
        return [index for index, text in enumerate(self._texts(exposure)) if text is not None]

    def __contains__(self, exposure) -> bool:
        return exposure_key(exposure) in self._table

    def __len__(self) -> int:
        return len(self._table)


def write_header_store(path, exposures: dict) -> Path:
    """Write a header store in one go.

    Parameters
    ----------
    path : path-like
        Store file.
    exposures : dict
        Exposure name -> sequence of per-CCD headers.

    Returns
    -------
    pathlib.Path
    """
    with HeaderStore(path, mode="w") as store:
        for exposure, headers in exposures.items():
            store.write_exposure(exposure, headers)
    return Path(path)
