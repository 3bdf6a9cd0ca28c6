#!/usr/bin/env bash
# SLURM job array: one task per file number (tile or exposure), each running
# shapepipe_run on its own number. The batch system is the scheduler; every
# task is independent, idempotent and resumable (see docs/cluster.md).
#
#   sbatch --array=1-$(wc -l < numbers.txt) scripts/cluster/slurm_array.sh config.ini numbers.txt
#
# numbers.txt holds one file number per line in the config's numbering scheme
# (e.g. -244-252 for tiles). The config names each task's run after its
# number, e.g. RUN_NAME = tiles${SP_NUMBER} with RUN_DATETIME = False, so a
# resubmitted task continues its own run. A later stage reads every task's
# output with `INPUT_DIR = all:MODULE`.
#SBATCH --job-name=shapepipe
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=shapepipe_%A_%a.log
set -euo pipefail

config=${1:?usage: slurm_array.sh CONFIG NUMBER_LIST}
numbers=${2:?usage: slurm_array.sh CONFIG NUMBER_LIST}
SP_NUMBER=$(sed -n "${SLURM_ARRAY_TASK_ID:?not inside a SLURM array}p" "$numbers" | tr -d '[:space:]')
if [ -z "$SP_NUMBER" ]; then
    echo "no number on line ${SLURM_ARRAY_TASK_ID} of $numbers" >&2
    exit 2
fi
export SP_NUMBER
exec shapepipe_run -c "$config" -e "$SP_NUMBER" --resume-if-any
