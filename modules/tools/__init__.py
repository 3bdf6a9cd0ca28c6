"""Auxiliary console scripts: ``cfis_field_select``, ``create_star_cat``, ``merge_final_cat``, ``stats_global``."""
