"""Named random streams of the simulator.

Every random quantity comes from its own generator, keyed by the simulation
seed, a purpose and the identifiers of what it belongs to (exposure, CCD,
tile, block, object). Because no two quantities share a generator, the
number of draws one of them consumes (e.g. Poisson noise, whose draw count
depends on the expected value) cannot shift any other: with the same seed,
changing the shear, or one galaxy, changes no noise outside that galaxy's
stamp and no other object.

Keys are ``numpy.random.SeedSequence([seed, purpose, *key])``. Each purpose
has a fixed key length (checked), and the seed is below 2**32 (one word), so
two different keys never give the same entropy words.
"""

from __future__ import annotations

import numpy as np

# Purpose -> (number, names of the key). The numbers of the first four are
# those the scene, PSF and pointings always used (their draws are unchanged).
PSF = 1                 # per exposure: PSF polynomial coefficients
POINTING = 2            # per exposure: dither jitter
ZERO_POINT = 3          # per exposure: photometric zero point (transparency)
STAR_SCENE = 10         # stars of the scene
GALAXY_SCENE = 11       # galaxies of the scene
PLACEMENT = 12          # new positions of objects moved to keep min_separation
VARIABLES = 13          # which stars vary, and their light-curve parameters
CLUSTER = 14            # cluster members, intracluster light and the added bright stars (cluster = True)
SKY_GRADIENT = 20       # per (exposure, CCD): linear sky gradient
SKY_PHOTONS = 21        # per (exposure, CCD): Poisson noise of the sky
OBJECT_PHOTONS = 22     # per (exposure, CCD, object id): Poisson noise of one object's stamp
READ_NOISE = 23         # per (exposure, CCD): Gaussian read noise
COSMIC_RAYS = 24        # per (exposure, CCD): cosmic-ray tracks
BAD_COLUMNS = 25        # per (exposure, CCD): bad columns
TILE_NOISE = 30         # per (tile XXX, tile YYY, first row of the block): Gaussian stack noise

KEYS = {
    PSF: ("exposure",),
    POINTING: ("exposure",),
    ZERO_POINT: ("exposure",),
    STAR_SCENE: (),
    GALAXY_SCENE: (),
    PLACEMENT: (),
    VARIABLES: (),
    CLUSTER: (),
    SKY_GRADIENT: ("exposure", "ccd"),
    SKY_PHOTONS: ("exposure", "ccd"),
    OBJECT_PHOTONS: ("exposure", "ccd", "object id"),
    READ_NOISE: ("exposure", "ccd"),
    COSMIC_RAYS: ("exposure", "ccd"),
    BAD_COLUMNS: ("exposure", "ccd"),
    TILE_NOISE: ("tile xxx", "tile yyy", "block row0"),
}

MAX_SEED = 2**32 - 1

#: The purposes whose draws are noise: redrawn for each ``noise_realisation`` (:func:`noise_stream`).
NOISE_PURPOSES = frozenset({SKY_PHOTONS, OBJECT_PHOTONS, READ_NOISE, COSMIC_RAYS, TILE_NOISE})

#: Recorded in ``simulation.json`` (``random_streams``). 1 (no record): one
#: generator per CCD shared by all its noise; 2: the streams of this module.
RANDOM_STREAMS_VERSION = 2


def stream(seed: int, purpose: int, *key) -> np.random.Generator:
    """The generator of one purpose and key.

    Parameters
    ----------
    seed : int
        Simulation seed, 0 .. 2**32 - 1.
    purpose : int
        One of the purpose constants of this module.
    *key : int
        Non-negative integers, as many as ``KEYS[purpose]`` names.

    Raises
    ------
    ValueError
        Unknown purpose, wrong key length, or a seed out of range.
    """
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, purpose, key)))


def _entropy(seed, purpose, key) -> list:
    """``[seed, purpose, *key]`` as integers, after checking the purpose, the key's length and the seed."""
    if purpose not in KEYS:
        raise ValueError(f"simulate: unknown random-stream purpose {purpose!r}")
    if len(key) != len(KEYS[purpose]):
        raise ValueError(f"simulate: stream {purpose} is keyed by {KEYS[purpose]}, got {key!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"simulate: seed must be in 0..{MAX_SEED}, got {seed}")
    return [int(seed), int(purpose), *(int(k) for k in key)]


def noise_stream(seed: int, purpose: int, realisation: int, *key) -> np.random.Generator:
    """The generator of a noise purpose in one noise realisation of the scene.

    Realisation 0 is :func:`stream` itself (a simulation without the
    parameter draws the same noise). Realisation k > 0 appends k to the
    key, a longer entropy than any of :func:`stream`'s, ending in a
    non-zero word: a new, independent draw of that noise, while every
    scene, PSF and pointing stream is untouched.

    Raises
    ------
    ValueError
        A purpose that is not noise, a negative realisation, or as :func:`stream`.
    """
    if purpose not in NOISE_PURPOSES:
        raise ValueError(f"simulate: stream {purpose} is not noise; only {sorted(NOISE_PURPOSES)} have realisations")
    if int(realisation) < 0:
        raise ValueError(f"simulate: noise_realisation must be >= 0, got {realisation}")
    entropy = _entropy(seed, purpose, key)
    if int(realisation) > 0:
        entropy.append(int(realisation))
    return np.random.default_rng(np.random.SeedSequence(entropy))
