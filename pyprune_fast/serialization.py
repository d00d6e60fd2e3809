"""Saving a pruned model as widths plus state dict, and rebuilding it from its constructor.

Loading trusts nothing in the file: `torch.load(weights_only=True)` runs no code, and every width,
shape and tensor is checked against the model `build_fn` makes (only the width attributes `apply`
sets, ints between 1 and the original, consistent with the tensors' shapes) before that model is
returned; a file that fails any check gives a ValueError or TypeError naming the key, and the model
`build_fn` made is left as it was built.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Callable, Union

import torch
from torch import nn

from .graph import shapes_of
from .graph.sizes import int_sequence
from .nn.rewritten import REWRITES, install
from .nn.widths import kind_of
from .surgery import CODE_SIZES, _Swap, owner

__all__ = ["save_pruned", "load_pruned"]

_FORMAT = "pyprune_fast.pruned/1"
_KEYS = ("format", "shapes", "attrs", "state_dict")
_OPTIONAL = ("rewrites",)  # {module: {method: [[line, end_line, col, end_col, size index or ["scale", value]], ...]}}
# (nn.rewritten)


def _heads_pruned(m: nn.Module) -> bool:
    """`m` runs as the class made for fewer heads (which `load_pruned` must rebuild)."""
    heads = kind_of(m).heads
    return heads is not None and isinstance(m, heads(m))


def _shape_attrs(model: nn.Module) -> dict[str, dict]:
    out = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in (*kind_of(m).widths, *getattr(m, CODE_SIZES, ()))}
        if _heads_pruned(m):
            attrs["pruned_heads"] = True
        if attrs:
            out[name] = attrs
    return out


def save_pruned(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Save `model`'s tensor shapes, layer widths and state dict (no pickled modules) to `path`."""
    state = model.state_dict()
    rewrites = {name: {method: [[*at, i if isinstance(i, int) else list(i)] for at, i in edits]
                       for method, edits in done.items()}
                for name, m in model.named_modules() if (done := getattr(m, REWRITES, None))}
    torch.save({"format": _FORMAT, "shapes": shapes_of(state), "attrs": _shape_attrs(model), "state_dict": state,
                **({"rewrites": rewrites} if rewrites else {})}, path)


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
    """Only the width attributes of each module's type, or other int attributes of the module (sizes in its
    code that apply changed, such as `num_heads`), ints between 1 and the module's original value."""
    for name, given in attrs.items():
        if name not in modules:
            raise ValueError(f"load_pruned: attrs names a module {name!r} that the model from build_fn does not have")
        m = modules[name]
        allowed = kind_of(m).widths + (("pruned_heads",) if kind_of(m).heads is not None else ())
        for attr, value in _dict(given, f"attrs[{name!r}]").items():
            key = f"attrs[{name!r}][{attr!r}]"
            have = getattr(m, attr, None)
            if attr not in allowed and not (type(have) is int or int_sequence(m, have)):
                raise ValueError(f"load_pruned: {key} is neither a width of a {type(m).__name__} "
                                 f"({', '.join(allowed)}) nor an int attribute of it (or a tuple or list of ints)")
            if attr == "pruned_heads":
                if value is not True:
                    raise ValueError(f"load_pruned: {key} must be True, got {value!r}")
                continue
            orig = getattr(m, attr)
            ok = (isinstance(value, (tuple, list)) and len(value) == len(orig)
                  and all(_is_int(v) and 1 <= v <= o for v, o in zip(value, orig))) if isinstance(orig, (tuple, list)) \
                else _is_int(value) and 1 <= value <= orig
            if not ok:
                kind = f"{len(orig)} ints, each" if isinstance(orig, (tuple, list)) else "an int"
                raise ValueError(f"load_pruned: {key} = {value!r} must be {kind} "
                                 f"between 1 and the original {orig!r}")


