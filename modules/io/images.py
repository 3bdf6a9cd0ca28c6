"""Single-image FITS files, plain or tile-compressed without loss.

A compressed file follows the fpack convention: an empty primary HDU, then
the image in a ``CompImageHDU`` whose header is the image's. Integers use
RICE_1 (flag images: 50-80x smaller), floats GZIP_2 with no quantisation
(byte-shuffled gzip: every value is kept exactly; weights 2x, images 1.4x,
smooth backgrounds more). Readers find the image with :func:`image_hdu`,
which accepts both layouts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path


def compressed_hdu(data, header=None):
    """A lossless ``CompImageHDU`` of ``data`` (RICE_1 for integers, GZIP_2 unquantised for floats)."""
    from astropy.io import fits

    data = np.asarray(data)
    if data.dtype.kind in "iub":
        if data.dtype.kind == "b":
            data = data.astype(np.uint8)
        return fits.CompImageHDU(data=data, header=header, compression_type="RICE_1")
    return fits.CompImageHDU(data=data, header=header, compression_type="GZIP_2", quantize_level=0.0)


def write_image(path, data, header=None, compress: bool = False, output_verify: str = "silentfix") -> Path:
    """Write one image with its header, atomically; tile-compressed without loss if ``compress``.

    Parameters
    ----------
    path : path-like
        Output file (``.fits``; a compressed file keeps the name).
    data : numpy.ndarray
    header : astropy.io.fits.Header, optional
    compress : bool
        Empty primary HDU plus a lossless ``CompImageHDU`` (fpack layout)
        instead of a single primary HDU.
    """
    from astropy.io import fits

    if compress:
        hdus = fits.HDUList([fits.PrimaryHDU(), compressed_hdu(data, header)])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    with atomic_path(path) as temporary:
        hdus.writeto(temporary, output_verify=output_verify)
    return Path(path)


def image_hdu(hdus, index: int = 0):
    """HDU ``index`` of an open file, or, for ``index`` 0 of an fpack-layout file, its compressed image.

    An empty primary HDU followed by a ``CompImageHDU`` is read as the image
    (as fpack/funpack and astropy's ``getdata`` do).
    """
    from astropy.io import fits

    hdu = hdus[index]
    if index == 0 and hdu.header.get("NAXIS", 0) == 0 and len(hdus) > 1 and isinstance(hdus[1], fits.CompImageHDU):
        return hdus[1]
    return hdu


def is_compressed(path) -> bool:
    """Whether a FITS file holds a tile-compressed image HDU."""
    from astropy.io import fits

    with fits.open(path) as hdus:
        return any(isinstance(hdu, fits.CompImageHDU) for hdu in hdus)
