"""Load diffusers pipelines and reach their denoisers.

``load_pipeline`` accepts three kinds of source:

* a built-in name: ``"toy"`` (the trained DiffShapes model shipped in the package), ``"planted"``
  (the planted-ground-truth model of :mod:`denoisefeat.toy.planted`: the exact posterior mean of a
  finite DiffShapes data set, split into a low-band and a high-band module) or one of the tiny
  random-initialised pipelines of :mod:`denoisefeat.tiny`;
* a local folder written by ``pipeline.save_pretrained`` (it holds a ``model_index.json``);
* a Hugging Face Hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``), loaded with diffusers'
  own ``from_pretrained``.  Without network access this fails with a message that names the id
  and says how to use a local copy instead.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from denoisefeat.pipelines import ClassConditionalImagePipeline

__all__ = [
    "BUILTIN_MODELS",
    "ClassConditionalImagePipeline",
    "ModelSourceError",
    "denoiser_of",
    "load_pipeline",
    "pipeline_family",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOY_WEIGHTS = Path(__file__).parent / "toy" / "weights"
#: The ``label_set`` the toy pipeline declares (its config; a run's ``attrs["run"]["label_set"]``):
#: its class labels are the DiffShapes conditions of :func:`denoisefeat.toy.diffshapes.condition_names`.
TOY_LABEL_SET = "diffshapes"


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face Hub id (``owner/name``).

    Parameters
    ----------
    text : str

    Returns
    -------
    bool
    """
    return _HUB_ID.match(text) is not None


class ModelSourceError(ValueError):
    """A model source that cannot be loaded: unknown name, missing folder, unreachable hub id."""


#: Names ``load_pipeline`` accepts without a folder or a network: the trained toy model, the
#: planted-ground-truth model and the tiny random-initialised pipelines of :mod:`denoisefeat.tiny`.
BUILTIN_MODELS = (
    "toy", "planted", "planted-factorized", "tiny-unet", "tiny-class-unet", "tiny-sd", "tiny-sdxl", "tiny-dit",
    "tiny-sd3", "tiny-flux", "tiny-pixart",
)


