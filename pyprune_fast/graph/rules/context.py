"""The state the rules share while they walk a trace: channel labels per value, spaces, and what
they learn on the way (depthwise convs, per-channel GroupNorms, fixed dims, dead channels made non-zero)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Optional

from ..ir import Node, Trace, Value
from ..taxonomy import SIZE_READS
from ..spaces import Label, Labels, Member, Role, Segment, Space, add_members, lock_label

__all__ = ["Context", "all_nonzero", "fixed_outputs", "generic", "mix", "param_names", "producer", "record_module",
           "wrap", "zeroed"]


class Context:
    """What the rules know so far. The part a rule of one's own needs (see `register_rule`):

    - `ctx.of(v).dims`: {dim: label} for the dims of Value `v` that carry channels (a label is a tuple of
      segments; a dim without a label is fixed: its size may not change);
    - `ctx.set(v, dims)`: give an output Value its labelled dims (outputs not set are fixed);
    - `ctx.attach(label, param, dim, role)`: dim `dim` of parameter or buffer `param` (a Value) holds the
      channels of `label` ("producer": it makes their values, "consumer": it reads them);
    - `ctx.lock_all(values, reason)`: the channels of these Values may not change, for `reason`.
    """

    def __init__(self, trace: Trace, ignored_modules: set[str], whole_heads: Optional[frozenset] = frozenset()):
        self.trace = trace
        self.ignored = ignored_modules
        self.whole_heads = whole_heads  # ids of the views whose heads are pruned whole, None: all (`split_heads`)
        self.head_dims: dict[int, Space] = {}  # view id -> the head-dim space it made
        self.labels: dict[int, Labels] = {}
        self.spaces: list[Space] = []
        self.groups_follow: set[str] = set()  # modules whose groups follow their channels: depthwise convs, per-channel GroupNorms
        self.fixed: set[tuple[str, int]] = set()  # (tensor, dim) that some use meets with fixed channels
        # value id -> spaces whose dead channels may not be zero in that value -> the op that made them so
        self.nonzero: dict[int, dict[Space, str]] = {}
        # (label, label, reason, rewrite): channel counts the code used as sizes of these channels; locked unless
        # joined, or the call rewritten to -1 there where `rewrite` is (node, position)
        self.same_channels: list[tuple[Label, Label, str, Optional[tuple]]] = []
        # (node, position): a size apply rewrites to -1 (nn.rewritten); settle_sizes adds the labels it concerns
        self.rewrites: list[tuple] = []
        self.sized_by: list[tuple[Label, str, str, int]] = []  # (label, module, attribute, block): attribute = span
        self.synced_equal: list[tuple[Label, str, str]] = []  # (label, module, width attribute) compared equal
        self.attribute_uses: Counter = Counter()  # (module, attribute) -> how often the code used its value
        self.sizes: dict[Space, list[tuple[str, str, int]]] = {}  # root -> attributes that follow its channels
        self.embeddings: dict[Space, str] = {}  # widths attention heads are read from -> which heads
        self._read: Optional[Counter] = None
        self._last_read: Optional[dict[int, int]] = None
        self.replaced: set[Space] = set()  # spaces whose channels a coarser space holds now (no groups)

    def of(self, v: Value) -> Labels:
        got = self.labels.get(v.id)
        if got is None:
            got = Labels(params={d: (v.param, d) for d in range(v.ndim)} if v.param else {})
            self.labels[v.id] = got
        return got

    def set(self, v: Value, dims: dict[int, Label], params: Optional[dict] = None) -> None:
        self.labels[v.id] = Labels(dims=dict(dims), params=dict(params or {}))

    def new_space(self, size: int, origin: str, locked: Optional[str] = None) -> Space:
        s = Space(size, origin, locked)
        self.spaces.append(s)
        return s

    def lock_all(self, values, reason: str) -> None:
        for v in values:
            for label in self.of(v).dims.values():
                lock_label(label, reason)

    def reads_fixed(self, v: Value, dim: int) -> None:
        """An op reads dim `dim` of `v` as fixed channels: where `v` is a view of a parameter there (a position
        encoding fed to a LayerNorm), that parameter's dim may not change for its other uses either."""
        if dim not in self.of(v).dims and dim in self.of(v).params:
            self.fixed.add(self.of(v).params[dim])

    def attach(self, label: Optional[Label], param: Value, dim: int, role: Role = "producer") -> None:
        """Dim `dim` of `param` holds the channels of `label`: it is cut with them. A tensor that is not a
        parameter or buffer of the model (computed in forward) locks them."""
        if not label:
            return
        if param.param is None:
            lock_label(label, f"a tensor made inside forward holds these channels (dim {dim})")
            return
        add_members(label, param.param, dim, role)

    def readers(self, v: Value) -> int:
        """How many recorded ops read `v`'s values (the model's output counts as one; reads of its size do not)."""
        if self._read is None:
            self._read = Counter(u.id for n in self.trace.nodes if n.name not in SIZE_READS
                                 for u in set(n.tensor_inputs()))
            self._read.update(u.id for u in self.trace.outputs)
        return self._read[v.id]

    def read_after(self, value_id: int, node: Node) -> bool:
        """Whether an op after `node` (or the model's output) reads the values of the Value with id `value_id`."""
        if self._last_read is None:
            self._last_read = {u.id: n.id for n in self.trace.nodes if n.name not in SIZE_READS for u in n.tensor_inputs()}
            self._last_read.update((u.id, len(self.trace.nodes)) for u in self.trace.outputs)
        return self._last_read.get(value_id, -1) > node.id

    def is_read(self, v: Value) -> bool:
        """Whether a recorded op or the model's output reads `v`."""
        return self.readers(v) > 0

    def dead_nonzero(self, v: Value, seg: Segment) -> Optional[str]:
        """The op that made the dead channels of `seg` non-zero in `v`, or None where they are exact zeros."""
        r = seg.space.root()
        return next((why for s, why in self.nonzero.get(v.id, {}).items() if s.root() is r), None)

    def inherited(self, values: Iterable[Value], out: Value) -> dict[Space, str]:
        """`values`' non-zero dead channels that `out` carries: an op that keeps zeros zero."""
        found = [item for v in values for item in self.nonzero.get(v.id, {}).items()]
        if not found:
            return {}
        roots = {seg.space.root() for label in self.of(out).dims.values() for seg in label}
        return {s: why for s, why in found if s.root() in roots}

    def consume(self, v: Value, label: Optional[Label], reader: str) -> None:
        """`reader` sums the channels of `label` in `v` with weights: dead ones that are not zero count."""
        for seg in label or ():
            why = self.dead_nonzero(v, seg)
            if why is not None:
                seg.space.mark_inexact(f"{reader} reads dead channels that {why} made non-zero")


