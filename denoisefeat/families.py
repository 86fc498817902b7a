"""How each kind of diffusers pipeline conditions, calls and decodes its denoiser.

The loop itself is :class:`denoisefeat.trajectory.DenoisingLoop`; a family supplies its pieces, each
reproducing what the pipeline's own ``__call__`` does (``tests/test_trajectory.py`` compares them):
the initial sample, the conditioning of a batch of samples, one denoiser evaluation, classifier-free
guidance in the family's branch order (:mod:`denoisefeat.steps`) and the decoding of model-space
samples to RGB.
"""

from __future__ import annotations

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

    def __init__(self, pipe, request):
        self.pipe = pipe
        self.request = request
        self.denoiser = denoiser_of(pipe)
        self.forward = self.denoiser  # what is called for one denoiser evaluation (a hook backend may wrap it)
        self.device = self.denoiser.device
        self.dtype = self.denoiser.dtype
        self.guided = request.guidance_scale > 1.0

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

    def _size(self):
        scale = self.pipe.vae_scale_factor
        default = self.denoiser.config.sample_size * scale
        return self.request.height or default, self.request.width or default

    def initial_sample(self, generators, scheduler):
        height, width = self._size()
        latents = self.pipe.prepare_latents(
            len(generators), self.denoiser.config.in_channels, height, width, self.dtype, self.device, generators
        )
        # prepare_latents scales by the pipeline's scheduler; ours may differ (another scheduler class)
        return latents / initial_noise_scale(self.pipe.scheduler) * initial_noise_scale(scheduler)

    def conditioning(self, samples):
        prompts = list(self.request.prompts[samples])
        negative = None if self.request.negative_prompt is None else [self.request.negative_prompt] * len(prompts)
        embeds, negative_embeds = self.pipe.encode_prompt(prompts, self.device, 1, self.guided, negative)
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
        decoded = vae.decode(x.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1)


class _StableDiffusionXLFamily(_StableDiffusionFamily):
    def conditioning(self, samples):
        prompts = list(self.request.prompts[samples])
        negative = None if self.request.negative_prompt is None else [self.request.negative_prompt] * len(prompts)
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.guided, negative_prompt=negative,
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


_FAMILIES: dict[str, type[PipelineFamily]] = {
    "pixel": _PixelFamily,
    "stable-diffusion": _StableDiffusionFamily,
    "stable-diffusion-xl": _StableDiffusionXLFamily,
    "dit": _DiTFamily,
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
