"""The one generic scan: an unedited run, then one run per edit, sharing seeds, batches and prefixes.

:func:`~denoisefeat.analyses.ablation_scan` (edits that ablate) and
:func:`~denoisefeat.analyses.causal_trace` (edits that patch clean activations into a corrupted run)
are presets over :class:`EditScan`, as TransformerLens's activation-patching presets are over its
``generic_activation_patch``: they choose the edits and what to measure on the final images, the
scan runs them.

Prefix caching
--------------
A trajectory edited from step ``k`` on is the unedited trajectory up to step ``k``.  With
``cache=True`` the unedited run keeps, for each first edited step ``k``, the state of its loop just
before ``k`` (:class:`denoisefeat.trajectory.PrefixCache`: the sample, a copy of the scheduler, the
state of every sample's generator) and each edited run starts from there, saving ``k`` denoiser calls;
the noise drawn at every later step is the noise the full run draws, so this is exact for stochastic
schedulers too.  Results equal those of ``cache=False`` to float tolerance.  The states stay on the
model's device: per sample chunk and first edited step, one sample batch, one scheduler copy and the
generator states.

The unedited run is :func:`denoisefeat.trace` itself (written to ``store`` when one is given); the
edited runs are the same :class:`denoisefeat.trajectory.DenoisingLoop`, in memory, with torch forward
hooks (:class:`denoisefeat.hooks.intervene`) on both halves of a classifier-free-guidance batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from denoisefeat.hooks import Edit, intervene
from denoisefeat.options import RunOptions
from denoisefeat.progress import progress_bar
from denoisefeat.trajectory import DenoisingLoop, PrefixCache, trace

__all__ = ["EditScan", "as_images"]


def as_images(final) -> np.ndarray:
    """Final images as the scans compare them: float64 in [0, 1].

    Parameters
    ----------
    final : array_like
        ``(sample, 3, H, W)`` as a run stores them (float32).

    Returns
    -------
    numpy.ndarray
        The same values in float64, clipped to the metrics' [0, 1].
    """
    return np.clip(np.asarray(final, dtype=np.float32).astype(np.float64), 0.0, 1.0)


def _first_step(edit: Edit) -> int:
    return 0 if edit.steps is None or not edit.steps else min(edit.steps)


class EditScan:
    """The final images of an unedited run and of one run per edit.

    Made from the run options alone (validated, nothing run yet), so that the edits can be built
    for its :attr:`n_steps`; then :meth:`run_base` runs the unedited trajectory and
    :meth:`run_edits` the edited ones.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    options : denoisefeat.options.RunOptions
        The run every trajectory of the scan shares (conditions, seeds, batches, scheduler …).
    cache : bool
        Start each edited run from the unedited run's state before its first edited step (module
        notes); ``False`` runs every trajectory from step 0.
    progress : bool
        Show progress bars over the denoiser calls.

    Attributes
    ----------
    n_samples, n_steps : int
        The run's samples and loop steps.
    base : denoisefeat.store.Run or None
        The unedited run, once :meth:`run_base` made it.
    calls : int
        Denoiser calls made so far (the unedited run's included).
    """

    def __init__(self, pipe, options: RunOptions, *, cache: bool = True, progress: bool = False):
        self.pipe, self.options, self.cache, self.progress = pipe, options, cache, progress
        request, scheduler = options.request(pipe, decode=False)
        self.loop = DenoisingLoop(pipe, request, scheduler)
        self.chunks = self.loop.chunks(options.batch_size)
        self.n_samples, self.n_steps = request.n_samples, self.loop.n_steps
        self.base = None
        self.calls = 0
        self._prefixes: PrefixCache | None = None

    def planned_calls(self, edits: Sequence[Edit], *, cache: bool | None = None) -> int:
        """Denoiser calls of the whole scan: the unedited run plus the edited ones.

        Parameters
        ----------
        edits : sequence of Edit
        cache : bool, optional
            With or without prefix caching; default the scan's own setting.

        Returns
        -------
        int
        """
        cache = self.cache if cache is None else cache
        starts = [_first_step(edit) if cache else 0 for edit in edits]
        return len(self.chunks) * (self.n_steps + sum(self.n_steps - s for s in starts))

    def run_base(self, edits: Sequence[Edit], *, store=None, overwrite: bool = False) -> np.ndarray:
        """Run the unedited trajectory, keeping its state before the first step of each edit.

        Parameters
        ----------
        edits : sequence of Edit
            The edits :meth:`run_edits` will run (their first steps are the prefixes kept).
        store : str or path, optional
            Write the unedited run there (:func:`denoisefeat.trace`, every step).
        overwrite : bool
            Replace an existing ``store``.

        Returns
        -------
        numpy.ndarray
            Its final images ``(sample, 3, H, W)``, float64 in [0, 1] (:func:`as_images`).
        """
        self._prefixes = PrefixCache([_first_step(edit) for edit in edits]) if self.cache else None
        keep = ("xt", "x0", "images") if store is not None else ()
        self.base = trace(self.pipe, store=store, overwrite=overwrite, keep=keep, prefixes=self._prefixes,
                          progress=self.progress, **vars(self.options))
        self.calls += len(self.chunks) * self.n_steps
        return as_images(self.base["final"].values)

    def run_edits(self, edits: Sequence[Edit]) -> Iterator[np.ndarray]:
        """The final images of each edited run, in the order of ``edits``.

        Parameters
        ----------
        edits : sequence of Edit
            One run each (a glob edit is expanded into one run of all its layers).

        Yields
        ------
        numpy.ndarray
            ``(sample, 3, H, W)``, float64 in [0, 1]: every sample, in chunks of the run's batch
            size (so that batch-dependent edits such as ``mean`` see the batches ``trace`` makes).

        Raises
        ------
        RuntimeError
            With prefix caching, before :meth:`run_base`.
        """
        if self.cache and self._prefixes is None:
            raise RuntimeError("run_base(edits) first: the edited runs start from its kept states.")
        total = self.planned_calls(edits) - len(self.chunks) * self.n_steps
        with progress_bar(self.progress, total=total, label="edited runs") as advance:
            for edit in edits:
                start = _first_step(edit) if self.cache else 0
                finals, before = [], self.loop.calls
                with intervene(self.pipe, [edit], clock=self.loop.clock):
                    for samples in self.chunks:
                        state = None if start == 0 else self._prefixes.state(samples, start)
                        finals.append(self.loop.run(samples, start=state, advance=advance).float().cpu().numpy())
                self.calls += self.loop.calls - before
                yield as_images(np.concatenate(finals))
