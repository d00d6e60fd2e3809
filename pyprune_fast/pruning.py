"""`prune`: one-shot pruning of a model by any criterion, with a report of what happened."""

from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .allocation import Limits, bisect
from .flops import MacsModel, param_count, profile, profile_trace
from .graph import DependencyGraph, check_heads, uncompiled
from .latency import Latency, measure_latency, measure_options
from .latency_model import LatencyOptions, auto_round_to, latency_options, solve_latency
from .methods import METHODS, Criterion
from .plan import Plan
from .progress import Stages, choice
from .report import GroupWidth, PruneReport
from .surgery import apply, applied, not_in_inference_mode
from .threads import on_idle_cpus

__all__ = ["Decision", "PruneReport", "commit", "decide", "prune"]

ALLOCATIONS = ("ratio", "global_ratio", "target_flops", "target_latency", "threshold")
COMMON = {"min_channels": 1, "round_to": 1, "ignored_layers": (), "seed": 0, "prune_embedding": False,
          "heads": "dims", "keep_outputs": "all", "measure": None, "latency": None}


def _fraction(name: str, value: Any, low_open: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low_open:
        ok = 0 < value <= 1
    elif ok:
        ok = 0 <= value < 1
    if not ok:
        raise ValueError(f"prune: {name} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {value!r}")
    return float(value)


def _check_options(method: str, options: dict[str, Any]) -> tuple[type[Criterion], str, float, dict, dict]:
    """(criterion class, allocation name, its value, common options, method options), or ValueError."""
    if method not in METHODS:
        raise ValueError(f"prune: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    cls = METHODS[method]
    allocations = cls.allocations + ("target_latency",) * ("target_flops" in cls.allocations)  # solved as target_flops
    valid = list(allocations) + list(COMMON) + list(cls.options)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"prune: unknown option {unknown[0]!r} for method {method!r}; valid options: {', '.join(valid)}")
    given = [a for a in ALLOCATIONS if options.get(a) is not None]
    if len(given) != 1:
        raise ValueError(f"prune: give exactly one of {', '.join(allocations)} for method {method!r}"
                         + (f", got {', '.join(given)}" if given else ""))
    alloc = given[0]
    value = options[alloc]
    if alloc == "threshold":
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"prune: threshold must be a number >= 0, got {value!r}")
        value = float(value)
    else:
        value = _fraction(alloc, value, low_open=alloc.startswith("target_"))
    common = {k: options.get(k, d) for k, d in COMMON.items()}
    for k in ("min_channels", "round_to"):
        if (not isinstance(common[k], numbers.Integral) or isinstance(common[k], bool) or common[k] < 1) \
                and not (k == "round_to" and common[k] == "auto"):
            what = "an int >= 1" + ' or "auto"' * (k == "round_to")
            raise ValueError(f"prune: {k} must be {what}, got {common[k]!r}")
    if not isinstance(common["seed"], numbers.Integral):
        raise ValueError(f"prune: seed must be an int, got {common['seed']!r}")
    if not isinstance(common["prune_embedding"], bool):
        raise ValueError(f"prune: prune_embedding must be True or False, got {common['prune_embedding']!r}")
    check_heads(common["heads"], "prune")
    common["measure"] = measure_options(common["measure"])
    common["latency"] = latency_options(common["latency"])  # the backend and device checked before any work
    return cls, alloc, value, common, {k: options.get(k, d) for k, d in cls.options.items()}


def _widths(crit: Criterion, alloc: str, value: float, macs, latency: LatencyOptions) -> tuple[torch.Tensor, str]:
    """Every group's width, and the allocation in words (with the knob a target was solved for)."""
    if not len(crit.groups):  # nothing to allocate: keeping everything is every allocation's answer but a cut
        if alloc.startswith("target_") and value < 1:
            groups = crit.graph.groups
            why = f"; {groups[0].origin}: {groups[0].reason}" if groups else ""
            raise ValueError(f"prune: {alloc}={value} cannot be reached: none of the model's {len(groups)} "
                             f"channel groups is prunable{why}")
        return crit.channels, f"{alloc}={value:g} (no prunable group)"
    if alloc == "ratio":
        return crit.uniform(value), f"ratio={value:g}"
    if alloc == "threshold":
        return crit.at_threshold(value), f"threshold={value:g}"
    ladder = crit.ladder()
    if alloc == "global_ratio":
        total = int(crit.channels.sum())
        rung = bisect(ladder, lambda w: float(w.sum()), total - math.floor(value * total + 0.5 + 1e-9))
    elif alloc == "target_latency":
        solved = solve_latency(crit, ladder, macs, value, latency)
        crit.timings["latency model"] = solved.build_s
        return solved.widths, f"{alloc}={value:g} ({ladder.knob_name} {ladder.knob(solved.rung):.6g}; {solved})"
    else:
        smallest = macs(ladder.widths(ladder.steps - 1)) / macs.total
        if value < smallest:
            raise ValueError(f"prune: target_flops={value} cannot be reached with method {crit.name!r}: keeping the "
                             f"fewest channels allowed in every group leaves {smallest:.4f} of the MACs; the smallest "
                             f"reachable target_flops is {math.ceil(smallest * 1e4) / 1e4}")
        rung = bisect(ladder, macs, value * macs.total)
    return ladder.widths(rung), f"{alloc}={value:g} ({ladder.knob_name} {ladder.knob(rung):.6g})"


