"""Figures and the HTML report, checked against the data they draw (no browser; see test_report_browser.py)."""

from __future__ import annotations

import html
import importlib.util
import math
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import xarray as xr

import denoisefeat as dft
from denoisefeat.frequency import band_pass, radial_power_spectrum
from denoisefeat.viz import (
    activation_change,
    activation_change_heatmap,
    apply_style,
    attribution_heatmap,
    band_pass_grid,
    build_report,
    compare_runs,
    correlation_heatmap,
    emergence_curves,
    rapsd_curves,
    rapsd_heatmap,
    selectivity_map,
    step_image_grid,
    wavelet_heatmap,
)
from denoisefeat.viz._images import decode_png_uri
from denoisefeat.viz._layers import order_layers
from denoisefeat.viz.attribution import COLUMNS
from denoisefeat.viz.style import FIGURE_SIZES, OKABE_ITO

S, T = 4, 8
XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_pipes):
    path = tmp_path_factory.mktemp("viz") / "run.zarr"
    return dft.trace(tiny_pipes["tiny-class-unet"], samples=S, class_labels=[0, 1, 2, 3], seed=0, steps=T,
                     store=path, record={"mid_block": "channel_mean", "down_blocks.0": "spatial_energy",
                                         "up_blocks.1": "channel_mean"})


def _expected_uint8(images):
    """Independent 8-bit conversion: clip to [0, 1], scale, round; channels last."""
    return np.round(np.clip(np.moveaxis(np.asarray(images, np.float64), -3, -1), 0, 1) * 255).astype(np.uint8)


def _gray(rgb):
    from skimage.color import rgb2gray

    return rgb2gray(np.moveaxis(np.clip(rgb, 0, 1), -3, -1))


# -- trajectory -----------------------------------------------------------------------------------

def test_step_image_grid_has_one_slider_position_and_frame_per_step(run):
    fig = step_image_grid(run)
    images = run.dataset["images"].values  # (S, T, 3, H, W)
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == S
    assert len(fig.layout.sliders) == 1 and len(fig.layout.sliders[0].steps) == T
    assert [s.label for s in fig.layout.sliders[0].steps] == [str(k) for k in range(T)]
    assert [f.name for f in fig.frames] == [str(k) for k in range(T)]
    assert fig.layout.sliders[0].active == T - 1
    for k, frame in enumerate(fig.frames):
        for i in range(S):
            np.testing.assert_array_equal(decode_png_uri(frame.data[i].source), _expected_uint8(images[i, k]))
    for i in range(S):  # shown first: the last step
        np.testing.assert_array_equal(decode_png_uri(fig.data[i].source), _expected_uint8(images[i, -1]))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"sample {i} · label {i}" for i in range(S)]


def test_step_image_grid_selection_and_errors(run):
    fig = step_image_grid(run, samples=[2], steps=[0, 3, 7], ncols=1)
    assert len(fig.data) == 1 and len(fig.layout.sliders[0].steps) == 3
    assert [f.name for f in fig.frames] == ["0", "3", "7"]
    np.testing.assert_array_equal(decode_png_uri(fig.frames[1].data[0].source),
                                  _expected_uint8(run.dataset["images"].values[2, 3]))
    with pytest.raises(IndexError, match="out of range"):
        step_image_grid(run, samples=[S])
    with pytest.raises(ValueError, match="column, page, screen"):
        step_image_grid(run, size="poster")


def test_band_pass_grid_z_equals_band_pass_of_luminance(run):
    fig = band_pass_grid(run, sample=1)
    rgb = run.dataset["images"].values[1]  # (T, 3, H, W)
    gray = _gray(rgb)
    parts = band_pass(gray)  # (T, 3 bands, H, W)
    assert len(fig.layout.sliders[0].steps) == T and len(fig.frames) == T
    for k, frame in enumerate(fig.frames):
        for b in range(3):
            np.testing.assert_allclose(frame.data[1 + b].z, parts[k, b], atol=1e-6)
        # the bands partition the spectrum: their images add up to the luminance
        np.testing.assert_allclose(sum(np.asarray(frame.data[1 + b].z, np.float64) for b in range(3)), gray[k],
                                   atol=1e-5)
    assert fig.data[2].zmid == 0 and fig.data[2].zmin == -fig.data[2].zmax


