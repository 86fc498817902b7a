"""The metric selectivity matrix as a heatmap (see :mod:`denoisefeat.metrics.selectivity`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from denoisefeat.viz.style import SEQUENTIAL, apply_style, escape

__all__ = ["selectivity_heatmap"]


def selectivity_heatmap(matrix: xr.DataArray, *, title: str = "Metric selectivity on DiffShapes",
                        size: str = "screen") -> go.Figure:
    """Metric x factor heatmap of median responses, each metric's row normalised to its maximum.

    Parameters
    ----------
    matrix : xarray.DataArray
        Dimensions ``(metric, factor)``, e.g. the output of
        :func:`denoisefeat.metrics.selectivity.metric_selectivity`.
    title : str, optional
        Figure title (escaped).
    size : {"screen", "column", "page"}, optional
        Figure size, see :mod:`denoisefeat.viz.style`.

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap: colour = response / the row's largest response (0 to 1,
        ``Viridis``), annotated with the raw median response; the hover text
        shows both.  A row whose responses are all 0 (or NaN) is drawn as 0.

    Raises
    ------
    ValueError
        If ``matrix`` is not a 2-d DataArray with dimensions ``(metric, factor)``.
    """
    if not isinstance(matrix, xr.DataArray) or set(matrix.dims) != {"metric", "factor"}:
        raise ValueError("matrix must be an xarray.DataArray with dimensions (metric, factor)")
    matrix = matrix.transpose("metric", "factor")
    values = np.asarray(matrix.values, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        peak = np.nanmax(np.where(np.isfinite(values), values, np.nan), axis=1, initial=0.0)[:, None]
        normalised = np.where(peak > 0, values / np.where(peak > 0, peak, 1.0), 0.0)
    normalised = np.nan_to_num(normalised, nan=0.0)
    metrics = [escape(m) for m in matrix["metric"].values]
    factors = [escape(f) for f in matrix["factor"].values]
    text = np.vectorize(lambda v: "" if not np.isfinite(v) else f"{v:.3g}")(values)
    fig = go.Figure(go.Heatmap(
        x=factors, y=metrics, z=normalised, zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL,
        text=text, texttemplate="%{text}", customdata=values,
        hovertemplate="%{y} × %{x}<br>median response %{customdata:.4g}<br>"
                      "relative to the row's max %{z:.3f}<extra></extra>",
        xgap=1, ygap=1, colorbar=dict(title=dict(text="response / row max", side="right")),
    ))
    apply_style(fig, size=size)
    fig.update_layout(title_text=escape(title),
                      xaxis=dict(type="category", tickangle=-30, title_text="factor changed"),
                      yaxis=dict(type="category", autorange="reversed", title_text="metric"))
    if size == "screen":
        fig.update_layout(height=max(360, 36 * len(metrics) + 220))
    return fig
