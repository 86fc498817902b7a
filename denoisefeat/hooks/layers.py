"""Layer names: the denoiser's ``named_modules()`` paths, globs over them, and their output shapes.

A layer name is exactly a path of ``denoiser.named_modules()`` (``"mid_block"``,
``"down_blocks.1.resnets.0"``, ``"up_blocks.2.attentions.1.transformer_blocks.0.attn2"``).  Simple
globs select several (``"down_blocks.*.resnets.*"``: ``*`` matches one path component, ``**`` any
number).  An unknown name is an error that lists the closest existing names.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from denoisefeat.models import denoiser_of

__all__ = [
    "LayerInfo",
    "UnknownLayerError",
    "dummy_inputs",
    "first_tensor",
    "layer_name",
    "list_layers",
    "main_output_index",
    "probe_layers",
    "resolve_layers",
    "top_level_layers",
]


class UnknownLayerError(KeyError):
    """A layer name (or glob) that matches no module of the denoiser."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


@dataclass(frozen=True)
class LayerInfo:
    """One module of the denoiser.

    Attributes
    ----------
    name : str
        Its ``named_modules()`` path.
    type : str
        Its class name.
    output_shape : tuple of int or None
        Shape of its (first) output for one sample of the probe input, without the batch axis;
        ``None`` if it did not run in the probe forward pass (or gave no tensor).
    level : int or None
        Resolution level: ``log2(input size / output spatial size)`` (0 = full latent resolution,
        1 = half …) for spatial outputs; ``None`` for non-spatial ones (tokens, embeddings).
    depth : int
        Number of path components (``mid_block`` = 1, ``mid_block.resnets.0`` = 3).
    order : int or None
        Position in execution order of the probe forward pass (when the module's forward
        returned); ``None`` if it did not run.  Sort by it for "network order".
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    level: int | None
    depth: int
    order: int | None


def _glob_to_regex(pattern: str) -> re.Pattern:
    parts = []
    for component in pattern.split("."):
        if component == "**":
            parts.append(r"(?:[^.]+(?:\.[^.]+)*)")
        else:
            parts.append(re.escape(component).replace(r"\*", r"[^.]*"))
    return re.compile(r"\.".join(parts) + r"$")


def _module_names(denoiser: torch.nn.Module) -> list[str]:
    return [name for name, _ in denoiser.named_modules() if name]


def layer_name(layer) -> str:
    """A layer's module path: ``layer`` itself, or the ``name`` of a :class:`LayerInfo`.

    Parameters
    ----------
    layer : str or LayerInfo

    Returns
    -------
    str
        The module path.

    Raises
    ------
    TypeError
        Anything else (the message says what was given).
    """
    if isinstance(layer, LayerInfo):
        return layer.name
    if not isinstance(layer, str):
        raise TypeError(f"A layer is a module path (str) or a LayerInfo from list_layers; got {layer!r} "
                        f"({type(layer).__name__}).")
    return layer


def resolve_layers(pipe_or_denoiser, names: str | Iterable[str]) -> list[str]:
    """Expand names and globs into module paths, in network order, refusing unknown ones.

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module
    names : str, LayerInfo or iterable of them
        Exact module paths or globs (``*`` one component, ``**`` any number), or the
        :class:`LayerInfo` entries of :func:`list_layers`.

    Returns
    -------
    list of str
        Matching module paths in ``named_modules()`` order, each once.

    Raises
    ------
    UnknownLayerError
        A name or glob matching nothing; the message lists the closest module paths.
    """
    denoiser = denoiser_of(pipe_or_denoiser)
    available = _module_names(denoiser)
    if isinstance(names, (str, LayerInfo)):
        names = [names]
    chosen: set[str] = set()
    for name in names:
        name = layer_name(name)
        if "*" in name:
            regex = _glob_to_regex(name)
            matches = [a for a in available if regex.match(a)]
        else:
            matches = [name] if name in available else []
        if not matches:
            close = difflib.get_close_matches(name.replace("*", "0"), available, n=5, cutoff=0.5)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise UnknownLayerError(
                f"{type(denoiser).__name__} has no layer {name!r}.{hint} "
                "List them with denoisefeat.hooks.list_layers(pipe)."
            )
        chosen.update(matches)
    return [a for a in available if a in chosen]


def top_level_layers(pipe_or_denoiser) -> list[str]:
    """The denoiser's blocks at the granularity attribution maps usually use, in network order.

    For UNets: ``conv_in``, each ``down_blocks.i``, ``mid_block``, each ``up_blocks.i``, ``conv_out``;
    for transformers: ``pos_embed``, each ``transformer_blocks.i`` and the output projection.

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module

    Returns
    -------
    list of str
        Module paths, in network order.
    """
    denoiser = denoiser_of(pipe_or_denoiser)
    names = []
    for name, module in denoiser.named_children():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("blocks"):
            names += [f"{name}.{i}" for i in range(len(module))]
        elif name in ("conv_in", "mid_block", "conv_out", "pos_embed", "proj_out", "proj_out_2"):
            names.append(name)
    order = probe_layers(denoiser, names, size=None)[1]
    return sorted(names, key=lambda n: order.get(n, len(order)))


def dummy_inputs(denoiser: torch.nn.Module, *, batch: int = 1, size: int | None = None) -> dict:
    """Keyword arguments for one forward pass of ``denoiser`` on random inputs (to learn shapes).

    Parameters
    ----------
    denoiser : torch.nn.Module
        A UNet or transformer denoiser.
    batch : int
        Batch size of the inputs.
    size : int, optional
        Spatial size of the sample; default the denoiser's ``sample_size``.

    Returns
    -------
    dict
        Keyword arguments for ``denoiser(**inputs)``.
    """
    config = denoiser.config
    device, dtype = denoiser.device, denoiser.dtype
    sample_size = config.get("sample_size") or 32
    if size is None:
        size = sample_size if isinstance(sample_size, int) else sample_size[0]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, config.in_channels, size, size, generator=generator).to(device, dtype)
    kwargs = {"sample": sample, "timestep": torch.full((batch,), 500, device=device)}
    name = type(denoiser).__name__
    if name == "UNet2DModel":
        if config.get("num_class_embeds") is not None:
            kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long, device=device)
    elif name == "UNet2DConditionModel":
        dim = config.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        kwargs["encoder_hidden_states"] = torch.zeros(batch, 4, dim, device=device, dtype=dtype)
        if config.get("addition_embed_type") == "text_time":
            n_time = 6
            text_dim = config.projection_class_embeddings_input_dim - n_time * config.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.zeros(batch, text_dim, device=device, dtype=dtype),
                "time_ids": torch.zeros(batch, n_time, device=device, dtype=dtype),
            }
    elif name in ("SD3Transformer2DModel", "PixArtTransformer2DModel"):
        text = config.get("joint_attention_dim") or config.get("caption_channels")
        kwargs = {"hidden_states": sample, "timestep": kwargs["timestep"],
                  "encoder_hidden_states": torch.zeros(batch, 4, text, device=device, dtype=dtype)}
        if name == "SD3Transformer2DModel":
            kwargs["pooled_projections"] = torch.zeros(batch, config.pooled_projection_dim, device=device, dtype=dtype)
        else:
            kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    elif name == "FluxTransformer2DModel":  # packed latent tokens on a (size/2)² grid, rotary position ids
        side = max(1, size // 2)
        ids = torch.zeros(side, side, 3)
        ids[..., 1], ids[..., 2] = torch.arange(side)[:, None], torch.arange(side)[None, :]
        tokens = torch.randn(batch, side * side, config.in_channels, generator=generator).to(device, dtype)
        text = torch.zeros(batch, 4, config.joint_attention_dim, device=device, dtype=dtype)
        kwargs = {"hidden_states": tokens, "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
                  "encoder_hidden_states": text,
                  "pooled_projections": torch.zeros(batch, config.pooled_projection_dim, device=device, dtype=dtype),
                  "txt_ids": torch.zeros(4, 3, device=device, dtype=dtype),
                  "img_ids": ids.reshape(-1, 3).to(device, dtype)}
        if config.get("guidance_embeds"):
            kwargs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=torch.float32)
    elif "Transformer" in name:
        kwargs = {"hidden_states": sample, "timestep": kwargs["timestep"]}
        if config.get("num_embeds_ada_norm") is not None:
            kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long, device=device)
    kwargs["return_dict"] = False
    return kwargs


def list_layers(
    pipe_or_denoiser,
    *,
    kind: str | None = None,
    pattern: str | None = None,
    size: int | None = None,
) -> list[LayerInfo]:
    """The denoiser's modules, with type, output shape and resolution level.

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module
    kind : str, optional
        Keep modules whose path has this component or whose class name contains it,
        case-insensitively (``"attentions"``, ``"resnets"``, ``"Transformer2DModel"``, ``"attn2"``).
    pattern : str, optional
        Keep modules matching this glob (see :func:`resolve_layers`).
    size : int, optional
        Spatial input size for the shape probe; default: the denoiser's ``sample_size``.

    Returns
    -------
    list of LayerInfo
        In ``named_modules()`` order.  Names equal ``named_modules()`` paths exactly.
    """
    denoiser = denoiser_of(pipe_or_denoiser)
    names = resolve_layers(denoiser, pattern) if pattern else _module_names(denoiser)
    modules = dict(denoiser.named_modules())
    if kind is not None:
        k = kind.lower()
        names = [n for n in names if k in n.lower().split(".") or k in type(modules[n]).__name__.lower()]
    shapes, order = probe_layers(denoiser, names, size=size)
    in_size = size or denoiser.config.get("sample_size") or 32
    in_size = in_size if isinstance(in_size, int) else in_size[0]
    infos = []
    for name in names:
        shape = shapes.get(name)
        level = None
        if shape is not None and len(shape) == 3 and shape[-1] > 0 and in_size % shape[-1] == 0:
            ratio = in_size // shape[-1]
            level = int(math.log2(ratio)) if ratio & (ratio - 1) == 0 else None
        infos.append(LayerInfo(name=name, type=type(modules[name]).__name__, output_shape=shape, level=level,
                               depth=name.count(".") + 1, order=order.get(name)))
    return infos


#: Blocks whose tuple output puts the image tokens second: diffusers' joint (MMDiT) blocks of SD3 and
#: Flux return ``(encoder_hidden_states, hidden_states)`` (the text stream first; SD3's last block
#: returns ``None`` for it).
_IMAGE_SECOND = frozenset({"JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock"})


def main_output_index(module: torch.nn.Module) -> int:
    """Which element of ``module``'s tuple output is its main (image-token) output.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    int
        1 for the joint transformer blocks of SD3 and Flux (``(encoder_hidden_states, hidden_states)``),
        else 0.
    """
    return 1 if type(module).__name__ in _IMAGE_SECOND else 0


def first_tensor(output, *, index: int = 0):
    """The tensor a hook records for a module output: itself, or element ``index`` of a tuple/list.

    diffusers blocks return tuples: down blocks return ``(hidden_states, skip_states)``, attention
    processors and transformer blocks return a tensor or ``(tensor,)``; ``BaseOutput``-style outputs
    expose ``.sample``.  The first tensor is the block's main output, except in the joint blocks of
    SD3 and Flux, which return the text stream first (:func:`main_output_index`).

    Parameters
    ----------
    output : object
        What a module's forward returned.
    index : int
        Which element of a tuple output is the main one.

    Returns
    -------
    torch.Tensor or None
        The main output tensor; ``None`` when there is none.
    """
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and len(output) > index and torch.is_tensor(output[index]):
        return output[index]
    sample = getattr(output, "sample", None)
    if torch.is_tensor(sample):
        return sample
    return None


def probe_layers(denoiser, names: Sequence[str], *, size) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """One forward pass on dummy inputs: each module's output shape and its execution order.

    Parameters
    ----------
    denoiser : torch.nn.Module
    names : sequence of str
        Module paths whose output shapes to record.
    size : int or None
        Spatial size of the dummy sample (:func:`dummy_inputs`).

    Returns
    -------
    (dict, dict)
        ``{name: output shape}`` for ``names``, and ``{module path: execution index}`` for every
        module that ran (the one layer order of denoisefeat).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    order: dict[str, int] = {}
    modules = dict(denoiser.named_modules())
    handles = []

    def make_hook(name):
        def hook(module, args, output):
            order.setdefault(name, len(order))
            tensor = first_tensor(output, index=main_output_index(module))
            if tensor is not None and name not in shapes:
                shapes[name] = tuple(tensor.shape[1:])

        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        with torch.no_grad():
            denoiser(**dummy_inputs(denoiser, size=size))
    finally:
        for handle in handles:
            handle.remove()
    return shapes, order
