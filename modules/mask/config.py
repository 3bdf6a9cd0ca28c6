"""Reading ``.mask`` files (ShapePipe's mask configuration format).

A ``.mask`` file is an INI file with one section per mask type::

    [BORDER_PARAMETERS]    BORDER_MAKE, BORDER_WIDTH, BORDER_FLAG_VALUE
    [HALO_PARAMETERS]      HALO_MAKE, HALO_MASKMODEL_PATH, HALO_MAG_LIM,
                           HALO_SCALE_FACTOR, HALO_MAG_PIVOT, HALO_FLAG_VALUE,
                           HALO_REG_FILE, HALO_MIN_SCALE (ours)
    [SPIKE_PARAMETERS]     the same keys with SPIKE_
    [MESSIER_PARAMETERS]   MESSIER_MAKE, MESSIER_CAT_PATH, MESSIER_SIZE_PLUS,
                           MESSIER_FLAG_VALUE
    [NGC_PARAMETERS]       the same keys with NGC_
    [SATUR_PARAMETERS]     (ours) SATUR_MAKE, SATUR_LEVEL, SATUR_KEY,
                           SATUR_BLEED_FRACTION, SATUR_GROW, SATUR_FLAG_VALUE
    [MD_PARAMETERS]        MD_MAKE, MD_THRESH_FLAG, MD_THRESH_REMOVE, MD_REMOVE
    [OTHER]                KEEP_REG_FILE

ShapePipe's keys for programs we do not run (WeightWatcher, the CDS client)
and for its temporary files are accepted and reported as notes. Any other
key or section is an error naming the file, section and key. A missing
section means that mask is not made. Paths may hold environment variables
(``$SP_CONFIG``); relative paths are looked up beside the ``.mask`` file,
then in the working directory.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shapepipe.errors import ConfigError
from shapepipe.options import parse_bool

from .planes import PLANES

# Keys ShapePipe needed for its external programs; harmless here.
_IGNORED = {
    ("PROGRAM_PATH", "WW_PATH"): "WeightWatcher is not used: polygons are rasterised in Python",
    ("PROGRAM_PATH", "WW_CONFIG_FILE"): "WeightWatcher is not used: polygons are rasterised in Python",
    ("PROGRAM_PATH", "CDSCLIENT_PATH"): (
        "no network star query: bright stars come from STAR_CAT_PATH or an input star catalogue"
    ),
    ("MESSIER_PARAMETERS", "MESSIER_PIXEL_SCALE"): "the pixel scale is taken from the image WCS",
    ("NGC_PARAMETERS", "NGC_PIXEL_SCALE"): "the pixel scale is taken from the image WCS",
    ("EXTERNAL_FLAG", "EF_MAKE"): "the external flag is chosen with the module option USE_EXT_FLAG",
    ("OTHER", "TEMP_DIRECTORY"): "no temporary files are written",
    ("OTHER", "KEEP_INDIVIDUAL_MASK"): "each mask is a named bit plane of the one flag image",
}

_STAR_KEYS = ("MASKMODEL_PATH", "MAG_LIM", "SCALE_FACTOR", "MAG_PIVOT", "FLAG_VALUE")
_DSO_KEYS = ("SIZE_PLUS", "FLAG_VALUE")

# section -> {key: type}; types: bool, int, float, path, str, level
_SCHEMA = {
    "PROGRAM_PATH": {},
    "BORDER_PARAMETERS": {"BORDER_MAKE": "bool", "BORDER_WIDTH": "int", "BORDER_FLAG_VALUE": "int"},
    "HALO_PARAMETERS": {
        "HALO_MAKE": "bool",
        "HALO_MASKMODEL_PATH": "path",
        "HALO_MAG_LIM": "float",
        "HALO_SCALE_FACTOR": "float",
        "HALO_MAG_PIVOT": "float",
        "HALO_FLAG_VALUE": "int",
        "HALO_REG_FILE": "str",
        "HALO_MIN_SCALE": "float",
    },
    "SPIKE_PARAMETERS": {
        "SPIKE_MAKE": "bool",
        "SPIKE_MASKMODEL_PATH": "path",
        "SPIKE_MAG_LIM": "float",
        "SPIKE_SCALE_FACTOR": "float",
        "SPIKE_MAG_PIVOT": "float",
        "SPIKE_FLAG_VALUE": "int",
        "SPIKE_REG_FILE": "str",
        "SPIKE_MIN_SCALE": "float",
    },
    "MESSIER_PARAMETERS": {
        "MESSIER_MAKE": "bool",
        "MESSIER_CAT_PATH": "path",
        "MESSIER_SIZE_PLUS": "float",
        "MESSIER_FLAG_VALUE": "int",
    },
    "NGC_PARAMETERS": {
        "NGC_MAKE": "bool",
        "NGC_CAT_PATH": "path",
        "NGC_SIZE_PLUS": "float",
        "NGC_FLAG_VALUE": "int",
    },
    "SATUR_PARAMETERS": {
        "SATUR_MAKE": "bool",
        "SATUR_LEVEL": "level",
        "SATUR_KEY": "str",
        "SATUR_BLEED_FRACTION": "float",
        "SATUR_GROW": "int",
        "SATUR_FLAG_VALUE": "int",
    },
    "EXTERNAL_FLAG": {},
    "MD_PARAMETERS": {
        "MD_MAKE": "bool",
        "MD_THRESH_FLAG": "float",
        "MD_THRESH_REMOVE": "float",
        "MD_REMOVE": "bool",
    },
    "OTHER": {"KEEP_REG_FILE": "bool"},
}

DEFAULT_MIN_SCALE = 0.1


@dataclass(frozen=True)
class BorderParams:
    """Border mask: ``width`` pixels along every edge get ``bit``."""

    width: int
    bit: int


@dataclass(frozen=True)
class StarMaskParams:
    """Halo or spike mask: a polygon template scaled with magnitude.

    The template is scaled by ``max(1 - scale_factor * (mag - mag_pivot),
    min_scale)`` about the star (ShapePipe's linear law; the floor keeps
    faint stars' masks from vanishing or turning inside out where the law
    crosses zero). Stars brighter than ``mag_lim`` are masked.
    """

    template_path: Path
    mag_lim: float
    scale_factor: float
    mag_pivot: float
    bit: int
    min_scale: float = DEFAULT_MIN_SCALE
    reg_name: str = ""


@dataclass(frozen=True)
class DeepSkyParams:
    """Deep-sky objects: discs of radius ``radius * (1 + size_plus)``.

    ``cat_path`` is None when the catalogue is given by the module option
    ``DEEP_SKY_CAT_PATH`` instead.
    """

    cat_path: Path | None
    size_plus: float
    bit: int


@dataclass(frozen=True)
class SaturParams:
    """Saturated pixels and bleed trails.

    ``level`` None means the header keyword ``key``. Pixels at or above the
    level seed regions; columns through them are followed while pixels stay
    above ``bleed_fraction * level``; regions are grown by ``grow`` pixels.
    """

    level: float | None
    key: str
    bleed_fraction: float
    grow: int
    bit: int


@dataclass(frozen=True)
class MissingDataParams:
    """Fraction of zero-valued pixels: recorded (``MRATIO``), flagged, or fatal."""

    thresh_flag: float
    thresh_remove: float
    remove: bool


@dataclass(frozen=True)
class MaskParameters:
    """Everything read from a ``.mask`` file; a None member is not made."""

    source: Path | None = None
    border: BorderParams | None = None
    halo: StarMaskParams | None = None
    spike: StarMaskParams | None = None
    messier: DeepSkyParams | None = None
    ngc: DeepSkyParams | None = None
    satur: SaturParams | None = None
    missing_data: MissingDataParams | None = None
    keep_reg_file: bool = False
    notes: tuple = field(default_factory=tuple)
    #: The file names ShapePipe's network star query ([PROGRAM_PATH] CDSCLIENT_PATH).
    network_stars: bool = False

    def plane_bits(self) -> dict[str, int]:
        """Bits of the planes this configuration makes (``MP_EXTERNAL`` excluded)."""
        planes = {}
        for name, params in (
            ("MP_BORDER", self.border),
            ("MP_HALO", self.halo),
            ("MP_SPIKE", self.spike),
            ("MP_MESSIER", self.messier),
            ("MP_NGC", self.ngc),
            ("MP_SATUR", self.satur),
        ):
            if params is not None:
                planes[name] = params.bit
        return planes


class _Reader:
    """Typed access to one parsed ``.mask`` file, collecting every problem."""

    def __init__(self, parser: configparser.ConfigParser, path: Path):
        self.parser = parser
        self.path = path
        self.problems: list[str] = []

    def where(self, section: str, key: str) -> str:
        return f"{self.path} [{section}] {key}"

    def has(self, section, key):
        return self.parser.has_option(section, key)

    def get(self, section, key, default=None, required=True):
        if not self.parser.has_option(section, key):
            if required:
                self.problems.append(f"{self.where(section, key)}: missing (needed when the mask is made)")
            return default
        text = self.parser.get(section, key).strip()
        kind = _SCHEMA[section][key]
        try:
            return self._parse(kind, text)
        except ValueError as error:
            self.problems.append(f"{self.where(section, key)}: {error}")
            return default

    def _parse(self, kind, text):
        if kind == "bool":
            return parse_bool(text)
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
        if kind == "level":
            if text.lower() in ("", "header"):
                return None
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"expected a number or 'header', got {text!r}") from None
        if kind == "path":
            return self._resolve(text)
        return text

    def _resolve(self, text: str) -> Path | None:
        if not text:
            return None
        missing = [name for name in re.findall(r"\$\{?(\w+)\}?", text) if name not in os.environ]
        if missing:
            raise ValueError(f"environment variable(s) {', '.join(missing)} not set in {text!r}")
        candidate = Path(os.path.expanduser(os.path.expandvars(text)))
        if candidate.is_absolute():
            found = candidate
        else:
            beside = self.path.parent / candidate
            found = beside if beside.exists() else Path.cwd() / candidate
        if not found.is_file():
            raise ValueError(f"file {text!r} not found (looked for {found})")
        return found.resolve()

    def flag_value(self, section, key):
        value = self.get(section, key)
        if value is None:
            return None
        if value <= 0 or value & (value - 1) or value >= 2**31:
            self.problems.append(
                f"{self.where(section, key)}: a flag value must be one bit (a power of 2 below 2**31), got {value}"
            )
            return None
        return value

    def make(self, section, key):
        if not self.parser.has_section(section):
            return False
        return bool(self.get(section, key, default=False))


def read_mask_config(path: str | os.PathLike) -> MaskParameters:
    """Read and check a ``.mask`` file.

    Parameters
    ----------
    path : path-like
        The ``.mask`` file.

    Returns
    -------
    MaskParameters

    Raises
    ------
    ConfigError
        Listing every problem, each naming the file, section and key.
    """
    path = Path(path)
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, inline_comment_prefixes=("#",), empty_lines_in_values=False
    )
    parser.optionxform = str.upper
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"mask configuration file {path} not found") from None
    except (configparser.Error, UnicodeDecodeError, OSError) as error:
        raise ConfigError(f"{path}: cannot parse the mask configuration: {error}") from None

    reader = _Reader(parser, path)
    notes = []
    for section in parser.sections():
        if section not in _SCHEMA:
            known = ", ".join(_SCHEMA)
            reader.problems.append(f"{path} [{section}]: unknown section (known: {known})")
            continue
        for key in parser.options(section):
            if (section, key) in _IGNORED:
                notes.append(f"[{section}] {key} ignored: {_IGNORED[(section, key)]}")
            elif key not in _SCHEMA[section]:
                known = ", ".join(_SCHEMA[section]) or "none"
                reader.problems.append(f"{reader.where(section, key)}: unknown key (known here: {known})")

    border = None
    if reader.make("BORDER_PARAMETERS", "BORDER_MAKE"):
        width = reader.get("BORDER_PARAMETERS", "BORDER_WIDTH")
        bit = reader.flag_value("BORDER_PARAMETERS", "BORDER_FLAG_VALUE")
        if width is not None and width < 0:
            reader.problems.append(f"{reader.where('BORDER_PARAMETERS', 'BORDER_WIDTH')}: must be >= 0")
        elif width is not None and bit is not None:
            border = BorderParams(width=width, bit=bit)

    stars = {}
    for kind in ("HALO", "SPIKE"):
        section = f"{kind}_PARAMETERS"
        if not reader.make(section, f"{kind}_MAKE"):
            continue
        values = {key: reader.get(section, f"{kind}_{key}") for key in _STAR_KEYS if key != "FLAG_VALUE"}
        bit = reader.flag_value(section, f"{kind}_FLAG_VALUE")
        min_scale = reader.get(section, f"{kind}_MIN_SCALE", default=DEFAULT_MIN_SCALE, required=False)
        reg_name = reader.get(section, f"{kind}_REG_FILE", default="", required=False)
        if values["MASKMODEL_PATH"] is None and reader.has(section, f"{kind}_MASKMODEL_PATH"):
            reader.problems.append(f"{reader.where(section, f'{kind}_MASKMODEL_PATH')}: empty path")
        if min_scale is not None and min_scale <= 0:
            reader.problems.append(f"{reader.where(section, f'{kind}_MIN_SCALE')}: must be positive")
        if bit is not None and None not in values.values() and min_scale and min_scale > 0:
            stars[kind] = StarMaskParams(
                template_path=values["MASKMODEL_PATH"],
                mag_lim=values["MAG_LIM"],
                scale_factor=values["SCALE_FACTOR"],
                mag_pivot=values["MAG_PIVOT"],
                bit=bit,
                min_scale=min_scale,
                reg_name=reg_name or "",
            )

    deep_sky = {}
    for kind in ("MESSIER", "NGC"):
        section = f"{kind}_PARAMETERS"
        if not reader.make(section, f"{kind}_MAKE"):
            continue
        # An absent catalogue path is allowed: the module option supplies it.
        cat_path = reader.get(section, f"{kind}_CAT_PATH", required=False)
        size_plus = reader.get(section, f"{kind}_SIZE_PLUS")
        bit = reader.flag_value(section, f"{kind}_FLAG_VALUE")
        if size_plus is not None and size_plus < 0:
            reader.problems.append(f"{reader.where(section, f'{kind}_SIZE_PLUS')}: cannot be negative")
        elif size_plus is not None and bit is not None:
            deep_sky[kind] = DeepSkyParams(cat_path=cat_path, size_plus=size_plus, bit=bit)

    satur = None
    section = "SATUR_PARAMETERS"
    if reader.make(section, "SATUR_MAKE"):
        level = reader.get(section, "SATUR_LEVEL", required=False)
        key = reader.get(section, "SATUR_KEY", default="SATURATE", required=False) or "SATURATE"
        fraction = reader.get(section, "SATUR_BLEED_FRACTION", default=0.5, required=False)
        grow = reader.get(section, "SATUR_GROW", default=2, required=False)
        bit = reader.flag_value(section, "SATUR_FLAG_VALUE") if reader.has(section, "SATUR_FLAG_VALUE") else (
            PLANES["MP_SATUR"][1]
        )
        ok = True
        if level is not None and level <= 0:
            reader.problems.append(f"{reader.where(section, 'SATUR_LEVEL')}: must be positive")
            ok = False
        if fraction is not None and not 0 < fraction <= 1:
            reader.problems.append(f"{reader.where(section, 'SATUR_BLEED_FRACTION')}: must be in (0, 1]")
            ok = False
        if grow is not None and grow < 0:
            reader.problems.append(f"{reader.where(section, 'SATUR_GROW')}: must be >= 0")
            ok = False
        if ok and None not in (fraction, grow, bit):
            satur = SaturParams(level=level, key=key, bleed_fraction=fraction, grow=grow, bit=bit)
    elif not parser.has_section(section):
        notes.append("no [SATUR_PARAMETERS] section: saturated pixels are not masked")

    missing = None
    section = "MD_PARAMETERS"
    if reader.make(section, "MD_MAKE"):
        thresh_flag = reader.get(section, "MD_THRESH_FLAG")
        thresh_remove = reader.get(section, "MD_THRESH_REMOVE")
        remove = reader.get(section, "MD_REMOVE")
        if None not in (thresh_flag, thresh_remove, remove):
            missing = MissingDataParams(thresh_flag=thresh_flag, thresh_remove=thresh_remove, remove=remove)

    keep_reg = reader.get("OTHER", "KEEP_REG_FILE", default=False, required=False) if parser.has_section(
        "OTHER"
    ) else False

    if reader.problems:
        raise ConfigError(reader.problems)
    return MaskParameters(
        source=path.resolve(),
        border=border,
        halo=stars.get("HALO"),
        spike=stars.get("SPIKE"),
        messier=deep_sky.get("MESSIER"),
        ngc=deep_sky.get("NGC"),
        satur=satur,
        missing_data=missing,
        keep_reg_file=bool(keep_reg),
        notes=tuple(notes),
        network_stars=parser.has_option("PROGRAM_PATH", "CDSCLIENT_PATH"),
    )


def default_config_path(kind: str = "exposure") -> Path:
    """Path of a ``.mask`` file shipped with the module.

    Parameters
    ----------
    kind : {'exposure', 'tile'}
        ``config.mask`` for single-exposure CCDs, ``config_tile.mask`` for tiles.
    """
    names = {"exposure": "config.mask", "tile": "config_tile.mask"}
    if kind not in names:
        raise ValueError(f"kind must be one of {', '.join(names)}, got {kind!r}")
    return Path(__file__).resolve().parent / "data" / names[kind]
