"""``find_exposures``: the single exposures that went into each tile, from its header."""
