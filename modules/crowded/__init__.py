"""Crowded fields (CluSex-style; docs/crowded.md): object masks, saturated-star regions, local sky, ds9 regions.

Plain functions used by the ``sextractor`` (OBJECT_MASK, SATURATION_REGIONS,
LOCAL_SKY, REGIONS) and ``vignetmaker`` (NEIGHBOUR_MASK) modules:
:mod:`.masks`, :mod:`.localsky`, :mod:`.regions`.
"""
