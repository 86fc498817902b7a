"""Cross-attention maps: how much each image token attends to each text token, per step and layer.

:class:`attention_maps` swaps the processor of the chosen attention modules (diffusers'
``Attention.set_processor``, the mechanism diffusers designed for this) for a recording processor
that **calls the original processor for the output**, unchanged, and computes the attention
probabilities beside it from the same inputs; the original processors are put back in ``finally``.
So a run with maps is bit for bit the run without them (tested on the final images).

What is recorded
----------------
For every chosen module and recorded step, the probabilities ``softmax(q kᵀ · scale + mask)`` of
the image-token queries ``q`` over the text-token keys ``k``, averaged over heads, reshaped from
the query tokens to the layer's ``(y, x)`` grid and area-averaged down to at most ``resolution``
pixels a side: ``(sample, token, y, x)`` per step.  Under classifier-free guidance only the
conditional half of the batch is kept (the unconditional half attends to the empty prompt).

* ``Attention`` modules with cross-attention (SD 1.x/2.x and SDXL ``attn2``, PixArt's cross-attention),
  processed by diffusers' ``AttnProcessor`` or ``AttnProcessor2_0``: ``q = to_q(h)``,
  ``k = to_k(norm_cross(c))``, with ``norm_q``/``norm_k`` where the module has them.
* Joint attention (SD3's ``JointAttnProcessor2_0``, Flux's double-stream blocks with
  ``FluxAttnProcessor``, rotary positions applied): the image queries' row of the *joint* softmax
  over image and text keys, restricted to its text columns (so a row sums to the text's share of
  the attention, at most 1).  Flux's single-stream blocks, which attend over one concatenated
  sequence, are not read.

The grid of a layer is read from the denoiser's input ``(batch, channel, H, W)``: the layer's
query tokens are ``⌈H/f⌉ · ⌈W/f⌉`` for its downsampling factor (or patch size) ``f``; for packed
latents (Flux) from the ``img_ids`` positions the denoiser is called with.

Per-word maps
-------------
:func:`word_spans` finds each whitespace-separated word's sub-word tokens in a prompt's token
sequence (a CLIP BPE or character tokenizer splits a word into several); :func:`word_maps` sums
the maps of a word's tokens — the attention mass the image puts on the word (the convention of
DAAM, Tang et al. 2023, which sums over sub-words too).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from denoisefeat.hooks._manager import HookManager
from denoisefeat.hooks.layers import resolve_layers
from denoisefeat.models import denoiser_of
from denoisefeat.steps import StepClock, steps_selection, uncond_cond

__all__ = [
    "NotCrossAttentionError",
    "WordNotInPromptError",
    "aggregate_words",
    "attention_maps",
    "attention_probabilities",
    "cross_attention_layers",
    "word_maps",
    "word_spans",
]

#: Default largest side of a stored map, in pixels (maps of coarser layers are stored as they are).
DEFAULT_RESOLUTION = 16
_FACTORS = tuple(2**k for k in range(8))


class NotCrossAttentionError(ValueError):
    """A layer chosen for attention maps that is no cross- or joint-attention module."""


class WordNotInPromptError(ValueError):
    """A word asked for that is not one of the prompt's words."""


