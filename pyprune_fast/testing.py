"""Helpers for checking pruning on real models (used by the tests and benchmarks/coverage.py)."""

from __future__ import annotations

import copy
import gc
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import DependencyGraph, Plan, apply, prune  # public names: the package is loaded before this module
from .graph import dead_channels_are_exact, kill_channels

__all__ = ["kill_channels", "dead_channels_are_exact", "CoverageResult", "check_coverage", "dead_channel_check"]

DEAD_TOL = 1e-5  # largest |change| / max |output| allowed when dead channels are removed


@dataclass
class CoverageResult:
    """What `check_coverage` found; `reason` is "ok" or the failed stages, separated by "; "."""

    groups: int = 0
    prunable_groups: int = 0
    macs_before: float = math.nan  # GMACs
    macs_after: float = math.nan  # GMACs
    seconds: float = 0.0
    dead_check: str = ""  # "ok", "skipped: ...", or the failure
    ok: bool = False
    reason: str = ""


def _first_tensor(out: Any) -> torch.Tensor:
    """The logits of a model's output (a tensor, or the first tensor of a tuple / namedtuple / dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    raise TypeError(f"model output is a {type(out).__name__}, not a tensor")


@torch.no_grad()
def _forward(model: nn.Module, x: Any) -> torch.Tensor:
    model.eval()
    args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return _first_tensor(model(*args)).detach().clone()


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def dead_channel_check(model: nn.Module, x: Any, graph: DependencyGraph, seed: int = 0) -> str:
    """Kill a third of one group's channels on a copy of `model`, remove them, and compare outputs.
    Returns "ok", "skipped: ..." or "dead-channel check: ..." (a failure). `graph` is of `model`."""
    group = next((g for g in graph.prunable_groups if g.channels >= 4 and dead_channels_are_exact(graph, g)), None)
    if group is None:
        return "skipped: no prunable group of >= 4 channels with exact dead channels"
    gen = torch.Generator().manual_seed(seed)
    channels = torch.randperm(group.channels, generator=gen)[: group.channels // 3].sort().values
    dead = copy.deepcopy(model)
    try:
        g1 = DependencyGraph(dead, x, ignored_layers=[])
        grp = g1.groups[group.index]
        if (grp.channels, grp.origin) != (group.channels, group.origin):
            return f"dead-channel check: group {group.index} differs on a copy ({grp.origin}, {grp.channels} channels)"
        kill_channels(g1, grp, channels)
        y0 = _forward(dead, x)
        g2 = DependencyGraph(dead, x, ignored_layers=[])
        grp = g2.groups[group.index]
        if (grp.channels, grp.origin) != (group.channels, group.origin):
            return f"dead-channel check: group {group.index} differs after killing ({grp.origin}, {grp.channels} channels)"
        plan = Plan(g2)
        plan.remove(grp, channels)
        apply(plan)
        y1 = _forward(dead, x)
    except Exception as e:
        return f"dead-channel check: {_err(e)}"
    finally:
        del dead
    if y1.shape != y0.shape:
        return f"dead-channel check: output shape {tuple(y1.shape)} != {tuple(y0.shape)}"
    rel = ((y1 - y0).abs().max() / y0.abs().max().clamp_min(1e-30)).item()
    if not rel < DEAD_TOL:  # also catches nan
        return f"dead-channel check: rel err {rel:.3g} (group {group.index}: {group.origin}, {channels.numel()}/{group.channels} killed)"
    return "ok"


def check_coverage(model: nn.Module, example_inputs: Any, ratio: float = 0.3, seed: int = 0) -> CoverageResult:
    """Check that pruning works on `model`; never raises (but on KeyboardInterrupt), prunes `model` in place.

    1. build the DependencyGraph (ignored_layers=[]) and count its groups and prunable groups;
    2. `dead_channel_check`: in the first prunable group of >= 4 channels whose dead channels are exact, zero a
       third of the channels (chosen with `seed`) on a copy, remove them, and compare outputs (rel. err < 1e-5);
    3. `ppf.prune(model, example_inputs, method="l1", ratio=ratio)`: the output keeps its shape and is finite.

    A `model` that is not an nn.Module or a `ratio` outside [0, 1) raises (TypeError, ValueError) before anything runs.
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
            y_ref = _forward(model, example_inputs)
        except Exception as e:
            reasons.append(f"forward: {_err(e)}")
            return res
        graph = None
        try:
            graph = DependencyGraph(model, example_inputs, ignored_layers=[])
            res.groups, res.prunable_groups = len(graph.groups), len(graph.prunable_groups)
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
            report = prune(model, example_inputs, method="l1", ratio=ratio)
            res.macs_before, res.macs_after = report.macs_before / 1e9, report.macs_after / 1e9
            if not res.groups:
                res.groups, res.prunable_groups = report.groups, report.prunable_groups
        except Exception as e:
            reasons.append(f"prune: {_err(e)}")
            return res
        try:
            y = _forward(model, example_inputs)
            if y.shape != y_ref.shape:
                reasons.append(f"pruned output shape {tuple(y.shape)} != {tuple(y_ref.shape)}")
            elif not torch.isfinite(y).all():
                reasons.append("pruned output is not finite")
        except Exception as e:
            reasons.append(f"forward after prune: {_err(e)}")
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
