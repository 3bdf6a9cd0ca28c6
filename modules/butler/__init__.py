"""An LSST data butler (``lsst-daf-butler``) as a back end of the pipeline's products.

``shapepipe_butler ingest OUTPUT_DIR REPO`` registers every product of the
runs under ``OUTPUT_DIR`` in place (see :mod:`.ingest` and ``docs/butler.md``).
Needs the optional extra: ``pip install ".[butler]"``.
"""
