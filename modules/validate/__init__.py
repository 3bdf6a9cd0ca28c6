"""Shear validation of final catalogues against the simulator's truth (``shapepipe_validate``).

:mod:`.shear` holds the computation (matching, selection, metacal response
with the selection response, shear per tile, m and c with bootstrap
errors), :mod:`.plots` the figures, :mod:`.cli` the command.
"""

from .shear import Selection, fit_m_c, match_positions, validate_catalogues

__all__ = ["Selection", "fit_m_c", "match_positions", "validate_catalogues"]
