"""Ops that move values around (concat, permute, reshape, expand, pooling, pad, indexing, split) and
reads of a size."""

from __future__ import annotations

import itertools
import math
from typing import Optional

import torch.nn.functional as F

from ..ir import Node, Value
from ..sizes import Tracked, attribute_reads, reads_in, size_comparison
from ..spaces import Label, Member, Segment, Space, add_members, lock_label, same_layout, unify
from ..taxonomy import CATS, EXPANDS, MAX_POOLS, NEW_TENSORS, PERMUTES, POOLS, RESHAPES, SIZE_READS, SPLITS
from ..tensors import module_of
from .context import Context, all_nonzero, fixed_outputs, generic, producer, wrap
from .registry import rule

__all__ = ["cat", "compare", "expand", "getitem", "pad", "permute", "reshape", "roll", "same_channels", "settle_sizes", "size_read", "size_uses", "spatial", "split"]


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
    that splits one space into several dims re-expresses it in coarser units (`_coarsen`) where it may
    (`_own`): a 4-d (B, C, h, w) has its channels on C (`_image`), anything else on the second-to-last
    non-1 dim (attention heads)."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    groups = _reshape_groups(x.shape, out.shape)
    if groups is None:
        ctx.lock_all([x], f"{node.name} from {list(x.shape)} to {list(out.shape)}")
        ctx.set(out, {})
        return
    dims, params, nonzero = {}, {}, {}
    for ia, jb in groups:
        labelled = [k for k in ia if k in lab.dims]
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
        if len(labelled) == 1 and len(jb) == 1 and all(x.shape[m] == 1 for m in ia if m < k):
            factor = math.prod(x.shape[m] for m in ia if m > k)  # merge: each channel spans `factor` positions more
            dims[jb[0]] = tuple(Segment(s.space, s.length, s.block * factor) for s in lab.dims[k])
            continue
        if len(labelled) == 1 and len(ia) == 1 and len(lab.dims[k]) == 1:
            seg = lab.dims[k][0]
            sizes = [out.shape[j] for j in jb]
            t = next((i for i, s in enumerate(sizes) if s != 1), None)
            if t is not None and sizes[t] == seg.length and math.prod(sizes[t + 1:]) == seg.block:
                dims[jb[t]] = (Segment(seg.space, seg.length, 1),)  # split back: undoes a flatten
                continue
            nonunit = [j for j in jb if out.shape[j] != 1]
            if _image(out, nonunit) and _own(ctx, x, seg, node) is None:  # a Linear's features viewed as (C, h, w)
                dims[nonunit[0]] = label = _coarsen(ctx, seg, [out.shape[j] for j in nonunit], 0, "channels")
            elif len(nonunit) >= 2 and _fresh(ctx, x, seg, node):  # attention heads
                dims[nonunit[-2]] = label = _coarsen(ctx, seg, [out.shape[j] for j in nonunit], len(nonunit) - 2,
                                                        "heads")
                _note_embedding(ctx, x, label[0].space)
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


def _image(out: Value, split_dims: list[int]) -> bool:
    """Whether a view splits channels into the last three dims of a 4-d output, (B, C, h, w): an image whose
    channel dim is the first of them (a decoder's Linear viewed as feature maps). Any other split into two
    or more dims is read as attention heads, (..., heads, head_dim) or (..., 3, heads, head_dim)."""
    return out.ndim == 4 and split_dims == [1, 2, 3]


def _own(ctx: Context, x: Value, seg: Segment, node: Node) -> Optional[str]:
    """Why the channels of `seg`, on `x`, cannot be re-expressed as other spaces at `node` (cut into parts,
    coarsened), or None when they can: `seg` is the whole of an unlocked space, one position a channel, that
    layers make (a producer member), undivided, read by `node` alone from here on (no other value holding
    it is read later, no size bound to it), so every member of the space can be re-laid."""
    s = seg.space.root()
    if s.locked is not None:
        return s.locked
    if seg.block != 1 or seg.length != s.size:
        return f"they are part of the channels of {s.origin}"
    if not any(m.role == "producer" for m in s.members):
        return "no layer makes them"
    if s.divisions > 1 or any(m.divisions > 1 for m in s.members):
        return f"{s.why_divided or 'a grouped conv'} divides them"
    if ctx.readers(x) != 1:
        return "other ops read them too"
    pending = [label for a, b, _ in ctx.same_channels for label in (a, b)] + [u[0] for u in ctx.sized_by]
    if s in ctx.embeddings or any(sg.space.root() is s for label in pending for sg in label):
        return "a size in the model's code names them"
    for value_id, labels in ctx.labels.items():
        if value_id != x.id and any(sg.space.root() is s for label in labels.dims.values() for sg in label) \
                and ctx.read_after(value_id, node):
            return "another tensor holding them is read later"
    return None


