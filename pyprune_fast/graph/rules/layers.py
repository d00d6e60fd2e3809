"""Convs, transposed convs, Linear layers, embeddings and recurrent layers: a weight reads the input's channels
and makes a new space of output channels. A weight computed in forward from a parameter (weight
standardisation) is followed back to it (`computed.weight_source`); one that cannot be locks, with the reason."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..ir import Node, Value
from ..sizes import Tracked, attribute_reads
from ..spaces import Label, Member, Segment, add_members, lock_label
from ..tensors import module_of
from .computed import Weight, layer_weight, params_in
from .context import Context, all_nonzero, generic, param_names, producer, record_module, zeroed
from .recut import recut
from .registry import rule

__all__ = ["addmm", "conv", "embedding", "linear", "recurrent"]


@rule(torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d, torch.conv_transpose2d,
      torch.conv_transpose3d)
def conv(ctx: Context, node: Node) -> None:
    """conv and conv_transpose. A conv's weight is (out, in / groups, *k); a transposed conv's is (in,
    out / groups, *k): its dim 0 reads the input, dim 1 makes the output (a per-group local index)."""
    transposed = "transpose" in node.name
    x, w, b = node.arg(0, "input"), node.arg(1, "weight"), node.arg(2, "bias")
    groups = node.arg(6, "groups", 1)
    out = node.outputs[0]
    lx = ctx.of(x).dims.get(1)
    ctx.reads_fixed(x, 1)
    cin, cout = x.shape[1], out.shape[1]
    weight = _weight(ctx, node, w, x, cout)
    if weight is None:
        return
    module = module_of(weight.name)
    what = f"{node.name} {module}"
    if groups == 1:
        ctx.consume(x, lx, what)
        label = _layer(ctx, what, module, weight, w, b, lx, transposed=transposed)
    elif groups == cin and cout % cin == 0 and (cout == cin or not transposed) and lx:
        label = _depthwise(ctx, node, module, weight, b, lx, cout // cin)
    else:
        # grouped: group j's weights read the j-th division of the input channels and make the j-th division
        # of the output's, so both spaces prune within `groups` equal divisions; the local index (a conv's
        # dim 1, a transposed conv's dim 1 too) is cut at the same positions in every division
        if lx and (len(lx) != 1 or lx[0].block != 1):
            lock_label(lx, f"{module} is a grouped conv (groups={groups}) over a concatenated or reshaped "
                           f"channel dim: its channels go in whole groups")
            lx = None
        ctx.consume(x, lx, what)
        label = _layer(ctx, what, module, weight, w, b, lx, groups, transposed)
    label = _bias(ctx, node, b, label, module)
    positions = _positions(ctx, node, x, w, transposed, what)
    ctx.set(out, {1: label, **positions})
    ctx.nonzero[out.id] = _made_nonzero(weight, b, module, label)
    if positions:  # each output position is a weighted sum of the same input position: zero there, plus a bias
        ctx.nonzero[out.id].update(ctx.inherited([x], out) if b is None else  # (kill_channels leaves it: not theirs)
                                   all_nonzero(positions.values(), f"the bias of {module}"))


def _positions(ctx: Context, node: Node, x: Value, w: Value, transposed: bool, what: str) -> dict:
    """Labels of channels laid along a conv's spatial dims (timm CoaT's aggregate: a Conv1d over 3 class
    tokens whose length is the embedding): a 1-wide kernel at stride 1 without padding keeps each position,
    so they carry over; any other kernel slides across them, so they are locked."""
    spatial = {d: lab for d, lab in ctx.of(x).dims.items() if d >= 2}
    if not spatial:
        return {}
    n = x.ndim - 2
    stride, padding = node.arg(3, "stride", 1), node.arg(4, "padding", 0)
    extra = node.arg(5, "output_padding", 0) if transposed else 0
    ones = lambda v, k: v == k if isinstance(v, int) else list(v) == [k] * n  # noqa: E731
    if ones(stride, 1) and ones(padding, 0) and ones(extra, 0) and all(k == 1 for k in w.shape[2:]):
        return spatial
    for lab in spatial.values():
        lock_label(lab, f"{what} slides its kernel along these channels (they lie on a spatial dim)")
    return {}


def _bias(ctx: Context, node: Node, b, label: Label, module: str) -> Label:
    """A bias computed in forward: the concatenation of k parameters of one length (BEiT's `cat((q_bias,
    k_bias, v_bias))`) makes the layer's channels k equal parts, channel c of each cut together (`recut`), each
    part's bias a producer; anything else is not followed and locks the layer's channels. Returns the output's
    label."""
    if not isinstance(b, Value) or b.param:
        return label
    parts = _cat_of_params(b)
    if parts is None or label[0].space.root().locked is not None or len(label) != 1 or b.shape[0] != label[0].length:
        lock_label(label, f"the bias of {module} is computed in forward (not a parameter): it is not followed")
        return label
    labels = recut(ctx, node, label[0], [label[0].length // len(parts)] * len(parts), equal=True)
    labels[0][0].space.members += [producer(p) for p in parts]
    return tuple(seg for lab in labels for seg in lab)


def _cat_of_params(b: Value) -> Optional[list[str]]:
    """The parameters `b` concatenates, all 1-d of one length, or None."""
    cat = b.producer
    if cat is None or cat.name != "cat" or (cat.arg(1, "dim", 0) not in (0, -1)):
        return None
    parts = cat.tensor_inputs()
    if len(parts) < 2 or any(not p.param or p.shape != parts[0].shape or len(p.shape) != 1 for p in parts):
        return None
    return [p.param for p in parts]


def _weight(ctx: Context, node: Node, w: Value, x: Value, channels: int) -> Optional[Weight]:
    """The parameter behind a layer's weight; None when it cannot be followed: the input's channels are then
    locked and the output gets a locked space (so the layer shows in the graph, with the reason)."""
    source = layer_weight(ctx, w)
    if isinstance(source, Weight):
        return source
    names = params_in(w)
    module = module_of(names[0]) if names else "a layer"
    reason = f"{node.name} in {module} reads a weight computed in forward that cannot be followed: {source}"
    ctx.lock_all([x], reason)
    space = ctx.new_space(channels, f"{node.name} {module}", locked=reason)
    space.modules.add(module)
    out = node.outputs[0]
    ctx.set(out, {out.ndim - 1 if node.func is F.linear else 1: (Segment(space, channels),)})
    return None


def _depthwise(ctx: Context, node: Node, module: str, weight: Weight, b, lx: Label, multiplier: int) -> Label:
    """Output channels c * multiplier ... + multiplier read input channel c only (one input channel a group),
    so they are the input's channels, each `multiplier` times as many positions wide (an input channel of
    several positions, from an earlier multiplier, keeps them all): pruning an input channel removes its
    groups. `groups` read from a module attribute (timm's BlurPool2d: groups=self.channels) is updated with the
    channels. Returns the output's label."""
    out = tuple(Segment(seg.space, seg.length, seg.block * multiplier) for seg in lx)
    for name in (weight.name, *param_names(b)):
        add_members(out, name, 0, "producer")
    for name, dim in weight.per_row:
        add_members(out, name, dim, "producer")
    record_module(lx, module)
    ctx.groups_follow.add(module)
    if module in ctx.ignored:
        lock_label(lx, f"{module} is in ignored_layers")
    groups = node.arg(6, "groups", 1)
    if isinstance(groups, Tracked) and groups.pure:
        for owner, attribute, synced in attribute_reads(groups):
            if not synced:  # a width attribute surgery sets from the tensors already needs no binding
                ctx.sized_by.append((lx, owner, attribute, lx[0].block))
    return out


def _made_nonzero(weight: Weight, b, module: str, label: Label) -> dict:
    """Dead channels come out of a layer as zeros (their weight rows are zero) unless a bias shifts them or
    the weight is computed (a standardisation may not map zero rows to zero)."""
    if weight.computed:
        return all_nonzero([label], f"the weight of {module}, computed in forward")
    return {} if zeroed(b) else all_nonzero([label], f"the bias of {module}")


def _layer(ctx: Context, origin: str, module: str, weight: Weight, w: Value, b, input_label: Optional[Label],
           groups: int = 1, transposed: bool = False) -> Label:
    """A conv or Linear: its weight's dim 1 reads the input's channels; dim 0 (and the bias) make a new
    space of output channels (transposed: the other way round). Returns the output's channel label. A
    grouped conv (`groups` > 1) divides both spaces into `groups` divisions (see Space.divide); its weight's
    dim 1 is a per-group local index. A computed weight's columns are standardised over: inexact."""
    made, read = (1, 0) if transposed else (0, 1)
    why = f"{module}, a grouped conv (groups={groups}),"
    if input_label:
        add_members(input_label, weight.name, read, "consumer", 1 if transposed else groups)
        record_module(input_label, module)
        if groups > 1:
            input_label[0].space.divide(groups, not transposed, why)
        if weight.computed:
            for seg in input_label:
                seg.space.mark_inexact(f"the weight of {module} is computed in forward over each filter's inputs")
                seg.space.mark_reduced(f"the weight of {module} is computed in forward over each filter's inputs")
    else:
        ctx.fixed.add((weight.name, read))
    channels = w.shape[made] * (groups if transposed else 1)
    space = ctx.new_space(channels, origin)
    if groups > 1:
        space.divide(groups, transposed, why)
    space.modules.add(module)
    space.members.append(Member(weight.name, made, 0, 1, "producer", groups if transposed else 1))
    space.members += [Member(name, dim, 0, 1, "producer") for name, dim in weight.per_row]
    space.members += [producer(name) for name in param_names(b)]
    if module in ctx.ignored:
        space.lock(f"{module} is in ignored_layers")
    return (Segment(space, channels),)


@rule(F.linear)
def linear(ctx: Context, node: Node) -> None:
    _linear(ctx, node, node.arg(0, "input"), node.arg(1, "weight"), node.arg(2, "bias"))


@rule("addmm")
def addmm(ctx: Context, node: Node) -> None:
    """torch.addmm(bias, x, weight) with parameters for weight and bias: a Linear whose weight is stored
    (in, out), Hugging Face's Conv1D (GPT-2, ImageGPT). Anything else has no rule (locks)."""
    b, x, w = node.arg(0, "input"), node.arg(1, "mat1"), node.arg(2, "mat2")
    if not (isinstance(x, Value) and x.ndim == 2 and isinstance(w, Value) and w.param and isinstance(b, Value)
            and b.param and b.ndim == 1 and node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1):
        return generic(ctx, node)
    _linear(ctx, node, x, w, b, transposed=True)


def _linear(ctx: Context, node: Node, x: Value, w: Value, b, transposed: bool = False) -> None:
    """A Linear layer: weight (out, in), or (in, out) where `transposed`."""
    out = node.outputs[0]
    weight = _weight(ctx, node, w, x, w.shape[1 if transposed else 0])
    if weight is None:
        return
    module = module_of(weight.name)
    lx = ctx.of(x).dims.get(x.ndim - 1)
    ctx.reads_fixed(x, x.ndim - 1)
    ctx.consume(x, lx, f"{node.name} {module}")
    dims = {d: lab for d, lab in ctx.of(x).dims.items() if d < x.ndim - 1}  # rows: each gets W x + b
    label = _layer(ctx, f"{node.name} {module}", module, weight, w, b, lx, transposed=transposed)
    label = _bias(ctx, node, b, label, module)
    ctx.set(out, {**dims, out.ndim - 1: label})
    nonzero = ctx.inherited([x], out)
    if b is not None:
        nonzero.update(all_nonzero(dims.values(), f"the bias of {module}"))
    nonzero.update(_made_nonzero(weight, b, module, label))
    ctx.nonzero[out.id] = nonzero


@rule(F.embedding)
def embedding(ctx: Context, node: Node) -> None:
    """F.embedding (nn.Embedding): the output's last dim is a new space, made by the weight's dim 1 (its
    rows are picked by the indices, which hold no channels)."""
    idx, w = node.arg(0, "input"), node.arg(1, "weight")
    out = node.outputs[0]
    ctx.lock_all([idx], f"{node.name} reads them as indices")
    if w.param is None:
        ctx.set(out, {})
        return
    module = module_of(w.param)
    space = ctx.new_space(w.shape[1], f"embedding {module}")
    space.modules.add(module)
    space.members.append(producer(w.param, 1))
    if module in ctx.ignored:
        space.lock(f"{module} is in ignored_layers")
    ctx.fixed.add((w.param, 0))
    label = (Segment(space, w.shape[1]),)
    ctx.set(out, {out.ndim - 1: label})
    ctx.nonzero[out.id] = {}  # a dead channel's column is zero: every row picked is


_INPUT_WEIGHTS = ("weight_ih_l0", "weight_ih_l0_reverse")


@rule("lstm", "gru", "rnn_tanh", "rnn_relu")
def recurrent(ctx: Context, node: Node) -> None:
    """nn.LSTM, nn.GRU and nn.RNN (their ops take the weights as one list): the first layer's input weights
    (`weight_ih_l0`, and `_reverse`) read the input's last dim with their columns, so its channels are cut
    with those columns. The hidden state, every other weight and the outputs stay as they are; channels on
    another dim of the input (the sequence the layer runs along, the batch) are locked."""
    x = node.args[0]
    weights = next((a for a in node.args[1:] if isinstance(a, (list, tuple)) and len(a) > 1  # not (h, c)
                    and all(isinstance(v, Value) and v.param for v in a)), None)
    if weights is None:
        return generic(ctx, node)
    inputs = [w for w in weights if w.param.rsplit(".", 1)[-1] in _INPUT_WEIGHTS]
    module = module_of(weights[0].param)
    what = f"{node.name} {module}"
    last = x.ndim - 1
    labels = ctx.of(x).dims
    hidden = [v for v in node.tensor_inputs() if v is not x and not v.param]
    ctx.lock_all(hidden, f"{what} reads them as its hidden state")
    for d, label in labels.items():
        if d != last:
            lock_label(label, f"{what} runs along these channels (dim {d} of its input)")
    ctx.reads_fixed(x, last)
    ctx.fixed.update((w.param, d) for w in weights for d in range(w.ndim) if not (w in inputs and d == 1))
    lx = labels.get(last)
    if lx:
        ctx.consume(x, lx, what)
        for w in inputs:
            add_members(lx, w.param, 1, "consumer")
        record_module(lx, module)
        if module in ctx.ignored:
            lock_label(lx, f"{module} is in ignored_layers")
    for out in node.outputs:
        ctx.set(out, {})
