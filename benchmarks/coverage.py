"""Coverage of pyprune_fast over every image-classification model in torchvision.

For each model (random init, eval mode, torch.manual_seed(0), input torch.randn(1, 3, S, S)):

  1. build the DependencyGraph (ignored_layers=[]) and count its groups and prunable groups;
  2. dead-channel check: in the first prunable group with >= 4 channels whose dead channels must be
     exact (no LayerNorm/GroupNorm mixes them), zero a third of the channels (random, seeded) on a
     copy of the model, record its output, remove those channels, and compare: the output must not
     change (max abs diff / max abs output < 1e-5);
  3. prune the model with ppf.prune(method="l1", ratio=--ratio), then check the output has the
     unpruned shape and is finite;
  4. time the whole thing.

  python benchmarks/coverage.py [--models resnet18,vit_b_16] [--size 224] [--ratio 0.3] [--csv out.csv] [--strict]

vit/swin/maxvit models always run at 224 (fixed position embeddings / window grids); inception_v3
runs at 299 when --size is left at its default, and at no less than 75 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pyprune_fast as ppf  # noqa: E402
from pyprune_fast.testing import dead_channels_are_exact, kill_channels  # noqa: E402

DEFAULT_SIZE = 224
DEAD_TOL = 1e-5
FIXED_224 = ("vit_", "swin_", "maxvit_")


@dataclass
class Row:
    model: str
    size: int = 0
    groups: int = 0
    prunable_groups: int = 0
    macs_before: float = float("nan")  # GMACs
    macs_after: float = float("nan")  # GMACs
    seconds: float = 0.0
    dead_check: str = ""  # "ok", "skipped: ...", or the failure
    ok: bool = False
    reason: str = ""  # "ok" or why it failed (stages separated by "; ")


def all_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def input_size(name: str, size: int) -> int:
    """The input side to use for `name` when asked for `size`."""
    if name.startswith(FIXED_224):
        return 224
    if name == "inception_v3":
        return 299 if size == DEFAULT_SIZE else max(size, 75)
    return size


def build_model(name: str) -> torch.nn.Module:
    import torchvision

    kwargs: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(name, **kwargs).eval()


def _tensor(out: Any) -> torch.Tensor:
    """The logits of a model's output (a tensor, or the first tensor of a tuple / namedtuple / dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return _tensor(out[0])
    raise TypeError(f"model output is a {type(out).__name__}, not a tensor")


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return _tensor(model(x)).detach().clone()


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def dead_channel_check(model: torch.nn.Module, x: torch.Tensor, graph: ppf.DependencyGraph, seed: int = 0) -> str:
    """Kill a third of one group's channels on a copy of `model`, remove them, and compare outputs.
    Returns "ok", "skipped: ..." or "dead-channel check: ..." (a failure). `graph` is of `model`."""
    group = next((g for g in graph.prunable_groups if g.channels >= 4 and dead_channels_are_exact(graph, g)), None)
    if group is None:
        return "skipped: no prunable group of >= 4 channels with exact dead channels"
    gen = torch.Generator().manual_seed(seed)
    channels = torch.randperm(group.channels, generator=gen)[: group.channels // 3].sort().values
    dead = copy.deepcopy(model)
    try:
        g1 = ppf.DependencyGraph(dead, x, ignored_layers=[])
        grp = g1.groups[group.index]
        if (grp.channels, grp.origin) != (group.channels, group.origin):
            return f"dead-channel check: group {group.index} differs on a copy ({grp.origin}, {grp.channels} channels)"
        kill_channels(g1, grp, channels)
        y0 = _forward(dead, x)
        g2 = ppf.DependencyGraph(dead, x, ignored_layers=[])
        grp = g2.groups[group.index]
        if (grp.channels, grp.origin) != (group.channels, group.origin):
            return f"dead-channel check: group {group.index} differs after killing ({grp.origin}, {grp.channels} channels)"
        plan = ppf.Plan(g2)
        plan.remove(grp, channels)
        ppf.apply(plan)
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


def check_model(name: str, size: int = DEFAULT_SIZE, ratio: float = 0.3) -> Row:
    """Run the whole coverage check on one torchvision model; never raises."""
    t0 = time.perf_counter()
    row = Row(name, input_size(name, size))
    reasons: list[str] = []
    model = None
    try:
        torch.manual_seed(0)
        try:
            model = build_model(name)
        except Exception as e:
            reasons.append(f"build: {_err(e)}")
            return row
        x = torch.randn(1, 3, row.size, row.size)
        try:
            y_ref = _forward(model, x)
        except Exception as e:
            reasons.append(f"forward: {_err(e)}")
            return row

        # 1. the graph
        graph = None
        try:
            graph = ppf.DependencyGraph(model, x, ignored_layers=[])
            row.groups, row.prunable_groups = len(graph.groups), len(graph.prunable_groups)
        except Exception as e:
            reasons.append(f"graph: {_err(e)}")

        # 2. dead channels
        if graph is not None:
            try:
                row.dead_check = dead_channel_check(model, x, graph)
            except Exception as e:
                row.dead_check = f"dead-channel check: {_err(e)}"
            if not (row.dead_check == "ok" or row.dead_check.startswith("skipped")):
                reasons.append(row.dead_check)
            graph = None  # free it (the model is pruned next; the graph would be stale anyway)
            gc.collect()

        # 3. prune the original model
        try:
            report = ppf.prune(model, x, method="l1", ratio=ratio)
            row.macs_before, row.macs_after = report.macs_before / 1e9, report.macs_after / 1e9
            if not row.groups:
                row.groups, row.prunable_groups = report.groups, report.prunable_groups
        except Exception as e:
            reasons.append(f"prune: {_err(e)}")
            return row
        try:
            y = _forward(model, x)
            if y.shape != y_ref.shape:
                reasons.append(f"pruned output shape {tuple(y.shape)} != {tuple(y_ref.shape)}")
            elif not torch.isfinite(y).all():
                reasons.append("pruned output is not finite")
        except Exception as e:
            reasons.append(f"forward after prune: {_err(e)}")
        return row
    except BaseException as e:  # MemoryError, KeyboardInterrupt inside a model: report, never crash the run
        if isinstance(e, KeyboardInterrupt):
            raise
        reasons.append(f"unexpected: {_err(e)}")
        return row
    finally:
        row.ok = not reasons
        row.reason = "ok" if row.ok else "; ".join(reasons)
        row.seconds = time.perf_counter() - t0
        del model
        gc.collect()


HEADER = f"{'model':<22} {'size':>4} {'groups':>6} {'prunable':>8} {'GMACs':>8} {'pruned':>8} {'sec':>7} {'dead':>4}  result"


def format_row(r: Row, width: int = 90) -> str:
    reason = r.reason if len(r.reason) <= width else r.reason[: width - 3] + "..."
    dead = "ok" if r.dead_check == "ok" else "skip" if r.dead_check.startswith("skipped") else "-" if not r.dead_check else "FAIL"
    return (f"{r.model:<22} {r.size:>4} {r.groups:>6} {r.prunable_groups:>8} {r.macs_before:>8.3f} "
            f"{r.macs_after:>8.3f} {r.seconds:>7.1f} {dead:>4}  {reason}")


def _short(reason: str) -> str:
    """A reason without its numbers, to group failures by kind."""
    first = reason.split(";")[0]
    return first[:70]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated model names (default: every torchvision classifier)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="input side (default 224)")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of every prunable group to remove (default 0.3)")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    p.add_argument("--strict", action="store_true", help="exit 1 when any model fails")
    args = p.parse_args(argv)

    names = all_models()
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in names]
        if unknown:
            p.error(f"unknown models: {', '.join(unknown)}")
        names = wanted

    try:
        from tqdm import tqdm

        it = tqdm(names, file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        it = names
    print(HEADER, flush=True)
    rows = []
    for i, name in enumerate(it):
        if hasattr(it, "set_description"):
            it.set_description(name)
        else:
            print(f"[{i + 1}/{len(names)}] {name}", file=sys.stderr, flush=True)
        row = check_model(name, args.size, args.ratio)
        rows.append(row)
        print(format_row(row), flush=True)

    passed = sum(r.ok for r in rows)
    print(f"\n{passed} of {len(rows)} models passed ({sum(r.seconds for r in rows):.0f} s)")
    failures = Counter(_short(r.reason) for r in rows if not r.ok)
    if failures:
        print("failures by reason:")
        for reason, n in failures.most_common():
            models = ", ".join(r.model for r in rows if not r.ok and _short(r.reason) == reason)
            print(f"  {n:>3}  {reason}  [{models}]")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
            w.writeheader()
            for r in rows:
                w.writerow(asdict(r))
    return 1 if args.strict and passed < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
