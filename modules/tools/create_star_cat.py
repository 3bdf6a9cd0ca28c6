"""``create_star_cat``: bright-star catalogues per image, from a local reference catalogue.

For every image in a directory (tiles, or every CCD of the exposures), the
stars of a reference catalogue (FITS or CSV with ``ra``, ``dec`` in degrees
and ``mag``) that fall on the image, or within ``--margin`` arcseconds of
its edges, are written to ``<output>/star_cat<number>.fits``: a FITS
binary table (HDU ``STAR_CAT``) with columns ``ra``, ``dec``, ``mag``, ``x``,
``y`` (1-based pixel positions on that image), which the ``mask`` module
reads. No network access: ShapePipe queried the GSC with ``findgsc2.2``.

Image numbers follow the pipeline's numbering:

========================== =============================== ==========================
input                      images                          output
========================== =============================== ==========================
``CFIS.244.252.r.fits``    the tile                        ``star_cat-244-252.fits``
``2113737p.fits``          every CCD (image HDU ``k+1``)   ``star_cat-2113737-<k>.fits``
``image-2113737-3.fits``   the image (pipeline name)       ``star_cat-2113737-3.fits``
========================== =============================== ==========================

With ``--kind exposure`` pipeline-named exposures (``image-2113737.fits``)
are split per CCD as well. Existing outputs are skipped, so an interrupted
run resumes.

Python API: :func:`read_reference_catalogue`, :class:`ReferenceCatalogue`,
:func:`stars_on_image`, :func:`image_jobs`, :func:`create_star_catalogues`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapepipe_modules import cfis

from ._common import ToolError, run, warn
from shapepipe.arguments import ArgumentParser

PROGRAM = "create_star_cat"
OUTPUT_PREFIX = "star_cat"
EXTNAME = "STAR_CAT"
KINDS = ("auto", "tile", "exposure", "image")
_SKIP_RE = re.compile(r"\.(weight|flag)\.|^\.|\.tmp")


def _unit_vectors(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


@dataclass
class ReferenceCatalogue:
    """Reference stars (degrees, magnitudes) with a k-d tree for cone searches."""

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    path: str = ""

    def __post_init__(self):
        from scipy.spatial import cKDTree

        self._tree = cKDTree(_unit_vectors(self.ra, self.dec)) if len(self.ra) else None

    def cone(self, ra: float, dec: float, radius_deg: float) -> np.ndarray:
        """Indices of the stars within ``radius_deg`` of (ra, dec)."""
        if self._tree is None:
            return np.zeros(0, dtype=int)
        chord = 2 * np.sin(np.radians(min(radius_deg, 180.0)) / 2)
        return np.array(sorted(self._tree.query_ball_point(_unit_vectors(ra, dec)[0], chord)), dtype=int)


def read_reference_catalogue(path, ra_column="ra", dec_column="dec", mag_column="mag", hdu=1) -> ReferenceCatalogue:
    """Read a FITS or CSV reference catalogue (column names case-insensitive).

    Raises
    ------
    ToolError
        Naming the file, when it cannot be read or lacks a column.
    """
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise ToolError(f"reference catalogue {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            table = Table.read(path, format="ascii.csv")
        else:
            from shapepipe_modules.io.tables import read_fits_table

            table = read_fits_table(path, hdu=hdu)
    except (OSError, ValueError) as error:
        raise ToolError(f"cannot read reference catalogue {path}: {error}") from error
    lower = {name.lower(): name for name in table.colnames}
    columns = []
    for wanted in (ra_column, dec_column, mag_column):
        if wanted.lower() not in lower:
            raise ToolError(f"reference catalogue {path} has no column {wanted!r} (columns: {', '.join(table.colnames)})")
        columns.append(np.asarray(table[lower[wanted.lower()]], dtype=float))
    ra, dec, mag = columns
    good = np.isfinite(ra) & np.isfinite(dec)
    if not good.all():
        warn(PROGRAM, f"{path}: {np.count_nonzero(~good)} rows without finite ra/dec ignored")
    return ReferenceCatalogue(np.mod(ra[good], 360.0), dec[good], mag[good], str(path))


def stars_on_image(header, reference: ReferenceCatalogue, margin_arcsec: float = 0.0):
    """The reference stars on an image (or within the margin of its edges).

    Parameters
    ----------
    header : astropy.io.fits.Header
        Image header with a celestial WCS (distortions allowed) and the image size.
    reference : ReferenceCatalogue
    margin_arcsec : float
        Extra border around the image.

    Returns
    -------
    astropy.table.Table
        Columns ``ra``, ``dec``, ``mag``, ``x``, ``y`` (1-based pixels).
    """
    import warnings

    from astropy.table import Table
    from astropy.wcs import FITSFixedWarning, WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    nx = int(header.get("ZNAXIS1", header.get("NAXIS1", 0)))
    ny = int(header.get("ZNAXIS2", header.get("NAXIS2", 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial:
        raise ValueError("header has no celestial WCS")
    margin_pixels = margin_arcsec / 3600.0 / float(np.mean(proj_plane_pixel_scales(wcs.celestial)))
    # Cone around the image centre reaching its corners plus the margin;
    # then an exact test in pixel coordinates.
    corners = np.array([[0.5, 0.5], [nx + 0.5, 0.5], [0.5, ny + 0.5], [nx + 0.5, ny + 0.5],
                        [(nx + 1) / 2, (ny + 1) / 2]])
    sky = wcs.all_pix2world(corners, 1)
    radius = cfis.angular_separation(sky[4, 0], sky[4, 1], sky[:4, 0], sky[:4, 1]).max()
    candidates = reference.cone(sky[4, 0], sky[4, 1], radius + 2 * margin_arcsec / 3600.0 + 1e-6)
    if candidates.size:
        x, y = wcs.all_world2pix(reference.ra[candidates], reference.dec[candidates], 1, quiet=True)
        low_x, high_x = 0.5 - margin_pixels, nx + 0.5 + margin_pixels
        low_y, high_y = 0.5 - margin_pixels, ny + 0.5 + margin_pixels
        inside = np.isfinite(x) & np.isfinite(y) & (x >= low_x) & (x <= high_x) & (y >= low_y) & (y <= high_y)
        candidates, x, y = candidates[inside], x[inside], y[inside]
    else:
        x = y = np.zeros(0)
    return Table({
        "ra": reference.ra[candidates], "dec": reference.dec[candidates], "mag": reference.mag[candidates],
        "x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float),
    })


@dataclass(frozen=True)
class ImageJob:
    """One image to process: file, HDU index and pipeline number (``-244-252``)."""

    path: Path
    hdu: int
    number: str

    @property
    def output_name(self) -> str:
        return f"{OUTPUT_PREFIX}{self.number}.fits"


def _image_hdus(path: Path) -> list[int]:
    from astropy.io import fits

    indices = []
    with fits.open(path) as hdul:
        for index, hdu in enumerate(hdul):
            if hdu.is_image and (hdu.header.get("NAXIS", 0) >= 2 or hdu.header.get("ZNAXIS", 0) >= 2):
                indices.append(index)
    return indices


def image_jobs(input_dir, pattern: str = "*.fits", kind: str = "auto") -> list[ImageJob]:
    """The images of a directory with their pipeline numbers (see the module docstring).

    Weight and flag files are skipped.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ToolError(f"input directory {input_dir} does not exist")
    if kind not in KINDS:
        raise ToolError(f"--kind must be one of {KINDS}")
    jobs = []
    for path in sorted(input_dir.glob(pattern)):
        if _SKIP_RE.search(path.name) or not path.is_file():
            continue
        name = path.name
        per_ccd = kind == "exposure"
        if re.match(r"^CFIS\.\d{3}\.\d{3}\.", name) and kind in ("auto", "tile"):
            number = "-{}-{}".format(*(f"{v:03d}" for v in cfis.parse_tile_id(name)))
        elif re.match(r"^\d{6,8}p\.", name) and kind in ("auto", "exposure"):
            number = f"-{cfis.parse_exposure_name(name)}"
            per_ccd = True
        elif "-" in name:
            number = "-" + name.split("-", 1)[1].split(".", 1)[0]
        else:
            warn(PROGRAM, f"{path}: no image number in the name (CFIS.XXX.YYY.r.fits, NNNNNNNp.fits or "
                          "<prefix>-<number>.fits); skipped")
            continue
        try:
            hdus = _image_hdus(path)
        except OSError as error:
            raise ToolError(f"cannot read image {path}: {error}") from error
        if not hdus:
            warn(PROGRAM, f"{path}: no image HDU; skipped")
            continue
        if per_ccd:
            jobs += [ImageJob(path, hdu, f"{number}-{ccd}") for ccd, hdu in enumerate(hdus)]
        else:
            if len(hdus) > 1:
                warn(PROGRAM, f"{path}: {len(hdus)} image HDUs, using the first (use --kind exposure for CCDs)")
            jobs.append(ImageJob(path, hdus[0], number))
    return jobs