def _fresh(ctx: Context, x: Value, seg: Segment, node: Node) -> bool:
    """Whether `seg`, on `x`, is a space that may be re-expressed (`_own`) straight out of its layer (an
    attention projection, whose input is the width heads are read from)."""
    return (_own(ctx, x, seg, node) is None and x.producer is not None
            and any(seg.space.root().modules & {module_of(v.param)} for v in x.producer.tensor_inputs() if v.param))


def _take_over(old: Space, new: Space, starts: list[int], inner: int = 1) -> None:
    """`new` holds channels of `old`: its channel c is old channels start + c * inner ... + inner, for each
    of `starts` (one channel of `new` spans inner * len(starts) old ones). Members, modules and flags follow."""
    new.modules |= old.modules
    new.inexact, new.reduced = old.inexact, old.reduced
    new.members += [Member(m.name, m.dim, m.offset + start * m.block, m.block * inner, m.role)
                    for m in old.members for start in starts]


def _retire(ctx: Context, old: Space) -> None:
    """`old`'s channels are held by other spaces now (`_take_over`): no group of its own."""
    old.members = []
    ctx.replaced.add(old)


def _coarsen(ctx: Context, seg: Segment, sizes: list[int], t: int, what: str) -> Label:
    """A view that splits a layer's channels into dims of `sizes`: attention heads ((3, heads, head_dim) or
    (heads, head_dim), t the heads' dim) or an image ((C, h, w), t = 0). Its channels are pruned in whole
    units from now on: a new space of sizes[t] channels takes the old one's place, each of its channels a
    block of the positions of the dims after t (head_dim, h * w), repeated for every index of the dims
    before t (q, k and v). `what` names the units for messages. Returns the label of dim t."""
    old = seg.space.root()
    inner, outer = math.prod(sizes[t + 1:]), math.prod(sizes[:t])
    new = ctx.new_space(sizes[t], f"{sizes[t]} {what} of {old.origin}")
    _take_over(old, new, [p * sizes[t] * inner for p in range(outer)], inner)
    _retire(ctx, old)
    return (Segment(new, sizes[t]),)


def _note_embedding(ctx: Context, x: Value, heads: Space) -> None:
    """The width the layer making `x` reads (a transformer's embedding) is noted in `ctx.embeddings`."""
    layer = x.producer
    feed = layer.tensor_inputs()[0] if layer.tensor_inputs() else None
    if feed is not None and feed.ndim and feed.ndim - 1 in ctx.of(feed).dims:
        for s in ctx.of(feed).dims[feed.ndim - 1]:
            ctx.embeddings.setdefault(s.space, f"the input of {heads.origin}")


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


@rule(*EXPANDS)
def expand(ctx: Context, node: Node) -> None:
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


