"""Run a pipeline's denoising loop and keep every step: x_t, x̂0 and the decoded image.

denoisefeat runs the loop itself, unrolled as diffusers documents it (denoiser, then
``scheduler.step``), for each pipeline family it supports; the loop of each family reproduces the
pipeline's own ``__call__`` (tests compare them) so that what is stored is what the pipeline makes.
Running the loop ourselves is what lets us take x̂0 from the scheduler's own step, split the
classifier-free-guidance batch, and know at every denoiser call which loop step it is.

Conventions
-----------
* ``step`` is the 0-based index of the sampling loop: one per denoiser call of the loop.  Second-order
  schedulers (Heun) call the denoiser twice per ``scheduler.timesteps`` pair; each call is a step, and
  ``timestep``/``sigma`` (coordinates along ``step``) say which point of the schedule it evaluated.
* ``xt[step]`` is the sample the scheduler holds when the denoiser is called at that step (before
  ``scale_model_input``), ``x0[step]`` is the scheduler's x̂0 at that step
  (:func:`denoisefeat.schedulers.predicted_original_sample`), ``images[step]`` is x̂0 in pixel space.
* Every sample has its own ``torch.Generator`` seeded with its seed, for the initial noise and any
  noise the scheduler adds: a sample's trajectory does not depend on the rest of its batch.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from denoisefeat import schedulers as _schedulers
from denoisefeat.models import denoiser_of, pipeline_family
from denoisefeat.store import Run, RunMismatchError, RunStore, StepWriter, StoreError

__all__ = ["StepClock", "TraceRequest", "trace"]


@dataclass
class StepClock:
    """Which loop step the denoiser is being called for; read by hooks during a trace.

    Attributes
    ----------
    step : int or None
        Loop index of the current denoiser call (``None`` outside the loop).
    samples : slice or None
        Which samples of the run are in the batch being denoised.
    branches : tuple of str or None
        Under classifier-free guidance, the order of the halves of the denoiser's batch
        (e.g. ``("uncond", "cond")``); ``None`` without guidance.
    """

    step: int | None = None
    samples: slice | None = None
    branches: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TraceRequest:
    """A validated description of what to run: the run store's ``attrs["run"]``."""

    model_id: str
    pipeline_class: str
    family: str
    denoiser_class: str
    denoiser_config: dict
    scheduler_class: str
    scheduler_config: dict
    prediction_type: str
    steps: int
    seeds: tuple[int, ...]
    prompts: tuple[str, ...] | None
    negative_prompt: str | None
    class_labels: tuple[int, ...] | None
    guidance_scale: float
    eta: float
    height: int | None
    width: int | None
    decode: bool
    dtype: str
    extra: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return len(self.seeds)

    def as_attrs(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _count(samples, prompts, class_labels) -> int:
    given = [len(c) for c in (prompts, class_labels) if c is not None]
    if prompts is not None and class_labels is not None:
        raise ValueError("Pass prompts or class_labels, not both.")
    if samples is not None:
        if samples <= 0:
            raise ValueError(f"samples must be a positive number, got {samples}.")
        if given and given[0] not in (1, samples):
            raise ValueError(
                f"samples={samples} but {given[0]} conditions were given; give one condition per sample, "
                "or a single one to repeat."
            )
        return samples
    if given:
        if given[0] == 0:
            raise ValueError("prompts/class_labels is empty.")
        return given[0]
    raise ValueError("Say how many samples to make: samples=N, prompts=[...] or class_labels=[...].")


def _repeat(values, n):
    if values is None:
        return None
    values = list(values)
    return tuple(values * n if len(values) == 1 else values)


def _seeds(seed, n) -> tuple[int, ...]:
    if isinstance(seed, (int, np.integer)):
        return tuple(int(seed) + i for i in range(n))
    seeds = tuple(int(s) for s in seed)
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} samples: give one seed per sample, or a single int.")
    return seeds


