"""Indexing, slicing and splits along the channel dim: each part follows its own channels."""

from __future__ import annotations

import itertools
from typing import Optional

from ..ir import Node, Value
from ..sizes import Tracked, attribute_reads, reads_in
from ..spaces import Label, Segment, lock_label, unify
from ..taxonomy import SPLITS
from .context import Context, all_nonzero, wrap
from .recut import own, recut
from .registry import rule
from .sizing import describe, note_attribute_uses, read_labels, sized, used

__all__ = ["getitem", "setitem", "split"]


@rule("__getitem__")
def getitem(ctx: Context, node: Node) -> None:
    """x[...]: labels follow the dims kept. Along channels, an int takes single channels out (locks); a
    slice takes the segments between its ends where they fall on segment boundaries and follow the
    channels (`_slice`); else it locks. The numbers in the index are judged here (`_sizes_judged`)."""
    x, index, out = node.args[0], node.args[1], node.outputs[0]
    dims, params, _ = _indexed(ctx, node, x, index, out.shape)
    ctx.set(out, dims, params)


@rule("__setitem__")
def setitem(ctx: Context, node: Node) -> None:
    """x[...] = v: x keeps its channels; v is written where x[...] reads (labelled as by `getitem`), its dims
    matched from the right as it broadcasts: a channel dim of v is joined with the one it is written into;
    written into fixed channels, or fixed channels written into channels, they lock; one value written
    across channels (a number, a dim of size 1) makes their dead ones that value."""
    x, index, v, out = node.args[0], node.args[1], node.args[2], node.outputs[0]
    dims, _, ndim = _indexed(ctx, node, x, index, None)
    written = ctx.of(v).dims if isinstance(v, Value) else {}
    shift = ndim - (v.ndim if isinstance(v, Value) else 0)
    spread = []
    for j, label in dims.items():
        source = written.get(j - shift)
        if source is not None:
            unify([label, source], f"{node.name} writes channels into channels laid out differently")
        elif isinstance(v, Value) and j >= shift and v.shape[j - shift] != 1:
            lock_label(label, f"{node.name} writes fixed channels into them")
        elif not (isinstance(v, (int, float)) and v == 0):
            spread.append(label)
    for d, label in written.items():
        if d + shift not in dims:
            lock_label(label, f"{node.name} writes them into fixed channels")
    lab = ctx.of(x)
    ctx.set(out, lab.dims, lab.params)
    ctx.nonzero[out.id] = {**ctx.inherited(node.tensor_inputs(), out),
                           **all_nonzero(spread, f"{node.name} writes one value across them")}


def _indexed(ctx: Context, node: Node, x: Value, index, shape: Optional[tuple]) -> tuple[dict, dict, int]:
    """The labels and parameter dims of x[index], and its dim count; `shape`: its shape where known. One
    tensor index, every other dim taken whole, picks along its dim (LeViT's `biases[:, idx]`): the other
    dims keep their labels (a channel dim picked from locks); it must be 1-d where `shape` is not known. A
    boolean mask so (a detector's `features[scores > t]`, where `shape` is known) makes the dims it covers one:
    the others keep their labels, a channel dim under the mask locks."""
    lab = ctx.of(x)
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        k = index.index(Ellipsis)
        fill = x.ndim - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * fill + index[k + 1:]
    index = index + (slice(None),) * (x.ndim - sum(1 for i in index if i is not None))
    picked = [k for k, i in enumerate(index) if isinstance(i, (Value, list))]
    if len(picked) == 1 and isinstance(index[picked[0]], Value) and all(
            _whole(i) for k, i in enumerate(index) if k != picked[0]):
        k, at = picked[0], index[picked[0]]
        if (at.ndim == 1) if shape is None else (tuple(shape) == x.shape[:k] + at.shape + x.shape[k + 1:]):
            return _replaced(lab, k, 1, at.ndim, x.ndim, "indexing the channel dim with a tensor")
        if shape is not None and _masked_shape(x.shape, k, at.shape, tuple(shape)):
            return _replaced(lab, k, at.ndim, 1, x.ndim, "a boolean mask over the channel dim selects channels")
    if picked:
        ctx.lock_all([x], "indexing with a tensor or a list")
        _sizes_judged(ctx, node, set())
        return {}, {}, 0
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
            part = _slice(ctx, node, x, lab.dims[d], i.start, i.stop, i.step)
            judged |= {id(n) for n in reads_in(i)}
            if part:
                dims[j] = part
        elif d in lab.params and i.start in (None, 0) and i.stop is None and i.step in (None, 1):
            params[j] = lab.params[d]
        d += 1
        j += 1
    _sizes_judged(ctx, node, judged)
    return dims, params, j


