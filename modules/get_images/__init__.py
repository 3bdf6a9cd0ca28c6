"""``get_images``: bring input tiles and exposures into the run under pipeline names."""
