"""Figures of attribution results: layer × step-window heatmaps, probe selectivity maps, correlations.

They draw the *attribution table* of :mod:`denoisefeat.analyses` — a tidy ``pandas.DataFrame`` with
columns ``feature, layer, step_start, step_stop, method, effect, ci_low, ci_high, p, p_adj, n``
(one row per feature × layer × half-open step window ``[step_start, step_stop)`` × method), and the
standardised ``effect_std`` and the ``specificity`` that heatmaps can show instead of the raw effect.

Heatmaps with several features or methods carry a feature dropdown and a method dropdown
(plotly ``updatemenus``).  The two menus stay consistent without JavaScript: choosing an entry
shows the trace of (that entry, the current entry of the other menu) and rewrites the other menu's
entries so that they show (their entry, this one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from denoisefeat.viz._images import strip
from denoisefeat.viz._layers import order_layers
from denoisefeat.viz.frames import FramePolicy
from denoisefeat.viz.style import DIVERGING, apply_style, axis_title, escape

__all__ = ["COLUMNS", "VALUES", "attribution_heatmap", "correlation_heatmap", "selectivity_map"]

#: Columns every attribution table has.
COLUMNS = ("feature", "layer", "step_start", "step_stop", "method", "effect", "ci_low", "ci_high", "p", "p_adj", "n")

#: What a heatmap can show: the raw effect, the standardised effect or the specificity.
VALUES = {"effect": "effect", "effect_std": "standardised effect", "specificity": "specificity"}

#: ``layout.meta`` key under which a figure keeps what the report's JavaScript needs.
META_KEY = "denoisefeat"


def _check_table(table) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"the attribution table must be a pandas.DataFrame, got {type(table).__name__}")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"the attribution table lacks columns {missing}; it needs {', '.join(COLUMNS)} "
            f"(it has {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise ValueError("the attribution table is empty")
    return table


def _choose(values: list[str], wanted, *, what: str) -> list[str]:
    if wanted is None:
        return values
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [w for w in wanted if w not in values]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; the table has: {', '.join(values)}")
    if not wanted:
        raise ValueError(f"no {what} selected")
    return wanted


def _window_label(start: int, stop: int) -> str:
    return f"[{start}, {stop})"


def _visible(n_traces: int, index: int, always: Sequence[int]) -> list[bool]:
    flags = [False] * n_traces
    flags[index] = True
    for i in always:
        flags[i] = True
    return flags


def _menus(features: list[str], methods: list[str], trace_of: dict, n_traces: int, always: Sequence[int]) -> list:
    """A feature dropdown and a method dropdown that keep each other's entries consistent."""
    def vis(f, m):
        return _visible(n_traces, trace_of[f, m], always)

    menus = []
    f0, m0 = features[0], methods[0]
    feature_menu_index = 0 if len(features) > 1 else None
    method_menu_index = (1 if len(features) > 1 else 0) if len(methods) > 1 else None
    if feature_menu_index is not None:
        buttons = []
        for f in features:
            rewrite = ({f"updatemenus[{method_menu_index}].buttons[{j}].args[0].visible": vis(f, m)
                        for j, m in enumerate(methods)} if method_menu_index is not None else {})
            buttons.append(dict(label=escape(f), method="update", args=[{"visible": vis(f, m0)}, rewrite]))
        menus.append(dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.13, yanchor="bottom",
                          showactive=True, active=0, name="feature"))
    if method_menu_index is not None:
        buttons = []
        for m in methods:
            rewrite = ({f"updatemenus[{feature_menu_index}].buttons[{i}].args[0].visible": vis(f, m)
                        for i, f in enumerate(features)} if feature_menu_index is not None else {})
            buttons.append(dict(label=escape(m), method="update", args=[{"visible": vis(f0, m)}, rewrite]))
        menus.append(dict(buttons=buttons, direction="down", x=0.35 if feature_menu_index is not None else 0.0,
                          xanchor="left", y=1.13, yanchor="bottom", showactive=True, active=0, name="method"))
    return menus


