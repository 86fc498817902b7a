"""How each kind of diffusers pipeline conditions, calls and decodes its denoiser.

The loop itself is :class:`denoisefeat.trajectory.DenoisingLoop`; a family supplies its pieces, each
reproducing what the pipeline's own ``__call__`` does (``tests/test_trajectory.py`` compares them):
the initial sample, the conditioning of a batch of samples, one denoiser evaluation, classifier-free
guidance in the family's branch order (:mod:`denoisefeat.steps`) and the decoding of model-space
samples to RGB.

Transformer families with flow matching (SD3, Flux) keep the loop's sample as the VAE's latent
image ``(batch, channel, y, x)``, as every other family: Flux packs it into 2×2 patch tokens only
for the transformer call (and unpacks the velocity), so x_t and x̂0 are stored as latent images.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from denoisefeat.models import denoiser_of
from denoisefeat.schedulers import initial_noise_scale, scale_model_input
from denoisefeat.steps import uncond_cond

__all__ = ["PipelineFamily", "family_of"]


class PipelineFamily:
    """One pipeline family's pieces of the denoising loop: initial noise, conditioning, one denoiser
    call, classifier-free guidance and decoding.  ``branches`` is the order of the CFG batch halves.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    request : denoisefeat.options.TraceRequest
        The validated run; ``request.family`` names the subclass (:func:`family_of`).
    """

    branches: tuple[str, ...] | None = None

    #: Whether the denoiser is a flow-matching model (it needs a flow-matching scheduler).
    flow_matching = False

    def __init__(self, pipe, request):
        self.pipe = pipe
        self.request = request
        self.denoiser = denoiser_of(pipe)
        self.forward = self.denoiser  # what is called for one denoiser evaluation (a hook backend may wrap it)
        self.device = self.denoiser.device
        self.dtype = self.denoiser.dtype
        self.guided = request.guidance_scale > 1.0

    def check(self) -> None:
        """Refuse options this family cannot run (a clear ``ValueError``); called before any store is touched."""

    def timestep_options(self, scheduler) -> dict:
        """Keyword options of ``scheduler.set_timesteps`` the pipeline passes besides the step count.

        Flux passes its own sigmas and the resolution-dependent shift ``mu``; SD3 passes ``mu`` when
        its scheduler shifts dynamically.  JSON-able: the run store records them.
        """
        return {}

    def initial_sample(self, generators, scheduler) -> torch.Tensor:
        raise NotImplementedError

    def conditioning(self, samples: slice) -> dict:
        raise NotImplementedError

    def call_denoiser(self, model_input, t, cond) -> torch.Tensor:
        raise NotImplementedError

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance over the doubled batch, in the family's branch order."""
        if not self.guided:
            return output
        uncond, cond = uncond_cond(*output.chunk(2), self.branches)
        return uncond + self.request.guidance_scale * (cond - uncond)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples → RGB in [0, 1]."""
        return (x / 2 + 0.5).clamp(0, 1)

    def model_output(self, x: torch.Tensor, t, cond: dict, scheduler) -> torch.Tensor:
        model_input = torch.cat([x, x]) if self.guided else x
        model_input = scale_model_input(scheduler, model_input, t)
        return self.combine(self.call_denoiser(model_input, t, cond))


class _PixelFamily(PipelineFamily):
    branches = ("uncond", "cond")

    def initial_sample(self, generators, scheduler):
        from diffusers.utils.torch_utils import randn_tensor

        size = self.denoiser.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (len(generators), self.denoiser.config.in_channels, *size)
        x = randn_tensor(shape, generator=generators, device=self.device, dtype=self.dtype)
        return x * initial_noise_scale(scheduler)

    def conditioning(self, samples):
        if self.request.class_labels is None:
            return {}
        labels = torch.tensor(self.request.class_labels[samples], device=self.device)
        if self.guided:
            labels = torch.cat([torch.full_like(labels, self.pipe.null_class), labels])
        return {"class_labels": labels}

    def call_denoiser(self, model_input, t, cond):
        return self.forward(model_input, t, return_dict=False, **cond)[0]


class _StableDiffusionFamily(PipelineFamily):
    branches = ("uncond", "cond")
    shifted_latents = False  # SD3 and Flux decode z / scaling_factor + shift_factor

    def _size(self):
        scale = self.pipe.vae_scale_factor
        default = self.denoiser.config.sample_size * scale
        return self.request.height or default, self.request.width or default

    def _negative(self, n: int):
        return None if self.request.negative_prompt is None else [self.request.negative_prompt] * n

    def initial_sample(self, generators, scheduler):
        height, width = self._size()
        latents = self.pipe.prepare_latents(
            len(generators), self.denoiser.config.in_channels, height, width, self.dtype, self.device, generators
        )
        # prepare_latents scales by the pipeline's scheduler; ours may differ (another scheduler class)
        return latents / initial_noise_scale(self.pipe.scheduler) * initial_noise_scale(scheduler)

    def conditioning(self, samples):
        prompts = list(self.request.prompts[samples])
        embeds, negative_embeds = self.pipe.encode_prompt(prompts, self.device, 1, self.guided,
                                                          self._negative(len(prompts)))
        cond = {"encoder_hidden_states": torch.cat([negative_embeds, embeds]) if self.guided else embeds}
        proj_dim = self.denoiser.config.time_cond_proj_dim
        if proj_dim is not None:  # guidance-distilled (LCM) UNets take the guidance scale as an embedding
            w = torch.tensor(self.request.guidance_scale - 1).repeat(len(prompts))
            cond["timestep_cond"] = self.pipe.get_guidance_scale_embedding(w, embedding_dim=proj_dim).to(
                device=self.device, dtype=self.dtype
            )
        return cond

    def call_denoiser(self, model_input, t, cond):
        return self.forward(model_input, t, return_dict=False, **cond)[0]

    def to_images(self, x):
        vae = self.pipe.vae
        z = x.to(vae.dtype) / vae.config.scaling_factor
        if self.shifted_latents:
            z = z + vae.config.shift_factor
        decoded = vae.decode(z, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1)


class _StableDiffusionXLFamily(_StableDiffusionFamily):
    def conditioning(self, samples):
        prompts = list(self.request.prompts[samples])
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.guided, negative_prompt=self._negative(len(prompts)),
        )
        height, width = self._size()
        # SDXL's micro-conditioning: original size, crop top-left, target size (no crop, no resize)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=self.device)
        time_ids = time_ids.repeat(len(prompts), 1)
        if self.guided:
            embeds = torch.cat([negative_embeds, embeds])
            pooled = torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


class _DiTFamily(PipelineFamily):
    branches = ("cond", "uncond")  # DiTPipeline puts the null class second

    def initial_sample(self, generators, scheduler):
        from diffusers.utils.torch_utils import randn_tensor

        size = self.denoiser.config.sample_size
        shape = (len(generators), self.denoiser.config.in_channels, size, size)
        x = randn_tensor(shape, generator=generators, device=self.device, dtype=self.dtype)
        return x * initial_noise_scale(scheduler)

    def conditioning(self, samples):
        labels = torch.tensor(self.request.class_labels[samples], device=self.device)
        if self.guided:
            labels = torch.cat([labels, torch.full_like(labels, 1000)])
        return {"class_labels": labels}

    def call_denoiser(self, model_input, t, cond):
        timestep = t if torch.is_tensor(t) else torch.tensor([t], device=self.device)
        timestep = timestep.reshape(-1).to(self.device).expand(model_input.shape[0])
        output = self.forward(model_input, timestep=timestep, return_dict=False, **cond)[0]
        channels = self.denoiser.config.in_channels
        return output[:, :channels]  # drop the learned variance, as DiTPipeline does

    def to_images(self, x):
        vae = self.pipe.vae
        decoded = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1)


def _call_default(pipe, name: str):
    """The default of the pipeline's own ``__call__`` for option ``name`` (e.g. ``max_sequence_length``)."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


