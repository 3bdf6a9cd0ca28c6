"""``psf_validation``: focal-plane maps, rho statistics, residual histograms and a stats file."""
