"""Prune torchvision ResNet-50 by L1 magnitude, 50% of every prunable group, and print the report.

    python examples/prune_resnet50.py [--ratio 0.5] [--method l1]
"""

import argparse
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pyprune_fast as ppf  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--method", default="l1", choices=["l1", "l2"])
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50()  # no downloads here: random weights, real architecture
    x = torch.randn(1, 3, 224, 224)
    report = ppf.prune(model, x, args.method, ratio=args.ratio, ignored_layers=[model.fc])
    print(report)
    model.eval()
    with torch.no_grad():
        print(f"\npruned model runs: output {tuple(model(x).shape)}, conv1 {model.conv1}, fc {model.fc}")


if __name__ == "__main__":
    main()
