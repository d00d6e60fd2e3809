"""Elementwise ops: labels pass through, broadcast operands share channels; and what each does to
dead channels (exact zeros)."""

from __future__ import annotations

from ..ir import Node, Value
from ..spaces import Label, Segment, Space, add_members, lock_label, same_layout, unify
from ..taxonomy import (ACTIVATIONS, COMPARISONS, COPIES, DETACHES, DROPOUTS, LIKES, MATH, OTHER_ELEMENTWISE, PRODUCTS,
                        QUOTIENTS, RELUS, SUMS)
from .computed import on_weight_chain
from .context import Context, all_nonzero, generic, mix, wrap
from .recut import coarsen, own, recut
from .registry import rule

__all__ = ["elementwise", "identity", "like", "softmax"]


@rule(*RELUS, *ACTIVATIONS, *DROPOUTS, *COPIES, *DETACHES, *MATH)
def identity(ctx: Context, node: Node) -> None:
    """Elementwise on one tensor (activations, dropout, copies, softmax): labels pass through."""
    x = node.tensor_inputs()[0]
    if any(out.shape != x.shape for out in node.outputs):
        return generic(ctx, node)
    lab = ctx.of(x)
    image = _image_of_zero(node)
    if image == "infinite":
        for label in lab.dims.values():
            mix(label, f"{node.name} makes dead channels (zeros) infinite")
    for out in node.outputs:
        ctx.set(out, lab.dims, lab.params)
        if image != "zero":
            ctx.nonzero[out.id] = all_nonzero(lab.dims.values(), node.name)


_NONZERO_AT_ZERO = {"sigmoid", "hardsigmoid", "softplus", "logsigmoid", "exp", "cos", "softmax", "log_softmax"}
_BOUNDS = {"clamp": ((1, "min"), (2, "max")), "clamp_min": ((1, "min"), None), "clamp_max": (None, (1, "max")),
           "clip": ((1, "min"), (2, "max")), "hardtanh": ((1, "min_val", -1.0), (2, "max_val", 1.0))}


def _image_of_zero(node: Node) -> str:
    """What an op on one tensor makes of an exact zero: "zero", "finite" (maybe not zero) or "infinite"."""
    name = node.name.rstrip("_")
    if name in ("log", "reciprocal", "rsqrt"):
        return "infinite"
    if name in _NONZERO_AT_ZERO:
        return "finite"
    if name == "pow":
        e = node.arg(1, "exponent")
        if not isinstance(node.args[0], Value):
            return "finite"  # a number to the power of a tensor
        if not isinstance(e, (int, float)) or e < 0:
            return "infinite"
        return "zero" if e > 0 else "finite"
    if name in _BOUNDS:
        lo, hi = (node.arg(*b) if b else None for b in _BOUNDS[name])
        if isinstance(lo, Value) or isinstance(hi, Value):
            return "finite"
        return "zero" if (lo is None or lo <= 0) and (hi is None or hi >= 0) else "finite"
    return "zero"


@rule("softmax", "log_softmax")
def softmax(ctx: Context, node: Node) -> None:
    """softmax, log_softmax: along channels they mix them; any dead slice comes out non-zero."""
    identity(ctx, node)
    x, dim = node.tensor_inputs()[0], node.arg(1, "dim")
    for d, label in ctx.of(x).dims.items():
        if dim is None or wrap(dim, x.ndim) == d:
            mix(label, f"{node.name} along these channels")


@rule(*SUMS, *PRODUCTS, *QUOTIENTS, *OTHER_ELEMENTWISE, *COMPARISONS)
def elementwise(ctx: Context, node: Node) -> None:
    """Broadcasting ops on several tensors (add, sub, mul, div, where, comparisons): aligned dims share
    channels."""
    out = node.outputs[0]
    operands = node.tensor_inputs()
    dims = {}
    for d in range(out.ndim):
        labels, params, fixed = [], [], []
        for v in operands:
            od = d - (out.ndim - v.ndim)
            if od < 0 or (v.shape[od] == 1 and out.shape[d] != 1):
                continue
            lab = ctx.of(v)
            if od in lab.dims:
                labels.append(_laid_out(ctx, node, v, lab.dims[od], [ctx.of(u).dims.get(d - (out.ndim - u.ndim))
                                                                        for u in operands if u is not v]))
            elif od in lab.params:
                params.append(lab.params[od])
            elif v.shape[od] > 1:
                fixed.append(v)
        if not labels and (fixed or len(params) < 2 or out.shape[d] == 1 or on_weight_chain(ctx, out)):
            if not on_weight_chain(ctx, out):  # else a layer's weight computed from them: its rule decides
                ctx.fixed.update(params)
            continue
        if not labels:  # parameters combined (SAM2's position embedding + its window's): their own channels
            labels.append((Segment(ctx.new_space(out.shape[d], f"{node.name} of parameters"), out.shape[d]),))
        label = unify(labels, f"{node.name} adds tensors whose channels are concatenated differently")
        if fixed:
            source = fixed[0].producer.name if fixed[0].producer else "a model input or constant"
            lock_label(label, f"{node.name} combines these channels with fixed ones (from {source})")
        for name, pd in params:
            add_members(label, name, pd, "producer")
        dims[d] = label
    ctx.set(out, dims)
    ctx.nonzero[out.id] = (all_nonzero(dims.values(), f"{node.name} of dead channels may be true")
                           if node.name in COMPARISONS else _elementwise_nonzero(ctx, node, dims))


