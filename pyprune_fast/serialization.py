"""Saving a pruned model as widths plus state dict, and rebuilding it from its constructor.

Loading trusts nothing in the file: `torch.load(weights_only=True)` runs no code, and every width,
shape and tensor is checked against the model `build_fn` makes (only the width attributes `apply`
sets, ints between 1 and the original, consistent with the tensors' shapes) before that model is
returned; a file that fails any check gives a ValueError or TypeError naming the key, and the model
`build_fn` made is left as it was built.
"""

from __future__ import annotations

import numbers
import os
from typing import Callable, Union

import torch
from torch import nn

from .nn.attention import PrunedMultiheadAttention
from .graph.trace import shapes_of
from .surgery import _Swap, owner, sync_module_attributes
from .nn.widths import heads_held, pruned_class

__all__ = ["save_pruned", "load_pruned"]

_FORMAT = "pyprune_fast.pruned/1"
_KEYS = ("format", "shapes", "attrs", "state_dict")
_ATTRS = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._NormBase: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),
    nn.MultiheadAttention: ("num_heads",),
}


def _widths(m: nn.Module) -> tuple[str, ...]:
    """The width attributes saved (and accepted on load) for a module of this type."""
    out = tuple(a for cls, attrs in _ATTRS.items() if isinstance(m, cls) for a in attrs)
    return out + ("num_heads",) if pruned_class(m) is not None else out  # torchvision's Swin window attention


def _heads_pruned(m: nn.Module) -> bool:
    return isinstance(m, PrunedMultiheadAttention) or (pruned_class(m) is type(m) is not None)


def _shape_attrs(model: nn.Module) -> dict[str, dict]:
    out = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in _widths(m)}
        if _heads_pruned(m):
            attrs["pruned_heads"] = True
        if attrs:
            out[name] = attrs
    return out


def save_pruned(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Save `model`'s tensor shapes, layer widths and state dict (no pickled modules) to `path`."""
    state = model.state_dict()
    torch.save({"format": _FORMAT, "shapes": shapes_of(state), "attrs": _shape_attrs(model), "state_dict": state}, path)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"load_pruned: {what} must be a dict with str keys, got {type(value).__name__}")
    return value


def _check_shapes(shapes: dict, state: dict, current: dict) -> None:
    """Every tensor of the model is in the file, no more, each no larger than the original, dim by dim."""
    for what, names in (("shapes", shapes), ("state_dict", state)):
        if set(names) != set(current):
            extra, missing = sorted(set(names) - set(current)), sorted(set(current) - set(names))
            if extra:
                raise ValueError(f"load_pruned: the model from build_fn has no {extra[0]} ({what}; was it built with "
                                 f"other arguments?)")
            raise ValueError(f"load_pruned: the file's {what} has no {missing[0]}")
    for name, shape in shapes.items():
        orig = tuple(current[name].shape)
        if (not isinstance(shape, (tuple, list)) or len(shape) != len(orig)
                or not all(_is_int(d) and min(1, o) <= d <= o for d, o in zip(shape, orig))):
            raise ValueError(f"load_pruned: shapes[{name!r}] = {shape!r} must be {len(orig)} ints, each between 1 and "
                             f"the original size {orig}")
        t, c = state[name], current[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"load_pruned: state_dict[{name!r}] is {got}, not a tensor of shape {tuple(shape)}")
        if (t.is_floating_point(), t.is_complex()) != (c.is_floating_point(), c.is_complex()):
            raise ValueError(f"load_pruned: state_dict[{name!r}] is {t.dtype}; the model's tensor is {c.dtype}")


def _check_attrs(attrs: dict, modules: dict[str, nn.Module]) -> None:
    """Only the width attributes of each module's type, ints between 1 and the module's original value."""
    for name, given in attrs.items():
        if name not in modules:
            raise ValueError(f"load_pruned: attrs names a module {name!r} that the model from build_fn does not have")
        m = modules[name]
        allowed = _widths(m) + (("pruned_heads",) if isinstance(m, nn.MultiheadAttention) or pruned_class(m) else ())
        for attr, value in _dict(given, f"attrs[{name!r}]").items():
            key = f"attrs[{name!r}][{attr!r}]"
            if attr not in allowed:
                raise ValueError(f"load_pruned: {key} is not a width of a {type(m).__name__} "
                                 f"(allowed: {', '.join(allowed)})")
            if attr == "pruned_heads":
                if value is not True:
                    raise ValueError(f"load_pruned: {key} must be True, got {value!r}")
                continue
            orig = getattr(m, attr)
            ok = (isinstance(value, (tuple, list)) and len(value) == len(orig)
                  and all(_is_int(v) and 1 <= v <= o for v, o in zip(value, orig))) if isinstance(orig, tuple) \
                else _is_int(value) and 1 <= value <= orig
            if not ok:
                kind = "ints" if isinstance(orig, tuple) else "an int"
                raise ValueError(f"load_pruned: {key} = {value!r} must be {kind} "
                                 f"between 1 and the original {orig!r}")


