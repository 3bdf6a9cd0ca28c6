"""The final catalogue of a tile (ShapePipe's ``make_cat``)."""

from .catalogue import join_index, make_final_catalogue

__all__ = ["join_index", "make_final_catalogue"]
