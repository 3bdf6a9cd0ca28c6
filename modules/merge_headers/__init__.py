"""``merge_headers``: every exposure's per-CCD headers in one header store."""
