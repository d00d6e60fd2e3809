"""Saving a pruned model as widths plus state dict, and rebuilding it from its constructor."""

from __future__ import annotations

import os
from typing import Callable, Union

import torch
from torch import nn

from .attention import PrunedMultiheadAttention
from .graph.trace import shapes_of
from .surgery import owner
from .window_attention import pruned_class

__all__ = ["save_pruned", "load_pruned"]

_FORMAT = "pyprune_fast.pruned/1"
_ATTRS = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._NormBase: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),
    nn.MultiheadAttention: ("num_heads",),
}


def _shape_attrs(model: nn.Module) -> dict[str, dict]:
    out = {}
    for name, m in model.named_modules():
        for cls, attrs in _ATTRS.items():
            if isinstance(m, cls):
                out[name] = {a: getattr(m, a) for a in attrs}
        swin = pruned_class(m)  # torchvision's Swin window attention
        if swin is not None:
            out[name] = {"num_heads": m.num_heads}
        if isinstance(m, PrunedMultiheadAttention) or swin is type(m):
            out[name]["pruned_heads"] = True
    return out


def save_pruned(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Save `model`'s tensor shapes, layer widths and state dict (no pickled modules) to `path`."""
    state = model.state_dict()
    torch.save({"format": _FORMAT, "shapes": shapes_of(state), "attrs": _shape_attrs(model), "state_dict": state}, path)


def load_pruned(build_fn: Callable[[], nn.Module], path: Union[str, os.PathLike], map_location=None) -> nn.Module:
    """Rebuild a model saved by `save_pruned`: `build_fn()` makes the original (unpruned) model, whose
    tensors and layer widths are then resized to the saved ones before the state dict is loaded."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"load_pruned: {path} was not written by save_pruned")
    model = build_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_pruned: build_fn must return an nn.Module, got {type(model).__name__}")
    current = model.state_dict(keep_vars=True)
    missing = sorted(set(payload["shapes"]) - set(current))
    if missing:
        raise ValueError(f"load_pruned: the model from build_fn has no {missing[0]} (was it built with other arguments?)")
    for name, shape in payload["shapes"].items():
        t = current[name]
        if tuple(t.shape) == tuple(shape):
            continue
        module, attr = owner(model, name)
        new = torch.empty(shape, dtype=t.dtype, device=t.device)
        if isinstance(t, nn.Parameter):
            setattr(module, attr, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            module._buffers[attr] = new
    for module_name, attrs in payload["attrs"].items():
        module = model.get_submodule(module_name)
        for attr, value in attrs.items():
            if attr == "pruned_heads":
                module.__class__ = pruned_class(module) or PrunedMultiheadAttention
            else:
                setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    model.load_state_dict(payload["state_dict"])
    return model
