"""``merge_starcat``: every VALIDATION catalogue of psfinterp into one star catalogue."""
