"""Helpers for checking pruning on real models (used by the tests and benchmarks/coverage.py)."""

from __future__ import annotations

import copy
import gc
import math
import re
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from . import DependencyGraph, Plan, apply, prune  # public names: the package is loaded before this module
from .graph import dead_channels_are_exact, kill_channels, model_inputs
from .graph.dependency import KeepOutputs
from .graph.ir import leaf_paths

__all__ = ["kill_channels", "dead_channels_are_exact", "CoverageResult", "check_coverage", "dead_channel_check",
           "call_model", "forward_leaves", "output_leaves", "compare_shapes", "lock_kind", "lock_kinds"]

DEAD_TOL = 1e-5  # largest |change| / max |output| allowed when dead channels are removed
OUTPUT_LOCK = "the model's output"  # every model locks its output's channels: not a coverage gap
SAME, SAME_EXCEPT_DATA = "same", "same except data-dependent dims"


@dataclass
class CoverageResult:
    """What `check_coverage` found; `reason` is "ok" or the failed stages, separated by "; ".

    `shapes` is "same", "same except data-dependent dims" (a detector's box counts), "differs: ..." or ""
    (not compared); `locks` maps `lock_kind`s to [groups, channels] locked for them; `top_lock` is the kind
    that locks the most channels, the model's output aside."""

    groups: int = 0
    prunable_groups: int = 0
    locked_groups: int = 0
    macs_before: float = math.nan  # GMACs
    macs_after: float = math.nan  # GMACs
    macs_cut: float = math.nan  # 1 - macs_after / macs_before
    graph_seconds: float = math.nan  # DependencyGraph construction on one CPU thread
    seconds: float = 0.0
    dead_check: str = ""  # "ok", "skipped: ...", or the failure
    runs_after_prune: bool = False
    shapes: str = ""
    top_lock: str = ""
    locks: dict[str, list[int]] = field(default_factory=dict)
    ok: bool = False
    reason: str = ""


Leaf = tuple[str, torch.Tensor, bool]  # (path in the output, tensor, whether its dim 0 depends on the data)


def output_leaves(out: Any) -> list[Leaf]:
    """Every tensor of a model's output (tensors, tuples, lists, dicts, ModelOutputs) with its path, in
    `graph.leaf_paths` order. In a dict holding "boxes" and "labels" (torchvision's detections) dim 0 of
    every tensor is a count that depends on the data."""
    found = []
    for path, t in leaf_paths(out):
        if isinstance(t, torch.Tensor):
            node, data_dependent = out, False
            for key in path:
                data_dependent = data_dependent or isinstance(node, dict) and {"boxes", "labels"} <= node.keys()
                node = node[key]
            found.append(("output" + "".join(f"[{k!r}]" for k in path), t, data_dependent))
    return found


def compare_shapes(before: list[Leaf], after: list[Leaf], kept: Optional[Collection[int]] = None) -> str:
    """"same", "same except data-dependent dims", or "differs: <the first difference>" between two outputs'
    leaves (see `output_leaves`): same paths in the same order, same shapes but for data-dependent dims.
    `kept`: the numbers of the leaves that keep their shape (None: all); the others keep their dim count."""
    paths0, paths1 = [p for p, _, _ in before], [p for p, _, _ in after]
    if paths0 != paths1:
        extra = sorted(set(paths0) ^ set(paths1))[:3]
        return f"differs: output structure ({len(paths1)} tensors vs {len(paths0)}; {', '.join(extra) or 'order'})"
    for i, ((path, t0, dd), (_, t1, _)) in enumerate(zip(before, after)):
        s0, s1 = tuple(t0.shape), tuple(t1.shape)
        if kept is not None and i not in kept:
            same = len(s0) == len(s1)
        else:
            same = (len(s0) == len(s1) and s0[1:] == s1[1:]) if dd else s0 == s1
        if not same:
            return f"differs: {path} {s1} != {s0}"
    return SAME_EXCEPT_DATA if any(dd for _, _, dd in before) else SAME


def call_model(model: nn.Module, x: Any) -> Any:
    """`model` run on example inputs: a tensor, a tuple (or list) of positional inputs or a dict of keyword ones."""
    args, kwargs = model_inputs(x)
    return model(*args, **kwargs)


