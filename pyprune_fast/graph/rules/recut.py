"""A layer's channels re-expressed in other units where one view or split reads them all: head dims
(`split_heads`), whole heads or images (`coarsen`) or parts (`recut`); the old space retires."""

from __future__ import annotations

import itertools
import math
from typing import Optional

from ..ir import Node, Value
from ..spaces import Label, Member, Segment, Space
from ..tensors import module_of
from .context import Context

__all__ = ["coarsen", "fresh", "heads_fresh", "maker", "note_embedding", "own", "recut", "relabel", "retire",
           "split_heads", "take_over", "whole_heads"]


def own(ctx: Context, x: Value, seg: Segment, node: Node, aligned: int = 1,
        relabel: bool = False, sized: bool = False) -> Optional[str]:
    """Why the channels of `seg`, on `x`, cannot be re-expressed as other spaces at `node` (cut into parts,
    coarsened), or None when they can: `seg` is the whole of an unlocked space, one position a channel, that
    layers make (a producer member), undivided, read by `node` alone from here on (no other value holding
    it is read later, no size bound to it), so every member of the space can be re-laid. `aligned`: the new
    spaces cut the same positions from each of this many equal runs (head dims), so divisions that divide it
    (a grouped conv's, ResNeSt's radix) hold by themselves. `relabel`: the new spaces hold the channels in
    place (`relabel`), so other readers of them need not stop it. `sized`: cut into parts (`recut`), so a
    module attribute bound to them counts the parts from then on and need not stop it either."""
    s = seg.space.root()
    if s.locked is not None:
        return s.locked
    if seg.block != 1 or seg.length != s.size:
        return f"they are part of the channels of {s.origin}"
    if not any(m.role == "producer" for m in s.members):
        return "no layer makes them"
    if aligned % s.divisions or any(m.divisions > 1 for m in s.members):
        return f"{s.why_divided or 'a grouped conv'} divides them"
    pending = [label for a, b, *_ in ctx.same_channels for label in (a, b)]
    pending += [] if sized else [u[0] for u in ctx.sized_by]
    if s in ctx.embeddings or any(sg.space.root() is s for label in pending for sg in label):
        return "a size in the model's code names them"
    if relabel:
        return None
    if ctx.readers(x) != 1:
        return "other ops read them too"
    for value_id, labels in ctx.labels.items():
        if value_id != x.id and any(sg.space.root() is s for label in labels.dims.values() for sg in label) \
                and ctx.read_after(value_id, node):
            return "another tensor holding them is read later"
    return None


def fresh(ctx: Context, x: Value, seg: Segment, node: Node, aligned: int = 1, relabel: bool = False) -> bool:
    """Whether `seg`, on `x`, is a space that may be re-expressed (`own`) as it comes out of its layer (an
    attention projection, whose input is the width heads are read from), maybe through ops that keep its
    channels (a norm, an activation, an unsqueeze: `maker`)."""
    return own(ctx, x, seg, node, aligned, relabel) is None and maker(ctx, x, seg.space.root()) is not None


def maker(ctx: Context, x: Value, space: Space) -> Optional[Node]:
    """The layer that made `space`'s channels, found from `x` back through the ops whose first input carries
    them too; None where that op has no parameter of the space's modules."""
    v = x
    while v.producer is not None:
        node, inputs = v.producer, v.producer.tensor_inputs()
        if inputs and any(sg.space.root() is space for label in ctx.of(inputs[0]).dims.values() for sg in label):
            v = inputs[0]
            continue
        return node if any(u.param and module_of(u.param) in space.modules for u in inputs) else None
    return None


def take_over(old: Space, new: Space, starts: list[int], inner: int = 1) -> None:
    """`new` holds channels of `old`: its channel c is old channels start + c * inner ... + inner, for each
    of `starts` (one channel of `new` spans inner * len(starts) old ones). Members, modules and flags follow."""
    new.modules |= old.modules
    new.inexact, new.reduced = old.inexact, old.reduced
    new.members += [Member(m.name, m.dim, m.offset + start * m.block, m.block * inner, m.role)
                    for m in old.members for start in starts]


def retire(ctx: Context, old: Space) -> None:
    """`old`'s channels are held by other spaces now (`take_over`): no group of its own."""
    old.members = []
    ctx.replaced.add(old)


def coarsen(ctx: Context, seg: Segment, sizes: list[int], t: int, what: str) -> Label:
    """A view that splits a layer's channels into dims of `sizes`: attention heads ((3, heads, head_dim) or
    (heads, head_dim), t the heads' dim) or an image ((C, h, w), t = 0). Its channels are pruned in whole
    units from now on: a new space of sizes[t] channels takes the old one's place, each of its channels a
    block of the positions of the dims after t (head_dim, h * w), repeated for every index of the dims
    before t (q, k and v). `what` names the units for messages. Returns the label of dim t."""
    old = seg.space.root()
    inner, outer = math.prod(sizes[t + 1:]), math.prod(sizes[:t])
    new = ctx.new_space(sizes[t], f"{sizes[t]} {what} of {old.origin}")
    take_over(old, new, [p * sizes[t] * inner for p in range(outer)], inner)
    retire(ctx, old)
    return (Segment(new, sizes[t]),)


