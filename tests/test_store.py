"""The run store: layout, labelled access, refusal of foreign or newer stores, resume after a kill."""

import json

import numpy as np
import pytest
import zarr

from denoisefeat.store import (
    SCHEMA_VERSION,
    IncompleteRunError,
    NotARunError,
    RunExistsError,
    RunMismatchError,
    SchemaVersionError,
    StoreError,
    open_run,
)
from denoisefeat.trajectory import trace


@pytest.fixture()
def pipe(tiny_pipes):
    return tiny_pipes["tiny-class-unet"]


def test_store_layout_and_labels(pipe, tmp_path):
    path = tmp_path / "run.zarr"
    trace(pipe, class_labels=[0, 1, 2, 3, 0], steps=5, seed=7, batch_size=2, store=path)
    run = open_run(path)
    ds = run.dataset
    assert ds["x0"].dims == ("sample", "step", "channel", "y", "x")
    assert ds["images"].dims == ("sample", "step", "rgb", "height", "width")
    assert ds["final"].dims == ("sample", "rgb", "height", "width")
    assert list(ds["seed"].values) == [7, 8, 9, 10, 11]
    assert list(ds["class_label"].values) == [0, 1, 2, 3, 0]
    assert ds["timestep"].dims == ("step",) and "timestep" in ds.coords
    assert run.attrs["scheduler_class"] == "DDIMScheduler"
    assert run.attrs["prediction_type"] == "epsilon"
    meta = zarr.open_group(str(path), mode="r").attrs["denoisefeat"]
    assert meta["schema_version"] == SCHEMA_VERSION
    assert "torch" in meta["package_versions"]
    # writers own whole sample chunks: every per-sample array is chunked by batch_size along sample
    group = zarr.open_group(str(path), mode="r")
    for name in ("xt", "x0", "images", "final", "complete"):
        assert group[name].chunks[0] == 2
    # consolidated metadata is written after the last writer
    assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())


def test_in_memory_and_on_disk_runs_are_the_same(pipe, tmp_path):
    mem = trace(pipe, class_labels=[1, 2], steps=3).dataset
    disk = trace(pipe, class_labels=[1, 2], steps=3, store=tmp_path / "r.zarr").dataset
    for name in ("xt", "x0", "images", "final"):
        np.testing.assert_array_equal(mem[name].values, disk[name].values)


def test_existing_store_is_not_overwritten_unless_asked(pipe, tmp_path):
    path = tmp_path / "run.zarr"
    trace(pipe, class_labels=[1], steps=2, store=path)
    with pytest.raises(RunExistsError, match="--resume"):
        trace(pipe, class_labels=[1], steps=2, store=path)
    trace(pipe, class_labels=[2], steps=2, store=path, overwrite=True)
    assert list(open_run(path).dataset["class_label"].values) == [2]


def test_foreign_folder_is_refused_and_never_deleted(pipe, tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="not a denoisefeat store"):
        trace(pipe, class_labels=[1], steps=2, store=folder, overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"
    with pytest.raises(NotARunError, match="not a zarr v3 group"):
        open_run(folder)


def test_plain_zarr_group_is_not_a_run(tmp_path):
    group = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    group.create_array("data", shape=(3,), dtype="f4")
    with pytest.raises(NotARunError, match="not a denoisefeat store"):
        open_run(tmp_path / "other.zarr")
    with pytest.raises(NotARunError, match="No store"):
        open_run(tmp_path / "missing.zarr")


def test_newer_schema_is_refused(pipe, tmp_path):
    path = tmp_path / "run.zarr"
    trace(pipe, class_labels=[1], steps=2, store=path)
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["denoisefeat"])
    meta["schema_version"] = SCHEMA_VERSION + 1
    group.attrs["denoisefeat"] = meta
    with pytest.raises(SchemaVersionError, match="Upgrade denoisefeat"):
        open_run(path)


