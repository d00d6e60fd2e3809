"""Norms: their parameters and statistics join the channels they normalise."""

from __future__ import annotations

import torch.nn.functional as F

from ..ir import Node, Value
from ..spaces import lock_label, add_members
from ..tensors import module_of
from .computed import on_weight_chain
from .context import Context, all_nonzero, mix, param_names, record_module, zeroed
from .registry import rule

NORM_PARAMS = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))  # positions in F.batch_norm

__all__ = ["NORM_PARAMS", "batch_norm", "group_norm", "layer_norm"]


def _norm(ctx: Context, node: Node, x: Value, channel_dim: int, params: list, what: str, shifts: bool,
          mixes: bool = False) -> None:
    """A norm whose `params` end with its weight and bias. `shifts`: a zero channel comes out non-zero
    before the weight and bias (running statistics); `mixes`: its statistics are taken across channels."""
    label = ctx.of(x).dims.get(channel_dim)
    names = param_names(*params)
    module = module_of(names[0]) if names else ""
    if label:
        if mixes and any(seg.block != 1 for seg in label):  # per-position statistics follow blocks as they are
            lock_label(label, f"{what} {module} over a reshaped channel dim")
        if any(isinstance(p, Value) and not p.param for p in params):
            lock_label(label, f"{what} {module} with statistics or parameters made inside forward")
        for name in names:
            add_members(label, name, 0, "producer")
        record_module(label, module)
        if mixes:
            mix(label, f"{what} {module} normalises across these channels")
    elif not on_weight_chain(ctx, node.outputs[0]):  # else a layer's weight computed with them: its rule decides
        ctx.fixed.update((name, 0) for name in names)
        ctx.reads_fixed(x, channel_dim)
    out = node.outputs[0]
    ctx.set(out, ctx.of(x).dims)
    w, b = params[-2:]
    why = f"{what} {module}"
    if isinstance(w, Value) and w.param and zeroed(b):
        nonzero = {}  # zero weight and bias: zero whatever comes in
    elif shifts or mixes or not zeroed(b):
        nonzero = all_nonzero([label or ()], why)
    else:
        nonzero = ctx.inherited([x], out)
    nonzero.update(all_nonzero([lab for d, lab in ctx.of(x).dims.items() if d != channel_dim], why))
    ctx.nonzero[out.id] = nonzero


@rule(F.batch_norm, F.instance_norm)
def batch_norm(ctx: Context, node: Node) -> None:
    """F.batch_norm and F.instance_norm: the same arguments, the 6th saying whether the statistics are the
    input's own (`training`, `use_input_stats`); running statistics shift a zero channel."""
    x = node.arg(0, "input")
    params = [node.arg(i, n) for i, n in NORM_PARAMS]
    own = node.arg(5, "training", False) if node.func is F.batch_norm else node.arg(5, "use_input_stats", True)
    _norm(ctx, node, x, 1, params, node.name, shifts=not own and not zeroed(params[0]))


@rule(F.group_norm)
def group_norm(ctx: Context, node: Node) -> None:
    x, groups = node.arg(0, "input"), node.arg(1, "num_groups")
    w, b = node.arg(2, "weight"), node.arg(3, "bias")
    label = ctx.of(x).dims.get(1)
    module = module_of(w.param if isinstance(w, Value) else None)
    if groups == x.shape[1]:
        ctx.groups_follow.add(module)
    elif groups != 1:
        for seg in _whole(label, f"{module} is a GroupNorm with {groups} groups over a concatenated channel dim"):
            seg.space.divide(groups, False, f"{module}, a GroupNorm with {groups} groups,")
    _norm(ctx, node, x, 1, [w, b], "group_norm", shifts=False, mixes=groups != x.shape[1])


def _whole(label, reason: str) -> tuple:
    """`label` when one space holds the whole dim; otherwise locks it (reason) and returns no segment."""
    if label and len(label) > 1:
        lock_label(label, reason)
        return ()
    return label or ()


@rule(F.layer_norm, F.rms_norm)
def layer_norm(ctx: Context, node: Node) -> None:
    """F.layer_norm and F.rms_norm (no bias; a zero channel stays zero before the weight) over the last dim."""
    rms = node.func is F.rms_norm
    x, shape = node.arg(0, "input"), node.arg(1, "normalized_shape")
    w, b = node.arg(2, "weight"), None if rms else node.arg(3, "bias")
    if len(shape) != 1:
        ctx.lock_all([x], f"{node.name} over several dims")
        ctx.set(node.outputs[0], {})
        return
    _norm(ctx, node, x, x.ndim - 1, [w, b], node.name, shifts=not rms, mixes=True)
