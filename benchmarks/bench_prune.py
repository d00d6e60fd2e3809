"""End-to-end one-shot L1 pruning (ratio 0.5) of torchvision ResNet-50 and ViT-B/16: ours vs Torch-Pruning.

Both tools prune fresh copies of one pristine model (weights=None, eval, seed 0) on torch.randn(1, 3, 224, 224),
the classifier ignored, timed alternately rep after rep (medians; copies made outside the timed region, the
garbage collector off inside it); every pruned model must give shape (1, 1000) first. Then the peak extra
memory of ppf.apply, in a fresh child interpreter. What each phase and row covers, and how memory is read:
benchmarks/RESULTS.md, "bench_prune.py: how it measures".

  python benchmarks/bench_prune.py [--models resnet50,vit_b_16] [--reps 5] [--device cpu|cuda] [--csv out.csv]
                                  [--no-tp-recipe] [--no-tp]

--no-tp times ours alone (where Torch-Pruning is not installed)."""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _torch_pruning  # noqa: E402
from _harness import (MMAP_THRESHOLD, check_device, machine, malloc_trim, memory_meter, sync,  # noqa: E402
                      table_header, table_line, write_csv)

import pyprune_fast as ppf  # noqa: E402
import pyprune_fast.methods  # noqa: E402

RATIO = 0.5
CLASSIFIER = {"resnet50": "fc", "vit_b_16": "heads.head"}
PHASES = ("graph", "scores", "apply")  # ours: graph, scores+plan, apply; tp: pruner init, importance, group pruning


