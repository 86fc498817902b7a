"""Control features for probes: what a probe could read without the layer's computation.

* :func:`xt_features` — the denoiser's input x_t itself, average-pooled: a layer is only interesting
  where it encodes a target better than its own input does;
* :func:`random_init_acts` — the same layers of a randomly initialised copy of the model, run with the
  run's seeds and conditions: what the architecture alone (e.g. a class embedding) carries.

Pass either as ``control=`` to :func:`denoisefeat.probes.fit`; the result's ``selectivity`` is the
probe's score minus the control probe's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["random_init_acts", "xt_features"]


def xt_features(run, *, size: int = 8) -> xr.DataArray:
    """The run's x_t per step, average-pooled to about ``size × size`` positions and flattened.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run stored with ``"xt"`` in ``keep`` (the default).
    size : int
        Target number of positions per side: x_t is averaged over blocks of ``h // size`` by
        ``w // size`` pixels (edges that do not fill a block are dropped); ``size ≥ h`` keeps every
        pixel.

    Returns
    -------
    xarray.DataArray, dims (sample, step, feature)
        ``feature`` runs over (channel, y, x) of the pooled x_t.  ``xt`` at step ``s`` is the
        denoiser's input at that step, so it lines up with the activations recorded at ``s``.

    Raises
    ------
    KeyError
        The run did not keep ``xt``.
    ValueError
        ``size`` is not a positive integer.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (positions per side); got {size!r}.")
    dataset = run.dataset
    if "xt" not in dataset:
        raise KeyError("The run has no 'xt' array; trace it with keep=('xt', ...) to use x_t as a probe control.")
    xt = dataset["xt"].load()
    factors = {dim: max(1, xt.sizes[dim] // size) for dim in ("y", "x")}
    pooled = xt.coarsen(factors, boundary="trim").mean() if max(factors.values()) > 1 else xt
    stacked = pooled.stack(feature=[d for d in pooled.dims if d not in ("sample", "step")])
    features = stacked.drop_vars(["feature", *stacked.indexes["feature"].names], errors="ignore")
    return features.transpose("sample", "step", "feature").rename("xt")


def _scheduler(attrs: dict):
    import diffusers

    scheduler_class = getattr(diffusers, attrs["scheduler_class"], None)
    if scheduler_class is None:
        raise ValueError(f"diffusers has no scheduler class {attrs['scheduler_class']!r} (the run's scheduler).")
    return scheduler_class.from_config(attrs["scheduler_config"])


def random_init_acts(
    pipe,
    run,
    *,
    layers: str | Sequence[str],
    reducer: str = "channel_mean",
    seed: int = 0,
) -> dict[str, xr.DataArray]:
    """Record layers of a randomly initialised copy of ``pipe``'s denoiser, with the run's settings.

    The copy has the same architecture (``from_config`` of the denoiser's config) with fresh weights
    drawn under ``seed``; the rest of the pipeline (scheduler, text encoder, VAE) is shared.  It is
    traced with the run's seeds, class labels or prompts, steps, scheduler, guidance and η, so its
    step 0 sees the same x_T; later steps follow the untrained model's own trajectory.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
        The pipeline the run was made with (its untrained twin is built from it; it is not modified).
    run : denoisefeat.store.Run
        The run whose settings to repeat.
    layers : str or sequence of str
        Module paths or globs (see :func:`denoisefeat.hooks.resolve_layers`).
    reducer : str
        Reducer to record (the one the run's probes use).
    seed : int
        Seed of the random weights.

    Returns
    -------
    dict of str to xarray.DataArray
        ``{layer: acts}``, each ``(sample, [branch,] step, ...)`` like ``run.acts(layer, reducer)``.
    """
    import torch

    from denoisefeat.hooks import resolve_layers
    from denoisefeat.models import denoiser_of
    from denoisefeat.trajectory import trace

    denoiser = denoiser_of(pipe)
    names = resolve_layers(denoiser, layers)
    component = next((key for key, value in pipe.components.items() if value is denoiser), None)
    if component is None:
        raise ValueError(f"Cannot find the denoiser among the components of {type(pipe).__name__}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(denoiser).from_config(denoiser.config)
    fresh = fresh.to(device=denoiser.device, dtype=denoiser.dtype).eval()
    twin = type(pipe).from_pipe(pipe, **{component: fresh})
    attrs = run.attrs
    extra = attrs.get("extra") or {}
    recorded = trace(
        twin,
        prompts=None if attrs.get("prompts") is None else list(attrs["prompts"]),
        class_labels=None if attrs.get("class_labels") is None else list(attrs["class_labels"]),
        negative_prompt=attrs.get("negative_prompt"),
        seed=list(attrs["seeds"]),
        steps=int(attrs["steps"]),
        scheduler=_scheduler(attrs),
        guidance_scale=float(attrs["guidance_scale"]),
        eta=float(attrs.get("eta", 0.0)),
        height=attrs.get("height"),
        width=attrs.get("width"),
        keep=(),
        record={name: reducer for name in names},
        record_steps=extra.get("record_steps"),
        model_id=f"random-init({attrs.get('model_id')}, seed={seed})",
    )
    return {name: recorded.acts(name, reducer).rename(f"random-init {name}/{reducer}") for name in names}
