"""Figures of one run's trajectory: x̂0 over steps, band-pass images, radial spectra, wavelet energy.

Every builder returns a :class:`plotly.graph_objects.Figure` and never shows it.  Step sliders use
plotly frames: each frame holds one denoising step, and the slider has one position per step
shown.  Images are embedded as data URIs (``go.Image`` with a ``source``) sized and encoded by a
:class:`denoisefeat.viz.frames.FramePolicy` (small frames as exact PNGs, large ones box-downscaled
and WebP), which keeps a figure of many steps small.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from denoisefeat.frequency import DEFAULT_BANDS, band_pass
from denoisefeat.metrics import luminance
from denoisefeat.viz.frames import FramePolicy, downscale
from denoisefeat.viz.style import DIVERGING, SEQUENTIAL, apply_style, axis_title, escape

__all__ = ["band_pass_grid", "rapsd_curves", "rapsd_heatmap", "read_image_blocks", "step_image_grid",
           "wavelet_heatmap"]

_ANIMATE = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}


def _indices(selection, n: int, *, name: str, default: int | None = None) -> list[int]:
    """Positions selected by ``None`` (the first ``default``, or all), an index, a slice or a sequence of indices."""
    if selection is None:
        return list(range(n if default is None else min(default, n)))
    if isinstance(selection, slice):
        return list(range(n))[selection]
    if isinstance(selection, (int, np.integer)):
        selection = [selection]
    idx = [int(i) for i in selection]
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise IndexError(f"{name} {bad} out of range: the run has {n} {name} (0–{n - 1})")
    if not idx:
        raise ValueError(f"{name} selects nothing")
    return [i % n for i in idx]


def _condition_labels(run, samples: list[int]) -> list[str]:
    """A short description of each sample's condition: its prompt or class label, if any."""
    attrs = run.attrs
    prompts, labels = attrs.get("prompts"), attrs.get("class_labels")
    out = []
    for i in samples:
        if prompts:
            out.append(str(prompts[i % len(prompts)]))
        elif labels:
            out.append(f"label {labels[i % len(labels)]}")
        else:
            out.append("")
    return out


def _images_of(run) -> xr.DataArray:
    ds = run.dataset
    if "images" not in ds:
        raise ValueError(
            "the run has no 'images' array (decoded x̂0); trace it with keep=(..., 'images'). "
            f"It holds: {', '.join(sorted(ds.data_vars))}"
        )
    return ds["images"]


def _timesteps(run, steps: list[int]) -> list[float | None]:
    ds = run.dataset
    if "timestep" in ds.coords:
        return [float(v) for v in ds["timestep"].values[steps]]
    return [None] * len(steps)


def _step_slider(step_values: list[int], *, active: int) -> tuple[dict, dict]:
    """A slider with one position per step and play/pause buttons, driving frames named by step."""
    positions = [dict(method="animate", label=str(step), args=[[str(step)], _ANIMATE]) for step in step_values]
    slider = dict(active=active, steps=positions, currentvalue=dict(prefix="step "), pad=dict(t=40, b=10),
                  x=0.1, len=0.9, y=0, yanchor="top")
    buttons = dict(type="buttons", direction="left", showactive=False, x=0.0, y=0, xanchor="left", yanchor="top",
                   pad=dict(t=45, r=10),
                   buttons=[dict(label="▶", method="animate",
                                 args=[None, {**_ANIMATE, "frame": {"duration": 300, "redraw": True},
                                              "fromcurrent": True}]),
                            dict(label="❚❚", method="animate", args=[[None], _ANIMATE])])
    return slider, buttons


def _frame_title(prefix: str, step: int, timestep: float | None) -> str:
    return f"{prefix} — step {step}" + ("" if timestep is None else f" (timestep {timestep:g})")


_READ_BYTES = 256 * 2**20  # images read from the store at a time (a block of samples)


def _selection(idx: list[int]):
    """A slice for consecutive positions (zarr reads a slice faster than a list), else the list."""
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return idx


