"""Clustering speed on the filters of every conv layer of real networks: our backends against faiss,
scikit-learn and the plain PyTorch loop, side by side in one run.

k-means backends timed: native and the torch loop on --device (with --device cuda: the batched CUDA
kernel), faiss on the GPU when --device cuda and the installed faiss has GPU support (the PyPI
faiss-gpu-cu12 wheel has no Hopper kernels), faiss-cpu and scikit-learn on CPU copies of the points.
Times are best-of-reps wall times, with torch.cuda.synchronize() before and after each on CUDA.

Problems: every conv layer of the model (rows = filters, flattened; random init, shapes are what
matter), k = N/2, 25 Lloyd iterations, the same random initial centroids for every backend (task
"kmeans"); and the defaults as a user calls them, initialisation included (task "kmeans defaults"):
`cluster.kmeans(xs, k)` (k-means++ in the extension, then Lloyd) against `faiss.Kmeans` with its defaults
(random init) and one search of its index (labels and inertia, as cluster.kmeans returns). Ward:
ours (`cluster.ward`, distances included) against scipy's `linkage(w, "ward")` per layer, with the
partitions at one threshold compared.

  python benchmarks/bench_clustering.py [--models resnet50,vgg16,resnet152] [--device cpu|cuda]
                                        [--backends native,torch,faiss,sklearn] [--csv out.csv]
                                        [--plot out.png] [--no-ward] [--threads N]

--backends leaves out the k-means rows not named (e.g. faiss or sklearn where it is not installed).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import bar_plot, check_device, conv_weights, machine, print_table, timed, write_csv  # noqa: E402

from pyprune_fast import cluster  # noqa: E402


def sklearn_kmeans(xs, ks, inits, niter):
    from sklearn.cluster import KMeans as SK

    inertia = 0.0
    for x, k, c in zip(xs, ks, inits):
        km = SK(n_clusters=k, init=c.cpu().numpy(), n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd")
        km.fit(x.cpu().numpy())
        inertia += float(km.inertia_)
    return inertia


@dataclass
class Row:
    model: str
    task: str
    backend: str
    seconds: float
    quality: float  # k-means: total inertia; Ward: 1.0 when the partitions equal scipy's


def faiss_gpu_available() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


BACKENDS = ("native", "torch", "faiss", "sklearn")


def bench_kmeans(model: str, xs, device: str, niter: int, reps: int, backends=BACKENDS) -> list[Row]:
    """Ours and the torch loop on `device`; faiss on the GPU too when it can; faiss-cpu and sklearn on CPU copies.
    Only the `backends` named are run."""
    ks = [max(1, x.shape[0] // 2) for x in xs]
    inits = [cluster.init_centroids(x, k, "random", seed=0) for x, k in zip(xs, ks)]
    cpu_xs, cpu_inits = [x.cpu() for x in xs], [c.cpu() for c in inits]
    runs = [(f"native ({device})", xs, inits, "native"), (f"torch ({device})", xs, inits, "torch")]
    if device.startswith("cuda") and faiss_gpu_available():
        runs.append(("faiss (gpu)", xs, inits, "faiss"))
    runs.append(("faiss (cpu)", cpu_xs, cpu_inits, "faiss"))
    rows = []
    for name, points, init, backend in runs:
        if backend not in backends:
            continue
        secs, res = timed(lambda: cluster.kmeans(points, ks, niter=niter, init=init, backend=backend), device, reps)
        rows.append(Row(model, "kmeans", name, secs, sum(r.inertia for r in res)))
    if "sklearn" in backends:
        secs, inertia = timed(lambda: sklearn_kmeans(cpu_xs, ks, cpu_inits, niter), device, 1)
        rows.append(Row(model, "kmeans", "sklearn (cpu)", secs, inertia))
    return rows


def faiss_defaults(xs, ks, niter: int) -> float:
    """faiss as a user calls it, one problem at a time: faiss.Kmeans with its defaults (random init, seed
    1234; min_points_per_centroid = 1 only silences its warning about small problems), then one search of
    its index for what cluster.kmeans returns besides the centroids: every point's label and the inertia."""
    import faiss

    total = 0.0
    for x, k in zip(xs, ks):
        points = x.cpu().float().contiguous().numpy()
        km = faiss.Kmeans(points.shape[1], k, niter=niter, min_points_per_centroid=1)
        km.train(points)
        dist, _labels = km.index.search(points, 1)
        total += float(dist.astype("float64").sum())
    return total


