"""How each recorded op carries channel labels from its inputs to its outputs.

Every dim of a value without a label is *fixed*: its size may not change. An op that meets a label
it cannot follow locks that label's spaces (with the reason, for the user), so a space is only ever
prunable when every op that touches it is understood. That is the safety argument: a rule may be
conservative, never optimistic.

Dead channels. `channels.kill_channels` zeroes the parameters that produce some channels of a group,
so they leave every conv, Linear and affine norm of the group as exact zeros; removing them changes no
output unless an op sees them otherwise. So the rules also follow, per value, the spaces whose dead
channels may no longer be zero there (`Context.nonzero`: sigmoid or `+ 1` make them non-zero, a
product with a zero brings them back), and mark a space inexact (`Space.mark_inexact`) where removing
its dead channels would change what an op computes: an op that mixes channels (a mean, softmax or norm
across them), a weight that reads dead channels that are not zero, a division by them. A sum over
channels or an L_p norm (p >= 0) is exact: zeros add nothing. Again conservative: "may be non-zero"
wherever an op is not known to give zero.

The rules register themselves by kind, beside their definitions (`registry.rule`): layers, norms,
attention, elementwise ops, shapes, reductions. `register_rule` adds a user's own.
"""

from __future__ import annotations

from typing import Callable, Collection, Optional

from ..ir import Node
from ..spaces import lock_label
from . import attention, elementwise, layers, norms, reductions, shapes, sizing, splits, stacking  # noqa: F401  (they register their rules)
from .context import Context, all_nonzero, generic
from .norms import NORM_PARAMS
from .registry import register, rule, rule_for
from .sizing import settle_sizes, size_uses

__all__ = ["NORM_PARAMS", "Context", "propagate", "register_rule", "rule"]


def register_rule(target, fn: Callable[[Context, Node], None]) -> None:
    """Teach the graph an op it does not know: from now on `fn(ctx, node)` handles every recorded call of
    `target` (replacing any rule it had).

    target: a `torch.library` custom op (its `CustomOpDef`, `torch.ops.ns.op` or one overload), a function
        the recorder sees as one op, an op name (a Tensor method such as "my_method"), or an nn.Module
        subclass: each of its instances is then recorded as one op, with `node.args` = (the module, {its
        parameters and buffers by local name: Value}, *the inputs of its forward).
    fn: reads the node (`node.args`, `node.kwargs`, `node.arg(i, name)`, `node.tensor_inputs()`,
        `node.outputs`: Values with `.shape` and, for the model's parameters and buffers, `.param`) and
        tells the Context which dims of the outputs carry which channels (see `Context`). Outputs it does
        not label are fixed. Dead channels (exact zeros) are taken to come out of the op non-zero.

    Without a rule, an op locks the channels it reads (the group says so in its reason).
    """
    if not callable(fn):
        raise TypeError(f"register_rule: fn must be a function (ctx, node) -> None, got {type(fn).__name__}")
    if not (isinstance(target, str) or callable(target)):
        raise TypeError(f"register_rule: target must be an op name, a function, a torch.library op or an "
                        f"nn.Module subclass, got {type(target).__name__}")

    def user_rule(ctx: Context, node: Node) -> None:
        fn(ctx, node)
        for out in node.outputs:  # conservative: the op may make dead channels non-zero
            ctx.nonzero.setdefault(out.id, all_nonzero(ctx.of(out).dims.values(), f"{node.name} (a registered rule)"))

    register(target, user_rule)


def propagate(ctx: Context, kept: Optional[Collection[int]] = None) -> None:
    """Runs every node's rule in execution order (and judges the sizes it was given: `shapes.size_uses`),
    then locks the channels of the model's outputs that keep their shape: those numbered in `kept` (indices
    into `ctx.trace.outputs`), every one where None."""
    for node in ctx.trace.nodes:
        rule_for(node, generic)(ctx, node)
        size_uses(ctx, node)
        for out in node.outputs:  # rules that keep zeros zero leave this to the default
            if out.id not in ctx.nonzero:
                ctx.nonzero[out.id] = ctx.inherited(node.tensor_inputs(), out)
    settle_sizes(ctx)
    for i, v in enumerate(ctx.trace.outputs):
        if kept is not None and i not in kept:
            continue
        for label in ctx.of(v).dims.values():
            lock_label(label, "the model's output")