def _level_marks(fig: go.Figure, ordered: list[str], levels: dict[str, int], *, xref: str, yref: str) -> None:
    """Lines between layers of different resolution levels, and the level of each run of layers."""
    if not levels:
        return
    runs, start = [], 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or levels.get(ordered[i]) != levels.get(ordered[start]):
            runs.append((start, i - 1, levels.get(ordered[start])))
            start = i
    for k, (first, last, level) in enumerate(runs):
        if k > 0:
            fig.add_shape(type="line", xref=f"{xref} domain", yref=yref, x0=0, x1=1, y0=first - 0.5, y1=first - 0.5,
                          line=dict(color="black", width=1.5, dash="dot"))
        if level is not None:
            fig.add_annotation(xref=f"{xref} domain", yref=yref, x=1.0, xanchor="left", y=(first + last) / 2,
                               text=f"L{level}", showarrow=False, font=dict(size=11),
                               hovertext=f"resolution level {level}: 1/{2 ** level} of the input size")


def _grid(table: pd.DataFrame, *, features, methods, layers, alpha: float, value: str, numeric_steps: bool):
    """Heatmap traces (one per feature × method) sharing one layer order and one window axis."""
    table = _check_table(table)
    all_features = list(dict.fromkeys(table["feature"].astype(str)))
    all_methods = list(dict.fromkeys(table["method"].astype(str)))
    features = _choose(all_features, features, what="features")
    methods = _choose(all_methods, methods, what="methods")
    sub = table[table["feature"].astype(str).isin(features) & table["method"].astype(str).isin(methods)]
    key = ["feature", "method", "layer", "step_start", "step_stop"]
    duplicated = sub.duplicated(key, keep=False)
    if duplicated.any():
        example = sub[duplicated].iloc[0]
        raise ValueError(
            "the table has several rows for one feature, method, layer and window (e.g. "
            f"{example['feature']!r}, {example['method']!r}, {example['layer']!r}, "
            f"[{example['step_start']}, {example['step_stop']})); tables read together have a 'table' column: "
            "select one table or make the method names distinct"
        )
    ordered, levels = order_layers(sub["layer"].astype(str), layers=layers)
    if "level" in sub.columns:
        for name, level in zip(sub["layer"].astype(str), sub["level"], strict=True):
            if name not in levels and pd.notna(level):
                levels[name] = int(level)
    windows = sorted({(int(a), int(b)) for a, b in zip(sub["step_start"], sub["step_stop"], strict=True)})
    layer_pos = {name: i for i, name in enumerate(ordered)}
    window_pos = {w: j for j, w in enumerate(windows)}
    x = [w[0] for w in windows] if numeric_steps else [_window_label(*w) for w in windows]
    traces, trace_of = [], {}
    for f in features:
        for m in methods:
            rows = sub[(sub["feature"].astype(str) == f) & (sub["method"].astype(str) == m)]
            z = np.full((len(ordered), len(windows)), np.nan)
            custom = np.full((len(ordered), len(windows), 8), np.nan)
            text = np.full((len(ordered), len(windows)), "", dtype=object)
            for r in rows.itertuples(index=False):
                i, j = layer_pos[str(r.layer)], window_pos[(int(r.step_start), int(r.step_stop))]
                z[i, j] = float(getattr(r, value))
                custom[i, j] = [r.ci_low, r.ci_high, r.p, r.p_adj, r.n, levels.get(str(r.layer), np.nan),
                                r.step_start, r.step_stop]
                significant = (r.p_adj < alpha) if pd.notna(r.p_adj) else (
                    pd.notna(r.ci_low) and pd.notna(r.ci_high) and (r.ci_low > 0 or r.ci_high < 0))
                text[i, j] = "*" if significant else ""
            bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
            label = VALUES.get(value, value)
            hover = (
                f"{escape(f)} · {escape(m)}<br>layer %{{y}}<br>steps [%{{customdata[6]}}, %{{customdata[7]}})"
                f"<br>{label} %{{z:.3g}}<br>CI of the effect [%{{customdata[0]:.3g}}, %{{customdata[1]:.3g}}]"
                "<br>p %{customdata[2]:.3g} · p_adj %{customdata[3]:.3g}<br>n %{customdata[4]}"
                + ("<br>resolution level %{customdata[5]}" if levels else "") + "<extra></extra>"
            )
            trace_of[f, m] = len(traces)
            traces.append(go.Heatmap(
                x=x, y=ordered, z=z, customdata=custom, text=text, texttemplate="%{text}",
                colorscale=DIVERGING, zmid=0.0, zmin=-(bound or 1.0), zmax=bound or 1.0, hovertemplate=hover,
                name=f"{escape(f)} · {escape(m)}", visible=not traces, xgap=1, ygap=1,
                colorbar=dict(title=dict(text=label, side="right")),
            ))
    return traces, trace_of, features, methods, ordered, levels


