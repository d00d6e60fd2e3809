"""`Unchanged`: every module's attributes, tensors changed in place and grad mode, put back on exit."""

from __future__ import annotations

import torch
from torch import nn

from .tensors import Modules

__all__ = ["Unchanged"]


class Unchanged:
    """Puts back, on exit, every module's attributes as they were on entry: each `vars(m)` entry (the same
    object; entries added meanwhile are removed), the items of its lists, dicts and sets (the parameter,
    buffer and hook dicts among them), and the values of the buffers and plain tensor attributes (also
    those in a list, tuple or dict attribute) that were changed in place (buffers only if `buffers`: a
    meta pass cannot change them). So a forward that reassigns `self.x` (torchvision's AnchorGenerator),
    counts its calls or sets a `training` flag leaves nothing behind. Grad mode is restored too."""

    def __init__(self, modules: Modules, buffers: bool = True):
        self.modules = modules
        self.skip = _NO_TENSORS if buffers else _NO_TENSORS | {"_buffers"}

    def __enter__(self):
        self.grad = torch.is_grad_enabled()
        self.saved = [(d, dict(d), [(v, _copy(v)) for v in d.values() if isinstance(v, (list, dict, set))])
                      for d in (vars(m) for _, m in self.modules)]
        tensors = {id(t): t for d, _, _ in self.saved for k, v in d.items() if k not in self.skip
                   for t in _tensors(v) if not isinstance(t, nn.Parameter)}
        self.values = [(t, t._version, t.detach().clone()) for t in tensors.values()]
        return self

    def __exit__(self, *exc):
        self.restore()

    def restore(self) -> None:
        """Put everything back as it was on entry (also midway, to start again from there)."""
        for d, entries, containers in self.saved:
            if not _same(d, entries):
                d.clear()
                d.update(entries)
            for v, copy in containers:
                if not _same(v, copy):
                    v.clear()
                    v.extend(copy) if isinstance(v, list) else v.update(copy)
        with torch.no_grad():
            for t, version, value in self.values:
                if t._version != version:
                    t.copy_(value)
        torch.set_grad_enabled(self.grad)


# nn.Module's own attributes that never hold a tensor (hook dicts, submodules; parameters are not copied)
_NO_TENSORS = frozenset(vars(nn.Module())) - {"_buffers"}


def _tensors(v) -> list[torch.Tensor]:
    """v if a tensor, else the tensors directly in it (a list, tuple or dict, as a buffer dict)."""
    if isinstance(v, torch.Tensor):
        return [v]
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
    return [t for t in items if isinstance(t, torch.Tensor)]


def _copy(c):
    return list(c) if isinstance(c, list) else dict(c) if isinstance(c, dict) else set(c)


def _same(a, b) -> bool:
    """Whether two lists, sets or dicts hold the same objects (keys and values), in the same order."""
    if len(a) != len(b):
        return False
    if isinstance(a, dict):
        return all(x is y for x, y in zip(a, b)) and all(x is y for x, y in zip(a.values(), b.values()))
    return all(x is y for x, y in zip(a, b))
