"""Hook managers: names, recording against an independent hook, interventions, patching, CFG, cleanup."""

import numpy as np
import pytest
import torch

from denoisefeat.hooks import Edit, UnknownLayerError, intervene, list_layers, record, resolve_layers, top_level_layers
from denoisefeat.hooks.reducers import get_reducer
from denoisefeat.models import denoiser_of
from denoisefeat.trajectory import trace


@pytest.mark.parametrize("name", ["tiny-unet", "tiny-sd", "tiny-sdxl", "tiny-dit"])
def test_listed_names_equal_named_modules(tiny_pipes, name):
    pipe = tiny_pipes[name]
    infos = list_layers(pipe)
    assert [i.name for i in infos] == [n for n, _ in denoiser_of(pipe).named_modules() if n]
    ran = [i for i in infos if i.order is not None]
    assert len(ran) > len(infos) // 2
    tops = top_level_layers(pipe)
    assert all(t in {i.name for i in infos} for t in tops)


def test_shapes_levels_kind_and_globs(tiny_pipes):
    pipe = tiny_pipes["tiny-sd"]
    by_name = {i.name: i for i in list_layers(pipe)}
    assert by_name["conv_in"].output_shape == (8, 16, 16) and by_name["conv_in"].level == 0
    assert by_name["mid_block"].level == 1
    attentions = list_layers(pipe, kind="attentions")
    assert attentions and all("attentions" in i.name.split(".") for i in attentions)
    assert [i.name for i in list_layers(pipe, pattern="down_blocks.*.resnets.*")] == [
        "down_blocks.0.resnets.0", "down_blocks.1.resnets.0"]
    assert resolve_layers(pipe, "up_blocks.**.attn2") == [
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.0.attentions.1.transformer_blocks.0.attn2"]
    order = [by_name[n].order for n in top_level_layers(pipe)]
    assert order == sorted(order), "top-level layers come in network order"


def test_unknown_layer_lists_close_matches(tiny_pipes):
    with pytest.raises(UnknownLayerError, match=r"no layer 'mid_blok'.*Closest: mid_block"):
        resolve_layers(tiny_pipes["tiny-unet"], "mid_blok")
    with pytest.raises(UnknownLayerError):
        trace(tiny_pipes["tiny-unet"], samples=1, steps=2, record={"down_blocks.9": "full"})


def test_recorded_full_activations_equal_an_independent_hook(tiny_pipes):
    pipe = tiny_pipes["tiny-unet"]
    seen = []
    module = dict(pipe.unet.named_modules())["down_blocks.1"]
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out[0].detach().clone()))
    try:
        run = trace(pipe, samples=2, steps=4, batch_size=2, record={"down_blocks.1": ["full", "channel_mean"]})
    finally:
        handle.remove()
    full = run.acts("down_blocks.1", "full")
    assert full.dims == ("sample", "step", "channel", "y", "x")
    expected = torch.stack(seen, dim=1).numpy()
    np.testing.assert_array_equal(full.values, expected)
    np.testing.assert_allclose(run.acts("down_blocks.1", "channel_mean").values, expected.mean(axis=(-2, -1)),
                               rtol=1e-5, atol=1e-6)
    assert list(full.coords["timestep"].values) == list(run.dataset["timestep"].values)


