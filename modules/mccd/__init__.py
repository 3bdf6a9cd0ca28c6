"""ShapePipe's MCCD module names (focal-plane PSF model): declared so that MCCD configurations validate."""
