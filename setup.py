"""Package layout: the core ``shapepipe/`` and the built-in modules ``modules/``.

The ``modules/`` folder installs as ``shapepipe_modules`` so that it never
collides with another package named ``modules``.
"""

from setuptools import find_packages, setup

core = find_packages(include=["shapepipe", "shapepipe.*"])
builtin = [
    "shapepipe_modules" + name[len("modules"):]
    for name in find_packages(include=["modules", "modules.*"])
]
# Configuration files shipped beside the code (each module's data/ folder is a package).
data_patterns = [
    "*.sex", "*.param", "*.conv", "*.psfex", "*.setools", "*.mask", "*.txt",
    "*.csv", "*.fits", "*.json", "*.ini", "*.reg",
]

setup(
    packages=core + builtin,
    package_dir={"shapepipe_modules": "modules"},
    package_data={"": data_patterns},
)
