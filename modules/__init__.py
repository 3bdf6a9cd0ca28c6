"""Built-in pipeline modules (installed as ``shapepipe_modules``).

One sub-package per module, each with a ``runner.py`` holding the module
declaration; shared file formats live in :mod:`shapepipe_modules.io`.
"""
