"""Capture close to the floor: the writer pool, the per-step host copy, the codecs, batched decoding."""

import os

import numpy as np
import pytest
import torch
import zarr

from denoisefeat import trace
from denoisefeat.hooks import record
from denoisefeat.models import load_pipeline
from denoisefeat.store import COMPRESSORS, FAST_COMPRESSORS, RunStore, StepWriter, StoreError, open_run
from denoisefeat.trajectory import DenoisingLoop, _ChunkCapture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECORD = {"mid_block": ["channel_mean", "full"], "up_blocks.0": "spatial_energy"}
RUN = dict(class_labels=[0, 1, 2, 3, 4], steps=5, batch_size=2, guidance_scale=2.0, seed=3)


def _chunk_files(path) -> dict[str, bytes]:
    """Every chunk file of a store (not the metadata), by path."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            if name != "zarr.json":
                full = os.path.join(root, name)
                files[os.path.relpath(full, path)] = open(full, "rb").read()
    return files


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-class-unet")


@pytest.fixture(scope="module")
def stores(pipe, tmp_path_factory):
    """The same run written by one writer thread and by a pool of four."""
    tmp = tmp_path_factory.mktemp("capture")
    out = {}
    for workers in (1, 4):
        out[workers] = trace(pipe, store=tmp / f"w{workers}.zarr", record=RECORD, record_steps=[0, 2, 3, 4],
                             writers=workers, **RUN)
    return out


def test_writer_pool_writes_the_same_chunk_files(stores):
    one, pool = (_chunk_files(stores[w].path) for w in (1, 4))
    assert len(one) > 20 and one.keys() == pool.keys()
    assert [name for name in one if one[name] != pool[name]] == []


def test_stored_steps_equal_an_independent_capture_bit_for_bit(pipe, stores):
    """xt, x0, images and every record equal the loop's own tensors and the in-memory recording."""
    from denoisefeat.options import RunOptions

    options = RunOptions.of(dict(RUN), caller="test")
    request, scheduler = options.request(pipe)
    loop = DenoisingLoop(pipe, request, scheduler)
    seen = {"xt": {}, "x0": {}, "images": {}}

    def on_step(step, x, x0):
        for name, value in (("xt", x), ("x0", x0), ("images", loop.to_images(x0))):
            seen[name].setdefault(step, []).append(value.float().numpy().copy())

    with record(pipe, RECORD, steps=[0, 2, 3, 4], clock=loop.clock) as rec:
        finals = [loop.run(chunk, on_step=on_step) for chunk in loop.chunks(2)]
    ds = stores[4].dataset
    for name, by_step in seen.items():
        expected = np.stack([np.concatenate(by_step[s]) for s in sorted(by_step)], axis=1)
        np.testing.assert_array_equal(ds[name].values, expected)
    np.testing.assert_array_equal(ds["final"].values, torch.cat(finals).numpy())
    for layer, reducers in RECORD.items():
        for reducer in [reducers] if isinstance(reducers, str) else reducers:
            stored = stores[4].acts(layer, reducer)
            expected = rec.acts(layer, reducer)
            np.testing.assert_array_equal(stored.sel(step=expected.step).values, expected.values)
            assert np.isnan(stored.sel(step=1).values).all()


def test_full_activations_use_the_fast_codec_and_the_rest_the_default(stores):
    group = stores[4].store.group
    assert tuple(group["acts/mid_block/full"].compressors) == FAST_COMPRESSORS
    for name in ("xt", "x0", "images", "acts/mid_block/channel_mean", "acts/up_blocks.0/spatial_energy"):
        assert tuple(group[name].compressors) == COMPRESSORS


def test_streamed_chunks_equal_one_plain_zarr_write_of_the_same_values(stores, tmp_path):
    """The writer's chunk files are those of writing each whole array at once with the same codec."""
    src = stores[4].store.group
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w", zarr_format=3)
    for name in ("xt", "x0", "images", "acts/mid_block/full", "acts/mid_block/channel_mean"):
        array = src[name]
        copy = ref.create_array(name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                                fill_value=array.fill_value, compressors=array.compressors,
                                dimension_names=array.metadata.dimension_names)
        copy[...] = array[...]
        mine = {k: v for k, v in _chunk_files(stores[4].path).items() if k.startswith(name + "/c")}
        theirs = {k: v for k, v in _chunk_files(tmp_path / "ref.zarr").items() if k.startswith(name + "/c")}
        assert mine and mine == theirs, name


def test_arrays_made_by_the_writer_jobs_have_the_metadata_of_an_eager_create(stores, tmp_path):
    """A fresh store's step arrays are created by the writer jobs (attributes in the create): their zarr.json
    equals creating each array up front and then setting its attributes, as the store did before."""
    import json

    src = stores[4].store
    assert src.fresh and not RunStore.open(src.path).fresh
    ref = zarr.open_group(str(tmp_path / "eager.zarr"), mode="w", zarr_format=3)
    names = ["xt", "x0", "images", "acts/mid_block/full", "acts/mid_block/channel_mean",
             "acts/up_blocks.0/spatial_energy"]
    for name in names:
        array = src.group[name]
        eager = ref.create_array(name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                                 fill_value=array.fill_value, compressors=array.compressors,
                                 dimension_names=array.metadata.dimension_names)
        if array.attrs:
            eager.attrs.update(array.attrs.asdict())
        mine = (src.path / name / "zarr.json").read_text()
        theirs = (tmp_path / "eager.zarr" / name / "zarr.json").read_text()
        assert list(json.loads(mine).items()) == list(json.loads(theirs).items()), name
    assert src.group["acts/mid_block/channel_mean"].attrs["branches"] == ["uncond", "cond"]