def _kind(module: torch.nn.Module) -> str | None:
    """``"cross"``, ``"joint"``, ``"flux"`` or ``None`` (no text-attention module this recorder can read)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, JointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor

    processor = getattr(module, "processor", None)
    if isinstance(processor, _RecordingProcessor):  # while recording: the module's own processor
        processor = processor.original
    if isinstance(module, FluxAttention):
        double = module.added_kv_proj_dim is not None and not module.fused_projections
        return "flux" if double and type(processor) is FluxAttnProcessor else None
    if not isinstance(module, Attention):
        return None
    if module.is_cross_attention and type(processor) in (AttnProcessor, AttnProcessor2_0):
        return "cross"
    if type(processor) is JointAttnProcessor2_0 and module.add_k_proj is not None:
        return "joint"
    return None


def cross_attention_layers(pipe_or_denoiser) -> list[str]:
    """The modules of the denoiser whose attention to text tokens can be recorded, in network order.

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module

    Returns
    -------
    list of str
        Module paths (``...transformer_blocks.0.attn2`` for UNets); empty for a denoiser without text.
    """
    denoiser = denoiser_of(pipe_or_denoiser)
    return [name for name, module in denoiser.named_modules() if _kind(module) is not None]


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    """``(batch, token, heads·d)`` → ``(batch, heads, token, d)``."""
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def _flux_probabilities(attn, h: torch.Tensor, text: torch.Tensor, rotary) -> torch.Tensor:
    """Flux's double-stream joint attention: [text; image] queries and keys, rotary positions on both."""
    from diffusers.models.embeddings import apply_rotary_emb

    split = lambda x: x.unflatten(-1, (-1, attn.head_dim))  # noqa: E731  (batch, token, heads, d)
    query = torch.cat([attn.norm_added_q(split(attn.add_q_proj(text))), attn.norm_q(split(attn.to_q(h)))], dim=1)
    key = torch.cat([attn.norm_added_k(split(attn.add_k_proj(text))), attn.norm_k(split(attn.to_k(h)))], dim=1)
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    query, key = query.transpose(1, 2).float(), key.transpose(1, 2).float()  # (batch, heads, token, d)
    n_text = text.shape[1]
    probs = (query[:, :, n_text:] @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])).softmax(dim=-1)
    return probs[..., :n_text]


def attention_probabilities(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                            attention_mask: torch.Tensor | None = None, *,
                            image_rotary_emb=None) -> torch.Tensor:
    """The attention probabilities of image-token queries over text-token keys of one module call.

    Parameters
    ----------
    attn : diffusers.models.attention_processor.Attention or FluxAttention
        A cross-attention module (``AttnProcessor``/``AttnProcessor2_0``), a joint-attention one
        (``JointAttnProcessor2_0``) or a Flux double-stream block's (``FluxAttnProcessor``).
    hidden_states : torch.Tensor
        The image tokens the module was called with, ``(batch, token, channel)`` or
        ``(batch, channel, y, x)``.
    encoder_hidden_states : torch.Tensor
        The text tokens, ``(batch, text_token, channel)``.
    attention_mask : torch.Tensor, optional
        The additive mask the module was called with (cross-attention only).
    image_rotary_emb : tuple of torch.Tensor, optional
        The rotary position embedding a Flux block was called with.

    Returns
    -------
    torch.Tensor
        ``(batch, heads, query, text_token)`` in float32: each row sums to 1 for cross-attention,
        to the text's share of the joint softmax for joint attention.

    Raises
    ------
    NotCrossAttentionError
        ``attn`` is neither kind.
    """
    kind = _kind(attn)
    if kind is None:
        raise NotCrossAttentionError(f"{type(attn).__name__} with {type(getattr(attn, 'processor', None)).__name__} "
                                     "is no cross- or joint-attention module.")
    h = hidden_states
    if kind == "flux":
        return _flux_probabilities(attn, h, encoder_hidden_states, image_rotary_emb)
    if kind == "joint":
        query, key = attn.to_q(h), attn.to_k(h)
        text_key = _heads(attn, attn.add_k_proj(encoder_hidden_states))
        query, key = _heads(attn, query), _heads(attn, key)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)
        scale = 1.0 / math.sqrt(query.shape[-1])  # scaled_dot_product_attention's default
        scores = torch.cat([key, text_key], dim=2).float()
        probs = (query.float() @ scores.transpose(-1, -2) * scale).softmax(dim=-1)
        return probs[..., key.shape[2]:]
    if h.ndim == 4:
        h = h.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
    text = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
    query, key = _heads(attn, attn.to_q(h)), _heads(attn, attn.to_k(text))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = query.float() @ key.float().transpose(-1, -2) * attn.scale  # (batch, heads, query, text)
    if attention_mask is not None:
        batch = text.shape[0]
        mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
        scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1]).float()
    return scores.softmax(dim=-1)


