"""Attention: modules recorded as one op (their heads form a group), matmul and scaled_dot_product_attention."""

from __future__ import annotations

import torch.nn.functional as F

from ...nn.window_attention import shifted_window_attention, window_attention_args
from ..ir import Node, Value
from ..meta import attention_args
from ..spaces import Label, Member, Space, add_members, lock_label, union, unify
from ..taxonomy import MATMULS
from ..tensors import child, module_of
from .context import Context, fixed_outputs, generic, mix, param_names, producer
from .registry import rule

__all__ = ["attention", "einsum", "matmul", "scaled_dot_product_attention", "window_attention"]


@rule(F.multi_head_attention_forward)
def attention(ctx: Context, node: Node) -> None:
    """F.multi_head_attention_forward (nn.MultiheadAttention): its heads form a group.

    Head h is the block of head_dim rows h*hd... in each of the q, k and v parts of in_proj_weight
    (and in_proj_bias), and the same block of columns of out_proj.weight. The embedding dims of the
    inputs stay fixed: the module ties them to embed_dim.
    """
    a = attention_args(node.args, node.kwargs)
    ctx.lock_all([a["query"], a["key"], a["value"]], "nn.MultiheadAttention ties its embedding size to its inputs")
    fixed_outputs(ctx, node)
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


@rule(shifted_window_attention)
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
    fixed_outputs(ctx, node)
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
    for name in param_names(w_in, b_in):
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
        space.add(producer(name, pd))
        return space
    lock_label(label, f"{what} is laid out along its heads in a way the graph cannot follow")
    space.lock(f"{what} is computed in a way the graph cannot follow")
    return space


def _batch_dims(ctx: Context, node: Node, operands: list, out: Value, what: str) -> dict:
    """Labels of the broadcast batch dims (all but the last two) of a matmul-like op's output: the
    operands' labels there are joined, a parameter's dim there (a relative position bias per head) is cut
    with them, and a fixed size meeting them locks them."""
    dims = {}
    for d in range(out.ndim - 2):
        labels, params, fixed = [], [], False
        for v in operands:
            od = d - (out.ndim - v.ndim)
            if od < 0 or (v.shape[od] == 1 and out.shape[d] != 1):
                continue
            if od in ctx.of(v).dims:
                labels.append(ctx.of(v).dims[od])
            elif od in ctx.of(v).params:
                params.append(ctx.of(v).params[od])
            else:
                fixed = fixed or v.shape[od] > 1
        if labels:
            label = unify(labels, f"{what} pairs channels laid out differently")
            if fixed:
                lock_label(label, f"{what} pairs these channels with fixed ones")
            for name, pd in params:
                add_members(label, name, pd, "producer")
            dims[d] = label
        else:
            ctx.fixed.update(params)
    return dims


def _zero_where(ctx: Context, label: Label, sources: list) -> bool:
    """Whether the dead channels of `label` are exact zeros in one of `sources` that carries them (so a
    product with it is zero there)."""
    roots = {seg.space.root() for seg in label}
    for v in sources:
        carried = {seg.space.root() for lab in ctx.of(v).dims.values() for seg in lab}
        if roots <= carried and all(ctx.dead_nonzero(v, seg) is None for seg in label):
            return True
    return False


@rule(*(MATMULS - {"einsum"}))
def matmul(ctx: Context, node: Node) -> None:
    """a @ b, torch.matmul, bmm (both operands at least 2-d): batch dims broadcast and are joined, a's rows
    and b's columns keep their labels, and the contracted dims (a's last, b's second to last) are joined:
    a channel dropped from both drops a term of the sum (exact where either side's dead entries are zero).
    A parameter on the contracted dim reads the channels like a weight."""
    a, b, out = node.arg(0, "input"), node.arg(1, "other", node.arg(1, "mat2")), node.outputs[0]
    if not (isinstance(a, Value) and isinstance(b, Value)) or a.ndim < 2 or b.ndim < 2:
        return generic(ctx, node)
    la, lb = ctx.of(a), ctx.of(b)
    dims = _batch_dims(ctx, node, [a, b], out, node.name)
    if a.ndim - 2 in la.dims:
        dims[out.ndim - 2] = la.dims[a.ndim - 2]
    if b.ndim - 1 in lb.dims:
        dims[out.ndim - 1] = lb.dims[b.ndim - 1]
    ka, kb = la.dims.get(a.ndim - 1), lb.dims.get(b.ndim - 2)
    if ka and kb:
        unify([ka, kb], f"{node.name} contracts channels laid out differently")
        if not any(_zero_where(ctx, ka, [v]) for v in (a, b)):
            mix(ka, f"{node.name} sums products of these channels, both non-zero where dead")
    for label, other, dim in ((ka, b, b.ndim - 2), (kb, a, a.ndim - 1)):
        if label and not (ka and kb):
            param = ctx.of(other).params.get(dim)
            if param is None:
                lock_label(label, f"{node.name} contracts these channels with fixed ones")
            else:
                ctx.consume(a if other is b else b, label, node.name)
                add_members(label, param[0], param[1], "consumer")
    # a parameter's rows (of a) or columns (of b) are the output's: cut with whatever they meet later (Gemma4's
    # one-hot @ position table); its other dims stay as they are
    params = {out.ndim - 2: la.params.get(a.ndim - 2), out.ndim - 1: lb.params.get(b.ndim - 1)}
    params = {d: p for d, p in params.items() if p is not None and d not in dims}
    for v, lab in ((a, la), (b, lb)):
        ctx.fixed.update(p for d, p in lab.params.items() if d not in lab.dims and p not in params.values())
    ctx.set(out, dims, params)
    ctx.nonzero[out.id] = {seg.space: node.name for label in dims.values() for seg in label
                           if not _zero_where(ctx, label, [a, b])}