def _labels(class_labels, *, n_classes: int | None, null_class: int | None) -> tuple[int, ...] | None:
    """Class labels as ints, each checked against the model's number of classes."""
    if class_labels is None:
        return None
    labels = []
    for value in class_labels:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"Class labels must be integers; got {value!r} ({type(value).__name__}).")
        labels.append(int(value))
    if n_classes is not None:
        bad = sorted({v for v in labels if not 0 <= v < n_classes})
        if bad:
            null = f"; {null_class} is the null (unconditional) class" if null_class is not None else ""
            raise ValueError(f"Class label{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:5]))} out of range: "
                             f"this model has {n_classes} classes, 0–{n_classes - 1}{null}.")
    return tuple(labels)


def _default_guidance(pipe) -> float:
    configured = getattr(getattr(pipe, "config", None), "default_guidance_scale", None)
    if configured is not None:
        return float(configured)
    parameter = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return 1.0
    return float(parameter.default)


def _stable_config(config) -> dict:
    """A diffusers config as a dict that is the same in every process.

    diffusers lists ``_use_default_values`` from a set, so its order follows the process's string
    hashing; a store started by one process (a cluster task) must be resumable by another.
    """
    out = dict(config)
    if isinstance(out.get("_use_default_values"), (list, tuple)):
        out["_use_default_values"] = sorted(out["_use_default_values"])
    return out


def make_request(
    pipe,
    *,
    samples=None,
    prompts=None,
    class_labels=None,
    negative_prompt=None,
    seed=0,
    steps=50,
    scheduler=None,
    guidance_scale=None,
    eta=0.0,
    height=None,
    width=None,
    decode=True,
    model_id=None,
) -> tuple[TraceRequest, object]:
    """Validate a trace's arguments; returns the request and a fresh scheduler to run it with."""
    family = pipeline_family(pipe)
    if not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if isinstance(prompts, str):
        prompts = [prompts]
    if prompts is not None:
        prompts = list(prompts)
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"Prompts must be strings; got {bad[0]!r} ({type(bad[0]).__name__}).")
    if class_labels is not None:
        class_labels = list(class_labels)
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))):
        raise ValueError(f"samples must be a positive integer, got {samples!r}.")
    n = _count(samples, prompts, class_labels)
    prompts, class_labels = _repeat(prompts, n), _repeat(class_labels, n)
    if family in ("stable-diffusion", "stable-diffusion-xl") and prompts is None:
        raise ValueError(f"A {type(pipe).__name__} needs prompts=[...] (use [''] for unconditional samples).")
    if family not in ("stable-diffusion", "stable-diffusion-xl") and prompts is not None:
        raise ValueError(f"{type(pipe).__name__} takes no prompts; it takes class_labels or samples.")
    if family == "dit" and class_labels is None:
        raise ValueError("A DiTPipeline needs class_labels=[...].")
    denoiser = denoiser_of(pipe)
    conditional = getattr(denoiser.config, "num_class_embeds", None) is not None
    if family == "pixel" and conditional and class_labels is None:
        class_labels = (pipe.null_class,) * n  # unconditional sampling of a class-conditional model
    if family == "pixel" and not conditional and class_labels is not None:
        raise ValueError(f"{type(denoiser).__name__} of this pipeline is not class-conditional; drop class_labels.")
    if family == "pixel" and conditional:
        n_classes, null_class = int(denoiser.config.num_class_embeds), getattr(pipe, "null_class", None)
    elif family == "dit":  # labels 0 … num_embeds_ada_norm − 1; the pipeline adds the null class itself
        n_classes, null_class = denoiser.config.get("num_embeds_ada_norm"), None
    else:
        n_classes = null_class = None
    class_labels = _labels(class_labels, n_classes=n_classes, null_class=null_class)
    base = pipe.scheduler
    fresh = _schedulers.make_scheduler(base if scheduler is None else scheduler, base_config=base.config)
    _schedulers.sample_convention(fresh)  # refuse schedulers whose x̂0 we cannot get right
    guidance = _default_guidance(pipe) if guidance_scale is None else float(guidance_scale)
    if family == "pixel" and not conditional and guidance != 1.0:
        raise ValueError("Guidance needs a conditional model; this pipeline is unconditional.")
    request = TraceRequest(
        model_id=str(model_id or getattr(pipe, "name_or_path", None) or type(pipe).__name__),
        pipeline_class=type(pipe).__name__,
        family=family,
        denoiser_class=type(denoiser).__name__,
        denoiser_config=_stable_config(denoiser.config),
        scheduler_class=type(fresh).__name__,
        scheduler_config=_stable_config(fresh.config),
        prediction_type=str(fresh.config.get("prediction_type") or "flow_prediction"),
        steps=int(steps),
        seeds=_seeds(seed, n),
        prompts=prompts,
        negative_prompt=negative_prompt,
        class_labels=class_labels,
        guidance_scale=guidance,
        eta=float(eta),
        height=height,
        width=width,
        decode=bool(decode),
        dtype=str(denoiser.dtype).removeprefix("torch."),
    )
    return request, fresh


