"""Reading PSFEx configuration files (``.psfex``).

A ``.psfex`` file holds one ``KEY value[,value...]  # comment`` per line.
Both engines read the same file; the built-in engine uses the keys listed
in :class:`PSFExSettings` and ignores the rest (plots, check-images, ...),
as PSFEx itself does for keys that do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PSFExConfigError(ValueError):
    """A ``.psfex`` file cannot be read or holds a bad value (the message names file and key)."""


def read_psfex_config(path) -> dict[str, list[str]]:
    """Read a ``.psfex`` file into ``{KEY: [values]}`` (the last occurrence of a key wins)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise PSFExConfigError(f"{path}: cannot read PSFEx configuration ({error.strerror})") from None
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, rest = line.partition(" ")
        if "\t" in key:
            key, _, more = key.partition("\t")
            rest = more + " " + rest
        items = [item.strip() for item in rest.replace("\t", " ").split(",")]
        values[key.strip().upper()] = [item for item in items if item]
    return values


def _bool(word: str) -> bool:
    return word.strip().upper() in ("Y", "YES", "T", "TRUE", "1")


@dataclass
class PSFExSettings:
    """The PSFEx keys the built-in engine honours.

    Attributes
    ----------
    psf_size : (int, int)
        ``PSF_SIZE``: model grid size (nx, ny).
    sampling : float
        ``PSF_SAMPLING``: grid step in image pixels (0 = automatic).
    accuracy : float
        ``PSF_ACCURACY``: relative error floor of PSF pixel values (weights).
    recenter : bool
        ``PSF_RECENTER``: refine star centres with the model.
    center_keys : (str, str)
        ``CENTER_KEYS``: catalogue columns of the star centres.
    var_keys : (str, str)
        ``PSFVAR_KEYS``: catalogue columns of the polynomial context.
    degree : int
        ``PSFVAR_DEGREES``: polynomial degree in position.
    flux_key : str
        ``PHOTFLUX_KEY``: initial flux normalisation (``FLUX_APER(1)`` style
        names select a vector element, counted from 1).
    psf_suffix : str
        ``PSF_SUFFIX``: extension of the output model.
    """

    psf_size: tuple = (25, 25)
    sampling: float = 0.0
    accuracy: float = 0.01
    recenter: bool = False
    center_keys: tuple = ("X_IMAGE", "Y_IMAGE")
    var_keys: tuple = ("X_IMAGE", "Y_IMAGE")
    degree: int = 2
    flux_key: str = "FLUX_APER(1)"
    psf_suffix: str = ".psf"

    @classmethod
    def from_file(cls, path) -> "PSFExSettings":
        """Settings of a ``.psfex`` file; PSFEx's defaults for absent keys.

        Raises
        ------
        PSFExConfigError
            For unreadable files, bad numbers and unsupported settings.
        """
        path = Path(path)
        raw = read_psfex_config(path)
        settings = cls()

        def get(key, convert, count=None):
            if key not in raw:
                return None
            items = raw[key]
            try:
                converted = [convert(item) for item in items]
            except ValueError:
                raise PSFExConfigError(f"{path}: bad value for {key}: {', '.join(items)}") from None
            if count is not None and len(converted) not in (1, count):
                raise PSFExConfigError(f"{path}: {key} needs 1 or {count} values, got {len(converted)}")
            return converted

        size = get("PSF_SIZE", int, 2)
        if size:
            settings.psf_size = (size[0], size[-1])
            if min(settings.psf_size) < 3 or settings.psf_size[0] % 2 == 0 or settings.psf_size[1] % 2 == 0:
                raise PSFExConfigError(f"{path}: PSF_SIZE must be odd and at least 3, got {size}")
        for key, attribute, convert in (("PSF_SAMPLING", "sampling", float), ("PSF_ACCURACY", "accuracy", float)):
            value = get(key, convert)
            if value:
                setattr(settings, attribute, value[0])
        if settings.sampling < 0:
            raise PSFExConfigError(f"{path}: PSF_SAMPLING must be >= 0, got {settings.sampling}")
        recenter = get("PSF_RECENTER", str)
        if recenter:
            settings.recenter = _bool(recenter[0])
        for key, attribute in (("CENTER_KEYS", "center_keys"), ("PSFVAR_KEYS", "var_keys")):
            value = get(key, str)
            if value:
                if len(value) != 2:
                    raise PSFExConfigError(f"{path}: {key} must name two columns, got {value}")
                setattr(settings, attribute, tuple(value))
        degrees = get("PSFVAR_DEGREES", int)
        if degrees:
            if len(degrees) != 1:
                raise PSFExConfigError(f"{path}: PSFVAR_DEGREES: only one polynomial group is supported")
            if not 0 <= degrees[0] <= 8:
                raise PSFExConfigError(f"{path}: PSFVAR_DEGREES must be in 0..8, got {degrees[0]}")
            settings.degree = degrees[0]
        groups = get("PSFVAR_GROUPS", int)
        if groups and len(set(groups)) != 1:
            raise PSFExConfigError(f"{path}: PSFVAR_GROUPS: only one polynomial group is supported")
        basis = get("BASIS_TYPE", str)
        if basis and basis[0].upper() not in ("PIXEL", "PIXEL_AUTO"):
            raise PSFExConfigError(f"{path}: BASIS_TYPE {basis[0]}: the built-in engine fits PIXEL bases only")
        flux = get("PHOTFLUX_KEY", str)
        if flux:
            settings.flux_key = flux[0]
        suffix = get("PSF_SUFFIX", str)
        if suffix:
            settings.psf_suffix = suffix[0]
        return settings
