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

Batched edited runs
-------------------
Edited runs that start at the same step share one denoiser batch: ``lanes`` copies of a sample
chunk, each edited by its own :class:`~denoisefeat.hooks.intervene` (``lane=i``), with its own
generators and its own copy of the scheduler's state (:meth:`DenoisingLoop.run` with ``lanes``).
Batch-dependent edits (``mean``, ``resample``, ``noise``) see their own copy's rows, exactly those
of a one-copy run: each lane is its edit's run in a batch of that size, bit for bit, whatever the
other lanes do (tested).  The denoiser's kernels round differently at another batch size, so a cell
equals its one-at-a-time run to that rounding (about 1e-5 of the final image on the CPU;
``docs/pitfalls/prefix-caching-and-batch-mean.md``).  A GPU runs a batch of ``lanes × batch_size``
samples in about the time of a few small ones; a CPU gains little (about as long per sample at
batch 8 and above on one thread; 1.4× over prefix caching alone for the toy model's 2-sample scan on
2 threads), so by default lanes are used on CUDA only, as many as fit in half
the free memory given what the unedited run needed.  The final images of cells that finish before
their turn wait in host memory (at most every cell's, ``(sample, 3, H, W)`` float32 each).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

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
    lanes : int, optional
        The most edited runs denoised in one batch (module notes); default: 1 on a CPU, on CUDA
        as many as fit in half the free memory.
    keep_images : int
        Keep the final images of the first ``keep_images`` samples of the unedited run
        (:attr:`kept_base`) and of every edited run (:attr:`kept`), float32: ``(edits + 1) ×
        keep_images × 3 × H × W × 4`` bytes of host memory; 0 keeps none.

    Attributes
    ----------
    n_samples, n_steps : int
        The run's samples and loop steps.
    base : denoisefeat.store.Run or None
        The unedited run, once :meth:`run_base` made it.
    calls : int
        Denoiser calls made so far (the unedited run's included; a batch of lanes is one call).
    kept_base : numpy.ndarray or None
        ``(keep_images, 3, H, W)``: the unedited run's first final images, once :meth:`run_base` ran
        (None with ``keep_images=0``).
    kept : list of numpy.ndarray
        ``(keep_images, 3, H, W)`` of each edited run :meth:`run_edits` yielded, in its order.
    """

    def __init__(self, pipe, options: RunOptions, *, cache: bool = True, progress: bool = False,
                 lanes: int | None = None, keep_images: int = 0):
        if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1):
            raise ValueError(f"lanes must be a positive integer or None, got {lanes!r}.")
        if isinstance(keep_images, bool) or not isinstance(keep_images, (int, np.integer)) or keep_images < 0:
            raise ValueError(f"keep_images must be a non-negative integer, got {keep_images!r}.")
        self.pipe, self.options, self.cache, self.progress = pipe, options, cache, progress
        self.lanes = None if lanes is None else int(lanes)
        self._chunk_bytes = 0  # device memory the unedited run needed per sample chunk (CUDA)
        request, scheduler = options.request(pipe, decode=False)
        self.loop = DenoisingLoop(pipe, request, scheduler)
        self.chunks = self.loop.chunks(options.batch_size)
        self.n_samples, self.n_steps = request.n_samples, self.loop.n_steps
        if keep_images > self.n_samples:
            raise ValueError(f"keep_images={keep_images} is more than the scan's {self.n_samples} samples.")
        self.keep_images = int(keep_images)
        self.kept_base: np.ndarray | None = None
        self.kept: list[np.ndarray] = []
        self.base = None
        self.calls = 0
        self._prefixes: PrefixCache | None = None

    def planned_calls(self, edits: Sequence[Edit], *, cache: bool | None = None, lanes: int | None = None) -> int:
        """Denoiser calls of the whole scan: the unedited run plus the edited ones.

        Parameters
        ----------
        edits : sequence of Edit
        cache : bool, optional
            With or without prefix caching; default the scan's own setting.
        lanes : int, optional
            Edited runs per denoiser batch; default the scan's own (1 until known).

        Returns
        -------
        int
        """
        groups = self._groups(edits, cache=self.cache if cache is None else cache, lanes=lanes or self.lanes or 1)
        return len(self.chunks) * (self.n_steps + sum(self.n_steps - start for start, _ in groups))

    @staticmethod
    def _groups(edits: Sequence[Edit], *, cache: bool, lanes: int) -> list[tuple[int, list[int]]]:
        """``(start, edit indices)`` of the batches: edits sharing a first step, at most ``lanes`` each,
        ordered by their first edit."""
        by_start: dict[int, list[int]] = {}
        for i, edit in enumerate(edits):
            by_start.setdefault(_first_step(edit) if cache else 0, []).append(i)
        groups = [(start, idx[k:k + lanes]) for start, idx in by_start.items() for k in range(0, len(idx), lanes)]
        return sorted(groups, key=lambda group: group[1][0])

    def _lanes(self, edits: Sequence[Edit]) -> int:
        """The scan's lanes, or as many as fit in half the free CUDA memory (1 off CUDA)."""
        if self.lanes is not None:
            return self.lanes
        device = self.loop.family.device
        if device.type != "cuda" or self._chunk_bytes <= 0:
            return 1
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(len(edits), free // 2 // self._chunk_bytes)))

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
        device = self.loop.family.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        self.base = trace(self.pipe, store=store, overwrite=overwrite, keep=keep, prefixes=self._prefixes,
                          progress=self.progress, **vars(self.options))
        if device.type == "cuda":
            self._chunk_bytes = torch.cuda.max_memory_allocated(device) - before
        self.calls += len(self.chunks) * self.n_steps
        final = as_images(self.base["final"].values)
        if self.keep_images:
            self.kept_base = final[:self.keep_images].astype(np.float32)
        return final

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
            size (so that batch-dependent edits such as ``mean`` see the batches ``trace`` makes);
            edits that start at the same step run as lanes of one batch (module notes).

        Raises
        ------
        RuntimeError
            With prefix caching, before :meth:`run_base`.
        """
        if self.cache and self._prefixes is None:
            raise RuntimeError("run_base(edits) first: the edited runs start from its kept states.")
        lanes = self._lanes(edits)
        total = self.planned_calls(edits, lanes=lanes) - len(self.chunks) * self.n_steps
        done: dict[int, np.ndarray] = {}
        following = 0
        with progress_bar(self.progress, total=total, label="edited runs") as advance:
            for start, group in self._groups(edits, cache=self.cache, lanes=lanes):
                done.update(zip(group, self._run_lanes([edits[i] for i in group], start, advance), strict=True))
                while following in done:  # in the order of ``edits``
                    images = as_images(done.pop(following))
                    if self.keep_images:
                        self.kept.append(images[:self.keep_images].astype(np.float32))
                    yield images
                    following += 1

    def _run_lanes(self, edits: Sequence[Edit], start: int, advance) -> list[np.ndarray]:
        """The final images of edited runs that start at ``start``, denoised as lanes of one batch."""
        before = self.loop.calls
        with contextlib.ExitStack() as hooks:
            for lane, edit in enumerate(edits):
                hooks.enter_context(intervene(self.pipe, [edit], clock=self.loop.clock, lane=lane))
            per_chunk = []
            for samples in self.chunks:
                state = None if start == 0 else self._prefixes.state(samples, start)
                final = self.loop.run(samples, start=state, advance=advance, lanes=len(edits)).float().cpu().numpy()
                per_chunk.append(final.reshape(len(edits), samples.stop - samples.start, *final.shape[1:]))
        self.calls += self.loop.calls - before
        return [np.concatenate([chunk[lane] for chunk in per_chunk]) for lane in range(len(edits))]
