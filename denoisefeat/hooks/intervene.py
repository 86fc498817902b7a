"""Edit named layers' outputs at chosen steps: ablations and activation patching.

An :class:`Edit` says which layer, which steps, which samples (and branch) and how; edits compose in
the order given.  :class:`intervene` applies a list of them with forward hooks that return the
edited output (for tuple outputs, the first element is edited and the rest passed through), removed
in ``finally``.

Methods
-------
``identity``     leave the output as it is (a control: the run is bit-identical to a clean one)
``zero``         set it to 0
``mean``         replace it by its mean over the batch's samples (or by ``reference``, broadcast)
``resample``     replace sample i's output by sample (i+1 mod n)'s output of the same batch
``noise``        add Gaussian noise of standard deviation ``value`` × the output's std (seeded)
``scale``        multiply by ``value``
``project_out``  remove the component along ``direction`` (a channel vector)
``patch``        replace it by the same layer's output in a source run (activation patching / causal
                 tracing); the source must have recorded this layer with the ``full`` reducer at these
                 steps, for the same seeds
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from denoisefeat.hooks._manager import HookManager
from denoisefeat.hooks.layers import first_tensor, layer_name, main_output_index, resolve_layers
from denoisefeat.models import denoiser_of
from denoisefeat.steps import BRANCHES, StepClock, steps_selection, uncond_cond

__all__ = ["METHODS", "Edit", "intervene"]

METHODS = ("identity", "zero", "mean", "resample", "noise", "scale", "project_out", "patch")


@dataclass(frozen=True)
class Edit:
    """One intervention on one layer.

    Parameters
    ----------
    layer : str
        A module path (globs are expanded by :class:`intervene`, one edit per match).
    method : str
        One of :data:`METHODS`.
    steps : iterable of int or None
        Loop steps at which to edit (``None``: every step).
    samples : iterable of int or None
        Run sample indices to edit (``None``: all).
    branch : {"cond", "uncond"} or None
        Under classifier-free guidance, edit one branch only (``None``: both).
    value : float, optional
        ``scale``: the factor α; ``noise``: the standard deviation relative to the output's std.
    direction : array-like, optional
        ``project_out``: a vector over channels.
    reference : array-like, optional
        ``mean``: the value to put in (broadcast against one sample's output); default the batch mean.
    source : Run, optional
        ``patch``: the run to take activations from.
    seed : int
        ``noise``: seed of the noise (a generator per step, so runs are reproducible).
    """

    layer: str
    method: str
    steps: Sequence[int] | None = None
    samples: Sequence[int] | None = None
    branch: str | None = None
    value: float | None = None
    direction: object = None
    reference: object = None
    source: object = field(default=None, compare=False)
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            import difflib

            close = difflib.get_close_matches(self.method, METHODS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown intervention method {self.method!r}.{hint} Known: {', '.join(METHODS)}.")
        if self.method in ("scale", "noise") and self.value is None:
            what = "factor" if self.method == "scale" else "std"
            raise ValueError(f"Edit {self.method!r} needs value= (the {what}).")
        if self.method == "project_out" and self.direction is None:
            raise ValueError("Edit 'project_out' needs direction= (a vector over channels).")
        if self.method == "patch" and self.source is None:
            raise ValueError("Edit 'patch' needs source= (a Run that recorded this layer with the 'full' reducer).")
        if self.branch not in (None, *BRANCHES):
            raise ValueError(f"branch must be 'cond', 'uncond' or None, got {self.branch!r}.")
        object.__setattr__(self, "layer", layer_name(self.layer))  # a LayerInfo from list_layers works too
        if self.steps is not None:  # normalise once: a frozenset of non-negative step indices
            object.__setattr__(self, "steps", steps_selection(self.steps))

    def describe(self) -> dict:
        """A JSON-able record of the edit (stored in the run's attributes)."""
        return {
            "layer": self.layer, "method": self.method,
            "steps": None if self.steps is None else sorted(int(s) for s in self.steps),
            "samples": None if self.samples is None else sorted(int(s) for s in self.samples),
            "branch": self.branch, "value": self.value, "seed": self.seed,
            "source": None if self.source is None else str(getattr(self.source, "path", None) or "in-memory run"),
            "direction": None if self.direction is None else np.asarray(self.direction, dtype=float).tolist(),
        }


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value), dtype=like.dtype, device=like.device)


