"""The viewer's Dash app: a whole run store, browsed lazily and read-only.

The store is opened once with :func:`denoisefeat.store.open_run` (so a path that is not a store, or
a damaged store, is refused with the CLI's messages) and read one shown slice at a time, straight
from its chunks (:meth:`denoisefeat.store.Run.read`; no xarray dataset is opened, so the first frame
costs milliseconds): a frame is one ``images[sample, step]`` read, never the whole array.  The app
serves only its own page and Dash's bundled scripts (no CDN, no file routes); it never writes to
the store.

Frames are shown as a :class:`~denoisefeat.viz.frames.FramePolicy` makes them: by default
box-downscaled to at most 256 px and PNG-encoded (lossless), so the pixels shown are exactly the
8-bit area means of the stored x̂0.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from denoisefeat.frequency import DEFAULT_BANDS, band_pass
from denoisefeat.viz.frames import FramePolicy

__all__ = ["VIEWER_FRAMES", "create_app"]

VIEWER_FRAMES = FramePolicy(max_px=256, lossless_px=256)
"""Frames of the viewer: at most 256 px, lossless PNG."""

_IMAGE = "image"
_CELL_ROLES = ("clean", "edited", "corrupted")  # the images a click on an attribution cell shows
_PANEL = {"display": "inline-block", "verticalAlign": "top", "marginRight": "18px"}


class _Source:
    """What the app reads from one run, each piece on first use (thread-safe)."""

    def __init__(self, run, frames: FramePolicy):
        self.run = run
        self.frames = frames
        self.shape = run.shape("images")  # None without images; every read below is one region (run.read)
        self._lock = threading.Lock()
        self._cache: dict = {}

    def _once(self, key, make):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    @property
    def has_images(self) -> bool:
        return self.shape is not None

    def timesteps(self) -> np.ndarray | None:
        """The scheduler's timestep of each step, or None when the run stores none."""
        return self._once("timesteps", lambda: self.run.read("timestep") if self.run.shape("timestep") else None)

    def frame(self, sample: int, step: int) -> np.ndarray:
        """(h, w, 3) uint8: x̂0 of one sample at one step (one read)."""
        return self.frames.frames(self.run.read("images", sample, step))

    def final(self, sample: int) -> np.ndarray:
        """(h, w, 3) uint8: the final image of one sample (x̂0 at the last step where no ``final`` is stored)."""
        if self.run.shape("final") is not None:
            return self.frames.frames(self.run.read("final", sample))
        return self.frame(sample, self.shape[1] - 1)

    def band_frame(self, sample: int, step: int, band: str) -> np.ndarray:
        """(h, w, 3) uint8 grey image of one band of the luminance, 0 at mid-grey, ±max(|band|) at the ends."""
        from skimage.color import rgb2gray

        rgb = np.clip(self.run.read("images", sample, step), 0, 1)
        part = band_pass(rgb2gray(np.moveaxis(rgb, 0, -1)))[list(DEFAULT_BANDS).index(band)]
        bound = float(np.abs(part).max()) or 1.0
        grey = 0.5 + 0.5 * part / bound if band != next(iter(DEFAULT_BANDS)) else part
        return self.frames.frames(np.repeat(grey[None], 3, axis=0))

    def features(self):
        def load():
            if not self.run.store.holds("features"):
                return None
            from denoisefeat.step_features import load_features

            return load_features(self.run, allow_incomplete=True)

        return self._once("features", load)

    def profile_choices(self) -> list[str]:
        feats = self.features()
        if feats is None:
            return []
        return [str(v) for v, var in feats.data_vars.items() if set(var.dims) in ({"sample", "step"},
                                                                                   {"sample", "step", "band"})]

    def attribution(self) -> pd.DataFrame | None:
        def load():
            if "attribution" not in self.run.store.group:
                return None
            from denoisefeat.analyses.table import attribution_names, read_attribution

            frames = []
            for name in attribution_names(self.run.store.group):
                try:
                    frames.append(read_attribution(self.run.store.group, name).assign(table=name))
                except ValueError:  # a table of an older format: the report names it; the viewer skips it
                    continue
            return pd.concat(frames, ignore_index=True) if frames else None

        return self._once("attribution", load)

    def cell_images(self, table: str):
        """The :class:`~denoisefeat.analyses.table.CellImages` kept beside ``table``, or None when it keeps none."""
        def load():
            from denoisefeat.analyses.table import read_cell_images

            try:
                return read_cell_images(self.run.store.group, table)
            except KeyError:
                return None

        return self._once(("cell_images", table), load)

    def activation_change(self, layer: str) -> np.ndarray:
        from denoisefeat.viz.activations import activation_change

        return self._once(("acts", layer), lambda: activation_change(self.run.acts(layer)))


