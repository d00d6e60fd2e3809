"""Coverage of pyprune_fast over the model zoos users bring (see benchmarks/zoo.py), with Torch-Pruning as peer.

For each model (random init, eval mode, seed 0, small inputs), `pyprune_fast.testing.check_coverage` builds the
DependencyGraph (timed on one CPU thread), removes a third of one group's channels after zeroing them (the output
must not change: rel. err < 1e-5), prunes the model with ppf.prune(method="l1", ratio=--ratio) and checks that it
runs and that every output keeps its shape (for YOLO the predictions: `zoo.KEEP_OUTPUTS`). --peer also prunes a
fresh copy with Torch-Pruning's MagnitudePruner (L1, the same ratio; the layers whose outputs are the model's
outputs ignored) and records its MACs cut (by its own counter) and whether the pruned model runs with the same
output shapes. --onnx exports every pruned model that runs with `ppf.export_onnx`, runs it in onnxruntime (CPU) on
the same input and records whether it exports and the largest difference of its outputs from PyTorch's, over the
output's scale (the largest |y|; it matches below 1e-4). Parameters left all zero by the model's init (a ViT's head)
are filled with random values first: else every output would be 0 and any export would match.

  python benchmarks/coverage.py [--zoo torchvision|timm|hf|dense|yolo|all] [--models a,b] [--limit N]
                                [--size 224] [--ratio 0.3] [--peer] [--onnx] [--prune-embedding] [--budget 600]
                                [--csv out.csv] [--strict]

One table line per model, then per zoo: models, runs after pruning, same output shapes, median MACs cut (ours;
ours and the peer's where both run), models below 20% cut, graph build times, and the top lock reasons
(`pyprune_fast.testing.lock_kind`, by groups and by models). A model that fails to build is skipped (with its
reason); any other failure is a row. --size applies to torchvision classifiers (vit/swin/maxvit always run at
224, inception_v3 at 299 when --size is left at its default and at no less than 75 otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine, table_header, table_line, write_csv  # noqa: E402
from zoo import DEFAULT_SIZE, KEEP_OUTPUTS, ZOOS, Builder, torchvision_models, zoo_models  # noqa: E402

from pyprune_fast.testing import (OUTPUT_LOCK, SAME, CoverageResult, call_model, check_coverage, compare_shapes,  # noqa: E402
                                  forward_leaves, output_leaves)

LOW_CUT = 0.2  # a model whose MACs fall by less than this is listed
GRAPH_SECONDS = 1.0  # the target for graph construction below 100 M parameters
LARGE_PARAMS = 100e6
ONNX_TOLERANCE = 1e-4  # onnxruntime vs PyTorch: float32 rounding in another summation order, over the largest |y|


class ModelTimeout(BaseException):
    """A model ran past its time budget (a BaseException, so that no stage's `except Exception` swallows it)."""


@contextlib.contextmanager
def time_budget(seconds: int):
    """Raise ModelTimeout in the main thread after `seconds` (0: no budget); SIGALRM, so Python code only."""
    def on_alarm(signum, frame):
        raise ModelTimeout(f"over the {seconds} s budget")

    old = signal.signal(signal.SIGALRM, on_alarm) if seconds else None
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        if old is not None:
            signal.signal(signal.SIGALRM, old)


@dataclass
class Row(CoverageResult):
    """One model's `check_coverage` result, with its zoo, name, size and the peer's."""

    zoo: str = ""
    model: str = ""
    params: float = math.nan  # millions
    built: bool = True  # False: skipped (`reason` says why it did not build)
    peer_macs_cut: float = math.nan
    peer_runs: bool = False
    peer_shapes: str = ""
    peer_reason: str = ""
    onnx_exports: bool = False
    onnx_diff: float = math.nan  # the largest |onnxruntime - PyTorch| over the largest |PyTorch|
    onnx_reason: str = ""  # "ok", or why not (empty: not checked)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def output_layers(model: torch.nn.Module, x: Any) -> list[torch.nn.Module]:
    """The leaf modules whose output shares storage with one of the model's outputs (the classifier, say)."""
    seen: dict[torch.nn.Module, set[int]] = {}

    def hook(m, inputs, out):
        seen.setdefault(m, set()).update(t.untyped_storage().data_ptr() for _, t, _ in output_leaves(out))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            out = call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    ptrs = {t.untyped_storage().data_ptr() for _, t, _ in output_leaves(out)} - {0}
    return [m for m, p in seen.items() if p & ptrs and any(True for _ in m.parameters(recurse=False))]


def run_peer(row: Row, builder: Builder, ratio: float) -> None:
    """Torch-Pruning's MagnitudePruner (L1, `ratio` of every group, output layers ignored) on a fresh model."""
    import torch_pruning as tp

    try:
        model, x = builder()
        y_ref = forward_leaves(model, x)
        macs0, _ = tp.utils.count_ops_and_params(model, x)
        pruner = tp.pruner.MagnitudePruner(model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=output_layers(model, x),
                                           global_pruning=False)
        pruner.step()
    except Exception as e:
        row.peer_reason = f"prune: {_err(e)}"
        return
    try:
        y = forward_leaves(model, x)
        row.peer_runs = True
        row.peer_shapes = compare_shapes(y_ref, y)
        macs1, _ = tp.utils.count_ops_and_params(model, x)
        row.peer_macs_cut = 1 - macs1 / macs0 if macs0 else math.nan
        row.peer_reason = "ok" if row.peer_shapes.startswith(SAME) else f"output shapes {row.peer_shapes}"
    except Exception as e:
        row.peer_reason = row.peer_reason or f"forward after prune: {_err(e)}"


def check_onnx(model: torch.nn.Module, x: Any) -> tuple[bool, float, str]:
    """(exports, largest output difference, "ok" or why not) for the pruned `model` exported by ppf.export_onnx
    and run in onnxruntime on `x`, against PyTorch's outputs; all-zero parameters are made random first."""
    import onnxruntime as ort
    from torch.utils._pytree import tree_flatten

    import pyprune_fast as ppf

    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.normal_(0, 0.02)
    want = [t for _, t, _ in forward_leaves(model, x)]
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = ppf.export_onnx(model, x, os.path.join(folder, "model.onnx"))
        except Exception as e:
            return False, math.nan, f"export: {_err(e)}"
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            tensors = [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]
            got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors)})
        except Exception as e:
            return True, math.nan, f"onnxruntime: {_err(e)}"
    if len(got) != len(want):
        return True, math.nan, f"onnxruntime gives {len(got)} outputs, PyTorch {len(want)}"
    diff = max(float((torch.as_tensor(g) - w).abs().max() / w.abs().max().clamp(min=1e-30)) for g, w in zip(got, want))
    return True, diff, "ok" if diff < ONNX_TOLERANCE else f"outputs differ by {diff:.1e}"


