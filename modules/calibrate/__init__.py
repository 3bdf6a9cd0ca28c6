"""Shear calibration campaigns (``shapepipe_calibrate``).

One campaign: N seeds of a simulation preset, each a paired job (the
survey simulated with +g and -g, the GOLD chain run on both, the galaxies
joined; :mod:`.seed`), run as the jobs of the ``calibration_seed`` module
(file numbers = seeds) by any executor of ``shapepipe_run`` or as a job
array of ``shapepipe_batch``; then a serial merge (:mod:`.campaign`,
module ``calibration_merge``) pools the galaxies of every finished seed
into one paired estimate of m and c. See docs/calibration.md.
"""
