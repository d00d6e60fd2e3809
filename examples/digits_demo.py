"""Every pruning method on real data: a small residual CNN trained on scikit-learn's digits.

1,797 real 8x8 handwritten digits ship with scikit-learn (no downloads). The demo trains a small
ResNet-style CNN on the CPU, then, for every method in `ppf.methods.METHODS`, prunes a copy of it to
half its MACs, measures test accuracy right after pruning and again after a short fine-tuning, and
prints a table (Markdown) and writes a plot of both accuracies per method.

Run to run, on one machine, every number but the times repeats exactly (seeded, one thread). Across
CPUs they need not: torch's kernels sum in a different order at each SIMD level (AVX-512, AVX2,
default), so training follows a different float trajectory and the trained weights differ slightly;
every column then follows those weights (see the README for the measured spread). Pruning the same
weights gives the same widths and accuracies at every SIMD level.

    python examples/digits_demo.py [--target-flops 0.5] [--epochs 10] [--finetune-epochs 2] [--out-dir bench_out]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pyprune_fast as ppf  # noqa: E402
from machine import standalone  # noqa: E402


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test tensors: images (N, 1, 8, 8) scaled to [0, 1], labels (N,); a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    images = lambda a: torch.tensor(a, dtype=torch.float32).view(-1, 1, 8, 8) / 16  # noqa: E731
    return images(x_train), torch.tensor(y_train), images(x_test), torch.tensor(y_test)


class Block(nn.Module):
    """Residual block: two 3x3 conv + BatchNorm, with a strided 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class DigitsNet(nn.Module):
    """Stem 1->32, a residual block at 8x8, a stride-2 block to 64 channels and one more at 4x4, pooling, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(Block(32, 32), Block(32, 64, stride=2), Block(64, 64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
          desc: str = "") -> None:
    """AdamW with a one-cycle learning rate, batches of 64 drawn in a seeded order; with `desc`, a bar
    over the epochs (on a terminal)."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=None if desc else True):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@dataclass
class Row:
    method: str
    macs_kept: float
    params_kept: float
    acc_before: float
    acc_pruned: float
    acc_finetuned: float
    prune_ms: float


def prune_and_finetune(method: str, trained: nn.Module, acc_before: float, data, args) -> Row:
    """Prune a copy of `trained` (test accuracy `acc_before`) by `method` to args.target_flops of its MACs,
    fine-tune it, and measure."""
    x_train, y_train, x_test, y_test = data
    model = copy.deepcopy(trained)
    t0 = time.perf_counter()
    report = ppf.prune(model, x_test[:1], method, target_flops=args.target_flops, seed=args.seed)
    prune_ms = (time.perf_counter() - t0) * 1e3
    acc_pruned = accuracy(model, x_test, y_test)
    train(model, x_train, y_train, args.finetune_epochs, args.lr / 10, args.seed)
    return Row(method, report.macs_after / report.macs_before, report.params_after / report.params_before,
               acc_before, acc_pruned, accuracy(model, x_test, y_test), prune_ms)


def print_table(rows: list[Row]) -> None:
    print("| method | MACs kept | params kept | accuracy before | after prune | after fine-tune | prune time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.method} | {r.macs_kept:.1%} | {r.params_kept:.1%} | {r.acc_before:.1%} | {r.acc_pruned:.1%} "
              f"| {r.acc_finetuned:.1%} | {r.prune_ms:.0f} ms |")


def plot(rows: list[Row], path: str, target: float) -> None:
    """Test accuracy of every method (a category each) right after pruning and after fine-tuning."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(rows))
    for shift, attr, color, label in ((-0.2, "acc_pruned", "#9ecae1", "right after pruning"),
                                      (0.2, "acc_finetuned", "#1f77b4", "after fine-tuning")):
        values = [100 * getattr(r, attr) for r in rows]
        bars = ax.bar([i + shift for i in x], values, width=0.4, color=color, label=label)
        ax.bar_label(bars, [f"{v:.1f}" for v in values], fontsize=7, padding=1)
    ax.axhline(100 * rows[0].acc_before, color="gray", linestyle="--", linewidth=1,
               label=f"unpruned ({rows[0].acc_before:.1%})")
    ax.set_xticks(list(x), [f"{r.method}\n{r.macs_kept:.1%} MACs" for r in rows], fontsize=8)
    ax.set_ylim(0, 109)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits: every method pruned to {target:.0%} of the MACs, then fine-tuned", fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncol=3, frameon=False)
    fig.savefig(path, dpi=120)


def demo(argv=None) -> list[str]:
    """Run the demo (printing as it goes) and return a summary of it in a few lines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target-flops", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning (default 2)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of training; fine-tuning uses a tenth")
    p.add_argument("--methods", default=",".join(ppf.methods.METHODS), help="comma-separated (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="bench_out", help="where the PNG goes (default bench_out/)")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    # One thread: on 8x8 images every op is small, and a second thread costs more in synchronisation than
    # it saves (measured here: 0.45 s per epoch on one thread, 2-7 s on two when the machine is busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(args.seed)
        data = digits(args.seed)
        model = DigitsNet()
        print(f"digits: {len(data[0])} train / {len(data[2])} test images; training DigitsNet "
              f"({sum(p.numel() for p in model.parameters())} parameters) for {args.epochs} epochs on one thread",
              flush=True)
        t0 = time.perf_counter()
        train(model, data[0], data[1], args.epochs, args.lr, args.seed, desc="training")
        acc = accuracy(model, data[2], data[3])
        print(f"trained in {time.perf_counter() - t0:.1f} s: test accuracy {acc:.1%}")
        methods = args.methods.split(",")
        print(f"each of {len(methods)} methods prunes a copy to {args.target_flops:g} of the MACs, then "
              f"{args.finetune_epochs} epochs of fine-tuning:", flush=True)
        rows = []
        for m in methods:
            rows.append(prune_and_finetune(m, model, acc, data, args))
            r = rows[-1]
            print(f"  {m:<9} {r.macs_kept:6.1%} of the MACs in {r.prune_ms:4.0f} ms: accuracy {r.acc_pruned:6.1%} "
                  f"right after, {r.acc_finetuned:6.1%} after fine-tuning", flush=True)
    finally:
        torch.set_num_threads(threads)
    print()
    print_table(rows)
    path = os.path.join(args.out_dir, "digits_demo.png")
    plot(rows, path, args.target_flops)
    print(f"\nwrote {path}")
    after = [r.acc_pruned for r in rows]
    tuned = [r.acc_finetuned for r in rows]
    return [f"{len(rows)} methods pruned a CNN trained on real digits ({acc:.1%}) to {args.target_flops:g} of its "
            f"MACs (landed {min(r.macs_kept for r in rows):.1%}-{max(r.macs_kept for r in rows):.1%}): "
            f"{min(after):.1%}-{max(after):.1%} right after, {min(tuned):.1%}-{max(tuned):.1%} after "
            f"{args.finetune_epochs} epochs of fine-tuning; {path}"]


if __name__ == "__main__":
    sys.exit(standalone(demo))
