"""The SExtractor binary engine: command line and executable lookup.

The binary reads the same ``.sex``/``.param``/``.conv`` files as the
``sep`` engine; this file only builds its argument list (no shell) from
the module's inputs and options.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Debian installs SExtractor as ``source-extractor``; other builds as ``sex``.
EXECUTABLE_NAMES = ("source-extractor", "sex")


def resolve_executable(exec_path: str) -> str:
    """Return the executable to run for ``EXEC_PATH``.

    A bare ``sex`` or ``source-extractor`` that is not on the PATH falls back
    to the other name when that one is installed; anything else is returned
    unchanged (the dependency check then reports it).
    """
    if shutil.which(exec_path):
        return exec_path
    if exec_path in EXECUTABLE_NAMES:
        for other in EXECUTABLE_NAMES:
            if other != exec_path and shutil.which(other):
                return other
    return exec_path


def command_line(
    executable: str,
    image: Path,
    catalogue: Path,
    dot_sex: Path,
    dot_param: Path,
    dot_conv: Path,
    weight: Path | None = None,
    flag: Path | None = None,
    psf: Path | None = None,
    detection_image: Path | None = None,
    detection_weight: Path | None = None,
    weight_type: str | None = None,
    zero_point: float | None = None,
    background_value: float | None = None,
    check_images: dict | None = None,
) -> list[str]:
    """Argument list running SExtractor on one image.

    Parameters
    ----------
    executable : str
        ``source-extractor`` or ``sex`` (see :func:`resolve_executable`).
    image, catalogue : Path
        Measurement image and output FITS-LDAC catalogue.
    dot_sex, dot_param, dot_conv : Path
        Configuration files.
    weight, flag, psf : Path, optional
        Weight map, integer flag map, PSFEx model.
    detection_image, detection_weight : Path, optional
        Dual-image mode: detection image and its weight.
    weight_type : str, optional
        WEIGHT_TYPE to force (when the ``.sex`` file sets none).
    zero_point, background_value : float, optional
        MAG_ZEROPOINT and a MANUAL background from the image header.
    check_images : dict, optional
        ``{CHECKIMAGE_TYPE: output path}``.
    """
    detection = detection_image or image
    args = [
        executable, f"{detection},{image}",
        "-c", str(dot_sex),
        "-PARAMETERS_NAME", str(dot_param),
        "-FILTER_NAME", str(dot_conv),
        "-CATALOG_NAME", str(catalogue),
        "-CATALOG_TYPE", "FITS_LDAC",
        "-WRITE_XML", "N",
    ]
    if weight is not None:
        detection_weight = detection_weight or weight
        args += ["-WEIGHT_IMAGE", f"{detection_weight},{weight}"]
        if weight_type:
            args += ["-WEIGHT_TYPE", f"{weight_type},{weight_type}"]
    else:
        args += ["-WEIGHT_TYPE", "NONE"]
    if flag is not None:
        args += ["-FLAG_IMAGE", str(flag)]
    if psf is not None:
        args += ["-PSF_NAME", str(psf)]
    if zero_point is not None:
        args += ["-MAG_ZEROPOINT", repr(float(zero_point))]
    if background_value is not None:
        args += ["-BACK_TYPE", "MANUAL", "-BACK_VALUE", repr(float(background_value))]
    if check_images:
        args += ["-CHECKIMAGE_TYPE", ",".join(check_images),
                 "-CHECKIMAGE_NAME", ",".join(str(p) for p in check_images.values())]
    else:
        args += ["-CHECKIMAGE_TYPE", "NONE"]
    return args
