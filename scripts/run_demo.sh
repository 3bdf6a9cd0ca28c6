#!/usr/bin/env bash
# Install everything (see setup_env.sh) and run the main job: the GOLD run,
# the whole CFIS-like chain on the simulated demo survey (simulated into
# example/GOLD/data/demo if absent; runs in example/GOLD/output, summary in
# example/GOLD/output/gold_summary.txt). Extra arguments go to shapepipe_gold.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec shapepipe_gold "$@"