def _dynamic_shift(scheduler, image_seq_len: int, *, max_shift: float) -> float:
    """The resolution-dependent shift ``mu`` of SD3 and Flux: linear in the number of image tokens."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return float(calculate_shift(
        image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5), config.get("max_shift", max_shift),
    ))


class _StableDiffusion3Family(_StableDiffusionFamily):
    """``StableDiffusion3Pipeline``: an MMDiT (joint attention over image and text tokens), flow matching."""

    flow_matching = True
    shifted_latents = True

    def check(self):
        height, width = self._size()
        multiple = self.pipe.vae_scale_factor * self.denoiser.config.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"{type(self.pipe).__name__} needs height and width divisible by {multiple} "
                             f"(VAE factor × patch size), got {height}×{width}.")

    def timestep_options(self, scheduler):
        if not scheduler.config.get("use_dynamic_shifting"):
            return {}
        height, width = self._size()
        patch, scale = self.denoiser.config.patch_size, self.pipe.vae_scale_factor
        tokens = (height // scale // patch) * (width // scale // patch)
        return {"mu": _dynamic_shift(scheduler, tokens, max_shift=1.16)}  # SD3's default max_shift

    def conditioning(self, samples):
        prompts = list(self.request.prompts[samples])
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=self.guided,
            negative_prompt=self._negative(len(prompts)),
            max_sequence_length=_call_default(self.pipe, "max_sequence_length"),
        )
        if self.guided:
            embeds, pooled = torch.cat([negative_embeds, embeds]), torch.cat([negative_pooled, pooled])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def call_denoiser(self, model_input, t, cond):
        timestep = torch.as_tensor(t, device=self.device).expand(model_input.shape[0])
        return self.forward(hidden_states=model_input, timestep=timestep, return_dict=False, **cond)[0]


class _FluxFamily(_StableDiffusionFamily):
    """``FluxPipeline``: guidance-distilled (``guidance_scale`` is an input of the transformer, no CFG batch);
    the latent image is packed into 2×2 patch tokens with rotary position ids for each call."""

    branches = None
    flow_matching = True
    shifted_latents = True

    def __init__(self, pipe, request):
        super().__init__(pipe, request)
        self.guided = False  # the guidance scale goes into the guidance embedding

    def _size(self):
        default = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return self.request.height or default, self.request.width or default

    def _latent_size(self) -> tuple[int, int]:
        height, width = self._size()
        multiple = 2 * self.pipe.vae_scale_factor
        return 2 * (height // multiple), 2 * (width // multiple)

    def check(self):
        if self.request.negative_prompt is not None:
            raise ValueError("FluxPipeline is guidance-distilled: guidance_scale sets its guidance embedding and "
                             "it has no unconditional branch, so negative_prompt is not supported.")
        height, width = self._size()
        multiple = 2 * self.pipe.vae_scale_factor
        if height % multiple or width % multiple:
            raise ValueError(f"FluxPipeline needs height and width divisible by {multiple} (VAE factor × 2 for the "
                             f"packed latents), got {height}×{width}.")

    def timestep_options(self, scheduler):
        parameters = inspect.signature(scheduler.set_timesteps).parameters
        options = {}
        if "sigmas" in parameters and not scheduler.config.get("use_flow_sigmas", False):
            steps = self.request.steps
            options["sigmas"] = np.linspace(1.0, 1.0 / steps, steps).tolist()  # as FluxPipeline sets them
        if "mu" in parameters:
            height, width = self._latent_size()
            options["mu"] = _dynamic_shift(scheduler, (height // 2) * (width // 2), max_shift=1.15)
        return options

    def initial_sample(self, generators, scheduler):
        height, width = self._size()
        channels = self.denoiser.config.in_channels // 4
        packed, _ = self.pipe.prepare_latents(
            len(generators), channels, height, width, self.dtype, self.device, generators
        )
        return self.pipe._unpack_latents(packed, height, width, self.pipe.vae_scale_factor)

    def conditioning(self, samples):
        prompts = list(self.request.prompts[samples])
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device,
            max_sequence_length=_call_default(self.pipe, "max_sequence_length"),
        )
        height, width = self._latent_size()
        image_ids = self.pipe._prepare_latent_image_ids(len(prompts), height // 2, width // 2, self.device, self.dtype)
        cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids,
                "img_ids": image_ids}
        if self.denoiser.config.guidance_embeds:
            scale = torch.full([1], self.request.guidance_scale, device=self.device, dtype=torch.float32)
            cond["guidance"] = scale.expand(len(prompts))
        return cond

    def call_denoiser(self, model_input, t, cond):
        batch, channels, height, width = model_input.shape
        packed = self.pipe._pack_latents(model_input, batch, channels, height, width)
        timestep = torch.as_tensor(t, device=self.device).expand(batch).to(model_input.dtype) / 1000
        velocity = self.forward(hidden_states=packed, timestep=timestep, return_dict=False, **cond)[0]
        scale = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(velocity, height * scale, width * scale, scale)


class _PixArtFamily(_StableDiffusionFamily):
    """``PixArtSigmaPipeline``: a DiT with cross-attention to T5 text tokens (masked), learned variance."""

    def conditioning(self, samples):
        from diffusers.utils import is_bs4_available, is_ftfy_available

        prompts = list(self.request.prompts[samples])
        # the pipeline cleans captions by default where bs4 and ftfy are installed (else it only lower-cases)
        clean = _call_default(self.pipe, "clean_caption") and is_bs4_available() and is_ftfy_available()
        embeds, mask, negative_embeds, negative_mask = self.pipe.encode_prompt(
            prompts, self.guided, negative_prompt=self.request.negative_prompt or "", device=self.device,
            clean_caption=clean, max_sequence_length=_call_default(self.pipe, "max_sequence_length"),
        )
        if self.guided:
            embeds, mask = torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask])
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask,
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    def call_denoiser(self, model_input, t, cond):
        timestep = torch.as_tensor(t, device=self.device).reshape(-1).expand(model_input.shape[0])
        output = self.forward(model_input, timestep=timestep, return_dict=False, **cond)[0]
        channels = self.denoiser.config.in_channels
        if self.denoiser.config.out_channels // 2 == channels:
            output = output[:, :channels]  # drop the learned variance, as the pipeline does
        return output


_FAMILIES: dict[str, type[PipelineFamily]] = {
    "pixel": _PixelFamily,
    "stable-diffusion": _StableDiffusionFamily,
    "stable-diffusion-xl": _StableDiffusionXLFamily,
    "dit": _DiTFamily,
    "stable-diffusion-3": _StableDiffusion3Family,
    "flux": _FluxFamily,
    "pixart": _PixArtFamily,
}


def family_of(pipe, request) -> PipelineFamily:
    """The loop pieces of ``pipe``'s family.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
    request : denoisefeat.options.TraceRequest
        A validated run of ``pipe`` (its ``family`` is :func:`denoisefeat.models.pipeline_family`).

    Returns
    -------
    PipelineFamily
    """
    return _FAMILIES[request.family](pipe, request)
