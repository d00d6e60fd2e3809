"""Reductions, norms over dims and F.normalize: the reduced dims lose their labels."""

from __future__ import annotations

from typing import Optional

from ..ir import Node, Value
from ..spaces import Label
from ..taxonomy import REDUCTIONS, SPREADS
from .context import Context, all_nonzero, mix, wrap
from .elementwise import identity
from .registry import rule

__all__ = ["logsumexp", "norm", "normalize", "reduction"]


@rule("normalize")
def normalize(ctx: Context, node: Node) -> None:
    """F.normalize: x over its L_p norm along `dim`; zeros stay zero and add nothing to the norm (p >= 0)."""
    identity(ctx, node)
    x, dim = node.tensor_inputs()[0], wrap(node.arg(2, "dim", 1), node.tensor_inputs()[0].ndim)
    reads(ctx, x, ctx.of(x).dims.get(dim), node.name, mixes=not zeros_add_nothing(node.arg(1, "p", 2.0)))


def zeros_add_nothing(p) -> bool:
    """Whether zeros leave an L_p norm as it is: p >= 0 (inf included), or the Frobenius norm."""
    return p in (None, "fro") or isinstance(p, (int, float)) and p >= 0


def reads(ctx: Context, x: Value, label: Optional[Label], what: str, mixes: bool) -> None:
    """An op reads the channels of `label` in `x` together: exact for zeros unless it `mixes` them."""
    if mixes:
        mix(label, f"{what} over these channels")
    else:
        ctx.consume(x, label, what)
        for seg in label or ():
            seg.space.mark_reduced(f"{what} over these channels")


@rule(*REDUCTIONS, *SPREADS)
def reduction(ctx: Context, node: Node) -> None:
    """mean, sum, amax...: reduced dims lose their labels (fewer channels change values, not shapes).
    A sum over channels is exact for zeros; a mean, std, var, amax or amin is not."""
    _reduce(ctx, node, node.arg(1, "dim"), node.arg(2, "keepdim", False), mixes=node.name not in ("sum", "nansum"))


@rule("norm", "linalg_vector_norm")
def norm(ctx: Context, node: Node) -> None:
    """norm, linalg_vector_norm: an L_p norm is exact for zeros when p >= 0 (the max of |x| included)."""
    p = node.arg(1, "ord", 2) if node.name == "linalg_vector_norm" else node.arg(1, "p", "fro")
    _reduce(ctx, node, node.arg(2, "dim"), node.arg(3, "keepdim", False), mixes=not zeros_add_nothing(p))


@rule("logsumexp")
def logsumexp(ctx: Context, node: Node) -> None:
    """logsumexp mixes the channels it reduces, and makes any dead slice it reduces non-zero (log n)."""
    _reduce(ctx, node, node.arg(1, "dim"), node.arg(2, "keepdim", False), mixes=True)
    for o in node.outputs:
        ctx.nonzero[o.id] = all_nonzero(ctx.of(o).dims.values(), node.name)


def _reduce(ctx: Context, node: Node, dim, keepdim, mixes: bool) -> None:
    x = node.tensor_inputs()[0]
    keepdim = bool(keepdim)
    lab = ctx.of(x)
    if dim is None or not isinstance(dim, (int, tuple, list)):
        reduced = set(range(x.ndim))
    else:
        reduced = {wrap(d, x.ndim) for d in ([dim] if isinstance(dim, int) else dim)}
    dims, params, j = {}, {}, 0
    for d in range(x.ndim):
        if d in reduced and d in lab.dims:
            reads(ctx, x, lab.dims[d], node.name, mixes)
        if d in reduced and not keepdim:
            continue
        if d in lab.dims and d not in reduced:
            dims[j] = lab.dims[d]
        elif d in lab.params and d not in reduced:  # a parameter's dim kept (a position table summed over its axes)
            params[j] = lab.params[d]
        j += 1
    if any(o.ndim != x.ndim - (0 if keepdim else len(reduced)) for o in node.outputs):
        ctx.lock_all([x], f"{node.name} with arguments not understood")  # unlabelled would mean fixed
        dims, params = {}, {}
    for o in node.outputs:
        ctx.set(o, dims, params)
