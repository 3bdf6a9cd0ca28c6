"""Simulated CFIS/UNIONS-like survey with truth (``shapepipe_simulate``).

Python API::

    from shapepipe_modules.simulate import simulate, load_truth, TruePSF
    sim = simulate(preset="tiny", output_dir="sim", seed=1, n_workers=2)
    plus, minus = simulate_paired(preset="tiny", output_dir="pair", seed=1)
    truth = load_truth(sim, tile="244.252")
    psf = TruePSF(sim)

See ``docs/simulation.md`` for what is simulated and the file layout.
"""

from .core import simulate, simulate_paired
from .presets import PRESETS, resolve_parameters
from .psf import TruePSF
from .truth import load_truth

__all__ = ["simulate", "simulate_paired", "load_truth", "TruePSF", "PRESETS", "resolve_parameters"]
