"""Random points in the unmasked footprint of a tile (ShapePipe's ``random_cat_runner``)."""
