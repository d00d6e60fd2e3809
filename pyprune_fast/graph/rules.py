"""How each recorded op carries channel labels from its inputs to its outputs.

Every dim of a value without a label is *fixed*: its size may not change. An op that meets a label
it cannot follow locks that label's spaces (with the reason, for the user), so a space is only ever
prunable when every op that touches it is understood. That is the safety argument: a rule may be
conservative, never optimistic.

Dead channels. `channels.kill_channels` zeroes the parameters that produce some channels of a group,
so they leave every conv, Linear and affine norm of the group as exact zeros; removing them changes no
output unless an op sees them otherwise. So the rules also follow, per value, the spaces whose dead
channels may no longer be zero there (`Context.nonzero`: sigmoid or `+ 1` make them non-zero, a
product with a zero brings them back), and mark a space inexact (`Space.mark_inexact`) where removing
its dead channels would change what an op computes: an op that mixes channels (a mean, softmax or norm
across them), a weight that reads dead channels that are not zero, a division by them. A sum over
channels or an L_p norm (p >= 0) is exact: zeros add nothing. Again conservative: "may be non-zero"
wherever an op is not known to give zero.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from ..nn.window_attention import shifted_window_attention, window_attention_args
from .spaces import Label, Labels, Member, Segment, Space, add_members, lock_label, unify, union
from .trace import Node, Trace, Value, attention_args

__all__ = ["Context", "propagate"]

NORM_PARAMS = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))  # positions in F.batch_norm


class Context:
    def __init__(self, trace: Trace, ignored_modules: set[str]):
        self.trace = trace
        self.ignored = ignored_modules
        self.labels: dict[int, Labels] = {}
        self.spaces: list[Space] = []
        self.depthwise: set[str] = set()  # convs whose groups follow their channel count
        self.per_channel_groupnorm: set[str] = set()
        self.attention: set[str] = set()  # attention modules whose heads form a group
        self.fixed: set[tuple[str, int]] = set()  # (tensor, dim) that some use meets with fixed channels
        # value id -> spaces whose dead channels may not be zero in that value -> the op that made them so
        self.nonzero: dict[int, dict[Space, str]] = {}
        self._read: Optional[set[int]] = None

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

    def is_read(self, v: Value) -> bool:
        """Whether a recorded op or the model's output reads `v`."""
        if self._read is None:
            self._read = {u.id for n in self.trace.nodes for u in n.tensor_inputs()}
            self._read |= {u.id for u in self.trace.outputs}
        return v.id in self._read

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


def _zeroed(v) -> bool:
    """Whether a weight or bias argument is absent or a parameter of the model (kill_channels zeroes those)."""
    return v is None or isinstance(v, Value) and v.param is not None


def module_of(param: Optional[str]) -> str:
    return param.rsplit(".", 1)[0] if param and "." in param else ""


def child(module: str, name: str) -> str:
    """The qualified name of `name` in `module` ("" for the model itself)."""
    return f"{module}.{name}" if module else name


