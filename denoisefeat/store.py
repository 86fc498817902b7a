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
      acts/<layer>/<reducer>  (sample, [branch,] step, ...)   recorded activations (:func:`acts_path`);
                              group attrs: ``layers`` (in the order they were recorded)
      attention/<layer>       (sample, step, token, y, x)      cross-attention maps of the conditional
                                                               branch (:mod:`denoisefeat.hooks.attention`);
                              group attrs: ``layers``, ``words`` (per prompt: [word, start, stop] token spans)
      features/<variable>     (sample, step, ...)             per-step features (:mod:`denoisefeat.step_features`,
                                                               :func:`features_path`); group attrs: ``config``;
                                                               ``features/complete (sample)`` their own marker
      attribution/<table>                                      attribution tables (:mod:`denoisefeat.analyses.table`,
                                                               :func:`attribution_path`)
      attribution/<table>/images/                              the final images a scan kept (``keep_images``,
                                                               :func:`cell_images_path`)

Every group path is made here (:func:`acts_path`, :func:`attention_path`, :func:`features_path`,
:func:`attribution_path`, :func:`cell_images_path`) and every group is read and written through
:class:`RunStore` / :class:`Run` methods: no other module indexes the zarr group
(``tests/test_structure.py``), so a layout changes in this module only.

Concurrency: a writer owns whole sample chunks (``chunk_samples`` consecutive samples); every
per-sample array is chunked along ``sample`` by ``chunk_samples``, so two writers never touch the
same chunk file.  ``complete`` is written last, after a chunk's data: a sample chunk is either
marked complete and whole, or redone.  Nothing is ever overwritten unless the caller asks for it,
and a folder that is not a denoisefeat store is never deleted.

Replacing a store (``overwrite=True``) writes the new one beside it (``.<name>.new``) and swaps
the two only in :meth:`RunStore.finalize`, after the last sample is written: a run that fails or
is killed leaves the old store as it was.  A scan that adds its table to the run it traces
replaces the store only with the table (:func:`replacement`).  Replacing a group inside a store
(an attribution table with its images, ``features`` with ``overwrite=True``) works the same way
(:meth:`RunStore.replacing_group`): the new group is written whole under ``.<name>.new`` and
swapped in; names that start with a dot are staging, which readers and :meth:`RunStore.damage`
skip and the next replacement deletes.

Damage: every chunk of every array is written, even one that holds only fill values (zarr's
``array.write_empty_chunks``, switched on when this module is imported), and chunks carry a zstd
checksum, so a chunk file that is missing where its samples are marked complete, or that does not
decode, is damage, never data.  Readers (``open_run``, ``RunStore.open(mode="r")``) refuse a store
with missing chunks (a directory listing, cheap); :meth:`RunStore.damage` with ``decode=True``
reads every chunk (``denoisefeat check``), and :meth:`RunStore.repair` marks damaged samples
incomplete so that a resumed trace recomputes exactly those (``extract --resume --repair``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

__all__ = [
    "COMPRESSORS",
    "FAST_COMPRESSORS",
    "SCHEMA_VERSION",
    "Damage",
    "DamagedStoreError",
    "IncompleteRunError",
    "NotARunError",
    "Run",
    "RunExistsError",
    "RunMismatchError",
    "RunStore",
    "SchemaVersionError",
    "StepWriter",
    "StoreError",
    "ACTS",
    "ATTENTION",
    "ATTRIBUTION",
    "FEATURES",
    "acts_path",
    "attention_path",
    "attribution_path",
    "cell_images_path",
    "describe_damage",
    "features_path",
    "is_run_store",
    "open_run",
    "replacement",
]

SCHEMA_VERSION = 1
_MARKER = "denoisefeat"
_TARGET_CHUNK_BYTES = 2**21  # 2 MiB: "chunks ≥ 1 MB" while keeping the step buffer small
#: Compression of every array of a store: zstd with its content checksum, so a flipped byte fails to decode.
COMPRESSORS = (zarr.codecs.ZstdCodec(level=0, checksum=True),)
#: The fast codec of ``full`` activations (large, nearly incompressible floats): zstd's fast mode (level -1,
#: about 3× the throughput of the default level for a few percent more bytes), with the same checksum.
FAST_COMPRESSORS = (zarr.codecs.ZstdCodec(level=-1, checksum=True),)

# A chunk that holds only fill values is written too: a missing chunk file is then damage, not NaN.
zarr.config.set({"array.write_empty_chunks": True})


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


class DamagedStoreError(StoreError):
    """Chunk or metadata files of the store are missing or cannot be decoded (the message names them)."""


@dataclass(frozen=True)
class Damage:
    """One damaged chunk of a store.

    Attributes
    ----------
    array : str
        Path of the array inside the store (``x0``, ``features/edge_density``, ``acts/mid_block/full``).
    samples : tuple of int or None
        ``(start, stop)`` of the samples the chunk holds; ``None`` for arrays without a sample axis.
    problem : {"missing", "undecodable", "missing metadata", "inconsistent metadata"}
    file : str
        The chunk file, relative to the store.
    """

    array: str
    samples: tuple[int, int] | None
    problem: str
    file: str


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


def index_ranges(mask: np.ndarray) -> str:
    """The indices where ``mask`` is true, as ranges for a message: ``[T, T, F, T]`` → ``"0–1, 3"``.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        One value per sample (or per index).

    Returns
    -------
    str
        ``"none"`` when no value is true.
    """
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


def _staging_path(path: Path, kind: str = "new") -> Path:
    """Where a store (or a group's folder) that replaces ``path`` is written (``new``) or the old one waits
    (``old``): a hidden sibling, which readers skip."""
    return path.with_name(f".{path.name}.{kind}")


def _is_staging(name: str) -> bool:
    """Whether a path inside a store is (or lies in) a hidden staged group: a name that starts with a dot."""
    return any(part.startswith(".") for part in name.split("/"))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the file system cannot (then nothing was moved)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``, then delete what was there: at every instant one of
    the two is at ``target`` (an atomic exchange), or, where the file system cannot exchange, for the
    instant between two renames neither is, and the old one waits at ``.<target>.old``
    (:func:`_restore_interrupted_swap` puts it back after a crash there)."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # it holds the old folder now
        return
    old = _staging_path(target, "old")
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)


def _restore_interrupted_swap(target: Path) -> None:
    """Undo what a crash in the middle of :func:`_swap_in` left: the old folder back at ``target`` if it is
    missing there, a leftover old copy deleted."""
    old = _staging_path(target, "old")
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old)
    else:
        os.rename(old, target)


def _same_metadata(own, listed) -> bool:
    """An array's or group's zarr.json against its consolidated copy (groups list no members there)."""
    if not isinstance(own, dict) or not isinstance(listed, dict):
        return False
    strip = lambda doc: {k: v for k, v in doc.items() if k != "consolidated_metadata"}  # noqa: E731
    return strip(own) == strip(listed)