# ---------------------------------------------------------------------------------------------
# Families: how each kind of pipeline conditions, calls and decodes its denoiser.
# ---------------------------------------------------------------------------------------------
class _Family:
    """One pipeline family's denoising loop pieces.  ``branches`` is the CFG batch order."""

    branches: tuple[str, ...] | None = None

    def __init__(self, pipe, request: TraceRequest):
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
        first, second = output.chunk(2)
        uncond, cond = (first, second) if self.branches == ("uncond", "cond") else (second, first)
        return uncond + self.request.guidance_scale * (cond - uncond)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples → RGB in [0, 1]."""
        return (x / 2 + 0.5).clamp(0, 1)

    def model_output(self, x: torch.Tensor, t, cond: dict, scheduler) -> torch.Tensor:
        model_input = torch.cat([x, x]) if self.guided else x
        model_input = _schedulers.scale_model_input(scheduler, model_input, t)
        return self.combine(self.call_denoiser(model_input, t, cond))


class _PixelFamily(_Family):
    branches = ("uncond", "cond")

    def initial_sample(self, generators, scheduler):
        from diffusers.utils.torch_utils import randn_tensor

        size = self.denoiser.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (len(generators), self.denoiser.config.in_channels, *size)
        x = randn_tensor(shape, generator=generators, device=self.device, dtype=self.dtype)
        return x * _schedulers.initial_noise_scale(scheduler)

    def conditioning(self, samples):
        if self.request.class_labels is None:
            return {}
        labels = torch.tensor(self.request.class_labels[samples], device=self.device)
        if self.guided:
            labels = torch.cat([torch.full_like(labels, self.pipe.null_class), labels])
        return {"class_labels": labels}

    def call_denoiser(self, model_input, t, cond):
        return self.forward(model_input, t, return_dict=False, **cond)[0]


class _StableDiffusionFamily(_Family):
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
        return latents / _schedulers.initial_noise_scale(self.pipe.scheduler) * _schedulers.initial_noise_scale(scheduler)

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


class _DiTFamily(_Family):
    branches = ("cond", "uncond")  # DiTPipeline puts the null class second

    def initial_sample(self, generators, scheduler):
        from diffusers.utils.torch_utils import randn_tensor

        size = self.denoiser.config.sample_size
        shape = (len(generators), self.denoiser.config.in_channels, size, size)
        x = randn_tensor(shape, generator=generators, device=self.device, dtype=self.dtype)
        return x * _schedulers.initial_noise_scale(scheduler)

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


_FAMILIES = {
    "pixel": _PixelFamily,
    "stable-diffusion": _StableDiffusionFamily,
    "stable-diffusion-xl": _StableDiffusionXLFamily,
    "dit": _DiTFamily,
}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _step_kwargs(scheduler, generators, eta) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "generator" in params:
        kwargs["generator"] = generators
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _schedule(scheduler, steps: int, device) -> dict[str, np.ndarray]:
    """Timesteps, sigmas and ᾱ of every loop step (Heun's doubled schedule included)."""
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    coords = {"timestep": np.asarray(_numpy(timesteps), dtype=np.float64)}
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) >= len(timesteps):
        coords["sigma"] = np.asarray(_numpy(sigmas[: len(timesteps)]), dtype=np.float64)
    coords["alpha_bar"] = np.array(
        [_schedulers.noise_level(scheduler, timestep=t, step_index=i).alpha_bar for i, t in enumerate(timesteps)]
    )
    return coords


