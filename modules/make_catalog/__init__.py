"""The final catalogue of a tile (ShapePipe's ``make_cat``)."""

__all__ = ["join_index", "make_final_catalogue"]


def __getattr__(name):
    # Imported on first use: the module registry imports every runner, and numpy's import would
    # otherwise be paid by every shapepipe_run process, whatever modules it runs.
    if name in __all__:
        from . import catalogue

        return getattr(catalogue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