def _rapsd_of_run(run):
    gray = _gray(run.dataset["images"].values)
    spectrum = radial_power_spectrum(gray)
    return xr.DataArray(spectrum.power, dims=("sample", "step", "freq"),
                        coords={"step": np.arange(T), "freq": spectrum.freq})


def test_rapsd_heatmap_z_is_log_mean_power(run):
    rapsd = _rapsd_of_run(run)
    fig = rapsd_heatmap(rapsd)
    (trace,) = fig.data
    freq = rapsd["freq"].values
    np.testing.assert_allclose(trace.y, freq[1:])  # DC row left out by default
    np.testing.assert_array_equal(trace.x, np.arange(T))
    np.testing.assert_allclose(trace.z, np.log10(rapsd.values.mean(0)).T[1:], rtol=1e-6)
    one = rapsd_heatmap(rapsd, sample=2, include_dc=True)
    np.testing.assert_allclose(one.data[0].z, np.log10(rapsd.values[2]).T, rtol=1e-6)
    assert "cycles/pixel" in fig.layout.yaxis.title.text
    with pytest.raises(ValueError, match="freq"):
        rapsd_heatmap(rapsd.rename(freq="f"))


def test_rapsd_heatmap_planted_power_law():
    freq = np.linspace(0, 0.5, 9)
    steps = np.arange(5)
    power = np.array([[10.0 ** (-(k + 1) * max(f, 1 / 16) * 4) for f in freq] for k in steps])
    fig = rapsd_heatmap(xr.DataArray(power, dims=("step", "freq"), coords={"freq": freq}), include_dc=True)
    np.testing.assert_allclose(fig.data[0].z, np.log10(power).T)


def test_rapsd_curves(run):
    rapsd = _rapsd_of_run(run)
    fig = rapsd_curves(rapsd, steps=[0, 7])
    assert [t.name for t in fig.data] == ["step 0", "step 7"]
    np.testing.assert_allclose(fig.data[1].x, rapsd["freq"].values[1:])
    np.testing.assert_allclose(fig.data[1].y, rapsd.values.mean(0)[7, 1:], rtol=1e-6)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert len(rapsd_curves(rapsd).data) == 6


def test_wavelet_heatmap_relative_energy_and_missing_subbands():
    rng = np.random.default_rng(0)
    energy = rng.uniform(0.1, 1.0, size=(3, 4, 2, 4))
    energy[:, :, 0, 3] = np.nan  # approximation only at the coarsest level
    da = xr.DataArray(energy, dims=("sample", "step", "level", "orientation"),
                      coords={"level": [1, 2], "orientation": ["horizontal", "vertical", "diagonal", "approximation"]})
    fig = wavelet_heatmap(da)
    (trace,) = fig.data
    assert list(trace.y) == ["level 1 · horizontal", "level 1 · vertical", "level 1 · diagonal",
                             "level 2 · horizontal", "level 2 · vertical", "level 2 · diagonal",
                             "level 2 · approximation"]
    fraction = energy / np.nansum(energy, axis=(2, 3), keepdims=True)
    rows = [fraction[:, :, lv, o].mean(0) for lv in range(2) for o in range(4) if not (lv == 0 and o == 3)]
    np.testing.assert_allclose(trace.z, np.log10(np.stack(rows)), rtol=1e-10)
    raw = wavelet_heatmap(da, relative=False, sample=1)
    np.testing.assert_allclose(raw.data[0].z[0], np.log10(energy[1, :, 0, 0]))


# -- profiles -------------------------------------------------------------------------------------

def _sigmoid(center, steps):
    return 1.0 / (1.0 + np.exp(-(steps - center)))