def load_pipeline(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a diffusers pipeline from a built-in name, a local folder or a Hub id.

    Parameters
    ----------
    source : str or path
        ``"toy"`` (the trained DiffShapes model, offline), ``"planted"`` (a ``DDIMPipeline`` whose
        denoiser is the exact posterior mean of 64 DiffShapes images, its modules ``layout`` and
        ``detail`` the low and high band: :func:`denoisefeat.toy.planted.planted_pipeline` with its
        defaults; call that function for other data sets), ``"planted-factorized"`` (the same
        with independent bands, whose ``layout`` and ``detail`` also carry different information:
        :func:`denoisefeat.toy.planted.factorized_planted_pipeline`), a tiny built-in (``"tiny-unet"``,
        ``"tiny-class-unet"``, ``"tiny-sd"``, ``"tiny-sdxl"``, ``"tiny-dit"``, ``"tiny-sd3"``, ``"tiny-flux"``,
        ``"tiny-pixart"``), a folder written by
        ``save_pretrained``, or a Hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.
    device : str or torch.device
        Where to put the pipeline.
    dtype : torch.dtype, optional
        Weights' dtype (e.g. ``torch.float16`` on a GPU); default: as stored (float32 for built-ins).

    Returns
    -------
    diffusers.DiffusionPipeline

    Raises
    ------
    ModelSourceError
        Unknown built-in name, missing or non-pipeline folder, or a Hub id that cannot be reached
        (the message says how to download it and pass the local folder instead).
    """
    pipe = _load(source, dtype=dtype)
    pipe = pipe.to(device)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _load(source, *, dtype):
    from denoisefeat.tiny import TINY_BUILDERS

    text = str(source)
    if text == "toy":
        return _load_toy(dtype=dtype)
    if text == "planted":
        from denoisefeat.toy.planted import planted_pipeline

        return planted_pipeline()
    if text == "planted-factorized":
        from denoisefeat.toy.planted import factorized_planted_pipeline

        return factorized_planted_pipeline()
    if text in TINY_BUILDERS:
        return TINY_BUILDERS[text]()
    path = Path(text).expanduser()
    if path.exists():
        return _load_folder(path, dtype=dtype)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelSourceError(f"Model folder {text!r} does not exist.")
    if is_hub_id(text):
        return _load_hub(text, dtype=dtype)
    close = difflib.get_close_matches(text, BUILTIN_MODELS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelSourceError(
        f"Unknown model source {text!r}.{hint} Give a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a folder written by save_pretrained, or a Hugging Face Hub id like 'org/name'."
    )


def _load_folder(path: Path, *, dtype):
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelSourceError(
            f"{str(path)!r} is not a diffusers pipeline folder (it has no model_index.json). "
            "Pass the folder that pipeline.save_pretrained(...) wrote."
        )
    class_name = json.loads(index.read_text()).get("_class_name")
    kwargs = _dtype_kwargs(dtype)
    if class_name == ClassConditionalImagePipeline.__name__:
        try:
            # safetensors only: a pickled (.bin) checkpoint is never unpickled.
            return ClassConditionalImagePipeline.from_pretrained(path, use_safetensors=True, **kwargs)
        except Exception as error:  # safetensors, json and diffusers raise many types
            raise ModelSourceError(
                f"Could not load the pipeline in {str(path)!r}: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'}. Its weights may be corrupt or "
                "incomplete; reinstall or re-export them (safetensors files only)."
            ) from error
    try:
        return DiffusionPipeline.from_pretrained(path, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ModelSourceError(f"Could not load the pipeline in {str(path)!r}: {error}") from error


def _dtype_kwargs(dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` from diffusers 0.42 on (``torch_dtype`` is deprecated there)."""
    if dtype is None:
        return {}
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype": dtype}


def _load_hub(repo_id: str, *, dtype):
    kwargs = _dtype_kwargs(dtype)
    try:
        return DiffusionPipeline.from_pretrained(repo_id, **kwargs)
    except Exception as error:  # network errors come in many types (OSError, requests, httpx, hub errors)
        raise ModelSourceError(
            f"Could not load {repo_id!r} from the Hugging Face Hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). If this machine is offline, download it "
            f"where there is network (`hf download {repo_id} --local-dir DIR`) and pass that local folder instead."
        ) from error


def _load_toy(*, dtype):
    if not (TOY_WEIGHTS / "model_index.json").is_file():
        raise ModelSourceError(
            f"The toy model's weights are missing from {TOY_WEIGHTS}; reinstall denoisefeat, or train them with "
            "`denoisefeat toy train`."
        )
    # The weights ship in float16 to keep the package small; compute in float32 unless asked.
    pipe = _load_folder(TOY_WEIGHTS, dtype=torch.float32 if dtype is None else dtype)
    if pipe.config.get("label_set") is None:  # weights saved before pipelines declared their labels
        pipe.register_to_config(label_set=TOY_LABEL_SET)
    return pipe


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoiser: ``pipe.unet`` or ``pipe.transformer``.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline or torch.nn.Module
        A pipeline, or a denoiser (returned as it is).

    Returns
    -------
    torch.nn.Module
    """
    if isinstance(pipe, torch.nn.Module):
        return pipe
    for name in ("unet", "transformer", "prior"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise TypeError(f"{type(pipe).__name__} has no unet or transformer denoiser.")


def pipeline_family(pipe) -> str:
    """Which denoising loop denoisefeat runs for ``pipe``.

    Parameters
    ----------
    pipe : diffusers.DiffusionPipeline

    Returns
    -------
    {"pixel", "stable-diffusion", "stable-diffusion-xl", "dit", "stable-diffusion-3", "flux", "pixart"}
        ``"pixel"``: ``UNet2DModel`` in pixel space (DDPM/DDIM pipelines and
        :class:`ClassConditionalImagePipeline`); the others are latent pipelines:
        ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``DiTPipeline``,
        ``StableDiffusion3Pipeline``, ``FluxPipeline`` and ``PixArtSigmaPipeline`` (and their subclasses).

    Raises
    ------
    TypeError
        A pipeline class whose loop denoisefeat does not reproduce (the message lists those it does).
    """
    from diffusers import (
        DDIMPipeline,
        DDPMPipeline,
        DiTPipeline,
        FluxPipeline,
        PixArtSigmaPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if isinstance(pipe, (DDPMPipeline, DDIMPipeline, ClassConditionalImagePipeline)):
        return "pixel"
    families = [
        (StableDiffusionXLPipeline, "stable-diffusion-xl"),
        (StableDiffusionPipeline, "stable-diffusion"),
        (DiTPipeline, "dit"),
        (StableDiffusion3Pipeline, "stable-diffusion-3"),
        (FluxPipeline, "flux"),
        (PixArtSigmaPipeline, "pixart"),
    ]
    for cls, family in families:
        if isinstance(pipe, cls):
            return family
    raise TypeError(
        f"denoisefeat cannot run the denoising loop of {type(pipe).__name__} yet. Supported: DDPMPipeline, "
        "DDIMPipeline, ClassConditionalImagePipeline, StableDiffusionPipeline, StableDiffusionXLPipeline, DiTPipeline, "
        "StableDiffusion3Pipeline, FluxPipeline, PixArtSigmaPipeline."
    )
