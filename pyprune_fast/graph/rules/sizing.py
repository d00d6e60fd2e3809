"""Sizes the model's code reads or holds (`graph/sizes.py` numbers), judged where they are used."""

from __future__ import annotations

import functools
from typing import Optional

from ..ir import Node, Value
from ..sizes import Tracked, attribute_reads, reads_in, size_comparison
from ..spaces import Label, Segment, lock_label, same_layout, unify, union
from ..taxonomy import FILLED, SIZE_READS, SPLITS
from .context import Context
from .registry import rule

__all__ = ["JUDGE_OWN_SIZES", "compare", "describe", "note_attribute_uses", "read_labels", "same_channels",
           "settle_sizes", "shape_arg", "size_read", "size_uses", "sized", "used"]


@rule(*SIZE_READS)
def size_read(ctx: Context, node: Node) -> None:
    """x.shape, x.size(), x.numel(), len(x): nothing yet. They return `sizes.Size` numbers; what the code
    does with a channel count is judged where it is used (`size_uses`, `size_comparison`)."""


JUDGE_OWN_SIZES = {"__getitem__", *SPLITS}  # rules that judge the numbers they are given themselves
_SHAPED = {"view": 1, "reshape": 1, "expand": 1, "broadcast_to": 1, **FILLED}  # ops whose numbers are the
# output's sizes, in order: where they start in the arguments


def shape_arg(node: Node) -> list:
    """The sizes an op of `_SHAPED` was given, one per output dim, or [] (for another op)."""
    if node.name not in _SHAPED or not node.outputs:
        return []
    rest = list(node.args[_SHAPED[node.name]:])
    if rest and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    rest = rest or list(node.kwargs.get("shape", node.kwargs.get("size", ())))
    return rest if len(rest) == node.outputs[0].ndim else []


def read_labels(ctx: Context, number: Tracked) -> list:
    """Labels of the channel dims a number was read from."""
    return [ctx.of(r[0]).dims[r[1]] for r in number.reads if isinstance(r[0], Value) and r[1] in ctx.of(r[0]).dims]