def layer_grid(n_tokens: int, size: tuple[int, int] | None) -> tuple[int, int]:
    """The ``(y, x)`` grid of ``n_tokens`` query tokens of a denoiser whose input is ``size`` (H, W).

    Parameters
    ----------
    n_tokens : int
        Query tokens of the layer.
    size : tuple of int or None
        The denoiser input's spatial size; ``None`` (a token input): a square grid.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        No downsampling factor (a power of two) gives ``n_tokens``.
    """
    if size is not None:
        for f in _FACTORS:
            grid = (-(-size[0] // f), -(-size[1] // f))
            if grid[0] * grid[1] == n_tokens:
                return grid
    side = math.isqrt(n_tokens)
    if size is None and side * side == n_tokens:
        return side, side
    raise ValueError(f"Cannot place {n_tokens} query tokens on a grid of the denoiser's input {size}.")


def bounded(maps: torch.Tensor, resolution: int) -> torch.Tensor:
    """Area-average ``(..., y, x)`` maps down to at most ``resolution`` a side (smaller maps unchanged).

    Parameters
    ----------
    maps : torch.Tensor
    resolution : int

    Returns
    -------
    torch.Tensor
    """
    h, w = maps.shape[-2:]
    if h <= resolution and w <= resolution:
        return maps
    lead = maps.shape[:-2]
    out = F.adaptive_avg_pool2d(maps.reshape(-1, 1, h, w), (min(h, resolution), min(w, resolution)))
    return out.reshape(*lead, *out.shape[-2:])


class _RecordingProcessor:
    """Calls the module's own processor for the output; hands the inputs of the call to ``deliver``.

    It presents the original processor's signature (an instance attribute ``__call__`` wrapping it,
    which is what diffusers inspects; calls go through the class's ``__call__``): diffusers' attention
    modules pass a processor only the keyword arguments its signature names, so the original receives
    exactly what it would have received without the recorder.
    """

    def __init__(self, original, deliver):
        self.original = original
        self.deliver = deliver
        self._signature = inspect.signature(original.__call__)
        self.__call__ = functools.wraps(original.__call__)(lambda *args, **kwargs: self._call(*args, **kwargs))

    def _call(self, attn, *args, **kwargs):
        output = self.original(attn, *args, **kwargs)
        given = self._signature.bind(attn, *args, **kwargs).arguments
        if given.get("encoder_hidden_states") is not None:
            self.deliver(attn, given["hidden_states"], given["encoder_hidden_states"], given.get("attention_mask"),
                         given.get("image_rotary_emb"))
        return output

    def __call__(self, attn, *args, **kwargs):
        return self._call(attn, *args, **kwargs)


class AttentionRecording:
    """In-memory maps of an :class:`attention_maps` block: ``recording.maps(layer)``."""

    def __init__(self):
        self._data: dict[str, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))

    def add(self, layer: str, step: int, data: np.ndarray) -> None:
        """Keep one step of ``layer``'s maps, ``(batch, token, y, x)``.

        Parameters
        ----------
        layer : str
        step : int
        data : numpy.ndarray
        """
        self._data[layer][step].append(data)

    @property
    def layers(self) -> list[str]:
        """The layers with maps, in the order they were first called."""
        return list(self._data)

    def maps(self, layer: str):
        """The maps of ``layer`` as an ``xarray.DataArray`` ``(sample, step, token, y, x)``.

        Parameters
        ----------
        layer : str

        Returns
        -------
        xarray.DataArray
        """
        import xarray as xr

        if layer not in self._data:
            raise KeyError(f"No attention maps of {layer!r}; recorded: {', '.join(self.layers) or 'none'}.")
        by_step = self._data[layer]
        steps = sorted(by_step)
        stacked = np.stack([np.concatenate(by_step[s]) for s in steps], axis=1)
        return xr.DataArray(stacked, dims=("sample", "step", "token", "y", "x"), coords={"step": steps},
                            name=f"attention/{layer}")


class attention_maps(HookManager):
    """Record cross-attention maps of chosen modules at chosen steps (a context manager).

    Parameters
    ----------
    pipe_or_denoiser : diffusers pipeline or torch.nn.Module
    layers : str or sequence of str, optional
        Module paths or globs of cross- or joint-attention modules; default all of
        :func:`cross_attention_layers`.
    steps : int, range, iterable of int, or None
        Loop steps to record; default all.
    resolution : int
        Largest side of a stored map; larger layers are area-averaged down to it.
    tokens : int, optional
        Keep the first ``tokens`` text tokens (a prompt's words and its end token, not the padding);
        default all.
    clock : StepClock, optional
        Supplied by :func:`denoisefeat.trace`; without it a step is one root call of the denoiser.
    sink : callable, optional
        ``sink(layer, step, maps)`` with ``maps`` ``(batch, token, y, x)`` float32, instead of the
        in-memory :class:`AttentionRecording`.

    Raises
    ------
    NotCrossAttentionError
        A chosen layer is no cross-/joint-attention module (the message lists those that are).

    Examples
    --------
    >>> with attention_maps(pipe, steps=[0, 10]) as rec:          # doctest: +SKIP
    ...     pipe("a red circle", num_inference_steps=20)
    >>> rec.maps("up_blocks.0.attentions.0.transformer_blocks.0.attn2")   # (sample, step, token, y, x)
    """

    def __init__(self, pipe_or_denoiser, layers=None, *, steps=None, resolution: int = DEFAULT_RESOLUTION,
                 tokens: int | None = None, clock: StepClock | None = None, sink=None):
        self.denoiser = denoiser_of(pipe_or_denoiser)
        available = cross_attention_layers(self.denoiser)
        self.layers = available if layers is None else resolve_layers(self.denoiser, layers)
        wrong = [name for name in self.layers if name not in available]
        if wrong or not self.layers:
            raise NotCrossAttentionError(
                f"{', '.join(wrong) or 'nothing'}: no cross-attention module of {type(self.denoiser).__name__}. "
                f"Modules whose attention to text can be read: {', '.join(available) or 'none'}."
            )
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution!r}.")
        if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
            raise ValueError(f"tokens must be a positive number of text tokens, got {tokens!r}.")
        self.steps = steps_selection(steps)
        self.resolution, self.tokens = resolution, tokens
        super().__init__(clock)
        self.recording = AttentionRecording()
        self.sink = sink or self.recording.add
        self._size: tuple[int, int] | None = None
        self._originals: dict[str, object] = {}

    def layer_hooks(self) -> dict[str, object]:
        """No forward hooks: the maps come from the modules' processors (:meth:`__enter__`)."""
        return {}

    def _input_size(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        ids = kwargs.get("img_ids")  # packed latents (Flux): each token's (·, y, x)
        if sample is not None and sample.ndim == 4:
            self._size = tuple(sample.shape[-2:])
        elif ids is not None:
            self._size = (int(ids[..., 1].max()) + 1, int(ids[..., 2].max()) + 1)
        else:
            self._size = None

    def _deliverer(self, name: str):
        def deliver(attn, hidden_states, encoder_hidden_states, attention_mask, rotary) -> None:
            step = self.clock.step
            if step is None or (self.steps is not None and step not in self.steps):
                return
            with torch.no_grad():
                probs = attention_probabilities(attn, hidden_states, encoder_hidden_states, attention_mask,
                                                image_rotary_emb=rotary)
                probs = probs.mean(dim=1)  # over heads: (batch, query, text)
                if self.clock.branches is not None:
                    probs = uncond_cond(*probs.chunk(2), self.clock.branches)[1]
                if self.tokens is not None:
                    probs = probs[..., : self.tokens]
                size = tuple(hidden_states.shape[-2:]) if hidden_states.ndim == 4 else self._size
                grid = layer_grid(probs.shape[1], size)
                maps = probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], *grid)
                self.sink(name, step, bounded(maps, self.resolution).cpu().numpy())

        return deliver

    def __enter__(self):
        modules = dict(self.denoiser.named_modules())
        result = super().__enter__()
        try:
            self._handles.append(self.denoiser.register_forward_pre_hook(self._input_size, with_kwargs=True))
            for name in self.layers:
                module = modules[name]
                self._originals[name] = module.processor
                module.set_processor(_RecordingProcessor(module.processor, self._deliverer(name)))
        except BaseException:
            self._restore()
            raise
        return result

    def _restore(self) -> None:
        modules = dict(self.denoiser.named_modules())
        try:
            for name, original in self._originals.items():
                modules[name].set_processor(original)
        finally:
            self._originals.clear()
            self._remove()

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def _entered(self) -> AttentionRecording:
        return self.recording


