"""One self-contained HTML report of a run: every figure of what its store holds, with captions.

The file embeds plotly.js once (inline, in the page head) and each figure as a ``<div>`` with its
data; it needs no network and no other file.  Sections appear only when the store holds their
data:

* **Run** (always): what produced the run (model, scheduler, steps, samples, conditions).
* **Trajectory** (``images``): x̂0 over steps, band-pass images, radial spectra, wavelet energy.
  The spectra come from the ``features/`` group when it has them, and are computed from the
  images otherwise.
* **Feature profiles** (``features/`` group): emergence curves of the metrics and of the frequency
  bands, and the correlation across samples of when features emerge.
* **Attribution** (``attribution/`` group): layer × step-window heatmaps per feature and method, probe
  selectivity maps.
* **Activations** (``acts/``): step-to-step change of each recorded layer.
* **Attention maps** (``attention/``): per-word cross-attention maps × steps of the first sample, for
  at most four layers (:mod:`denoisefeat.viz.attention`).
* **Contrasts** (attribution rows of method ``contrast:attention``): which prompt words' attention
  maps separate each factor's levels (the ``contrast:activations`` rows are in **Attribution**).
* **Known facts** (``facts=``, :func:`denoisefeat.analyses.known_facts`): each fact in one sentence worded
  from its measured numbers and interval, with its figure (:mod:`denoisefeat.viz.facts`).

Every string that comes from the user (title, prompts, labels, model id, feature and method
names) is HTML-escaped.

**Size.** The file stays under ``max_mb`` (default 25 MB; plotly.js takes ≈ 1.4 MB of it: its
cartesian partial bundle, :mod:`denoisefeat.viz.plotly_bundle`, or ≈ 4.6 MB for the full one).  The
figures with pictures (the x̂0 grid, the band-pass images, the attribution click-images) are built
from a :class:`~denoisefeat.viz.frames.FramePolicy` (default: frames box-downscaled to at most
128 px, WebP at quality 80 above 64 px and exact PNG below; at most 50 steps on the x̂0 slider and
25 on the band-pass slider, evenly spaced with both ends).  What the other figures leave of the
budget is shared among them (x̂0 grid 60 %, band-pass 25 %, attribution 15 %); a figure over its
share is rebuilt one rung down :meth:`~denoisefeat.viz.frames.FramePolicy.smaller` (fewer steps,
then smaller frames, down to 32 px × 7 steps) and left out, saying so, if even that does not fit.
The header says how frames are shown and what was left out.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import xarray as xr

from denoisefeat.temporal import profile_names
from denoisefeat.temporal import profiles as temporal_profiles
from denoisefeat.viz.activations import activation_change_heatmap
from denoisefeat.viz.attribution import attribution_heatmap, correlation_heatmap, selectivity_map
from denoisefeat.viz.export import write_static
from denoisefeat.viz.frames import FramePolicy
from denoisefeat.viz.profiles import emergence_curves
from denoisefeat.viz.style import escape
from denoisefeat.viz.trajectory import (
    band_pass_grid,
    rapsd_curves,
    rapsd_heatmap,
    read_image_blocks,
    step_image_grid,
    wavelet_heatmap,
)

__all__ = ["build_report"]

_MAX_SLIDER_STEPS = 25  # band-pass images: at most this many steps on the slider (heatmaps, not images)
_ORIENTATIONS = ("horizontal", "vertical", "diagonal", "approximation")
_SHARES = {"x0_grid": 0.60, "band_pass": 0.25, "attribution": 0.15}  # of the budget left for pictures
_PAGE_SLACK = 64 * 1024  # bytes kept free for the header's budget line and notes


@dataclass
class _Figure:
    """One figure of the page; ``build`` (policy → figure, caption) makes one that has pictures."""

    figure: go.Figure | None
    name: str
    caption: str
    kind: str = "plot"
    build: Callable[[FramePolicy], tuple[go.Figure, str]] | None = None


@dataclass
class _Section:
    key: str
    title: str
    intro: str
    figures: list[_Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    body: str = ""  # HTML after the intro, before the figures


# -- data the store holds ------------------------------------------------------------------------

def _load_features(run) -> xr.Dataset | None:
    if not run.store.holds("features"):
        return None
    from denoisefeat.step_features import load_features

    return load_features(run)


def _load_attribution(run, notes: list[str]) -> pd.DataFrame | None:
    """Every current attribution table of the store; tables of an older format are named in ``notes``."""
    if not run.store.attribution_tables():
        return None
    from denoisefeat.analyses.table import StaleTableError, attribution_names, read_attribution

    source = run.path if run.path is not None else run.store
    frames = []
    for name in attribution_names(source):
        try:
            frames.append(read_attribution(source, name).assign(table=name))
        except StaleTableError as error:
            notes.append(str(error))
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    if table["table"].nunique() > 1:
        table = table.assign(method=table["method"].astype(str) + " · " + table["table"].astype(str))
    return table


class _Kept:
    """One cell's kept images in the store, read only when a figure is built (``np.asarray``)."""

    def __init__(self, array, index: int):
        self.array, self.index = array, index
        self.shape = tuple(array.shape[1:])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.array[self.index], dtype=dtype)


