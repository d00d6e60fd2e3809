"""k-means for many small problems at once (one per layer), on the device where the data is.

Backends:
  "native"  the extension's kmeans_lloyd. CPU: C++ with BLAS and OpenMP, problem by problem; with k-means++
            (the default) the iterations read the Gram matrix X X^T the seeding computed, where that is cheaper
            (O(N^2 + N k) per iteration instead of O(N k D): conv layers with k = N/2). CUDA:
            batched: problems of one (N, D, k) stacked, each iteration one batched product and a fused
            argmin kernel for the assignment and one segmented sum for the update per shape, convergence
            flags kept on the GPU and read once per iteration for all problems; deterministic.
  "torch"   a plain PyTorch Lloyd loop, problem by problem: the reference (_reference.kmeans_lloyd).
  "faiss"   faiss, looped over the problems: on the GPU when the points are on CUDA and the installed
            faiss has GPU support (one StandardGpuResources shared by all calls), faiss-cpu otherwise.
            The PyPI faiss-gpu-cu12 wheel has no kernels for Hopper GPUs (H100/H200); "native" runs there.
  "auto"    native.
All run the same Lloyd iterations from the same initial centroids: an assignment, then `niter` times an
update and an assignment, stopping early once no label changes; an empty cluster is re-seeded with the
point farthest from its centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _reference, ops
from ..threads import on_idle_cpus
from ._inputs import check_points

__all__ = ["KMeans", "kmeans", "init_centroids", "init_all", "BACKENDS"]

BACKENDS = ("auto", "native", "torch", "faiss")


@dataclass
class KMeans:
    labels: Tensor  # (N,) int64, cluster of every point
    centroids: Tensor  # (k, D)
    inertia: float  # sum of squared distances of the points to their centroids


def init_all(xs: list[Tensor], ks: list[int], init: str = "k-means++", seed: int = 0) -> list[Tensor]:
    """init_centroids for every problem; k-means++ draws all problems of one dtype in one call of the
    compiled op (ops.kmeanspp_init), every problem from the same uniforms (a CPU generator seeded with
    `seed`), so a problem's centroids do not depend on the others."""
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans: init must be 'k-means++', 'random' or a list of tensors, got {init!r}")
    xs = [x.detach() for x in xs]
    if init == "random":
        out: list[Optional[Tensor]] = [None] * len(xs)
        for i, (x, k) in enumerate(zip(xs, ks)):
            g = torch.Generator().manual_seed(seed)
            out[i] = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)].clone()
        return out
    rows, _ = _kmeanspp(xs, ks, seed)
    return [x[r] for x, r in zip(xs, rows)]


