#!/bin/bash
# The whole study of a spec on the cluster: validate, then submit the array job(s) and the merge job.
#   hpc/submit-study.sh SPEC [pbs|slurm] [--dry-run]
# Same as `denoisefeat jobs validate SPEC && denoisefeat jobs submit SPEC --scheduler ...`;
# follow it with `denoisefeat jobs status SPEC`.  Resubmitting reruns only unfinished tasks.
set -euo pipefail
spec=${1:?usage: $0 SPEC [pbs|slurm] [--dry-run]}
scheduler=${2:-}
shift $(( $# < 2 ? $# : 2 ))
denoisefeat jobs validate "$spec"
denoisefeat jobs submit "$spec" ${scheduler:+--scheduler "$scheduler"} "$@"