def test_missing_parent_folder(pipe, tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        trace(pipe, class_labels=[1], steps=2, store=tmp_path / "no" / "such" / "run.zarr")


class _Killed(RuntimeError):
    pass


def test_killed_run_resumes_to_the_uninterrupted_result(pipe, tmp_path):
    labels = [0, 1, 2, 3, 1, 2]
    reference = trace(pipe, class_labels=labels, steps=5, batch_size=2, store=tmp_path / "ref.zarr").dataset

    # kill the run in the middle of its second sample chunk (after a few denoiser calls)
    calls = {"n": 0}

    def die(module, args, output):
        calls["n"] += 1
        if calls["n"] == 8:
            raise _Killed("simulated kill")

    path = tmp_path / "run.zarr"
    handle = pipe.unet.register_forward_hook(die)
    try:
        with pytest.raises(_Killed):
            trace(pipe, class_labels=labels, steps=5, batch_size=2, store=path)
    finally:
        handle.remove()
    with pytest.raises(IncompleteRunError, match=r"samples 0–1 of 6 are complete, samples 2–5 are not"):
        open_run(path)
    partial = open_run(path, allow_incomplete=True).dataset
    assert np.isnan(partial["final"].values[2:]).all()

    with pytest.raises(RunMismatchError, match="class_labels"):
        trace(pipe, class_labels=[3] * 6, steps=5, batch_size=2, store=path, resume=True)

    calls["n"] = 0
    counter = pipe.unet.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        trace(pipe, class_labels=labels, steps=5, batch_size=2, store=path, resume=True)
    finally:
        counter.remove()
    assert calls["n"] == 2 * 5, "only the two missing sample chunks are recomputed"
    resumed = open_run(path).dataset
    for name in ("xt", "x0", "images", "final"):
        np.testing.assert_array_equal(resumed[name].values, reference[name].values)


def test_step_writer_buffers_at_most_one_step_chunk():
    """Per-step arrays are chunked along step; a writer holds one step chunk, whatever the run length."""
    from denoisefeat.store import RunStore, StepWriter

    store = RunStore.create(None, run_attrs={"what": "test"}, n_samples=16, n_steps=200, chunk_samples=8)
    array = store.ensure_step_array("x0", tail_shape=(3, 64, 64), tail_dims=("channel", "y", "x"), dtype="float32")
    step_chunk = array.chunks[1]
    assert 1 < step_chunk < 200
    assert array.nbytes / array.nchunks <= 2**21
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((8, 200, 3, 64, 64), dtype=np.float32)
    writer = StepWriter(store, slice(8, 16))
    most = 0
    for step in range(200):
        writer.append("x0", step, expected[:, step])
        most = max(most, len(writer.pending().get("x0", [])))
    assert most < step_chunk, "full step chunks are written at once"
    assert writer.pending() == {}
    writer.close()  # waits for the background writes
    np.testing.assert_array_equal(array[8:16], expected)
    assert np.isnan(array[0:8]).all(), "the other writer's chunk is untouched"


def test_is_run_store_tells_stores_from_other_folders(pipe, tmp_path):
    from denoisefeat.store import is_run_store

    path = tmp_path / "run.zarr"
    trace(pipe, class_labels=[1], steps=2, store=path)
    assert is_run_store(path) and is_run_store(str(path))
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("data", shape=(3,), dtype="f4")
    assert not is_run_store(tmp_path / "other.zarr")  # a zarr group denoisefeat did not write
    assert not is_run_store(tmp_path / "missing.zarr") and not is_run_store(tmp_path) and not is_run_store(None)
    (path / "zarr.json").write_text((path / "zarr.json").read_text()[:200])  # damaged metadata: still a store
    assert is_run_store(path)


def test_acts_and_features_layouts_are_the_stores(pipe, tmp_path):
    """The store's named paths and readers match what it writes (``acts/<layer>/<reducer>``, ``features/``)."""
    from denoisefeat.store import RunStore, acts_path, features_path

    path = tmp_path / "run.zarr"
    run = trace(pipe, class_labels=[1, 2], steps=2, store=path, batch_size=1,
                record={"mid_block": ["channel_mean", "full"]})
    group = zarr.open_group(str(path), mode="r")
    assert acts_path("mid_block", "full") == "acts/mid_block/full" and features_path("ssim") == "features/ssim"
    assert sorted(group["acts"]["mid_block"].array_keys()) == run.store.acts_reducers("mid_block") \
        == ["channel_mean", "full"]
    assert group["acts"].attrs["layers"] == run.store.acts_layers() == ["mid_block"]
    assert run.store.acts_reducers("up_blocks.0") == [] and run.store.features_config() == {}
    np.testing.assert_array_equal(run.store.array(acts_path("mid_block", "full"))[...],
                                  group["acts/mid_block/full"][...])
    with pytest.raises(KeyError, match="no array 'nope'"):
        run.store.array("nope")
    store = RunStore.open(path)
    assert not store.features_completed().any() and store.features_completed().shape == (2,)
    store.declare_features({"version": 1, "variables": []})
    store.mark_features_complete([1])
    reopened = RunStore.open(path, mode="r", verify=False).reopened(mode="r")
    assert reopened.features_config() == {"version": 1, "variables": []}
    assert reopened.features_completed().tolist() == [False, True]
    assert zarr.open_group(str(path), mode="r", use_consolidated=False)["features/complete"][...].tolist() == [
        False, True]
    store.mark_features_complete(slice(0, 2), complete=False)
    assert not store.features_completed().any()
    store.fsync((0, 1))  # the chunk files of sample 0 exist and are flushed; nothing else is touched
    with store.replacing_group("features") as staged:  # features(..., overwrite=True) replaces the group so
        store.declare_features({"version": 2, "variables": []}, group=staged)
        assert store.features_config() == {"version": 1, "variables": []}  # the old group until the block ends
        assert store.group_names() == ["acts"]  # the staged group is no group of the store
    assert store.features_config() == {"version": 2, "variables": []} and not store.features_completed().any()


def test_an_attribute_added_later_does_not_stop_an_old_store_resuming(tmp_path):
    """``label_set`` is newer than the first stores: absent there it is compatible; present it must match."""
    from denoisefeat.tiny import TINY_BUILDERS

    pipe = TINY_BUILDERS["tiny-class-unet"]()
    path = tmp_path / "run.zarr"
    trace(pipe, class_labels=[1, 2], steps=2, store=path, batch_size=1, only_samples=slice(0, 1), resume=True)
    assert "label_set" not in open_run(path, allow_incomplete=True).attrs  # as a store written before label_set
    pipe.register_to_config(label_set="diffshapes")
    run = trace(pipe, class_labels=[1, 2], steps=2, store=path, batch_size=1, resume=True)
    assert run.store.completed().all()
    labelled = tmp_path / "labelled.zarr"
    trace(pipe, class_labels=[1], steps=2, store=labelled)
    assert open_run(labelled).attrs["label_set"] == "diffshapes"
    pipe.register_to_config(label_set="other")
    with pytest.raises(RunMismatchError, match="label_set"):
        trace(pipe, class_labels=[1], steps=2, store=labelled, resume=True)


def test_a_writer_owns_whole_sample_chunks():
    """One check of chunk ownership for the trace's tasks (only_samples) and the features' (samples)."""
    from denoisefeat.store import RunStore

    store = RunStore.create(None, run_attrs={}, n_samples=10, n_steps=2, chunk_samples=4)
    assert store.owned_chunks(None) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert store.owned_chunks(slice(4, 10)) == [slice(4, 8), slice(8, 10)]
    assert store.owned_chunks(slice(0, 4), option="only_samples") == [slice(0, 4)]
    with pytest.raises(ValueError, match=r"only_samples=2:6 does not fall on the store's sample chunks of 4 .*"
                                         r"e\.g\. only_samples=0:8"):
        store.owned_chunks(slice(2, 6), option="only_samples")
    with pytest.raises(ValueError, match="non-empty range with step 1"):
        store.owned_chunks(slice(4, 4))
    with pytest.raises(ValueError, match="non-empty range with step 1"):
        store.owned_chunks(slice(0, 8, 2))
    with pytest.raises(TypeError, match="must be a slice"):
        store.owned_chunks((0, 4))