def _kmeanspp(xs: list[Tensor], ks: list[int], seed: int,
              return_gram: bool = False) -> tuple[list[Tensor], list[Optional[Tensor]]]:
    """The k-means++ row indices of every problem, and (return_gram) the Gram matrices the draws read (None
    where they read none, or for a dtype the op does not take)."""
    for i, (x, k) in enumerate(zip(xs, ks)):
        if not 1 <= k <= x.shape[0]:
            raise ValueError(f"kmeans: k-means++ draws k in [1, N] points, got k = {k} for xs[{i}] of {x.shape[0]}")
    rows: list[Optional[Tensor]] = [None] * len(xs)
    grams: list[Optional[Tensor]] = [None] * len(xs)
    if not xs:
        return rows, grams
    u = torch.rand(max(ks), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    drawn_in = [x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32 for x in xs]  # the op's dtypes
    for dtype in set(drawn_in):
        idx = [i for i, d in enumerate(drawn_in) if d == dtype]
        drawn = ops.kmeanspp_init([xs[i].to(dtype) for i in idx], [ks[i] for i in idx], u, return_gram)
        chosen, gs = drawn if return_gram else (drawn, [None] * len(idx))
        for i, c, g in zip(idx, chosen, gs):
            rows[i] = c
            grams[i] = g if xs[i].dtype == dtype else None
    return rows, grams


def init_centroids(x: Tensor, k: int, init: str = "k-means++", seed: int = 0) -> Tensor:
    """k initial centroids, rows of x: "random" (k distinct points) or "k-means++" (each next point
    drawn with probability proportional to its squared distance to the nearest chosen one)."""
    return init_all([x], [k], init, seed)[0]


_faiss_gpu_resources = None  # one faiss.StandardGpuResources (memory, streams, cuBLAS) for every call


def _faiss_index(faiss, dim: int, spherical: bool, device: torch.device):
    """The flat index faiss's Lloyd loop searches: a GPU index on `device` when it is a CUDA device and
    faiss has GPU support, else a CPU index."""
    global _faiss_gpu_resources
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        if _faiss_gpu_resources is None:
            _faiss_gpu_resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = torch.cuda.current_device() if device.index is None else device.index
        flat = faiss.GpuIndexFlatIP if spherical else faiss.GpuIndexFlatL2
        return flat(_faiss_gpu_resources, dim, config)
    return faiss.IndexFlatIP(dim) if spherical else faiss.IndexFlatL2(dim)


def _lloyd_faiss(x: Tensor, c: Tensor, niter: int, spherical: bool) -> tuple[Tensor, Tensor, float]:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("kmeans: backend='faiss' needs faiss: pip install faiss-cpu (or pyprune-fast[faiss])") from e
    (n, dim), k = x.shape, c.shape[0]
    params = faiss.ClusteringParameters()
    params.niter, params.spherical, params.seed, params.verbose = niter, spherical, 0, False
    params.min_points_per_centroid = 1  # small problems are what pruning has: no warning
    params.max_points_per_centroid = max(1, n)  # every point, never a subsample
    clus = faiss.Clustering(dim, k, params)
    faiss.copy_array_to_vector(c.detach().cpu().float().contiguous().numpy().ravel(), clus.centroids)
    clus.train(x.detach().cpu().float().contiguous().numpy(), _faiss_index(faiss, dim, spherical, x.device))
    cent = torch.from_numpy(faiss.vector_to_array(clus.centroids).reshape(k, dim)).to(x.device, x.dtype)
    labels, mind = _reference.nearest_centroids(x, (x * x).sum(1), cent)
    return labels, cent, float(mind.double().sum())


@on_idle_cpus
def kmeans(xs: Union[Tensor, Sequence[Tensor]], k: Union[int, Sequence[int]], niter: int = 25,
           init: Union[str, Sequence[Tensor]] = "k-means++", seed: int = 0, spherical: bool = False,
           backend: str = "auto") -> Union[KMeans, list[KMeans]]:
    """k-means of one (N, D) tensor or of a list of them (N, D and k may differ per problem).

    Args:
        xs: float32/float64 points, on any device (all on one).
        k: clusters, one int for all problems or one per problem; k >= N gives every point its own cluster.
        niter: Lloyd iterations (at most; stops once the labels no longer change).
        init: "k-means++", "random", or the initial centroids themselves (a tensor per problem).
        seed: for the initialisation; results are deterministic for a seed and backend.
        spherical: cosine k-means on L2-normalised points, centroids renormalised after each update.
        backend: "auto" (native), "native", "torch" (reference), "faiss" (GPU when the points are on CUDA
            and faiss has GPU support).

    Returns:
        A KMeans (labels, centroids, inertia), or a list of them for a list.
    """
    single = isinstance(xs, Tensor)
    lst = [xs] if single else list(xs)
    if not all(isinstance(x, Tensor) for x in lst):
        raise TypeError("kmeans: xs must be a tensor or a list of tensors")
    ks = [k] * len(lst) if isinstance(k, int) else list(k)
    if len(ks) != len(lst):
        raise ValueError(f"kmeans: k has {len(ks)} entries for {len(lst)} problems")
    if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in ks):
        raise ValueError(f"kmeans: every k must be a positive int, got {ks}")
    if not isinstance(niter, int) or niter < 0:
        raise ValueError(f"kmeans: niter must be a non-negative int, got {niter!r}")
    if backend not in BACKENDS:
        raise ValueError(f"kmeans: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    lst = check_points("kmeans", lst)
    if spherical:
        lst = [x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) for x in lst]

    results: list[Optional[KMeans]] = [None] * len(lst)
    todo, inits = [], []
    for i, (x, kk) in enumerate(zip(lst, ks)):
        if kk >= x.shape[0]:  # every point its own cluster
            results[i] = KMeans(torch.arange(x.shape[0], device=x.device), x.clone(), 0.0)
        else:
            todo.append(i)
    given = isinstance(init, (list, tuple))
    grams = None
    if init == "k-means++" and backend in ("auto", "native") and not spherical and todo:
        # row indices with the seeding's Gram matrices (kmeans_lloyd iterates from them where that is cheaper),
        # the rows themselves where the seeding read none (CUDA)
        rows, grams = _kmeanspp([lst[i] for i in todo], [ks[i] for i in todo], seed, return_gram=True)
        inits = [lst[i][r] if g is None else r for i, r, g in zip(todo, rows, grams)]
    else:
        drawn = [init[i] for i in todo] if given else init_all([lst[i] for i in todo], [ks[i] for i in todo], init, seed)
        for i, c in zip(todo, drawn):
            x, kk = lst[i], ks[i]
            if tuple(c.shape) != (kk, x.shape[1]):
                raise ValueError(f"kmeans: init[{i}] must have shape ({kk}, {x.shape[1]}), got {tuple(c.shape)}")
            inits.append(c.detach().to(x.dtype))
    if backend in ("auto", "native") and todo:
        labels, cents, inertia = ops.kmeans_lloyd([lst[i] for i in todo], inits, niter, spherical, grams)
        for j, (i, total) in enumerate(zip(todo, inertia.tolist())):  # one host read
            results[i] = KMeans(labels[j], cents[j], total)
    else:
        run = _reference.kmeans_lloyd if backend == "torch" else _lloyd_faiss
        for i, c in zip(todo, inits):
            labels, cent, inertia = run(lst[i], c, niter, spherical)
            results[i] = KMeans(labels, cent, inertia)
    return results[0] if single else results
