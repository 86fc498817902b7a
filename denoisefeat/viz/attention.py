"""Figures of cross-attention maps and of which words' maps carry a factor.

* :func:`word_step_grid` — one layer's per-word attention maps of one sample, word (rows) × step
  (columns), a small heatmap each;
* :func:`word_contrast_heatmap` — an attention contrast table (:func:`denoisefeat.analyses.contrast`
  with ``source="attention"``): word (rows) × layer and step window (columns), the excess η².

Size is bounded: at most ``max_words`` words and ``max_steps`` steps (evenly spaced, both ends
kept) of maps stored at most 16 px a side by default (:mod:`denoisefeat.hooks.attention`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from denoisefeat.viz.frames import FramePolicy
from denoisefeat.viz.style import SEQUENTIAL, apply_style, escape

__all__ = ["word_contrast_heatmap", "word_step_grid"]


def word_step_grid(run, layer: str, *, sample: int = 0, max_words: int = 8, max_steps: int = 6,
                   size: str = "screen") -> go.Figure:
    """One layer's attention maps of each word of a sample's prompt at a few steps.

    Parameters
    ----------
    run : denoisefeat.store.Run
        Traced with ``attention=...``.
    layer : str
        A layer with stored maps (``run.attention_layers()``).
    sample : int
        The sample whose prompt and maps to draw.
    max_words, max_steps : int
        Most words (the prompt's first) and steps (evenly spaced) drawn.
    size : str
        A :data:`~denoisefeat.viz.style.FIGURE_SIZES` name.

    Returns
    -------
    plotly.graph_objects.Figure
        Rows: words; columns: steps; each cell the word's map (the attention mass of its sub-word
        tokens) on one colour scale shared by the figure.
    """
    from denoisefeat.hooks.attention import aggregate_words

    maps = run.attention(layer)
    if not 0 <= sample < maps.sizes["sample"]:
        raise ValueError(f"sample {sample} is outside the run's {maps.sizes['sample']} samples.")
    prompt = run.attrs["prompts"][sample]
    spans = run.attention_words()[prompt][:max_words]
    recorded = [i for i in range(maps.sizes["step"]) if not np.isnan(maps.values[sample, i]).all()]
    steps = [recorded[i] for i in FramePolicy(max_steps=max_steps).steps(len(recorded))]
    values = maps.values[sample : sample + 1, steps]
    grids = [aggregate_words(values, [(start, stop)])[0] for _, start, stop in spans]  # (step, y, x) each
    top = max(float(np.nanmax(g)) for g in grids) if grids else 1.0
    fig = make_subplots(rows=len(spans), cols=len(steps), horizontal_spacing=0.01, vertical_spacing=0.02,
                        column_titles=[f"step {s}" for s in steps], row_titles=[escape(w) for w, _, _ in spans])
    for r, grid in enumerate(grids, start=1):
        for c, step in enumerate(steps, start=1):
            hover = f"{escape(spans[r - 1][0])}, step {step}: %{{z:.3f}}<extra></extra>"
            fig.add_trace(go.Heatmap(z=grid[c - 1], zmin=0, zmax=top, colorscale=SEQUENTIAL, showscale=(r, c) == (1, 1),
                                     colorbar={"title": "attention"}, hovertemplate=hover), row=r, col=c)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(title=f"{escape(layer)} · {escape(prompt)}")
    return apply_style(fig, size=size)


def word_contrast_heatmap(table: pd.DataFrame, *, feature: str, alpha: float = 0.05,
                          size: str = "screen") -> go.Figure:
    """Which words' attention maps separate a factor's levels: word × (layer, step window).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`denoisefeat.analyses.contrast` with ``source="attention"`` (a ``word`` column).
    feature : str
        The factor.
    alpha : float
        Cells with ``p_adj < alpha`` and a positive effect are marked ``*``.
    size : str
        A :data:`~denoisefeat.viz.style.FIGURE_SIZES` name.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    if "word" not in table.columns:
        raise ValueError("The table has no 'word' column: pass an attention contrast (source='attention').")
    rows = table[table["feature"] == feature]
    if rows.empty:
        raise ValueError(f"No rows for {feature!r}; the table has {sorted(pd.unique(table['feature']))}.")
    columns = list(dict.fromkeys(zip(rows["layer"], rows["step_start"], rows["step_stop"], strict=True)))
    words = list(dict.fromkeys(rows["word"]))
    z = np.full((len(words), len(columns)), np.nan)
    marks = np.full(z.shape, "", dtype=object)
    for row in rows.itertuples():
        i, j = words.index(row.word), columns.index((row.layer, row.step_start, row.step_stop))
        z[i, j] = row.effect_std
        marks[i, j] = "*" if row.p_adj < alpha and row.effect_std > 0 else ""
    labels = [f"{escape(layer)} [{start}, {stop})" for layer, start, stop in columns]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=[escape(w) for w in words], text=marks, texttemplate="%{text}",
                               colorscale=SEQUENTIAL, colorbar={"title": "excess η²"},
                               hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Attention maps carrying {escape(feature)}", xaxis_title="layer [steps)",
                      yaxis_title="prompt word")
    return apply_style(fig, size=size)
