#!/bin/bash
# One diffbench suite as a Slurm job array: array task I runs shard I of N into one shared run directory.
#
#   sbatch --array=1-4 scripts/slurm-array.sh suites/steps.yaml results/steps/slurm-run
#
# then, once every task has ended, merge the shards (table, plots, report.md; lists missing cells):
#
#   diffbench report results/steps/slurm-run
#
# or queue the merge behind the array:  sbatch --dependency=afterany:<jobid> --wrap "diffbench report DIR"
# Number the array from 1 (--array=1-N). A task that is requeued or resubmitted continues its shard
# (--resume keeps the cells it finished). The run directory must be on a file system every node sees.
# Drop the --gres line on a cluster without GPUs.
#SBATCH --job-name=diffbench
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --output=diffbench-%A_%a.out
set -euo pipefail
suite=${1:?usage: sbatch --array=1-N slurm-array.sh SUITE RUN_DIR}
out=${2:?usage: sbatch --array=1-N slurm-array.sh SUITE RUN_DIR}
: "${SLURM_ARRAY_TASK_ID:?not inside a Slurm job array (submit with sbatch --array=1-N)}"
: "${SLURM_ARRAY_TASK_COUNT:?not inside a Slurm job array (submit with sbatch --array=1-N)}"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
exec diffbench run "$suite" --out "$out" --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --resume --no-progress
