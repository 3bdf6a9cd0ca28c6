"""Declaration of the ``spread_model`` module (ShapePipe's ``spread_model_runner``).

Inputs, in ``FILE_PATTERN`` order: the tile catalogue (FITS-LDAC with
``NUMBER``, ``VIGNET`` and the position and magnitude columns), the PSF
store of ``psfinterp`` MULTI-EPOCH (``galaxy_psf<number>.sqlite``) and the
tile weight stamps of ``vignetmaker`` CLASSIC (``weight_vignet<number>.fits``).

Output: ``[<PREFIX>_]sexcat_sm<number>.fits`` (FITS-LDAC, the input's image
header kept). ``OUTPUT_MODE = new``: ``NUMBER``, ``MAG``, ``SPREAD_MODEL``,
``SPREADERR_MODEL``, ``SPREAD_FLAGS``; ``add``: the input catalogue (with
its ``EPOCH_i`` HDUs) plus those three columns.

Objects without PSF get ``SPREAD_FLAGS`` bit 1 and NaN values (ShapePipe
wrote -1 and 1); see :data:`.spread_model.FLAGS`. The definition and the
two PSF models are described in :mod:`.spread_model`.
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("PIXEL_SCALE", "float", 0.186, "Pixel scale in arcsec. The models are made in pixels, so it does not "
           "change the result; kept for ShapePipe configurations."),
    Option("OUTPUT_MODE", "choice", "new", "new: a catalogue of NUMBER, MAG, SPREAD_MODEL, SPREADERR_MODEL, "
           "SPREAD_FLAGS; add: the input catalogue with the three columns added.", choices=("new", "add")),
    Option("PREFIX", "name", "", "Output name prefix: <PREFIX>_sexcat_sm<number>.fits (empty or 'none': no prefix)."),
    Option("PSF_MODEL", "choice", "gaussian", "gaussian: a Gaussian of the mean HSM sigma of the epochs "
           "(ShapePipe's); stamp: the mean of the epochs' PSF stamps.", choices=("gaussian", "stamp")),
    Option("SUBPIXEL_CENTRE", "bool", True, "Centre the models on the object's sub-pixel position "
           "(POSITION_PARAMS) in its VIGNET; False: on the central pixel, as ShapePipe."),
    Option("POSITION_PARAMS", "list", ["XWIN_IMAGE", "YWIN_IMAGE"], "Columns of the object's centre (FITS pixels), "
           "for SUBPIXEL_CENTRE."),
    Option("VIGNET_CENTRE_PARAMS", "list", ["X_IMAGE", "Y_IMAGE"], "Columns on which SExtractor centred VIGNET "
           "(central pixel int(X_IMAGE + 0.49999), 1-based), for SUBPIXEL_CENTRE."),
    Option("MAG_PARAM", "str", "MAG_AUTO", "Magnitude column copied to MAG (new mode)."),
    Option("BATCH_SIZE", "int", 256, "Objects per vectorised batch (bounds memory)."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    for key in ("POSITION_PARAMS", "VIGNET_CENTRE_PARAMS"):
        if options.get("SUBPIXEL_CENTRE") and len(options.get(key) or []) != 2:
            problems.append(f"{key} needs two column names, got {options.get(key)}")
    if (options.get("BATCH_SIZE") or 0) < 1:
        problems.append(f"BATCH_SIZE must be positive, got {options.get('BATCH_SIZE')}")
    return problems


def output_name(prefix: str, number: str) -> str:
    """``<prefix>_sexcat_sm<number>.fits`` or ``sexcat_sm<number>.fits``."""
    prefix = (prefix or "").strip()
    if prefix.lower() == "none":
        prefix = ""
    return f"{prefix}_sexcat_sm{number}.fits" if prefix else f"sexcat_sm{number}.fits"


def _read_catalogue(path):
    from shapepipe_modules.io.ldac import LDACError, read_ldac

    try:
        return read_ldac(path)
    except LDACError as error:
        raise JobError(str(error)) from None


def _extra_hdus(path):
    """HDUs after LDAC_OBJECTS (EPOCH_i), copied."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdus:
        names = [h.name for h in hdus]
        start = names.index("LDAC_OBJECTS") + 1
        return [h.copy() for h in hdus[start:]]


def _columns(table, names, path):
    missing = [n for n in names if n not in table.colnames]
    if missing:
        raise JobError(f"{path}: column(s) {', '.join(missing)} missing (columns: {', '.join(table.colnames)})")