def _wrap(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ---- layers with parameters ----


def conv(ctx: Context, node: Node) -> None:
    x, w, b = node.arg(0, "input"), node.arg(1, "weight"), node.arg(2, "bias")
    groups = node.arg(6, "groups", 1)
    out = node.outputs[0]
    lx = ctx.of(x).dims.get(1)
    module = module_of(w.param)
    cin, cout = x.shape[1], w.shape[0]
    if w.param is None:
        ctx.lock_all([x], f"{node.name} with a weight computed in forward")
        return
    if groups == 1:
        ctx.consume(x, lx, f"{node.name} {module}")
        label = _layer(ctx, f"{node.name} {module}", module, w, b, lx)
        ctx.set(out, {1: label})
        ctx.nonzero[out.id] = {} if _zeroed(b) else all_nonzero([label], f"the bias of {module}")
    elif groups == cin == cout and lx and all(seg.block == 1 for seg in lx):
        # depthwise: output channel c reads input channel c only, so both are one space
        for name in _param_names(w, b):
            add_members(lx, name, 0, "producer")
        _record_module(lx, module)
        ctx.depthwise.add(module)
        if module in ctx.ignored:
            lock_label(lx, f"{module} is in ignored_layers")
        ctx.set(out, {1: lx})
        ctx.nonzero[out.id] = {} if _zeroed(b) else all_nonzero([lx], f"the bias of {module}")  # zero weights
    else:
        reason = f"{module} is a grouped conv (groups={groups}): its channels go in whole groups"
        lock_label(lx, reason)
        ctx.fixed.update([(w.param, 1)] + [(name, 0) for name in _param_names(w, b)])
        ctx.set(out, {1: (Segment(ctx.new_space(cout, f"{node.name} {module}", locked=reason), cout),)})


def _layer(ctx: Context, origin: str, module: str, w: Value, b, input_label: Optional[Label]) -> Label:
    """A conv or Linear: its weight's dim 1 reads the input's channels; dim 0 (and the bias) make a new
    space of output channels. Returns the output's channel label."""
    if input_label:
        add_members(input_label, w.param, 1, "consumer")
        _record_module(input_label, module)
    else:
        ctx.fixed.add((w.param, 1))
    space = ctx.new_space(w.shape[0], origin)
    space.modules.add(module)
    space.members += [_producer(name) for name in _param_names(w, b)]
    if module in ctx.ignored:
        space.lock(f"{module} is in ignored_layers")
    return (Segment(space, w.shape[0]),)


def _param_names(*values) -> list[str]:
    """Names of the parameters among `values` (a bias may be None, a weight computed in forward)."""
    return [v.param for v in values if isinstance(v, Value) and v.param]


def _producer(name: str, dim: int = 0) -> Member:
    return Member(name, dim, 0, 1, "producer")


def _record_module(label: Label, module: str) -> None:
    for seg in label:
        seg.space.root().modules.add(module)


def linear(ctx: Context, node: Node) -> None:
    x, w, b = node.arg(0, "input"), node.arg(1, "weight"), node.arg(2, "bias")
    out = node.outputs[0]
    if w.param is None:
        ctx.lock_all([x], "linear with a weight computed in forward")
        return
    module = module_of(w.param)
    lx = ctx.of(x).dims.get(x.ndim - 1)
    ctx.consume(x, lx, f"linear {module}")
    dims = {d: lab for d, lab in ctx.of(x).dims.items() if d < x.ndim - 1}  # rows: each gets W x + b
    label = _layer(ctx, f"linear {module}", module, w, b, lx)
    ctx.set(out, {**dims, out.ndim - 1: label})
    nonzero = ctx.inherited([x], out)
    if b is not None:
        nonzero.update(all_nonzero(dims.values(), f"the bias of {module}"))
    if not _zeroed(b):
        nonzero.update(all_nonzero([label], f"the bias of {module}"))
    ctx.nonzero[out.id] = nonzero


def _norm(ctx: Context, node: Node, x: Value, channel_dim: int, params: list, what: str, shifts: bool,
          mixes: bool = False) -> None:
    """A norm whose `params` end with its weight and bias. `shifts`: a zero channel comes out non-zero
    before the weight and bias (running statistics); `mixes`: its statistics are taken across channels."""
    label = ctx.of(x).dims.get(channel_dim)
    names = _param_names(*params)
    module = module_of(names[0]) if names else ""
    if label:
        if any(seg.block != 1 for seg in label):
            lock_label(label, f"{what} {module} over a reshaped channel dim")
        if any(isinstance(p, Value) and not p.param for p in params):
            lock_label(label, f"{what} {module} with statistics or parameters made inside forward")
        for name in names:
            add_members(label, name, 0, "producer")
        _record_module(label, module)
        if mixes:
            mix(label, f"{what} {module} normalises across these channels")
    else:
        ctx.fixed.update((name, 0) for name in names)
    out = node.outputs[0]
    ctx.set(out, ctx.of(x).dims)
    w, b = params[-2:]
    why = f"{what} {module}"
    if isinstance(w, Value) and w.param and _zeroed(b):
        nonzero = {}  # zero weight and bias: zero whatever comes in
    elif shifts or mixes or not _zeroed(b):
        nonzero = all_nonzero([label or ()], why)
    else:
        nonzero = ctx.inherited([x], out)
    nonzero.update(all_nonzero([lab for d, lab in ctx.of(x).dims.items() if d != channel_dim], why))
    ctx.nonzero[out.id] = nonzero


def batch_norm(ctx: Context, node: Node) -> None:
    x = node.arg(0, "input")
    params = [node.arg(i, n) for i, n in NORM_PARAMS]
    _norm(ctx, node, x, 1, params, "batch_norm", shifts=not node.arg(5, "training", False) and not _zeroed(params[0]))


def instance_norm(ctx: Context, node: Node) -> None:
    x = node.arg(0, "input")
    params = [node.arg(i, n) for i, n in NORM_PARAMS]
    _norm(ctx, node, x, 1, params, "instance_norm",
          shifts=not node.arg(5, "use_input_stats", True) and not _zeroed(params[0]))


def group_norm(ctx: Context, node: Node) -> None:
    x, groups = node.arg(0, "input"), node.arg(1, "num_groups")
    w, b = node.arg(2, "weight"), node.arg(3, "bias")
    label = ctx.of(x).dims.get(1)
    module = module_of(w.param if isinstance(w, Value) else None)
    if groups == x.shape[1]:
        ctx.per_channel_groupnorm.add(module)
    elif groups != 1:
        lock_label(label, f"{module} is a GroupNorm with {groups} groups: pruning would unbalance them")
    _norm(ctx, node, x, 1, [w, b], "group_norm", shifts=False, mixes=groups != x.shape[1])


def layer_norm(ctx: Context, node: Node) -> None:
    x, shape = node.arg(0, "input"), node.arg(1, "normalized_shape")
    w, b = node.arg(2, "weight"), node.arg(3, "bias")
    if len(shape) != 1:
        ctx.lock_all([x], "layer_norm over several dims")
        ctx.set(node.outputs[0], {})
        return
    _norm(ctx, node, x, x.ndim - 1, [w, b], "layer_norm", shifts=True, mixes=True)


def attention(ctx: Context, node: Node) -> None:
    """F.multi_head_attention_forward (nn.MultiheadAttention): its heads form a group.

    Head h is the block of head_dim rows h*hd... in each of the q, k and v parts of in_proj_weight
    (and in_proj_bias), and the same block of columns of out_proj.weight. The embedding dims of the
    inputs stay fixed: the module ties them to embed_dim.
    """
    a = attention_args(node.args, node.kwargs)
    ctx.lock_all([a["query"], a["key"], a["value"]], "nn.MultiheadAttention ties its embedding size to its inputs")
    _fixed_outputs(ctx, node)
    w_in, w_out = a.get("in_proj_weight"), a.get("out_proj_weight")
    simple = (isinstance(w_in, Value) and w_in.param and isinstance(w_out, Value) and w_out.param
              and a.get("bias_k") is None and not a.get("add_zero_attn") and a.get("static_k") is None
              and not a.get("use_separate_proj_weight"))
    if not simple:
        return
    module = module_of(w_in.param)
    space = _head_space(ctx, module, f"attention heads {module}", a["num_heads"], w_in, a.get("in_proj_bias"), w_out)
    if module in ctx.ignored:
        space.lock(f"{module} is in ignored_layers")
    if node.outputs[1:] and ctx.is_read(node.outputs[1]):  # a dead head attends uniformly
        if a.get("average_attn_weights", True):
            space.mark_inexact(f"the attention weights of {module}, averaged over its heads, are read")
        else:
            space.lock(f"the attention weights of {module} are read head by head")


def window_attention(ctx: Context, node: Node) -> None:
    """Swin's shifted window attention (window_attention.shifted_window_attention): its heads form a group.

    Head h is the block of head_dim rows h*hd... in each of the q, k and v thirds of `qkv.weight` (and
    `qkv.bias`), the same block of columns of `proj.weight`, and entry h along the heads dim of the
    relative position bias (a column of V1's bias table, an output of V2's `cpb_mlp`) and of V2's
    `logit_scale`. The input's width stays fixed: the op reads it.
    """
    a = window_attention_args(node.args, node.kwargs)
    w_qkv, w_proj, bias, scale = a["qkv_weight"], a["proj_weight"], a["relative_position_bias"], a["logit_scale"]
    ctx.lock_all([a["input"]], "Swin window attention reads the width of its input")
    _fixed_outputs(ctx, node)
    module = module_of(module_of(w_qkv.param))
    if (w_qkv.param, w_proj.param) != (child(module, "qkv.weight"), child(module, "proj.weight")):
        ctx.lock_all([v for v in (bias, scale) if v is not None], "Swin window attention with weights that are not "
                     "its own qkv and proj")
        return
    space = _head_space(ctx, module, f"window attention heads {module}", a["num_heads"], w_qkv, a["qkv_bias"], w_proj)
    for v, what in ((bias, "relative position bias"), (scale, "logit_scale")):
        if v is not None:
            space = _join_heads(ctx, space, v, f"the {what} of {module}")
    if {module, module_of(w_qkv.param)} & ctx.ignored:
        space.lock(f"{module} is in ignored_layers")


def _head_space(ctx: Context, module: str, origin: str, heads: int, w_in: Value, b_in, w_out: Value) -> Space:
    """A new space of `heads` channels: head h is a block of head_dim rows in each of the q, k and v thirds
    of w_in (and b_in), and the same block of columns of w_out."""
    inner = w_in.shape[0] // 3
    hd = inner // heads
    space = ctx.new_space(heads, origin)
    space.modules.add(module)
    ctx.attention.add(module)
    for name in _param_names(w_in, b_in):
        space.members += [Member(name, 0, part * inner, hd, "producer") for part in range(3)]
    space.members.append(Member(w_out.param, 1, 0, hd, "consumer"))
    return space


def _join_heads(ctx: Context, space: Space, v: Value, what: str) -> Space:
    """Joins the heads dim of `v` (which broadcasts against the (windows, heads, N, N) scores) to the head
    space: the space its label holds, or the parameter it is a view of. Returns the head space's root."""
    d, lab = v.ndim - 3, ctx.of(v)
    for other, label in lab.dims.items():
        if other != d:
            lock_label(label, f"{what} is read whole")
    if d < 0 or v.shape[d] == 1:
        return space  # the same for every head
    label = lab.dims.get(d)
    if label is not None and len(label) == 1 and label[0].block == 1:
        root = union(label[0].space, space)
        root.origin = space.origin  # the heads name the group, not the layer that made the bias
        return root
    if label is None and d in lab.params:
        name, pd = lab.params[d]
        space.add(_producer(name, pd))
        return space
    lock_label(label, f"{what} is laid out along its heads in a way the graph cannot follow")
    space.lock(f"{what} is computed in a way the graph cannot follow")
    return space


# ---- ops without parameters ----


def identity(ctx: Context, node: Node) -> None:
    """Elementwise on one tensor (activations, dropout, copies, softmax): labels pass through."""
    x = node.tensor_inputs()[0]
    if any(out.shape != x.shape for out in node.outputs):
        return generic(ctx, node)
    lab = ctx.of(x)
    image = _image_of_zero(node)
    if image == "infinite":
        for label in lab.dims.values():
            mix(label, f"{node.name} makes dead channels (zeros) infinite")
    for out in node.outputs:
        ctx.set(out, lab.dims, lab.params)
        if image != "zero":
            ctx.nonzero[out.id] = all_nonzero(lab.dims.values(), node.name)


_NONZERO_AT_ZERO = {"sigmoid", "hardsigmoid", "softplus", "logsigmoid", "exp", "cos", "softmax", "log_softmax"}
_BOUNDS = {"clamp": ((1, "min"), (2, "max")), "clamp_min": ((1, "min"), None), "clamp_max": (None, (1, "max")),
           "hardtanh": ((1, "min_val", -1.0), (2, "max_val", 1.0))}


def _image_of_zero(node: Node) -> str:
    """What an op on one tensor makes of an exact zero: "zero", "finite" (maybe not zero) or "infinite"."""
    name = node.name.rstrip("_")
    if name in ("log", "reciprocal", "rsqrt"):
        return "infinite"
    if name in _NONZERO_AT_ZERO:
        return "finite"
    if name == "pow":
        e = node.arg(1, "exponent")
        if not isinstance(node.args[0], Value):
            return "finite"  # a number to the power of a tensor
        if not isinstance(e, (int, float)) or e < 0:
            return "infinite"
        return "zero" if e > 0 else "finite"
    if name in _BOUNDS:
        lo, hi = (node.arg(*b) if b else None for b in _BOUNDS[name])
        if isinstance(lo, Value) or isinstance(hi, Value):
            return "finite"
        return "zero" if (lo is None or lo <= 0) and (hi is None or hi >= 0) else "finite"
    return "zero"


def softmax(ctx: Context, node: Node) -> None:
    """softmax, log_softmax: along channels they mix them; any dead slice comes out non-zero."""
    identity(ctx, node)
    x, dim = node.tensor_inputs()[0], node.arg(1, "dim")
    for d, label in ctx.of(x).dims.items():
        if dim is None or _wrap(dim, x.ndim) == d:
            mix(label, f"{node.name} along these channels")


def normalize(ctx: Context, node: Node) -> None:
    """F.normalize: x over its L_p norm along `dim`; zeros stay zero and add nothing to the norm (p >= 0)."""
    identity(ctx, node)
    x, dim = node.tensor_inputs()[0], _wrap(node.arg(2, "dim", 1), node.tensor_inputs()[0].ndim)
    _reads(ctx, x, ctx.of(x).dims.get(dim), node.name, mixes=not _zeros_add_nothing(node.arg(1, "p", 2.0)))


def _zeros_add_nothing(p) -> bool:
    """Whether zeros leave an L_p norm as it is: p >= 0 (inf included), or the Frobenius norm."""
    return p in (None, "fro") or isinstance(p, (int, float)) and p >= 0


def _reads(ctx: Context, x: Value, label: Optional[Label], what: str, mixes: bool) -> None:
    """An op reads the channels of `label` in `x` together: exact for zeros unless it `mixes` them."""
    if mixes:
        mix(label, f"{what} over these channels")
    else:
        ctx.consume(x, label, what)
        for seg in label or ():
            seg.space.mark_reduced(f"{what} over these channels")


def elementwise(ctx: Context, node: Node) -> None:
    """Broadcasting ops on several tensors (add, sub, mul, div, where): aligned dims share channels."""
    out = node.outputs[0]
    operands = node.tensor_inputs()
    dims = {}
    for d in range(out.ndim):
        labels, params, fixed = [], [], []
        for v in operands:
            od = d - (out.ndim - v.ndim)
            if od < 0 or (v.shape[od] == 1 and out.shape[d] != 1):
                continue
            lab = ctx.of(v)
            if od in lab.dims:
                labels.append(lab.dims[od])
            elif od in lab.params:
                params.append(lab.params[od])
            elif v.shape[od] > 1:
                fixed.append(v)
        if not labels:
            ctx.fixed.update(params)
            continue
        label = unify(labels, f"{node.name} adds tensors whose channels are concatenated differently")
        if fixed:
            source = fixed[0].producer.name if fixed[0].producer else "a model input or constant"
            lock_label(label, f"{node.name} combines these channels with fixed ones (from {source})")
        for name, pd in params:
            add_members(label, name, pd, "producer")
        dims[d] = label
    ctx.set(out, dims)
    ctx.nonzero[out.id] = _elementwise_nonzero(ctx, node, dims)


_PRODUCTS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_QUOTIENTS = {"div", "div_", "__truediv__", "__itruediv__", "true_divide", "__rtruediv__"}
_NOT_TERMS = {"alpha", "value", "rounding_mode", "out"}  # keyword arguments that are not operands


def _elementwise_nonzero(ctx: Context, node: Node, dims: dict[int, Label]) -> dict[Space, str]:
    """Dead channels of a product are zero if one factor's are; of a quotient, if the dividend's (a
    division by them is inexact); of anything else (sums, where, maximum), if every operand's are, no
    operand broadcasting along them and no number but 0 taking part."""
    out = node.outputs[0]
    terms = [a for a in (*node.args, *(v for k, v in node.kwargs.items() if k not in _NOT_TERMS))
             if isinstance(a, (Value, int, float))]
    nonzero = {}
    for d, label in dims.items():
        for seg in label:
            states = [_term_state(ctx, t, d, out, seg) for t in terms]  # (carries these channels, zero there)
            if node.name in _PRODUCTS:
                zero = any(z for _, z in states)
            elif node.name in _QUOTIENTS and len(states) == 2:
                num, den = states[::-1] if node.name == "__rtruediv__" else states
                if den[0]:
                    seg.space.mark_inexact(f"{node.name} divides by these channels")
                zero = num[1]
            else:
                zero = all(z for _, z in states)
            if not zero:
                why = [w for t in terms if isinstance(t, Value) and (w := ctx.dead_nonzero(t, seg))]
                nonzero[seg.space] = why[0] if why else node.name
    return nonzero


def _term_state(ctx: Context, t, d: int, out: Value, seg: Segment) -> tuple[bool, bool]:
    """Whether operand `t` of an elementwise op carries the channels of `seg` (output dim d), and whether
    it is an exact zero at their dead ones (a number: if it is 0)."""
    if not isinstance(t, Value):
        return False, t == 0
    od = d - (out.ndim - t.ndim)
    if od < 0 or (t.shape[od] == 1 and out.shape[d] != 1):
        return False, False  # broadcast along the channels: any value
    return True, od in ctx.of(t).dims and ctx.dead_nonzero(t, seg) is None  # a parameter or fixed: any value


def cat(ctx: Context, node: Node) -> None:
    tensors = list(node.arg(0, "tensors"))
    out = node.outputs[0]
    dim = _wrap(node.arg(1, "dim", 0), out.ndim)
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
                    space.members.append(_producer(name, pd))
                lab = (Segment(space, t.shape[dim]),)
            segments += lab
        dims[dim] = tuple(segments)
    ctx.set(out, dims)
    ctx.nonzero[out.id] = {**ctx.inherited(tensors, out), **all_nonzero(loose, f"{node.name} with a parameter")}


def permute(ctx: Context, node: Node) -> None:
    x, out = node.args[0], node.outputs[0]
    name = node.name
    if name in ("permute",):
        order = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        order = list(order) if order else list(node.kwargs.get("dims"))
        order = [_wrap(d, x.ndim) for d in order]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a, b = _wrap(node.arg(1, "dim0"), x.ndim), _wrap(node.arg(2, "dim1"), x.ndim)
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
        src, dst = [_wrap(s, x.ndim) for s in src], [_wrap(d, x.ndim) for d in dst]
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


def reshape(ctx: Context, node: Node) -> None:
    """view, reshape, flatten, unflatten, squeeze, unsqueeze: read from the shapes before and after."""
    x, out = node.tensor_inputs()[0], node.outputs[0]
    lab = ctx.of(x)
    groups = _reshape_groups(x.shape, out.shape)
    if groups is None:
        ctx.lock_all([x], f"{node.name} from {list(x.shape)} to {list(out.shape)}")
        ctx.set(out, {})
        return
    dims, params = {}, {}
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
        for m in labelled:
            lock_label(lab.dims[m], f"{node.name} from {list(x.shape)} to {list(out.shape)} splits or mixes channels")
    ctx.set(out, dims, params)


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


def pad(ctx: Context, node: Node) -> None:
    same_size_dims(ctx, node, set())
    if node.arg(2, "mode", "constant") == "constant" and node.arg(3, "value"):
        out = node.outputs[0]
        ctx.nonzero[out.id] = all_nonzero(ctx.of(out).dims.values(), f"{node.name} with {node.arg(3, 'value')}")


def roll(ctx: Context, node: Node) -> None:
    x = node.tensor_inputs()[0]
    dims = node.arg(2, "dims")
    dims = [] if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    same_size_dims(ctx, node, {_wrap(d, x.ndim) for d in dims} if dims else set(range(x.ndim)))


def reduction(ctx: Context, node: Node) -> None:
    """mean, sum, amax...: reduced dims lose their labels (fewer channels change values, not shapes).
    A sum over channels is exact for zeros; a mean, std, var, amax or amin is not."""
    _reduce(ctx, node, node.arg(1, "dim"), node.arg(2, "keepdim", False), mixes=node.name not in ("sum", "nansum"))


def norm(ctx: Context, node: Node) -> None:
    """norm, linalg_vector_norm: an L_p norm is exact for zeros when p >= 0 (the max of |x| included)."""
    p = node.arg(1, "ord", 2) if node.name == "linalg_vector_norm" else node.arg(1, "p", "fro")
    _reduce(ctx, node, node.arg(2, "dim"), node.arg(3, "keepdim", False), mixes=not _zeros_add_nothing(p))


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
        reduced = {_wrap(d, x.ndim) for d in ([dim] if isinstance(dim, int) else dim)}
    dims, j = {}, 0
    for d in range(x.ndim):
        if d in reduced and d in lab.dims:
            _reads(ctx, x, lab.dims[d], node.name, mixes)
        if d in reduced and not keepdim:
            continue
        if d in lab.dims and d not in reduced:
            dims[j] = lab.dims[d]
        j += 1
    if any(o.ndim != x.ndim - (0 if keepdim else len(reduced)) for o in node.outputs):
        ctx.lock_all([x], f"{node.name} with arguments not understood")  # unlabelled would mean fixed
        dims = {}
    for o in node.outputs:
        ctx.set(o, dims)


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


def split(ctx: Context, node: Node) -> None:
    """split, chunk, unbind, narrow, select, tensor_split: fine along other dims, locks along channels."""
    x = node.tensor_inputs()[0]
    lab = ctx.of(x)
    dim = node.arg(2, "dim", 0) if node.name in ("split", "chunk", "tensor_split", "split_with_sizes") else node.arg(1, "dim", 0)
    dim = _wrap(dim, x.ndim)
    if dim in lab.dims:
        lock_label(lab.dims[dim], f"{node.name} cuts the channel dim at sizes fixed in the model's code")
    for out in node.outputs:
        if out.ndim == x.ndim:
            ctx.set(out, {d: v for d, v in lab.dims.items() if d != dim})
        else:  # the dim is gone
            ctx.set(out, {(d if d < dim else d - 1): v for d, v in lab.dims.items() if d != dim})


def generic(ctx: Context, node: Node) -> None:
    """An op without a rule: the channels it reads can no longer change."""
    ctx.lock_all(node.tensor_inputs(), f"{node.name} (no rule for this op; pass its module in ignored_layers "
                                       f"or keep these channels)")
    _fixed_outputs(ctx, node)


def size_read(ctx: Context, node: Node) -> None:
    """x.shape, x.size(), x.numel(): the code may compute other shapes from a channel count it read."""
    x = node.args[0]
    dim = node.arg(1, "dim") if node.name == "size" else None
    lab = ctx.of(x)
    for d, label in lab.dims.items():
        if dim is None or _wrap(dim, x.ndim) == d:
            lock_label(label, f"the model's code reads this channel count ({node.name} of a {list(x.shape)} tensor) "
                              "and may compute other shapes from it")


def like(ctx: Context, node: Node) -> None:
    """zeros_like and the like: the output takes its input's shape, so its channels follow."""
    x, lab = node.tensor_inputs()[0], ctx.of(node.tensor_inputs()[0])
    zero = node.name == "zeros_like" or node.name == "full_like" and node.arg(1, "fill_value") == 0
    for out in node.outputs:
        ctx.set(out, lab.dims if out.shape == x.shape else {})
        ctx.nonzero[out.id] = {} if zero else all_nonzero(ctx.of(out).dims.values(), node.name)


def _fixed_outputs(ctx: Context, node: Node) -> None:
    """Outputs whose every dim is fixed (new_zeros and the like: a shape given in numbers; any read of
    a channel count locks by itself)."""
    for out in node.outputs:
        ctx.set(out, {})


_IDENTITY = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_", "hardtanh",
    "hardtanh_", "mish", "softplus", "softsign", "logsigmoid", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "detach", "data", "to", "float", "half",
    "double", "bfloat16", "type", "type_as", "abs", "neg", "exp", "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min",
    "clamp_max", "square", "erf", "log", "sin", "cos", "reciprocal", "requires_grad_", "pow",
}
_ELEMENTWISE = {
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__", "rsub",
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__rtruediv__", "__itruediv__",
    "true_divide", "where", "maximum", "minimum", "addcmul", "lerp",
}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "view_as", "reshape_as"}
_PERMUTE = {"permute", "transpose", "swapaxes", "swapdims", "t", "T", "mT", "movedim"}
_SPATIAL = {
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "interpolate", "upsample", "lp_pool2d",
}
_REDUCTION = {"mean", "sum", "amax", "amin", "std", "var", "nansum", "nanmean"}
_SPLIT = {"split", "chunk", "unbind", "narrow", "select", "tensor_split", "split_with_sizes"}

