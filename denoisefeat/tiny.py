"""Tiny random-initialised pipelines of every family denoisefeat supports.

They load nothing from a hub and build in well under a second on a CPU, as the pipelines in
diffusers' own tests do: use them to try the API, to test code paths, and as the built-in model
names ``"tiny-unet"``, ``"tiny-class-unet"``, ``"tiny-sd"``, ``"tiny-sdxl"``, ``"tiny-dit"``,
``"tiny-sd3"``, ``"tiny-flux"`` and ``"tiny-pixart"`` of :func:`denoisefeat.models.load_pipeline`.
The text encoders are built from configs and the tokenizers from in-memory vocabularies
(character-level CLIP and T5 tokenizers), so nothing is downloaded.  Their weights are random: they make noise, not
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
    "tiny_t5_tokenizer",
    "tiny_dit_pipeline",
    "tiny_flux_pipeline",
    "tiny_pixart_pipeline",
    "tiny_sd3_pipeline",
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


def tiny_t5_tokenizer():
    """A character-level T5 (Unigram) tokenizer built in memory (lower-case ASCII text; no download).

    Every character is a piece, and a word-initial character is the piece ``"▁" + c``, as
    SentencePiece marks word starts; ids 0, 1 and 2 are ``<pad>``, ``</s>`` and ``<unk>`` as in T5.

    Returns
    -------
    transformers.T5Tokenizer
    """
    from transformers import T5Tokenizer

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG for the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_vae(*, latent_channels: int = 4, **options):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **options,
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


def _tiny_t5_text(*, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer.get_vocab()), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval(), tokenizer


#: The VAE of SD3 and Flux: shifted and scaled latents (``z / scaling + shift`` is decoded), no quant convs.
_FLOW_VAE = {"shift_factor": 0.0609, "scaling_factor": 1.5035, "use_quant_conv": False, "use_post_quant_conv": False}


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

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.
    num_classes : int
        Number of classes (labels ``0 … num_classes − 1``).
    prediction_type : str
        The scheduler's prediction type.

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

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.
    prediction_type : str
        The scheduler's prediction type.

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

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.

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

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.

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


def tiny_sd3_pipeline(*, seed: int = 0):
    """A ``StableDiffusion3Pipeline`` (``SD3Transformer2DModel``, joint attention, flow matching), 32×32 images.

    Two CLIP text encoders with projection and a T5 encoder, as SD3; two joint transformer blocks
    (the last one ``context_pre_only``, as in every SD3), patch size 2 on 16×16 latents (64 image
    tokens); ``FlowMatchEulerDiscreteScheduler`` with SD3's ``shift=3``.

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.

    Returns
    -------
    diffusers.StableDiffusion3Pipeline
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    with _seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
            pooled_projection_dim=16,  # both CLIP projections (8 + 8)
            pos_embed_max_size=16,
        ).eval()
        vae = _tiny_vae(**_FLOW_VAE).eval()
        text_encoder, tokenizer = _tiny_clip_text(projection=True, projection_dim=8)
        text_encoder_2, tokenizer_2 = _tiny_clip_text(projection=True, projection_dim=8)
        text_encoder_3, tokenizer_3 = _tiny_t5_text(d_model=32)  # CLIP hidden states (16 + 16) padded to 32
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


def tiny_flux_pipeline(*, seed: int = 0):
    """A guidance-distilled ``FluxPipeline`` (``FluxTransformer2DModel``, packed latents, rotary ids).

    One double-stream and one single-stream block, a guidance embedding (as FLUX.1-dev), a CLIP
    and a T5 text encoder; 4 latent channels packed 2×2 into 16 (a 32×32 image is 16×16 latents,
    64 tokens).  Its scheduler shifts sigmas with the image size (``use_dynamic_shifting``), as Flux's.
    ``FluxPipeline`` makes 256×256 images by default: pass ``height=32, width=32`` for a quick run.

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.

    Returns
    -------
    diffusers.FluxPipeline
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=(2, 2, 4),
        ).eval()
        vae = _tiny_vae(**_FLOW_VAE).eval()
        text_encoder, tokenizer = _tiny_clip_text()
        text_encoder_2, tokenizer_2 = _tiny_t5_text(d_model=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        shift=3.0,
    )
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )


def tiny_pixart_pipeline(*, seed: int = 0):
    """A ``PixArtSigmaPipeline`` (``PixArtTransformer2DModel`` with cross-attention to a T5 encoder), 32×32 images.

    Two transformer blocks, patch size 2 on 16×16 latents, a learned variance (``out_channels``
    twice the latent channels) and ``DPMSolverMultistepScheduler``, as PixArt-Σ.  Its sample size
    has no aspect-ratio bin: call the pipeline itself with ``use_resolution_binning=False``.

    Parameters
    ----------
    seed : int
        Seeds the random initialisation.

    Returns
    -------
    diffusers.PixArtSigmaPipeline
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    with _seeded(seed):
        transformer = PixArtTransformer2DModel(
            sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
            caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=16, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6,
        ).eval()
        vae = _tiny_vae().eval()
        text_encoder, tokenizer = _tiny_t5_text(d_model=32)
    return PixArtSigmaPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DPMSolverMultistepScheduler(),
    )


#: Built-in tiny model names → builder.
TINY_BUILDERS = {
    "tiny-unet": tiny_unet_pipeline,
    "tiny-class-unet": tiny_class_unet_pipeline,
    "tiny-sd": tiny_sd_pipeline,
    "tiny-sdxl": tiny_sdxl_pipeline,
    "tiny-dit": tiny_dit_pipeline,
    "tiny-sd3": tiny_sd3_pipeline,
    "tiny-flux": tiny_flux_pipeline,
    "tiny-pixart": tiny_pixart_pipeline,
}
