"""Weights computed in forward from a parameter (weight standardisation: timm's StdConv2d and ScaledStdConv2d,
HF BiT's WeightStandardizedConv2d, `(w - w.mean(...)) / w.std(...)`, `w * self.gain * scale`).

`weight_source` walks back from the weight a conv or Linear reads to the parameter it was computed from. It
follows only ops that compute each filter (row) from the same row of their inputs: views, copies, elementwise
math, reductions over the other dims, a batch norm over the rows; operands are the parameter, per-row tensors
(a gain of shape (out, 1, 1, 1)), scalars. Row r of the weight then comes from row r of the parameter (and of
the per-row parameters), so pruning output channels cuts them all at the same rows; a filter's columns stay in
place (every op keeps positions), so pruning input channels cuts the parameter's columns, though the values
of the other columns change (the statistics are over a filter's inputs: inexact).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Optional, Union

from ..ir import Value
from ..taxonomy import (CONV_TRANSPOSES, CONVS, COPIES, DETACHES, MATH, PRODUCTS, QUOTIENTS, REDUCTIONS, RESHAPES,
                        SIZE_READS, SPREADS, SUMS)
from .context import Context, wrap

__all__ = ["Weight", "layer_weight", "on_weight_chain", "params_in", "weight_source"]

_POINTWISE = COPIES | DETACHES | MATH | SUMS | PRODUCTS | QUOTIENTS | {"__pow__", "pow"}
_REDUCING = REDUCTIONS | SPREADS | {"norm", "linalg_vector_norm"}
_NORMS = {"batch_norm", "instance_norm"}
_VIEWS = RESHAPES


@dataclass(frozen=True)
class Weight:
    """The parameter a conv or Linear weight is (or is computed from), and the per-row parameters that take
    part in computing it (a gain: dim 0 of each holds the rows). computed: made in forward."""

    name: str
    per_row: tuple[tuple[str, int], ...] = ()
    computed: bool = False


def weight_source(w: Value, chain: Optional[set] = None) -> Union[Weight, str]:
    """The Weight behind `w` (a parameter, or a tensor computed from one row by row), or why it cannot be
    followed (a str naming the op). `chain`: gets the computed values on the way."""
    if w.param is not None:
        return Weight(w.param)
    found: dict[str, tuple[int, tuple]] = {}
    why = _walk(w, w.shape[0], found, 0, set() if chain is None else chain)
    if why is not None:
        return why
    main = [n for n, (d, shape) in found.items() if d == 0 and shape == tuple(w.shape)]
    if len(main) != 1:
        return "it is not computed from one parameter of its shape"
    return Weight(main[0], tuple((n, d) for n, (d, _) in found.items() if n != main[0]), computed=True)


def params_in(w: Value, depth: int = 0) -> list[str]:
    """The parameters and buffers a computed tensor reads (for messages)."""
    if w.param is not None:
        return [w.param]
    if w.producer is None or depth > _DEPTH:
        return []
    return list(dict.fromkeys(p for u in w.producer.tensor_inputs() for p in params_in(u, depth + 1)))


_DEPTH = 24  # ops between a weight and its parameter: weight standardisation takes a handful


def _lead(shape, rows: int) -> Optional[int]:
    """The dim holding the rows: the first dim of size != 1, if it has `rows` positions; None otherwise.
    Row-major, the rows are then contiguous blocks of the flat layout, which views keep."""
    d = next((i for i, s in enumerate(shape) if s != 1), None)
    return d if d is not None and shape[d] == rows else None


def _walk(v: Value, rows: int, found: dict[str, tuple[int, tuple]], depth: int, chain: set) -> Optional[str]:
    """None if every row of `v` is computed from the same row of parameters only (noted in `found`: name ->
    (the dim holding the rows, its shape)), else why not."""
    lead = _lead(v.shape, rows)
    if v.param is not None:
        if lead is None:
            return f"{v.param} {list(v.shape)} does not hold the {rows} filters along one dim"
        if math.prod(v.shape) != rows and lead != 0:
            return f"{v.param} {list(v.shape)} is mixed into the filters"
        found[v.param] = (lead, tuple(v.shape))
        return None
    node = v.producer
    chain.add(v)
    if node is None:
        return "it is computed from an input of the model"
    if depth > _DEPTH:
        return "too many ops compute it"
    if lead is None:
        return f"{node.name} gives a {list(v.shape)} tensor whose first dim is not the {rows} filters"
    name = node.name
    inputs = node.tensor_inputs()
    if name in _VIEWS or name in _POINTWISE:
        for u in inputs:
            if math.prod(u.shape) == 1 and u.param is not None:
                continue  # a scalar parameter: the same for every row
            ul = _lead(u.shape, rows)
            if name not in _VIEWS and (ul is None or ul + v.ndim - u.ndim != lead):
                return f"{name} combines the filters with a {list(u.shape)} tensor not laid out by filters"
    elif name in _REDUCING:
        x = node.args[0]
        dim = node.arg(2, "dim") if name in ("norm", "linalg_vector_norm") else node.arg(1, "dim")
        xl = _lead(x.shape, rows) if isinstance(x, Value) else None
        dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) else None
        if xl is None or dims is None or xl in {wrap(d, x.ndim) for d in dims}:
            return f"{name} reduces across the filters"
    elif name in _NORMS:
        x = node.args[0]
        if not isinstance(x, Value) or _lead(x.shape, rows) != 1:
            return f"{name} normalises other than per filter"
        for u in inputs[1:]:
            if u.ndim != 1:
                return f"{name} with a {list(u.shape)} statistic or parameter"
    else:
        return f"{name} (no rule for a weight computed with it)"
    for u in inputs:
        if math.prod(u.shape) == 1 and u.param is not None:
            continue
        why = _walk(u, rows, found, depth + 1, chain)
        if why is not None:
            return why
    return None


def _layers(ctx: Context) -> tuple[dict[int, Union[Weight, str]], set[int]]:
    """Every computed weight a conv or Linear of the trace reads (by value id) -> its Weight, or why it cannot
    be followed, and the ids of the values computing the followed ones (once per Context). A value on the way
    that another op reads too cannot be followed (that op would see it change)."""
    if ctx in _CHAINS:
        return _CHAINS[ctx]
    readers: dict[int, set] = {}
    for node in ctx.trace.nodes:
        if node.name not in SIZE_READS:
            for u in node.tensor_inputs():
                readers.setdefault(u.id, set()).add(node.id)
    for u in ctx.trace.outputs:
        readers.setdefault(u.id, set()).add(-1)
    found, ids = {}, set()
    for node in ctx.trace.nodes:
        if node.name not in CONVS and node.name not in CONV_TRANSPOSES and node.name != "linear":
            continue
        w = node.arg(1, "weight")
        if not isinstance(w, Value) or w.param is not None:
            continue
        chain: set = set()
        source = weight_source(w, chain)
        mine = {v.producer.id for v in chain if v.producer is not None} | {node.id}
        other = next((v for v in chain if not readers.get(v.id, set()) <= mine), None)
        if isinstance(source, Weight) and other is not None:
            source = f"another op reads a {list(other.shape)} tensor computing it"
        found[w.id] = source
        if isinstance(source, Weight):
            ids |= {v.id for v in chain}
    _CHAINS[ctx] = found, ids
    return _CHAINS[ctx]


_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Context -> what _layers found


def layer_weight(ctx: Context, w: Value) -> Union[Weight, str]:
    """The Weight behind a layer's weight `w`, or why it cannot be followed."""
    return Weight(w.param) if w.param is not None else _layers(ctx)[0].get(w.id, "it is not a layer's weight")


def on_weight_chain(ctx: Context, v: Value) -> bool:
    """Whether `v` is computed on the way from a parameter to a layer's weight that is followed: its dims are
    the parameter's rows and columns, not fixed ones."""
    return v.id in _layers(ctx)[1]
