"""End-to-end one-shot L1 pruning (ratio 0.5) of torchvision ResNet-50 and ViT-B/16: ours vs Torch-Pruning.

Both tools prune identical copies of one pristine model (weights=None, eval mode, seed 0) on the
example input torch.randn(1, 3, 224, 224), with the classifier ignored, in the same process, and are
timed alternately rep after rep; medians are printed. Each rep prunes a fresh `copy.deepcopy` of the
pristine model, made outside the timed region; the garbage collector is off inside it (and run
between reps), for both tools alike.

  ours   graph        ppf.DependencyGraph(model, x, ignored_layers=[classifier] (+ attention modules for ViT))
         scores+plan  g.prunable_groups; pyprune_fast.methods.scores("l1", g, groups); ppf.Plan(g);
                      plan.remove(group, argsort(score)[: int(0.5 * channels)]) for every group
         apply        ppf.apply(plan)
  tp     graph        tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                      pruning_ratio=0.5, ignored_layers=[classifier], global_pruning=False)
                      (builds Torch-Pruning's DependencyGraph, with a real forward pass)
         scores       pruner.step(interactive=True) up to its first group: the importance of every
                      group and the ranking (step() runs exactly this generator, pruning each group)
         step         pruning the groups the generator yields

What is pruned. ResNet-50: every prunable channel group, by both tools. ViT-B/16: ours prunes the
MLP hidden dims (3072 -> 1536 in every block), with the attention modules in ignored_layers (ours
would otherwise prune whole heads too); it leaves the embedding dim alone because torchvision's
code reads it (`hidden_dim`). `tp` is Torch-Pruning restricted to the same scope
(conv_proj also ignored, which locks the embedding-dim group), so the speed-up compares equal work.
`tp-recipe` is Torch-Pruning's own recipe for torchvision ViT (its benchmarks/prunability script:
round_to=num_heads, then `model.hidden_dim = model.conv_proj.out_channels`, inside the timed region):
it also halves the embedding dim (head dim 64 -> 32, 12 heads kept), so it does more work and gives a
smaller model. (Adding num_heads={attention: 12} makes TP 1.6.1 skip the embedding-dim group of
nn.MultiheadAttention altogether, so the recipe leaves it out.) MACs and parameters after pruning are
counted by `ppf.profile(model, x)` for every model, and a forward pass of every pruned model must give
shape (1, 1000) before anything is timed.

Memory during ppf.apply (one extra, untimed run after the timings, in a fresh child interpreter per
model so that earlier runs leave no freed heap memory behind for it to reuse unseen). On CUDA: torch.cuda peak
allocated bytes minus allocated bytes before the call. On the CPU torch exposes no allocator
statistics (and torch.profiler's memory events do not record these allocations), so the resident
set size is read from /proc/self/statm by a background thread every 1 ms and right after every
`pyprune_fast.ops.gather_channels` call (wrapped only for this run); the peak minus the RSS before
the call is reported. The child's glibc mmap threshold is fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so every
tensor of 64 KiB or more is its own mapping and is returned to the OS when freed: the RSS then
follows the live tensors instead of the heap's high-water mark. It is approximate (page granularity,
a 1 ms sampler can miss short spikes, small allocations come from the heap). "Size of the replaced
tensors" is the sum of numel * element_size of the parameters and buffers whose shape changed, new
(after) and old (before). The same sampler is run over Torch-Pruning's step for comparison.

  python benchmarks/bench_prune.py [--models resnet50,vit_b_16] [--reps 5] [--device cpu|cuda] [--csv out.csv]
                                  [--no-tp-recipe] [--no-tp]

--no-tp times ours alone (where Torch-Pruning is not installed).
"""

from __future__ import annotations

import argparse
import copy
import csv
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------
# The two tools. Each prunes `model` in place and returns its phase times in seconds.


