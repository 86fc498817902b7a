"""Run every task of a spec on this machine (a process pool, stage by stage) and report task states."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
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
    """Every task of ``spec`` with its state (done, running, failed or missing), in grid order.

    Parameters
    ----------
    spec : JobSpec

    Returns
    -------
    list of (Task, TaskState)
    """
    return [(task, task_state(spec.jobs_dir, task.id)) for task in task_grid(spec)]


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_DIED = ("the worker process died while running it (killed by a signal, out of memory or a crash); "
         "run the task alone to see why: denoisefeat jobs run SPEC --task {index}")


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def run_all(spec: JobSpec, *, workers: int = 1, progress: bool = False,
            task_runner: Callable[[JobSpec, int], bool] = run_task) -> Outcome:
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
    task_runner : callable
        ``task_runner(spec, index) -> bool`` runs one task (default :func:`run_task`); with
        ``workers > 1`` it must be picklable (a module-level function).

    Returns
    -------
    Outcome
        A task that raises does not stop the others; its error is in ``Outcome.failed`` (and in its
        failure note, see :mod:`denoisefeat.jobs.state`).  A worker process that dies (SIGKILL,
        out of memory) breaks the pool: the tasks it was running with are rerun, each alone in a
        fresh worker, so that the one that kills its worker is marked failed and the others
        finish; the pool is then rebuilt for the remaining tasks.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    grid = task_grid(spec)
    outcome = Outcome()
    stages = [[t for t in grid if t.stage == stage] for stage in sorted({t.stage for t in grid})]
    threads = max(1, (os.cpu_count() or 1) // workers)
    with _Bar(progress, total=len(grid)) as advance:
        for tasks in stages:  # a stage starts when the previous one is over
            if workers == 1:
                for task in tasks:
                    _record(outcome, task, lambda t=task: task_runner(spec, t.index))
                    advance()
                continue
            queue = list(tasks)
            while queue:
                with _pool(workers, threads) as pool:
                    suspects = _drain(pool, queue, spec, task_runner, outcome, advance, workers=workers)
                for task in suspects:  # alone, so that a task that kills its worker takes nobody with it
                    with _pool(1, threads) as solo:
                        future = solo.submit(task_runner, spec, task.index)
                        try:
                            future.result()
                        except BrokenProcessPool:
                            outcome.failed[task.id] = _DIED.format(index=task.index)
                        else:
                            _record(outcome, task, future.result)
                    advance()
    return outcome


def _drain(pool, queue, spec, task_runner, outcome, advance, *, workers) -> list[Task]:
    """Run ``queue``'s tasks on ``pool``, at most ``workers`` at a time; stop when the pool breaks.

    Returns the tasks that were in flight when it broke (to rerun alone); ``queue`` keeps the
    tasks never submitted.
    """
    in_flight = {}
    while queue or in_flight:
        while queue and len(in_flight) < workers:
            task = queue.pop(0)
            in_flight[pool.submit(task_runner, spec, task.index)] = task
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
            wait(in_flight)  # the others end now too, finished or broken
            suspects = []
            for future, task in in_flight.items():
                if isinstance(future.exception(), BrokenProcessPool):
                    suspects.append(task)
                else:
                    _record(outcome, task, future.result)
                    advance()
            return suspects
        for future in done:
            _record(outcome, in_flight.pop(future), future.result)
            advance()
    return []


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
