"""Postage-stamp archives of target lists (``shapepipe_stamps``, module ``stamps``)."""
