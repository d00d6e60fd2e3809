"""Pure-PyTorch versions of every op, one tensor at a time: the test oracle.

Written for clarity, in float64, not for speed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def pairwise_distance(x: Tensor, metric: str = "euclidean") -> Tensor:
    """(N, D) -> (N, N) distances between rows, from explicit differences."""
    xd = x.double()
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
