"""Figures of feature profiles: how far each feature has come at each step, and runs side by side.

A *profile* is one feature trajectory per sample: a variable of a features Dataset with dims
``(sample, step)`` (``ssim``, ``edge_density`` …), or one band of a ``(sample, step, band)`` variable,
named ``variable[band]`` (``band_relative_error[low]``), as in :func:`denoisefeat.temporal.profiles`.

Curves show the *normalised progress* of a profile exactly as :func:`denoisefeat.temporal.profiles`
measures it (its ``progress`` variable, so the emergence and stabilisation markers sit on the
curves): ``p(step) = (f(step) − f(first step)) / (f(last step) − f(first step))``, 0 at the first
step and 1 at the final one whichever way the feature moves, with unbounded distances (ΔE, Hu
moments) mapped through ``1/(1+d)`` first and a constant trajectory at ``p = 1``.  Time is the step
index or the normalised time ``t/T = step / (T − 1)`` (0 at the first step, 1 at the last), which
puts runs with different step counts on one axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from denoisefeat.viz.style import apply_style, axis_title, color_for, escape

__all__ = ["compare_runs", "emergence_curves"]

_X_CHOICES = ("step", "t/T")


def _curves(features: xr.Dataset, variables) -> xr.DataArray:
    """Normalised progress ``(profile, sample, step)`` of :func:`denoisefeat.temporal.profiles`."""
    from denoisefeat.temporal import profiles

    if not isinstance(features, xr.Dataset):
        raise TypeError(f"features must be an xarray.Dataset, got {type(features).__name__}")
    return profiles(features, variables=variables, n_boot=0)["progress"]


def _time(steps: np.ndarray, x: str) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.float64)
    if x == "step":
        return steps
    span = steps[-1] - steps[0] if steps.size > 1 else 1.0
    return (steps - steps[0]) / (span or 1.0)


def _median_ci(p: np.ndarray, *, ci: float, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median over samples (axis 0) and its percentile-bootstrap CI (scipy.stats.bootstrap)."""
    import warnings

    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every sample is NaN stays NaN
        median = np.nanmedian(p, axis=0)
    finite = np.isfinite(p).all(axis=1)
    data = p[finite]
    if data.shape[0] < 2 or n_boot < 1:
        return median, median.copy(), median.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical samples: scipy warns that the distribution is degenerate
        res = bootstrap((data,), np.median, axis=0, vectorized=True, n_resamples=int(n_boot), confidence_level=ci,
                        method="percentile", random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return median, np.minimum(low, median), np.maximum(high, median)


def _check(x: str, ci: float) -> None:
    if x not in _X_CHOICES:
        raise ValueError(f"x must be one of {', '.join(_X_CHOICES)}, got {x!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")


def _band(colour: str, alpha: float = 0.2) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _curve_traces(t, median, low, high, *, name: str, colour: str, group: str, dash=None, hover: str,
                  showlegend: bool = True) -> list[go.Scatter]:
    label = escape(name)
    return [
        go.Scatter(x=np.concatenate([t, t[::-1]]), y=np.concatenate([high, low[::-1]]), mode="lines", fill="toself",
                   fillcolor=_band(colour), line=dict(width=0), hoverinfo="skip", showlegend=False,
                   legendgroup=group, name=f"{label} CI"),
        go.Scatter(x=t, y=median, mode="lines", name=label, legendgroup=group, showlegend=showlegend,
                   line=dict(color=colour, dash=dash),
                   customdata=np.stack([low, high], axis=-1),
                   hovertemplate=f"{label}<br>{hover} %{{x:.3g}}<br>median progress %{{y:.3f}}"
                   " [CI %{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>"),
    ]


def _markers(profiles: xr.Dataset, name: str, steps: np.ndarray, t: np.ndarray, median: np.ndarray, *,
             colour: str, group: str, x: str) -> list[go.Scatter]:
    """Median emergence and stabilisation of one profile, placed on its median curve."""
    if "profile" not in profiles.dims or name not in [str(p) for p in profiles["profile"].values]:
        return []
    out = []
    for var, symbol in (("emergence", "circle"), ("stabilisation", "diamond")):
        if var not in profiles:
            continue
        per_sample = profiles[var].sel(profile=name)
        values = np.asarray(per_sample.values, dtype=np.float64).ravel()
        if not np.isfinite(values).any():
            continue
        step = float(np.nanmedian(values))
        n = int(np.isfinite(values).sum())
        position = float(np.interp(step, steps, t))
        y = float(np.interp(step, steps, median))
        out.append(go.Scatter(
            x=[position], y=[y], mode="markers", legendgroup=group, showlegend=False,
            name=f"{escape(name)} {var}",
            marker=dict(symbol=symbol, size=11, color=colour, line=dict(color="black", width=1)),
            hovertemplate=f"{escape(name)}<br>{var}: median step {step:.3g}"
            + ("" if x == "step" else f" (t/T {position:.3f})") + f", n = {n}<extra></extra>",
        ))
    return out


def emergence_curves(features: xr.Dataset, *, variables=None, profiles: xr.Dataset | None = None,
                     x: str = "step", ci: float = 0.95, n_boot: int = 1000, seed: int = 0,
                     size: str = "screen") -> go.Figure:
    """Normalised progress of each feature over the steps: median over samples with a CI band.

    Parameters
    ----------
    features : xarray.Dataset
        Per-step features, variables with dims ``(sample, step)`` or ``(sample, step, band)``
        (:func:`denoisefeat.features`).
    variables : str or sequence of str, optional
        Profiles to draw: variable names (a band variable gives one curve per band) or
        ``variable[band]``; default every profile.
    profiles : xarray.Dataset, optional
        :func:`denoisefeat.temporal.profiles` output (``emergence``, ``stabilisation`` with dims
        ``(profile, sample)``, in steps): the median over samples is marked on each curve
        (circle: emergence, diamond: stabilisation).
    x : {"step", "t/T"}
        Time axis.
    ci : float
        Confidence level of the band: a percentile bootstrap (``scipy.stats.bootstrap``) of the
        median over samples.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the bootstrap.
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        Per profile, in order: a filled CI band trace, then the median line (its ``y`` is the
        median of :func:`progress` over samples, ``customdata`` the CI); then the markers.
    """
    _check(x, ci)
    curves = _curves(features, variables)
    fig = go.Figure()
    markers = []
    for i, name in enumerate(curves["profile"].values.tolist()):
        p = curves.sel(profile=name)
        steps = p["step"].values
        t = _time(steps, x)
        median, low, high = _median_ci(p.values, ci=ci, n_boot=n_boot, seed=seed)
        colour = color_for(i)
        dash = (None, "dash", "dot", "dashdot")[(i // 8) % 4]
        fig.add_traces(_curve_traces(t, median, low, high, name=name, colour=colour, group=name, dash=dash,
                                     hover=x))
        if profiles is not None:
            markers.extend(_markers(profiles, name, steps, t, median, colour=colour, group=name, x=x))
    fig.add_traces(markers)
    apply_style(fig, size=size)
    fig.update_layout(
        title_text=f"Feature emergence: median normalised progress ({ci:.0%} CI over samples)",
        xaxis_title=axis_title(x), yaxis_title=axis_title("progress"), hovermode="closest",
    )
    return fig


def compare_runs(runs: Mapping[str, xr.Dataset], *, variables, ci: float = 0.95, n_boot: int = 1000,
                 seed: int = 0, ncols: int | None = None, size: str = "screen") -> go.Figure:
    """Several runs side by side on normalised time t/T: one panel per profile, one line per run.

    Parameters
    ----------
    runs : mapping of str to xarray.Dataset
        Features of each run (e.g. one scheduler or step count per run), keyed by a label.
    variables : str or sequence of str
        Profiles to compare (as in :func:`emergence_curves`).
    ci, n_boot, seed
        Bootstrap CI of the median over samples, see :func:`emergence_curves`.
    ncols : int, optional
        Panels per row; default ``min(3, number of profiles)``.
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        Per panel and run: a CI band then the median progress line, ``x`` = t/T.
    """
    _check("t/T", ci)
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping {label: features Dataset}")
    labels = list(runs)
    first = runs[labels[0]]
    names = _curves(first, variables)["profile"].values.tolist()
    ncols = min(3, len(names)) if ncols is None else int(ncols)
    nrows = -(-len(names) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[escape(n) for n in names], shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.12 if nrows > 1 else 0.0)
    for j, name in enumerate(names):
        for i, label in enumerate(labels):
            p = _curves(runs[label], name).sel(profile=name)
            steps = p["step"].values
            median, low, high = _median_ci(p.values, ci=ci, n_boot=n_boot, seed=seed)
            for trace in _curve_traces(_time(steps, "t/T"), median, low, high, name=str(label),
                                       colour=color_for(i), group=str(label), hover="t/T", showlegend=j == 0):
                fig.add_trace(trace, row=j // ncols + 1, col=j % ncols + 1)
    apply_style(fig, size=size)
    fig.update_annotations(font_size=None)  # subplot titles in the figure's font size
    fig.update_xaxes(title_text=axis_title("t/T"), row=nrows)
    fig.update_yaxes(title_text="progress", col=1)
    fig.update_layout(title_text=f"Runs compared on normalised time (median, {ci:.0%} CI over samples)")
    if size == "screen":
        fig.update_layout(height=300 * nrows + 120)
    return fig