@rule("einsum")
def einsum(ctx: Context, node: Node) -> None:
    """torch.einsum with one letter a dim (no `...`): a letter kept in the output joins the operands' labels
    there (a fixed size meeting them locks them; a parameter's dim is cut with them), a letter contracted
    between operands joins them like matmul's inner dim (a parameter there reads them like a weight), a letter
    summed within one operand mixes its channels: locked."""
    equation, operands = node.args[0], node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = operands[0]
    if (not isinstance(equation, str) or "..." in equation or "->" not in equation or not operands
            or not all(isinstance(v, Value) for v in operands)):
        return generic(ctx, node)
    ins, out_letters = equation.replace(" ", "").split("->")
    ins, out = ins.split(","), node.outputs[0]
    if len(ins) != len(operands) or any(len(t) != v.ndim or len(set(t)) != len(t) for t, v in zip(ins, operands)):
        return generic(ctx, node)
    dims = {}
    for letter in dict.fromkeys("".join(ins)):
        where = [(v, t.index(letter)) for t, v in zip(ins, operands) if letter in t and v.shape[t.index(letter)] > 1]
        labels = [ctx.of(v).dims[d] for v, d in where if d in ctx.of(v).dims]
        params = [ctx.of(v).params[d] for v, d in where if d not in ctx.of(v).dims and d in ctx.of(v).params]
        fixed = any(d not in ctx.of(v).dims and d not in ctx.of(v).params for v, d in where)
        if not labels:
            ctx.fixed.update(params)
            continue
        label = unify(labels, f"einsum '{equation}' pairs channels laid out differently")
        kept = letter in out_letters
        if fixed:
            lock_label(label, f"einsum '{equation}' pairs these channels with fixed ones")
        elif not kept and len(where) < 2:
            lock_label(label, f"einsum '{equation}' sums over these channels")
        elif not kept and len(labels) > 1 and not any(_zero_where(ctx, label, [v]) for v, _ in where):
            mix(label, f"einsum '{equation}' sums products of these channels, both non-zero where dead")
        for name, pd in params:
            add_members(label, name, pd, "consumer" if not kept else "producer")
        if kept:
            dims[out_letters.index(letter)] = label
    ctx.set(out, dims)
    ctx.nonzero[out.id] = {seg.space: "einsum" for label in dims.values() for seg in label
                           if not _zero_where(ctx, label, list(operands))}


@rule(F.scaled_dot_product_attention)
def scaled_dot_product_attention(ctx: Context, node: Node) -> None:
    """F.scaled_dot_product_attention(q, k, v, attn_mask): the batch dims (heads among them) of q, k, v and the
    mask (added to the scores: a bias per head) are joined and kept; v's last dim keeps its label. q's and k's
    last dims (head dims) are contracted: joined, like matmul's, and seen by the default scale, 1/sqrt of their
    size: apply makes it explicit in the model's code where it can (`nn.rewritten`), else they are inexact.
    The sequence dims (the mask's last two) stay fixed. A dead head's output is zero where its v is."""
    q, k, v, mask = (node.arg(i, n) for i, n in enumerate(("query", "key", "value", "attn_mask")))
    out = node.outputs[0]
    if node.arg(7, "enable_gqa", False) or not all(isinstance(t, Value) for t in (q, k, v)):
        return generic(ctx, node)
    for t in (q, k, v):
        lock_label(ctx.of(t).dims.get(t.ndim - 2), "scaled_dot_product_attention reads this dim whole")
    kq, kk = ctx.of(q).dims.get(q.ndim - 1), ctx.of(k).dims.get(k.ndim - 1)
    if kq and kk:
        unify([kq, kk], f"{node.name} contracts channels laid out differently")
        default = node.arg(6, "scale") is None
        if default and node.site is not None:  # apply passes the dense model's scale
            ctx.rewrites.append((node, ("scale", q.shape[-1] ** -0.5)))
        if default and node.site is None:
            mix(kq, f"{node.name} scales by 1/sqrt(head_dim)")
        elif not any(_zero_where(ctx, kq, [t]) for t in (q, k)):
            mix(kq, f"{node.name} sums products of these channels, both non-zero where dead")
    else:
        lock_label(kq or kk, f"{node.name} pairs these channels with fixed ones")
    masks = [mask] if isinstance(mask, Value) else []
    for t in masks:
        for d in (-1, -2):
            lock_label(ctx.of(t).dims.get(t.ndim + d), "scaled_dot_product_attention's mask along the sequence")
    dims = _batch_dims(ctx, node, [q, k, v, *masks], out, node.name)
    if v.ndim - 1 in ctx.of(v).dims:
        dims[out.ndim - 1] = ctx.of(v).dims[v.ndim - 1]
    ctx.set(out, dims)
    ctx.nonzero[out.id] = {seg.space: node.name for label in dims.values() for seg in label
                           if not _zero_where(ctx, label, [v])}
