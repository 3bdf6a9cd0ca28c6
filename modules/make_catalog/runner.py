"""Declaration of the ``make_catalog`` module (ShapePipe's ``make_cat_runner``).

Inputs, in ``FILE_PATTERN`` order (ShapePipe's): the tile detection
catalogue (``sexcat``), the spread-model catalogue (``sexcat_sm``), the PSF
store of ``psfinterp`` MULTI-EPOCH (``galaxy_psf``) and the merged ngmix
catalogue (``ngmix``).

Output: ``final_cat<number>.fits``, one table in HDU ``RESULTS`` (and, by
default, the same columns in ``final_cat<number>.h5``: ``EXTRA_FORMATS``); the
columns are listed in :mod:`.catalogue`. ``merge_final_cat`` concatenates
the tiles (give ``PSF_N_EPOCH_MAX`` so that every tile has the same
per-epoch columns, or select columns with a param file).
"""

from __future__ import annotations

from shapepipe.datasets import Product
from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("SM_DO_CLASSIFICATION", "bool", True, "Write SPREAD_CLASS (0 star, 1 galaxy, 2 other)."),
    Option("SM_STAR_THRESH", "float", 0.003, "Star if |SPREAD_MODEL + 2 SPREADERR_MODEL| < SM_STAR_THRESH."),
    Option("SM_GAL_THRESH", "float", 0.01, "Galaxy if SPREAD_MODEL + 2 SPREADERR_MODEL > SM_GAL_THRESH."),
    Option("SHAPE_MEASUREMENT_TYPE", "list", ["ngmix"], "Shape catalogues to join; ngmix is the one this "
           "pipeline measures."),
    Option("SAVE_PSF_DATA", "bool", True, "Write the per-epoch PSF columns (PSF_ELL_i, PSF_FWHM_i, PSF_FLAG_i, "
           "PSF_EXP_i, PSF_CCD_i)."),
    Option("EXTRA_FORMATS", "name_list", ["hdf5"], "Also write the final catalogue in these formats (the FITS "
           "file is always written): hdf5 gives final_cat<number>.h5, one gzip-compressed dataset per column "
           "in group RESULTS (h5py; read column by column: h5py.File(path)['RESULTS/NGMIX_G_1P'][:]); 'none' "
           "for none."),
    Option("PSF_N_EPOCH_MAX", "int", 0, "Number of per-epoch PSF column sets; 0: the most epochs of an object "
           "of the tile (ShapePipe's choice; tiles may then differ)."),
)


def validate(options) -> list[str]:
    """Cross-field checks made before any job starts."""
    problems = []
    types = [t.lower() for t in options.get("SHAPE_MEASUREMENT_TYPE") or []]
    if types != ["ngmix"]:
        problems.append(f"SHAPE_MEASUREMENT_TYPE must be ngmix (the shape catalogue this pipeline makes), "
                        f"got {options.get('SHAPE_MEASUREMENT_TYPE')}")
    unknown = [f for f in options.get("EXTRA_FORMATS") or [] if f.lower() not in ("hdf5", "none")]
    if unknown:
        problems.append(f"EXTRA_FORMATS {', '.join(unknown)}: the formats written are hdf5 (or none)")
    if (options.get("PSF_N_EPOCH_MAX") or 0) < 0:
        problems.append("PSF_N_EPOCH_MAX must be 0 or positive")
    return problems


def run_make_catalog(inputs, output_dir, number, options, logger):
    """Write ``final_cat<number>.fits``; returns (path, summary)."""
    from pathlib import Path

    import numpy as np

    from shapepipe_modules.io.tables import write_fits_table, write_hdf5_table

    from .catalogue import make_final_catalogue

    inputs = [Path(p) for p in inputs]
    if len(inputs) != 4:
        raise JobError(f"make_catalog needs 4 inputs (sexcat, sexcat_sm, galaxy_psf, ngmix), got {len(inputs)}: "
                       f"{', '.join(p.name for p in inputs)}")
    for path in inputs:
        if not path.is_file():
            raise JobError(f"make_catalog input {path} does not exist")
    columns = make_final_catalogue(*inputs, number, do_classification=options["SM_DO_CLASSIFICATION"],
                                   star_thresh=options["SM_STAR_THRESH"], gal_thresh=options["SM_GAL_THRESH"],
                                   save_psf=options["SAVE_PSF_DATA"], n_epoch_max=options["PSF_N_EPOCH_MAX"])
    path = write_fits_table(Path(output_dir) / f"final_cat{number}.fits", columns, extname="RESULTS")
    if "hdf5" in [f.lower() for f in options.get("EXTRA_FORMATS") or []]:
        write_hdf5_table(Path(output_dir) / f"final_cat{number}.h5", columns, group="RESULTS",
                         attributes={"TILE": number})
    n = len(columns["NUMBER"])
    no_shape = columns["NGMIX_NO_SHAPE"]
    summary = {"n_objects": n, "n_with_shape": int(np.count_nonzero(no_shape == 0)),
               "n_absent_from_ngmix": int(np.count_nonzero(no_shape & 1))}
    logger.info("final catalogue %s: %s", path.name, summary)
    return path, summary


PRODUCTS = (
    Product("final_cat", "final_cat{number}.fits", "fits_table", ids=("tile",),
            description="the final shear catalogue of a tile"),
    Product("final_cat_hdf5", "final_cat{number}.h5", "hdf5_table", ids=("tile",),
            description="the same final catalogue in HDF5, one dataset per column (EXTRA_FORMATS = hdf5)"),
)


@module(
    name="make_catalog",
    products=PRODUCTS,
    version="2.0",
    description="Final catalogue of a tile: detections, spread-model class, metacal shapes, PSF per epoch.",
    aliases=("make_cat_runner",),
    input_module=("sextractor", "spread_model", "psfinterp", "merge_sep_cats"),
    file_pattern=("tile_sexcat", "sexcat_sm", "galaxy_psf", "ngmix"),
    file_ext=(".fits", ".fits", ".sqlite", ".fits"),
    numbering_scheme="-000-000",
    depends=("numpy", "astropy", "h5py"),
    preload=(
             "astropy.io.fits",
             "astropy.table",
             "shapepipe_modules.make_catalog.catalogue",
    ),
    options=OPTIONS,
    validate=validate,
)
def make_catalog(job):
    """Join the tile's catalogues into its final catalogue."""
    _, summary = run_make_catalog(job.inputs, job.output_dir, job.number, job.options, job.logger)
    return summary
