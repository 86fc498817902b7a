"""Scheduler helpers: pick a scheduler by name, the noise level of each step, and x̂0.

Every diffusers scheduler holds the current sample ``x_t`` in one of three conventions
(what ``scheduler.step`` receives as ``sample``)::

    variance preserving ("vp"):  x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε     DDPM, DDIM, DPM-Solver, UniPC, PNDM
    variance exploding  ("ve"):  x_t = x0 + σ_t·ε                         Euler, Euler ancestral, Heun, LMS, KDPM2
    rectified flow    ("flow"):  x_t = (1 − σ_t)·x0 + σ_t·ε               flow-matching Euler, *_flow sigmas

so in every case ``x_t = a_t·x0 + s_t·ε`` with a signal scale ``a_t`` and a noise scale ``s_t``
(:func:`noise_level`).  The signal-to-noise ratio is ``a_t² / s_t²`` and the equivalent
variance-preserving ``ᾱ_t = a_t² / (a_t² + s_t²)``, which is what the frequency module's
per-band SNR needs.

x̂0 is taken from the scheduler's own ``pred_original_sample`` where its ``step`` returns one
(DDPM, DDIM, Euler, Heun, LMS, …) and derived here, from the same ``a_t`` and ``s_t`` the
scheduler uses, where it does not (DPM-Solver, UniPC, flow matching):

    epsilon          x0 = (x_t − s_t·ε̂) / a_t
    v_prediction     x0 = α·x̃_t − σ·v̂   with x̃_t = x_t / sqrt(a_t² + s_t²), α = a_t/·, σ = s_t/·
    sample           x0 = ŷ
    flow_prediction  x0 = x_t − σ_t·û    (û = ε − x0, the velocity of rectified flow)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

__all__ = [
    "SCHEDULERS",
    "NoiseLevel",
    "derive_original_sample",
    "initial_noise_scale",
    "loop_noise_levels",
    "make_scheduler",
    "noise_level",
    "predicted_original_sample",
    "sample_convention",
    "scale_model_input",
    "set_timesteps",
]

#: Short names accepted wherever a scheduler is chosen (``trace(..., scheduler="euler")``, CLI, job specs).
SCHEDULERS: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}

_VE_SCHEDULERS = {
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
}
_VP_SIGMA_SCHEDULERS = {  # VP samples, but the step's noise level is kept in `sigmas` (VE units)
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
}
_VP_ALPHA_SCHEDULERS = {"DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDIMInverseScheduler"}


def make_scheduler(name_or_scheduler, *, base_config=None):
    """Build a fresh scheduler.

    Parameters
    ----------
    name_or_scheduler : str or diffusers scheduler
        A short name from :data:`SCHEDULERS` (``"ddim"``, ``"euler"``, ``"dpm++"``, ``"flow-euler"``, …),
        a diffusers scheduler class name (``"DDIMScheduler"``), or a scheduler instance (copied: its
        configuration is reused, its state is not).
    base_config : FrozenDict, optional
        The configuration to start from (usually the pipeline's own scheduler config), so that the
        training betas and prediction type carry over.  Keys the new class does not know are ignored.

    Returns
    -------
    scheduler : diffusers.SchedulerMixin
        A new scheduler with no timesteps set.

    Warns
    -----
    UserWarning
        ``base_config`` clips x̂0 (``clip_sample=True``, as pixel models trained on [-1, 1] images
        often need at their first, nearly pure-noise steps) and the new scheduler cannot.

    Notes
    -----
    Clipping carries over: where the base clips x̂0 to ``[-r, r]`` and the new class has dynamic
    thresholding (DPM-Solver, UniPC), it is enabled with ``sample_max_value = r``: for ``r = 1``, the
    usual case, that is exactly clipping x̂0 to [-1, 1] (the threshold is the 99.5 % quantile of |x̂0|
    bounded to ``[1, r]``); for other ``r`` it is dynamic thresholding bounded by ``r``.
    """
    import diffusers

    if not isinstance(name_or_scheduler, str):
        return type(name_or_scheduler).from_config(name_or_scheduler.config)
    class_name = SCHEDULERS.get(name_or_scheduler.lower(), name_or_scheduler)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_config") or not class_name.endswith("Scheduler"):
        close = difflib.get_close_matches(name_or_scheduler, [*SCHEDULERS, *SCHEDULERS.values()], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown scheduler {name_or_scheduler!r}.{hint} Known names: {', '.join(SCHEDULERS)} "
            "(or any diffusers scheduler class name)."
        )
    config = dict(base_config or {})
    if config.get("clip_sample"):
        import inspect

        options = inspect.signature(cls.__init__).parameters  # what the class uses (from_config keeps the rest)
        if "clip_sample" in options:
            return cls.from_config(config)
        if "thresholding" in options:
            limit = float(config.get("clip_sample_range", 1.0))
            ours = ("thresholding", "sample_max_value")  # not the base's defaults: from_config must keep them
            defaults = [key for key in config.get("_use_default_values", ()) if key not in ours]
            return cls.from_config({**config, "thresholding": True, "sample_max_value": limit,
                                    "_use_default_values": defaults})
        scheduler = cls.from_config(config)
        import warnings

        warnings.warn(
            f"{class_name} cannot clip x̂0 as the model's scheduler does (clip_sample=True); on this model its "
            "samples may diverge from the first, nearly pure-noise steps. Prefer 'ddim', 'ddpm', 'dpm++' or 'unipc'.",
            UserWarning, stacklevel=2,
        )
        return scheduler
    return cls.from_config(config)


def set_timesteps(scheduler, steps: int, *, device=None, options=None) -> None:
    """``scheduler.set_timesteps`` as the pipeline calls it: the step count and the pipeline's own options.

    Parameters
    ----------
    scheduler : diffusers scheduler
    steps : int
        ``num_inference_steps``.
    device : str or torch.device, optional
        Where the timesteps go.
    options : mapping, optional
        The run's ``timestep_options`` (:class:`denoisefeat.options.TraceRequest`): custom ``sigmas``
        (then, as diffusers' ``retrieve_timesteps`` does, the step count is their length) and the
        resolution-dependent shift ``mu`` of flow-matching schedulers with ``use_dynamic_shifting``.
    """
    options = dict(options or {})
    if options.get("sigmas") is not None:
        scheduler.set_timesteps(device=device, **options)
    else:
        options.pop("sigmas", None)
        scheduler.set_timesteps(int(steps), device=device, **options)


def scale_model_input(scheduler, sample: torch.Tensor, timestep) -> torch.Tensor:
    """``scheduler.scale_model_input`` where the scheduler has one (flow matching has none: identity).

    Parameters
    ----------
    scheduler : diffusers scheduler
    sample : torch.Tensor
        x_t as the scheduler holds it.
    timestep : int, float or torch.Tensor

    Returns
    -------
    torch.Tensor
        The denoiser's input.
    """
    scale = getattr(scheduler, "scale_model_input", None)
    return sample if scale is None else scale(sample, timestep)


def initial_noise_scale(scheduler) -> float:
    """``scheduler.init_noise_sigma`` (1 for schedulers without one, such as flow matching).

    Parameters
    ----------
    scheduler : diffusers scheduler

    Returns
    -------
    float
    """
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def sample_convention(scheduler) -> str:
    """How ``scheduler`` holds ``x_t``: ``"vp"``, ``"ve"`` or ``"flow"`` (see the module docstring).

    Parameters
    ----------
    scheduler : diffusers scheduler

    Returns
    -------
    {"vp", "ve", "flow"}

    Raises
    ------
    ValueError
        For a scheduler whose convention this module does not know; x̂0 would be a guess.
    """
    name = type(scheduler).__name__
    config = scheduler.config
    if "FlowMatch" in name or config.get("use_flow_sigmas", False):
        return "flow"
    if name in _VE_SCHEDULERS:
        return "ve"
    if name in _VP_SIGMA_SCHEDULERS or name in _VP_ALPHA_SCHEDULERS:
        return "vp"
    raise ValueError(
        f"denoisefeat does not know how {name} holds its samples, so it cannot derive x̂0 or the noise "
        f"level. Supported: {', '.join(sorted(_VE_SCHEDULERS | _VP_SIGMA_SCHEDULERS | _VP_ALPHA_SCHEDULERS))} "
        "and flow-matching schedulers."
    )


@dataclass(frozen=True)
class NoiseLevel:
    """``x_t = signal·x0 + noise·ε`` at one step of the sampling loop."""

    signal: float
    noise: float

    @property
    def snr(self) -> float:
        """Signal-to-noise ratio ``signal² / noise²`` (``inf`` at ``noise = 0``)."""
        return self.signal**2 / self.noise**2 if self.noise > 0 else float("inf")

    @property
    def alpha_bar(self) -> float:
        """The variance-preserving ``ᾱ`` with the same SNR: ``signal² / (signal² + noise²)``."""
        return self.signal**2 / (self.signal**2 + self.noise**2)


def noise_level(scheduler, *, timestep, step_index: int) -> NoiseLevel:
    """The signal and noise scales of the sample the scheduler holds at one loop step.

    Parameters
    ----------
    scheduler : diffusers.SchedulerMixin
        A scheduler after ``set_timesteps``.
    timestep : int, float or torch.Tensor
        ``scheduler.timesteps[step_index]``.
    step_index : int
        0-based index of the sampling loop (one per denoiser call).

    Returns
    -------
    NoiseLevel
    """
    convention = sample_convention(scheduler)
    name = type(scheduler).__name__
    if convention == "flow":
        sigma = float(scheduler.sigmas[step_index])
        return NoiseLevel(signal=1.0 - sigma, noise=sigma)
    if convention == "ve":
        sigma = float(scheduler.sigmas[step_index])
        return NoiseLevel(signal=1.0, noise=sigma)
    if name in _VP_SIGMA_SCHEDULERS:
        sigma = float(scheduler.sigmas[step_index])  # VE units: sigma = sqrt((1 - ᾱ) / ᾱ)
        alpha = 1.0 / (sigma**2 + 1.0) ** 0.5
        return NoiseLevel(signal=alpha, noise=sigma * alpha)
    alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])
    return NoiseLevel(signal=alpha_bar**0.5, noise=(1.0 - alpha_bar) ** 0.5)


def loop_noise_levels(
    scheduler_class: str, scheduler_config: dict, steps: int, *, timestep_options=None
) -> list[NoiseLevel]:
    """The :func:`noise_level` of every loop step of a run, from the scheduler its attributes name.

    Parameters
    ----------
    scheduler_class, scheduler_config
        ``run.attrs["scheduler_class"]`` and ``run.attrs["scheduler_config"]``.
    steps : int
        ``run.attrs["steps"]`` (``num_inference_steps``).
    timestep_options : mapping, optional
        ``run.attrs.get("timestep_options")``: the pipeline's options of ``set_timesteps`` (Flux's
        sigmas and shift), see :func:`set_timesteps`.

    Returns
    -------
    list of NoiseLevel
        One per loop step (one per denoiser call: Heun's doubled schedule included).
    """
    scheduler = make_scheduler(scheduler_class, base_config=scheduler_config)
    set_timesteps(scheduler, int(steps), options=timestep_options)
    return [noise_level(scheduler, timestep=t, step_index=i) for i, t in enumerate(scheduler.timesteps)]


def derive_original_sample(
    scheduler, *, model_output: torch.Tensor, sample: torch.Tensor, timestep, step_index: int
) -> torch.Tensor:
    """x̂0 from the denoiser's output, with the scheduler's noise level and prediction type.

    Parameters
    ----------
    scheduler : diffusers.SchedulerMixin
        A scheduler after ``set_timesteps``; ``scheduler.config.prediction_type`` says what
        ``model_output`` is.
    model_output : torch.Tensor
        The (guided) denoiser output for ``sample``, with learned-variance channels already removed.
    sample : torch.Tensor
        ``x_t`` as the scheduler holds it (not scaled by ``scale_model_input``).
    timestep, step_index
        As in :func:`noise_level`.

    Returns
    -------
    torch.Tensor
        x̂0, same shape and dtype as ``sample``.
    """
    convention = sample_convention(scheduler)
    default = "flow_prediction" if convention == "flow" else "epsilon"
    prediction_type = scheduler.config.get("prediction_type") or default
    level = noise_level(scheduler, timestep=timestep, step_index=step_index)
    a, s = level.signal, level.noise
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        norm = (a * a + s * s) ** 0.5
        alpha, sigma = a / norm, s / norm
        return alpha * (sample / norm) - sigma * model_output
    if prediction_type == "flow_prediction":
        return sample - s * model_output
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction, sample or flow_prediction."
    )


def predicted_original_sample(
    scheduler, *, step_output, model_output: torch.Tensor, sample: torch.Tensor, timestep, step_index: int
) -> torch.Tensor:
    """The scheduler's own x̂0 when its ``step`` returned one, else :func:`derive_original_sample`.

    Parameters
    ----------
    scheduler : diffusers scheduler
        The scheduler whose ``step`` ran.
    step_output : diffusers.utils.BaseOutput
        What ``scheduler.step(model_output, timestep, sample)`` returned.
    model_output, sample, timestep, step_index
        As passed to that ``step`` call (``step_index`` is the loop index).

    Returns
    -------
    torch.Tensor
        x̂0, same shape as ``sample``.
    """
    x0 = getattr(step_output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    return derive_original_sample(
        scheduler, model_output=model_output, sample=sample, timestep=timestep, step_index=step_index
    )
