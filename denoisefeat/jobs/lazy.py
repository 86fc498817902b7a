"""Out-of-core reading of a (big, merged) run store: xarray over dask chunks, nothing read until computed.

A cluster job can leave a store much larger than memory.  :func:`open_lazy` opens it with
``xarray.open_zarr(..., chunks={})``: every variable is a dask array whose chunks are the store's
own (one sample chunk x a few steps), so a reduction (``ds["edge_density"].mean("sample")``) or a
selection (``ds["x0"].isel(sample=slice(0, 8))``) reads only the chunks it needs, one at a time::

    ds = open_lazy("runs/study.zarr", group="features")
    profile = ds["edge_density"].mean("sample").compute()      # (step,), streamed chunk by chunk

Needs dask (``pip install "denoisefeat[cluster]"``).  Attribution tables are small (one row per
feature x layer x window x method): read them whole with
:func:`denoisefeat.analyses.table.read_attribution`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["open_lazy"]

_SAMPLE_COORDS = ("seed", "class_label")
_STEP_COORDS = ("timestep", "sigma", "alpha_bar")


def open_lazy(store: str | Path, *, group: str | None = None):
    """Open a run store, or one of its groups, lazily with dask chunks.

    Parameters
    ----------
    store : str or path
        A run store (:func:`denoisefeat.trace`, the cluster jobs).
    group : str, optional
        A group inside it: ``"features"``, ``"acts/mid_block"`` …; default: the run's own arrays.

    Returns
    -------
    xarray.Dataset
        Variables backed by dask arrays chunked like the store; the run's ``sample`` and ``step``
        coordinates (with ``seed``, ``class_label``, ``timestep``, ``alpha_bar``, ``sigma`` where
        present) are attached to a group's variables too.

    Raises
    ------
    ImportError
        dask is not installed.
    denoisefeat.store.NotARunError
        ``store`` is not a denoisefeat store.
    KeyError
        ``group`` does not exist (the message lists the store's groups).
    """
    try:
        import dask.array  # noqa: F401
    except ImportError as err:
        raise ImportError('open_lazy needs dask: pip install "denoisefeat[cluster]" (or dask).') from err
    import xarray as xr

    from denoisefeat.store import RunStore

    run = RunStore.open(store, mode="r")
    if group is not None and not run.holds(group):
        groups = run.group_names()
        raise KeyError(f"The store has no group {group!r}; it has {', '.join(groups) or 'none'}.")
    path = str(run.path)
    ds = xr.open_zarr(path, group=group, chunks={}, consolidated=False, zarr_format=3)
    if group is None:
        return ds.set_coords([c for c in (*_SAMPLE_COORDS, *_STEP_COORDS) if c in ds])
    base = xr.open_zarr(path, chunks={}, consolidated=False, zarr_format=3)
    coords = {}
    for dim, extra in (("sample", _SAMPLE_COORDS), ("step", _STEP_COORDS)):
        if dim in ds.dims and dim in base:
            coords[dim] = base[dim].values
            coords.update({name: (dim, base[name].values) for name in extra if name in base})
    return ds.assign_coords(coords)
