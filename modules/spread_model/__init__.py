"""SPREAD_MODEL star/galaxy classification of tile objects (ShapePipe's ``spread_model``)."""

from .spread_model import FLAGS, classify, decode_flags, gaussian_models, spread_model, stamp_models

__all__ = ["FLAGS", "classify", "decode_flags", "gaussian_models", "spread_model", "stamp_models"]
