"""Readers of SExtractor's configuration files: ``.sex``, ``.param``, ``.conv``.

The ``sep`` engine reads the same files as the SExtractor binary, so one set
of files drives both engines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ConfigFileError(ValueError):
    """A SExtractor configuration file cannot be understood (names file and line)."""


def read_dot_sex(path) -> dict[str, str]:
    """Read a ``.sex`` file into ``{KEY: value text}``.

    Comments (``#`` to the end of the line) and blank lines are dropped;
    keys are upper-cased; a key without a value maps to ``''``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read the .sex file ({error})") from error
    settings = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        settings[parts[0].upper()] = parts[1].strip() if len(parts) > 1 else ""
    return settings


_PARAM_RE = re.compile(r"^([A-Za-z0-9_]+)(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?$")


@dataclass(frozen=True)
class Parameter:
    """One catalogue parameter of a ``.param`` file.

    Attributes
    ----------
    name : str
        Column name (``FLUX_APER``).
    shape : tuple of int
        ``()`` for scalars, ``(n,)`` for ``FLUX_APER(n)``, ``(w, h)`` for
        ``VIGNET(w,h)``.
    """

    name: str
    shape: tuple = ()

    def __str__(self):
        if not self.shape:
            return self.name
        return f"{self.name}({','.join(map(str, self.shape))})"


def read_dot_param(path) -> list[Parameter]:
    """Read a ``.param`` file: one parameter per line, ``#`` comments ignored.

    Raises
    ------
    ConfigFileError
        On a line that is not ``NAME`` or ``NAME(n)`` or ``NAME(w,h)``, or a
        parameter listed twice.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read the .param file ({error})") from error
    parameters = []
    seen = set()
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        word = word.split()[0]
        match = _PARAM_RE.match(word)
        if not match:
            raise ConfigFileError(f"{path}, line {number}: cannot parse parameter {word!r}")
        name = match.group(1).upper()
        shape = tuple(int(g) for g in match.group(2, 3) if g is not None)
        if name in seen:
            raise ConfigFileError(f"{path}, line {number}: parameter {name} listed twice")
        seen.add(name)
        parameters.append(Parameter(name, shape))
    if not parameters:
        raise ConfigFileError(f"{path}: no parameters")
    return parameters


def read_dot_conv(path) -> np.ndarray:
    """Read a ``.conv`` filter kernel.

    The first line is ``CONV NORM`` (normalise the kernel to unit sum) or
    ``CONV NONORM``; the following non-comment lines are the kernel rows.

    Returns
    -------
    numpy.ndarray
        2-d float kernel, normalised when the file says ``NORM``.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read the .conv file ({error})") from error
    content = [(n, line.split("#", 1)[0].split()) for n, line in enumerate(lines, start=1)]
    content = [(n, words) for n, words in content if words]
    if not content or content[0][1][0].upper() != "CONV":
        raise ConfigFileError(f"{path}: a .conv file starts with 'CONV NORM' or 'CONV NONORM'")
    header = [w.upper() for w in content[0][1]]
    normalise = len(header) < 2 or header[1] == "NORM"
    rows = []
    for number, words in content[1:]:
        try:
            rows.append([float(w) for w in words])
        except ValueError:
            raise ConfigFileError(f"{path}, line {number}: kernel values must be numbers") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise ConfigFileError(f"{path}: kernel rows must be non-empty and of equal length")
    kernel = np.array(rows, dtype=float)
    if normalise:
        total = kernel.sum()
        if total == 0:
            raise ConfigFileError(f"{path}: cannot normalise a kernel summing to zero")
        kernel = kernel / total
    return kernel


def _numbers(text: str, key: str, path) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise ConfigFileError(f"{path}: {key} must be numbers, got {text!r}") from None


def _yes(text: str) -> bool:
    return text.strip().upper().startswith("Y")


@dataclass
class ExtractionSettings:
    """The ``.sex`` settings that the ``sep`` engine honours (SExtractor defaults)."""

    detect_thresh: float = 1.5
    analysis_thresh: float = 1.5
    thresh_absolute: bool = False
    detect_minarea: int = 5
    filter: bool = True
    deblend_nthresh: int = 32
    deblend_mincont: float = 0.005
    clean: bool = True
    clean_param: float = 1.0
    back_size: tuple = (64, 64)
    back_filtersize: tuple = (3, 3)
    back_filtthresh: float = 0.0
    back_type: str = "AUTO"
    back_value: float = 0.0
    phot_apertures: tuple = (5.0,)
    phot_autoparams: tuple = (2.5, 3.5)
    phot_fluxfrac: tuple = (0.5,)
    mag_zeropoint: float = 0.0
    gain: float = 0.0
    gain_key: str = "GAIN"
    satur_level: float = 50000.0
    satur_key: str = "SATURATE"
    pixel_scale: float = 0.0
    weight_gain: bool = True
    mask_type: str = "CORRECT"

    @classmethod
    def from_dot_sex(cls, settings: dict[str, str], path="<.sex>") -> "ExtractionSettings":
        """Build from :func:`read_dot_sex` output; absent keys keep SExtractor's defaults."""
        out = cls()

        def number(key, kind=float):
            text = settings.get(key, "").strip()
            if not text:
                return None
            values = _numbers(text, key, path)
            return kind(values[0])

        def pair(key, kind):
            text = settings.get(key, "").strip()
            if not text:
                return None
            values = [kind(v) for v in _numbers(text, key, path)]
            return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])

        for key, attr, kind in (
            ("DETECT_THRESH", "detect_thresh", float),
            ("ANALYSIS_THRESH", "analysis_thresh", float),
            ("DETECT_MINAREA", "detect_minarea", int),
            ("DEBLEND_NTHRESH", "deblend_nthresh", int),
            ("DEBLEND_MINCONT", "deblend_mincont", float),
            ("CLEAN_PARAM", "clean_param", float),
            ("BACK_FILTTHRESH", "back_filtthresh", float),
            ("BACK_VALUE", "back_value", float),
            ("MAG_ZEROPOINT", "mag_zeropoint", float),
            ("GAIN", "gain", float),
            ("SATUR_LEVEL", "satur_level", float),
            ("PIXEL_SCALE", "pixel_scale", float),
        ):
            value = number(key, kind)
            if value is not None:
                setattr(out, attr, value)
        if "ANALYSIS_THRESH" not in settings and "DETECT_THRESH" in settings:
            out.analysis_thresh = out.detect_thresh
        for key, attr in (("BACK_SIZE", "back_size"), ("BACK_FILTERSIZE", "back_filtersize")):
            value = pair(key, int)
            if value is not None:
                setattr(out, attr, value)
        for key, attr in (
            ("PHOT_APERTURES", "phot_apertures"),
            ("PHOT_AUTOPARAMS", "phot_autoparams"),
            ("PHOT_FLUXFRAC", "phot_fluxfrac"),
        ):
            text = settings.get(key, "").strip()
            if text:
                setattr(out, attr, tuple(_numbers(text, key, path)))
        if len(out.phot_autoparams) != 2:
            raise ConfigFileError(f"{path}: PHOT_AUTOPARAMS needs <Kron_fact>,<min_radius>")
        for key, attr in (("FILTER", "filter"), ("CLEAN", "clean"), ("WEIGHT_GAIN", "weight_gain")):
            if settings.get(key, "").strip():
                setattr(out, attr, _yes(settings[key]))
        for key, attr in (("GAIN_KEY", "gain_key"), ("SATUR_KEY", "satur_key")):
            if settings.get(key, "").strip():
                setattr(out, attr, settings[key].split()[0])
        back_type = settings.get("BACK_TYPE", "AUTO").split(",")[0].strip().upper() or "AUTO"
        if back_type not in ("AUTO", "MANUAL"):
            raise ConfigFileError(f"{path}: BACK_TYPE must be AUTO or MANUAL, got {back_type!r}")
        out.back_type = back_type
        thresh_type = settings.get("THRESH_TYPE", "RELATIVE").split(",")[0].strip().upper()
        if thresh_type not in ("RELATIVE", "ABSOLUTE", ""):
            raise ConfigFileError(f"{path}: THRESH_TYPE must be RELATIVE or ABSOLUTE")
        out.thresh_absolute = thresh_type == "ABSOLUTE"
        mask_type = settings.get("MASK_TYPE", "CORRECT").strip().upper() or "CORRECT"
        out.mask_type = mask_type
        if out.detect_minarea < 1 or out.deblend_nthresh < 1:
            raise ConfigFileError(f"{path}: DETECT_MINAREA and DEBLEND_NTHRESH must be positive")
        return out
