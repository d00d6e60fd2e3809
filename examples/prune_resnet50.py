"""Prune torchvision ResNet-50 by L1 magnitude, 50% of every prunable group, print the report and plot it.

    python examples/prune_resnet50.py [--ratio 0.5] [--method l1] [--out-dir bench_out]
"""

import argparse
import os
import sys
import time

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
    p.add_argument("--out-dir", default="bench_out", help="where the widths PNG goes (default bench_out/)")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"resnet50_{args.method}_widths.png")
    torch.manual_seed(0)
    model = torchvision.models.resnet50()  # no downloads here: random weights, real architecture
    x = torch.randn(1, 3, 224, 224)
    print(f"pruning torchvision ResNet-50 (random weights) by {args.method}, {args.ratio:g} of every prunable group "
          f"(a progress bar shows the stages on a terminal once it takes 2 s)", flush=True)
    t0 = time.perf_counter()
    report = ppf.prune(model, x, args.method, ratio=args.ratio, ignored_layers=[model.fc])
    seconds = time.perf_counter() - t0
    print(report)
    model.eval()
    with torch.no_grad():
        print(f"\npruned model runs: output {tuple(model(x).shape)}, conv1 {model.conv1}, fc {model.fc}")
    report.plot(path)
    print(f"wrote {path}")
    return [f"ResNet-50 by {args.method}, {args.ratio:g} of every group, in {seconds:.1f} s: MACs "
            f"{report.macs_before / 1e9:.2f} G -> {report.macs_after / 1e9:.2f} G, params "
            f"{report.params_before / 1e6:.1f} M -> {report.params_after / 1e6:.1f} M; {path}"]


if __name__ == "__main__":
    sys.exit(standalone(demo))
