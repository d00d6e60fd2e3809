"""The recorded program: Values (tensors seen), Nodes (executed ops) and the Trace of one forward pass,
with the helpers that walk the nested containers torch ops take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

__all__ = ["Node", "Trace", "Value", "leaf_paths", "leaves", "map_tensors", "op_name"]


@dataclass(eq=False)
class Value:
    """One tensor seen during the pass. `param` names a parameter or buffer of the model it is."""

    shape: tuple[int, ...]
    producer: Optional["Node"] = None
    param: Optional[str] = None
    id: int = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(eq=False)
class Node:
    """One executed op: `func` with `args`/`kwargs` in which every tensor is replaced by its Value."""

    func: Callable
    args: tuple
    kwargs: dict
    outputs: list[Value]
    output_tree: Any  # the op's return value with Values in place of tensors
    id: int = 0
    site: Any = None  # for a view/reshape the model's own method called: where (nn.rewritten.Site)

    @property
    def name(self) -> str:
        return op_name(self.func)

    def tensor_inputs(self) -> list[Value]:
        return [v for v in leaves((self.args, self.kwargs)) if isinstance(v, Value)]

    def arg(self, i: int, name: str, default=None):
        """The argument at position i, or passed by `name`."""
        return self.args[i] if len(self.args) > i else self.kwargs.get(name, default)


@dataclass
class Trace:
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    params: dict[str, Value] = field(default_factory=dict)  # parameter/buffer name -> its Value
    meta: bool = True  # recorded on meta tensors
    shapes: dict[str, tuple] = field(default_factory=dict)  # every parameter/buffer (read or not) -> its shape
    output_paths: list[tuple] = field(default_factory=list)  # per output, its path in what the model returned
    guessed: bool = False  # on meta, sizes that depend on the data were guessed (graph/guessed.py)


# Leaves that are neither containers nor tensors: kept as they are, without a call per leaf.
_ATOMS = frozenset({int, float, bool, str, type(None), slice, torch.Size, torch.dtype, torch.device})


def map_tensors(fn: Callable, obj: Any) -> Any:
    """fn applied to every tensor in nested tuples, lists and dicts (the containers torch ops take)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        mapped = [fn(o) if isinstance(o, torch.Tensor) else o if type(o) in _ATOMS else map_tensors(fn, o) for o in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)  # namedtuples take fields
    if isinstance(obj, dict):
        return {k: v if type(v) in _ATOMS else map_tensors(fn, v) for k, v in obj.items()}
    return obj


def leaves(obj: Any) -> list:
    if isinstance(obj, (tuple, list)):
        return [leaf for o in obj for leaf in leaves(o)]
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in leaves(v)]
    return [obj]


def leaf_paths(obj: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, leaf) for every leaf of `obj`, in the order of `leaves`: a path is the tuple of indices and keys
    that reach the leaf (`(1, "feats", 0)` for `obj[1]["feats"][0]`; `()` for `obj` itself)."""
    if isinstance(obj, (tuple, list)):
        return [item for i, o in enumerate(obj) for item in leaf_paths(o, (*path, i))]
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in leaf_paths(v, (*path, k))]
    return [(path, obj)]


def op_name(func: Callable) -> str:
    """A short name for a recorded function: 'conv2d', 'add_', '__getitem__', 'T' for the `.T` property."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a Tensor property such as .T or .data
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name or repr(func)
