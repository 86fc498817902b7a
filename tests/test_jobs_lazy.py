"""open_lazy: a store's features read through dask, chunk by chunk, never all at once."""

import numpy as np
import pytest

from denoisefeat.jobs import open_lazy
from denoisefeat.trajectory import trace


def test_reductions_read_only_the_chunks_they_need(tmp_path, tiny_pipes):
    dask = pytest.importorskip("dask")
    from denoisefeat.step_features import features, load_features

    store = tmp_path / "run.zarr"
    trace(tiny_pipes["tiny-class-unet"], samples=6, class_labels=[0, 1, 2, 3, 0, 1], steps=3, batch_size=2,
          store=store)
    features(str(store), metrics=["edge_density"])
    eager = load_features(str(store))

    ds = open_lazy(store, group="features")
    edge = ds["edge_density"]
    assert isinstance(edge.data, dask.array.Array) and edge.data.chunks[0] == (2, 2, 2)  # the store's chunks
    assert list(ds["sample"].values) == [0, 1, 2, 3, 4, 5] and "timestep" in ds.coords
    profile = edge.mean("sample")
    assert isinstance(profile.data, dask.array.Array)  # nothing computed yet
    np.testing.assert_allclose(profile.compute().values, eager["edge_density"].mean("sample").values, rtol=1e-6)
    run = open_lazy(store)
    assert isinstance(run["x0"].data, dask.array.Array) and "seed" in run.coords

    # Corrupt the chunk of samples 4-5: what does not touch it still computes, what does fails.
    chunk = store / "features" / "edge_density" / "c" / "2" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"not a zarr chunk")
    ds = open_lazy(store, group="features")
    first = ds["edge_density"].isel(sample=slice(0, 4)).mean().compute()
    np.testing.assert_allclose(first.values, eager["edge_density"][:4].mean().values, rtol=1e-6)
    with pytest.raises(Exception):  # noqa: B017  (the codec's own error)
        ds["edge_density"].mean().compute()
    with pytest.raises(KeyError, match="no group 'featurez'"):
        open_lazy(store, group="featurez")
