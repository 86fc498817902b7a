"""The one progress bar of denoisefeat's long loops (denoising, features, cluster tasks), or nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(enabled: bool, *, total: int, label: str, stderr: bool = False) -> Iterator[Callable[..., None]]:
    """A rich progress bar over ``total`` units of work, as a context manager.

    Parameters
    ----------
    enabled : bool
        Whether to show the bar; without it the yielded callable does nothing.
    total : int
        Units of work (denoiser calls, samples, tasks).
    label : str
        What the bar counts, shown on its left.
    stderr : bool
        Draw on standard error (for commands whose standard output is data).

    Yields
    ------
    callable
        ``advance(n=1)``: mark ``n`` more units done.
    """
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True) if stderr else None
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
