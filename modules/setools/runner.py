"""Module ``setools``: star selection, random splits, plots and statistics.

Outputs, in ``job.output_dir`` (ShapePipe's names):

- ``mask/<mask><number>.fits``: FITS-LDAC catalogue of each saved MASK;
- ``rand_split/<name>_ratio_<p><number>.fits`` for both sub-samples of each
  RAND_SPLIT (e.g. ``star_split_ratio_80`` for PSFEx and
  ``star_split_ratio_20`` for validation);
- ``plot/<name><number>.<format>``; ``stat/<name><number>.txt``;
- ``new_cat/<name><number>.fits`` or ``.txt``.

FITS-LDAC outputs keep every input column (``VIGNET`` included) and the
``LDAC_IMHEAD`` image header, so PSFEx reads them directly. An input that
stores ``VIGNET`` for some rows only (sextractor ``VIGNET_ROWS``) gives the
same outputs as long as every written row has its stamp; a job that would
write one without it fails and names the option.
"""

from __future__ import annotations

from pathlib import Path

from shapepipe.datasets import Product
from shapepipe.module import module
from shapepipe.options import Option

DEFAULT_SELECTION = str(Path(__file__).resolve().parent / "data" / "star_selection.setools")


def _star_masks(selection, star_mask: str) -> list[tuple[str, list[str]]]:
    """Samples whose size MIN_N_STARS checks: (description, mask names)."""
    if star_mask:
        return [(f"mask {star_mask!r}", [star_mask])]
    return [
        (f"[RAND_SPLIT:{name}] (mask {' & '.join(section.masks)})", section.masks)
        for name, section in selection.rand_splits.items()
    ]


def validate_options(options) -> list[str]:
    """Parse the ``.setools`` file before any job starts; one string per problem."""
    from .config import load_setools

    path = options.get("SETOOLS_CONFIG_PATH")
    if not path or not Path(path).is_file():
        return []  # the missing file is already reported by the option check
    selection, problems = load_setools(path)
    messages = [f"SETOOLS_CONFIG_PATH: {problem}" for problem in problems]
    star_mask = options.get("STAR_MASK") or ""
    if star_mask and star_mask not in selection.masks:
        messages.append(f"STAR_MASK: {star_mask!r} is not a mask of {path} (masks: {', '.join(selection.masks)})")
    if (options.get("MIN_N_STARS") or 0) < 0:
        messages.append("MIN_N_STARS must be 0 or more")
    return messages


PRODUCTS = (
    Product("star_selection", "mask/star_selection{number}.fits", "ldac", ids=("exposure_ccd", "tile"),
            description="selected stars (FITS-LDAC)"),
    Product("star_split_ratio_80", "rand_split/star_split_ratio_80{number}.fits", "ldac",
            ids=("exposure_ccd", "tile"), description="stars for the PSF fit (80% random split)"),
    Product("star_split_ratio_20", "rand_split/star_split_ratio_20{number}.fits", "ldac",
            ids=("exposure_ccd", "tile"), description="reserved stars for validation (20% random split)"),
    Product("star_stat", "stat/star_stat{number}.txt", "text", ids=("exposure_ccd", "tile"),
            description="statistics of the star selection"),
    Product("setools_mask", "mask/{selection}{number}.fits", "ldac", ids=("exposure_ccd", "tile"),
            description="any other selection of a setools configuration (key: its name)"),
    Product("setools_split", "rand_split/{split}{number}.fits", "ldac", ids=("exposure_ccd", "tile"),
            description="any other random split (key: its name)"),
    Product("setools_stat", "stat/{stat}{number}.txt", "text", ids=("exposure_ccd", "tile"),
            description="any other statistics file (key: its name)"),
    Product("setools_plot", "plot/{plot}{number}.png", "png", ids=("exposure_ccd", "tile"),
            description="setools plots (key: the plot name)"),
)


