"""Light curves of tile objects from the forced photometry, with variability statistics (``lightcurve``)."""