def test_a_step_array_made_elsewhere_with_other_chunks_is_refused(tmp_path):
    """Two writers of one fresh store that disagree on an array's chunks: the writer says so, nothing is mixed."""
    store = RunStore.create(tmp_path / "r.zarr", run_attrs={"what": "test"}, n_samples=2, n_steps=4,
                            chunk_samples=2)
    store.ensure_array("x", shape=(2, 4, 3), dims=("sample", "step", "channel"), dtype="float32",
                       chunks=(2, 1, 3))
    writer = StepWriter(store, slice(0, 2), workers=1)
    writer.declare("x", tail_dims=("channel",), dtype="float32")
    for step in range(4):
        writer.append("x", step, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(StoreError, match="other writer with chunks"):
        writer.close()


def test_a_kill_between_chunks_resumes_to_the_same_files(pipe, stores, tmp_path):
    """A run that dies after its first sample chunk, resumed with another pool size, equals the whole run."""
    path = tmp_path / "killed.zarr"
    calls = {"n": 0}

    def die(module, args):
        calls["n"] += 1
        if calls["n"] == RUN["steps"] + 2:  # inside the second sample chunk
            raise KeyboardInterrupt

    handle = pipe.unet.register_forward_pre_hook(die)
    try:
        with pytest.raises(KeyboardInterrupt):
            trace(pipe, store=path, record=RECORD, record_steps=[0, 2, 3, 4], writers=3, **RUN)
    finally:
        handle.remove()
    trace(pipe, store=path, record=RECORD, record_steps=[0, 2, 3, 4], writers=2, resume=True, **RUN)
    whole = _chunk_files(stores[1].path)
    resumed = _chunk_files(path)
    assert resumed.keys() == whole.keys()
    assert [name for name in whole if whole[name] != resumed[name]] == []


def test_deferred_copies_pack_a_step_and_split_it_back():
    """The CUDA path's packing (one copy per dtype per step), exercised on the CPU."""
    store = RunStore.create(None, run_attrs={"what": "test"}, n_samples=2, n_steps=3, chunk_samples=2)
    writer = StepWriter(store, slice(0, 2), workers=2)
    capture = _ChunkCapture(writer, torch.device("cpu"))
    capture.deferred = True
    for name in ("a", "b", "c"):
        writer.declare(name, tail_dims=("channel",) * (1 if name != "c" else 2),
                       dtype="float16" if name == "b" else "float32")
    rng = np.random.default_rng(0)
    values = {"a": rng.standard_normal((3, 2, 4)), "b": rng.standard_normal((3, 2, 5)),
              "c": rng.standard_normal((3, 2, 2, 3))}
    for step in range(3):
        for name, v in values.items():
            tensor = torch.from_numpy(v[step]).to(torch.float16 if name == "b" else torch.float32)
            capture.add(name, step, tensor)
            tensor.zero_()  # the module reuses its buffer: the staged copy must not change
        capture.flush()
    writer.close()
    for name, v in values.items():
        dtype = np.float16 if name == "b" else np.float32
        np.testing.assert_array_equal(store.group[name][...], v.swapaxes(0, 1).astype(dtype))
        assert store.group[name].dtype == dtype


def test_decode_every_k_steps_in_batches(pipe, stores, tmp_path):
    full = stores[1].dataset["images"].values
    for every, batch in ((2, 1), (2, 3), (3, 2)):
        run = trace(pipe, store=tmp_path / f"d{every}{batch}.zarr", decode_every=every, decode_batch=batch, **RUN)
        images = open_run(run.path).dataset["images"].values  # opening verifies every chunk is there
        decoded = sorted({*range(0, RUN["steps"], every), RUN["steps"] - 1})
        np.testing.assert_array_equal(images[:, decoded], full[:, decoded])
        assert np.isnan(np.delete(images, decoded, axis=1)).all()
        assert run.store.damage(decode=True) == []
        assert run.attrs["extra"]["decode_every"] == every
        assert run.store.group["images"].chunks[1] % every == 0 or run.store.group["images"].chunks[1] == RUN["steps"]


def test_batched_vae_decoding_equals_one_step_at_a_time(tiny_pipes):
    sd = tiny_pipes["tiny-sd"]
    kw = dict(prompts=["a red square", "a blue circle"], steps=4, seed=0, keep=("images",))
    one = trace(sd, decode_batch=1, **kw)["images"].values
    four = trace(sd, decode_batch=4, **kw)["images"].values
    np.testing.assert_allclose(four, one, rtol=0, atol=1e-6)


def test_fp16_model_stores_fp16_activations(tmp_path):
    pipe = load_pipeline("tiny-class-unet", dtype=torch.float16)
    kw = dict(class_labels=[0, 1], steps=3, seed=0, record={"mid_block": ["channel_mean", "full"]})
    run = trace(pipe, store=tmp_path / "half.zarr", **kw)
    for reducer in ("channel_mean", "full"):
        assert run.store.group[f"acts/mid_block/{reducer}"].dtype == np.float16
    with record(pipe, {"mid_block": "full"}) as rec:  # the in-memory recording keeps float32 of the same values
        trace(pipe, keep=(), **{**kw, "record": None})
    np.testing.assert_array_equal(run.acts("mid_block", "full").values.astype(np.float32),
                                  rec.acts("mid_block").values)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"decode_every": 0}, "decode_every must be a positive integer"),
    ({"decode_batch": 1.5}, "decode_batch must be a positive integer"),
    ({"writers": True}, "writers must be a positive integer"),
])
def test_bad_capture_options_are_refused(pipe, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        trace(pipe, store=tmp_path / "bad.zarr", **RUN, **kwargs)
    assert not (tmp_path / "bad.zarr").exists()
