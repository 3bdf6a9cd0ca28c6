"""``convert_psf_pix2world``: PSF and star shapes from the pixel frame to the sky frame.

psfinterp VALIDATION writes, per CCD, ``validation_psf-<exposure>-<ccd>.fits``
(FITS-LDAC; the CCD header with its WCS in ``LDAC_IMHEAD``) whose HSM shapes
``E1/E2/SIGMA_{PSF,STAR}_HSM`` are measured on the CCD pixels: ellipticity
(reduced-shear definition, GalSim's ``observed_shape``) in the x, y frame and
size in pixels. This script maps them through the local WCS Jacobian at each
star, ``J = d(u, v) / d(x, y)`` in arcsec per pixel, into the sky frame:

- the second-moment matrix transforms as ``M_sky = J M_pix J^T``; the sky
  ellipticity is that of ``M_sky`` (rotation, flip and shear of the WCS all
  included), and the size ``det(M_sky)^(1/4) = sigma_pix |det J|^(1/2)``
  is in arcsec;
- the sky frame is GalSim's, as in ShapePipe: ``u = -(RA - RA0) cos(Dec)``
  (west), ``v = Dec - Dec0`` (north), so ``e1 > 0`` lies along the
  east-west axis and ``e2 > 0`` along north-west / south-east. ``frame =
  "radec"`` takes ``u`` towards the east instead (``e2`` changes sign).

The output is one FITS table (HDU 1) with ShapePipe's columns ``X, Y, RA,
DEC, E1_PSF_HSM, E2_PSF_HSM, SIGMA_PSF_HSM, FLAG_PSF_HSM, E1_STAR_HSM,
E2_STAR_HSM, SIGMA_STAR_HSM, FLAG_STAR_HSM, CCD_NB`` plus ``EXP_NAME``, the
rows of every input catalogue in turn. Inputs are validation catalogues or
folders holding them (``validation_psf*.fits``). A merged catalogue without
headers (``merge_starcat``'s ``full_starcat``, which has ``EXP_NAME`` and
``CCD_NB``) is converted with the WCS of the exposures' header store
(``--headers log_exp_headers.sqlite``).

Python API: :func:`shapes_pix2world` (the transformation, vectorised),
:func:`convert_catalogue`, :func:`convert_files`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from shapepipe.arguments import ArgumentParser

from ._common import ToolError, run

PROGRAM = "convert_psf_pix2world"
FRAMES = ("uv", "radec")
KINDS = ("PSF", "STAR")
#: Columns of ShapePipe's converted catalogue, in its order (EXP_NAME added here).
OUTPUT_COLUMNS = ("X", "Y", "RA", "DEC", "E1_PSF_HSM", "E2_PSF_HSM", "SIGMA_PSF_HSM", "FLAG_PSF_HSM",
                  "E1_STAR_HSM", "E2_STAR_HSM", "SIGMA_STAR_HSM", "FLAG_STAR_HSM", "CCD_NB", "EXP_NAME")
_NUMBER_RE = re.compile(r"-([^-\s]+)-(\d+)\.fits$")


def shapes_pix2world(e1, e2, sigma, jacobian, frame: str = "uv"):
    """Ellipticities and sizes measured in pixels, in the sky frame.

    Parameters
    ----------
    e1, e2 : array_like (n,)
        Ellipticity in the pixel frame, reduced-shear definition
        (``|e| = (a - b) / (a + b)``, GalSim's ``Shear`` and HSM's
        ``observed_shape``).
    sigma : array_like (n,)
        Size ``det(M)^(1/4)`` in pixels (HSM's ``moments_sigma``).
    jacobian : array_like (n, 2, 2) or (2, 2)
        ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` at each object, ``u`` west and
        ``v`` north (GalSim's convention; e.g.
        :func:`shapepipe_modules.vignetmaker.stamps.local_jacobians`).
    frame : {'uv', 'radec'}
        ``'uv'``: GalSim's and ShapePipe's sky frame (``u`` west);
        ``'radec'``: ``u`` towards the east (``e2`` negated).

    Returns
    -------
    e1, e2, sigma : numpy.ndarray (n,)
        Ellipticity in the sky frame and size in the Jacobian's unit
        (arcsec). NaN inputs give NaN.

    Raises
    ------
    ValueError
        On an unknown frame, a singular Jacobian, ``|e| >= 1`` or shapes
        of different lengths.
    """
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    e1 = np.atleast_1d(np.asarray(e1, dtype=float))
    e2 = np.atleast_1d(np.asarray(e2, dtype=float))
    sigma = np.atleast_1d(np.asarray(sigma, dtype=float))
    if not e1.shape == e2.shape == sigma.shape or e1.ndim != 1:
        raise ValueError(f"e1, e2 and sigma must be 1-d of one length, got {e1.shape}, {e2.shape}, {sigma.shape}")
    jac = np.asarray(jacobian, dtype=float)
    if jac.shape == (2, 2):
        jac = np.broadcast_to(jac, (e1.size, 2, 2))
    if jac.shape != (e1.size, 2, 2):
        raise ValueError(f"jacobian must be (2, 2) or ({e1.size}, 2, 2), got {jac.shape}")
    if frame == "radec":
        jac = jac * np.array([[-1.0], [1.0]])
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    if np.any(det == 0):
        raise ValueError("singular Jacobian (zero determinant)")
    g2 = e1 * e1 + e2 * e2
    if np.any(g2 >= 1):
        raise ValueError("ellipticity of modulus 1 or more")
    # Unit-determinant moment matrix of the pixel-frame shape: S(e)^2 with S the shear matrix.
    norm = 1.0 / (1.0 - g2)
    moments = np.empty((e1.size, 2, 2))
    moments[:, 0, 0] = norm * ((1 + e1) ** 2 + e2 * e2)
    moments[:, 1, 1] = norm * ((1 - e1) ** 2 + e2 * e2)
    moments[:, 0, 1] = moments[:, 1, 0] = norm * 2 * e2
    sky = jac @ moments @ np.swapaxes(jac, 1, 2)
    trace = sky[:, 0, 0] + sky[:, 1, 1]
    chi1 = (sky[:, 0, 0] - sky[:, 1, 1]) / trace
    chi2 = 2 * sky[:, 0, 1] / trace
    # Distortion chi -> reduced shear g = chi / (1 + sqrt(1 - |chi|^2)).
    factor = 1.0 / (1.0 + np.sqrt(np.clip(1.0 - chi1 * chi1 - chi2 * chi2, 0.0, None)))
    return chi1 * factor, chi2 * factor, sigma * np.sqrt(np.abs(det))


def _number_of(path: Path) -> tuple[str, int]:
    match = _NUMBER_RE.search(path.name)
    if not match:
        raise ToolError(f"{path}: name does not end with -<exposure>-<ccd>.fits")
    return match.group(1), int(match.group(2))


def _columns(table, path, names):
    missing = [name for name in names if name not in table.colnames]
    if missing:
        raise ToolError(f"{path}: columns {missing} missing (file has {table.colnames})")
    return {name: np.asarray(table[name]) for name in names}


def convert_catalogue(table, wcs_of, path, frame: str = "uv") -> dict:
    """Convert the shape columns of one validation catalogue (or a merged one).

    Parameters
    ----------
    table : astropy.table.Table
        Rows with ``X``, ``Y`` (FITS pixels), ``RA``, ``DEC``, the HSM
        columns, ``EXP_NAME`` and ``CCD_NB``.
    wcs_of : callable
        ``wcs_of(exposure, ccd)`` -> ``astropy.wcs.WCS`` of that CCD.
    path : path-like
        The catalogue, for messages.
    frame : {'uv', 'radec'}

    Returns
    -------
    dict of numpy.ndarray
        :data:`OUTPUT_COLUMNS`; rows whose Jacobian or shape is not finite
        keep NaN shapes.
    """
    from shapepipe_modules.vignetmaker.stamps import local_jacobians

    shape_names = [f"{q}_{kind}_HSM" for kind in KINDS for q in ("E1", "E2", "SIGMA", "FLAG")]
    values = _columns(table, path, ["X", "Y", "RA", "DEC", "EXP_NAME", "CCD_NB", *shape_names])
    count = len(table)
    out = {name: np.asarray(values[name], dtype=float) for name in ("X", "Y", "RA", "DEC")}
    jac = np.full((count, 2, 2), np.nan)
    exposures = np.asarray(values["EXP_NAME"]).astype(str)
    ccds = np.asarray(values["CCD_NB"]).astype(int)
    for exposure, ccd in sorted(set(zip(exposures, ccds))):
        rows = (exposures == exposure) & (ccds == ccd)
        jac[rows] = local_jacobians(wcs_of(exposure, int(ccd)), out["X"][rows], out["Y"][rows])
    for kind in KINDS:
        e1, e2, sigma = (np.asarray(values[f"{q}_{kind}_HSM"], dtype=float) for q in ("E1", "E2", "SIGMA"))
        good = (np.isfinite(e1) & np.isfinite(e2) & np.isfinite(sigma) & np.isfinite(jac).all(axis=(1, 2))
                & (e1 * e1 + e2 * e2 < 1))
        converted = [np.full(count, np.nan) for _ in range(3)]
        if good.any():
            results = shapes_pix2world(e1[good], e2[good], sigma[good], jac[good], frame)
            for column, result in zip(converted, results):
                column[good] = result
        for q, column in zip(("E1", "E2", "SIGMA"), converted):
            out[f"{q}_{kind}_HSM"] = column
        out[f"FLAG_{kind}_HSM"] = np.asarray(values[f"FLAG_{kind}_HSM"])
    out["CCD_NB"] = ccds.astype(np.int32)
    out["EXP_NAME"] = exposures
    return {name: out[name] for name in OUTPUT_COLUMNS}


def find_validation(inputs, pattern: str = "validation_psf") -> list[Path]:
    """Validation catalogues given as files or folders (``<pattern>*.fits`` inside), sorted."""
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.glob(f"{pattern}*.fits") if not p.name.startswith("."))
            if not found:
                raise ToolError(f"no {pattern}*.fits in {item}")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise ToolError(f"input {item} does not exist")
    return paths


def _read_validation(path: Path):
    """Objects table and WCS of one validation catalogue, with EXP_NAME and CCD_NB."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    from shapepipe_modules.io.ldac import LDACError, read_ldac

    try:
        table, header = read_ldac(path)
    except (LDACError, OSError, KeyError) as error:
        raise ToolError(f"cannot read validation catalogue {path}: {error}") from error
    if "EXP_NAME" not in table.colnames or "CCD_NB" not in table.colnames:
        exposure, ccd = _number_of(path)
        table["EXP_NAME"] = np.full(len(table), exposure)
        table["CCD_NB"] = np.full(len(table), ccd, dtype=np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # DATE-OBS filled from MJD-OBS: harmless, noisy
        wcs = WCS(header)
    if not wcs.has_celestial:
        raise ToolError(f"{path}: the header in LDAC_IMHEAD has no celestial WCS")
    return table, wcs.celestial


def convert_files(paths, frame: str = "uv", headers=None) -> dict:
    """Convert validation catalogues and join their rows.

    Parameters
    ----------
    paths : list of path-like
        psfinterp VALIDATION catalogues (their own header gives the WCS),
        or, with ``headers``, catalogues with ``EXP_NAME`` and ``CCD_NB``.
    frame : {'uv', 'radec'}
    headers : path-like, optional
        Header store of the exposures (``log_exp_headers.sqlite``): the WCS
        of each row's exposure and CCD.

    Returns
    -------
    dict of numpy.ndarray
        :data:`OUTPUT_COLUMNS`, rows of the files in order.
    """
    parts = []
    if headers is not None:
        from shapepipe_modules.io.header_store import HeaderStore
        from shapepipe_modules.io.ldac import LDACError, read_ldac

        with HeaderStore(headers) as store:
            def wcs_of(exposure, ccd):
                try:
                    return store.wcs(exposure, ccd)
                except (KeyError, ValueError) as error:
                    raise ToolError(f"{headers}: no header of exposure {exposure} CCD {ccd} ({error})") from None

            for path in paths:
                try:
                    table, _ = read_ldac(path)
                except (LDACError, OSError, KeyError) as error:
                    raise ToolError(f"cannot read catalogue {path}: {error}") from error
                parts.append(convert_catalogue(table, wcs_of, path, frame))
    else:
        for path in paths:
            table, wcs = _read_validation(Path(path))
            parts.append(convert_catalogue(table, lambda exposure, ccd, wcs=wcs: wcs, path, frame))
    if not parts:
        raise ToolError("no catalogue to convert")
    return {name: np.concatenate([part[name] for part in parts]) for name in OUTPUT_COLUMNS}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROGRAM,
        description="PSF and star HSM shapes of psfinterp VALIDATION catalogues, from the pixel frame to the "
                    "sky frame through the local WCS Jacobian; one FITS table out.")
    parser.add_argument("inputs", nargs="+",
                        help="validation_psf-<exposure>-<ccd>.fits catalogues, or folders holding them")
    parser.add_argument("-o", "--output", default="validation_psf_conv.fits",
                        help="output FITS table (default validation_psf_conv.fits)")
    parser.add_argument("--frame", choices=FRAMES, default="uv",
                        help="uv: GalSim's and ShapePipe's sky frame (u west, v north; default); "
                             "radec: u towards the east (e2 negated)")
    parser.add_argument("--headers", help="header store of the exposures (log_exp_headers.sqlite), for "
                                          "catalogues without their CCD header, e.g. full_starcat")
    parser.add_argument("--pattern", default="validation_psf",
                        help="name start of the catalogues in input folders (default validation_psf)")
    return parser


def _main(args) -> int:
    from shapepipe_modules.io.tables import write_fits_table

    paths = find_validation(args.inputs, args.pattern)
    columns = convert_files(paths, args.frame, args.headers)
    write_fits_table(args.output, columns)
    print(f"{PROGRAM}: {len(columns['X'])} stars of {len(paths)} catalogue(s) written to {args.output}",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
