"""Multi-epoch metacalibration shape measurement (ShapePipe's ``ngmix`` stage).

The built-in engine implements the published algorithm (Huff & Mandelbaum
2017; Sheldon & Huff 2017) without the ngmix package: :mod:`.metacal` (image
operations in Fourier space), :mod:`.gauss_fit` (joint elliptical Gaussian
fit), :mod:`.priors`, :mod:`.moments`, :mod:`.flags`, :mod:`.engine` (the
per-object driver) and :mod:`.response` (mean response and shear). See
``docs/metacal.md``.
"""
