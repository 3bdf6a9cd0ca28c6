#!/bin/bash
# Submit the ShapePipe array exposures_array.slurm and the merge job exposures_merge.slurm, which starts after every task ended (afterany).
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p /scratch/campaign/batch/logs
array_job=$(sbatch --parsable /scratch/campaign/batch/exposures_array.slurm)
array_job=${array_job%%;*}  # --parsable prints JOBID[;CLUSTER]
echo "array job $array_job: /scratch/campaign/batch/exposures_array.slurm"
merge_job=$(sbatch --parsable --dependency=afterany:$array_job /scratch/campaign/batch/exposures_merge.slurm)
merge_job=${merge_job%%;*}
echo "merge job $merge_job (afterany:$array_job): /scratch/campaign/batch/exposures_merge.slurm"
