"""Run one task of a job spec: lock it, skip it if done, compute only what it owns, mark it done.

Kinds of task (:func:`~denoisefeat.jobs.spec.task_grid`):

* ``extract``: :func:`denoisefeat.trace` of the task's sample chunks into its configuration's
  store (``resume=True, only_samples=...``);
* ``features``: :func:`denoisefeat.features` of the task's sample chunks;
* ``ablation``: :func:`denoisefeat.analyses.ablation.ablation_scan` of one layer entry, window and
  method; its table goes to ``<jobs>/ablation/<task id>.json`` until ``jobs merge``.

Shared stores
-------------
Tasks of one configuration write one store.  Creating the store and its arrays (zarr metadata)
must happen once, so the first task to arrive does its whole work while holding the store's
initialisation lock (``<jobs>/init/<configuration>.<part>.lock``, a blocking ``flock``) and then
leaves ``...done``; the others wait for that lock, find the arrays made and write their own
chunks in parallel.  After that, a task writes only the chunk files of its own samples, the chunk
of ``complete`` that covers them last, fsyncs those files, and only then writes its marker.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import time
from pathlib import Path

from denoisefeat.locking import TaskLock, flock

from .spec import JobSpec, Task, task_grid
from .state import task_paths, write_json_atomic

__all__ = ["ablation_table_path", "run_task"]


def ablation_table_path(spec: JobSpec, task: Task) -> Path:
    """Where an ablation task leaves its table (JSON: column name -> values, floats exact).

    Parameters
    ----------
    spec : JobSpec
    task : Task
        An ablation task of ``spec``.

    Returns
    -------
    Path
    """
    return spec.jobs_dir / "ablation" / f"{task.id}.json"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _pipeline(model: str, device: str, dtype: str | None):
    """The spec's pipeline, loaded once per process (a pool worker runs many tasks)."""
    import torch

    from denoisefeat.models import load_pipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_pipeline(model, device=device, dtype=None if dtype is None else getattr(torch, dtype))


def _pipe(spec: JobSpec):
    return _pipeline(spec.model, spec.device, spec.dtype)


@contextlib.contextmanager
def _flock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        flock(f, fcntl.LOCK_EX, path=path)  # blocking: wait for the first writer
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _first_writer(spec: JobSpec, name: str, work) -> None:
    """Run ``work()``; the first caller for ``name`` runs it alone (it creates the shared metadata)."""
    lock = spec.jobs_dir / "init" / f"{name}.lock"
    done = lock.with_suffix(".done")
    with _flock(lock):
        if not done.exists():
            work()
            write_json_atomic(done, {"by": socket.gethostname(), "pid": os.getpid()})
            return
    work()


# ---------------------------------------------------------------------------------------------
# The three kinds
# ---------------------------------------------------------------------------------------------
def _trace_kwargs(spec: JobSpec, task: Task) -> dict:
    config = task.config
    return dict(
        samples=spec.samples, prompts=None if spec.prompts is None else list(spec.prompts),
        class_labels=None if spec.labels is None else list(spec.labels), negative_prompt=spec.negative_prompt,
        seed=list(spec.seeds), steps=config.steps, scheduler=config.scheduler, guidance_scale=config.guidance,
        batch_size=spec.batch_size, keep=spec.keep, store_dtype=spec.store_dtype,
        record=None if spec.record is None else {layer: list(r) for layer, r in spec.record.items()},
        model_id=spec.model,
    )


def _extract(spec: JobSpec, task: Task) -> None:
    from denoisefeat.store import RunStore
    from denoisefeat.trajectory import trace

    pipe = _pipe(spec)
    store = task.config.store
    store.parent.mkdir(parents=True, exist_ok=True)
    kwargs = _trace_kwargs(spec, task)

    def work():
        trace(pipe, **kwargs, store=store, resume=True, only_samples=slice(*task.samples))

    _first_writer(spec, f"{task.config.name}.run", work)
    RunStore.open(store, mode="r", verify=False).fsync(task.samples)  # before the task's marker


