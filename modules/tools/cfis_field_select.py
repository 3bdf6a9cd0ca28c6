"""``cfis_field_select``: the CFIS tiles and exposures that cover a field.

Input (``-i``): a text file with one tile ID (``244.252``) or file name
(``CFIS.244.252.r.fits``, ``2113737p.fits``) per line (``#`` starts a
comment; a malformed line is reported with its number and skipped), or a
directory of images. Without input, tile modes work on the whole sky.

Modes (exactly one):

``--coord RA_DEC``
    The tile whose centre is nearest to the coordinate (``-t`` tile types),
    or the listed exposures with a CCD covering it (exposure types).
``--area RA0_DEC0_RA1_DEC1``
    The tiles whose centres lie in the rectangle (RA from RA0 east to RA1,
    through RA 0 when RA0 > RA1 or RA1 > 360), or the listed exposures whose
    centre lies in it.
``--number ID``
    Name and centre (RA, Dec in degrees) of a tile ID or listed exposure.
``--tile``
    The exposures used in the listed tiles, read from the ``HISTORY`` cards
    ``input image 2113737p.fits 6 extension(s)`` of their primary header.

``-t`` gives the names printed (the files to fetch): ``tile``, ``weight``,
``exposure``, ``exposure_weight``, ``exposure_flag`` and their ``.fz``
forms. Angles take any astropy form (``255.66deg_34.05deg``,
``17h02m38s_+34d03m``); bare numbers are degrees.

Python API: :func:`read_image_list`, :func:`select_at_coord`,
:func:`select_in_area`, :func:`describe_number`, :func:`exposures_in_tiles`,
:func:`plot_footprints`; :func:`main` is the console script.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shapepipe.atomic import write_text_atomic
from shapepipe_modules import cfis

from ._common import ToolError, read_lines, run, warn
from shapepipe.arguments import ArgumentParser

PROGRAM = "cfis_field_select"
_HISTORY_RE = re.compile(r"^\s*input image\s+(\S+)", re.IGNORECASE)
_EXPOSURE_FILE_RE = re.compile(r"^(\d{6,8})p\.fits(\.fz)?$")
_TILE_FILE_RE = re.compile(r"^CFIS\.\d{3}\.\d{3}\.[a-zA-Z]+\.fits(\.fz)?$")


@dataclass
class ImageEntry:
    """One tile or exposure of the input list.

    Attributes
    ----------
    kind : {'tile', 'exposure'}
    ident : tuple of int or str
        ``(xxx, yyy)`` for a tile, the exposure name otherwise.
    path : pathlib.Path or None
        The file, when the input names one that exists.
    source : str
        Where it came from (``list.txt:12`` or the file path).
    """

    kind: str
    ident: object
    path: Path | None = None
    source: str = ""
    footprint: list = field(default_factory=list, repr=False)


# ---------------------------------------------------------------------------
# Input


def _entry_from_text(text: str, base_dir: Path | None, source: str) -> ImageEntry:
    """Parse one list item; raises ValueError when it is neither a tile nor an exposure."""
    name = Path(text).name
    path = None
    if base_dir is not None and ("/" in text or name.endswith((".fits", ".fz"))):
        candidate = Path(text) if Path(text).is_absolute() else base_dir / text
        path = candidate if candidate.exists() else None
    try:
        return ImageEntry("tile", cfis.parse_tile_id(name), path, source)
    except ValueError:
        pass
    if re.fullmatch(r"\d{6,8}p?", name) or _EXPOSURE_FILE_RE.match(name) or re.match(r"^\d{6,8}p\.", name):
        return ImageEntry("exposure", cfis.parse_exposure_name(name), path, source)
    raise ValueError(f"cannot read a tile ID (XXX.YYY) or exposure name (NNNNNNNp) from {text!r}")


def read_image_list(source, program: str = PROGRAM) -> list[ImageEntry]:
    """Tiles and exposures from a list file or a directory.

    Parameters
    ----------
    source : path-like
        Text file (first word of each line) or directory (its CFIS image
        files, weights and flags excluded).
    program : str
        Name used in warnings.

    Returns
    -------
    list of ImageEntry
        Malformed lines are reported on standard error (``file:line``) and
        skipped.
    """
    source = Path(source)
    entries = []
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if _TILE_FILE_RE.match(path.name):
                entries.append(ImageEntry("tile", cfis.parse_tile_id(path.name), path, str(path)))
            elif _EXPOSURE_FILE_RE.match(path.name):
                entries.append(ImageEntry("exposure", cfis.parse_exposure_name(path.name), path, str(path)))
        return entries
    if not source.exists():
        raise ToolError(f"input {source} does not exist")
    for number, line in read_lines(source):
        where = f"{source}:{number}"
        try:
            entries.append(_entry_from_text(line.split()[0], source.parent, where))
        except ValueError as error:
            warn(program, f"{where}: {error}; line skipped")
    return entries


def parse_angles(text: str, count: int, what: str) -> list[float]:
    """``count`` angles in degrees from a ``_``- or blank-separated string."""
    from astropy import units
    from astropy.coordinates import Angle

    parts = [part for part in re.split(r"[_\s]+", text.strip()) if part]
    if len(parts) != count:
        raise ToolError(f"{what} {text!r}: expected {count} angles separated by '_'")
    values = []
    for part in parts:
        try:
            angle = Angle(float(part), units.deg) if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", part) else Angle(part)
        except (ValueError, units.UnitsError) as error:
            raise ToolError(f"{what} {text!r}: cannot read angle {part!r} ({error})") from None
        values.append(float(angle.to_value(units.deg)))
    for index in range(1, count, 2):
        if not -90.0 <= values[index] <= 90.0:
            raise ToolError(f"{what} {text!r}: declination {values[index]} outside [-90, 90]")
    return values


# ---------------------------------------------------------------------------
# Exposure footprints (from the CCD headers)


def exposure_footprint(entry: ImageEntry) -> list:
    """``[(wcs, nx, ny), ...]`` for every image HDU of an exposure file (cached on the entry)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    if entry.footprint:
        return entry.footprint
    if entry.path is None:
        raise ToolError(f"{entry.source}: exposure {entry.ident} has no readable file; give file names or a directory")
    try:
        with fits.open(entry.path) as hdul:
            for hdu in hdul:
                header = hdu.header
                nx, ny = header.get("ZNAXIS1", header.get("NAXIS1", 0)), header.get("ZNAXIS2", header.get("NAXIS2", 0))
                if header.get("NAXIS", 0) >= 2 or header.get("ZNAXIS", 0) >= 2:
                    if nx and ny:
                        entry.footprint.append((WCS(header), int(nx), int(ny)))
    except OSError as error:
        raise ToolError(f"cannot read exposure {entry.path}: {error}") from error
    if not entry.footprint:
        raise ToolError(f"exposure {entry.path} has no image HDU with a WCS")
    return entry.footprint


