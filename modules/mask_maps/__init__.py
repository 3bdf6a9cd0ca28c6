"""HEALPix maps of a flag image and of the exposure coverage of a tile (``mask_maps``)."""