def _check_consistent(name: str, m: nn.Module, orig: dict) -> None:
    """The module's widths agree with its (resized) tensors, as `apply` would have set them."""
    depthwise = frozenset({name}) if getattr(m, "groups", None) != orig.get("groups") else frozenset()
    per_channel = frozenset({name}) if getattr(m, "num_groups", None) != orig.get("num_groups") else frozenset()
    want = sync_module_attributes(m, name, depthwise, per_channel)
    want.pop("__class__", None)
    if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
        rows = m.in_proj_weight.shape[0]
        if rows % (3 * m.head_dim):
            want["in_proj_weight rows"] = f"a multiple of {3 * m.head_dim}, not {rows}"
    for attr in _widths(m):
        if attr not in want:
            want[attr] = orig[attr]  # a width no tensor implies stays as built
    for attr, value in want.items():
        have = getattr(m, attr, None)
        if have != value:
            raise ValueError(f"load_pruned: attrs[{name!r}][{attr!r}] is {have!r} but the tensors' shapes imply "
                             f"{value!r}")
    if "num_heads" in want and want["num_heads"] != orig["num_heads"] and not _heads_pruned(m):
        raise ValueError(f"load_pruned: attrs[{name!r}] has fewer heads ({want['num_heads']}) but no 'pruned_heads'")
    if pruned_class(m) is not None and m.qkv.weight.shape[0] % (3 * heads_held(m)):
        raise ValueError(f"load_pruned: {name}.qkv.weight has {m.qkv.weight.shape[0]} rows, not a multiple of "
                         f"3 x {heads_held(m)} heads")


def _read(path, map_location) -> dict:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # a truncated or tampered archive, a pickle that weights_only refuses
        raise ValueError(f"load_pruned: cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"load_pruned: {path} was not written by save_pruned (format {got!r}, expected {_FORMAT!r})")
    for key in _KEYS:
        if key not in payload:
            raise ValueError(f"load_pruned: {path} has no {key!r}")
    extra = sorted(map(str, set(payload) - set(_KEYS)))
    if extra:
        raise ValueError(f"load_pruned: {path} holds an unknown key {extra[0]!r}")
    return payload


def load_pruned(build_fn: Callable[[], nn.Module], path: Union[str, os.PathLike], map_location=None) -> nn.Module:
    """Rebuild a model saved by `save_pruned`: `build_fn()` makes the original (unpruned) model, whose
    tensors and layer widths are then resized to the saved ones before the state dict is loaded.

    Everything in the file is checked first (see the module docstring): ValueError naming the key
    when it does not fit the model, and nothing is returned.
    """
    payload = _read(path, map_location)
    shapes, state = _dict(payload["shapes"], "shapes"), _dict(payload["state_dict"], "state_dict")
    attrs = _dict(payload["attrs"], "attrs")
    model = build_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_pruned: build_fn must return an nn.Module, got {type(model).__name__}")
    current = model.state_dict(keep_vars=True)
    modules = dict(model.named_modules())
    _check_shapes(shapes, state, current)
    _check_attrs(attrs, modules)
    touched = set(attrs) | {n.rpartition(".")[0] for n in shapes if tuple(current[n].shape) != tuple(shapes[n])}
    orig = {n: {a: getattr(modules[n], a) for a in _widths(modules[n])} for n in touched}
    swap = _Swap()  # build_fn may hand out a model it keeps: a refused file must leave it as it was
    try:
        for name, shape in shapes.items():
            t = current[name]
            if tuple(t.shape) == tuple(shape):
                continue
            module, attr = owner(model, name)
            new = torch.empty(shape, dtype=t.dtype, device=t.device)
            if isinstance(t, nn.Parameter):
                swap.setattr(module, attr, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                swap.setitem(module._buffers, attr, new)
        for module_name, given in attrs.items():
            module = modules[module_name]
            for attr, value in given.items():
                if attr == "pruned_heads":
                    swap.setattr(module, "__class__", pruned_class(module) or PrunedMultiheadAttention)
                else:
                    swap.setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for name in sorted(touched):
            _check_consistent(name, modules[name], orig[name])
        model.load_state_dict(state)
    except BaseException as e:
        swap.rollback()
        if isinstance(e, RuntimeError):  # load_state_dict's own checks: a file these checks let through
            raise ValueError(f"load_pruned: {path} does not fit the model from build_fn: {e}") from e
        raise
    return model
