"""Export of chosen targets to FITS files, and the quick-look figure.

Export: one file per target and slot, ``<id>.<slot>.fits`` (``1234.tile-r.fits``,
``1234.2100001-3-r.fits``: exposure and CCD), with the stamp in the
primary HDU under its WCS, and ``WEIGHT``, ``FLAG`` and ``PSF`` image
HDUs. Header cards ``TARGET``, ``TILE``, ``SLOT``, ``CCD``, ``XSOURCE``,
``YSOURCE`` (position in the source image) and ``NMASKED`` say where the
stamp comes from. Files are written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shapepipe.atomic import atomic_path

from .archive import Archive, ArchiveError
from .extract import PADDED_FLAG

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def slot_label(name: str, ccd: int) -> str:
    """File label of a slot: ``tile r`` -> ``tile-r``; ``exposure 2100001 r`` on CCD 3 -> ``2100001-3-r``."""
    words = name.split()
    if words[0] == "exposure":
        return f"{words[1]}-{int(ccd)}-{words[2]}"
    return "-".join(words)


def safe_name(text: str) -> str:
    """An id usable in a file name (other characters become ``_``)."""
    return _UNSAFE.sub("_", text) or "_"


def read_id_list(items) -> list[str]:
    """Ids from the command line: the items themselves, or the lines (first CSV field) of one file."""
    items = list(items or [])
    if len(items) == 1 and Path(items[0]).is_file():
        ids = []
        for line in Path(items[0]).read_text(encoding="utf-8").splitlines():
            field = line.split(",")[0].strip()
            if field and not field.startswith("#"):
                ids.append(field)
        if ids and ids[0].lower() == "id":
            ids = ids[1:]
        return ids
    return [str(item) for item in items]


def export_fits(source, output_dir, ids=None) -> list[Path]:
    """Write the FITS files of targets ``ids`` (all targets when None).

    Raises
    ------
    ArchiveError
        If an id is not in the archive (naming it; nothing is written).
    """
    from astropy.io import fits

    output_dir = Path(output_dir)
    written = []
    with Archive(source) as archive:
        wanted = archive.order if ids is None else [str(i) for i in ids]
        unknown = [target for target in wanted if target not in archive]
        if unknown:
            raise ArchiveError(f"{source}: no stamps for id(s) {', '.join(unknown[:10])}"
                               f"{' ...' if len(unknown) > 10 else ''}")
        output_dir.mkdir(parents=True, exist_ok=True)
        for target in wanted:
            record = archive.target(target)
            for slot, name in enumerate(record["images"]):
                if not record["present"][slot]:
                    continue
                header = fits.Header.fromstring(record["headers"][slot])
                header["TARGET"] = (target, "target id")
                header["TILE"] = (record["tile"], "tile of the target")
                header["SLOT"] = (name, "image the stamp comes from")
                header["CCD"] = (int(record["ccd"][slot]), "CCD of the exposure (-1: tile)")
                header["XSOURCE"] = (float(record["x"][slot]), "target x in the source image (FITS)")
                header["YSOURCE"] = (float(record["y"][slot]), "target y in the source image (FITS)")
                header["NMASKED"] = (int(record["masked"][slot]), "pixels flagged, zero weight or padded")
                hdus = fits.HDUList([
                    fits.PrimaryHDU(record["data"][slot], header=header),
                    fits.ImageHDU(record["weight"][slot], name="WEIGHT"),
                    fits.ImageHDU(record["flag"][slot], name="FLAG"),
                    fits.ImageHDU(record["psf"][slot] if record["psf_present"][slot] else None, name="PSF"),
                ])
                path = output_dir / f"{safe_name(target)}.{slot_label(name, record['ccd'][slot])}.fits"
                with atomic_path(path) as temporary:
                    hdus.writeto(temporary)
                written.append(path)
    return written


def quicklook(source, output, count: int = 36, slot: int = 0, columns: int | None = None) -> Path:
    """A grid of the first ``count`` stamps of one slot (0: the tile of the first band), titled with ids.

    Each stamp is scaled from its 1st to 99.5th percentile (asinh), so faint
    and bright targets are both visible; padded pixels are grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Archive(source) as archive:
        targets = archive.order[:count]
        if not targets:
            raise ArchiveError(f"{source}: no stamps")
        records = [archive.target(t) for t in targets]
    columns = columns or int(np.ceil(np.sqrt(len(records))))
    rows = int(np.ceil(len(records) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.7 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, record in zip(axes.ravel(), records):
        image = np.asarray(record["data"][slot], dtype=float)
        padded = (record["flag"][slot] & PADDED_FLAG) != 0
        valid = image[~padded]
        low, high = (np.percentile(valid, [1.0, 99.5]) if valid.size else (0.0, 1.0))
        scaled = np.arcsinh(np.clip((image - low) / max(high - low, 1e-30), 0, 1) * 10) / np.arcsinh(10)
        shown = np.ma.masked_array(scaled, padded)
        axis.imshow(shown, origin="lower", cmap=plt.get_cmap("gray_r").with_extremes(bad="0.6"),
                    interpolation="nearest")
        axis.set_title(record["id"], fontsize=7)
    figure.suptitle(f"{Path(source).name}: first {len(records)} stamps, {records[0]['images'][slot]}",
                    fontsize=9)
    figure.tight_layout()
    output = Path(output)
    with atomic_path(output) as temporary:
        figure.savefig(temporary, dpi=100, format=output.suffix.lstrip(".") or "png")
    plt.close(figure)
    return output