def _synthetic_features(n_samples=5, n_steps=11, *, seed=0):
    """Features whose progress is known exactly: affine images of one sigmoid per feature."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n_steps)
    base = {"ssim": _sigmoid(4, steps), "edge_density": _sigmoid(7, steps)}
    data = {}
    for name, curve in base.items():
        scale = rng.uniform(0.5, 2.0, size=(n_samples, 1)) * np.where(name == "edge_density", -1, 1)
        data[name] = (("sample", "step"), rng.normal(size=(n_samples, 1)) + scale * curve)
    bands = np.stack([_sigmoid(c, steps) for c in (2, 5, 8)], axis=-1)
    data["band_relative_error"] = (("sample", "step", "band"), np.broadcast_to(1 - bands, (n_samples, n_steps, 3)))
    data["flat"] = (("sample", "step"), np.full((n_samples, n_steps), 3.0))
    data["rapsd"] = (("sample", "step", "freq"), rng.uniform(size=(n_samples, n_steps, 4)))
    return xr.Dataset(data, coords={"sample": np.arange(n_samples), "step": steps, "band": ["low", "mid", "high"],
                                    "freq": np.linspace(0, 0.5, 4)})


def _normalised(curve):
    return (curve - curve[0]) / (curve[-1] - curve[0])


def test_curves_are_the_progress_temporal_measures_markers_on():
    """Unbounded distances (ΔE) go through 1/(1+d) in temporal.profiles: the drawn curve must too."""
    from denoisefeat.temporal import profiles as measure

    steps = np.arange(9)
    distance = 30.0 * (1 - _sigmoid(3, steps))[None, :] * np.array([[1.0], [2.0], [0.5]])
    feats = xr.Dataset({"delta_e2000": (("sample", "step"), distance)}, coords={"step": steps})
    feats["delta_e2000"].attrs.update(range=[0.0, np.inf], direction="lower is closer to the final image")
    prof = measure(feats, n_boot=0)
    line = emergence_curves(feats, n_boot=0, profiles=prof).data[1]
    expected = np.median(prof["progress"].sel(profile="delta_e2000").values, axis=0)
    np.testing.assert_allclose(line.y, expected)
    linear = np.median((distance - distance[:, :1]) / (distance[:, -1:] - distance[:, :1]), axis=0)
    assert not np.allclose(line.y, linear)  # the old linear normalisation differs
    marker = emergence_curves(feats, n_boot=0, profiles=prof).data[2]
    emergence = float(np.median(prof["emergence"].sel(profile="delta_e2000")))
    assert marker.x[0] == emergence and marker.y[0] == pytest.approx(np.interp(emergence, steps, line.y))
    assert line.y[int(emergence)] >= 0.5


def test_curves_cover_band_profiles_and_constant_features():
    fig = emergence_curves(_synthetic_features(), n_boot=0)
    assert [t.name for t in fig.data[1::2]] == [
        "ssim", "edge_density", "band_relative_error[low]", "band_relative_error[mid]", "band_relative_error[high]",
        "flat"]
    assert np.all(fig.data[-1].y == 1.0)  # a constant feature is already where it ends


def test_emergence_curves_median_ci_and_markers():
    feats = _synthetic_features()
    steps = np.arange(11)
    profiles = xr.Dataset(
        {"emergence": (("profile", "sample"), [[4, 4, 3, 5, 4], [7, 7, 7, 8, 6]]),
         "stabilisation": (("profile", "sample"), [[7, 7, 7, 8, 7], [10, 9, 10, 10, 10]])},
        coords={"profile": ["ssim", "edge_density"]})
    fig = emergence_curves(feats, variables=["ssim", "edge_density"], profiles=profiles)
    bands, lines = fig.data[0::2][:2], fig.data[1::2][:2]
    for line, center in zip(lines, (4, 7), strict=True):
        np.testing.assert_allclose(line.y, _normalised(_sigmoid(center, steps)), atol=1e-12)
        np.testing.assert_allclose(line.customdata[:, 0], line.y, atol=1e-9)  # identical samples: CI collapses
    assert [t.name for t in lines] == ["ssim", "edge_density"]
    assert all(t.fill == "toself" for t in bands)
    markers = fig.data[4:]
    assert [t.name for t in markers] == ["ssim emergence", "ssim stabilisation", "edge_density emergence",
                                         "edge_density stabilisation"]
    assert [t.x[0] for t in markers] == [4, 7, 7, 10]  # medians over samples
    assert markers[0].y[0] == pytest.approx(_normalised(_sigmoid(4, steps))[4])
    assert markers[0].marker.symbol == "circle" and markers[1].marker.symbol == "diamond"
    normalised = emergence_curves(feats, variables="band_relative_error", x="t/T", n_boot=50)
    assert [t.name for t in normalised.data[1::2]] == [f"band_relative_error[{b}]" for b in ("low", "mid", "high")]
    np.testing.assert_allclose(normalised.data[1].x, steps / 10)
    assert "t/T" in normalised.layout.xaxis.title.text


def test_emergence_curves_ci_covers_median_of_noisy_samples():
    rng = np.random.default_rng(1)
    steps = np.arange(9)
    values = _sigmoid(4, steps) + 0.05 * rng.standard_normal((30, 9))
    values[:, 0], values[:, -1] = 0.0, 1.0
    feats = xr.Dataset({"f": (("sample", "step"), values)}, coords={"step": steps})
    line = emergence_curves(feats, n_boot=400).data[1]
    np.testing.assert_allclose(line.y, np.median(values, axis=0))
    low, high = line.customdata[:, 0], line.customdata[:, 1]
    assert np.all(low <= line.y) and np.all(line.y <= high)
    assert np.all((high - low)[1:-1] > 0)
    assert np.all(low[1:-1] <= _sigmoid(4, steps)[1:-1] + 0.05)


def test_emergence_curves_errors():
    feats = _synthetic_features()
    with pytest.raises(KeyError, match="ssim"):
        emergence_curves(feats, variables=["sism"])
    with pytest.raises(ValueError, match="step, t/T"):
        emergence_curves(feats, x="time")


def test_compare_runs_on_normalised_time():
    short, long = _synthetic_features(n_steps=6), _synthetic_features(n_steps=21, seed=3)
    fig = compare_runs({"ddim-6": short, "ddim-21": long}, variables=["ssim", "edge_density"], n_boot=20)
    lines = [t for t in fig.data if t.mode == "lines" and t.fill != "toself"]
    assert len(lines) == 4
    assert [t.name for t in lines] == ["ddim-6", "ddim-21", "ddim-6", "ddim-21"]
    for t in lines:
        assert t.x[0] == 0 and t.x[-1] == 1
    assert len(lines[0].x) == 6 and len(lines[1].x) == 21
    assert [a.text for a in fig.layout.annotations] == ["ssim", "edge_density"]
    assert lines[0].line.color == lines[2].line.color == OKABE_ITO[0]


# -- attribution ----------------------------------------------------------------------------------

_LAYERS_SHUFFLED = ["up_blocks.1", "mid_block", "conv_in", "down_blocks.1", "up_blocks.0", "down_blocks.0"]
_NETWORK_ORDER = ["conv_in", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]


def _table(features=("edges", "color"), methods=("ablation:zero", "pearson"), windows=((0, 4), (4, 8)), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for f in features:
        for m in methods:
            for layer in _LAYERS_SHUFFLED:
                for a, b in windows:
                    effect = rng.normal()
                    rows.append(dict(feature=f, layer=layer, step_start=a, step_stop=b, method=m, effect=effect,
                                     ci_low=effect - 0.2, ci_high=effect + 0.2, p=rng.uniform(), p_adj=rng.uniform(),
                                     n=8, effect_std=effect / 2, disruption=1.0, specificity=abs(effect) / 2))
    return pd.DataFrame(rows, columns=[*COLUMNS, "effect_std", "disruption", "specificity"])


def _click(fig, menus, menu_index, button_index):
    """Emulate a dropdown click: Plotly.update(visible, relayout of the other menu's button args)."""
    button = menus[menu_index]["buttons"][button_index]
    visible, rewrite = button["args"][0]["visible"], button["args"][1]
    for key, value in rewrite.items():
        m = re.fullmatch(r"updatemenus\[(\d+)\]\.buttons\[(\d+)\]\.args\[0\]\.visible", key)
        assert m, key
        menus[int(m.group(1))]["buttons"][int(m.group(2))]["args"][0]["visible"] = value
    return visible


def test_attribution_heatmap_values_hover_and_order():
    table = _table()
    fig = attribution_heatmap(table)
    assert len(fig.data) == 4
    for index, (f, m) in enumerate([(f, m) for f in ("edges", "color") for m in ("ablation:zero", "pearson")]):
        trace = fig.data[index]
        assert list(trace.y) == _NETWORK_ORDER
        assert list(trace.x) == ["[0, 4)", "[4, 8)"]
        rows = table[(table.feature == f) & (table.method == m)]
        expected = rows.pivot(index="layer", columns="step_start", values="effect").loc[_NETWORK_ORDER].values
        np.testing.assert_allclose(trace.z, expected)
        p = rows.pivot(index="layer", columns="step_start", values="p").loc[_NETWORK_ORDER].values
        np.testing.assert_allclose(trace.customdata[..., 2], p)
        np.testing.assert_allclose(trace.customdata[..., 0], expected - 0.2)
        for word in ("effect", "CI", "p ", "p_adj", "n ", "customdata[0]", "customdata[1]"):
            assert word in trace.hovertemplate
        sig = rows.pivot(index="layer", columns="step_start", values="p_adj").loc[_NETWORK_ORDER].values < 0.05
        assert (np.asarray(trace.text) == "*").tolist() == sig.tolist()
    assert [t.visible for t in fig.data] == [True, False, False, False]


def test_attribution_dropdowns_stay_consistent():
    fig = attribution_heatmap(_table(features=("edges", "color", "texture")))
    menus = fig.to_plotly_json()["layout"]["updatemenus"]
    assert [b["label"] for b in menus[0]["buttons"]] == ["edges", "color", "texture"]
    assert [b["label"] for b in menus[1]["buttons"]] == ["ablation:zero", "pearson"]
    trace_of = {(f, m): 2 * i + j for i, f in enumerate(("edges", "color", "texture"))
                for j, m in enumerate(("ablation:zero", "pearson"))}
    current_f, current_m = "edges", "ablation:zero"
    for menu, button in [(0, 2), (1, 1), (0, 0), (0, 1), (1, 0), (1, 1)]:
        visible = _click(fig, menus, menu, button)
        if menu == 0:
            current_f = ("edges", "color", "texture")[button]
        else:
            current_m = ("ablation:zero", "pearson")[button]
        assert visible == [i == trace_of[current_f, current_m] for i in range(6)], (current_f, current_m)


def test_attribution_layer_order_and_levels_from_list_layers(tiny_pipes):
    from denoisefeat.hooks import list_layers

    infos = list_layers(tiny_pipes["tiny-class-unet"])
    table = _table(features=("edges",), methods=("ablation:zero",))
    table = table[table.layer.isin(["mid_block", "down_blocks.0", "up_blocks.1", "conv_in", "up_blocks.0"])]
    fig = attribution_heatmap(table, layers=infos)
    order = [i.name for i in sorted((i for i in infos if i.order is not None), key=lambda i: i.order)]
    expected = [n for n in order if n in set(table.layer)]
    assert list(fig.data[0].y) == expected
    levels = {i.name: i.level for i in infos}
    labels = [a.text for a in fig.layout.annotations]
    assert {f"L{levels[n]}" for n in expected} == set(labels)
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    changes = sum(levels[a] != levels[b] for a, b in zip(expected[:-1], expected[1:], strict=True))
    assert len(lines) == changes > 0
    np.testing.assert_array_equal(fig.data[0].customdata[:, 0, 5], [levels[n] for n in expected])
    assert "resolution level" in fig.data[0].hovertemplate


def test_attribution_heatmap_with_images():
    rng = np.random.default_rng(0)
    table = _table(features=("edges",), methods=("ablation:zero",))
    images = {(layer, w): rng.uniform(size=(2, 3, 8, 8))
              for layer in ("mid_block", "conv_in") for w in [(0, 4), (4, 8)]}
    clean = rng.uniform(size=(2, 3, 8, 8))
    fig = attribution_heatmap(table, images=images, clean=clean)
    meta = fig.layout.meta["denoisefeat"]
    assert set(meta["cells"]) == {"mid_block|0|4", "mid_block|4|8", "conv_in|0|4", "conv_in|4|8"}
    strip = decode_png_uri(meta["cells"]["conv_in|4|8"])
    expected = _expected_uint8(images["conv_in", (4, 8)])
    np.testing.assert_array_equal(strip[:, :8], expected[0])
    np.testing.assert_array_equal(strip[:, 9:], expected[1])
    assert fig.data[meta["image_trace"]].type == "image"
    np.testing.assert_array_equal(decode_png_uri(fig.data[meta["image_trace"] - 1].source)[:, :8],
                                  _expected_uint8(clean[0]))
    with pytest.raises(ValueError, match="clean"):
        attribution_heatmap(table, images=images)
    with pytest.raises(ValueError, match="keys must all be"):  # with and without a method: ambiguous
        attribution_heatmap(table, images={**images, ("conv_in", (0, 4), "ablation:zero"): clean}, clean=clean)


def test_attribution_errors_and_escaping():
    table = _table(features=(XSS,), methods=("ablation:zero",))
    fig = attribution_heatmap(table)
    assert XSS not in fig.data[0].hovertemplate
    assert html.escape(XSS) in fig.data[0].hovertemplate
    with pytest.raises(ValueError, match="lacks columns \\['p_adj'\\]"):
        attribution_heatmap(table.drop(columns="p_adj"))
    with pytest.raises(ValueError, match="the table has: ablation:zero"):
        attribution_heatmap(table, methods=["patching"])
    with pytest.raises(ValueError, match="several rows"):
        attribution_heatmap(pd.concat([table, table]))


def test_selectivity_map():
    rows = []
    for f in ("edges", "color"):
        for layer in ("mid_block", "down_blocks.0"):
            for s in range(T):
                rows.append(dict(feature=f, layer=layer, step_start=s, step_stop=s + 1, method="probe",
                                 effect=s / 10 + (layer == "mid_block"), ci_low=0, ci_high=1, p=np.nan,
                                 p_adj=np.nan, n=S))
    table = pd.concat([pd.DataFrame(rows), _table()], ignore_index=True)
    fig = selectivity_map(table)
    assert len(fig.data) == 2 and list(fig.data[0].x) == list(range(T))
    assert list(fig.data[0].y) == ["down_blocks.0", "mid_block"]
    np.testing.assert_allclose(fig.data[0].z, [[s / 10 for s in range(T)], [1 + s / 10 for s in range(T)]])
    assert len(fig.layout.updatemenus) == 1
    with pytest.raises(ValueError, match="no rows with method 'patching'"):
        selectivity_map(table, method="patching")


def test_correlation_heatmap():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20, 3)), columns=["a", "b", XSS])
    corr = frame.corr()
    fig = correlation_heatmap(corr, title=f"title {XSS}")
    np.testing.assert_allclose(fig.data[0].z, corr.values)
    assert list(fig.data[0].x) == ["a", "b", html.escape(XSS)]
    assert fig.data[0].zmin == -1 and fig.data[0].zmax == 1
    assert XSS not in fig.layout.title.text
    da = xr.DataArray(corr.values, dims=("f1", "f2"), coords={"f1": list("abc"), "f2": list("abc")})
    np.testing.assert_allclose(correlation_heatmap(da).data[0].z, corr.values)
    with pytest.raises(ValueError, match="square"):
        correlation_heatmap(frame.iloc[:, :2].T @ frame.iloc[:, :3])


