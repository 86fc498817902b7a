"""Real processes: a duplicate of a running task refuses to start; a task killed with SIGKILL resumes
without losing or redoing finished chunks, and its store equals an uninterrupted run bit for bit."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from denoisefeat.jobs import load_spec, run_task, task_grid, task_state
from denoisefeat.store import open_run
from denoisefeat.trajectory import trace

SPEC = """
[run]
model = "tiny-unet"
store = "out.zarr"
samples = 4
steps = 30
batch_size = 1
chunks_per_task = 4
record = { "mid_block" = "channel_mean" }
"""


def _wait(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _data_files(store: Path) -> dict[str, Path]:
    return {str(p.relative_to(store)): p for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json"}


@pytest.mark.slow
def test_duplicate_refused_then_sigkill_resumes_bit_for_bit(tmp_path, tiny_pipes):
    import torch

    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path, check_model=False)
    task = task_grid(spec)[0]
    store = tmp_path / "out.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float sums as this process
    cmd = [sys.executable, "-m", "denoisefeat.jobs", "run", str(spec_path), "--task", "0"]
    init_lock = spec.jobs_dir / "init" / f"{task.config.name}.run.lock"
    init_lock.parent.mkdir(parents=True)

    # 1. Two processes start the same task while this test holds the store's initialisation lock:
    #    the one that gets the task lock waits on it; the other must refuse, naming the first.
    with open(init_lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        _wait(lambda: any(p.poll() is not None for p in procs), timeout=300, what="one duplicate to give up")
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        assert loser.returncode == 1, err
        assert "already running" in err and f"pid {winner.pid}" in err
        assert winner.poll() is None
        state = task_state(spec.jobs_dir, task.id)
        assert state.state == "running" and f"pid {winner.pid}" in state.detail
        fcntl.flock(held, fcntl.LOCK_UN)

    # 2. Kill the winner with SIGKILL once two of its four sample chunks are complete.
    _wait(lambda: (store / "complete" / "c" / "1").exists() or winner.poll() is not None, timeout=300,
          what="two chunks to complete")
    winner.send_signal(signal.SIGKILL)
    winner.communicate()
    assert winner.returncode == -signal.SIGKILL, "the task finished before it could be killed: make it longer"
    done = open_run(store, allow_incomplete=True).store.completed()
    assert 2 <= done.sum() < 4  # killed mid-task
    state = task_state(spec.jobs_dir, task.id)
    assert state.state == "failed" and "killed" in state.detail
    kept = {name: path.stat().st_mtime_ns for name, path in _data_files(store).items()
            if any(name.startswith(f"{array}/c/{k}") for array in ("x0", "xt", "images", "final", "complete")
                   for k in np.flatnonzero(done))}
    assert kept

    # 3. Running the task again finishes it: completed chunks are kept as they are, the rest redone.
    assert run_task(spec, 0) is True
    assert run_task(spec, 0) is False
    assert task_state(spec.jobs_dir, task.id).state == "done"
    for name, mtime in kept.items():
        assert (store / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"

    ref = tmp_path / "ref.zarr"
    trace(tiny_pipes["tiny-unet"], samples=4, seed=0, steps=30, batch_size=1, store=ref,
          record={"mid_block": "channel_mean"}, model_id="tiny-unet")
    got_files, ref_files = _data_files(store), _data_files(ref)
    assert sorted(got_files) == sorted(ref_files)
    for name in ref_files:
        assert got_files[name].read_bytes() == ref_files[name].read_bytes(), name
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ("xt", "x0", "images", "final", "acts/mid_block/channel_mean"):
        assert np.asarray(a[name][...]).tobytes() == np.asarray(b[name][...]).tobytes(), name
