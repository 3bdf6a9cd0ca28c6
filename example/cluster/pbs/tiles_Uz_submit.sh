#!/bin/bash
# Submit the ShapePipe array tiles_Uz_array.pbs.
# Written by shapepipe_batch.
set -euo pipefail
# The batch system does not create the log folder.
mkdir -p /scratch/campaign/batch/logs
array_job=$(qsub /scratch/campaign/batch/tiles_Uz_array.pbs)
echo "array job $array_job: /scratch/campaign/batch/tiles_Uz_array.pbs"