def read_image_blocks(images: xr.DataArray, *, samples: list[int], steps: list[int],
                      block_bytes: int = _READ_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
    """``images[samples, steps]`` read from the store a block of samples at a time, float32.

    The one way the figures read x̂0 (the report's spectra and its x̂0 grid share one pass).

    Parameters
    ----------
    images : xarray.DataArray
        ``(sample, step, ...)``, lazy (a run's ``images``).
    samples, steps : list of int
        Positions to read.
    block_bytes : int
        About the most bytes read at a time (at least one sample).

    Yields
    ------
    (slice, numpy.ndarray)
        The block's positions in ``samples`` and its ``(block, len(steps), ...)`` float32 values.
    """
    per_sample = len(steps) * int(np.prod(images.shape[2:])) * 4
    block = max(1, block_bytes // max(per_sample, 1))
    for i in range(0, len(samples), block):
        part = samples[i:i + block]
        values = images.isel(sample=_selection(part), step=_selection(steps)).values
        yield slice(i, i + len(part)), np.asarray(values, dtype=np.float32)


def _frames_of(images: xr.DataArray, sample_idx: list[int], step_idx: list[int],
               frames: FramePolicy) -> np.ndarray:
    """(sample, step, h, w, 3) uint8 frames, read from the store a block of samples at a time."""
    return np.concatenate([frames.frames(block)
                           for _, block in read_image_blocks(images, samples=sample_idx, steps=step_idx)])


def step_image_grid(run, *, samples=None, steps=None, ncols: int | None = None, size: str = "screen",
                    frames: FramePolicy | None = None, data: np.ndarray | None = None) -> go.Figure:
    """x̂0 of several samples, one panel each, with a slider over the denoising steps.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run with ``images`` (sample, step, rgb, height, width) in [0, 1].
    samples : sequence of int or slice, optional
        Samples to show; default the first 8.
    steps : sequence of int or slice, optional
        Steps on the slider; default all.
    ncols : int, optional
        Panels per row; default ``min(4, number of samples)``.
    size : {"screen", "column", "page"}
        See :func:`denoisefeat.viz.style.apply_style`.
    frames : FramePolicy, optional
        Size and encoding of the frames (its ``max_steps`` is not applied here: pass ``steps``);
        default ``FramePolicy()``.
    data : numpy.ndarray, optional
        The frames already made: ``frames.frames(images[samples, steps])``, ``(sample, step, h, w, 3)``
        uint8 (the report makes them in its one read of x̂0); default: read from the run.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``go.Image`` per sample (``source`` a data URI of the frame made by ``frames``), one
        frame per step (named by the step), a slider with one position per step starting at the
        last one.
    """
    frames = FramePolicy() if frames is None else frames
    images = _images_of(run)
    sample_idx = _indices(samples, images.sizes["sample"], name="samples", default=8)
    step_idx = _indices(steps, images.sizes["step"], name="steps")
    if data is None:
        data = _frames_of(images, sample_idx, step_idx, frames)  # (s, t, h, w, 3)
    elif data.dtype != np.uint8 or data.shape[:2] != (len(sample_idx), len(step_idx)) or data.shape[-1] != 3:
        raise ValueError(f"data must be ({len(sample_idx)}, {len(step_idx)}, h, w, 3) uint8 frames of the samples "
                         f"and steps shown, got {data.dtype} {data.shape}")
    step_values = [int(v) for v in images["step"].values[step_idx]]
    timesteps = _timesteps(run, step_idx)
    labels = _condition_labels(run, sample_idx)
    n = len(sample_idx)
    ncols = min(4, n) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    titles = [escape(f"sample {s}" + (f" · {lab}" if lab else "")) for s, lab in zip(sample_idx, labels, strict=True)]
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.08 if nrows > 1 else 0.0)
    last = len(step_idx) - 1
    for i in range(n):
        fig.add_trace(go.Image(source=frames.encode(data[i, last]), name=titles[i],
                               hovertemplate=f"{titles[i]}<br>x %{{x}}, y %{{y}}<extra></extra>"),
                      row=i // ncols + 1, col=i % ncols + 1)
    fig.frames = [
        go.Frame(name=str(step), traces=list(range(n)),
                 data=[go.Image(source=frames.encode(data[i, k])) for i in range(n)],
                 layout=dict(title_text=_frame_title("x̂0", step, t)))
        for k, (step, t) in enumerate(zip(step_values, timesteps, strict=True))
    ]
    slider, buttons = _step_slider(step_values, active=last)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    apply_style(fig, size=size)
    fig.update_annotations(font_size=None)  # subplot titles in the figure's font size
    fig.update_layout(sliders=[slider], updatemenus=[buttons], margin=dict(t=80),
                      title_text=_frame_title("x̂0", step_values[last], timesteps[last]))
    if size == "screen":
        fig.update_layout(height=220 * nrows + 170)
    return fig


def band_pass_grid(run, *, sample: int = 0, steps=None, bands: Mapping = DEFAULT_BANDS,
                   size: str = "screen", frames: FramePolicy | None = None) -> go.Figure:
    """One sample's x̂0 and its band-pass images, with a slider over the denoising steps.

    Parameters
    ----------
    run : denoisefeat.store.Run
        A run with ``images`` in [0, 1].
    sample : int
        Which sample.
    steps : sequence of int or slice, optional
        Steps on the slider; default all.
    bands : mapping of str to (float, float)
        Frequency bands in cycles/pixel (see :data:`denoisefeat.frequency.DEFAULT_BANDS`).
    size : {"screen", "column", "page"}
    frames : FramePolicy, optional
        Size and encoding of the x̂0 frame and size of the band images (its ``max_steps`` is not
        applied here: pass ``steps``); default ``FramePolicy()``.

    Returns
    -------
    plotly.graph_objects.Figure
        Trace 0 is the RGB x̂0 (``go.Image``); trace ``1 + b`` a heatmap whose ``z`` is
        ``denoisefeat.frequency.band_pass(gray)[step, b]`` of the luminance
        (``skimage.color.rgb2gray``) of x̂0, computed at the stored size and then box-downscaled
        like the frames (float32).  The first band (it holds the mean) is drawn in grey, the
        others on a diverging scale centred on 0; each band keeps one colour range over all steps.
        One frame and one slider position per step.

    Notes
    -----
    The band-pass images of all bands add up to the luminance image (the bands partition the
    spectrum), so the panels show where in the picture each band's content lies at each step.
    """
    frames = FramePolicy() if frames is None else frames
    images = _images_of(run)
    (sample_idx,) = _indices([sample], images.sizes["sample"], name="samples")
    step_idx = _indices(steps, images.sizes["step"], name="steps")
    rgb = images.isel(sample=sample_idx, step=step_idx).values  # (t, 3, H, W)
    gray = luminance(np.clip(rgb, 0.0, 1.0))
    parts = np.asarray(band_pass(gray, bands=bands), dtype=np.float32)  # (t, n_bands, H, W)
    parts = downscale(parts, max_px=frames.max_px)  # box filter: linear, the bands still add up
    names = list(bands)
    step_values = [int(v) for v in images["step"].values[step_idx]]
    timesteps = _timesteps(run, step_idx)
    uris = [frames.encode(u) for u in frames.frames(rgb)]
    titles = ["x̂0"] + [f"{escape(name)} band<br>[{lo:g}, {hi:g}) c/px" for name, (lo, hi) in bands.items()]
    fig = make_subplots(rows=1, cols=1 + len(names), subplot_titles=titles, horizontal_spacing=0.03)
    last = len(step_idx) - 1

    def heatmap(b: int, k: int) -> go.Heatmap:
        return go.Heatmap(z=parts[k, b], hovertemplate=f"{escape(names[b])} band<br>x %{{x}}, y %{{y}}"
                          "<br>value %{z:.3g}<extra></extra>")

    fig.add_trace(go.Image(source=uris[last], hovertemplate="x %{x}, y %{y}<extra></extra>"), row=1, col=1)
    for b in range(len(names)):
        trace = heatmap(b, last)
        if b == 0:
            # the first band holds the mean: grey levels on the image's own [0, 1] scale (or wider)
            trace.update(colorscale="gray", zmin=min(0.0, float(parts[:, 0].min())),
                         zmax=max(1.0, float(parts[:, 0].max())))
        else:
            bound = float(np.abs(parts[:, b]).max()) or 1.0
            trace.update(colorscale=DIVERGING, zmid=0.0, zmin=-bound, zmax=bound)
        trace.update(showscale=False)
        fig.add_trace(trace, row=1, col=2 + b)
    fig.frames = [
        go.Frame(name=str(step), traces=list(range(1 + len(names))),
                 data=[go.Image(source=uris[k])] + [heatmap(b, k) for b in range(len(names))],
                 layout=dict(title_text=_frame_title(f"Band-pass images of sample {sample_idx}", step, t)))
        for k, (step, t) in enumerate(zip(step_values, timesteps, strict=True))
    ]
    slider, buttons = _step_slider(step_values, active=last)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    for col in range(2, 2 + len(names)):
        axis_id = "x" if col == 1 else f"x{col}"
        fig.update_yaxes(autorange="reversed", scaleanchor=axis_id, row=1, col=col)
    apply_style(fig, size=size)
    fig.update_annotations(font_size=None)  # subplot titles in the figure's font size
    fig.update_layout(sliders=[slider], updatemenus=[buttons], margin=dict(t=110),
                      title_text=_frame_title(f"Band-pass images of sample {sample_idx}", step_values[last],
                                              timesteps[last]))
    return fig


def _check_dims(data: xr.DataArray, *, required: tuple[str, ...], what: str) -> None:
    if not isinstance(data, xr.DataArray):
        raise TypeError(f"{what} must be an xarray.DataArray, got {type(data).__name__}")
    missing = [d for d in required if d not in data.dims]
    extra = [d for d in data.dims if d not in (*required, "sample")]
    if missing or extra:
        raise ValueError(
            f"{what} must have dims {('sample',) + required} (sample optional); got {data.dims}"
            + (f": missing {missing}" if missing else "") + (f": unexpected {extra}" if extra else "")
        )


def _over_samples(data: xr.DataArray, sample: int | None) -> xr.DataArray:
    if "sample" not in data.dims:
        return data
    if sample is None:
        return data.mean("sample", skipna=True)
    return data.isel(sample=int(sample))


def _log10(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)


def _step_customdata(data: xr.DataArray) -> np.ndarray | None:
    if "timestep" in data.coords and data["timestep"].dims == ("step",):
        return data["timestep"].values
    return None


def rapsd_heatmap(rapsd: xr.DataArray, *, sample: int | None = None, include_dc: bool = False,
                  size: str = "screen") -> go.Figure:
    """Radially averaged power spectrum over the denoising steps: frequency × step, log colour.

    Parameters
    ----------
    rapsd : xarray.DataArray
        Dims ``(sample, step, freq)`` (``sample`` optional), a ``freq`` coordinate in cycles/pixel;
        the ``rapsd`` variable of :func:`denoisefeat.features`.
    sample : int, optional
        One sample; default the mean power over samples.
    include_dc : bool
        Keep the frequency-0 row (the squared image mean, which dwarfs the rest of the colour range).
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap: ``x`` the steps, ``y`` the frequencies, ``z = log10(power)`` of shape
        (freq, step) (NaN where the power is not positive).
    """
    _check_dims(rapsd, required=("step", "freq"), what="rapsd")
    power = _over_samples(rapsd, sample).transpose("freq", "step")
    steps = power["step"].values if "step" in power.coords else np.arange(power.sizes["step"])
    freq = power["freq"].values if "freq" in power.coords else np.arange(power.sizes["freq"])
    if not include_dc:
        power, freq = power.isel(freq=freq > 0), freq[freq > 0]
    z = _log10(power.values)
    timesteps = _step_customdata(power)
    hover = "step %{x}<br>freq %{y:.3f} cycles/pixel<br>log10 power %{z:.2f}"
    trace = go.Heatmap(x=steps, y=freq, z=z, colorscale=SEQUENTIAL,
                       colorbar=dict(title=dict(text="log10 power", side="right")))
    if timesteps is not None:
        trace.update(customdata=np.broadcast_to(timesteps, z.shape), hovertemplate=hover
                     + "<br>timestep %{customdata:g}<extra></extra>")
    else:
        trace.update(hovertemplate=hover + "<extra></extra>")
    fig = go.Figure(trace)
    apply_style(fig, size=size)
    which = "mean over samples" if sample is None or "sample" not in rapsd.dims else f"sample {int(sample)}"
    fig.update_layout(title_text=f"Radial power spectrum of x̂0 over steps ({which})",
                      xaxis_title=axis_title("step"), yaxis_title=axis_title("freq"))
    return fig


def rapsd_curves(rapsd: xr.DataArray, *, steps=None, sample: int | None = None, size: str = "screen") -> go.Figure:
    """Radially averaged power spectra at a few steps, as curves on log-log axes.

    Parameters
    ----------
    rapsd : xarray.DataArray
        Dims ``(sample, step, freq)`` (``sample`` optional) with a ``freq`` coordinate.
    steps : sequence of int, optional
        Step positions to draw; default 6 evenly spaced from the first to the last.
    sample : int, optional
        One sample; default the mean over samples.
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        One line per step (coloured from early = dark to late = bright), frequency 0 left out
        (log axis), ``y`` the power.
    """
    _check_dims(rapsd, required=("step", "freq"), what="rapsd")
    power = _over_samples(rapsd, sample).transpose("step", "freq")
    n = power.sizes["step"]
    if steps is None:
        positions = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(6, n))})
    else:
        positions = _indices(steps, n, name="steps")
    freq = power["freq"].values if "freq" in power.coords else np.arange(power.sizes["freq"])
    keep = freq > 0
    step_values = power["step"].values if "step" in power.coords else np.arange(n)
    colours = sample_colorscale(SEQUENTIAL, [p / max(n - 1, 1) for p in positions])
    fig = go.Figure()
    for colour, k in zip(colours, positions, strict=True):
        fig.add_trace(go.Scatter(x=freq[keep], y=power.values[k][keep], mode="lines", name=f"step {step_values[k]}",
                                 line=dict(color=colour),
                                 hovertemplate=f"step {step_values[k]}<br>freq %{{x:.3f}}<br>power %{{y:.3g}}"
                                 "<extra></extra>"))
    apply_style(fig, size=size)
    fig.update_layout(title_text="Radial power spectrum of x̂0 at selected steps",
                      xaxis=dict(type="log", title=axis_title("freq")),
                      yaxis=dict(type="log", title=axis_title("power")))
    return fig