def _features(spec: JobSpec, task: Task) -> None:
    from denoisefeat.step_features import features
    from denoisefeat.store import FEATURES, IncompleteRunError, RunStore

    feats = spec.features
    store = task.config.store
    needed = task.id.replace("features-", "extract-", 1)  # the extraction task of the same samples
    if not task_paths(spec.jobs_dir, needed).get("done").exists():
        raise IncompleteRunError(f"Task {task.id!r} needs extraction task {needed!r} done first (`jobs run` it, "
                                 "or submit the whole spec: stage 1 waits for stage 0).")

    def work():
        features(str(store), samples=slice(*task.samples),
                 metrics=None if feats.metrics is None else list(feats.metrics), wavelet=feats.wavelet,
                 batch_size=feats.batch_size)

    _first_writer(spec, f"{task.config.name}.features", work)
    RunStore.open(store, mode="r", verify=False).fsync(task.samples, group=FEATURES)


def _loop_steps(pipe, spec: JobSpec, task: Task) -> int:
    """Number of denoiser calls of the configuration's loop (Heun makes about twice ``steps``)."""
    from denoisefeat.options import RunOptions
    from denoisefeat.trajectory import DenoisingLoop

    n = spec.ablation.samples
    options = RunOptions(samples=n, class_labels=None if spec.labels is None else list(spec.labels[:n]),
                         prompts=None if spec.prompts is None else list(spec.prompts[:n]),
                         steps=task.config.steps, scheduler=task.config.scheduler, guidance_scale=task.config.guidance)
    return DenoisingLoop(pipe, *options.request(pipe)).n_steps


def _ablation(spec: JobSpec, task: Task) -> None:
    from denoisefeat.analyses.ablation import ablation_scan
    from denoisefeat.steps import step_windows

    pipe = _pipe(spec)
    abl, config = spec.ablation, task.config
    n = abl.samples
    window = task.window
    if window is None:
        i, count = task.window_part
        window = step_windows(count, _loop_steps(pipe, spec, task))[i]
    frame = ablation_scan(
        pipe, layers=[task.layer], windows=[window], method=task.method, features=list(abl.features), samples=n,
        class_labels=None if spec.labels is None else list(spec.labels[:n]),
        prompts=None if spec.prompts is None else list(spec.prompts[:n]), negative_prompt=spec.negative_prompt,
        seed=list(spec.seeds[:n]), steps=config.steps, scheduler=config.scheduler, guidance_scale=config.guidance,
        batch_size=abl.batch_size,
    )
    frame = frame.assign(configuration=config.name)
    write_json_atomic(ablation_table_path(spec, task), {"columns": list(frame.columns), "data": {
        column: frame[column].tolist() for column in frame.columns}})  # Python floats: exact round trip


_KINDS = {"extract": _extract, "features": _features, "ablation": _ablation}


def run_task(spec: JobSpec, index: int) -> bool:
    """Run task ``index`` of ``spec`` unless it is done.

    Parameters
    ----------
    spec : JobSpec
        A validated spec.
    index : int
        The task's position in :func:`~denoisefeat.jobs.spec.task_grid` (the array index).

    Returns
    -------
    bool
        True when the task ran now, False when its marker said it was already done.

    Raises
    ------
    IndexError
        ``index`` outside the grid.
    denoisefeat.locking.TaskLockedError
        Another live process runs the same task (the message names its PID and host).
    Exception
        Whatever the task raised; the error is also left in ``<jobs>/tasks/<id>.failed.json``.

    Notes
    -----
    A task that was killed (SIGKILL, walltime, OOM) left no marker: running it again redoes the
    sample chunks it had not marked complete in the store and keeps the others, so the result is
    the same, bit for bit, as a run that was never interrupted.
    """
    grid = task_grid(spec)
    if isinstance(index, bool) or not 0 <= index < len(grid):
        raise IndexError(f"Task index {index} is out of range: the spec has {len(grid)} tasks (0-{len(grid) - 1}).")
    task = grid[index]
    paths = task_paths(spec.jobs_dir, task.id)
    if paths["done"].exists():
        return False
    with TaskLock(paths["lock"]):
        if paths["done"].exists():  # finished by another process between the check and the lock
            return False
        started = time.time()
        try:
            _KINDS[task.kind](spec, task)
        except BaseException as err:
            write_json_atomic(paths["failed"], {"task": task.id, "error": f"{type(err).__name__}: {err}",
                                                "host": socket.gethostname(), "pid": os.getpid(),
                                                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            raise
        write_json_atomic(paths["done"], {
            "task": task.id, "kind": task.kind, "configuration": task.config.name,
            "samples": None if task.samples is None else list(task.samples), "host": socket.gethostname(),
            "pid": os.getpid(), "seconds": round(time.time() - started, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        paths["failed"].unlink(missing_ok=True)
    return True