def _kept_images(run, table: pd.DataFrame, notes: list[str]) -> tuple[dict | None, object]:
    """The click-images of the first of the store's tables that keeps them (scans with ``keep_images``).

    ``({(layer, (start, stop), method): images}, clean images)`` with the methods named as in
    ``table`` (``"<method> · <table>"`` when the store has several tables), or ``(None, None)``.
    """
    from denoisefeat.analyses.table import read_cell_images

    source = run.path if run.path is not None else run.store
    names = list(dict.fromkeys(table["table"].astype(str)))
    kept = {}
    for name in names:
        try:
            kept[name] = read_cell_images(source, name)
        except KeyError:
            continue
    if not kept:
        return None, None
    name, images = next(iter(kept.items()))
    if len(kept) > 1:
        notes.append(f"The attribution heatmap shows the kept images of table {name!r} only; `denoisefeat view` "
                     f"shows those of {', '.join(map(repr, list(kept)[1:]))} too.")
    suffix = f" · {name}" if len(names) > 1 else ""
    cells = {(layer, (start, stop), method + suffix): _Kept(images.edited, i)
             for i, (layer, start, stop, method) in enumerate(images.cells)}
    return cells, images.clean[...]


def _run_spectra(run, *, n_bins=None, wavelet: str = "haar", grid=None) -> tuple[xr.Dataset, np.ndarray | None]:
    """RAPSD and wavelet energy of the luminance of x̂0, and the x̂0 grid's frames, from one read of x̂0.

    The images are read a block of samples at a time (:func:`~denoisefeat.viz.trajectory.read_image_blocks`).
    The spectra are computed in float32 with the torch backends of :mod:`denoisefeat.frequency`
    (multi-threaded FFT and the batched DWT of :mod:`denoisefeat.dwt`, both equal to the numpy path
    to float32 rounding): a figure's precision, at a fraction of float64's cost on 512 px frames.
    ``grid = (n_samples, steps, policy)``: also the frames of the first ``n_samples`` at ``steps``
    (``policy.frames``, uint8), from the same blocks; otherwise None.
    """
    import torch

    from denoisefeat.frequency import radial_power_spectrum, wavelet_energy
    from denoisefeat.metrics.device import luminance as luminance_of

    images = run["images"]
    n_samples, n_steps = images.sizes["sample"], images.sizes["step"]
    powers, approx, details, shown, freq = [], [], [], [], None
    for positions, rgb in read_image_blocks(images, samples=list(range(n_samples)), steps=list(range(n_steps))):
        if grid is not None and positions.start < grid[0]:
            shown.append(grid[2].frames(rgb[:grid[0] - positions.start, grid[1]]))
        gray = luminance_of(torch.from_numpy(rgb).clamp_(0.0, 1.0))  # (s, t, H, W)
        spectrum = radial_power_spectrum(gray, n_bins=n_bins)
        powers.append(spectrum.power.double().numpy())
        freq = np.asarray(spectrum.freq, dtype=np.float64)
        energy = wavelet_energy(gray, wavelet=wavelet)
        approx.append(energy.approximation.double().numpy())
        details.append(energy.details.double().numpy())
    details_all = np.concatenate(details)  # (sample, step, level, 3)
    level = details_all.shape[2]
    wav = np.full((*details_all.shape[:3], 4), np.nan)
    wav[..., :3] = details_all
    wav[:, :, level - 1, 3] = np.concatenate(approx)
    coords = {"sample": images["sample"].values, "step": images["step"].values}
    spectra = xr.Dataset({
        "rapsd": xr.DataArray(np.concatenate(powers), dims=("sample", "step", "freq"),
                              coords={**coords, "freq": freq}),
        "wavelet_energy": xr.DataArray(wav, dims=("sample", "step", "level", "orientation"),
                                       coords={**coords, "level": np.arange(1, level + 1),
                                               "orientation": list(_ORIENTATIONS)}),
    })
    return spectra, np.concatenate(shown) if shown else None


