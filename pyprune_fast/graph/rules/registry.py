"""Which rule handles a recorded op: rules register beside their definitions with `@rule(target, ...)`.

A target is a torch function or any callable the recorder sees (`F.conv2d`), a `torch.library` op (its
`CustomOpDef`, `OpOverloadPacket` or `OpOverload`: all overloads of the op), or a name (`"relu"`: a
Tensor method or any function of that name). A rule is `fn(ctx, node) -> None` (see `rules.Context`).
An op without a rule locks the channels it reads (`context.generic`).
"""

from __future__ import annotations

from typing import Any, Callable

from ..ir import Node

__all__ = ["Rule", "rule", "rule_for"]

Rule = Callable[[Any, Node], None]  # (Context, Node) -> None

_BY_FUNC: dict[Any, Rule] = {}  # callables, and torch.library ops by qualified name ("mylib::scale")
_BY_NAME: dict[str, Rule] = {}


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
    else:
        _BY_FUNC[_library_op(target) or target] = fn


def rule(*targets) -> Callable[[Rule], Rule]:
    """Decorator: `fn` is the rule of every target (a callable, a torch.library op or an op name)."""
    def deco(fn: Rule) -> Rule:
        for t in targets:
            register(t, fn)
        return fn
    return deco


def rule_for(node: Node, default: Rule) -> Rule:
    func = node.func
    op = _library_op(func)
    found = _BY_FUNC.get(op) if op is not None else None
    if found is None:
        try:
            found = _BY_FUNC.get(func)
        except TypeError:  # an unhashable callable
            found = None
    return found or _BY_NAME.get(node.name) or default
