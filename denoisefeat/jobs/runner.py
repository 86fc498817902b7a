"""Run every task of a spec on this machine (a process pool, stage by stage) and report task states."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from .spec import JobSpec, Task, task_grid
from .state import TaskState, task_state
from .tasks import run_task

__all__ = ["Outcome", "run_all", "status"]


@dataclass
class Outcome:
    """What :func:`run_all` did.

    Attributes
    ----------
    ran : list of str
        Ids of the tasks that ran now.
    skipped : list of str
        Ids of the tasks that were already done.
    failed : dict of str to str
        Ids of the tasks that raised, with their error.
    """

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def status(spec: JobSpec) -> list[tuple[Task, TaskState]]:
    """Every task of ``spec`` with its state (done, running, failed or missing), in grid order."""
    return [(task, task_state(spec.jobs_dir, task.id)) for task in task_grid(spec)]


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_one(spec: JobSpec, index: int) -> bool:
    return run_task(spec, index)


def run_all(spec: JobSpec, *, workers: int = 1, progress: bool = False) -> Outcome:
    """Run every task that is not done, stage by stage (extraction and ablation, then features).

    Parameters
    ----------
    spec : JobSpec
    workers : int
        Processes running tasks at once (``1``: in this process).  Each worker gets
        ``cpu_count // workers`` torch threads (CPU results can differ in the last bits with the
        number of threads: compare stores made with the same thread count).
    progress : bool
        Show a rich progress bar over tasks.

    Returns
    -------
    Outcome
        A task that raises does not stop the others; its error is in ``Outcome.failed`` (and in its
        failure note, see :mod:`denoisefeat.jobs.state`).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    grid = task_grid(spec)
    outcome = Outcome()
    stages = [[t for t in grid if t.stage == stage] for stage in sorted({t.stage for t in grid})]
    with _Bar(progress, total=len(grid)) as advance, contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            import multiprocessing

            threads = max(1, (os.cpu_count() or 1) // workers)
            pool = stack.enter_context(ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(threads,)))
        for tasks in stages:  # a stage starts when the previous one is over
            if pool is None:
                for task in tasks:
                    _record(outcome, task, lambda t=task: run_task(spec, t.index))
                    advance()
                continue
            futures = {pool.submit(_run_one, spec, task.index): task for task in tasks}
            for future in as_completed(futures):
                _record(outcome, futures[future], future.result)
                advance()
    return outcome


def _record(outcome: Outcome, task: Task, result) -> None:
    try:
        ran = result()
    except Exception as err:  # one failing task does not stop the others
        outcome.failed[task.id] = f"{type(err).__name__}: {err}"
        return
    (outcome.ran if ran else outcome.skipped).append(task.id)


class _Bar:
    """A rich progress bar over tasks (on stderr), or nothing."""

    def __init__(self, enabled: bool, *, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True))
        self._bar.__enter__()
        task = self._bar.add_task("tasks", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