def _covers(footprint, ra: float, dec: float) -> bool:
    for wcs, nx, ny in footprint:
        if _near_ccd(wcs, nx, ny, ra, dec):
            x, y = wcs.all_world2pix([[ra, dec]], 1, quiet=True)[0]
            if 0.5 <= x <= nx + 0.5 and 0.5 <= y <= ny + 0.5:
                return True
    return False


def _near_ccd(wcs, nx, ny, ra, dec) -> bool:
    """Cheap test that (ra, dec) is near a CCD (avoids projecting the far sky)."""
    corners = np.array([[1, 1], [nx, 1], [1, ny], [nx, ny], [(nx + 1) / 2, (ny + 1) / 2]], dtype=float)
    sky = wcs.all_pix2world(corners, 1)
    radius = cfis.angular_separation(sky[4, 0], sky[4, 1], sky[:4, 0], sky[:4, 1]).max()
    return cfis.angular_separation(sky[4, 0], sky[4, 1], ra, dec) <= radius * 1.01


def exposure_centre(entry: ImageEntry) -> tuple[float, float]:
    """Mean position (degrees) of the CCD centres of an exposure."""
    vectors = []
    for wcs, nx, ny in exposure_footprint(entry):
        ra, dec = np.radians(wcs.all_pix2world([[(nx + 1) / 2, (ny + 1) / 2]], 1)[0])
        vectors.append([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    x, y, z = np.mean(vectors, axis=0)
    return float(np.degrees(np.arctan2(y, x)) % 360), float(np.degrees(np.arctan2(z, np.hypot(x, y))))


# ---------------------------------------------------------------------------
# Selections


def _tile_entries(entries):
    return [e for e in entries if e.kind == "tile"] if entries is not None else None


def _exposure_entries(entries, what):
    if entries is None:
        raise ToolError(f"{what} for exposures needs an input list or directory of exposure files (-i)")
    return [e for e in entries if e.kind == "exposure"]


def _names(idents, image_type, band):
    return [cfis.cfis_file_name(ident, image_type, band) for ident in idents]


def select_at_coord(ra: float, dec: float, image_type: str = "tile", entries=None, band: str = "r") -> list[str]:
    """File names of the images at a coordinate.

    Tile types: the tile whose centre is nearest (if ``entries`` is given,
    only when that tile is listed). Exposure types: the listed exposures
    with a CCD containing the coordinate.
    """
    if image_type in cfis.TILE_TYPES:
        ident = cfis.nearest_tile(ra, dec)
        tiles = _tile_entries(entries)
        if tiles is not None and ident not in {e.ident for e in tiles}:
            return []
        return _names([ident], image_type, band)
    exposures = _exposure_entries(entries, "--coord")
    return _names([e.ident for e in exposures if _covers(exposure_footprint(e), ra, dec)], image_type, band)


def select_in_area(area, image_type: str = "tile", entries=None, band: str = "r") -> list[str]:
    """File names of the images whose centre lies in ``area = (ra0, dec0, ra1, dec1)`` (degrees)."""
    ra0, dec0, ra1, dec1 = area
    dec_low, dec_high = sorted((dec0, dec1))
    if image_type in cfis.TILE_TYPES:
        tiles = _tile_entries(entries)
        if tiles is None:
            idents = list(zip(*(a.tolist() for a in cfis.tiles_in_area(ra0, dec0, ra1, dec1))))
        else:
            idents = sorted({e.ident for e in tiles}, key=lambda t: (t[1], t[0]))
            if idents:
                ra, dec = cfis.tile_centre([i[0] for i in idents], [i[1] for i in idents])
                keep = cfis.ra_in_range(ra, ra0, ra1) & (dec >= dec_low) & (dec <= dec_high)
                idents = [ident for ident, k in zip(idents, keep) if k]
        return _names(idents, image_type, band)
    found = []
    for entry in _exposure_entries(entries, "--area"):
        ra, dec = exposure_centre(entry)
        if cfis.ra_in_range(ra, ra0, ra1) and dec_low <= dec <= dec_high:
            found.append(entry.ident)
    return _names(found, image_type, band)


def describe_number(number: str, image_type: str = "tile", entries=None, band: str = "r") -> list[str]:
    """``'<name> <ra> <dec>'`` for a tile ID or a listed exposure."""
    if image_type in cfis.TILE_TYPES:
        try:
            ident = cfis.parse_tile_id(number)
        except ValueError as error:
            raise ToolError(f"--number: {error}") from None
        ra, dec = cfis.tile_centre(*ident)
        return [f"{cfis.cfis_file_name(ident, image_type, band)} {ra:.6f} {dec:.6f}"]
    try:
        name = cfis.parse_exposure_name(number)
    except ValueError as error:
        raise ToolError(f"--number: {error}") from None
    for entry in _exposure_entries(entries, "--number"):
        if entry.ident == name:
            ra, dec = exposure_centre(entry)
            return [f"{cfis.cfis_file_name(name, image_type, band)} {ra:.6f} {dec:.6f}"]
    return []


def exposures_in_header(header, path="") -> list[str]:
    """Exposure names in the ``input image ...`` HISTORY cards of a tile header."""
    names = []
    for card in header.get("HISTORY", []):
        match = _HISTORY_RE.match(str(card))
        if match:
            try:
                names.append(cfis.parse_exposure_name(match.group(1)))
            except ValueError:
                raise ToolError(f"{path}: HISTORY card {str(card)!r} names no CFIS exposure") from None
    return names


def exposures_in_tiles(paths, image_type: str = "exposure", program: str = PROGRAM) -> list[str]:
    """File names (``-t`` type) of the exposures used in the given tile files, sorted and unique."""
    from astropy.io import fits

    if image_type not in cfis.EXPOSURE_TYPES:
        raise ToolError(f"--tile lists exposures: -t must be one of {', '.join(cfis.EXPOSURE_TYPES)}")
    found = set()
    for path in paths:
        try:
            header = fits.getheader(path, 0)
        except (OSError, IndexError) as error:
            raise ToolError(f"cannot read tile {path}: {error}") from error
        names = exposures_in_header(header, path)
        if not names:
            warn(program, f"{path}: no 'input image' HISTORY card")
        found.update(names)
    return _names(sorted(found), image_type, "r")


# ---------------------------------------------------------------------------
# Plot


def plot_footprints(path, tile_idents=(), exposure_entries=(), area=None, coord=None) -> Path:
    """Footprint plot (PNG or PDF from the extension) of tiles, exposures, an area and a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shapepipe.atomic import atomic_path

    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise ToolError(f"--plot {path}: use a .png or .pdf name")
    figure, axes = plt.subplots(figsize=(7, 6))
    reference_ra = None
    if coord is not None:
        reference_ra = coord[0]
    elif area is not None:
        reference_ra = area[0] + ((area[2] - area[0]) % 360) / 2

    def unwrap(ra):
        ra = np.asarray(ra, dtype=float)
        if reference_ra is None:
            return ra
        return reference_ra + (ra - reference_ra + 180) % 360 - 180

    for xxx, yyy in tile_idents:
        ra, dec = cfis.tile_centre(xxx, yyy)
        half_ra = 0.25 / max(np.cos(np.radians(dec)), 1e-3)
        ra = float(unwrap(ra))
        axes.add_patch(plt.Rectangle((ra - half_ra, dec - 0.25), 2 * half_ra, 0.5, fill=False, color="C0"))
        axes.text(ra, dec, cfis.tile_id(xxx, yyy), ha="center", va="center", fontsize=6)
    for entry in exposure_entries:
        for wcs, nx, ny in exposure_footprint(entry):
            corners = wcs.all_pix2world([[1, 1], [nx, 1], [nx, ny], [1, ny], [1, 1]], 1)
            axes.plot(unwrap(corners[:, 0]), corners[:, 1], color="C1", lw=0.6)
    if area is not None:
        ra0 = float(unwrap(area[0]))
        width = (area[2] - area[0]) % 360 if area[2] - area[0] < 360 else 360
        axes.add_patch(plt.Rectangle((ra0, min(area[1], area[3])), width, abs(area[3] - area[1]),
                                     fill=False, color="C3", lw=1.5, ls="--"))
    if coord is not None:
        axes.plot([float(unwrap(coord[0]))], [coord[1]], "r+", ms=12)
    axes.autoscale_view()
    axes.invert_xaxis()  # RA increases to the east (left)
    axes.set_xlabel("RA [deg]")
    axes.set_ylabel("Dec [deg]")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lower()[1:], bbox_inches="tight")
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------
# Console script


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Select the CFIS tiles and exposures covering a coordinate or an area, "
        "or the exposures used in tiles.",
    )
    parser.add_argument("-i", "--input", help="list file (tile IDs or file names, one per line) or directory of images")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--coord", metavar="RA_DEC", help="coordinate, e.g. 255.66deg_34.05deg")
    mode.add_argument("--area", metavar="RA0_DEC0_RA1_DEC1", help="rectangle; RA runs east from RA0 to RA1")
    mode.add_argument("--number", metavar="ID", help="tile ID (244.252) or exposure name (2113737)")
    mode.add_argument("--tile", action="store_true", help="exposures used in the input tiles (HISTORY cards)")
    parser.add_argument("-t", "--type", dest="image_type", choices=cfis.IMAGE_TYPES,
                        help="names printed (default: tile, or exposure with --tile)")
    parser.add_argument("-b", "--band", default="r", help="band of tile names (default r)")
    parser.add_argument("-o", "--output", help="output text file (default: standard output)")
    parser.add_argument("--plot", metavar="FILE", help="footprint plot (.png or .pdf)")
    return parser


def _main(args) -> int:
    entries = read_image_list(args.input) if args.input else None
    image_type = args.image_type or ("exposure" if args.tile else "tile")
    coord = area = None
    if args.coord:
        coord = parse_angles(args.coord, 2, "--coord")
        lines = select_at_coord(*coord, image_type, entries, args.band)
    elif args.area:
        area = parse_angles(args.area, 4, "--area")
        lines = select_in_area(area, image_type, entries, args.band)
    elif args.number:
        lines = describe_number(args.number, image_type, entries, args.band)
    else:
        if entries is None:
            raise ToolError("--tile needs the tiles (-i list or directory)")
        tiles = [e for e in entries if e.kind == "tile"]
        missing = [e.source for e in tiles if e.path is None]
        if missing:
            raise ToolError(f"--tile needs tile files; not found: {', '.join(missing)}")
        lines = exposures_in_tiles([e.path for e in tiles], image_type)
    text = "".join(line + "\n" for line in lines)
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    if args.plot:
        tiles = [cfis.parse_tile_id(line.split()[0]) for line in lines] if image_type in cfis.TILE_TYPES else []
        listed = {e.ident: e for e in entries or [] if e.kind == "exposure"}
        exposures = []
        if image_type in cfis.EXPOSURE_TYPES and not args.tile:
            exposures = [listed[cfis.parse_exposure_name(line.split()[0])] for line in lines]
        plot_footprints(args.plot, tiles, exposures, area, coord)
    if not lines:
        print(f"{PROGRAM}: nothing found", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run(PROGRAM, _main, args)


if __name__ == "__main__":
    sys.exit(main())
