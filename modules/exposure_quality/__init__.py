"""Per-exposure, per-CCD quality table with outlier rules (``exposure_quality``)."""