def bench_defaults(model: str, xs, device: str, niter: int, reps: int, backends=BACKENDS) -> list[Row]:
    """`cluster.kmeans` with its defaults (k-means++ init included) on `device`, and faiss-cpu with its defaults."""
    ks = [max(1, x.shape[0] // 2) for x in xs]
    rows = []
    if "native" in backends:
        secs, res = timed(lambda: cluster.kmeans(xs, ks, niter=niter), device, reps)
        rows.append(Row(model, "kmeans defaults", f"native ({device})", secs, sum(r.inertia for r in res)))
    if "faiss" in backends:
        cpu_xs = [x.cpu() for x in xs]
        secs, total = timed(lambda: faiss_defaults(cpu_xs, ks, niter), "cpu", reps)
        rows.append(Row(model, "kmeans defaults", "faiss (cpu)", secs, total))
    return rows


def bench_ward(model: str, xs, device: str, reps: int) -> list[Row]:
    from scipy.cluster.hierarchy import fcluster, linkage

    secs, ours = timed(lambda: cluster.ward(xs, n_clusters=[max(1, x.shape[0] // 2) for x in xs]), device, reps)

    def scipy_all():
        return [fcluster(linkage(x.cpu().double().numpy(), "ward"), max(1, x.shape[0] // 2), criterion="maxclust")
                for x in xs]

    secs_scipy, theirs = timed(scipy_all, "cpu", 1)
    same = all(_same_partition(a.cpu().numpy(), b) for a, b in zip(ours, theirs))
    return [Row(model, "ward", f"native ({device})", secs, float(same)), Row(model, "ward", "scipy (cpu)", secs_scipy, 1.0)]


def _same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


COLUMNS = [("model", "<10", ""), ("task", "<15", ""), ("backend", "<16", ""), ("seconds", ">9", ".3f"),
           ("vs faiss-cpu", ">12", ""), ("vs sklearn", ">10", ""), ("vs scipy", ">9", ""), ("quality", ">32", "")]


def table_row(r: Row, rows: list[Row]) -> tuple:
    """`r`'s line of the table: its time, the others' times over it, its quality against faiss-cpu or scipy."""
    ref = {o.backend: o for o in rows if o.model == r.model and o.task == r.task}
    ratios = [f"{ref[name].seconds / r.seconds:.2f}x" if name in ref else "-"
              for name in ("faiss (cpu)", "sklearn (cpu)", "scipy (cpu)")]
    if r.task.startswith("kmeans"):
        faiss = ref.get("faiss (cpu)")
        q = f"{r.quality:.1f} ({r.quality / faiss.quality:.4f} of faiss-cpu)" if faiss else f"{r.quality:.3f}"
    else:
        q = "same as scipy" if r.quality == 1.0 else "DIFFERENT"
    return (r.model, r.task, r.backend, r.seconds, *ratios, q)


def _faiss_threads(n: int) -> None:
    """faiss's OpenMP threads as --threads sets torch's."""
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,vgg16,resnet152")
    p.add_argument("--device", default="cpu")
    p.add_argument("--niter", type=int, default=25)
    p.add_argument("--reps", type=int, default=2, help="best of this many runs (the first also warms up BLAS and threads)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="k-means rows to run, comma-separated "
                   f"(default: {','.join(BACKENDS)})")
    p.add_argument("--no-ward", action="store_true")
    p.add_argument("--csv")
    p.add_argument("--plot")
    with machine(p, argv) as args:
        check_device(p, args.device)
        if args.threads:
            _faiss_threads(args.threads)
        backends = [b for b in args.backends.split(",") if b]
        if not backends or set(backends) - set(BACKENDS):
            p.error(f"--backends {args.backends!r}: expected names from {', '.join(BACKENDS)}")
        rows: list[Row] = []
        for model in args.models.split(","):
            xs = [w.flatten(1) for w in conv_weights(model, args.device)]  # rows are filters
            rows += bench_kmeans(model, xs, args.device, args.niter, args.reps, backends)
            rows += bench_defaults(model, xs, args.device, args.niter, args.reps, backends)
            if not args.no_ward:
                rows += bench_ward(model, xs, args.device, args.reps)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
        print(f"\nclustering every conv layer's filters, k = N/2, {args.niter} iterations; kmeans: same random init, "
              f"kmeans defaults: each library's own default init, timed ({name})\n")
        print_table(COLUMNS, [table_row(r, rows) for r in rows])
        if args.csv:
            write_csv(args.csv, [{"model": r.model, "task": r.task, "backend": r.backend, "seconds": f"{r.seconds:.4f}",
                                  "quality": r.quality} for r in rows])
        if args.plot:
            bar_plot(args.plot, [f"{r.model}\n{r.task}\n{r.backend}" for r in rows], [r.seconds for r in rows],
                     "seconds (all layers)", colors=["tab:blue" if "native" in r.backend else "tab:gray" for r in rows],
                     log=True, figsize=(8, 3.5), fontsize=6)
        return 0


if __name__ == "__main__":
    sys.exit(main())
