"""Module types recorded as one op: while a pass is recorded, an instance of a type with a registered rule
(`register_rule(SomeModule, fn)`) runs as `module_call(module, tensors, *inputs)`, which the recorder
sees as one call, so that its rule, not its forward's ops, says where its channels go."""

from __future__ import annotations

from torch import nn
from torch.overrides import handle_torch_function, has_torch_function

from .ir import leaves

__all__ = ["module_call", "one_op_class"]


def module_call(module: nn.Module, tensors: dict, *args, **kwargs):
    """`module`'s own forward on `args`, seen by a TorchFunctionMode as one call. `tensors`: its parameters
    and buffers by local name (so that the recorded node holds their Values)."""
    relevant = [t for t in leaves((tensors, args, kwargs)) if hasattr(t, "__torch_function__")]
    if has_torch_function(relevant):
        return handle_torch_function(module_call, relevant, module, tensors, *args, **kwargs)
    return super(type(module), module).forward(*args, **kwargs)


def _forward(self, *args, **kwargs):
    tensors = {**dict(self.named_parameters()), **dict(self.named_buffers())}
    return module_call(self, tensors, *args, **kwargs)


_CLASSES: dict[type, type] = {}


def one_op_class(cls: type) -> type:
    """The subclass of `cls` whose forward is one `module_call`, made once per class."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (cls,), {"forward": _forward, "__module__": cls.__module__})
    return _CLASSES[cls]