def check_model(zoo: str, name: str, builder: Builder, ratio: float = 0.3, peer: bool = False,
                budget: int = 0, prune_embedding: bool = False, onnx: bool = False) -> Row:
    """Build `name` with `builder` and run `check_coverage` on it (and the peer); never raises."""
    t0 = time.perf_counter()
    row = Row(zoo=zoo, model=name)
    try:
        with time_budget(budget):
            model, x = builder()
    except (Exception, ModelTimeout) as e:
        row.built, row.reason, row.seconds = False, f"build: {_err(e)}", time.perf_counter() - t0
        return row
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with time_budget(budget):
        result = check_coverage(model, x, ratio, prune_embedding=prune_embedding,
                                keep_outputs=KEEP_OUTPUTS.get(zoo, "all"))
    exported = (False, math.nan, "")
    if onnx and result.runs_after_prune:
        try:
            with time_budget(budget):
                exported = check_onnx(model, x)
        except (Exception, ModelTimeout) as e:
            exported = (False, math.nan, f"unexpected: {_err(e)}")
    del model, x
    gc.collect()
    row = Row(**{f.name: getattr(result, f.name) for f in fields(CoverageResult)}, zoo=zoo, model=name, params=params)
    row.onnx_exports, row.onnx_diff, row.onnx_reason = exported
    if peer:
        try:
            with time_budget(budget):
                run_peer(row, builder, ratio)
        except ModelTimeout as e:
            row.peer_reason = f"unexpected: {_err(e)}"
        gc.collect()
    row.seconds = time.perf_counter() - t0
    return row


COLUMNS = [("model", "<34", ""), ("Mparam", ">7", ".1f"), ("groups", ">6", ""), ("prun", ">4", ""),
           ("GMACs", ">8", ".3f"), ("cut%", ">5", ".0f"), ("graph_s", ">7", ".2f"), ("sec", ">6", ".1f"),
           ("dead", ">4", ""), ("runs", ">4", ""), ("shape", ">5", ""), ("TPcut%", ">6", ".0f"), ("TP", ">4", ""),
           ("onnx", ">4", ""), ("onnx_err", ">8", ".1e"), (" result | top lock", "", "")]


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def format_row(r: Row, peer: bool = False, width: int = 110) -> str:
    text = r.reason if not r.ok else f"ok | {r.top_lock or '-'}"
    text += f" | onnx: {r.onnx_reason}" if r.onnx_reason not in ("", "ok") else ""
    text = text if len(text) <= width else text[: width - 3] + "..."
    dead = "ok" if r.dead_check == "ok" else "skip" if r.dead_check.startswith("skipped") else "-" if not r.dead_check else "FAIL"
    shape = "-" if not r.shapes else "same" if r.shapes == SAME else "data" if r.shapes.startswith(SAME) else "DIFF"
    tp = ("ok" if r.peer_reason == "ok" else "FAIL" if r.peer_reason else "-") if peer else ""
    onnx = "ok" if r.onnx_reason == "ok" else "-" if not r.onnx_reason else "DIFF" if r.onnx_exports else "FAIL"
    return table_line(COLUMNS, [r.model, r.params, r.groups, r.prunable_groups, r.macs_before, 100 * r.macs_cut,
                                r.graph_seconds, r.seconds, dead, _yes(r.runs_after_prune), shape,
                                100 * r.peer_macs_cut, tp, onnx, r.onnx_diff, " " + text])