def all_nonzero(labels: Iterable[Label], why: str) -> dict[Space, str]:
    return {seg.space: why for label in labels for seg in label}


def mix(label: Optional[Label], reason: str) -> None:
    """An op whose result depends on how many channels `label` holds, zeros or not."""
    for seg in label or ():
        seg.space.mark_inexact(reason)


def zeroed(v) -> bool:
    """Whether a weight or bias argument is absent or a parameter of the model (kill_channels zeroes those)."""
    return v is None or isinstance(v, Value) and v.param is not None


def wrap(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def param_names(*values) -> list[str]:
    """Names of the parameters among `values` (a bias may be None, a weight computed in forward)."""
    return [v.param for v in values if isinstance(v, Value) and v.param]


def producer(name: str, dim: int = 0) -> Member:
    return Member(name, dim, 0, 1, "producer")


def record_module(label: Label, module: str) -> None:
    for seg in label:
        seg.space.root().modules.add(module)


def generic(ctx: Context, node: Node) -> None:
    """An op without a rule: the channels it reads can no longer change."""
    ctx.lock_all(node.tensor_inputs(), f"{node.name} (no rule for this op; pass its module in ignored_layers "
                                       f"or keep these channels)")
    fixed_outputs(ctx, node)


def fixed_outputs(ctx: Context, node: Node) -> None:
    """Outputs whose every dim is fixed (new_zeros and the like: a shape given in numbers; any read of
    a channel count locks by itself)."""
    for out in node.outputs:
        ctx.set(out, {})
