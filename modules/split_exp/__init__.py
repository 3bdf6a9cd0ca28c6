"""``split_exp``: exposure mosaics to one image, weight and flag file per CCD."""