def create_star_catalogues(input_dir, output_dir, reference, margin_arcsec: float = 0.0, pattern: str = "*.fits",
                           kind: str = "auto", progress: bool = False) -> dict:
    """Write the bright-star catalogue of every image; existing outputs are kept.

    Parameters
    ----------
    input_dir, output_dir : path-like
    reference : ReferenceCatalogue or path-like
    margin_arcsec : float
    pattern : str
        Glob of the image files.
    kind : {'auto', 'tile', 'exposure', 'image'}
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``written``, ``skipped`` (already present) and ``stars`` (total written).
    """
    from astropy.io import fits
    from tqdm import tqdm

    from shapepipe_modules.io.tables import write_fits_table

    if not isinstance(reference, ReferenceCatalogue):
        reference = read_reference_catalogue(reference)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    counts = {"written": 0, "skipped": 0, "stars": 0}
    for job in tqdm(image_jobs(input_dir, pattern, kind), desc=PROGRAM, disable=not progress, unit="image"):
        output = output_dir / job.output_name
        if output.exists():
            counts["skipped"] += 1
            continue
        try:
            header = fits.getheader(job.path, job.hdu)
            table = stars_on_image(header, reference, margin_arcsec)
        except (OSError, ValueError) as error:
            raise ToolError(f"{job.path} (HDU {job.hdu}): {error}") from error
        meta = fits.Header()
        meta["IMAGE"] = (job.path.name, "image file")
        meta["IMAGEHDU"] = (job.hdu, "HDU index of the image")
        meta["REFCAT"] = (Path(reference.path).name[:60], "reference catalogue")
        meta["MARGIN"] = (margin_arcsec, "[arcsec] margin around the image")
        write_fits_table(output, table, header=meta, extname=EXTNAME)
        counts["written"] += 1
        counts["stars"] += len(table)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Write, for every image of a directory, the bright stars of a local reference "
        "catalogue that fall on it (star_cat<number>.fits, read by the mask module).",
    )
    parser.add_argument("input_dir", help="directory of images (tiles or exposures)")
    parser.add_argument("output_dir", help="directory of the star catalogues")
    parser.add_argument("-r", "--reference", required=True,
                        help="reference catalogue (FITS or CSV with ra, dec [deg] and mag)")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="margin around each image in arcsec (default 0)")
    parser.add_argument("--pattern", default="*.fits", help="glob of the image files (default *.fits)")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="auto: from the names; exposure: every image HDU is a CCD")
    parser.add_argument("--ra-column", default="ra")
    parser.add_argument("--dec-column", default="dec")
    parser.add_argument("--mag-column", default="mag")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _main(args) -> int:
    reference = read_reference_catalogue(args.reference, args.ra_column, args.dec_column, args.mag_column)
    counts = create_star_catalogues(args.input_dir, args.output_dir, reference, args.margin, args.pattern,
                                    args.kind, progress=not args.quiet)
    print(f"{PROGRAM}: {counts['written']} catalogues written ({counts['stars']} stars), "
          f"{counts['skipped']} already present", file=sys.stderr)
    if counts["written"] + counts["skipped"] == 0:
        print(f"{PROGRAM}: no image found in {args.input_dir} ({args.pattern})", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
