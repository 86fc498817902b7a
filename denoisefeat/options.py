"""What to denoise and how: the run options that :func:`denoisefeat.trace` and every scan share.

:class:`RunOptions` declares them once (conditions, seeds, steps, scheduler, guidance, η, size,
batch size); ``trace``, :func:`~denoisefeat.analyses.ablation_scan` and
:func:`~denoisefeat.analyses.causal_trace` take them as keyword arguments and build one with
:meth:`RunOptions.of`, so a new option reaches them all.  :meth:`RunOptions.request` validates them
against a pipeline into a :class:`TraceRequest`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

import numpy as np

from denoisefeat import schedulers
from denoisefeat.families import family_of
from denoisefeat.models import denoiser_of, pipeline_family

__all__ = ["RunOptions", "TraceRequest"]


@dataclass(frozen=True)
class RunOptions:
    """The options of one denoising run, shared by :func:`denoisefeat.trace` and the scans.

    Parameters
    ----------
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
        For guidance-distilled Flux it is the value of its guidance embedding (there is no CFG batch).
    eta : float
        DDIM's η.
    height, width : int, optional
        Image size for latent text-to-image pipelines.
    batch_size : int
        Samples denoised together; also a store's sample chunk (the unit a writer owns).  Batch-
        dependent edits (``mean``, ``resample``) see these batches.
    """

    samples: int | None = None
    prompts: Sequence[str] | str | None = None
    class_labels: Sequence[int] | None = None
    negative_prompt: str | None = None
    seed: int | Sequence[int] = 0
    steps: int = 50
    scheduler: object = None
    guidance_scale: float | None = None
    eta: float = 0.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 8

    @classmethod
    def of(cls, keywords: Mapping, *, caller: str, defaults: Mapping | None = None) -> RunOptions:
        """Run options from a function's keyword arguments, refusing unknown names clearly.

        Parameters
        ----------
        keywords : mapping
            The run options a caller was given (``**run``).
        caller : str
            The function's name, for the error message.
        defaults : mapping, optional
            The caller's own defaults for options it was not given (a scan's fewer steps).

        Returns
        -------
        RunOptions

        Raises
        ------
        TypeError
            A name that is no run option (the message lists the close ones and all of them).
        """
        names = [f.name for f in fields(cls)]
        for name in keywords:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=2)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}.{hint} "
                                f"Run options: {', '.join(names)}.")
        return cls(**{**(defaults or {}), **keywords})

    def request(self, pipe, *, decode: bool = True, model_id: str | None = None) -> tuple[TraceRequest, object]:
        """Validate the options against ``pipe``.

        Parameters
        ----------
        pipe : diffusers.DiffusionPipeline
        decode : bool
            Whether the run decodes x̂0 to images at every step (recorded in the request).
        model_id : str, optional
            Name recorded in the store; default: where the pipeline was loaded from.

        Returns
        -------
        (TraceRequest, scheduler)
            The request and a fresh scheduler (the pipeline's own is never modified) to run it with.

        Raises
        ------
        ValueError
            Any option this pipeline cannot take (with what to give instead), or a scheduler of another
            kind than the model's (a flow-matching model needs a flow-matching scheduler).
        """
        family = pipeline_family(pipe)
        steps, batch_size = self.steps, self.batch_size
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        n, prompts, class_labels = _conditions(pipe, family, self.samples, self.prompts, self.class_labels)
        base = pipe.scheduler
        fresh = schedulers.make_scheduler(base if self.scheduler is None else self.scheduler, base_config=base.config)
        schedulers.sample_convention(fresh)  # refuse schedulers whose x̂0 we cannot get right
        guidance = _default_guidance(pipe) if self.guidance_scale is None else float(self.guidance_scale)
        denoiser = denoiser_of(pipe)
        conditional = getattr(denoiser.config, "num_class_embeds", None) is not None
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
            seeds=_seeds(self.seed, n),
            prompts=prompts,
            negative_prompt=self.negative_prompt,
            class_labels=class_labels,
            guidance_scale=guidance,
            eta=float(self.eta),
            height=self.height,
            width=self.width,
            decode=bool(decode),
            dtype=str(denoiser.dtype).removeprefix("torch."),
            label_set=_label_set(pipe),
        )
        family_loop = family_of(pipe, request)
        if family_loop.flow_matching and schedulers.sample_convention(fresh) != "flow":
            raise ValueError(f"{type(pipe).__name__} is a flow-matching model: {type(fresh).__name__} would "
                             "denoise it with the wrong sample convention. Use 'flow-euler' "
                             "(FlowMatchEulerDiscreteScheduler) or another flow-matching scheduler.")
        family_loop.check()
        return replace(request, timestep_options=family_loop.timestep_options(fresh)), fresh


#: The families conditioned on text prompts.
_TEXT_TO_IMAGE = ("stable-diffusion", "stable-diffusion-xl", "stable-diffusion-3", "flux", "pixart")


def _conditions(pipe, family: str, samples, prompts, class_labels):
    """``(n_samples, prompts, class_labels)``: one condition per sample, checked against the pipeline."""
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
    if family in _TEXT_TO_IMAGE and prompts is None:
        raise ValueError(f"A {type(pipe).__name__} needs prompts=[...] (use [''] for unconditional samples).")
    if family not in _TEXT_TO_IMAGE and prompts is not None:
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
    return n, prompts, _labels(class_labels, n_classes=n_classes, null_class=null_class)


@dataclass(frozen=True)
class TraceRequest:
    """A validated run of one pipeline (:meth:`RunOptions.request`): the run store's ``attrs["run"]``.

    Besides the options it records what they resolved to on this pipeline (family, classes and
    configs of the denoiser and the scheduler, the seeds of every sample, the guidance scale, and
    ``timestep_options``: what the pipeline passes to ``scheduler.set_timesteps`` besides the step
    count, e.g. Flux's sigmas and resolution-dependent shift ``mu``, so that the schedule can be
    rebuilt from the store, :func:`denoisefeat.schedulers.set_timesteps`).
    """

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
    timestep_options: dict = field(default_factory=dict)
    label_set: str | None = None

    #: Attributes added after stores were first written: a store without one still resumes
    #: (:meth:`denoisefeat.store.RunStore.differing_attrs`).
    ADDED_ATTRS: ClassVar[tuple[str, ...]] = ("label_set",)

    @property
    def n_samples(self) -> int:
        return len(self.seeds)

    def as_attrs(self) -> dict:
        """The request as the JSON-able mapping stored in the run's ``attrs["run"]``.

        ``timestep_options`` is left out where it is empty (every family but SD3 with dynamic shifting
        and Flux), and ``label_set`` where the pipeline declares none, so that stores written before
        they existed still resume.
        """
        attrs = asdict(self)
        if not attrs["timestep_options"]:
            del attrs["timestep_options"]
        if attrs["label_set"] is None:
            del attrs["label_set"]
        return attrs


def _label_set(pipe) -> str | None:
    """What the pipeline says its class labels name (its config's ``label_set``), if it says."""
    config = getattr(pipe, "config", None)
    value = config.get("label_set") if isinstance(config, Mapping) else None
    return None if value is None else str(value)


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