def _edit_tensor(edit: Edit, x: torch.Tensor, *, step: int, rows: torch.Tensor, source_rows) -> torch.Tensor:
    """Apply ``edit`` to the rows ``rows`` of ``x`` (the batch), returning a new tensor."""
    method = edit.method
    if method == "identity":
        return x
    y = x.clone()
    part = x[rows]
    if method == "zero":
        new = torch.zeros_like(part)
    elif method == "scale":
        new = part * edit.value
    elif method == "mean":
        if edit.reference is not None:
            new = _as_tensor(edit.reference, part).expand_as(part)
        else:
            new = part.mean(dim=0, keepdim=True).expand_as(part)
    elif method == "resample":
        new = part.roll(shifts=-1, dims=0)
    elif method == "noise":
        generator = torch.Generator().manual_seed(edit.seed * 100_003 + step)
        noise = torch.randn(part.shape, generator=generator).to(part.device, part.dtype)
        new = part + edit.value * part.float().std().to(part.dtype) * noise
    elif method == "project_out":
        d = _as_tensor(edit.direction, part)
        d = d / d.norm()
        shape = (1, -1) + (1,) * (part.ndim - 2)
        if part.ndim == 3 and part.shape[-1] == d.numel():  # tokens (batch, token, channel)
            new = part - (part @ d)[..., None] * d
        else:
            coefficient = (part * d.reshape(shape)).sum(1, keepdim=True)
            new = part - coefficient * d.reshape(shape)
    elif method == "patch":
        new = source_rows
    else:  # pragma: no cover - validated in Edit
        raise AssertionError(method)
    y[rows] = new.to(y.dtype)
    return y


class _PatchSource:
    """Reads a source run's ``full`` activations of one layer for a batch of samples at a step."""

    def __init__(self, run, layer: str):
        from denoisefeat.store import Run, acts_path

        if not isinstance(run, Run):
            raise TypeError("patch source must be a denoisefeat Run (from trace(..., record=...) or open_run)")
        if layer not in run.layers():
            raise ValueError(f"The patch source did not record {layer!r}; record it with the 'full' reducer.")
        if "full" not in run.store.acts_reducers(layer):
            raise ValueError(f"The patch source recorded {layer!r} without the 'full' reducer; patching needs it.")
        self.array = run.store.array(acts_path(layer, "full"))
        self.dims = list(self.array.metadata.dimension_names)
        self.seeds = np.asarray(run.dataset["seed"].values)

    def rows(self, samples: slice, step: int, branches) -> torch.Tensor:
        region = [samples] + [slice(None)] * (len(self.dims) - 1)
        region[self.dims.index("step")] = step
        data = torch.from_numpy(np.asarray(self.array[tuple(region)]))
        if "branch" in self.dims:  # (B, 2, ...) in (uncond, cond) order → the pipeline's doubled batch
            uncond, cond = data[:, 0], data[:, 1]
            data = torch.cat(uncond_cond(uncond, cond, branches))
        return data


