"""Named mask planes of a pipeline flag image.

Every plane is one bit of the flag image. The flag image's header records
each plane used as a card ``MP_<NAME> = bit / mask plane: <description>``,
so later stages select pixels by name instead of by hard-coded numbers::

    bits = mask_bits("pipeline_flag-0000000-0.fits", ["MP_HALO", "MP_SPIKE"])
    bad = (flag & bits) != 0

Names longer than eight characters are written as FITS ``HIERARCH`` cards
(``HIERARCH MP_EXTERNAL = 1``), which astropy and CFITSIO read by name.

``MP_EXTERNAL`` holds the union of the bits found in the input flag image
(for example CFHT's bad-pixel bits); it may share bits with other planes
when the input used the same values (see :func:`overlapping_planes`).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

# Plane name -> (description, ShapePipe's default bit value).
PLANES: dict[str, tuple[str, int]] = {
    "MP_BORDER": ("image border", 4),
    "MP_HALO": ("bright-star halo", 2),
    "MP_SPIKE": ("diffraction spike", 128),
    "MP_MESSIER": ("Messier or deep-sky object", 16),
    "MP_NGC": ("NGC object", 32),
    "MP_SATUR": ("saturated pixels and bleed trails", 8),
    "MP_EXTERNAL": ("bits of the input flag image", 0),
}

_PREFIX = "MP_"


def plane_description(name: str) -> str:
    """Human-readable description of a plane (for header comments)."""
    return PLANES[canonical_plane_name(name)][0]


def canonical_plane_name(name: str) -> str:
    """Upper-case plane name with its ``MP_`` prefix (``halo`` -> ``MP_HALO``)."""
    key = name.strip().upper()
    if not key.startswith(_PREFIX):
        key = _PREFIX + key
    return key


def planes_to_cards(planes: Mapping[str, int]) -> list[tuple[str, int, str]]:
    """Header cards ``(keyword, bits, comment)`` describing mask planes.

    Keywords longer than eight characters carry the ``HIERARCH`` prefix.

    Parameters
    ----------
    planes : mapping
        Plane name -> bit value (``MP_EXTERNAL`` may hold several bits, or 0).
    """
    cards = []
    for name, bits in planes.items():
        key = canonical_plane_name(name)
        description = PLANES.get(key, ("user plane", 0))[0]
        keyword = key if len(key) <= 8 else f"HIERARCH {key}"
        cards.append((keyword, int(bits), f"mask plane: {description}"))
    return cards


def planes_from_header(header) -> dict[str, int]:
    """Every ``MP_*`` card of a header as ``{name: bits}``."""
    planes = {}
    for key in header.keys():
        if str(key).upper().startswith(_PREFIX):
            planes[str(key).upper()] = int(header[key])
    return planes


def _read_header(header_or_path):
    if isinstance(header_or_path, (str, os.PathLike)):
        from astropy.io import fits

        from shapepipe_modules.io.images import image_hdu

        try:
            with fits.open(os.fspath(header_or_path)) as hdus:  # the image HDU of a tile-compressed file too
                return image_hdu(hdus, 0).header.copy()
        except (OSError, ValueError) as error:
            raise OSError(f"cannot read the header of flag image {header_or_path}: {error}") from error
    return header_or_path


def mask_bits(header_or_path, names: Iterable[str] | str) -> int:
    """Bits of the named mask planes, OR-ed together.

    Parameters
    ----------
    header_or_path : astropy.io.fits.Header, mapping or path
        Header of a flag image written by the ``mask`` module, or the path of
        that image (primary HDU).
    names : str or iterable of str
        Plane names, with or without the ``MP_`` prefix, any case.

    Returns
    -------
    int
        Bitwise OR of the planes' bits.

    Raises
    ------
    KeyError
        If a plane is not recorded in the header; the message lists the
        planes that are.
    """
    header = _read_header(header_or_path)
    planes = planes_from_header(header)
    if isinstance(names, str):
        names = [names]
    bits = 0
    for name in names:
        key = canonical_plane_name(name)
        if key not in planes:
            known = ", ".join(sorted(planes)) or "none"
            raise KeyError(f"mask plane {key} is not recorded in the header (planes: {known})")
        bits |= planes[key]
    return bits


def overlapping_planes(planes: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """Pairs of planes sharing bits, as ``(name_a, name_b, shared_bits)``."""
    names = list(planes)
    shared = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            common = int(planes[first]) & int(planes[second])
            if common:
                shared.append((first, second, common))
    return shared
