"""Pure-PyTorch versions of every op, one tensor at a time: the test oracle.

Written for clarity, in float64, not for speed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def pairwise_distance(x: Tensor, metric: str = "euclidean") -> Tensor:
    """(N, D) -> (N, N) distances between rows, from explicit differences; NaN in the rows and columns
    of rows holding a NaN or Inf."""
    bad = ~torch.isfinite(x).all(1)
    xd = x.double().masked_fill(bad[:, None], 0)
    if metric == "cosine":
        norms = xd.norm(dim=1)
        sim = (xd @ xd.T) / (norms[:, None] * norms[None, :])
        d = (1 - sim).clamp(0, 2)
        zero = norms == 0
        d[zero, :] = 1
        d[:, zero] = 1
    else:
        diff = xd[:, None, :] - xd[None, :, :]
        d = (diff * diff).sum(-1)
        if metric == "euclidean":
            d = d.sqrt()
    d.fill_diagonal_(0)
    d[bad, :] = d[:, bad] = float("nan")
    return d.to(x.dtype)


def gather_channels(x: Tensor, indices: Tensor, dim: int) -> Tensor:
    """Channels ``indices`` of x along dim, in that order."""
    return x.index_select(dim, indices.long()).contiguous()


def merge_channels_(x: Tensor, assignments: Tensor, keep: Tensor, dim: int, weights: Optional[Tensor] = None) -> Tensor:
    """Channel keep[g] of x along dim becomes the (weighted) sum of the channels assigned to g; in place."""
    src = x.double()
    if weights is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        src = src * weights.double().view(shape)
    sums_shape = list(x.shape)
    sums_shape[dim] = keep.numel()
    sums = torch.zeros(sums_shape, dtype=torch.float64, device=x.device).index_add_(dim, assignments.long(), src)
    x.index_copy_(dim, keep.long(), sums.to(x.dtype))
    return x


def ward_linkage(dist: Tensor) -> Tensor:
    """(N, N) Euclidean distances (upper triangle read) -> (N - 1, 4) Ward linkage in scipy's format, by
    the naive algorithm: merge the closest pair of clusters, update by Lance–Williams, repeat. O(N^3)."""
    n = dist.shape[0]
    d = torch.triu(dist.double(), 1)
    d = d + d.T
    d.fill_diagonal_(float("inf"))
    size = torch.ones(n, dtype=torch.float64)
    ids = list(range(n))  # cluster id held by each row: the point, or n + the row that made it
    rows = []
    for k in range(n - 1):
        i, j = divmod(int(torch.argmin(d)), n)  # merged-away rows and columns are +inf
        h = d[i, j].item()
        ni, nj = size[i].item(), size[j].item()
        new = ((ni + size) * d[i] ** 2 + (nj + size) * d[j] ** 2 - size * h**2) / (ni + nj + size)
        new = new.clamp(min=0).sqrt()
        rows.append([min(ids[i], ids[j]), max(ids[i], ids[j]), h, ni + nj])
        d[i], d[:, i] = new, new  # row i holds the union, row j is dropped
        d[j], d[:, j] = float("inf"), float("inf")
        d[i, i] = float("inf")
        size[i], size[j] = ni + nj, 0.0
        ids[i] = n + k
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def nearest_centroids(x: Tensor, xnorm: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Label of every point's nearest centroid and the squared distance to it, from one product."""
    best, labels = ((c * c).sum(1)[None, :] - 2 * x @ c.T).min(1)
    return labels, (best + xnorm).clamp_min(0)


def kmeans_lloyd(x: Tensor, c: Tensor, niter: int, spherical: bool) -> tuple[Tensor, Tensor, float]:
    """(N, D) points from (k, D) centroids -> (labels, centroids, inertia): the native kernel's iterations in
    plain PyTorch (an assignment, then up to niter times an update and an assignment, stopping once no label
    changes; an empty cluster takes the farthest point; spherical: unit centroids after each update)."""
    xnorm = (x * x).sum(1)
    labels, mind = nearest_centroids(x, xnorm, c)
    for _ in range(niter):
        counts = torch.bincount(labels, minlength=c.shape[0])
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), c)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():
            far = torch.sort(mind, stable=True, descending=True).indices[: empty.numel()]
            c[empty[: far.numel()]] = x[far]
        if spherical:
            c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        prev = labels
        labels, mind = nearest_centroids(x, xnorm, c)
        if torch.equal(labels, prev):
            break
    return labels, c, float(mind.double().sum())


def kmeans_lloyd_gram(x: Tensor, gram: Tensor, seeds: Tensor, niter: int) -> tuple[Tensor, Tensor, float]:
    """kmeans_lloyd from the rows `seeds` of x, its iterations read from gram = x x^T: a centroid is the mean of
    its cluster (or the point re-seeding it when empty), so x.c_j is the mean of gram's columns over cluster j
    and |c_j|^2 the mean of x_i.c_j over its points i; the centroids are formed from the last update's labels."""
    n, k = gram.shape[0], seeds.shape[0]
    xn = gram.diagonal()
    dots, cn = gram[:, seeds], xn[seeds]
    best, labels = (cn[None] - 2 * dots).min(1)
    mind = (best + xn).clamp_min(0)
    c = x[seeds]
    for _ in range(niter):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros(n, k, dtype=gram.dtype).index_add_(1, labels, gram)
        dots = sums / counts.clamp_min(1).to(gram.dtype)
        c = torch.zeros_like(c).index_add_(0, labels, x) / counts.clamp_min(1)[:, None].to(x.dtype)
        cn = torch.zeros(k, dtype=gram.dtype).index_add_(0, labels, dots[torch.arange(n), labels])
        cn = cn / counts.clamp_min(1).to(gram.dtype)
        empty = (counts == 0).nonzero().squeeze(1)
        far = torch.sort(mind, stable=True, descending=True).indices[: empty.numel()]
        dots[:, empty], cn[empty], c[empty] = gram[:, far], xn[far], x[far]
        prev = labels
        best, labels = (cn[None] - 2 * dots).min(1)
        mind = (best + xn).clamp_min(0)
        if torch.equal(labels, prev):
            break
    return labels, c, float(mind.double().sum())


def kmeanspp_init(x: Tensor, k: int, uniforms: Tensor) -> Tensor:
    """(N, D) points -> (k,) int64 indices of the k-means++ seeding, in float64: draw 0 is the point
    int(u[0] * N); draw t > 0 is the first point whose running sum of squared distances to the nearest drawn
    point exceeds u[t] times their total (searchsorted right=True), or int(u[t] * N) when the total is 0."""
    n, u = x.shape[0], uniforms.double().cpu().tolist()
    p = x.double()
    norms = (p * p).sum(1)
    chosen = [min(int(u[0] * n), n - 1)]
    d2 = (norms - 2 * (p @ p[chosen[0]]) + norms[chosen[0]]).clamp_min(0)
    for t in range(1, k):
        cdf = d2.cumsum(0)
        total = cdf[-1]
        if total > 0:
            chosen.append(min(int(torch.searchsorted(cdf, u[t] * total, right=True)), n - 1))
        else:  # every point already drawn or a copy of one
            chosen.append(min(int(u[t] * n), n - 1))
        c = chosen[-1]
        d2 = torch.minimum(d2, (norms - 2 * (p @ p[c]) + norms[c]).clamp_min(0))
    return torch.tensor(chosen, dtype=torch.long, device=x.device)
