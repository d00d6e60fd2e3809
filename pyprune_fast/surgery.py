"""Applies a Plan to the model: every coupled tensor at once, or none.

Three phases. *Check*: the graph still matches the model. *Build*: every new tensor (parameters,
their gradients, buffers, optimizer state) is computed with the extension's ops (`merge_channels_`
on copies, then batched `gather_channels`) while the model is untouched. *Swap*: each change has its
undo registered before it is made, and the pruned model must still run on the example inputs
(run_check.py). An exception anywhere, a KeyboardInterrupt at any line included, rolls every change
back: the undos, and a snapshot of every module and of grad mode taken before the build, which also
puts back what an interrupted step left half done.
Parameters keep their identity (their `.data` is replaced), so an optimizer that holds them goes on
working, with its per-parameter state sliced the same way. A tensor held by several modules (tied
weights or buffers) changes in every one of them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack, _pop_mode

from . import ops
from .graph import DependencyGraph, Modules, Trace, Unchanged, positions, tensor_slots
from .nn.caches import tensor_caches
from .nn.rewritten import install
from .nn.widths import kind_of
from .plan import Plan
from .run_check import check_inputs, check_runs

__all__ = ["CODE_SIZES", "apply", "owner", "sync_module_attributes"]


def _selections(plan: Plan, shapes: dict[str, tuple]) -> tuple[dict, dict]:
    """Per tensor: {dim: kept positions}, and the channel additions to run first."""
    on_dim: dict[tuple[str, int], list[tuple]] = defaultdict(list)  # (name, dim) -> [(member, entry)]
    merges: dict[str, list[tuple]] = defaultdict(list)
    for entry in plan.entries.values():
        if entry.keep.numel() == entry.group.channels and entry.assignment is None:
            continue  # removes nothing
        for m in entry.group.members:
            on_dim[(m.name, m.dim)].append((m, entry))
            if entry.assignment is not None and m.role == "consumer":
                merges[m.name].append((m, entry.group.channels, entry.assignment, entry.merge_keep))
    keep: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for (name, dim), found in on_dim.items():
        size = shapes[name][dim]
        m, entry = found[0]
        if len(found) == 1 and m.offset == 0 and entry.group.channels // m.divisions * m.block == size:
            keep[name][dim] = positions(_local(m, entry.keep, entry.group.channels), 0, m.block)  # one group spans the dim
            continue
        mask = torch.ones(size, dtype=torch.bool)
        for m, entry in found:
            removed = torch.ones(entry.group.channels, dtype=torch.bool)
            removed[entry.keep] = False
            mask[positions(_local(m, removed.nonzero().squeeze(1), entry.group.channels), m.offset, m.block)] = False
        keep[name][dim] = mask.nonzero().squeeze(1)
    return keep, merges


def _local(m, channels: torch.Tensor, total: int) -> torch.Tensor:
    """The channels whose positions `m`'s dim holds: all of them, or for a per-group local index (see Member)
    those of the first division, whose local positions every division shares (Plan checks that)."""
    return channels if m.divisions == 1 else channels[channels < total // m.divisions]


def _gather_all(tensors: dict, keep: dict) -> dict:
    """Gathers every tensor (by key) along each of its pruned dims ({key: {dim: kept positions}}), all
    tensors in one batched op call per round.

    A k x k conv pruned along dims 0 and 1 (between two pruned layers) is gathered in one pass, as rows
    of its (dim0 * dim1, k * k) view, so no half-pruned copy is made.
    """
    out = dict(tensors)
    todo: dict[str, list[tuple[int, torch.Tensor]]] = {}
    shapes: dict[str, list[int]] = {}  # final shape of tensors gathered through a merged view
    for n, t in tensors.items():
        dims = keep.get(n, {})
        if set(dims) == {0, 1} and math.prod(t.shape[2:]) >= 4:  # k x k convs; 1x1 are faster in two rounds
            i0, i1 = dims[0], dims[1]
            out[n] = t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
            todo[n] = [(0, (i0[:, None] * t.shape[1] + i1[None, :]).reshape(-1))]
            shapes[n] = [i0.numel(), i1.numel(), *t.shape[2:]]
        elif dims:
            todo[n] = sorted(dims.items())
    on_device: dict[tuple, torch.Tensor] = {}
    while todo:
        names = list(todo)
        xs, idxs, dims = [], [], []
        for n in names:
            dim, idx = todo[n].pop(0)
            key = (id(idx), out[n].device)
            if key not in on_device:
                on_device[key] = idx.to(out[n].device)
            xs.append(out[n])
            idxs.append(on_device[key])
            dims.append(dim)
        for n, new in zip(names, ops.gather_channels(xs, idxs, dims)):
            out[n] = new
        todo = {n: rest for n, rest in todo.items() if rest}
    for n, shape in shapes.items():
        out[n] = out[n].view(shape)
    return out


def _build(plan: Plan, optimizer: Optional[torch.optim.Optimizer], tensors: dict[str, torch.Tensor]):
    params = {n: t for n, t in tensors.items() if isinstance(t, nn.Parameter)}
    keep, merges = _selections(plan, plan.graph.shapes)
    names = sorted(set(keep) | set(merges) | set(plan.writes))

    sources = {}
    with torch.no_grad():
        for n in names:
            t = tensors[n].detach()
            if n in plan.writes:  # a reconstructed value, written before the channels go
                t = plan.writes[n].to(device=t.device, dtype=t.dtype)
            if n in merges:  # channel addition on a copy, before the gathers
                t = t.clone()
                for m, channels, assignment, merge_keep in merges[n]:
                    view = t.narrow(m.dim, m.offset, channels * m.block).unflatten(m.dim, (channels, m.block))
                    ops.merge_channels_(view, assignment.to(t.device), merge_keep.to(t.device), m.dim)
            sources[n] = t
        new_data = _gather_all(sources, keep)
        grads = {n: params[n].grad for n in names if n in params and params[n].grad is not None}
        new_grads = _gather_all(grads, keep)
        # optimizer state: every state tensor of its parameter's shape, all in one batched gather
        states = {n: optimizer.state[params[n]] for n in names if optimizer is not None and n in params
                  and optimizer.state.get(params[n])}
        sliced = {(n, k): v for n, st in states.items() for k, v in st.items()
                  if isinstance(v, torch.Tensor) and v.shape == params[n].shape}
        gathered = _gather_all(sliced, {key: keep.get(key[0], {}) for key in sliced})
        new_state = {n: {**st, **{k: gathered[(n, k)] for k in st if (n, k) in gathered}} for n, st in states.items()}
    return names, params, new_data, new_grads, new_state


def _put(p: nn.Parameter, data: torch.Tensor, grad: Optional[torch.Tensor]) -> None:
    """New data and gradient of `p` together (a gradient must always match its parameter's shape), from
    any state, one that an interrupted _put left included."""
    p.grad = None
    if data.shape != p.shape:
        # autograd caches the parameter's gradient accumulator, with its old shape, for as long as any
        # graph (a `loss` still in scope, a DDP reducer) holds it; setting data of another dtype is the
        # one way to drop that cache, so the next backward makes a fresh one.
        p.data = torch.empty(0, dtype=torch.float64 if data.dtype != torch.float64 else torch.float32,
                             device=data.device)
    p.data = data
    p.grad = grad


class _Swap:
    """Changes with their undo, for rollback() after a failure part-way. Each undo is registered before
    its change and puts the old state back from any point of it, so an exception raised anywhere (a
    KeyboardInterrupt included) leaves nothing half done."""

    def __init__(self):
        self.undo: list[Callable[[], None]] = []

    def setattr(self, obj, attr: str, value) -> None:
        old = getattr(obj, attr)
        self.undo.append(lambda: setattr(obj, attr, old))
        setattr(obj, attr, value)

    def setitem(self, d: dict, key, value) -> None:
        had, old = key in d, d.get(key)
        self.undo.append(lambda: d.__setitem__(key, old) if had else d.pop(key, None))
        d[key] = value

    def parameter(self, p: nn.Parameter, data: torch.Tensor, grad: Optional[torch.Tensor]) -> None:
        old = p.data, p.grad
        self.undo.append(lambda: _put(p, *old))
        _put(p, data, grad)

    def guard(self, modules: Modules, buffers: bool) -> None:
        """Puts back on rollback, as they are now, every module's class and attributes (its parameter,
        buffer and hook dicts, flags; buffer values changed in place if `buffers`: see graph.Unchanged),
        grad mode and torch's function mode stack, whatever the steps between leave half done: the run
        check's stand-ins, a `with` whose exit was interrupted (a recorder left on the stack)."""
        classes = [(m, type(m)) for _, m in modules]
        depth = len(_get_current_function_mode_stack())
        unchanged = Unchanged(modules, buffers)
        unchanged.__enter__()

        def restore():
            while len(_get_current_function_mode_stack()) > depth:
                _pop_mode()
            unchanged.restore()
            for m, cls in classes:
                if type(m) is not cls:
                    m.__class__ = cls

        self.undo.append(restore)

    def rollback(self) -> None:
        for fn in reversed(self.undo):
            fn()