def _has_dims(ds: xr.Dataset | None, name: str, dims: set[str]) -> bool:
    return ds is not None and name in ds and set(ds[name].dims) == dims


# -- sections --------------------------------------------------------------------------------------

def _overview(run) -> str:
    attrs = run.attrs
    store = run.store
    rows = [
        ("model", attrs.get("model_id")),
        ("pipeline", attrs.get("pipeline_class")),
        ("denoiser", attrs.get("denoiser_class")),
        ("scheduler", attrs.get("scheduler_class")),
        ("prediction type", attrs.get("prediction_type")),
        ("samples × steps", f"{store.n_samples} × {store.n_steps}"),
        ("guidance scale", attrs.get("guidance_scale")),
        ("seeds", _short(attrs.get("seeds"))),
        ("class labels", _short(attrs.get("class_labels"))),
        ("prompts", _short(attrs.get("prompts"))),
        ("negative prompt", attrs.get("negative_prompt")),
        ("store", str(run.path) if run.path is not None else "in memory"),
        ("created", store.created),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows if v not in (None, "", []))
    return f'<table class="dft-attrs">{body}</table>'


def _short(values, limit: int = 12) -> str | None:
    if values is None:
        return None
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _trajectory(run, features: xr.Dataset | None, max_samples: int, frames: FramePolicy) -> _Section:
    section = _Section("trajectory", "Trajectory",
                       "How the predicted clean image x̂0 builds up over the denoising steps, in pixels and in "
                       "frequency.")
    n_samples, n_steps = run.store.n_samples, run.store.n_steps
    shown = min(max_samples, n_samples)
    first: dict = {}  # the frames of the grid's first rung (``frames``), made in the spectra's read of x̂0

    def x0_grid(policy: FramePolicy) -> tuple[go.Figure, str]:
        steps = policy.steps(n_steps)
        data = first.get("data") if policy == frames else None
        caption = (f"x̂0 (the decoded predicted clean image) of the first {shown} of {n_samples} samples at "
                   + ("every step" if len(steps) == n_steps else f"{len(steps)} of the {n_steps} steps (evenly "
                      "spaced, first and last included)")
                   + ". Drag the slider or press ▶ to follow the denoising; the title gives the scheduler timestep.")
        return step_image_grid(run, samples=range(shown), steps=steps, frames=policy, data=data), caption

    def bands(policy: FramePolicy) -> tuple[go.Figure, str]:
        steps = policy.steps(n_steps)
        caption = ("Sample 0 split into frequency bands (ideal radial filters on the luminance; the band images add "
                   "up to it). Low frequencies hold layout and global shape, mid frequencies textures and parts, "
                   "high frequencies edges and pixel-scale detail"
                   + (f"; {len(steps)} of the {n_steps} steps are on the slider." if len(steps) < n_steps else "."))
        return band_pass_grid(run, sample=0, steps=steps, frames=policy), caption

    section.figures.append(_Figure(None, "x0_grid", "", build=x0_grid))
    section.figures.append(_Figure(None, "band_pass", "", build=bands))
    if _has_dims(features, "rapsd", {"sample", "step", "freq"}):
        rapsd, source = features["rapsd"], "the features group"
    else:
        rapsd, source = None, "x̂0's luminance"
    if _has_dims(features, "wavelet_energy", {"sample", "step", "level", "orientation"}):
        wavelets = features["wavelet_energy"]
    else:
        wavelets = None
    if rapsd is None or wavelets is None:
        spectra, first["data"] = _run_spectra(run, grid=(shown, frames.steps(n_steps), frames))
        rapsd = spectra["rapsd"] if rapsd is None else rapsd
        wavelets = spectra["wavelet_energy"] if wavelets is None else wavelets
    section.figures.append(_Figure(
        rapsd_heatmap(rapsd), "rapsd_heatmap",
        f"Radially averaged power spectrum (RAPSD, from {source}) over steps, mean over samples, on a log colour "
        "scale (frequency 0 left out): when each frequency settles. Coarse-to-fine generation settles low "
        "frequencies first."))
    section.figures.append(_Figure(
        rapsd_curves(rapsd), "rapsd_curves",
        "The same spectra at a few steps, on log-log axes (dark = early, bright = late)."))
    section.figures.append(_Figure(
        wavelet_heatmap(wavelets), "wavelet_energy",
        "Fraction of x̂0's energy in each wavelet subband (level 1 = finest) over steps, mean over samples, "
        "log colour scale."))
    return section


