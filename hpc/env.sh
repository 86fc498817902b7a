# Sourced by every hpc/ script: activate the Python environment and go to the work folder.
#   DENOISEFEAT_CONDA_ENV=name     conda environment to activate, or
#   DENOISEFEAT_VENV=/path/.venv   virtual environment to activate
#   DENOISEFEAT_WORKDIR=/path      folder to run in (default: the folder the job was submitted from)
#   DENOISEFEAT_SETUP=1            (setup jobs) do not insist that denoisefeat is installed yet
set -euo pipefail
if [[ -n ${DENOISEFEAT_CONDA_ENV:-} ]]; then
    eval "$(conda shell.bash hook)"
    conda activate "$DENOISEFEAT_CONDA_ENV"
elif [[ -n ${DENOISEFEAT_VENV:-} ]]; then
    # shellcheck disable=SC1091
    . "$DENOISEFEAT_VENV/bin/activate"
fi
cd "${DENOISEFEAT_WORKDIR:-${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}}"
# one torch thread per allocated core, not one per core of the node
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${NCPUS:-${SLURM_CPUS_PER_TASK:-1}}}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # compute nodes read models from disk (see setup)
[[ -n ${DENOISEFEAT_SETUP:-} ]] || command -v denoisefeat >/dev/null || { echo "denoisefeat is not installed in this environment (see setup)" >&2; exit 1; }
