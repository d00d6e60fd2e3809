"""Typed wrappers over the compiled ops `torch.ops.pyprune_fast.*`, each followed by its fake kernel (shapes
only, so that torch.compile(fullgraph=True) keeps the op in its graph).

Every op takes one tensor or a list of them and handles a whole list in one call (on CUDA: a few
batched launches, not one per tensor). Bad arguments raise ValueError or TypeError naming the op,
the argument, the tensor's position in its list and the offending value.

The ops are not differentiable: they serve pruning decisions and weight surgery. The wrappers detach
their inputs, so a model's own parameters (``requires_grad=True``) can be given as they are, in or out
of ``torch.no_grad()``; results never require grad. ``merge_channels_`` writes in place, so like any
in-place edit of a parameter it must run under ``torch.no_grad()`` when a tensor requires grad.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Optional, Sequence, Union, overload

import torch
from torch import Tensor

from ._build_info import BUILD_INFO
from .threads import on_idle_cpus

__all__ = [
    "pairwise_distance", "gather_channels", "merge_channels_", "ward_linkage", "kmeans_lloyd", "kmeanspp_init",
    "METRICS",
    "missing_kernels",
]

METRICS = ("euclidean", "sqeuclidean", "cosine")

Tensors = Union[Tensor, Sequence[Tensor]]
Indices = Union[Tensor, Sequence[int], Sequence[Tensor]]
Dims = Union[int, Sequence[int]]

_ops = torch.ops.pyprune_fast


def missing_kernels(device_type: str, info: Mapping[str, Any]) -> Optional[str]:
    """Why a build described by `info` (``ppf.build_info()``) has no kernels for tensors on `device_type`,
    or None when it has them."""
    if device_type == "cuda" and not info.get("with_cuda"):
        return ("this build of pyprune_fast has no CUDA kernels (ppf.build_info()['with_cuda'] is False); "
                "rebuild it with them, with a CUDA toolkit installed: FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=\"9.0\" "
                "(your GPU's compute capability) pip install -v --no-build-isolation . ; "
                "or move the tensors to the CPU")
    return None


def _inputs(op: str, **lists: Sequence[Optional[Tensor]]) -> list[list[Optional[Tensor]]]:
    """Each list of tensors with those that require grad detached (the ops are not differentiable), after
    checking that this build has kernels for their devices (so a CUDA tensor given to a CPU-only build is
    told so, not the dispatcher's "Could not run ... with arguments from the 'CUDA' backend"). Per tensor
    only two attribute reads: a prune passes hundreds."""
    why = missing_kernels("cuda", BUILD_INFO)  # the one device a build can lack kernels for
    if why:
        for name, xs in lists.items():
            for i, x in enumerate(xs):
                if x is not None and x.is_cuda:
                    raise ValueError(f"{op}: {name}[{i}] is on {x.device}, but {why}")
    return [[x.detach() if x is not None and x.requires_grad else x for x in xs] for xs in lists.values()]


def _tensor_list(op: str, name: str, xs: Tensors) -> tuple[list[Tensor], bool]:
    """(list, whether a single tensor was given)."""
    if isinstance(xs, Tensor):
        return [xs], True
    if isinstance(xs, (list, tuple)) and all(isinstance(x, Tensor) for x in xs):
        return list(xs), False
    raise TypeError(f"{op}: {name} must be a tensor or a list of tensors, got {type(xs).__name__}")


def _index_list(op: str, name: str, idx: Indices, device: torch.device) -> list[Tensor]:
    """A tensor, a list of ints (one index tensor), or a list of tensors (one per input)."""
    if isinstance(idx, Tensor):
        return [idx]
    if isinstance(idx, (list, tuple)):
        if all(isinstance(i, Tensor) for i in idx) and len(idx) > 0:
            return list(idx)
        if all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            for j, i in enumerate(idx):
                if not -(2**63) <= i < 2**63:
                    raise ValueError(f"{op}: {name}[{j}] = {i} does not fit in int64")
            return [torch.tensor(list(idx), dtype=torch.long, device=device)]
    raise TypeError(f"{op}: {name} must be an index tensor, a list of ints or a list of index tensors, got {idx!r}")


def _dim_list(op: str, dims: Dims) -> list[int]:
    if isinstance(dims, int) and not isinstance(dims, bool):
        return [dims]
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return list(dims)
    raise TypeError(f"{op}: dims must be an int or a list of ints, got {dims!r}")


def _device_of(xs: list[Tensor]) -> torch.device:
    return xs[0].device if xs else torch.device("cpu")


def _problems(xs) -> tuple[list[Tensor], Optional[list[int]], bool]:
    """pairwise_distance's problems as the op takes them: the flat list of tensors, how many consecutive
    ones form each problem (None when every problem is one tensor), and whether a single one was given."""
    if isinstance(xs, Tensor):
        return [xs], None, True
    if isinstance(xs, (list, tuple)):
        flat, blocks = [], []
        for x in xs:
            parts = [x] if isinstance(x, Tensor) else list(x) if isinstance(x, (list, tuple)) else None
            if not parts or not all(isinstance(p, Tensor) for p in parts):
                break
            flat += parts
            blocks.append(len(parts))
        else:
            return flat, (blocks if any(b > 1 for b in blocks) else None), False
    raise TypeError("pairwise_distance: xs must be a tensor or a list of tensors (or of non-empty tuples of "
                    f"tensors: a problem's column blocks), got {type(xs).__name__}")


# Helpers of the fake kernels (each fake follows its wrapper below).


def _entry(values: Sequence, i: int):
    return values[0] if len(values) == 1 else values[i]


def _check_one_device(op: str, xs: list[Tensor], **lists: list[Optional[Tensor]]) -> None:
    """The compiled kernels' device checks, in a fake kernel: a meta tensor among real ones is dispatched
    here (the Meta key wins), and must be refused rather than give uninitialised outputs or no effect."""
    for i, x in enumerate(xs):
        if x.device != xs[0].device:
            raise ValueError(f"{op}: all tensors must be on one device, but xs[0] is on {xs[0].device} and "
                             f"xs[{i}] is on {x.device}")
    for name, ts in lists.items():
        for i, t in enumerate(ts):
            if xs and t is not None and t.device != xs[0].device:
                raise ValueError(f"{op}: {name}[{i}] is on {t.device} but the tensors are on {xs[0].device}")


@overload
def pairwise_distance(xs: Tensor, metric: str = ...) -> Tensor: ...
@overload
def pairwise_distance(xs: Sequence[Tensors], metric: str = ...) -> list[Tensor]: ...
@on_idle_cpus
def pairwise_distance(xs: Union[Tensor, Sequence[Tensors]], metric: str = "euclidean") -> Union[Tensor, list[Tensor]]:
    """Distances between the rows of each 2-D tensor.

    Args:
        xs: an (N, D) tensor, or a list of problems with different N and D (e.g. the flattened filters
            of every layer). A problem is an (N, D) tensor or a tuple of (N, D_k) tensors: column
            blocks, measured as if concatenated along dim 1 but without the copy (a block may be a
            transposed view). float32/float64 (and float16/bfloat16), all of one dtype and on one device.
        metric: ``"euclidean"`` (exactly symmetric, exactly 0 on the diagonal, never NaN for finite
            rows), ``"sqeuclidean"``, or ``"cosine"`` (1 - cosine similarity in [0, 2]; an all-zero row
            is at distance 1 from every other row).

    A row holding a NaN or Inf gets NaN in its own row and column (its diagonal entry included); the
    other rows' distances are those of the finite rows alone. Inputs far from unit scale (float32 near
    1e20 or 1e-40) are scaled by a power of two before the Gram product: distances are right wherever
    the output dtype can hold them (inf past its range).

    Returns:
        An (N, N) tensor of the input's dtype and device per problem (a list for a list). Computed
        from one Gram matrix per problem (on the CPU its upper block triangle, summed over the column
        blocks; on CUDA one batched product per distinct shape) in float32 (float64 for float64
        input), with a fused epilogue.
    """
    lst, blocks, single = _problems(xs)
    if metric not in METRICS:
        raise ValueError(f"pairwise_distance: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if not lst:  # no tensor, so no device to dispatch on
        return []
    (lst,) = _inputs("pairwise_distance", xs=lst)
    out = _ops.pairwise_distance(lst, metric, blocks)
    return out[0] if single else out


@torch.library.register_fake("pyprune_fast::pairwise_distance")
def _pairwise_distance_fake(xs: list[Tensor], metric: str, blocks: Optional[list[int]] = None) -> list[Tensor]:
    firsts = [xs[i] for i in itertools.accumulate([0, *blocks[:-1]])] if blocks else xs  # a problem's first block
    return [x.new_empty((x.shape[0], x.shape[0])) for x in firsts]


@overload
def gather_channels(xs: Tensor, indices: Indices, dims: Dims) -> Tensor: ...
@overload
def gather_channels(xs: Sequence[Tensor], indices: Indices, dims: Dims) -> list[Tensor]: ...
@on_idle_cpus
def gather_channels(xs: Tensors, indices: Indices, dims: Dims) -> Union[Tensor, list[Tensor]]:
    """New compact tensors holding only channels ``indices`` of each x along its dim.

    Args:
        xs: a tensor or a list of tensors (any dtype), all on one device; need not be contiguous.
        indices: int64/int32 1-D tensor of unique in-range channel indices (or a list of ints), used
            for every x; or a list of such tensors, one per x. The order of ``indices`` is kept.
        dims: the channel dim of every x, or one per x; negative dims count from the end.

    Returns:
        Contiguous tensors shaped like x with ``len(indices)`` channels along dim (a list for a list).
    """
    op = "gather_channels"
    lst, single = _tensor_list(op, "xs", xs)
    if not lst:
        return []
    lst, idx = _inputs(op, xs=lst, indices=_index_list(op, "indices", indices, _device_of(lst)))
    out = _ops.gather_channels(lst, idx, _dim_list(op, dims))
    return out[0] if single else out


@torch.library.register_fake("pyprune_fast::gather_channels")
def _gather_channels_fake(xs: list[Tensor], indices: list[Tensor], dims: list[int]) -> list[Tensor]:
    _check_one_device("gather_channels", xs, indices=indices)
    outs = []
    for i, x in enumerate(xs):
        shape = list(x.shape)
        shape[_entry(dims, i)] = _entry(indices, i).shape[0]
        outs.append(x.new_empty(shape))
    return outs


@on_idle_cpus
def merge_channels_(
    xs: Tensors,
    assignments: Indices,
    keep: Indices,
    dims: Dims,
    weights: Optional[Union[Tensor, Sequence[Optional[Tensor]]]] = None,
) -> Tensors:
    """Channel addition, in place: channel ``keep[g]`` of x along dim becomes the sum of all channels
    ``c`` with ``assignments[c] == g``, each multiplied by ``weights[c]`` when given.

    Other channels are left as they are, so ``gather_channels(x, keep, dim)`` afterwards yields the
    merged compact tensor. Members are summed in ascending channel order in float32 (float64 for
    float64 x), so results are bitwise the same on every run, on CUDA too.

    Args:
        xs: a floating-point tensor or list of them, on one device, not sharing memory.
        assignments: (C,) cluster id in [0, G) of every channel, for every x or one per x.
        keep: (G,) the channel kept for every cluster; ``assignments[keep[g]] == g`` must hold.
        dims: the channel dim of every x, or one per x.
        weights: optional (C,) floating-point weight per channel, for every x or one per x.

    Returns:
        ``xs``, modified in place.

    Raises ValueError, before writing anything, for a tensor that requires grad while grad mode is on:
    edit parameters under ``torch.no_grad()``, as any in-place change of a leaf that requires grad.
    """
    op = "merge_channels_"
    lst, _ = _tensor_list(op, "xs", xs)
    if not lst:
        return xs
    if torch.is_grad_enabled():
        for i, x in enumerate(lst):
            if x.requires_grad:
                raise ValueError(f"{op}: xs[{i}] requires grad and grad mode is on; merge_channels_ writes in "
                                 "place and is not differentiable: call it under torch.no_grad()")
    device = _device_of(lst)
    if weights is None:
        w: list[Optional[Tensor]] = []
    elif isinstance(weights, Tensor):
        w = [weights]
    elif isinstance(weights, (list, tuple)) and all(x is None or isinstance(x, Tensor) for x in weights):
        w = list(weights)
    else:
        raise TypeError(f"{op}: weights must be None, a tensor or a list of optional tensors, got {weights!r}")
    lst, a, k, w = _inputs(op, xs=lst, assignments=_index_list(op, "assignments", assignments, device),
                           keep=_index_list(op, "keep", keep, device), weights=w)
    _ops.merge_channels_(lst, a, k, _dim_list(op, dims), w)
    for x in lst:  # the op itself does not: autograd must see the edit of a tensor it saved for backward
        torch.autograd.graph.increment_version(x)
    return xs


@torch.library.register_fake("pyprune_fast::merge_channels_")
def _merge_channels_fake(xs, assignments, keep, dims, weights) -> None:
    _check_one_device("merge_channels_", xs, assignments=assignments, keep=keep, weights=weights)


@on_idle_cpus
def ward_linkage(dists: Sequence[Tensor]) -> list[Tensor]:
    """Ward linkage of each N x N Euclidean distance matrix (only the upper triangle is read), on the
    CPU: matrices on another device are copied there (the nearest-neighbour chain is sequential).

    Returns (N - 1) x 4 float64 tensors in scipy.cluster.hierarchy.linkage's format and order:
    [cluster a, cluster b, merge height, size of the new cluster], cluster ids >= N naming earlier
    merges. Problems run in parallel; each is O(N^2) time and memory (nearest-neighbour chain).
    """
    lst, _ = _tensor_list("ward_linkage", "dists", dists)
    return list(_ops.ward_linkage([d.detach().cpu() for d in lst])) if lst else []


@torch.library.register_fake("pyprune_fast::ward_linkage")
def _ward_linkage_fake(dists: list[Tensor]) -> list[Tensor]:
    return [d.new_empty((max(d.shape[0] - 1, 0), 4), dtype=torch.float64) for d in dists]


@on_idle_cpus
def kmeans_lloyd(xs: Sequence[Tensor], centroids: Sequence[Tensor], niter: int, spherical: bool = False,
                 grams: Optional[Sequence[Optional[Tensor]]] = None) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """`niter` Lloyd iterations for every problem at once, from the given initial centroids.

    Args:
        xs: (N_i, D_i) float32/float64 tensors on one device.
        centroids: (k_i, D_i) initial centroids, same dtype and device; or (k_i,) int64 indices of the rows
            of xs[i] to start from.
        niter: iterations (an assignment and an update each); stops early once no label changes.
        spherical: cosine k-means: centroids are renormalised to unit length after every update.
        grams: optional, one per problem: xs[i] @ xs[i].T (N_i, N_i), or None (what
            kmeanspp_init(..., return_gram=True) returns). Where centroids[i] are row indices (k_i <= N_i) and
            not spherical, the CPU kernel runs the iterations from it when that is cheaper (24 N_i <= k_i D_i):
            x.c is a mean of Gram columns, so an iteration costs O(N_i^2 + N_i k_i), not O(N_i k_i D_i); the
            centroids are formed once at the end. Results equal those from the points up to rounding.

    Returns:
        (labels: (N_i,) int64, centroids: (k_i, D_i), inertia: (len(xs),) float64 — the sum of
        squared distances to the final centroids). Empty clusters are re-seeded, in cluster order,
        with the points farthest from their centroids (farthest first).
    """
    lst, _ = _tensor_list("kmeans_lloyd", "xs", xs)
    cents, _ = _tensor_list("kmeans_lloyd", "centroids", centroids)
    if grams is not None and (not isinstance(grams, (list, tuple))
                              or not all(g is None or isinstance(g, Tensor) for g in grams)):
        raise TypeError(f"kmeans_lloyd: grams must be a list of tensors or None, got {type(grams).__name__}")
    if not lst:
        return [], [], torch.zeros(0, dtype=torch.float64)
    given = [] if grams is None else [x.new_empty(0) if g is None else g for x, g in zip(lst, grams)]
    if grams is not None and len(grams) != len(lst):
        given = list(grams)  # the op names the length mismatch
    lst, cents, given = _inputs("kmeans_lloyd", xs=lst, centroids=cents, grams=given)
    labels, out, inertia = _ops.kmeans_lloyd(lst, cents, int(niter), bool(spherical), given)
    return list(labels), list(out), inertia


@torch.library.register_fake("pyprune_fast::kmeans_lloyd")
def _kmeans_lloyd_fake(xs: list[Tensor], centroids: list[Tensor], niter: int, spherical: bool,
                       grams: Optional[list[Tensor]] = None):
    labels = [x.new_empty((x.shape[0],), dtype=torch.int64) for x in xs]
    cents = [x.new_empty((c.shape[0], x.shape[1])) for x, c in zip(xs, centroids)]
    return labels, cents, xs[0].new_empty((len(xs),), dtype=torch.float64)


@on_idle_cpus
def kmeanspp_init(xs: Sequence[Tensor], k: Union[int, Sequence[int]], uniforms: Tensor,
                  return_gram: bool = False) -> Union[list[Tensor], tuple[list[Tensor], list[Optional[Tensor]]]]:
    """k-means++ seeding of every problem at once: the indices of k_i rows of xs[i], each next row drawn
    with probability proportional to its squared distance to the nearest row drawn so far.

    Args:
        xs: (N_i, D_i) float32/float64 tensors of one dtype on one device; values must be finite.
        k: rows to draw, 1 <= k_i <= N_i: one int for all problems or one per problem.
        uniforms: float64 values in [0, 1), at least max k_i of them, on any device. Draw t of every problem
            uses uniforms[t]: draw 0 picks row int(u * N); draw t > 0 the first row whose running sum of
            squared distances (in row order) exceeds u times their total, or row int(u * N) when the total
            is 0 (every row drawn already or a copy of one). So a problem's draws do not depend on the others.
        return_gram: also return, per problem, the Gram matrix xs[i] @ xs[i].T (N_i, N_i) the draws read, or
            None where they read matrix-vector products instead (CUDA, k_i = 1, k_i < N_i / 4, large N_i):
            kmeans_lloyd's `grams`, so that its iterations start from it.

    Distances, their sums and the draws are in float64; on the CPU the dot products behind the distances
    are in the input dtype (one Gram matrix per problem, or one matrix-vector product per draw), on CUDA
    in float64.

    Returns:
        (k_i,) int64 tensors on the points' device, in drawing order (and the Gram matrices with return_gram).
    """
    op = "kmeanspp_init"
    lst, _ = _tensor_list(op, "xs", xs)
    ks = [k] * len(lst) if isinstance(k, int) and not isinstance(k, bool) else k
    if not isinstance(ks, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ks):
        raise TypeError(f"{op}: k must be an int or a list of ints, got {k!r}")
    if not isinstance(uniforms, Tensor):
        raise TypeError(f"{op}: uniforms must be a tensor, got {type(uniforms).__name__}")
    if not lst:
        return ([], []) if return_gram else []
    (lst,) = _inputs(op, xs=lst)
    idx, grams = _ops.kmeanspp_init(lst, list(ks), uniforms.to(lst[0].device), bool(return_gram))
    if not return_gram:
        return list(idx)
    return list(idx), [g if g.numel() else None for g in grams]


@torch.library.register_fake("pyprune_fast::kmeanspp_init")
def _kmeanspp_init_fake(xs: list[Tensor], k: list[int], uniforms: Tensor,
                        return_gram: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    _check_one_device("kmeanspp_init", xs)

    def reads_gram(n: int, kk: int) -> bool:  # use_gram in cpu/kmeanspp_init_kernel.cpp (CUDA reads none)
        return xs[0].device.type == "cpu" and kk > 1 and n * n <= 1 << 23 and 4 * kk >= n

    grams = [x.new_empty((x.shape[0],) * 2 if return_gram and reads_gram(x.shape[0], kk) else (0,))
             for x, kk in zip(xs, k)]
    return [x.new_empty((kk,), dtype=torch.int64) for x, kk in zip(xs, k)], grams


# The private test op: kmeans_lloyd's batched loop in ATen ops alone, on any device.
@torch.library.register_fake("pyprune_fast::_kmeans_lloyd_batched")
def _kmeans_lloyd_batched_fake(xs: list[Tensor], centroids: list[Tensor], niter: int, spherical: bool,
                               sync_every: int = 1):
    return _kmeans_lloyd_fake(xs, centroids, niter, spherical)