def compute_spread_model(table, weights, sigma, psf_stamps, options):
    """SPREAD_MODEL, SPREADERR_MODEL, SPREAD_FLAGS of every catalogue row, in batches."""
    import numpy as np

    from .spread_model import FLAG_NO_PSF, gaussian_models, spread_model, stamp_models

    vignet = np.asarray(table["VIGNET"])
    n, size = vignet.shape[0], vignet.shape[-1]
    if options["SUBPIXEL_CENTRE"]:
        xc, yc = options["VIGNET_CENTRE_PARAMS"]
        xw, yw = options["POSITION_PARAMS"]
        # SExtractor's VIGNET central pixel, 0-based; the object's 0-based position minus it.
        dx = (np.asarray(table[xw], float) - 1) - (np.asarray(table[xc], float) + 0.49999 - 1).astype(int)
        dy = (np.asarray(table[yw], float) - 1) - (np.asarray(table[yc], float) + 0.49999 - 1).astype(int)
        dx = np.clip(np.nan_to_num(dx), -1.5, 1.5)
        dy = np.clip(np.nan_to_num(dy), -1.5, 1.5)
    else:
        dx = dy = np.zeros(n)
    sm = np.full(n, np.nan)
    sm_err = np.full(n, np.nan)
    flags = np.zeros(n, np.int16)
    has_psf = np.isfinite(sigma)
    flags[~has_psf] |= FLAG_NO_PSF
    rows = np.flatnonzero(has_psf)
    batch = int(options["BATCH_SIZE"])
    for start in range(0, rows.size, batch):
        part = rows[start:start + batch]
        if options["PSF_MODEL"] == "stamp":
            psf, galaxy = stamp_models(psf_stamps[part], sigma[part], size, dx[part], dy[part])
        else:
            psf, galaxy = gaussian_models(sigma[part], size, dx[part], dy[part])
        sm[part], sm_err[part], flags[part] = spread_model(vignet[part], weights[part], psf, galaxy)
    return sm, sm_err, flags


PRODUCTS = (
    Product("sexcat_sm", "*sexcat_sm{number}.fits", "ldac", ids=("tile", "exposure_ccd"),
            description="tile catalogue with SPREAD_MODEL"),
)


@module(
    name="spread_model",
    products=PRODUCTS,
    version="2.0",
    description="SPREAD_MODEL star/galaxy classifier of tile objects from their stamps and PSF.",
    aliases=("spread_model_runner",),
    input_module=("sextractor", "psfinterp", "vignetmaker"),
    file_pattern=("sexcat", "galaxy_psf", "weight_vign"),
    file_ext=(".fits", ".sqlite", ".fits"),
    depends=("numpy", "astropy", "sqlitedict", "galsim"),
    preload=(
             "astropy.io.fits",
             "shapepipe_modules.spread_model.spread_model",
    ),
    options=OPTIONS,
    validate=validate,
)
def spread_model_module(job):
    """Compute SPREAD_MODEL for every object of one tile catalogue."""
    import numpy as np
    from astropy.table import Table

    from shapepipe_modules.io.arrays import StoreError
    from shapepipe_modules.io.ldac import write_ldac
    from shapepipe_modules.io.stamp_store import StampStore

    from .psf_input import read_object_psfs

    options = job.options
    if len(job.inputs) != 3:
        raise JobError(f"spread_model expects 3 inputs (catalogue, PSF store, weight stamps), got {len(job.inputs)}: "
                       + ", ".join(str(p) for p in job.inputs))
    cat_path, psf_path, weight_path = (Path(p) for p in job.inputs)
    table, image_header = _read_catalogue(cat_path)
    needed = ["NUMBER", "VIGNET"]
    if options["SUBPIXEL_CENTRE"]:
        needed += list(options["POSITION_PARAMS"]) + list(options["VIGNET_CENTRE_PARAMS"])
    if options["OUTPUT_MODE"] == "new":
        needed.append(options["MAG_PARAM"])
    _columns(table, needed, cat_path)
    weight_table, _ = _read_catalogue(weight_path)
    _columns(weight_table, ["VIGNET"], weight_path)
    vignet_shape = np.shape(table["VIGNET"])
    weights = np.asarray(weight_table["VIGNET"])
    if weights.shape != vignet_shape:
        raise JobError(f"{weight_path}: weight stamps have shape {weights.shape}, the VIGNET of {cat_path.name} "
                       f"{vignet_shape}")
    if "NUMBER" in weight_table.colnames and not np.array_equal(weight_table["NUMBER"], table["NUMBER"]):
        raise JobError(f"{weight_path}: its NUMBER column does not match {cat_path.name}")
    ids = np.asarray(table["NUMBER"])
    want_stamps = options["PSF_MODEL"] == "stamp"
    try:
        with StampStore(psf_path) as store:
            sigma, psf_stamps = read_object_psfs(store, ids, want_stamps)
    except (StoreError, ValueError) as error:
        raise JobError(f"{psf_path}: {error}") from None
    if want_stamps and psf_stamps is None:
        sigma = np.full(ids.size, np.nan)
    sm, sm_err, flags = compute_spread_model(table, weights, sigma, psf_stamps, options)

    path = job.output_path(output_name(options["PREFIX"], job.number))
    if options["OUTPUT_MODE"] == "new":
        out = Table({"NUMBER": ids, "MAG": np.asarray(table[options["MAG_PARAM"]]), "SPREAD_MODEL": sm,
                     "SPREADERR_MODEL": sm_err, "SPREAD_FLAGS": flags})
        write_ldac(path, out, image_header)
    else:
        out = table.copy(copy_data=False)
        out["SPREAD_MODEL"] = sm
        out["SPREADERR_MODEL"] = sm_err
        out["SPREAD_FLAGS"] = flags
        write_ldac(path, out, image_header, extra_hdus=_extra_hdus(cat_path))
    n_no_psf = int(np.count_nonzero(~np.isfinite(sigma)))
    if n_no_psf:
        job.logger.warning("%d of %d objects of %s have no PSF in %s (SPREAD_FLAGS bit 1)", n_no_psf, ids.size,
                           cat_path.name, psf_path.name)
    return {"n_objects": int(ids.size), "n_no_psf": n_no_psf, "n_flagged": int(np.count_nonzero(flags))}
