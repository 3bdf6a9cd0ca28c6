"""Postage stamps: CLASSIC (images around catalogue positions) and MULTI-EPOCH
(single-exposure stamps of every tile object in every epoch).

See :mod:`.stamps` for the centre convention, :mod:`.multi_epoch` for the
store layout (read with :class:`shapepipe_modules.io.stamp_store.StampStore`).
"""

from .stamps import central_pixels, cut_stamps, local_jacobians

__all__ = ["central_pixels", "cut_stamps", "local_jacobians"]
