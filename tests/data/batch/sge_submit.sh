#!/bin/bash
# Submit the ShapePipe array copy_array.sge and the merge job copy_merge.sge, which starts after every task ended (afterany).
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p <ROOT>/scripts/logs
array_job=$(qsub -terse <ROOT>/scripts/copy_array.sge)
array_job=${array_job%%.*}  # -terse prints JOBID.FIRST-LAST:STEP for an array
echo "array job $array_job: <ROOT>/scripts/copy_array.sge"
merge_job=$(qsub -terse -hold_jid $array_job <ROOT>/scripts/copy_merge.sge)
echo "merge job $merge_job (afterany:$array_job): <ROOT>/scripts/copy_merge.sge"