def _run_digest(attrs) -> str:
    """SHA-256 of what the store says it is (``run`` and ``layout``): a flipped byte there is damage."""
    import hashlib

    payload = json.dumps({"run": attrs.get("run"), "layout": attrs.get("layout")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file under a folder."""
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


#: The group of the cross-attention maps: ``attention/<layer>``.
ATTENTION = "attention"


def attention_path(layer: str) -> str:
    """The store path of ``layer``'s cross-attention maps.

    Parameters
    ----------
    layer : str
        The attention module's path.

    Returns
    -------
    str
    """
    return f"{ATTENTION}/{layer}"


#: The group of the recorded activations: ``acts/<layer>/<reducer>``.
ACTS = "acts"


def acts_path(layer: str, reducer: str) -> str:
    """The store path of ``layer``'s activations recorded with ``reducer``.

    Parameters
    ----------
    layer : str
        The module's path (as recorded).
    reducer : str
        The reducer's name (``"full"``, ``"channel_mean"``, …).

    Returns
    -------
    str
    """
    return f"{ACTS}/{layer}/{reducer}"


#: The group of the per-step features (:mod:`denoisefeat.step_features`): ``features/<variable>``.
FEATURES = "features"


def features_path(name: str, *, group: str = FEATURES) -> str:
    """The store path of the feature variable (or coordinate) ``name``.

    Parameters
    ----------
    name : str
        A variable (``"ssim"``, ``"band_energy"``), a coordinate (``"freq"``) or ``"complete"``.
    group : str
        The features group: :data:`FEATURES`, or the staged group that replaces it while it is
        written (:meth:`RunStore.replacing_group`).

    Returns
    -------
    str
    """
    return f"{group}/{name}"


def is_run_store(path) -> bool:
    """Whether ``path`` is a folder whose root metadata says it is a denoisefeat store (perhaps damaged).

    Cheap (reads the first bytes of one file, opens nothing): for deciding whether to look closer,
    e.g. to report a failed command's damage; :meth:`RunStore.open` does the real checks.

    Parameters
    ----------
    path : str, path or object
        Anything; only an existing folder can be a store.

    Returns
    -------
    bool
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    meta = Path(path).expanduser() / "zarr.json"
    return meta.is_file() and _MARKER.encode() in _head(meta)


#: The group of the attribution tables (:mod:`denoisefeat.analyses.table`): ``attribution/<table>``.
ATTRIBUTION = "attribution"
_IMAGES = "images"  # a table's kept images: attribution/<table>/images


def attribution_path(table: str) -> str:
    """The store path of attribution table ``table``.

    Layout of that group (:func:`denoisefeat.analyses.table.write_attribution` writes it)::

        attribution/<table>/
          attrs  columns (in order), n_rows, format (the table format), table_attrs (the frame's JSON attrs)
          <column>  (row,)   one 1-d array per column; attrs["kind"]: "numeric", or "str" with "categories"
          images/            the scan's kept final images (:func:`cell_images_path`), optional

    Parameters
    ----------
    table : str
        The table's name.

    Returns
    -------
    str
    """
    return f"{ATTRIBUTION}/{table}"


def cell_images_path(table: str) -> str:
    """The store path of the images kept beside attribution table ``table``.

    Layout of that group (:func:`denoisefeat.analyses.table.write_attribution` writes it)::

        attribution/<table>/images/
          attrs["cells"]  [[layer, step_start, step_stop, method], ...]   one entry per edited run
          clean      (sample, rgb, height, width)         the final images of the unedited run
          edited     (cell, sample, rgb, height, width)   the final images of each edited run
          corrupted  (sample, rgb, height, width)         causal tracing: the corrupted run, optional

    float32 in [0, 1], one image per chunk (a viewer reads one at a time); ``sample`` counts the
    scan's first samples.

    Parameters
    ----------
    table : str
        The attribution table's name.

    Returns
    -------
    str
    """
    return f"{attribution_path(table)}/{_IMAGES}"


def _write_column(group: zarr.Group, name: str, values: np.ndarray, attrs: dict) -> None:
    """One column of a table: a 1-d array with its attributes."""
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, compressors=COMPRESSORS)
    array[...] = values
    array.attrs.update(attrs)


def _copy_group(source: zarr.Group, root: zarr.Group, path: str) -> None:
    """Copy ``source`` (its attributes, subgroups and arrays) to ``root[path]``: an in-memory store's "rename"."""
    root.create_group(path, attributes=dict(source.attrs))
    for name, member in sorted(source.members(max_depth=None), key=lambda item: item[0].count("/")):
        if isinstance(member, zarr.Group):
            root.create_group(f"{path}/{name}", attributes=dict(member.attrs))
            continue
        array = root.create_array(f"{path}/{name}", shape=member.shape, chunks=member.chunks, dtype=member.dtype,
                                  fill_value=member.fill_value, dimension_names=member.metadata.dimension_names,
                                  compressors=member.compressors, attributes=dict(member.attrs))
        array[...] = member[...]


def _is_coordinate(name: str) -> bool:
    return "/" not in name and name in ("sample", "seed", "class_label", "step", "timestep", "sigma", "alpha_bar")


def describe_damage(store: RunStore, damage: Sequence[Damage], *, limit: int = 4) -> str:
    """One line that names the damaged arrays and samples, and what to do.

    Parameters
    ----------
    store : RunStore
    damage : sequence of Damage
        What :meth:`RunStore.damage` found.
    limit : int
        Arrays named before "and N more".

    Returns
    -------
    str
    """
    by_array: dict[tuple[str, str], np.ndarray] = {}
    other: dict[tuple[str, str], int] = {}
    for d in damage:
        if d.samples is None:
            other[(d.array, d.problem)] = other.get((d.array, d.problem), 0) + 1
            continue
        mask = by_array.setdefault((d.array, d.problem), np.zeros(store.n_samples, dtype=bool))
        mask[slice(*d.samples)] = True
    parts = [f"{array} ({problem} chunks, samples {index_ranges(mask)})" for (array, problem), mask in by_array.items()]
    said = {"missing metadata": "its zarr.json is missing",
            "inconsistent metadata": "its zarr.json differs from the consolidated copy in the root zarr.json",
            "damaged attributes": "the run attributes do not match their checksum"}
    parts += [f"{array} ({said[problem]})" if problem in said else
              f"{array} ({count} {problem} chunk{'s' if count > 1 else ''})"
              for (array, problem), count in other.items()]
    shown = "; ".join(parts[:limit]) + (f"; and {len(parts) - limit} more" if len(parts) > limit else "")
    where = str(store.path or "the run")
    return (f"{where!r} is damaged: {shown}. `denoisefeat check {where}` lists every damaged chunk; "
            f"`denoisefeat extract ... --out {where} --resume --repair` recomputes the damaged samples.")


def _clear_staging(staged: Path) -> None:
    """Delete what a replacement that failed earlier left at ``staged`` (never a finished store)."""
    if staged.exists():
        if not _is_run_group(staged) and any(staged.iterdir()):
            raise RunExistsError(f"{str(staged)!r} is in the way of the replacement store and is not "
                                 "a denoisefeat store; move it away.")
        shutil.rmtree(staged)


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
        self.replaces: Path | None = None  # the old store this one replaces at finalize()

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
        replaces = None
        if path is None:
            store = zarr.storage.MemoryStore()
            resolved = None
        else:
            resolved = Path(path).expanduser().resolve()
            _restore_interrupted_swap(resolved)
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
                # the new store is written beside the old one; finalize() swaps them at the end
                replaces, resolved = resolved, _staging_path(resolved)
                _clear_staging(resolved)
            if not resolved.parent.is_dir():
                raise StoreError(
                    f"Cannot create {str(resolved)!r}: the folder {str(resolved.parent)!r} does not exist.")
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
                "layout": {"n_samples": n_samples, "n_steps": n_steps, "chunk_samples": chunk_samples,
                           "every_chunk_written": True},
            }
        )
        group.attrs[_MARKER] = {**group.attrs[_MARKER], "digest": _run_digest(group.attrs)}
        self = cls(group, resolved)
        self.replaces = replaces
        self.ensure_array("complete", shape=(n_samples,), dims=("sample",), dtype=bool, fill_value=False)
        self.write_coordinate("sample", np.arange(n_samples), dim="sample")
        return self

    @classmethod
    def open(cls, path: str | Path | zarr.Group, *, mode: str = "r+", verify: bool | None = None) -> RunStore:
        """Open an existing store, checking that it is a denoisefeat store this version can read.

        Parameters
        ----------
        path : str, path or zarr.Group
        mode : {"r+", "r"}
        verify : bool, optional
            Refuse a store whose complete samples miss chunk files (:class:`DamagedStoreError`);
            default: when opening for reading (``mode="r"``).

        Returns
        -------
        RunStore
        """
        if isinstance(path, zarr.Group):
            group, resolved = path, None
        else:
            resolved = Path(path).expanduser().resolve()
            if not resolved.exists():
                raise NotARunError(f"No store at {str(resolved)!r}.")
            root_meta = resolved / "zarr.json"
            try:
                group = zarr.open_group(str(resolved), mode=mode)
            except Exception as error:
                if root_meta.is_file() and _MARKER.encode() in _head(root_meta):
                    raise DamagedStoreError(
                        f"{str(resolved)!r} is a damaged denoisefeat store: its metadata file zarr.json cannot be "
                        f"read ({type(error).__name__}). Restore it from a backup, or recompute the store."
                    ) from None
                raise NotARunError(
                    f"{str(resolved)!r} is not a zarr v3 group ({type(error).__name__}); it is not a denoisefeat store."
                ) from None
        meta = group.attrs.get(_MARKER)
        if not isinstance(meta, Mapping) or "schema_version" not in meta or "run" not in group.attrs:
            raise NotARunError(
                f"{str(resolved or 'the group')!r} is a zarr group but not a denoisefeat store "
                "(no denoisefeat attributes); denoisefeat will not read or modify it."
            )
        version = meta["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise DamagedStoreError(
                f"{str(resolved or 'the group')!r}: its schema version is {version!r}, not an integer; the store's "
                "metadata (zarr.json) is damaged or was edited by hand."
            )
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{str(resolved)!r} has store schema {meta['schema_version']}, newer than this denoisefeat "
                f"understands ({SCHEMA_VERSION}). Upgrade denoisefeat (pip install -U denoisefeat)."
            )
        self = cls(group, resolved)
        self._check_layout()
        if verify if verify is not None else mode == "r":
            damage = self.damage()
            if damage:
                raise DamagedStoreError(describe_damage(self, damage))
        return self

    def _check_layout(self) -> None:
        where = str(self.path or "the group")
        layout = self.group.attrs.get("layout")
        try:
            n, c = int(layout["n_samples"]), int(layout["chunk_samples"])
            int(layout["n_steps"])
        except (TypeError, KeyError, ValueError):
            raise DamagedStoreError(
                f"{where!r}: its layout attributes ({layout!r}) are missing or damaged; the store cannot be read."
            ) from None
        if "complete" not in self.group:
            raise DamagedStoreError(
                f"{where!r} is damaged: its array 'complete' (which samples are finished) is missing. "
                "Recompute the store, or restore complete/zarr.json from a backup."
            )
        if tuple(self.group["complete"].shape) != (n,) or c < 1:
            raise DamagedStoreError(f"{where!r} is damaged: its 'complete' array does not match its layout.")

    # -- damage ---------------------------------------------------------------------------------
    def _arrays(self) -> list[tuple[str, zarr.Array]]:
        """The store's arrays, without those of a staged group (a replacement being written, or a crash's leftover)."""
        return sorted((name, obj) for name, obj in self.group.members(max_depth=None)
                      if isinstance(obj, zarr.Array) and not _is_staging(name))

    def _expected_chunks(self, name: str, array: zarr.Array):
        """``(chunk coords, region, samples, optional)`` of every chunk that must exist (data, not fill).

        ``optional``: a completion marker's chunk, which may be absent (nothing done) but must decode.
        """
        if array.size == 0:
            return
        if name == "complete" or name.endswith("/complete"):  # a missing marker chunk just means "not done"
            yield from ((c, r, None, True) for c, r in zip(array._iter_chunk_coords(), array._iter_chunk_regions(),
                                                            strict=True))
            return
        every = bool(self.group.attrs["layout"].get("every_chunk_written", False))
        dims = tuple(array.metadata.dimension_names or ())
        per_sample = bool(dims) and dims[0] == "sample" and array.shape[0] == self.n_samples
        if not per_sample and not every:
            return
        done = None
        if per_sample:
            marker = features_path("complete") if name.startswith(f"{FEATURES}/") else "complete"
            try:
                done = np.asarray(self.group[marker][:], dtype=bool) if marker in self.group else np.zeros(0, bool)
            except Exception:  # noqa: BLE001  (an undecodable marker is listed as damage of the marker itself)
                done = np.zeros(0, bool)
        recorded = None
        if name.startswith((f"{ACTS}/", f"{ATTENTION}/")) and "step" in dims:
            steps = (self.run_attrs.get("extra") or {}).get("record_steps")
            recorded = None if steps is None else np.asarray(steps, dtype=np.int64)
            step_axis = dims.index("step")
        for coords, region in zip(array._iter_chunk_coords(), array._iter_chunk_regions(), strict=True):
            samples = None
            if per_sample:
                rows = region[0]
                if done.size != self.n_samples or not done[rows].all():
                    continue
                samples = (int(rows.start), int(rows.stop))
            if recorded is not None:
                steps_ = region[step_axis]
                if not ((recorded >= steps_.start) & (recorded < steps_.stop)).any():
                    continue
            yield coords, region, samples, False

    def _consolidated(self) -> dict:
        """The consolidated metadata of the store's members (empty if there is none)."""
        try:
            root = json.loads(_head(self.path / "zarr.json", 2**26) or b"{}")
        except ValueError:
            return {}
        return (root.get("consolidated_metadata") or {}).get("metadata") or {}

    def damage(self, *, decode: bool = False) -> list[Damage]:
        """The store's damaged chunks: missing where they hold data and, with ``decode``, undecodable.

        Parameters
        ----------
        decode : bool
            Read and decode every chunk (as slow as reading the whole store); without it only
            the chunk files' presence is checked (a directory listing).

        Returns
        -------
        list of Damage
            Empty for an undamaged store.  In-memory stores are only checked with ``decode``.
        """
        found = []
        if self.path is not None:  # arrays the consolidated metadata lists must have their own metadata
            listed = self._consolidated()
            for name in sorted(n for n in listed if not _is_staging(n)):
                own = self.path / name / "zarr.json"
                if not own.is_file():
                    found.append(Damage(name, None, "missing metadata", f"{name}/zarr.json"))
                    continue
                try:
                    doc = json.loads(own.read_bytes())
                except ValueError:
                    doc = None
                if not _same_metadata(doc, listed[name]):  # a flipped byte in one of the two copies
                    found.append(Damage(name, None, "inconsistent metadata", f"{name}/zarr.json"))
            if _run_digest(self.group.attrs) != self.group.attrs[_MARKER].get("digest", _run_digest(self.group.attrs)):
                found.append(Damage("zarr.json", None, "damaged attributes", "zarr.json"))
        for name, array in self._arrays():
            present = None
            if self.path is not None:
                folder = self.path / name
                present = {str(Path(root, f).relative_to(folder)) for root, _, files in os.walk(folder)
                           for f in files if f != "zarr.json"}
            whole = False  # a marker that decodes as a whole decodes chunk by chunk: one read, not one per chunk
            for coords, region, samples, optional in self._expected_chunks(name, array):
                key = array.metadata.encode_chunk_key(coords)
                if optional and whole is False and not decode:
                    try:
                        array[...]
                        whole = True
                    except Exception:  # noqa: BLE001  (then each chunk is tried below)
                        whole = None
                if present is not None and key not in present:
                    if not optional:
                        found.append(Damage(name, samples, "missing", f"{name}/{key}"))
                    continue
                if decode or (optional and whole is not True):
                    try:
                        array[region]
                    except Exception:
                        found.append(Damage(name, samples, "undecodable", f"{name}/{key}"))
        return found

    def repair(self, damage: Sequence[Damage]) -> list[slice]:
        """Delete damaged chunk files and mark their samples incomplete, so that a resumed trace redoes them.

        Features of those samples are marked incomplete too (``features`` recomputes them).

        Parameters
        ----------
        damage : sequence of Damage
            From :meth:`damage` (with ``decode=True``).

        Returns
        -------
        list of slice
            The sample chunks the trace must redo.

        Raises
        ------
        DamagedStoreError
            Damage a resumed trace cannot redo (a table without a sample axis).
        """
        if self.path is not None:  # lost array metadata comes back from the consolidated copy
            listed = self._consolidated()
            for d in damage:
                if d.problem == "missing metadata" and d.array in listed:
                    (self.path / d.file).parent.mkdir(parents=True, exist_ok=True)
                    (self.path / d.file).write_text(json.dumps(listed[d.array], indent=2))
        damage = [d for d in damage if d.problem != "missing metadata"]
        fixed = [d for d in damage if d.samples is None and not _is_coordinate(d.array)]
        if fixed:
            raise DamagedStoreError(
                f"{str(self.path)!r}: {', '.join(sorted({d.array for d in fixed}))} cannot be recomputed by "
                "resuming the trace; recompute it (for an attribution table: the command that made it, with "
                "--overwrite)."
            )
        redo = np.zeros(self.n_samples, dtype=bool)
        for d in damage:
            if d.samples is not None and not d.array.startswith(f"{FEATURES}/"):
                redo[slice(*d.samples)] = True
        for d in damage:
            if self.path is not None:
                (self.path / d.file).unlink(missing_ok=True)
        chunks = [c for c in self.sample_chunks() if redo[c].any()]
        for chunk in chunks:
            self.group["complete"][chunk] = False
        if features_path("complete") in self.group:
            features_done = self.group[features_path("complete")]
            for chunk in chunks:
                features_done[chunk] = False
            for d in damage:
                if d.array.startswith(f"{FEATURES}/") and d.samples is not None:
                    features_done[slice(*d.samples)] = False
        return chunks

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

    def holds(self, name: str) -> bool:
        """Whether the store has the group or array ``name``, also one written after the metadata was
        consolidated (the consolidated copy does not list it).

        Parameters
        ----------
        name : str
            A path inside the store, e.g. ``"features"`` or ``"attribution"``.

        Returns
        -------
        bool
        """
        if name in self.group:
            return True
        return self.path is not None and (self.path / name / "zarr.json").is_file()

    def array(self, name: str) -> zarr.Array:
        """The array at ``name``, a path inside the store (``"x0"``, :func:`acts_path`, :func:`features_path`).

        Parameters
        ----------
        name : str

        Returns
        -------
        zarr.Array

        Raises
        ------
        KeyError
            The store has no array ``name``.
        """
        member = self._member(name)
        if not isinstance(member, zarr.Array):
            raise KeyError(f"{str(self.path or 'The run')!r} has no array {name!r}.")
        return member

    def _member(self, name: str):
        """The array or group at ``name``, also one written after the group was opened with consolidated
        metadata (which does not list it); ``None`` if there is none."""
        member = self.group.get(name)
        if member is None and self.path is not None and (self.path / name / "zarr.json").is_file():
            member = self.reopened(mode="r" if self.group.read_only else "r+").group.get(name)
        return member

    def group_names(self) -> list[str]:
        """The groups at the top of the store (``acts``, ``attention``, ``features``, ``attribution``), sorted.

        Returns
        -------
        list of str
        """
        return sorted(name for name, _ in self.group.groups() if not _is_staging(name))

    def differing_attrs(self, run_attrs: Mapping, *, added: Sequence[str] = ()) -> list[str]:
        """Keys whose values differ between ``run_attrs`` and the store's (empty: the same run).

        Parameters
        ----------
        run_attrs : mapping
            The run attributes a resumed trace would write.
        added : sequence of str
            Keys added to the run attributes after the store may have been written: one the store
            lacks compares as compatible (an old store resumes), one it has must match.

        Returns
        -------
        list of str
        """
        new, old = _jsonable(dict(run_attrs)), self.run_attrs
        return sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and not (k in added and k not in old))

    def reopened(self, *, mode: str = "r+") -> RunStore:
        """This store opened again from its folder without the consolidated metadata, so that arrays
        written since it was consolidated (by this process or another) show.

        Parameters
        ----------
        mode : {"r+", "r"}

        Returns
        -------
        RunStore
            A new handle; an in-memory store is returned as it is (its group is the only handle).
        """
        if self.path is None:
            return self
        return RunStore(zarr.open_group(str(self.path), mode=mode, use_consolidated=False), self.path)

    def fsync(self, samples: tuple[int, int], *, group: str | None = None) -> None:
        """fsync every chunk file that holds samples ``start … stop − 1`` (arrays whose first axis is ``sample``).

        A cluster task calls it before writing its "done" marker, so that a crash after the marker
        cannot lose the chunks it owns.

        Parameters
        ----------
        samples : (int, int)
            ``(start, stop)``: the task's samples.
        group : str, optional
            Only the arrays of this group (:data:`FEATURES`); default: every array of the store.
        """
        if self.path is None:
            return
        root = self.reopened(mode="r").group
        if group is not None:
            root = root[group]
        prefix = self.path / (group or "")
        for name, array in root.members(max_depth=None):
            if not isinstance(array, zarr.Array):
                continue
            names = array.metadata.dimension_names or ()
            if not names or names[0] != "sample":
                continue
            per_chunk = array.chunks[0]
            for k in range(samples[0] // per_chunk, -(-samples[1] // per_chunk)):
                chunk = prefix / name / "c" / str(k)  # zarr v3's default chunk key encoding: c/<i>/<j>/…
                if chunk.exists():
                    _fsync_tree(chunk)

    # -- activations and features -------------------------------------------------------------
    def declare_acts(self, layers: Sequence[str]) -> None:
        """Describe the ``acts`` group once: the layers a run records, in recording order.

        Parameters
        ----------
        layers : sequence of str
        """
        group = self.group.require_group(ACTS)
        if group.attrs.get("layers") != list(layers):  # written once: concurrent tasks share this group
            group.attrs["layers"] = list(layers)

    def acts_layers(self) -> list[str]:
        """Layers with recorded activations, in the order they were recorded.

        Returns
        -------
        list of str
        """
        group = self._member(ACTS)
        return list(group.attrs.get("layers", [])) if isinstance(group, zarr.Group) else []

    def acts_reducers(self, layer: str) -> list[str]:
        """The reducers ``layer`` was recorded with, sorted (empty: not recorded).

        Parameters
        ----------
        layer : str

        Returns
        -------
        list of str
        """
        group = self._member(f"{ACTS}/{layer}")
        return sorted(group.array_keys()) if isinstance(group, zarr.Group) else []

    def features_config(self) -> dict:
        """What the stored features were computed with (``features`` group attrs ``config``).

        Returns
        -------
        dict
            Empty where no features were computed.
        """
        group = self._member(FEATURES)
        return dict(group.attrs.get("config", {})) if isinstance(group, zarr.Group) else {}

    def declare_features(self, config: Mapping, *, group: str = FEATURES) -> None:
        """Create the ``features`` group with its ``config`` (kept if it is there) and its ``complete`` marker.

        Parameters
        ----------
        config : mapping
            JSON-serialisable; :meth:`features_config` returns it.
        group : str
            :data:`FEATURES`, or the staged group that replaces it (:meth:`replacing_group`).
        """
        features = self.group.require_group(group)
        if "config" not in features.attrs:
            features.attrs["config"] = dict(config)
        self.ensure_array(features_path("complete", group=group), shape=(self.n_samples,), dims=("sample",),
                          dtype=bool, fill_value=False)

    def features_completed(self, *, group: str = FEATURES) -> np.ndarray:
        """Boolean (sample,): which samples' features are all written (all false where none were computed).

        Parameters
        ----------
        group : str
            :data:`FEATURES`, or the staged group that replaces it (:meth:`replacing_group`).

        Returns
        -------
        numpy.ndarray of bool
        """
        marker = self._member(features_path("complete", group=group))
        if not isinstance(marker, zarr.Array):
            return np.zeros(self.n_samples, dtype=bool)
        return np.asarray(marker[...], dtype=bool)

    def mark_features_complete(self, samples, *, complete: bool = True, group: str = FEATURES) -> None:
        """Mark the features of ``samples`` done (call only after all their variables are written), or not.

        Parameters
        ----------
        samples : slice or sequence of int
        complete : bool
            ``False`` marks them to be recomputed.
        group : str
            :data:`FEATURES`, or the staged group that replaces it (:meth:`replacing_group`).
        """
        marker = self.array(features_path("complete", group=group))
        if isinstance(samples, slice):
            marker[samples] = complete
        else:
            marker.oindex[np.asarray(samples)] = complete

    def sample_chunks(self) -> list[slice]:
        """The sample ranges writers own, in order."""
        n, c = self.n_samples, self.chunk_samples
        return [slice(s, min(s + c, n)) for s in range(0, n, c)]

    def owned_chunks(self, samples: slice | None, *, option: str = "samples") -> list[slice]:
        """The sample chunks inside ``samples``, which must be whole chunks (what one writer or task owns).

        Parameters
        ----------
        samples : slice or None
            ``slice(start, stop)`` with ``start`` and ``stop`` on chunk boundaries (multiples of
            ``chunk_samples``, or ``n_samples``); ``None``: every chunk.
        option : str
            The caller's name of ``samples``, for the messages (``"only_samples"``).

        Returns
        -------
        list of slice

        Raises
        ------
        TypeError
            ``samples`` is not a slice.
        ValueError
            An empty range, a step other than 1, or a range that splits a sample chunk.
        """
        chunks = self.sample_chunks()
        if samples is None:
            return chunks
        if not isinstance(samples, slice):
            raise TypeError(f"{option} must be a slice of whole sample chunks (e.g. slice(0, 8)), got {samples!r}.")
        n, c = self.n_samples, self.chunk_samples
        start, stop, step = samples.indices(n)
        if step != 1 or start >= stop:
            raise ValueError(f"{option}={samples.start}:{samples.stop}: give a non-empty range with step 1 "
                             f"within the run's {n} samples.")
        if start % c or (stop % c and stop != n):
            lo, hi = (start // c) * c, min(n, -(-stop // c) * c)
            raise ValueError(
                f"{option}={start}:{stop} does not fall on the store's sample chunks of {c} (it is not aligned: a "
                f"task owns whole chunks, boundaries at multiples of {c} and {n}); e.g. {option}={lo}:{hi}."
            )
        return [chunk for chunk in chunks if chunk.start >= start and chunk.stop <= stop]

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
        compressors: Sequence = COMPRESSORS,
    ) -> zarr.Array:
        """Create array ``name`` (a path inside the group) or check an existing one matches.

        Per-sample arrays are chunked along ``sample`` by ``chunk_samples`` so writers never
        share a chunk; the other chunk sizes default to whole axes.  ``compressors``: the codec
        (:data:`COMPRESSORS`, or :data:`FAST_COMPRESSORS` for large incompressible arrays); every
        codec of a store carries a checksum.
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
                fill_value=fill_value, compressors=tuple(compressors),
            )
        except zarr.errors.ContainsArrayError:  # another writer created it first
            return self.ensure_array(name, shape=shape, dims=dims, dtype=dtype, chunks=chunks, fill_value=fill_value,
                                     compressors=compressors)
        if attrs:
            array.attrs.update(_jsonable(dict(attrs)))
        return array

    def step_chunk_size(self, bytes_per_sample_step: int) -> int:
        """Steps per chunk so that one chunk holds at most about 2 MiB (at least one step, at most all)."""
        per_step = max(1, bytes_per_sample_step * self.chunk_samples)
        return int(min(self.n_steps, max(1, _TARGET_CHUNK_BYTES // per_step)))

    def ensure_step_array(self, name: str, *, tail_shape: Sequence[int], tail_dims: Sequence[str], dtype,
                          lead_dims: Sequence[str] = ("sample", "step"), lead_shape: Sequence[int] | None = None,
                          attrs: Mapping | None = None, compressors: Sequence = COMPRESSORS,
                          step_multiple: int = 1) -> zarr.Array:
        """A ``(sample, [branch,] step, *tail)`` array chunked by sample chunk × about 2 MiB of steps.

        ``step_multiple``: the steps per chunk are a multiple of it (so that every step chunk of
        an array written every ``k``-th step holds one of those steps).
        """
        if lead_shape is None:
            lead_shape = (self.n_samples, self.n_steps)
        itemsize = np.dtype(dtype).itemsize
        per_sample_step = itemsize * int(np.prod(tail_shape, dtype=np.int64))
        per_sample_step *= int(np.prod(lead_shape[1:-1], dtype=np.int64))  # a branch axis between sample and step
        step_chunk = self.step_chunk_size(per_sample_step)
        step_chunk = min(lead_shape[-1], max(step_multiple, step_chunk // step_multiple * step_multiple))
        chunks = (self.chunk_samples, *lead_shape[1:-1], step_chunk, *tail_shape)
        return self.ensure_array(
            name, shape=(*lead_shape, *tail_shape), dims=(*lead_dims, *tail_dims), dtype=dtype, chunks=chunks,
            attrs=attrs, compressors=compressors,
        )

    def write_coordinate(self, name: str, values, *, dim: str) -> None:
        """Write a small 1-d coordinate (``timestep``, ``seed``, …) in one go, once."""
        values = np.asarray(values)
        array = self.ensure_array(name, shape=values.shape, dims=(dim,), dtype=values.dtype, chunks=values.shape)
        array[...] = values

    def declare_attention(self, layers: Sequence[str], words: Mapping[str, Sequence]) -> None:
        """Describe the ``attention`` group once: its layers and each prompt's word spans.

        Parameters
        ----------
        layers : sequence of str
            The layers whose maps the run stores.
        words : mapping of str to sequence
            ``{prompt: [(word, start, stop), ...]}``, token spans in the stored token axis.
        """
        group = self.group.require_group(ATTENTION)
        attrs = _jsonable({"layers": list(layers), "words": {p: [list(w) for w in ws] for p, ws in words.items()}})
        if dict(group.attrs) != attrs:  # written once: concurrent tasks share this group
            group.attrs.update(attrs)

    @property
    def created(self) -> str | None:
        """When the store was made (ISO 8601, UTC), as its root attributes record it."""
        return (self.group.attrs.get(_MARKER) or {}).get("created")

    def attribution_tables(self) -> list[str]:
        """The names of the attribution tables the store holds (sorted; empty when none).

        Returns
        -------
        list of str
        """
        group = self._member(ATTRIBUTION)
        if not isinstance(group, zarr.Group):
            return []
        keys = {name for name in group.group_keys()}
        if self.path is not None:  # tables written after the metadata was consolidated
            keys |= {p.name for p in (self.path / ATTRIBUTION).iterdir() if (p / "zarr.json").is_file()}
        return sorted(name for name in keys if not _is_staging(name))  # not a table being written

    def write_table(self, path: str, columns: Mapping[str, tuple[np.ndarray, Mapping]], *, attrs: Mapping,
                    images: tuple[Mapping[str, tuple[Sequence[str], np.ndarray]], Mapping] | None = None,
                    overwrite: bool = False) -> None:
        """Write a table: a group of equal-length 1-d arrays, one per column, and optionally its images.

        Everything is converted (and so checked) before the store is touched, then written whole
        under a hidden sibling name (``.<leaf>.new``) and only then swapped in, so that a failure
        or a kill at any point leaves the old table (and its images) as it was: readers skip the
        hidden group, and the next write deletes what a crash left of one.

        Parameters
        ----------
        path : str
            The group's path (e.g. :func:`attribution_path`).
        columns : mapping of str to (numpy.ndarray, mapping)
            ``{column: (values, attrs)}``, in column order.
        attrs : mapping
            The group's attributes (JSON).
        images : (mapping, mapping), optional
            ``(arrays, attrs)`` of the table's ``images`` subgroup (:func:`cell_images_path`), as
            :meth:`write_images` takes them, written in the same staged group as the table.
        overwrite : bool
            Replace a group at ``path`` (and what it holds); otherwise an existing one is an error.

        Raises
        ------
        RunExistsError
            ``path`` exists and ``overwrite`` is False.
        """
        if self.holds(path) and not overwrite:
            raise RunExistsError(f"{path!r} already exists in the store; pass overwrite=True to replace it.")
        data = {name: (np.asarray(values), _jsonable(dict(column_attrs))) for name, (values, column_attrs)
                in columns.items()}
        group_attrs = _jsonable(dict(attrs))
        if images is not None:
            arrays, image_attrs = images
            images = ({name: (tuple(dims), np.ascontiguousarray(values, dtype=np.float32))
                       for name, (dims, values) in arrays.items()}, _jsonable(dict(image_attrs)))
        with self.replacing_group(path) as where:
            group = self.group.create_group(where)
            for name, (values, column_attrs) in data.items():
                _write_column(group, name, values, column_attrs)
            if images is not None:
                self.write_images(f"{where}/{_IMAGES}", images[0], attrs=images[1])
            group.attrs.update(group_attrs)

    @contextlib.contextmanager
    def replacing_group(self, path: str) -> Iterator[str]:
        """Write a group that replaces (or creates) ``path`` under a hidden sibling name, and put it at ``path``
        only when the block ends without an error.

        A failure in the block deletes the staged group; a kill leaves it, hidden from readers
        (:meth:`attribution_tables`, :meth:`damage` skip names that start with a dot), and the
        next replacement of ``path`` deletes it.  On disk the new folder is swapped in at once
        (:func:`_swap_in`) after the consolidated copy stopped listing ``path`` (so that no reader
        takes the old metadata for the new arrays); :meth:`finalize` lists it again.  In memory
        the staged group is copied to ``path``.

        Parameters
        ----------
        path : str
            The group to replace, e.g. :func:`attribution_path` or :data:`FEATURES`.

        Yields
        ------
        str
            The staged group's path (``.<leaf>.new`` beside ``path``), not created yet: the block writes it.
        """
        parent, _, leaf = path.rpartition("/")
        if not leaf or _is_staging(path):
            raise ValueError(f"Invalid group path {path!r}: its names must be non-empty and not start with '.'.")
        staged = f"{parent}/.{leaf}.new" if parent else f".{leaf}.new"
        if self.path is not None:
            _restore_interrupted_swap(self.path / path)
        self._drop_group(staged)  # what a crash left of an earlier replacement
        if parent:
            self.group.require_group(parent)
        try:
            yield staged
        except BaseException:
            self._drop_group(staged)
            raise
        if self.path is None:
            self._drop_group(path)
            _copy_group(self.group[staged], self.group, path)
            self._drop_group(staged)
            return
        self._unlist_consolidated(path)
        _swap_in(self.path / staged, self.path / path)
        self.group = zarr.open_group(str(self.path), mode="r" if self.group.read_only else "r+",
                                     use_consolidated=False)

    def _unlist_consolidated(self, path: str) -> None:
        """Drop ``path`` and its members from the root's consolidated copy (readers then read their own metadata)."""
        meta = self.path / "zarr.json"
        root = json.loads(meta.read_bytes())
        listed = (root.get("consolidated_metadata") or {}).get("metadata")
        if not listed:
            return
        kept = {name: doc for name, doc in listed.items() if name != path and not name.startswith(f"{path}/")}
        if len(kept) == len(listed):
            return
        root["consolidated_metadata"]["metadata"] = kept
        tmp = meta.with_name(".zarr.json.tmp")
        tmp.write_text(json.dumps(root, indent=2))
        os.replace(tmp, meta)

    def _drop_group(self, path: str) -> None:
        """Delete the group ``path`` if it is there (also one the consolidated copy does not list)."""
        if self.path is not None:
            if (self.path / path).exists():
                shutil.rmtree(self.path / path)
        elif path in self.group:
            del self.group[path]

    def group_attrs(self, path: str) -> dict:
        """The attributes of the group at ``path``.

        Parameters
        ----------
        path : str

        Returns
        -------
        dict

        Raises
        ------
        KeyError
            The store has no group ``path``.
        """
        member = self._member(path)
        if not isinstance(member, zarr.Group):
            raise KeyError(f"{str(self.path or 'The run')!r} has no group {path!r}.")
        return dict(member.attrs)

    def write_images(self, path: str, arrays: Mapping[str, tuple[Sequence[str], np.ndarray]], *,
                     attrs: Mapping) -> None:
        """Write a group of RGB image arrays in one go, one ``(3, H, W)`` image per chunk.

        Parameters
        ----------
        path : str
            The group's path in the store (e.g. :func:`cell_images_path`); it must not exist yet.
        arrays : mapping of str to (sequence of str, numpy.ndarray)
            ``{name: (dims, images)}``, images ``(..., 3, H, W)`` (stored as float32).
        attrs : mapping
            The group's attributes (JSON).
        """
        if path in self.group:
            raise RunExistsError(f"{path!r} exists in the store; delete its parent table first.")
        group = self.group.require_group(path)
        group.attrs.update(_jsonable(dict(attrs)))
        for name, (dims, images) in arrays.items():
            data = np.ascontiguousarray(images, dtype=np.float32)
            chunks = (*(1,) * (data.ndim - 3), *data.shape[-3:])
            array = self.ensure_array(f"{path}/{name}", shape=data.shape, dims=dims, dtype=np.float32,
                                      chunks=chunks)
            array[...] = data

    def mark_complete(self, samples: slice) -> None:
        """Mark ``samples`` done; call only after all their data is written."""
        self.group["complete"][samples] = True

    def finalize(self) -> None:
        """Consolidate metadata (after the last writer) so readers open the store in one read.

        A store made to replace another (``create(..., overwrite=True)``) takes its place now: the
        old store is moved aside, the new one renamed to the path, and only then the old one deleted.
        """
        if self.path is not None:
            import warnings

            with warnings.catch_warnings():  # zarr says consolidated metadata is not in the v3 spec yet
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(str(self.path))
        if self.replaces is not None:
            target = self.replaces
            _swap_in(self.path, target)
            self.path, self.replaces = target, None
            self.group = zarr.open_group(str(target), mode="r+")


class StepWriter:
    """Buffers per-step arrays of one sample chunk and writes them a step chunk at a time, on a writer pool.

    Memory is bounded by one sample chunk × one step chunk of every array (plus at most two step
    chunks per worker in flight), whatever the number of steps.  Each write covers whole chunks, so
    nothing is read back and rewritten.  Stacking a step chunk, compressing it and writing it run on
    a pool of background threads (each step chunk is one job, and two jobs never share a chunk
    file), so that all of it overlaps with the denoiser; :meth:`close` waits for them and re-raises
    any error.  The chunk files are the same whatever the number of workers.

    Parameters
    ----------
    store : RunStore
    samples : slice
        The sample chunk this writer owns.
    workers : int, optional
        Writer threads; default ``min(4, os.cpu_count())``.
    """

    def __init__(self, store: RunStore, samples: slice, *, workers: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}.")
        self.store = store
        self.samples = samples
        self._declared: dict[str, tuple[tuple[str, ...], str, dict]] = {}
        self._steps: dict[str, frozenset[int] | None] = {}
        self._arrays: dict[str, tuple[zarr.Array, int]] = {}
        self._buffers: dict[str, dict[int, tuple[np.ndarray, object]]] = {}
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="denoisefeat-writer")
        self._max_in_flight = 2 * workers
        self._in_flight: list = []

    def declare(self, name: str, *, tail_dims: Sequence[str], dtype, lead_dims: Sequence[str] = ("sample", "step"),
                lead_shape: Sequence[int] | None = None, attrs: Mapping | None = None,
                steps: frozenset[int] | None = None, compressors: Sequence = COMPRESSORS,
                step_multiple: int = 1) -> None:
        """Say how to create ``name`` when its first step arrives (its trailing shape is known then).

        Parameters
        ----------
        name : str
            The array's path in the store.
        tail_dims : sequence of str
            Names of the axes after ``step``.
        dtype : str or numpy.dtype
            The stored dtype (appended data is cast to it).
        lead_dims, lead_shape : sequence, optional
            The axes up to ``step`` and their sizes (default ``("sample", "step")``, the run's).
        attrs : mapping, optional
            Attributes of the array.
        steps : frozenset of int, optional
            The only steps that will be appended (``None``: all), so that a step chunk is
            written as soon as its selected steps are in.
        compressors : sequence of codecs
            :data:`COMPRESSORS` or :data:`FAST_COMPRESSORS`.
        step_multiple : int
            Steps per chunk are a multiple of it (:meth:`RunStore.ensure_step_array`).
        """
        self._steps[name] = steps
        self._declared[name] = (tuple(tail_dims), dtype, {"lead_dims": tuple(lead_dims), "lead_shape": lead_shape,
                                                          "attrs": attrs, "compressors": compressors,
                                                          "step_multiple": step_multiple})

    def declared(self, name: str) -> bool:
        """Whether :meth:`declare` was called for ``name``.

        Parameters
        ----------
        name : str

        Returns
        -------
        bool
        """
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

    def append(self, name: str, step: int, data: np.ndarray, *, ready=None) -> None:
        """Add step ``step`` of array ``name``: ``data`` is one step of the chunk's samples (no step axis).

        Parameters
        ----------
        name : str
        step : int
        data : numpy.ndarray
            Not read before ``ready()`` returns, and only on a writer thread.
        ready : callable, optional
            Waits until ``data`` holds its values (an asynchronous device→host copy); default: it does.
        """
        data = np.asarray(data)
        array, step_axis = self._array(name, data)
        step_chunk = array.chunks[step_axis]
        buffer = self._buffers.setdefault(name, {})
        buffer[step] = (data, ready)
        first = (step // step_chunk) * step_chunk
        last = min(first + step_chunk, array.shape[step_axis])
        selected = self._steps.get(name)
        expected = [s for s in range(first, last) if selected is None or s in selected]
        if all(s in buffer for s in expected):
            if len(expected) == last - first:
                self._submit(array, step_axis, [(slice(first, last), [buffer.pop(s) for s in expected])])
            else:  # a partial step chunk: the selected steps one by one, in one job (one chunk file)
                self._submit(array, step_axis, [(s, [buffer.pop(s)]) for s in expected])

    def _submit(self, array, step_axis, writes) -> None:
        """One job per chunk file: ``writes`` are ``(steps, parts)`` of one step chunk, done in order."""
        regions = []
        for steps, parts in writes:
            region = [slice(None)] * array.ndim
            region[0] = self.samples
            region[step_axis] = steps
            regions.append((tuple(region), parts))
        while len(self._in_flight) >= self._max_in_flight:  # back-pressure bounds memory
            self._in_flight.pop(0).result()
        self._in_flight.append(self._executor.submit(_write_blocks, array, step_axis, regions))

    def pending(self) -> dict[str, list[int]]:
        """Steps still buffered, by array (empty once every step chunk is whole).

        Returns
        -------
        dict of str to list of int
        """
        return {name: sorted(b) for name, b in self._buffers.items() if b}

    def close(self) -> None:
        """Write what is still buffered (runs that record only some steps), wait for every write."""
        try:
            for name, buffer in self._buffers.items():
                array, step_axis = self._arrays[name]
                step_chunk = array.chunks[step_axis]
                for chunk in sorted({s // step_chunk for s in buffer}):
                    steps = [s for s in sorted(buffer) if s // step_chunk == chunk]
                    self._submit(array, step_axis, [(s, [buffer.pop(s)]) for s in steps])
            for future in self._in_flight:
                future.result()
        finally:
            self._in_flight.clear()
            self._executor.shutdown(wait=True)


def _write_blocks(array: zarr.Array, step_axis: int, regions) -> None:
    """A writer job: for each region, wait for its parts' copies, stack them along ``step``, cast, write."""
    for region, parts in regions:
        for _, ready in parts:
            if ready is not None:
                ready()
        stacked = isinstance(region[step_axis], slice)
        block = np.stack([data for data, _ in parts], axis=step_axis) if stacked else parts[0][0]
        array[region] = block.astype(array.dtype, copy=False)


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

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of stored array ``name`` (e.g. ``"images"``), or None when the run has none (no read).

        Parameters
        ----------
        name : str

        Returns
        -------
        tuple of int or None
        """
        try:
            return tuple(self.store.array(name).shape)
        except KeyError:
            return None

    def read(self, name: str, *index) -> np.ndarray:
        """One region of a stored array, read straight from its chunks (no xarray: a frame in milliseconds).

        Parameters
        ----------
        name : str
            A stored array, e.g. ``"images"`` or ``"timestep"``.
        *index : int or slice
            Positions along its leading dimensions (``run.read("images", sample, step)``: one
            ``(3, H, W)`` image); none reads all of it.

        Returns
        -------
        numpy.ndarray
        """
        return np.asarray(self.store.array(name)[index if index else ...])

    def layers(self) -> list[str]:
        """Layers with recorded activations, in the order they were recorded."""
        return self.store.acts_layers()

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
        reducers = self.store.acts_reducers(layer)
        if reducer is None:
            if len(reducers) != 1:
                raise KeyError(f"{layer!r} was recorded with reducers {reducers}; pass reducer=...")
            reducer = reducers[0]
        if reducer not in reducers:
            raise KeyError(f"{layer!r} has no {reducer!r} record; it has {reducers}.")
        array = self.store.array(acts_path(layer, reducer))
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


    def attention_layers(self) -> list[str]:
        """Layers with stored cross-attention maps, in network order."""
        if ATTENTION not in self.store.group:
            return []
        return list(self.store.group[ATTENTION].attrs.get("layers", []))

    def attention_words(self) -> dict[str, list[tuple[str, int, int]]]:
        """Each prompt's words and their token spans in the maps' ``token`` axis.

        Returns
        -------
        dict of str to list of (str, int, int)
            ``{prompt: [(word, start, stop), ...]}``.
        """
        words = self.store.group[ATTENTION].attrs.get("words", {}) if ATTENTION in self.store.group else {}
        return {p: [(str(w), int(s), int(e)) for w, s, e in spans] for p, spans in words.items()}

    def attention(self, layer: str):
        """Stored cross-attention maps of ``layer`` as an ``xarray.DataArray`` (sample, step, token, y, x).

        Parameters
        ----------
        layer : str
            An attention module's path (:meth:`attention_layers`).

        Returns
        -------
        xarray.DataArray
        """
        import difflib

        import xarray as xr

        layers = self.attention_layers()
        if layer not in layers:
            close = difflib.get_close_matches(layer, layers, n=3, cutoff=0.4)
            hint = f" Close: {', '.join(close)}." if close else ""
            raise KeyError(f"No attention maps stored for {layer!r}.{hint} Stored: {', '.join(layers) or 'none'}.")
        array = self.store.group[attention_path(layer)]
        ds = self.dataset
        coords = {"sample": ds["sample"].values, "step": ds["step"].values}
        if "timestep" in ds:
            coords["timestep"] = ("step", ds["timestep"].values)
        return xr.DataArray(array[...], dims=list(array.metadata.dimension_names), coords=coords,
                            name=attention_path(layer), attrs=dict(array.attrs))


@contextlib.contextmanager
def replacement(path, *, overwrite: bool) -> Iterator[Path | None]:
    """Where to write a store that replaces ``path`` with everything added to it in the block (a scan's
    run and then its table): a hidden sibling, swapped in when the block ends without an error.

    A failure, Ctrl-C or kill inside the block leaves the old store as it was (a killed block's
    sibling is deleted by the next replacement or :meth:`RunStore.create`).  The store's lock
    (``.<name>.lock``, the one :func:`denoisefeat.trace` takes) is held for the block.

    Parameters
    ----------
    path : str, path or None
        The store to replace.
    overwrite : bool
        Whether the caller may replace an existing store; without it (or where there is none to
        replace) the block writes at ``path`` itself, and an existing store there is the writer's
        error, as before.

    Yields
    ------
    path or None
        Where to write: the hidden sibling, ``path`` itself, or ``None`` for ``path=None``.

    Raises
    ------
    RunExistsError
        ``path`` is not a denoisefeat store, or something that is not one is in the sibling's way.
    """
    from denoisefeat.locking import TaskLock

    if path is None:
        yield None
        return
    target = Path(path).expanduser().resolve()
    _restore_interrupted_swap(target)
    if not (overwrite and target.exists()):
        yield path
        return
    if not _is_run_group(target):
        raise RunExistsError(f"{str(target)!r} exists and is not a denoisefeat store; refusing to touch it. "
                             "Choose another path.")
    staged = _staging_path(target)
    with TaskLock(target.with_name(f".{target.name}.lock"), what=f"The store {str(target)!r}"):
        _clear_staging(staged)
        try:
            yield staged
        except BaseException:
            if staged.exists():
                shutil.rmtree(staged)
            raise
        _swap_in(staged, target)


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
    DamagedStoreError
        Chunk files of complete samples are missing, or the store's metadata is damaged.
    """
    store = RunStore.open(path, mode="r")  # refuses missing chunks of complete samples
    if not allow_incomplete:
        done = store.completed()
        if not done.all():
            raise IncompleteRunError(
                f"{str(store.path)!r} is half-written: samples {index_ranges(done)} of {store.n_samples} are complete, "
                f"samples {index_ranges(~done)} are not. Resume it with the same settings and resume=True "
                "(CLI: `denoisefeat extract ... --resume`), or open_run(..., allow_incomplete=True) to read what "
                "is there."
            )
    return Run(store)