@torch.no_grad()
def forward_leaves(model: nn.Module, x: Any) -> list[Leaf]:
    """The leaves of `model`'s output on `x` (eval mode, no grad), detached copies."""
    model.eval()
    return [(p, t.detach().clone(), dd) for p, t, dd in output_leaves(call_model(model, x))]


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def lock_kind(reason: str) -> str:
    """A lock reason without the names and numbers of one model, to count reasons over models:
    "layer4.0.conv2 is a grouped conv (groups=32): ..." -> "<module> is a grouped conv: ..." (a module named without
    a dot, such as "conv1", keeps its name)."""
    s = re.sub(r"\(no rule for this op.*", "has no rule", reason)
    s = re.sub(r"\[[^\]]*\]", "[..]", s)
    while (t := re.sub(r"\s*\([^()]*\)", "", s)) != s:  # innermost parentheses first
        s = t
    s = re.sub(r"\b(?!nn\.)[A-Za-z_]\w*(?:\.\w+)+", "<module>", s)  # dotted names; op names such as conv2d stay
    s = re.sub(r"\b\d+\b", "N", s)
    s = " ".join(s.split())
    return s if len(s) <= 80 else s[:77] + "..."


def lock_kinds(graph: DependencyGraph) -> dict[str, list[int]]:
    """{`lock_kind`: [groups, channels]} over the graph's locked groups, most channels first."""
    groups, channels = Counter(), Counter()
    for g in graph.groups:
        if not g.prunable:
            kind = lock_kind(g.reason)
            groups[kind] += 1
            channels[kind] += g.channels
    return {k: [groups[k], c] for k, c in channels.most_common()}


def _rel_err(y0: torch.Tensor, y1: torch.Tensor) -> float:
    y0, y1 = y0.double(), y1.double()
    return ((y1 - y0).abs().max() / y0.abs().max().clamp_min(1e-30)).item() if y0.numel() else 0.0


