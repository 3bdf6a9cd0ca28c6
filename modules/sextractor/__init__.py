"""Source extraction: the ``sep`` engine and the SExtractor binary engine."""
