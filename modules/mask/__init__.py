"""The ``mask`` module: pipeline flag images of CCDs and tiles.

Algorithms live in :mod:`.build` (:func:`build_mask`), :mod:`.geometry`,
:mod:`.saturation`, :mod:`.catalogues` and :mod:`.config` (``.mask`` files);
:mod:`.planes` holds the named mask planes and :func:`mask_bits`.
"""

from .planes import mask_bits

__all__ = ["mask_bits"]