# -- activations ----------------------------------------------------------------------------------

def test_activation_change_heatmap(run):
    fig = activation_change_heatmap(run)
    (trace,) = fig.data
    assert list(trace.y) == ["down_blocks.0", "mid_block", "up_blocks.1"]
    np.testing.assert_array_equal(trace.x, np.arange(1, T))
    acts = run.acts("mid_block").values  # (S, T, C)
    manual = np.linalg.norm(acts[:, 1:] - acts[:, :-1], axis=-1) / np.linalg.norm(acts[:, :-1], axis=-1)
    np.testing.assert_allclose(activation_change(run.acts("mid_block")), manual, rtol=1e-6)
    np.testing.assert_allclose(trace.z[1], np.median(manual, axis=0), rtol=1e-6)
    with pytest.raises(KeyError, match="recorded: mid_block"):
        activation_change_heatmap(run, layers=["conv_in"])


# -- style ----------------------------------------------------------------------------------------

def test_style_sizes_and_palette():
    fig = apply_style(go.Figure(), size="column")
    assert fig.layout.width == FIGURE_SIZES["column"]["width"] == 336  # 3.5 in at 96 px/in
    assert list(fig.layout.template.layout.colorway) == list(OKABE_ITO)
    assert len(set(OKABE_ITO)) == 8
    assert apply_style(go.Figure(), size="screen").layout.autosize is True


