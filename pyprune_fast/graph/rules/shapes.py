"""Ops that move values around (concat, permute, reshape, expand, pooling, pad, indexing, split) and
reads of a size."""

from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F

from ..ir import Node, Value
from ..sizes import Tracked, attribute_reads, reads_in, size_comparison
from ..spaces import Label, Member, Segment, add_members, lock_label, same_layout, unify
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
    """view, reshape, flatten, unflatten, squeeze, unsqueeze: read from the shapes before and after."""
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
            if _fresh(ctx, x, seg) and len(nonunit := [j for j in jb if out.shape[j] != 1]) >= 2:
                dims[nonunit[-2]] = label = _coarsen(ctx, x, seg, [out.shape[j] for j in nonunit], len(nonunit) - 2)
                if ctx.dead_nonzero(x, seg) is not None:
                    nonzero[label[0].space] = ctx.dead_nonzero(x, seg)
                continue
        for m in labelled:
            lock_label(lab.dims[m], f"{node.name} from {list(x.shape)} to {list(out.shape)} splits or mixes channels")
    ctx.set(out, dims, params)
    if nonzero:  # dead channels of a coarsened space
        ctx.nonzero[out.id] = {**ctx.inherited([x], out), **nonzero}


def _fresh(ctx: Context, x: Value, seg: Segment) -> bool:
    """Whether `seg`, on `x`, is the whole of a space that only its layer has touched (its members make its
    values) and that only one op reads: a space that may be re-expressed in coarser units."""
    s = seg.space.root()
    return (seg.block == 1 and seg.length == s.size and s.locked is None and ctx.readers(x) == 1
            and all(m.role == "producer" for m in s.members) and x.producer is not None
            and any(s.modules & {module_of(v.param)} for v in x.producer.tensor_inputs() if v.param))


def _coarsen(ctx: Context, x: Value, seg: Segment, sizes: list[int], t: int) -> Label:
    """A view that splits a layer's channels into dims of `sizes` (attention heads: (3, heads, head_dim) or
    (heads, head_dim)): its channels are pruned in whole units from now on. A new space of sizes[t] channels
    (heads) takes the old one's place: each of its channels is a block of the positions of the dims after t
    (head_dim), repeated for every index of the dims before t (q, k and v). The width the layer reads (a
    transformer's embedding) is noted in `ctx.embeddings`. Returns the label of dim t."""
    old = seg.space.root()
    inner, outer = math.prod(sizes[t + 1:]), math.prod(sizes[:t])
    new = ctx.new_space(sizes[t], f"{sizes[t]} heads of {old.origin}")
    new.modules |= old.modules
    new.members += [Member(m.name, m.dim, m.offset + p * sizes[t] * inner * m.block, m.block * inner, m.role)
                    for m in old.members for p in range(outer)]
    old.members = []
    ctx.replaced.add(old)
    layer = x.producer
    feed = layer.tensor_inputs()[0] if layer.tensor_inputs() else None
    if feed is not None and feed.ndim and feed.ndim - 1 in ctx.of(feed).dims:  # the width the heads are read from
        for s in ctx.of(feed).dims[feed.ndim - 1]:
            ctx.embeddings.setdefault(s.space, f"the input of {new.origin}")
    return (Segment(new, sizes[t]),)


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
        return
    if Ellipsis in index:
        k = index.index(Ellipsis)
        fill = x.ndim - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * fill + index[k + 1:]
    index = index + (slice(None),) * (x.ndim - sum(1 for i in index if i is not None))
    dims, params, d, j = {}, {}, 0, 0
    for i in index:
        if i is None:
            j += 1
            continue
        full = isinstance(i, slice) and i == slice(None) or (
            isinstance(i, slice) and (i.start in (None, 0)) and i.stop is None and i.step in (None, 1))
        if isinstance(i, int) or not full:
            if d in lab.dims:
                lock_label(lab.dims[d], "indexing or slicing along the channel dim")
            if isinstance(i, int):
                d += 1
                continue
        else:
            if d in lab.dims:
                dims[j] = lab.dims[d]
            if d in lab.params:
                params[j] = lab.params[d]
        d += 1
        j += 1
    ctx.set(out, dims, params)


@rule(*SPLITS)
def split(ctx: Context, node: Node) -> None:
    """split, chunk, unbind, narrow, select, tensor_split: fine along other dims, locks along channels."""
    x = node.tensor_inputs()[0]
    lab = ctx.of(x)
    dim = node.arg(2, "dim", 0) if node.name in ("split", "chunk", "tensor_split", "split_with_sizes") else node.arg(1, "dim", 0)
    dim = wrap(dim, x.ndim)
    if dim in lab.dims:
        lock_label(lab.dims[dim], f"{node.name} cuts the channel dim at sizes fixed in the model's code")
    for out in node.outputs:
        if out.ndim == x.ndim:
            ctx.set(out, {d: v for d, v in lab.dims.items() if d != dim})
        else:  # the dim is gone
            ctx.set(out, {(d if d < dim else d - 1): v for d, v in lab.dims.items() if d != dim})


@rule(*SIZE_READS)
def size_read(ctx: Context, node: Node) -> None:
    """x.shape, x.size(), x.numel(), len(x): nothing yet. They return `sizes.Size` numbers; what the code
    does with a channel count is judged where it is used (`size_uses`, `size_comparison`)."""


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
    if node.name in SIZE_READS or node.func is size_comparison:
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
