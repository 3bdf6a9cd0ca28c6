"""CLASSIC stamps: stamps of one or more images around catalogue positions.

Positions are catalogue columns (``POSITION_PARAMS``), in pixels (``PIX``:
FITS 1-based, e.g. ``XWIN_IMAGE, YWIN_IMAGE``) or on the sky (``SPHE``:
RA, Dec in degrees, converted with each image's own WCS, distortion
included). Stamps follow the centre convention of :mod:`.stamps`; pixels
outside the image are ``fill`` (0 by default, so a weight stamp has zero
weight there).

Output: ``<prefix>_vignet<number>.fits`` per image, a FITS-LDAC catalogue
(the input's ``LDAC_IMHEAD`` kept when present) with ``NUMBER`` (when the
catalogue has it) and ``VIGNET`` (``(n, size, size)``, the image's pixel type).

MASKING mode rewrites the catalogue's own ``VIGNET`` column with
SExtractor's masked pixels (``< -1e29``) set to ``mask_value``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shapepipe.errors import JobError

from .catalogue import read_objects
from .stamps import central_pixels, check_stamp_size, cut_stamps

#: SExtractor's masked-pixel value in VIGNET is -1e30; anything below this is masked.
SEXTRACTOR_MASK_LIMIT = -1e29


def output_name(prefix: str, number: str) -> str:
    """``<prefix>_vignet<number>.fits`` (``vignet<number>.fits`` without a prefix)."""
    prefix = (prefix or "").strip()
    if prefix.lower() == "none":
        prefix = ""
    return f"{prefix}_vignet{number}.fits" if prefix else f"vignet{number}.fits"


def read_image(path):
    """Pixels and header of the first 2-D image HDU of a FITS file.

    Raises
    ------
    JobError
        If the file is unreadable or has no 2-D image (names the file).
    """
    from astropy.io import fits

    path = Path(path)
    try:
        # memmap: only the pages under the stamps are read (a full tile image is 400 MB).
        with fits.open(path, memmap=True) as hdus:
            for hdu in hdus:
                if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
                    return np.asarray(hdu.data), hdu.header.copy()
    except OSError as error:
        raise JobError(f"{path}: cannot read image ({error})") from error
    raise JobError(f"{path}: no 2-D image HDU")


def pixel_positions(catalogue, header, coord: str, path_for_errors=""):
    """FITS pixel positions from catalogue columns.

    Parameters
    ----------
    catalogue : tuple of numpy.ndarray
        The two position columns.
    header : astropy.io.fits.Header
        Image header (its WCS converts SPHE positions).
    coord : {'PIX', 'SPHE'}
    """
    first, second = (np.asarray(c, dtype=float) for c in catalogue)
    if coord == "PIX":
        return first, second
    if coord != "SPHE":
        raise ValueError(f"COORD must be PIX or SPHE, got {coord!r}")
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning, NoConvergence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise JobError(f"{path_for_errors}: COORD = SPHE needs a celestial WCS in the image header")
    try:
        x, y = wcs.all_world2pix(first, second, 1)
    except NoConvergence as error:
        x, y = error.best_solution.T
    return x, y


def _write(path, columns, catalogue_path):
    """Write ``columns`` as FITS-LDAC, keeping the catalogue's image header."""
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe_modules.io.ldac import LDACError, read_ldac, write_ldac

    try:
        _, image_header = read_ldac(catalogue_path)
    except LDACError:
        image_header = fits.Header()
    write_ldac(path, Table(columns), image_header)


def make_classic_stamps(catalogue_path, image_paths, prefixes, output_dir, number, stamp_size,
                        coord="PIX", position_params=("XWIN_IMAGE", "YWIN_IMAGE"), fill=0,
                        neighbour_mask=None, masked_prefixes=()):
    """Cut stamps from each image around the catalogue positions.

    Parameters
    ----------
    catalogue_path : path-like
        Catalogue with the position columns.
    image_paths : sequence of path-like
        Images to cut, one output file each.
    prefixes : sequence of str
        Output prefix per image.
    output_dir : path-like
    number : str
        File number used in the output names.
    stamp_size : int
        Odd stamp side.
    coord : {'PIX', 'SPHE'}
    position_params : (str, str)
        Position columns (x, y or RA, Dec).
    fill : scalar
        Value of pixels outside the image.
    neighbour_mask : path-like, optional
        Object mask (int32, each object's ellipse holds its NUMBER,
        saturated regions -1): in the stamps of the images whose prefix is
        in ``masked_prefixes``, pixels of other objects are set to 0 and a
        ``MASKED_FRACTION`` column is written.
    masked_prefixes : sequence of str

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    size = check_stamp_size(stamp_size)
    if len(prefixes) != len(image_paths):
        raise ValueError(f"{len(prefixes)} PREFIX entries for {len(image_paths)} images")
    catalogue_path = Path(catalogue_path)
    wanted = list(position_params) + ["NUMBER"]
    try:
        columns = read_objects(catalogue_path, wanted)
    except JobError:
        columns = read_objects(catalogue_path, list(position_params))
    positions = (columns[position_params[0]], columns[position_params[1]])
    neighbours = None
    if neighbour_mask is not None:
        from shapepipe_modules.crowded.masks import neighbour_pixels

        if "NUMBER" not in columns:
            raise ValueError(f"NEIGHBOUR_MASK needs a NUMBER column in {catalogue_path}")
        mask, mask_header = read_image(neighbour_mask)
        x, y = pixel_positions(positions, mask_header, coord, neighbour_mask)
        ix, iy, _, _ = central_pixels(x, y)
        neighbours = neighbour_pixels(cut_stamps(np.asarray(mask), ix, iy, size, fill=0)[0], columns["NUMBER"])
    written = []
    for image_path, prefix in zip(image_paths, prefixes):
        data, header = read_image(image_path)
        x, y = pixel_positions(positions, header, coord, image_path)
        ix, iy, _, _ = central_pixels(x, y)
        stamps, _ = cut_stamps(data, ix, iy, size, fill=fill)
        out = {}
        if "NUMBER" in columns:
            out["NUMBER"] = columns["NUMBER"]
        if neighbours is not None and prefix in masked_prefixes:
            stamps = np.array(stamps, copy=True)
            stamps[neighbours] = 0
            out["MASKED_FRACTION"] = neighbours.mean(axis=(1, 2)).astype(np.float32)
        out["VIGNET"] = stamps
        path = Path(output_dir) / output_name(prefix, number)
        _write(path, out, catalogue_path)
        written.append(path)
    return written


def mask_catalogue_vignets(catalogue_path, mask_value, output_dir, number, prefix="cat"):
    """Copy the catalogue's ``VIGNET`` with masked pixels replaced by ``mask_value``.

    Returns
    -------
    pathlib.Path
        ``<prefix>_vignet<number>.fits``.
    """
    catalogue_path = Path(catalogue_path)
    try:
        columns = read_objects(catalogue_path, ["NUMBER", "VIGNET"])
    except JobError:
        columns = read_objects(catalogue_path, ["VIGNET"])
    vignet = np.array(columns["VIGNET"], copy=True)
    vignet[vignet < SEXTRACTOR_MASK_LIMIT] = mask_value
    columns["VIGNET"] = vignet
    path = Path(output_dir) / output_name(prefix, number)
    _write(path, columns, catalogue_path)
    return path