def test_layer_order_by_name_matches_execution_order(tiny_pipes):
    from denoisefeat.hooks import list_layers

    for name in ("tiny-class-unet", "tiny-sd"):
        infos = [i for i in list_layers(tiny_pipes[name]) if i.order is not None]
        executed = [i.name for i in sorted(infos, key=lambda i: i.order)]
        by_name, levels = order_layers(reversed(executed))
        assert by_name == executed and levels == {}


# -- report ---------------------------------------------------------------------------------------

def _figure_count(text: str) -> int:
    return text.count('<figure class="dft-figure"')


def test_report_sections_follow_the_store(run, tmp_path):
    out = build_report(run, tmp_path / "report.html", title=f"My {XSS} run")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count('class="plotly-graph-div"') == _figure_count(text) == 6  # 5 trajectory views + activations
    assert text.count("* plotly.js") == 1  # the library, embedded once
    assert text.count("<script") == _figure_count(text) + 2  # plotly.js once, each figure, the click handler
    from denoisefeat.viz.plotly_bundle import plotly_js

    page = text.replace(plotly_js(["scatter"]), "")  # the page without the library: nothing loads from a network
    assert len(page) < len(text)
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"(src|href)=\"https?:", page)
    assert XSS not in text and html.escape(XSS) in text
    assert 'id="trajectory"' in text and 'id="activations"' in text
    assert 'id="profiles"' not in text and 'id="attribution"' not in text
    assert "No per-step features" in text


