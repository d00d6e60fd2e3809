"""What the engine knows about each module type it resizes, in one table (`kind_of`).

A `Kind` names the module's width attributes (set by `apply`, saved by `save_pruned`, the only ones
`load_pruned` accepts), computes them from the module's (new) tensors, and for attention says which
class runs the module once heads are gone and what its head layout must satisfy. torchvision's Swin
window attention is known by exact class, and only once torchvision's Swin module is imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .attention import PrunedMultiheadAttention

__all__ = ["Kind", "kind_of", "pruned_class", "heads_held"]


@dataclass(frozen=True)
class Kind:
    """widths: the module's width attributes. sync(module, groups_follow): the widths its tensors imply, as
    {attr: value} ("__class__" too when it must change class to run); groups_follow: its groups follow its
    channel count (a depthwise conv, a GroupNorm with one channel a group); groups: the attribute holding
    the group count, for kinds that have one. For modules with
    heads: heads(module), the class that runs it with fewer heads, and layout(module), what is wrong
    with its head rows (None when nothing is)."""

    widths: tuple[str, ...]
    sync: Callable[[nn.Module, bool], dict]
    groups: Optional[str] = None
    heads: Optional[Callable[[nn.Module], type]] = None
    layout: Optional[Callable[[nn.Module], Optional[str]]] = None


def pruned_class(module: nn.Module) -> Optional[type]:
    """For torchvision's Swin window attention (V1 or V2; exactly those classes, or ours already), the
    subclass that runs with pruned heads; None for any other module."""
    if "torchvision.models.swin_transformer" not in sys.modules:
        return None  # no model can hold one
    from .swin import PRUNED  # imports torchvision, already loaded

    return PRUNED.get(type(module))


def heads_held(module: nn.Module) -> int:
    """The number of heads a Swin window attention module's parameters hold (V2: logit_scale,
    V1: the columns of the relative position bias table)."""
    scale = getattr(module, "logit_scale", None)
    return scale.shape[0] if scale is not None else module.relative_position_bias_table.shape[1]


def _rows_not_multiple(what: str, rows: int, step: int, of: str) -> Optional[str]:
    return f"{what} has {rows} rows, not a multiple of {of}" if rows % step else None


def _attention(m: nn.MultiheadAttention, groups_follow: bool) -> dict:
    if m.in_proj_weight is None:  # separate q, k, v projections: not resized
        return {}
    heads = m.in_proj_weight.shape[0] // (3 * m.head_dim)
    attrs = {"num_heads": heads}
    if heads * m.head_dim != m.embed_dim:
        attrs["__class__"] = PrunedMultiheadAttention  # nn.MultiheadAttention cannot run fewer heads
    return attrs


def _attention_layout(m: nn.MultiheadAttention) -> Optional[str]:
    if m.in_proj_weight is None:
        return None
    return _rows_not_multiple("in_proj_weight", m.in_proj_weight.shape[0], 3 * m.head_dim, f"3 x {m.head_dim}")


def _window_attention(m: nn.Module, groups_follow: bool) -> dict:
    return {"num_heads": heads_held(m), "__class__": pruned_class(m)}  # fewer heads need our subclass to run


def _window_layout(m: nn.Module) -> Optional[str]:
    return _rows_not_multiple("qkv.weight", m.qkv.weight.shape[0], 3 * heads_held(m), f"3 x {heads_held(m)} heads")


def _conv(m: nn.modules.conv._ConvNd, groups_follow: bool) -> dict:
    w = m.weight
    if w is None:
        return {}
    # a conv whose groups follow its channels has one input channel a group, and as many outputs a group as before
    groups = w.shape[0] * m.groups // (m.in_channels if m.transposed else m.out_channels) if groups_follow else m.groups
    if m.transposed:  # its weight is (in_channels, out_channels / groups, *kernel)
        return {"in_channels": w.shape[0], "groups": groups, "out_channels": w.shape[1] * groups}
    return {"out_channels": w.shape[0], "groups": groups, "in_channels": w.shape[1] * groups}


def _linear(m: nn.Linear, groups_follow: bool) -> dict:
    return {"out_features": m.weight.shape[0], "in_features": m.weight.shape[1]}


def _embedding(m: nn.Embedding, groups_follow: bool) -> dict:
    return {"num_embeddings": m.weight.shape[0], "embedding_dim": m.weight.shape[1]}


def _recurrent(m: nn.RNNBase, groups_follow: bool) -> dict:
    return {"input_size": m.weight_ih_l0.shape[1]}


def _batch_norm(m: nn.modules.batchnorm._NormBase, groups_follow: bool) -> dict:
    ref = m.weight if m.weight is not None else m.running_mean
    return {"num_features": ref.shape[0]} if ref is not None else {}


def _group_norm(m: nn.GroupNorm, groups_follow: bool) -> dict:
    if m.weight is None:
        return {}
    return {"num_channels": m.weight.shape[0], **({"num_groups": m.weight.shape[0]} if groups_follow else {})}


def _layer_norm(m: nn.LayerNorm, groups_follow: bool) -> dict:
    return {"normalized_shape": tuple(m.weight.shape)} if m.weight is not None else {}


_WINDOW_ATTENTION = Kind(("num_heads",), _window_attention, heads=pruned_class, layout=_window_layout)
# first match wins (isinstance)
_KINDS: tuple[tuple[type | tuple[type, ...], Kind], ...] = (
    (nn.MultiheadAttention, Kind(("num_heads",), _attention, heads=lambda m: PrunedMultiheadAttention,
                                 layout=_attention_layout)),
    (nn.modules.conv._ConvNd, Kind(("in_channels", "out_channels", "groups"), _conv, groups="groups")),
    (nn.Linear, Kind(("in_features", "out_features"), _linear)),
    (nn.Embedding, Kind(("num_embeddings", "embedding_dim"), _embedding)),
    (nn.RNNBase, Kind(("input_size",), _recurrent)),
    (nn.modules.batchnorm._NormBase, Kind(("num_features",), _batch_norm)),
    (nn.GroupNorm, Kind(("num_groups", "num_channels"), _group_norm, groups="num_groups")),
    ((nn.LayerNorm, nn.RMSNorm), Kind(("normalized_shape",), _layer_norm)),
)


_NO_WIDTHS = Kind((), lambda m, groups_follow: {})


def kind_of(module: nn.Module) -> Kind:
    """What the engine knows about `module`'s type (no widths for a module it does not resize)."""
    if pruned_class(module) is not None:
        return _WINDOW_ATTENTION
    return next((kind for cls, kind in _KINDS if isinstance(module, cls)), _NO_WIDTHS)
