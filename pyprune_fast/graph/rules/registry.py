"""Which rule handles a recorded op: rules register beside their definitions with `@rule(target, ...)`.

A target is a torch function or any callable the recorder sees (`F.conv2d`), a `torch.library` op (its
`CustomOpDef`, `OpOverloadPacket` or `OpOverload`: all overloads of the op), a name (`"relu"`: a
Tensor method or any function of that name), or an nn.Module subclass: its instances (and those of its
subclasses) are recorded as one op each (see `one_op.py`). A rule is `fn(ctx, node) -> None` (see `rules.Context`).
An op without a rule locks the channels it reads (`context.generic`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from ..ir import Node
from ..one_op import module_call

__all__ = ["Rule", "module_rule", "rule", "rule_for"]

Rule = Callable[[Any, Node], None]  # (Context, Node) -> None

_BY_FUNC: dict[Any, Rule] = {}  # callables, and torch.library ops by qualified name ("mylib::scale")
_BY_NAME: dict[str, Rule] = {}
_BY_MODULE: dict[type, Rule] = {}  # module types recorded as one op


def _library_op(target) -> str | None:
    """"namespace::name" of a torch.library op (CustomOpDef, OpOverloadPacket, OpOverload), else None."""
    for attr in ("_qualname", "_qualified_op_name"):
        if isinstance(getattr(target, attr, None), str):
            return getattr(target, attr)
    schema = getattr(target, "_schema", None)
    return getattr(schema, "name", None) if schema is not None else None


def register(target, fn: Rule) -> None:
    if isinstance(target, str):
        _BY_NAME[target] = fn
    elif isinstance(target, type) and issubclass(target, nn.Module):
        _BY_MODULE[target] = fn
    else:
        _BY_FUNC[_library_op(target) or target] = fn


def rule(*targets) -> Callable[[Rule], Rule]:
    """Decorator: `fn` is the rule of every target (a callable, a torch.library op or an op name)."""
    def deco(fn: Rule) -> Rule:
        for t in targets:
            register(t, fn)
        return fn
    return deco


def module_rule(module: nn.Module) -> Optional[Rule]:
    """The rule of the nearest registered class of `module`, or None: its forward is then recorded op by op."""
    return next((_BY_MODULE[c] for c in type(module).__mro__ if c in _BY_MODULE), None)


def rule_for(node: Node, default: Rule) -> Rule:
    func = node.func
    if func is module_call:
        return module_rule(node.args[0]) or default
    op = _library_op(func)
    found = _BY_FUNC.get(op) if op is not None else None
    if found is None:
        try:
            found = _BY_FUNC.get(func)
        except TypeError:  # an unhashable callable
            found = None
    return found or _BY_NAME.get(node.name) or default