@torch.no_grad()
def _run_chunk(family: _Family, scheduler, samples: slice, writer: StepWriter, keep, clock: StepClock, progress,
               edit_sample=None):
    request = family.request
    generators = [torch.Generator(device=family.device).manual_seed(s) for s in request.seeds[samples]]
    scheduler.set_timesteps(request.steps, device=family.device)
    x = family.initial_sample(generators, scheduler)
    cond = family.conditioning(samples)
    step_kwargs = _step_kwargs(scheduler, generators, request.eta)
    clock.samples, clock.branches = samples, (family.branches if family.guided else None)
    try:
        for i, t in enumerate(scheduler.timesteps):
            clock.step = i
            if edit_sample is not None:
                x = edit_sample(i, samples, x)  # x_t as the denoiser and the scheduler will see it
            output = family.model_output(x, t, cond, scheduler)
            step = scheduler.step(output, t, x, **step_kwargs)
            x0 = _schedulers.predicted_original_sample(
                scheduler, step_output=step, model_output=output, sample=x, timestep=t, step_index=i
            )
            if "xt" in keep:
                writer.append("xt", i, _numpy(x))
            if "x0" in keep:
                writer.append("x0", i, _numpy(x0))
            if "images" in keep:
                writer.append("images", i, _numpy(family.to_images(x0)))
            x = step.prev_sample  # x_{t-1}
            if progress is not None:
                progress()
    finally:
        clock.step = clock.samples = clock.branches = None
    return family.to_images(x)


