"""Bright-star and deep-sky catalogues read from FITS tables (no network).

Bright stars: columns ``ra``, ``dec`` (degrees) and ``mag`` (the simulator's
``catalogues/bright_stars.fits`` or per-image catalogues of
``create_star_cat``; extra columns such as ``x``, ``y`` are ignored: the
image WCS places the stars).

Deep-sky objects: columns ``ra``, ``dec`` and ``radius`` (degrees unless the
column unit says otherwise; the simulator's ``catalogues/deep_sky.fits``),
or ShapePipe's ``size_X``, ``size_Y`` (arcmin unless a unit is given; as in
ShapePipe, the larger of the two is used as the radius). Column names are
matched case-insensitively; units come from ``TUNITn`` or ShapePipe's
``TCUNIn`` cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TO_DEGREES = {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "arcmin": 1 / 60.0, "arcsec": 1 / 3600.0}


@dataclass(frozen=True)
class StarCatalogue:
    """Bright stars: sky positions (degrees) and magnitudes."""

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    path: str = ""


@dataclass(frozen=True)
class DeepSkyCatalogue:
    """Deep-sky objects: sky positions and disc radii, all in degrees."""

    ra: np.ndarray
    dec: np.ndarray
    radius: np.ndarray
    names: np.ndarray
    path: str = ""


class _CsvTable:
    """A CSV table seen through the ``columns.names`` / ``field(i)`` interface of a FITS table."""

    def __init__(self, table):
        self._table = table
        self.columns = type("Columns", (), {"names": list(table.colnames)})()

    def field(self, index):
        return np.asarray(self._table[self._table.colnames[index]])

    def __getitem__(self, name):
        return np.asarray(self._table[name])


def _open_table(path):
    from astropy.io import fits

    path = Path(path)
    if path.suffix.lower() == ".csv":
        from astropy.table import Table

        try:
            table = Table.read(path, format="ascii.csv")
        except (OSError, ValueError, IndexError) as error:
            raise ValueError(f"cannot read catalogue {path}: {error}") from None
        return _CsvTable(table), fits.Header()
    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) and hdu.data is not None:
                    header = hdu.header.copy()
                    return hdu.data.copy(), header
    except (OSError, ValueError, TypeError, IndexError) as error:
        raise ValueError(f"cannot read catalogue {path}: {error}") from None
    raise ValueError(f"catalogue {path} holds no FITS table")


def _column(data, header, path, names, default_unit=None, required=True):
    available = {name.lower(): index for index, name in enumerate(data.columns.names)}
    for name in names:
        index = available.get(name.lower())
        if index is None:
            continue
        values = np.asarray(data.field(index), dtype=float)
        unit = header.get(f"TUNIT{index + 1}") or header.get(f"TCUNI{index + 1}") or default_unit
        return values, (unit or "").strip().lower()
    if required:
        raise ValueError(
            f"catalogue {path} has no column {' or '.join(names)} (columns: {', '.join(data.columns.names)})"
        )
    return None, None


def _in_degrees(values, unit, path, column):
    if not unit:
        return values
    if unit not in _TO_DEGREES:
        raise ValueError(f"catalogue {path}: column {column} has unit {unit!r}, expected deg, arcmin or arcsec")
    return values * _TO_DEGREES[unit]


def read_star_catalogue(path) -> StarCatalogue:
    """Read a bright-star catalogue (``ra``, ``dec``, ``mag``; FITS, or CSV when named ``.csv``).

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or lacks a column.
    """
    data, header = _open_table(path)
    ra, ra_unit = _column(data, header, path, ("ra",))
    dec, dec_unit = _column(data, header, path, ("dec",))
    mag, _ = _column(data, header, path, ("mag",))
    ra = _in_degrees(ra, ra_unit, path, "ra")
    dec = _in_degrees(dec, dec_unit, path, "dec")
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)
    return StarCatalogue(ra=ra[good], dec=dec[good], mag=mag[good], path=str(path))


def read_deep_sky_catalogue(path) -> DeepSkyCatalogue:
    """Read a deep-sky catalogue (``ra``, ``dec`` and ``radius`` or ``size_X``/``size_Y``).

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read or lacks a column.
    """
    data, header = _open_table(path)
    ra, ra_unit = _column(data, header, path, ("ra",))
    dec, dec_unit = _column(data, header, path, ("dec",))
    ra = _in_degrees(ra, ra_unit, path, "ra")
    dec = _in_degrees(dec, dec_unit, path, "dec")
    radius, unit = _column(data, header, path, ("radius",), default_unit="deg", required=False)
    if radius is not None:
        radius = _in_degrees(radius, unit, path, "radius")
    else:
        size_x, unit_x = _column(data, header, path, ("size_X",), default_unit="arcmin")
        size_y, unit_y = _column(data, header, path, ("size_Y",), default_unit="arcmin")
        radius = np.maximum(_in_degrees(size_x, unit_x, path, "size_X"), _in_degrees(size_y, unit_y, path, "size_Y"))
    name_column = next((n for n in data.columns.names if n.lower() == "name"), None)
    names = np.asarray(data[name_column]).astype(str) if name_column else np.arange(len(ra)).astype(str)
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(radius) & (radius > 0)
    return DeepSkyCatalogue(ra=ra[good], dec=dec[good], radius=radius[good], names=names[good], path=str(path))


def local_star_catalogue(source, number: str, header, margin_arcsec: float) -> StarCatalogue:
    """The bright stars of one image from a local source (the offline on-the-fly query).

    Parameters
    ----------
    source : path
        A folder of ``create_star_cat`` outputs (``star_cat<number>.fits`` or
        ``.csv``), or one FITS or CSV reference catalogue (``ra``, ``dec``,
        ``mag``).
    number : str
        The image's file number (``-2113737-3``, ``-244-252``).
    header : astropy.io.fits.Header
        The image header (WCS and size), to pick the stars of a reference catalogue.
    margin_arcsec : float
        Stars up to this far outside the image are kept.

    Raises
    ------
    ValueError
        Naming the file or folder, when no catalogue is there or it cannot be read.
    """
    source = Path(source)
    if source.is_dir():
        for suffix in (".fits", ".csv"):
            path = source / f"star_cat{number}{suffix}"
            if path.is_file():
                return read_star_catalogue(path)
        raise ValueError(f"{source} holds no star_cat{number}.fits or .csv (create_star_cat writes them)")
    if not source.is_file():
        raise ValueError(f"star catalogue {source} does not exist")
    from shapepipe_modules.tools._common import ToolError
    from shapepipe_modules.tools.create_star_cat import read_reference_catalogue, stars_on_image

    try:
        reference = read_reference_catalogue(source)
    except ToolError as error:
        raise ValueError(str(error)) from None
    table = stars_on_image(header, reference, margin_arcsec)
    return StarCatalogue(ra=np.asarray(table["ra"], float), dec=np.asarray(table["dec"], float),
                         mag=np.asarray(table["mag"], float), path=str(source))
