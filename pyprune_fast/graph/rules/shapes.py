"""Ops that move values around: concat, permute, reshape, expand, pooling, pad, roll."""

from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F

from ..ir import Node, Value
from ..spaces import Label, Segment, add_members, lock_label, unify
from ..sizes import Tracked
from ..taxonomy import CATS, EXPANDS, FILLED, MAX_POOLS, PERMUTES, POOLS, RESHAPES
from .context import Context, all_nonzero, fixed_outputs, generic, producer, wrap
from .recut import coarsen, heads_fresh, own, split_heads
from .registry import rule
from .sizing import read_labels, shape_arg

__all__ = ["cat", "expand", "filled", "pad", "permute", "repeat_interleave", "reshape", "rois", "roll", "same_size_dims",
           "spatial"]


@rule(*CATS)
def cat(ctx: Context, node: Node) -> None:
    tensors = list(node.arg(0, "tensors"))
    out = node.outputs[0]
    dim = wrap(node.arg(1, "dim", 0), out.ndim)
    dims, loose = {}, []
    for d in range(out.ndim):
        if d == dim:
            continue
        labels = [ctx.of(t).dims[d] for t in tensors if d in ctx.of(t).dims]
        if labels:
            label = unify(labels, f"{node.name} joins tensors whose channels are laid out differently")
            if len(labels) < len(tensors):
                loose.append(label)  # a parameter's (or fixed) values at the dead channels: any value
                params = [ctx.of(t).params.get(d) for t in tensors if d not in ctx.of(t).dims]
                for p in params:
                    if p is None:
                        lock_label(label, f"{node.name} joins channels with a tensor made inside forward")
                    else:
                        add_members(label, p[0], p[1], "producer")
            dims[d] = label
    if any(dim in ctx.of(t).dims for t in tensors):
        segments = []
        for t in tensors:
            lab = ctx.of(t).dims.get(dim)
            if lab is None:
                space = ctx.new_space(t.shape[dim], "a concatenated tensor", locked="concatenated with fixed channels")
                if dim in ctx.of(t).params:
                    name, pd = ctx.of(t).params[dim]
                    space.members.append(producer(name, pd))
                lab = (Segment(space, t.shape[dim]),)
            segments += lab
        dims[dim] = tuple(segments)
    ctx.set(out, dims)
    ctx.nonzero[out.id] = {**ctx.inherited(tensors, out), **all_nonzero(loose, f"{node.name} with a parameter")}


