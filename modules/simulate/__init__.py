"""Simulated CFIS/UNIONS-like survey with truth (``shapepipe_simulate``).

Python API::

    from shapepipe_modules.simulate import simulate, load_truth, TruePSF
    sim = simulate(preset="tiny", output_dir="sim", seed=1, n_workers=2)
    truth = load_truth(sim, tile="244.252")
    psf = TruePSF(sim)

See ``docs/simulation.md`` for what is simulated and the file layout.
"""

from .core import simulate
from .presets import PRESETS, resolve_parameters
from .psf import TruePSF
from .truth import load_truth

__all__ = ["simulate", "load_truth", "TruePSF", "PRESETS", "resolve_parameters"]