def same_size_dims(ctx: Context, node: Node, moved: set) -> None:
    """Ops that act along some dims only (pad, roll, pooling): labels stay on the other dims whose
    size is unchanged; labels on `moved` dims are locked."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    keep = {}
    for d, label in lab.dims.items():
        if d in moved or out.ndim != x.ndim or x.shape[d] != out.shape[d]:
            lock_label(label, f"{node.name} changes or moves along dim {d}")
        else:
            keep[d] = label
    ctx.set(out, keep)
    for extra in node.outputs[1:]:  # max_pool's indices
        ctx.set(extra, {})


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


@rule("__getitem__")
def getitem(ctx: Context, node: Node) -> None:
    """x[...]: labels follow the dims kept. Along channels, an int takes single channels out (locks); a
    slice takes the segments between its ends where they fall on segment boundaries and follow the
    channels (`_slice`); else it locks. The numbers in the index are judged here (`_sizes_judged`)."""
    x, index, out = node.args[0], node.args[1], node.outputs[0]
    lab = ctx.of(x)
    if isinstance(index, Value) and out.shape == index.shape + x.shape[1:]:  # x[idx]: picks along dim 0
        lock_label(lab.dims.get(0), "indexing the channel dim with a tensor")
        shift = index.ndim - 1
        ctx.set(out, {d + shift: v for d, v in lab.dims.items() if d},
                {d + shift: v for d, v in lab.params.items() if d})
        return
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (Value, list)) for i in index):
        ctx.lock_all([x], "indexing with a tensor or a list")
        ctx.set(out, {})
        _sizes_judged(ctx, node, set())
        return
    if Ellipsis in index:
        k = index.index(Ellipsis)
        fill = x.ndim - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * fill + index[k + 1:]
    index = index + (slice(None),) * (x.ndim - sum(1 for i in index if i is not None))
    dims, params, d, j, judged = {}, {}, 0, 0, set()
    for i in index:
        if i is None:
            j += 1
            continue
        if isinstance(i, int):
            if d in lab.dims:
                lock_label(lab.dims[d], f"{node.name} takes single channels out of the channel dim")
            d += 1
            continue
        if d in lab.dims:
            part = _slice(ctx, node, lab.dims[d], i.start, i.stop, i.step)
            judged |= {id(n) for n in reads_in(i)}
            if part:
                dims[j] = part
        elif d in lab.params and i.start in (None, 0) and i.stop is None and i.step in (None, 1):
            params[j] = lab.params[d]
        d += 1
        j += 1
    ctx.set(out, dims, params)
    _sizes_judged(ctx, node, judged)


def _sizes_judged(ctx: Context, node: Node, judged: set) -> None:
    """The numbers in `node`'s arguments that its rule did not judge as channel positions (ids in `judged`)
    are used otherwise: a channel count among them locks its channels (`_used`)."""
    for n in reads_in((node.args, node.kwargs)):
        if id(n) not in judged:
            _used(ctx, node, n)


def _span(label: Label) -> int:
    return sum(seg.span for seg in label)


def _segments(label: Label, a: int, b: int) -> Optional[Label]:
    """The segments of `label` at positions [a, b), or None where a or b falls inside a segment."""
    cuts, part, pos = {0}, [], 0
    for seg in label:
        if a <= pos and pos + seg.span <= b:
            part.append(seg)
        pos += seg.span
        cuts.add(pos)
    return tuple(part) if a in cuts and b in cuts else None


def _position(n, length: int, default: int) -> int:
    """Where slice bound `n` falls along a dim of `length` positions (None: `default`; negative: from the end)."""
    if n is None:
        return default
    n = int(n)
    return min(max(n + length if n < 0 else n, 0), length)


def _slice(ctx: Context, node: Node, label: Label, start, stop, step) -> Optional[Label]:
    """The label of positions [start:stop] of a channel dim holding `label`: the segments between, where
    both ends fall on segment boundaries and each end follows the channels before it when they are pruned
    (`_bound`); else the channels are locked and None."""
    length = _span(label)
    a, b = _position(start, length, 0), _position(stop, length, length)
    what = f"{node.name} slices the channel dim at [{a}:{b}] of {length}"
    part = _segments(label, a, min(max(a, b), length)) if step in (None, 1) else None
    if part is None:
        lock_label(label, f"{what}, inside the channels of {label[0].space.root().origin}" if step in (None, 1)
                   else f"{node.name} slices the channel dim with step {step}")
        return None
    for n, pos in ((start, a), (stop, b)):
        _bound(ctx, node, n, label, pos)
    return part


def _narrow(ctx: Context, node: Node, label: Label, start, length) -> Optional[Label]:
    """The label of `length` positions from `start` of a channel dim holding `label` (narrow): the segments
    there, where start follows the channels before it (`_bound`) and length sizes the segments taken
    (`_sized`); else the channels are locked and None."""
    a = _position(start, _span(label), 0)
    part = _segments(label, a, a + int(length))
    if part is None:
        lock_label(label, f"{node.name} takes [{a}:{a + int(length)}] of the channel dim, inside the channels of "
                   f"{label[0].space.root().origin}")
        return None
    _bound(ctx, node, start, label, a)
    if part:
        _sized(ctx, node, length, part)
    return part


def _bound(ctx: Context, node: Node, n, label: Label, pos: int) -> None:
    """Slice bound `n` falls at position `pos` of a channel dim holding `label`, a segment boundary. It must
    stay there when the channels are pruned: the start or the end of the dim (None, 0, a number at or past
    the end: slicing clamps, and pruning only shrinks), or a number that sizes the segments before it
    (`_sized`: a count of the same channels, a module attribute bound to them). A plain number elsewhere fixes
    the segments on its side; a negative one counts from the end, fixing those after it."""
    length = _span(label)
    if n is None or (not isinstance(n, Tracked) and (n == 0 or n >= length)):
        return
    if n >= length and _attribute(n):
        ctx.attribute_uses.update(a[:2] for a in attribute_reads(n))  # an attribute past the end: not bound here
        return
    if n < 0 and isinstance(n, Tracked):
        _used(ctx, node, n, also=label)
    elif n < 0:
        lock_label(_segments(label, pos, length), f"{node.name} slices the channel dim at {n} from its end, a number "
                   "fixed in the model's code")
    elif pos == 0:  # a number that happens to be 0
        _used(ctx, node, n, also=label)
    else:
        _sized(ctx, node, n, _segments(label, 0, pos))


@rule(*SPLITS)
def split(ctx: Context, node: Node) -> None:
    """split, chunk, tensor_split, narrow, unbind, select. Along channels each part follows its own channels
    (`_parts`); select and unbind take single channels out, and lock. The numbers given are judged here."""
    x = node.tensor_inputs()[0]
    lab = ctx.of(x)
    dim = node.arg(2, "dim", 0) if node.name in ("split", "chunk", "tensor_split", "split_with_sizes") else node.arg(1, "dim", 0)
    dim = wrap(dim, x.ndim)
    parts, judged, label = [None] * len(node.outputs), set(), lab.dims.get(dim)
    if label is not None:
        if node.name in ("select", "unbind"):
            lock_label(label, f"{node.name} takes single channels out of the channel dim")
        else:
            parts, judged = _parts(ctx, node, x, dim, label)
    for out, part in zip(node.outputs, parts):
        if out.ndim == x.ndim:
            dims = {d: v for d, v in lab.dims.items() if d != dim}
            if part:
                dims[dim] = part
            ctx.set(out, dims)
            ctx.nonzero[out.id] = {**ctx.inherited([x], out), **_carried(ctx, x, label, part)}
        else:  # the dim is gone
            ctx.set(out, {(d if d < dim else d - 1): v for d, v in lab.dims.items() if d != dim})
    _sizes_judged(ctx, node, judged)


def _carried(ctx: Context, x: Value, label: Optional[Label], part: Optional[Label]) -> dict:
    """The dead channels of `label` (on `x`) that may not be zero, in the spaces of `part` that took over its
    space (`_recut`)."""
    why = ctx.dead_nonzero(x, label[0]) if label and len(label) == 1 else None
    return {seg.space: why for seg in part or () if why and seg.space.root() is not label[0].space.root()}


_SIZES_ARG = ("split_size_or_sections", "split_size", "split_sizes", "chunks", "indices_or_sections", "sections",
              "indices")  # keyword names of the second argument of split, chunk, tensor_split


def _parts(ctx: Context, node: Node, x: Value, dim: int, label: Label) -> tuple[list, set]:
    """The labels of the parts split, chunk, tensor_split or narrow cut a channel dim holding `label` into
    (None for a part whose channels are locked), and the ids of the numbers judged.

    Cuts on segment boundaries (a concatenation split back into its parts): each part takes its segments,
    and each size given must follow them (`_sized`); equal parts computed from the size (chunk, tensor_split
    into k) have their spaces joined, so they stay equal. Cuts inside one space that only this op reads
    from here on (`_own`): equal parts (chunk, tensor_split into k, split with sizes that follow) re-express
    it as one space of L / k channels, channel c at positions c, L/k + c, ... (each part pruned alike);
    unequal parts whose sizes are module attributes, as one space per part, each attribute bound to it.
    Anything else locks the channels."""
    name, lengths = node.name, [out.shape[dim] for out in node.outputs]
    if name == "narrow":
        return [_narrow(ctx, node, label, node.arg(2, "start"), node.arg(3, "length"))], set(map(id, reads_in(node.args)))
    given = node.args[1] if len(node.args) > 1 else next(node.kwargs[k] for k in _SIZES_ARG if k in node.kwargs)
    if not isinstance(given, (int, tuple, list)):
        lock_label(label, f"{name} cuts the channel dim at sizes given as a {type(given).__name__}")
        return [None] * len(lengths), set()
    counted = name in ("chunk", "tensor_split") and isinstance(given, int)  # into k parts: sizes from the size
    if name == "tensor_split" and not counted:  # at indices: each index bounds the segments before it
        starts = [0, *itertools.accumulate(lengths)]
        parts = [_segments(label, a, b) for a, b in zip(starts, starts[1:])]
        if all(p is not None for p in parts):
            for n, pos in zip(given, starts[1:-1]):
                _bound(ctx, node, n, label, pos)
            return parts, {id(n) for n in reads_in(given)}
        lock_label(label, f"{name} cuts the channel dim inside the channels of {label[0].space.root().origin}")
        return [None] * len(lengths), set()
    sizes = [None] * len(lengths) if counted else (list(given) if isinstance(given, (tuple, list)) else [given] * len(lengths))
    judged = set() if counted else {id(n) for n in reads_in(given)}
    starts = [0, *itertools.accumulate(lengths)]
    parts = [_segments(label, a, b) for a, b in zip(starts, starts[1:])]
    if all(parts):
        if counted:
            unify(parts, f"{name} cuts these channels into parts that must stay equal, laid out differently")
        for n, part in zip(sizes, parts):
            if n is not None:
                _sized(ctx, node, n, part)
        return parts, judged
    seg = label[0]
    why = "they are several spaces" if len(label) > 1 else _own(ctx, x, seg, node)
    equal = len(set(lengths)) == 1 and all(n is None or _follows(ctx, n, seg, len(lengths)) for n in sizes)
    if why is None and counted and not equal:
        why = "the parts are unequal"
    if why is None and not equal and not all(_attribute(n) for n in sizes):
        plain = any(not isinstance(n, Tracked) for n in sizes)
        why = f"its sizes {', '.join(_describe(n) for n in sizes)} are " + (
            "numbers fixed in the model's code" if plain else "neither module attributes nor counts of these channels")
    if why is None and 0 in lengths:
        why = "a part is empty"
    if why is not None:
        lock_label(label, f"{name} cuts the channels of {seg.space.root().origin} into {lengths}, and {why}")
        return [None] * len(lengths), judged
    parts = _recut(ctx, node, seg, lengths, equal)
    for n, part in zip(sizes, parts):
        if isinstance(n, Tracked) and attribute_reads(n):
            _sized(ctx, node, n, part)
    return parts, judged


def _attribute(n) -> bool:
    """Whether number `n` is a module attribute as read, one surgery may set (not a width it sets itself)."""
    return isinstance(n, Tracked) and n.pure and len(attribute_reads(n)) == 1 and not attribute_reads(n)[0][2]


def _follows(ctx: Context, n, seg: Segment, parts: int) -> bool:
    """Whether size `n` of `parts` equal parts of `seg`'s space stays right when the space is pruned (whole
    parts): a module attribute (bound to the parts), or a number computed from counts of the whole space
    alone as count / parts (`C // 2`; checked by recomputing it for other counts)."""
    if not isinstance(n, Tracked):
        return False
    if _attribute(n):
        return True
    root = seg.space.root()
    whole = bool(n.reads) and not attribute_reads(n) and all(
        r[1] in ctx.of(r[0]).dims and sum(s.length for s in ctx.of(r[0]).dims[r[1]]) == seg.length
        and all(s.space.root() is root for s in ctx.of(r[0]).dims[r[1]]) for r in n.reads)
    try:
        return whole and all(n.at({r: c * parts for r in n.reads}) == c for c in (1, 2, 3))
    except (ArithmeticError, ValueError, TypeError):
        return False


def _recut(ctx: Context, node: Node, seg: Segment, lengths: list[int], equal: bool) -> list[Label]:
    """Re-expresses `seg`'s space (`_own`) as the parts of `lengths`: one space of lengths[0] channels that
    every part holds (channel c at positions start + c of each part) when `equal`, else one space per part."""
    old = seg.space.root()
    starts = [0, *itertools.accumulate(lengths)][:-1]
    if equal:
        new = ctx.new_space(lengths[0], f"{len(lengths)} equal parts of {old.origin} ({node.name})")
        _take_over(old, new, starts)
        spaces = [new] * len(lengths)
    else:
        spaces = [ctx.new_space(n, f"part {i} of {old.origin} ({node.name})") for i, n in enumerate(lengths)]
        for space, start in zip(spaces, starts):
            _take_over(old, space, [start])
    _retire(ctx, old)
    return [(Segment(space, n),) for space, n in zip(spaces, lengths)]


@rule(*SIZE_READS)
def size_read(ctx: Context, node: Node) -> None:
    """x.shape, x.size(), x.numel(), len(x): nothing yet. They return `sizes.Size` numbers; what the code
    does with a channel count is judged where it is used (`size_uses`, `size_comparison`)."""


_JUDGE_OWN_SIZES = {"__getitem__", *SPLITS}  # rules that judge the numbers they are given themselves
_SHAPED = {"view", "reshape", "expand", "broadcast_to"}  # ops whose numbers are the output's sizes, in order


def _shape_arg(node: Node) -> list:
    """The sizes an op of `_SHAPED` was given, one per output dim, or [] (for another op)."""
    if node.name not in _SHAPED or not node.outputs:
        return []
    rest = list(node.args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    rest = rest or list(node.kwargs.get("shape", node.kwargs.get("size", ())))
    return rest if len(rest) == node.outputs[0].ndim else []


def _read_labels(ctx: Context, number: Tracked) -> list:
    """Labels of the channel dims a number was read from."""
    return [ctx.of(r[0]).dims[r[1]] for r in number.reads if isinstance(r[0], Value) and r[1] in ctx.of(r[0]).dims]


def _describe(number) -> str:
    if not isinstance(number, Tracked):
        return repr(number)
    sources = ", ".join(f"{r[0] or 'the model'}.{r[1]}" if isinstance(r[0], str) else f"dim {r[1]} of a "
                        f"{list(r[0].shape)} tensor" for r in sorted(number.reads, key=lambda r: repr((getattr(r[0], 'id', r[0]), r[1]))))
    return f"{int(number) if isinstance(number, int) else number} ({sources})"


def same_channels(a: Label, b: Label) -> bool:
    """Whether two labels hold the same channels, laid out alike (their spaces joined)."""
    return same_layout(a, b) and all(x.space.root() is y.space.root() for x, y in zip(a, b))


def size_uses(ctx: Context, node: Node) -> None:
    """The sizes the code gave `node` (`sizes.Size` numbers, or plain ints). Where a view's size is that of
    an output dim holding channels (`_sized`), it must follow them: a count of the same channels (`x.view(B,
    C, -1)`; checked once every op is seen, `settle_sizes`) or a module attribute surgery updates with them
    (`self.num_heads`). A plain number there, or a channel count used any other way (`C // groups`, an
    argument of another op), fixes the channels it names: they are locked."""
    if node.name in SIZE_READS or node.name in _JUDGE_OWN_SIZES or node.func is size_comparison:
        return
    shape = _shape_arg(node)
    out_dims = ctx.of(node.outputs[0]).dims if shape else {}
    for j, n in enumerate(shape):
        if j in out_dims:
            _sized(ctx, node, n, out_dims[j])
        elif isinstance(n, Tracked):
            _used(ctx, node, n)
    for n in reads_in(() if shape else (node.args, node.kwargs)):
        _used(ctx, node, n)


def _used(ctx: Context, node: Node, n: Tracked, also: Optional[Label] = None) -> None:
    """A number used where its value is fixed: the channel counts in it (and `also`) can no longer change."""
    ctx.attribute_uses.update(a[:2] for a in attribute_reads(n))
    labels = _read_labels(ctx, n) + ([also] if also else [])
    if labels:
        reason = (f"the model's code computes an argument of {node.name} from a channel count: {_describe(n)}; "
                  "teach it with ppf.register_rule or keep these channels")
        for label in labels:
            lock_label(label, reason)


def _sized(ctx: Context, node: Node, n, label: Label) -> None:
    """Number `n` is the size of an output dim of `node` that holds `label`'s channels."""
    if not isinstance(n, Tracked) and n == -1:
        return  # inferred from the input's size
    what = f"{node.name} is given the size {_describe(n)} for the channels of {label[0].space.root().origin}"
    if not isinstance(n, Tracked):
        lock_label(label, f"{what}, a number fixed in the model's code")
        return
    labels, attributes = _read_labels(ctx, n), attribute_reads(n)
    if n.pure and labels:
        ctx.same_channels.append((labels[0], label, f"{what}, which are other channels"))
    elif len(label) == 1 and (counted := _linear_count(ctx, n, label[0].block)) is not None:
        ctx.same_channels.append((counted, label, f"{what}, which are other channels"))
    elif n.pure and attributes and attributes[0][2]:
        return  # a width surgery sets from the tensors' shapes
    elif n.pure and attributes and len(label) == 1 and int(n) == label[0].span:
        ctx.attribute_uses.update(a[:2] for a in attributes)
        ctx.sized_by.append((label, *attributes[0][:2], label[0].block))
    else:
        _used(ctx, node, n, also=label)