def trace(
    pipe,
    *,
    samples: int | None = None,
    prompts: Sequence[str] | str | None = None,
    class_labels: Sequence[int] | None = None,
    negative_prompt: str | None = None,
    seed: int | Sequence[int] = 0,
    steps: int = 50,
    scheduler=None,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    store: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    only_samples: slice | None = None,
    keep: Sequence[str] = ("xt", "x0", "images"),
    store_dtype: str = "float32",
    record=None,
    record_steps=None,
    intervene=None,
    backend: str = "torch",
    model_id: str | None = None,
    progress: bool = False,
    repair: bool = False,
    edit_sample=None,
) -> Run:
    """Run the denoising loop and store every step of every sample.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline
        From :func:`denoisefeat.load_pipeline` or diffusers directly.  Supported: DDPM/DDIM
        pipelines, :class:`~denoisefeat.models.ClassConditionalImagePipeline`, Stable Diffusion
        1.x/2.x, SDXL and DiT.
    samples : int, optional
        Number of samples; with one prompt or label, that condition is repeated.
    prompts : str or sequence of str, optional
        Text prompts (latent text-to-image pipelines), one per sample.
    class_labels : sequence of int, optional
        Class labels (class-conditional models), one per sample.  A class-conditional model
        without labels samples unconditionally (its null class).
    negative_prompt : str, optional
        Negative prompt for every sample under guidance.
    seed : int or sequence of int
        Sample ``i`` uses seed ``seed + i`` (or ``seed[i]``): its own generator, so its trajectory
        does not depend on the other samples of its batch.
    steps : int
        Number of inference steps (``num_inference_steps``).
    scheduler : str or diffusers scheduler, optional
        ``"ddim"``, ``"ddpm"``, ``"euler"``, ``"heun"``, ``"dpm++"``, ``"flow-euler"`` … or an instance;
        built from the pipeline's scheduler config.  Default: the pipeline's own scheduler class.
        The pipeline itself is never modified.
    guidance_scale : float, optional
        Classifier-free guidance; default: the pipeline's own default.  ``1`` switches guidance off.
    eta : float
        DDIM's η.
    height, width : int, optional
        Image size for latent text-to-image pipelines.
    batch_size : int
        Samples denoised together; also the store's sample chunk (the unit a writer owns).
    store : str or path, optional
        Where to write the zarr store; ``None`` keeps it in memory (small notebook runs).
    overwrite : bool
        Replace an existing denoisefeat store at ``store``.  The new store is written beside the
        old one and takes its place only once complete: a failed or killed run leaves the old one.
    resume : bool
        Complete a half-written store made with the same settings (only missing sample chunks run,
        in the store's own sample chunks; ``batch_size`` is then taken from the store).
    only_samples : slice, optional
        Compute only the store's sample chunks inside this range (what a cluster task owns);
        ``start``/``stop`` must be multiples of ``batch_size`` (or the sample count).  The store's
        metadata is then not consolidated: the last writer does it (``RunStore.finalize``).
    keep : sequence of {"xt", "x0", "images"}
        Which per-step arrays to store (``final`` is always stored).
    store_dtype : {"float32", "float16"}
        dtype of the stored per-step arrays.
    record : str, sequence of str or mapping, optional
        Layers to record and their reducers (see :class:`denoisefeat.hooks.record`), e.g.
        ``{"mid_block": "channel_mean", "up_blocks.1": ["spatial_energy", "full"]}``; stored under
        ``acts/<layer>/<reducer>`` with dims ``(sample, [branch,] step, ...)``.
    record_steps : int, range or iterable of int, optional
        Steps at which to record (default: all); other steps stay NaN.  Recorded outputs are the
        outputs after any ``intervene`` edits of the same layer.
    intervene : Edit or sequence of Edit, optional
        Edits applied during the run (:class:`denoisefeat.hooks.Edit`); described in
        ``attrs["run"]["extra"]["interventions"]``.
    backend : {"torch", "nnsight"}
        How ``record``/``intervene`` reach the layers: plain torch forward hooks (default), or an
        nnsight trace of every denoiser call (:mod:`denoisefeat.hooks.nnsight_backend`).  Both give
        identical tensors.
    model_id : str, optional
        Name recorded in the store; default: where the pipeline was loaded from.
    progress : bool
        Show a progress bar.
    repair : bool
        With ``resume``: read every chunk first, and recompute the sample chunks whose chunk files
        are missing or do not decode (:meth:`denoisefeat.store.RunStore.repair`).  The repaired
        store equals an undamaged one bit for bit.
    edit_sample : callable, optional
        ``edit_sample(step, samples, x_t) -> x_t``, called at every step before the denoiser with the
        loop step, the run's sample indices in the batch (a slice) and the sample the scheduler holds;
        what it returns replaces x_t for the denoiser and the scheduler (and is what ``xt`` stores).
        Its ``repr`` is recorded in ``attrs["run"]["extra"]["edit_sample"]``.  Used by
        :func:`denoisefeat.analyses.perturbation_timing`.

    Returns
    -------
    Run
        The store, opened for reading (``run.dataset``, ``run["x0"]``, ``run.acts(...)``).

    Notes
    -----
    Every argument is checked (labels against the model's classes, prompts, layers, reducers,
    edits, backend) before a store is created or opened.  A trace that writes a store on disk
    (without ``only_samples``) holds its lock (``.<name>.lock`` beside it) until it returns: a second
    live writer is refused with the holder's PID and host.

    A sample's trajectory does not depend on its batch (its own generator), but the denoiser's
    floating-point rounding does, by about 1e-6 of ε.  x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t multiplies
    that by √((1−ᾱ_t)/ᾱ_t): up to ~2·10⁴ at the first step of a schedule that ends at ᾱ ≈ 2·10⁻⁹,
    so early-step x̂0 of one sample can differ by ~1e-2 between batch sizes, while the final image
    (ᾱ → 1) agrees to 1e-4.  Compare early-step x̂0 across runs with the same ``batch_size``.
    """
    unknown = set(keep) - {"xt", "x0", "images"}
    if unknown:
        raise ValueError(f"keep: unknown arrays {sorted(unknown)}; choose from 'xt', 'x0', 'images'.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if backend not in ("torch", "nnsight"):
        raise ValueError(f"backend must be 'torch' or 'nnsight', got {backend!r}.")
    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store_dtype must be 'float32' or 'float16', got {store_dtype!r}.")
    if overwrite and resume:
        raise ValueError("Pass overwrite or resume, not both: overwrite starts the store again, resume completes it.")
    if repair and not resume:
        raise ValueError("repair completes an existing store: pass it with resume=True (CLI: --resume --repair).")
    if overwrite and only_samples is not None:
        raise ValueError("overwrite cannot be combined with only_samples (a task writes its share of a shared store).")
    request, scheduler_ = make_request(
        pipe, samples=samples, prompts=prompts, class_labels=class_labels, negative_prompt=negative_prompt,
        seed=seed, steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, eta=eta, height=height,
        width=width, decode="images" in keep, model_id=model_id,
    )
    family = _FAMILIES[request.family](pipe, request)
    coords = _schedule(scheduler_, request.steps, family.device)
    n_loop = len(coords["timestep"])
    clock = StepClock()
    current: dict[str, StepWriter] = {}
    recorder, editor = _hook_managers(pipe, request, record, record_steps, intervene, n_loop, clock, current)
    if recorder is not None or editor is not None:
        extra = {"record": None if recorder is None else [[n, r.name] for n, r in recorder.plan],
                 "record_steps": None if recorder is None or recorder.steps is None else sorted(recorder.steps),
                 "interventions": None if editor is None else editor.describe()}
        request = replace(request, extra=extra)
    if edit_sample is not None:
        request = replace(request, extra={**request.extra, "edit_sample": repr(edit_sample)})
    with contextlib.ExitStack() as lock:
        if store is not None and only_samples is None:  # a cluster task holds its own task lock instead
            lock.enter_context(_store_lock(store))
        return _trace_into(store, request, family, scheduler_, coords, clock, current, recorder, editor,
                           batch_size=batch_size, overwrite=overwrite, resume=resume, repair=repair,
                           only_samples=only_samples, keep=keep, store_dtype=store_dtype, backend=backend,
                           progress=progress, edit_sample=edit_sample)


def _store_lock(path):
    """The lock of the store at ``path`` (a file beside it), as the jobs' task locks are made."""
    from denoisefeat.jobs.state import TaskLock

    path = Path(path).expanduser().resolve()
    if not path.parent.is_dir():
        raise StoreError(f"Cannot create {str(path)!r}: the folder {str(path.parent)!r} does not exist.")
    return TaskLock(path.with_name(f".{path.name}.lock"), what=f"The store {str(path)!r}")


def _trace_into(store, request, family, scheduler_, coords, clock, current, recorder, editor, *, batch_size,
                overwrite, resume, repair, only_samples, keep, store_dtype, backend, progress, edit_sample) -> Run:
    n_loop = len(coords["timestep"])
    run_store = _open_or_create(store, request, n_steps=n_loop, batch_size=batch_size, overwrite=overwrite,
                                resume=resume)
    if repair and run_store.path is not None:
        run_store.repair(run_store.damage(decode=True))
        _write_coordinates(run_store, request, coords, rewrite=True)
    chunks = run_store.incomplete_chunks()
    if only_samples is not None:  # a cluster task: compute only the sample chunks it owns
        start, stop, _ = only_samples.indices(run_store.n_samples)
        bounds = {0, run_store.n_samples} | {c.start for c in run_store.sample_chunks()}
        if start not in bounds or stop not in bounds:
            raise ValueError(f"only_samples={start}:{stop} does not fall on the store's sample chunks of "
                             f"{run_store.chunk_samples} (boundaries at multiples of {run_store.chunk_samples} "
                             f"and {run_store.n_samples}).")
        chunks = [c for c in chunks if c.start >= start and c.stop <= stop]
    _write_coordinates(run_store, request, coords)
    if recorder is not None:
        acts = run_store.group.require_group("acts")
        if acts.attrs.get("layers") != recorder.layers:  # written once: concurrent tasks share this group
            acts.attrs["layers"] = recorder.layers
    managers = [m for m in (editor, recorder) if m is not None]  # edits first: recordings show the edited flow
    with contextlib.ExitStack() as hooks, _progress(progress, total=len(chunks) * n_loop) as advance:
        if backend == "torch":
            for manager in managers:
                hooks.enter_context(manager)
        elif managers:
            from denoisefeat.hooks.nnsight_backend import NNsightForward

            family.forward = NNsightForward(family.denoiser, managers)
        for samples_ in chunks:
            writer = current["writer"] = StepWriter(run_store, samples_)
            for name in keep:
                writer.declare(name, tail_dims=_DIMS[name], dtype=store_dtype)
            try:
                final = _run_chunk(family, scheduler_, samples_, writer, keep, clock, advance, edit_sample)
            finally:
                writer.close()
            run_store.ensure_array(
                "final", shape=(run_store.n_samples, *final.shape[1:]), dims=("sample", "rgb", "height", "width"),
                dtype=store_dtype,
            )[samples_] = _numpy(final)
            run_store.mark_complete(samples_)
    family.forward = family.denoiser
    if only_samples is None:  # a task's store is consolidated once, after the last writer (jobs merge)
        run_store.finalize()
    return Run(run_store)


def _hook_managers(pipe, request, record, record_steps, edits, n_loop, clock, current):
    """The record and intervene context managers of a trace (not entered), validated against the run."""
    if record is None and edits is None:
        return None, None
    from denoisefeat import hooks
    from denoisefeat.hooks.record import BRANCHES, steps_selection
    from denoisefeat.hooks.reducers import band_coords

    recorder = editor = None
    if record is not None:
        def sink(layer, reducer, step, array, dims, branched):
            writer = current["writer"]
            name = f"acts/{layer}/{reducer}"
            if not writer.declared(name):
                attrs = {"layer": layer, "reducer": reducer}
                if branched:
                    attrs["branches"] = list(BRANCHES)
                if "band" in dims:
                    attrs["bands"] = list(band_coords())
                lead = ("sample", "branch", "step") if branched else ("sample", "step")
                shape = (request.n_samples, 2, n_loop) if branched else (request.n_samples, n_loop)
                writer.declare(name, tail_dims=dims, dtype="float32", lead_dims=lead, lead_shape=shape,
                               attrs=attrs, steps=recorder.steps)
            writer.append(name, step, array)

        recorder = hooks.record(pipe, record, steps=steps_selection(record_steps, n_loop), clock=clock, sink=sink)
    if edits is not None:
        editor = hooks.intervene(pipe, edits, clock=clock)
        for edit in editor.edits:
            if edit.steps is not None and max(edit.steps, default=0) >= n_loop:
                raise ValueError(f"Edit of {edit.layer!r} names step {max(edit.steps)}; the run has {n_loop} steps.")
            if edit.samples is not None and max(edit.samples, default=0) >= request.n_samples:
                raise ValueError(
                    f"Edit of {edit.layer!r} names sample {max(edit.samples)}; the run has {request.n_samples}."
                )
        editor.check_seeds(request.seeds)
    return recorder, editor


_DIMS = {
    "xt": ("channel", "y", "x"),
    "x0": ("channel", "y", "x"),
    "images": ("rgb", "height", "width"),
}


def _write_coordinates(store: RunStore, request: TraceRequest, coords: dict, *, rewrite: bool = False) -> None:
    if "timestep" in store.group and not rewrite:
        return
    store.write_coordinate("step", np.arange(len(coords["timestep"])), dim="step")
    for name, values in coords.items():
        store.write_coordinate(name, values, dim="step")
    store.write_coordinate("seed", np.asarray(request.seeds, dtype=np.int64), dim="sample")
    if request.class_labels is not None:
        store.write_coordinate("class_label", np.asarray(request.class_labels, dtype=np.int64), dim="sample")


def _open_or_create(path, request: TraceRequest, *, n_steps, batch_size, overwrite, resume) -> RunStore:
    attrs = request.as_attrs()
    if path is not None and resume and Path(path).expanduser().exists():
        store = RunStore.open(path)
        diff = store.differing_attrs(attrs)
        if diff:
            raise RunMismatchError(
                f"Cannot resume {str(store.path)!r}: it was started with different settings ({', '.join(diff)}). "
                "Resume with the same settings, or write a new store."
            )
        return store
    return RunStore.create(
        path, run_attrs=attrs, n_samples=request.n_samples, n_steps=n_steps,
        chunk_samples=batch_size, overwrite=overwrite,
    )


class _progress:
    """A rich progress bar over denoiser calls, or nothing."""

    def __init__(self, enabled: bool, *, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
        )
        self._bar.__enter__()
        task = self._bar.add_task("denoising", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
