"""Ops that stack tensors, or windows of one, along a new dim: stack, F.unfold (im2col), Tensor.unfold."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ir import Node
from ..spaces import Segment, add_members, lock_label, unify
from .context import Context, generic, wrap
from .registry import rule

__all__ = ["stack", "unfold"]


@rule("stack")
def stack(ctx: Context, node: Node) -> None:
    """stack: a new dim at `dim` (the inputs' count: fixed); the inputs' dims after it move one on, and the
    same dim of every input holds the same channels (joined, as cat's other dims)."""
    tensors = list(node.arg(0, "tensors"))
    out = node.outputs[0]
    at = wrap(node.arg(1, "dim", 0), out.ndim)
    dims = {}
    for d in range(out.ndim - 1):
        labels = [ctx.of(t).dims[d] for t in tensors if d in ctx.of(t).dims]
        if not labels:
            continue
        label = unify(labels, f"{node.name} joins tensors whose channels are laid out differently")
        for t in tensors:
            if d in ctx.of(t).dims:
                continue
            if d in ctx.of(t).params:
                add_members(label, *ctx.of(t).params[d], "producer")
            else:
                lock_label(label, f"{node.name} joins these channels with fixed ones")
        dims[d if d < at else d + 1] = label
    ctx.set(out, dims)


@rule("unfold")
def unfold(ctx: Context, node: Node) -> None:
    """F.unfold (im2col): (N, C, *spatial) -> (N, C * prod(kernel), L): each channel becomes a block of its
    prod(kernel) window positions. Tensor.unfold(dim, size, step): windows along `dim` (their count stays
    there, their positions in a new last dim): labels stay on the other dims; along channels it locks."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    if node.func is F.unfold:
        kernel = node.arg(1, "kernel_size")
        window = math.prod(kernel) if isinstance(kernel, (tuple, list)) else kernel ** (x.ndim - 2)
        if out.ndim != 3 or out.shape[1] != x.shape[1] * window:
            return generic(ctx, node)
        dims = {d: label for d, label in lab.dims.items() if d == 0}
        if 1 in lab.dims:
            dims[1] = tuple(Segment(s.space, s.length, s.block * window) for s in lab.dims[1])
        for d, label in lab.dims.items():
            if d > 1:
                lock_label(label, f"{node.name} gathers windows along dim {d}")
        ctx.set(out, dims)
        return
    if node.func is not torch.Tensor.unfold:
        return generic(ctx, node)
    dim = wrap(node.arg(1, "dimension"), x.ndim)
    lock_label(lab.dims.get(dim), f"{node.name} cuts windows along the channel dim")
    ctx.set(out, {d: label for d, label in lab.dims.items() if d != dim},
            {d: p for d, p in lab.params.items() if d != dim})
