"""Input checks shared by the clustering functions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def check_points(op: str, xs: Sequence[Tensor]) -> list[Tensor]:
    """2-D floating-point tensors (points x features), all on one device, every value finite (one host
    read for all of them); returned detached: clustering decides, it is not differentiable, so a
    model's own parameters can be given as they are."""
    for i, x in enumerate(xs):
        if x.dim() != 2:
            raise ValueError(f"{op}: xs[{i}] must be 2-D (points x features), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{op}: xs[{i}] must be a floating-point tensor, got {x.dtype}")
        if x.device != xs[0].device:
            raise ValueError(f"{op}: all tensors must be on one device, but xs[0] is on {xs[0].device} and "
                             f"xs[{i}] is on {x.device}")
    finite = [torch.isfinite(x).all() for x in xs if x.numel()]
    if finite and not bool(torch.stack(finite).all()):
        i = next(i for i, x in enumerate(xs) if x.numel() and not torch.isfinite(x).all())
        bad = (~torch.isfinite(xs[i])).nonzero()[0].tolist()
        raise ValueError(f"{op}: xs[{i}] holds {xs[i][bad[0], bad[1]].item()} at {bad}; points must be finite")
    return [x.detach() for x in xs]
