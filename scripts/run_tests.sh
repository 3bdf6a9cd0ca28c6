#!/usr/bin/env bash
# Install everything (see setup_env.sh) and run the test suite against the
# installed package. Extra arguments go to pytest (e.g. `-m slow`).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
# .venv/bin/pytest (not python -m pytest) keeps the source tree off sys.path,
# so the tests exercise the installed package.
exec .venv/bin/pytest "$@"
