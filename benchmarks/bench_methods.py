"""Every pruning method end to end, and CUP against its published recipe.

    python benchmarks/bench_methods.py [--models resnet50,vit_b_16] [--reps 3] [--device cpu|cuda] [--threads N]
                                       [--csv out.csv] [--skip-cup]

1. CUP on ResNet-50 at the threshold that gives about 2.2x fewer MACs: `ppf.prune(model, x, "cup",
   threshold=t)` end to end (trace, features, Ward, surgery, MACs of the result) against the
   published recipe done the published way, written here as the baseline: layer by layer, the
   features with numpy, scipy's `linkage(features, "ward")` + `fcluster(Z, t, "distance")` on the
   CPU, then the layer and its BatchNorm and the next layer rebuilt as new modules with the kept
   channels. Like the published code, the baseline skips the layers coupled by residual adds (conv3
   and downsample of every bottleneck). Ours runs twice: on the same layers (the residual ones in
   `ignored_layers`: the like-for-like comparison) and on every group (more work than the baseline).
2. Every method of `ppf.methods.METHODS` at target_flops=0.5 on each model: median end-to-end time and
   where it went, MACs kept.

Correctness is checked before timing: the baseline and we keep the same channel counts on the layers
both prune, and every pruned model runs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import numpy as np
import torch
import torchvision
from torch import nn

try:
    from scipy.cluster.hierarchy import fcluster, linkage
except ImportError:  # only the CUP comparison needs it; main() asks for --skip-cup then
    fcluster = linkage = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import check_device, machine, print_table, timed, write_csv  # noqa: E402

import pyprune_fast as ppf  # noqa: E402
from pyprune_fast.methods import METHODS  # noqa: E402

CUP_FLOPS_REDUCTION = 2.2


def _classifier(model: nn.Module) -> nn.Module:
    return model.fc if hasattr(model, "fc") else model.heads.head


def _rebuilt_conv(conv: nn.Conv2d, out_keep=None, in_keep=None) -> nn.Conv2d:
    w = conv.weight.detach()
    w = w[out_keep] if out_keep is not None else w
    w = w[:, in_keep] if in_keep is not None else w
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None).to(w.device)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[out_keep] if out_keep is not None else conv.bias.detach())
    return new


def _rebuilt_bn(bn: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum).to(bn.weight.device)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[keep])
    return new


def published_cup(model: nn.Module, threshold: float) -> list[int]:
    """CUP the published way on a torchvision ResNet: per layer, numpy features from the original
    weights and scipy Ward, then rebuilt modules; conv1 and conv2 of every bottleneck (the
    residual-coupled layers are skipped). Returns the kept channel counts."""
    layers = [(block, names) for block in model.modules() if isinstance(block, torchvision.models.resnet.Bottleneck)
              for names in (("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3"))]
    keeps = []
    for block, (conv_name, _, next_name) in layers:
        w = getattr(block, conv_name).weight.detach().cpu().numpy()
        wn = getattr(block, next_name).weight.detach().cpu().numpy()
        incoming = np.linalg.norm(w.reshape(w.shape[0], w.shape[1], -1), axis=2)
        outgoing = np.linalg.norm(wn.reshape(wn.shape[0], wn.shape[1], -1), axis=2).T
        feats = np.concatenate([incoming, outgoing], 1).astype(np.float64)
        labels = fcluster(linkage(feats, "ward"), threshold, criterion="distance")
        norms = np.linalg.norm(feats, axis=1)
        keeps.append(sorted(int(np.flatnonzero(labels == c)[np.argmax(norms[labels == c])]) for c in np.unique(labels)))
    for (block, (conv_name, bn_name, next_name)), keep in zip(layers, keeps):
        setattr(block, conv_name, _rebuilt_conv(getattr(block, conv_name), out_keep=keep))
        setattr(block, bn_name, _rebuilt_bn(getattr(block, bn_name), keep))
        setattr(block, next_name, _rebuilt_conv(getattr(block, next_name), in_keep=keep))
    return [len(k) for k in keeps]


def _inner_widths(model: nn.Module) -> list[int]:
    return [c for b in model.modules() if isinstance(b, torchvision.models.resnet.Bottleneck)
            for c in (b.conv1.out_channels, b.conv2.out_channels)]


def residual_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs a residual add couples (conv3 and downsample of every bottleneck)."""
    return [m for b in model.modules() if isinstance(b, torchvision.models.resnet.Bottleneck)
            for m in (b.conv3, *(b.downsample or []))]


