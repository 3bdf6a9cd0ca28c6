"""``psfinterp``: PSF stamps and shapes from PSFEx models (CLASSIC, VALIDATION, MULTI-EPOCH)."""
