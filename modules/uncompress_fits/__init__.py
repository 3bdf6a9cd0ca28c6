"""``uncompress_fits``: tile-compressed ``.fits.fz`` images to plain single-HDU FITS."""