def _write_features(run, feats: xr.Dataset) -> None:
    """Put per-step features into the store."""
    from denoisefeat.step_features import features

    features(run)


@pytest.mark.filterwarnings("ignore:Consolidated metadata", "ignore:The data type")
def test_report_with_features_and_attribution(run, tmp_path):
    feats = _synthetic_features(n_samples=S, n_steps=T).drop_vars("flat")
    path = tmp_path / "with.zarr"
    run2 = dft.trace(dft.load_pipeline("tiny-class-unet"), samples=S, class_labels=[0, 1, 2, 3], seed=0, steps=T,
                     store=path)
    _write_features(run2, feats)
    table = _table(features=("edges", XSS))
    out = build_report(path, tmp_path / "r.html", attribution=table)
    text = out.read_text()
    assert 'id="profiles"' in text and 'id="attribution"' in text and 'id="activations"' not in text
    # 5 trajectory views, 2 profile figures (metrics, bands), the attribution heatmaps of the standardised
    # effect and of the specificity; with denoisefeat.temporal also the correlation of emergence steps
    # (when they vary across samples)
    has_temporal = importlib.util.find_spec("denoisefeat.temporal") is not None
    assert _figure_count(text) in ((9, 10) if has_temporal else (9,))
    assert XSS not in text


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