def attribution_heatmap(table: pd.DataFrame, *, features=None, methods=None, layers=None,
                        images: Mapping | None = None, clean=None, value: str = "effect", alpha: float = 0.05,
                        size: str = "screen", frames: FramePolicy | None = None) -> go.Figure:
    """Effect of each layer and step window on each feature: a layer × window heatmap.

    Parameters
    ----------
    table : pandas.DataFrame
        An attribution table (see the module notes).  An optional ``level`` column gives the
        resolution level of each layer.
    features, methods : str or sequence of str, optional
        Entries of the feature and method dropdowns, in order; default all in the table (a menu
        appears when it has more than one entry).  The first of each is shown at first.
    layers : sequence of LayerInfo, sequence of str or mapping of str to int, optional
        Network order and resolution levels: :func:`denoisefeat.hooks.list_layers` of the
        pipeline, a list of names or ``{name: level}``.  Without it, layers are put in the forward
        order of diffusers' UNets by name, and levels come from a ``level`` column if any.
    images : mapping of (str, (int, int)) or (str, (int, int), str) to array, optional
        Images of the intervened runs, keyed by ``(layer, (step_start, step_stop))``, or by
        ``(layer, (step_start, step_stop), method)`` when the methods' runs differ: arrays
        ``(..., 3, H, W)`` in [0, 1] (e.g. the final images of a few samples).  With ``clean``, adds
        a panel with the clean and the intervened images of a cell; in the report, clicking a cell
        shows its images (standalone, the panel shows the first key).
    clean : array, optional
        The clean images, ``(..., 3, H, W)`` in [0, 1]; required with ``images``.
    value : {"effect", "effect_std", "specificity"}
        What the colours show: the raw effect (the feature's units), the standardised effect
        (comparable across features) or the specificity (how much more the cell moves the feature
        than the whole image; intervention methods only).
    alpha : float
        Cells with ``p_adj < alpha`` (or, where ``p_adj`` is NaN, a CI excluding 0) are marked ``*``.
    size : {"screen", "column", "page"}
    frames : FramePolicy, optional
        Size and encoding of each image of the clean and intervened strips; default
        ``FramePolicy()``.

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap per feature × method (only the first visible): ``y`` the layers in network
        order, ``x`` the windows ``"[start, stop)"``, ``z`` the effects, ``customdata[i, j]`` =
        ``(ci_low, ci_high, p, p_adj, n, level, step_start, step_stop)``; hover shows effect, CI,
        p and n.  Dotted lines separate resolution levels (labelled ``L<level>``).  With images, two
        ``go.Image`` traces follow (clean, intervened) and ``layout.meta["denoisefeat"]`` holds the
        image strip (a data URI made by ``frames``) of every cell, keyed ``"layer|start|stop"``
        (``"layer|start|stop|method"`` with ``by_method`` true and each heatmap's ``meta`` its method,
        when the keys name methods).
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {', '.join(map(repr, VALUES))}; got {value!r}")
    if value not in table.columns:
        raise ValueError(f"the attribution table has no {value!r} column: recompute it with this denoisefeat version")
    traces, trace_of, features, methods, ordered, levels = _grid(
        table, features=features, methods=methods, layers=layers, alpha=alpha, value=value, numeric_steps=False)
    n_heat = len(traces)
    with_images = images is not None
    frames = FramePolicy() if frames is None else frames
    if with_images:
        if clean is None:
            raise ValueError("images needs clean: the clean images to compare the intervened ones with")
        if not isinstance(images, Mapping) or not images:
            raise ValueError("images must be a non-empty mapping {(layer, (step_start, step_stop)): array}")
        cells, by_method = {}, None
        for k, array in images.items():
            try:
                layer, (start, stop), *method = k
                if len(method) > 1 or by_method not in (None, bool(method)):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"images keys must all be (layer, (step_start, step_stop)) or all "
                                 f"(layer, (step_start, step_stop), method), got {k!r}") from None
            by_method = bool(method)
            cells["|".join(map(str, (layer, int(start), int(stop), *method)))] = frames.encode(
                strip(array, max_px=frames.max_px))
        fig = make_subplots(rows=2, cols=2, column_widths=[0.68, 0.32], specs=[[{"rowspan": 2}, {}], [None, {}]],
                            subplot_titles=["", "clean", "intervened"], horizontal_spacing=0.12,
                            vertical_spacing=0.12)
        for trace in traces:
            fig.add_trace(trace, row=1, col=1)
        first = next(iter(images))
        fig.add_trace(go.Image(source=frames.encode(strip(clean, max_px=frames.max_px)), name="clean",
                               hoverinfo="skip"), row=1, col=2)
        fig.add_trace(go.Image(source=next(iter(cells.values())), name="intervened", hoverinfo="skip"), row=2, col=2)
        if by_method:  # the report's script finds a cell's images by the clicked trace's method
            for (f, m), index in trace_of.items():
                fig.data[index].meta = m
        title_index = [a.text for a in fig.layout.annotations].index("intervened")
        fig.layout.annotations[title_index].text = escape(f"intervened: {first[0]} {_window_label(*first[1])}")
        fig.update_xaxes(visible=False, row=1, col=2)
        fig.update_yaxes(visible=False, row=1, col=2)
        fig.update_xaxes(visible=False, row=2, col=2)
        fig.update_yaxes(visible=False, row=2, col=2)
        meta = {"kind": "attribution", "cells": cells, "image_trace": n_heat + 1, "image_title": title_index}
        fig.update_layout(meta={META_KEY: {**meta, "by_method": True} if by_method else meta})
        always = [n_heat, n_heat + 1]
    else:
        fig = go.Figure(traces)
        always = []
    n_traces = len(fig.data)
    shown = trace_of[features[0], methods[0]]
    for index in trace_of.values():
        fig.data[index].visible = index == shown
    _level_marks(fig, ordered, levels, xref="x", yref="y")
    apply_style(fig, size=size)
    fig.update_layout(updatemenus=_menus(features, methods, trace_of, n_traces, always),
                      title=dict(text=f"Attribution: {VALUES[value]} of each layer and step window", y=0.98,
                                 yanchor="top"),
                      margin=dict(t=110, r=60))
    fig.update_xaxes(title_text=axis_title("window"), type="category", row=1 if with_images else None,
                     col=1 if with_images else None)
    fig.update_yaxes(title_text=axis_title("layer"), type="category", autorange="reversed",
                     row=1 if with_images else None, col=1 if with_images else None)
    if size == "screen":
        fig.update_layout(height=max(420, 26 * len(ordered) + 220))
    return fig


def selectivity_map(table: pd.DataFrame, *, features=None, method: str = "probe", layers=None,
                    alpha: float = 0.05, size: str = "screen") -> go.Figure:
    """Probe selectivity per layer and step: a layer × step heatmap with a feature dropdown.

    Parameters
    ----------
    table : pandas.DataFrame
        An attribution table holding probe rows (``method == method``, ``effect`` = selectivity,
        i.e. probe score minus control score, one step per window).
    features : str or sequence of str, optional
        Features of the dropdown; default all with probe rows.
    method : str
        The method whose rows are drawn.
    layers : optional
        Network order and levels, as for :func:`attribution_heatmap`.
    alpha : float
        Significance mark, as for :func:`attribution_heatmap`.
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap per feature: ``x`` the window start steps, ``y`` the layers in network order,
        ``z`` the selectivity.
    """
    table = _check_table(table)
    rows = table[table["method"].astype(str) == method]
    if rows.empty:
        raise ValueError(f"no rows with method {method!r}; the table has {sorted(set(table['method'].astype(str)))}")
    traces, trace_of, features, methods, ordered, levels = _grid(
        rows, features=features, methods=None, layers=layers, alpha=alpha, value="effect", numeric_steps=True)
    fig = go.Figure(traces)
    for trace in fig.data:
        trace.colorbar.title.text = "selectivity"
    _level_marks(fig, ordered, levels, xref="x", yref="y")
    apply_style(fig, size=size)
    fig.update_layout(updatemenus=_menus(features, methods, trace_of, len(fig.data), []),
                      title=dict(text="Probe selectivity (score − control) per layer and step", y=0.98,
                                 yanchor="top"),
                      margin=dict(t=110, r=60),
                      xaxis_title=axis_title("step"),
                      yaxis=dict(title=axis_title("layer"), type="category", autorange="reversed"))
    if size == "screen":
        fig.update_layout(height=max(380, 26 * len(ordered) + 200))
    return fig


def correlation_heatmap(matrix, *, title: str = "Correlation", size: str = "screen") -> go.Figure:
    """A labelled correlation matrix on a diverging scale from −1 to 1.

    Parameters
    ----------
    matrix : pandas.DataFrame or xarray.DataArray
        A square, labelled matrix (``DataFrame.corr()`` output, or a 2-d DataArray whose
        coordinates label both axes).
    title : str
        Figure title (escaped).
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap whose ``z`` is the matrix, values written in the cells.
    """
    if isinstance(matrix, xr.DataArray):
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-d, got dims {matrix.dims}")
        rows = [str(v) for v in (matrix[matrix.dims[0]].values if matrix.dims[0] in matrix.coords
                                 else range(matrix.shape[0]))]
        cols = [str(v) for v in (matrix[matrix.dims[1]].values if matrix.dims[1] in matrix.coords
                                 else range(matrix.shape[1]))]
        values = np.asarray(matrix.values, dtype=np.float64)
    elif isinstance(matrix, pd.DataFrame):
        rows, cols = [str(v) for v in matrix.index], [str(v) for v in matrix.columns]
        values = matrix.to_numpy(dtype=np.float64)
    else:
        raise TypeError(f"matrix must be a pandas.DataFrame or xarray.DataArray, got {type(matrix).__name__}")
    if values.shape[0] != values.shape[1]:
        raise ValueError(f"a correlation matrix is square; got shape {values.shape}")
    rows, cols = [escape(r) for r in rows], [escape(c) for c in cols]
    fig = go.Figure(go.Heatmap(
        x=cols, y=rows, z=values, zmin=-1.0, zmax=1.0, zmid=0.0, colorscale=DIVERGING,
        text=np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.2f}")(values), texttemplate="%{text}",
        hovertemplate="%{y} × %{x}<br>r = %{z:.3f}<extra></extra>", xgap=1, ygap=1,
        colorbar=dict(title=dict(text=axis_title("correlation"), side="right")),
    ))
    apply_style(fig, size=size)
    fig.update_layout(title_text=escape(title), xaxis=dict(type="category", tickangle=-45),
                      yaxis=dict(type="category", autorange="reversed", scaleanchor="x"))
    if size == "screen":
        fig.update_layout(height=max(420, 28 * len(rows) + 220))
    return fig
