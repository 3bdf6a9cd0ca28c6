"""ShapePipe-style weak-lensing pipeline: the core (no astronomy).

The core parses and validates configurations, finds modules and input
files, runs jobs in parallel, and keeps run records. Astronomy lives in the
``shapepipe_modules`` package.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # The data butler is imported on first use, so that `import shapepipe` stays light.
    if name == "Repository":
        from .repository import Repository

        return Repository
    raise AttributeError(f"module 'shapepipe' has no attribute {name!r}")
