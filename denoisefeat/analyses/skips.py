"""Skip vs backbone spectra: how much of each up block's input energy is high-frequency, by source.

In a UNet decoder every resnet of an up block takes ``torch.cat([hidden_states, res_hidden_states],
dim=1)`` (diffusers' ``UpBlock2D``, ``AttnUpBlock2D``, ``CrossAttnUpBlock2D``): the backbone's
features first, then the skip connection's.  FreeU (Si et al. 2024) found that the backbone
features mainly denoise while the skip features feed high frequencies.  :func:`skip_spectrum`
records that input (:class:`denoisefeat.hooks.record` with ``inputs=True``), splits it at the
backbone's channel count and measures the band energies of each part
(:func:`denoisefeat.frequency.band_energy`, summed over the part's channels, DC in the first band).

The split: the backbone of resnet 0 is the block's input (the previous up block's output, or the
mid block's for ``up_blocks.0``); that of resnet ``i > 0`` is resnet ``i − 1``'s output
(``out_channels``); the rest of the resnet's ``in_channels`` is the skip.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import xarray as xr

from denoisefeat.analyses.coarse_to_fine import STATS
from denoisefeat.analyses.inference import t_inference
from denoisefeat.frequency import DEFAULT_BANDS, band_energy
from denoisefeat.hooks import Reducer, record, resolve_layers
from denoisefeat.hooks.layers import probe_layers
from denoisefeat.models import denoiser_of
from denoisefeat.options import RunOptions
from denoisefeat.trajectory import trace

__all__ = ["PARTS", "skip_spectrum", "skip_splits"]

#: The two parts of an up-block resnet's input, in diffusers' concatenation order.
PARTS = ("backbone", "skip")
_UP_BLOCK = re.compile(r"up_blocks\.(\d+)$")


def skip_splits(pipe, layers="up_blocks.*") -> dict[str, int]:
    """The backbone channel count of the input of every resnet of the named up blocks.

    Parameters
    ----------
    pipe : diffusers pipeline or torch.nn.Module
        With a UNet denoiser (``UNet2DModel``, ``UNet2DConditionModel``).
    layers : str or sequence of str
        Up blocks (``"up_blocks.1"``) or globs over them.

    Returns
    -------
    dict of str to int
        ``{"up_blocks.j.resnets.i": backbone channels}`` in network order; the skip holds the rest
        of the resnet's ``in_channels``.

    Raises
    ------
    ValueError
        A denoiser without up blocks, or a layer that is not an up block of the decoder.
    """
    denoiser = denoiser_of(pipe)
    if not hasattr(denoiser, "up_blocks"):
        raise ValueError(f"skip_spectrum needs a UNet decoder; {type(denoiser).__name__} has no up_blocks.")
    names = resolve_layers(denoiser, layers)
    bad = [name for name in names if not _UP_BLOCK.match(name)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not an up block of the decoder: skip_spectrum splits the input of each "
                         f"resnet of an up block; pass up_blocks.<i> (this UNet has up_blocks.0 … "
                         f"up_blocks.{len(denoiser.up_blocks) - 1}) or 'up_blocks.*'.")
    previous = {name: _previous(denoiser, int(_UP_BLOCK.match(name).group(1))) for name in names}
    shapes, _ = probe_layers(denoiser, sorted(set(previous.values())), size=None)
    splits = {}
    for name in names:
        block = dict(denoiser.named_modules())[name]
        backbone = shapes[previous[name]][0]
        for i, resnet in enumerate(block.resnets):
            if i > 0:
                backbone = block.resnets[i - 1].out_channels
            if not 0 < backbone < resnet.in_channels:
                raise ValueError(f"{name}.resnets.{i} takes {resnet.in_channels} channels, not a backbone of "
                                 f"{backbone} and a skip: is {name} a diffusers up block?")
            splits[f"{name}.resnets.{i}"] = int(backbone)
    return splits


def _previous(denoiser, j: int) -> str:
    """The module whose output enters ``up_blocks.j``."""
    if j > 0:
        return f"up_blocks.{j - 1}"
    if getattr(denoiser, "mid_block", None) is not None:
        return "mid_block"
    return f"down_blocks.{len(denoiser.down_blocks) - 1}"


def _split_energy(backbone: int, bands) -> Reducer:
    """A reducer: (batch, channels, y, x) → (batch, part, band) band energies of the two parts."""
    def split(x: torch.Tensor) -> torch.Tensor:
        parts = (x[:, :backbone], x[:, backbone:])
        return torch.stack([band_energy(part.double(), bands=bands).sum(1) for part in parts], dim=1)

    return Reducer("skip_split", split, lambda positions: ("part", "band"))


def skip_spectrum(pipe, *, layers="up_blocks.*", bands=DEFAULT_BANDS, alpha: float = 0.05, **run) -> xr.Dataset:
    """Band energies of the backbone and the skip input of every up-block resnet, per sample and step.

    Parameters
    ----------
    pipe : diffusers pipeline
        With a ``UNet2DModel`` or ``UNet2DConditionModel`` denoiser.
    layers : str or sequence of str
        Up blocks or globs over them (:func:`skip_splits`).
    bands : mapping of str to (float, float)
        Ordered, contiguous bands; the last one is the "high" band of the summary.
    alpha : float
        Intervals are ``1 − alpha``.
    **run
        The run options of :func:`denoisefeat.trace` (:class:`denoisefeat.options.RunOptions`;
        default 20 steps); the samples run as one batch, in memory, nothing stored.

    Returns
    -------
    xarray.Dataset
        ``energy`` (sample, layer, step, part, band): band energy of each part (``part`` =
        :data:`PARTS`; under classifier-free guidance the mean of the two branches); ``share``: each
        band's fraction of the part's energy; ``channels`` (layer, part); ``high_gap`` (layer, stat): the
        mean over samples and steps of the skip's last-band share minus the backbone's, with the
        t-interval over samples; ``summary`` (stat): the same over every layer (the fact holds when its
        interval lies above 0).  ``layer`` names the resnets (``up_blocks.j.resnets.i``).

    Raises
    ------
    ValueError
        A layer that is not an up block, a denoiser without up blocks, or fewer than 2 samples.
    """
    splits = skip_splits(pipe, layers)
    options = RunOptions.of(run, caller="skip_spectrum", defaults={"steps": 20})
    request, _ = options.request(pipe, decode=False)
    n = request.n_samples
    if n < 2:
        raise ValueError(f"skip_spectrum's intervals are over samples: give at least 2, got {n}.")
    reducers = {name: _split_energy(backbone, bands) for name, backbone in splits.items()}
    with record(pipe, reducers, inputs=True) as recording:
        # one batch: the recording's own clock counts one step per denoiser call
        trace(pipe, **{**vars(options), "batch_size": n}, keep=())
    energies = []
    for name in splits:
        values = np.asarray(recording.acts(name, "skip_split").values, dtype=np.float64)  # (rows, step, part, band)
        if len(values) == 2 * n:  # classifier-free guidance: both halves are the same samples
            values = values.reshape(2, n, *values.shape[1:]).mean(axis=0)
        energies.append(values)
    energy = np.stack(energies, axis=1)  # (sample, layer, step, part, band)
    total = energy.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, energy / np.where(total > 0, total, 1.0), np.nan)
    gap = share[..., 1, -1] - share[..., 0, -1]  # (sample, layer, step): skip − backbone, last band
    per_layer = np.array([_stats(np.nanmean(gap[:, i], axis=-1), alpha) for i in range(len(splits))])
    modules = dict(denoiser_of(pipe).named_modules())
    channels = [[backbone, modules[name].in_channels - backbone] for name, backbone in splits.items()]
    return xr.Dataset(
        {
            "energy": (("sample", "layer", "step", "part", "band"), energy),
            "share": (("sample", "layer", "step", "part", "band"), share),
            "channels": (("layer", "part"), np.asarray(channels)),
            "high_gap": (("layer", "stat"), per_layer),
            "summary": (("stat",), _stats(np.nanmean(gap, axis=(1, 2)), alpha)),
        },
        coords={"sample": np.arange(n), "layer": list(splits), "step": np.arange(energy.shape[2]),
                "part": list(PARTS), "band": list(bands), "stat": list(STATS)},
        attrs={"fact": "skip_high_frequency", "alpha": alpha, "high_band": list(bands)[-1]},
    )


def _stats(values: np.ndarray, alpha: float) -> np.ndarray:
    result = t_inference(values[np.isfinite(values)], alpha=alpha)
    return np.array([result.estimate, result.ci_low, result.ci_high, result.p])
