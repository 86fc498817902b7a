"""Reducers: what of a layer's output to keep at each step, so memory and disk stay bounded.

A reducer maps one layer output of a batch to a smaller tensor with the batch axis first.  Spatial
outputs are ``(batch, channel, y, x)``; token outputs of transformer blocks ``(batch, token, channel)``
are handled as ``(batch, channel, token)`` (channels are the hidden features, tokens the positions).

========================  =========================================  =========================
name                      keeps                                      dims after ``batch``
========================  =========================================  =========================
``full``                  everything                                 channel, y, x  (or channel, token)
``channel_mean``          mean over positions, per channel            channel
``channel_std``           std over positions, per channel             channel
``spatial_energy``        L2 norm over channels, per position         y, x  (or token)
``spatial_mean_map``      mean over channels, per position            y, x  (or token)
``band_energy``           FFT band energy of each feature map         channel, band
``random_projection(k)``  k fixed random directions of the channels   component, y, x (or component, token)
========================  =========================================  =========================

A user's own reducer is any callable ``f(tensor) -> tensor`` keeping the batch axis; wrap it in
:class:`Reducer` to name its dims.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["REDUCERS", "Reducer", "get_reducer"]


@dataclass(frozen=True)
class Reducer:
    """A named reduction of a layer output.

    Parameters
    ----------
    name : str
        How it is stored: ``acts/<layer>/<name>``.
    func : callable
        ``func(x) -> tensor``; ``x`` is ``(batch, channel, *positions)`` (spatial ``y, x`` or ``token``).
    dims : callable
        ``dims(positions) -> tuple of str``: the names of the result's axes after ``batch``, given the
        position dims of the input (``("y", "x")`` or ``("token",)``).
    coords : dict
        Extra coordinates to store (e.g. band names).
    """

    name: str
    func: Callable[[torch.Tensor], torch.Tensor]
    dims: Callable[[tuple[str, ...]], tuple[str, ...]]
    coords: dict = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.func(x)


def _positions(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _band_energy(x: torch.Tensor) -> torch.Tensor:
    from denoisefeat.frequency import band_energy

    if x.ndim != 4:
        raise ValueError("band_energy needs spatial feature maps (batch, channel, y, x); this layer outputs tokens")
    return band_energy(x.float())


def _random_projection(k: int, seed: int = 0) -> Reducer:
    cache: dict[tuple, torch.Tensor] = {}

    def project(x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[1], x.device, x.dtype)
        if key not in cache:  # a fixed Gaussian matrix per channel count: the same directions at every step
            generator = torch.Generator().manual_seed(seed)
            matrix = torch.randn(k, x.shape[1], generator=generator) / x.shape[1] ** 0.5
            cache[key] = matrix.to(x.device, x.dtype)
        return torch.einsum("kc,bc...->bk...", cache[key], x)

    return Reducer(f"random_projection_{k}", project, lambda pos: ("component", *pos))


def _bands():
    from denoisefeat.frequency import DEFAULT_BANDS

    return list(DEFAULT_BANDS)


REDUCERS: dict[str, Reducer] = {
    "full": Reducer("full", lambda x: x, lambda pos: ("channel", *pos)),
    "channel_mean": Reducer("channel_mean", lambda x: x.mean(dim=_positions(x)), lambda pos: ("channel",)),
    "channel_std": Reducer(
        "channel_std", lambda x: x.float().std(dim=_positions(x), correction=0), lambda pos: ("channel",)
    ),
    "spatial_energy": Reducer("spatial_energy", lambda x: x.float().pow(2).sum(1).sqrt(), lambda pos: pos),
    "spatial_mean_map": Reducer("spatial_mean_map", lambda x: x.mean(1), lambda pos: pos),
    "band_energy": Reducer("band_energy", _band_energy, lambda pos: ("channel", "band")),
}

_PROJECTION = re.compile(r"random_projection\((\d+)\)$|random_projection_(\d+)$")


def get_reducer(spec: str | Reducer | Callable) -> Reducer:
    """A :class:`Reducer` from a name (``"channel_mean"``, ``"random_projection(16)"``), a Reducer, or a callable.

    Parameters
    ----------
    spec : str, Reducer or callable
        A reducer name (with arguments), a Reducer, or ``f(tensor) -> tensor``.

    Returns
    -------
    Reducer

    Raises
    ------
    ValueError
        An unknown name; the message lists the known ones.
    """
    if isinstance(spec, Reducer):
        return spec
    if callable(spec):
        name = getattr(spec, "__name__", "custom")
        return Reducer(name, spec, lambda pos: tuple(f"dim_{i}" for i in range(8)))
    match = _PROJECTION.match(spec)
    if match:
        return _random_projection(int(match.group(1) or match.group(2)))
    if spec not in REDUCERS:
        import difflib

        close = difflib.get_close_matches(spec, list(REDUCERS), n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown reducer {spec!r}.{hint} Known: {', '.join(REDUCERS)}, random_projection(k).")
    return REDUCERS[spec]


def band_coords() -> Sequence[str]:
    """Names along the ``band`` axis of ``band_energy`` (the frequency module's default bands)."""
    return _bands()
