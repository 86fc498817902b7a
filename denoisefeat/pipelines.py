"""The pipeline class denoisefeat adds to diffusers: class-conditional sampling in pixel space.

It lives below :mod:`denoisefeat.models` (which loads it) and :mod:`denoisefeat.tiny` and
:mod:`denoisefeat.toy` (which build it), so that none of them imports another in a circle.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from denoisefeat.schedulers import initial_noise_scale, scale_model_input

__all__ = ["ClassConditionalImagePipeline"]


class ClassConditionalImagePipeline(DiffusionPipeline):
    """A pixel-space pipeline for a class-conditional ``UNet2DModel``, with classifier-free guidance.

    diffusers' ``DDPMPipeline``/``DDIMPipeline`` take no class labels; this is the same loop with
    ``class_labels`` passed to the UNet.  ``null_class`` is the label the model was trained with for
    "no condition" (classifier-free dropout): sampling with it is unconditional sampling, and
    guidance mixes the conditional and the null prediction.

    Parameters
    ----------
    unet : diffusers.UNet2DModel
        A UNet with ``num_class_embeds`` set (labels ``0 … num_class_embeds − 1``).
    scheduler : diffusers.SchedulerMixin
    null_class : int, optional
        The unconditional label; defaults to ``num_class_embeds − 1``.
    default_guidance_scale : float, optional
        The guidance scale used when a call (or :func:`denoisefeat.trace`) gives none; saved
        with the pipeline, so a model can ship with the scale it was evaluated at.
    label_set : str, optional
        What the class labels name, saved with the pipeline and recorded by :func:`denoisefeat.trace`
        in the run's attributes: ``"diffshapes"`` (:data:`denoisefeat.models.TOY_LABEL_SET`) for the
        DiffShapes conditions of the toy model, whose probes then decode shape, colour and texture
        (:func:`denoisefeat.probes.label_targets`); ``None``: plain class indices.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, null_class: int | None = None, default_guidance_scale: float = 1.0,
                 label_set: str | None = None):
        super().__init__()
        if unet.config.num_class_embeds is None:
            raise ValueError("ClassConditionalImagePipeline needs a UNet2DModel with num_class_embeds set.")
        if null_class is None:
            null_class = unet.config.num_class_embeds - 1
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(null_class=int(null_class), default_guidance_scale=float(default_guidance_scale),
                                label_set=None if label_set is None else str(label_set))

    @property
    def null_class(self) -> int:
        return self.config.null_class

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        *,
        guidance_scale: float | None = None,
        generator=None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        output_type: str = "np",
    ) -> ImagePipelineOutput:
        """Sample one image per label.

        Parameters
        ----------
        class_labels : sequence of int
            One label per image; ``null_class`` samples unconditionally.
        guidance_scale : float, optional
            Classifier-free guidance weight; ``1`` means no guidance.  Defaults to the
            pipeline's ``default_guidance_scale``.
        generator : torch.Generator or list of torch.Generator, optional
            One generator per image makes each image independent of the others in the batch.
        num_inference_steps : int
        eta : float
            DDIM's η (ignored by schedulers that do not take it).
        output_type : {"np", "pt"}
            Images as a float array (N, H, W, 3) in [0, 1], or a tensor (N, 3, H, W) in [0, 1].

        Returns
        -------
        diffusers.ImagePipelineOutput
        """
        import inspect

        labels = torch.as_tensor(list(class_labels), device=self._execution_device).long()
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (len(labels), self.unet.config.in_channels, *size)
        x = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        x = x * initial_noise_scale(self.scheduler)
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        guided = guidance_scale != 1.0
        null = torch.full_like(labels, self.null_class)
        model_labels = torch.cat([null, labels]) if guided else labels
        step_kwargs = {}
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        if "generator" in step_params:
            step_kwargs["generator"] = generator
        if "eta" in step_params:
            step_kwargs["eta"] = eta
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([x, x]) if guided else x
            model_input = scale_model_input(self.scheduler, model_input, t)
            out = self.unet(model_input, t, class_labels=model_labels, return_dict=False)[0]
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            x = self.scheduler.step(out, t, x, **step_kwargs).prev_sample
        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
        return ImagePipelineOutput(images=images)