def run_ours(model: nn.Module, x: torch.Tensor, model_name: str, device: str) -> dict[str, float]:
    ignored = ours_ignored(model, model_name)
    t0 = time.perf_counter()
    g = ppf.DependencyGraph(model, x, ignored_layers=ignored)
    sync(device)
    t1 = time.perf_counter()
    groups = g.prunable_groups
    scores = pyprune_fast.methods.scores("l1", g, groups)
    plan = ppf.Plan(g)
    for grp, s in zip(groups, scores):
        plan.remove(grp, torch.argsort(s)[: int(RATIO * grp.channels)])
    sync(device)
    t2 = time.perf_counter()
    ppf.apply(plan)
    sync(device)
    t3 = time.perf_counter()
    return {"graph": t1 - t0, "scores": t2 - t1, "apply": t3 - t2}


def _tp_pruner(model: nn.Module, x: torch.Tensor, model_name: str, recipe: bool):
    import torch_pruning as tp

    ignored = [model.get_submodule(CLASSIFIER[model_name])]
    kwargs = {}
    if model_name.startswith("vit"):
        if recipe:  # Torch-Pruning's torchvision-ViT recipe: embedding dim too, in multiples of num_heads.
            # Not num_heads={attention: 12}: with it, TP 1.6.1 treats the embedding-dim group of
            # nn.MultiheadAttention as an attention group, finds no downstream root and skips it.
            kwargs = dict(round_to=model.encoder.layers[0].num_heads)
        else:  # same scope as ours: the embedding-dim group holds conv_proj, so ignoring it locks that group
            ignored.append(model.conv_proj)
    return tp.pruner.MagnitudePruner(
        model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
        ignored_layers=ignored, global_pruning=False, **kwargs)


def run_tp(model: nn.Module, x: torch.Tensor, model_name: str, device: str, recipe: bool = False,
           around_step: Optional[Callable] = None) -> dict[str, float]:
    t0 = time.perf_counter()
    pruner = _tp_pruner(model, x, model_name, recipe)
    sync(device)
    t1 = time.perf_counter()
    with around_step() if around_step else _nothing():
        groups = pruner.step(interactive=True)  # what pruner.step() runs, split to time its two halves
        first = next(groups, None)
        sync(device)
        t2 = time.perf_counter()
        if first is not None:
            first.prune()
            for grp in groups:
                grp.prune()
        if model_name.startswith("vit"):  # torchvision's ViT reads hidden_dim in forward
            model.hidden_dim = model.conv_proj.out_channels
        sync(device)
    t3 = time.perf_counter()
    return {"graph": t1 - t0, "scores": t2 - t1, "apply": t3 - t2}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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
        out.append(Tool("tp-recipe", lambda *a, **k: run_tp(*a, recipe=True, **k),
                        "MLP hidden + embedding dims (TP's torchvision-ViT recipe, round_to=num_heads)"))
    return out


# --------------------------------------------------------------------------------------------------
# Memory


