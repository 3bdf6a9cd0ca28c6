"""Write one image HDU of a (tile-compressed) FITS file as a plain single-HDU FITS file.

Tools such as SExtractor's weight input or PSFEx need uncompressed files;
``CFIS_weight-244-252.fits.fz`` becomes ``CFIS_weight-244-252.fits``.
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.errors import JobError
from shapepipe_modules.io.images import copy_compressed
from shapepipe_modules.split_exp.fits_input import StrictFits, clean_header
from shapepipe_modules.split_exp.split_exp import write_single_hdu


def uncompress(path, output_path, hdu: int | None = None, keep_compressed: bool = False) -> dict:
    """Write the image of one HDU as a plain FITS file (or, with ``keep_compressed``, as its compressed tiles).

    Parameters
    ----------
    path : path
        Input file, compressed or not.
    output_path : path
        Output file (written atomically).
    hdu : int or None
        HDU holding the image; None takes the first HDU with a 2-D image
        (HDU 1 of a ``.fits.fz`` file, HDU 0 of a plain file).
    keep_compressed : bool
        A tile-compressed HDU is written as its compressed tiles copied byte
        for byte (fpack layout, :func:`~shapepipe_modules.io.images.copy_compressed`):
        the same values for the pipeline's readers, at the input's size. A
        plain HDU is written plain.

    Returns
    -------
    dict
        ``{'hdu': index used, 'shape': [ny, nx]}``.

    Raises
    ------
    JobError
        Naming the file, if it is damaged or the HDU holds no image.
    """
    with StrictFits(path) as fits_file:
        images = fits_file.image_hdu_indices()
        if hdu is None:
            if not images:
                raise JobError(f"FITS file {path} holds no 2-D image")
            hdu = images[0]
        elif not 0 <= hdu < len(fits_file):
            raise JobError(f"FITS file {path} has {len(fits_file)} HDUs; HDU_DATA = {hdu} does not exist")
        elif hdu not in images:
            hint = f" (images are in HDU {', '.join(map(str, images))})" if images else ""
            raise JobError(f"HDU {hdu} of FITS file {path} is not a 2-D image{hint}")
        primary = fits_file.header(0) if hdu > 0 else None
        header = clean_header(fits_file.header(hdu), primary)
        data = fits_file.data(hdu)
        if keep_compressed and fits_file.is_compressed(hdu):
            copy_compressed(path, hdu, output_path, header)
        else:
            write_single_hdu(output_path, data, header)
    return {"hdu": hdu, "shape": list(data.shape)}


def output_name(input_path, number: str, output_pattern: str | None, ext: str = ".fits") -> str:
    """Output file name ``<pattern><number>.fits``.

    Without ``output_pattern`` the input's own pattern is kept: the part of
    its name before the number (``CFIS_weight-244-252.fits.fz`` with number
    ``-244-252`` -> ``CFIS_weight-244-252.fits``).
    """
    if output_pattern is None:
        name = Path(input_path).name
        if number and number in name:
            output_pattern = name[: name.rindex(number)]
        else:
            output_pattern = name.split(".", 1)[0]
    return f"{output_pattern}{number}{ext}"
