"""Does a pruned model still run? One forward pass on the graph's example inputs.

`apply` calls `check_inputs` before it changes the model and `check_runs` after, before it returns:
the pruned model must run and give as many outputs (every tensor it returns, however nested) of the
shapes the graph recorded, or `apply` rolls back. Where the graph was traced on meta tensors the pass is
on meta tensors too (shapes only, no arithmetic; a few ms for ResNet-50), with the graph tracer's own
machinery (`graph.output_shapes`), and every size is compared. A real pass (a model that needs values:
a detector's boxes) may give sizes that depend on the data and so on the pruned weights (how many boxes
are kept): there every output's dim count and the sizes of its channel dims are compared. An output the
graph was told need not keep its shape (`keep_outputs`) may change the sizes of its channel dims.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from .graph import DependencyGraph, Trace, failed_op, has_hooks, leaves, model_inputs, output_trace

__all__ = ["check_inputs", "check_runs"]


class Check(NamedTuple):
    inputs: Any  # the graph's example inputs, as `graph.model_inputs` takes them
    meta: bool  # run on meta stand-ins of every tensor


def check_inputs(graph: DependencyGraph) -> Optional[Check]:
    """What check_runs runs the pruned model on: the graph's example inputs, as meta stand-ins where
    the graph was traced on meta without guessing a size (`Trace.guessed`) and the model has no forward hooks
    (hooks must not see meta tensors), for real otherwise. None where no check is possible: a real pass is
    needed, and the example inputs are meta tensors themselves."""
    meta = graph.trace.meta and not graph.trace.guessed and not has_hooks(list(graph.model.named_modules()))
    given = graph.example_inputs
    if not meta and any(isinstance(x, torch.Tensor) and x.is_meta for x in leaves(model_inputs(given))):
        return None
    return Check(given, meta)


def _failed_at(error: BaseException, modules) -> str:
    """'op in module' for the innermost recorded op and model module on the traceback of `error`."""
    names = {id(m): n for n, m in modules}
    module, tb = None, error.__traceback__
    while tb is not None:
        owner_ = tb.tb_frame.f_locals.get("self")
        if isinstance(owner_, nn.Module) and id(owner_) in names:
            module = names[id(owner_)] or type(owner_).__name__
        tb = tb.tb_next
    op = failed_op(error) or "?"
    return op if module is None else f"{op} in {module}"


_HINT = ("Does the model's code hard-code a width (a view or reshape to fixed sizes)? Keep the layers whose "
         "channels reach it out of the plan (ignored_layers).")


def _compared(graph: DependencyGraph, i: int, meta: bool) -> set[int]:
    """The dims of output i whose sizes must stay: on meta every dim but the channel dims of an output not
    kept; on a real pass (other sizes may depend on the data) the channel dims of a kept output."""
    channels, ndim = graph.output_channel_dims[i], len(graph.trace.outputs[i].shape)
    kept = i in graph.kept_outputs
    if meta:
        return set(range(ndim)) - (set() if kept else channels)
    return set(channels) if kept else set()


def _same_shapes(got: list[tuple], want: list[tuple], graph: DependencyGraph, meta: bool) -> bool:
    """Whether outputs of shapes `got` match those the graph recorded (`want`): as many, each with as many
    dims, and the same sizes in the dims `_compared` names."""
    if len(got) != len(want) or any(len(g) != len(w) for g, w in zip(got, want)):
        return False
    return all(g[d] == w[d] for i, (g, w) in enumerate(zip(got, want)) for d in _compared(graph, i, meta))


def check_runs(graph: DependencyGraph, check: Optional[Check], ops: bool = False) -> Optional[Trace]:
    """ValueError unless `graph.model` runs on `check`'s inputs (None: no check) and gives outputs of the
    shapes the graph recorded (on a real pass: their dim counts and channel sizes; outputs not kept may change
    their channel sizes; see the module). Returns the Trace of the pass (every op in it where `ops`:
    `graph.output_trace`), or None without a check."""
    if check is None:
        return None
    want = [v.shape for v in graph.trace.outputs]
    try:
        trace = output_trace(graph.model, check.inputs, check.meta, ops)
        got = [v.shape for v in trace.outputs]
    except Exception as e:
        raise ValueError(f"apply: the pruned model would not run ({_failed_at(e, graph.model.named_modules())}: "
                         f"{type(e).__name__}: {e}); nothing was changed. {_HINT}") from e
    if not _same_shapes(got, want, graph, check.meta):
        raise ValueError(f"apply: the pruned model's outputs would have shapes {got}, not {want} as before; nothing "
                         f"was changed. {_HINT}")
    return trace