_BY_FUNC: dict[Callable, Callable] = {
    F.max_pool1d: spatial, F.max_pool2d: spatial, F.max_pool3d: spatial,
    F.adaptive_max_pool1d: spatial, F.adaptive_max_pool2d: spatial, F.adaptive_max_pool3d: spatial,
    F.batch_norm: batch_norm, F.instance_norm: instance_norm, F.group_norm: group_norm, F.layer_norm: layer_norm,
    F.linear: linear, torch.conv1d: conv, torch.conv2d: conv, torch.conv3d: conv,
    F.multi_head_attention_forward: attention, shifted_window_attention: window_attention,
}
_BY_NAME: dict[str, Callable] = {
    **{n: identity for n in _IDENTITY}, **{n: elementwise for n in _ELEMENTWISE}, **{n: reshape for n in _RESHAPE},
    **{n: permute for n in _PERMUTE}, **{n: spatial for n in _SPATIAL}, **{n: reduction for n in _REDUCTION},
    **{n: split for n in _SPLIT},
    "cat": cat, "concat": cat, "concatenate": cat, "expand": expand, "expand_as": expand, "broadcast_to": expand,
    "__getitem__": getitem, "pad": pad, "roll": roll, "softmax": softmax, "log_softmax": softmax,
    "normalize": normalize, "norm": norm, "linalg_vector_norm": norm, "logsumexp": logsumexp,
    "size": size_read, "shape": size_read, "numel": size_read,
    **{n: _fixed_outputs for n in ("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor")},
    **{n: like for n in ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like")},
    "max_pool1d": spatial, "max_pool2d": spatial, "max_pool3d": spatial,
}


def rule_for(node: Node) -> Callable:
    return _BY_FUNC.get(node.func) or _BY_NAME.get(node.name) or generic


def propagate(ctx: Context) -> None:
    """Runs every node's rule in execution order, then locks what the model outputs."""
    for node in ctx.trace.nodes:
        rule_for(node)(ctx, node)
        for out in node.outputs:  # rules that keep zeros zero leave this to the default
            if out.id not in ctx.nonzero:
                ctx.nonzero[out.id] = ctx.inherited(node.tensor_inputs(), out)
    for v in ctx.trace.outputs:
        for label in ctx.of(v).dims.values():
            lock_label(label, "the model's output")
