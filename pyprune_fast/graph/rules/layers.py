"""Convs and Linear layers: a weight reads the input's channels and makes a new space of output channels."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..ir import Node, Value
from ..spaces import Label, Segment, add_members, lock_label
from ..tensors import module_of
from .context import Context, all_nonzero, param_names, producer, record_module, zeroed
from .registry import rule

__all__ = ["conv", "linear"]


@rule(torch.conv1d, torch.conv2d, torch.conv3d)
def conv(ctx: Context, node: Node) -> None:
    x, w, b = node.arg(0, "input"), node.arg(1, "weight"), node.arg(2, "bias")
    groups = node.arg(6, "groups", 1)
    out = node.outputs[0]
    lx = ctx.of(x).dims.get(1)
    module = module_of(w.param)
    cin, cout = x.shape[1], w.shape[0]
    if w.param is None:
        ctx.lock_all([x], f"{node.name} with a weight computed in forward")
        return
    if groups == 1:
        ctx.consume(x, lx, f"{node.name} {module}")
        label = _layer(ctx, f"{node.name} {module}", module, w, b, lx)
        ctx.set(out, {1: label})
        ctx.nonzero[out.id] = {} if zeroed(b) else all_nonzero([label], f"the bias of {module}")
    elif groups == cin == cout and lx and all(seg.block == 1 for seg in lx):
        # depthwise: output channel c reads input channel c only, so both are one space
        for name in param_names(w, b):
            add_members(lx, name, 0, "producer")
        record_module(lx, module)
        ctx.groups_follow.add(module)
        if module in ctx.ignored:
            lock_label(lx, f"{module} is in ignored_layers")
        ctx.set(out, {1: lx})
        ctx.nonzero[out.id] = {} if zeroed(b) else all_nonzero([lx], f"the bias of {module}")  # zero weights
    else:
        # grouped: group j's rows read the j-th division of the input channels by local position, so both
        # spaces prune within `groups` equal divisions, the input at the same local positions in each
        if lx and (len(lx) != 1 or lx[0].block != 1):
            lock_label(lx, f"{module} is a grouped conv (groups={groups}) over a concatenated or reshaped "
                           f"channel dim: its channels go in whole groups")
            lx = None
        ctx.consume(x, lx, f"{node.name} {module}")
        label = _layer(ctx, f"{node.name} {module}", module, w, b, lx, groups)
        ctx.set(out, {1: label})
        ctx.nonzero[out.id] = {} if zeroed(b) else all_nonzero([label], f"the bias of {module}")


def _layer(ctx: Context, origin: str, module: str, w: Value, b, input_label: Optional[Label],
           groups: int = 1) -> Label:
    """A conv or Linear: its weight's dim 1 reads the input's channels; dim 0 (and the bias) make a new
    space of output channels. Returns the output's channel label. A grouped conv (`groups` > 1) divides
    both spaces into `groups` divisions (see Space.divide); its dim 1 is a per-group local index."""
    why = f"{module}, a grouped conv (groups={groups}),"
    if input_label:
        add_members(input_label, w.param, 1, "consumer", groups)
        record_module(input_label, module)
        if groups > 1:
            input_label[0].space.divide(groups, True, why)
    else:
        ctx.fixed.add((w.param, 1))
    space = ctx.new_space(w.shape[0], origin)
    if groups > 1:
        space.divide(groups, False, why)
    space.modules.add(module)
    space.members += [producer(name) for name in param_names(w, b)]
    if module in ctx.ignored:
        space.lock(f"{module} is in ignored_layers")
    return (Segment(space, w.shape[0]),)


@rule(F.linear)
def linear(ctx: Context, node: Node) -> None:
    x, w, b = node.arg(0, "input"), node.arg(1, "weight"), node.arg(2, "bias")
    out = node.outputs[0]
    if w.param is None:
        ctx.lock_all([x], "linear with a weight computed in forward")
        return
    module = module_of(w.param)
    lx = ctx.of(x).dims.get(x.ndim - 1)
    ctx.consume(x, lx, f"linear {module}")
    dims = {d: lab for d, lab in ctx.of(x).dims.items() if d < x.ndim - 1}  # rows: each gets W x + b
    label = _layer(ctx, f"linear {module}", module, w, b, lx)
    ctx.set(out, {**dims, out.ndim - 1: label})
    nonzero = ctx.inherited([x], out)
    if b is not None:
        nonzero.update(all_nonzero(dims.values(), f"the bias of {module}"))
    if not zeroed(b):
        nonzero.update(all_nonzero([label], f"the bias of {module}"))
    ctx.nonzero[out.id] = nonzero
