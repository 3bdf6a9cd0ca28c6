#!/bin/bash
# Submit the ShapePipe array exposures_array.pbs and the merge job exposures_merge.pbs, which starts after every task ended (afterany).
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p /scratch/campaign/batch/logs
array_job=$(qsub /scratch/campaign/batch/exposures_array.pbs)
echo "array job $array_job: /scratch/campaign/batch/exposures_array.pbs"
merge_job=$(qsub -W depend=afterany:$array_job /scratch/campaign/batch/exposures_merge.pbs)
echo "merge job $merge_job (afterany:$array_job): /scratch/campaign/batch/exposures_merge.pbs"
