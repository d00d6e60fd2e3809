"""Random scores: the baseline every criterion must beat."""

from __future__ import annotations

import torch

from .base import Scored, check_producers_finite

__all__ = ["Random"]


class Random(Scored):
    """Uniform random scores, reproducible for a `seed`. The weights are still checked for NaN and Inf."""

    name = "random"

    def score(self) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        out = []
        for g in self.groups:
            check_producers_finite(self.tensors, g)
            out.append(torch.rand(g.channels, generator=gen))
        return out
