"""Cross-attention maps: identity (bit for bit), a closed form, per-word aggregation, bad input."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

import denoisefeat as dft
from denoisefeat.hooks import (
    NotCrossAttentionError,
    WordNotInPromptError,
    attention_maps,
    cross_attention_layers,
    word_maps,
    word_spans,
)
from denoisefeat.hooks.attention import aggregate_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a red circle", "a blue square"]
RUN = dict(samples=2, prompts=PROMPTS, steps=3, guidance_scale=2.0, seed=0, keep=())


@pytest.fixture(scope="module")
def sd():
    return dft.load_pipeline("tiny-sd")


@pytest.fixture(scope="module")
def runs(sd):
    plain = dft.trace(sd, **RUN)
    mapped = dft.trace(sd, attention=True, attention_resolution=4, **RUN)
    return plain, mapped


def test_final_images_bit_for_bit_equal_and_processors_restored(sd, runs):
    plain, mapped = runs
    assert np.array_equal(plain["final"].values, mapped["final"].values)
    assert all(type(m.processor) is AttnProcessor2_0 for m in sd.unet.modules() if isinstance(m, Attention))


def test_stored_maps_are_bounded_probabilities_of_the_prompt_tokens(sd, runs):
    _, run = runs
    assert run.attention_layers() == cross_attention_layers(sd)
    assert all(name.endswith("attn2") for name in run.attention_layers())
    longest = max(len(sd.tokenizer(p).input_ids) for p in PROMPTS)
    for layer in run.attention_layers():
        maps = run.attention(layer)
        assert maps.dims == ("sample", "step", "token", "y", "x")
        assert maps.shape[:3] == (2, 3, longest) and max(maps.shape[3:]) <= 4
        total = maps.sum("token").values  # the prompt's share of each pixel's attention: padding dropped
        assert np.all(total > 0) and np.all(total <= 1 + 1e-6)


def test_maps_equal_the_attention_probabilities_of_the_run(sd):
    """Unbounded maps of one layer equal softmax(q kᵀ/√d) of the cond branch, recomputed from the module's inputs."""
    layer = "up_blocks.0.attentions.0.transformer_blocks.0.attn2"
    module = dict(sd.unet.named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda m, args, kwargs, out: seen.append(
        (args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone())), with_kwargs=True)
    try:
        run = dft.trace(sd, attention=[layer], record_steps=[1], **RUN)
    finally:
        handle.remove()
    hidden, text = seen[1]
    cond_h, cond_c = hidden[2:], text[2:]  # SD's CFG batch: (uncond, cond)
    heads, d = module.heads, module.to_q.out_features // module.heads
    q = module.to_q(cond_h).view(2, -1, heads, d).transpose(1, 2)
    k = module.to_k(cond_c).view(2, -1, heads, d).transpose(1, 2)
    probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, -1).mean(1)
    maps = run.attention(layer)
    stored = maps.isel(step=1).values
    expected = probs[..., : maps.sizes["token"]].transpose(1, 2).reshape(stored.shape).detach().numpy()
    np.testing.assert_allclose(stored, expected, atol=2e-6)
    assert np.isnan(maps.isel(step=0).values).all() and np.isnan(maps.isel(step=2).values).all()


class _OneLayer(torch.nn.Module):
    """A denoiser-like module with one cross-attention layer and known probabilities (see the test)."""

    def __init__(self, k: int, gains: tuple[float, float], processor):
        super().__init__()
        self.attn = Attention(query_dim=k, cross_attention_dim=k, heads=2, dim_head=k, bias=False)
        with torch.no_grad():
            self.attn.to_q.weight.copy_(torch.cat([gains[0] * torch.eye(k), gains[1] * torch.eye(k)]))
            self.attn.to_k.weight.copy_(torch.cat([torch.eye(k), torch.eye(k)]))
        self.attn.set_processor(processor)

    def forward(self, sample, encoder_hidden_states):
        b, c, h, w = sample.shape
        tokens = sample.flatten(2).transpose(1, 2)
        return self.attn(tokens, encoder_hidden_states=encoder_hidden_states).transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("processor", [AttnProcessor(), AttnProcessor2_0()], ids=["AttnProcessor", "AttnProcessor2_0"])