def wavelet_heatmap(energy: xr.DataArray, *, sample: int | None = None, relative: bool = True,
                    size: str = "screen") -> go.Figure:
    """Wavelet subband energy over the denoising steps: (level, orientation) × step, log colour.

    Parameters
    ----------
    energy : xarray.DataArray
        Dims ``(sample, step, level, orientation)`` (``sample`` optional); the ``wavelet_energy``
        variable of :func:`denoisefeat.features`.  Subbands that are NaN at every step
        (e.g. an approximation that exists at the coarsest level only) are left out.
    sample : int, optional
        One sample; default the mean over samples.
    relative : bool
        Divide each (sample, step) by its total over all subbands first (fractions of the energy).
    size : {"screen", "column", "page"}

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap: rows ``"level L · orientation"`` (finest level first), ``x`` the steps,
        ``z = log10`` of the (mean) energy.
    """
    _check_dims(energy, required=("step", "level", "orientation"), what="wavelet energy")
    data = energy.astype(np.float64)
    if relative:
        total = data.sum(("level", "orientation"), skipna=True)
        data = data / total.where(total > 0)
    data = _over_samples(data, sample).transpose("level", "orientation", "step")
    levels = data["level"].values if "level" in data.coords else np.arange(1, data.sizes["level"] + 1)
    orientations = (data["orientation"].values if "orientation" in data.coords
                    else np.arange(data.sizes["orientation"]))
    rows, labels = [], []
    values = data.values
    for i, level in enumerate(levels):
        for j, orientation in enumerate(orientations):
            if np.isfinite(values[i, j]).any():
                rows.append(values[i, j])
                labels.append(f"level {level} · {orientation}")
    steps = data["step"].values if "step" in data.coords else np.arange(data.sizes["step"])
    z = _log10(np.stack(rows))
    quantity = "log10 energy fraction" if relative else "log10 energy"
    fig = go.Figure(go.Heatmap(x=steps, y=labels, z=z, colorscale=SEQUENTIAL,
                               colorbar=dict(title=dict(text=quantity, side="right")),
                               hovertemplate=f"%{{y}}<br>step %{{x}}<br>{quantity} %{{z:.2f}}<extra></extra>"))
    apply_style(fig, size=size)
    fig.update_layout(title_text="Wavelet subband energy of x̂0 over steps",
                      xaxis_title=axis_title("step"), yaxis=dict(title=axis_title("subband"), type="category",
                                                                  autorange="reversed"))
    return fig