def _uri(source: _Source, frame: np.ndarray) -> str:
    return source.frames.encode(frame)


def _empty(text: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(annotations=[{"text": text, "showarrow": False, "xref": "paper", "yref": "paper",
                                    "x": 0.5, "y": 0.5}], xaxis_visible=False, yaxis_visible=False, height=260)
    return fig


def _header(run, source: _Source):
    from dash import html

    store = run.store
    parts = [f"{run.attrs.get('model_id', 'run')}", f"{store.n_samples} samples × {store.n_steps} steps"]
    if source.has_images:
        height, width = source.shape[-2:]
        parts.append(source.frames.describe(int(height), int(width)))
    return html.Div([html.H2(str(run.path), style={"overflowWrap": "anywhere", "margin": "8px 0"}),
                     html.P(" · ".join(parts), id="summary", style={"color": "#555"})])


def _layout(run, source: _Source):
    from dash import dcc, html

    store = run.store
    last = store.n_steps - 1
    marks = {int(k): str(int(k)) for k in np.unique(np.linspace(0, last, min(11, store.n_steps)).round())}
    sample = html.Label(["sample ", dcc.Input(id="sample", type="number", min=0, max=store.n_samples - 1, step=1,
                                              value=0, debounce=True, style={"width": "90px"})], style=_PANEL)
    controls = html.Div([
        sample,
        html.Label(["show ", dcc.RadioItems(id="band", options=[_IMAGE, *DEFAULT_BANDS], value=_IMAGE, inline=True)],
                   style=_PANEL),
    ])
    scrubber = html.Div([html.Span("step", style={"fontWeight": "bold"}),
                         dcc.Slider(id="step", min=0, max=last, step=1, value=last, marks=marks, updatemode="drag")],
                        style={"maxWidth": "720px", "margin": "10px 0"})
    images = html.Div([  # the first frame is in the page itself: no round trip before it shows
        html.Figure([html.Img(id="frame", src=_uri(source, source.frame(0, last)) if source.has_images else None,
                              style={"width": "256px", "imageRendering": "pixelated"}),
                     html.Figcaption(_frame_caption(source, 0, last, _IMAGE), id="frame-caption")], style=_PANEL),
        html.Figure([html.Img(id="final", src=_uri(source, source.final(0)) if source.has_images else None,
                              style={"width": "256px", "imageRendering": "pixelated"}),
                     html.Figcaption("final image")], style=_PANEL),
    ])
    profile_choices = source.profile_choices()
    layers = run.layers()
    table = source.attribution()
    attribution = []
    if table is not None:
        features = list(dict.fromkeys(table["feature"].astype(str)))
        methods = list(dict.fromkeys(table["method"].astype(str)))
        attribution = [
            html.H3("Attribution"),
            html.Div([dcc.Dropdown(id="attr-feature", options=features, value=features[0], clearable=False,
                                   style={"width": "260px"}),
                      dcc.Dropdown(id="attr-method", options=methods, value=methods[0], clearable=False,
                                   style={"width": "260px"})], style={"display": "flex", "gap": "12px"}),
            dcc.Graph(id="attribution", config={"displaylogo": False}),
            html.P(id="cell-caption", children="Click a cell: the chosen sample's final image of the clean run beside "
                   "that of the run edited in the cell (scans run with keep_images keep them)."),
            html.Div([html.Figure([html.Img(id=f"cell-{role}", style={"width": "192px"}),
                                   html.Figcaption(id=f"cell-{role}-caption")], style=_PANEL)
                      for role in _CELL_ROLES]),
        ]
    body = [_header(run, source)]
    if source.has_images:
        body += [html.H3("Trajectory"), controls, scrubber, images]
    else:  # the activation and attribution views still follow the chosen sample
        body += [html.Div([sample])]
    if profile_choices:
        body += [html.H3("Feature profile"),
                 dcc.Dropdown(id="feature", options=profile_choices, value=profile_choices[0], clearable=False,
                              style={"width": "320px"}),
                 dcc.Graph(id="profile", config={"displaylogo": False})]
    if layers:
        body += [html.H3("Activations"),
                 dcc.Dropdown(id="layer", options=layers, value=layers[0], clearable=False, style={"width": "420px"}),
                 dcc.Graph(id="activation", config={"displaylogo": False})]
    body += attribution
    return html.Div(body, style={"fontFamily": "Arial, Helvetica, sans-serif", "maxWidth": "1200px",
                                 "margin": "0 auto", "padding": "0 24px 48px"})


def _frame_caption(source: _Source, sample: int, step: int, band: str) -> str:
    timesteps = source.timesteps()
    when = f"step {step}" + ("" if timesteps is None else f" (timestep {float(timesteps[step]):g})")
    what = "x̂0" if band == _IMAGE else f"{band} band of x̂0's luminance"
    return f"{what} of sample {sample}, {when}"


def _sample(value, n: int) -> int:
    try:
        sample = int(value)
    except (TypeError, ValueError):
        return 0
    return min(max(sample, 0), n - 1)


def _callbacks(app, run, source: _Source) -> None:
    from dash import Input, Output, State, no_update

    n_samples, n_steps = run.store.n_samples, run.store.n_steps

    if source.has_images:
        @app.callback(Output("frame", "src"), Output("frame-caption", "children"),
                      Input("sample", "value"), Input("step", "value"), Input("band", "value"),
                      prevent_initial_call=True)
        def show_frame(sample, step, band):
            sample, step = _sample(sample, n_samples), int(step)
            frame = source.frame(sample, step) if band == _IMAGE else source.band_frame(sample, step, band)
            return _uri(source, frame), _frame_caption(source, sample, step, band)

        @app.callback(Output("final", "src"), Input("sample", "value"), prevent_initial_call=True)
        def show_final(sample):
            return _uri(source, source.final(_sample(sample, n_samples)))

    if source.profile_choices():
        @app.callback(Output("profile", "figure"), Input("feature", "value"))
        def show_profile(name):
            from denoisefeat.viz.profiles import emergence_curves

            return emergence_curves(source.features(), variables=[name], n_boot=400)

    if run.layers():
        @app.callback(Output("activation", "figure"), Input("layer", "value"), Input("sample", "value"))
        def show_activation(layer, sample):
            change = source.activation_change(layer)  # (sample, [branch,] step - 1)
            sample = _sample(sample, n_samples)
            steps = np.arange(1, n_steps)
            flat = change.reshape(change.shape[0], -1, change.shape[-1])
            fig = go.Figure([go.Scatter(x=steps, y=np.nanmedian(flat, axis=(0, 1)), name="median over samples"),
                             go.Scatter(x=steps, y=np.nanmean(flat[sample], axis=0), name=f"sample {sample}")])
            fig.update_layout(title_text=f"‖a(s) − a(s−1)‖ / ‖a(s−1)‖ of {layer}", xaxis_title="step",
                              yaxis_title="relative change", height=320)
            return fig

    table = source.attribution()
    if table is not None:
        @app.callback(Output("attribution", "figure"), Input("attr-feature", "value"), Input("attr-method", "value"))
        def show_attribution(feature, method):
            from denoisefeat.viz.attribution import attribution_heatmap

            rows = table[(table["feature"].astype(str) == feature) & (table["method"].astype(str) == method)]
            if rows.empty:
                return _empty(f"no rows for {feature} by {method}")
            value = "effect_std" if rows["effect_std"].notna().any() else "effect"
            return attribution_heatmap(rows, value=value)

        outputs = [Output("cell-caption", "children")]
        outputs += [Output(f"cell-{role}{part}", what) for role in _CELL_ROLES
                    for part, what in (("", "src"), ("-caption", "children"))]

        @app.callback(*outputs, Input("attribution", "clickData"), State("sample", "value"),
                      State("attr-feature", "value"), State("attr-method", "value"), prevent_initial_call=True)
        def show_cell(click, sample, feature, method):
            points = (click or {}).get("points") or []
            if not points or "customdata" not in points[0]:
                return (no_update,) * len(outputs)
            point = points[0]
            custom = point["customdata"]  # (ci_low, ci_high, p, p_adj, n, level, step_start, step_stop)
            if isinstance(custom, dict):  # a typed array arrives as {"0": …, "1": …}
                custom = [custom[str(i)] for i in range(len(custom))]
            layer, start, stop = str(point["y"]), int(custom[6]), int(custom[7])
            return _cell(source, table, feature, method, layer, start, stop, _sample(sample, n_samples))


def _cell(source: _Source, table: pd.DataFrame, feature, method, layer: str, start: int, stop: int, sample: int):
    """The outputs of a click on a cell: a caption, then (src, caption) of the clean, edited and corrupted images."""
    rows = table[(table["feature"].astype(str) == feature) & (table["method"].astype(str) == method)
                 & (table["layer"].astype(str) == layer) & (table["step_start"] == start)
                 & (table["step_stop"] == stop)]
    cell = f"{layer} [{start}, {stop})"
    blank = [None, ""] * len(_CELL_ROLES)
    if rows.empty:
        return [f"No row of {method} for {cell}.", *blank]
    name = str(rows["table"].iloc[0])
    images = source.cell_images(name)
    if images is None:
        return [f"Table {name!r} holds no images of its edited runs: rerun the scan with keep_images=K "
                f"(`denoisefeat attribute scan … --keep-images K`) to see them here.", *blank]
    if sample >= images.n_samples:
        return [f"Table {name!r} keeps the images of samples 0–{images.n_samples - 1} only; pick one of them "
                f"(sample {sample} is chosen).", *blank]
    try:
        index = images.index(layer, start, stop, method)
    except KeyError:
        return [f"Table {name!r} keeps no images of {cell} by {method}.", *blank]
    shown = {"clean": images.clean[sample], "edited": images.edited[index, sample],
             "corrupted": None if images.corrupted is None else images.corrupted[sample]}
    what = {"clean": "clean run", "edited": f"edited in {cell}", "corrupted": "corrupted run"}
    out = [f"{method} · {cell} · sample {sample}: final images ({source.frames.describe(*images.clean.shape[-2:])})."]
    for role in _CELL_ROLES:
        data = shown[role]
        out += [None, ""] if data is None else [_uri(source, source.frames.frames(np.asarray(data))),
                                                f"final image, {what[role]}"]
    return out


def create_app(store, *, frames: FramePolicy = VIEWER_FRAMES):
    """The Dash app of a run store (not started; see :func:`denoisefeat.viewer.serve`).

    Parameters
    ----------
    store : str, path or denoisefeat.store.Run
        The run store; opened read-only with :func:`denoisefeat.store.open_run`
        (``allow_incomplete=True``: a half-written run is browsable, its missing samples black).
    frames : FramePolicy
        Size and encoding of the frames; default :data:`VIEWER_FRAMES` (256 px, PNG).

    Returns
    -------
    dash.Dash
        The app; ``app.server`` is its Flask (WSGI) application.

    Raises
    ------
    denoisefeat.store.NotARunError, denoisefeat.store.DamagedStoreError
        As :func:`denoisefeat.store.open_run` (the CLI's messages).
    ModuleNotFoundError
        Dash is not installed (``pip install 'denoisefeat[viewer]'``).
    """
    from denoisefeat.store import Run, open_run

    if not isinstance(frames, FramePolicy):
        raise TypeError(f"frames must be a denoisefeat.viz.frames.FramePolicy, got {type(frames).__name__}")
    run = store if isinstance(store, Run) else open_run(store, allow_incomplete=True)
    dash = _import_dash()
    source = _Source(run, frames)
    app = dash.Dash(__name__, title=f"denoisefeat view: {run.attrs.get('model_id', 'run')}", serve_locally=True,
                    update_title=None)
    app.layout = functools.partial(_layout, run, source)
    _callbacks(app, run, source)
    return app


def _import_dash():
    try:
        import dash
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the viewer needs Dash: pip install 'denoisefeat[viewer]'") from None
    return dash