@rule(*PERMUTES)
def permute(ctx: Context, node: Node) -> None:
    x, out = node.args[0], node.outputs[0]
    name = node.name
    if name in ("permute",):
        order = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        order = list(order) if order else list(node.kwargs.get("dims"))
        order = [wrap(d, x.ndim) for d in order]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a, b = wrap(node.arg(1, "dim0"), x.ndim), wrap(node.arg(2, "dim1"), x.ndim)
        order = list(range(x.ndim))
        order[a], order[b] = order[b], order[a]
    elif name in ("t", "T", "numpy_T"):
        order = list(range(x.ndim))[::-1]
    elif name == "mT":
        order = list(range(x.ndim))
        order[-1], order[-2] = order[-2], order[-1]
    elif name == "movedim":
        src, dst = node.arg(1, "source"), node.arg(2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src, dst = [wrap(s, x.ndim) for s in src], [wrap(d, x.ndim) for d in dst]
        rest = [d for d in range(x.ndim) if d not in src]
        order = [None] * x.ndim
        for s, d in zip(src, dst):
            order[d] = s
        it = iter(rest)
        order = [o if o is not None else next(it) for o in order]
    else:
        return generic(ctx, node)
    lab = ctx.of(x)
    ctx.set(out, {i: lab.dims[o] for i, o in enumerate(order) if o in lab.dims},
            {i: lab.params[o] for i, o in enumerate(order) if o in lab.params})


@rule(*RESHAPES)
def reshape(ctx: Context, node: Node) -> None:
    """view, reshape, flatten, unflatten, squeeze, unsqueeze: read from the shapes before and after. A view
    that splits one space into several dims re-expresses it in other units where it may (`own`): a 4-d
    (B, C, h, w) has its channels on C (`_image`, `coarsen`), anything else is attention heads
    (`split_heads`: head dims on the last dim, or whole heads on the one before)."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    groups = _reshape_groups(x.shape, out.shape)
    if groups is None:
        ctx.lock_all([x], f"{node.name} from {list(x.shape)} to {list(out.shape)}")
        ctx.set(out, {})
        return
    dims, params, nonzero = {}, {}, {}
    for ia, jb in groups:
        # a locked label's channels never change: for a split or merge, its dim is as good as fixed
        labelled = [k for k in ia if k in lab.dims and any(seg.space.root().locked is None for seg in lab.dims[k])]
        ka = [k for k in ia if x.shape[k] != 1] or ia[:1]
        kb = [j for j in jb if out.shape[j] != 1] or jb[:1]
        if len(ka) == 1 and len(kb) == 1:  # one dim to one, give or take dims of size 1 (squeeze, unsqueeze)
            if ka[0] in lab.dims:
                dims[kb[0]] = lab.dims[ka[0]]
            if ka[0] in lab.params:
                params[kb[0]] = lab.params[ka[0]]
            continue
        if not labelled:
            continue
        k = labelled[0]
        if len(labelled) == 1 and len(jb) == 1:  # merge: each channel spans `factor` positions more, and the
            factor = math.prod(x.shape[m] for m in ia if m > k)  # layout repeats for each index of the dims before
            copies = math.prod(x.shape[m] for m in ia if m < k)  # (heads merged back after attention)
            dims[jb[0]] = tuple(Segment(s.space, s.length, s.block * factor) for s in lab.dims[k]) * copies
            continue
        if len(labelled) == 1 and len(ia) == 1 and (again := _repeats_split(lab.dims[k], [out.shape[j] for j in jb])):
            dims[jb[again]] = lab.dims[k][:1]  # split back: (heads, head_dim) merged, then split again
            continue
        if len(labelled) == 1 and len(ia) == 1 and (heads := _equal_parts_to_heads(ctx, node, x, lab.dims[k], jb)):
            dims[heads[0]] = heads[1]
            if ctx.dead_nonzero(x, lab.dims[k][0]) is not None:
                nonzero[heads[1][0].space] = ctx.dead_nonzero(x, lab.dims[k][0])
            continue
        if len(labelled) == 1 and len(ia) == 1 and len(lab.dims[k]) == 1:
            seg = lab.dims[k][0]
            sizes = [out.shape[j] for j in jb]
            t = next((i for i, s in enumerate(sizes) if s != 1), None)
            if t is not None and sizes[t] == seg.length and math.prod(sizes[t + 1:]) == seg.block:
                dims[jb[t]] = (Segment(seg.space, seg.length, 1),)  # split back: undoes a flatten
                continue
            nonunit = [j for j in jb if out.shape[j] != 1]
            if _image(out, nonunit) and own(ctx, x, seg, node) is None:  # a Linear's features viewed as (C, h, w)
                dims[nonunit[0]] = label = coarsen(ctx, seg, [out.shape[j] for j in nonunit], 0, "channels")
            elif len(nonunit) >= 2 and heads_fresh(ctx, x, seg, node, parts := [out.shape[j] for j in nonunit]):
                label, t = split_heads(ctx, node, x, seg, parts)  # attention heads
                dims[nonunit[t]] = label
            else:
                label = None
            if label is not None:
                if ctx.dead_nonzero(x, seg) is not None:
                    nonzero[label[0].space] = ctx.dead_nonzero(x, seg)
                continue
        for m in labelled:
            lock_label(lab.dims[m], f"{node.name} from {list(x.shape)} to {list(out.shape)} splits or mixes channels")
    ctx.set(out, dims, params)
    if nonzero:  # dead channels of a coarsened space
        ctx.nonzero[out.id] = {**ctx.inherited([x], out), **nonzero}


def _repeats_split(label: Label, sizes: list[int]) -> Optional[int]:
    """Where `label` is one space's channels n times over (heads merged back) and a view splits it into
    (n, channels) (`sizes`, give or take dims of 1): the index of the channels' dim in `sizes`; else None."""
    seg, nonunit = label[0], [i for i, s in enumerate(sizes) if s != 1]
    if (len(label) < 2 or seg.block != 1 or any(s != seg for s in label) or len(nonunit) != 2
            or [sizes[i] for i in nonunit] != [len(label), seg.length]):
        return None
    return nonunit[1]


def _equal_parts_to_heads(ctx: Context, node: Node, x: Value, label: Label, jb: list[int]) -> Optional[tuple]:
    """A layer's channels made k equal parts (a bias concatenated from k parameters, `layers._bias`) viewed as
    (k, heads, head_dim): split as one part would be (`split_heads`). Returns (the dim labelled, its label) or None."""
    out = node.outputs[0]
    nonunit = [j for j in jb if out.shape[j] != 1]
    seg = label[0]
    if (len(label) < 2 or len(nonunit) < 3 or out.shape[nonunit[0]] != len(label)
            or any(s.space.root() is not seg.space.root() or s.length != seg.length or s.block != 1 for s in label)
            or not heads_fresh(ctx, x, seg, node, [out.shape[j] for j in nonunit[1:]])):
        return None
    label, t = split_heads(ctx, node, x, seg, [out.shape[j] for j in nonunit[1:]])
    return nonunit[1 + t], label


def _image(out: Value, split_dims: list[int]) -> bool:
    """Whether a view splits channels into the last three dims of a 4-d output, (B, C, h, w): an image whose
    channel dim is the first of them (a decoder's Linear viewed as feature maps). Any other split into two
    or more dims is read as attention heads, (..., heads, head_dim) or (..., 3, heads, head_dim)."""
    return out.ndim == 4 and split_dims == [1, 2, 3]


def _reshape_groups(a, b):
    """Pairs (dims of a, dims of b) whose sizes multiply to the same number, in order; None if none."""
    i = j = 0
    groups = []
    try:
        while i < len(a) or j < len(b):
            ia, jb, pa, pb = [], [], 1, 1
            if i < len(a):
                ia.append(i)
                pa *= a[i]
                i += 1
            if j < len(b):
                jb.append(j)
                pb *= b[j]
                j += 1
            while pa != pb:
                if pa < pb:
                    ia.append(i)
                    pa *= a[i]
                    i += 1
                else:
                    jb.append(j)
                    pb *= b[j]
                    j += 1
            groups.append((ia, jb))
    except IndexError:
        return None
    return groups


@rule("repeat_interleave")
def repeat_interleave(ctx: Context, node: Node) -> None:
    """Along one dim (`dim` given), as repeat; flattened (no `dim`), no rule."""
    x = node.tensor_inputs()[0]
    dim = node.arg(2, "dim")
    return expand(ctx, node) if dim is not None and node.outputs[0].ndim == x.ndim else generic(ctx, node)


@rule(*EXPANDS, "repeat", "tile")
def expand(ctx: Context, node: Node) -> None:
    """expand, repeat, tile (sizes aligned from the right): labels and parameter dims stay on the dims whose
    size is unchanged; channels repeated lock."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    dims, params = {}, {}
    for d in range(x.ndim):
        od = d + out.ndim - x.ndim
        if x.shape[d] == out.shape[od]:
            if d in lab.dims:
                dims[od] = lab.dims[d]
            if d in lab.params:
                params[od] = lab.params[d]
        elif d in lab.dims:
            lock_label(lab.dims[d], f"{node.name} repeats channels")
    ctx.set(out, dims, params)


@rule(*POOLS, *MAX_POOLS, "lp_pool2d", F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
      F.adaptive_max_pool2d, F.adaptive_max_pool3d)
def spatial(ctx: Context, node: Node) -> None:
    """Pooling and interpolation (channels first): labels stay on the batch and channel dims."""
    x = node.tensor_inputs()[0]
    same_size_dims(ctx, node, set(range(2, x.ndim)))


@rule("roi_align", "roi_pool")
def rois(ctx: Context, node: Node) -> None:
    """torchvision's RoI pooling, [N, C, H, W] -> [K, C, h, w]: each channel is pooled on its own (a dead
    channel stays zero), so the channel label stays on dim 1; a label on any other dim is locked."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    for d, label in lab.dims.items():
        if d != 1:
            lock_label(label, f"{node.name} pools boxes out of dim {d}")
    ctx.set(out, {1: lab.dims[1]} if 1 in lab.dims else {}, {1: lab.params[1]} if 1 in lab.params else {})