def test_closed_form_maps(processor):
    """Pixel (y, x) holds the one-hot query of text token t(y, x); text token j is the key e_j.

    Head h scores s_h·[j = t] with s_h = gain_h / √k, so its probability is e^{s_h} / (e^{s_h} + k − 1)
    on token t and 1 / (e^{s_h} + k − 1) on each other token; the map is the mean over the two heads,
    and the bounded map (resolution 4 of an 8×8 grid) the mean of each 2×2 block.
    """
    k, size, gains = 5, 8, (3.0, 7.0)
    model = _OneLayer(k, gains, processor)
    target = (np.arange(size)[:, None] + 2 * np.arange(size)[None, :]) % k  # t(y, x)
    sample = torch.from_numpy(np.eye(k, dtype=np.float32)[target].transpose(2, 0, 1)[None]).repeat(2, 1, 1, 1)
    text = torch.eye(k)[None].repeat(2, 1, 1)
    expected = np.zeros((k, size, size))
    for gain in gains:
        s = gain / np.sqrt(k)
        on = np.exp(s) / (np.exp(s) + k - 1)
        off = 1 / (np.exp(s) + k - 1)
        expected += np.where(np.arange(k)[:, None, None] == target[None], on, off) / len(gains)
    with attention_maps(model, resolution=size) as full, torch.no_grad():
        out = model(sample, text)
        model(sample, text)
    maps = full.maps("attn").values
    assert maps.shape == (2, 2, k, size, size)
    np.testing.assert_allclose(maps, np.broadcast_to(expected, maps.shape), atol=1e-6)
    with attention_maps(model, resolution=4) as coarse, torch.no_grad():
        again = model(sample, text)
    blocks = expected.reshape(k, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(coarse.maps("attn").values[0, 0], blocks, atol=1e-6)
    assert torch.equal(out, again) and model.attn.processor is processor


def test_processors_restored_when_the_run_fails():
    model = _OneLayer(3, (1.0, 1.0), AttnProcessor2_0())
    original = model.attn.processor
    with pytest.raises(RuntimeError), attention_maps(model):
        raise RuntimeError("boom")
    assert model.attn.processor is original


def test_word_spans_cover_a_words_sub_word_tokens(sd):
    spans = word_spans(sd.tokenizer, "a red circle")
    tokens = sd.tokenizer.convert_ids_to_tokens(sd.tokenizer("a red circle").input_ids)
    assert [w for w, _, _ in spans] == ["a", "red", "circle"]
    red = next((s, e) for w, s, e in spans if w == "red")
    assert red[1] - red[0] == 3 and "".join(tokens[red[0]:red[1]]) == "red</w>"  # one word, three tokens


def test_word_maps_sum_the_words_tokens(runs):
    _, run = runs
    layer = run.attention_layers()[0]
    maps = run.attention(layer).values
    got = word_maps(run, layer, "a").values
    np.testing.assert_array_equal(got, maps[:, :, 1])  # "a" is one token in both prompts
    words = run.attention_words()
    spans = [next((s, e) for w, s, e in words[p] if w == w0) for p, w0 in zip(PROMPTS, ["circle", "square"],
                                                                              strict=True)]
    np.testing.assert_allclose(aggregate_words(maps, spans)[0], maps[0, :, 5:11].sum(axis=1), rtol=1e-6)


def test_bad_input_clear_errors(sd, runs, tmp_path):
    _, run = runs
    with pytest.raises(WordNotInPromptError, match="'green' is not a word of the prompt"):
        word_maps(run, run.attention_layers()[0], "green")
    store = tmp_path / "never.zarr"
    for layer in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1", "down_blocks.0"):
        with pytest.raises(NotCrossAttentionError, match="no cross-attention module"):
            dft.trace(sd, attention=layer, store=store, **RUN)
    assert not store.exists()
    with pytest.raises(ValueError, match="text-conditional"):
        dft.trace(dft.load_pipeline("tiny-class-unet"), attention=True, samples=1, class_labels=[0], steps=2)
    with pytest.raises(ValueError, match="resolution"):
        attention_maps(sd, resolution=0)


def test_joint_attention_text_columns_are_what_the_model_attended_with():
    """A one-head SD3 transformer whose image values are zero: each image token's attention output is
    exactly Σ_j P(token → text j) · v_j, so the stored text columns must reproduce the module's own output."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=1, joint_attention_dim=16, caption_projection_dim=8,
                                  pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16).eval()
    layer = "transformer_blocks.0.attn"
    attn = dict(model.named_modules())[layer]
    with torch.no_grad():
        attn.to_v.weight.zero_()
        attn.to_v.bias.zero_()
    assert cross_attention_layers(model) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    seen = {}
    hooks = [attn.register_forward_pre_hook(lambda m, a, k: seen.update(text=k["encoder_hidden_states"]),
                                            with_kwargs=True),
             attn.to_out[0].register_forward_pre_hook(lambda m, a: seen.update(out=a[0]))]
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 8), encoder_hidden_states=torch.randn(2, 5, 16),
                  pooled_projections=torch.randn(2, 8), timestep=torch.tensor([500.0, 500.0]), return_dict=False)
    try:
        with torch.no_grad():
            plain = model(**inputs)[0]
            with attention_maps(model, layers=[layer]) as rec:
                mapped = model(**inputs)[0]
    finally:
        for handle in hooks:
            handle.remove()
    assert torch.equal(plain, mapped)
    maps = rec.maps(layer).values[:, 0]  # (sample, text token, 4, 4): 8² latents in 2² patches
    probs = torch.from_numpy(maps).flatten(2).transpose(1, 2).double()  # (sample, image token, text token)
    values = attn.add_v_proj(seen["text"]).double()
    np.testing.assert_allclose((probs @ values).detach().numpy(), seen["out"].double().detach().numpy(), atol=1e-5)
    assert np.all(maps.sum(axis=1) < 1)  # the text's share of a joint softmax over image and text keys


def test_flux_double_stream_text_columns_are_what_the_model_attended_with():
    """As for SD3, on a one-head Flux transformer (rotary positions, [text; image] order) with zero image values."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=1, joint_attention_dim=16,
                                   pooled_projection_dim=8, axes_dims_rope=(4, 4, 8)).eval()
    layer = "transformer_blocks.0.attn"
    attn = dict(model.named_modules())[layer]
    with torch.no_grad():
        attn.to_v.weight.zero_()
        attn.to_v.bias.zero_()
    assert cross_attention_layers(model) == [layer]  # the single-stream blocks are not read
    seen = {}
    hooks = [attn.register_forward_pre_hook(lambda m, a, k: seen.update(text=a[1] if len(a) > 1 else
                                                                         k["encoder_hidden_states"]), with_kwargs=True),
             attn.to_out[0].register_forward_pre_hook(lambda m, a: seen.update(out=a[0]))]
    h, w, n_text = 4, 6, 5
    grid = torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    img_ids = torch.stack(grid, -1)
    inputs = dict(hidden_states=torch.randn(2, h * w, 4), encoder_hidden_states=torch.randn(2, n_text, 16),
                  pooled_projections=torch.randn(2, 8), timestep=torch.tensor([0.5, 0.5]),
                  img_ids=img_ids.reshape(-1, 3).float(), txt_ids=torch.zeros(n_text, 3), return_dict=False)
    try:
        with torch.no_grad():
            plain = model(**inputs)[0]
            with attention_maps(model) as rec:
                mapped = model(**inputs)[0]
    finally:
        for handle in hooks:
            handle.remove()
    assert torch.equal(plain, mapped)
    maps = rec.maps(layer).values[:, 0]
    assert maps.shape == (2, n_text, h, w)  # the grid from img_ids, not a guess
    probs = torch.from_numpy(maps).flatten(2).transpose(1, 2).double()
    values = attn.add_v_proj(seen["text"]).double()
    np.testing.assert_allclose((probs @ values).detach().numpy(), seen["out"].double().detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-pixart", "tiny-sd3", "tiny-flux"])
def test_transformer_families_identity_and_word_spans(name):
    pipe = dft.load_pipeline(name)
    run = dict(prompts=PROMPTS, steps=2, keep=(), seed=0, height=16, width=16)  # small latents: seconds
    plain, mapped = dft.trace(pipe, **run), dft.trace(pipe, attention=True, **run)
    assert np.array_equal(plain["final"].values, mapped["final"].values)
    assert mapped.attention_layers() == cross_attention_layers(pipe)
    maps = mapped.attention(mapped.attention_layers()[0]).values
    assert np.all(maps.sum(axis=2) <= 1 + 1e-5) and np.all(maps >= 0)  # PixArt masks the padding: 0
    tokenizer = pipe.tokenizer_2 if name == "tiny-flux" else pipe.tokenizer  # Flux attends to T5's tokens
    assert mapped.attention_words()["a red circle"] == word_spans(tokenizer, "a red circle")


def test_stored_maps_on_disk_open_and_verify(sd, tmp_path):
    store = tmp_path / "maps.zarr"
    dft.trace(sd, attention="mid_block.**.attn2", record_steps=[2], store=store, **RUN)
    run = dft.open_run(store)  # refuses missing chunks: the unrecorded steps' chunks must be accounted for
    assert run.store.damage(decode=True) == []
    maps = run.attention(run.attention_layers()[0])
    assert np.isfinite(maps.isel(step=2).values).all() and np.isnan(maps.isel(step=0).values).all()
    assert run.attrs["extra"]["attention"] == run.attention_layers()


def test_nnsight_backend_records_the_same_maps(sd, runs):
    pytest.importorskip("nnsight")
    _, torch_run = runs
    run = dft.trace(sd, attention=True, attention_resolution=4, backend="nnsight",
                    record={"mid_block": "channel_mean"}, **RUN)
    layer = torch_run.attention_layers()[0]
    np.testing.assert_array_equal(run.attention(layer).values, torch_run.attention(layer).values)