def _linear_count(ctx: Context, n: Tracked, block: int) -> Optional[Label]:
    """Where `n` is computed from one channel count C and sizes pruning leaves alone, as C * block (`C * H * W`
    for a dim merging C channels of H * W positions each), the label of C's channels laid out with that
    block; else None. Checked by recomputing `n` for other values of C."""
    counts = [r for r in n.reads if isinstance(r[0], Value) and r[1] in ctx.of(r[0]).dims]
    if len(counts) != 1 or any(a[2] for a in attribute_reads(n)):  # a synced width changes with its channels
        return None
    try:
        if any(n.at({counts[0]: c}) != c * block for c in (1, 2, 3)):
            return None
    except (ArithmeticError, ValueError, TypeError):
        return None
    v, d = counts[0]
    return tuple(Segment(seg.space, seg.length, seg.block * block) for seg in ctx.of(v).dims[d])


@rule(size_comparison)
def compare(ctx: Context, node: Node) -> None:
    """The code compared a size it read (`if C == 64`, `assert C == D`): the channel counts involved are
    fixed, unless both sides are counts of the same channels (checked once every op is seen). A module
    attribute compared is not updated with channels (`settle_sizes`)."""
    a, b, symbol = node.args
    for n in (a, b):
        if isinstance(n, Tracked):
            ctx.attribute_uses.update(r[:2] for r in attribute_reads(n))
    la, lb = (_read_labels(ctx, n) if isinstance(n, Tracked) else [] for n in (a, b))
    if not la and not lb:
        return
    reason = f"the model's code compares a channel count: {_describe(a)} {symbol} {_describe(b)}"
    if isinstance(a, Tracked) and isinstance(b, Tracked) and a.pure and b.pure and la and lb:
        ctx.same_channels.append((la[0], lb[0], reason))
        return
    for label in la + lb:
        lock_label(label, reason)


def settle_sizes(ctx: Context) -> None:
    """Once every op is seen: channel counts used as sizes of channels must name the same channels, and a
    module attribute that sizes channels must size only those (one group, one block size) and have no other
    use; else those channels are locked. What holds is `ctx.sizes`: root space -> (module, attribute, block)."""
    for a, b, reason in ctx.same_channels:
        if not same_channels(a, b):
            lock_label(a, reason)
            lock_label(b, reason)
    bound: dict[tuple[str, str], list] = {}
    for label, module, attribute, block in ctx.sized_by:
        bound.setdefault((module, attribute), []).append((label, block))
    for (module, attribute), uses in bound.items():
        roots = {label[0].space.root() for label, _ in uses}
        if len(roots) > 1 or len({block for _, block in uses}) > 1 or ctx.attribute_uses[(module, attribute)] > len(uses):
            for label, _ in uses:
                lock_label(label, f"{module or 'the model'}.{attribute} sizes these channels and is used otherwise too")
        else:
            ctx.sizes.setdefault(roots.pop(), []).append((module, attribute, uses[0][1]))


rule(*NEW_TENSORS)(fixed_outputs)  # shapes given in numbers: any read of a channel count locks by itself