def test_reducers_have_the_documented_shapes():
    x = torch.randn(2, 6, 8, 8)
    shapes = {name: tuple(get_reducer(name)(x).shape) for name in
              ["full", "channel_mean", "channel_std", "spatial_energy", "spatial_mean_map", "band_energy",
               "random_projection(3)"]}
    assert shapes == {"full": (2, 6, 8, 8), "channel_mean": (2, 6), "channel_std": (2, 6), "spatial_energy": (2, 8, 8),
                      "spatial_mean_map": (2, 8, 8), "band_energy": (2, 6, 3), "random_projection(3)": (2, 3, 8, 8)}
    torch.testing.assert_close(get_reducer("spatial_energy")(x), x.norm(dim=1))
    torch.testing.assert_close(get_reducer("band_energy")(x).sum(-1), x.pow(2).sum((-2, -1)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Did you mean 'channel_mean'"):
        get_reducer("chanel_mean")


def test_cfg_branches_are_split_and_labelled(tiny_pipes):
    pipe = tiny_pipes["tiny-sd"]
    seen = []
    module = dict(pipe.unet.named_modules())["mid_block"]
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        run = trace(pipe, prompts=["a", "b"], steps=3, guidance_scale=5.0, record={"mid_block": "channel_mean"})
    finally:
        handle.remove()
    acts = run.acts("mid_block")
    assert acts.dims == ("sample", "branch", "step", "channel")
    assert list(acts.coords["branch"].values) == ["uncond", "cond"]
    doubled = torch.stack(seen, dim=1).mean((-2, -1)).numpy()  # (2B, step, channel), SD order: uncond, cond
    np.testing.assert_allclose(acts.sel(branch="uncond").values, doubled[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts.sel(branch="cond").values, doubled[2:], rtol=1e-5, atol=1e-6)


def test_dit_branch_order_is_normalised(tiny_pipes):
    """DiT puts the conditional half first; stored branches are still (uncond, cond)."""
    pipe = tiny_pipes["tiny-dit"]
    run = trace(pipe, class_labels=[3], steps=2, guidance_scale=4.0, record={"transformer_blocks.1": "channel_mean"})
    acts = run.acts("transformer_blocks.1")
    assert acts.dims == ("sample", "branch", "step", "channel")
    with record(pipe, {"transformer_blocks.1": "channel_mean"}) as rec:
        pipe.transformer(**_dit_inputs(pipe, labels=[1000]))  # the null class alone = the uncond branch
    uncond_step0 = rec.acts("transformer_blocks.1").values[0, 0]
    assert not np.allclose(acts.sel(branch="cond").values[0, 0], acts.sel(branch="uncond").values[0, 0])
    assert uncond_step0.shape == acts.sel(branch="uncond").values[0, 0].shape


def _dit_inputs(pipe, labels):
    x = torch.randn(len(labels), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return {"hidden_states": x, "timestep": torch.full((len(labels),), 999), "class_labels": torch.tensor(labels)}


def test_identity_is_bit_identical_and_zero_ablation_changes_the_output(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    clean = trace(pipe, class_labels=[0, 1], steps=4).dataset["final"].values
    same = trace(pipe, class_labels=[0, 1], steps=4, intervene=Edit("mid_block", "identity")).dataset
    np.testing.assert_array_equal(same["final"].values, clean)
    zeroed = trace(pipe, class_labels=[0, 1], steps=4, intervene=Edit("mid_block", "zero")).dataset
    assert np.abs(zeroed["final"].values - clean).max() > 1e-3


def test_edits_respect_steps_and_samples(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    clean = trace(pipe, class_labels=[0, 1, 2], steps=4, record={"mid_block": "full"})
    edit = Edit("mid_block", "scale", value=0.0, steps=[2, 3], samples=[1])
    run = trace(pipe, class_labels=[0, 1, 2], steps=4, record={"mid_block": "full"}, intervene=edit)
    a, b = clean.acts("mid_block").values, run.acts("mid_block").values
    np.testing.assert_array_equal(a[:, :2], b[:, :2])           # steps before the window: untouched
    np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])         # other samples: untouched
    assert np.all(b[1, 2:] == 0)                                 # the edited cells: zero
    described = run.attrs["extra"]["interventions"][0]
    assert described["method"] == "scale" and described["steps"] == [2, 3] and described["samples"] == [1]


def test_patching_every_output_from_a_source_run_reproduces_it(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    layers = top_level_layers(pipe)
    source = trace(pipe, class_labels=[0, 1], steps=4, seed=3, record={name: "full" for name in layers})
    patched = trace(pipe, class_labels=[3, 2], steps=4, seed=3,
                    intervene=[Edit(name, "patch", source=source) for name in layers])
    np.testing.assert_array_equal(patched.dataset["final"].values, source.dataset["final"].values)
    unpatched = trace(pipe, class_labels=[3, 2], steps=4, seed=3)
    assert np.abs(unpatched.dataset["final"].values - source.dataset["final"].values).max() > 1e-3


def test_patch_source_with_other_seeds_or_without_full_is_refused(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    source = trace(pipe, class_labels=[0, 1], steps=2, seed=0, record={"mid_block": ["full", "channel_mean"],
                                                                      "conv_in": "channel_mean"})
    with pytest.raises(ValueError, match="same seeds"):
        trace(pipe, class_labels=[0, 1], steps=2, seed=5, intervene=Edit("mid_block", "patch", source=source))
    with pytest.raises(ValueError, match="without the 'full' reducer"):
        trace(pipe, class_labels=[0, 1], steps=2, intervene=Edit("conv_in", "patch", source=source))


def test_hooks_are_removed_after_an_exception(tiny_pipes):
    pipe = tiny_pipes["tiny-unet"]
    modules = [m for _, m in pipe.unet.named_modules()]
    before = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules]
    with pytest.raises(RuntimeError, match="boom"):
        with record(pipe, {"mid_block": "full"}), intervene(pipe, Edit("down_blocks.0", "zero")):
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with record(pipe, "mid_block"):
            raise KeyboardInterrupt
    after = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules]
    assert before == after


def test_standalone_record_counts_denoiser_calls(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    with record(pipe, {"mid_block": "channel_std"}, steps=[0, 2]) as rec:
        pipe([0, 1], num_inference_steps=4)
    acts = rec.acts("mid_block")
    assert acts.dims == ("sample", "step", "channel") and list(acts.coords["step"].values) == [0, 2]


def test_record_steps_subset_in_trace(tiny_pipes):
    run = trace(tiny_pipes["tiny-unet"], samples=2, steps=6, record={"mid_block": "channel_mean"}, record_steps=[1, 4])
    values = run.acts("mid_block").values
    assert np.isnan(values[:, [0, 2, 3, 5]]).all() and np.isfinite(values[:, [1, 4]]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"record": {"mid_block": "nope"}}, ValueError, "Unknown reducer"),
        ({"record": {"mid_block": "full"}, "record_steps": [9]}, ValueError, "outside the run's steps"),
        ({"intervene": Edit("mid_block", "zero", steps=[7])}, ValueError, "the run has 3 steps"),
        ({"intervene": Edit("mid_block", "zero", samples=[4])}, ValueError, "the run has 2"),
    ],
)
def test_bad_hook_input(tiny_pipes, kwargs, error, message):
    with pytest.raises(error, match=message):
        trace(tiny_pipes["tiny-unet"], samples=2, steps=3, **kwargs)


def test_bad_edit_definitions():
    with pytest.raises(ValueError, match="Did you mean 'zero'"):
        Edit("mid_block", "zeros")
    with pytest.raises(ValueError, match="needs value"):
        Edit("mid_block", "scale")
    with pytest.raises(ValueError, match="needs source"):
        Edit("mid_block", "patch")


@pytest.mark.parametrize(
    ("name", "kwargs", "spec"),
    [
        ("tiny-class-unet", {"class_labels": [0, 1, 2], "guidance_scale": 2.0},
         {"down_blocks.1": ["channel_mean", "spatial_energy"], "mid_block": "full", "up_blocks.0": "band_energy"}),
        ("tiny-sd", {"prompts": ["a", "b"]},
         {"down_blocks.1.attentions.0": "full", "mid_block": "channel_std", "up_blocks.0.attentions.1": "full"}),
    ],
)
def test_nnsight_backend_gives_identical_tensors(tiny_pipes, name, kwargs, spec):
    pipe = tiny_pipes[name]
    edits = [Edit("mid_block", "scale", value=0.5, steps=[1, 2]),
             Edit("down_blocks.0", "noise", value=0.3, samples=[1])]
    runs = [trace(pipe, steps=3, record=spec, intervene=edits, backend=backend, **kwargs)
            for backend in ("torch", "nnsight")]
    for array in ("x0", "final"):
        np.testing.assert_array_equal(runs[0].dataset[array].values, runs[1].dataset[array].values)
    for layer in runs[0].layers():
        for reducer in ([spec[layer]] if isinstance(spec[layer], str) else spec[layer]):
            np.testing.assert_array_equal(runs[0].acts(layer, reducer).values, runs[1].acts(layer, reducer).values)
    assert not any(len(m._forward_hooks) for m in denoiser_of(pipe).modules()), "no hooks left behind"
