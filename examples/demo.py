"""`make demo`: every demo and two benchmarks, one after another, then a summary of what they showed.

Prints the machine first (CPU, the SIMD level torch's kernels use, threads, torch), each part's purpose
as it starts and its output as it comes, and at the end one line per part with its key numbers and
where its picture went.

    python examples/demo.py [--out-dir bench_out]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import digits_demo  # noqa: E402
import digits_training_demo  # noqa: E402
import prune_resnet50  # noqa: E402
from machine import describe  # noqa: E402


def bench(script: str, args: list[str], what: str) -> None:
    """Run a benchmark script of the checkout, its output passed through; a bar counts the seconds on a terminal."""
    from tqdm import tqdm

    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT)
    with tqdm(desc=what, bar_format="{desc}: running [{elapsed}]", disable=None, leave=False) as bar:
        while proc.poll() is None:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                bar.refresh()
    if proc.returncode:
        raise SystemExit(f"demo: benchmarks/{script} failed with status {proc.returncode}")


def bench_ops(out: str) -> list[str]:
    table, png = os.path.join(out, "ops.csv"), os.path.join(out, "ops.png")
    bench("bench_ops.py", ["--models", "resnet50", "--min-time", "0.2", "--csv", table, "--plot", png],
          "bench_ops")
    with open(table) as f:
        rows = list(csv.DictReader(f))
    return [", ".join(f"{r['op']} {float(r['speedup']):.1f}x" for r in rows) + f" faster than the per-layer "
            f"PyTorch loop on the {rows[0]['layers']} conv layers of ResNet-50; {png}"]


def bench_clustering(out: str) -> list[str]:
    table, png = os.path.join(out, "clustering.csv"), os.path.join(out, "clustering.png")
    bench("bench_clustering.py", ["--models", "resnet18", "--backends", "native,faiss,sklearn", "--reps", "2",
                                  "--csv", table, "--plot", png], "bench_clustering")
    with open(table) as f:
        secs = {(r["task"], r["backend"].split()[0]): float(r["seconds"]) for r in csv.DictReader(f)}
    return [f"ResNet-18's conv filters, k = N/2: k-means {secs[('kmeans', 'native')]:.2f} s (faiss-cpu "
            f"{secs.get(('kmeans', 'faiss'), float('nan')):.2f} s, scikit-learn "
            f"{secs.get(('kmeans', 'sklearn'), float('nan')):.2f} s), Ward {secs[('ward', 'native')]:.2f} s "
            f"(scipy {secs[('ward', 'scipy')]:.2f} s, same clusters); {png}"]


PARTS = [
    ("every pruning method on real data", "examples/digits_demo.py: a small CNN trained on scikit-learn's digits, "
     "a copy pruned to half its MACs by each method, tested, fine-tuned, tested again",
     lambda out: digits_demo.demo(["--out-dir", out])),
    ("pruning while training", "examples/digits_training_demo.py: CUP-SS prunes the same CNN while it trains from "
     "scratch, side by side with unpruned training",
     lambda out: digits_training_demo.demo(["--out-dir", out])),
    ("a real architecture", "examples/prune_resnet50.py: torchvision ResNet-50 pruned by L1, half of every group, "
     "with the report and its picture",
     lambda out: prune_resnet50.demo(["--out-dir", out])),
    ("the compiled ops", "benchmarks/bench_ops.py: the three ops on every conv layer of ResNet-50, one call for all "
     "layers, against the per-layer PyTorch loop", bench_ops),
    ("clustering", "benchmarks/bench_clustering.py: k-means and Ward of every conv layer's filters of ResNet-18 "
     "against faiss-cpu, scikit-learn and scipy from the same start", bench_clustering),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="bench_out", help="where the PNGs and CSVs go (default bench_out/)")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    machine = describe()
    print(f"pyprune_fast demo on {machine}", flush=True)
    summary, start = [], time.perf_counter()
    for i, (title, what, run) in enumerate(PARTS, 1):
        print(f"\n=== {i}/{len(PARTS)} {title}: {what}\n", flush=True)
        t0 = time.perf_counter()
        lines = run(args.out_dir)
        summary.append((title, time.perf_counter() - t0, lines))
    print(f"\n=== summary ({time.perf_counter() - start:.0f} s on {machine})")
    for title, seconds, lines in summary:
        print(f"- {title} ({seconds:.0f} s): " + "\n  ".join(lines))
    print(f"pictures and tables: {os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