def ours_ignored(model: nn.Module, model_name: str) -> list[nn.Module]:
    """The classifier, and for ViT the attention modules: ours would also prune whole heads, which the
    `tp` row does not, so they are left out to compare equal work."""
    ignored = [model.get_submodule(CLASSIFIER[model_name])]
    if model_name.startswith("vit"):
        ignored += [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return ignored


def build_model(name: str, device: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


# --------------------------------------------------------------------------------------------------
# The two tools. Each prunes `model` in place and returns its phase times in seconds.


def l1_plan(g: ppf.DependencyGraph) -> ppf.Plan:
    """The plan removing the RATIO of lowest-L1 channels of every prunable group."""
    groups = g.prunable_groups
    plan = ppf.Plan(g)
    for grp, s in zip(groups, pyprune_fast.methods.scores("l1", g, groups)):
        plan.remove(grp, torch.argsort(s)[: int(RATIO * grp.channels)])
    return plan


def run_ours(model: nn.Module, x: torch.Tensor, model_name: str, device: str) -> dict[str, float]:
    ignored = ours_ignored(model, model_name)
    t0 = time.perf_counter()
    g = ppf.DependencyGraph(model, x, ignored_layers=ignored)
    sync(device)
    t1 = time.perf_counter()
    plan = l1_plan(g)
    sync(device)
    t2 = time.perf_counter()
    ppf.apply(plan)
    sync(device)
    t3 = time.perf_counter()
    return {"graph": t1 - t0, "scores": t2 - t1, "apply": t3 - t2}


def run_tp(model: nn.Module, x: torch.Tensor, model_name: str, device: str, recipe: bool = False,
           around_step: Optional[Callable] = None) -> dict[str, float]:
    return _torch_pruning.run_tp(model, x, device, ratio=RATIO, classifier=CLASSIFIER[model_name],
                                 vit=model_name.startswith("vit"), recipe=recipe, around_step=around_step)


@dataclass
class Tool:
    name: str
    run: Callable[..., dict[str, float]]
    scope: str


def tools_for(model_name: str, with_recipe: bool, with_tp: bool = True) -> list[Tool]:
    if not model_name.startswith("vit"):
        return [Tool("ours", run_ours, "all channel groups")] + [Tool("tp", run_tp, "all channel groups")] * with_tp
    out = [Tool("ours", run_ours, "MLP hidden dims")]
    if with_tp:
        out.append(Tool("tp", run_tp, "MLP hidden dims (conv_proj ignored: same scope as ours)"))
    if with_tp and with_recipe:
        out.append(Tool("tp-recipe", functools.partial(run_tp, recipe=True),
                        "MLP hidden + embedding dims (TP's torchvision-ViT recipe, round_to=num_heads)"))
    return out


# --------------------------------------------------------------------------------------------------
# Memory


def memory_in_subprocess(model_name: str, device: str, with_tp: bool) -> "MemResult":
    """measure_memory in a fresh interpreter whose glibc mmap threshold is fixed from the start
    (MALLOC_MMAP_THRESHOLD_), so that the heap holds no freed tensors a new one could reuse unseen."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    cmd = [sys.executable, os.path.abspath(__file__), "--models", model_name, "--device", device, "--_memory-only"]
    if not with_tp:
        cmd.append("--no-tp")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"[{model_name}] memory measurement failed (rc {proc.returncode}): {proc.stderr[-2000:]}", file=sys.stderr)
        return MemResult()
    return MemResult(**json.loads(lines[-1]))


def _tensor_bytes(model: nn.Module) -> dict[str, tuple[tuple, int]]:
    out = {n: (tuple(t.shape), t.numel() * t.element_size()) for n, t in model.named_parameters()}
    out.update({n: (tuple(t.shape), t.numel() * t.element_size()) for n, t in model.named_buffers()})
    return out


@dataclass
class MemResult:
    apply_extra: int = 0
    new_bytes: int = 0
    old_bytes: int = 0
    tp_extra: Optional[int] = None
    how: str = ""


def measure_memory(pristine: nn.Module, x: torch.Tensor, model_name: str, device: str, with_tp: bool) -> MemResult:
    res = MemResult()
    cuda = device.startswith("cuda")
    res.how = "torch.cuda peak allocated" if cuda else "RSS peak (1 ms thread + after each gather_channels)"

    model = copy.deepcopy(pristine)
    g = ppf.DependencyGraph(model, x, ignored_layers=ours_ignored(model, model_name))
    plan = l1_plan(g)
    before = _tensor_bytes(model)
    gc.collect()
    malloc_trim()
    orig = ppf.ops.gather_channels
    with memory_meter(device) as m:
        if not cuda:  # the RSS also right after every gather_channels call

            def gather_and_sample(*a, **k):
                out = orig(*a, **k)
                m.sample()
                return out

            ppf.ops.gather_channels = gather_and_sample
        try:
            ppf.apply(plan)
        finally:
            ppf.ops.gather_channels = orig
    res.apply_extra = m.extra
    after = _tensor_bytes(model)
    changed = [n for n in after if after[n][0] != before[n][0]]
    res.new_bytes = sum(after[n][1] for n in changed)
    res.old_bytes = sum(before[n][1] for n in changed)
    del model, g, plan
    gc.collect()

    if with_tp:
        model = copy.deepcopy(pristine)
        gc.collect()
        malloc_trim()
        holder = {}

        def around():
            holder["m"] = memory_meter(device)
            return holder["m"]

        try:
            run_tp(model, x, model_name, device, around_step=around)
            res.tp_extra = holder["m"].extra
        except Exception:  # reported in the main run already
            pass
        del model
        gc.collect()
    return res


# --------------------------------------------------------------------------------------------------
# Driver


@dataclass
class Result:
    model: str
    tool: str
    scope: str
    times: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in (*PHASES, "total")})
    macs: int = 0
    params: int = 0
    error: Optional[str] = None
    same_shapes: Optional[str] = None

    def median(self, phase: str) -> float:
        return statistics.median(self.times[phase]) if self.times[phase] else float("nan")


def check(tool: Tool, pristine: nn.Module, x: torch.Tensor, model_name: str, device: str) -> tuple[nn.Module, ppf.Profile]:
    """One untimed run (also the warm-up): prune, forward pass of shape (1, 1000), MACs and params."""
    model = copy.deepcopy(pristine)
    tool.run(model, x, model_name, device)
    with torch.no_grad():
        out = model(x)
    if tuple(out.shape) != (1, 1000) or not torch.isfinite(out).all():
        raise AssertionError(f"{tool.name} on {model_name}: pruned model gives shape {tuple(out.shape)} "
                             f"(finite: {bool(torch.isfinite(out).all())}), expected (1, 1000)")
    return model, ppf.profile(model, x)


def compare_shapes(a: nn.Module, b: nn.Module) -> str:
    sa, sb = _tensor_bytes(a), _tensor_bytes(b)
    common = sorted(set(sa) & set(sb))
    differ = [n for n in common if sa[n][0] != sb[n][0]]
    if not differ and len(sa) == len(sb):
        return "yes"
    return f"no: {len(differ)} of {len(common)} tensors differ (e.g. {differ[0] if differ else '-'})"


def bench_model(model_name: str, pristine: nn.Module, x: torch.Tensor, reps: int, device: str,
                with_recipe: bool, with_tp: bool = True) -> tuple[list[Result], ppf.Profile]:
    before = ppf.profile(pristine, x)
    tools = tools_for(model_name, with_recipe, with_tp)
    results = {t.name: Result(model_name, t.name, t.scope) for t in tools}
    pruned = {}
    for t in tools:
        try:
            pruned[t.name], prof = check(t, pristine, x, model_name, device)
            results[t.name].macs, results[t.name].params = prof.macs, prof.params
        except Exception as e:
            results[t.name].error = f"{type(e).__name__}: {e}"
            print(f"[{model_name}] {t.name} FAILED: {results[t.name].error}", file=sys.stderr)
            traceback.print_exc()
    for name, m in pruned.items():
        if name != "ours" and "ours" in pruned:
            results[name].same_shapes = compare_shapes(pruned["ours"], m)
    pruned.clear()

    live = [t for t in tools if results[t.name].error is None]
    for rep in range(reps):
        for t in list(live):
            model = copy.deepcopy(pristine)
            gc.collect()
            sync(device)  # the copy's kernels finish outside the timed region
            gc.disable()
            try:
                t0 = time.perf_counter()
                times = t.run(model, x, model_name, device)
                total = time.perf_counter() - t0
            except Exception as e:
                results[t.name].error = f"rep {rep + 1}: {type(e).__name__}: {e}"
                print(f"[{model_name}] {t.name} FAILED: {results[t.name].error}", file=sys.stderr)
                live.remove(t)
                continue
            finally:
                gc.enable()
            for p in PHASES:
                results[t.name].times[p].append(times[p])
            results[t.name].times["total"].append(total)
            del model
        gc.collect()
        print(f"[{model_name}] rep {rep + 1}/{reps}: " + ", ".join(
            f"{t.name} {results[t.name].times['total'][-1]:.3f} s" for t in live), flush=True)

    return list(results.values()), before


COLUMNS = [("model", "<9", ""), ("tool", "<10", ""), ("graph s", ">8", ""), ("scores s", ">9", ""),
           ("apply/step s", ">12", ""), ("total s", ">8", ""), ("GMACs after", ">11", ".3f"),
           ("M params after", ">14", ".3f"), (" notes", "", "")]


def print_results(all_results: list[Result], reps: int) -> None:
    """The table of medians, a FAILED line for a tool that failed."""
    print(f"\nmedians of {reps} reps (ours: graph | scores+plan | apply;  Torch-Pruning: pruner init with its "
          f"DependencyGraph | importance+ranking | group pruning)")
    header = table_header(COLUMNS)
    print(header)
    print("-" * len(header))
    for r in all_results:
        if r.error:
            print(f"{r.model:<9} {r.tool:<10} FAILED: {r.error[:150]}")
            continue
        times = ["-" if v != v else f"{v:.3f}" for v in (r.median(ph) for ph in (*PHASES, "total"))]
        note = f" same pruned shapes as ours: {r.same_shapes}" if r.same_shapes else " "
        print(table_line(COLUMNS, [r.model, r.tool, *times, r.macs / 1e9, r.params / 1e6, note]))


def print_speedups(models: list[str], all_results: list[Result], befores: dict[str, ppf.Profile]) -> None:
    """Per model: its size before pruning, each Torch-Pruning row's time over ours, where our time went."""
    for m in models:
        b = befores[m]
        print(f"{m}: before pruning {b.macs / 1e9:.3f} GMACs, {b.params / 1e6:.3f} M params")
        rs = {r.tool: r for r in all_results if r.model == m}
        ours = rs["ours"]
        for r in rs.values():
            if r.tool != "ours":
                if r.error or ours.error:
                    print(f"  speed-up = {r.tool} total / ours total: n/a ({r.tool if r.error else 'ours'} failed)")
                else:
                    extra = "" if r.tool == "tp" else "  (different scope: TP prunes more)"
                    print(f"  speed-up = {r.tool} total / ours total = {r.median('total'):.3f} / "
                          f"{ours.median('total'):.3f} = {r.median('total') / ours.median('total'):.2f}x{extra}")
        for r in rs.values():
            print(f"  {r.tool:<10} prunes: {r.scope}")
        if not ours.error:
            share = {ph: ours.median(ph) / ours.median("total") for ph in PHASES}
            print("  ours, share of total: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items()))


def print_memory(mems: dict[str, MemResult]) -> None:
    for m, mem in mems.items():
        if not mem.how:
            continue
        line = (f"{m}: peak extra memory during apply: {mem.apply_extra / 2**20:.1f} MB; size of the replaced "
                f"tensors: {mem.new_bytes / 2**20:.1f} MB new (replacing {mem.old_bytes / 2**20:.1f} MB)  [{mem.how}]")
        if mem.tp_extra is not None:
            line += f"; Torch-Pruning step, same measure: {mem.tp_extra / 2**20:.1f} MB"
        print(line)


def csv_rows(all_results: list[Result], befores: dict[str, ppf.Profile], mems: dict[str, MemResult],
             device: str, reps: int) -> list[dict]:
    rows = []
    for r in all_results:
        ours = next(o for o in all_results if o.model == r.model and o.tool == "ours")
        mem = mems[r.model]
        peak = {"ours": mem.apply_extra, "tp": mem.tp_extra}.get(r.tool)
        rows.append({"model": r.model, "tool": r.tool, "scope": r.scope, "device": device, "reps": reps,
                     **{f"{ph}_s": f"{r.median(ph):.6f}" for ph in (*PHASES, "total")},
                     "speedup_vs_ours": "" if r.error or ours.error else f"{r.median('total') / ours.median('total'):.4f}",
                     "macs_after": r.macs, "params_after": r.params,
                     "macs_before": befores[r.model].macs, "params_before": befores[r.model].params,
                     "apply_peak_extra_bytes": "" if peak is None else peak,
                     "replaced_new_bytes": mem.new_bytes if r.tool == "ours" else "",
                     "replaced_old_bytes": mem.old_bytes if r.tool == "ours" else "", "error": r.error or ""})
    return rows


def torch_pruning_version(p: argparse.ArgumentParser, no_tp: bool) -> str:
    """Torch-Pruning's version and path; exits through `p` when it is wanted and not installed."""
    if no_tp:
        return "not used (--no-tp)"
    try:
        import torch_pruning as tp
    except ImportError as e:
        p.error(f"{e}; install torch-pruning==1.6.1 or pass --no-tp")
    from importlib.metadata import version

    return f"{version('torch-pruning')} ({tp.__file__})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,vit_b_16", help="comma-separated: resnet50, vit_b_16")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per tool (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--csv", help="also write the results to this CSV file")
    p.add_argument("--no-tp-recipe", action="store_true", help="skip Torch-Pruning's own ViT recipe (tp-recipe)")
    p.add_argument("--no-tp", action="store_true", help="time ours alone, without Torch-Pruning")
    p.add_argument("--_memory-only", dest="memory_only", action="store_true", help=argparse.SUPPRESS)
    with machine(p, argv) as args:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        for m in models:
            if m not in CLASSIFIER:
                p.error(f"unknown model {m!r}; expected one of {', '.join(CLASSIFIER)}")
        check_device(p, args.device)
        if args.reps < 1:
            p.error("--reps must be >= 1")

        if args.memory_only:  # internal: one model, one JSON line (see memory_in_subprocess)
            m = models[0]
            x = torch.randn(1, 3, 224, 224, device=args.device)
            mem = measure_memory(build_model(m, args.device), x, m, args.device, with_tp=not args.no_tp)
            print(json.dumps(mem.__dict__))
            return 0

        tp_version = torch_pruning_version(p, args.no_tp)
        print(f"torch {torch.__version__}, torch-pruning {tp_version}, "
              f"pyprune_fast {ppf.__version__}, device {args.device}, {torch.get_num_threads()} threads, ratio {RATIO}, "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
            print("warning: the machine is busy; with OpenMP threads competing for cores every parallel op can "
                  "wait a scheduler slice, and the times below mean little", file=sys.stderr)

        all_results: list[Result] = []
        befores: dict[str, ppf.Profile] = {}
        for m in models:
            x = torch.randn(1, 3, 224, 224, device=args.device)
            res, befores[m] = bench_model(m, build_model(m, args.device), x, args.reps, args.device, not args.no_tp_recipe,
                                          not args.no_tp)
            all_results += res

        print_results(all_results, args.reps)
        print()
        print_speedups(models, all_results, befores)
        print()
        mems: dict[str, MemResult] = {}
        for m in models:
            ok = {r.tool: r.error is None for r in all_results if r.model == m}
            mems[m] = memory_in_subprocess(m, args.device, with_tp=ok.get("tp", False)) if ok["ours"] else MemResult()
        print_memory(mems)
        if args.csv:
            write_csv(args.csv, csv_rows(all_results, befores, mems, args.device, args.reps))
        return 0


if __name__ == "__main__":
    sys.exit(main())
