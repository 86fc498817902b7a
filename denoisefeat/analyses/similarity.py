"""Adjacent-step similarity of recorded blocks: which blocks stop changing late in sampling.

DeepCache (Ma et al. 2024) caches the deep, low-resolution features of a UNet across adjacent steps
(a 2.3× speed-up on Stable Diffusion 1.5) because they change little from one step to the next late
in sampling, while high-resolution blocks keep changing.  :func:`step_similarity` measures the cosine
similarity of each recorded block's output between adjacent steps, per sample, with bootstrap
intervals, and compares deep with high-resolution blocks.

Which records make it meaningful
--------------------------------
The cosine of two whole feature maps needs their spatial layout:

* ``full`` — the exact cosine of the outputs;
* ``random_projection(k)`` — ``k`` fixed random directions of the channels at every position: the
  cosine of the projections estimates that of ``full`` (Johnson–Lindenstrauss; the error shrinks as
  ``1/√(k·positions)``), at ``k/channels`` of the storage — the reducer to choose for large models;
* ``spatial_mean_map`` / ``spatial_energy`` keep the layout but not the channels: a coarser
  similarity (``spatial_energy`` is non-negative, so its cosine is close to 1 for any two maps).

Records that average the positions away (``channel_mean``, ``channel_std``, ``band_energy``) are
refused: the cosine of two per-channel summaries says nothing about whether the maps changed.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from denoisefeat.analyses.coarse_to_fine import STATS
from denoisefeat.analyses.inference import bootstrap_inference, t_inference

__all__ = ["LAYOUT_DIMS", "step_similarity"]

#: Dims a record must keep for its cosine to compare feature maps: spatial (``y, x``) or tokens.
LAYOUT_DIMS = (("y", "x"), ("token",))
_LEAD = ("sample", "branch", "step")


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.nanmean(x, axis=axis)


def _record(run, layer: str, reducer: str | None):
    acts = run.acts(layer, reducer)
    name = acts.name.split("/")[-1]
    if not any(set(dims) <= set(acts.dims) for dims in LAYOUT_DIMS):
        raise ValueError(
            f"{layer!r} was recorded with the {name!r} reducer, which averages the spatial layout away (dims "
            f"{tuple(acts.dims)}): the cosine of adjacent steps needs 'full', 'random_projection(k)', "
            "'spatial_mean_map' or 'spatial_energy' (trace with record={layer: 'full'})."
        )
    return acts, name


def _cosines(acts: xr.DataArray) -> np.ndarray:
    """Cosine of each sample's output at step s and s − 1, branches averaged: (sample, step − 1)."""
    lead = [d for d in _LEAD if d in acts.dims]
    values = np.asarray(acts.transpose(*lead, ...).values, dtype=np.float64)
    values = values.reshape(*values.shape[: len(lead)], -1)
    if "branch" not in acts.dims:
        values = values[:, None]
    now, before = values[:, :, 1:], values[:, :, :-1]
    norms = np.linalg.norm(now, axis=-1) * np.linalg.norm(before, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(norms > 0, (now * before).sum(-1) / np.where(norms > 0, norms, 1.0), np.nan)
    return np.nanmean(cosine, axis=1) if cosine.shape[1] > 1 else cosine[:, 0]


def step_similarity(run, layers=None, *, reducer: str | None = None, n_boot: int = 1000, alpha: float = 0.05,
                    seed: int = 0) -> xr.Dataset:
    """Cosine similarity of each recorded block's output between adjacent steps, with bootstrap CIs.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run traced with ``record=`` (at every step).
    layers : str or sequence of str, optional
        Recorded layers; default every recorded layer.
    reducer : str, optional
        Which record of each layer, when a layer has several (see the module notes for which ones
        make the similarity meaningful).
    n_boot : int
        Bootstrap resamples of the samples for each (layer, step) interval.
    alpha : float
        Every interval covers ``1 − alpha``.
    seed : int
        Seed of the bootstrap resamples.

    Returns
    -------
    xarray.Dataset
        ``cosine`` (sample, layer, step): the cosine of step ``s`` with step ``s − 1`` (steps ``1 … T−1``;
        branches of a guided run averaged); ``similarity`` (layer, step, stat): its mean over samples
        with the bootstrap interval (``stat`` = :data:`~denoisefeat.analyses.coarse_to_fine.STATS`, p of
        mean 0); ``late`` (sample, layer): the mean cosine over the last half of the steps; ``size``
        (layer): the spatial size (positions) of each record; ``summary`` (stat): the mean over samples
        of ``late`` of the deep blocks (the fewest positions) minus that of the high-resolution ones
        (the most positions), with its t-interval and p (the fact holds when the interval lies above
        0; NaN when every block has one size).  ``attrs``: ``deep``, ``high_resolution`` (layer
        names), ``reducers``.

    Raises
    ------
    ValueError
        A run without records, fewer than 3 recorded steps or 2 samples, or a record that has lost the
        spatial layout (module notes).
    KeyError
        A layer that was not recorded.
    """
    recorded = run.layers()
    if not recorded:
        raise ValueError("The run has no recorded activations: trace it with record={layer: 'full'}.")
    chosen = recorded if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    records = [_record(run, layer, reducer) for layer in chosen]
    cosines = np.stack([_cosines(acts) for acts, _ in records], axis=1)  # (sample, layer, step - 1)
    n, _, pairs = cosines.shape
    if pairs < 2 or n < 2:
        raise ValueError(f"step_similarity needs at least 3 recorded steps and 2 samples; got {pairs + 1} and {n}.")
    stats = np.full((len(chosen), pairs, len(STATS)), np.nan)
    for i in range(len(chosen)):
        for s in range(pairs):
            values = cosines[:, i, s]
            values = values[np.isfinite(values)]
            if len(values) >= 2:
                result = bootstrap_inference(_mean, values, n_boot=n_boot, alpha=alpha, seed=seed)
                stats[i, s] = result.estimate, result.ci_low, result.ci_high, result.p
    steps = np.arange(1, pairs + 1)
    late = np.nanmean(cosines[:, :, steps >= (pairs + 1) / 2], axis=-1)  # steps in the last half of the loop
    sizes = np.array([int(np.prod([acts.sizes[d] for d in acts.dims if d not in (*_LEAD, "channel", "component")]))
                      for acts, _ in records])
    deep = [name for name, size in zip(chosen, sizes) if size == sizes.min()]
    high = [name for name, size in zip(chosen, sizes) if size == sizes.max()]
    if sizes.min() < sizes.max():
        difference = late[:, sizes == sizes.min()].mean(1) - late[:, sizes == sizes.max()].mean(1)
        fact = t_inference(difference[np.isfinite(difference)], alpha=alpha)
        summary = [fact.estimate, fact.ci_low, fact.ci_high, fact.p]
    else:
        summary, deep, high = [np.nan] * len(STATS), [], []
    return xr.Dataset(
        {
            "cosine": (("sample", "layer", "step"), cosines),
            "similarity": (("layer", "step", "stat"), stats),
            "late": (("sample", "layer"), late),
            "size": (("layer",), sizes),
            "summary": (("stat",), np.asarray(summary, dtype=np.float64)),
        },
        coords={"sample": run.dataset["sample"].values, "layer": chosen, "step": steps, "stat": list(STATS)},
        attrs={"fact": "deep_blocks_settle", "alpha": alpha, "n_boot": n_boot, "deep": deep, "high_resolution": high,
               "reducers": [name for _, name in records]},
    )