@pytest.mark.skipif(not _has_module("denoisefeat.analyses.table"),
                    reason="denoisefeat.analyses.table (write_attribution) is not available")
def test_report_reads_attribution_from_the_store(tmp_path):
    from denoisefeat.analyses.table import write_attribution

    path = tmp_path / "attr.zarr"
    dft.trace(dft.load_pipeline("tiny-class-unet"), samples=2, class_labels=[0, 1], seed=0, steps=4, store=path)
    write_attribution(path, _table(windows=((0, 2), (2, 4))), name="scan")
    text = build_report(path, tmp_path / "a.html").read_text()
    assert 'id="attribution"' in text and "No attribution results" not in text


def test_report_static_export_errors(run, tmp_path):
    with pytest.raises(ValueError, match="png, svg, pdf"):
        build_report(run, tmp_path / "r.html", static_dir=tmp_path / "static", static_formats=("bmp",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(run, tmp_path / "missing" / "r.html")


def _chromium_available() -> bool:
    import shutil

    return any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None or not _chromium_available(),
                    reason="static export needs the 'static' extra (kaleido) and a Chromium browser")
def test_static_export_png_svg_pdf(tmp_path):
    from PIL import Image

    from denoisefeat.viz import write_static

    fig = apply_style(go.Figure(go.Heatmap(z=np.arange(12.0).reshape(3, 4))), size="column")
    files = write_static([fig], tmp_path, ["heat"], formats=("png", "svg", "pdf"), dpi=192)
    assert [f.name for f in files] == ["heat.png", "heat.svg", "heat.pdf"]
    with Image.open(files[0]) as png:
        assert png.size == (2 * 336, 2 * FIGURE_SIZES["column"]["height"])  # 192 dpi = 2 × 96
        assert np.asarray(png.convert("L")).std() > 5
    assert files[1].read_text().lstrip().startswith("<svg")
    assert files[2].read_bytes().startswith(b"%PDF")
    assert not math.isnan(fig.data[0].z[0][0])


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None or not _chromium_available(),
                    reason="static export needs the 'static' extra (kaleido) and a Chromium browser")
