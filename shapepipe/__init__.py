"""ShapePipe-style weak-lensing pipeline: the core (no astronomy).

The core parses and validates configurations, finds modules and input
files, runs jobs in parallel, and keeps run records. Astronomy lives in the
``shapepipe_modules`` package.
"""

__version__ = "0.1.0"
