"""Where the stamp sources of a run are: tile images, weights and flags, exposure CCDs, PSF models.

File names follow ShapePipe's numbering, ``<pattern><number><ext>``:

- tiles: ``<pattern>-XXX-YYY.fits`` (``CFIS_image-244-252.fits``,
  ``CFIS_weight-244-252.fits``, ``pipeline_flag-244-252.fits``), one image
  pattern per band with an optional weight and flag pattern for each;
- exposure CCDs: ``<pattern>-<exposure>-<ccd>.fits`` (``image-2100001-3.fits``),
  their WCS from the header store written by ``merge_headers``;
- PSF models: ``<pattern>-<exposure>-<ccd>.psf`` (PSFEx format).

Each pattern is looked up in every listed folder; the first folder holding
the file wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shapepipe_modules.cfis import parse_tile_id, tile_id


class LayoutError(ValueError):
    """The layout options are inconsistent (the message names the option)."""


@dataclass(frozen=True)
class Band:
    """The tile files of one band (pattern ``None``: that kind is absent)."""

    name: str
    image: str
    weight: str | None = None
    flag: str | None = None


@dataclass(frozen=True)
class Layout:
    """Folders and file patterns of every stamp source (see the module docstring)."""

    tile_dirs: tuple
    bands: tuple
    exp_dirs: tuple = ()
    exp_image: str | None = None
    exp_weight: str | None = None
    exp_flag: str | None = None
    psf_dirs: tuple = ()
    psf_pattern: str | None = None
    header_store: Path | None = None
    ext: str = ".fits"
    psf_ext: str = ".psf"

    @property
    def exposures(self) -> bool:
        """Whether single-exposure stamps are cut."""
        return self.exp_image is not None and self.header_store is not None

    def find(self, folders, pattern: str | None, number: str, ext: str) -> Path | None:
        """First ``<folder>/<pattern><number><ext>`` that exists (None if none or no pattern)."""
        if pattern is None:
            return None
        for folder in folders:
            path = Path(folder) / f"{pattern}{number}{ext}"
            if path.exists():
                return path
        return None

    def tile_file(self, band: Band, kind: str, tile: str) -> Path | None:
        """Tile file of a band (``kind`` image, weight or flag)."""
        xxx, yyy = parse_tile_id(tile)
        return self.find(self.tile_dirs, getattr(band, kind), f"-{xxx:03d}-{yyy:03d}", self.ext)

    def exposure_file(self, kind: str, exposure: str, ccd: int) -> Path | None:
        """CCD file of an exposure (``kind`` image, weight or flag)."""
        return self.find(self.exp_dirs, getattr(self, f"exp_{kind}"), f"-{exposure}-{int(ccd)}", self.ext)

    def psf_file(self, exposure: str, ccd: int) -> Path | None:
        """PSF model of one CCD of an exposure."""
        return self.find(self.psf_dirs, self.psf_pattern, f"-{exposure}-{int(ccd)}", self.psf_ext)

    def tiles(self) -> list[str]:
        """Tile ids (``'244.252'``) with an image of the first band, sorted."""
        band = self.bands[0]
        found = set()
        for folder in self.tile_dirs:
            for path in Path(folder).glob(f"{band.image}-[0-9][0-9][0-9]-[0-9][0-9][0-9]{self.ext}"):
                found.add(tile_id(*parse_tile_id(path.name[len(band.image):])))
        return sorted(found)


def _none(value):
    """Pattern option value: an empty string or ``none`` means absent."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text == "" or text.lower() == "none" else text


def _per_band(values, count, name):
    values = [_none(v) for v in values]
    if not values:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise LayoutError(f"{name}: {len(values)} values for {count} bands (give one, or one per band)")
    return values


def layout_from_options(options: dict) -> Layout:
    """Build a :class:`Layout` from the module's options (see :mod:`.runner`).

    Raises
    ------
    LayoutError
        Naming the option, when lists do not match the bands.
    """
    images = [_none(v) for v in options["TILE_IMAGE_PATTERN"]]
    if not images or any(v is None for v in images):
        raise LayoutError("TILE_IMAGE_PATTERN: give one tile image pattern per band")
    names = list(options["BANDS"]) or ["r"]
    if len(names) != len(images):
        raise LayoutError(f"BANDS: {len(names)} names for {len(images)} TILE_IMAGE_PATTERN values")
    weights = _per_band(options["TILE_WEIGHT_PATTERN"], len(images), "TILE_WEIGHT_PATTERN")
    flags = _per_band(options["TILE_FLAG_PATTERN"], len(images), "TILE_FLAG_PATTERN")
    bands = tuple(Band(n, i, w, f) for n, i, w, f in zip(names, images, weights, flags))
    if not options["TILE_DIR"]:
        raise LayoutError("TILE_DIR: give the folders of the tile files")
    exposures = bool(options["EXPOSURE_STAMPS"])
    store = _none(options.get("HEADER_STORE", ""))
    if exposures and (not options["EXP_DIR"] or store is None):
        raise LayoutError("EXPOSURE_STAMPS = True needs EXP_DIR (the CCD files) and HEADER_STORE "
                          "(log_exp_headers.sqlite)")
    return Layout(
        tile_dirs=tuple(Path(d) for d in options["TILE_DIR"]),
        bands=bands,
        exp_dirs=tuple(Path(d) for d in options["EXP_DIR"]) if exposures else (),
        exp_image=_none(options["EXP_IMAGE_PATTERN"]) if exposures else None,
        exp_weight=_none(options["EXP_WEIGHT_PATTERN"]) if exposures else None,
        exp_flag=_none(options["EXP_FLAG_PATTERN"]) if exposures else None,
        psf_dirs=tuple(Path(d) for d in options["PSF_DIR"]) if exposures else (),
        psf_pattern=_none(options["PSF_PATTERN"]) if exposures else None,
        header_store=Path(store) if exposures and store else None,
    )