def test_report_static_export_writes_every_figure(run, tmp_path):
    from PIL import Image

    out = build_report(run, tmp_path / "r.html", static_dir=tmp_path / "static")
    names = re.findall(r'data-name="([^"]+)"', out.read_text())
    files = sorted(p.name for p in (tmp_path / "static").iterdir())
    assert files == [f"{i:02d}_{name}.png" for i, name in enumerate(names, start=1)]
    with Image.open(tmp_path / "static" / files[2]) as png:  # a page-wide figure at 300 dpi
        assert png.size[0] == round(FIGURE_SIZES["page"]["width"] * 300 / 96)


def test_report_command(tmp_path):
    from typer.testing import CliRunner

    from denoisefeat.cli import app
    from denoisefeat.models import load_pipeline
    from denoisefeat.trajectory import trace

    trace(load_pipeline("tiny-class-unet"), class_labels=[0, 1], steps=4, store=tmp_path / "r.zarr")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "r.zarr"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.html").read_text()
    assert "<html" in text.lower() and "plotly" in text.lower()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "x.html")])
    assert missing.exit_code == 2


def test_pages_embed_the_cartesian_bundle_when_it_draws_them():
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    from denoisefeat.viz.plotly_bundle import CARTESIAN_TRACES, VENDORED_VERSION, plotly_js

    full = get_plotlyjs()
    assert plotly_js(["scatter3d", "scatter"]) == full  # a trace the partial bundle lacks: the whole library
    page = plotly_js(["scatter", "heatmap", "image"])
    if get_plotlyjs_version() != VENDORED_VERSION:  # plotly upgraded past the vendored bundle: the full one
        assert page == full
        return
    assert page != full and len(page) < 0.4 * len(full)  # ≈ 1.4 vs 4.6 MB
    assert f"plotly.js (cartesian - minified) v{VENDORED_VERSION}" in page[:200]
    assert {"scatter", "heatmap", "image"} <= CARTESIAN_TRACES
