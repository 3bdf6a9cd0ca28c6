"""PSF modelling per CCD: the built-in PSFEx-equivalent engine and the PSFEx binary."""
