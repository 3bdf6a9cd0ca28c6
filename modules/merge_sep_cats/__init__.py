"""Merging the id-range splits of a tile's catalogues (ShapePipe's ``merge_sep_cats``)."""

__all__ = ["MergeError", "merge_split_catalogues", "shapepipe_split_paths"]


def __getattr__(name):
    # Imported on first use: the module registry imports every runner, and numpy's import would
    # otherwise be paid by every shapepipe_run process, whatever modules it runs.
    if name in __all__:
        from . import merge

        return getattr(merge, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