class RssSampler:
    """Peak resident set size (bytes) seen by a 1 ms polling thread and by explicit `sample()` calls."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._f = open("/proc/self/statm", "rb", buffering=0)
        self._lock = threading.Lock()

    def rss(self) -> int:
        with self._lock:
            self._f.seek(0)
            return int(self._f.read().split()[1]) * self.PAGE

    def sample(self) -> None:
        self.peak = max(self.peak, self.rss())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self._old_switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sample()
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._old_switch)
        self._f.close()
        return False

    @property
    def extra(self) -> int:
        return self.peak - self.base


class CudaPeak:
    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        return False


MMAP_THRESHOLD = 64 * 1024


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


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
    groups = g.prunable_groups
    plan = ppf.Plan(g)
    for grp, s in zip(groups, pyprune_fast.methods.scores("l1", g, groups)):
        plan.remove(grp, torch.argsort(s)[: int(RATIO * grp.channels)])
    before = _tensor_bytes(model)
    gc.collect()
    _malloc_trim()
    if cuda:
        with CudaPeak(device) as m:
            ppf.apply(plan)
        res.apply_extra = m.extra
    else:
        orig = ppf.ops.gather_channels
        with RssSampler() as m:
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
        _malloc_trim()
        holder = {}

        def around():
            holder["m"] = CudaPeak(device) if cuda else RssSampler()
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


def fmt_s(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def print_table(all_results: list[Result], reps: int) -> None:
    head = (f"{'model':<9} {'tool':<10} {'graph s':>8} {'scores s':>9} {'apply/step s':>12} {'total s':>8} "
            f"{'GMACs after':>11} {'M params after':>14}  notes")
    print(f"\nmedians of {reps} reps (ours: graph | scores+plan | apply;  Torch-Pruning: pruner init with its "
          f"DependencyGraph | importance+ranking | group pruning)")
    print(head)
    print("-" * len(head))
    for r in all_results:
        if r.error:
            print(f"{r.model:<9} {r.tool:<10} FAILED: {r.error[:150]}")
            continue
        note = f"same pruned shapes as ours: {r.same_shapes}" if r.same_shapes else ""
        print(f"{r.model:<9} {r.tool:<10} {fmt_s(r.median('graph')):>8} {fmt_s(r.median('scores')):>9} "
              f"{fmt_s(r.median('apply')):>12} {fmt_s(r.median('total')):>8} {r.macs / 1e9:>11.3f} "
              f"{r.params / 1e6:>14.3f}  {note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,vit_b_16", help="comma-separated: resnet50, vit_b_16")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per tool (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--csv", help="also write the results to this CSV file")
    p.add_argument("--no-tp-recipe", action="store_true", help="skip Torch-Pruning's own ViT recipe (tp-recipe)")
    p.add_argument("--no-tp", action="store_true", help="time ours alone, without Torch-Pruning")
    p.add_argument("--_memory-only", dest="memory_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in CLASSIFIER:
            p.error(f"unknown model {m!r}; expected one of {', '.join(CLASSIFIER)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.reps < 1:
        p.error("--reps must be >= 1")

    if args.memory_only:  # internal: one model, one JSON line (see memory_in_subprocess)
        m = models[0]
        x = torch.randn(1, 3, 224, 224, device=args.device)
        mem = measure_memory(build_model(m, args.device), x, m, args.device, with_tp=not args.no_tp)
        print(json.dumps(mem.__dict__))
        return 0

    if args.no_tp:
        tp_version = "not used (--no-tp)"
    else:
        try:
            import torch_pruning as tp
        except ImportError as e:
            p.error(f"{e}; install torch-pruning==1.6.1 or pass --no-tp")
        from importlib.metadata import version

        tp_version = f"{version('torch-pruning')} ({tp.__file__})"
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

    print_table(all_results, args.reps)
    print()
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
    print()
    mems: dict[str, MemResult] = {}
    for m in models:
        ok = {r.tool: r.error is None for r in all_results if r.model == m}
        mems[m] = memory_in_subprocess(m, args.device, with_tp=ok.get("tp", False)) if ok["ours"] else MemResult()
    for m in models:
        mem = mems[m]
        if not mem.how:
            continue
        line = (f"{m}: peak extra memory during apply: {mem.apply_extra / 2**20:.1f} MB; size of the replaced "
                f"tensors: {mem.new_bytes / 2**20:.1f} MB new (replacing {mem.old_bytes / 2**20:.1f} MB)  [{mem.how}]")
        if mem.tp_extra is not None:
            line += f"; Torch-Pruning step, same measure: {mem.tp_extra / 2**20:.1f} MB"
        print(line)

    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "tool", "scope", "device", "reps", "graph_s", "scores_s", "apply_s", "total_s",
                        "speedup_vs_ours", "macs_after", "params_after", "macs_before", "params_before",
                        "apply_peak_extra_bytes", "replaced_new_bytes", "replaced_old_bytes", "error"])
            for r in all_results:
                ours = next(o for o in all_results if o.model == r.model and o.tool == "ours")
                speed = "" if r.error or ours.error else f"{r.median('total') / ours.median('total'):.4f}"
                mem = mems[r.model]
                peak = {"ours": mem.apply_extra, "tp": mem.tp_extra}.get(r.tool)
                w.writerow([r.model, r.tool, r.scope, args.device, args.reps,
                            *(f"{r.median(ph):.6f}" for ph in (*PHASES, "total")), speed, r.macs, r.params,
                            befores[r.model].macs, befores[r.model].params, "" if peak is None else peak,
                            mem.new_bytes if r.tool == "ours" else "", mem.old_bytes if r.tool == "ours" else "",
                            r.error or ""])
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