@dataclass
class Decision:
    """What `decide` chose, before anything is changed: the plan (with the tensors to write first, as ASCP's
    reconstruction), every group's width, and numbers for the report."""

    method: str
    graph: DependencyGraph
    groups: list
    plan: Plan
    widths: torch.Tensor
    allocation: str
    macs_before: int
    params_before: int
    macs_predicted: float  # MACs after the plan, by the MACs model
    macs_exact: bool  # the MACs model is exact for this model (only convs and Linears have MACs)
    timings: dict[str, float]
    measure: Optional[dict] = None  # measure_latency's arguments, when measure= asked for the latency
    latency_before: Optional[Latency] = None


DECIDE_STAGES = ("trace", "scores / clustering", "allocation", "choosing channels")
COMMIT_STAGES = ("surgery", "recount")


def decide(model: nn.Module, example_inputs: Any, method: str = "l1", *, progress: Optional[bool] = None,
           **options: Any) -> Decision:
    """Everything `prune` does short of changing the model: options as for `prune`, but no optimizer."""
    if "optimizer" in options:
        raise ValueError("decide: optimizer goes to commit(), not decide()")
    not_in_inference_mode("decide")
    show, checked = choice(progress), _check_options(method, options)
    with Stages(DECIDE_STAGES, show, f"decide {method}") as stages:
        return _decide(model, example_inputs, method, checked, stages)


def _decide(model: nn.Module, example_inputs: Any, method: str, checked: tuple, stages: Stages) -> Decision:
    cls, alloc, value, common, method_options = checked
    measure = common["measure"]  # the dense model's latency, apart from the timings of pruning
    latency = measure_latency(uncompiled(model), example_inputs, **measure) if measure else None
    t0 = time.perf_counter()
    stages.start("trace")
    graph = DependencyGraph(model, example_inputs, common["ignored_layers"],  # unwraps a compiled model
                            prune_embedding=common["prune_embedding"], heads=common["heads"],
                            keep_outputs=common["keep_outputs"])
    model = graph.model
    before = profile_trace(graph.trace, model)
    groups = graph.prunable_groups
    t1 = time.perf_counter()
    stages.start("scores / clustering")
    round_to = common["round_to"] if common["round_to"] != "auto" else auto_round_to(common["latency"].device(model))
    crit = cls(graph, groups, Limits(int(common["min_channels"]), int(round_to)), int(common["seed"]), **method_options)
    stages.start("allocation")
    macs = MacsModel(graph, groups)
    widths, allocation = _widths(crit, alloc, value, macs, common["latency"])
    stages.start("choosing channels")  # ASCP's k-means runs here, once the widths are known
    plan = Plan(graph)
    crit.decide(plan, widths)
    t2 = time.perf_counter()
    scores, clustering = crit.timings.get("scores", 0.0), crit.timings.get("clustering", 0.0)
    built = {k: v for k, v in crit.timings.items() if k == "latency model"}  # target_latency's measurements
    timings = {"trace": t1 - t0, "scores": scores, "clustering": clustering,
               "allocation": t2 - t1 - scores - clustering - sum(built.values()), **built}
    return Decision(method, graph, groups, plan, widths, allocation, before.macs, before.params,
                    macs(widths), macs.exact, timings, measure, latency)


def commit(decision: Decision, example_inputs: Any, optimizer: Optional[torch.optim.Optimizer] = None,
           progress: Optional[bool] = None) -> PruneReport:
    """Apply a Decision to its model (all or nothing) and report what happened."""
    not_in_inference_mode("commit")
    with Stages(COMMIT_STAGES, choice(progress), f"commit {decision.method}") as stages:
        return _commit(decision, example_inputs, optimizer, stages)


def _commit(decision: Decision, example_inputs: Any, optimizer: Optional[torch.optim.Optimizer],
            stages: Stages) -> PruneReport:
    model = decision.graph.model
    t0 = time.perf_counter()
    stages.start("surgery")
    checked = None  # the run check's pass, every op recorded: the recount's (on the inputs the check ran on)
    if not decision.macs_exact and example_inputs is decision.graph.example_inputs:
        checked = applied(decision.plan, optimizer, record_check=True)[1]
    else:
        apply(decision.plan, optimizer)
    t1 = time.perf_counter()
    stages.start("recount")
    if decision.macs_exact:  # no second forward pass to count them
        macs_after, params_after = round(decision.macs_predicted), param_count(model)
    else:
        after = profile(model, example_inputs) if checked is None else profile_trace(checked, model)
        macs_after, params_after = after.macs, after.params
    widths = [GroupWidth(g.origin, g.channels, int(w)) for g, w in zip(decision.groups, decision.widths.tolist())]
    latency_after = _measure_again(model, example_inputs, decision)
    return PruneReport(method=decision.method, macs_before=decision.macs_before, macs_after=macs_after,
                       params_before=decision.params_before, params_after=params_after, widths=widths,
                       groups=len(decision.graph.groups), prunable_groups=len(decision.groups),
                       timings={**decision.timings, "surgery": t1 - t0}, allocation=decision.allocation,
                       latency_before=decision.latency_before, latency_after=latency_after)


