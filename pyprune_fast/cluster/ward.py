"""Ward hierarchical clustering for many small problems at once (one per layer), cut into flat clusters.

The tree is scipy.cluster.hierarchy.linkage(x, "ward")'s (the extension's ward_linkage, on the CPU, in
parallel over the problems); the cut is scipy's fcluster with criterion "distance" or "maxclust".
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import ops
from ..threads import on_idle_cpus
from ._inputs import check_points

__all__ = ["ward", "linkage", "linkages", "flat_clusters", "row_norms"]

Labels = Union[Tensor, tuple[Tensor, Tensor]]
Points = Union[Tensor, tuple[Tensor, ...]]  # (N, D) points, or their column blocks


def row_norms(blocks: Sequence[Tensor]) -> Tensor:
    """The norm of every row of points given as column blocks: (N, D_k) tensors -> (N,)."""
    return torch.stack([b.square().sum(1) for b in blocks]).sum(0).sqrt()


def _exact_small(x: Points, d: Tensor) -> Tensor:
    """Distances from a Gram matrix are off by about sqrt(eps) * |x| near zero (float64 duplicates come
    out ~1e-8 apart, float32 ones ~1e-4, not 0): the pairs that close are recomputed from their
    differences."""
    if d.shape[0] < 2:
        return d
    tol = 1e-6 if d.dtype == torch.float64 else 3e-3  # tens of sqrt(eps) of the dtype
    close = (d <= tol * d.max()).triu_(1).nonzero()
    if close.numel():
        i, j = close[:, 0], close[:, 1]
        exact = row_norms([b[i] - b[j] for b in ((x,) if isinstance(x, Tensor) else x)]).to(d.dtype)
        d = d.index_put((i, j), exact).index_put((j, i), exact)
    return d


def _per_problem(name: str, value, n: int) -> list:
    """A cut parameter given once for all problems, or as a list with one entry per problem."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"ward: {name} has {len(value)} entries for {n} problems")
        return list(value)
    return [value] * n


def _check_cut(threshold, n_clusters) -> None:
    if (threshold is None) == (n_clusters is None):
        raise ValueError(f"ward: give exactly one of threshold and n_clusters, got "
                         f"{'both' if threshold is not None else 'neither'}")
    if n_clusters is not None:
        if not isinstance(n_clusters, numbers.Integral) or isinstance(n_clusters, bool):
            raise TypeError(f"ward: n_clusters must be an int, got {n_clusters!r}")
        if n_clusters <= 0:
            raise ValueError(f"ward: n_clusters must be positive, got {n_clusters}")
    else:
        if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool):
            raise TypeError(f"ward: threshold must be a number, got {threshold!r}")
        if math.isnan(threshold) or threshold < 0:
            raise ValueError(f"ward: threshold must be >= 0, got {threshold}")


def flat_clusters(linkage: Tensor, threshold: Optional[float] = None, n_clusters: Optional[int] = None,
                  n: Optional[int] = None) -> Tensor:
    """Labels (CPU int64) of the flat clusters of a Ward tree cut at a height or into a number of
    clusters (as `ward`'s threshold and n_clusters), numbered by first appearance.

    Heights grow down the rows and a row's children are earlier rows, so "merges with height <= t"
    (fcluster's "distance") and "all but the last m - 1 merges" ("maxclust") are both a prefix.
    """
    n = linkage.shape[0] + 1 if n is None else n  # points (the tree of none and of one point are both empty)
    if n_clusters is not None:
        k = max(n - n_clusters, 0)
    else:
        k = int(torch.searchsorted(linkage[:, 2].contiguous(), float(threshold), right=True))
    # Node n + r is made by row r; roots by pointer jumping over the first k merges.
    parent = torch.arange(2 * n - 1 if n else 0)
    pairs = linkage[:k, :2].long()
    made = torch.arange(n, n + k).unsqueeze(1).expand(k, 2)
    parent[pairs.reshape(-1)] = made.reshape(-1)
    while True:
        up = parent[parent]
        if torch.equal(up, parent):
            break
        parent = up
    root = parent[:n]
    points = torch.arange(n)
    first = torch.full((max(2 * n - 1, 0),), n, dtype=torch.long).scatter_reduce_(0, root, points, "amin")[root]
    return torch.cumsum(first == points, 0)[first] - 1


# Problems with at most this many (pair, column) terms get scipy's own distances (about 0.1 s at most).
_SCIPY_DISTANCES_UP_TO = 2**22


