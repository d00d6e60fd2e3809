"""What every training-time schedule shares: the model it watches, epoch bookkeeping, pruning through
the all-or-nothing `commit` (decided on rank 0 and broadcast under torch.distributed), checkpoints.

The user's loop calls, per batch, `penalty()` (added to the loss) and `before_step()` (after
backward, before optimizer.step()), and at the end of every epoch `step(epoch, optimizer)`; `step`
returns True when the model's shapes changed, the cue to rebuild a DistributedDataParallel wrapper
around it. Epochs count from 0, as `for epoch in range(E)` gives them: `step(0)` ends the first epoch.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..flops import profile, profile_trace
from ..graph import DependencyGraph, check_heads, first_change, map_tensors, named_tensors, shapes_of
from ..plan import Plan
from ..pruning import Decision, decide
from ..surgery import apply

__all__ = ["Schedule", "ScheduleReport", "rewrap", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def rewrap(ddp: nn.parallel.DistributedDataParallel, **kwargs) -> nn.parallel.DistributedDataParallel:
    """A new DistributedDataParallel around `ddp.module` after pruning changed its shapes (same device
    and bucket settings unless given in kwargs); do not use `ddp` after."""
    if not isinstance(ddp, nn.parallel.DistributedDataParallel):
        raise TypeError(f"rewrap: expected a DistributedDataParallel, got {type(ddp).__name__}")
    settings = {"device_ids": ddp.device_ids, "output_device": ddp.output_device, "dim": ddp.dim,
                "broadcast_buffers": ddp.broadcast_buffers, "find_unused_parameters": ddp.find_unused_parameters,
                "gradient_as_bucket_view": ddp.gradient_as_bucket_view, "static_graph": ddp.static_graph,
                "process_group": ddp.process_group, **kwargs}
    return nn.parallel.DistributedDataParallel(ddp.module, **settings)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class ScheduleReport:
    """What a schedule did: the target the user asked for, MACs and params of the original model and
    now, every prunable group's width (origin, before, after), one row per event (epoch, MACs kept of
    the original, what was decided)."""

    name: str
    target: str
    macs_before: int
    macs_after: int
    params_after: int
    widths: list[tuple[str, int, int]] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.name} ({self.target}): MACs {self.macs_before / 1e6:.2f} M -> {self.macs_after / 1e6:.2f} M "
                 f"({self.macs_after / max(self.macs_before, 1):.1%} of the original kept), "
                 f"params {self.params_after / 1e6:.3f} M"]
        lines += ["  epoch {epoch:>3}: MACs kept {macs_kept:.1%}  {what}".format(**e) for e in self.events]
        lines += ["  widths (group: before -> after):"]
        lines += [f"    {origin[:60]:<60} {b:>5} -> {a:<5}" for origin, b, a in self.widths]
        return "\n".join(lines)


class Schedule:
    """Base of the training-time pruners. Subclasses implement `_step(epoch, optimizer) -> bool`. Every
    schedule takes `prune_embedding`, `heads` and `keep_outputs` as keywords, for each graph it builds (see
    DependencyGraph)."""

    name = "schedule"
    target = ""  # what the user asked for, in words (set by each schedule)

    def __init__(self, model: nn.Module, example_inputs: Any, ignored_layers=(), *, prune_embedding: bool = False,
                 heads: str = "dims", keep_outputs: Any = "all"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.name}: model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(prune_embedding, bool):
            raise TypeError(f"{self.name}: prune_embedding must be True or False, got {prune_embedding!r}")
        check_heads(heads, self.name)
        self.model = unwrap(model)
        self.example_inputs = example_inputs
        self.ignored_layers = list(ignored_layers)
        # as DependencyGraph takes them: a transformer's embedding width, the outputs that keep their shape
        self.graph_options = {"prune_embedding": prune_embedding, "heads": heads, "keep_outputs": keep_outputs}
        graph = self._graph()  # one trace for the MACs and the widths
        self.macs_before = profile_trace(graph.trace, graph.model).macs
        self.widths_before = [(g.origin, g.channels) for g in graph.prunable_groups]
        self.last_epoch: Optional[int] = None
        self.events: list[dict] = []
        self.done = False
        self._shapes = self._snapshot()

    # ---- hooks for the training loop ----

    def penalty(self) -> torch.Tensor:
        """A term to add to the loss (zero unless the method has one)."""
        p = next(self.model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")

    def before_step(self) -> None:
        """Called after backward(), before optimizer.step()."""

    def step(self, epoch: int, optimizer: Optional[torch.optim.Optimizer] = None) -> bool:
        """End of `epoch` (0-based, increasing from call to call): prune, reconstruct or score as the
        schedule says. True when shapes changed."""
        epoch = self._epoch(epoch)
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise ValueError(f"{self.name}.step: epoch {epoch} comes after epoch {self.last_epoch}; epochs must increase")
        changed = first_change(self._snapshot(), self._shapes)
        if changed is not None:
            raise ValueError(f"{self.name}.step: the model changed outside the pruner ({changed}); build a new pruner "
                             "for the changed model")
        changed = bool(self._step(epoch, optimizer))
        self.last_epoch = epoch
        self._shapes = self._snapshot()
        return changed

    def _step(self, epoch: int, optimizer) -> bool:
        raise NotImplementedError

    def finalize(self) -> ScheduleReport:
        """End of training: whatever the method does last; returns the report."""
        return self.report()

    # ---- shared machinery ----

    def _epoch(self, epoch: Any) -> int:
        """`epoch` as an int, or ValueError: epochs are ints counted from 0."""
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"{self.name}: epoch must be an int >= 0 (epochs count from 0), got {epoch!r}")
        return int(epoch)

    def _graph(self) -> DependencyGraph:
        return DependencyGraph(self.model, self.example_inputs, self.ignored_layers, **self.graph_options)

    def _snapshot(self) -> dict[str, tuple]:
        return shapes_of(named_tensors(self.model))

    def macs_kept(self) -> float:
        return profile(self.model, self.example_inputs).macs / max(self.macs_before, 1)

    def _decide(self, method: str, **options) -> Decision:
        return decide(self.model, self.example_inputs, method, ignored_layers=self.ignored_layers, **self.graph_options,
                      **options)

    def _on_rank0(self, make: Callable[[], Any]) -> Any:
        """make() on rank 0 (here when not distributed), its result sent to every rank (tensors via the CPU)."""
        if not distributed():
            return make()
        payload = [map_tensors(lambda v: v.cpu(), make()) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def _apply_plan(self, epoch: int, optimizer, make: Callable[[], tuple[Plan, str, bool]]) -> bool:
        """`make()` (a Plan of the current model, description, whether pruning is over after it) on rank 0,
        applied all or nothing on every rank. True when it changed the model."""
        plan, what, last = self._shared(make)
        self.done = self.done or last
        if not plan:
            return False
        apply(plan, optimizer)
        self._record(epoch, what)
        return True

    def _shared(self, make: Callable[[], tuple]) -> tuple:
        """`make()` (a Plan of the current model, then anything else) on rank 0; under torch.distributed
        the plan travels as Plan.to_dict() and its writes, and is rebuilt on each rank's own graph."""
        if not distributed():
            return make()

        def portable():
            plan, *rest = make()
            return plan.to_dict(), plan.writes, *rest
        plan_dict, writes, *rest = self._on_rank0(portable)
        graph = self._graph()
        return Plan.from_dict(graph, plan_dict, writes), *rest

    def _record(self, epoch: int, what: str, **extra) -> None:
        self.events.append({"epoch": epoch, "macs_kept": self.macs_kept(), "what": what, **extra})


    def report(self) -> ScheduleReport:
        graph = self._graph()
        p = profile_trace(graph.trace, graph.model)
        now = {g.origin: g.channels for g in graph.groups}  # a group down to one channel is no longer prunable
        widths = [(origin, before, now[origin]) for origin, before in self.widths_before]
        return ScheduleReport(self.name, self.target, self.macs_before, p.macs, p.params, widths, list(self.events))

    def state_dict(self) -> dict:
        """The schedule's progress (not the model's weights: save those with ppf.save_pruned)."""
        return {"last_epoch": self.last_epoch, "events": list(self.events), "done": self.done,
                "macs_before": self.macs_before, "widths_before": list(self.widths_before)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`, on the model as saved with it (ppf.load_pruned rebuilds it)."""
        missing = {"last_epoch", "events", "done", "macs_before", "widths_before"} - set(state)
        if missing:
            raise ValueError(f"{self.name}.load_state_dict: missing {', '.join(sorted(missing))}")
        self.last_epoch, self.events, self.done = state["last_epoch"], list(state["events"]), state["done"]
        self.macs_before, self.widths_before = state["macs_before"], list(state["widths_before"])
        self._shapes = self._snapshot()
