#!/usr/bin/env bash
# Install everything (see setup_env.sh) and run the main job on the embedded
# default data. Extra arguments go to shapepipe_run.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec shapepipe_run -c example/config.ini "$@"