def _scipy_distances(x: Points) -> Tensor:
    """(N, N) float64 CPU distances with the bits of scipy's pdist: each pair's squared differences summed
    in column order, then a correctly rounded square root (numpy's; torch's CPU sqrt may be off by an
    ulp). Same distances, same tree (ward_linkage is scipy's bit for bit), so cuts at any height,
    scipy's own merge heights included, are scipy's."""
    cols = (x if isinstance(x, Tensor) else torch.cat(x, 1)).to("cpu", torch.float64).T.contiguous().numpy()
    n = cols.shape[1]
    i, j = np.triu_indices(n, 1)
    sums = np.zeros(i.size)
    step = max(1, 2**20 // max(cols.shape[0], 1))
    for s in range(0, i.size, step):
        diff = cols[:, i[s : s + step]] - cols[:, j[s : s + step]]  # (D, pairs)
        diff *= diff
        acc = sums[s : s + step]
        for row in diff:  # in column order, as pdist
            acc += row
    d = np.zeros((n, n))
    d[i, j] = d[j, i] = np.sqrt(sums)
    return torch.from_numpy(d)


def _terms(x: Points) -> int:
    n = x.shape[0] if isinstance(x, Tensor) else x[0].shape[0]
    return n * (n - 1) // 2 * (x.shape[1] if isinstance(x, Tensor) else sum(b.shape[1] for b in x))


def linkages(lst: list[Points], dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """`linkage` of points given as (N, D) tensors or as tuples of (N, D_k) column blocks (see
    ops.pairwise_distance), without its checks: for callers whose points are already finite floating-point
    tensors on one device (a pruning criterion's features).

    In float64, problems up to _SCIPY_DISTANCES_UP_TO terms get scipy's distances exactly; the others
    (and float32) a Gram-based pairwise_distance, whose tree matches scipy's to rounding."""
    points = [x.to(dtype) if isinstance(x, Tensor) else tuple(b.to(dtype) for b in x) for x in lst]
    exact = [dtype == torch.float64 and _terms(x) <= _SCIPY_DISTANCES_UP_TO for x in points]
    gram = iter(ops.pairwise_distance([x for x, e in zip(points, exact) if not e], "euclidean"))
    dists = [_scipy_distances(x) if e else _exact_small(x, next(gram)) for x, e in zip(points, exact)]
    return ops.ward_linkage(dists)


@on_idle_cpus
def linkage(xs: Sequence[Tensor], dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """The Ward tree of each (N, D) tensor of a list, as (N - 1, 4) float64 CPU tensors in the format
    of scipy.cluster.hierarchy.linkage(x, "ward"); cut them with `flat_clusters`.

    dtype: of the pairwise distances. float64 matches scipy to rounding; float32 halves the cost of
    the distances (the tree is still built in float64) and can differ from scipy only where two
    merge heights are within float32 rounding of each other.
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"ward: dtype must be torch.float32 or torch.float64, got {dtype}")
    lst = check_points("ward", list(xs))
    return linkages(lst, dtype) if lst else []


@on_idle_cpus
def ward(
    xs: Union[Tensor, Sequence[Tensor]],
    threshold: Optional[float] = None,
    n_clusters: Optional[int] = None,
    return_linkage: bool = False,
) -> Union[Labels, list[Labels]]:
    """Ward clustering of the rows of each (N, D) tensor, cut into flat clusters.

    Args:
        xs: an (N, D) floating-point tensor or a list of them (N and D may differ), on one device.
        threshold: cut the tree at this height: points end up together when the merge joining them
            is at most this high (scipy's fcluster(Z, threshold, criterion="distance")).
        n_clusters: apply all but the last n_clusters - 1 merges: exactly min(n_clusters, N) clusters
            (scipy's criterion="maxclust", which can give fewer on tied heights). Give exactly one of
            threshold and n_clusters, each a number for all problems or a list with one per problem.
        return_linkage: also return each tree, as scipy.cluster.hierarchy.linkage would.

    Returns:
        Per input, (N,) int64 labels 0..m-1 numbered in order of first appearance, on the input's
        device; with return_linkage, a (labels, linkage) pair, linkage being the (N - 1, 4) float64
        CPU tensor in scipy's format. A tensor (or pair) for a tensor, a list for a list.

    Distances are computed in float64 whatever the input dtype. Up to N^2 D / 2 = 2^22 they are
    scipy's own, bit for bit: the tree is scipy's exactly, and so is every cut, at scipy's merge
    heights too. Larger problems use pairwise_distance (a Gram matrix, on the input's device): the tree
    matches scipy's to rounding, so a threshold within rounding of a merge height may cut either side.
    """
    lst, single = ops._tensor_list("ward", "xs", xs)
    thresholds, counts = _per_problem("threshold", threshold, len(lst)), _per_problem("n_clusters", n_clusters, len(lst))
    for t, m in zip(thresholds, counts):
        _check_cut(t, m)
    lst = check_points("ward", lst)
    if not lst:
        return []
    out: list[Labels] = []
    for x, z, t, m in zip(lst, linkages(lst), thresholds, counts):
        labels = flat_clusters(z, t, m, x.shape[0]).to(x.device)
        out.append((labels, z) if return_linkage else labels)
    return out[0] if single else out
