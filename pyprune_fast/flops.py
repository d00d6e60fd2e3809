"""Multiply-accumulate and parameter counts of a model, from one recorded forward pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .graph import Node, Trace, module_of, record, taxonomy
from .graph.rules.computed import Weight, weight_source
from .nn.window_attention import shifted_window_attention, window_attention_args

__all__ = ["MacsModel", "Profile", "profile", "profile_trace", "param_count"]

@dataclass
class Profile:
    """macs: multiply-accumulates of one forward pass on the example inputs; params: parameter count;
    rows: (module or op, op, macs) for every op that does multiply-accumulates."""

    macs: int
    params: int
    rows: list[tuple[str, str, int]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'op':<30} {'MMACs':>10}"]
        lines += [f"{name[:48]:<48} {op[:30]:<30} {macs / 1e6:>10.2f}" for name, op, macs in self.rows]
        lines.append(f"total: {self.macs / 1e9:.3f} GMACs, {self.params / 1e6:.3f} M params")
        return "\n".join(lines)


def _macs(node: Node) -> tuple[str, int, Optional[str]]:
    """(module or op, multiply-accumulates, the weight they scale with: a parameter name or None). Arguments
    are read by position or keyword (timm calls `F.linear(x, weight=..., bias=...)`)."""
    name = node.name
    out = node.outputs[0] if node.outputs else None
    if name in taxonomy.CONVS or node.func is F.linear:
        w = node.arg(1, "weight")  # every output element: one MAC per weight element of its row
        return _weighted(name, w, math.prod(out.shape) * math.prod(w.shape[1:]))
    if name == "addmm":  # x @ w + b, w (in, out): Hugging Face's Conv1D
        return _weighted(name, node.arg(2, "mat2"), math.prod(out.shape) * node.arg(1, "mat1").shape[-1])
    if name in taxonomy.CONV_TRANSPOSES:
        x, w = node.arg(0, "input"), node.arg(1, "weight")  # every input element: one MAC per weight element of its row
        return _weighted(name, w, math.prod(x.shape) * math.prod(w.shape[1:]))
    if node.func is F.multi_head_attention_forward:
        q, k = node.arg(0, "query"), node.arg(1, "key")  # (L, N, E), (S, N, E)
        (L, N, E), S = q.shape, k.shape[0]
        w = node.arg(5, "in_proj_weight")  # every term scales with its rows (heads) and columns (embedding)
        return module_of(w.param) or name, N * (L * 3 * E * E + 2 * L * S * E + L * E * E), w.param
    if node.func is shifted_window_attention:
        a = window_attention_args(node.args, node.kwargs)
        (B, H, W, C), (wh, ww) = a["input"].shape, a["window_size"]
        tokens = B * -(-H // wh) * wh * -(-W // ww) * ww  # after padding to whole windows
        inner = a["qkv_weight"].shape[0] // 3  # qkv, q @ k.T and attn @ v (N = wh * ww each), proj
        return (module_of(module_of(a["proj_weight"].param)) or name, tokens * inner * (4 * C + 2 * wh * ww),
                a["qkv_weight"].param)  # scales with the heads kept (qkv rows)
    x = node.arg(0, "input")  # einsum's is its equation: not counted
    if name in taxonomy.MATMULS and out is not None and len(node.tensor_inputs()) >= 2 and hasattr(x, "shape"):
        return name, math.prod(out.shape) * x.shape[-1], None
    if name == "scaled_dot_product_attention":
        q, k = node.arg(0, "query"), node.arg(1, "key")
        return name, 2 * math.prod(q.shape) * k.shape[-2], None
    return name, 0, None


def _weighted(name: str, w, macs: int) -> tuple[str, int, Optional[str]]:
    """A layer's row: its MACs scale with its weight, or with the parameter a computed weight is made from."""
    source = weight_source(w)
    param = source.name if isinstance(source, Weight) else None
    return module_of(param) or name, macs, param


def _proportional(node: Node) -> bool:
    """Whether the op's MACs are its weight's element count times a size pruning does not change."""
    return (node.name in taxonomy.CONVS or node.name in taxonomy.CONV_TRANSPOSES or node.func is F.linear
            or node.name == "addmm")


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile_trace(trace: Trace, model: nn.Module) -> Profile:
    rows = []
    for node in trace.nodes:
        where, macs, _ = _macs(node)
        if macs:
            rows.append((where, node.name, int(macs)))
    return Profile(sum(r[2] for r in rows), param_count(model), rows)


def profile(model: nn.Module, example_inputs: Any) -> Profile:
    """MACs (multiply-accumulates) and parameters of `model` on `example_inputs`, with per-layer rows."""
    return profile_trace(record(model, example_inputs), model)


class MacsModel:
    """MACs of the model as a function of the widths of some groups, without running it.

    A conv's or Linear's MACs are proportional to its weight's element count, which shrinks along
    each weight dim by the channels removed there (times the member's block). Ops without a weight
    (activation products in attention) are counted as they are. `exact`: every op with MACs is a conv
    or a Linear, so the model gives the MACs a recount of the pruned model would (CNNs); attention
    terms scale with one weight dim only, so there it is an estimate.
    """

    def __init__(self, graph, groups: list):
        weighted: dict[str, int] = {}
        self.fixed = 0
        self.exact = True
        for node in graph.trace.nodes:
            _, macs, weight = _macs(node)
            if weight is not None:
                weighted[weight] = weighted.get(weight, 0) + macs
            else:
                self.fixed += macs
            self.exact &= not macs or _proportional(node)
        names = list(weighted)
        index = {n: i for i, n in enumerate(names)}
        rows: dict[tuple[str, int], int] = {}
        entries = []  # (row, group, block)
        for gi, g in enumerate(groups):
            for m in g.members:
                if m.name in index:
                    r = rows.setdefault((m.name, m.dim), len(rows))
                    entries.append((r, gi, m.block / m.divisions))  # a per-group local index: see Member
        self.total = self.fixed + sum(weighted.values())
        self.macs = torch.tensor([float(weighted[n]) for n in names], dtype=torch.float64)
        self.row_size = torch.tensor([float(graph.shapes[n][d]) for n, d in rows], dtype=torch.float64)
        self.row_weight = torch.tensor([index[n] for n, _ in rows], dtype=torch.long)
        self.blocks = torch.zeros(len(rows), len(groups), dtype=torch.float64)
        for r, gi, block in entries:
            self.blocks[r, gi] += block
        self.channels = torch.tensor([float(g.channels) for g in groups], dtype=torch.float64)

    def __call__(self, widths: torch.Tensor) -> float:
        """MACs when group i keeps widths[i] channels."""
        kept = self.row_size - self.blocks @ (self.channels - widths.double())
        log_scale = torch.zeros(len(self.macs), dtype=torch.float64).index_add_(0, self.row_weight, (kept / self.row_size).log())
        scale = log_scale.exp()  # the product of a weight's per-dim fractions (every dim keeps at least one)
        return float(self.fixed + (self.macs * scale).sum())
