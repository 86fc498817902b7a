"""The shipped toy model: loads offline, samples fast, and passes a loose quality gate."""

import time

import numpy as np
import pytest
import torch

from denoisefeat.models import TOY_WEIGHTS, ClassConditionalImagePipeline, load_pipeline
from denoisefeat.toy.diffshapes import NULL_LABEL, condition_label
from denoisefeat.toy.evaluate import evaluate_samples, load_classifier

pytestmark = pytest.mark.skipif(
    not (TOY_WEIGHTS / "model_index.json").is_file(), reason="the toy model's weights are not in this checkout"
)


def test_weights_are_small_fp16_safetensors():
    files = [p for p in TOY_WEIGHTS.rglob("*") if p.is_file() and "classifier" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in files)
    from safetensors.torch import load_file

    tensors = load_file(TOY_WEIGHTS / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}


def test_loads_offline_in_under_a_second():
    start = time.perf_counter()
    pipe = load_pipeline("toy")
    assert time.perf_counter() - start < 1.0
    assert isinstance(pipe, ClassConditionalImagePipeline)
    assert pipe.null_class == NULL_LABEL and pipe.unet.dtype == torch.float32  # CPU-friendly by default


def test_eight_samples_fifty_ddim_steps_and_a_loose_gate():
    from denoisefeat.trajectory import trace

    pipe = load_pipeline("toy")
    labels = [condition_label(shape, color, texture) for shape, color, texture in [
        ("circle", "red", "solid"), ("square", "blue", "stripes"), ("triangle", "green", "checker"),
        ("star", "yellow", "dots"), ("cross", "purple", "solid"), ("circle", "orange", "stripes"),
        ("square", "red", "dots"), ("triangle", "blue", "solid"),
    ]]
    start = time.perf_counter()
    run = trace(pipe, class_labels=labels, seed=0, steps=50, keep=("x0",))
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"8 samples x 50 steps took {elapsed:.1f} s"
    images = np.asarray(run.dataset["final"])  # decoded, in [0, 1]
    assert images.shape == (8, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    scores = evaluate_samples(images, np.asarray(labels), load_classifier())
    # Loose bounds on 8 samples; `denoisefeat toy evaluate` runs the full gate.
    assert scores["color"] >= 0.75 and scores["shape"] >= 0.6, scores


def test_unconditional_sampling_works():
    pipe = load_pipeline("toy")
    out = pipe([NULL_LABEL, NULL_LABEL], guidance_scale=1.0, num_inference_steps=10,
               generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np")
    assert out.images.shape == (2, 32, 32, 3) and np.isfinite(out.images).all()
    assert out.images.std() > 0.05  # an image, not a flat field