def _median(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    return f"{100 * statistics.median(values):.1f}%" if values else "-"


def summary(zoo: str, rows: list[Row], peer: bool, onnx: bool = False) -> dict[str, Any]:
    """The zoo's numbers, as printed (and as a dict, for the all-zoos table)."""
    built = [r for r in rows if r.built]
    ran = [r for r in built if r.runs_after_prune]
    both = [r for r in ran if r.peer_runs]
    small = [r for r in built if r.params < LARGE_PARAMS / 1e6 and not math.isnan(r.graph_seconds)]
    graph_times = sorted(r.graph_seconds for r in small)
    s = {
        "zoo": zoo, "models": len(built), "skipped": len(rows) - len(built), "ok": sum(r.ok for r in built),
        "runs": len(ran), "same_shapes": sum(r.shapes.startswith(SAME) for r in built),
        "dead_ok": sum(r.dead_check == "ok" for r in built), "median_cut": _median([r.macs_cut for r in ran]),
        "below_20": sum(r.macs_cut < LOW_CUT for r in ran),
        "graph_median_s": f"{statistics.median(graph_times):.2f}" if graph_times else "-",
        "graph_over_1s": sum(t > GRAPH_SECONDS for t in graph_times),
    }
    if peer:
        s.update(peer_runs=sum(r.peer_runs for r in built), peer_same=sum(r.peer_shapes.startswith(SAME) for r in built),
                 both_median_cut=f"{_median([r.macs_cut for r in both])} vs {_median([r.peer_macs_cut for r in both])}"
                 f" ({len(both)})")
    if onnx:
        checked = [r for r in built if r.onnx_reason]
        diffs = [r.onnx_diff for r in checked if not math.isnan(r.onnx_diff)]
        s.update(onnx_checked=len(checked), onnx_exports=sum(r.onnx_exports for r in checked),
                 onnx_match=sum(r.onnx_reason == "ok" for r in checked),
                 onnx_max_diff=f"{max(diffs):.1e}" if diffs else "-")
    return s


def lock_table(rows: list[Row], n: int = 10) -> list[tuple[str, int, int, int]]:
    """The `n` lock kinds that lock the most groups over `rows` (the model's output aside): (kind, groups,
    channels, models)."""
    groups, channels, models = Counter(), Counter(), Counter()
    for r in rows:
        for kind, (g, c) in r.locks.items():
            if kind != OUTPUT_LOCK:
                groups[kind] += g
                channels[kind] += c
                models[kind] += 1
    return [(k, g, channels[k], models[k]) for k, g in groups.most_common(n)]


def print_summary(zoo: str, rows: list[Row], peer: bool, onnx: bool = False) -> dict[str, Any]:
    s = summary(zoo, rows, peer, onnx)
    print(f"\n== {zoo}: {s['models']} models ({s['skipped']} skipped: did not build), {s['ok']} pass every check, "
          f"{s['runs']} run after pruning, {s['same_shapes']} keep their output shapes, {s['dead_ok']} dead-channel "
          f"checks ok; median MACs cut {s['median_cut']}, {s['below_20']} below {LOW_CUT:.0%}; graph build median "
          f"{s['graph_median_s']} s, {s['graph_over_1s']} over {GRAPH_SECONDS:g} s (< 100 M params)")
    if peer:
        print(f"   Torch-Pruning: {s['peer_runs']} run after pruning, {s['peer_same']} keep their output shapes; "
              f"median MACs cut where both run, ours vs peer: {s['both_median_cut']}")
    if onnx:
        print(f"   ONNX: of {s['onnx_checked']} pruned models that run, {s['onnx_exports']} export and {s['onnx_match']} "
              f"match in onnxruntime (< {ONNX_TOLERANCE:g}; largest difference {s['onnx_max_diff']})")
        for r in rows:
            if r.onnx_reason not in ("", "ok"):
                print(f"   onnx {r.model}: {r.onnx_reason}")
    for r in rows:
        if not r.built:
            print(f"   skipped {r.model}: {r.reason}")
    print("   top lock reasons (groups, channels, models):")
    for kind, g, c, m in lock_table(rows):
        print(f"   {g:>6} {c:>8} {m:>4}  {kind}")
    low = [f"{r.model} ({100 * r.macs_cut:.0f}%)" for r in rows if r.runs_after_prune and r.macs_cut < LOW_CUT]
    if low:
        print(f"   below {LOW_CUT:.0%} cut: {', '.join(low)}")
    return s


def csv_row(r: Row) -> dict[str, Any]:
    """`r`'s fields, its lock kinds as JSON."""
    return {f.name: json.dumps(v) if isinstance(v := getattr(r, f.name), dict) else v for f in fields(Row)}


def select(zoos: list[str], models: str, limit: int, size: int) -> list[tuple[str, str, Builder]]:
    """(zoo, name, builder) for every model of `zoos`, filtered by the comma-separated `models` and `limit` per zoo;
    ValueError naming the models of `models` that no selected zoo has."""
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    chosen, known = [], set()
    for zoo in zoos:
        entries = torchvision_models(size) if zoo == "torchvision" else zoo_models(zoo)
        known.update(n for n, _ in entries)
        entries = [e for e in entries if not wanted or e[0] in wanted]
        chosen += [(zoo, n, b) for n, b in entries[: limit or None]]
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ValueError(f"unknown models: {', '.join(unknown)}")
    return chosen


def _warm_up() -> None:
    """One graph of a tiny model before any is timed: a process's first pass on meta tensors imports torch's
    Python meta kernels (torch._refs, torch._dynamo), seconds once per process, not per model."""
    import pyprune_fast as ppf

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    ppf.DependencyGraph(tiny, torch.randn(1, 3, 1, 1))
    (torch.empty(2, device="meta") + torch.empty(2, device="meta")).div(2).sigmoid()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", default="torchvision", choices=[*ZOOS, "all"], help="which zoo (default torchvision)")
    p.add_argument("--models", default="", help="comma-separated model names (default: every model of the zoo)")
    p.add_argument("--limit", type=int, default=0, help="at most this many models per zoo (default: all)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="torchvision classifiers' input side (default 224)")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of every prunable group to remove (default 0.3)")
    p.add_argument("--peer", action="store_true", help="also prune with Torch-Pruning (L1, the same ratio)")
    p.add_argument("--onnx", action="store_true",
                   help="also export every pruned model to ONNX and compare onnxruntime's outputs with PyTorch's")
    p.add_argument("--prune-embedding", action="store_true", help="prune transformers' embedding width too")
    p.add_argument("--budget", type=int, default=600, help="seconds per model and per library (0: none; default 600)")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    p.add_argument("--strict", action="store_true", help="exit 1 when any model fails")
    with machine(p, argv) as args:
        if not 0 <= args.ratio < 1:
            p.error(f"--ratio must be in [0, 1), got {args.ratio}")
        if args.limit < 0 or args.budget < 0:
            p.error("--limit and --budget must be >= 0")
        zoos = list(ZOOS) if args.zoo == "all" else [args.zoo]
        try:
            chosen = select(zoos, args.models, args.limit, args.size)
        except ValueError as e:
            p.error(str(e))

        try:
            from tqdm import tqdm

            it = tqdm(chosen, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            it = chosen
        _warm_up()
        print(table_header(COLUMNS), flush=True)
        rows: list[Row] = []
        for zoo, name, builder in it:
            if hasattr(it, "set_description"):
                it.set_description(name)
            row = check_model(zoo, name, builder, args.ratio, args.peer, args.budget, args.prune_embedding, args.onnx)
            rows.append(row)
            print(format_row(row, args.peer), flush=True)
            if args.csv:  # after every model: a run cut short keeps its rows
                with contextlib.redirect_stdout(io.StringIO()):  # write_csv says "wrote": once, at the end
                    write_csv(args.csv, [csv_row(r) for r in rows])

        for zoo in zoos:
            print_summary(zoo, [r for r in rows if r.zoo == zoo], args.peer, args.onnx)
        if len(zoos) > 1:
            print("\n== all zoos: top lock reasons (groups, channels, models):")
            for kind, g, c, m in lock_table(rows):
                print(f"   {g:>6} {c:>8} {m:>4}  {kind}")
        failed = [r for r in rows if r.built and not r.ok]
        print(f"\n{len(rows) - len(failed)} of {len(rows)} models passed or were skipped ({sum(r.seconds for r in rows):.0f} s)")
        if args.csv:
            print(f"wrote {args.csv}")
        return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