def _replaced(lab, k: int, m: int, n: int, ndim: int, why: str) -> tuple[dict, dict, int]:
    """The labels and parameter dims of x (of `ndim` dims, labelled `lab`) with its dims k..k+m-1 replaced by
    n dims of picked elements: a channel dim among those locks (`why`), the others keep their labels."""
    for d in range(k, k + m):
        lock_label(lab.dims.get(d), why)
    moved = {d: d + (n - m) * (d >= k + m) for d in range(ndim) if not k <= d < k + m}
    return ({moved[d]: v for d, v in lab.dims.items() if d in moved},
            {moved[d]: v for d, v in lab.params.items() if d in moved}, ndim - m + n)


def _masked_shape(x: tuple, k: int, mask: tuple, out: tuple) -> bool:
    """Whether x[..., mask, ...] (the mask at dim k, every other dim whole) gave `out` as a boolean mask does:
    the mask covers dims k.. of x, and they became one dim of the elements it kept."""
    m = len(mask)
    return m > 0 and x[k:k + m] == mask and out[:k] == x[:k] and out[k + 1:] == x[k + m:] and len(out) == len(x) - m + 1


def _whole(i) -> bool:
    return isinstance(i, slice) and i.start is None and i.stop is None and i.step is None


def _sizes_judged(ctx: Context, node: Node, judged: set) -> None:
    """The numbers in `node`'s arguments that its rule did not judge as channel positions (ids in `judged`)
    are used otherwise: a channel count among them locks its channels (`sizing.used`)."""
    for n in reads_in((node.args, node.kwargs)):
        if id(n) not in judged:
            used(ctx, node, n)


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


