"""trace(): every pipeline family and scheduler reproduces the pipeline's own output."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from denoisefeat import schedulers as S
from denoisefeat.models import ClassConditionalImagePipeline
from denoisefeat.trajectory import trace

STEPS = 6


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _pipeline_output(name, pipe, run):
    attrs = run.attrs
    gens = _generators(attrs["seeds"])
    n = len(attrs["seeds"])
    if name == "tiny-unet":
        out = pipe(batch_size=n, generator=gens, num_inference_steps=STEPS, output_type="np").images
    elif name == "tiny-class-unet":
        out = pipe(attrs["class_labels"], generator=gens, num_inference_steps=STEPS,
                   guidance_scale=attrs["guidance_scale"]).images
    elif name == "tiny-dit":
        out = pipe(attrs["class_labels"], generator=gens, num_inference_steps=STEPS, output_type="np",
                   guidance_scale=attrs["guidance_scale"]).images
    else:
        out = pipe(attrs["prompts"], generator=gens, num_inference_steps=STEPS, output_type="np",
                   guidance_scale=attrs["guidance_scale"]).images
    return out.transpose(0, 3, 1, 2)


FAMILY_ARGS = {
    "tiny-unet": {"samples": 3},
    "tiny-class-unet": {"class_labels": [0, 1, 3], "guidance_scale": 2.5},
    "tiny-sd": {"prompts": ["a red square", "a blue circle", ""]},
    "tiny-sdxl": {"prompts": ["a red square", "a blue circle", ""]},
    "tiny-dit": {"class_labels": [1, 2, 7]},
}


@pytest.mark.parametrize("name", list(FAMILY_ARGS))
def test_final_equals_pipeline_output(tiny_pipes, name):
    pipe = tiny_pipes[name]
    run = trace(pipe, steps=STEPS, batch_size=3, seed=10, **FAMILY_ARGS[name])
    ds = run.dataset
    expected = _pipeline_output(name, pipe, run)
    np.testing.assert_allclose(ds["final"].values, expected, atol=2e-5)
    n_loop = run.store.n_steps
    assert ds["x0"].shape[:2] == ds["xt"].shape[:2] == ds["images"].shape[:2] == (3, n_loop)
    assert np.isfinite(ds["images"].values).all()
    assert (ds["images"].values >= 0).all() and (ds["images"].values <= 1).all()
    # these schedules end at zero noise: the last step's x̂0 is the pipeline's output
    if name != "tiny-sd":  # tiny-sd's DDIM has set_alpha_to_one=False, as SD 1.x: it ends at ᾱ_0 < 1
        np.testing.assert_allclose(ds["images"].values[:, -1], expected, atol=2e-5)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "euler", "euler-ancestral", "heun", "dpm++", "unipc"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_scheduler_and_prediction_type(tiny_pipes, scheduler, prediction_type):
    if scheduler == "euler-ancestral" and prediction_type == "sample":
        pytest.skip("EulerAncestralDiscreteScheduler does not implement prediction_type='sample'")
    base = tiny_pipes["tiny-class-unet"]
    sched = S.make_scheduler(scheduler, base_config={**base.scheduler.config, "prediction_type": prediction_type})
    pipe = ClassConditionalImagePipeline(unet=base.unet, scheduler=sched, null_class=base.null_class)
    pipe.set_progress_bar_config(disable=True)
    run = trace(pipe, class_labels=[0, 2], steps=STEPS, seed=3, batch_size=2)
    expected = pipe([0, 2], generator=_generators([3, 4]), num_inference_steps=STEPS, output_type="pt").images
    ds = run.dataset
    np.testing.assert_allclose(ds["final"].values, expected.numpy(), atol=2e-5)
    np.testing.assert_allclose(ds["images"].values[:, -1], expected.numpy(), atol=2e-5)
    assert np.all(np.diff(ds["alpha_bar"].values) >= -1e-12), "noise must decrease along the loop"


def test_flow_matching_scheduler(tiny_pipes):
    base = tiny_pipes["tiny-class-unet"]
    pipe = ClassConditionalImagePipeline(unet=base.unet, scheduler=S.make_scheduler("flow-euler"))
    pipe.set_progress_bar_config(disable=True)
    run = trace(pipe, class_labels=[1, 2], steps=STEPS, seed=0, batch_size=2)
    expected = pipe([1, 2], generator=_generators([0, 1]), num_inference_steps=STEPS, output_type="pt").images
    np.testing.assert_allclose(run.dataset["final"].values, expected.numpy(), atol=2e-5)
    np.testing.assert_allclose(run.dataset["images"].values[:, -1], expected.numpy(), atol=2e-5)


class _OracleUNet(UNet2DModel):
    """Predicts, for a fixed clean image, exactly what a perfect DDIM denoiser would."""

    def set_target(self, x0, alphas_cumprod, prediction_type):
        self.target, self.alphas_cumprod, self.prediction_type = x0, alphas_cumprod, prediction_type

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        a = self.alphas_cumprod[int(timestep)].to(sample.dtype)
        eps = (sample - a.sqrt() * self.target) / (1 - a).sqrt()
        out = {"epsilon": eps, "sample": self.target.expand_as(sample),
               "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * self.target}[self.prediction_type]
        return (out,)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_is_exact_for_a_perfect_denoiser(prediction_type):
    from diffusers import DDIMPipeline, DDIMScheduler

    unet = _OracleUNet(sample_size=8, block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    target = torch.linspace(-0.9, 0.9, 3 * 8 * 8).reshape(1, 3, 8, 8)
    unet.set_target(target, scheduler.alphas_cumprod, prediction_type)
    run = trace(DDIMPipeline(unet=unet, scheduler=scheduler), samples=2, steps=10)
    x0 = run.dataset["x0"].values
    np.testing.assert_allclose(x0, np.broadcast_to(target.numpy()[:, None], x0.shape), atol=1e-5)


def test_reruns_are_bit_identical_and_samples_independent_of_batch(tiny_pipes):
    pipe = tiny_pipes["tiny-sd"]
    prompts = ["a", "b", "c"]
    a = trace(pipe, prompts=prompts, steps=4, seed=5, batch_size=3).dataset
    b = trace(pipe, prompts=prompts, steps=4, seed=5, batch_size=3).dataset
    for name in ("xt", "x0", "images", "final"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # sample 1 alone, with its own seed (6), follows the same trajectory as inside the batch
    # up to the denoiser's batch-dependent rounding of ε̂ (~1e-6), which x̂0 amplifies by √((1−ᾱ)/ᾱ)
    alone = trace(pipe, prompts=["b"], steps=4, seed=[6], batch_size=1).dataset
    np.testing.assert_allclose(alone["final"].values[0], a["final"].values[1], atol=1e-4)
    alpha_bar = a["alpha_bar"].values
    for step, amplification in enumerate(np.sqrt((1 - alpha_bar) / alpha_bar)):
        np.testing.assert_allclose(alone["x0"].values[0, step], a["x0"].values[1, step],
                                   rtol=1e-5, atol=1e-5 * max(1.0, amplification), err_msg=f"step {step}")


def test_classifier_free_guidance_run_has_guided_x0(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    guided = trace(pipe, class_labels=[1], steps=4, guidance_scale=3.0).dataset["x0"].values
    plain = trace(pipe, class_labels=[1], steps=4, guidance_scale=1.0).dataset["x0"].values
    assert np.abs(guided - plain).max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 2, "steps": 0}, "steps must be a positive integer"),
        ({"samples": 0}, "samples must be a positive number"),
        ({"samples": 3, "seed": [1, 2]}, "2 seeds for 3 samples"),
        ({"class_labels": [1, 2], "samples": 3}, "samples=3 but 2 conditions"),
        ({"prompts": ["x"]}, "takes no prompts"),
        ({}, "Say how many samples"),
        ({"samples": 2, "scheduler": "eulerr"}, "Unknown scheduler"),
        ({"samples": 2, "keep": ["xt", "latents"]}, "unknown arrays"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(tiny_pipes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        trace(tiny_pipes["tiny-class-unet"], **{"steps": 2, **kwargs})


def test_sd_needs_prompts(tiny_pipes):
    with pytest.raises(ValueError, match="needs prompts"):
        trace(tiny_pipes["tiny-sd"], samples=2, steps=2)
