"""Figures of recorded activations: how much each layer's output changes from one step to the next."""

from __future__ import annotations

import warnings

import numpy as np
import plotly.graph_objects as go

from denoisefeat.viz._layers import order_layers
from denoisefeat.viz.style import SEQUENTIAL, apply_style, axis_title, escape

__all__ = ["activation_change", "activation_change_heatmap"]

# When a layer was recorded with several reducers and none is named, the first of these it has.
_PREFERRED = ("full", "spatial_mean_map", "channel_mean", "spatial_energy", "band_energy", "channel_std")


def _reducer_of(run, layer: str, reducer: str | None) -> str:
    recorded = run.store.acts_reducers(layer)
    if reducer is not None:
        if reducer not in recorded:
            raise KeyError(f"{layer!r} has no {reducer!r} record; it has {recorded}")
        return reducer
    for name in _PREFERRED:
        if name in recorded:
            return name
    return recorded[0]


def activation_change(acts) -> np.ndarray:
    """Relative change of a layer's recorded output between consecutive steps, per sample.

    Parameters
    ----------
    acts : xarray.DataArray
        :meth:`denoisefeat.store.Run.acts` output, dims ``(sample, [branch,] step, ...)``.

    Returns
    -------
    ndarray, shape (sample, [branch,] step - 1)
        ``‖a[s] − a[s−1]‖ / ‖a[s−1]‖`` (Euclidean norms over the remaining axes) for ``s = 1 …``;
        NaN where either step was not recorded or ``a[s−1]`` is zero.
    """
    dims = list(acts.dims)
    if "sample" not in dims or "step" not in dims:
        raise ValueError(f"acts must have dims (sample, [branch,] step, ...), got {tuple(dims)}")
    lead = [d for d in ("sample", "branch", "step") if d in dims]
    rest = [d for d in dims if d not in lead]
    values = np.asarray(acts.transpose(*lead, *rest).values, dtype=np.float64)
    values = values.reshape(*values.shape[:len(lead)], -1)
    diff = np.linalg.norm(np.diff(values, axis=len(lead) - 1), axis=-1)
    base = np.linalg.norm(values[..., :-1, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, diff / np.where(base > 0, base, 1.0), np.nan)


def activation_change_heatmap(run, *, layers=None, reducer: str | None = None, network=None,
                              size: str = "screen") -> go.Figure:
    """Median relative change of each recorded layer between consecutive steps: layer × step.

    Deep, low-resolution blocks typically change little between adjacent steps late in sampling
    while high-resolution blocks keep changing; this figure shows it for the recorded layers.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run with recorded activations (``acts/``).
    layers : sequence of str, optional
        Recorded layers to draw; default all.
    reducer : str, optional
        Which record of each layer (when a layer has several); default the first of
        ``full, spatial_mean_map, channel_mean, spatial_energy, band_energy, channel_std`` it has.
    network : sequence of LayerInfo, sequence of str or mapping of str to int, optional
        Network order and resolution levels (:func:`denoisefeat.hooks.list_layers`); default the
        forward order of diffusers' UNets by name.
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap: ``y`` the layers in network order, ``x`` the steps ``1 … T−1``, ``z`` the median
        over samples (and branches) of :func:`activation_change`.
    """
    recorded = run.layers()
    if not recorded:
        raise ValueError("the run has no recorded activations; trace it with record={layer: reducer}")
    if layers is None:
        chosen = recorded
    else:
        chosen = [layers] if isinstance(layers, str) else list(layers)
        unknown = [name for name in chosen if name not in recorded]
        if unknown:
            raise KeyError(f"no activations recorded for {unknown}; recorded: {', '.join(recorded)}")
    ordered, _ = order_layers(chosen, layers=network)
    rows, used = [], []
    steps = None
    for layer in ordered:
        name = _reducer_of(run, layer, reducer)
        acts = run.acts(layer, name)
        change = activation_change(acts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps (not recorded) stay NaN
            rows.append(np.nanmedian(change.reshape(-1, change.shape[-1]), axis=0))
        used.append(name)
        steps = acts["step"].values[1:] if "step" in acts.coords else np.arange(1, acts.sizes["step"])
    hover = [[f"{escape(layer)} ({escape(r)})"] * len(steps) for layer, r in zip(ordered, used, strict=True)]
    fig = go.Figure(go.Heatmap(
        x=steps, y=ordered, z=np.stack(rows), text=hover, colorscale=SEQUENTIAL,
        colorbar=dict(title=dict(text="relative change", side="right")),
        hovertemplate="%{text}<br>step %{x} vs previous<br>relative change %{z:.3g}<extra></extra>",
    ))
    apply_style(fig, size=size)
    fig.update_layout(title_text="Step-to-step change of recorded activations (median over samples)",
                      xaxis_title=axis_title("step"),
                      yaxis=dict(title=axis_title("layer"), type="category", autorange="reversed"))
    if size == "screen":
        fig.update_layout(height=max(320, 30 * len(ordered) + 200))
    return fig