def _feature_section(features: xr.Dataset) -> _Section:
    section = _Section("profiles", "Feature profiles",
                       "When each feature emerges: the normalised progress of each per-step feature from its "
                       "value at the first step (0) to its value at the final step (1).")
    profiles = temporal_profiles(features)
    names = profile_names(features)
    scalar = [n for n in names if "[" not in n]
    band_vars = [str(v) for v, var in features.data_vars.items() if set(var.dims) == {"sample", "step", "band"}]
    preferred = [v for v in ("band_relative_error", "band_correlation") if v in band_vars]
    band_vars = preferred or band_vars
    markers = " Circles mark the median emergence step (progress ≥ 0.5), diamonds the median stabilisation step." \
        if profiles is not None else ""
    if scalar:
        section.figures.append(_Figure(
            emergence_curves(features, variables=scalar, profiles=profiles), "profiles_metrics",
            "Normalised progress of each feature metric (median over samples, 95% bootstrap CI band). Click "
            "legend entries to hide or show curves." + markers))
    if band_vars:
        section.figures.append(_Figure(
            emergence_curves(features, variables=band_vars, profiles=profiles), "profiles_bands",
            "Normalised progress of the frequency-band features ("
            + ", ".join(escape(v) for v in band_vars) + ") per band: low bands are expected to settle "
            "before high ones." + markers))
    if profiles is not None and "emergence" in profiles and profiles.sizes.get("sample", 0) >= 3:
        emergence = profiles["emergence"].transpose("profile", "sample")
        frame = pd.DataFrame(np.asarray(emergence.values, dtype=np.float64).T,
                             columns=[str(p) for p in emergence["profile"].values])
        frame = frame.loc[:, frame.std() > 0]
        if frame.shape[1] >= 2:
            section.figures.append(_Figure(
                correlation_heatmap(frame.corr(method="spearman"), title="Correlation of emergence steps"),
                "emergence_correlation",
                "Spearman correlation across samples of the emergence steps of each pair of features: features "
                "that emerge together in the same samples correlate positively. Constant profiles are left out."))
    return section


def _attribution_section(table: pd.DataFrame, *, layers, images, clean) -> _Section:
    """The attribution figures; the heatmap with click-images is built within the picture budget."""
    section = _Section("attribution", "Attribution",
                       "Which layers and denoising steps drive each feature. Cells marked * are significant after "
                       "Benjamini–Hochberg correction (p_adj < 0.05); dotted lines separate resolution levels. "
                       "Standardised effects are in units of the feature's difference between two clean samples, "
                       "so features compare; the specificity divides it by how much the whole image changed "
                       "(docs/reading-attribution-tables.md).")
    probe = table["method"].astype(str).str.startswith("probe")
    if (~probe).any():
        caption = ("Standardised effect of each layer (rows, network order) in each step window (columns) on the "
                   "feature chosen in the first menu, by the method chosen in the second. Hover a cell for the "
                   "effect, its CI, p and n." + (" Click a cell to see the clean and intervened images." if images
                                                 else ""))

        def heatmap(policy: FramePolicy) -> tuple[go.Figure, str]:
            return attribution_heatmap(table[~probe], layers=layers, images=images, clean=clean, value="effect_std",
                                       frames=policy), caption

        if images:
            section.figures.append(_Figure(None, "attribution", caption, kind="attribution", build=heatmap))
        else:
            section.figures.append(_Figure(heatmap(FramePolicy())[0], "attribution", caption, kind="attribution"))
    specific = ~probe & table["specificity"].notna()
    if specific.any():
        section.figures.append(_Figure(
            attribution_heatmap(table[specific], layers=layers, value="specificity"), "specificity",
            "Specificity of each cell: how much more it moves the chosen feature than the final image as a whole "
            "(1: as much as the image; ablating an output block moves everything and is not specific)."))
    selective = _metric_selectivity(table)
    if selective is not None:
        section.figures.append(_Figure(
            selective, "metric_selectivity",
            "What the feature metrics respond to: the median change of each metric (rows) when DiffShapes images "
            "differ in exactly one factor (columns), normalised per row (32 pairs per factor, 32 px). A metric "
            "earns its name when its own factor dominates its row."))
    if probe.any():
        for method in dict.fromkeys(table.loc[probe, "method"].astype(str)):
            section.figures.append(_Figure(
                selectivity_map(table, method=method, layers=layers), f"selectivity_{_slug(method)}",
                f"Selectivity of linear probes ({escape(method)}): probe score minus its control, per layer and "
                "step, for the feature chosen in the menu."))
    return section


