"""Shared file formats of the pipeline (FITS-LDAC catalogues, ...)."""
