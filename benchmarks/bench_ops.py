"""Benchmark of the three ops on the conv layers of real networks, against the pure-PyTorch baseline.

For every conv layer of torchvision ResNet-50 and VGG-16 (random init: only shapes matter). For the
distances the filters are the rows (out channels) and C_in/groups * kh * kw the columns; gather and
merge work on the 4-D weights. Each op handles all layers in one call; the baseline is the per-layer
loop a user would write:

  pairwise_distance  ours: one call, all layers      baseline: torch.cdist(w, w) per layer
  gather_channels    ours: one call, all layers      baseline: w.index_select(0, keep) per layer
  merge_channels_    ours: merge + gather, one call  baseline: zeros.index_add_(1, assignments, w) per layer
                     (merging the input channels of every layer into half as many clusters)
                     (both also restore their scratch copies of the inputs each run, so they stay bounded)

For pairwise_distance the table also shows one matrix product of the same total FLOPs (sum of N^2 D
over layers), the speed of light for a Gram-based distance. Correctness is checked before timing.

  python benchmarks/bench_ops.py [--device cuda] [--models resnet50,vgg16] [--csv out.csv] [--plot out.png]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import bar_plot, check_device, conv_weights, machine, median_ms, print_table, write_csv  # noqa: E402

from pyprune_fast import ops  # noqa: E402


@dataclass
class Row:
    op: str
    model: str
    layers: int
    ours_ms: float
    baseline_ms: float
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.ours_ms


def bench_pairwise(model: str, ws: list[torch.Tensor], min_time: float) -> list[Row]:
    ws = [w.flatten(1) for w in ws]  # rows are filters
    ours = ops.pairwise_distance(ws)
    for w, d in zip(ws, ours):
        ref = torch.cdist(w.double(), w.double()).to(w.dtype)
        torch.testing.assert_close(d, ref, rtol=1e-3, atol=1e-3 * max(1.0, ref.abs().max().item()))
    t_ours = median_ms(lambda: ops.pairwise_distance(ws), min_time)
    t_base = median_ms(lambda: [torch.cdist(w, w) for w in ws], min_time)
    # One square matrix product with the same number of multiply-adds as all the Gram matrices.
    macs = sum(w.shape[0] ** 2 * w.shape[1] for w in ws)
    side = round(macs ** (1 / 3))
    a = torch.randn(side, side, device=ws[0].device, dtype=ws[0].dtype)
    t_mm = median_ms(lambda: a @ a, min_time)
    note = f"one matmul of the same {2 * macs / 1e9:.1f} GFLOP: {t_mm:.3f} ms; ours / matmul = {t_ours / t_mm:.2f}x"
    return [Row("pairwise_distance", model, len(ws), t_ours, t_base, note)]


def bench_gather(model: str, ws: list[torch.Tensor], min_time: float) -> list[Row]:
    # Prune half the filters (dim 0) of every layer.
    keeps = [torch.randperm(w.shape[0], device=w.device)[: max(1, w.shape[0] // 2)] for w in ws]
    for w, k, g in zip(ws, keeps, ops.gather_channels(ws, keeps, 0)):
        assert torch.equal(g, w.index_select(0, k))
    t_ours = median_ms(lambda: ops.gather_channels(ws, keeps, 0), min_time)
    t_base = median_ms(lambda: [w.index_select(0, k) for w, k in zip(ws, keeps)], min_time)
    return [Row("gather_channels", model, len(ws), t_ours, t_base, "keep half the filters of every layer")]


def random_clusters(channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Half as many clusters as channels; keep = the first member of each cluster."""
    clusters = max(1, channels // 2)
    assignments = torch.cat([torch.arange(clusters), torch.randint(0, clusters, (channels - clusters,))])
    assignments = assignments[torch.randperm(channels)].to(device)
    keep = torch.full((clusters,), channels, device=device).scatter_reduce(
        0, assignments, torch.arange(channels, device=device), "amin")
    return assignments, keep


def bench_merge(model: str, ws: list[torch.Tensor], min_time: float) -> list[Row]:
    # Merge input channels (dim 1), as channel addition does in the layer after a pruned one.
    clusters = [random_clusters(w.shape[1], w.device) for w in ws]
    work = [w.clone() for w in ws]
    scratch = [w.clone() for w in ws]

    def ours():
        torch._foreach_copy_(work, ws)
        ops.merge_channels_(work, [a for a, _ in clusters], [k for _, k in clusters], 1)
        return ops.gather_channels(work, [k for _, k in clusters], 1)

    def baseline():
        torch._foreach_copy_(scratch, ws)
        return [w.new_zeros(w.shape[0], k.numel(), *w.shape[2:]).index_add_(1, a, w) for w, (a, k) in zip(scratch, clusters)]

    for got, want in zip(ours(), baseline()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    t_ours = median_ms(ours, min_time)
    t_base = median_ms(baseline, min_time)
    return [Row("merge_channels_", model, len(ws), t_ours, t_base, "merge + gather vs index_add_, N/2 clusters")]


COLUMNS = [("op", "<18", ""), ("model", "<9", ""), ("layers", ">6", ""), ("ours ms", ">10", ".3f"),
           ("baseline ms", ">12", ".3f"), ("speed-up", ">9", "")]


def print_rows(rows: list[Row], device: str) -> None:
    print(f"\npyprune_fast ops vs per-layer PyTorch loop on {device} (median times)\n")
    print_table(COLUMNS, [(r.op, r.model, r.layers, r.ours_ms, r.baseline_ms, f"{r.speedup:.2f}x") for r in rows])
    print()
    for r in rows:
        if r.note:
            print(f"{r.op} / {r.model}: {r.note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--models", default="resnet50,vgg16", help="comma-separated torchvision model names")
    p.add_argument("--ops", default="pairwise_distance,gather_channels,merge_channels_")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per measurement")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--plot", help="also write a bar chart of the speed-ups to this PNG file")
    with machine(p, argv) as args:
        check_device(p, args.device)
        benches = {"pairwise_distance": bench_pairwise, "gather_channels": bench_gather, "merge_channels_": bench_merge}
        unknown = set(args.ops.split(",")) - benches.keys()
        if unknown:
            p.error(f"unknown op(s): {', '.join(sorted(unknown))}")

        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
        rows: list[Row] = []
        for model in args.models.split(","):
            ws = conv_weights(model, args.device)
            for op in args.ops.split(","):
                rows += benches[op](model, ws, args.min_time)
        print_rows(rows, device_name)
        if args.csv:
            write_csv(args.csv, [{"device": device_name, "op": r.op, "model": r.model, "layers": r.layers,
                                  "ours_ms": f"{r.ours_ms:.4f}", "baseline_ms": f"{r.baseline_ms:.4f}",
                                  "speedup": f"{r.speedup:.3f}", "note": r.note} for r in rows])
        if args.plot:
            bar_plot(args.plot, [f"{r.op}\n{r.model}" for r in rows], [r.speedup for r in rows],
                     "speed-up over per-layer loop", title=f"pyprune_fast ops on {device_name}", hline=1.0)
        return 0


if __name__ == "__main__":
    sys.exit(main())
