"""Tasks run one by one, in any order, fill the stores exactly like one plain run; merge; states."""

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from denoisefeat.jobs import merge, parse_spec, run_task, status, task_grid, task_state
from denoisefeat.locking import TaskLock, TaskLockedError
from denoisefeat.store import IncompleteRunError, open_run
from denoisefeat.trajectory import trace

LABELS = [0, 1, 2, 3]


def _spec(tmp_path, **sections):
    run = {"model": "tiny-class-unet", "store": "out.zarr", "samples": 4, "steps": 3, "batch_size": 2,
           "labels": LABELS, "record": {"mid_block": "channel_mean"}}
    return parse_spec({"run": run, **sections}, path=tmp_path / "spec.toml", check_model=False)


def _chunk_files(store: Path) -> dict[str, bytes]:
    """Every data file of a zarr store (metadata, which holds creation times, left out)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def _assert_same_store(got: Path, ref: Path, *, group=None):
    a, b = zarr.open_group(str(got), mode="r"), zarr.open_group(str(ref), mode="r")
    if group is not None:
        a, b = a[group], b[group]
    names = sorted(name for name, _ in b.arrays())
    assert sorted(name for name, _ in a.arrays()) == names
    for name in names:
        np.testing.assert_array_equal(np.asarray(a[name][...]), np.asarray(b[name][...]), err_msg=name)
    files_a = {k: v for k, v in _chunk_files(got).items() if group is None or k.startswith(group)}
    files_b = {k: v for k, v in _chunk_files(ref).items() if group is None or k.startswith(group)}
    assert files_a == files_b  # bit for bit, chunk file by chunk file


def test_tasks_in_any_order_equal_one_trace_and_features(tmp_path, tiny_pipes):
    from denoisefeat.step_features import features

    spec = _spec(tmp_path, features={"metrics": ["edge_density", "colorfulness"], "batch_size": 3})
    grid = task_grid(spec)
    extract = [t for t in grid if t.kind == "extract"]
    feats = [t for t in grid if t.kind == "features"]
    # a feature task before its chunk is traced fails, says why, and leaves a failure note
    with pytest.raises(IncompleteRunError):
        run_task(spec, feats[0].index)
    assert task_state(spec.jobs_dir, feats[0].id).state == "failed"
    for task in reversed(extract):  # the last chunk creates the store: order must not matter
        assert run_task(spec, task.index) is True
    assert run_task(spec, extract[0].index) is False  # done: skipped
    for task in feats:
        assert run_task(spec, task.index) is True
    assert [s.state for _, s in status(spec)] == ["done"] * len(grid)
    assert not (spec.jobs_dir / "tasks" / f"{feats[0].id}.failed.json").exists()

    ref = tmp_path / "ref.zarr"
    trace(tiny_pipes["tiny-class-unet"], samples=4, class_labels=LABELS, seed=0, steps=3, batch_size=2,
          store=ref, record={"mid_block": "channel_mean"}, model_id="tiny-class-unet")
    features(str(ref), metrics=["edge_density", "colorfulness"], batch_size=3)
    _assert_same_store(tmp_path / "out.zarr", ref)
    assert open_run(tmp_path / "out.zarr").acts("mid_block").shape[:2] == (4, 3)
    with pytest.raises(IndexError, match="4 tasks"):
        run_task(spec, 7)


def test_ablation_tasks_merge_into_one_table(tmp_path, tiny_pipes):
    ablation = pytest.importorskip("denoisefeat.analyses.ablation")
    from denoisefeat.analyses.table import read_attribution

    spec = _spec(tmp_path, ablation={"layers": ["mid_block", "conv_in"], "windows": 2, "methods": ["zero"],
                                     "features": ["edge_density", "colorfulness"], "samples": 4})
    grid = task_grid(spec)
    from denoisefeat.jobs import IncompleteJobError

    with pytest.raises(IncompleteJobError, match="not done"):
        merge(spec)
    for task in grid:
        run_task(spec, task.index)
    summary = merge(spec)
    assert summary["stores"][0]["attribution_rows"] == 2 * 2 * 2  # layers x windows x features
    got = read_attribution(tmp_path / "out.zarr", "ablation")
    ref = ablation.ablation_scan(tiny_pipes["tiny-class-unet"], layers=["mid_block", "conv_in"], windows=2,
                                 method="zero", features=["edge_density", "colorfulness"], samples=4,
                                 class_labels=LABELS, seed=[0, 1, 2, 3], steps=3, batch_size=8)
    keys = ["feature", "layer", "step_start", "step_stop", "method"]
    got = got.sort_values(keys).reset_index(drop=True)
    ref = ref.sort_values(keys).reset_index(drop=True)
    for column in ref.columns:  # p_adj too: recomputed over the merged table, as one scan does
        np.testing.assert_array_equal(got[column].to_numpy(), ref[column].to_numpy(), err_msg=column)
    assert set(got["configuration"]) == {"default-3"}
    # the merge consolidated the store: one metadata read opens it, attribution included
    consolidated = zarr.open_group(str(tmp_path / "out.zarr"), mode="r", use_consolidated=True)
    assert "attribution/ablation/effect" in consolidated.metadata.consolidated_metadata.flattened_metadata


def test_a_live_duplicate_is_refused_and_status_says_running(tmp_path):
    spec = _spec(tmp_path)
    task = task_grid(spec)[0]
    with TaskLock(spec.jobs_dir / "tasks" / f"{task.id}.lock"):
        state = task_state(spec.jobs_dir, task.id)
        assert state.state == "running" and f"pid {os.getpid()}" in state.detail
        with pytest.raises(TaskLockedError, match=f"pid {os.getpid()}.*refusing"):
            run_task(spec, task.index)
    assert task_state(spec.jobs_dir, task.id).state == "failed"  # started, never finished: "killed"
    assert task_state(spec.jobs_dir, task_grid(spec)[1].id).state == "missing"


def test_only_samples_must_fall_on_store_chunks(tmp_path, tiny_pipes):
    pipe = tiny_pipes["tiny-unet"]
    with pytest.raises(ValueError, match="does not fall on the store's sample chunks of 2"):
        trace(pipe, samples=4, steps=2, batch_size=2, store=tmp_path / "a.zarr", only_samples=slice(1, 3))
    run = trace(pipe, samples=4, steps=2, batch_size=2, store=tmp_path / "b.zarr", only_samples=slice(2, 4))
    assert list(run.store.completed()) == [False, False, True, True]
    assert run.store.group.metadata.consolidated_metadata is None  # a task's store: the merge consolidates
