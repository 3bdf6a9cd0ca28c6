"""Declaration of the ``stamps`` module: postage-stamp archives for a list of targets.

Input: one target table (CSV or FITS with an id, RA and Dec column; the
names are options). The job checks every row, assigns each target a tile
(``TILE_RULE``), cuts stamps of the tile image, weight and flag, and of
every exposure CCD that saw the target with its PSF model, into one HDF5
file per batch of ``BATCH_SIZE`` tiles, ``N_WORKERS`` batches at a time,
and writes ``targets.csv`` (the status of every target) and a quick-look
figure. Layout of the files: :mod:`.extract`; ``docs/stamps.md``.

The archive goes to the job's output folder, or to ``ARCHIVE_DIR`` when
set: a fixed folder outside the run, so that running the configuration
again resumes the archive (batches already written are kept, only the
rest is cut), as ``shapepipe_stamps run`` does.

The same options drive the console script ``shapepipe_stamps`` (as
``--tile-dir``, ``--stamp-size``...).
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.errors import JobError
from shapepipe.module import module
from shapepipe.options import Option

OPTIONS = (
    Option("ID_COLUMN", "str", "id", "Column of the target ids (any text; unique)."),
    Option("RA_COLUMN", "str", "ra", "Column of the right ascensions, degrees."),
    Option("DEC_COLUMN", "str", "dec", "Column of the declinations, degrees."),
    Option("TILE_RULE", "choice", "footprint", "footprint: a target belongs to the run's tile image that holds it "
           "(WCS; the tile where it is farthest from the edge on overlaps); cfis: the tile of the CFIS tiling "
           "rule (nearest centre) when the run has that tile.", choices=("footprint", "cfis")),
    Option("TILE_DIR", "dir_list", [], "Folders (or last:MODULE references) of the tile files "
           "<pattern>-XXX-YYY.fits, e.g. last:get_images_runner_run_1, last:uncompress_fits_runner, "
           "last:mask_runner_run_1."),
    Option("BANDS", "list", ["r"], "Band names, one per TILE_IMAGE_PATTERN."),
    Option("TILE_IMAGE_PATTERN", "name_list", ["CFIS_image"], "Tile image pattern, one per band."),
    Option("TILE_WEIGHT_PATTERN", "name_list", ["CFIS_weight"], "Tile weight pattern, one for all bands or one per "
           "band; none: no weight file (weight 1 on the image)."),
    Option("TILE_FLAG_PATTERN", "name_list", ["pipeline_flag"], "Tile flag pattern, one for all bands or one per band; "
           "none: no flag file."),
    Option("EXPOSURE_STAMPS", "bool", True, "Also cut every exposure CCD that saw each target (the exposures "
           "named by the tile's HISTORY and found in HEADER_STORE), with its PSF model."),
    Option("EXP_DIR", "dir_list", [], "Folders (or references) of the exposure CCD files "
           "<pattern>-<exposure>-<ccd>.fits, e.g. last:split_exp_runner, last:mask_runner_run_2."),
    Option("EXP_IMAGE_PATTERN", "name", "image", "Exposure CCD image pattern."),
    Option("EXP_WEIGHT_PATTERN", "name", "weight", "Exposure CCD weight pattern (none: no weight file)."),
    Option("EXP_FLAG_PATTERN", "name", "pipeline_flag", "Exposure CCD flag pattern (none: no flag file)."),
    Option("PSF_DIR", "dir_list", [], "Folders (or references) of the PSF models "
           "<PSF_PATTERN>-<exposure>-<ccd>.psf, e.g. last:psfex_runner."),
    Option("PSF_PATTERN", "name", "star_split_ratio_80", "PSF model pattern (none: no PSF stamps)."),
    Option("HEADER_STORE", "store", "", "Header store of the exposures (log_exp_headers.sqlite), or a folder or "
           "reference holding it (last:merge_headers_runner).", file_name="log_exp_headers.sqlite"),
    Option("STAMP_SIZE", "int", 51, "Stamp side in pixels (odd)."),
    Option("PSF_SIZE", "int", 51, "PSF stamp side in pixels (odd)."),
    Option("BATCH_SIZE", "int", 10, "Tiles per HDF5 batch file."),
    Option("N_WORKERS", "int", 1, "Batches cut in parallel (processes)."),
    Option("COMPRESSION", "choice", "gzip", "HDF5 compression of the stamps (with byte shuffling).",
           choices=("gzip", "lzf", "none")),
    Option("COMPRESSION_LEVEL", "int", 1, "gzip level (1-9)."),
    Option("RETRY_FAILED", "bool", False, "Cut again the targets that failed in an earlier run of the archive."),
    Option("ARCHIVE_DIR", "str", "", "Archive folder kept across runs (resumable); empty: the job's output "
           "folder (stamps/)."),
    Option("QUICKLOOK", "int", 36, "Stamps in the quick-look figure quicklook.png (0: none)."),
)


def settings_from_options(options):
    """:class:`.extract.Settings` of the options."""
    from .extract import Settings

    return Settings(stamp_size=int(options["STAMP_SIZE"]), psf_size=int(options["PSF_SIZE"]),
                    compression=options["COMPRESSION"], compression_level=int(options["COMPRESSION_LEVEL"]))


def make_archive(targets, archive_dir, options, logger=None, progress=None) -> dict:
    """Prepare (first time), extract and draw the quick look; the summary of :func:`.pipeline.extract`."""
    from .export import quicklook
    from .layout import layout_from_options
    from .pipeline import extract, prepare

    layout = layout_from_options(options)
    settings = settings_from_options(options)
    prepare(targets, archive_dir, layout, settings,
            columns=(options["ID_COLUMN"], options["RA_COLUMN"], options["DEC_COLUMN"]),
            rule=options["TILE_RULE"], batch_size=options["BATCH_SIZE"], logger=logger)
    summary = extract(archive_dir, layout, settings, workers=options["N_WORKERS"],
                      retry_failed=options["RETRY_FAILED"], logger=logger, progress=progress)
    if options["QUICKLOOK"] > 0 and summary["done"]:
        quicklook(archive_dir, Path(archive_dir) / "quicklook.png", count=options["QUICKLOOK"])
    return summary


@module(
    name="stamps",
    version="1.0",
    description="Postage-stamp archive (HDF5, resumable, parallel) of a target list: tile and exposure "
                "stamps, weights, flags, PSFs, WCS.",
    aliases=("stamps_runner",),
    file_pattern=("targets",),
    file_ext=(".csv",),
    numbering_scheme="",
    run_method="serial",
    depends=("numpy", "astropy", "h5py"),
    options=OPTIONS,
)
def stamps(job):
    """Make (or resume) the archive of the job's target table."""
    from .archive import ArchiveError
    from .extract import ExtractionError
    from .layout import LayoutError
    from .pipeline import ArchiveBusy
    from .targets import TargetTableError

    if len(job.inputs) != 1:
        raise JobError(f"stamps: one target table per run, got {len(job.inputs)}: "
                       f"{', '.join(str(p) for p in job.inputs)}")
    archive_dir = Path(job.options["ARCHIVE_DIR"]) if job.options["ARCHIVE_DIR"] else job.output_dir / "stamps"
    try:
        summary = make_archive(job.inputs[0], archive_dir, job.options, logger=job.logger)
    except (TargetTableError, LayoutError, ArchiveError, ArchiveBusy, ExtractionError, FileNotFoundError,
            ValueError) as error:
        raise JobError(str(error)) from error
    return {key: summary[key] for key in ("targets", "done", "failed", "new", "batches", "stamps", "bytes")}
