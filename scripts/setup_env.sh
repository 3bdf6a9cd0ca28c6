#!/usr/bin/env bash
# Shared set-up, sourced by run_tests.sh and run_demo.sh: a virtual environment
# in .venv with the package installed (normal, non-editable install), and the
# SExtractor and PSFEx binaries when they can be installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v source-extractor >/dev/null 2>&1 || ! command -v psfex >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq source-extractor psfex >/dev/null; } \
            || echo "warning: could not install source-extractor/psfex; the sep and built-in engines still work"
    else
        echo "note: source-extractor/psfex not found; the sep and built-in engines still work"
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q ".[test,butler]"
# The numba kernels' ahead-of-time builds (docs/architecture.md), once per installation, so that
# no job pays them; without a C compiler the jobs use numba's JIT dispatchers.
.venv/bin/python -c "
from shapepipe_modules.io import moments, psfex_file
from shapepipe_modules.sextractor import sep_engine
for kernels in (sep_engine.kernels, moments._kernels, psfex_file._kernels):
    kernels.compiled()
" || echo "note: the numba kernels were not compiled ahead of time; the jobs compile them (JIT)"
# The metacal engine's kernels are numba JIT functions cached on disk: one synthetic object measured
# here compiles them once (about 20 s; 1 s when cached) instead of in every ngmix job of the first run.
.venv/bin/python -c "
from shapepipe_modules.ngmix import engine
engine.warm_up()
" || echo "note: the metacal kernels were not compiled in advance; the first ngmix jobs compile them"
export PATH="$PWD/.venv/bin:$PATH"