def _slice(ctx: Context, node: Node, x: Value, label: Label, start, stop, step) -> Optional[Label]:
    """The label of positions [start:stop] of a channel dim holding `label` (on `x`): the segments between,
    where both ends fall on segment boundaries and each end follows the channels before it when they are
    pruned (`_bound`); else the channels are locked and None. An end inside the channels of one layer that
    is a module attribute (RexNet's `x[:, :self.in_channels] + shortcut`) cuts them there into parts first
    (`recut`), the attribute bound to the channels before it."""
    length = _span(label)
    a, b = _position(start, length, 0), _position(stop, length, length)
    what = f"{node.name} slices the channel dim at [{a}:{b}] of {length}"
    b = min(max(a, b), length)
    part = _segments(label, a, b) if step in (None, 1) else None
    inner = [(n, pos) for n, pos in ((start, a), (stop, b)) if 0 < pos < length]
    if part is None and step in (None, 1) and len(label) == 1 and inner and all(_attribute(n) for n, _ in inner) \
            and own(ctx, x, label[0], node, relabel=True) is None:
        cuts = sorted({0, length, *(pos for _, pos in inner)})
        parts = recut(ctx, node, label[0], [q - p for p, q in zip(cuts, cuts[1:])], equal=False)
        label = tuple(seg for p in parts for seg in p)
        part = _segments(label, a, b)
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
    (`sized`); else the channels are locked and None."""
    a = _position(start, _span(label), 0)
    part = _segments(label, a, a + int(length))
    if part is None:
        lock_label(label, f"{node.name} takes [{a}:{a + int(length)}] of the channel dim, inside the channels of "
                   f"{label[0].space.root().origin}")
        return None
    _bound(ctx, node, start, label, a)
    if part:
        sized(ctx, node, length, part)
    return part


def _bound(ctx: Context, node: Node, n, label: Label, pos: int) -> None:
    """Slice bound `n` falls at position `pos` of a channel dim holding `label`, a segment boundary. It must
    stay there when the channels are pruned: the start or the end of the dim (None, 0, a number at or past
    the end: slicing clamps, and pruning only shrinks), or a number that sizes the segments before it
    (`sized`: a count of the same channels, a module attribute bound to them). A plain number elsewhere fixes
    the segments on its side; a negative one counts from the end, fixing those after it."""
    length = _span(label)
    if n is None or (not isinstance(n, Tracked) and (n == 0 or n >= length)):
        return
    if n >= length and _attribute(n):
        note_attribute_uses(ctx, n)  # an attribute past the end: not bound here
        return
    if n < 0 and isinstance(n, Tracked):
        used(ctx, node, n, also=label)
    elif n < 0:
        lock_label(_segments(label, pos, length), f"{node.name} slices the channel dim at {n} from its end, a number "
                   "fixed in the model's code")
    elif pos == 0:  # a number that happens to be 0
        used(ctx, node, n, also=label)
    else:
        sized(ctx, node, n, _segments(label, 0, pos))


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
    space (`recut.recut`)."""
    why = ctx.dead_nonzero(x, label[0]) if label and len(label) == 1 else None
    return {seg.space: why for seg in part or () if why and seg.space.root() is not label[0].space.root()}


_SIZES_ARG = ("split_size_or_sections", "split_size", "split_sizes", "chunks", "indices_or_sections", "sections",
              "indices")  # keyword names of the second argument of split, chunk, tensor_split


