"""SPREAD_MODEL star/galaxy classification of tile objects (ShapePipe's ``spread_model``).

The functions live in :mod:`.spread_model` (``from shapepipe_modules.spread_model.spread_model
import classify``); the names below are also reachable here, imported on first use.
"""

__all__ = ["FLAGS", "classify", "decode_flags", "gaussian_models", "stamp_models"]


def __getattr__(name):
    # Imported on first use: the module registry imports every runner, and numpy's import would
    # otherwise be paid by every shapepipe_run process, whatever modules it runs. (The function
    # spread_model is not re-exported: its name is also the submodule's.)
    if name in __all__:
        from . import spread_model

        return getattr(spread_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
