"""Channel index spaces, joined with union-find, and the tensor dims that index them.

A *space* is one set of channels, e.g. the output channels of a conv. Ops that tie two sets of
channels together (a residual add, a BatchNorm after a conv) join their spaces. A *segment* says
that a run of positions along some tensor dim holds the channels of one space, each channel
taking `block` consecutive positions (a flatten of C x H x W into a Linear gives block = H * W).
A dim of an activation is *labelled* with its segments, in order (a concat gives several).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

Role = Literal["producer", "consumer"]  # makes a channel's values / reads them

_order = itertools.count()


@dataclass(frozen=True)
class Member:
    """Positions `offset + c * block ... + block` of dim `dim` of parameter/buffer `name` hold channel c.

    role: "producer" when the tensor makes the channel's values (conv weight rows, BatchNorm
    parameters, biases), "consumer" when it reads them (the next layer's input columns).
    divisions: > 1 for a per-group local index (a grouped conv's input columns): the channels fall into
    `divisions` equal divisions, dim `dim` holds one division's positions (channel c at local position
    c mod (channels / divisions)), and division j is read only by the j-th of `divisions` equal slices
    of dim 0. Only groups that remove the same local positions in every division (`uniform`) have such
    members; the dim is then cut at those positions.
    """

    name: str
    dim: int
    offset: int = 0
    block: int = 1
    role: Role = "producer"
    divisions: int = 1

    def channel_sums(self, v, channels: int):
        """(channels,): a vector indexed along this member's dim, summed over each channel's positions;
        for a per-group local index (divisions > 1), `v` is (divisions, positions along the dim): the
        sums over each division's slice of dim 0."""
        if self.divisions > 1:
            local = channels // self.divisions
            return v.narrow(1, self.offset, local * self.block).reshape(channels, self.block).sum(1)
        if self.offset == 0 and self.block == 1 and v.numel() == channels:
            return v
        return v.narrow(0, self.offset, channels * self.block).view(channels, self.block).sum(1)


class Space:
    """A union-find node: the root holds the size, the members and, if any, why it cannot be pruned."""

    def __init__(self, size: int, origin: str, locked: Optional[str] = None):
        self.size = size
        self.origin = origin  # what made it, for messages: "conv2d layer1.0.conv1", "model input"
        self.locked = locked
        self.divisions = 1  # pruning removes as many channels from each of this many equal divisions
        self.uniform = False  # ... and the same local positions from every division
        self.why_divided: Optional[str] = None  # the op that asked for divisions, for messages
        self.inexact: Optional[str] = None  # why removing dead channels (exact zeros) can change outputs
        self.reduced: Optional[str] = None  # why merging identical channels (channel addition) can change outputs
        self.members: list[Member] = []
        self.modules: set[str] = set()  # modules whose channel count this space sets
        self._parent: Space = self
        self.order = next(_order)  # the older space of a union stays root: its origin names the group

    def root(self) -> "Space":
        node = self
        while node._parent is not node:
            node._parent = node._parent._parent
            node = node._parent
        return node

    def add(self, member: Member) -> None:
        self.root().members.append(member)

    def lock(self, reason: str) -> None:
        r = self.root()
        if r.locked is None:
            r.locked = reason

    def divide(self, divisions: int, uniform: bool, why: str) -> None:
        """An op (`why`) reads these channels in `divisions` equal divisions (a grouped conv, a GroupNorm) that
        must stay equal: pruning removes as many channels from each, and, if `uniform`, the same local
        positions. Several ops' divisions combine (their lcm); locks when the channels do not divide."""
        r = self.root()
        r.divisions = math.lcm(r.divisions, divisions)
        r.uniform = r.uniform or uniform
        r.why_divided = r.why_divided or why
        _check_divisions(r, why)

    def mark_inexact(self, reason: str) -> None:
        """Dead channels of this space are not free to remove: `reason` says which op sees them."""
        r = self.root()
        if r.inexact is None:
            r.inexact = reason

    def mark_reduced(self, reason: str) -> None:
        """An op reads these channels other than through weights (a sum or a norm over them), so it counts
        copies: identical channels cannot be merged into one by adding their weights."""
        r = self.root()
        if r.reduced is None:
            r.reduced = reason


def union(a: Space, b: Space) -> Space:
    ra, rb = a.root(), b.root()
    if ra is rb:
        return ra
    if rb.order < ra.order:
        ra, rb = rb, ra
    if ra.size != rb.size:  # cannot happen for shapes that broadcast; stay safe
        ra.lock(f"joins {ra.origin} and {rb.origin} with different sizes ({ra.size} vs {rb.size})")
        rb.lock(ra.locked)
    rb._parent = ra
    ra.members += rb.members
    ra.modules |= rb.modules
    ra.locked = ra.locked or rb.locked
    ra.inexact = ra.inexact or rb.inexact
    ra.reduced = ra.reduced or rb.reduced
    ra.divisions = math.lcm(ra.divisions, rb.divisions)
    ra.uniform = ra.uniform or rb.uniform
    ra.why_divided = ra.why_divided or rb.why_divided
    rb.members = []
    _check_divisions(ra, rb.why_divided or ra.why_divided)
    return ra


def _check_divisions(r: Space, why: Optional[str]) -> None:
    """Locks root `r` when its divisions cannot hold: sizes that do not divide, or one channel a division."""
    if r.divisions == 1:
        return
    if r.size % r.divisions:
        r.lock(f"{why} needs {r.divisions} equal divisions of {r.size} channels, which do not divide")
    elif r.size == r.divisions:
        r.lock(f"{why} divides its {r.size} channels into {r.divisions} groups of one: they go in whole groups")


def join_shared(spaces: list[Space], fixed: set[tuple[str, int]]) -> None:
    """Weight sharing: a tensor used more than once (a module called in a loop or on two branches, a tied
    parameter or buffer) is a member of one space per use. The same positions of one tensor dim are the
    same channels, so spaces that lay a dim out alike are joined; uses that lay it out differently
    (overlapping positions, other offsets or sizes) lock every space involved, and so does a use that
    meets the dim with fixed channels (`fixed`: (tensor, dim) pairs)."""
    on_dim: dict[tuple[str, int], dict[tuple[int, int, int], Space]] = {}  # (name, dim) -> layout -> space
    for s in spaces:
        r = s.root()
        for m in r.members:
            layouts = on_dim.setdefault((m.name, m.dim), {})
            key = (m.offset, m.block, r.size)
            if key in layouts:
                union(layouts[key], r)
            else:
                layouts[key] = r
    for (name, dim), layouts in on_dim.items():
        if (name, dim) in fixed:
            for space in layouts.values():
                space.lock(f"{name} is also read with fixed channels along its dim {dim}")
        spans = [(offset, offset + block * size, space) for (offset, block, size), space in layouts.items()]
        for (start_a, end_a, a), (start_b, end_b, b) in itertools.combinations(spans, 2):
            if start_a < end_b and start_b < end_a:
                reason = f"{name} is used more than once, with its dim {dim} laid out differently ({a.origin}, {b.origin})"
                a.lock(reason)
                b.lock(reason)


@dataclass(frozen=True)
class Segment:
    space: Space
    length: int  # channels
    block: int = 1  # positions per channel

    @property
    def span(self) -> int:
        return self.length * self.block


Label = tuple  # tuple[Segment, ...]: the segments along one dim, in order


def same_layout(a: Label, b: Label) -> bool:
    return len(a) == len(b) and all(x.length == y.length and x.block == y.block for x, y in zip(a, b))


def unify(labels: list[Label], reason: str) -> Label:
    """One label for positions that several tensors share (an elementwise op): joins their spaces."""
    first = labels[0]
    for other in labels[1:]:
        if same_layout(first, other):
            for x, y in zip(first, other):
                union(x.space, y.space)
        else:
            for seg in (*first, *other):
                seg.space.lock(reason)
    return first


def lock_label(label: Optional[Label], reason: str) -> None:
    for seg in label or ():
        seg.space.lock(reason)


def add_members(label: Label, name: str, dim: int, role: Role, divisions: int = 1) -> None:
    """Members for every segment of `label`, laid along dim `dim` of tensor `name` (`divisions`: see Member)."""
    offset = 0
    for seg in label:
        seg.space.add(Member(name, dim, offset, seg.block, role, divisions))
        offset += seg.span


@dataclass
class Labels:
    """Per value: dim -> Label, and for views of a parameter, dim -> (parameter name, its dim)."""

    dims: dict[int, Label] = field(default_factory=dict)
    params: dict[int, tuple[str, int]] = field(default_factory=dict)
