"""load_pipeline: built-ins, save_pretrained folders of every family, hub ids offline, bad sources."""

import json

import numpy as np
import pytest
import torch

from denoisefeat.models import BUILTIN_MODELS, ModelSourceError, denoiser_of, load_pipeline, pipeline_family
from denoisefeat.tiny import TINY_BUILDERS


def test_builtin_names_are_all_loadable():
    assert set(BUILTIN_MODELS) == {"toy", "planted", "planted-factorized", *TINY_BUILDERS}


@pytest.mark.parametrize("name", list(TINY_BUILDERS))
def test_save_and_load_through_a_folder(tiny_pipes, name, tmp_path):
    pipe = tiny_pipes[name]
    pipe.save_pretrained(tmp_path / name)
    loaded = load_pipeline(tmp_path / name)
    assert type(loaded) is type(pipe)
    assert pipeline_family(loaded) == pipeline_family(pipe)
    for (key, a), b in zip(denoiser_of(pipe).state_dict().items(), denoiser_of(loaded).state_dict().values(),
                           strict=True):
        torch.testing.assert_close(a, b, msg=key)
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / name).rglob("*")), "safetensors only"


def test_class_conditional_pipeline_keeps_its_null_class(tiny_pipes, tmp_path):
    pipe = tiny_pipes["tiny-class-unet"]
    pipe.save_pretrained(tmp_path / "cc")
    index = json.loads((tmp_path / "cc" / "model_index.json").read_text())
    assert index["_class_name"] == "ClassConditionalImagePipeline"
    assert load_pipeline(tmp_path / "cc").null_class == pipe.null_class == 4


def test_builtins_are_deterministic():
    a, b = load_pipeline("tiny-sd"), load_pipeline("tiny-sd")
    for x, y in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.equal(x, y)
    state = torch.random.get_rng_state()
    load_pipeline("tiny-unet")
    assert torch.equal(state, torch.random.get_rng_state()), "building a tiny model leaves the global RNG alone"


def test_dtype_and_device():
    pipe = load_pipeline("tiny-unet", dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert pipe.unet.device.type == "cpu"


def test_unknown_name_lists_close_matches():
    with pytest.raises(ModelSourceError, match="Did you mean 'tiny-sd'"):
        load_pipeline("tiny-sdd")


def test_missing_folder():
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_pipeline("./no/such/model")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelSourceError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_hub_id_offline_names_the_id_and_suggests_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as info:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    message = str(info.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "local folder" in message


def test_class_conditional_pipeline_runs_with_guidance(tiny_pipes):
    pipe = tiny_pipes["tiny-class-unet"]
    out = pipe([0, 1], generator=[torch.Generator().manual_seed(i) for i in range(2)], num_inference_steps=3,
               guidance_scale=2.0).images
    assert out.shape == (2, 16, 16, 3)
    assert np.isfinite(out).all()


def test_default_guidance_scale_is_saved_and_used_by_trace(tiny_pipes, tmp_path):
    from denoisefeat.models import ClassConditionalImagePipeline
    from denoisefeat.trajectory import trace

    base = tiny_pipes["tiny-class-unet"]
    pipe = ClassConditionalImagePipeline(unet=base.unet, scheduler=base.scheduler, null_class=base.null_class,
                                         default_guidance_scale=2.5)
    pipe.save_pretrained(tmp_path / "guided")
    loaded = load_pipeline(tmp_path / "guided")
    assert loaded.config.default_guidance_scale == 2.5
    run = trace(loaded, class_labels=[0], steps=2)
    assert run.attrs["guidance_scale"] == 2.5
    assert trace(loaded, class_labels=[0], steps=2, guidance_scale=1.0).attrs["guidance_scale"] == 1.0
