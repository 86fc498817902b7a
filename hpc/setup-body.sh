# The work of the setup jobs (hpc/pbs/setup.pbs, hpc/slurm/setup.sbatch), after env.sh.
#   REPO        the denoisefeat checkout to install (default: the submit folder)
#   MODELS      space-separated hub ids to download, e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"
#   MODELS_DIR  where to put them (specs then say model = "<MODELS_DIR>/<name>")
set -euo pipefail
repo=${REPO:-$PWD}
python -c "import denoisefeat" 2>/dev/null || python -m pip install -e "$repo[cluster]"
python - <<'PY'
import denoisefeat
from denoisefeat.models import TOY_WEIGHTS
print("denoisefeat", denoisefeat.__version__, "- toy model:", "present" if (TOY_WEIGHTS / "model_index.json").exists() else "MISSING")
PY
for id in ${MODELS:-}; do
    dest="${MODELS_DIR:?set MODELS_DIR}/${id##*/}"
    python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], local_dir=sys.argv[2])" "$id" "$dest"
    denoisefeat info "$dest" >/dev/null 2>&1 || true
    echo "downloaded $id -> $dest"
done
