"""A real SLURM: submit a spec, let the arrays and the merge job run, check the merged store.

Runs only where ``sbatch`` is on PATH and a controller answers ``scontrol ping`` (for example after
``hpc/local-slurm.sh start`` and ``export SLURM_CONF=...``); skipped, saying why, elsewhere.
"""

import json
import shutil
import subprocess
import time

import numpy as np
import pytest
import zarr

from denoisefeat.jobs import load_spec, status, submit, task_grid
from denoisefeat.store import open_run
from denoisefeat.trajectory import trace


def _slurm_unavailable() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol ping failed: {err}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "no SLURM controller answers `scontrol ping` (start one: hpc/local-slurm.sh start)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_slurm_unavailable() is not None,
                                                   reason=str(_slurm_unavailable()))]


def _reason(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True)
    return out.stdout.strip()


def test_slurm_array_runs_and_merges(tmp_path, tiny_pipes):
    import torch

    threads = torch.get_num_threads()
    path = tmp_path / "spec.toml"
    path.write_text(
        '[run]\nmodel = "tiny-class-unet"\nstore = "out.zarr"\nsamples = 4\nsteps = 2\nbatch_size = 2\n'
        'labels = [0, 1, 2, 3]\n[features]\nmetrics = ["edge_density"]\n'
        '[cluster]\nscheduler = "slurm"\nwalltime = "00:15:00"\ncpus = 1\nmax_parallel = 4\n'
        f'setup = ["export OMP_NUM_THREADS={threads}"]\n')  # the same float sums as this process
    spec = load_spec(path)
    record = submit(spec, scheduler="slurm")
    assert set(record["jobs"]) == {"stage0", "stage1", "merge"}
    merged = spec.jobs_dir / "merged.json"
    deadline = time.monotonic() + 900
    while not merged.exists():
        reason = _reason(record["jobs"]["merge"])
        logs = "\n".join(p.read_text()[-2000:] for p in sorted((spec.jobs_dir / "logs").glob("*.err")))
        assert "DependencyNeverSatisfied" not in reason, f"a task failed:\n{logs}"
        assert time.monotonic() < deadline, f"SLURM job not finished in 15 min ({reason}):\n{logs}"
        time.sleep(2)
    summary = json.loads(merged.read_text())
    assert summary["tasks"] == {"done": len(task_grid(spec))}
    assert summary["stores"][0]["samples_complete"] == 4 and summary["stores"][0]["features_complete"] == 4
    assert {s.state for _, s in status(spec)} == {"done"}
    array = record["jobs"]["stage0"]
    assert sorted(p.name for p in (spec.jobs_dir / "logs").glob("dft-spec-s0-*.out")) == [
        f"dft-spec-s0-{array}_0.out", f"dft-spec-s0-{array}_1.out"]  # one log per array element

    run = open_run(tmp_path / "out.zarr")
    ref = tmp_path / "ref.zarr"
    trace(tiny_pipes["tiny-class-unet"], samples=4, class_labels=[0, 1, 2, 3], steps=2, batch_size=2, store=ref,
          model_id="tiny-class-unet")
    got, want = zarr.open_group(str(tmp_path / "out.zarr"), mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ("xt", "x0", "images", "final"):
        assert np.asarray(got[name][...]).tobytes() == np.asarray(want[name][...]).tobytes(), name
    assert run.store.group.metadata.consolidated_metadata is not None  # finalised by the merge job
