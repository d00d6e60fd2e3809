"""Default threads against one thread, call by call, in the same conditions (run it with --load 1).

Each call is timed alternately on torch's default threads and with torch.set_num_threads(1), the median
of --reps runs of each, so both see the same load. A ratio above 1.3 (default threads that much slower
than one) is the collapse a shared machine shows; it is flagged.

Calls, on the conv layers of torchvision ResNet-50 (random init): the five ops on all layers in one call
(pairwise_distance, gather_channels half the filters, merge_channels_ into half as many input channels,
kmeans_lloyd with k = N/2 for 25 iterations, ward_linkage of the distances), cluster.kmeans and
cluster.ward on the same filters, and ppf.prune(resnet50, ratio=0.5) (L1; a fresh model each run).

  python benchmarks/bench_threads.py [--load 1] [--reps 5] [--calls pairwise_distance,prune] [--csv out.csv]

For controlled conditions on a shared machine, pin the benchmark and its load, e.g.
  taskset -c 0,1 python benchmarks/bench_threads.py --load 1   (the busy process inherits CPUs {0, 1})
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import conv_weights, machine, print_table, write_csv  # noqa: E402

import pyprune_fast as ppf  # noqa: E402
from pyprune_fast import cluster, ops  # noqa: E402

LIMIT = 1.3  # the most default threads may be slower than one thread


def calls() -> dict[str, Callable[[], Callable[[], object]]]:
    """Name -> a maker of the call to time (inputs built once, outside the timing)."""
    ws = conv_weights("resnet50", "cpu")
    rows = [w.flatten(1) for w in ws]
    ks = [max(1, r.shape[0] // 2) for r in rows]

    def gather():
        keeps = [torch.randperm(w.shape[0])[: max(1, w.shape[0] // 2)] for w in ws]
        return lambda: ops.gather_channels(ws, keeps, 0)

    def merge():
        work = [w.clone() for w in ws]
        assign = [torch.arange(w.shape[1]) // 2 for w in ws]
        keep = [torch.arange(0, w.shape[1], 2) for w in ws]
        return lambda: ops.merge_channels_(work, assign, keep, 1)

    def lloyd():
        inits = [cluster.init_centroids(r, k, "random", seed=0) for r, k in zip(rows, ks)]
        return lambda: ops.kmeans_lloyd(rows, inits, 25)

    def ward_linkage():
        dists = [d.double() for d in ops.pairwise_distance(rows)]
        return lambda: ops.ward_linkage(dists)

    def prune():
        import torchvision

        x = torch.randn(1, 3, 224, 224)

        def run():
            model = torchvision.models.resnet50(weights=None).eval()
            return ppf.prune(model, x, "l1", ratio=0.5, progress=False)
        return run

    return {
        "pairwise_distance": lambda: (lambda: ops.pairwise_distance(rows)),
        "gather_channels": gather,
        "merge_channels_": merge,
        "kmeans_lloyd": lloyd,
        "ward_linkage": ward_linkage,
        "cluster.kmeans": lambda: (lambda: cluster.kmeans(rows, ks, niter=25, init="random")),
        "cluster.ward": lambda: (lambda: cluster.ward(rows, n_clusters=ks)),
        "prune": prune,
    }


def compare(fn: Callable[[], object], reps: int, threads: int) -> tuple[float, float]:
    """Median seconds of `fn` on `threads` threads and on one, runs alternating (one warm-up each)."""
    times: dict[int, list[float]] = {threads: [], 1: []}
    for rep in range(reps + 1):
        for n in (threads, 1) if rep % 2 else (1, threads):
            torch.set_num_threads(n)
            t = time.perf_counter()
            fn()
            if rep:
                times[n].append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    return statistics.median(times[threads]), statistics.median(times[1])


COLUMNS = [("call", "<18", ""), ("default s", ">10", ".4f"), ("1 thread s", ">11", ".4f"), ("ratio", ">6", ".2f"),
           ("", "<9", "")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed runs per thread count (median; default 5)")
    p.add_argument("--calls", default="", help="comma-separated subset of the calls (default: all)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    with machine(p, argv) as args:
        makers = calls()
        names = [c.strip() for c in args.calls.split(",") if c.strip()] or list(makers)
        unknown = [c for c in names if c not in makers]
        if unknown:
            p.error(f"unknown call {unknown[0]!r}; expected some of {', '.join(makers)}")
        if args.reps < 1:
            p.error("--reps must be >= 1")
        threads = torch.get_num_threads()
        rows = []
        for name in names:
            default_s, one_s = compare(makers[name](), args.reps, threads)
            rows.append((name, default_s, one_s, default_s / one_s, "COLLAPSE" if default_s > LIMIT * one_s else ""))
            print(f"  {name}: {default_s:.4f} s on {threads} threads, {one_s:.4f} s on 1", flush=True)
        print(f"\nmedian of {args.reps} runs each, {threads} threads vs 1; ratio > {LIMIT} flagged\n")
        print_table(COLUMNS, rows)
        if args.csv:
            write_csv(args.csv, [dict(call=r[0], default_s=r[1], one_thread_s=r[2], ratio=r[3], threads=threads,
                                      load=args.load) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