def _measure_again(model: nn.Module, example_inputs: Any, decision: Decision) -> Optional[Latency]:
    """The pruned model's latency, measured as the dense model's was (None if it was not); a failure (the
    model is pruned by now) is a warning, not an error."""
    before = decision.latency_before
    if before is None:
        return None
    try:
        return measure_latency(model, example_inputs, **{**decision.measure, "device": before.device,
                                                        "threads": before.threads})
    except Exception as e:  # noqa: BLE001  (whatever the backend raises, the pruning stands)
        warnings.warn(f"prune: the pruned model's latency could not be measured ({type(e).__name__}: {e})")
        return None


@on_idle_cpus
def prune(model: nn.Module, example_inputs: Any, method: str = "l1", **options: Any) -> PruneReport:
    """Prune `model` in place by `method` and return a PruneReport; on any error nothing is modified.

    Methods (see `pyprune_fast.methods`): "l1", "l2", "random", "bn_scale", "fpgm", "kcp" score channels;
    "cup" clusters them (Ward) and keeps one per cluster; "ascp" clusters them (k-means), makes each
    cluster identical and merges it by channel addition.

    Give exactly one allocation:
        ratio: remove this fraction of every prunable group, in [0, 1).
        global_ratio: remove this fraction of all prunable channels, by the method's own global order
            (one ranking for scoring methods, one Ward threshold for CUP), in [0, 1).
        target_flops: keep this fraction of the MACs, in (0, 1]: the method's knob (the ranking's
            cut, CUP's threshold, ASCP's uniform ratio) is found by bisection on a model of the MACs.
        target_latency: keep this fraction of the dense model's measured latency, in (0, 1]: the knob is
            found on a latency model measured on the device (pruned copies timed next to the dense model,
            see latency_model.py), and the result measured; `latency` says how (a dict of measure_latency's
            backend, device, batch_size, threads, min_time; tolerance (default 0.05), the relative miss
            that triggers another measured candidate; cache: a folder, or False). The report's allocation
            gives the latency kept measured and predicted, and the latency model's build time.
        threshold: CUP only, the Ward height at which every group's tree is cut (absolute units).
    Other options: min_channels (each group keeps at least this many, default 1), round_to (widths
    rounded up to a multiple, e.g. 8 for fast kernels; "auto": 8 on CUDA, the CPU's vector width in
    floats on a CPU, for the latency device or else the model's), ignored_layers (modules whose outputs are not
    pruned; the channels of the outputs keep_outputs keeps never are), keep_outputs (the tensors the model
    returns that keep their shape: "all" (default), a list of their numbers in `graph.ir.leaves` order
    (`[0]`: the first), or a predicate on their paths (`lambda path: path[0] == 0`); see DependencyGraph),
    heads ("dims", default: attention heads get narrower; "whole": fewer heads; see DependencyGraph),
    optimizer (its per-parameter state is sliced along), seed (for random, k-means++), and for "ascp"
    niter (k-means iterations, default 25).
    measure: None (default), a backend of `measure_latency` ("eager", "compile", "onnxruntime") or a dict
    of its keyword arguments ({"backend": "eager", "threads": 4, "batch_size": 8}): the model's latency is
    measured before and after (on its device, on the example inputs; a second or more each) and the
    report shows it and the speed-up (`report.speedup`) next to the MACs.
    progress: a bar on stderr over the stages (trace, scores / clustering, allocation, choosing channels,
    surgery, recount); None (default) shows it when stderr is a terminal and the call runs longer than
    2 s, True always, False never; with None, the environment variable PYPRUNE_FAST_PROGRESS=0 (or 1)
    decides.

    A model with no prunable group (every group locked, or all ignored): ratio, global_ratio, threshold
    and target_flops=1 return a report with nothing pruned; target_flops < 1 raises ValueError. A
    `torch.compile`d model: the module it wraps (`_orig_mod`) is pruned; the compiled model runs it and
    recompiles for the new shapes. Inside `torch.inference_mode()` prune raises ValueError (the pruned
    parameters could not be trained): call it outside.
    """
    not_in_inference_mode("prune")
    optimizer = options.pop("optimizer", None)
    show, checked = choice(options.pop("progress", None)), _check_options(method, options)
    with Stages(DECIDE_STAGES + COMMIT_STAGES, show, f"prune {method}") as stages:
        return _commit(_decide(model, example_inputs, method, checked, stages), example_inputs, optimizer, stages)