def _metric_selectivity(table: pd.DataFrame):
    """The selectivity heatmap of the table's grouped feature metrics, or None when it has none."""
    from denoisefeat.metrics import FEATURE_GROUPS
    from denoisefeat.metrics.selectivity import metric_selectivity
    from denoisefeat.viz.selectivity import selectivity_heatmap

    grouped = [name for names in FEATURE_GROUPS.values() for name in names]
    shown = [name for name in grouped if name in set(table["feature"].astype(str))]
    if not shown:
        return None
    return selectivity_heatmap(metric_selectivity(metrics=shown, n_pairs=32, size=32))


def _facts_section(facts) -> _Section:
    from denoisefeat.viz.facts import fact_figures, facts_html

    section = _Section("facts", "Known facts",
                       "Whether this model behaves like the models in the literature, one fact at a time; every "
                       "number is measured on this model, with its interval in brackets.", body=facts_html(facts))
    section.figures.extend(_Figure(figure, name, caption) for figure, name, caption in fact_figures(facts))
    return section


def _activation_section(run, *, layers) -> _Section:
    section = _Section("activations", "Activations",
                       "How much each recorded layer's output changes from one step to the next.")
    section.figures.append(_Figure(
        activation_change_heatmap(run, network=layers), "activation_change",
        "Median over samples of ‖a(s) − a(s−1)‖ / ‖a(s−1)‖ for each recorded layer (rows, network order) "
        "and step s vs the step before: how fast each layer's output settles; compare deep, low-resolution "
        "blocks with high-resolution ones."))
    return section


_MAX_ATTENTION_LAYERS = 4
_MAX_CONTRAST_FEATURES = 6


def _attention_section(run) -> _Section:
    from denoisefeat.viz.attention import word_step_grid

    section = _Section("attention", "Attention maps",
                       "Where the image attends to each word of the prompt: the cross-attention probabilities of "
                       "the image tokens to the word's sub-word tokens (summed), averaged over heads, of the "
                       "conditional branch, at a few steps.")
    layers = run.attention_layers()
    shown = [layers[i] for i in FramePolicy(max_steps=_MAX_ATTENTION_LAYERS).steps(len(layers))]
    if len(shown) < len(layers):
        section.notes.append(f"{len(shown)} of the {len(layers)} layers with maps are shown (evenly spaced).")
    for layer in shown:
        section.figures.append(_Figure(
            word_step_grid(run, layer), f"attention_{_slug(layer)}",
            f"Per-word attention maps of {escape(layer)} for the first sample: words (rows) × steps (columns), "
            "one colour scale."))
    return section


def _contrast_section(table: pd.DataFrame) -> _Section:
    from denoisefeat.viz.attention import word_contrast_heatmap

    section = _Section("contrasts", "Contrasts",
                       "Which words' attention maps separate the levels of each factor of the query (prompts varying "
                       "one factor at a time): the share of the maps' variance the factor explains beyond chance "
                       "(excess η², permutation test within the other factors' levels); * marks p_adj < 0.05.")
    features = list(dict.fromkeys(table["feature"].astype(str)))
    if len(features) > _MAX_CONTRAST_FEATURES:
        section.notes.append(f"{_MAX_CONTRAST_FEATURES} of the {len(features)} factors are shown.")
    for feature in features[:_MAX_CONTRAST_FEATURES]:
        section.figures.append(_Figure(
            word_contrast_heatmap(table, feature=feature), f"contrast_{_slug(feature)}",
            f"Attention contrast of {escape(feature)}: prompt words (rows) × layer and step window (columns)."))
    return section


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "figure"


