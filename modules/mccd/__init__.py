"""ShapePipe's MCCD modules (mccd_preprocessing, mccd_fit, mccd_fit_val, mccd_val, mccd_interp) on this project's focal-plane PSF model."""