@module(
    name="setools",
    products=PRODUCTS,
    version="2.0",
    description="Select samples (stars) from SExtractor catalogues with the SETools language.",
    aliases=("setools_runner",),
    input_module="sextractor",
    file_pattern="sexcat",
    file_ext=".fits",
    numbering_scheme="-0000000-0",
    depends=("numpy", "astropy", "matplotlib"),
    preload=(
             "astropy.io.fits",
             "shapepipe_modules.io.warmup:matplotlib_agg",
             "shapepipe_modules.setools.actions",
             "shapepipe_modules.setools.plots",
             "shapepipe_modules.io.ldac",
    ),
    options=(
        Option(
            "SETOOLS_CONFIG_PATH",
            "file",
            DEFAULT_SELECTION,
            "SETools selection file ([MASK:...], [RAND_SPLIT:...], [PLOT:...], [STAT:...], "
            "[NEW_CAT:...] sections); the default selects stars on the FWHM-magnitude locus.",
        ),
        Option(
            "MIN_N_STARS",
            "int",
            10,
            "A job ends 'unprocessable' (its CCD is dropped downstream, the run goes on) when the star sample has fewer objects than this: "
            "the STAR_MASK mask, or else the sample of every RAND_SPLIT section. 0 disables the check.",
        ),
        Option(
            "STAR_MASK",
            "str",
            "",
            "Mask whose size MIN_N_STARS checks; empty: the samples of the RAND_SPLIT sections.",
        ),
    ),
    validate=validate_options,
)
def setools(job):
    """Apply a SETools file to one SExtractor catalogue."""
    import numpy as np

    from shapepipe.atomic import write_text_atomic
    from shapepipe.errors import JobError, JobUnprocessable
    from shapepipe_modules.io.ldac import LDACError, missing_vignets, read_ldac, write_ldac

    from .actions import build_new_cat, combined_mask, compute_masks, compute_stats, random_split, stat_text
    from .config import read_setools
    from .language import SetoolsError
    from .plots import make_plot

    catalogue_path = Path(job.inputs[0])
    number = job.number
    options = job.options
    try:
        selection = read_setools(options["SETOOLS_CONFIG_PATH"])
    except SetoolsError as error:
        raise JobError(str(error)) from None
    try:
        table, image_header = read_ldac(catalogue_path)
    except LDACError as error:
        raise JobError(str(error)) from None
    n_rows = len(table)
    columns = {name: np.asarray(table[name]) for name in table.colnames}

    def fail(error: Exception):
        return JobError(f"{catalogue_path}: {error}")

    try:
        masks = compute_masks(selection, columns, n_rows)
    except SetoolsError as error:
        raise fail(error) from None

    minimum = options["MIN_N_STARS"]
    for description, names in _star_masks(selection, options["STAR_MASK"]):
        n_stars = int(combined_mask(names, masks, n_rows).sum())
        if n_stars < minimum:
            raise JobUnprocessable(
                f"{catalogue_path}: only {n_stars} of {n_rows} objects in {description}, fewer than "
                f"MIN_N_STARS = {minimum}; too few stars on this CCD to model the PSF"
            )

    def check_vignets(selected, what):
        # A catalogue that stores VIGNET for some rows only (sextractor VIGNET_ROWS):
        # a written sample must not hold a row whose stamp was not stored.
        missing, stored = missing_vignets(table, selected)
        if missing:
            raise JobError(f"{catalogue_path}: {missing} objects of {what} have no stored VIGNET (the catalogue "
                           f"keeps it only for {stored!r}: widen [SEXTRACTOR_RUNNER] VIGNET_ROWS)")

    summary = {"n_objects": n_rows}
    for name, section in selection.masks.items():
        if not section.save:
            continue
        check_vignets(masks[name], f"[MASK:{name}]")
        write_ldac(job.output_path(f"mask/{name}{number}.fits"), table[masks[name]], image_header)
        summary[f"n_{name}"] = int(masks[name].sum())

    try:
        for name, section in selection.plots.items():
            make_plot(section, columns, masks, job.output_path(f"plot/{name}{number}"), selection.path)
        for name, section in selection.new_cats.items():
            values = build_new_cat(section, columns, masks, selection.path)
            base = job.output_path(f"new_cat/{name}{number}")
            _write_new_cat(section.output_format, values, base, image_header)
        stats = {name: compute_stats(section, columns, masks, selection.path)
                 for name, section in selection.stats.items()}
    except SetoolsError as error:
        raise fail(error) from None

    for name, section in selection.rand_splits.items():
        sample = combined_mask(section.masks, masks, n_rows)
        if section.seed is None:
            rng = job.rng("RAND_SPLIT", name)
        else:
            rng = np.random.default_rng([section.seed, *_number_key(number, name)])
        parts = random_split(sample, section, rng)
        if not all(part.any() for part in parts):
            job.logger.warning(
                "%s: [RAND_SPLIT:%s] leaves an empty sub-sample (%d objects in the sample); "
                "no random-split catalogue written", catalogue_path, name, int(sample.sum()))
            continue
        for base, part in zip(section.output_names(), parts):
            check_vignets(part, f"[RAND_SPLIT:{name}]")
            write_ldac(job.output_path(f"rand_split/{base}{number}.fits"), table[part], image_header)
            summary[f"n_{base}"] = int(part.sum())

    for name, results in stats.items():
        write_text_atomic(job.output_path(f"stat/{name}{number}.txt"), stat_text(results))
    return summary


def _number_key(number: str, name: str) -> list[int]:
    """Stable integers from the file number and section name (for a user SEED)."""
    import hashlib

    digest = hashlib.sha256(f"{number}\x1f{name}".encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def _write_new_cat(output_format: str, values: dict, base: Path, image_header) -> None:
    """Write a NEW_CAT as FITS-LDAC (``SEx_cat``), a plain FITS table or text."""
    from astropy.io import fits
    from astropy.table import Table

    from shapepipe.atomic import atomic_path, write_text_atomic
    from shapepipe_modules.io.ldac import write_ldac

    from .actions import new_cat_text

    if output_format == "txt":
        write_text_atomic(f"{base}.txt", new_cat_text(values))
        return
    table = Table(values)
    if output_format == "SEx_cat":
        write_ldac(f"{base}.fits", table, image_header)
        return
    hdu = fits.table_to_hdu(table)
    hdu.header["EXTNAME"] = "LDAC_OBJECTS"
    with atomic_path(f"{base}.fits") as temporary:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(temporary)
