"""Ablation scans and causal tracing against planted ground truth, the naive loop and ``trace``."""

import numpy as np
import pytest
import torch

import denoisefeat as dft
from denoisefeat.analyses import rank, read_attribution
from denoisefeat.analyses.ablation import ablation_scan, causal_trace, resolve_features
from denoisefeat.analyses.scan import EditScan, as_images
from denoisefeat.hooks import Edit
from denoisefeat.hooks.layers import UnknownLayerError
from denoisefeat.metrics import FEATURE_GROUPS, METRICS
from denoisefeat.options import RunOptions
from denoisefeat.steps import step_windows
from denoisefeat.store import RunExistsError, open_run

PLANTED = "up_blocks.1.resnets.1.conv2"
NOOP = "mid_block.resnets.1.conv2"
STATS = ["effect", "ci_low", "ci_high", "p", "p_adj"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _noop(pipe):
    """Zero NOOP's weights: its output is 0 whatever its input, so ablating or patching it changes nothing."""
    modules = dict(pipe.unet.named_modules())
    with torch.no_grad():
        modules[NOOP].weight.zero_()
        modules[NOOP].bias.zero_()
    return pipe


@pytest.fixture(scope="module")
def planted_pipe():
    pipe = _noop(dft.load_pipeline("tiny-class-unet"))
    with torch.no_grad():
        dict(pipe.unet.named_modules())[PLANTED].bias[0] += 50.0  # a strong, known push on the red channel
    return pipe


@pytest.fixture(scope="module")
def noop_pipe():
    return _noop(dft.load_pipeline("tiny-class-unet"))


class CallCounter:
    """Counts root calls of the denoiser (a forward pre-hook, removed on exit)."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0

    def __enter__(self):
        self.handle = self.pipe.unet.register_forward_pre_hook(self._count)
        return self

    def _count(self, module, args):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


def test_planted_layer_ranks_first_for_colour(planted_pipe):
    frame = ablation_scan(planted_pipe, layers=[NOOP, PLANTED], windows=1,
                          features=["color", "delta_e2000", "band_error:low"], samples=4, class_labels=[0, 1, 2, 3],
                          steps=3)
    assert set(frame["feature"]) == {*FEATURE_GROUPS["color"], "delta_e2000", "band_error:low"}
    assert len(frame) == 2 * len(set(frame["feature"])) and (frame["n"] == 4).all()
    assert list(frame["layer"].unique()) == [NOOP, PLANTED]  # network order
    top = rank(frame, feature="delta_e2000", top=2)
    assert top.loc[0, "layer"] == PLANTED and top.loc[0, "significant"]
    assert top.loc[0, "ci_low"] > 1.0  # a large colour change, CI well away from 0
    noop = frame[frame["layer"] == NOOP]  # bit-identical images: exactly zero, never significant
    assert (noop[["effect", "ci_low", "ci_high", "effect_std", "disruption", "specificity"]].to_numpy() == 0).all()
    assert (noop["p"] == 1.0).all() and (noop["p_adj"] == 1.0).all()
    planted_band = frame[(frame.layer == PLANTED) & (frame.feature == "band_error:low")]["effect"].item()
    assert planted_band > 0.01


@pytest.mark.parametrize("scheduler", [None, "ddpm", "dpm++"])  # DDIM, stochastic DDPM, multistep DPM-Solver
def test_prefix_cache_equals_naive_and_trace(noop_pipe, scheduler):
    pipe = noop_pipe
    windows, methods = [(0, 2), (2, 4), (1, 4)], ["zero", "mean"]
    kw = dict(layers=["down_blocks.1.resnets.0", "up_blocks.0"], windows=windows, method=methods,
              features=["color", "delta_e2000", "band_error:mid"], samples=3, class_labels=[0, 1, 2], steps=4,
              batch_size=2, guidance_scale=2.0, scheduler=scheduler)
    with CallCounter(pipe) as cached_calls:
        cached = ablation_scan(pipe, **kw)
    with CallCounter(pipe) as naive_calls:
        naive = ablation_scan(pipe, cache=False, **kw)
    np.testing.assert_allclose(cached[STATS].to_numpy(), naive[STATS].to_numpy(), rtol=1e-9, atol=1e-12)
    # 2 chunks x 4 steps: naive = clean + 12 edited runs; cached edited runs skip their window's start
    per_layer_method = sum(4 - start for start, _ in windows)
    # (+1: the probe forward pass that puts the layers in execution order)
    assert naive_calls.calls - 1 == naive.attrs["denoiser_calls"] == 2 * 4 * (1 + 12)
    assert cached_calls.calls - 1 == cached.attrs["denoiser_calls"] == 2 * (4 + 2 * 2 * per_layer_method)
    assert cached.attrs["denoiser_calls_uncached"] == naive.attrs["denoiser_calls"]

    # an independent reference: trace with the same edit, features computed here
    common = dict(samples=3, class_labels=[0, 1, 2], steps=4, batch_size=2, guidance_scale=2.0,
                  scheduler=scheduler, keep=())
    clean = np.clip(dft.trace(pipe, **common)["final"].values.astype(np.float64), 0, 1)
    edit = Edit(layer="up_blocks.0", method="mean", steps=range(1, 4))
    edited = np.clip(dft.trace(pipe, intervene=[edit], **common)["final"].values.astype(np.float64), 0, 1)
    expected = METRICS["delta_e2000"](edited, clean).mean()
    row = cached[(cached.layer == "up_blocks.0") & (cached.step_start == 1) & (cached.method == "ablation:mean")
                 & (cached.feature == "delta_e2000")]
    assert expected > 0.01
    np.testing.assert_allclose(row["effect"].item(), expected, rtol=1e-9)


@pytest.mark.parametrize("cache", [True, False])
def test_ablation_scan_equals_trace_with_the_edit_cell_by_cell(noop_pipe, cache):
    """Every cell of a scan is ``trace(intervene=[edit])``: its final images bit for bit, its effect."""
    pipe = noop_pipe
    run = dict(samples=3, class_labels=[0, 1, 2], steps=4, batch_size=2, guidance_scale=2.0, scheduler="ddpm")
    layers, windows, methods = ["down_blocks.1.resnets.0", "up_blocks.0"], [(0, 2), (2, 4), (1, 4)], ["zero", "mean"]
    frame = ablation_scan(pipe, layers=layers, windows=windows, method=methods, features="delta_e2000", cache=cache,
                          **run)
    scan = EditScan(pipe, RunOptions(**run), cache=cache)
    edits = [Edit(layer=layer, method=m, steps=range(*window)) for layer in layers for window in windows
             for m in methods]
    clean = scan.run_base(edits)
    np.testing.assert_array_equal(clean, as_images(dft.trace(pipe, keep=(), **run)["final"].values))
    for edit, images in zip(edits, scan.run_edits(edits), strict=True):
        traced = as_images(dft.trace(pipe, keep=(), intervene=[edit], **run)["final"].values)
        np.testing.assert_array_equal(images, traced)
        expected = METRICS["delta_e2000"](traced, clean).mean()
        row = frame[(frame.layer == edit.layer) & (frame.step_start == min(edit.steps))
                    & (frame.step_stop == max(edit.steps) + 1) & (frame.method == f"ablation:{edit.method}")]
        assert len(row) == 1 and expected > 1e-3
        np.testing.assert_allclose(row["effect"].item(), expected, rtol=1e-9)


def test_scans_take_every_run_option_of_trace(noop_pipe):
    """eta and the other options of trace reach the scans (one RunOptions); unknown names are refused."""
    run = dict(samples=2, class_labels=[0, 1], steps=3, eta=1.0, batch_size=1)
    scan = EditScan(noop_pipe, RunOptions(**run))
    with_eta = scan.run_base([])
    np.testing.assert_array_equal(with_eta, as_images(dft.trace(noop_pipe, keep=(), **run)["final"].values))
    without = as_images(dft.trace(noop_pipe, keep=(), **{**run, "eta": 0.0})["final"].values)
    assert np.abs(with_eta - without).max() > 1e-3  # DDIM's eta changed the run: it was not dropped
    with pytest.raises(TypeError, match="Did you mean 'eta'"):
        ablation_scan(noop_pipe, layers=[NOOP], windows=1, samples=2, steps=2, etta=0.5)
    with pytest.raises(TypeError, match="Run options: samples, prompts"):
        causal_trace(noop_pipe, layers=[NOOP], windows=1, samples=2, steps=2, lenght=3)


def test_causal_trace_planted_recovery(noop_pipe):
    pipe = noop_pipe
    frame = causal_trace(pipe, layers=["conv_in", NOOP, "conv_out"], windows=[(0, 1), (0, 3)], corrupt="condition",
                         features=["delta_e2000", "band_error:low"], samples=4, class_labels=[0, 1, 2, 3], steps=3,
                         guidance_scale=2.0, n_boot=100)
    assert set(frame["method"]) == {"causal_tracing"} and set(frame["corruption"]) == {"condition"}
    cell = frame.set_index(["layer", "step_start", "step_stop", "feature"])
    for feature in ("delta_e2000", "band_error:low"):
        assert cell.loc[("conv_out", 0, 3, feature), "corrupted"] > 0  # the corruption changed the image
        # the denoiser's whole output restored at every step is the clean trajectory: all recovered
        np.testing.assert_allclose(cell.loc[("conv_out", 0, 3, feature), ["effect", "ci_low", "ci_high"]], 1.0,
                                   atol=1e-9)
        # at step 0 both runs start from the same noise, so conv_in's clean output is the corrupted one
        np.testing.assert_allclose(cell.loc[("conv_in", 0, 1, feature), ["effect", "ci_low", "ci_high"]], 0.0,
                                   atol=1e-9)
        for window in ((0, 1), (0, 3)):  # a layer whose output is always 0
            np.testing.assert_allclose(cell.loc[(NOOP, *window, feature), "effect"], 0.0, atol=1e-9)
    top = rank(frame, feature="delta_e2000", method="causal_tracing", by="effect", top=1)
    assert (top.loc[0, "layer"], top.loc[0, "step_stop"]) == ("conv_out", 3)

    # the same patch through trace's own machinery gives the same recovery
    common = dict(samples=4, steps=3, guidance_scale=2.0, keep=())
    source = dft.trace(pipe, class_labels=[0, 1, 2, 3], record={"up_blocks.0": "full"}, record_steps=[1, 2], **common)
    clean = np.clip(source["final"].values.astype(np.float64), 0, 1)
    null = [pipe.null_class] * 4
    corrupted = np.clip(dft.trace(pipe, class_labels=null, **common)["final"].values.astype(np.float64), 0, 1)
    patch = Edit(layer="up_blocks.0", method="patch", steps=[1, 2], source=source)
    patched = np.clip(dft.trace(pipe, class_labels=null, intervene=[patch], **common)["final"].values, 0, 1)
    de = METRICS["delta_e2000"]
    expected = (de(patched.astype(np.float64), clean) - de(corrupted, clean)).mean() / (0 - de(corrupted, clean)).mean()
    mine = causal_trace(pipe, layers="up_blocks.0", windows=[(1, 3)], features="delta_e2000", samples=4,
                        class_labels=[0, 1, 2, 3], steps=3, guidance_scale=2.0, n_boot=50)
    np.testing.assert_allclose(mine["effect"].item(), expected, rtol=1e-9)


def test_causal_trace_noise_cache_and_structure(noop_pipe):
    kw = dict(layers=["conv_in", "mid_block", "conv_out"], windows=[(0, 1), (1, 3)], corrupt="noise",
              features=["delta_e2000", "edge_density"], samples=3, class_labels=[0, 1, 2], steps=3, batch_size=2,
              n_boot=50)
    cached = causal_trace(noop_pipe, **kw)
    naive = causal_trace(noop_pipe, cache=False, **kw)
    np.testing.assert_allclose(cached[STATS].to_numpy(), naive[STATS].to_numpy(), rtol=1e-9, atol=1e-12,
                               equal_nan=True)
    assert cached.attrs["denoiser_calls"] < naive.attrs["denoiser_calls"]
    # a UNet2DModel sees its input only through conv_in: restoring conv_in's output in a window restores the
    # whole denoiser output there (same labels and timesteps), exactly as restoring conv_out does
    rows = cached[cached.feature == "delta_e2000"].set_index(["layer", "step_start"])
    for start in (0, 1):
        np.testing.assert_allclose(rows.loc[("conv_in", start), STATS].to_numpy(dtype=float),
                                   rows.loc[("conv_out", start), STATS].to_numpy(dtype=float), rtol=1e-9)
    assert rows.loc[("conv_out", 0), "effect"] > 0.01


def test_scan_writes_clean_run_and_table(noop_pipe, tmp_path):
    path = tmp_path / "scan.zarr"
    kw = dict(layers=[NOOP, "up_blocks.0"], windows=2, features=["colorfulness"], samples=2, class_labels=[0, 1],
              steps=2)
    frame = ablation_scan(noop_pipe, store=path, **kw)
    run = open_run(path)
    assert run["final"].shape == (2, 3, 16, 16) and run["x0"].shape[1] == 2
    back = read_attribution(path, "ablation")
    np.testing.assert_array_equal(back.columns, frame.columns)
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            np.testing.assert_allclose(back[column], frame[column], equal_nan=True)
        else:
            assert back[column].tolist() == frame[column].tolist()
    with pytest.raises(RunExistsError):
        ablation_scan(noop_pipe, store=path, **kw)


def test_kept_images_are_the_edited_runs_and_travel_with_the_table(noop_pipe, tmp_path):
    """keep_images: the clean and every ablated run's final images of the first k samples, written beside the table."""
    import copy

    from denoisefeat.analyses.table import CellImages, read_cell_images, write_attribution

    run = dict(samples=3, class_labels=[0, 1, 2], steps=3, batch_size=2)
    path = tmp_path / "kept.zarr"
    frame = ablation_scan(noop_pipe, layers=["up_blocks.0"], windows=[(0, 2), (1, 3)], method=["zero", "mean"],
                          features="colorfulness", keep_images=2, store=path, **run)
    images = frame.attrs["images"]
    assert isinstance(images, CellImages) and images.n_samples == 2 and len(images.cells) == 4
    assert copy.deepcopy(frame).attrs["images"] is images and frame[frame.n > 0].attrs["images"] is images
    clean = as_images(dft.trace(noop_pipe, keep=(), **run)["final"].values)
    np.testing.assert_array_equal(images.clean, clean[:2].astype(np.float32))
    edit = Edit(layer="up_blocks.0", method="mean", steps=range(1, 3))
    edited = as_images(dft.trace(noop_pipe, keep=(), intervene=[edit], **run)["final"].values)
    cell = images.index("up_blocks.0", 1, 3, "ablation:mean")
    np.testing.assert_array_equal(images.edited[cell], edited[:2].astype(np.float32))
    assert np.abs(images.edited[cell] - images.clean).max() > 1e-3
    back = read_cell_images(path, "ablation")
    assert back.cells == images.cells and back.corrupted is None
    np.testing.assert_array_equal(back.edited[cell, 1], images.edited[cell, 1])  # one chunk read
    np.testing.assert_array_equal(back.clean[...], images.clean)
    assert open_run(path).store.damage(decode=True) == []
    write_attribution(path, _without_images(frame.copy()), name="plain")
    with pytest.raises(KeyError, match="holds no images"):
        read_cell_images(path, "plain")
    with pytest.raises(ValueError, match="keep_images=4 is more than the scan's 3 samples"):
        ablation_scan(noop_pipe, layers=[NOOP], windows=1, features="colorfulness", keep_images=4, **run)
    with pytest.raises(ValueError, match="non-negative integer"):
        ablation_scan(noop_pipe, layers=[NOOP], windows=1, features="colorfulness", keep_images=-1, **run)

    traced = causal_trace(noop_pipe, layers=["conv_out"], windows=[(0, 3)], features="delta_e2000", samples=2,
                          class_labels=[0, 1], steps=3, n_boot=20, keep_images=1)
    kept = traced.attrs["images"]
    np.testing.assert_allclose(kept.edited[0], kept.clean, atol=1e-6)  # conv_out restored everywhere: the clean run
    assert np.abs(kept.corrupted - kept.clean).max() > 1e-3


def _without_images(frame):
    frame.attrs = {k: v for k, v in frame.attrs.items() if k != "images"}
    return frame


def test_bad_inputs(noop_pipe):
    pipe = noop_pipe
    with pytest.raises(UnknownLayerError, match="Closest"):
        ablation_scan(pipe, layers=["mid_blok"], windows=1, samples=2, steps=2)
    with pytest.raises(UnknownLayerError, match="Closest"):
        causal_trace(pipe, layers=["conv_outt"], windows=1, samples=2, steps=2, class_labels=[0, 1])
    with pytest.raises(ValueError, match="Valid: edges, texture, shape, color"):
        resolve_features(["colour_ness"])
    with pytest.raises(ValueError, match="Did you mean 'edge_density'"):
        resolve_features("edge_densty")
    with pytest.raises(ValueError, match="empty"):
        step_windows([], 4)
    with pytest.raises(ValueError, match="Invalid window"):
        step_windows([(3, 3)], 4)
    with pytest.raises(ValueError, match="Invalid window"):
        ablation_scan(pipe, layers=[NOOP], windows=[(0, 5)], samples=2, steps=4)
    with pytest.raises(ValueError, match="between 1 and steps=4"):
        step_windows(5, 4)
    with pytest.raises(ValueError, match="zero, mean, resample"):
        ablation_scan(pipe, layers=[NOOP], windows=1, method="erase", samples=2, steps=2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        ablation_scan(pipe, layers=[NOOP], windows=1, samples=1, steps=2)
    with pytest.raises(ValueError, match="condition, noise"):
        causal_trace(pipe, layers=[NOOP], windows=1, corrupt="blur", samples=2, steps=2)
    with pytest.raises(ValueError, match="equal the clean ones"):  # unconditional samples, null-class corruption
        causal_trace(pipe, layers=[NOOP], windows=1, samples=2, steps=2)
    with pytest.raises(ValueError, match="unconditional"):
        causal_trace(dft.load_pipeline("tiny-unet"), layers=["conv_in"], windows=1, samples=2, steps=2)
    with pytest.raises(ValueError, match="other seeds"):
        causal_trace(pipe, layers=[NOOP], windows=1, corrupt="noise", corrupt_seed=0, samples=2, steps=2)
    with pytest.raises(ValueError, match="corrupt='noise'"):
        causal_trace(pipe, layers=[NOOP], windows=1, corrupt_seed=5, class_labels=[0, 1], samples=2, steps=2)
    assert step_windows(3, 7) == [(0, 3), (3, 5), (5, 7)]
    expanded = resolve_features(["color", "delta_e2000", "object_color_distance"])
    assert expanded == [*FEATURE_GROUPS["color"], "delta_e2000"]
    assert resolve_features("bands") == ["band_error:low", "band_error:mid", "band_error:high"]


@pytest.mark.parametrize("scheduler", ["ddpm", "dpm++"])  # stochastic DDPM, multistep DPM-Solver (tiled history)
def test_a_lane_does_not_depend_on_the_other_lanes(noop_pipe, scheduler):
    """Each lane of a batched run is its edit's run in a batch of that size, bit for bit, whatever the other
    lanes do: no edit, mean, noise or generator leaks across lanes (prefix start, CFG, two sample chunks)."""
    import contextlib

    from denoisefeat.hooks import intervene

    scan = EditScan(noop_pipe, RunOptions.of(dict(class_labels=[0, 1, 2], steps=4, batch_size=2, guidance_scale=2.0,
                                                  scheduler=scheduler), caller="test"))
    edits = [Edit("mid_block", "mean", steps=range(1, 3)), Edit("up_blocks.0", "resample", steps=range(1, 4)),
             Edit("down_blocks.1.resnets.0", "zero", steps=range(1, 2)),
             Edit("up_blocks.0", "noise", value=0.5, steps=range(1, 4))]
    scan.run_base(edits)

    def lanes_of(group):
        with contextlib.ExitStack() as hooks:
            for lane, edit in enumerate(group):
                hooks.enter_context(intervene(noop_pipe, [edit], clock=scan.loop.clock, lane=lane))
            return [scan.loop.run(chunk, start=scan._prefixes.state(chunk, 1), lanes=len(group)).numpy()
                    .reshape(len(group), chunk.stop - chunk.start, -1) for chunk in scan.chunks]

    mixed = lanes_of(edits)
    for lane, edit in enumerate(edits):
        alone = lanes_of([edit] * len(edits))  # the same batch size, every lane this edit
        for chunk_mixed, chunk_alone in zip(mixed, alone, strict=True):
            np.testing.assert_array_equal(chunk_mixed[lane], chunk_alone[0])
            np.testing.assert_array_equal(chunk_alone[0], chunk_alone[-1])


@pytest.mark.parametrize("scheduler", [None, "ddpm", "dpm++"])  # DDIM, stochastic DDPM, multistep DPM-Solver
def test_batched_edited_runs_equal_one_at_a_time(noop_pipe, scheduler):
    """Edited runs sharing one denoiser batch (lanes) make each cell's final images of one run at a time, to
    the denoiser's batch-size rounding, and the same table to that rounding, in fewer denoiser calls."""
    run = dict(class_labels=[0, 1, 2], steps=4, batch_size=2, guidance_scale=2.0, scheduler=scheduler)
    edits = [Edit(layer, method, steps=range(a, b)) for layer in ["down_blocks.1.resnets.0", "up_blocks.0"]
             for a, b in [(0, 2), (2, 4), (1, 4)] for method in ["zero", "mean", "resample"]]
    finals = {}
    for lanes in (1, 4):
        scan = EditScan(noop_pipe, RunOptions.of(dict(run), caller="test"), lanes=lanes)
        scan.run_base(edits)
        finals[lanes] = list(scan.run_edits(edits))
        assert scan.calls == scan.planned_calls(edits)
    # 6 edits per start (2 layers x 3 methods) -> 2 batches of <= 4 lanes per start, 2 sample chunks
    assert scan.calls == 2 * (4 + 2 * sum(4 - s for s in (0, 2, 1)))
    clean = as_images(scan.base["final"].values)
    for one, batched in zip(finals[1], finals[4], strict=True):
        assert np.abs(one - clean).max() > 1e-2  # the edit does something
        np.testing.assert_allclose(batched, one, rtol=0, atol=1e-4)

    kw = dict(layers=["down_blocks.1.resnets.0", "up_blocks.0"], windows=[(0, 2), (2, 4), (1, 4)],
              method=["zero", "mean", "resample"], features=["color", "delta_e2000", "band_error:mid"], **run)
    one, batched = ablation_scan(noop_pipe, lanes=1, **kw), ablation_scan(noop_pipe, lanes=4, **kw)
    assert (batched[["feature", "layer", "method", "n"]] == one[["feature", "layer", "method", "n"]]).all().all()
    for column in ("effect", "effect_std", "specificity", "ci_low", "ci_high", "p"):
        np.testing.assert_allclose(batched[column], one[column], rtol=2e-2, atol=1e-6, err_msg=column)
    np.testing.assert_allclose(batched["disruption"], one["disruption"], rtol=1e-5)
    assert batched.attrs["denoiser_calls"] < one.attrs["denoiser_calls"]
    assert batched.attrs["denoiser_calls_uncached"] == one.attrs["denoiser_calls_uncached"]


def test_batched_patching_equals_one_at_a_time(noop_pipe):
    kw = dict(layers=["down_blocks.1.resnets.0", "up_blocks.0"], windows=2, features=["color", "delta_e2000"],
              class_labels=[0, 1, 2], steps=4, batch_size=2, guidance_scale=2.0, n_boot=100)
    one = causal_trace(noop_pipe, lanes=1, **kw)
    batched = causal_trace(noop_pipe, lanes=3, **kw)
    assert (batched[["feature", "layer", "step_start"]] == one[["feature", "layer", "step_start"]]).all().all()
    for column in ("effect", "restored", "disruption"):
        np.testing.assert_allclose(batched[column], one[column], rtol=2e-2, atol=1e-6, err_msg=column)
    assert batched.attrs["denoiser_calls"] < one.attrs["denoiser_calls"]


def test_lanes_are_refused_where_they_cannot_work(noop_pipe):
    with pytest.raises(ValueError, match="lanes must be a positive integer"):
        ablation_scan(noop_pipe, layers=["mid_block"], windows=1, lanes=0, samples=2, steps=2)
    scan = EditScan(noop_pipe, RunOptions.of(dict(samples=2, steps=2), caller="test"))
    with dft.hooks.record(noop_pipe, {"mid_block": "channel_mean"}, clock=scan.loop.clock):
        with pytest.raises(ValueError, match="record cannot split"):
            scan.loop.run(slice(0, 2), lanes=2)
    with dft.hooks.intervene(noop_pipe, [Edit("mid_block", "zero")], clock=scan.loop.clock):
        with pytest.raises(ValueError, match=r"give intervene\(\.\.\., lane=i\)"):
            scan.loop.run(slice(0, 2), lanes=2)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl", "tiny-dit", "tiny-sd3", "tiny-flux", "tiny-pixart"])
def test_lanes_run_every_family(tiny_pipes, name):
    """Two copies of a chunk in one batch (CFG halves, prompts, pooled embeddings, position ids, masks tiled)
    each make the one-copy trajectory."""
    pipe = tiny_pipes[name] if name in tiny_pipes else dft.load_pipeline(name)
    condition = {"class_labels": [1, 2]} if name == "tiny-dit" else {"prompts": ["a red square", "a blue circle"]}
    scan = EditScan(pipe, RunOptions.of(dict(steps=2, guidance_scale=3.0, **condition), caller="test"))
    one = scan.loop.run(slice(0, 2)).numpy()
    both = scan.loop.run(slice(0, 2), lanes=2).numpy()
    np.testing.assert_array_equal(both[:2], both[2:])
    np.testing.assert_allclose(both[:2], one, rtol=0, atol=1e-4)


def test_causal_trace_overwrite_keeps_the_old_store_when_the_table_write_fails(noop_pipe, tmp_path, monkeypatch):
    """The clean run replaces the old store only together with its table: an error in between loses nothing."""
    from denoisefeat import store as store_module
    from denoisefeat.analyses.table import read_attribution

    path = tmp_path / "traced.zarr"
    kw = dict(layers=["conv_out"], windows=[(0, 2)], features="delta_e2000", samples=2, class_labels=[0, 1], steps=2,
              n_boot=20, store=path)
    old = causal_trace(noop_pipe, seed=0, **kw)
    def full_disk(*args):
        raise OSError(28, "disk full")

    monkeypatch.setattr(store_module, "_write_column", full_disk)
    with pytest.raises(OSError, match="disk full"):
        causal_trace(noop_pipe, seed=5, overwrite=True, **kw)
    assert open_run(path).attrs["seeds"] == [0, 1]
    assert read_attribution(path, "causal_tracing")["effect"].tolist() == old["effect"].tolist()
    assert not (tmp_path / ".traced.zarr.new").exists()
    monkeypatch.undo()
    causal_trace(noop_pipe, seed=5, overwrite=True, **kw)
    assert open_run(path).attrs["seeds"] == [5, 6] and not (tmp_path / ".traced.zarr.new").exists()
