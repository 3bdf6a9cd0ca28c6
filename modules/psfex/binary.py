"""Running the PSFEx executable on a star catalogue.

The Debian build of PSFEx cannot draw plots, so check-plots are always
disabled; no XML report is written. PSFEx crashes (segmentation fault) on
FITS-LDAC files whose ``LDAC_IMHEAD`` cards are padded with NUL bytes, as
astropy writes them, so the catalogue is first copied with the cards padded
with spaces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def space_padded_copy(catalogue, destination) -> Path:
    """Copy a FITS-LDAC catalogue, replacing NUL padding of its header cards by spaces."""
    from astropy.io import fits

    catalogue = Path(catalogue)
    destination = Path(destination)
    shutil.copyfile(catalogue, destination)
    with fits.open(catalogue, memmap=False) as hdus:
        if "LDAC_IMHEAD" not in hdus:
            return destination
        hdu = hdus["LDAC_IMHEAD"]
        start = hdu._data_offset
        length = hdu.header["NAXIS1"] * hdu.header["NAXIS2"]
    with open(destination, "r+b") as handle:
        handle.seek(start)
        block = np.frombuffer(handle.read(length), dtype=np.uint8).copy()
        block[block == 0] = ord(" ")
        handle.seek(start)
        handle.write(block.tobytes())
    return destination


def psfex_command(executable, catalogue, config, psf_dir, outcat, checkimages=()) -> list[str]:
    """Arguments of a PSFEx run writing ``<psf_dir>/<catalogue stem>.psf`` and ``outcat``."""
    command = [
        str(executable), str(catalogue), "-c", str(config),
        "-PSF_DIR", str(psf_dir),
        "-OUTCAT_TYPE", "FITS_LDAC", "-OUTCAT_NAME", str(outcat),
        "-CHECKPLOT_TYPE", "NONE", "-WRITE_XML", "N", "-NTHREADS", "1",
    ]
    if checkimages:
        names = [str(Path(psf_dir) / f"{kind.lower()}_{Path(catalogue).stem}.fits") for kind in checkimages]
        command += ["-CHECKIMAGE_TYPE", ",".join(k.upper() for k in checkimages),
                    "-CHECKIMAGE_NAME", ",".join(names)]
    else:
        command += ["-CHECKIMAGE_TYPE", "NONE"]
    return command


def run_psfex(run_command, executable, catalogue, config, work_dir, outcat, checkimages=()) -> Path:
    """Run PSFEx; return the path of the ``.psf`` file it wrote.

    Parameters
    ----------
    run_command : callable
        ``run_command(args)`` runs a program without a shell (``Job.run_command``).
    executable, catalogue, config : path-like
        PSFEx program, FITS-LDAC star catalogue, ``.psfex`` configuration.
    work_dir : path-like
        Folder for the sanitised catalogue copy and the ``.psf`` output.
    outcat : path-like
        Residual catalogue to write.

    Raises
    ------
    RuntimeError
        If PSFEx ends without writing a model (message holds its last output lines).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    catalogue = Path(catalogue)
    name = catalogue.name.split(".")[0]
    copy = space_padded_copy(catalogue, work_dir / f"{name}.cat")
    result = run_command(psfex_command(executable, copy, config, work_dir, outcat, checkimages))
    psf = work_dir / f"{name}.psf"
    copy.unlink()
    if not psf.exists():
        text = (result.stdout or "") + (result.stderr or "")
        tail = "\n".join(line for line in text.replace("\r", "\n").splitlines() if line.strip())[-800:]
        raise RuntimeError(f"PSFEx wrote no model for {catalogue}; last output:\n{tail}")
    return psf