def not_in_inference_mode(caller: str) -> None:
    """ValueError under torch.inference_mode(): the tensors pruning makes would be inference tensors,
    which autograd refuses, so the pruned model could never be trained."""
    if torch.is_inference_mode_enabled():
        raise ValueError(f"{caller}: called inside torch.inference_mode(), where the pruned parameters would be "
                         f"inference tensors that cannot be trained; call {caller} outside torch.inference_mode()")


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter or buffer `name`, and the attribute it sits under."""
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name), attr


def sync_module_attributes(module: nn.Module, name: str, graph: Optional[DependencyGraph] = None) -> dict:
    """The shape attributes of `module` (named `name` in `graph`'s model) that its (new) parameters imply, as
    {attr: value} (nn/widths.py)."""
    return kind_of(module).sync(module, graph is not None and graph.groups_follow_channels(name))


def _holders(modules: Modules, tensors: list[torch.Tensor]) -> dict[int, list[tuple[str, dict, str]]]:
    """id of each of `tensors` -> (module name, slot dict, key) of every module that holds it: a tied
    parameter or buffer sits in several modules, under its first name only in named_tensors."""
    wanted = {id(t) for t in tensors}
    out: dict[int, list[tuple[str, dict, str]]] = defaultdict(list)
    for name, slots, key, t in tensor_slots(modules):
        if id(t) in wanted:
            out[id(t)].append((name.rpartition(".")[0], slots, key))
    return out


CODE_SIZES = "_pyprune_fast_sizes"  # on a module: its int attributes that apply changed (save_pruned keeps them)


def _code_sizes(plan: Plan, modules: dict[str, nn.Module]) -> list[tuple[str, str, int]]:
    """(module, attribute, new value) for the int attributes (or elements of a tuple or list attribute:
    "splits[1]") of the model's code that size the channels of a planned group (Group.sizes): their value
    less the channels removed times the attribute's block, for every planned group it counts (RexNet's
    `in_channels` counts the two parts of a shortcut)."""
    removed: dict[tuple[str, str], int] = {}
    for entry in plan.entries.values():
        for module, attr, block in entry.group.sizes:
            removed[(module, attr)] = removed.get((module, attr), 0) + (entry.group.channels - len(entry.keep)) * block
    return [(module, attr, _element_get(modules[module], attr) - n) for (module, attr), n in removed.items()]


def _element(attr: str) -> tuple[str, Optional[int]]:
    """("splits", 1) for element 1 of a tuple or list attribute "splits[1]"; (attr, None) for a plain one."""
    name, bracket, index = attr.partition("[")
    return name, int(index.rstrip("]")) if bracket else None


def _element_get(module: nn.Module, attr: str) -> int:
    """The value of `attr` of `module`, or of its element i for "name[i]"."""
    name, i = _element(attr)
    return int(getattr(module, name) if i is None else getattr(module, name)[i])


def _element_set(module: nn.Module, attr: str, value: int) -> tuple[str, Any]:
    """(attribute, its new value) for setting `attr` of `module` to `value`; for element i of a tuple or list
    attribute ("splits[1]"), the whole attribute with that element replaced."""
    name, i = _element(attr)
    if i is None:
        return attr, value
    old = getattr(module, name)
    return name, type(old)(value if j == i else v for j, v in enumerate(old))


def _rewrites(plan: Plan) -> dict[tuple[str, str], tuple]:
    """(module, method) -> ((call position, size index), ...): the calls of the model's code to rewrite with
    -1 for the planned groups (Group.rewrites)."""
    out: dict[tuple[str, str], list] = {}
    for entry in plan.entries.values():
        for module, method, site, index in entry.group.rewrites:
            out.setdefault((module, method), []).append((site, index))
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def apply(plan: Plan, optimizer: Optional[torch.optim.Optimizer] = None) -> nn.Module:
    """Prune the model of `plan.graph` as `plan` says, all or nothing; returns the model.

    Slices the optimizer's per-parameter state (SGD momentum, Adam moments: every state tensor of
    the parameter's shape) and existing gradients the same way. A tensor held by several modules
    (tied parameters or buffers) changes in all of them, and each one's widths follow. Before
    returning, the pruned model is run on the graph's example inputs (on meta stand-ins where it was
    traced on meta; see check_runs); if it fails or its outputs change shape, everything is rolled
    back and ValueError names the op and module that failed. Any other exception, at any point (a
    KeyboardInterrupt included), rolls back too and propagates: model, gradients, optimizer state,
    grad mode and the graph are then as before, and the plan can be applied again. ValueError inside
    torch.inference_mode() (the new parameters could never be trained). The graph is stale afterwards.
    """
    return applied(plan, optimizer)[0]  # one line: no line of apply runs after the model has changed


def applied(plan: Plan, optimizer: Optional[torch.optim.Optimizer] = None,
            record_check: bool = False) -> tuple[nn.Module, Optional[Trace]]:
    """`apply`, returning the model and the Trace of its run check on meta (every op in it where `record_check`:
    the Trace `record` would give of the pruned model, so a recount needs no pass of its own), or None where
    the check was not on meta."""
    if not isinstance(plan, Plan):
        raise TypeError(f"apply: expected a Plan, got {type(plan).__name__}")
    not_in_inference_mode("apply")
    graph: DependencyGraph = plan.graph
    tensors = graph.check_current()
    check = check_inputs(graph)
    model = graph.model
    modules = list(model.named_modules())  # one walk, for every step below
    swap = _Swap()
    swap.guard(modules, buffers=check is not None and not check.meta)  # before anything, grad mode too
    try:
        names, params, new_data, new_grads, new_state = _build(plan, optimizer, tensors)
        holders = _holders(modules, [tensors[n] for n in names])
        synced: dict[str, str] = {}  # module -> its name in the graph's records (its weight's first name's)
        for n in names:
            t = tensors[n]
            if n in params:
                swap.parameter(t, new_data[n], new_grads.get(n))
                if n in new_state:
                    swap.setitem(optimizer.state, t, new_state[n])
            for module_name, slots, key in holders[id(t)]:
                if n not in params:
                    swap.setitem(slots, key, new_data[n])
                synced.setdefault(module_name, module_name)
                if key == "weight":
                    synced[module_name] = n.rpartition(".")[0]
        by_name = dict(modules)
        for module_name in sorted(synced):
            module = by_name[module_name]
            attrs = sync_module_attributes(module, synced[module_name], graph)
            for attr, value in attrs.items():
                swap.setattr(module, attr, value)
            for attr in tensor_caches(module):  # computed from the unpruned parameters
                swap.setitem(vars(module), attr, {})
        for module_name, attr, value in _code_sizes(plan, by_name):
            module = by_name[module_name]
            attr, value = _element_set(module, attr, value)
            swap.setattr(module, attr, value)
            changed = getattr(module, CODE_SIZES, ())
            swap.setitem(vars(module), CODE_SIZES, tuple(sorted({*changed, attr})))
        for (module_name, method), edits in _rewrites(plan).items():
            install(by_name[module_name], method, edits, swap.setitem)
        trace = check_runs(graph, check, record_check)
        swap.setattr(graph, "stale", True)
        return model, (trace if check is not None and check.meta else None)
    except BaseException:
        swap.rollback()
        raise