def _parts(ctx: Context, node: Node, x: Value, dim: int, label: Label) -> tuple[list, set]:
    """The labels of the parts split, chunk, tensor_split or narrow cut a channel dim holding `label` into
    (None for a part whose channels are locked), and the ids of the numbers judged.

    Cuts on segment boundaries (a concatenation split back into its parts): each part takes its segments,
    and each size given must follow them (`sized`); equal parts computed from the size (chunk, tensor_split
    into k) have their spaces joined, so they stay equal. Cuts inside one space that only this op reads
    from here on (`own`): equal parts (chunk, tensor_split into k, split with sizes that follow) re-express
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
    starts = [0, *itertools.accumulate(lengths)]
    parts = [_segments(label, a, b) for a, b in zip(starts, starts[1:])]
    if name == "tensor_split" and not counted:  # at indices: each index bounds the segments before it
        if all(p is not None for p in parts):
            for n, pos in zip(given, starts[1:-1]):
                _bound(ctx, node, n, label, pos)
            return parts, {id(n) for n in reads_in(given)}
        lock_label(label, f"{name} cuts the channel dim inside the channels of {label[0].space.root().origin}")
        return [None] * len(lengths), set()
    sizes = [None] * len(lengths) if counted else (list(given) if isinstance(given, (tuple, list)) else [given] * len(lengths))
    judged = set() if counted else {id(n) for n in reads_in(given)}
    if all(parts):
        divided = _divided_attribute(sizes[0], len(lengths)) if all(n is sizes[0] for n in sizes) else None
        if counted or divided:
            unify(parts, f"{name} cuts these channels into parts that must stay equal, laid out differently")
        if divided:  # the attribute counts all parts (as in the recut below)
            note_attribute_uses(ctx, sizes[0])
            ctx.sized_by.append((parts[0], *divided, len(lengths)))
            return parts, judged
        for n, part in zip(sizes, parts):
            if n is not None:
                sized(ctx, node, n, part)
        return parts, judged
    seg = label[0]
    why = "they are several spaces" if len(label) > 1 else own(ctx, x, seg, node, relabel=True)
    equal = len(set(lengths)) == 1 and all(n is None or _follows(ctx, n, seg, len(lengths)) for n in sizes)
    if why is None and counted and not equal:
        why = "the parts are unequal"
    others = any(_other_count(ctx, n, seg) for n in sizes)  # then sizes that read no channels fix their parts
    if why is None and not equal and not all(_attribute(n) or _other_count(ctx, n, seg) or (
            others and not (isinstance(n, Tracked) and read_labels(ctx, n))) for n in sizes):
        plain = all(not isinstance(n, Tracked) for n in sizes)
        why = f"its sizes {', '.join(describe(n) for n in sizes)} are " + (
            "numbers fixed in the model's code" if plain else "neither module attributes nor counts of channels")
    if why is None and 0 in lengths:
        why = "a part is empty"
    if why is not None:
        lock_label(label, f"{name} cuts the channels of {seg.space.root().origin} into {lengths}, and {why}")
        return [None] * len(lengths), set()  # the sizes are now fixed: counts among them lock their channels
    parts = recut(ctx, node, seg, lengths, equal)
    for n, part in zip(sizes, parts):
        divided = _divided_attribute(n, len(lengths))
        if divided:  # the attribute counts all parts: surgery sets it to parts x kept
            if n is sizes[0]:
                note_attribute_uses(ctx, n)
                ctx.sized_by.append((part, *divided, len(lengths)))
        elif isinstance(n, Tracked) and attribute_reads(n) or not equal:
            sized(ctx, node, n, part)  # a count of other channels joins them; a fixed number fixes its part
    return parts, judged


def _other_count(ctx: Context, n, seg: Segment) -> bool:
    """Whether split size `n` is a count of other channels than `seg`'s as read (FocalNet's `split(x, (C, C,
    L + 1))`, C its input's width): the part it sizes is joined with them (`sized`)."""
    labels = read_labels(ctx, n) if isinstance(n, Tracked) and n.pure else []
    return len(labels) == 1 and all(s.space.root() is not seg.space.root() for s in labels[0])


def _attribute(n) -> bool:
    """Whether number `n` is a module attribute as read, one surgery may set (not a width it sets itself)."""
    return isinstance(n, Tracked) and n.pure and len(attribute_reads(n)) == 1 and not attribute_reads(n)[0][2]


def _divided_attribute(n, parts: int) -> Optional[tuple[str, str]]:
    """The (module, attribute) that number `n` divides into `parts`, where it is one module attribute (one
    surgery may set) divided (timm CSPNet's `x.split(self.expand_chs // 2)`), possibly by others (SKNet's
    `self.in_channels // self.num_paths`); checked by recomputing it for other values of that attribute."""
    reads = attribute_reads(n) if isinstance(n, Tracked) else []
    if not reads or len(reads) != len(n.reads) or n.pure or any(synced for _, _, synced in reads):
        return None
    divided = [r for r in n.reads if n.scales([r], parts, 1)]
    return divided[0][:2] if len(divided) == 1 else None


def _follows(ctx: Context, n, seg: Segment, parts: int) -> bool:
    """Whether size `n` of `parts` equal parts of `seg`'s space stays right when the space is pruned (whole
    parts): a module attribute (bound to the parts), or a number computed from counts of the whole space
    alone as count / parts (`C // 2`; checked by recomputing it for other counts)."""
    if not isinstance(n, Tracked):
        return False
    if _attribute(n) or _divided_attribute(n, parts):
        return True
    root = seg.space.root()
    whole = bool(n.reads) and not attribute_reads(n) and all(
        r[1] in ctx.of(r[0]).dims and sum(s.length for s in ctx.of(r[0]).dims[r[1]]) == seg.length
        and all(s.space.root() is root for s in ctx.of(r[0]).dims[r[1]]) for r in n.reads)
    return whole and n.scales(n.reads, parts, 1)
