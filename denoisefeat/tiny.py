"""Tiny random-initialised pipelines of every family denoisefeat supports.

They load nothing from a hub and build in well under a second on a CPU, as the pipelines in
diffusers' own tests do: use them to try the API, to test code paths, and as the built-in model
names ``"tiny-unet"``, ``"tiny-class-unet"``, ``"tiny-sd"``, ``"tiny-sdxl"`` and ``"tiny-dit"``
of :func:`denoisefeat.models.load_pipeline`.  Their weights are random: they make noise, not
pictures.  The trained model to study is ``load_pipeline("toy")``.

Every builder is deterministic: the same ``seed`` gives the same weights, and the global torch
RNG is left as it was.
"""

from __future__ import annotations

import contextlib
import string

import torch

__all__ = [
    "TINY_BUILDERS",
    "tiny_class_unet_pipeline",
    "tiny_clip_tokenizer",
    "tiny_dit_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_unet_pipeline",
]


def tiny_clip_tokenizer(*, max_length: int = 16):
    """A character-level CLIP tokenizer built in memory (lower-case ASCII text; no download).

    Parameters
    ----------
    max_length : int
        ``model_max_length`` of the tokenizer (the text encoder's number of positions).

    Returns
    -------
    transformers.CLIPTokenizer
    """
    from transformers import CLIPTokenizer

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG for the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_vae(*, latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
    )


def _tiny_conditional_unet(**architecture):
    """A two-level ``UNet2DConditionModel`` on 16×16 latents (cross-attention at the lower level)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **architecture,
    ).eval()


def _tiny_clip_text(*, projection: bool = False, hidden: int = 16, projection_dim: int = 8, max_length: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer(max_length=max_length)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval(), tokenizer


def tiny_unet_pipeline(*, seed: int = 0, prediction_type: str = "epsilon", scheduler: str = "ddim"):
    """An unconditional pixel-space pipeline (``DDIMPipeline`` or ``DDPMPipeline``, ``UNet2DModel``, 16×16 RGB).

    Parameters
    ----------
    seed : int
        Seed of the random weights.
    prediction_type : {"epsilon", "v_prediction", "sample"}
        What the UNet is declared to predict.
    scheduler : {"ddim", "ddpm"}
        Which pipeline class (and scheduler) to build.

    Returns
    -------
    diffusers.DDIMPipeline or diffusers.DDPMPipeline
    """
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    with _seeded(seed):
        unet = UNet2DModel(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=4,
        ).eval()
    if scheduler == "ddpm":
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type))
    if scheduler == "ddim":
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler(prediction_type=prediction_type))
    raise ValueError(f"scheduler must be 'ddim' or 'ddpm', got {scheduler!r}")


def tiny_class_unet_pipeline(*, seed: int = 0, num_classes: int = 4, prediction_type: str = "epsilon"):
    """A class-conditional pixel-space pipeline (:class:`~denoisefeat.models.ClassConditionalImagePipeline`).

    Class ``num_classes`` is the null class used for classifier-free guidance.

    Returns
    -------
    denoisefeat.models.ClassConditionalImagePipeline
    """
    from diffusers import DDIMScheduler, UNet2DModel

    from denoisefeat.pipelines import ClassConditionalImagePipeline

    with _seeded(seed):
        unet = UNet2DModel(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            num_class_embeds=num_classes + 1,
        ).eval()
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=True)
    return ClassConditionalImagePipeline(unet=unet, scheduler=scheduler, null_class=num_classes)


def tiny_sd_pipeline(*, seed: int = 0, prediction_type: str = "epsilon"):
    """A latent text-to-image ``StableDiffusionPipeline`` (``UNet2DConditionModel``, 32×32 images, 16×16 latents).

    Returns
    -------
    diffusers.StableDiffusionPipeline
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with _seeded(seed):
        unet = _tiny_conditional_unet(cross_attention_dim=16, attention_head_dim=4)
        vae = _tiny_vae().eval()
        text_encoder, tokenizer = _tiny_clip_text()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(*, seed: int = 0):
    """A latent text-to-image ``StableDiffusionXLPipeline`` with two text encoders (32×32 images).

    Returns
    -------
    diffusers.StableDiffusionXLPipeline
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    with _seeded(seed):
        unet = _tiny_conditional_unet(
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=8 + 6 * 4,  # pooled text (8) + 6 time ids × 4
            cross_attention_dim=32,  # both encoders' hidden states concatenated (16 + 16)
        )
        vae = _tiny_vae().eval()
        text_encoder, tokenizer = _tiny_clip_text()
        text_encoder_2, tokenizer_2 = _tiny_clip_text(projection=True, projection_dim=8)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )


def tiny_dit_pipeline(*, seed: int = 0):
    """A class-conditional latent transformer pipeline (``DiTPipeline``, ``DiTTransformer2DModel``).

    The transformer predicts noise and a learned variance (``out_channels = 2 × latent channels``),
    as the published DiT checkpoints do; labels are ImageNet-style 0…999 and ``1000`` is DiT's null class.

    Returns
    -------
    diffusers.DiTPipeline
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    with _seeded(seed):
        transformer = DiTTransformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            attention_head_dim=4,
            num_attention_heads=2,
            num_embeds_ada_norm=1000,
            norm_num_groups=4,
        ).eval()
        vae = _tiny_vae().eval()
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())


#: Built-in tiny model names → builder.
TINY_BUILDERS = {
    "tiny-unet": tiny_unet_pipeline,
    "tiny-class-unet": tiny_class_unet_pipeline,
    "tiny-sd": tiny_sd_pipeline,
    "tiny-sdxl": tiny_sdxl_pipeline,
    "tiny-dit": tiny_dit_pipeline,
}
