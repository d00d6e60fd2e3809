"""A model's parameters and buffers by qualified name: where they sit, their shapes, and module names."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["Modules", "child", "first_change", "module_of", "named_tensors", "shapes_of", "tensor_slots"]

Modules = list[tuple[str, nn.Module]]  # (qualified name, module), as named_modules() gives them


def tensor_slots(modules: Modules):
    """(qualified name, the dict holding it, key, tensor) for every parameter and buffer slot."""
    for prefix, m in modules:
        for slots in (m._parameters, m._buffers):
            for k, t in slots.items():
                if t is not None:
                    yield (f"{prefix}.{k}" if prefix else k), slots, k, t


def named_tensors(model: nn.Module, modules: Optional[Modules] = None) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under its first qualified name, as named_parameters() names it.
    `modules`: model.named_modules(), when the caller has them already."""
    out, seen = {}, set()
    for name, _, _, t in tensor_slots(model.named_modules() if modules is None else modules):
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def shapes_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {n: tuple(t.shape) for n, t in tensors.items()}


def first_change(now: dict[str, tuple], before: dict[str, tuple]) -> Optional[str]:
    """The first tensor name (sorted) whose shape differs between two `shapes_of`, or None."""
    return None if now == before else sorted(set(now.items()) ^ set(before.items()))[0][0]


def module_of(param: Optional[str]) -> str:
    """The qualified name of the module holding parameter or buffer `param` ("" for the model itself)."""
    return param.rsplit(".", 1)[0] if param and "." in param else ""


def child(module: str, name: str) -> str:
    """The qualified name of `name` in `module` ("" for the model itself)."""
    return f"{module}.{name}" if module else name