# ---------------------------------------------------------------------------------------------
# Words
# ---------------------------------------------------------------------------------------------
def word_spans(tokenizer, prompt: str) -> list[tuple[str, int, int]]:
    """Each word of ``prompt`` and the half-open range of its sub-word tokens in the encoded prompt.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        The text encoder's tokenizer (CLIP, T5, ...).
    prompt : str

    Returns
    -------
    list of (str, int, int)
        ``(word, start, stop)`` per whitespace-separated word, positions counted in the token
        sequence the text encoder sees (a start token included).

    Raises
    ------
    ValueError
        The prompt has more tokens than the text encoder takes, or the tokenizer encodes a word
        differently inside the prompt than alone (the spans would be guesses).
    """
    ids = list(tokenizer(prompt, truncation=False).input_ids)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 10**6 and len(ids) > limit:
        raise ValueError(f"The prompt {prompt!r} has {len(ids)} tokens; the text encoder takes {limit}.")
    words = prompt.split()
    pieces = [list(tokenizer(word, add_special_tokens=False).input_ids) for word in words]
    joined = [i for piece in pieces for i in piece]
    start = next((s for s in range(len(ids) - len(joined) + 1) if ids[s: s + len(joined)] == joined), None)
    if start is None:
        raise ValueError(f"{type(tokenizer).__name__} tokenizes the words of {prompt!r} differently inside the "
                         "prompt than alone; per-word spans are unknown.")
    spans = []
    for word, piece in zip(words, pieces, strict=True):
        spans.append((word, start, start + len(piece)))
        start += len(piece)
    return spans


