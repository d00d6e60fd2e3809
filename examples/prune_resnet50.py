"""Prune torchvision ResNet-50 by L1 magnitude, 50% of every prunable group, print the report (with the
latency measured before and after, eager PyTorch on this CPU) and plot it.

    python examples/prune_resnet50.py [--ratio 0.5] [--method l1] [--measure eager] [--out-dir bench_out]
"""

import argparse
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pyprune_fast as ppf  # noqa: E402
from machine import standalone  # noqa: E402


def demo(argv=None) -> list[str]:
    """Run the demo (printing as it goes) and return a summary of it in a few lines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--method", default="l1", choices=["l1", "l2"])
    p.add_argument("--measure", default="eager", choices=[*ppf.latency.BACKENDS, "none"],
                   help="how the latency before and after is measured (default eager; none: not measured)")
    p.add_argument("--out-dir", default="bench_out", help="where the widths PNG goes (default bench_out/)")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"resnet50_{args.method}_widths.png")
    torch.manual_seed(0)
    model = torchvision.models.resnet50()  # no downloads here: random weights, real architecture
    x = torch.randn(1, 3, 224, 224)
    print(f"pruning torchvision ResNet-50 (random weights) by {args.method}, {args.ratio:g} of every prunable group "
          f"(a progress bar shows the stages on a terminal once it takes 2 s)", flush=True)
    measure = None if args.measure == "none" else {"backend": args.measure, "min_time": 0.5, "min_runs": 5}
    report = ppf.prune(model, x, args.method, ratio=args.ratio, ignored_layers=[model.fc], measure=measure)
    seconds = sum(report.timings.values())  # the pruning's own time, the measurements apart
    print(report)
    model.eval()
    with torch.no_grad():
        print(f"\npruned model runs: output {tuple(model(x).shape)}, conv1 {model.conv1}, fc {model.fc}")
    report.plot(path)
    print(f"wrote {path}")
    speed = "" if report.speedup is None else (
        f", latency {report.latency_before.ms:.0f} ms -> {report.latency_after.ms:.0f} ms ({report.speedup:.2f}x "
        f"measured, {report.latency_after.setting})")
    return [f"ResNet-50 by {args.method}, {args.ratio:g} of every group, in {seconds:.1f} s: MACs "
            f"{report.macs_before / 1e9:.2f} G -> {report.macs_after / 1e9:.2f} G, params "
            f"{report.params_before / 1e6:.1f} M -> {report.params_after / 1e6:.1f} M{speed}; {path}"]


if __name__ == "__main__":
    sys.exit(standalone(demo))
