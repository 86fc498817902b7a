"""The run store: a zarr v3 group holding every denoising step of every sample, self-described.

Layout (``S`` samples, ``T`` loop steps; dimension names are stored with each array, so
``xarray.open_zarr`` labels them)::

    run.zarr/
      attrs["denoisefeat"]   schema version, package versions, creation time
      attrs["run"]           model id, pipeline and scheduler config, prediction type, seeds,
                             prompts or labels, guidance, sizes, chunking (what ``trace`` was asked)
      sample (sample)  seed (sample)  [class_label (sample)]
      step (step)  timestep (step)  alpha_bar (step)  [sigma (step)]
      xt      (sample, step, channel, y, x)       x_t as the scheduler holds it (latents for latent models)
      x0      (sample, step, channel, y, x)       the scheduler's x̂0, model space
      images  (sample, step, rgb, height, width)  x̂0 in pixel space, [0, 1] (VAE-decoded for latent models)
      final   (sample, rgb, height, width)        the pipeline's output, [0, 1]
      complete (sample)                           True once a sample chunk's data is all written
      acts/<layer>/<reducer>  (sample, [branch,] step, ...)   recorded activations

Concurrency: a writer owns whole sample chunks (``chunk_samples`` consecutive samples); every
per-sample array is chunked along ``sample`` by ``chunk_samples``, so two writers never touch the
same chunk file.  ``complete`` is written last, after a chunk's data: a sample chunk is either
marked complete and whole, or redone.  Nothing is ever overwritten unless the caller asks for it,
and a folder that is not a denoisefeat store is never deleted.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

__all__ = [
    "SCHEMA_VERSION",
    "IncompleteRunError",
    "NotARunError",
    "Run",
    "RunExistsError",
    "RunMismatchError",
    "RunStore",
    "SchemaVersionError",
    "StepWriter",
    "StoreError",
    "open_run",
]

SCHEMA_VERSION = 1
_MARKER = "denoisefeat"
_TARGET_CHUNK_BYTES = 2**21  # 2 MiB: "chunks ≥ 1 MB" while keeping the step buffer small


class StoreError(ValueError):
    """Base class of the store's errors: each message says what is wrong and what to do."""


class NotARunError(StoreError):
    """The path is missing, not a zarr group, or a zarr group denoisefeat did not write."""


class SchemaVersionError(StoreError):
    """The store was written by a newer denoisefeat."""


class IncompleteRunError(StoreError):
    """Some sample chunks were never completed (a killed or running writer)."""


class RunExistsError(StoreError):
    """A store already exists where a new one was to be created."""


