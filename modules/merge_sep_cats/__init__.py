"""Merging the id-range splits of a tile's catalogues (ShapePipe's ``merge_sep_cats``)."""

from .merge import MergeError, merge_split_catalogues, shapepipe_split_paths

__all__ = ["MergeError", "merge_split_catalogues", "shapepipe_split_paths"]
