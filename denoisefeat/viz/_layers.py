"""Network order and resolution levels of layer names, for the layer axis of heatmaps.

The reliable source is :func:`denoisefeat.hooks.list_layers`, whose :class:`LayerInfo` carries the
execution order (``order``) and the resolution level (``level``) of every module.  When a figure is
given only names (an attribution table read from a store), they are put in the forward order of
diffusers' UNets and transformers by :func:`name_order_key`: top-level modules in the order the
forward pass visits them (``conv_in`` … ``down_blocks`` … ``mid_block`` … ``up_blocks`` … ``conv_out``),
blocks by index, inside a block ``resnets.i`` before ``attentions.i`` before ``resnets.i+1``
(as ``DownBlock``/``UpBlock``/``UNetMidBlock`` call them), samplers last, and a parent module after
its children (it returns after them).  No level is guessed from a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

_TOP = {name: i for i, name in enumerate((
    "time_proj", "time_embedding", "class_embedding", "add_time_proj", "add_embedding", "encoder_hid_proj",
    "pos_embed", "transformer_in", "conv_in", "down_blocks", "mid_block", "up_blocks", "transformer_blocks",
    "norm_out", "conv_norm_out", "conv_act", "proj_out_1", "proj_out_2", "proj_out", "conv_out",
))}
# children of a block that are called in turn with the same index: resnets.i, attentions.i, …
_INDEXED = {"resnets": 0, "motion_modules": 1, "attentions": 2}
_AFTER = 10**6  # samplers and parents sort after the indexed children
_LEAF = {name: i for i, name in enumerate((
    "linear_1", "act", "linear_2", "norm", "norm1", "nonlinearity", "group_norm", "proj_in", "conv1",
    "time_emb_proj", "attn1", "norm2", "dropout", "to_q", "to_k", "to_v", "attn2", "norm3", "conv2", "ff", "to_out",
    "conv_shortcut", "transformer_blocks", "proj_out", "conv", "downsamplers", "upsamplers",
))}


def name_order_key(name: str) -> tuple:
    """A sort key putting diffusers module paths in forward (execution) order.

    Parameters
    ----------
    name : str
        A ``named_modules()`` path.

    Returns
    -------
    tuple
        Keys of different names compare; equal names give equal keys.
    """
    parts = name.split(".")
    key: list[tuple[int, int, str]] = [(0, _TOP.get(parts[0], len(_TOP) // 2), parts[0])]
    i = 1
    while i < len(parts):
        part = parts[i]
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        if part.isdigit():
            key.append((0, int(part), ""))
        elif part in _INDEXED and nxt is not None and nxt.isdigit():
            key.append((0, int(nxt), ""))  # resnets.1 after attentions.0
            key.append((0, _INDEXED[part], part))
            i += 1
        elif part in ("downsamplers", "upsamplers"):
            key.append((0, _AFTER, part))
        else:
            key.append((0, _LEAF.get(part, len(_LEAF)), part))
        i += 1
    key.append((1, 0, ""))  # a parent returns after its children
    return tuple(key)


def order_layers(names: Iterable[str], *, layers=None) -> tuple[list[str], dict[str, int]]:
    """Layer names in network order, and their resolution levels where known.

    Parameters
    ----------
    names : iterable of str
        The layers to order (duplicates are dropped).
    layers : sequence of LayerInfo, sequence of str or mapping of str to int, optional
        What is known about the network: :func:`denoisefeat.hooks.list_layers` output (order and
        level of each module), an explicit order of names, or ``{name: level}`` in network order.
        Names absent from it follow, in :func:`name_order_key` order.

    Returns
    -------
    ordered : list of str
    levels : dict of str to int
        Resolution level (0 = full resolution) of the names whose level is known.
    """
    unique = list(dict.fromkeys(str(n) for n in names))
    levels: dict[str, int] = {}
    rank: dict[str, float] = {}
    if layers is not None:
        if isinstance(layers, Mapping):
            for i, (name, level) in enumerate(layers.items()):
                rank[str(name)] = i
                if level is not None:
                    levels[str(name)] = int(level)
        elif isinstance(layers, Sequence) and not isinstance(layers, str):
            for i, item in enumerate(layers):
                if isinstance(item, str):
                    rank[item] = i
                elif hasattr(item, "name") and hasattr(item, "level"):
                    order = getattr(item, "order", None)
                    rank[item.name] = order if order is not None else float("inf")
                    if item.level is not None:
                        levels[item.name] = int(item.level)
                else:
                    raise TypeError(f"layers must hold LayerInfo or str, got {type(item).__name__}")
        else:
            raise TypeError(
                "layers must be list_layers(...) output, a list of names or a {name: level} mapping, "
                f"got {type(layers).__name__}"
            )
    known = sorted((n for n in unique if n in rank), key=lambda n: (rank[n], name_order_key(n)))
    rest = sorted((n for n in unique if n not in rank), key=name_order_key)
    return known + rest, {n: levels[n] for n in unique if n in levels}