# -- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font-family: Arial, Helvetica, sans-serif; color: #222; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; }
header { border-bottom: 2px solid #0072B2; margin-bottom: 16px; }
h1 { font-size: 1.7em; margin: 24px 0 6px; overflow-wrap: anywhere; }
h2 { font-size: 1.3em; margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
nav ul { list-style: none; padding: 0; display: flex; gap: 18px; flex-wrap: wrap; }
nav a { color: #0072B2; text-decoration: none; }
table.dft-attrs { border-collapse: collapse; font-size: 0.92em; }
table.dft-attrs th { text-align: left; padding: 3px 14px 3px 0; color: #555; font-weight: normal;
                     vertical-align: top; }
table.dft-attrs td { padding: 3px 0; overflow-wrap: anywhere; }
figure.dft-figure { margin: 18px 0 30px; }
figcaption { font-size: 0.92em; color: #444; margin-top: 4px; max-width: 900px; }
p.dft-note { font-size: 0.9em; color: #8a5a00; }
p.dft-budget { font-size: 0.9em; color: #555; margin: 4px 0; }
footer { margin-top: 40px; font-size: 0.85em; color: #777; }
"""

# Clicking a cell of an attribution heatmap shows the images of that layer and window.
_JS = """
(function () {
  function text(s) { var d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
  function link(gd) {
    var meta = gd.layout && gd.layout.meta && gd.layout.meta.denoisefeat;
    if (!meta || !meta.cells || typeof gd.on !== 'function') { return; }
    gd.on('plotly_click', function (event) {
      var pt = event && event.points && event.points[0];
      if (!pt || !pt.customdata) { return; }
      var start = pt.customdata[6], stop = pt.customdata[7];
      var key = pt.y + '|' + start + '|' + stop + (meta.by_method ? '|' + (pt.data && pt.data.meta) : '');
      var source = meta.cells[key];
      if (!source) { return; }
      Plotly.restyle(gd, {source: [source]}, [meta.image_trace]);
      var update = {};
      var label = 'intervened: ' + pt.y + ' [' + start + ', ' + stop + ')';
      update['annotations[' + meta.image_title + '].text'] = text(label);
      Plotly.relayout(gd, update);
    });
  }
  function init() {
    document.querySelectorAll('figure.dft-figure[data-kind="attribution"] .js-plotly-plot').forEach(link);
  }
  if (document.readyState === 'complete') { init(); } else { window.addEventListener('load', init); }
})();
"""


def _figure_html(item: _Figure, index: int) -> str:
    div = pio.to_html(item.figure, full_html=False, include_plotlyjs=False, div_id=f"dft-fig-{index}", auto_play=False,
                      config={"displaylogo": False, "responsive": True,
                              "toImageButtonOptions": {"filename": item.name, "scale": 3}})
    return (f'<figure class="dft-figure" id="figure-{index}" data-kind="{escape(item.kind)}" '
            f'data-name="{escape(item.name)}">{div}<figcaption><b>Figure {index}.</b> {item.caption}'
            "</figcaption></figure>")


def _fit(item: _Figure, index: int, policy: FramePolicy, budget: float) -> FramePolicy | None:
    """Build ``item`` at the largest rung of ``policy``'s ladder whose HTML fits in ``budget`` bytes.

    A rung whose size, predicted from the last one built (pictures scale with px² × steps), is over
    the budget is skipped unbuilt.  Returns the policy used, or None (``item.figure`` stays None)
    when even the smallest does not fit.
    """
    current, measured = policy, None
    while current is not None:
        if measured is not None:
            built, size = measured
            predicted = size * (current.max_px / built.max_px) ** 2 * min(1.0, current.max_steps / built.max_steps)
            if predicted > budget and current.smaller() is not None:
                current = current.smaller()
                continue
        item.figure, item.caption = item.build(current)
        size = len(_figure_html(item, index).encode("utf-8"))
        if size <= budget:
            return current
        measured = (current, size)
        current = current.smaller()
    item.figure = None
    return None


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _budget(sections: list[_Section], *, frames: FramePolicy, max_mb: float, fixed_bytes: int,
            stored: tuple[int, int] | None) -> list[str]:
    """Build the picture figures within what ``max_mb`` leaves; the header's lines on what was shown and left out."""
    pictures = [item for section in sections for item in section.figures if item.build is not None]
    if not pictures:
        return []
    room = max_mb * 2**20 - fixed_bytes - _PAGE_SLACK
    if room <= 0:
        raise ValueError(f"max_mb={max_mb:g} is below the {(fixed_bytes + _PAGE_SLACK) / 2**20:.1f} MB the report "
                         "needs without its pictures (plotly.js and the plots); raise it")
    total = sum(_SHARES[item.name] for item in pictures)
    lines = [] if stored is None else [_sentence(frames.describe(*stored))]
    index = {id(item): i for i, item in enumerate((it for sec in sections for it in sec.figures), start=1)}
    for item in pictures:
        budget = room * _SHARES[item.name] / total
        start = replace(frames, max_steps=min(frames.max_steps, _MAX_SLIDER_STEPS)) if item.name == "band_pass" \
            else frames
        used = _fit(item, index[id(item)], start, budget)
        what = {"x0_grid": "x̂0 grid", "band_pass": "band-pass images", "attribution": "attribution images"}[item.name]
        if used is None:
            lines.append(f"Left out: the {what}, which did not fit in its {budget / 2**20:.1f} MB even at "
                         "32 px × 7 steps; raise --max-mb or browse the store with `denoisefeat view`.")
        elif used != start:
            lines.append(f"To fit its {budget / 2**20:.1f} MB, the {what} show at most {used.max_steps} steps at "
                         f"{used.max_px} px.")
    for section in sections:
        section.figures = [item for item in section.figures if item.build is None or item.figure is not None]
    return lines


def _trace_types(sections: list[_Section]) -> set[str]:
    """The trace types of every figure built so far (a picture figure still to build: an ``image``)."""
    types = {"image"}
    for section in sections:
        for item in section.figures:
            if item.figure is not None:
                types.update(trace.type for trace in item.figure.data)
    return types


def _page(title: str, overview: str, sections: list[_Section], notes: list[str],
          budget_lines: Sequence[str] = ()) -> str:
    from denoisefeat import __version__
    from denoisefeat.viz.plotly_bundle import plotly_js

    parts, index = [], 0
    for section in sections:
        parts.append(f'<section id="{section.key}"><h2>{escape(section.title)}</h2><p>{section.intro}</p>'
                     + section.body)
        parts.extend(f'<p class="dft-note">{escape(n)}</p>' for n in section.notes)
        for item in section.figures:
            index += 1
            parts.append(_figure_html(item, index))
        parts.append("</section>")
    toc = "".join(f'<li><a href="#{s.key}">{escape(s.title)}</a></li>' for s in sections)
    missing = "".join(f'<p class="dft-note">{escape(n)}</p>' for n in notes)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n"
        f"<script type=\"text/javascript\">{plotly_js(_trace_types(sections))}</script>\n</head>\n<body>\n"
        f"<header><h1>{escape(title)}</h1>{overview}"
        + "".join(f'<p class="dft-budget">{escape(line)}</p>' for line in budget_lines)
        + "</header>\n"
        f"<nav><ul><li><a href=\"#run\">Run</a></li>{toc}</ul></nav>\n<span id=\"run\"></span>{missing}\n"
        + "\n".join(parts)
        + f"\n<footer>Made by denoisefeat {escape(__version__)} on {escape(now)}; plotly.js embedded, no network "
        f"needed.</footer>\n<script type=\"text/javascript\">{_JS}</script>\n</body>\n</html>\n"
    )


def build_report(run, out, *, title: str | None = None, static_dir=None, static_formats: Sequence[str] = ("png",),
                 layers=None, features: xr.Dataset | None = None, attribution: pd.DataFrame | None = None,
                 attribution_images: Mapping | None = None, max_samples: int = 16, max_mb: float = 25.0,
                 frames: FramePolicy | None = None, facts=None) -> Path:
    """Write one self-contained HTML report of a run (and optionally each figure as image files).

    Parameters
    ----------
    run : denoisefeat.store.Run, str or path
        The run, or the path of its store.
    out : str or path
        The HTML file to write (its folder must exist).
    title : str, optional
        Page title; default ``"denoisefeat report: <model id>"``.  Escaped.
    static_dir : str or path, optional
        Also write every figure there as ``NN_<name>.<format>`` (needs the ``static`` extra:
        kaleido and a Chrome/Chromium browser).
    static_formats : sequence of {"png", "svg", "pdf", "jpg", "webp"}
        Formats of the static export.
    layers : sequence of LayerInfo, sequence of str or mapping of str to int, optional
        Network order and resolution levels for the layer axes
        (:func:`denoisefeat.hooks.list_layers` of the pipeline); default: by name.
    features : xarray.Dataset, optional
        Per-step features to draw instead of the store's ``features/`` group.
    attribution : pandas.DataFrame, optional
        An attribution table to draw instead of the store's ``attribution/`` group.
    attribution_images : mapping of (str, (int, int)) to array, optional
        Final images of intervened runs keyed by ``(layer, (step_start, step_stop))``, each
        ``(k, 3, H, W)`` for the run's first ``k`` samples: clicking a cell of the attribution heatmap
        shows them beside the run's own final images (see
        :func:`denoisefeat.viz.attribution.attribution_heatmap`).  By default, with the store's
        tables, the images the first of them keeps (a scan run with ``keep_images``) beside that
        scan's clean images.
    max_samples : int
        Samples in the x̂0 grid.
    max_mb : float
        The most the HTML file may weigh, in MiB (see the module notes: pictures shrink to fit).
    frames : FramePolicy, optional
        Size, encoding and steps of the pictures before any shrinking; default ``FramePolicy()``
        (128 px, WebP quality 80 above 64 px, 50 steps).
    facts : denoisefeat.analyses.facts.KnownFacts, optional
        Add the "Known facts" section.

    Returns
    -------
    pathlib.Path
        The HTML file.

    Raises
    ------
    ValueError
        ``max_mb`` is not a positive number, or too small for the report without its pictures.
    denoisefeat.viz.export.StaticExportError
        ``static_dir`` is given but kaleido or a browser is missing (the HTML is written first).
    """
    from denoisefeat.store import Run, open_run

    if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not math.isfinite(max_mb) or max_mb <= 0:
        raise ValueError(f"max_mb must be a positive number of MiB, got {max_mb!r}")
    if frames is not None and not isinstance(frames, FramePolicy):
        raise TypeError(f"frames must be a denoisefeat.viz.frames.FramePolicy, got {type(frames).__name__}")
    frames = FramePolicy() if frames is None else frames
    if not isinstance(run, Run):
        run = open_run(run)
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    if static_dir is not None:
        from denoisefeat.viz.export import check_formats

        static_formats = check_formats(static_formats)
    title = title if title is not None else f"denoisefeat report: {run.attrs.get('model_id', 'run')}"
    notes: list[str] = []
    sections: list[_Section] = []
    if features is None:
        features = _load_features(run)
    if "images" in run.dataset:
        sections.append(_trajectory(run, features, max_samples, frames))
    else:
        notes.append("The run stores no decoded images (trace with keep including 'images'): no trajectory views.")
    if features is not None:
        sections.append(_feature_section(features))
    else:
        notes.append("No per-step features in the store (run `denoisefeat analyze` on it): no feature profiles.")
    clean = None
    if attribution is None:
        attribution = _load_attribution(run, notes)
        if attribution is not None and attribution_images is None:
            attribution_images, clean = _kept_images(run, attribution, notes)
    words = None
    if attribution is not None and "word" in attribution.columns:
        by_word = attribution["word"].notna() & (attribution["word"].astype(str) != "")
        words, attribution = attribution[by_word], attribution[~by_word].drop(columns="word")
        attribution = attribution if len(attribution) else None
    if attribution is not None:
        if attribution_images and clean is None:
            k = max(np.asarray(v).reshape(-1, *np.asarray(v).shape[-3:]).shape[0] for v in attribution_images.values())
            clean = run["final"].isel(sample=slice(0, k)).values
        sections.append(_attribution_section(attribution, layers=layers, images=attribution_images, clean=clean))
    else:
        notes.append("No attribution results in the store (ablation, patching, probes): no attribution maps.")
    if words is not None and len(words):
        sections.append(_contrast_section(words))
    if run.layers():
        sections.append(_activation_section(run, layers=layers))
    if run.attention_layers():
        sections.append(_attention_section(run))
    if facts is not None:
        sections.append(_facts_section(facts))
    overview = _overview(run)
    plain = [replace(section, figures=[item for item in section.figures if item.build is None])
             for section in sections]
    fixed = len(_page(title, overview, plain, notes).encode("utf-8"))
    stored = tuple(run["images"].shape[-2:]) if "images" in run.dataset else None
    budget_lines = _budget(sections, frames=frames, max_mb=max_mb, fixed_bytes=fixed, stored=stored)
    if "images" in run.dataset and run.store.n_samples > max_samples:
        budget_lines.append(f"The x̂0 grid shows {max_samples} of the {run.store.n_samples} samples; "
                            "`denoisefeat view` browses all of them.")
    out.write_text(_page(title, overview, sections, notes, budget_lines), encoding="utf-8")
    if static_dir is not None:
        items = [item for section in sections for item in section.figures]
        write_static([item.figure for item in items], static_dir,
                     [f"{i:02d}_{item.name}" for i, item in enumerate(items, start=1)], formats=static_formats)
    return out