def _a_third(group, gen: torch.Generator) -> torch.Tensor:
    """About a third of `group`'s channels, at random: as many in each of its divisions (at least one), at the
    same local positions where the group is uniform (see Group.divisions)."""
    n = group.channels // group.divisions
    k = max(1, n // 3)
    shared = torch.randperm(n, generator=gen)[:k]
    local = [shared if group.uniform else torch.randperm(n, generator=gen)[:k] for _ in range(group.divisions)]
    return torch.cat([j * n + idx for j, idx in enumerate(local)]).sort().values


def dead_channel_check(model: nn.Module, x: Any, graph: DependencyGraph, seed: int = 0) -> str:
    """Kill a third of one group's channels on a copy of `model`, remove them, and compare outputs (every
    tensor whose shape does not depend on the data; one that does where it kept its size and holds
    something: a detector's boxes). Returns "ok", "skipped: ..." or "dead-channel check: ..."
    (a failure). `graph` is of `model`."""
    group = next((g for g in graph.prunable_groups if g.channels >= 4 and g.channels // g.divisions >= 2
                  and dead_channels_are_exact(graph, g)), None)
    if group is None:
        return "skipped: no prunable group of >= 4 channels with exact dead channels"
    channels = _a_third(group, torch.Generator().manual_seed(seed))
    dead = copy.deepcopy(model)
    try:
        g1 = DependencyGraph(dead, x, ignored_layers=[], **graph.options)
        grp = g1.groups[group.index]
        if (grp.channels, grp.origin) != (group.channels, group.origin):
            return f"dead-channel check: group {group.index} differs on a copy ({grp.origin}, {grp.channels} channels)"
        kill_channels(g1, grp, channels)
        y0 = forward_leaves(dead, x)
        g2 = DependencyGraph(dead, x, ignored_layers=[], **graph.options)
        grp = g2.groups[group.index]
        if (grp.channels, grp.origin) != (group.channels, group.origin):
            return f"dead-channel check: group {group.index} differs after killing ({grp.origin}, {grp.channels} channels)"
        plan = Plan(g2)
        plan.remove(grp, channels)
        apply(plan)
        y1 = forward_leaves(dead, x)
    except Exception as e:
        return f"dead-channel check: {_err(e)}"
    finally:
        del dead
    shapes = compare_shapes(y0, y1)
    if not shapes.startswith(SAME):
        return f"dead-channel check: output shapes {shapes}"
    # an output whose size depends on the data (a detector's boxes) is compared where it kept its size and
    # holds something: dead channels change nothing, so the same boxes come out
    pairs = [(p, t0, t1) for (p, t0, dd), (_, t1, _) in zip(y0, y1)
             if not dd or (t0.shape == t1.shape and t0.numel() > 0)]
    if not pairs:
        return "skipped: every output's shape depends on the data, and each is empty or changed its size"
    rel, path = max((_rel_err(t0, t1), p) for p, t0, t1 in pairs)
    if not rel < DEAD_TOL:  # also catches nan
        return (f"dead-channel check: rel err {rel:.3g} in {path} (group {group.index}: {group.origin}, "
                f"{channels.numel()}/{group.channels} killed)")
    return "ok"


def _graph(model: nn.Module, x: Any, res: CoverageResult, prune_embedding: bool = False,
           keep_outputs: KeepOutputs = "all") -> DependencyGraph:
    """The model's DependencyGraph, built on one CPU thread (timed into `res`), its groups counted into `res`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        graph = DependencyGraph(model, x, ignored_layers=[], prune_embedding=prune_embedding, keep_outputs=keep_outputs)
        res.graph_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    res.groups, res.prunable_groups = len(graph.groups), len(graph.prunable_groups)
    res.locked_groups = res.groups - res.prunable_groups
    res.locks = lock_kinds(graph)
    res.top_lock = next((k for k in res.locks if k != OUTPUT_LOCK), "")
    return graph


def _not_finite(before: list[Leaf], after: list[Leaf]) -> str:
    """The first floating output that was finite before pruning and is not after, or ""."""
    for (path, t0, _), (_, t1, _) in zip(before, after):
        if t0.is_floating_point() and torch.isfinite(t0).all() and not torch.isfinite(t1).all():
            return path
    return ""


def check_coverage(model: nn.Module, example_inputs: Any, ratio: float = 0.3, seed: int = 0,
                   prune_embedding: bool = False, keep_outputs: KeepOutputs = "all") -> CoverageResult:
    """Check that pruning works on `model`; never raises (but on KeyboardInterrupt), prunes `model` in place.

    1. build the DependencyGraph (ignored_layers=[], on one CPU thread, timed), count its groups, prunable
       and locked, and the kinds of lock (`lock_kinds`);
    2. `dead_channel_check`: in the first prunable group of >= 4 channels whose dead channels are exact, zero a
       third of the channels (chosen with `seed`) on a copy, remove them, and compare outputs (rel. err < 1e-5);
    3. `ppf.prune(model, example_inputs, method="l1", ratio=ratio)`: the pruned model runs, every output tensor
       keeps its shape (but for dims that depend on the data, such as a detector's box counts) and outputs
       that were finite stay finite. `prune_embedding` and `keep_outputs` are passed to the graph and to
       prune; an output keep_outputs does not keep may change the sizes of its dims, not their count.

    `example_inputs`: a tensor, a tuple of positional inputs or a dict of keyword inputs. A `model` that is not
    an nn.Module or a `ratio` outside [0, 1) raises (TypeError, ValueError) before anything runs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_coverage: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"check_coverage: ratio must be a number in [0, 1), got {ratio!r}")
    t0 = time.perf_counter()
    res = CoverageResult()
    reasons: list[str] = []
    try:
        try:
            y_ref = forward_leaves(model, example_inputs)
        except Exception as e:
            reasons.append(f"forward: {_err(e)}")
            return res
        graph, kept = None, None
        try:
            graph = _graph(model, example_inputs, res, prune_embedding, keep_outputs)
            kept = graph.kept_outputs
        except Exception as e:
            reasons.append(f"graph: {_err(e)}")
        if graph is not None:
            try:
                res.dead_check = dead_channel_check(model, example_inputs, graph, seed)
            except Exception as e:
                res.dead_check = f"dead-channel check: {_err(e)}"
            if not (res.dead_check == "ok" or res.dead_check.startswith("skipped")):
                reasons.append(res.dead_check)
            graph = None  # free it (the model is pruned next; the graph would be stale anyway)
            gc.collect()
        try:
            report = prune(model, example_inputs, method="l1", ratio=ratio, prune_embedding=prune_embedding,
                           keep_outputs=keep_outputs)
            res.macs_before, res.macs_after = report.macs_before / 1e9, report.macs_after / 1e9
            res.macs_cut = 1 - report.macs_after / report.macs_before if report.macs_before else math.nan
            if not res.groups:
                res.groups, res.prunable_groups = report.groups, report.prunable_groups
                res.locked_groups = res.groups - res.prunable_groups
        except Exception as e:
            reasons.append(f"prune: {_err(e)}")
            return res
        try:
            y = forward_leaves(model, example_inputs)
            res.runs_after_prune = True
        except Exception as e:
            reasons.append(f"forward after prune: {_err(e)}")
            return res
        res.shapes = compare_shapes(y_ref, y, kept)
        if not res.shapes.startswith(SAME):
            reasons.append(f"pruned output shapes {res.shapes}")
        elif _not_finite(y_ref, y):
            reasons.append(f"pruned output is not finite ({_not_finite(y_ref, y)})")
        return res
    except BaseException as e:  # MemoryError inside a model: report it, never crash the caller
        if isinstance(e, KeyboardInterrupt):
            raise
        reasons.append(f"unexpected: {_err(e)}")
        return res
    finally:
        res.ok = not reasons
        res.reason = "ok" if res.ok else "; ".join(reasons)
        res.seconds = time.perf_counter() - t0
        gc.collect()
