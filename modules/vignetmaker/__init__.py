"""Postage stamps: CLASSIC (images around catalogue positions) and MULTI-EPOCH
(single-exposure stamps of every tile object in every epoch).

See :mod:`.stamps` for the centre convention, :mod:`.multi_epoch` for the
store layout (read with :class:`shapepipe_modules.io.stamp_store.StampStore`).
"""

__all__ = ["central_pixels", "cut_stamps", "local_jacobians"]


def __getattr__(name):
    # Imported on first use: the module registry imports every runner, and numpy's import would
    # otherwise be paid by every shapepipe_run process, whatever modules it runs.
    if name in __all__:
        from . import stamps

        return getattr(stamps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