def whole_heads(ctx: Context, node: Node, sizes: list[int]) -> bool:
    """Whether the heads a view at `node` makes (dims of `sizes`, head_dim last) are pruned whole."""
    return ctx.whole_heads is None or node.id in ctx.whole_heads or sizes[-1] < 2


def heads_fresh(ctx: Context, x: Value, seg: Segment, node: Node, sizes: list[int]) -> bool:
    """`fresh` for a view into heads of `sizes`: head dims cut alike in every head keep a grouped conv's
    divisions that fall on head boundaries."""
    whole = whole_heads(ctx, node, sizes)
    return fresh(ctx, x, seg, node, 1 if whole else math.prod(sizes[:-1]), relabel=not whole)


def split_heads(ctx: Context, node: Node, x: Value, seg: Segment, sizes: list[int]) -> tuple[Label, int]:
    """A view at `node` that splits a layer's channels (`seg` on `x`) into dims of `sizes`, (heads, head_dim) or
    (3, heads, head_dim): attention heads. They are pruned as head dims, the same positions in every head and
    in q, k and v (the heads' count stays, each head gets narrower: a space of head_dim channels); or, where
    a first pass locked those (`ctx.whole_heads` holds the node's id: a rotary embedding reads them, say) or
    the user asked for it (`ctx.whole_heads` is None), as whole heads (`coarsen`). Other values holding the
    layer's channels hold the head dims from now on (`relabel`). Returns the label and the index, in
    `sizes`, of the dim it labels."""
    old, width = seg.space.root(), sizes[-1]
    layer = maker(ctx, x, old)
    if whole_heads(ctx, node, sizes):
        label, t = coarsen(ctx, seg, sizes, len(sizes) - 2, "heads"), len(sizes) - 2
    else:
        new = ctx.new_space(width, f"{width} dims of each of {sizes[-2]} heads of {old.origin}")
        take_over(old, new, [i * width for i in range(old.size // width)])
        retire(ctx, old)
        relabel(ctx, old, (Segment(new, width),) * (old.size // width))
        ctx.head_dims[node.id] = new
        label, t = (Segment(new, width),), len(sizes) - 1
    note_embedding(ctx, layer, label[0].space)
    return label, t


def relabel(ctx: Context, old: Space, runs: Label) -> None:
    """Every value's label holding `old` (retired: its channels are those of `runs`, in order: the head dims of
    a view or the parts of a split other ops read too) holds the runs instead, and so do the dead channels
    made non-zero (a space of `runs` takes each non-zero mark of `old`)."""
    def swap(label: Label) -> Label:
        return tuple(s for seg in label for s in ([Segment(r.space, r.length, seg.block) for r in runs]
                                                  if seg.space.root() is old else (seg,)))

    for labels in ctx.labels.values():
        if any(seg.space.root() is old for label in labels.dims.values() for seg in label):
            labels.dims = {d: swap(label) for d, label in labels.dims.items()}
    ctx.sized_by = [(swap(label), *rest) for label, *rest in ctx.sized_by]  # an attribute counts every run
    for spaces in ctx.nonzero.values():
        for space in [s for s in spaces if s.root() is old]:
            why = spaces.pop(space)
            spaces.update((r.space, why) for r in runs)


def note_embedding(ctx: Context, layer: Optional[Node], heads: Space) -> None:
    """The width `layer` (an attention projection) reads, where it lies on the last dim (a transformer's
    embedding), is noted in `ctx.embeddings`."""
    feed = layer.tensor_inputs()[0] if layer is not None and layer.tensor_inputs() else None
    if feed is not None and feed.ndim and feed.ndim - 1 in ctx.of(feed).dims:
        for s in ctx.of(feed).dims[feed.ndim - 1]:
            ctx.embeddings.setdefault(s.space, f"the input of {heads.origin}")


def recut(ctx: Context, node: Node, seg: Segment, lengths: list[int], equal: bool) -> list[Label]:
    """Re-expresses `seg`'s space (`own`) as the parts of `lengths`: one space of lengths[0] channels that
    every part holds (channel c at positions start + c of each part) when `equal`, else one space per part."""
    old = seg.space.root()
    starts = [0, *itertools.accumulate(lengths)][:-1]
    if equal:
        new = ctx.new_space(lengths[0], f"{len(lengths)} equal parts of {old.origin} ({node.name})")
        take_over(old, new, starts)
        spaces = [new] * len(lengths)
    else:
        spaces = [ctx.new_space(n, f"part {i} of {old.origin} ({node.name})") for i, n in enumerate(lengths)]
        for space, start in zip(spaces, starts):
            take_over(old, space, [start])
    retire(ctx, old)
    parts = [(Segment(space, n),) for space, n in zip(spaces, lengths)]
    relabel(ctx, old, tuple(seg for part in parts for seg in part))
    return parts
