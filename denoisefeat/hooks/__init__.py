"""Record and intervene on named denoiser layers at chosen steps.

* :func:`list_layers`, :func:`resolve_layers`, :func:`top_level_layers` — layer names are exact
  ``named_modules()`` paths, with simple globs;
* :class:`record` — capture reduced outputs (:mod:`~denoisefeat.hooks.reducers`) per step;
* :class:`intervene` with :class:`Edit` — ablate, rescale, add noise, project out, or patch from a
  source run;
* both plug into :func:`denoisefeat.trace` (``record=``, ``intervene=``), which streams activations
  into the run store under ``acts/<layer>/<reducer>``;
* :class:`attention_maps` — cross-attention maps (image tokens to text tokens) through the
  modules' own attention processors; :func:`word_maps` per word (``trace(..., attention=...)``);
* :mod:`~denoisefeat.hooks.nnsight_backend` runs the same specs through nnsight.
"""

from denoisefeat.hooks.attention import (
    NotCrossAttentionError,
    WordNotInPromptError,
    attention_maps,
    cross_attention_layers,
    word_maps,
    word_spans,
)
from denoisefeat.hooks.intervene import METHODS, Edit, intervene
from denoisefeat.hooks.layers import LayerInfo, UnknownLayerError, list_layers, resolve_layers, top_level_layers
from denoisefeat.hooks.record import Recording, record
from denoisefeat.hooks.reducers import REDUCERS, Reducer, get_reducer

__all__ = [
    "METHODS",
    "REDUCERS",
    "Edit",
    "LayerInfo",
    "NotCrossAttentionError",
    "Recording",
    "Reducer",
    "UnknownLayerError",
    "WordNotInPromptError",
    "attention_maps",
    "cross_attention_layers",
    "get_reducer",
    "intervene",
    "list_layers",
    "record",
    "resolve_layers",
    "top_level_layers",
    "word_maps",
    "word_spans",
]