def same_size_dims(ctx: Context, node: Node, moved: set) -> None:
    """Ops that act along some dims only (pad, roll, pooling): labels stay on the other dims whose
    size is unchanged, and so do a parameter's dims (a position embedding interpolated); labels on
    `moved` dims are locked."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    stays = {d for d in range(x.ndim) if d not in moved and out.ndim == x.ndim and x.shape[d] == out.shape[d]}
    for d, label in lab.dims.items():
        if d not in stays:
            lock_label(label, f"{node.name} changes or moves along dim {d}")
    ctx.set(out, {d: label for d, label in lab.dims.items() if d in stays},
            {d: p for d, p in lab.params.items() if d in stays})
    for extra in node.outputs[1:]:  # max_pool's indices
        ctx.set(extra, {})


@rule("_pack_padded_sequence", "_pad_packed_sequence")
def packed(ctx: Context, node: Node) -> None:
    """Packing a padded batch of sequences ([B, T, *] or [T, B, *] -> [N, *], `pack_padded_sequence`) and
    back: the feature dims (*) keep their channels, one dim earlier or later; channels on the batch or time
    dims are locked. Padding with a value other than 0 makes dead channels non-zero."""
    x, out = node.args[0], node.outputs[0]
    unpack = node.name == "_pad_packed_sequence"
    lead, shift = (1, 1) if unpack else (2, -1)  # dims before the features, and how far they move
    lab = ctx.of(x)
    for d, label in lab.dims.items():
        if d < lead:
            lock_label(label, f"{node.name} moves sequences along dim {d}")
    ctx.set(out, {d + shift: label for d, label in lab.dims.items() if d >= lead},
            {d + shift: p for d, p in lab.params.items() if d >= lead})
    for extra in node.outputs[1:]:  # batch sizes, lengths
        ctx.set(extra, {})
    if unpack and node.arg(3, "padding_value", 0.0):
        ctx.nonzero[out.id] = all_nonzero(ctx.of(out).dims.values(), f"{node.name} with {node.arg(3, 'padding_value')}")


@rule("pad")
def pad(ctx: Context, node: Node) -> None:
    same_size_dims(ctx, node, set())
    if node.arg(2, "mode", "constant") == "constant" and node.arg(3, "value"):
        out = node.outputs[0]
        ctx.nonzero[out.id] = all_nonzero(ctx.of(out).dims.values(), f"{node.name} with {node.arg(3, 'value')}")


@rule("roll")
def roll(ctx: Context, node: Node) -> None:
    x = node.tensor_inputs()[0]
    dims = node.arg(2, "dims")
    dims = [] if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    same_size_dims(ctx, node, {wrap(d, x.ndim) for d in dims} if dims else set(range(x.ndim)))


rule("new_tensor")(fixed_outputs)  # data given in numbers


@rule(*FILLED)
def filled(ctx: Context, node: Node) -> None:
    """A new tensor of a shape given in numbers (`torch.zeros(K, C, h, w)`, `x.new_zeros(...)`): a dim whose
    size is a count of some channels as read (`x.shape[1]`) holds those channels, and follows them when they
    are pruned (zeros stay exact zeros there; ones, a fill or empty memory do not). Other sizes fix their
    dims, and a channel count used in them locks its channels (`sizing.size_uses`)."""
    dims = {}
    for j, n in enumerate(shape_arg(node)):
        labels = read_labels(ctx, n) if isinstance(n, Tracked) and n.pure else []
        if len(labels) == 1:
            dims[j] = labels[0]
    out = node.outputs[0]
    ctx.set(out, dims)
    if dims and not node.name.endswith("zeros"):
        ctx.nonzero[out.id] = all_nonzero(dims.values(), f"{node.name} fills them")