class RunMismatchError(StoreError):
    """Resuming a store that was started with different settings."""


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("denoisefeat", "torch", "diffusers", "numpy", "zarr"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _jsonable(value):
    """Attributes must be JSON: turn numpy scalars, tuples and paths into plain values."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _ranges(mask: np.ndarray) -> str:
    """``[T, T, F, T]`` → ``"0–1, 3"``: the indices where ``mask`` is true, as ranges."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return "none"
    parts, start = [], idx[0]
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if b != a + 1:
            parts.append((start, a))
            start = b
    parts.append((start, idx[-1]))
    return ", ".join(f"{s}" if s == e else f"{s}–{e}" for s, e in parts)


def _is_run_group(path: Path) -> bool:
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return False
    return _MARKER in group.attrs


class RunStore:
    """Write access to a run store.  Use :func:`open_run` to read one.

    Create with :meth:`create` (a new store) or :meth:`open` (an existing one, to resume or to
    add arrays).  ``path=None`` keeps the store in memory.
    """

    def __init__(self, group: zarr.Group, path: Path | None):
        self.group = group
        self.path = path

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path | None,
        *,
        run_attrs: Mapping,
        n_samples: int,
        n_steps: int,
        chunk_samples: int,
        overwrite: bool = False,
    ) -> RunStore:
        """Create a new store with its attributes and the ``complete`` markers.

        Parameters
        ----------
        path : str, path or None
            Folder to create (conventionally ``*.zarr``); ``None`` for an in-memory store.
        run_attrs : mapping
            What produced the run (JSON-serialisable); stored as ``attrs["run"]``.
        n_samples, n_steps : int
        chunk_samples : int
            Samples per chunk along ``sample``: the unit a writer owns.
        overwrite : bool
            Replace an existing denoisefeat store at ``path``.  A folder that is not a
            denoisefeat store is never replaced.

        Returns
        -------
        RunStore
        """
        if path is None:
            store = zarr.storage.MemoryStore()
            resolved = None
        else:
            resolved = Path(path).expanduser().resolve()
            if resolved.exists():
                if not _is_run_group(resolved):
                    raise RunExistsError(
                        f"{str(resolved)!r} exists and is not a denoisefeat store; refusing to touch it. "
                        "Choose another path."
                    )
                if not overwrite:
                    raise RunExistsError(
                        f"A denoisefeat store already exists at {str(resolved)!r}. Pass resume=True (CLI: --resume) "
                        "to complete it, or overwrite=True (--overwrite) to replace it."
                    )
                shutil.rmtree(resolved)
            if not resolved.parent.is_dir():
                raise StoreError(f"Cannot create {str(resolved)!r}: the folder {str(resolved.parent)!r} does not exist.")
            store = str(resolved)
        group = zarr.open_group(store, mode="w-" if path is not None else "w", zarr_format=3)
        group.attrs.update(
            {
                _MARKER: {
                    "schema_version": SCHEMA_VERSION,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "package_versions": _package_versions(),
                },
                "run": _jsonable(dict(run_attrs)),
                "layout": {"n_samples": n_samples, "n_steps": n_steps, "chunk_samples": chunk_samples},
            }
        )
        self = cls(group, resolved)
        self.ensure_array("complete", shape=(n_samples,), dims=("sample",), dtype=bool, fill_value=False)
        self.write_coordinate("sample", np.arange(n_samples), dim="sample")
        return self

    @classmethod
    def open(cls, path: str | Path | zarr.Group, *, mode: str = "r+") -> RunStore:
        """Open an existing store, checking that it is a denoisefeat store this version can read."""
        if isinstance(path, zarr.Group):
            group, resolved = path, None
        else:
            resolved = Path(path).expanduser().resolve()
            if not resolved.exists():
                raise NotARunError(f"No store at {str(resolved)!r}.")
            try:
                group = zarr.open_group(str(resolved), mode=mode)
            except Exception as error:
                raise NotARunError(
                    f"{str(resolved)!r} is not a zarr v3 group ({type(error).__name__}); it is not a denoisefeat store."
                ) from error
        meta = group.attrs.get(_MARKER)
        if not isinstance(meta, Mapping) or "schema_version" not in meta or "run" not in group.attrs:
            raise NotARunError(
                f"{str(resolved or 'the group')!r} is a zarr group but not a denoisefeat store "
                "(no denoisefeat attributes); denoisefeat will not read or modify it."
            )
        if int(meta["schema_version"]) > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{str(resolved)!r} has store schema {meta['schema_version']}, newer than this denoisefeat "
                f"understands ({SCHEMA_VERSION}). Upgrade denoisefeat (pip install -U denoisefeat)."
            )
        return cls(group, resolved)

    # -- properties ---------------------------------------------------------------------------
    @property
    def run_attrs(self) -> dict:
        return dict(self.group.attrs["run"])

    @property
    def n_samples(self) -> int:
        return int(self.group.attrs["layout"]["n_samples"])

    @property
    def n_steps(self) -> int:
        return int(self.group.attrs["layout"]["n_steps"])

    @property
    def chunk_samples(self) -> int:
        return int(self.group.attrs["layout"]["chunk_samples"])

    def differing_attrs(self, run_attrs: Mapping) -> list[str]:
        """Keys whose values differ between ``run_attrs`` and the store's (empty: the same run)."""
        new, old = _jsonable(dict(run_attrs)), self.run_attrs
        return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))

    def sample_chunks(self) -> list[slice]:
        """The sample ranges writers own, in order."""
        n, c = self.n_samples, self.chunk_samples
        return [slice(s, min(s + c, n)) for s in range(0, n, c)]

    def completed(self) -> np.ndarray:
        """Boolean (sample,): which samples are marked complete."""
        return np.asarray(self.group["complete"][:], dtype=bool)

    def incomplete_chunks(self) -> list[slice]:
        done = self.completed()
        return [chunk for chunk in self.sample_chunks() if not done[chunk].all()]

    # -- writing -----------------------------------------------------------------------------
    def ensure_array(
        self,
        name: str,
        *,
        shape: Sequence[int],
        dims: Sequence[str],
        dtype,
        chunks: Sequence[int] | None = None,
        fill_value=None,
        attrs: Mapping | None = None,
    ) -> zarr.Array:
        """Create array ``name`` (a path inside the group) or check an existing one matches.

        Per-sample arrays are chunked along ``sample`` by ``chunk_samples`` so writers never
        share a chunk; the other chunk sizes default to whole axes.
        """
        shape = tuple(int(s) for s in shape)
        if len(dims) != len(shape):
            raise ValueError(f"{name}: {len(dims)} dimension names for a {len(shape)}-d array")
        if name in self.group:
            array = self.group[name]
            if tuple(array.shape) != shape or np.dtype(array.dtype) != np.dtype(dtype):
                raise RunMismatchError(
                    f"Array {name!r} exists with shape {array.shape} and dtype {array.dtype}, "
                    f"not {shape} and {np.dtype(dtype)}: the store was made by a different run."
                )
            return array
        if chunks is None:
            chunks = tuple(self.chunk_samples if d == "sample" else s for d, s in zip(dims, shape, strict=True))
        if fill_value is None:
            fill_value = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0
        try:
            array = self.group.create_array(
                name, shape=shape, chunks=tuple(chunks), dtype=dtype, dimension_names=tuple(dims),
                fill_value=fill_value,
            )
        except zarr.errors.ContainsArrayError:  # another writer created it first
            return self.ensure_array(name, shape=shape, dims=dims, dtype=dtype, chunks=chunks, fill_value=fill_value)
        if attrs:
            array.attrs.update(_jsonable(dict(attrs)))
        return array

    def step_chunk_size(self, bytes_per_sample_step: int) -> int:
        """Steps per chunk so that one chunk holds at most about 2 MiB (at least one step, at most all)."""
        per_step = max(1, bytes_per_sample_step * self.chunk_samples)
        return int(min(self.n_steps, max(1, _TARGET_CHUNK_BYTES // per_step)))

    def ensure_step_array(self, name: str, *, tail_shape: Sequence[int], tail_dims: Sequence[str], dtype,
                          lead_dims: Sequence[str] = ("sample", "step"), lead_shape: Sequence[int] | None = None,
                          attrs: Mapping | None = None) -> zarr.Array:
        """A ``(sample, [branch,] step, *tail)`` array chunked by sample chunk × about 2 MiB of steps."""
        if lead_shape is None:
            lead_shape = (self.n_samples, self.n_steps)
        itemsize = np.dtype(dtype).itemsize
        per_sample_step = itemsize * int(np.prod(tail_shape, dtype=np.int64))
        per_sample_step *= int(np.prod(lead_shape[1:-1], dtype=np.int64))  # a branch axis between sample and step
        step_chunk = self.step_chunk_size(per_sample_step)
        chunks = (self.chunk_samples, *lead_shape[1:-1], step_chunk, *tail_shape)
        return self.ensure_array(
            name, shape=(*lead_shape, *tail_shape), dims=(*lead_dims, *tail_dims), dtype=dtype, chunks=chunks,
            attrs=attrs,
        )

    def write_coordinate(self, name: str, values, *, dim: str) -> None:
        """Write a small 1-d coordinate (``timestep``, ``seed``, …) in one go, once."""
        values = np.asarray(values)
        array = self.ensure_array(name, shape=values.shape, dims=(dim,), dtype=values.dtype, chunks=values.shape)
        array[...] = values

    def mark_complete(self, samples: slice) -> None:
        """Mark ``samples`` done; call only after all their data is written."""
        self.group["complete"][samples] = True

    def finalize(self) -> None:
        """Consolidate metadata (after the last writer) so readers open the store in one read."""
        if self.path is not None:
            import warnings

            with warnings.catch_warnings():  # zarr says consolidated metadata is not in the v3 spec yet
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(str(self.path))


class StepWriter:
    """Buffers per-step arrays of one sample chunk and writes them a step chunk at a time.

    Memory is bounded by one sample chunk × one step chunk of every array (plus at most two step
    chunks in flight), whatever the number of steps.  Each write covers whole chunks, so nothing is
    read back and rewritten.  Writes run on one background thread so that compression and disk I/O
    overlap with the denoiser; :meth:`close` waits for them and re-raises any error.

    Parameters
    ----------
    store : RunStore
    samples : slice
        The sample chunk this writer owns.
    """

    _MAX_IN_FLIGHT = 2

    def __init__(self, store: RunStore, samples: slice):
        from concurrent.futures import ThreadPoolExecutor

        self.store = store
        self.samples = samples
        self._declared: dict[str, tuple[tuple[str, ...], str, dict]] = {}
        self._steps: dict[str, frozenset[int] | None] = {}
        self._arrays: dict[str, tuple[zarr.Array, int]] = {}
        self._buffers: dict[str, dict[int, np.ndarray]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="denoisefeat-writer")
        self._in_flight: list = []

    def declare(self, name: str, *, tail_dims: Sequence[str], dtype, lead_dims: Sequence[str] = ("sample", "step"),
                lead_shape: Sequence[int] | None = None, attrs: Mapping | None = None,
                steps: frozenset[int] | None = None) -> None:
        """Say how to create ``name`` when its first step arrives (its trailing shape is known then).

        ``steps``: the only steps that will be appended (``None``: all), so that a step chunk is
        written as soon as its selected steps are in.
        """
        self._steps[name] = steps
        self._declared[name] = (tuple(tail_dims), dtype, {"lead_dims": tuple(lead_dims), "lead_shape": lead_shape,
                                                          "attrs": attrs})

    def declared(self, name: str) -> bool:
        return name in self._declared

    def _array(self, name: str, data: np.ndarray) -> tuple[zarr.Array, int]:
        if name not in self._arrays:
            if name in self._declared:
                tail_dims, dtype, extra = self._declared[name]
                n_lead = len(extra["lead_dims"]) - 1  # the data has the sample axis (chunk) but not step
                array = self.store.ensure_step_array(name, tail_shape=data.shape[n_lead:], tail_dims=tail_dims,
                                                     dtype=dtype, **extra)
            else:
                array = self.store.group[name]
            step_axis = list(array.metadata.dimension_names).index("step")
            self._arrays[name] = (array, step_axis)
        return self._arrays[name]

    def append(self, name: str, step: int, data: np.ndarray) -> None:
        """Add step ``step`` of array ``name``: ``data`` is one step of the chunk's samples (no step axis)."""
        data = np.asarray(data)
        array, step_axis = self._array(name, data)
        step_chunk = array.chunks[step_axis]
        buffer = self._buffers.setdefault(name, {})
        buffer[step] = data
        first = (step // step_chunk) * step_chunk
        last = min(first + step_chunk, array.shape[step_axis])
        selected = self._steps.get(name)
        expected = [s for s in range(first, last) if selected is None or s in selected]
        if all(s in buffer for s in expected):
            if len(expected) == last - first:
                block = np.stack([buffer.pop(s) for s in expected], axis=step_axis)
                self._submit(array, step_axis, slice(first, last), block)
            else:  # a partial step chunk: write the selected steps one by one
                for s in expected:
                    self._submit(array, step_axis, s, buffer.pop(s))

    def _submit(self, array, step_axis, steps, block) -> None:
        region = [slice(None)] * array.ndim
        region[0] = self.samples
        region[step_axis] = steps
        while len(self._in_flight) >= self._MAX_IN_FLIGHT:  # back-pressure bounds memory
            self._in_flight.pop(0).result()
        block = block.astype(array.dtype, copy=False)
        self._in_flight.append(self._executor.submit(array.__setitem__, tuple(region), block))

    def pending(self) -> dict[str, list[int]]:
        """Steps still buffered, by array (empty once every step chunk is whole)."""
        return {name: sorted(b) for name, b in self._buffers.items() if b}

    def close(self) -> None:
        """Write what is still buffered (runs that record only some steps), wait for every write."""
        try:
            for name, buffer in self._buffers.items():
                array, step_axis = self._arrays[name]
                for step in sorted(buffer):
                    self._submit(array, step_axis, step, buffer.pop(step))
            for future in self._in_flight:
                future.result()
        finally:
            self._in_flight.clear()
            self._executor.shutdown(wait=True)


@dataclass
class Run:
    """A run store opened for reading, with labelled (xarray) views.

    Attributes
    ----------
    store : RunStore
    """

    store: RunStore

    @property
    def path(self) -> Path | None:
        return self.store.path

    @property
    def attrs(self) -> dict:
        """What produced the run (``attrs["run"]`` of the store)."""
        return self.store.run_attrs

    @property
    def dataset(self):
        """The whole run as an ``xarray.Dataset`` (lazy: arrays are read when used)."""
        import xarray as xr

        ds = xr.open_zarr(self.store.group.store, consolidated=False, zarr_format=3, chunks=None)
        coords = [c for c in ("seed", "class_label", "timestep", "sigma", "alpha_bar") if c in ds]
        return ds.set_coords(coords)

    def __getitem__(self, name: str):
        return self.dataset[name]

    def layers(self) -> list[str]:
        """Layers with recorded activations, in the order they were recorded."""
        if "acts" not in self.store.group:
            return []
        return list(self.store.group["acts"].attrs.get("layers", []))

    def acts(self, layer: str, reducer: str | None = None):
        """Recorded activations of ``layer`` as an ``xarray.DataArray`` (sample, [branch,] step, …).

        Parameters
        ----------
        layer : str
            The module path it was recorded under.
        reducer : str, optional
            Needed only when the layer was recorded with several reducers.
        """
        import difflib

        import xarray as xr

        layers = self.layers()
        if layer not in layers:
            close = difflib.get_close_matches(layer, layers, n=3, cutoff=0.4)
            hint = f" Close: {', '.join(close)}." if close else ""
            raise KeyError(f"No activations recorded for {layer!r}.{hint} Recorded: {', '.join(layers) or 'none'}.")
        group = self.store.group["acts"][layer]
        reducers = sorted(group.array_keys())
        if reducer is None:
            if len(reducers) != 1:
                raise KeyError(f"{layer!r} was recorded with reducers {reducers}; pass reducer=...")
            reducer = reducers[0]
        if reducer not in reducers:
            raise KeyError(f"{layer!r} has no {reducer!r} record; it has {reducers}.")
        array = group[reducer]
        dims = list(array.metadata.dimension_names)
        data = xr.DataArray(array[...], dims=dims, name=f"{layer}/{reducer}", attrs=dict(array.attrs))
        ds = self.dataset
        coords = {d: ds[d].values for d in ("sample", "step") if d in dims}
        if "timestep" in ds:
            coords["timestep"] = ("step", ds["timestep"].values)
        if "branch" in dims:
            coords["branch"] = list(array.attrs.get("branches", []))
        if "band" in dims:
            coords["band"] = list(array.attrs.get("bands", []))
        return data.assign_coords(coords)


def open_run(path: str | Path, *, allow_incomplete: bool = False) -> Run:
    """Open a run store for reading.

    Parameters
    ----------
    path : str or path
        A store written by :func:`denoisefeat.trace` (or the cluster jobs).
    allow_incomplete : bool
        Open a store some of whose samples are not complete (their values are NaN).

    Returns
    -------
    Run

    Raises
    ------
    NotARunError
        Missing path, not zarr, or a zarr group denoisefeat did not write.
    SchemaVersionError
        Written by a newer denoisefeat.
    IncompleteRunError
        Some samples are not complete; the message lists them and how to resume.
    """
    store = RunStore.open(path, mode="r")
    if not allow_incomplete:
        done = store.completed()
        if not done.all():
            raise IncompleteRunError(
                f"{str(store.path)!r} is half-written: samples {_ranges(done)} of {store.n_samples} are complete, "
                f"samples {_ranges(~done)} are not. Resume it with the same settings and resume=True "
                "(CLI: `denoisefeat extract ... --resume`), or open_run(..., allow_incomplete=True) to read what is there."
            )
    return Run(store)