def aggregate_words(maps: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Sum each sample's token maps over its word's span: the attention mass on the word.

    Parameters
    ----------
    maps : numpy.ndarray
        ``(sample, ..., token, y, x)``.
    spans : sequence of (int, int)
        One ``(start, stop)`` token range per sample.

    Returns
    -------
    numpy.ndarray
        ``(sample, ..., y, x)``.
    """
    maps = np.asarray(maps)
    if len(spans) != maps.shape[0]:
        raise ValueError(f"{len(spans)} word spans for {maps.shape[0]} samples: give one per sample.")
    n_tokens = maps.shape[-3]
    out = np.empty(maps.shape[:-3] + maps.shape[-2:], dtype=maps.dtype)
    for i, (start, stop) in enumerate(spans):
        if not 0 <= start < stop <= n_tokens:
            raise ValueError(f"Word span {start}:{stop} of sample {i} lies outside its {n_tokens} stored tokens.")
        out[i] = maps[i, ..., start:stop, :, :].sum(axis=-3)
    return out


def word_maps(run, layer: str, word: str):
    """One word's attention maps in every sample of a traced run, summed over its sub-word tokens.

    Parameters
    ----------
    run : denoisefeat.store.Run
        Traced with ``attention=...`` (its prompts' word spans are stored with the maps).
    layer : str
        A layer with stored maps.
    word : str
        A word of every sample's prompt (as split on whitespace).

    Returns
    -------
    xarray.DataArray
        ``(sample, step, y, x)``.

    Raises
    ------
    WordNotInPromptError
        A sample's prompt lacks the word (the message lists its words).
    """
    maps = run.attention(layer)
    spans_of = run.attention_words()
    spans = []
    for prompt in run.attrs["prompts"]:
        found = [(s, e) for w, s, e in spans_of[prompt] if w == word]
        if not found:
            words = [w for w, _, _ in spans_of[prompt]]
            close = difflib.get_close_matches(word, words, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise WordNotInPromptError(f"{word!r} is not a word of the prompt {prompt!r} (words: {words}).{hint}")
        if len(found) > 1:
            raise WordNotInPromptError(f"{word!r} occurs {len(found)} times in {prompt!r}: its maps are ambiguous.")
        spans.append(found[0])
    data = aggregate_words(maps.values, spans[: maps.sizes["sample"]])
    return maps.isel(token=0, drop=True).copy(data=data).rename(f"{layer}/{word}")
