"""`Unchanged`: every module's attributes, tensors changed in place and grad mode, put back on exit."""

from __future__ import annotations

from operator import is_

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
        dicts = [vars(m) for _, m in self.modules]
        self.saved = [(d, d.copy()) for d in dicts]
        containers = [v for d in dicts for v in d.values() if isinstance(v, _CONTAINERS)]
        self.filled = [(v, _copy(v)) for v in containers if v]
        self.empty = [v for v in containers if not v]  # most hook dicts: only to be emptied again
        tensors = {id(t): t for d in dicts for k, v in d.items()
                   if isinstance(v, _HOLDERS) and k not in self.skip for t in _tensors(v) if not isinstance(t, nn.Parameter)}
        self.values = [(t, t._version, t.detach().clone()) for t in tensors.values()]
        return self

    def __exit__(self, *exc):
        self.restore()

    def restore(self) -> None:
        """Put everything back as it was on entry (also midway, to start again from there)."""
        for d, entries in self.saved:
            if not _same(d, entries):
                d.clear()
                d.update(entries)
        for v, copy in self.filled:
            if not _same(v, copy):
                v.clear()
                v.extend(copy) if isinstance(v, list) else v.update(copy)
        for v in self.empty:
            if v:
                v.clear()
        with torch.no_grad():
            for t, version, value in self.values:
                if t._version != version:
                    t.copy_(value)
        torch.set_grad_enabled(self.grad)


_CONTAINERS = (list, dict, set)  # what restore puts back item by item
_HOLDERS = (torch.Tensor, list, tuple, dict)  # what may hold a tensor (see _tensors)

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
        return all(map(is_, a, b)) and all(map(is_, a.values(), b.values()))
    return all(map(is_, a, b))