def bench_cup(pristine: nn.Module, x: torch.Tensor, reps: int, device: str) -> dict:
    probe = copy.deepcopy(pristine)
    report = ppf.prune(probe, x, "cup", target_flops=1 / CUP_FLOPS_REDUCTION, ignored_layers=[probe.fc])
    threshold = float(report.allocation.split("threshold ")[1].rstrip(")"))
    runs = {"all": [], "same": [], "published": []}
    for _ in range(reps):
        m = copy.deepcopy(pristine)
        t, rep = timed(lambda: ppf.prune(m, x, "cup", threshold=threshold, ignored_layers=[m.fc]), device)
        runs["all"].append(t)
        s = copy.deepcopy(pristine)
        t, rep_same = timed(lambda: ppf.prune(s, x, "cup", threshold=threshold,
                                               ignored_layers=[s.fc] + residual_layers(s)), device)
        runs["same"].append(t)
        b = copy.deepcopy(pristine)
        t, kept = timed(lambda: published_cup(b, threshold), device)
        runs["published"].append(t)
    # on the layers the published recipe prunes we keep the same counts; every model runs
    assert _inner_widths(m) == kept and _inner_widths(s) == kept, (_inner_widths(m), _inner_widths(s), kept)
    for model in (m, s, b):
        with torch.no_grad():
            model.eval()(x)
    macs_base = ppf.profile(b, x).macs
    return {"threshold": threshold, **{k: statistics.median(v) for k, v in runs.items()},
            "macs_kept_all": rep.macs_after / rep.macs_before, "macs_kept_same": rep_same.macs_after / rep.macs_before,
            "macs_kept_published": macs_base / rep.macs_before, "timings_all": rep.timings, "timings_same": rep_same.timings}


def bench_methods(name: str, pristine: nn.Module, x: torch.Tensor, reps: int, device: str) -> list[dict]:
    rows = []
    for method in METHODS:
        times, report = [], None
        for _ in range(reps):
            m = copy.deepcopy(pristine)
            t, report = timed(lambda: ppf.prune(m, x, method, target_flops=0.5, ignored_layers=[_classifier(m)]), device)
            times.append(t)
        with torch.no_grad():
            m.eval()(x)
        rows.append({"model": name, "method": method, "total_s": statistics.median(times),
                     "macs_kept": report.macs_after / report.macs_before,
                     **{f"{k}_s": v for k, v in report.timings.items()}})
    return rows


COLUMNS = [("model", "<10", ""), ("method", "<9", ""), ("total ms", ">9", ".1f"), ("MACs kept", ">9", ".3f"),
           ("  trace / scores / clustering / allocation / surgery (ms)", "", "")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,vit_b_16", help="comma-separated; empty for the CUP comparison alone")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", default=None)
    p.add_argument("--skip-cup", action="store_true", help="skip the CUP-against-published comparison")
    with machine(p, argv) as args:
        check_device(p, args.device)
        if not args.skip_cup and linkage is None:
            p.error("the CUP comparison needs scipy, which is not installed: install it or pass --skip-cup")
        torch.manual_seed(0)
        print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
        x = torch.randn(1, 3, 224, 224, device=args.device)
        if not args.skip_cup:
            r = bench_cup(torchvision.models.resnet50().to(args.device), x, args.reps, args.device)
            print(f"\nCUP on ResNet-50 at threshold {r['threshold']:.4g} (about {CUP_FLOPS_REDUCTION}x fewer MACs), "
                  f"median of {args.reps}")
            print(f"  {'':<44} {'ms':>9} {'MACs kept':>9} {'speed-up':>9}")
            for key, what in (("published", "published recipe (scipy per layer, rebuild)"),
                              ("same", "ours, same layers (residual ones ignored)"), ("all", "ours, every group")):
                print(f"  {what:<44} {r[key] * 1e3:9.1f} {r['macs_kept_' + key]:9.3f} {r['published'] / r[key]:8.1f}x")
            for key in ("same", "all"):
                print(f"  ours ({key}): " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r["timings_" + key].items()))
        rows = []
        for name in filter(None, args.models.split(",")):
            model = getattr(torchvision.models, name)().to(args.device)
            rows += bench_methods(name, model, x, args.reps, args.device)
        if not rows:
            return 0
        print()
        stages = ("trace", "scores", "clustering", "allocation", "surgery")
        print_table(COLUMNS, [(r["model"], r["method"], r["total_s"] * 1e3, r["macs_kept"],
                               "  " + " / ".join(f"{r[k + '_s'] * 1e3:.0f}" for k in stages)) for r in rows], rule=False)
        if args.csv:
            write_csv(args.csv, rows)
        return 0


if __name__ == "__main__":
    sys.exit(main())
