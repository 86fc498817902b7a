"""Run ``record``/``intervene`` specs through nnsight instead of torch forward hooks.

:class:`NNsightForward` wraps the denoiser in ``nnsight.NNsight`` and runs every denoiser call
of the sampling loop as one ``model.trace(...)``; inside it, each hooked layer's output is read
through its envoy (``envoy.output``), handed to the same per-layer function the torch backend
registers as a forward hook, and written back (``envoy.output = edited``) when an edit changed it.
Both backends therefore give identical tensors (a test checks it), and this module is the place
to add what nnsight offers beyond hooks (remote execution, its tracing API).

Pitfalls this guards against (see nnsight's docs on diffusion models):

* nnsight counts a "step" per module call and ``DiffusionModel.trace`` runs one step by default.
  Here nnsight wraps the denoiser only and is entered once per loop step, so the loop's step is
  :func:`denoisefeat.trace`'s ``step``, never nnsight's call count.
* Envoys must be read in execution order (``OutOfOrderError`` otherwise): layers are visited in the
  order of a probe forward pass.
* ``NNsight`` around a diffusers model whose output is a ``BaseOutput`` fails; the denoiser is
  called with ``return_dict=False`` (tuples), as the loop always does.
* The trace body is compiled from this file's source, so it lives here, in a real file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from denoisefeat.hooks.layers import probe_layers

__all__ = ["NNsightForward"]


def _envoy(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _compose(first, second):
    def hook(module, args, output):
        edited = first(module, args, output)
        output = output if edited is None else edited
        recorded = second(module, args, output)
        return edited if recorded is None else recorded

    return hook


class NNsightForward:
    """A denoiser call that applies hook managers' per-layer functions through nnsight.

    Parameters
    ----------
    denoiser : torch.nn.Module
    managers : sequence of record or intervene
        In the order their functions apply to one layer's output (edits before recording).
    """

    def __init__(self, denoiser: torch.nn.Module, managers: Sequence):
        from nnsight import NNsight

        for manager in managers:
            if getattr(manager, "inputs", False):
                raise ValueError("record(..., inputs=True) is not supported by the nnsight backend; use 'torch'.")
        hooks: dict[str, object] = {}
        for manager in managers:
            for name, hook in manager.layer_hooks().items():
                hooks[name] = _compose(hooks[name], hook) if name in hooks else hook
        order = probe_layers(denoiser, list(hooks), size=None)[1]
        missing = [name for name in hooks if name not in order]
        if missing:
            raise ValueError(f"Layers {missing} did not run in a forward pass; nnsight cannot reach them.")
        self.layers = sorted(hooks, key=order.__getitem__)
        self.hooks = hooks
        self.modules = dict(denoiser.named_modules())  # the hooks read which output is the main one from the module
        self.model = NNsight(denoiser)

    def __call__(self, *args, **kwargs):
        model, layers, hooks, modules = self.model, self.layers, self.hooks, self.modules
        with torch.no_grad():
            with model.trace(*args, **kwargs):
                for name in layers:
                    envoy = _envoy(model, name)
                    output = envoy.output
                    edited = hooks[name](modules[name], (), output)
                    if edited is not None:
                        envoy.output = edited
                result = model.output.save()
        return result
