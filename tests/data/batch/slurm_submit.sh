#!/bin/bash
# Submit the ShapePipe array copy_array.slurm and the merge job copy_merge.slurm, which starts after every task ended (afterany).
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p <ROOT>/scripts/logs
array_job=$(sbatch --parsable <ROOT>/scripts/copy_array.slurm)
array_job=${array_job%%;*}  # --parsable prints JOBID[;CLUSTER]
echo "array job $array_job: <ROOT>/scripts/copy_array.slurm"
merge_job=$(sbatch --parsable --dependency=afterany:$array_job <ROOT>/scripts/copy_merge.slurm)
merge_job=${merge_job%%;*}
echo "merge job $merge_job (afterany:$array_job): <ROOT>/scripts/copy_merge.slurm"
