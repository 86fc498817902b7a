"""SD3, Flux and PixArt-Σ in the one loop: final == the pipeline's own output, x̂0 closed forms, CFG split,
layer names, hooks and edits on transformer blocks, resume, loading from a folder, bad input."""

import numpy as np
import pytest
import torch

from denoisefeat import schedulers as S
from denoisefeat.hooks import Edit, list_layers, record
from denoisefeat.models import denoiser_of, load_pipeline, pipeline_family
from denoisefeat.store import open_run
from denoisefeat.trajectory import trace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4
SIZE = {"height": 32, "width": 32}  # FluxPipeline's own default is 256 px
PROMPTS = ["a red square", "a blue circle", ""]
FAMILIES = {"tiny-sd3": "stable-diffusion-3", "tiny-flux": "flux", "tiny-pixart": "pixart"}


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _pipeline_output(name, pipe, attrs, steps=STEPS):
    extra = {"use_resolution_binning": False} if name == "tiny-pixart" else {}  # its tiny size has no bin
    out = pipe(list(attrs["prompts"]), generator=_generators(attrs["seeds"]), num_inference_steps=steps,
               guidance_scale=attrs["guidance_scale"], output_type="np", **SIZE, **extra).images
    return out.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_final_equals_pipeline_output(tiny_pipes, name):
    pipe = tiny_pipes[name]
    assert pipeline_family(pipe) == FAMILIES[name]
    run = trace(pipe, prompts=PROMPTS, steps=STEPS, seed=10, batch_size=3, **SIZE)
    ds = run.dataset
    expected = _pipeline_output(name, pipe, run.attrs)
    np.testing.assert_allclose(ds["final"].values, expected, atol=2e-5)
    latent = (denoiser_of(pipe).config.in_channels // (4 if name == "tiny-flux" else 1), 16, 16)
    assert ds["xt"].shape == ds["x0"].shape == (3, STEPS, *latent), "x_t and x̂0 are latent images (Flux unpacked)"
    assert ds["images"].shape == (3, STEPS, 3, 32, 32)
    assert (ds["images"].values >= 0).all() and (ds["images"].values <= 1).all()
    # the schedules end at zero noise: the last step's x̂0 is the pipeline's output
    np.testing.assert_allclose(ds["images"].values[:, -1], expected, atol=2e-5)
    # the stored schedule is the one the pipeline's __call__ set on its own scheduler (shift, dynamic shift)
    np.testing.assert_allclose(ds["sigma"].values, pipe.scheduler.sigmas[:STEPS].numpy(), rtol=1e-6)


def test_flow_schedules_follow_the_pipeline_shift(tiny_pipes):
    """SD3: static shift 3 (σ' = 3σ / (1 + 2σ)); Flux: its sigmas linspace(1, 1/N, N) shifted by μ(image tokens)."""
    sd3 = trace(tiny_pipes["tiny-sd3"], prompts=["x"], steps=STEPS, keep=(), **SIZE)
    shift = lambda sigma: 3 * sigma / (1 + 2 * sigma)  # noqa: E731
    sigma = np.linspace(1.0, shift(1 / 1000), STEPS)  # from the shifted training sigmas' ends, shifted again
    np.testing.assert_allclose(sd3.dataset["sigma"].values, shift(sigma), rtol=1e-5)
    assert "timestep_options" not in sd3.attrs
    flux = trace(tiny_pipes["tiny-flux"], prompts=["x"], steps=STEPS, keep=(), **SIZE)
    options = flux.attrs["timestep_options"]
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (64 - 256)  # 8×8 packed tokens of a 32-px image
    assert options["mu"] == pytest.approx(mu)
    base = np.linspace(1.0, 1.0 / STEPS, STEPS)
    np.testing.assert_allclose(options["sigmas"], base)
    np.testing.assert_allclose(flux.dataset["sigma"].values, np.exp(mu) / (np.exp(mu) + 1 / base - 1), rtol=1e-5)
    # the schedule is rebuilt from the store's attributes alone (the frequency and SNR analyses do)
    levels = S.loop_noise_levels(flux.attrs["scheduler_class"], flux.attrs["scheduler_config"], STEPS,
                                 timestep_options=options)
    np.testing.assert_allclose([lv.noise for lv in levels], flux.dataset["sigma"].values, rtol=1e-6)
    np.testing.assert_allclose([lv.alpha_bar for lv in levels], flux.dataset["alpha_bar"].values, rtol=1e-6)


def _oracle(pipe, target: torch.Tensor):
    """The pipeline with its denoiser replaced by one that predicts exactly what a perfect model would for ``target``.

    Flow matching (SD3, Flux): x_t = (1 − σ)·x0 + σ·ε, velocity v = ε − x0 = (x_t − x0) / σ.
    PixArt (ε-prediction, learned variance): ε = (x_t − √ᾱ·x0) / √(1 − ᾱ), padded with variance channels.
    """
    base = denoiser_of(pipe)
    name = type(pipe).__name__
    alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
    packed = pipe._pack_latents(target, *target.shape) if name == "FluxPipeline" else target

    class Oracle(type(base)):
        def forward(self, hidden_states, timestep=None, return_dict=True, **_):
            if name == "PixArtSigmaPipeline":
                a = alphas[timestep.long()].to(hidden_states.dtype)[:, None, None, None]
                eps = (hidden_states - a.sqrt() * packed) / (1 - a).sqrt()
                return (torch.cat([eps, torch.zeros_like(eps)], dim=1),)
            sigma = timestep.to(torch.float64) / (1.0 if name == "FluxPipeline" else 1000.0)
            sigma = sigma.reshape(-1, *([1] * (hidden_states.ndim - 1)))
            return (((hidden_states.double() - packed.double()) / sigma).to(hidden_states.dtype),)

    oracle = Oracle.from_config(base.config).eval()
    return type(pipe)(**{**pipe.components, "transformer": oracle})


@pytest.mark.parametrize("name", list(FAMILIES))
def test_x0_is_exact_for_a_perfect_denoiser(tiny_pipes, name):
    """x̂0 = x_t − σ·v (flow) and (x_t − √(1−ᾱ)·ε̂)/√ᾱ (PixArt's DPM-Solver) recover the planted clean latent."""
    pipe = tiny_pipes[name]
    channels = denoiser_of(pipe).config.in_channels // (4 if name == "tiny-flux" else 1)
    target = torch.linspace(-0.9, 0.9, channels * 16 * 16).reshape(1, channels, 16, 16)
    run = trace(_oracle(pipe, target), prompts=["a", "b"], steps=6, guidance_scale=3.0, keep=("xt", "x0"), **SIZE)
    x0 = run.dataset["x0"].values
    np.testing.assert_allclose(x0, np.broadcast_to(target.numpy()[:, None], x0.shape), atol=1e-4)
    if name != "tiny-pixart":  # flow matching: x_t = (1 − σ)·x0 + σ·ε moves straight to x0
        xt, sigma = run.dataset["xt"].values, run.dataset["sigma"].values
        eps = xt[:, :1]  # x_0 of the loop is pure noise (σ = 1)
        np.testing.assert_allclose(xt, (1 - sigma[None, :, None, None, None]) * x0 + sigma[None, :, None, None, None]
                                   * eps, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-pixart"])
def test_cfg_branches_are_split_and_labelled(tiny_pipes, name):
    """Under guidance, step 0 of the uncond branch is the unguided run of the empty prompt, cond the prompt's own."""
    pipe, layer = tiny_pipes[name], "transformer_blocks.0"
    guided = trace(pipe, prompts=["a red square"], steps=2, guidance_scale=5.0, record={layer: "channel_mean"},
                   keep=(), **SIZE).acts(layer)
    assert guided.dims == ("sample", "branch", "step", "channel")
    assert list(guided.coords["branch"].values) == ["uncond", "cond"]
    for prompt, branch in (("a red square", "cond"), ("", "uncond")):
        plain = trace(pipe, prompts=[prompt], steps=2, guidance_scale=1.0, record={layer: "channel_mean"},
                      keep=(), **SIZE).acts(layer)
        assert plain.dims == ("sample", "step", "channel")
        np.testing.assert_allclose(guided.sel(branch=branch).values[:, 0], plain.values[:, 0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(guided.sel(branch="cond").values[:, 0], guided.sel(branch="uncond").values[:, 0])


def test_flux_guidance_is_an_embedding_not_a_batch(tiny_pipes):
    pipe = tiny_pipes["tiny-flux"]
    runs = [trace(pipe, prompts=["a"], steps=2, guidance_scale=g, record={"transformer_blocks.0": "channel_mean"},
                  keep=(), **SIZE) for g in (1.0, 5.0)]
    assert runs[1].acts("transformer_blocks.0").dims == ("sample", "step", "channel"), "no CFG branch axis"
    assert np.abs(runs[0].dataset["final"].values - runs[1].dataset["final"].values).max() > 1e-4


@pytest.mark.parametrize(("name", "layer"), [("tiny-sd3", "transformer_blocks.1"),
                                              ("tiny-flux", "single_transformer_blocks.0"),
                                              ("tiny-flux", "transformer_blocks.0"),
                                              ("tiny-pixart", "transformer_blocks.1")])
def test_record_and_intervene_on_a_transformer_block(tiny_pipes, name, layer):
    """Joint blocks return (text, image): hooks see the block's 64 image tokens, and edits change the image."""
    pipe = tiny_pipes[name]
    module = dict(denoiser_of(pipe).named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append((out[1] if isinstance(out, tuple) else out)))
    try:
        run = trace(pipe, prompts=["a", "b"], steps=3, guidance_scale=1.0, record={layer: "full"}, keep=(), **SIZE)
    finally:
        handle.remove()
    acts = run.acts(layer, "full")
    assert acts.dims == ("sample", "step", "channel", "token") and acts.sizes["token"] == 64
    np.testing.assert_allclose(acts.values, torch.stack(seen, 1).transpose(2, 3).numpy(), rtol=1e-6, atol=1e-6)
    clean = run.dataset["final"].values
    same = trace(pipe, prompts=["a", "b"], steps=3, guidance_scale=1.0, intervene=Edit(layer, "identity"),
                 keep=(), **SIZE)
    np.testing.assert_array_equal(same.dataset["final"].values, clean)
    edited = trace(pipe, prompts=["a", "b"], steps=3, guidance_scale=1.0, intervene=Edit(layer, "zero", steps=[1, 2]),
                   record={layer: "full"}, keep=(), **SIZE)
    assert np.abs(edited.dataset["final"].values - clean).max() > 1e-4
    values = edited.acts(layer, "full").values
    assert (values[:, 1:] == 0).all() and np.array_equal(values[:, 0], acts.values[:, 0]), "recorded after the edit"


@pytest.mark.parametrize(("name", "layer"), [("tiny-sd3", "transformer_blocks.1"),
                                              ("tiny-flux", "single_transformer_blocks.0")])
def test_inputs_of_blocks_called_with_keywords_only(tiny_pipes, name, layer):
    """diffusers calls the joint blocks with keywords only: ``inputs=True`` reads their ``hidden_states``."""
    pipe = tiny_pipes[name]
    module = dict(denoiser_of(pipe).named_modules())[layer]
    seen = []
    handle = module.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].clone()),
                                              with_kwargs=True)
    try:
        with record(pipe, layer, inputs=True) as rec:
            pipe(["a"], num_inference_steps=2, guidance_scale=1.0, output_type="latent", **SIZE)
    finally:
        handle.remove()
    acts = rec.acts(layer)
    assert acts.sizes["step"] == 2 and len(seen) == 2
    np.testing.assert_array_equal(acts.values, torch.stack(seen, 1).transpose(2, 3).numpy())


@pytest.mark.parametrize(("name", "layer"), [("tiny-sd3", "transformer_blocks.1"),
                                              ("tiny-flux", "single_transformer_blocks.0")])
def test_nnsight_backend_gives_identical_tensors_on_joint_blocks(tiny_pipes, name, layer):
    pipe = tiny_pipes[name]
    edits = [Edit(layer, "scale", value=0.5, steps=[1])]
    runs = [trace(pipe, prompts=["a", "b"], steps=3, record={layer: "channel_mean"}, intervene=edits, backend=backend,
                  keep=("x0",), **SIZE) for backend in ("torch", "nnsight")]
    for array in ("x0", "final"):
        np.testing.assert_array_equal(runs[0].dataset[array].values, runs[1].dataset[array].values)
    np.testing.assert_array_equal(runs[0].acts(layer).values, runs[1].acts(layer).values)


def test_sd3_without_its_t5_encoder(tiny_pipes):
    """The documented subset: SD3 without text_encoder_3 conditions on the CLIP tokens (T5 part zero)."""
    base = tiny_pipes["tiny-sd3"]
    pipe = type(base)(**{**base.components, "text_encoder_3": None, "tokenizer_3": None})
    pipe.set_progress_bar_config(disable=True)
    run = trace(pipe, prompts=["a red square", "b"], steps=3, seed=4, keep=(), **SIZE)
    expected = _pipeline_output("tiny-sd3", pipe, run.attrs, steps=3)
    np.testing.assert_allclose(run.dataset["final"].values, expected, atol=2e-5)
    full = trace(base, prompts=["a red square", "b"], steps=3, seed=4, keep=(), **SIZE)
    assert np.abs(full.dataset["final"].values - run.dataset["final"].values).max() > 1e-4


@pytest.mark.parametrize("name", list(FAMILIES))
def test_listed_names_equal_named_modules(tiny_pipes, name):
    pipe = tiny_pipes[name]
    infos = list_layers(pipe)
    assert [i.name for i in infos] == [n for n, _ in denoiser_of(pipe).named_modules() if n]
    assert sum(i.order is not None for i in infos) > len(infos) // 2, "the shape probe runs the transformer"
    with record(pipe, "transformer_blocks.0") as rec:  # around the pipeline's own call: one step per call
        pipe(["a"], num_inference_steps=2, guidance_scale=1.0, output_type="latent", **SIZE,
             **({"use_resolution_binning": False} if name == "tiny-pixart" else {}))
    assert rec.acts("transformer_blocks.0").sizes["step"] == 2


class _Killed(RuntimeError):
    pass


def test_killed_sd3_run_resumes_to_the_uninterrupted_result(tiny_pipes, tmp_path):
    pipe = tiny_pipes["tiny-sd3"]
    args = {"prompts": ["a", "b", "c", "d"], "steps": 3, "batch_size": 2, **SIZE}
    reference = trace(pipe, **args, store=tmp_path / "ref.zarr").dataset
    calls = {"n": 0}

    def die(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 5:  # in the second sample chunk
            raise _Killed("simulated kill")

    handle = pipe.transformer.register_forward_hook(die)
    try:
        with pytest.raises(_Killed):
            trace(pipe, **args, store=tmp_path / "run.zarr")
    finally:
        handle.remove()
    assert open_run(tmp_path / "run.zarr", allow_incomplete=True).store.completed().tolist() == [True, True,
                                                                                              False, False]
    resumed = trace(pipe, **args, store=tmp_path / "run.zarr", resume=True).dataset
    for array in ("xt", "x0", "images", "final"):
        np.testing.assert_array_equal(resumed[array].values, reference[array].values)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_saved_pipeline_loads_into_its_family(tiny_pipes, name, tmp_path):
    pipe = tiny_pipes[name]
    pipe.save_pretrained(tmp_path / name)
    loaded = load_pipeline(tmp_path / name)
    assert type(loaded) is type(pipe) and pipeline_family(loaded) == FAMILIES[name]
    runs = [trace(p, prompts=["a red square"], steps=2, keep=(), **SIZE) for p in (pipe, loaded)]
    # same weights; text encoders loaded by from_pretrained may round differently (~1e-6)
    np.testing.assert_allclose(runs[0].dataset["final"].values, runs[1].dataset["final"].values, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("tiny-sd3", {"prompts": ["a", "b"], "samples": 3}, ValueError, "samples=3 but 2 conditions"),
        ("tiny-sd3", {"class_labels": [1, 2]}, ValueError, "needs prompts"),
        ("tiny-sd3", {"prompts": ["a"], "scheduler": "ddim"}, ValueError, "flow-matching model"),
        ("tiny-sd3", {"prompts": ["a"], "height": 30}, ValueError, "divisible by 4"),
        ("tiny-flux", {"prompts": ["a"], "negative_prompt": "blurry"}, ValueError, "guidance-distilled"),
        ("tiny-flux", {"prompts": ["a"], "height": 34}, ValueError, "divisible by 4"),
        ("tiny-pixart", {"samples": 2}, ValueError, "needs prompts"),
        ("tiny-pixart", {"prompts": [3]}, ValueError, "Prompts must be strings"),
    ],
)
def test_bad_input_is_refused_before_any_store(tiny_pipes, tmp_path, name, kwargs, error, message):
    with pytest.raises(error, match=message):
        trace(tiny_pipes[name], steps=2, store=tmp_path / "run.zarr", **{**SIZE, **kwargs})
    assert not (tmp_path / "run.zarr").exists()
