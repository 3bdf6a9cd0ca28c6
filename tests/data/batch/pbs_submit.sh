#!/bin/bash
# Submit the ShapePipe array copy_array.pbs and the merge job copy_merge.pbs, which starts after every task ended (afterany).
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p <ROOT>/scripts/logs
array_job=$(qsub <ROOT>/scripts/copy_array.pbs)
echo "array job $array_job: <ROOT>/scripts/copy_array.pbs"
merge_job=$(qsub -W depend=afterany:$array_job <ROOT>/scripts/copy_merge.pbs)
echo "merge job $merge_job (afterany:$array_job): <ROOT>/scripts/copy_merge.pbs"
