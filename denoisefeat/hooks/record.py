"""Record named layers' outputs at chosen steps, reduced, into the run store or into memory.

Each recorded module gets a plain torch forward hook; hooks are removed in ``finally`` however the
block ends (error or KeyboardInterrupt included).

What a hook keeps
-----------------
* the module's output — or its first positional input with ``inputs=True``;
* for tuple outputs the first element (diffusers' down blocks return ``(hidden_states,
  skip_states)``, the hidden states are kept; see :func:`~denoisefeat.hooks.layers.first_tensor`),
  and for the joint blocks of SD3 and Flux, which return ``(encoder_hidden_states, hidden_states)``,
  the image tokens (:func:`~denoisefeat.hooks.layers.main_output_index`);
* token outputs ``(batch, token, channel)`` are stored channel-first ``(batch, channel, token)``;
* under classifier-free guidance the doubled batch is split and stored along a ``branch`` axis,
  always ordered ``("uncond", "cond")`` whatever order the pipeline uses.

Steps
-----
Inside :func:`denoisefeat.trace` the loop's step is known and used.  Around any other code (for
example a plain ``pipe(...)`` call) a step is one call of the denoiser's root module: a scheduler that
calls the denoiser twice per timestep (Heun) counts two steps, the convention of ``trace``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from denoisefeat.hooks._manager import HookManager
from denoisefeat.hooks.layers import LayerInfo, first_tensor, main_output_index, resolve_layers
from denoisefeat.hooks.reducers import Reducer, band_coords, get_reducer
from denoisefeat.models import denoiser_of
from denoisefeat.steps import BRANCHES, StepClock, steps_selection, uncond_cond

__all__ = ["Recording", "record"]


def _layer_spec(denoiser, layers) -> list[tuple[str, Reducer]]:
    if isinstance(layers, (str, LayerInfo)):
        layers = {layers: "full"}
    elif not isinstance(layers, Mapping):
        layers = {name: "full" for name in layers}
    plan = []
    for pattern, reducers in layers.items():
        if isinstance(reducers, (str, Reducer)) or callable(reducers):
            reducers = [reducers]
        for name in resolve_layers(denoiser, pattern):
            for reducer in reducers:
                plan.append((name, get_reducer(reducer)))
    return plan


def channel_first(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``(batch, channel, y, x)`` as is; ``(batch, token, channel)`` → ``(batch, channel, token)``."""
    if tensor.ndim == 4:
        return tensor, ("y", "x")
    if tensor.ndim == 3:
        return tensor.transpose(1, 2), ("token",)
    if tensor.ndim == 2:
        return tensor, ()
    raise ValueError(f"Cannot record a {tensor.ndim}-d output {tuple(tensor.shape)}")


def split_branches(tensor: torch.Tensor, branches: tuple[str, ...] | None) -> torch.Tensor:
    """``(2B, ...)`` in the pipeline's order → ``(B, 2, ...)`` ordered ``(uncond, cond)``."""
    if branches is None:
        return tensor
    return torch.stack(uncond_cond(*tensor.chunk(2), branches), dim=1)


class Recording:
    """In-memory activations of a :func:`record` block, with labelled access.

    ``recording.acts(layer, reducer=None)`` returns an ``xarray.DataArray``
    ``(sample, [branch,] step, ...)`` — the same as ``Run.acts`` for a stored run.
    """

    def __init__(self):
        self._data: dict[tuple[str, str], dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        self._dims: dict[tuple[str, str], tuple[str, ...]] = {}
        self._branched: dict[tuple[str, str], bool] = {}
        self.layers: list[str] = []

    def add(self, layer: str, reducer: str, step: int, data: torch.Tensor, dims: tuple[str, ...], branched: bool):
        """Keep one step of one layer's reduced output (copied to the host, float32).

        Parameters
        ----------
        layer, reducer : str
        step : int
        data : torch.Tensor
            ``(batch, [branch,] ...)`` as the hook reduced it, on the model's device.
        dims : tuple of str
            Names of the axes after ``batch`` (and ``branch``).
        branched : bool
            Whether axis 1 is the CFG ``branch``.
        """
        data = data.float().cpu().numpy()
        key = (layer, reducer)
        if layer not in self.layers:
            self.layers.append(layer)
        self._data[key][step].append(data)
        self._dims[key], self._branched[key] = dims, branched

    def acts(self, layer: str, reducer: str | None = None):
        """Recorded activations of ``layer`` as an ``xarray.DataArray`` (sample, [branch,] step, …)."""
        import xarray as xr

        keys = [k for k in self._data if k[0] == layer]
        if not keys:
            raise KeyError(f"No activations recorded for {layer!r}; recorded: {', '.join(self.layers) or 'none'}.")
        if reducer is None:
            if len(keys) != 1:
                raise KeyError(f"{layer!r} was recorded with reducers {[k[1] for k in keys]}; pass reducer=...")
            key = keys[0]
        else:
            key = (layer, reducer)
            if key not in self._data:
                raise KeyError(f"{layer!r} has no {reducer!r} record; it has {[k[1] for k in keys]}.")
        by_step = self._data[key]
        steps = sorted(by_step)
        stacked = np.stack([np.concatenate(by_step[s]) for s in steps], axis=1)  # (sample, step, ...)
        dims = ["sample", "step", *self._dims[key]]
        if self._branched[key]:
            stacked = np.moveaxis(stacked, 2, 1)  # (sample, branch, step, ...)
            dims = ["sample", "branch", "step", *self._dims[key]]
        coords = {"step": steps}
        if self._branched[key]:
            coords["branch"] = list(BRANCHES)
        if "band" in dims:
            coords["band"] = list(band_coords())
        return xr.DataArray(stacked, dims=dims, coords=coords, name=f"{layer}/{key[1]}")



def _first_input(module, layer: str, args: tuple, kwargs: dict):
    """The module's first input: its first positional argument, else the keyword named after the
    first parameter of its ``forward`` (diffusers calls the SD3 and Flux blocks with keywords only)."""
    if args:
        return args[0]
    import inspect

    parameters = list(inspect.signature(module.forward).parameters)
    value = kwargs.get(parameters[0]) if parameters else None
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"record(..., inputs=True): {layer!r} was called without a tensor as its first input "
                         f"({parameters[0] if parameters else 'no parameter'!r}); record another layer's output.")
    return value