def describe(number) -> str:
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
    an output dim holding channels (`sized`), it must follow them: a count of the same channels (`x.view(B,
    C, -1)`; checked once every op is seen, `settle_sizes`) or a module attribute surgery updates with them
    (`self.num_heads`). A plain number there, or a channel count used any other way (`C // groups`, an
    argument of another op), fixes the channels it names: they are locked; so does a view of a parameter at a
    size fixed in the code (the parameter's dim may not change). Where one size of a `view`/`reshape` the
    model's own method called is the only one pruning may make wrong, apply rewrites it to -1 instead
    (`nn.rewritten`; timm's `reshape(B, N, C)` after attention heads)."""
    if node.name in SIZE_READS or node.name in JUDGE_OWN_SIZES or node.func is size_comparison:
        return
    shape = shape_arg(node)
    out = ctx.of(node.outputs[0]) if shape else None
    spare = _spare(ctx, node, shape, out)
    for j, n in enumerate(shape):
        rewrite = (node, j) if j == spare else None
        if j in out.dims:
            sized(ctx, node, n, out.dims[j], rewrite)
            continue
        if j in out.params and not _same_param_dim(ctx, n, out.params[j]):
            ctx.fixed.add(out.params[j])  # a parameter viewed at a size fixed in the code (PoolFormer's scale)
        if rewrite:
            ctx.rewrites.append(rewrite)
        elif isinstance(n, Tracked):
            used(ctx, node, n)
    for n in reads_in(() if shape else (node.args, node.kwargs)):
        used(ctx, node, n)


def _at_risk(ctx: Context, n, label: Optional[Label]) -> bool:
    """Whether pruning may make size `n` wrong for a dim holding `label` (None: a fixed dim): a number in a
    channel dim that surgery does not update, or a fixed dim's size computed from channel counts or sizes
    surgery updates. A module attribute as read, at a fixed dim, is taken to stay (`self.num_heads` where head
    dims are cut): its use there is noted (`used`), so surgery never updates it (`settle_sizes`)."""
    if label is None:
        attributes = attribute_reads(n) if isinstance(n, Tracked) else []
        return isinstance(n, Tracked) and bool(read_labels(ctx, n) or attributes and not (
            n.pure and len(attributes) == 1 and not attributes[0][2]))
    attributes = attribute_reads(n) if isinstance(n, Tracked) else []
    return not (attributes and n.pure and (attributes[0][2] or int(n) == label[0].span and len(label) == 1))


def _spare(ctx: Context, node: Node, shape: list, out) -> Optional[int]:
    """The one size of `shape` that pruning may make wrong, where the call can be rewritten with -1 there:
    the model's own method called a view/reshape (`node.site`), with no -1 and no parameter dims; else None."""
    if not shape or node.site is None or out.params or any(not isinstance(n, Tracked) and n == -1 for n in shape):
        return None
    risky = [j for j, n in enumerate(shape) if _at_risk(ctx, n, out.dims.get(j))]
    return risky[0] if len(risky) == 1 else None


def _same_param_dim(ctx: Context, n, param_dim: tuple[str, int]) -> bool:
    """Whether size `n` is -1 (inferred), the size of that same parameter dim as read, or a width surgery sets
    from the tensors' shapes (`self.out_channels`): it follows a cut."""
    if not isinstance(n, Tracked):
        return n == -1
    return n.pure and all(ctx.of(r[0]).params.get(r[1]) == param_dim if isinstance(r[0], Value) else r[2]
                          for r in n.reads)


def note_attribute_uses(ctx: Context, n: Tracked) -> None:
    """Every module attribute `n` was computed from was used once more (see `settle_sizes`)."""
    ctx.attribute_uses.update(a[:2] for a in attribute_reads(n))


def used(ctx: Context, node: Node, n: Tracked, also: Optional[Label] = None) -> None:
    """A number used where its value is fixed: the channel counts in it (and `also`) can no longer change."""
    note_attribute_uses(ctx, n)
    labels = read_labels(ctx, n) + ([also] if also else [])
    if labels:
        reason = (f"the model's code computes an argument of {node.name} from a channel count: {describe(n)}; "
                  "teach it with ppf.register_rule or keep these channels")
        for label in labels:
            lock_label(label, reason)


def sized(ctx: Context, node: Node, n, label: Label, rewrite: Optional[tuple] = None) -> None:
    """Number `n` is the size of an output dim of `node` that holds `label`'s channels. `rewrite`: (node,
    position) where apply may rewrite this size to -1 rather than lock."""
    if not isinstance(n, Tracked) and n == -1:
        return  # inferred from the input's size
    what = f"{node.name} is given the size {describe(n)} for the channels of {label[0].space.root().origin}"
    if not isinstance(n, Tracked):
        if rewrite:
            ctx.rewrites.append(rewrite)
        else:
            lock_label(label, f"{what}, a number fixed in the model's code")
        return
    labels, attributes = read_labels(ctx, n), attribute_reads(n)
    if n.pure and labels:
        ctx.same_channels.append((labels[0], label, f"{what}, which are other channels", rewrite))
    elif (counted := _counted(ctx, n, label)) is not None:
        ctx.same_channels.append((counted, label, f"{what}, which are other channels", rewrite))
    elif n.pure and attributes and attributes[0][2]:
        return  # a width surgery sets from the tensors' shapes
    elif n.pure and attributes and int(n) == sum(seg.span for seg in label) and (
            (one := _one_space(label)) or _parts(label)):
        note_attribute_uses(ctx, n)  # (the same channels once a head, say: all_head_size; or the parts' sum)
        ctx.sized_by.append((label, *attributes[0][:2], label[0].block * len(label) if one else 1))
    elif rewrite:
        ctx.rewrites.append(rewrite)
    else:
        used(ctx, node, n, also=label)


def _one_space(label: Label) -> bool:
    """Whether every segment of `label` holds all of one space's channels alike (heads merged back)."""
    root, block = label[0].space.root(), label[0].block
    return all(seg.space.root() is root and seg.block == block and seg.length == root.size for seg in label)


def _parts(label: Label) -> bool:
    """Whether `label` holds whole spaces, each once, one position a channel (an attribute sizing it counts
    their sum: RexNet's `in_channels` of a shortcut cut into parts)."""
    roots = [seg.space.root() for seg in label]
    return len(set(roots)) == len(roots) and all(s.block == 1 and s.length == r.size for s, r in zip(label, roots))


def _split_count(ctx: Context, n: Tracked, block: int) -> Optional[Label]:
    """Where `n` is the channel count C of a space that a view split into heads (`recut.split_heads`) over the
    number of heads (ResNeSt's `RC // self.radix`): the label of the head dims it counts, laid out with
    `block`; else None."""
    counts = [r for r in n.reads if isinstance(r[0], Value) and r[1] in ctx.of(r[0]).dims]
    if len(counts) != 1 or any(a[2] for a in attribute_reads(n)):
        return None
    read = ctx.of(counts[0][0]).dims[counts[0][1]]  # the split space's head dims, in place (`recut.relabel`)
    if len(read) < 2 or read[0].block != 1 or not _one_space(read) or not n.scales(counts, len(read), block):
        return None
    return (Segment(read[0].space.root(), read[0].length, block),)


def _counted(ctx: Context, n: Tracked, label: Label) -> Optional[Label]:
    """The label of the channels a number computed from channel counts describes, for a dim holding `label`
    (`_split_count`, `_linear_count`), or None."""
    if len(label) == 1:
        return _split_count(ctx, n, label[0].block) or _linear_count(ctx, n, label[0].block)
    return _linear_count(ctx, n, label[0].block, len(label)) if _one_space(label) else None


def _linear_count(ctx: Context, n: Tracked, block: int, times: int = 1) -> Optional[Label]:
    """Where `n` is computed from one channel count C and sizes pruning leaves alone, as C * block * times
    (`C * H * W` for a dim merging C channels of H * W positions each; `4 * C` for four copies of C
    concatenated, Swin's patch merging), the label of C's channels laid out with that block, `times` over;
    else None. Checked by recomputing `n` for other values of C."""
    counts = [r for r in n.reads if isinstance(r[0], Value) and r[1] in ctx.of(r[0]).dims]
    if len(counts) != 1 or any(a[2] for a in attribute_reads(n)) or not n.scales(counts, 1, block * times):
        return None  # (a synced width changes with its channels)
    v, d = counts[0]
    return tuple(Segment(seg.space, seg.length, seg.block * block) for seg in ctx.of(v).dims[d]) * times


@rule(size_comparison)
def compare(ctx: Context, node: Node) -> None:
    """The code compared a size it read (`if C == 64`, `assert C == D`) or made it a float (`math.sqrt(C)`):
    the channel counts involved are fixed, unless both sides are counts of the same channels (checked once
    every op is seen). A module attribute compared is not updated with channels (`settle_sizes`)."""
    a, b, symbol = node.args
    for n in (a, b):
        if isinstance(n, Tracked):
            note_attribute_uses(ctx, n)
    la, lb = (read_labels(ctx, n) if isinstance(n, Tracked) else [] for n in (a, b))
    if not la and not lb:
        return
    reason = (f"the model's code makes a channel count a float: {describe(a)}" if symbol == "float" else
              f"the model's code compares a channel count: {describe(a)} {symbol} {describe(b)}")
    if isinstance(a, Tracked) and isinstance(b, Tracked) and a.pure and b.pure and la and lb:
        ctx.same_channels.append((la[0], lb[0], reason, None))
        return
    if symbol in ("==", "!=") and (_attribute_equal(ctx, a, b, la) or _attribute_equal(ctx, b, a, lb)):
        return
    for label in la + lb:
        lock_label(label, reason)


def _attribute_equal(ctx: Context, count, other, labels: list) -> bool:
    """Whether the code compared `count`, a channel count as read, for equality with `other`, a module
    attribute of the same value (HF's `if num_channels != self.num_channels`): the attribute is then bound
    to those channels (`ctx.sized_by`, checked by `settle_sizes`), so that surgery keeps it equal."""
    if not (isinstance(count, Tracked) and isinstance(other, Tracked) and count.pure and other.pure
            and len(labels) == 1 and _one_space(labels[0])):
        return False
    attributes = attribute_reads(other)
    if len(attributes) != 1 or int(other) != int(count):
        return False
    owner, attribute, synced = attributes[0]
    if synced:  # a width apply sets from the module's tensors (nn.LSTM's input_size): they must hold these channels
        ctx.synced_equal.append((labels[0], owner, attribute))
    else:
        ctx.sized_by.append((labels[0], owner, attribute, labels[0][0].block * len(labels[0])))
    return True


def settle_sizes(ctx: Context) -> None:
    """Once every op is seen: a channel count used as the size of other channels (SegFormer's reduction conv
    viewed with its input's count) joins the two, laid out alike (so both keep as many), unless apply may
    rewrite that size to -1; and a module attribute that sizes channels must size only those (one count,
    one block size: several spaces it sizes are joined) and have no other use; or, where its channels were
    cut into parts after it was bound (`recut`), it counts those parts, each once, in every use. Else those
    channels are locked. What holds is `ctx.sizes`: root space -> (module, attribute, block)."""
    for a, b, reason, rewrite in ctx.same_channels:
        if not same_channels(a, b) and rewrite:
            ctx.rewrites.append(rewrite)  # apply gives the call -1 there
        elif not same_channels(a, b):
            unify([a, b], reason)
    for label, owner, attribute in ctx.synced_equal:
        if owner not in label[0].space.root().modules:
            lock_label(label, f"the model's code compares these channels with {owner}.{attribute}, which "
                              f"follows other channels")
    bound: dict[tuple[str, str], list] = {}
    for label, module, attribute, block in ctx.sized_by:
        bound.setdefault((module, attribute), []).append((label, block))
    for (module, attribute), uses in bound.items():
        roots = {label[0].space.root() for label, _ in uses}
        parts = {tuple(seg.space.root() for seg in label) for label, _ in uses}
        if any(len(set(p)) > 1 for p in parts):  # a sum of parts: the same parts everywhere, each once, one wide
            first = next(iter(parts))
            if (len(parts) > 1 or len(set(first)) < len(first)
                    or any(seg.block != 1 for label, _ in uses for seg in label) or {b for _, b in uses} != {1}
                    or ctx.attribute_uses[(module, attribute)] > len(uses)):
                for label, _ in uses:
                    lock_label(label, f"{module or 'the model'}.{attribute} sizes these channels, cut into parts "
                                      f"laid out differently or used otherwise too")
            else:
                for root in first:
                    ctx.sizes.setdefault(root, []).append((module, attribute, 1))
        elif (len({r.size for r in roots}) > 1 or len({block for _, block in uses}) > 1
                or ctx.attribute_uses[(module, attribute)] > len(uses)):
            for label, _ in uses:
                lock_label(label, f"{module or 'the model'}.{attribute} sizes these channels and is used otherwise too")
        else:  # one count for several spaces of one size (HF's head_dim for q, k and v): cut alike
            root = functools.reduce(union, roots)
            ctx.sizes.setdefault(root, []).append((module, attribute, uses[0][1]))
    ctx.rewrites = [(node, j, _concerned(ctx, node, j)) for node, j in dict.fromkeys(ctx.rewrites)]


def _concerned(ctx: Context, node: Node, j: int) -> list:
    """The labels whose pruning may make size j of `node` wrong (or its default argument j, a (keyword, value)
    pair, change): the channels it reads and those the size was read from."""
    n = shape_arg(node)[j] if isinstance(j, int) else None
    values = node.tensor_inputs() + node.outputs
    return [lab for v in values for lab in ctx.of(v).dims.values()] + (
        read_labels(ctx, n) if isinstance(n, Tracked) else [])