class intervene(HookManager):
    """Apply edits to layer outputs during a run (a context manager).

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module
    edits : Edit or sequence of Edit
        Applied in order; several edits of one layer compose.
    clock : StepClock, optional
        Supplied by :func:`denoisefeat.trace` (which also says which samples are in the batch, the
        CFG branch order, and checks patch sources); without it a step is one root call of the
        denoiser and the batch is samples ``0 … B−1``.
    lane : int, optional
        In a loop that denoises several copies of its sample chunk at once (``clock.lanes``, the
        scans' batched edited runs), edit only copy ``lane``; every batch-dependent method
        (``mean``, ``resample``, ``noise``) sees that copy's rows exactly as a one-copy run does.
    """

    def __init__(self, pipe_or_denoiser, edits, *, clock: StepClock | None = None, lane: int | None = None):
        if lane is not None and (isinstance(lane, bool) or not isinstance(lane, int) or lane < 0):
            raise ValueError(f"lane must be a non-negative integer, got {lane!r}.")
        self.lane = lane
        self.denoiser = denoiser_of(pipe_or_denoiser)
        if isinstance(edits, Edit):
            edits = [edits]
        expanded = []
        for edit in edits:
            for name in resolve_layers(self.denoiser, edit.layer):
                expanded.append(edit if name == edit.layer else _replace(edit, layer=name))
        self.edits = expanded
        super().__init__(clock)
        self._sources = {
            (id(e.source), e.layer): _PatchSource(e.source, e.layer) for e in self.edits if e.method == "patch"
        }

    def describe(self) -> list[dict]:
        return [e.describe() for e in self.edits]

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """Refuse patch sources made with other seeds (their activations belong to other trajectories)."""
        for (_, layer), source in self._sources.items():
            if len(source.seeds) != len(seeds) or not np.array_equal(source.seeds, np.asarray(seeds)):
                raise ValueError(
                    f"Patch source for {layer!r} was made with seeds {source.seeds.tolist()[:6]}…, this run uses "
                    f"{list(seeds)[:6]}…: patch between runs with the same seeds and samples."
                )

    def _rows(self, edit: Edit, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows to edit: in the batch, and in one copy of the sample chunk (a patch source's rows)."""
        lanes = self.clock.lanes
        if lanes != 1 and self.lane is None:
            raise ValueError(f"The loop denoises {lanes} copies of its samples at once; give intervene(..., lane=i).")
        if self.lane is not None and self.lane >= lanes:
            raise ValueError(f"lane={self.lane}, but the loop denoises {lanes} copies of its samples.")
        halves = 2 if self.clock.branches else 1
        samples = self.clock.samples or slice(0, batch // halves // lanes)
        n = samples.stop - samples.start
        keep = np.ones(n, dtype=bool)
        if edit.samples is not None:
            keep = np.isin(np.arange(samples.start, samples.stop), np.asarray(list(edit.samples)))
        if self.clock.branches is None:
            parts = [keep]
        else:
            parts = [keep if edit.branch in (None, b) else np.zeros(n, bool) for b in self.clock.branches]
        single = torch.from_numpy(np.flatnonzero(np.concatenate(parts)))
        if lanes == 1:
            return single, single
        lane_mask = np.zeros((halves, lanes, n), dtype=bool)  # lane-major within each CFG half
        lane_mask[:, self.lane] = np.stack(parts)
        return torch.from_numpy(np.flatnonzero(lane_mask.reshape(-1))), single

    def _make_hook(self, edits: list[Edit]):
        def hook(module, args, output):
            step = self.clock.step
            active = [e for e in edits if step is not None and (e.steps is None or step in e.steps)]
            if not active:
                return None
            index = main_output_index(module)
            tensor = first_tensor(output, index=index)
            edited = tensor
            for edit in active:
                rows, single = self._rows(edit, tensor.shape[0])
                if rows.numel() == 0:
                    continue
                source_rows = None
                if edit.method == "patch":
                    source = self._sources[(id(edit.source), edit.layer)]
                    lanes = self.clock.lanes
                    samples = self.clock.samples or slice(0, tensor.shape[0] // lanes // (2 if self.clock.branches
                                                                                         else 1))
                    full = source.rows(samples, step, self.clock.branches)
                    full = _from_channel_first(full, tensor).to(tensor.device, tensor.dtype)
                    if (full.shape[0] * lanes, *full.shape[1:]) != tuple(tensor.shape):
                        raise ValueError(
                            f"Patch source activations of {edit.layer!r} have shape {tuple(full.shape)}, the run's "
                            f"have {tuple(tensor.shape)}: patch between runs of the same model and batch layout."
                        )
                    source_rows = full[single]
                edited = _edit_tensor(edit, edited, step=step, rows=rows, source_rows=source_rows)
            if edited is tensor:
                return None
            if torch.is_tensor(output):
                return edited
            return (*output[:index], edited, *output[index + 1:])

        return hook

    def layer_hooks(self) -> dict[str, object]:
        """``{layer: hook(module, args, output)}`` — what :meth:`__enter__` registers as forward hooks."""
        by_layer: dict[str, list[Edit]] = defaultdict(list)
        for edit in self.edits:
            by_layer[edit.layer].append(edit)
        return {name: self._make_hook(edits) for name, edits in by_layer.items()}



def _from_channel_first(stored: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Stored token activations are (batch, channel, token); the module's are (batch, token, channel)."""
    if like.ndim == 3 and stored.shape[1:] == (like.shape[2], like.shape[1]):
        return stored.transpose(1, 2)
    return stored


def _replace(edit: Edit, **changes) -> Edit:
    from dataclasses import replace

    return replace(edit, **changes)
