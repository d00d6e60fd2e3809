"""Coverage of pyprune_fast over every image-classification model in torchvision.

For each model (random init, eval mode, torch.manual_seed(0), input torch.randn(1, 3, S, S)),
`pyprune_fast.testing.check_coverage` builds the DependencyGraph, removes a third of one group's
channels after zeroing them (the output must not change: rel. err < 1e-5), prunes the model with
ppf.prune(method="l1", ratio=--ratio) and checks the output keeps its shape and is finite; the whole
is timed.

  python benchmarks/coverage.py [--models resnet18,vit_b_16] [--size 224] [--ratio 0.3] [--csv out.csv] [--strict]

vit/swin/maxvit models always run at 224 (fixed position embeddings / window grids); inception_v3
runs at 299 when --size is left at its default, and at no less than 75 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import table_header, table_line, write_csv  # noqa: E402

from pyprune_fast.testing import CoverageResult, check_coverage  # noqa: E402

DEFAULT_SIZE = 224
FIXED_224 = ("vit_", "swin_", "maxvit_")


@dataclass
class Row(CoverageResult):
    """One model's `check_coverage` result, with its name and input side."""

    model: str = ""
    size: int = 0


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


def check_model(name: str, size: int = DEFAULT_SIZE, ratio: float = 0.3) -> Row:
    """Build torchvision's `name` (seed 0) and run `check_coverage` on it; never raises."""
    t0 = time.perf_counter()
    row = Row(model=name, size=input_size(name, size))
    torch.manual_seed(0)
    try:
        model = build_model(name)
    except Exception as e:
        row.reason = f"build: {type(e).__name__}: {' '.join(str(e).split())}"
        row.seconds = time.perf_counter() - t0
        return row
    result = check_coverage(model, torch.randn(1, 3, row.size, row.size), ratio)
    del model
    gc.collect()
    row = Row(**asdict(result), model=name, size=row.size)
    row.seconds = time.perf_counter() - t0
    return row


COLUMNS = [("model", "<22", ""), ("size", ">4", ""), ("groups", ">6", ""), ("prunable", ">8", ""), ("GMACs", ">8", ".3f"),
           ("pruned", ">8", ".3f"), ("sec", ">7", ".1f"), ("dead", ">4", ""), (" result", "", "")]


def format_row(r: Row, width: int = 90) -> str:
    reason = r.reason if len(r.reason) <= width else r.reason[: width - 3] + "..."
    dead = "ok" if r.dead_check == "ok" else "skip" if r.dead_check.startswith("skipped") else "-" if not r.dead_check else "FAIL"
    return table_line(COLUMNS, [r.model, r.size, r.groups, r.prunable_groups, r.macs_before, r.macs_after, r.seconds,
                                dead, " " + reason])


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
    if not 0 <= args.ratio < 1:
        p.error(f"--ratio must be in [0, 1), got {args.ratio}")

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
    print(table_header(COLUMNS), flush=True)
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
        write_csv(args.csv, [{"model": r.model, "size": r.size, **{fl.name: getattr(r, fl.name) for fl in fields(CoverageResult)}}
                             for r in rows])
    return 1 if args.strict and passed < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
