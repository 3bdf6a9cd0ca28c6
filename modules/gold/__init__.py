"""The GOLD run: the whole CFIS-like chain on simulated data, in one command (``shapepipe_gold``).

:mod:`.chain` runs the configurations of ``example/GOLD`` in ShapePipe's
order; :mod:`.truth_checks` compares the star selection and the star/galaxy
classification with the simulator's truth; :mod:`.summary` gathers run times,
PSF residuals and shear biases into one report.
"""
