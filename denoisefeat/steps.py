"""Step conventions, the ground floor every other module builds on: loop steps, CFG branches,
step selections and step windows.

* ``step`` is the 0-based index of the sampling loop: one per denoiser call of the loop (Heun's
  second-order step is two steps).
* Under classifier-free guidance the denoiser's batch is doubled; :data:`BRANCHES` is the order in
  which denoisefeat always stores the halves, whatever order the pipeline uses
  (:func:`uncond_cond`).
* A step window is a half-open ``(start, stop)`` pair of loop steps; :func:`step_windows` makes
  them for the probes, the regressions and the ablation and patching scans alike.

This module imports nothing from denoisefeat (and neither torch nor diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BRANCHES", "StepClock", "step_windows", "steps_selection", "uncond_cond"]

#: The order of the classifier-free-guidance branches along a stored ``branch`` axis.
BRANCHES = ("uncond", "cond")


@dataclass
class StepClock:
    """Which loop step the denoiser is being called for; set by the denoising loop, read by hooks.

    Attributes
    ----------
    step : int or None
        Loop index of the current denoiser call (``None`` outside the loop).
    samples : slice or None
        Which samples of the run are in the batch being denoised.
    branches : tuple of str or None
        Under classifier-free guidance, the order of the halves of the denoiser's batch
        (e.g. ``("uncond", "cond")``); ``None`` without guidance.
    lanes : int
        How many copies of ``samples`` the batch holds (several edited trajectories of one sample
        chunk denoised together, lane-major within each CFG half: rows ``lane * n + i``).
    """

    step: int | None = None
    samples: slice | None = None
    branches: tuple[str, ...] | None = None
    lanes: int = 1


def uncond_cond(first, second, branches):
    """Reorder the two halves of a CFG batch between the pipeline's order and :data:`BRANCHES`.

    Parameters
    ----------
    first, second : object
        The halves, in the order ``branches`` names (or in :data:`BRANCHES` order, to go back).
    branches : sequence of str
        The pipeline's branch order, ``("uncond", "cond")`` or ``("cond", "uncond")``.

    Returns
    -------
    tuple
        ``(first, second)`` when ``branches`` is :data:`BRANCHES`, else ``(second, first)``.  The
        swap is its own inverse: the same call maps stored halves back to the pipeline's order.
    """
    return (first, second) if tuple(branches) == BRANCHES else (second, first)


def steps_selection(steps, n_steps: int | None = None) -> frozenset[int] | None:
    """Normalise a step selection.

    Parameters
    ----------
    steps : None, int, range, slice or iterable of int
        ``None`` means every step.  Negative steps count from the end and need ``n_steps``.
    n_steps : int, optional
        Number of loop steps of the run; steps outside ``[0, n_steps)`` are refused.

    Returns
    -------
    frozenset of int or None
        The chosen steps, or ``None`` for all of them.

    Raises
    ------
    ValueError
        A step outside the run, or a slice without ``n_steps``.
    """
    if steps is None:
        return None
    if isinstance(steps, slice):
        if n_steps is None:
            raise ValueError("A slice of steps needs the number of steps; pass a range or a list instead.")
        steps = range(n_steps)[steps]
    if isinstance(steps, (int, np.integer)):
        steps = [int(steps)]
    chosen = set()
    for s in steps:
        s = int(s)
        if s < 0 and n_steps is not None:
            s += n_steps
        if s < 0 or (n_steps is not None and s >= n_steps):
            bound = f"0…{n_steps - 1}" if n_steps is not None else "≥ 0"
            raise ValueError(f"Step {s} is outside the run's steps ({bound}).")
        chosen.add(s)
    return frozenset(chosen)


def step_windows(windows, steps) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` step windows: a number of contiguous parts, or explicit pairs.

    Parameters
    ----------
    windows : int or sequence of (int, int)
        A number of windows splitting ``steps`` into contiguous parts as evenly as possible (the
        first parts one step longer), or explicit ``(start, stop)`` pairs of loop steps.
    steps : int or array_like of int
        The number of loop steps of a run (the steps ``0 … steps − 1``), or the sorted loop
        steps that are there (for example an activation's ``step`` coordinate).

    Returns
    -------
    list of (int, int)
        The windows in the order given; ``start`` is a window's first step, ``stop`` one past its
        last.

    Raises
    ------
    TypeError
        ``windows`` is a bool.
    ValueError
        An empty list, a number of windows outside ``1 … len(steps)``, a pair that is not
        ``start < stop`` inside the steps, or duplicate pairs.

    Examples
    --------
    >>> step_windows(3, 7)
    [(0, 3), (3, 5), (5, 7)]
    >>> step_windows(2, [10, 12, 14, 16])
    [(10, 13), (14, 17)]
    """
    if isinstance(steps, (int, np.integer)):
        if steps <= 0:
            raise ValueError(f"A run has at least one step; got steps={steps}.")
        steps = np.arange(int(steps))
    steps = np.asarray(steps, dtype=np.int64).reshape(-1)
    if steps.size == 0:
        raise ValueError("There are no steps to split into windows.")
    first, end = int(steps.min()), int(steps.max()) + 1
    if isinstance(windows, (bool, np.bool_)):
        raise TypeError("windows must be a number of windows or (start, stop) pairs, not a bool.")
    if isinstance(windows, (int, np.integer)):
        if not 1 <= windows <= len(steps):
            raise ValueError(f"windows must be between 1 and steps={len(steps)}, got {windows}.")
        return [(int(part[0]), int(part[-1]) + 1) for part in np.array_split(np.sort(steps), int(windows))]
    pairs = [tuple(int(v) for v in pair) for pair in windows]
    if not pairs:
        raise ValueError("windows is empty: give a number of windows or (start, stop) pairs.")
    for pair in pairs:
        if len(pair) != 2 or not first <= pair[0] < pair[1] <= end:
            raise ValueError(f"Invalid window {pair}: need {first} <= start < stop <= {end}; it is empty or "
                             f"outside the steps {first}–{end - 1}.")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"Duplicate windows in {pairs}.")
    return pairs
