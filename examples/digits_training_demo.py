"""Pruning while training, on real data: CUP-SS on scikit-learn's digits from the first epoch.

The small residual CNN of digits_demo.py is trained from scratch; at the end of every epoch CUP-SS
clusters its channels at a rising threshold and prunes, until half the MACs are gone. Prints, per
epoch as it ends, the threshold, MACs kept, parameters and test accuracy, against the same training
without pruning (run side by side, epoch by epoch), and writes a plot of MACs and accuracy over the epochs.
Seeded: run to run on one machine the numbers repeat, across SIMD levels they follow the float
trajectory of training (see digits_demo.py).

    python examples/digits_training_demo.py [--epochs 12] [--target-flops 0.5] [--out-dir bench_out]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pyprune_fast as ppf  # noqa: E402
from digits_demo import DigitsNet, accuracy, digits  # noqa: E402
from machine import standalone  # noqa: E402


def run(data, epochs: int, lr: float, seed: int, pruner_args=None) -> Iterator[dict]:
    """Train from scratch (SGD, momentum, cosine learning rate), yielding each epoch's numbers as it ends;
    with pruner_args, CUP-SS at every epoch's end."""
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = DigitsNet()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    pruner = ppf.CUPSS(model, x[:1], ignored_layers=[model.fc], **pruner_args) if pruner_args else None
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):  # counted from 0, as the schedules count them
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        if pruner is not None:
            pruner.step(epoch, opt)
        prune_s = time.perf_counter() - t1
        sched.step()
        profile = ppf.profile(model, x[:1])
        yield {"epoch": epoch, "threshold": pruner.threshold(epoch) if pruner else None, "macs": profile.macs,
               "params": profile.params, "accuracy": accuracy(model, x_test, y_test), "train_s": train_s,
               "prune_s": prune_s}


def plot(pruned: list[dict], dense: list[dict], path: str) -> None:
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in pruned]
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, [r["macs"] / dense[0]["macs"] for r in pruned], "o-", label="MACs kept (CUP-SS)")
    ax.plot(epochs, [r["accuracy"] for r in pruned], "s-", label="test accuracy (CUP-SS)")
    ax.plot(epochs, [r["accuracy"] for r in dense], "--", color="gray", label="test accuracy (no pruning)")
    ax.set_xlabel("epoch (counted from 0)")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("CUP-SS on digits: pruning from the first epoch")
    fig.savefig(path, dpi=120)


def demo(argv=None) -> list[str]:
    """Run the demo (printing each epoch as it ends) and return a summary of it in a few lines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--target-flops", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    p.add_argument("--slope", type=float, default=0.03, help="CUP-SS threshold slope per epoch")
    p.add_argument("--offset", type=float, default=0.1, help="CUP-SS threshold at the end of epoch 0, the first")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="bench_out")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster (see digits_demo.py)
    try:
        data = digits(args.seed)
        print(f"CUP-SS while training on digits (slope {args.slope}, offset {args.offset}, target {args.target_flops} "
              f"of the MACs), against the same training without pruning, {args.epochs} epochs on one thread")
        print(f"{'epoch':>5} {'threshold':>9} {'MACs kept':>9} {'params':>8} {'accuracy':>8} {'no pruning':>10} {'prune s':>8}",
              flush=True)
        pruned, dense = [], []
        for r, d in zip(run(data, args.epochs, args.lr, args.seed,
                            {"slope": args.slope, "offset": args.offset, "target_flops": args.target_flops}),
                        run(data, args.epochs, args.lr, args.seed)):
            pruned.append(r)
            dense.append(d)
            print(f"{r['epoch']:>5} {r['threshold']:>9.3f} {r['macs'] / dense[0]['macs']:>9.1%} {r['params']:>8} "
                  f"{r['accuracy']:>8.1%} {d['accuracy']:>10.1%} {r['prune_s']:>8.3f}", flush=True)
    finally:
        torch.set_num_threads(threads)
    train_s, prune_s = sum(r["train_s"] for r in pruned), sum(r["prune_s"] for r in pruned)
    print(f"pruning steps took {prune_s:.2f} s of {train_s + prune_s:.2f} s of training ({prune_s / (train_s + prune_s):.1%})")
    path = os.path.join(args.out_dir, "digits_training_demo.png")
    plot(pruned, dense, path)
    print(f"wrote {path}")
    kept = pruned[-1]["macs"] / dense[0]["macs"]
    reached = next(r["epoch"] for r in pruned if r["macs"] == pruned[-1]["macs"])
    return [f"CUP-SS pruned while training from scratch: {kept:.1%} of the MACs from epoch {reached} on; final "
            f"accuracy {pruned[-1]['accuracy']:.1%} against {dense[-1]['accuracy']:.1%} without pruning; pruning "
            f"took {prune_s / (train_s + prune_s):.1%} of the training time; {path}"]


if __name__ == "__main__":
    sys.exit(standalone(demo))
