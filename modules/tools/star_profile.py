"""``shapepipe_star_profile``: measure the bright-star profile for the mask module.

Stacks the bright stars of a set of exposure CCDs (the mask module's
inputs: ``image-<number>.fits`` and ``weight-<number>.fits`` as split_exp
writes them), each normalised by its catalogue flux, and fits the halo and
the diffraction spikes (:mod:`shapepipe_modules.mask.measure_profile`). The
result is a JSON file whose ``options`` hold the ``STAR_PROFILE_*`` values;
the mask module's ``STAR_PROFILE_FILE`` option reads it.

Example::

    shapepipe_star_profile output/run_sp_exp_SpMh/split_exp_runner/output \\
        --star-cat data/catalogues/bright_stars.fits -o star_profile.json
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from shapepipe.arguments import ArgumentParser

from ._common import ToolError, run

PROGRAM = "shapepipe_star_profile"


def find_pairs(input_dirs, image_prefix="image", weight_prefix="weight", ext=".fits"):
    """Image and weight files ``<prefix>-<number><ext>`` of the input folders, matched by number.

    Raises
    ------
    ToolError
        If a folder is missing or an image has no weight.
    """
    pattern = re.compile(rf"^{re.escape(image_prefix)}(-[0-9][0-9-]*){re.escape(ext)}$")
    pairs = []
    for folder in input_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise ToolError(f"{folder} is not a folder")
        for image in sorted(folder.iterdir()):
            found = pattern.match(image.name)
            if found is None:
                continue
            weight = folder / f"{weight_prefix}{found.group(1)}{ext}"
            if not weight.is_file():
                raise ToolError(f"{image}: no weight {weight.name} beside it")
            pairs.append((image, weight))
    return pairs


def build_parser():
    parser = ArgumentParser(
        prog=PROGRAM,
        description="Measure the bright-star profile (PSF core, halo, diffraction spikes) from exposure CCDs "
        "and a bright-star catalogue; write the mask module's STAR_PROFILE_FILE (JSON).",
    )
    parser.add_argument("input_dirs", nargs="+", help="folders of image-<number>.fits and weight-<number>.fits")
    parser.add_argument("--star-cat", required=True,
                        help="bright-star catalogue (FITS or CSV: ra, dec, mag), as the mask module's STAR_CAT_PATH")
    parser.add_argument("-o", "--output", required=True, help="output JSON file")
    parser.add_argument("--image-prefix", default="image")
    parser.add_argument("--weight-prefix", default="weight")
    parser.add_argument("--ext", default=".fits", help="file extension (default .fits)")
    parser.add_argument("--hdu", type=int, default=0, help="HDU of the images (default 0)")
    parser.add_argument("--zero-point-key", default="PHOTZP", help="header keyword of the zero point")
    parser.add_argument("--saturate-key", default="SATURATE", help="header keyword of the saturation level")
    parser.add_argument("--max-mag", type=float, default=17.0,
                        help="stack stars brighter than this (default 17, the .mask file's HALO_MAG_LIM)")
    parser.add_argument("--min-mag", type=float, default=-np.inf, help="and fainter than this (default none)")
    parser.add_argument("--psf-beta", type=float, default=3.5, help="Moffat index of the core (not fitted)")
    parser.add_argument("--saturation-fraction", type=float, default=0.8,
                        help="pixels above this fraction of the saturation level are the unusable core")
    parser.add_argument("--strip-half-width", type=float, default=1.0,
                        help="half width (arcsec) of the strips along the pixel axes holding the spikes")
    parser.add_argument("--max-radius", type=float, default=30.0, help="outer radius (arcsec) of the profile")
    parser.add_argument("--annuli", type=int, default=20, help="log-spaced annuli from 0.4 arcsec (default 20)")
    parser.add_argument("--sky-radii", type=float, nargs=2, default=(40.0, 60.0),
                        help="inner and outer radius (arcsec) of the local sky annulus")
    return parser


def _main(args) -> int:
    from shapepipe_modules.mask.catalogues import read_star_catalogue
    from shapepipe_modules.mask.measure_profile import MeasureSettings, measure_files, write_profile_file
    from shapepipe_modules.mask.profile import StarProfile

    if not args.max_radius < args.sky_radii[0] < args.sky_radii[1]:
        raise ToolError(f"--max-radius {args.max_radius} and --sky-radii {args.sky_radii[0]} {args.sky_radii[1]} "
                        "must increase")
    if args.annuli < 6:
        raise ToolError(f"--annuli {args.annuli}: at least 6 are needed to fit the halo")
    pairs = find_pairs(args.input_dirs, args.image_prefix, args.weight_prefix, args.ext)
    if not pairs:
        raise ToolError(f"no {args.image_prefix}-<number>{args.ext} in {', '.join(map(str, args.input_dirs))}")
    try:
        stars = read_star_catalogue(args.star_cat)
        settings = MeasureSettings(edges=np.geomspace(0.4, args.max_radius, args.annuli + 1),
                                   sky_radii=tuple(args.sky_radii), strip_half_width=args.strip_half_width,
                                   saturation_fraction=args.saturation_fraction, psf_beta=args.psf_beta,
                                   prior=StarProfile(psf_beta=args.psf_beta))
        measured = measure_files(pairs, stars, settings, args.max_mag, args.min_mag, args.zero_point_key,
                                 args.saturate_key, args.hdu)
    except ValueError as error:
        raise ToolError(str(error)) from None
    write_profile_file(args.output, measured, sources=[p[0] for p in pairs])
    print(f"{PROGRAM}: {measured.n_stars} stars on {measured.n_images} images -> {args.output}", file=sys.stderr)
    for key, value in measured.options().items():
        error = measured.errors.get(key.replace("STAR_PROFILE_", "").lower(), float("nan"))
        print(f"{key} = {value:.5g} +- {error:.2g}")
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    return run(PROGRAM, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
