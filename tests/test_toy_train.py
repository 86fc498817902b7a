"""Tests of the toy model's training recipe: train, checkpoint, resume, export."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import load_file
from torch.utils import flop_counter

from denoisefeat.models import ClassConditionalImagePipeline, load_pipeline
from denoisefeat.toy.diffshapes import NULL_LABEL, NUM_CONDITIONS
from denoisefeat.toy.train import (
    DEFAULT_GUIDANCE_SCALE,
    TrainConfig,
    build_sampling_scheduler,
    build_scheduler,
    export,
    latest_checkpoint,
    learning_rate_at,
    load_checkpoint_unet,
    train,
)

TINY = TrainConfig(
    size=16, batch_size=4, iterations=4, warmup=2, block_out_channels=(8, 16), layers_per_block=1,
    checkpoint_every=2, threads=1, log_every=1,
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(TINY, out, progress=False)
    return out


def test_train_writes_checkpoints_and_log(uninterrupted):
    checkpoint = latest_checkpoint(uninterrupted)
    assert checkpoint.name == "iteration-0000004"
    assert {p.name for p in checkpoint.iterdir()} == {
        "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"
    }
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["iteration"] == 4 and TrainConfig.from_json(state["config"]) == TINY
    log = [json.loads(line) for line in (uninterrupted / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    # No temporary folders are left behind.
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == [
        "iteration-0000002", "iteration-0000004"
    ]


def test_resume_after_interruption_gives_identical_weights(uninterrupted, tmp_path):
    train(TINY, tmp_path, progress=False, until=2)  # "killed" after the first checkpoint
    assert latest_checkpoint(tmp_path).name == "iteration-0000002"
    train(TINY, tmp_path, progress=False)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        expected = load_file(latest_checkpoint(uninterrupted) / name)
        resumed = load_file(latest_checkpoint(tmp_path) / name)
        assert expected.keys() == resumed.keys()
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)


def test_resume_refuses_a_different_config(uninterrupted):
    with pytest.raises(ValueError, match="different configuration"):
        train(TrainConfig(**{**TINY.to_json(), "learning_rate": 1e-3}), uninterrupted, progress=False)


def test_export_is_fp16_safetensors_loadable(uninterrupted, tmp_path):
    weights = export(uninterrupted, tmp_path / "weights", metadata={"gate": {"shape": 0.5}})
    files = {p.relative_to(weights).as_posix() for p in weights.rglob("*") if p.is_file()}
    assert files == {
        "model_index.json", "training.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }
    record = json.loads((weights / "training.json").read_text())
    assert record["iteration"] == 4 and record["gate"] == {"shape": 0.5}
    assert TrainConfig.from_json(record["config"]) == TINY
    pipe = load_pipeline(weights)
    assert isinstance(pipe, ClassConditionalImagePipeline) and pipe.null_class == NULL_LABEL
    assert pipe.config.default_guidance_scale == DEFAULT_GUIDANCE_SCALE == 1.5
    tensors = load_file(weights / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    unet = UNet2DModel.from_pretrained(weights / "unet", torch_dtype=torch.float32)
    assert unet.config.num_class_embeds == NUM_CONDITIONS + 1 and unet.config.sample_size == 16
    # The shipped weights are the EMA weights.
    ema = load_checkpoint_unet(latest_checkpoint(uninterrupted))
    for name, tensor in unet.state_dict().items():
        torch.testing.assert_close(tensor, ema.state_dict()[name].half().float())
    scheduler = DDIMScheduler.from_pretrained(weights / "scheduler")
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.clip_sample
    torch.testing.assert_close(scheduler.betas, build_sampling_scheduler(TINY).betas)
    with torch.no_grad():
        out = unet(torch.zeros(2, 3, 16, 16), 10, class_labels=torch.tensor([0, NULL_LABEL])).sample
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_learning_rate_schedule():
    config = TrainConfig(iterations=100, warmup=10, learning_rate=1e-3, min_lr_ratio=0.1)
    assert learning_rate_at(config, 0) == pytest.approx(1e-4)
    assert learning_rate_at(config, 9) == pytest.approx(1e-3)
    assert learning_rate_at(config, 99) == pytest.approx(1e-4, rel=0.01)


def test_config_validation():
    with pytest.raises(ValueError, match="norm_num_groups"):
        TrainConfig(block_out_channels=(12, 16))
    with pytest.raises(ValueError, match="beta_schedule"):
        TrainConfig(beta_schedule="cosine")


def test_extend_a_finished_run(uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    longer = TrainConfig(**{**TINY.to_json(), "iterations": 6})
    with pytest.raises(ValueError, match="different configuration"):
        train(longer, run, progress=False)
    train(longer, run, progress=False, extend=True)
    assert latest_checkpoint(run).name == "iteration-0000006"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[0]["from_iterations"] == 4 and history[0]["to_iterations"] == 6 and history[0]["at_iteration"] == 4


def test_min_snr_weighting_matches_its_formula():
    from denoisefeat.toy.train import _weighted_loss

    config = TrainConfig(min_snr_gamma=5.0)
    scheduler = build_scheduler(config)
    generator = torch.Generator().manual_seed(0)
    prediction, noise = torch.randn(3, 3, 4, 4, generator=generator), torch.randn(3, 3, 4, 4, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3)).double()
    expected = (per_sample * torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr).mean()
    loss = float(_weighted_loss(config, scheduler, prediction, noise, timesteps))
    assert loss == pytest.approx(float(expected), rel=1e-5)
    # Nearly clean timesteps (SNR >> gamma) are down-weighted, noisy ones (SNR < gamma) are not.
    assert snr[0] > 5 and snr[2] < 5
    plain = TrainConfig(min_snr_gamma=None)
    plain_loss = float(_weighted_loss(plain, scheduler, prediction, noise, timesteps))
    assert plain_loss == pytest.approx(float(per_sample.mean()), rel=1e-5)


def test_command_line_parses_every_field():
    from denoisefeat.toy.train import _parse_args

    config, _ = _parse_args(["--out", "x", "--radius", "0.25,0.4", "--max-rotation", "none", "--min-snr-gamma", "3",
                             "--block-out-channels", "16,32"])
    assert config.radius == (0.25, 0.4) and config.max_rotation is None and config.min_snr_gamma == 3.0
    assert config.block_out_channels == (16, 32)


def _forward_gflop_batch16(unet) -> float:
    # FLOPs of one image's forward pass, times 16 (a guided DDIM step of 8 samples).  The counter has no
    # formula for the CPU kernel of scaled_dot_product_attention: give it the counter's own SDPA formula.
    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        unet(torch.zeros(1, 3, 32, 32), 10, class_labels=torch.zeros(1, dtype=torch.long))
    return 16 * counter.get_total_flops() / 1e9


def test_recipes_v2_is_the_default_and_v3_fits_the_budget():
    from denoisefeat.toy.train import DEFAULT_RECIPE, RECIPES, build_unet, recipe

    # v2 made the shipped weights, and stays the default until v3 weights ship.
    assert DEFAULT_RECIPE == "v2" and recipe("v2") == TrainConfig()
    shipped = json.loads((Path(__file__).parents[1] / "denoisefeat/toy/weights/training.json").read_text())
    assert TrainConfig.from_json(shipped["config"]) == recipe(DEFAULT_RECIPE)
    v3 = recipe("v3", threads=1)
    assert v3.threads == 1 and RECIPES["v3"].threads == 2
    unet = build_unet(v3)
    assert sum(p.numel() for p in unet.parameters()) * 2 < 10 * 2**20  # fp16 bytes under the 10 MB budget
    # Attention at 16 px and 8 px (down_blocks 1 and 2 of a 32 px model), none at 32 px.
    kinds = [type(block).__name__ for block in unet.down_blocks]
    assert kinds == ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"], kinds
    assert [type(block).__name__ for block in unet.up_blocks] == ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    v2_kinds = [type(block).__name__ for block in build_unet(recipe("v2")).down_blocks]
    assert v2_kinds == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    # Fewer, wider heads (head_dim 32: 2 heads of 64 channels at 16 px and at 8 px), cheaper on CPU than head_dim 8.
    heads = {block.attentions[0].heads for block in (*unet.down_blocks[1:], *unet.up_blocks[:2])}
    assert heads == {2} and v3.block_out_channels == (16, 64, 64)
    assert TrainConfig.from_json(json.loads(json.dumps(v3.to_json()))) == v3
    with torch.no_grad():
        out = unet(torch.zeros(2, 3, 32, 32), 10, class_labels=torch.tensor([0, NULL_LABEL])).sample
    assert out.shape == (2, 3, 32, 32)
    # The sampling budget, in load-independent FLOPs: <= 7.5 GFLOP per batch-16 forward (v2: 9.81).
    gflop = {name: _forward_gflop_batch16(build_unet(recipe(name))) for name in ("v2", "v3")}
    assert gflop["v3"] <= 7.5 and 9.75 < gflop["v2"] < 9.85, gflop
    with pytest.raises(ValueError, match="unknown toy recipe 'v9'; known: v2, v3"):
        recipe("v9")
    with pytest.raises(ValueError, match="attention_levels"):
        recipe("v3", attention_levels=4)


def test_a_v3_shaped_run_resumes_to_identical_weights(tmp_path):
    from denoisefeat.toy.train import recipe

    small = recipe("v3", size=16, batch_size=2, iterations=3, warmup=1, block_out_channels=(8, 16, 16),
                   attention_head_dim=8, checkpoint_every=1, threads=1, log_every=1)
    train(small, tmp_path / "whole", progress=False)
    train(small, tmp_path / "killed", progress=False, until=1)
    train(small, tmp_path / "killed", progress=False)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        expected = load_file(latest_checkpoint(tmp_path / "whole") / name)
        resumed = load_file(latest_checkpoint(tmp_path / "killed") / name)
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)


def test_command_line_recipe_sets_the_defaults():
    from denoisefeat.toy.train import _parse_args, recipe

    config, _ = _parse_args(["--out", "x", "--recipe", "v3", "--iterations", "10"])
    assert config == recipe("v3", iterations=10)
    assert _parse_args(["--out", "x"])[0] == TrainConfig()


def test_milestone_checkpoints_are_kept(tmp_path):
    config = TrainConfig(**{**TINY.to_json(), "iterations": 5, "checkpoint_every": 1, "keep_checkpoints": 1,
                            "keep_every": 2})
    train(config, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "iteration-0000002", "iteration-0000004", "iteration-0000005"
    ]
    with pytest.raises(ValueError, match="keep_every"):
        TrainConfig(keep_every=-1)
