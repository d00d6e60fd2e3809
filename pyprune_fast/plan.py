"""A pruning plan: for some groups of a DependencyGraph, which channels go or which merge."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .graph import DependencyGraph, Group

__all__ = ["Plan"]

IndexLike = Union[torch.Tensor, Sequence[int]]
_ENTRY_KEYS = ("keep", "assignment", "merge_keep")  # what to_dict writes for every group


@dataclass(frozen=True)
class Entry:
    group: Group
    keep: torch.Tensor  # sorted kept channels (CPU int64)
    assignment: Optional[torch.Tensor] = None  # merges: cluster id of every channel
    merge_keep: Optional[torch.Tensor] = None  # merges: the kept channel of every cluster, by cluster id


def _indices(name: str, values: IndexLike) -> torch.Tensor:
    try:
        t = torch.as_tensor(values if isinstance(values, torch.Tensor) else list(values), dtype=None)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # strings, ragged lists, ints past int64
        raise TypeError(f"Plan.{name}: expected a 1-D list or tensor of ints, got {values!r:.80}: {e}") from None
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or t.dim() != 1:
        raise TypeError(f"Plan.{name}: expected a 1-D list or tensor of ints, got {t.dtype} with shape {tuple(t.shape)}")
    return t.to(torch.int64).cpu()


def _check_divisions(op: str, group: Group, kept: torch.Tensor) -> None:
    """ValueError unless `kept` (channels of `group`) keeps as many channels in each of the group's divisions
    and, for a uniform group, the same local positions in each (see Group.divisions)."""
    if group.divisions == 1:
        return
    n = group.channels // group.divisions
    per = torch.zeros(group.channels, dtype=torch.bool).index_fill_(0, kept, True).view(group.divisions, n)
    counts = per.sum(1)
    if bool((counts == counts[0]).all()) and not (group.uniform and not bool((per == per[0]).all())):
        return
    shown = ", ".join(map(str, counts.tolist()[:16])) + (", ..." if group.divisions > 16 else "")
    need = "the same local positions" if group.uniform else "as many channels"
    raise ValueError(f"Plan.{op}: group {group.index} ({group.origin}) is read in {group.divisions} equal divisions "
                     f"of {n} channels and must keep {need} in each; it keeps {shown} channels per division")


class Plan:
    """Channels to remove (`remove`) or to merge by channel addition (`merge`), group by group, and
    new values for tensors to write first (`write`: a method that reconstructs weights, as ASCP).

    Every call is checked at once; `apply(plan)` then changes the model all together or not at all.
    """

    def __init__(self, graph: DependencyGraph):
        if not isinstance(graph, DependencyGraph):
            raise TypeError(f"Plan: expected a DependencyGraph, got {type(graph).__name__}")
        self.graph = graph
        self.entries: dict[int, Entry] = {}
        self.writes: dict[str, torch.Tensor] = {}  # parameter or buffer name -> its new value (same shape)

    def _check_group(self, op: str, group: Group) -> None:
        if not isinstance(group, Group) or group.index >= len(self.graph.groups) or self.graph.groups[group.index] is not group:
            raise ValueError(f"Plan.{op}: the group is not one of this graph's groups")
        if not group.prunable:
            raise ValueError(f"Plan.{op}: group {group.index} ({group.origin}) cannot be pruned: {group.reason}")
        if group.index in self.entries:
            raise ValueError(f"Plan.{op}: group {group.index} is already in the plan")

    def _chosen(self, op: str, group: Group, indices: IndexLike) -> torch.Tensor:
        """Mask of channels `indices` of `group`, checked: unique and in range."""
        self._check_group(op, group)
        idx = _indices(op, indices)
        if idx.numel() and (idx.min() < 0 or idx.max() >= group.channels):
            bad = idx[(idx < 0) | (idx >= group.channels)][0].item()
            raise ValueError(f"Plan.{op}: channel {bad} is out of range for group {group.index} with {group.channels} channels")
        mask = torch.zeros(group.channels, dtype=torch.bool)
        mask[idx] = True
        if int(mask.sum()) != idx.numel():
            raise ValueError(f"Plan.{op}: channel indices for group {group.index} repeat")
        return mask

    def _keep(self, op: str, group: Group, kept: torch.Tensor) -> "Plan":
        if kept.numel() == 0:
            raise ValueError(f"Plan.{op}: removing all {group.channels} channels of group {group.index}; at least one must stay")
        _check_divisions(op, group, kept)
        self.entries[group.index] = Entry(group, kept)
        return self

    def remove(self, group: Group, indices: IndexLike) -> "Plan":
        """Remove channels `indices` (unique, in range) of `group`; at least one channel must stay."""
        return self._keep("remove", group, (~self._chosen("remove", group, indices)).nonzero().squeeze(1))

    def keep(self, group: Group, indices: IndexLike) -> "Plan":
        """Keep only channels `indices` (unique, in range, at least one) of `group`; remove the others."""
        return self._keep("keep", group, self._chosen("keep", group, indices).nonzero().squeeze(1))

    def merge(self, group: Group, assignment: IndexLike, keep: Optional[IndexLike] = None) -> "Plan":
        """Merge the channels of each cluster into one by channel addition (see ops.merge_channels_).

        assignment: cluster id in [0, G) of every channel, every cluster used. keep: the channel kept
        for every cluster (default: its lowest channel); `assignment[keep[g]] == g` must hold. The
        producing tensors keep that channel's values; the consuming tensors sum the cluster's inputs.
        """
        self._check_group("merge", group)
        a = _indices("merge", assignment)
        if a.numel() != group.channels:
            raise ValueError(f"Plan.merge: assignment has {a.numel()} entries but group {group.index} has {group.channels} channels")
        clusters = int(a.max()) + 1 if a.numel() else 0
        if a.min() < 0 or clusters > group.channels or torch.bincount(a, minlength=clusters).eq(0).any():
            raise ValueError(f"Plan.merge: cluster ids must be 0..G-1 with every cluster used, got {a.unique().tolist()[:10]}")
        if keep is None:
            k = torch.full((clusters,), group.channels, dtype=torch.int64).scatter_reduce(0, a, torch.arange(group.channels), "amin")
        else:
            k = _indices("merge", keep)
            if k.numel() != clusters or k.min() < 0 or k.max() >= group.channels or not torch.equal(a[k], torch.arange(clusters)):
                raise ValueError("Plan.merge: keep must name, for every cluster g, a channel c with assignment[c] == g")
        if group.uniform:
            raise ValueError(f"Plan.merge: group {group.index} ({group.origin}) is read by position within "
                             f"{group.divisions} groups (a grouped conv): remove or keep its channels instead")
        n = group.channels // group.divisions
        if not torch.equal(torch.arange(group.channels) // n, k[a] // n):
            raise ValueError(f"Plan.merge: group {group.index} ({group.origin}) is read in {group.divisions} equal "
                             f"divisions of {n} channels: every cluster must lie within one division")
        _check_divisions("merge", group, k)
        self.entries[group.index] = Entry(group, k.sort().values, a, k)
        return self

    def write(self, name: str, value: torch.Tensor) -> "Plan":
        """Give parameter or buffer `name` of the graph's model the value `value` (same shape), before the
        plan's channels are removed or merged; `apply` writes it with the rest, all or nothing."""
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Plan.write: the value of {name!r} must be a tensor, got {type(value).__name__}")
        shape = self.graph.shapes.get(name) if isinstance(name, str) else None
        if shape is None:
            raise ValueError(f"Plan.write: {name!r} is not a parameter or buffer of the model")
        if tuple(value.shape) != shape or not value.is_floating_point():
            raise ValueError(f"Plan.write: the value of {name!r} must be a floating-point tensor of shape {shape}, "
                             f"got {value.dtype} {tuple(value.shape)}")
        self.writes[name] = value.detach()
        return self

    def to_dict(self) -> dict[int, dict]:
        """The plan as plain lists by group index (to send to other ranks or store); see from_dict."""
        return {i: {"keep": e.keep.tolist(),
                    "assignment": None if e.assignment is None else e.assignment.tolist(),
                    "merge_keep": None if e.merge_keep is None else e.merge_keep.tolist()}
                for i, e in self.entries.items()}

    @classmethod
    def from_dict(cls, graph: DependencyGraph, data: dict[int, dict],
                  writes: Optional[dict[str, torch.Tensor]] = None) -> "Plan":
        """The plan `to_dict` gave, for `graph` (of the same model, or of a model built the same way), with
        `writes` (a plan's `writes`, which to_dict leaves out: tensors travel apart) written first.

        Checked like every other call: group keys are ints naming groups of `graph`, each value a dict
        of 'keep' and optionally 'assignment' and 'merge_keep' (index lists as `keep` and `merge` take
        them; for a merge, 'keep' must be the sorted 'merge_keep'). TypeError or ValueError naming the key.
        """
        if not isinstance(data, dict):
            raise TypeError(f"Plan.from_dict: expected a dict of group index -> entry, got {type(data).__name__}")
        plan = cls(graph)
        for i, e in data.items():
            if not isinstance(i, numbers.Integral) or isinstance(i, bool):
                raise TypeError(f"Plan.from_dict: group key {i!r} is a {type(i).__name__}, not an int")
            if not 0 <= i < len(graph.groups):
                raise ValueError(f"Plan.from_dict: group {i} is not one of this graph's {len(graph.groups)} groups")
            if not isinstance(e, dict):
                raise TypeError(f"Plan.from_dict: the entry of group {i} is a {type(e).__name__}, not a dict")
            unknown = sorted(map(str, set(e) - set(_ENTRY_KEYS)))
            if unknown or "keep" not in e:
                what = f"an unknown key {unknown[0]!r}" if unknown else "no 'keep'"
                raise ValueError(f"Plan.from_dict: the entry of group {i} has {what} (keys: {', '.join(_ENTRY_KEYS)})")
            group = graph.groups[int(i)]
            field = "keep" if e.get("assignment") is None else "assignment"
            try:
                if e.get("assignment") is not None:
                    plan.merge(group, e["assignment"], e.get("merge_keep"))
                    kept = plan.entries[group.index].keep.tolist()
                    if e["keep"] is not None and _indices("merge", e["keep"]).tolist() != kept:
                        raise ValueError("'keep' is not the sorted channels the merge keeps")
                elif e.get("merge_keep") is not None:
                    raise ValueError("'merge_keep' without 'assignment'")
                else:
                    plan.keep(group, e["keep"])
            except (TypeError, ValueError) as err:
                why = str(err).split(": ", 1)[-1] if str(err).startswith("Plan.") else str(err)
                raise type(err)(f"Plan.from_dict: group {i} {field!r}: {why}") from None
        for name, value in (writes or {}).items():
            plan.write(name, value)
        return plan

    def __len__(self) -> int:
        """The number of groups the plan changes."""
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries or self.writes)

    def __repr__(self) -> str:
        removed = sum(e.group.channels - e.keep.numel() for e in self.entries.values())
        return f"Plan({len(self.entries)} groups, {removed} channels removed)"