class record(HookManager):
    """Record layer outputs at chosen steps (a context manager).

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module
    layers : str, sequence of str, or mapping
        Layer names or globs; a mapping gives each its reducer(s):
        ``{"mid_block": "channel_mean", "up_blocks.*": ["spatial_energy", "band_energy"]}``.
        A name or sequence records ``"full"`` outputs.
    steps : int, range, iterable of int, or None
        Loop steps to record; default all.
    inputs : bool
        Record the module's first input instead of its output: its first positional argument, or,
        for a module called with keywords only (the transformer blocks of SD3 and Flux), the
        keyword argument named after the first parameter of its ``forward``.
    clock : StepClock, optional
        Supplied by :func:`denoisefeat.trace`; without it a step is one root call of the denoiser.
    sink : callable, optional
        ``sink(layer, reducer, step, tensor, dims, branched)`` instead of the in-memory
        :class:`Recording`: ``tensor`` is the reduced output on the model's device, in the dtype the
        reducer made (``trace`` copies each step's tensors to the host at once and streams them to
        the store).

    Examples
    --------
    >>> with record(pipe, {"mid_block": "channel_mean"}) as rec:   # doctest: +SKIP
    ...     pipe(class_labels=[0, 1], num_inference_steps=20)
    >>> rec.acts("mid_block")                                        # (sample, step, channel)
    """

    def __init__(self, pipe_or_denoiser, layers, *, steps=None, inputs: bool = False,
                 clock: StepClock | None = None, sink=None):
        self.denoiser = denoiser_of(pipe_or_denoiser)
        self.plan = _layer_spec(self.denoiser, layers)
        self.steps = steps_selection(steps)
        self.inputs = inputs
        self.hook_kwargs = bool(inputs)  # a keyword-only call hides the input from a plain hook
        super().__init__(clock)
        self.recording = Recording()
        self.sink = sink or self.recording.add

    @property
    def layers(self) -> list[str]:
        seen = []
        for name, _ in self.plan:
            if name not in seen:
                seen.append(name)
        return seen

    def _make_hook(self, name: str, reducers: Sequence[Reducer]):
        def hook(module, args, *rest):
            step = self.clock.step
            if step is None or (self.steps is not None and step not in self.steps):
                return None
            if self.inputs:
                tensor = _first_input(module, name, args, rest[0])
            else:
                tensor = first_tensor(rest[-1], index=main_output_index(module))
            if tensor is None:
                return None
            if self.clock.lanes != 1:
                raise ValueError("record cannot split a loop that denoises several copies of its samples at once "
                                 "(lanes > 1); record in a one-copy run.")
            with torch.no_grad():
                tensor, positions = channel_first(tensor.detach())
                for reducer in reducers:
                    reduced = split_branches(reducer(tensor), self.clock.branches)
                    dims = reducer.dims(positions)[: reduced.ndim - 1 - (self.clock.branches is not None)]
                    self.sink(name, reducer.name, step, reduced, tuple(dims), self.clock.branches is not None)
            return None

        return hook

    def layer_hooks(self) -> dict[str, object]:
        """``{layer: hook(module, args, output)}`` — what :meth:`__enter__` registers as forward hooks
        (``hook(module, args, kwargs, output)`` with ``inputs=True``: :attr:`hook_kwargs`)."""
        by_layer: dict[str, list[Reducer]] = defaultdict(list)
        for name, reducer in self.plan:
            by_layer[name].append(reducer)
        return {name: self._make_hook(name, reducers) for name, reducers in by_layer.items()}

    def _entered(self) -> Recording:
        return self.recording