def _laid_out(ctx: Context, node: Node, v: Value, label: Label, others: list) -> Label:
    """`v`'s label, laid out as another operand's where its channels are one space only this op reads
    (`recut.own`): cut into the parts of a concatenation (GhostNet's shortcut conv added to a (primary, cheap)
    concat), or coarsened to channels several positions wide (FastViT's 1x1 conv added to the doubled channels
    of a depthwise conv). Else as it is."""
    wide = next((o for o in others if o and len(o) == 1 and o[0].block > 1), None)
    if wide and len(label) == 1 and label[0].block == 1 and label[0].length == wide[0].span \
            and own(ctx, v, label[0], node) is None:
        space = coarsen(ctx, label[0], [wide[0].length, wide[0].block], 0, "channels")[0].space
        return (Segment(space, wide[0].length, wide[0].block),)
    ref = max((o for o in others if o and len(o) > 1), key=len, default=None)
    if ref is None or len(label) != 1 or same_layout(label, ref) or any(seg.block != 1 for seg in ref) \
            or sum(seg.length for seg in ref) != label[0].length \
            or own(ctx, v, label[0], node, relabel=True, sized=True) is not None:
        return label
    return tuple(seg for part in recut(ctx, node, label[0], [seg.length for seg in ref], equal=False) for seg in part)


_NOT_TERMS = {"alpha", "value", "rounding_mode", "out"}  # keyword arguments that are not operands


def _elementwise_nonzero(ctx: Context, node: Node, dims: dict[int, Label]) -> dict[Space, str]:
    """Dead channels of a product are zero if one factor's are; of a quotient, if the dividend's (a
    division by them is inexact); of anything else (sums, where, maximum), if every operand's are, no
    operand broadcasting along them and no number but 0 taking part."""
    out = node.outputs[0]
    terms = [a for a in (*node.args, *(v for k, v in node.kwargs.items() if k not in _NOT_TERMS))
             if isinstance(a, (Value, int, float))]
    nonzero = {}
    for d, label in dims.items():
        for seg in label:
            states = [_term_state(ctx, t, d, out, seg) for t in terms]  # (carries these channels, zero there)
            if node.name in PRODUCTS:
                zero = any(z for _, z in states)
            elif node.name in QUOTIENTS and len(states) == 2:
                num, den = states[::-1] if node.name == "__rtruediv__" else states
                if den[0]:
                    seg.space.mark_inexact(f"{node.name} divides by these channels")
                zero = num[1]
            else:
                zero = all(z for _, z in states)
            if not zero:
                why = [w for t in terms if isinstance(t, Value) and (w := ctx.dead_nonzero(t, seg))]
                nonzero[seg.space] = why[0] if why else node.name
    return nonzero


def _term_state(ctx: Context, t, d: int, out: Value, seg: Segment) -> tuple[bool, bool]:
    """Whether operand `t` of an elementwise op carries the channels of `seg` (output dim d), and whether
    it is an exact zero at their dead ones (a number: if it is 0)."""
    if not isinstance(t, Value):
        return False, t == 0
    od = d - (out.ndim - t.ndim)
    if od < 0 or (t.shape[od] == 1 and out.shape[d] != 1):
        return False, False  # broadcast along the channels: any value
    return True, od in ctx.of(t).dims and ctx.dead_nonzero(t, seg) is None  # a parameter or fixed: any value


@rule(*LIKES)
def like(ctx: Context, node: Node) -> None:
    """zeros_like and the like: the output takes its input's shape, so its channels follow."""
    x, lab = node.tensor_inputs()[0], ctx.of(node.tensor_inputs()[0])
    zero = node.name == "zeros_like" or node.name == "full_like" and node.arg(1, "fill_value") == 0
    for out in node.outputs:
        ctx.set(out, lab.dims if out.shape == x.shape else {})
        ctx.nonzero[out.id] = {} if zero else all_nonzero(ctx.of(out).dims.values(), node.name)
