"""Forced photometry of tile objects on the single exposures (``forced_phot``)."""
