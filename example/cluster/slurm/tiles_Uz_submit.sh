#!/bin/bash
# Submit the ShapePipe array tiles_Uz_array.slurm.
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p /scratch/campaign/batch/logs
array_job=$(sbatch --parsable /scratch/campaign/batch/tiles_Uz_array.slurm)
array_job=${array_job%%;*}  # --parsable prints JOBID[;CLUSTER]
echo "array job $array_job: /scratch/campaign/batch/tiles_Uz_array.slurm"
