"""The flag image of one CCD or tile: :func:`build_mask`.

Every mask is OR-ed into its own bit plane, and the input flag image is
OR-ed in last, so no bit of any source is ever lost or carried into another
bit (ShapePipe summed the masks, so overlapping masks changed bits).

Output type: ``int16`` (what SExtractor's FLAG_IMAGE and ShapePipe use)
while every bit in use is below ``2**15``; ``int32`` otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .catalogues import DeepSkyCatalogue, StarCatalogue
from .config import MaskParameters, StarMaskParams
from .geometry import (
    ImageFootprint,
    angular_separation_deg,
    discs_touching_rectangle,
    fill_border,
    fill_disc,
    fill_polygon,
    image_footprint,
    magnitude_scale,
    read_template,
    sky_to_pixel,
)
from .planes import overlapping_planes
from .profile import StarProfile, noise_sigma
from .saturation import saturated_patches

_LOG = logging.getLogger(__name__)


class MaskInputError(ValueError):
    """The image data cannot be masked (no valid weight, too much missing data)."""


@dataclass(frozen=True)
class MaskShape:
    """One applied shape, for region files: 0-based pixel coordinates.

    ``kind`` is ``polygon`` (values: x1, y1, x2, y2, ...), ``circle``
    (x, y, radius) or ``box`` (x0, y0, x1, y1, inclusive pixel indices).
    """

    plane: str
    kind: str
    values: tuple
    label: str = ""


@dataclass
class MaskResult:
    """Output of :func:`build_mask`.

    Attributes
    ----------
    flag : ndarray
        The flag image (int16 or int32).
    planes : dict
        Plane name -> bits, including ``MP_EXTERNAL`` when an input flag
        was given (the union of its bits, possibly 0).
    shapes : list of MaskShape
        The shapes applied, for ds9 region output.
    stats : dict
        Counts for the job table and logs.
    header_cards : list
        Extra ``(keyword, value, comment)`` cards (missing-data ratio).
    """

    flag: np.ndarray
    planes: dict
    shapes: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    header_cards: list = field(default_factory=list)


def _star_shapes(plane, params: StarMaskParams, stars: StarCatalogue, wcs, footprint: ImageFootprint, flag, shapes):
    """Rasterise the scaled template of every catalogue star that can reach the image."""
    template = read_template(params.template_path)
    polygons = template.in_pixels(footprint.pixel_scale_arcsec)
    extent_px = max(np.hypot(p[:, 0], p[:, 1]).max() for p in polygons)
    bright = stars.mag < params.mag_lim
    scale = magnitude_scale(stars.mag, params.mag_pivot, params.scale_factor, params.min_scale)
    # Cheap cone cut before projecting: nothing beyond the largest template reach.
    reach_deg = extent_px * np.where(bright, scale, 0.0) * footprint.pixel_scale_arcsec / 3600.0
    separation = angular_separation_deg(footprint.centre_ra, footprint.centre_dec, stars.ra, stars.dec)
    near = np.flatnonzero(bright & (separation < footprint.radius_deg + reach_deg))
    x, y = sky_to_pixel(wcs, stars.ra[near], stars.dec[near])
    reach_px = extent_px * scale[near]
    ny, nx = footprint.shape
    touching = (
        np.isfinite(x)
        & np.isfinite(y)
        & (x + reach_px >= -0.5)
        & (x - reach_px <= nx - 0.5)
        & (y + reach_px >= -0.5)
        & (y - reach_px <= ny - 0.5)
    )
    count = 0
    for xs, ys, s, mag in zip(x[touching], y[touching], scale[near][touching], stars.mag[near][touching]):
        for polygon in polygons:
            vertices = polygon * s + (xs, ys)
            fill_polygon(flag, vertices, params.bit)
            shapes.append(MaskShape(plane, "polygon", tuple(vertices.ravel()), f"mag={mag:.2f}"))
        count += 1
    return count


def _profile_star_shapes(params, profile: StarProfile, zero_point, sigma, stars: StarCatalogue, wcs,
                         footprint: ImageFootprint, flag, shapes):
    """Halo discs and spike bars sized by each star's flux and ``profile`` (:mod:`.profile`).

    Returns the numbers of halos and of spike pairs drawn on the image.
    """
    scale = footprint.pixel_scale_arcsec
    counts = {"MP_HALO": 0, "MP_SPIKE": 0}
    mag_lim = max(p.mag_lim for p in (params.halo, params.spike) if p is not None)
    bright = np.flatnonzero(stars.mag < mag_lim)
    radius, length, half_width = profile.sizes(stars.mag[bright], zero_point, sigma, scale)
    reach_px = np.maximum(radius, length)
    separation = angular_separation_deg(footprint.centre_ra, footprint.centre_dec, stars.ra[bright],
                                        stars.dec[bright])
    near = separation < footprint.radius_deg + reach_px * scale / 3600.0
    bright, radius, length, half_width = bright[near], radius[near], length[near], half_width[near]
    x, y = sky_to_pixel(wcs, stars.ra[bright], stars.dec[bright])
    for k in range(bright.size):
        if not (np.isfinite(x[k]) and np.isfinite(y[k])):
            continue
        mag = stars.mag[bright[k]]
        label = f"mag={mag:.2f}"
        if params.halo is not None and mag < params.halo.mag_lim and radius[k] > 0:
            if discs_touching_rectangle(x[k:k + 1], y[k:k + 1], radius[k:k + 1], footprint.shape)[0]:
                fill_disc(flag, x[k], y[k], radius[k], params.halo.bit)
                shapes.append(MaskShape("MP_HALO", "circle", (x[k], y[k], radius[k]), label))
                counts["MP_HALO"] += 1
        if params.spike is not None and mag < params.spike.mag_lim and length[k] > 0:
            drawn = 0
            hw = max(half_width[k], 0.5)
            for dx, dy in ((length[k], hw), (hw, length[k])):
                vertices = np.array([[-dx, -dy], [dx, -dy], [dx, dy], [-dx, dy]]) + (x[k], y[k])
                drawn += fill_polygon(flag, vertices, params.spike.bit)
                shapes.append(MaskShape("MP_SPIKE", "polygon", tuple(vertices.ravel()), label))
            counts["MP_SPIKE"] += int(drawn > 0)
    return counts


def _deep_sky_shapes(plane, size_plus, bit, catalogue: DeepSkyCatalogue, wcs, footprint, flag, shapes):
    """Rasterise the disc of every deep-sky object overlapping the image."""
    radius_deg = catalogue.radius * (1.0 + size_plus)
    separation = angular_separation_deg(footprint.centre_ra, footprint.centre_dec, catalogue.ra, catalogue.dec)
    near = np.flatnonzero(separation < footprint.radius_deg + radius_deg)
    x, y = sky_to_pixel(wcs, catalogue.ra[near], catalogue.dec[near])
    radius_px = radius_deg[near] * 3600.0 / footprint.pixel_scale_arcsec
    overlap = np.isfinite(x) & np.isfinite(y) & discs_touching_rectangle(x, y, radius_px, footprint.shape)
    for index in np.flatnonzero(overlap):
        fill_disc(flag, x[index], y[index], radius_px[index], bit)
        shapes.append(
            MaskShape(plane, "circle", (x[index], y[index], radius_px[index]), str(catalogue.names[near[index]]))
        )
    return int(overlap.sum())


def _output_dtype(bits: int):
    return np.int16 if bits < 2**15 else np.int32


def build_mask(
    image: np.ndarray,
    weight: np.ndarray | None,
    wcs,
    header,
    star_cat: StarCatalogue | None,
    deep_sky_cat: DeepSkyCatalogue | None,
    params: MaskParameters,
    *,
    ngc_cat: DeepSkyCatalogue | None = None,
    external_flag: np.ndarray | None = None,
    logger: logging.Logger | None = None,
    star_profile: StarProfile | None = None,
    zero_point: float | None = None,
) -> MaskResult:
    """Build the flag image of one CCD or tile.

    Parameters
    ----------
    image : 2-d ndarray
        Pixel values (for saturation and missing data).
    weight : 2-d ndarray or None
        Weight map; an all-zero weight is refused.
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    header : mapping
        Image header (``SATURATE`` or the configured keyword).
    star_cat : StarCatalogue or None
        Bright stars, needed when halos or spikes are made.
    deep_sky_cat : DeepSkyCatalogue or None
        Objects for the ``MP_MESSIER`` plane.
    params : MaskParameters
        From :func:`shapepipe_modules.mask.config.read_mask_config`.
    ngc_cat : DeepSkyCatalogue, optional
        Objects for the ``MP_NGC`` plane.
    external_flag : 2-d integer ndarray, optional
        Input flag image, OR-ed into the result.
    logger : logging.Logger, optional
    star_profile : StarProfile, optional
        Size halos and spikes by each star's flux and this profile
        (:mod:`.profile`) instead of scaling the ``.mask`` templates;
        the pixel noise comes from ``weight``.
    zero_point : float, optional
        Magnitude zero point of the image (needed with ``star_profile``).

    Returns
    -------
    MaskResult

    Raises
    ------
    MaskInputError
        If the weight is zero everywhere, the shapes differ, a needed
        catalogue or saturation level is missing, or missing data exceed
        ``MD_THRESH_REMOVE`` with ``MD_REMOVE``.
    """
    log = logger or _LOG
    image = np.asarray(image)
    if image.ndim != 2:
        raise MaskInputError(f"the image has {image.ndim} dimensions, expected 2")
    shape = image.shape
    for name, array in (("weight", weight), ("input flag", external_flag)):
        if array is not None and np.shape(array) != shape:
            raise MaskInputError(f"the {name} has shape {np.shape(array)}, the image {shape}")
    if weight is not None and not np.any(np.asarray(weight) > 0):
        raise MaskInputError("the weight is zero everywhere: nothing to mask")

    stats = {}
    cards = []
    if params.missing_data is not None:
        ratio = float(np.count_nonzero(image == 0)) / image.size
        flagged = ratio >= params.missing_data.thresh_flag
        cards.append(("MRATIO", ratio, "ratio missing_pixels/all_pixels"))
        cards.append(("MFLAG", bool(flagged), f"threshold value {params.missing_data.thresh_flag:.3}"))
        stats["missing_ratio"] = ratio
        if params.missing_data.remove and ratio >= params.missing_data.thresh_remove:
            raise MaskInputError(
                f"{ratio:.1%} of the pixels are zero (MD_THRESH_REMOVE = {params.missing_data.thresh_remove}):"
                " image removed"
            )

    planes = params.plane_bits()
    all_bits = 0
    for bits in planes.values():
        all_bits |= bits
    external_bits = 0
    if external_flag is not None:
        external = np.asarray(external_flag)
        if not np.issubdtype(external.dtype, np.integer):
            if not np.all(np.mod(external, 1) == 0):
                raise MaskInputError("the input flag image holds non-integer values")
            external = external.astype(np.int64)
        elif np.issubdtype(external.dtype, np.signedinteger) and external.min(initial=0) < 0:
            # A set top bit reads as negative in a signed type: take the bits as they are.
            external = external.view(external.dtype.str.replace("i", "u"))
        external_bits = int(np.bitwise_or.reduce(external, axis=None)) if external.size else 0
        planes["MP_EXTERNAL"] = external_bits
    flag = np.zeros(shape, dtype=_output_dtype(all_bits | external_bits))
    shapes: list[MaskShape] = []

    footprint = image_footprint(wcs, shape)

    if params.border is not None:
        fill_border(flag, params.border.width, params.border.bit)
        w = params.border.width
        ny, nx = shape
        if w > 0:
            strips = ((0, 0, nx - 1, w - 1), (0, ny - w, nx - 1, ny - 1), (0, 0, w - 1, ny - 1), (nx - w, 0, nx - 1, ny - 1))
            for box in strips:
                shapes.append(MaskShape("MP_BORDER", "box", box, "border"))

    if star_profile is not None and (params.halo is not None or params.spike is not None):
        if star_cat is None:
            raise MaskInputError("halo/spike masks are made but no bright-star catalogue was given")
        if zero_point is None:
            raise MaskInputError("masks sized by the star profile need the image zero point")
        if weight is None:
            raise MaskInputError("masks sized by the star profile need the weight (for the pixel noise)")
        sigma = noise_sigma(weight)
        stats["noise_sigma"] = sigma
        counts = _profile_star_shapes(params, star_profile, zero_point, sigma, star_cat, wcs, footprint, flag,
                                      shapes)
        for plane, star_params in (("MP_HALO", params.halo), ("MP_SPIKE", params.spike)):
            if star_params is not None:
                stats[f"n_{plane[3:].lower()}"] = counts[plane]
    else:
        for plane, star_params in (("MP_HALO", params.halo), ("MP_SPIKE", params.spike)):
            if star_params is None:
                continue
            if star_cat is None:
                raise MaskInputError(f"{plane} is made but no bright-star catalogue was given")
            stats[f"n_{plane[3:].lower()}"] = _star_shapes(plane, star_params, star_cat, wcs, footprint, flag,
                                                           shapes)

    for plane, dso_params, catalogue in (
        ("MP_MESSIER", params.messier, deep_sky_cat),
        ("MP_NGC", params.ngc, ngc_cat),
    ):
        if dso_params is None:
            continue
        if catalogue is None:
            raise MaskInputError(f"{plane} is made but no deep-sky catalogue was given")
        stats[f"n_{plane[3:].lower()}"] = _deep_sky_shapes(
            plane, dso_params.size_plus, dso_params.bit, catalogue, wcs, footprint, flag, shapes
        )

    if params.satur is not None:
        level = params.satur.level
        if level is None:
            if params.satur.key not in header:
                raise MaskInputError(
                    f"saturation masking needs the header keyword {params.satur.key} or [SATUR_PARAMETERS] SATUR_LEVEL"
                )
            level = float(header[params.satur.key])
        count = 0
        for patch in saturated_patches(image, level, params.satur.bleed_fraction, params.satur.grow):
            flag[patch.rows, patch.cols][patch.mask] |= params.satur.bit
            count += int(np.count_nonzero(patch.mask))
            shapes.extend(MaskShape("MP_SATUR", "box", box, "saturated") for box in patch.boxes)
        stats["n_satur_pixels"] = count

    if external_flag is not None:
        np.bitwise_or(flag, external.astype(flag.dtype, copy=False), out=flag)
        for first, second, shared in overlapping_planes(planes):
            log.warning("mask planes %s and %s share bits %d: these bits mean either", first, second, shared)

    stats["masked_fraction"] = float(np.count_nonzero(flag)) / flag.size
    return MaskResult(flag=flag, planes=planes, shapes=shapes, stats=stats, header_cards=cards)


def region_text(shapes: list[MaskShape]) -> str:
    """ds9 region file (image coordinates, 1-based) of the applied shapes."""
    colours = {
        "MP_BORDER": "yellow",
        "MP_HALO": "cyan",
        "MP_SPIKE": "magenta",
        "MP_MESSIER": "green",
        "MP_NGC": "green",
        "MP_SATUR": "red",
    }
    lines = ["# Region file format: DS9 version 4.1", "# mask planes applied by shapepipe mask", "image"]
    for shape in shapes:
        colour = colours.get(shape.plane, "white")
        tag = f"# color={colour} tag={{{shape.plane}}} text={{{shape.label}}}"
        if shape.kind == "polygon":
            coords = ",".join(f"{v + 1:.2f}" for v in shape.values)
            lines.append(f"polygon({coords}) {tag}")
        elif shape.kind == "circle":
            x, y, r = shape.values
            lines.append(f"circle({x + 1:.2f},{y + 1:.2f},{r:.2f}) {tag}")
        else:
            x0, y0, x1, y1 = shape.values
            width, height = x1 - x0 + 1, y1 - y0 + 1
            lines.append(f"box({(x0 + x1) / 2 + 1:.1f},{(y0 + y1) / 2 + 1:.1f},{width},{height},0) {tag}")
    return "\n".join(lines) + "\n"
