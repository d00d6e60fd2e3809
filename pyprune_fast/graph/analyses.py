"""Questions answered from a recorded Trace alone."""

from __future__ import annotations

from .ir import Node, Trace
from .taxonomy import CONVS, SIZE_READS

__all__ = ["batchnorm_after"]


def batchnorm_after(trace: Trace) -> dict[str, Node]:
    """Weight name of every conv / Linear whose output only a BatchNorm reads (on the channel dim, not
    a model output) -> that batch_norm node: the pairs a BatchNorm can be folded into."""
    readers: dict[int, list[Node]] = {}
    for node in trace.nodes:
        if node.name not in SIZE_READS:
            for v in node.tensor_inputs():
                readers.setdefault(v.id, []).append(node)
    outputs = {v.id for v in trace.outputs}
    fold: dict[str, Node] = {}
    keep: set[str] = set()  # a weight used twice folds only if every use does
    for node in trace.nodes:
        weight = node.arg(1, "weight") if node.name in CONVS or node.name == "linear" else None
        if getattr(weight, "param", None) is None:
            continue
        out = node.outputs[0]
        r = readers.get(out.id, [])
        if len(r) == 1 and r[0].name == "batch_norm" and r[0].arg(0, "input") is out and out.id not in outputs \
                and (node.name != "linear" or out.ndim == 2):
            fold[weight.param] = r[0]
        else:
            keep.add(weight.param)
    return {w: bn for w, bn in fold.items() if w not in keep}