def _check_consistent(name: str, m: nn.Module, orig: dict) -> None:
    """The module's widths agree with its (resized) tensors, as `apply` would have set them."""
    kind = kind_of(m)
    # a conv made depthwise, a GroupNorm per channel
    groups_follow = kind.groups is not None and getattr(m, kind.groups) != orig.get(kind.groups)
    want = kind.sync(m, groups_follow)
    want.pop("__class__", None)
    for attr in kind.widths:
        if attr not in want:
            want[attr] = orig[attr]  # a width no tensor implies stays as built
    for attr, value in want.items():
        have = getattr(m, attr, None)
        if have != value:
            raise ValueError(f"load_pruned: attrs[{name!r}][{attr!r}] is {have!r} but the tensors' shapes imply "
                             f"{value!r}")
    if "num_heads" in want and want["num_heads"] != orig["num_heads"] and not _heads_pruned(m):
        raise ValueError(f"load_pruned: attrs[{name!r}] has fewer heads ({want['num_heads']}) but no 'pruned_heads'")
    wrong = kind.layout(m) if kind.layout is not None else None
    if wrong is not None:
        raise ValueError(f"load_pruned: {name}.{wrong}")


def _is_scale(edit) -> bool:
    """Whether `edit` is ["scale", value]: sdpa's default scale made explicit (nn.rewritten)."""
    return (isinstance(edit, (list, tuple)) and len(edit) == 2 and edit[0] == "scale"
            and isinstance(edit[1], float) and math.isfinite(edit[1]) and edit[1] > 0)


def _rewrite(modules: dict[str, nn.Module], name: str, methods: dict, swap: _Swap) -> None:
    """Rewrites the calls of the model's code that apply rewrote (nn.rewritten), as the file lists them."""
    if name not in modules:
        raise ValueError(f"load_pruned: rewrites names a module {name!r} that the model from build_fn does not have")
    for method, edits in methods.items():
        key = f"rewrites[{name!r}][{method!r}]"
        if not isinstance(edits, list) or not all(isinstance(e, list) and len(e) == 5 and all(map(_is_int, e[:4]))
                                                  and (_is_int(e[4]) or _is_scale(e[4])) for e in edits):
            raise ValueError(f"load_pruned: {key} must be a list of [line, end_line, col, end_col, index] ints (index: "
                             "or [\"scale\", a positive number])")
        try:
            install(modules[name], method, tuple((tuple(e[:4]), e[4] if _is_int(e[4]) else tuple(e[4])) for e in edits),
                    swap.setitem)
        except (ValueError, OSError, TypeError, SyntaxError) as e:
            raise ValueError(f"load_pruned: {key} does not fit the model's code: {e}") from e


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
    extra = sorted(map(str, set(payload) - set(_KEYS) - set(_OPTIONAL)))
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
    orig = {n: {a: getattr(modules[n], a) for a in kind_of(modules[n]).widths} for n in touched}
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
                    swap.setattr(module, "__class__", kind_of(module).heads(module))
                else:
                    was = getattr(module, attr)
                    swap.setattr(module, attr, type(was)(value) if isinstance(was, (tuple, list)) else value)
            code = tuple(sorted(a for a in given if a not in kind_of(module).widths and a != "pruned_heads"))
            if code:  # sizes of the model's code that apply changed: a later save_pruned keeps them
                swap.setitem(vars(module), CODE_SIZES, code)
        for module_name, methods in _dict(payload.get("rewrites", {}), "rewrites").items():
            _rewrite(modules, module_name, _dict(methods, f"rewrites[{module_name!r}]"), swap)
        for name in sorted(touched):
            _check_consistent(name, modules[name], orig[name])
        model.load_state_dict(state)
    except BaseException as e:
        swap.rollback()
        if isinstance(e, RuntimeError):  # load_state_dict's own checks: a file these checks let through
            raise ValueError(f"load_pruned: {path} does not fit the model from build_fn: {e}") from e
        raise
    return model
