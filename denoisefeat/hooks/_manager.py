"""The mechanism ``record`` and ``intervene`` share: register per-layer forward hooks, count steps,
and remove every hook in ``finally``."""

from __future__ import annotations

import torch

from denoisefeat.steps import StepClock


class HookManager:
    """Base of the hook context managers.

    Subclasses set ``self.denoiser`` and implement :meth:`layer_hooks`; :meth:`__enter__` registers
    those hooks (plus, without a clock from :func:`denoisefeat.trace`, a root pre-hook that counts
    one step per denoiser call) and returns :meth:`_entered`.
    """

    denoiser: torch.nn.Module

    #: Whether :meth:`layer_hooks` gives ``hook(module, args, kwargs, output)`` (torch's ``with_kwargs``).
    hook_kwargs: bool = False

    def __init__(self, clock: StepClock | None):
        self._own_clock = clock is None
        self.clock = clock or StepClock()
        self._handles: list = []

    def layer_hooks(self) -> dict[str, object]:
        """``{layer: hook(module, args, output)}`` — what :meth:`__enter__` registers as forward hooks."""
        raise NotImplementedError

    def _entered(self):
        return self

    def _count_step(self, module, args) -> None:
        self.clock.step = 0 if self.clock.step is None else self.clock.step + 1

    def __enter__(self):
        modules = dict(self.denoiser.named_modules())
        try:
            if self._own_clock:
                self._handles.append(self.denoiser.register_forward_pre_hook(self._count_step))
            for name, hook in self.layer_hooks().items():
                self._handles.append(modules[name].register_forward_hook(hook, with_kwargs=self.hook_kwargs))
        except BaseException:
            self._remove()
            raise
        return self._entered()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False
